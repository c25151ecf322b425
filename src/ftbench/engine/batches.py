"""Streams of micro-batches: training data (reshuffled each epoch), calibration
data (a separate stream, never reused for updates) and profile batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from ftbench.errors import UserError, require

Example = dict[str, Any]  # one tokenized example: input_ids, and the task's label fields


def check_holds(examples: int, micro_batch_size: int, world_size: int, key: str) -> None:
    """Raise UserError on `key` (the batch size the user set) when `examples` make less than one micro-batch
    on each of `world_size` processes."""
    if examples < micro_batch_size * world_size:
        ranks = f" on each of {world_size} processes" if world_size > 1 else ""
        # micro-batch x ranks sequences per step at least: the batch may be at most the examples
        fix = (f"lower {key} to {examples} or less" if examples >= world_size
               else f"run on {examples} processes or fewer")
        raise UserError(key, f"the training set has {examples} examples, fewer than one micro-batch of "
                        f"{micro_batch_size}{ranks}; {fix}, or give more training data")


def shuffled(examples: list[Example], micro_batch_size: int, collate: Callable, seed: int,
             rank: int = 0, world_size: int = 1, skip: int = 0,
             key: str = "task.batch_size") -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches forever; epoch e uses permutation seed+e. Data parallel: micro-batch i of the
    one-process stream goes to rank i mod world_size, so ranks never overlap, every rank gets as
    many per epoch, and W ranks x micro-batch m see what one process sees in W micro-batches of m.
    The first `skip` micro-batches of this rank are passed over without being built (a resumed run).
    Raises UserError on `key` (the batch size the user set) when the data holds less than one micro-batch."""
    check_holds(len(examples), micro_batch_size, world_size, key)
    per_epoch = len(examples) // micro_batch_size // world_size  # this rank's micro-batches per epoch
    epoch, skip = divmod(skip, per_epoch)
    while True:
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for j in range(skip, per_epoch):
            start = (j * world_size + rank) * micro_batch_size
            yield collate([examples[i] for i in order[start:start + micro_batch_size]])
        epoch, skip = epoch + 1, 0


MAX_TOKEN_EPOCHS = 10_000  # a token budget may span this many epochs of the training set at most
BUDGET_KEYS = ("train.max_tokens", "train.batch_size", "train.max_steps")  # a run's budget, batch and steps keys


def steps_for_tokens(lengths: list[int], batch_size: int, micro_batch_size: int, seed: int, tokens: int,
                     world_size: int = 1, keys: tuple[str, str, str] = BUDGET_KEYS) -> int:
    """The optimizer steps a token budget buys: the first step at whose end the examples trained on
    hold `tokens` tokens or more (their input_ids; padding not counted), walking the order `shuffled`
    gives all ranks together (a step takes the next `batch_size` examples of one process's stream,
    however it is split into micro-batches and ranks; each epoch drops the tail `shuffled` drops).
    The example that reaches the budget is found epoch by epoch (whole epochs in closed form when no
    tail is dropped, as every epoch then holds every token); its step is the one that ends the count.

    `lengths`: each training example's token count, in the data's order. The count depends on the seed
    (the order), not on the method: every arm with the same seed and batch trains on the same examples.
    Raises UserError on `keys` (the user's token budget, batch and step budget: BUDGET_KEYS) when `tokens`
    < 1, the examples make less than one micro-batch (as `shuffled`) or hold no token, or the budget is more
    than MAX_TOKEN_EPOCHS epochs of every example's tokens."""
    tokens_key, batch_key, steps_key = keys
    require(tokens >= 1, tokens_key, f"{tokens} is not >= 1")
    check_holds(len(lengths), micro_batch_size, world_size, batch_key)
    total = sum(lengths)
    require(total > 0, tokens_key, f"the {len(lengths)} training examples hold no token; give training data "
            f"that does, or a budget in steps ({steps_key})")
    require(tokens <= MAX_TOKEN_EPOCHS * total, tokens_key, f"{tokens} tokens are more than {MAX_TOKEN_EPOCHS} "
            f"epochs of the {len(lengths)} training examples ({total} tokens an epoch); give at most "
            f"{MAX_TOKEN_EPOCHS * total}, or a budget in steps ({steps_key})")
    used_per_epoch = len(lengths) // micro_batch_size // world_size * micro_batch_size * world_size
    sizes = torch.tensor(lengths, dtype=torch.int64)
    epoch = (tokens - 1) // total if used_per_epoch == len(lengths) else 0  # epochs wholly before the budget
    seen = epoch * total
    while True:
        order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed + epoch))
        counts = sizes[order[:used_per_epoch]].cumsum(0)
        if seen + int(counts[-1]) >= tokens:
            taken = epoch * used_per_epoch + int(torch.searchsorted(counts, tokens - seen)) + 1  # examples to reach it
            return -(-taken // batch_size)
        seen, epoch = seen + int(counts[-1]), epoch + 1


def tokens_for_steps(lengths: list[int], batch_size: int, micro_batch_size: int, seed: int, steps: int,
                     world_size: int = 1) -> int:
    """The fewest tokens whose budget buys `steps` steps or more (`steps_for_tokens`, same arguments): one more
    than the examples of the first `steps` - 1 steps hold, in the order `steps_for_tokens` walks (a refusal's
    advice under a token budget: within.Budget). The examples must hold a token (`steps_for_tokens` refuses
    a budget over ones that hold none)."""
    used_per_epoch = len(lengths) // micro_batch_size // world_size * micro_batch_size * world_size
    sizes = torch.tensor(lengths, dtype=torch.int64)
    epoch, left = 0, (steps - 1) * batch_size
    if used_per_epoch == len(lengths):  # whole epochs in closed form when no tail is dropped
        epoch, left = divmod(left, used_per_epoch)
    held = epoch * int(sizes.sum())
    while left:
        order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed + epoch))
        taken = min(left, used_per_epoch)
        held, left, epoch = held + int(sizes[order[:taken]].sum()), left - taken, epoch + 1
    return held + 1


def random_tokens(batch_size: int, seq_len: int, vocab_size: int, head: str, num_labels: int,
                  seed: int, skip: int = 0, closing: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Profile batches: full-length random token ids (no padding), fixed per seed, each sequence ending
    with `closing` when given (architecture.closing_token); the first `skip` are drawn and dropped (a resumed run)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(skip):
        torch.randint(5, max(vocab_size, 6), (batch_size, seq_len), generator=generator)
        if head != "causal_lm":
            torch.randint(0, num_labels, (batch_size,), generator=generator)
    while True:
        ids = torch.randint(5, max(vocab_size, 6), (batch_size, seq_len), generator=generator)
        if closing is not None:
            ids[:, -1] = closing
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if head == "causal_lm":
            batch["labels"] = ids.clone()
        else:
            batch["labels"] = torch.randint(0, num_labels, (batch_size,), generator=generator)
        yield batch


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's tensors on `device` (copies start without waiting where the host memory allows)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

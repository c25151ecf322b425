"""Generation for scoring: batched, left-padded, with the KV cache, greedy or beam search.

Works with whatever `method.prepare` returned (a plain HF model, a PEFT model, a model
whose linears were swapped for partial-weight modules): all expose HF `generate`.
Every generation is written to a JSONL file beside result.json so a score can be audited.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from ftbench.config.knobs import decoding as decoding_knobs
from ftbench.engine.batches import to_device
from ftbench.errors import UserError
from ftbench.models.positions import prompt_room
from ftbench.progress import Work
from ftbench.tasks.answers import AnswerRule
from ftbench.tasks.base import EvalContext, pad_collate

log = logging.getLogger(__name__)

GENERATIONS_FILE = "generations.jsonl"


@dataclass(frozen=True)
class Decoding:
    """The decoding settings of one evaluation (recorded with its metrics)."""

    num_beams: int
    max_new_tokens: int
    min_new_tokens: int  # > 0 forces that many tokens (EOS is masked until then): throughput runs

    @classmethod
    def resolve(cls, ctx: EvalContext, cfg) -> Decoding:
        """The run's eval.* overrides, else the task's protocol defaults (knobs.decoding)."""
        settled = decoding_knobs(ctx.num_beams, ctx.max_new_tokens, cfg)
        decoding = cls(num_beams=settled["num_beams"][1], max_new_tokens=settled["max_new_tokens"][1],
                       min_new_tokens=cfg.min_new_tokens or 0)
        if decoding.min_new_tokens > decoding.max_new_tokens:
            raise UserError("task.min_new_tokens", f"{decoding.min_new_tokens} exceeds the answer cap "
                            f"{decoding.max_new_tokens} (eval.max_new_tokens / task.max_new_tokens)")
        return decoding

    def metrics(self) -> dict[str, float]:
        return {f"generate/{k}": float(v) for k, v in asdict(self).items()}


@dataclass
class Prompt:
    """One prompt to complete: its eval set, the question as stored, token ids, and the gold answer."""

    eval_set: str
    question: str
    ids: list[int]
    gold: str | None = None


@dataclass
class Throughput:
    new_tokens: int = 0
    sequences: int = 0
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        return {"generate/new_tokens": float(self.new_tokens), "generate/seconds": self.seconds,
                "generate/tokens_per_s": self.new_tokens / self.seconds if self.seconds else 0.0}


def unwrap(model: nn.Module) -> nn.Module:
    """The model that owns `generate` (DDP hides it behind `.module`)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if not hasattr(model, "generate"):
        raise UserError("task", f"{type(model).__name__} cannot generate; generative tasks need a causal LM")
    return model


@contextmanager
def inference_mode(model: nn.Module) -> Iterator[None]:
    """eval() with the KV cache on (training keeps it off), restored afterwards."""
    config = model.config
    was_training, used_cache = model.training, config.use_cache
    model.eval()
    config.use_cache = True
    try:
        yield
    finally:
        config.use_cache = used_cache
        model.train(was_training)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def complete(model: nn.Module, tokenizer, prompts: list[Prompt], ctx: EvalContext,
             decoding: Decoding, throughput: Throughput) -> list[str]:
    """The decoded continuation of every prompt, in the order given.

    Prompts run longest first, so batches hold similar lengths (less padding) and an
    out-of-memory shows on the first batch, not the last. A prompt that leaves too few positions
    for max_new_tokens is cut from the left (see `fit_prompts`)."""
    from transformers import GenerationConfig

    model = unwrap(model)
    prompts = fit_prompts(prompts, prompt_room(model.config, decoding.max_new_tokens), tokenizer.bos_token_id)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = GenerationConfig(do_sample=False, num_beams=decoding.num_beams, max_new_tokens=decoding.max_new_tokens,
                              min_new_tokens=decoding.min_new_tokens, eos_token_id=eos, pad_token_id=pad,
                              bos_token_id=tokenizer.bos_token_id)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].ids))
    texts: list[str] = [""] * len(prompts)
    label = f"generate {prompts[0].eval_set}" if prompts else "generate"
    with inference_mode(model), Work(label, len(prompts), "prompts", ctx.progress) as work:
        for start in range(0, len(order), ctx.batch_size):
            chunk = order[start:start + ctx.batch_size]
            batch = pad_collate([{"input_ids": prompts[i].ids} for i in chunk], pad, ctx.pad_to_multiple_of,
                                padding_side="left")
            width = batch["input_ids"].shape[1]
            synchronize(ctx.device)
            started = time.perf_counter()
            with ctx.autocast():
                out = model.generate(**to_device(batch, ctx.device), generation_config=config,
                                     stopping_criteria=StoppingCriteriaList([Heartbeat(work, width, len(chunk))]))
            new = out[:, width:].cpu()  # waits for the device
            throughput.seconds += time.perf_counter() - started
            lengths = generated_lengths(new, eos)
            throughput.new_tokens += int(lengths.sum())
            throughput.sequences += len(chunk)
            for row, i in enumerate(chunk):
                texts[i] = tokenizer.decode(new[row, :int(lengths[row])], skip_special_tokens=True)
            work.advance(len(chunk))
    return texts


def fit_prompts(prompts: list[Prompt], room: int | None, bos: int | None) -> list[Prompt]:
    """`prompts` that fit in `room` tokens (None: any length): a longer one is cut from the left, keeping
    its BOS and its end (the question and "### Response:"), with one warning saying how many were cut."""
    if room is None or all(len(p.ids) <= room for p in prompts):
        return prompts
    fitted, cut = [], 0
    for prompt in prompts:
        ids = prompt.ids
        if len(ids) > room:
            head = ids[:1] if ids[0] == bos and room > 1 else []
            ids = head + ids[len(ids) - room + len(head):]
            cut += 1
        fitted.append(replace(prompt, ids=ids))
    log.warning("%d of %d %s prompts are longer than the %d positions the model's table leaves before "
                "max_new_tokens: cut from the left to %d tokens (BOS and the prompt's end kept)", cut, len(prompts),
                prompts[0].eval_set, room, room)
    return fitted


class Heartbeat(StoppingCriteria):
    """A stopping criterion that never stops: it reports the batch's progress token by token
    (a transformers StoppingCriteria is called once per generated token)."""

    def __init__(self, work: Work, width: int, rows: int):
        self.work, self.width, self.rows = work, width, rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.work.heartbeat(f"a batch of {self.rows} at {input_ids.shape[1] - self.width} new tokens")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def generated_lengths(new_tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """Tokens each row generated, its EOS included (rows that finished early are padded after it)."""
    is_eos = new_tokens == eos
    first_eos = is_eos.int().argmax(dim=1)
    return torch.where(is_eos.any(dim=1), first_eos + 1, torch.full_like(first_eos, new_tokens.shape[1]))


def score(model: nn.Module, tokenizer, sets: dict[str, tuple[list[Prompt], AnswerRule]], ctx: EvalContext,
          decoding: Decoding) -> dict[str, float]:
    """Generate, extract and judge every prompt of every set: {"<set>/acc", "<set>/samples", "avg/acc", ...}.
    The average is the unweighted mean over the sets given (as the papers report it)."""
    throughput = Throughput()
    metrics: dict[str, float] = {}
    records: list[dict[str, Any]] = []
    for name, (prompts, rule) in sets.items():
        prompts = prompts[: ctx.max_samples] if ctx.max_samples is not None else prompts
        outputs = complete(model, tokenizer, prompts, ctx, decoding, throughput)
        correct = 0
        for index, (prompt, output) in enumerate(zip(prompts, outputs)):
            prediction, right = rule.score(output, prompt.gold)
            correct += right
            records.append({"set": name, "index": index, "question": prompt.question, "output": output,
                            "prediction": prediction, "gold": prompt.gold, "correct": right})
        metrics[f"{name}/acc"] = correct / max(len(prompts), 1)
        metrics[f"{name}/samples"] = float(len(prompts))
    accuracies = [metrics[f"{name}/acc"] for name in sets]
    metrics["avg/acc"] = sum(accuracies) / max(len(accuracies), 1)
    metrics["avg/sets"] = float(len(accuracies))
    write_jsonl(ctx.output_dir / GENERATIONS_FILE, records)
    return {**metrics, **throughput.metrics(), **decoding.metrics()}


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")

"""The training stream's order (engine/batches.py): what a budget in tokens buys, step by step."""

import random

import pytest
import torch

from ftbench.engine.batches import MAX_TOKEN_EPOCHS, shuffled, steps_for_tokens, tokens_for_steps
from ftbench.errors import UserError


def tokens_per_step(lengths, batch_size, micro, world, seed, steps):
    """Each step's tokens as the ranks' streams give them: micro-batches of every rank, step by step."""
    streams = [shuffled([{"n": n} for n in lengths], micro, lambda exs: sum(e["n"] for e in exs), seed, rank, world)
               for rank in range(world)]
    per_rank = batch_size // world // micro  # micro-batches a rank draws each step
    return [sum(next(s) for s in streams for _ in range(per_rank)) for _ in range(steps)]


@pytest.mark.parametrize("micro,world", [(8, 1), (4, 1), (2, 2), (1, 4)])
@pytest.mark.parametrize("tokens", [1, 150, 1000, 5000])  # 5000: past the first epoch (its tail dropped)
def test_the_steps_a_token_budget_buys_are_the_first_to_reach_it(micro, world, tokens):
    lengths = [random.Random(i).randint(1, 30) for i in range(101)]
    steps = steps_for_tokens(lengths, 8, micro, seed=3, tokens=tokens, world_size=world)
    seen = tokens_per_step(lengths, 8, micro, world, 3, steps)
    assert sum(seen) >= tokens > sum(seen[:-1])


@pytest.mark.parametrize("examples,batch,micro,world", [(96, 8, 8, 1), (101, 8, 4, 1), (103, 12, 2, 2), (30, 64, 1, 1)])
@pytest.mark.parametrize("steps", [1, 2, 7, 13, 40])  # 40: many epochs (each with its tail dropped)
def test_the_fewest_tokens_that_buy_some_steps_buy_them(examples, batch, micro, world, steps):
    """A refusal under a token budget advises the tokens of the steps it needs (within.Budget): the fewest
    budget that buys them, one token less buys fewer."""
    lengths = [random.Random(i).randint(1, 30) for i in range(examples)]
    tokens = tokens_for_steps(lengths, batch, micro, 5, steps, world)
    assert steps_for_tokens(lengths, batch, micro, 5, tokens, world) == steps
    assert tokens == 1 or steps_for_tokens(lengths, batch, micro, 5, tokens - 1, world) < steps


def test_a_budget_no_step_can_reach_is_refused_on_its_key():
    with pytest.raises(UserError, match="train.max_tokens: 0 is not >= 1"):
        steps_for_tokens([3, 4], 2, 2, seed=0, tokens=0)
    with pytest.raises(UserError, match="train.batch_size: the training set has 2 examples, fewer than one "
                       "micro-batch of 4; lower train.batch_size to 2 or less"):
        steps_for_tokens([3, 4], 4, 4, seed=0, tokens=10)
    with pytest.raises(UserError, match=r"budget.tokens: the 2 training examples hold no token; give training data "
                       r"that does, or a budget in steps \(budget.steps\)"):
        steps_for_tokens([0, 0], 2, 2, seed=0, tokens=10, keys=("budget.tokens", "budget.batch_size", "budget.steps"))


def walked(lengths, batch_size, micro, seed, tokens, world):
    """The count example by example over the epochs (steps_for_tokens before it skipped whole epochs)."""
    used = len(lengths) // micro // world * micro * world
    seen, taken, epoch = 0, 0, 0
    while True:
        for i in torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed + epoch))[:used].tolist():
            seen, taken = seen + lengths[i], taken + 1
            if taken % batch_size == 0 and seen >= tokens:
                return taken // batch_size
        epoch += 1


@pytest.mark.parametrize("examples,batch,micro,world", [
    (96, 8, 8, 1),    # whole epochs of whole steps, no tail dropped
    (100, 8, 4, 1),   # accumulation; steps straddle the epochs
    (101, 8, 4, 1),   # a tail of one dropped each epoch
    (103, 12, 2, 2),  # data parallel: a tail of three dropped, steps straddle the epochs
    (30, 64, 1, 1),   # a batch larger than the data: a step spans epochs
])
@pytest.mark.parametrize("tokens", [1, 37, 1500, 1501, 20_000, 123_457])  # mid-epoch, at a step's end, many epochs
def test_the_count_is_the_walk_over_every_example(examples, batch, micro, world, tokens):
    lengths = [random.Random(i).choice([0, 1, 5, 17, 30]) for i in range(examples)]  # empty ones too
    assert steps_for_tokens(lengths, batch, micro, 7, tokens, world) == walked(lengths, batch, micro, 7, tokens, world)


def test_a_budget_at_an_epochs_end_buys_the_step_that_ends_it():
    lengths = [3] * 16  # 48 tokens an epoch, four steps of 4
    assert [steps_for_tokens(lengths, 4, 4, 0, t) for t in (48, 49, 480, 481)] == [4, 5, 40, 41]


def test_a_huge_budget_is_counted_at_once_or_refused():
    lengths = [random.Random(i).randint(1, 30) for i in range(8192)]
    assert steps_for_tokens(lengths, 32, 32, 0, MAX_TOKEN_EPOCHS * sum(lengths)) == MAX_TOKEN_EPOCHS * 8192 // 32
    with pytest.raises(UserError) as refused:
        steps_for_tokens(lengths, 32, 32, 0, 99_999_999_999)
    assert str(refused.value) == (f"train.max_tokens: 99999999999 tokens are more than {MAX_TOKEN_EPOCHS} epochs of "
                                  f"the 8192 training examples ({sum(lengths)} tokens an epoch); give at most "
                                  f"{MAX_TOKEN_EPOCHS * sum(lengths)}, or a budget in steps (train.max_steps)")

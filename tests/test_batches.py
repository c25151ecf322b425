"""The training stream's order (engine/batches.py): what a budget in tokens buys, step by step."""

import random

import pytest

from ftbench.engine.batches import shuffled, steps_for_tokens


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


def test_a_budget_no_step_can_reach_is_refused():
    with pytest.raises(ValueError, match="no step reaches 0 tokens"):
        steps_for_tokens([3, 4], 2, 2, seed=0, tokens=0)
    with pytest.raises(ValueError, match="micro-batches of 4"):
        steps_for_tokens([3, 4], 4, 4, seed=0, tokens=10)

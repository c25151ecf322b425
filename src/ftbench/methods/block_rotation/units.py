"""Units and schedules for block-rotating methods (HiFT, BAdam, LISA).

A *unit* is read off the model's structure (architecture.py), never from a
per-architecture name table: each block of every layer stack is a unit
(`layer.<i>` when the model has one stack, the block's module path, e.g.
`transformer.encoder.block.0`, when it has several: encoder and decoder).
The `embedding` unit holds what is registered before the first block and every
embedding table outside the blocks (a decoder's position table); everything
else outside the blocks is the `head` (final norms merged with the LM or
classification head). Parameters come from `named_parameters()`, which yields a
tied weight once, so a tied LM head is counted with the embedding.

The *schedule* says which units train at each optimizer step. It is a pure
function of the step number (random draws are seeded by the run's seed and the
cycle or interval index), so a resumed run continues the same order without
carrying a generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import nn

from ftbench.errors import UserError
from ftbench.models.architecture import architecture


@dataclass
class Unit:
    name: str  # embedding | layer.<i> (or the block's path, with several stacks) | head
    params: list[tuple[str, nn.Parameter]]

    @property
    def numel(self) -> int:
        return sum(p.numel() for _, p in self.params)


def derive_units(model: nn.Module) -> list[Unit]:
    """embedding, one unit per block of every stack, head: each with its (name, parameter) pairs."""
    arch = architecture(model)
    if not arch.blocks:
        raise UserError("method.name", f"{type(model).__name__} has no repeated layer list to rotate over; "
                        "use a transformer (LLaMA, Mistral, BERT, RoBERTa, T5, ...) or method=full")
    block_modules = [model.get_submodule(block.name) for block in arch.blocks]
    owner = {id(p): i for i, block in enumerate(block_modules) for p in block.parameters()}
    tables = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    embedding: list = []
    blocks: list[list] = [[] for _ in block_modules]
    head: list = []
    for name, param in model.named_parameters():
        index = owner.get(id(param))
        if index is not None:
            blocks[index].append((name, param))
        elif any(blocks) and id(param) not in tables:
            head.append((name, param))
        else:
            embedding.append((name, param))
    names = [f"layer.{b.index}" if len(arch.stacks) == 1 else b.name for b in arch.blocks]
    units = [Unit("embedding", embedding), *(Unit(n, b) for n, b in zip(names, blocks)), Unit("head", head)]
    return [u for u in units if u.params]


def pick(units: list[Unit], wanted, key: str) -> list[int]:
    """Indices of the named units; a name is a unit name or its position (0 = embedding)."""
    names = [u.name for u in units]
    picked = []
    for item in wanted:
        text = str(item)
        if text in names:
            picked.append(names.index(text))
        elif text.lstrip("-").isdigit() and -len(units) <= int(text) < len(units):
            picked.append(int(text) % len(units))
        else:
            shown = ", ".join(names) if len(names) <= 8 else f"{names[0]}, {names[1]} .. {names[-2]}, {names[-1]}"
            raise UserError(key, f"no unit '{text}' in this model; units are: {shown} (or their positions)")
    return sorted(set(picked))


@dataclass(frozen=True)
class Schedule:
    """Which units are active at each optimizer step.

    Rotating orders (down2up, up2down, random) split the queue into
    ceil(n / group_size) consecutive groups, one *cycle* visiting each group
    once; `sample` draws `group_size` queue units uniformly at random for every
    interval (LISA). A group stays active for `steps_per_block` steps.
    """

    queue: tuple[int, ...]  # rotating unit indices, in model order (embedding first)
    always: tuple[int, ...]  # active at every step
    group_size: int
    steps_per_block: int
    order: str
    reshuffle: bool
    seed: int

    @property
    def groups_per_cycle(self) -> int:
        return max(1, math.ceil(len(self.queue) / self.group_size))

    @property
    def cycle_steps(self) -> int:
        return self.groups_per_cycle * self.steps_per_block

    def interval(self, step: int) -> int:
        return step // self.steps_per_block

    def cycle_order(self, cycle: int) -> list[int]:
        if self.order == "up2down":
            return list(reversed(self.queue))
        if self.order == "random":
            draw = np.random.default_rng([self.seed, cycle] if self.reshuffle else [self.seed])
            return [self.queue[i] for i in draw.permutation(len(self.queue))]
        return list(self.queue)

    def rotating(self, interval: int) -> list[int]:
        """The queue units of an interval (without the always-active ones)."""
        if not self.queue:
            return []
        if self.order == "sample":
            draw = np.random.default_rng([self.seed, interval])
            return sorted(self.queue[i] for i in draw.choice(len(self.queue), self.group_size, replace=False))
        cycle, position = divmod(interval, self.groups_per_cycle)
        return self.cycle_order(cycle)[position * self.group_size:(position + 1) * self.group_size]

    def active(self, interval: int) -> tuple[int, ...]:
        return tuple(sorted({*self.always, *self.rotating(interval)}))

    def largest_group(self, sizes: list[int]) -> int:
        """Parameters of the largest active set the schedule can produce."""
        always = sum(sizes[i] for i in self.always)
        if self.order == "sample" or (self.order == "random" and self.reshuffle):  # any units can meet
            return always + sum(sorted((sizes[i] for i in self.queue), reverse=True)[:self.group_size])
        groups = (self.rotating(g) for g in range(self.groups_per_cycle))
        return always + max(sum(sizes[i] for i in group) for group in groups)

"""Units and schedules for block-rotating methods (HiFT, BAdam, LISA).

A *unit* is read off the model's structure, never from a per-architecture name
table: the repeated layer list is the largest `nn.ModuleList` whose children all
share one class; everything registered before it is the `embedding` unit, each
block is `layer.<i>`, and everything after it is the `head` (the final norm
merged with the LM or classification head). Parameters come from
`named_parameters()`, which yields a tied weight once, so a tied LM head is
counted with the embedding.

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

from ..errors import UserError

ORDERS = ("down2up", "up2down", "random", "sample")


@dataclass
class Unit:
    name: str  # embedding | layer.<i> | head
    params: list[tuple[str, nn.Parameter]]

    @property
    def numel(self) -> int:
        return sum(p.numel() for _, p in self.params)


def repeated_layers(model: nn.Module) -> nn.ModuleList | None:
    """The model's block list: the largest `ModuleList` of same-class children."""
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0
                  and len({type(child) for child in m}) == 1]
    if not candidates:
        return None
    return max(candidates, key=lambda m: sum(p.numel() for p in m.parameters()))


def derive_units(model: nn.Module) -> list[Unit]:
    """embedding, layer.0 .. layer.<L-1>, head: each with its (name, parameter) pairs."""
    layers = repeated_layers(model)
    if layers is None:
        raise UserError("method.name", f"{type(model).__name__} has no repeated layer list to rotate over; "
                        "use a transformer (LLaMA, Mistral, BERT, RoBERTa, ...) or method=full")
    owner = {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}
    embedding: list = []
    blocks: list[list] = [[] for _ in layers]
    head: list = []
    for name, param in model.named_parameters():
        index = owner.get(id(param))
        if index is not None:
            blocks[index].append((name, param))
        elif any(blocks):
            head.append((name, param))
        else:
            embedding.append((name, param))
    units = [Unit("embedding", embedding), *(Unit(f"layer.{i}", b) for i, b in enumerate(blocks)), Unit("head", head)]
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

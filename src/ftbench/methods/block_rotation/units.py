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
    place: tuple = ()  # (name,) for the embedding and the head; a block's (stack, index, the stack's depth)

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
    depths = [sum(b.stack == s for b in arch.blocks) for s in range(len(arch.stacks))]
    units = [Unit("embedding", embedding, ("embedding",)),
             *(Unit(n, p, (b.stack, b.index, depths[b.stack])) for n, p, b in zip(names, blocks, arch.blocks)),
             Unit("head", head, ("head",))]
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
class Draws:
    """The groups a run's steps train, in places (`Unit.place`), one per step from the step before them (a
    run of one group cut to two steps: the second holds what the others hold); `layers`: the run's depth
    (its stacks of that depth are the ones a probe cuts down); `depths`: the layer counts of the planner's
    probes (plan/planner.py), those at which every replayed block has its place (`replay_depth`); `left`: the
    places of the units that have left before those steps (offload: their host buffers exist), None where every
    unit has."""

    groups: tuple[tuple[tuple, ...], ...]
    layers: int
    depths: tuple[int, int]
    left: tuple[tuple, ...] | None = None


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
    script: tuple[tuple[int, ...], ...] = ()  # the planner's probe: the queue units of each interval, given

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
        if interval < len(self.script):
            return list(self.script[interval])
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


def probe_units(places: tuple[tuple, ...], units: list[Unit], layers: int, shallow: int) -> dict[tuple, int]:
    """The units of a planner's probe (plan/probe.py, its stacks cut to `shallow` blocks or more) that train as
    a run's `places` do: the embedding and the head as themselves; in a stack the probes cut down (the run's
    `layers` deep), each block where `_placed` puts it in the shallower probe, at the same place counted from the
    bottom, or from the top in this one. By place."""
    index = {u.place: i for i, u in enumerate(units)}
    depth = {u.place[0]: u.place[2] for u in units if len(u.place) == 3}
    picked = {p: index[p] for p in places if len(p) == 1}
    for stack in sorted({p[0] for p in places if len(p) == 3}):
        rows = sorted(p[1] for p in places if len(p) == 3 and p[0] == stack)
        run_depth, here = next(p[2] for p in places if len(p) == 3 and p[0] == stack), depth[stack]
        if run_depth != layers:  # a stack the probes keep whole (a decoder deeper than its encoder)
            picked.update({(stack, i, run_depth): index[(stack, i, here)] for i in rows})
            continue
        for i, (at, from_top, _) in zip(rows, _placed(rows, run_depth, shallow)):
            picked[(stack, i, run_depth)] = index[(stack, here - (shallow - at) if from_top else at, here)]
    return picked


def replay_depth(groups: tuple[tuple[tuple, ...], ...], layers: int, shallow: int) -> int:
    """The least depth from `shallow` on at which a probe has every block of `groups` (places, a run's `layers`
    deep) at its place (`_placed`): from there the step a probe replays holds what the run's does, linearly in
    the probes' depth. At the run's own depth every block is at its place. A block placed lower (a 6-layer
    LLaMA's layer.3 at layer.1 of probes of 3 and 4 layers) keeps every layer above it for backward, in the line
    through the probes two more than the run: BAdam planned +13 %."""
    rows = [sorted(p[1] for p in group if len(p) == 3 and p[0] == stack and p[2] == layers)
            for group in groups for stack in {p[0] for p in group if len(p) == 3}]
    while not all(exact for r in rows if r for _, _, exact in _placed(r, layers, shallow)):
        shallow += 1
    return shallow


def _placed(rows: list[int], run_depth: int, shallow: int) -> list[tuple[int, bool, bool]]:
    """Where a group's blocks of one stack (`rows`, ascending, of a stack `run_depth` deep) train in the shallower
    probe (`shallow` blocks): (position, counted from its top in a deeper probe, at the run's place). A group's
    lowest blocks at their position from the bottom and its highest at their position from the top where the
    shallower probe has them so (at the run's place: then what a step holds is linear in the probe's depth, and
    the line through the two probes gives the run's), a block neither way just above the group's block below it,
    or as the lowest, as low as leaves room for the blocks above it (it keeps more for backward than the run's:
    the safe side). A group's only block keeps its role: never the shallower probe's last layer, nor its first,
    for another."""
    placed, at, bottom = [], -1, True  # the block below's position in the shallower probe
    for j, i in enumerate(rows):
        above, top = len(rows) - 1 - j, shallow - (run_depth - i)
        if bottom and i + above < shallow and (j or above or i == 0 or i < shallow - 1):
            at, from_top, exact = i, False, True
        elif top > at and (j or above or top >= 1):
            at, from_top, exact, bottom = top, True, True, False
        elif j:
            at, from_top, exact, bottom = at + 1, placed[-1][1], False, False
        else:
            at = shallow - 1 - len(rows) if shallow - 1 - len(rows) >= 1 else shallow - len(rows)
            from_top, exact = False, False
        placed.append((at, from_top, exact))
    return placed

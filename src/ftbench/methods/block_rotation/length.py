"""A rotation's run length: a run too short for its schedule, one whose warm-up spans its whole schedule, or
one in which a unit is active only while a warm-up holds the learning rate at 0, is refused before training
(`Method.check_length`, called by job/steps.train_spec before the run-wide knobs of config/within.py). Each
refusal advises what passes every one of these checks: the fewest steps (`fewest_steps`, in tokens under a
token budget: within.Budget) and a setting of the method or the warm-up that the same run passes (`trains`)."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from types import SimpleNamespace

from ftbench.config import within
from ftbench.errors import UserError
from ftbench.methods.block_rotation.units import Schedule

# How far ahead (in cycles) a unit's next visit is looked for (order=sample draws at random and may never return).
HORIZON_CYCLES = 1000

NO_WARMUP = SimpleNamespace(warmup_steps=0, warmup_ratio=0.0)  # an optim config's warm-up, off


def check(s: Schedule, names: list[str], per_cycle: bool, steps: int, optim,
          budget: within.Budget = within.STEPS) -> None:
    """Refuse (`UserError` on method.steps_per_block) a run of `steps` optimizer steps too short for the
    rotation `s` of the units `names`. Under a per-cycle lr schedule (HiFT) the run must last one whole cycle:
    a shorter one never steps its rate and leaves the cycle's later groups untrained. Under a per-step
    schedule (BAdam, LISA) it must reach a unit beyond its first group (`first_switch`): a run that ends
    within its first interval trains that group alone, as does one whose sampled draws (order=sample) repeat
    it. A run that switches but ends before a whole cycle is allowed there: it trains each
    group it reaches, as a longer run would (BAdam's claim over the run counts only those,
    `claimed_over_run`). Then the warm-up of `optim`: one that spans the whole schedule (within.check_warmup),
    or one whose lr-0 first step leaves a unit untrained (`check_warmup_start`). `budget`: what sets the
    run's length, in the advice."""
    key = within.warmup_key(optim)

    def longer(unwarmed: bool = False) -> str:
        """The fewest steps that pass ('set train.max_steps to at least 15'); where none do (a unit of the
        warm-up's first step never visited again: order=sample), empty, or with `unwarmed` those without it."""
        fewest = fewest_steps(s, per_cycle, optim)
        if fewest is not None:
            return f"set {budget.at_least(fewest)}"
        unwarmed_fewest = fewest_steps(s, per_cycle, NO_WARMUP) if unwarmed else None
        return "" if unwarmed_fewest is None else f"use no warm-up ({key}=0) with {budget.at_least(unwarmed_fewest)}"

    rotates = len(s.queue) > s.group_size  # else one group: every unit is active from the first step
    if rotates and per_cycle and steps < s.cycle_steps:
        visited = set().union(*(s.rotating(i) for i in range(math.ceil(steps / s.steps_per_block))))
        left = [names[i] for i in s.queue if i not in visited]
        per = f"{s.steps_per_block} step{'s' if s.steps_per_block > 1 else ''} per block"
        lost = f" (the per-cycle lr schedule steps once a cycle), so {len(left)} of them ({_shown(left)}) would " \
            "never train" if left else ", so its learning-rate schedule, which steps once a cycle, would never step"
        raise UserError("method.steps_per_block", f"{per} in a {steps}-step run: one cycle of the "
                        f"{len(s.queue)} rotating units takes {s.cycle_steps} steps{lost}; "
                        + _either(longer(unwarmed=True), _other_groups(s, per_cycle, steps, optim)))
    switch = first_switch(s) if rotates else 0
    if rotates and (switch is None or steps <= switch):
        first = ", ".join(names[i] for i in s.rotating(0))
        blocks = s.interval(steps - 1) + 1
        why = "it never switches" if blocks == 1 else (
            f"its {blocks} blocks all draw {first} (order=sample draws at random, seed {s.seed})")
        fewer = next((f"set method.steps_per_block={k}" for k in range(steps - 1, 0, -1)
                      if trains(dataclasses.replace(s, steps_per_block=k), per_cycle, steps, optim)), "")
        raise UserError("method.steps_per_block", f"{s.steps_per_block} steps per block in a {steps}-step run: "
                        f"{why}, so only {first} of the {len(s.queue)} rotating units would "
                        f"train; " + _either(fewer, longer(unwarmed=True)))
    schedule = schedule_length(s, per_cycle, steps)
    if not within.fits(optim, schedule):
        within.check_warmup(optim, steps, schedule, longer(), shorter=not (rotates and idle(s, per_cycle, steps)))
    if rotates and within.warmup_length(optim, schedule) > 0:
        check_warmup_start(s, names, per_cycle, steps, key, longer)


def check_warmup_start(s: Schedule, names: list[str], per_cycle: bool, steps: int, key: str,
                       longer: Callable[[], str]) -> None:
    """Refuse (`UserError` on the warm-up's `key`) a run in which a unit it visits is active only while the
    lr is 0: a warm-up starts at 0 for the schedule's first step, the run's first step (per-step) or its
    whole first cycle (per-cycle: every unit's first visit). Such a unit would never train (was: HiFT,
    5 steps over 4 units with optim.warmup_steps=1, trained the embedding alone, status ok). `longer`: the
    advice of a run that passes ('set train.max_steps to at least 8'; empty: none does), asked on refusal."""
    lost = idle(s, per_cycle, steps)
    if not lost:
        return
    span = (f"its whole first cycle ({s.cycle_steps} steps: the per-cycle schedule steps once a cycle)"
            if per_cycle else "its first step")
    raise UserError(key, f"a warm-up runs the first step of the learning-rate schedule at lr 0, here {span}, "
                    f"and {len(lost)} of the rotating units ({_shown([names[i] for i in lost])}) are active only "
                    f"then in this {steps}-step run, so they would never train; "
                    + _either(longer(), f"use no warm-up ({key}=0)"))


def schedule_length(s: Schedule, per_cycle: bool, steps: int) -> int:
    """The scheduler steps of a run of `steps` optimizer steps: one a cycle (per-cycle), else one a step."""
    return math.ceil(steps / s.cycle_steps) if per_cycle else steps


def idle(s: Schedule, per_cycle: bool, steps: int) -> list[int]:
    """The queue units a run of `steps` steps visits only while a warm-up holds the lr at 0 (its first
    scheduler step: the first cycle under a per-cycle schedule, else the first step)."""
    at_zero = s.cycle_steps if per_cycle else 1
    reached = set().union(*(s.rotating(i) for i in range(s.interval(steps - 1) + 1)))
    return [i for i in s.queue if i in reached and next_visit(s, i, at_zero) >= steps]


def trains(s: Schedule, per_cycle: bool, steps: int, optim) -> bool:
    """Whether a run of `steps` steps of the rotation `s` under the warm-up of `optim` passes `check`."""
    rotates = len(s.queue) > s.group_size
    switch = first_switch(s) if rotates else 0
    if rotates and (switch is None or steps <= switch or per_cycle and steps < s.cycle_steps):
        return False
    schedule = schedule_length(s, per_cycle, steps)
    warmup = within.warmup_length(optim, schedule)
    return warmup < schedule and not (rotates and warmup > 0 and idle(s, per_cycle, steps))


def fewest_steps(s: Schedule, per_cycle: bool, optim) -> int | None:
    """The fewest steps of a run of the rotation `s` that passes `check` under the warm-up of `optim` (None:
    no unit beyond the first group, or of the first scheduler step, is visited within HORIZON_CYCLES cycles).
    Each check holds from a length on: one cycle (per-cycle) and a unit beyond the first group
    (`first_switch`), a schedule longer than the warm-up, and past the first scheduler step the next visit of
    every unit it held."""
    rotates = len(s.queue) > s.group_size
    switch = first_switch(s) if rotates else 0
    if switch is None:
        return None
    need = max(s.cycle_steps if per_cycle else 1, switch + 1) if rotates else 1
    first = within.fewest_schedule(optim)  # the fewest scheduler steps the warm-up fits
    need = max(need, (first - 1) * s.cycle_steps + 1 if per_cycle else first)
    if rotates and within.warmup_length(optim, schedule_length(s, per_cycle, need)) > 0:
        at_zero = s.cycle_steps if per_cycle else 1
        held = set().union(*(s.rotating(i) for i in range(s.interval(at_zero - 1) + 1)))
        last = max(next_visit(s, i, at_zero) for i in held)
        if last >= HORIZON_CYCLES * s.cycle_steps:
            return None
        need = max(need, last + 1)
    return need


@functools.lru_cache(maxsize=1024)
def first_switch(s: Schedule) -> int | None:
    """The first step at which a unit beyond the first group is active: the second interval's first step
    under a deterministic order; under order=sample, whose draws may repeat the first group, that of the
    first interval drawing another unit (None: none within HORIZON_CYCLES cycles)."""
    first, interval = set(s.rotating(0)), 1
    while set(s.rotating(interval)) <= first:
        interval += 1
        if interval * s.steps_per_block >= HORIZON_CYCLES * s.cycle_steps:
            return None
    return interval * s.steps_per_block


def next_visit(s: Schedule, unit: int, step: int) -> int:
    """The first step at or after `step` at which `unit` is active (looked for within HORIZON_CYCLES cycles)."""
    interval = s.interval(step)
    while unit not in s.rotating(interval) and interval * s.steps_per_block < HORIZON_CYCLES * s.cycle_steps:
        interval += 1
    return max(step, interval * s.steps_per_block)


def _other_groups(s: Schedule, per_cycle: bool, steps: int, optim) -> str:
    """A setting of the rotation with which a run of `steps` steps passes `check`: the most steps per block
    below `s`'s, else the smallest larger group (with one step per block if it needs it); empty: none does."""
    for k in range(s.steps_per_block - 1, 0, -1):
        if trains(dataclasses.replace(s, steps_per_block=k), per_cycle, steps, optim):
            return f"method.steps_per_block={k}"
    for per_block in dict.fromkeys((s.steps_per_block, 1)):
        for g in range(s.group_size + 1, len(s.queue) + 1):
            if trains(dataclasses.replace(s, group_size=g, steps_per_block=per_block), per_cycle, steps, optim):
                return f"method.group_size={g}" + (
                    f" with method.steps_per_block={per_block}" if per_block != s.steps_per_block else "")
    return ""


def _either(*fixes: str) -> str:
    """The fixes given ('set ...'), joined with 'or'."""
    return ", or ".join(f for f in fixes if f)


def _shown(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{names[0]}, {names[1]} .. {names[-1]}"

"""A rotation's run length: a run too short for its schedule, or one in which a unit is active only while a
warm-up holds the learning rate at 0, is refused before training (`Method.check_length`, called by
job/steps.train_spec before the run-wide knobs of config/within.py)."""

from __future__ import annotations

import math

from ftbench.config import within
from ftbench.errors import UserError
from ftbench.methods.block_rotation.units import Schedule

# How far ahead (in cycles) a unit's next visit is looked for (order=sample draws at random and may never return).
HORIZON_CYCLES = 1000


def check(s: Schedule, names: list[str], per_cycle: bool, steps: int, schedule: int, optim) -> None:
    """Refuse (`UserError` on method.steps_per_block) a run of `steps` optimizer steps (`schedule` steps of its
    lr schedule) too short for the rotation `s` of the units `names`. Under a per-cycle lr schedule (HiFT) the run must last one whole cycle:
    a shorter one never steps its rate and leaves the cycle's later groups untrained. Under a per-step
    schedule (BAdam, LISA) it must switch at least once: a run that ends within its first interval trains
    that group alone. A run that switches but ends before a whole cycle is allowed there: it trains each
    group it reaches, as a longer run would (BAdam's claim over the run counts only those,
    `claimed_over_run`). Then the warm-up of `optim` (`check_warmup_start`)."""
    if len(s.queue) <= s.group_size:
        return  # one group: every unit is active from the first step
    if per_cycle and steps < s.cycle_steps:
        visited = set().union(*(s.rotating(i) for i in range(math.ceil(steps / s.steps_per_block))))
        left = [names[i] for i in s.queue if i not in visited]
        fewer = steps // s.groups_per_cycle
        other = (f"method.steps_per_block to at most {fewer}" if fewer else
                 f"method.group_size to at least {math.ceil(len(s.queue) / steps)}"
                 + (" with method.steps_per_block=1" if s.steps_per_block > 1 else ""))
        per = f"{s.steps_per_block} step{'s' if s.steps_per_block > 1 else ''} per block"
        raise UserError("method.steps_per_block", f"{per} in a {steps}-step run: one cycle of the "
                        f"{len(s.queue)} rotating units takes {s.cycle_steps} steps (the per-cycle lr schedule "
                        f"steps once a cycle), so {len(left)} of them ({_shown(left)}) would never train; set "
                        f"train.max_steps to at least {s.cycle_steps}, or {other}")
    if steps <= s.steps_per_block:
        first = ", ".join(names[i] for i in s.rotating(0))
        raise UserError("method.steps_per_block", f"{s.steps_per_block} steps per block in a {steps}-step run: "
                        f"it never switches, so only {first} of the {len(s.queue)} rotating units would "
                        f"train; set method.steps_per_block below {steps} (or train.max_steps above "
                        f"{s.steps_per_block})")
    if 0 < within.warmup_length(optim, schedule) < schedule:  # (a longer warm-up: within.check_warmup)
        check_warmup_start(s, names, per_cycle, steps, within.warmup_key(optim))


def check_warmup_start(s: Schedule, names: list[str], per_cycle: bool, steps: int, key: str) -> None:
    """Refuse (`UserError` on the warm-up's `key`) a run in which a unit it visits is active only while the
    lr is 0: a warm-up starts at 0 for the schedule's first step, the run's first step (per-step) or its
    whole first cycle (per-cycle: every unit's first visit). Such a unit would never train (was: HiFT,
    5 steps over 4 units with optim.warmup_steps=1, trained the embedding alone, status ok)."""
    at_zero = s.cycle_steps if per_cycle else 1
    reached = set().union(*(s.rotating(i) for i in range(s.interval(steps - 1) + 1)))
    idle = [i for i in s.queue if i in reached and next_visit(s, i, at_zero) >= steps]
    if not idle:
        return
    span = (f"its whole first cycle ({s.cycle_steps} steps: the per-cycle schedule steps once a cycle)"
            if per_cycle else "its first step")
    need = max(next_visit(s, i, at_zero) for i in idle) + 1
    more = f"set train.max_steps to at least {need}, or " if need < HORIZON_CYCLES * s.cycle_steps else ""
    raise UserError(key, f"a warm-up runs the first step of the learning-rate schedule at lr 0, here {span}, "
                    f"and {len(idle)} of the rotating units ({_shown([names[i] for i in idle])}) are active only "
                    f"then in this {steps}-step run, so they would never train; {more}use no warm-up ({key}=0)")


def next_visit(s: Schedule, unit: int, step: int) -> int:
    """The first step at or after `step` at which `unit` is active (looked for within HORIZON_CYCLES cycles)."""
    interval = s.interval(step)
    while unit not in s.rotating(interval) and interval * s.steps_per_block < HORIZON_CYCLES * s.cycle_steps:
        interval += 1
    return max(step, interval * s.steps_per_block)


def _shown(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{names[0]}, {names[1]} .. {names[-1]}"

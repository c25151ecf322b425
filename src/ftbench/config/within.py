"""Settings that cannot work within the run's length, refused before training in one line.

A knob that counts steps is held to the optimizer steps the run takes (`knobs.settle`:
train.max_steps, task.max_steps, or epochs over the training set) and to the steps its
learning-rate schedule spans (a method may step the schedule once per cycle: HiFT's
`lr_policy=per_cycle`). `config.schema.check` calls `check` with the steps known from the
config alone (before any job of a sweep launches; the warm-up there only where the method's config
alone tells its schedule's length, `MethodConfig.schedule_length`: a per-cycle schedule's cycle counts
the model's units); the job calls it again once the data has counted the steps and the method has
said how long its schedule is (`job/steps.train_spec`). A refusal that suggests a value suggests one
the same check accepts, and a warm-up's names the fewest steps that fit it (`Budget`: in tokens under
train.max_tokens). The method's own length check (`Method.check_length`: a rotation's first switch, its
warm-up) comes first: where the config tells it may refuse the run (`MethodConfig.may_refuse_length`), the
config's check leaves these to the job, so that no advice here (a warm-up ratio, a step count) is then
refused on the method's key.

| knob                                   | refused when                        | what would happen                      |
| -------------------------------------- | ----------------------------------- | -------------------------------------- |
| optim.warmup_steps                     | >= the schedule's steps             | the learning rate never reaches its value |
| optim.warmup_ratio                     | rounds to >= the schedule's steps   | the same                               |
| eval.every_steps                       | > the run's steps                   | no validation during training          |
| eval.every_steps with train.select=best| >= the run's steps                  | one validation (the final one): nothing to select |
| a method's switching interval          | the method's `check_length`         | HiFT (per-cycle lr): the run ends before one cycle of its blocks; BAdam/LISA: before their first switch, so the other blocks never train |
| a warm-up beside a rotation            | a unit is active only at lr 0 (`check_length`) | a warm-up's first schedule step runs at lr 0: HiFT's whole first cycle, BAdam's first step; a unit visited only then never trains |

Knobs that may exceed the run, on purpose:

- train.checkpoint_every: the checkpoint after the last step is written anyway; a large value asks
  for that one alone.
- train.log_every: the last step is logged anyway.
- train.measure_warmup_steps: the measured window starts at the last step at the latest.
- a projection gap (GaLore's, APOLLO's update_proj_gap): the first projection then holds for the
  whole run, a valid setting of those methods.
- profile.*: mode=profile counts its own steps; nothing here applies to it.

A run of 0 steps (scoring the untouched model) trains nothing, so none of this applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ftbench.errors import UserError


@dataclass(frozen=True)
class Budget:
    """What sets the run's length, as a refusal advises a longer run: train.max_steps, or under a token budget
    train.max_tokens, a number of steps converted by `tokens_for` (the fewest tokens that buy them: the job's
    count, job/steps.Feed.tokens_for_steps)."""

    tokens_for: Callable[[int], int] | None = None

    def at_least(self, steps: int) -> str:
        """The setting that gives a run of `steps` steps or more, as advice ('train.max_steps to at least 15')."""
        if self.tokens_for is None:
            return f"train.max_steps to at least {steps}"
        return f"train.max_tokens to at least {self.tokens_for(steps)} (the tokens of {steps} steps)"


STEPS = Budget()  # a budget in steps (train.max_steps, task.max_steps or epochs: train.max_steps wins over them)


def check(cfg, steps: int | None, schedule: int | None, budget: Budget = STEPS) -> None:
    """Refuse (`UserError` naming the key) a step-counting knob the run cannot reach.

    `steps`: the run's optimizer steps (None: not known yet, nothing is checked); `schedule`: the
    scheduler steps its learning-rate schedule spans (None: not known yet, the warm-up is not checked): here
    the run's steps, as a method whose schedule is shorter checks its warm-up first (`Method.check_length`).
    `budget`: what a refusal advises to lengthen the run."""
    if cfg.mode != "train" or not steps:
        return
    if schedule is not None and not fits(cfg.optim, schedule):
        check_warmup(cfg.optim, steps, schedule, f"set {budget.at_least(fewest_schedule(cfg.optim))}")
    every = cfg.eval.every_steps
    if every is not None and every > steps:
        raise UserError("eval.every_steps", f"{every} exceeds the run's {steps} steps: no validation would run "
                        f"during training; set eval.every_steps below {steps} or null (the final evaluation "
                        "runs regardless)")
    if every is not None and every >= steps and cfg.train.select == "best":
        raise UserError("eval.every_steps", f"{every} leaves train.select=best one validation in {steps} steps "
                        f"(the final one) to choose from; set eval.every_steps below {steps}, or train.select=last")


def check_warmup(optim, steps: int, schedule: int, longer: str, shorter: bool = True) -> None:
    """Refuse a warm-up (optim.warmup_steps, else optim.warmup_ratio as engine/optim.make_scheduler rounds
    it) that spans all of the `schedule` scheduler steps of a run of `steps` optimizer steps. The refusal
    advises the longest warm-up below the schedule (`shorter`; False: the method refuses any warm-up of this
    run, so none) or `longer`: the fewest steps that pass every check ('set train.max_steps to at least 15';
    empty: no run does)."""
    if fits(optim, schedule):
        return
    spans = f"the run's {steps} steps" if schedule == steps else (
        f"the {schedule} steps of the learning-rate schedule (the method steps it {schedule} times in {steps} "
        f"optimizer steps)")
    key = warmup_key(optim)
    if not shorter or schedule == 1:
        fix = f"use no warm-up ({key}=0)"
    else:
        fix = (f"set optim.warmup_steps below {schedule}" if key == "optim.warmup_steps"
               else f"set optim.warmup_ratio to at most {largest_ratio(schedule)}")
    fix += f", or {longer}" if longer else ""
    if key == "optim.warmup_steps":
        raise UserError(key, f"{optim.warmup_steps} is not below {spans}: the learning rate would never reach "
                        f"optim.lr; {fix}")
    raise UserError(key, f"{optim.warmup_ratio} warms up over all of {spans}: the learning rate would never "
                    f"reach optim.lr; {fix}")


def fits(optim, schedule: int) -> bool:
    """Whether the warm-up of `optim` ends within a schedule of `schedule` scheduler steps (`warmup_length`)."""
    return warmup_length(optim, schedule) < schedule


def fewest_schedule(optim) -> int:
    """The fewest scheduler steps whose schedule the warm-up of `optim` fits (`fits`): optim.warmup_steps + 1,
    or the schedule optim.warmup_ratio leaves a step after its warm-up (ratio < 1)."""
    if optim.warmup_steps is not None:
        return optim.warmup_steps + 1
    schedule = max(1, int(1 / (1 - optim.warmup_ratio)) - 2)  # (a step or two below the bound: floats round)
    while not fits(optim, schedule):
        schedule += 1
    return schedule


def warmup_length(optim, schedule: int) -> int:
    """The scheduler steps a warm-up spans (engine/optim.make_scheduler): optim.warmup_steps, else
    optim.warmup_ratio of the `schedule` steps, rounded up. The first of them runs at lr 0."""
    return optim.warmup_steps if optim.warmup_steps is not None else math.ceil(optim.warmup_ratio * schedule)


def warmup_key(optim) -> str:
    """The key that sets the warm-up: optim.warmup_steps when given (it wins), else optim.warmup_ratio."""
    return "optim.warmup_steps" if optim.warmup_steps is not None else "optim.warmup_ratio"


def largest_ratio(schedule: int) -> float:
    """The largest warm-up ratio short enough for a `schedule`-step schedule, cut (never rounded up) to as
    many decimals as the schedule has digits, 3 at least: (schedule - 1) / schedule is often no short decimal."""
    digits = max(3, len(str(schedule)))
    return (schedule - 1) * 10**digits // schedule / 10**digits

"""The groups of one mode: `profile` (mode=profile's synthetic steps, and the steps `ftbench plan` plans) and
`plan` (mode=plan's budget), with their checks and the knobs the other modes leave unused (config/unused.py).

What reads them: a profile run (job/steps.py) every profile knob; a plan (plan/planner.py) the shape it plans,
`PLANNED` (profile.warmup_steps and profile.steps place a rotating method's groups, plan/held_state.py), and
plan.margin where it has a budget (hardware.memory_gib, or a GPU: planner.budget); a training run none of them
(its micro-batch planner, plan/micro_batch.py, gives the planner a profile shape of its own).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ftbench.config.unused import Unused
from ftbench.errors import one_of, require

PLANNED = ("batch_size", "seq_len", "warmup_steps", "steps", "objective")  # the profile knobs a plan reads


@dataclass
class ProfileConfig:
    batch_size: int = 4
    seq_len: int = 512
    warmup_steps: int = 3
    steps: int = 10
    objective: str = "auto"
    trace_memory: bool = True

    def check(self, key: str) -> None:
        require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        require(self.seq_len >= 2, f"{key}.seq_len", "must be >= 2")
        require(self.warmup_steps >= 0, f"{key}.warmup_steps", "must be >= 0")
        require(self.steps >= 1, f"{key}.steps", "must be >= 1")
        one_of(self.objective, ("auto", "causal_lm", "seq_cls"), f"{key}.objective")

    def unused(self, key: str, cfg) -> list[Unused]:
        """Every profile knob under mode=train; under mode=plan those a plan does not read (trace_memory: a plan
        traces nothing)."""
        if cfg.mode == "profile":
            return []
        return [Unused(f"{key}.{f.name}", "mode=profile (or ftbench plan)" if f.name in PLANNED else "mode=profile",
                       f"mode={cfg.mode}") for f in fields(self) if cfg.mode == "train" or f.name not in PLANNED]


@dataclass
class PlanConfig:
    margin: float = 0.1

    def check(self, key: str) -> None:
        require(0 <= self.margin < 1, f"{key}.margin", "must be in [0, 1): the share of device memory kept free")

    def unused(self, key: str, cfg) -> list[Unused]:
        """plan.margin outside mode=plan, and in a plan with no budget to keep it of (hardware.device=cpu and no
        hardware.memory_gib: planner.budget)."""
        if cfg.mode != "plan":
            return [Unused(f"{key}.margin", "mode=plan (ftbench plan ...)", f"mode={cfg.mode}")]
        if cfg.hardware.device == "cpu" and cfg.hardware.memory_gib is None:
            return [Unused(f"{key}.margin", "hardware.memory_gib=GIB (or a GPU: hardware.device=auto)",
                           "hardware.device=cpu, hardware.memory_gib=null")]
        return []

"""What every method's schema shares (torch-free): the learning rate, the accepted-values check,
and what the method declares it can do.

A method's schema (`methods/<name>/config.py`, a Hydra structured config) subclasses
`MethodConfig`. Composing a config (`ftbench --help`, `--cfg job`, the planner) imports only these
schemas, never torch or a method's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from omegaconf import MISSING

from ftbench.errors import one_of, require

MASTER_DTYPES = ("fp32", "weight")  # fp32 masters for low-precision weights, or step the weight's own dtype


@dataclass
class MethodConfig:
    name: str = MISSING
    lr: float = 1e-4
    # setting -> the values it accepts, checked by `check` (a class attribute, not a config key)
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    # What the method can do, declared once here (class attributes, not config keys):
    # fsdp_refusal: None when hardware.shard=fsdp is sound for it, else why not (one clause, shown to the user).
    fsdp_refusal: ClassVar[str | None] = "it is not one of the methods FSDP is sound for"
    # data_free: settings under which `prepare` needs no data and holds exactly what the run will hold ({}:
    # the method's own settings); the planner then counts the held state on the full-depth meta model
    # (plan/held_state.py). None: the planner extrapolates the held state from its probes, exact when every
    # layer adds the same bytes.
    data_free: ClassVar[dict[str, Any] | None] = None

    def check(self, key: str) -> None:
        require(self.lr > 0, f"{key}.lr", f"must be > 0 (got {self.lr})")
        for setting, allowed in self.choices.items():
            one_of(getattr(self, setting), allowed, f"{key}.{setting}")

    def check_run(self, cfg) -> None:
        """Refuse, with a UserError naming the key, a setting of another group (`cfg`: the whole config)
        that this method cannot train with; called by `config.schema.check` after every group's `check`."""

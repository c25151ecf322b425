"""The block-rotating strategy's schema (torch-free): HiFT, and BAdam and LISA as its
configurations (conf/method/{hift,badam,lisa}.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ftbench.errors import require
from ftbench.methods.config import MethodConfig

ROTATION_ORDERS = ("down2up", "up2down", "random", "sample")  # the order of the units (units.py)
STATE_POLICIES = ("offload", "drop", "keep")  # a leaving group's optimizer state
LR_POLICIES = ("per_cycle", "per_step")


@dataclass
class BlockRotationConfig(MethodConfig):
    name: str = "hift"
    lr: float = 3e-4
    group_size: int = 1
    order: str = "down2up"
    reshuffle: bool = False
    steps_per_block: int = 1
    frozen_units: list[str] = field(default_factory=list)
    always_active: list[str] = field(default_factory=list)
    state_policy: str = "offload"
    prefetch_ahead: bool = False
    lr_policy: str = "per_cycle"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"order": ROTATION_ORDERS, "state_policy": STATE_POLICIES,
                                                     "lr_policy": LR_POLICIES}
    fsdp_refusal: ClassVar[str | None] = ("it changes which layers train at each switch, and FSDP fixes what "
                                          "trains when it shards")

    def check(self, key: str) -> None:
        super().check(key)
        require(self.group_size >= 1, f"{key}.group_size", "must be >= 1")
        require(self.steps_per_block >= 1, f"{key}.steps_per_block", "must be >= 1")
        require(not self.reshuffle or self.order == "random", f"{key}.reshuffle",
                f"only applies to {key}.order=random (got {self.order})")

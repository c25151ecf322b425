"""The block-rotating strategy's schemas (torch-free): HiFT's, and BAdam's and LISA's, the same knobs
with their papers' defaults (conf/method/{hift,badam,lisa}.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ftbench.config import within
from ftbench.config.unused import Unused
from ftbench.errors import require
from ftbench.methods.config import MethodConfig

ROTATION_ORDERS = ("down2up", "up2down", "random", "sample")  # the order of the units (units.py)
STATE_POLICIES = ("offload", "drop", "keep")  # a leaving group's optimizer state
LR_POLICIES = ("per_cycle", "per_step")


@dataclass
class BlockRotationConfig(MethodConfig):
    """The strategy's knobs, with HiFT's defaults (the strategy is HiFT's): one unit per step, bottom up,
    the leaving unit's state offloaded."""

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

    def schedule_length(self, steps: int) -> int | None:
        return steps if self.lr_policy == "per_step" else None  # per cycle: the cycle counts the model's units

    def may_refuse_length(self, steps: int, optim) -> bool:
        # it would never switch (order=sample: its draws may repeat the first group for any number of blocks),
        # or a warm-up: the steps a refusal advises count the model's units (length.py)
        return self.order == "sample" or steps <= self.steps_per_block or within.warmup_length(optim, steps) > 0

    def probe_layers(self) -> int:
        return self.group_size  # a rotating group needs a whole group of layers

    def probe_depths(self, layers: int) -> tuple[int, int]:
        """Groups of g > 1 layers taken in turn: probes that differ by a whole group and leave as many layers
        over whole groups as the run, so that their last groups hold as many layers as the run's (6 layers in
        pairs: 4 and 6; 3 and 4 end in a group of one, then of two: another last step, and the line through
        them planned BAdam's and HiFT's peaks 7-10 % high). Drawn groups (order=sample) are not taken in turn."""
        group = self.group_size
        if group == 1 and self.order == "random":  # a replayed block (probe_units) needs a middle layer: 3 and 4
            return 3, 4
        if group == 1 or self.order == "sample":
            return super().probe_depths(layers)
        first = group + 1 + (layers - group - 1) % group
        return first, first + group

    def check(self, key: str) -> None:
        super().check(key)
        require(self.group_size >= 1, f"{key}.group_size", "must be >= 1")
        require(self.steps_per_block >= 1, f"{key}.steps_per_block", "must be >= 1")

    def unused(self, key: str, cfg) -> list[Unused]:
        found = []
        if self.reshuffle and self.order != "random":  # a new permutation every cycle: of a random order alone
            found.append(Unused(f"{key}.reshuffle", f"{key}.order=random", f"{key}.order={self.order}"))
        if self.prefetch_ahead and self.state_policy != "offload":  # it copies offloaded state in early
            found.append(Unused(f"{key}.prefetch_ahead", f"{key}.state_policy=offload",
                                f"{key}.state_policy={self.state_policy}"))
        return found

    def probe_settings(self) -> dict:
        """A random order visits the same units as the model's order: the probes take them bottom up, so the k-th
        step of a probe trains the k-th group at every depth (then they replay the groups the planned run draws:
        BlockRotation.probe_groups)."""
        return {"order": "down2up", "reshuffle": False} if self.order == "random" else {}


@dataclass
class HiftConfig(BlockRotationConfig):
    """HiFT (Liu et al., 2024): the strategy's own defaults."""

    name: str = "hift"
    quick: ClassVar[tuple[str, ...]] = ("method.lr=1e-3",)  # 30 steps of a random-init model: a few cycles


@dataclass
class BadamConfig(BlockRotationConfig):
    """BAdam's defaults (Luo et al., 2024): one layer per block for 50 steps, in a random order drawn anew
    every block-epoch, the optimizer state dropped at each switch; the embedding frozen, the head always on."""

    name: str = "badam"
    lr: float = 1e-3
    order: str = "random"
    reshuffle: bool = True
    steps_per_block: int = 50
    frozen_units: list[str] = field(default_factory=lambda: ["embedding"])
    always_active: list[str] = field(default_factory=lambda: ["head"])
    state_policy: str = "drop"
    lr_policy: str = "per_step"
    quick: ClassVar[tuple[str, ...]] = ("method.steps_per_block=10",)  # 30 steps switch (50 would never: within.py)
    every_part: ClassVar[tuple[str, ...]] = ("method.steps_per_block=1",)
    switching: ClassVar[tuple[str, ...]] = ("method.steps_per_block=2",)  # reshuffled order, states dropped


@dataclass
class LisaConfig(BlockRotationConfig):
    """LISA's defaults (Pan et al., 2024) as LMFlow ships it: the embedding and the head at every step, two
    middle layers drawn at random every 20 steps, every drawn layer's optimizer state kept."""

    name: str = "lisa"
    lr: float = 1e-3
    group_size: int = 2
    order: str = "sample"
    steps_per_block: int = 20
    always_active: list[str] = field(default_factory=lambda: ["embedding", "head"])
    state_policy: str = "keep"
    lr_policy: str = "per_step"
    every_part: ClassVar[tuple[str, ...]] = ("method.steps_per_block=1",)
    # sampled, kept; at seed 1 the draws of tiny-llama's 2 layers are layer.0, then layer.1 (at seed 0 the first
    # blocks all draw layer.1, and a run of a few steps that trains one layer alone is refused: length.first_switch)
    switching: ClassVar[tuple[str, ...]] = ("method.steps_per_block=2", "method.group_size=1", "seed=1")

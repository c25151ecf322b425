"""The methods' config schemas (Hydra structured configs), one dataclass per method, with the
choices their checks accept. Torch-free: composing a config (`ftbench --help`, `--cfg job`,
the planner) imports no method module; each method module (methods/) imports its schema from here.

Adding a method: its schema here, a row in `CONFIGS`, and its class in methods/__init__.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import MISSING

from .errors import one_of, require

MASTER_DTYPES = ("fp32", "weight")  # fp32 masters for low-precision weights, or step the weight's own dtype
# The choices the checks accept (the method modules import them from here).
ROTATION_ORDERS = ("down2up", "up2down", "random", "sample")  # hift/badam/lisa: the order of the units (units.py)
STATE_POLICIES = ("offload", "drop", "keep")  # hift/badam/lisa: a leaving group's optimizer state
LR_POLICIES = ("per_cycle", "per_step")
S2FT_PROJECTIONS = ("v", "o", "u", "d")  # the trainable slices: rows of V and Up, columns of O and Down
S2FT_STRATEGIES = ("random", "weight", "activation", "weight_x_activation", "gradient")
S2FT_ORDERS = ("smallest", "largest")
S2FT_ALLOCATIONS = ("global", "per_layer")
SIFT_SELECTIONS = ("grad", "random", "magnitude")
SIFT_PRESET_NAMES = ("auto", "attention", "mlp", "all-linear")  # sift_select.PRESETS holds attention and mlp
SIFT_BIAS_POLICIES = ("sparse", "dense", "frozen")


@dataclass
class MethodConfig:
    name: str = MISSING
    lr: float = 1e-4
    # setting -> the values it accepts, checked by `check` (a class attribute, not a config key)
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    def check(self, key: str) -> None:
        require(self.lr > 0, f"{key}.lr", f"must be > 0 (got {self.lr})")
        for setting, allowed in self.choices.items():
            one_of(getattr(self, setting), allowed, f"{key}.{setting}")


@dataclass
class FullConfig(MethodConfig):
    name: str = "full"
    lr: float = 1e-4
    master_dtype: str = "fp32"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"master_dtype": MASTER_DTYPES}


@dataclass
class LoraMethodConfig(MethodConfig):
    name: str = "lora"
    lr: float = 1e-3
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"
    bias: str = "none"

    def check(self, key: str) -> None:
        super().check(key)
        require(self.r >= 1, f"{key}.r", "must be >= 1")
        require(self.alpha > 0, f"{key}.alpha", "must be > 0")
        require(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")
        require(self.bias in ("none", "all", "lora_only"), f"{key}.bias", "must be none, all or lora_only")
        targets = self.target_modules
        require(isinstance(targets, str) or (isinstance(targets, list) and targets), f"{key}.target_modules",
                "give 'all-linear' or a list of module names, e.g. [q_proj,v_proj]")


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

    def check(self, key: str) -> None:
        super().check(key)
        require(self.group_size >= 1, f"{key}.group_size", "must be >= 1")
        require(self.steps_per_block >= 1, f"{key}.steps_per_block", "must be >= 1")
        require(not self.reshuffle or self.order == "random", f"{key}.reshuffle",
                f"only applies to {key}.order=random (got {self.order})")


@dataclass
class SparseMlpConfig(MethodConfig):
    lr: float = 1e-4
    k: int | None = None
    density: float = 0.0119
    train_non_mlp: bool = True
    freeze_norms: bool = False

    def check(self, key: str) -> None:
        super().check(key)
        if self.k is not None:
            require(self.k >= 1, f"{key}.k", f"must be >= 1, or null for density × layer size (got {self.k})")
        require(0 < self.density <= 1, f"{key}.density", f"must be in (0, 1] (got {self.density})")


@dataclass
class SparseGradConfig(SparseMlpConfig):
    name: str = "sparsegrad"
    calibration_steps: int = 11
    warm_start: bool = False
    core_basis: bool = False

    def check(self, key: str) -> None:
        super().check(key)
        require(self.calibration_steps >= 1, f"{key}.calibration_steps", "must be >= 1")


@dataclass
class MePropConfig(SparseMlpConfig):
    name: str = "meprop"


@dataclass
class S2ftConfig(MethodConfig):
    name: str = "s2ft"
    lr: float = 1e-3
    v_ratio: float = 0.0
    o_ratio: float = 0.052
    u_ratio: float = 0.0
    d_ratio: float = 0.02
    allocation: str = "global"
    strategy: str = "random"
    order: str = "smallest"
    calibration_samples: int = 256
    master_dtype: str = "fp32"
    train_head: bool = True
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"allocation": S2FT_ALLOCATIONS, "strategy": S2FT_STRATEGIES,
                                                     "order": S2FT_ORDERS, "master_dtype": MASTER_DTYPES}

    def check(self, key: str) -> None:
        super().check(key)
        for p in S2FT_PROJECTIONS:
            ratio = getattr(self, f"{p}_ratio")
            require(0 <= ratio <= 1, f"{key}.{p}_ratio", f"must be in [0, 1] (got {ratio})")
        require(any(getattr(self, f"{p}_ratio") > 0 for p in S2FT_PROJECTIONS), f"{key}.o_ratio",
                "every ratio is 0, so nothing would train; set v_ratio, o_ratio, u_ratio or d_ratio > 0")
        require(self.calibration_samples >= 1, f"{key}.calibration_samples", "must be >= 1")


@dataclass
class SiftConfig(MethodConfig):
    name: str = "sift"
    lr: float = 2e-3
    sparse_rate: float = 0.01
    target_modules: Any = "auto"
    exception_modules: Any = "head"
    selection: str = "grad"
    calibration_batches: int = 1
    bias: str = "sparse"
    master_dtype: str = "fp32"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"selection": SIFT_SELECTIONS, "bias": SIFT_BIAS_POLICIES,
                                                     "master_dtype": MASTER_DTYPES}

    def check(self, key: str) -> None:
        super().check(key)
        require(0 < self.sparse_rate <= 1, f"{key}.sparse_rate",
                f"must be in (0, 1], the fraction of each target weight that trains (got {self.sparse_rate})")
        require(self.calibration_batches >= 1, f"{key}.calibration_batches", "must be >= 1")
        targets = self.target_modules
        require(targets in SIFT_PRESET_NAMES if isinstance(targets, str) else _names(targets),
                f"{key}.target_modules",
                f"give a preset ({', '.join(SIFT_PRESET_NAMES)}) or a list of module names, e.g. [query,value]")
        exceptions = self.exception_modules
        require(exceptions == "head" or (not isinstance(exceptions, str) and _names(exceptions, empty=True)),
                f"{key}.exception_modules", "give head (the task head) or a list of module names, e.g. [classifier] or []")


def _names(value, empty: bool = False) -> bool:
    try:
        items = list(value)
    except TypeError:
        return False
    return (empty or bool(items)) and all(isinstance(item, str) and item for item in items)


# method name (conf/method/<name>.yaml) -> its schema; methods/__init__.py REGISTRY names the same methods
CONFIGS: dict[str, type[MethodConfig]] = {
    "full": FullConfig,
    "lora": LoraMethodConfig,
    "hift": BlockRotationConfig,
    "badam": BlockRotationConfig,
    "lisa": BlockRotationConfig,
    "meprop": MePropConfig,
    "sparsegrad": SparseGradConfig,
    "s2ft": S2ftConfig,
    "sift": SiftConfig,
}

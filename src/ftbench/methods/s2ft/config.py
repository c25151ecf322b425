"""S2FT's schema (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ftbench.config.unused import Unused
from ftbench.errors import require
from ftbench.methods.config import MASTER_DTYPES, GpuTarget, MethodConfig

S2FT_PROJECTIONS = ("v", "o", "u", "d")  # the trainable slices: rows of V and Up, columns of O and Down
S2FT_STRATEGIES = ("random", "weight", "activation", "weight_x_activation", "gradient")
S2FT_ORDERS = ("smallest", "largest")
S2FT_ALLOCATIONS = ("global", "per_layer")


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
    fsdp_refusal: ClassVar[str | None] = ("its trainable rows and columns are slices of frozen weights that FSDP "
                                          "would split across ranks")
    # A scored selection picks other heads than a random one, never another number of them (every block
    # has the same units): under random selection prepare needs no data and holds what the run holds.
    data_free: ClassVar[dict[str, Any] | None] = {"strategy": "random"}
    quick: ClassVar[tuple[str, ...]] = ("method.lr=1e-2", "method.o_ratio=0.5", "method.d_ratio=0.25")
    every_part: ClassVar[tuple[str, ...]] = ("method.v_ratio=0.5", "method.o_ratio=0.5", "method.u_ratio=0.25",
                                             "method.d_ratio=0.25", "method.allocation=per_layer")
    # The docs' GPU figure: traced on the CPU and projected to 32 layers, without CUDA's kernel workspaces (+10 %).
    gpu_targets: ClassVar[dict[str, GpuTarget]] = {"llama2-7b": GpuTarget("14.1–14.3 GiB", max_gib=14.3 * 1.1)}

    def calibrates(self) -> bool:
        return self.strategy not in ("random", "weight")  # the others score units on data (select.py)

    def unused(self, key: str, cfg) -> list[Unused]:
        found = []
        here = f"{key}.strategy={self.strategy}"
        if not self.calibrates():
            found.append(Unused(f"{key}.calibration_samples", f"{key}.strategy=activation (or weight_x_activation, "
                                "gradient: those that score on data)", here))
        if self.strategy == "random":  # a uniform draw: no scores to take the smallest or the largest of
            found.append(Unused(f"{key}.order", f"{key}.strategy=weight (or any other but random: those "
                                "that score)", here))
        return found

    def check(self, key: str) -> None:
        super().check(key)
        for p in S2FT_PROJECTIONS:
            ratio = getattr(self, f"{p}_ratio")
            require(0 <= ratio <= 1, f"{key}.{p}_ratio", f"must be in [0, 1] (got {ratio})")
        require(any(getattr(self, f"{p}_ratio") > 0 for p in S2FT_PROJECTIONS), f"{key}.o_ratio",
                "every ratio is 0, so nothing would train; set v_ratio, o_ratio, u_ratio or d_ratio > 0")
        require(self.calibration_samples >= 1, f"{key}.calibration_samples", "must be >= 1")

"""SIFT's schema (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ftbench.config.unused import Unused
from ftbench.errors import require
from ftbench.methods.config import MASTER_DTYPES, GpuTarget, MethodConfig, Variant

SIFT_SELECTIONS = ("grad", "random", "magnitude")
SIFT_PRESET_NAMES = ("auto", "attention", "mlp", "all-linear")  # select.PRESETS holds attention and mlp
SIFT_BIAS_POLICIES = ("sparse", "dense", "frozen")
SIFT_WEIGHT_GRADS = ("auto", "sampled", "dense")  # methods/sampled_grad.py: auto is its cost model
# The docs' GPU figure: traced on the CPU and projected to 32 layers, without CUDA's kernel workspaces (+10 %);
# the step at most 0.85 x full fine-tuning's (issue 28: no dense weight gradient is needed).
SIFT_GPU_TARGETS = {"llama2-7b": GpuTarget("14.3–14.5 GiB", max_gib=14.5 * 1.1, max_time_ratio=0.85)}


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
    weight_grad: str = "auto"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"selection": SIFT_SELECTIONS, "bias": SIFT_BIAS_POLICIES,
                                                     "master_dtype": MASTER_DTYPES, "weight_grad": SIFT_WEIGHT_GRADS}
    fsdp_refusal: ClassVar[str | None] = (
        "its trainable entries are gathered by index from whole weight gradients, which no rank holds under FSDP "
        "(and it trains ~1% of the weights: data parallel costs little memory)")
    quick: ClassVar[tuple[str, ...]] = ("method.lr=1e-2",)
    every_part: ClassVar[tuple[str, ...]] = ("method.sparse_rate=0.05",)
    gpu_targets: ClassVar[dict[str, GpuTarget]] = SIFT_GPU_TARGETS
    # Both ways of forming the selected entries' gradient, whichever the cost model picks by default: held to the
    # memory figure, their step times shown beside the default's (which the time bound is for).
    variants: ClassVar[dict[str, Variant]] = {path: Variant((f"method.weight_grad={path}",), gpu_targets={
        "llama2-7b": GpuTarget("14.3–14.5 GiB", max_gib=14.5 * 1.1)}) for path in ("sampled", "dense")}

    def calibrates(self) -> bool:
        return self.selection == "grad"  # the top-k of |∂L/∂W| (select.py); random and magnitude need no data

    def unused(self, key: str, cfg) -> list[Unused]:
        if self.calibrates():
            return []
        return [Unused(f"{key}.calibration_batches", f"{key}.selection=grad", f"{key}.selection={self.selection}")]

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

"""The sparse MLP methods' schemas (torch-free): SparseGrad, and the base MeProp shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ftbench.config.unused import Unused
from ftbench.errors import UserError, require
from ftbench.methods.config import GpuTarget, MethodConfig


@dataclass
class SparseMlpConfig(MethodConfig):
    lr: float = 1e-4
    k: int | None = None
    density: float = 0.0119
    train_non_mlp: bool = True
    freeze_norms: bool = False
    fsdp_refusal: ClassVar[str | None] = "its top-k gradients are sparse tensors that FSDP's reduce-scatter does not take"
    quick: ClassVar[tuple[str, ...]] = ("optim.lr=1e-3",)
    every_part: ClassVar[tuple[str, ...]] = ("method.train_non_mlp=false",)  # only the sparse MLP weights and the head

    def check_run(self, cfg) -> None:
        if cfg.optim.name not in ("adamw", "sgd"):  # its lazy Adam shares one state dict with the dense groups'
            raise UserError("optim.name", f"{self.name} steps its sparse MLP weights with its own lazy Adam and "
                            f"the rest with adamw or sgd beside it, not {cfg.optim.name}; set optim.name=adamw")
        require_plain_sgd(cfg.optim)  # the optimizer's rule, checked again here before calibrating

    def check(self, key: str) -> None:
        super().check(key)
        if self.k is not None:
            require(self.k >= 1, f"{key}.k", f"must be >= 1, or null for density × layer size (got {self.k})")
        require(0 < self.density <= 1, f"{key}.density", f"must be in (0, 1] (got {self.density})")

    def unused(self, key: str, cfg) -> list[Unused]:
        found = []
        if self.k is not None:  # k entries per layer, whatever the layer's size
            found.append(Unused(f"{key}.density", f"{key}.k=null", f"{key}.k={self.k}"))
        if self.freeze_norms and not self.train_non_mlp:  # the norms train only beside the MLP weights
            found.append(Unused(f"{key}.freeze_norms", f"{key}.train_non_mlp=true", f"{key}.train_non_mlp=false"))
        return found


def require_plain_sgd(optim_cfg) -> None:
    """Raise UserError('optim.momentum') for sgd with momentum: the sparse MLP step (sparse_adam.py) has no
    momentum buffer for the entries it updates."""
    if optim_cfg.name == "sgd" and optim_cfg.momentum:
        raise UserError("optim.momentum", "sparse MLP methods support plain SGD only; set 0 or use adamw")


ROTATION_DTYPES = ("bfloat16", "float32")  # the precision of the basis and of the rotated gradient's products


@dataclass
class SparseGradConfig(SparseMlpConfig):
    name: str = "sparsegrad"
    calibration_steps: int = 11
    warm_start: bool = False
    core_basis: bool = False
    rotation_dtype: str = "bfloat16"
    short_setup: ClassVar[tuple[str, ...]] = ("method.calibration_steps=2",)
    gpu_targets: ClassVar[dict[str, GpuTarget]] = {  # the RoBERTa-large table (traced MiB), as a ratio to full;
        # the 7B step at most 1.25 x full fine-tuning's (issue 28), below what its rotations and update cost
        # there by their multiply-adds alone (>= 1.86 x: docs/results/peers.md, "SparseGrad at 7B")
        "llama2-7b": GpuTarget(max_time_ratio=1.25),
        "roberta-large": GpuTarget("2748 MiB (0.945 of full)", max_ratio=2748 / 2908 + 0.05)}

    def calibrates(self) -> bool:
        return True  # its rotations (rotations.py)

    def check(self, key: str) -> None:
        super().check(key)
        require(self.calibration_steps >= 1, f"{key}.calibration_steps", "must be >= 1")
        require(self.rotation_dtype in ROTATION_DTYPES, f"{key}.rotation_dtype",
                f"must be one of {', '.join(ROTATION_DTYPES)} (got {self.rotation_dtype})")

"""LoRA+'s schema (torch-free): LoRA's knobs and the learning-rate ratio of B to A."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ftbench.errors import UserError, require
from ftbench.methods.config import GpuTarget
from ftbench.methods.lora.config import LoraMethodConfig


@dataclass
class LoraPlusConfig(LoraMethodConfig):
    name: str = "loraplus"
    lr: float = 2e-4
    lr_ratio: float = 16.0
    lr_embedding: float = 1e-6
    quick: ClassVar[tuple[str, ...]] = ("optim.lr=1e-3",)  # its default lr is for 7B-scale models
    fsdp_refusal: ClassVar[str | None] = "PEFT's create_loraplus_optimizer groups the model's own adapter parameters " \
                                         "by name, and FSDP hands the optimizer flat shards in their place"
    gpu_targets: ClassVar[dict[str, GpuTarget]] = {"llama2-7b": GpuTarget()}

    def check(self, key: str) -> None:
        super().check(key)
        require(self.lr_ratio >= 1, f"{key}.lr_ratio", "must be >= 1 (the lr of B over the lr of A)")
        require(self.lr_embedding > 0, f"{key}.lr_embedding", "must be > 0")

    def learning_rates(self, owner: str, lr: float) -> dict[str, float]:
        """A's `lr`, B's `lr` × lr_ratio (named by lr_ratio) and the embedding's lr_embedding."""
        return {owner: lr, "method.lr_ratio": lr * self.lr_ratio, "method.lr_embedding": self.lr_embedding}

    def check_run(self, cfg) -> None:
        if cfg.optim.name not in ("adamw", "adamw8bit"):
            raise UserError("optim.name", f"loraplus's ratio is derived for Adam-type updates (Hayou et al., 2024, "
                            f"§3), not {cfg.optim.name}; set optim.name=adamw or adamw8bit")

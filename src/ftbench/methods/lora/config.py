"""LoRA's schema (torch-free); the adapters come from PEFT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ftbench.errors import require
from ftbench.methods.config import GpuTarget, MethodConfig, check_targets


@dataclass
class LoraMethodConfig(MethodConfig):
    name: str = "lora"
    lr: float = 1e-3
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"
    bias: str = "none"
    fsdp_refusal: ClassVar[str | None] = None  # the adapters are whole parameters: FSDP shards them
    same_draws: ClassVar[tuple[str, ...]] = ("method.dropout=0",)  # each rank draws its own dropout masks
    gpu_targets: ClassVar[dict[str, GpuTarget]] = {  # the RoBERTa-large table (traced MiB), as a ratio to full
        "llama2-7b": GpuTarget(), "roberta-large": GpuTarget("1616 MiB (0.556 of full)", max_ratio=1616 / 2908 + 0.05)}

    def check(self, key: str) -> None:
        super().check(key)
        require(self.r >= 1, f"{key}.r", "must be >= 1")
        require(self.alpha > 0, f"{key}.alpha", "must be > 0")
        require(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")
        require(self.bias in ("none", "all", "lora_only"), f"{key}.bias", "must be none, all or lora_only")
        check_targets(self.target_modules, f"{key}.target_modules")

"""PiSSA's schema (torch-free): LoRA's knobs and the SVD's iterations; the initialisation is PEFT's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ftbench.errors import require
from ftbench.methods.config import GpuTarget
from ftbench.methods.lora.config import LoraMethodConfig


@dataclass
class PissaConfig(LoraMethodConfig):
    name: str = "pissa"
    alpha: int = 16
    dropout: float = 0.0
    niter: int = 16
    fsdp_refusal: ClassVar[str | None] = "PiSSA takes an SVD of each whole weight when it prepares, and FSDP holds a " \
                                         "shard of it"
    gpu_targets: ClassVar[dict[str, GpuTarget]] = {"llama2-7b": GpuTarget()}

    def check(self, key: str) -> None:
        super().check(key)
        require(self.niter >= 0, f"{key}.niter", "must be >= 0 (0: the full SVD, N: a randomized SVD of N iterations)")

"""DoRA's schema (torch-free): LoRA's knobs; the adapters come from PEFT (`use_dora=True`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ftbench.methods.config import GpuTarget
from ftbench.methods.lora.config import LoraMethodConfig


@dataclass
class DoraConfig(LoraMethodConfig):
    name: str = "dora"
    fsdp_refusal: ClassVar[str | None] = "DoRA's forward takes the norm of each whole weight W + BA, and FSDP holds " \
                                         "a shard of W outside its forward"
    gpu_targets: ClassVar[dict[str, GpuTarget]] = {"llama2-7b": GpuTarget()}

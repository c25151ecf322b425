"""Full fine-tuning's schema (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ftbench.methods.config import MASTER_DTYPES, GpuTarget, MethodConfig


@dataclass
class FullConfig(MethodConfig):
    name: str = "full"
    lr: float = 1e-4
    master_dtype: str = "fp32"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"master_dtype": MASTER_DTYPES}
    fsdp_refusal: ClassVar[str | None] = None  # whole parameters train: FSDP shards them like the rest
    quick: ClassVar[tuple[str, ...]] = ("optim.lr=1e-3",)
    # fp32 masters hold 18 bytes per parameter (113 GiB at 7B): only a larger card than 80 GB. (The GPU check's
    # baseline, full fine-tuning with bf16 updates, is the script's own job in every sweep.)
    gpu_targets: ClassVar[dict[str, GpuTarget]] = {"llama2-7b": GpuTarget(min_gpu_gib=130)}

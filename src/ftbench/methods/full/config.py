"""Full fine-tuning's schema (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ftbench.methods.config import MASTER_DTYPES, MethodConfig


@dataclass
class FullConfig(MethodConfig):
    name: str = "full"
    lr: float = 1e-4
    master_dtype: str = "fp32"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"master_dtype": MASTER_DTYPES}
    fsdp_refusal: ClassVar[str | None] = None  # whole parameters train: FSDP shards them like the rest

"""Freeze tuning's schema (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ftbench.errors import require
from ftbench.methods.config import MASTER_DTYPES, MethodConfig


@dataclass
class FreezeConfig(MethodConfig):
    name: str = "freeze"
    lr: float = 1e-3
    layers: int = 2
    master_dtype: str = "fp32"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"master_dtype": MASTER_DTYPES}
    fsdp_refusal: ClassVar[str | None] = None  # whole parameters train or stay frozen: FSDP shards them as LoRA's
    data_free: ClassVar[dict[str, Any] | None] = {}  # prepare only sets requires_grad: the meta model counts it

    def check(self, key: str) -> None:
        super().check(key)
        require(self.layers >= 1, f"{key}.layers", "must be >= 1 (the last N layers of each stack train)")

    def probe_layers(self) -> int:
        return self.layers  # a probe of fewer layers would train all of them, and then add trained layers

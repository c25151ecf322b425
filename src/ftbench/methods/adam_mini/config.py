"""Adam-mini's schema (torch-free); the optimizer comes from the adam-mini package."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ftbench.errors import UserError
from ftbench.methods.config import MASTER_DTYPES, MethodConfig


@dataclass
class AdamMiniConfig(MethodConfig):
    name: str = "adam-mini"
    lr: float = 1e-4
    master_dtype: str = "fp32"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"master_dtype": MASTER_DTYPES}
    fsdp_refusal: ClassVar[str | None] = "adam-mini 1.1.1 shares a norm's second moment over ranks through a CUDA " \
                                         "all-reduce and views each head and neuron of whole weights, and ftbench " \
                                         "has not verified it on shards"

    def check_run(self, cfg) -> None:
        if cfg.optim.name != "adamw":
            raise UserError("optim.name", f"adam-mini is its own Adam variant (the adam-mini package), not "
                            f"{cfg.optim.name}; set optim.name=adamw (its betas, eps and weight_decay apply)")

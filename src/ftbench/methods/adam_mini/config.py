"""Adam-mini's schema (torch-free); the optimizer comes from the adam-mini package."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ftbench.errors import UserError
from ftbench.methods.config import MASTER_DTYPES, GpuTarget, MethodConfig


@dataclass
class AdamMiniConfig(MethodConfig):
    name: str = "adam-mini"
    lr: float = 1e-4
    master_dtype: str = "fp32"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"master_dtype": MASTER_DTYPES}
    fsdp_refusal: ClassVar[str | None] = "adam-mini 1.1.1 shares a norm's second moment over ranks through a CUDA " \
                                         "all-reduce and views each head and neuron of whole weights, and ftbench " \
                                         "has not verified it on shards"
    quick: ClassVar[tuple[str, ...]] = ("optim.lr=1e-3",)
    # 88 GiB held at 7B (one moment, fp32 masters, gradients): only a larger card than 80 GB.
    gpu_targets: ClassVar[dict[str, GpuTarget]] = {"llama2-7b": GpuTarget(min_gpu_gib=130)}

    def check_run(self, cfg) -> None:
        if cfg.optim.name != "adamw":
            raise UserError("optim.name", f"adam-mini is its own Adam variant (the adam-mini package), not "
                            f"{cfg.optim.name}; set optim.name=adamw (its betas, eps and weight_decay apply)")

"""GaLore's schema (torch-free); the optimizer comes from galore-torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ftbench.errors import UserError
from ftbench.methods.config import MASTER_DTYPES, ProjectedConfig, Variant

PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")  # galore-torch's GaLoreProjector
OPTIMIZERS = ("adamw", "adamw8bit")  # GaLoreAdamW | GaLoreAdamW8bit (bitsandbytes' blockwise 8-bit states)


@dataclass
class GaloreConfig(ProjectedConfig):
    name: str = "galore"
    lr: float = 1e-4
    scale: float = 2.0
    proj_type: str = "std"
    optimizer: str = "adamw"
    layerwise: bool = False
    master_dtype: str = "fp32"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"proj_type": PROJ_TYPES, "optimizer": OPTIMIZERS,
                                                     "master_dtype": MASTER_DTYPES}
    fsdp_refusal: ClassVar[str | None] = "GaLore projects each weight's whole gradient (an SVD per matrix) and FSDP " \
                                         "holds a shard of it"
    # prepare needs no data: the planner counts the rank-r states on the full-size meta model, exact whatever
    # the rank (a probe narrower than the rank would keep fewer columns).
    data_free: ClassVar[dict[str, Any] | None] = {}
    quick: ClassVar[tuple[str, ...]] = ("optim.lr=1e-3",)
    switching: ClassVar[tuple[str, ...]] = ("method.update_proj_gap=2",)  # a new SVD projection every 2 steps
    variants: ClassVar[dict[str, Variant]] = {
        # no whole-model gradient; the run cannot clip, so the planner's check sets max_grad_norm null as a user must
        "layer-wise": Variant(("method.layerwise=true", "optim.max_grad_norm=null")),
        # bitsandbytes' blockwise 8-bit moments: galore-torch's GaLoreAdamW8bit runs only on a CUDA GPU, so the
        # planner's CPU probes cannot run it (prepare refuses it there)
        "8-bit states": Variant(("method.optimizer=adamw8bit",), plan_check=False),
    }

    def check_run(self, cfg) -> None:
        if cfg.optim.name != "adamw":
            raise UserError("optim.name", f"galore steps with galore-torch's AdamW (its 8-bit variant: "
                            f"method.optimizer=adamw8bit), not {cfg.optim.name}; set optim.name=adamw")
        if self.layerwise and cfg.optim.max_grad_norm is not None:
            raise UserError("optim.max_grad_norm", "galore's layer-wise mode steps each weight in its own backward "
                            "hook, before the global gradient norm exists, so it cannot clip; set "
                            "optim.max_grad_norm=null (or method.layerwise=false)")

"""APOLLO's schema (torch-free); the optimizer comes from apollo-torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ftbench.config.unused import Unused
from ftbench.errors import UserError
from ftbench.methods.config import MASTER_DTYPES, ProjectedConfig, Variant


@dataclass
class ApolloConfig(ProjectedConfig):
    name: str = "apollo"
    lr: float = 1e-4
    scale: float = 32.0
    scale_type: str = "channel"
    proj: str = "random"
    proj_type: str = "std"
    scale_front: bool = False
    norm_growth_limit: bool = True
    master_dtype: str = "fp32"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"scale_type": ("channel", "tensor"), "proj": ("random", "svd"),
                                                     "proj_type": ("std", "reverse_std", "right", "left"),
                                                     "master_dtype": MASTER_DTYPES}
    fsdp_refusal: ClassVar[str | None] = "APOLLO scales each weight's whole gradient by norms of its projection and " \
                                         "FSDP holds a shard of it"
    quick: ClassVar[tuple[str, ...]] = ("optim.lr=1e-3",)
    switching: ClassVar[tuple[str, ...]] = ("method.update_proj_gap=2",)  # a new seeded projection every 2 steps
    variants: ClassVar[dict[str, Variant]] = {
        # APOLLO-Mini (paper §4.2): rank 1, one scale per tensor. The planner's check holds it at its tiny shape;
        # at 7B its plan is still pessimistic (the limiter's data-dependent ops, docs/methods/apollo.md).
        "mini": Variant(("method.rank=1", "method.scale_type=tensor", "method.scale=128")),
    }

    def unused(self, key: str, cfg) -> list[Unused]:
        if not self.scale_front or self.norm_growth_limit:
            return []
        # sqrt(scale) before or after a limiter that is off: the same update
        return [Unused(f"{key}.scale_front", f"{key}.norm_growth_limit=true", f"{key}.norm_growth_limit=false")]

    def check_run(self, cfg) -> None:
        if cfg.optim.name != "adamw":
            raise UserError("optim.name", f"apollo steps with apollo-torch's APOLLOAdamW, not {cfg.optim.name}; "
                            "set optim.name=adamw")

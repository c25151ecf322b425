"""APOLLO through apollo-torch (never a copy of its algorithm): `APOLLOAdamW` over every weight, the
block projections in a group the library projects to rank r (projected.py).

For a projected weight the library keeps AdamW moments of R = P G (rank r; P a seeded Gaussian
matrix, redrawn every `update_proj_gap` steps, or an SVD basis with `proj: svd`), and from them a
scaling factor per channel (`scale_type: channel`, the norm ratio of each column of the moments'
update and of R) or per tensor (`tensor`); the update is the raw full-rank gradient times that
factor times sqrt(`scale`), with Fira's norm-growth limiter (`norm_growth_limit`) capping its
growth to 1.01x per step (Zhu et al., 2025, Alg. 1). APOLLO-Mini is the setting rank 1, tensor-wise
scaling, scale 128 (paper §4.2): method.rank=1 method.scale_type=tensor method.scale=128.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ftbench.methods.apollo.config import ApolloConfig
from ftbench.methods.projected import ProjectedStates, library


class Apollo(ProjectedStates):
    config_class = ApolloConfig

    def largest_rank(self, shape: torch.Size) -> int:
        """An SVD basis (proj: svd) holds the smaller side's vectors; a random projection maps the side proj_type
        names (the library's: std the smaller, reverse_std the larger, left the rows, right the columns) to r
        rows, and more than that side enlarges the gradient instead of compressing it: its moments (r x the other
        side) would outgrow AdamW's of the whole weight."""
        if self.cfg.proj == "svd":
            return super().largest_rank(shape)
        rows, columns = shape
        return {"std": min(rows, columns), "reverse_std": max(rows, columns), "left": rows,
                "right": columns}[self.cfg.proj_type]

    def rank_bound(self, side: int, weight: str) -> str:
        if self.cfg.proj == "svd":
            return super().rank_bound(side, weight)
        return (f"{side}, the side of {weight} its random projection compresses (method.proj_type="
                f"{self.cfg.proj_type}): a larger rank enlarges the gradient instead, and its moments outgrow AdamW's "
                "of the whole weight")

    def projection(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"rank": cfg.rank, "update_proj_gap": cfg.update_proj_gap, "scale": cfg.scale,
                "proj_type": cfg.proj_type, "proj": cfg.proj, "scale_type": cfg.scale_type}

    def make(self, groups: list[dict], optim_cfg, lr: float) -> torch.optim.Optimizer:
        apollo = library("apollo_torch", "apollo-torch", "apollo")
        # The library seeds each weight's projection by its position among the optimizer's tensors.
        return apollo.APOLLOAdamW(groups, lr=lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps,
                                  weight_decay=optim_cfg.weight_decay, scale_front=self.cfg.scale_front,
                                  disable_nl=not self.cfg.norm_growth_limit)

    def describe(self, model: nn.Module) -> dict:
        cfg = self.cfg
        return {**super().describe(model), "optimizer": "APOLLOAdamW", "scale_type": cfg.scale_type,
                "proj": cfg.proj, "mini": cfg.rank == 1 and cfg.scale_type == "tensor"}

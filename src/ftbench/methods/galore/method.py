"""GaLore through galore-torch (never a copy of its algorithm): `GaLoreAdamW`, or `GaLoreAdamW8bit`
(bitsandbytes' blockwise 8-bit moments), over every weight, the block projections in a group the
library projects to rank r (projected.py).

Each `update_proj_gap` steps the library takes an SVD of a projected weight's gradient G (m x n)
and keeps r singular vectors P; the AdamW moments live in the projected space (P^T G, r x n), and
the update is projected back and multiplied by `scale` (Zhao et al., 2024, Alg. 2).

Layer-wise mode (`layerwise: true`, as LLaMA-Factory's `galore_layerwise` and galore-torch's
README do it): each trained tensor is stepped in its own post-accumulate-grad hook, during the
backward, and its gradient freed at once, so no whole-model gradient ever exists (the breakdown's
gradients are then ~0). What it cannot do, refused in one line each:

- clip by the global gradient norm: the norm does not exist when a weight is stepped
  (`optim.max_grad_norm` must be null, checked at compose time);
- accumulate micro-batches: a weight would be stepped once per micro-batch (refused at the first
  step that has several: `hardware.max_micro_batch_size`);
- data parallel: the ranks' gradients are summed after the backward, when every weight has already
  been stepped with its own rank's gradient (refused when the method prepares).

The hooks are registered at the first training step (`before_step`), so the micro-batch probes
that run before it (plan/micro_batch.py) never step the weights, and removed by `close`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from ftbench.errors import UserError
from ftbench.methods.base import MethodContext
from ftbench.methods.galore.config import GaloreConfig
from ftbench.methods.projected import ProjectedStates, library
from ftbench.parallel import distributed


class Galore(ProjectedStates):
    config_class = GaloreConfig

    def __init__(self, cfg: GaloreConfig):
        super().__init__(cfg)
        self.hooks: list = []  # layer-wise: one post-accumulate-grad hook per trained tensor
        self.stepped: set[int] = set()  # layer-wise: the tensors stepped in this optimizer step

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        if self.cfg.optimizer == "adamw8bit" and ctx.device.type != "cuda":
            raise UserError("method.optimizer", "galore-torch's GaLoreAdamW8bit calls torch.cuda.synchronize() in "
                            "every step: it runs only on a CUDA GPU (and the planner's probes run on the CPU); "
                            "use method.optimizer=adamw here")
        if self.cfg.layerwise and distributed.world_size() > 1:
            raise UserError("method.layerwise", "layer-wise GaLore steps each weight inside the backward, and data "
                            "parallel sums the ranks' gradients after it; run one process, or "
                            "method.layerwise=false")
        return super().prepare(model, ctx)

    def projection(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"rank": cfg.rank, "update_proj_gap": cfg.update_proj_gap, "scale": cfg.scale,
                "proj_type": cfg.proj_type}

    def make(self, groups: list[dict], optim_cfg, lr: float) -> torch.optim.Optimizer:
        galore = library("galore_torch", "galore-torch", "galore")
        common = {"lr": lr, "betas": tuple(optim_cfg.betas), "eps": optim_cfg.eps,
                  "weight_decay": optim_cfg.weight_decay}
        if self.cfg.optimizer == "adamw8bit":
            return galore.GaLoreAdamW8bit(groups, **common)
        return galore.GaLoreAdamW(groups, **common, no_deprecation_warning=True)

    def attach_masters(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.cfg.layerwise:  # layer-wise: each master is rounded into its weight by its own hook
            super().attach_masters(optimizer)

    # -- layer-wise mode ----------------------------------------------------------------------
    def before_step(self, step: int) -> None:
        if self.cfg.layerwise and not self.hooks:
            weights = {id(master): weight for weight, master in self.masters.pairs}
            for tensor in self.optimizer_parameters():
                weight = weights.get(id(tensor))  # a bf16 weight whose master the optimizer steps
                # Registered after the masters' own hook on the weight (masters.py), which has by then moved
                # the gradient into the master's fp32 gradient.
                on = weight if weight is not None else tensor
                self.hooks.append(on.register_post_accumulate_grad_hook(partial(self._step_one, tensor, weight)))
        self.stepped.clear()

    @torch.no_grad()
    def _step_one(self, tensor: torch.Tensor, weight: torch.Tensor | None, _: torch.Tensor) -> None:
        """Hook: step `tensor` (the only one holding a gradient now: the others were stepped and
        freed, or have none yet), free its gradient, and round it into its bf16 `weight`."""
        if id(tensor) in self.stepped:
            raise UserError("hardware.max_micro_batch_size", "layer-wise GaLore steps each weight once per "
                            "backward, so it cannot accumulate the micro-batches of a step; set "
                            "hardware.max_micro_batch_size=null (the whole batch at once) or a smaller batch")
        self.stepped.add(id(tensor))
        self.optimizer.step()
        tensor.grad = None
        if weight is not None:
            weight.copy_(tensor)

    def held_gradients(self) -> list[torch.Tensor]:
        return [] if self.cfg.layerwise else super().held_gradients()

    def describe(self, model: nn.Module) -> dict:
        optimizer = "GaLoreAdamW8bit" if self.cfg.optimizer == "adamw8bit" else "GaLoreAdamW"
        return {**super().describe(model), "optimizer": optimizer, "layerwise": self.cfg.layerwise}

    def close(self) -> None:
        for handle in self.hooks:
            handle.remove()
        self.hooks, self.stepped = [], set()
        super().close()

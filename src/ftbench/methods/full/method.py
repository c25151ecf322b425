"""Full fine-tuning: every parameter trains. The reference every method is measured against.

Low-precision (bf16) weights are stepped through fp32 masters by default (masters.py):
at lr 1e-5 most bf16 entries would otherwise never move. `master_dtype: weight` opts
out (plain bf16 updates, 10 bytes per parameter less)."""

from __future__ import annotations

from torch import nn

from ftbench.methods.base import Method, MethodContext
from ftbench.methods.full.config import FullConfig


class FullFineTuning(Method):
    config_class = FullConfig

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def describe(self, model: nn.Module) -> dict:
        return {"name": "full", "trains": "every parameter",
                "masters": "fp32" if self.masters.pairs else "none: the optimizer steps the weights in their dtype"}

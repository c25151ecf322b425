"""Full fine-tuning: every parameter trains. The reference every method is measured against."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import Method, MethodConfig, MethodContext


@dataclass
class FullConfig(MethodConfig):
    name: str = "full"
    lr: float = 1e-4


class FullFineTuning(Method):
    config_class = FullConfig

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def describe(self, model: nn.Module) -> dict:
        return {"name": "full", "trains": "every parameter"}

"""Peer of full fine-tuning: every weight trains with `torch.optim.AdamW`."""

from __future__ import annotations

import torch
from torch import nn

from ftbench.bench.peers.loop import Trainable, adamw


def prepare(model: nn.Module, spec: dict) -> Trainable:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, spec)
    return Trainable(model, optimizer, [optimizer], package=f"torch {torch.__version__}")

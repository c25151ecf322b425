"""Optimizers and learning-rate schedules, built from the `optim` config group."""

from __future__ import annotations

import math

import torch


def make_optimizer(groups: list[dict], cfg, lr: float) -> torch.optim.Optimizer:
    """AdamW, SGD (with optional momentum), Adagrad or Adafactor over the method's parameter groups."""
    params = [p for g in groups for p in g["params"]]
    on_gpu = bool(params) and all(p.is_cuda for p in params)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=on_gpu or None)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr, eps=cfg.eps)
    from transformers.optimization import Adafactor

    # Fixed lr (no relative step): comparable with the other optimizers' schedules.
    return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int):
    """Linear, cosine or constant, after a linear warm-up; `total_steps` counts scheduler steps."""
    from transformers import get_scheduler

    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total_steps)
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1))

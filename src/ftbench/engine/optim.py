"""Optimizers and learning-rate schedules, built from the `optim` config group."""

from __future__ import annotations

import math

import torch

from ftbench.config import within
from ftbench.errors import UserError


def make_optimizer(groups: list[dict], cfg, lr: float) -> torch.optim.Optimizer:
    """AdamW, 8-bit AdamW, SGD (with optional momentum), Adagrad or Adafactor over the method's parameter groups.

    `adamw8bit` is bitsandbytes' `AdamW8bit` (Dettmers et al., 2022, "8-bit Optimizers via Block-wise
    Quantization"): both moments of a tensor of at least 4096 elements held as uint8 in blocks of 256
    with one fp32 absmax each and a 256-entry fp32 code book per moment (~2 bytes per element instead
    of 8); tensors under `optim.min_8bit_size` elements keep fp32 moments. Raises UserError
    ('optim.name') naming the extra when bitsandbytes is not installed."""
    params = [p for g in groups for p in g["params"]]
    on_gpu = bool(params) and all(p.is_cuda for p in params)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=on_gpu or None)
    if cfg.name == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError as exc:
            raise UserError("optim.name", f"adamw8bit needs bitsandbytes ({exc}); install it with "
                            "pip install 'ftbench[optimizers]', or set optim.name=adamw") from exc
        return bitsandbytes.optim.AdamW8bit(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                            min_8bit_size=cfg.min_8bit_size)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr, eps=cfg.eps)
    from transformers.optimization import Adafactor

    # Fixed lr (no relative step): comparable with the other optimizers' schedules.
    return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int):
    """Linear, cosine or constant, after a linear warm-up; `total_steps` counts scheduler steps. The factors of
    transformers' get_scheduler ("linear", "cosine", "constant_with_warmup"), computed here: importing
    transformers.optimization imports peft and bitsandbytes (~2 s of CPU in every ftbench process)."""
    from functools import partial

    from torch.optim.lr_scheduler import LambdaLR

    warmup = within.warmup_length(cfg, total_steps)
    return LambdaLR(optimizer, partial(lr_factor, shape=cfg.scheduler, warmup=warmup, total=max(total_steps, 1)))


def lr_factor(step: int, *, shape: str, warmup: int, total: int) -> float:
    """The lr's multiplier at scheduler step `step`: 0 to 1 over the warm-up, then 1 (constant), a line to 0
    (linear) or a half cosine to 0 (cosine) at step `total`."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if shape == "constant":
        return 1.0
    if shape == "linear":
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

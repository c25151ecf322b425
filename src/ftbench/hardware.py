"""Resolve the `hardware` group into a device, a precision and a batch split."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from .errors import UserError


@dataclass(frozen=True)
class Hardware:
    device: torch.device
    precision: str  # bf16-mixed | bf16-pure | fp32
    gradient_checkpointing: bool
    max_micro_batch_size: int | str | None  # "auto": fitted to the memory budget (fit_batch.py)
    attn_implementation: str
    pad_to_multiple_of: int | None

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast under bf16-mixed (fp32 weights); a no-op for the other precisions."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16-mixed")


def make_accelerator(device: torch.device):
    """A fresh accelerate `Accelerator` for each job (devices, DDP). Its state is a process-wide
    singleton and the jobs of a multirun may differ, so it is reset first; mixed precision is
    ftbench's own autocast (`Hardware.autocast`), so the state never pins a precision."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=not torch.distributed.is_initialized())
    return Accelerator(cpu=device.type == "cpu")


def resolve(cfg) -> Hardware:
    """Fill in every `auto`/null: CUDA when present, bf16 there, fp32 on the CPU."""
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise UserError("hardware.device", "cuda was asked for but no GPU is visible; use hardware=cpu")
    device = torch.device("cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and cuda)) else "cpu")
    on_gpu = device.type == "cuda"
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16-pure" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"
    checkpointing = on_gpu if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing
    pad_multiple = cfg.pad_to_multiple_of or (8 if on_gpu else None)
    if on_gpu and cfg.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Hardware(device, precision, checkpointing, cfg.max_micro_batch_size, cfg.attn_implementation, pad_multiple)


def split_batch(batch_size: int, max_micro: int | None, world_size: int = 1) -> tuple[int, int]:
    """(micro-batch, accumulation) that keep the effective batch exactly: the largest
    micro-batch <= max_micro that divides each rank's share of the batch."""
    if batch_size % world_size:
        raise UserError("task.batch_size", f"{batch_size} does not split over {world_size} processes")
    per_rank = batch_size // world_size
    limit = min(per_rank, max_micro or per_rank)
    micro = max(d for d in range(1, limit + 1) if per_rank % d == 0)
    return micro, per_rank // micro

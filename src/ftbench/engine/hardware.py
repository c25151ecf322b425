"""Resolve the `hardware` group into a device, a precision and a batch split."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch

from ftbench.errors import UserError


@dataclass(frozen=True)
class DeviceInfo:
    """What `hardware=auto` reads from the device it finds."""

    name: str  # torch.cuda.get_device_name, e.g. "NVIDIA H200"; "cpu" on the CPU
    memory_bytes: int | None  # the GPU's total memory; None on the CPU
    bf16: bool  # native bf16 tensor cores (compute capability >= 8.0); emulated bf16 does not count
    tf32: bool  # TF32 tensor cores (compute capability >= 8.0)


def detect(device: torch.device) -> DeviceInfo:
    """Name, memory and number formats of `device` (for a CUDA device, from its properties)."""
    if device.type != "cuda":
        return DeviceInfo("cpu", None, False, False)
    props = torch.cuda.get_device_properties(device)
    ampere = (props.major, props.minor) >= (8, 0)
    return DeviceInfo(props.name, props.total_memory, ampere and torch.cuda.is_bf16_supported(), ampere)


@dataclass(frozen=True)
class Hardware:
    device: torch.device
    precision: str  # bf16-mixed | bf16-pure | fp32
    gradient_checkpointing: bool
    max_micro_batch_size: int | str | None  # "auto": fitted to the memory budget (fit_batch.py)
    attn_implementation: str
    pad_to_multiple_of: int | None
    info: DeviceInfo | None = None

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast under bf16-mixed (fp32 weights); a no-op for the other precisions."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16-mixed")


def make_accelerator(device: torch.device):
    """A fresh accelerate `Accelerator` for each job (devices, DDP), from a reset state
    (`reset_accelerator_state`); mixed precision is ftbench's own autocast (`Hardware.autocast`),
    so the state never pins a precision."""
    from accelerate import Accelerator

    reset_accelerator_state()
    accelerator = Accelerator(cpu=device.type == "cpu")
    if accelerator.mixed_precision == "fp16":  # its GradScaler would scale losses that nothing unscales
        raise UserError("hardware.precision", "fp16 (accelerate launch --mixed_precision fp16 or accelerate "
                        "config) is not supported; launch with --mixed_precision no and pick "
                        "hardware.precision=bf16-pure, bf16-mixed or fp32")
    return accelerator


class SingleProcess:
    """What `loop.train` asks of an accelerator (`device`, `no_sync`, `backward`) for one process on one
    device, without accelerate. The memory planner's probes (plan/probe.py) train on the CPU inside a job:
    a second `Accelerator` there would reset accelerate's process-wide state, and the job's own
    `Accelerator`, which reads its device from that state, would then report the CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def no_sync(self, model: torch.nn.Module) -> AbstractContextManager:
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        # as Accelerator.backward in one process: it divides by its gradient_accumulation_steps (1 here),
        # a new scalar that a traced peak counts, so a probe traces what the job's step holds
        (loss / 1).backward()


def reset_accelerator_state() -> None:
    """Forget the accelerate state a previous job of this process left: it is a process-wide
    singleton, and the jobs of a multirun may differ (device, precision). The process group of a
    distributed launch is kept.

    Private API, isolated here: accelerate has no public reset (`AcceleratorState._reset_state` is
    what its own test utilities call); a new `Accelerator` otherwise inherits the first job's state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=not torch.distributed.is_initialized())


def resolve(cfg) -> Hardware:
    """Fill in every `auto`/null from the device found (`detect`): CUDA when present, bf16 where the GPU
    has native bf16 (else fp32), TF32 where it has TF32 tensor cores; fp32 on the CPU."""
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise UserError("hardware.device", "cuda was asked for but no GPU is visible; use hardware=cpu")
    device = torch.device("cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and cuda)) else "cpu")
    on_gpu = device.type == "cuda"
    info = detect(device)
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16-pure" if info.bf16 else "fp32"
    checkpointing = on_gpu if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing
    pad_multiple = cfg.pad_to_multiple_of or (8 if on_gpu else None)
    if info.tf32 and cfg.allow_tf32:  # restored when the job ends (restored_process_settings)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Hardware(device, precision, checkpointing, cfg.max_micro_batch_size, cfg.attn_implementation, pad_multiple,
                    info)


@contextmanager
def restored_process_settings() -> Iterator[None]:
    """Put back, when the job ends, the process-wide flags `resolve` may set (TF32 matmuls and
    convolutions), so the next job of a multirun starts from the process's own settings."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def split_batch(batch_size: int, max_micro: int | None, world_size: int = 1) -> tuple[int, int]:
    """(micro-batch, accumulation) that keep the effective batch exactly: the largest
    micro-batch <= max_micro that divides each rank's share of the batch."""
    if batch_size % world_size:
        raise UserError("task.batch_size", f"{batch_size} does not split over {world_size} processes")
    per_rank = batch_size // world_size
    limit = min(per_rank, max_micro or per_rank)
    micro = max(d for d in range(1, limit + 1) if per_rank % d == 0)
    return micro, per_rank // micro

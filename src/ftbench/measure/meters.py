"""Memory and speed, measured honestly.

Memory comes in phases: after load, during training (peak counters reset once
the warm-up steps are done), during eval (separately). The breakdown is read from
what the model, the method, autograd and the optimizer really hold: weights by
walking the model, gradients right before the optimizer step, optimizer state by
walking `optimizer.state`. Activations are what is left of the allocated peak.
The CPU has no allocator counter: there the peak is traced op by op
(trace_memory.py) when asked.
"""

from __future__ import annotations

import gc
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ftbench.measure.trace import LiveTensorPeak
from ftbench.results import Breakdown, Memory, Throughput

log = logging.getLogger("ftbench")

# Dense bf16 tensor-core peak (FLOP/s, no sparsity) per GPU, by the exact name torch.cuda.get_device_name
# reports (vendor datasheets). Variants differ (H100 SXM / PCIe / NVL; L40 / L40S / L4): a name not listed
# gets no peak (MFU null and one log line), never a neighbour's.
PEAK_BF16_FLOPS = {
    "NVIDIA B200": 2250e12,
    "NVIDIA H200": 989e12, "NVIDIA H200 NVL": 835e12, "NVIDIA GH200 480GB": 989e12,
    "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
    "NVIDIA H800": 989e12, "NVIDIA H800 PCIe": 756e12,
    "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12, "NVIDIA A800-SXM4-80GB": 312e12,
    "NVIDIA L40S": 362e12, "NVIDIA L40": 181e12, "NVIDIA L4": 121e12,
    "NVIDIA A40": 149.7e12, "NVIDIA A10": 125e12, "NVIDIA RTX A6000": 154.8e12,
    "NVIDIA GeForce RTX 4090": 165.2e12, "NVIDIA GeForce RTX 3090": 71e12,
}


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; a sparse COO tensor holds its indices and values, not its dense shape."""
    if t.is_sparse:
        return tensor_bytes(t._indices()) + tensor_bytes(t._values())
    return t.numel() * t.element_size()


def proc_kib_bytes(path: str, field: str) -> int | None:
    """A `field:  N kB` line of a Linux /proc file, in bytes; None where the file or the field is missing."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_peak_bytes() -> int | None:
    """The process's peak resident set (Linux VmHWM)."""
    return proc_kib_bytes("/proc/self/status", "VmHWM")


def host_available_bytes() -> int | None:
    """Memory the host can still give (MemAvailable of /proc/meminfo); None where that is not readable."""
    return proc_kib_bytes("/proc/meminfo", "MemAvailable")


def _reset_rss_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


@dataclass
class MemoryMeter:
    """Peak counters per phase; GPU-only figures stay None on the CPU."""

    device: torch.device
    load_allocated: int | None = None
    baseline_allocated: int | None = None
    train_peak: dict[str, int] = field(default_factory=lambda: {"allocated": 0, "reserved": 0, "active": 0})
    eval_peak_allocated: int | None = None
    step_reserved: list[int] = field(default_factory=list)
    cpu_peak_rss: int = 0
    grad_bytes: int = 0
    optimizer_state_bytes: int = 0
    optimizer_state_parts: dict[str, int] = field(default_factory=dict)  # the largest state, by kind
    optimizer_state_host_bytes: int = 0
    training: bool = False
    trace: bool = False  # CPU only: trace the train peak op by op (slows the step)
    held_bytes: Callable[[], int] | None = None  # what training holds throughout (the weights), for the traced peak
    # What training holds between steps that a step may free (masters, optimizer state): counted until freed
    held_tensors: Callable[[], list[torch.Tensor]] | None = None

    def __post_init__(self):
        self.cuda = self.device.type == "cuda"
        self.tracer = LiveTensorPeak() if self.trace and not self.cuda else None
        self.tracing = False
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_allocated = torch.cuda.memory_allocated(self.device)
        _reset_rss_peak()

    def _trace(self, on: bool) -> None:
        """Enter or leave the trace (eval pauses it); a no-op when it is already so."""
        if on != self.tracing:
            self.tracer.__enter__() if on else self.tracer.__exit__(None, None, None)
            self.tracing = on

    def _reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        _reset_rss_peak()

    def mark_loaded(self) -> None:
        """Model, method and optimizer are built: the load phase ends."""
        if self.cuda:
            self.load_allocated = torch.cuda.memory_allocated(self.device)
        self.cpu_peak_rss = max(self.cpu_peak_rss, rss_peak_bytes() or 0)

    def start_train(self) -> None:
        """Called once the warm-up steps are done: later peaks are the training peaks."""
        self._reset()
        self.training = True
        if self.tracer is not None:
            self.tracer.held_bytes = self.held_bytes() if self.held_bytes else 0
            self.tracer.hold(self.held_tensors() if self.held_tensors else [])
            self._trace(True)

    def _fold_train_peak(self) -> None:
        if not self.training:
            return
        if self.tracer is not None:
            self._trace(False)  # its peak carries over when eval ends and the trace resumes
        if self.cuda:
            stats = torch.cuda.memory_stats(self.device)
            self.train_peak["allocated"] = max(self.train_peak["allocated"], stats.get("allocated_bytes.all.peak", 0))
            self.train_peak["reserved"] = max(self.train_peak["reserved"], stats.get("reserved_bytes.all.peak", 0))
            self.train_peak["active"] = max(self.train_peak["active"], stats.get("active_bytes.all.peak", 0))
        self.cpu_peak_rss = max(self.cpu_peak_rss, rss_peak_bytes() or 0)

    def sample_grads(self, tensors: list[torch.Tensor]) -> None:
        """Gradient bytes held right before the optimizer step."""
        seen, total = set(), 0
        for t in tensors:
            if t.grad is not None and id(t) not in seen:
                seen.add(id(t))
                total += tensor_bytes(t.grad)
        self.grad_bytes = max(self.grad_bytes, total)

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        device_bytes, host_bytes = held_optimizer_state_bytes(optimizer, self.device)
        if device_bytes >= self.optimizer_state_bytes:
            self.optimizer_state_parts = optimizer_state_parts(optimizer, self.device)
        self.optimizer_state_bytes = max(self.optimizer_state_bytes, device_bytes)
        self.optimizer_state_host_bytes = max(self.optimizer_state_host_bytes, host_bytes)
        if self.cuda and self.training:
            self.step_reserved.append(torch.cuda.memory_reserved(self.device))

    def start_eval(self) -> None:
        self._fold_train_peak()
        self._reset()

    def end_eval(self) -> None:
        if self.cuda:
            peak = torch.cuda.max_memory_allocated(self.device)
            self.eval_peak_allocated = max(self.eval_peak_allocated or 0, peak)
        self._reset()
        if self.training and self.tracer is not None:
            self._trace(True)  # training goes on

    def end_train(self) -> None:
        self._fold_train_peak()
        self.training = False

    def summary(self, weights: int, masters: int) -> Memory:
        """result.json's memory section; `weights` and `masters` in bytes (the breakdown's
        trainable_bytes is the caller's to fill)."""
        peak = self.train_peak["allocated"] if self.cuda else None
        held = weights + masters + self.grad_bytes + self.optimizer_state_bytes
        traced = self.tracer if self.tracer is not None and self.tracer.peak_op is not None else None
        traced_peak = traced.peak_bytes if traced else None
        measured_peak = peak or traced_peak
        return Memory(
            device=str(self.device) if not self.cuda else f"cuda:{self.device.index or 0}",
            baseline_allocated_bytes=self.baseline_allocated,
            load_allocated_bytes=self.load_allocated,
            train_peak_allocated_bytes=peak,
            train_peak_reserved_bytes=self.train_peak["reserved"] if self.cuda else None,
            train_peak_active_bytes=self.train_peak["active"] if self.cuda else None,
            train_peak_traced_bytes=traced_peak,
            train_peak_traced_op=traced.peak_op if traced else None,
            train_peak_traced_by_op=_largest(traced.peak_by_op, TRACED_OPS_KEPT) if traced else None,
            eval_peak_allocated_bytes=self.eval_peak_allocated,
            step_reserved_p50_bytes=_percentile(self.step_reserved, 50),
            step_reserved_p99_bytes=_percentile(self.step_reserved, 99),
            cpu_peak_rss_bytes=self.cpu_peak_rss or None,
            optimizer_state_parts_bytes=dict(self.optimizer_state_parts),
            breakdown=Breakdown(
                weights_bytes=weights,
                master_bytes=masters,
                grad_bytes=self.grad_bytes,
                optimizer_state_bytes=self.optimizer_state_bytes,
                optimizer_state_host_bytes=self.optimizer_state_host_bytes,
                activations_bytes=max(measured_peak - held, 0) if measured_peak else None,
            ),
        )


TRACED_OPS_KEPT = 8  # result.json keeps the operators holding the most at the traced peak


def _largest(by_op: dict[str, int], count: int) -> dict[str, int]:
    return dict(sorted(by_op.items(), key=lambda item: -item[1])[:count])


def state_tensors(value, depth: int = 2):
    """The tensors one optimizer state entry holds: itself, the items of a list, tuple or dict, or the
    attributes of an object (GaLore's and APOLLO's projector keeps its projection matrix as
    `ortho_matrix`), `depth` levels down."""
    if torch.is_tensor(value):
        yield value
    elif depth > 0 and isinstance(value, (list, tuple, dict)):
        for item in value.values() if isinstance(value, dict) else value:
            yield from state_tensors(item, depth - 1)
    elif depth > 0 and hasattr(value, "__dict__") and not isinstance(value, (type, nn.Module)):
        for item in vars(value).values():
            yield from state_tensors(item, depth - 1)


def optimizer_state_parts(optimizer: torch.optim.Optimizer, device: torch.device | None) -> dict[str, int]:
    """Bytes of the optimizer's state on `device` (None: anywhere) by kind: the state key (`exp_avg`,
    bitsandbytes' `state1`, Adam-mini's `vmean`, a projector), followed by ` (rank r)` in a group whose
    gradients the optimizer projects to rank r (GaLore, APOLLO: their moments are r x n, not m x n)."""
    parts: dict[str, int] = {}
    for group in optimizer.param_groups:
        suffix = f" (rank {group['rank']})" if "rank" in group else ""
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                held = sum(tensor_bytes(t) for t in state_tensors(value) if device is None or t.device.type == device.type)
                if held:
                    parts[f"{key}{suffix}"] = parts.get(f"{key}{suffix}", 0) + held
    return parts


def held_optimizer_state_bytes(optimizer: torch.optim.Optimizer, device: torch.device) -> tuple[int, int]:
    """Bytes the optimizer really holds: (on the training device, on the host); tensors inside state
    objects (projectors) count too (`state_tensors`)."""
    on_device = sum(tensor_bytes(t) for t in optimizer_state_tensors(optimizer, device))
    on_host = sum(tensor_bytes(t) for t in optimizer_state_tensors(optimizer, None)) - on_device
    return on_device, on_host


def optimizer_state_tensors(optimizer: torch.optim.Optimizer, device: torch.device | None) -> list[torch.Tensor]:
    """The tensors of the optimizer's state on `device`'s type (None: anywhere)."""
    return [tensor for state in optimizer.state.values() for value in state.values()
            for tensor in state_tensors(value) if device is None or tensor.device.type == device.type]


def model_bytes(model: nn.Module, exclude: list[torch.Tensor]) -> int:
    """Bytes of the model's parameters and buffers, without the method's master copies, with the
    quantization state of 4-bit weights (`weight_parts`)."""
    return sum(weight_parts(model, exclude).values())


def parameter_count(model: nn.Module, exclude: list[torch.Tensor]) -> int:
    """Elements of the model's parameters, without the method's master copies; a 4-bit weight
    (bitsandbytes' `Params4bit`, two values per stored byte) counts the elements of the weight it
    holds (its `quant_state.shape`), not its packed bytes."""
    skip = {id(t) for t in exclude}
    counted = 0
    for param in model.parameters():
        if id(param) not in skip:
            state = getattr(param, "quant_state", None)
            counted += state.shape.numel() if state is not None else param.numel()
    return counted


QUANTIZED = "4-bit weights"  # weight_parts' label of bitsandbytes' packed 4-bit weights (2 per byte)
QUANT_STATE = "quantization state"  # their absmax per block, double-quantization constants, code book


def weight_parts(model: nn.Module, exclude: list[torch.Tensor]) -> dict[str, int]:
    """Bytes of the model's parameters and buffers by kind, without the method's master copies:
    `weights (<dtype>)` for ordinary tensors; for bitsandbytes' `Params4bit` (QLoRA's NF4 base: one
    uint8 holds two 4-bit values) the packed data under `QUANTIZED` and its `quant_state` tensors under
    `QUANT_STATE` (absmax per block of 64 weights: fp32, or uint8 with double quantization plus one fp32
    absmax per 256 of those and their code book; Dettmers et al., 2023, §3)."""
    skip = {id(t) for t in exclude}
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()] if id(t) not in skip}
    parts: dict[str, int] = {}
    seen = set(tensors)
    for tensor in tensors.values():
        state = getattr(tensor, "quant_state", None)
        label = QUANTIZED if state is not None else f"weights ({str(tensor.dtype).removeprefix('torch.')})"
        parts[label] = parts.get(label, 0) + tensor_bytes(tensor)
        if state is not None:
            for held in state_tensors(state):
                if id(held) not in seen and held.device == tensor.device:  # a code book shared by layers: once
                    seen.add(id(held))
                    parts[QUANT_STATE] = parts.get(QUANT_STATE, 0) + tensor_bytes(held)
    return parts


def _percentile(values: list[int], q: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def matmul_params(model: nn.Module) -> int:
    """Parameters that take part in matrix products (linear layers, incl. the LM head)."""
    seen, total = set(), 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) and weight is not None and id(weight) not in seen:
            seen.add(id(weight))
            total += weight.numel()
    return total


def flops_per_token(model: nn.Module, seq_len: float) -> float:
    """Training FLOPs of full fine-tuning per token: 6N for the matmuls plus attention (PaLM, App. B)."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or 0
    return 6 * matmul_params(model) + 12 * layers * hidden * seq_len


def peak_flops(device_name: str | None, precision: str, cuda: bool = True) -> float | None:
    """The device's dense bf16 peak in FLOP/s, matched by exact name; None off bf16, on the CPU, or for a
    GPU not in PEAK_BF16_FLOPS (then one log line says so)."""
    if not cuda or not device_name or not precision.startswith("bf16"):
        return None
    peak = PEAK_BF16_FLOPS.get(" ".join(device_name.split()))
    if peak is None:
        log.warning("no dense bf16 peak known for GPU %r: throughput.mfu is null (add it to "
                    "ftbench.measure.meters.PEAK_BF16_FLOPS)", device_name)
    return peak


@dataclass
class SpeedMeter:
    """Synchronized step times and token counts of the timed (post-warm-up) steps."""

    durations: list[float] = field(default_factory=list)
    samples: int = 0
    tokens: int = 0
    tokens_nonpad: int = 0
    tokens_loss: int = 0

    def record(self, seconds: float, samples: int, tokens: int, nonpad: int, loss_tokens: int) -> None:
        self.durations.append(seconds)
        self.samples += samples
        self.tokens += tokens
        self.tokens_nonpad += nonpad
        self.tokens_loss += loss_tokens

    def summary(self, flops_token: float | None, peak: float | None, each_step: bool = False) -> Throughput:
        """result.json's throughput section over the recorded steps; `flops_token`: FLOPs per token,
        `peak`: the device's FLOP/s (MFU is None without either); `each_step`: every step's seconds too."""
        if not self.durations:
            return Throughput()
        total = sum(self.durations)
        ordered = sorted(self.durations)
        p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
        return Throughput(
            step_time_s_p50=statistics.median(self.durations),
            step_time_s_p90=p90,
            timed_steps=len(self.durations),
            samples_per_s=self.samples / total,
            tokens_per_s=self.tokens / total,
            tokens_per_s_nonpad=self.tokens_nonpad / total,
            tokens_per_s_loss=self.tokens_loss / total,
            mfu=(self.tokens_nonpad / total) * flops_token / peak if flops_token and peak else None,
            step_times_s=list(self.durations) if each_step else None,
        )

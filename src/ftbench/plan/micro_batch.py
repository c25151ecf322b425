"""`hardware.max_micro_batch_size: auto`: the largest micro-batch that fits the device's memory.

Before training (and before a method's calibration passes), two probe steps measure what
the model costs at the task's longest sequence: a forward and backward of one sequence, then
of two. Their difference is what one more sequence costs (activations kept for backward);
the rest of the first is what does not grow with the batch (gradients, the loss's buffers).
The optimizer's state does not exist yet, so it is predicted from the trainable bytes. Then

    micro = floor((budget - fixed - optimizer state) / per sequence), at most the batch,

and `hardware.split_batch` turns it into the largest divisor of the batch, so the effective
batch is exactly what the task or train.batch_size says. Measured growth is
`torch.cuda.max_memory_allocated` on a GPU and the live tensor bytes traced op by op on the
CPU (trace_memory.py), both above what was allocated when the probe began.

Budget, for growth above what the process holds now:
  GPU: total memory x (1 - GPU_MARGIN) - allocated now (allocator fragmentation, the CUDA
       context and kernel workspaces live in the margin)
  CPU: memory the process may still take (MemAvailable, or the cgroup's limit less its usage
       when lower) x (1 - CPU_MARGIN) - 1 GiB (the allocator keeps freed pages, Python and the
       evaluation need some, other processes come and go)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ftbench.errors import UserError, first_line
from ftbench.measure.meters import host_available_bytes
from ftbench.measure.trace import LiveTensorPeak
from ftbench.plan import planner
from ftbench.results import GiB

log = logging.getLogger(__name__)

GPU_MARGIN = 0.10
CPU_MARGIN = 0.20
CPU_RESERVE = 1 * GiB
# Optimizer state tensors per trainable element (what `optim.name` keeps; adafactor's factored
# moments are ~0). The state has the dtype of the tensor the optimizer steps; adamw8bit's two uint8
# moments are counted as fp32 ones (an upper bound: small tensors keep fp32 moments).
STATES_PER_ELEMENT = {"adamw": 2, "adamw8bit": 2, "sgd": 0, "adagrad": 1, "adafactor": 0}
REDUCE_MEMORY = ("task.max_length (shorter sequences), hardware.gradient_checkpointing=true, "
                 "hardware.precision=bf16-pure, or a lighter method (e.g. method=lora)")


@dataclass(frozen=True)
class BatchFit:
    """What the probe measured and what was chosen (bytes; recorded in result.json `plan`)."""

    micro_batch_size: int
    seq_len: int  # tokens of the probed sequence (the task's longest)
    budget_bytes: int  # growth allowed above what was allocated when the probe began
    per_sequence_bytes: int  # what one more sequence in the micro-batch adds
    fixed_bytes: int  # what a step adds whatever its batch (gradients, loss buffers)
    optimizer_state_bytes: int  # predicted (the state appears at the first optimizer step)
    measured_by: str  # "cuda max_memory_allocated" | "traced live tensors" | the planner's probes
    chosen_by: str = "probe"  # probe: two steps of the model itself | planner: plan/planner.py's prediction

    def summary(self) -> dict:
        return asdict(self)


def predicted_optimizer_state_bytes(trainable_bytes: int, optim_cfg) -> int:
    """Predicted optimizer state: trainable bytes x the optimizer's state tensors per element."""
    states = STATES_PER_ELEMENT[optim_cfg.name]
    if optim_cfg.name == "sgd" and optim_cfg.momentum > 0:
        states = 1
    return states * trainable_bytes


def budget_bytes(device: torch.device) -> int:
    """Bytes the process may still allocate on `device`, less the margin (see the module docstring)."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return int(total * (1 - GPU_MARGIN)) - torch.cuda.memory_allocated(device)
    return int(cpu_available_bytes() * (1 - CPU_MARGIN)) - CPU_RESERVE


def cpu_available_bytes() -> int:
    """MemAvailable, or the cgroup's remaining allowance when that is lower (containers)."""
    available = host_available_bytes()
    if available is None:
        raise OSError("/proc/meminfo has no MemAvailable")
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            available = min(available, int(limit) - usage)
        break
    return available


@contextmanager
def same_random_streams(device: torch.device) -> Iterator[None]:
    """Python's, NumPy's and torch's random streams (the device's too) as they were before the block,
    whatever it seeds or draws (accelerate.utils.set_seed seeds all three)."""
    python, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_state)


def step_growth(model, loss_fn, batch: dict[str, torch.Tensor], device: torch.device) -> int:
    """Peak bytes one forward and backward of `batch` allocates above what was allocated before
    it. Gradients it leaves are dropped and the RNG streams restored, so training starts as if
    the probe never ran."""
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.grad for p in params]
    was_training = model.training
    model.train()  # as training runs it (dropout masks are saved for backward too)
    with same_random_streams(device):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            loss_fn(model, batch).backward()
            torch.cuda.synchronize(device)
            growth = torch.cuda.max_memory_allocated(device) - start
        else:
            with LiveTensorPeak() as tracer:
                loss_fn(model, batch).backward()
            growth = tracer.peak_new_bytes
    for p, grad in zip(params, before):
        p.grad = grad
    model.train(was_training)
    return growth


def choose(batch_per_rank: int, budget: int, fixed: int, per_sequence: int, optimizer_state: int) -> int:
    """The largest micro-batch (<= the batch) whose predicted growth fits `budget`; 0 when none does."""
    room = budget - fixed - optimizer_state
    if per_sequence <= 0:
        return batch_per_rank if room >= 0 else 0
    return max(0, min(batch_per_rank, room // per_sequence))


def batch_fit(model, loss_fn, sequence: dict[str, torch.Tensor], batch_per_rank: int, device: torch.device,
            optimizer_state: int = 0, what: str = "training") -> BatchFit:
    """Probe `model` (as it will run: method applied, grads where it trains) on `sequence` (a
    one-sequence CPU batch at the task's longest length) and choose the micro-batch.
    Raises UserError(hardware.max_micro_batch_size) when not even one sequence fits."""
    budget = budget_bytes(device)
    log.info("micro-batch for %s: probing one and two sequences of %d tokens", what, sequence["input_ids"].shape[1])
    one = step_growth(model, loss_fn, _on(sequence, 1, device), device)
    measured_by = "cuda max_memory_allocated" if device.type == "cuda" else "traced live tensors"
    seq_len = int(sequence["input_ids"].shape[1])
    if one + optimizer_state > budget:
        raise UserError("hardware.max_micro_batch_size", f"one sequence of {seq_len} tokens needs "
                        f"{(one + optimizer_state) / GiB:.1f} GiB for {what} but {max(budget, 0) / GiB:.1f} GiB "
                        f"are free ({measured_by}); reduce memory with {REDUCE_MEMORY}")
    # Is a second sequence safe to probe? Bound it as if everything in the first one scaled.
    if batch_per_rank == 1 or 2 * one + optimizer_state > budget:
        per_sequence, fixed = one, 0
    else:
        two = step_growth(model, loss_fn, _on(sequence, 2, device), device)
        per_sequence = max(two - one, 0)
        fixed = max(one - per_sequence, 0)
    micro = max(1, choose(batch_per_rank, budget, fixed, per_sequence, optimizer_state))
    chosen = BatchFit(int(micro), seq_len, int(budget), int(per_sequence), int(fixed), int(optimizer_state), measured_by)
    log.info("micro-batch for %s: %d of %d sequences at %d tokens (%.2f GiB each + %.2f GiB fixed + %.2f GiB "
             "optimizer state, budget %.1f GiB)", what, chosen.micro_batch_size, batch_per_rank, seq_len,
             per_sequence / GiB, fixed / GiB, optimizer_state / GiB, budget / GiB)
    return chosen


SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def planned(cfg, hw, head: str, model, sequence: dict[str, torch.Tensor], batch_per_rank: int, processes: int,
            what: str) -> BatchFit | None:
    """The training micro-batch from the memory planner (plan.py: traced steps of two and three layers of
    the same shape, at the run's precision, checkpointing and sequence length), without a step of the
    model itself; None, with the reason logged, where the planner cannot answer: another phase than
    training, several processes (DDP's buffers are not planned), or a model whose shape is not
    `model.shape` (a checkpoint's own config, or preflight's overrides)."""
    from omegaconf import OmegaConf


    shape = cfg.model.get("shape")
    loaded = getattr(model, "config", None)
    differs = [k for k in SHAPE_KEYS if shape is None or loaded is None or shape.get(k) != getattr(loaded, k, None)]
    why = ("it plans training steps only" if what != "training" else
           "it plans one process" if processes > 1 else
           f"the model's {', '.join(differs)} differ from model.shape" if differs else None)
    if why is None:
        seq_len = int(sequence["input_ids"].shape[1])
        plan_cfg = OmegaConf.merge(cfg, {
            "hardware": {"device": hw.device.type, "precision": hw.precision, "max_micro_batch_size": None,
                         "gradient_checkpointing": hw.gradient_checkpointing,
                         "attn_implementation": hw.attn_implementation},
            "profile": {"batch_size": batch_per_rank, "seq_len": seq_len, "objective": head}})
        try:
            with same_random_streams(hw.device):  # the probes seed and draw: training starts as if they never ran
                tgt = planner.target(plan_cfg)
                the_fit = planner.plan_fit(plan_cfg, tgt)
                budget = budget_bytes(hw.device)
                held_now = planner.held_when_loaded(the_fit, tgt)  # weights, masters: allocated before budget was read
                # these probe too: a loss-chunk count is probed when a micro-batch of it is first asked for
                micro = planner.largest_micro_batch_from(the_fit, tgt, budget + held_now, batch_per_rank)
                one, two = planner.peak_at(the_fit, tgt, 1), planner.peak_at(the_fit, tgt, 2)
        except Exception as exc:  # noqa: BLE001 -- any failure of the prediction leaves the probe to answer
            why = f"it failed: {first_line(str(exc)) or type(exc).__name__}"
    if why is not None:
        log.info("micro-batch for %s: probing (the memory planner cannot answer: %s)", what, why)
        return None
    if micro == 0:
        raise UserError("hardware.max_micro_batch_size", f"one sequence of {seq_len} tokens is predicted to need "
                        f"{(one - held_now) / GiB:.1f} GiB for {what} but "
                        f"{max(budget, 0) / GiB:.1f} GiB are free (memory planner); reduce memory with {REDUCE_MEMORY}")
    state = int(the_fit.scalar("optimizer_state_bytes", tgt.layers))
    chosen = BatchFit(int(micro), seq_len, int(budget), int(two - one), int(2 * one - two - held_now - state),
                      state, "memory planner: traced steps of shallow probes (plan/planner.py)", "planner")
    log.info("micro-batch for %s: %d of %d sequences at %d tokens (memory planner: %.2f GiB per sequence, "
             "budget %.1f GiB)", what, micro, batch_per_rank, seq_len, chosen.per_sequence_bytes / GiB, budget / GiB)
    return chosen


def _on(sequence: dict[str, torch.Tensor], copies: int, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.repeat(copies, *([1] * (v.dim() - 1))).to(device) for k, v in sequence.items()}

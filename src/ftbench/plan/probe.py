"""Probe runs for the memory planner: a few real training steps of a cut-down copy
of the planned model on the CPU, traced op by op.

A probe is the planned run with fewer layers (`layers`), a smaller micro-batch
(`batch`) and, for shapes too large for host memory, every width divided by
`width_div` (hidden size, FFN size, head dimension, vocabulary; the head counts
stay, so every per-token tensor shrinks by the same factor and every weight
matrix by its square). It is wired like `mode=profile` in run.py (the same
model builder, method, optimizer, loss and training loop; the chunked loss's
chunks as the planner sets them, planner.py) and records,
after every operator of the traced steps, the bytes live on the planned device
and the phase of the step: forward, backward (checkpoint recomputes included),
or optimizer step (clipping, the update, a method's write-back).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ftbench.config.knobs import settle
from ftbench.engine import batches
from ftbench.engine.batches import to_device
from ftbench.engine.hardware import Hardware, SingleProcess
from ftbench.engine.loggers import NullLogger
from ftbench.engine.loop import Compute, Trainee, TrainSpec, Watchers, train
from ftbench.engine.loss import make_loss
from ftbench.measure.meters import (
    MemoryMeter,
    SpeedMeter,
    model_bytes,
    optimizer_state_tensors,
    tensor_bytes,
    weight_parts,
)
from ftbench.measure.trace import LiveTensorPeak
from ftbench.methods import build_method
from ftbench.methods.base import MethodContext, optimizer_for, scheduler_for
from ftbench.models.architecture import DEPTHS, WIDTHS, closing_token, per_layer_fields
from ftbench.models.loading import architecture_config, configure_model, load_model

PHASES = ("forward", "backward", "optimizer step")
WARMUP_TOKENS = 8  # the length of a warm-up step's one sequence


class Timeline(LiveTensorPeak):
    """A `LiveTensorPeak` that also keeps, after every operator, the bytes live on the
    planned device and the phase of the step.

    `host_bytes()` is what the method keeps in host memory on a GPU (HiFT's offloaded
    state): on the CPU it is an ordinary allocation, on a GPU it is not device memory.
    """

    def __init__(self, host_bytes=lambda: 0):
        super().__init__()
        self.host_bytes = host_bytes
        self.optimizer_phase = False  # set by ProbeMeter between the last backward and the next step
        self.step = 0  # traced steps done (ProbeMeter counts them)
        self.points: list[tuple[int, int, str, int, int]] = []  # (bytes, phase index, op, step, output size)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        # Private API, no public equivalent: whether autograd's engine is running a backward pass
        # (checkpoint recomputes inside backward then count as backward, as they should).
        in_backward = torch._C._current_graph_task_id() != -1
        phase = 2 if self.optimizer_phase else 1 if in_backward else 0
        first = out if isinstance(out, torch.Tensor) else next(
            (t for t in out if isinstance(t, torch.Tensor)), None) if isinstance(out, (tuple, list)) else None
        self.points.append((self.now_bytes - self.host_bytes(), phase, func.name(), self.step,
                            first.numel() if first is not None else -1))
        return out


class ProbeMeter(MemoryMeter):
    """The training loop's meter, marking where the optimizer phase starts and ends."""

    def __post_init__(self):  # no gc.collect() or counter resets: a probe's peak is traced, not read from counters
        self.cuda, self.tracer, self.tracing = False, None, False

    def sample_grads(self, tensors):
        super().sample_grads(tensors)
        if self.tracing:
            self.tracer.optimizer_phase = True

    def after_step(self, optimizer):
        super().after_step(optimizer)
        if self.tracing:
            self.tracer.optimizer_phase = False
            self.tracer.step += 1


@dataclass
class Probe:
    layers: int
    batch: int
    width: float  # 1 / width_div
    points: list[tuple[int, int, str, int, int]]
    weights_bytes: int
    trainable_bytes: int
    master_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int
    adamw_temp_bytes: int  # what the CPU's for-loop AdamW allocates per tensor (a GPU's fused AdamW does not)
    state_parts: dict[str, int] = field(default_factory=dict)  # the optimizer state by kind (meters.py)
    weight_parts: dict[str, int] = field(default_factory=dict)  # the weights by kind: 4-bit, their quantization state


def probe_model_config(mcfg: DictConfig, layers: int, width_div: int) -> DictConfig:
    """The model config of a probe: `layers` layers, widths divided by `width_div`. Fields are read from the
    shape's transformers config under the family's own names (architecture.DEPTHS, WIDTHS): every stack as
    deep as the model (`num_hidden_layers`) gets `layers`; another stack keeps its own depth (a decoder
    deeper than its encoder: its bytes are then part of the constant, exactly). A list with one entry per
    layer of that stack (architecture.per_layer_fields: Qwen2's layer_types) follows: its first `layers`
    entries, repeated from the start where the probe is deeper than the model."""
    config = architecture_config(mcfg)
    values = config.to_dict()
    depth = config.num_hidden_layers
    shrunk = OmegaConf.to_container(mcfg, resolve=True)
    shape = {config.attribute_map.get(k, k): v for k, v in shrunk["shape"].items()}  # e.g. T5's num_layers
    shape.update({name: layers if values[name] == depth else values[name]  # pinned: not derived
                  for name in DEPTHS if isinstance(values.get(name), int)})
    shape.update({name: [values[name][i % depth] for i in range(layers)] for name in per_layer_fields(config.model_type)
                  if isinstance(values.get(name), list) and len(values[name]) == depth})
    if width_div > 1:
        shape.update({name: max(1, round(values[name] / width_div)) for name in WIDTHS
                      if isinstance(values.get(name), int)})
    shrunk["shape"], shrunk["random_init"] = shape, True
    return OmegaConf.create(shrunk)


def probe_optim_config(optim_cfg: DictConfig, width_div: int) -> DictConfig:
    """The optimizer config of a probe: adamw8bit's `min_8bit_size` divided by `width_div`², so that the
    tensors kept in 8 bits are those of the full-width run (a weight's elements shrink by `width_div`²)."""
    if optim_cfg.name != "adamw8bit" or width_div == 1:
        return optim_cfg
    return OmegaConf.merge(optim_cfg, {"min_8bit_size": max(1, optim_cfg.min_8bit_size // width_div**2)})


def run_probe(cfg: DictConfig, hw: Hardware, layers: int, batch: int, width_div: int, accumulation: int,
              head: str, gpu: bool, chunk_tokens: int | None, whole_chunks: bool, draws: Any = None) -> Probe:
    """Trace one probe; `hw` is the planned hardware (precision, checkpointing, attention); the causal LM's
    loss in chunks of `chunk_tokens`, `whole_chunks` or not (engine/loss.py; the planner picks them); `draws`:
    what the planned steps train, replayed (Method.draws, Method.probe_groups)."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    device = torch.device("cpu")
    accelerator = SingleProcess(device)  # never an Accelerator: that would move the job's to the CPU
    cpu_hw = Hardware(device, hw.precision, hw.gradient_checkpointing, None,
                      "sdpa" if hw.attn_implementation == "flash_attention_2" else hw.attn_implementation, None)
    model = configure_model(load_model(probe_model_config(cfg.model, layers, width_div), head, 2, device,
                                       hw.precision, cpu_hw.attn_implementation), 0, hw.gradient_checkpointing)
    vocab, closing = model.config.vocab_size, closing_token(model.config, head)

    def stream(seed):
        return batches.random_tokens(batch, cfg.profile.seq_len, vocab, head, 2, seed, closing=closing)

    loss_fn = make_loss(model, head, chunk_tokens, whole_chunks)

    def micro_loss(m, b):
        with cpu_hw.autocast():
            return loss_fn(m, to_device(b, device))

    def calibration_batches(n):
        it = stream(cfg.seed + 10_007)
        return (next(it) for _ in range(n))

    planned = OmegaConf.to_object(cfg.method)
    method = build_method(OmegaConf.merge(cfg.method, planned.probe_settings()))
    with tempfile.TemporaryDirectory(prefix="ftbench-probe-") as tmp:
        ctx = MethodContext(head=head, device=device, precision=hw.precision,
                            gradient_checkpointing=hw.gradient_checkpointing, seed=cfg.seed,
                            calibration_batches=calibration_batches, loss=micro_loss, output_dir=Path(tmp))
        model = method.prepare(model, ctx)
    method.probe_groups(planned, draws)  # the run's draws, replayed (BlockRotation.probe_groups)
    optimizer = optimizer_for(method, model, probe_optim_config(cfg.optim, width_div), settle(cfg).lr)
    traced = method.planned_steps()  # 1, or every state of a method whose steps differ (HiFT: a whole cycle)
    # Warmed up as mode=profile warms up: every unit visited once (its state, masters and host buffers exist).
    warmup = method.probe_warmup_steps(traced)
    scheduler = scheduler_for(optimizer, method, cfg.optim, warmup + traced)
    # The warm-up only has to create what the traced steps hold (optimizer state, masters, host buffers), none
    # of which depends on the batch: one short sequence per micro-batch makes it cheap; but its last step is a
    # full one, traced and its points dropped, so that what a step leaves alive into the next (PEFT DoRA's B·A
    # product of each GPT-2 Conv1D layer, 49,152 B a layer at width 32) counts in the traced steps, as in a
    # run's second traced step and later ones.
    warmup_stream = batches.random_tokens(1, min(WARMUP_TOKENS, cfg.profile.seq_len), vocab, head, 2, cfg.seed + 1,
                                          closing=closing)
    spec = TrainSpec(steps=warmup + traced, micro_batch_size=batch, accumulation=accumulation, measure_from=warmup - 1,
                max_grad_norm=cfg.optim.max_grad_norm, progress=False, stop_at_once=True)
    meter = ProbeMeter(device)
    store = getattr(method, "store", None)
    meter.tracer = Timeline(host_bytes=(lambda: store.arena.nbytes) if gpu and store is not None else (lambda: 0))
    masters = method.master_parameters()
    meter.held_bytes = lambda: model_bytes(model, masters)
    meter.held_tensors = lambda: [*method.held_tensors(), *optimizer_state_tensors(optimizer, device)]
    quiet = logging.getLogger("ftbench.engine.loop")
    level, quiet.level = quiet.level, logging.WARNING  # a probe's step logs would read as the run's
    try:
        train(Trainee(model, method, optimizer, scheduler),
              chain(islice(warmup_stream, (warmup - 1) * accumulation), stream(cfg.seed)), spec,
              Compute(accelerator, head, autocast=cpu_hw.autocast, loss_fn=loss_fn),
              Watchers(meter, SpeedMeter(), NullLogger()))
    finally:
        meter.end_train()
        quiet.setLevel(level)
    params = method.optimizer_parameters()
    for_loop_adamw = isinstance(optimizer, torch.optim.AdamW) and not optimizer.defaults.get("fused")
    points = [(b, phase, op, step - 1, size) for b, phase, op, step, size in meter.tracer.points if step > 0]
    return Probe(layers=layers, batch=batch, width=1 / width_div, points=points,
                 weights_bytes=model_bytes(model, masters), trainable_bytes=method.trainable_size()[1],
                 master_bytes=method.master_bytes(), grad_bytes=meter.grad_bytes,
                 optimizer_state_bytes=meter.optimizer_state_bytes, state_parts=dict(meter.optimizer_state_parts),
                 weight_parts=weight_parts(model, masters),
                 # sqrt(v) and its quotient: two temporaries the size of the tensor being updated
                 adamw_temp_bytes=2 * max((tensor_bytes(p) for p in params), default=0) if for_loop_adamw else 0)

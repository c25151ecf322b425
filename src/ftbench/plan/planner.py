"""The memory planner: the train-phase peak of a run, predicted before any download
and without a GPU, and the largest micro-batch that fits.

The model of the peak, and where each part comes from:

- **Held state** (weights, fp32 masters, gradients, optimizer state) and the
  **per-step part** (activations saved for backward, checkpoint recomputes, the
  chunked loss's logits, temporaries) come from probe runs (plan_probe.py): real
  steps of the planned method on a cut-down copy of the model, traced op by op
  on the CPU, which give the bytes live after every op and its phase (forward,
  backward, optimizer step). The planned timeline is extrapolated op by op
  (plan_fit.py) and its highest point is the peak, with its op and phase. A
  method whose held state is not linear in depth (S2FT's global allocation)
  has it counted on the full-depth meta-device model instead (plan_held.py).
- **The model of growth.** At a fixed position in the step, bytes are
  linear in the layer count L (held state, the boundary activation each
  checkpointed layer keeps, each layer's gradients) and linear in the
  micro-batch B at the planned sequence length (activations per sequence,
  tokens² attention terms included, since the length is fixed); what depends on
  neither (the embedding and head, one layer's recompute when B is fixed, the
  optimizer's per-tensor temporaries) is the constant. Probes: L in (g + 1, g + 2)
  (g = the method's `probe_layers()`: a rotating group, freeze's trained layers, else 1:
  the first layer, which keeps less when nothing below it trains, and the last are then
  different layers; rotating groups of g > 1 taken in turn: L in (l, l + g), l the least
  over g congruent to the planned depth modulo g, so that the last groups are alike:
  `probe_depths`); a run shallower than l at its own depth and l (`planner_depths`: a
  line carried down from deeper probes runs ops of layers the run lacks), B in (2, 3)
  (a single sequence takes shortcuts: views where larger batches copy).
- **The chunked loss** (a causal LM's, engine/loss.py) is not linear in B: up to
  `train.loss_chunk_tokens` tokens it is one chunk, whose logits grow with B; beyond, the
  largest chunk's are `loss_chunk_tokens` whatever B, its backward behind the LM head's
  gradient the chunks before it left (from three chunks on, and the final hidden states).
  So B is probed by its chunk count, 1, 2 or 3 and more (`probe_corners`, on first use).
- **Width** (shapes too large for host memory): probes at three widths w (hidden,
  FFN, head dimension and vocabulary divided by d, 2d, 4d; the head counts kept).
  Weight-like tensors grow as w², per-token ones as w, per-head ones not at all,
  so bytes after each op are a quadratic in w, interpolated through the three
  probes and evaluated at w = 1.
- **What a GPU adds** that a CPU trace does not see, as constants below: the
  cuBLAS workspace, FlashAttention's backward buffers, and the fused AdamW the
  run uses on CUDA instead of the CPU's for-loop AdamW and its temporaries.

Not modelled: allocator rounding (512 B blocks) and fragmentation (reserved -
allocated), the CUDA context (~0.5 GiB outside the allocator): `plan.margin`
keeps that share of the device free.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ftbench.engine.hardware import Hardware, split_batch
from ftbench.engine.loss import chunk_tokens_of
from ftbench.models.architecture import FFN_WIDTHS
from ftbench.models.fit import planned_model, profile_head
from ftbench.models.loading import architecture_config
from ftbench.plan.extrapolate import (
    Step,
    at_full_width,
    extrapolate,
    lagrange_at_one,
    peak,
    phase_peaks,
    steps_of,
)
from ftbench.plan.held_state import (
    STATE_PART,
    WEIGHT_PART,
    counted_on_meta,
    held_state,
    profiled_window,
)
from ftbench.plan.probe import PHASES, Probe, run_probe
from ftbench.results import GiB

MiB = 2**20

# What a GPU step allocates that the CPU trace does not see (bytes).
CUBLAS_WORKSPACE_BYTES = 32 * MiB + 1 * MiB  # cuBLAS (Hopper default, ":4096:8") + cuBLASLt, per stream, from the
#                                              caching allocator; older GPUs use 8 MiB: the Hopper figure errs safe
FLASH_BWD_BYTES_PER_TOKEN_PER_DIM = 4  # FlashAttention-2 backward: an fp32 dQ accumulator (tokens × heads × head_dim),
FLASH_BWD_BYTES_PER_TOKEN_PER_HEAD = 4  # and softmax_d (tokens × heads, fp32), for the layer in backward
PROBE_BYTES = 64 * MiB  # the widest probe stays under this: host memory and CPU time (a 7B shape: 1/16 width)
MIN_HEAD_DIM = 2  # the narrowest probe keeps this head dimension (rotary embeddings rotate pairs)
MAX_MICRO_BATCH = 4096  # the search for the largest micro-batch stops here


@dataclass
class Target:
    """The run being planned: its hardware, shape and split."""

    hw: Hardware
    gpu: bool
    head: str
    layers: int
    micro_batch: int
    accumulation: int
    seq_len: int
    hidden: int
    heads: int


@dataclass
class PlanFit:
    corners: dict[int, dict[tuple[int, int], list[Step]]]  # loss_chunks -> (layers, micro-batch) -> timeline at w=1
    scalars: dict[str, dict[int, float]]  # breakdown figures by probe layer count (batch-independent)
    probes: list[dict] = field(default_factory=list)
    width_divs: tuple[int, ...] = (1,)
    aligned: bool = True  # width timelines paired op by op
    counted: dict[str, int] | None = None  # held state counted on the meta model at `counted_layers` (plan_held.py)
    counted_layers: int = 0
    unvisited: float = 0.0  # layers' worth of state the probes hold and the run not yet (Method.unvisited_layers)
    draws: Any = None  # what the planned steps train, for the probes to replay (Method.draws)
    chunk_tokens: int | None = None  # the loss's chunk (engine/loss.py); None: the model's own loss
    seq_len: int = 0
    probe: Callable[[PlanFit, int], None] | None = None  # fills `corners[n]`: the probes of n loss chunks

    def loss_chunks(self, batch: float) -> int:
        """The loss chunks of a micro-batch as the probes tell them apart: 1, 2, 3 and more (3); 0 without chunks."""
        return 0 if self.chunk_tokens is None else min(math.ceil(batch * self.seq_len / self.chunk_tokens), 3)

    def corners_at(self, batch: float) -> dict[tuple[int, int], list[Step]]:
        """The probe timelines of micro-batches of `batch`'s loss chunks (probed on first use)."""
        chunks = self.loss_chunks(batch)
        if chunks not in self.corners:
            self.probe(self, chunks)
        return self.corners[chunks]

    def extrapolated(self, name: str, layers: int) -> float:
        """`name` at `layers` layers on the line through the probes; the optimizer state less the
        `unvisited` layers' (the probes hold every unit's: a layer's is the line's slope)."""
        (l1, v1), _ = sorted(self.scalars[name].items())
        unheld = self.unvisited if name.startswith("optimizer_state_bytes") else 0
        return v1 + (layers - l1 - unheld) * self.per_layer(name)

    def per_layer(self, name: str) -> float:
        (l1, v1), (l2, v2) = sorted(self.scalars[name].items())
        return (v2 - v1) / (l2 - l1)

    def scalar(self, name: str, layers: int) -> float:
        if self.counted is not None and layers == self.counted_layers and name in self.counted:
            return self.counted[name]
        return self.extrapolated(name, layers)

    def parts(self, prefix: str, layers: int) -> dict[str, int]:
        """The optimizer state (`STATE_PART`: meters.optimizer_state_parts) or the weights (`WEIGHT_PART`:
        meters.weight_parts) by kind at `layers` layers: counted on the meta model where the held state
        was, else extrapolated from the probes."""
        source = self.counted if self.counted is not None and layers == self.counted_layers else self.scalars
        return {name[len(prefix):]: int(round(self.scalar(name, layers))) for name in source
                if name.startswith(prefix)}

    def timeline(self, layers: int, batch: float) -> list[Step]:
        """The step timeline extrapolated to `layers` layers and micro-batch `batch`. Where the held state
        was counted (plan_held.py), the timeline moves by the counted less the extrapolated held state:
        weights, masters and optimizer state throughout, gradients in the optimizer step (all exist there)."""
        corners = self.corners_at(batch)
        (l1, l2), (b1, b2) = sorted({k[0] for k in corners}), sorted({k[1] for k in corners})
        by_batch = [extrapolate(corners[n, b1], corners[n, b2], b1, b2, batch, False) for n in (l1, l2)]
        steps = extrapolate(by_batch[0], by_batch[1], l1, l2, layers, True)
        if self.unvisited:  # state held throughout the step
            unheld = self.unvisited * self.per_layer("optimizer_state_bytes")
            steps = [Step(s.values - unheld, s.phases, s.ops, s.sizes) for s in steps]
        if self.counted is None or layers != self.counted_layers:
            return steps
        held = sum(self.scalar(k, layers) - self.extrapolated(k, layers)
                   for k in ("weights_bytes", "master_bytes", "optimizer_state_bytes"))
        grads = self.scalar("grad_bytes", layers) - self.extrapolated("grad_bytes", layers)
        return [Step(s.values + held + grads * (s.phases == 2), s.phases, s.ops, s.sizes) for s in steps]


def target(cfg: DictConfig) -> Target:
    """The planned hardware as the run would resolve it on its own device (no GPU needed here)."""
    hcfg = cfg.hardware
    gpu = hcfg.device != "cpu"  # auto plans for a GPU: that is the question a plan answers
    precision = hcfg.precision if hcfg.precision != "auto" else ("bf16-pure" if gpu else "fp32")
    checkpointing = gpu if hcfg.gradient_checkpointing is None else bool(hcfg.gradient_checkpointing)
    # auto (the default): the requested setting is the whole batch at once; the plan then says what fits
    cap = None if hcfg.max_micro_batch_size == "auto" else hcfg.max_micro_batch_size
    hw = Hardware(torch.device("cuda" if gpu else "cpu"), precision, checkpointing, cap,
                  hcfg.attn_implementation, hcfg.pad_to_multiple_of)
    head = profile_head(cfg)
    micro, accumulation = split_batch(cfg.profile.batch_size, cap)
    config = architecture_config(cfg.model)  # every family's sizes under the common names (attribute_map)
    return Target(hw=hw, gpu=gpu, head=head, layers=int(config.num_hidden_layers), micro_batch=micro,
                  accumulation=accumulation, seq_len=cfg.profile.seq_len, hidden=int(config.hidden_size),
                  heads=int(config.num_attention_heads))


def width_divisor(cfg: DictConfig, tgt: Target, layers: int) -> int:
    """The smallest power-of-two width divisor whose probe stays under PROBE_BYTES; 1 = the real width."""
    config = architecture_config(cfg.model)
    head_dim = int(getattr(config, "head_dim", None) or tgt.hidden // tgt.heads)
    ffn = next((v for v in (getattr(config, name, None) for name in FFN_WIDTHS) if v), 4 * tgt.hidden)
    per_layer = 4 * tgt.hidden**2 + 3 * tgt.hidden * int(ffn)
    vocab = 2 * int(config.vocab_size) * tgt.hidden

    def probe_bytes(div: int) -> int:  # fp32 weights, grads, masters, 2 states; 40 B per activation element
        params = (layers * per_layer + vocab) / div**2
        return int(20 * params + 40 * 2 * tgt.seq_len * tgt.hidden / div * layers)

    div = 1
    while probe_bytes(div) > PROBE_BYTES and head_dim % (8 * div * MIN_HEAD_DIM) == 0:
        div *= 2
    return div


@contextmanager
def one_thread():
    """Probes run on one intra-op thread: their ops are small, and a second thread's spin-waits cost more
    CPU than it saves (a 7B plan on 2 cores: 52 s of CPU time on two threads, 20 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def plan_fit(cfg: DictConfig, tgt: Target) -> PlanFit:
    """Run the probes (two layer counts x two micro-batches, at one or three widths) of the planned micro-batch's
    loss chunks; see the module docstring."""
    # The first layer keeps less for backward than the others when nothing below it trains (a frozen
    # embedding: no input gradient), a trained layer more than one the gradient only passes through (a
    # rotating method's group, freeze's last N): probes of that group (`probe_layers()`, else 1) plus one
    # and plus two layers, so that in both the first layer and the last are different layers and every op
    # pairs with the same role (with one layer alone it is first and last, and grows as neither); groups
    # taken in turn, as many layers over whole groups as the run (the schema's `probe_depths`); a run shallower
    # than those is probed at its own depth (`planner_depths`).
    # Replayed draws (a random order's groups) set their own: as deep as puts each drawn block at its place.
    unvisited, draws = profiled_window(cfg, tgt.head, tgt.hw.precision, tgt.hw.gradient_checkpointing)
    layer_points = OmegaConf.to_object(cfg.method).planner_depths(tgt.layers) if draws is None else draws.depths
    div = width_divisor(cfg, tgt, layer_points[1])
    divs = (div,) if div == 1 else (div, 2 * div, 4 * div)
    chunk = chunk_tokens_of(architecture_config(cfg.model).model_type, tgt.head, cfg.train.loss_chunk_tokens)
    counted = held_state(cfg, tgt.head, tgt.hw.precision, tgt.hw.gradient_checkpointing) if counted_on_meta(
        cfg) else None
    the_fit = PlanFit({}, {}, [], divs, True, counted, tgt.layers, unvisited, draws, chunk, tgt.seq_len,
                      partial(probe_corners, cfg, tgt, layer_points))
    the_fit.corners_at(tgt.micro_batch)
    return the_fit


def probe_corners(cfg: DictConfig, tgt: Target, layer_points: tuple[int, int], the_fit: PlanFit,
                  chunks: int) -> None:
    """Probe micro-batches of `chunks` loss chunks (PlanFit.loss_chunks) into `the_fit`: 2 and 3 sequences
    (not 1: a single sequence takes shortcuts, views where larger batches copy), their loss in one chunk; of
    2 or 3 chunks, the smallest micro-batch (at least 2) of that many and one more, of as many chunks where
    two are (then the chunks pair one to one: the last one's backward frees the hidden states, a middle
    one's not), every chunk whole (engine/loss.py): each chunk's ops pair with one as large as the run's largest."""
    chunk, length = the_fit.chunk_tokens, tgt.seq_len
    first = 2 if chunks < 2 else max(2, (chunks - 1) * chunk // length + 1)
    if chunks > 1:
        alike = (b for b in range(first, first + chunk // length + 1) if the_fit.loss_chunks(b) == chunks
                 and math.ceil(b * length / chunk) == math.ceil((b + 1) * length / chunk))
        first = next(alike, first)
    batch_points = (first, first + 1)
    the_fit.corners[chunks] = corners = next(  # another count's probes where they are these (long sequences)
        (c for n, c in the_fit.corners.items() if chunks > 1 < n and {b for _, b in c} == set(batch_points)), {})
    if corners:
        return
    accumulation = 1 if tgt.accumulation == 1 else 2
    widths, divs = [1 / d for d in the_fit.width_divs], the_fit.width_divs
    held = not the_fit.scalars  # the held state (batch-independent): from the first chunk count probed
    for layers in layer_points:
        for batch in batch_points:
            chunk_tokens = batch * tgt.seq_len if chunks == 1 else chunk  # 1: all in one chunk
            with one_thread():
                runs = [run_probe(cfg, tgt.hw, layers, batch, d, accumulation, tgt.head, tgt.gpu, chunk_tokens,
                                  chunks > 1, the_fit.draws) for d in divs]
            the_fit.probes += [_summary(p) for p in runs]
            corners[layers, batch], ok = at_full_width([steps_of(p.points) for p in runs], widths)
            the_fit.aligned &= ok
            if held and batch == batch_points[0]:
                weights, scalars = lagrange_at_one(widths) if len(runs) > 1 else [1.0], the_fit.scalars
                for name in SCALARS:
                    scalars.setdefault(name, {})[layers] = sum(w * getattr(p, name) for w, p in zip(weights, runs))
                for label in runs[0].state_parts:  # the optimizer state by kind, extrapolated as its total is
                    scalars.setdefault(f"{STATE_PART}{label}", {})[layers] = sum(
                        w * p.state_parts.get(label, 0) for w, p in zip(weights, runs))
                for label in runs[0].weight_parts:  # the weights by kind (4-bit, quantization state), likewise
                    scalars.setdefault(f"{WEIGHT_PART}{label}", {})[layers] = sum(
                        w * p.weight_parts.get(label, 0) for w, p in zip(weights, runs))


SCALARS = ("weights_bytes", "trainable_bytes", "master_bytes", "grad_bytes", "optimizer_state_bytes",
           "adamw_temp_bytes")


def _summary(p: Probe) -> dict:
    return {"layers": p.layers, "micro_batch": p.batch, "width": p.width, "ops": len(p.points),
            "peak_bytes": max(q[0] for q in p.points)}


def flash_backward_bytes(tgt: Target, batch: float) -> float:
    """FlashAttention-2's backward buffers for one layer (0 under eager attention)."""
    if tgt.hw.attn_implementation == "eager":
        return 0.0
    return batch * tgt.seq_len * (tgt.hidden * FLASH_BWD_BYTES_PER_TOKEN_PER_DIM
                                  + tgt.heads * FLASH_BWD_BYTES_PER_TOKEN_PER_HEAD)


def on_device(the_fit: PlanFit, tgt: Target, batch: float) -> list[Step]:
    """The planned timeline at micro-batch `batch`, with what a GPU adds (module constants)."""
    timeline = the_fit.timeline(tgt.layers, batch)
    if not tgt.gpu:
        return timeline
    flash = flash_backward_bytes(tgt, batch)
    temps = the_fit.scalar("adamw_temp_bytes", tgt.layers)
    out = []
    for step in timeline:
        values = step.values + CUBLAS_WORKSPACE_BYTES
        values[step.phases == 1] += flash
        in_optimizer = np.flatnonzero(step.phases == 2)
        if in_optimizer.size:  # fused AdamW updates in place: none of the for-loop's temporaries
            floor = values[in_optimizer[0] - 1] if in_optimizer[0] else values[in_optimizer[0]]
            values[in_optimizer] = np.maximum(values[in_optimizer] - temps, min(floor, values[in_optimizer].max()))
        out.append(Step(values, step.phases, step.ops, step.sizes))
    return out


def peak_at(the_fit: PlanFit, tgt: Target, batch: float) -> float:
    return peak(on_device(the_fit, tgt, batch))[0]


def largest_micro_batch_from(the_fit: PlanFit, tgt: Target, budget_bytes: float, most: int = MAX_MICRO_BATCH) -> int:
    """The largest micro-batch up to `most` whose predicted peak stays within `budget_bytes` (0: none fits).
    A micro-batch of a loss-chunk count not yet probed runs its probes (PlanFit.corners_at)."""
    def fits(b: int) -> bool:
        return peak_at(the_fit, tgt, b) <= budget_bytes

    if not fits(1):
        return 0
    low, high = 1, 2  # the peak grows with B (ops affine in B either side of a loss chunk): doubling, bisection
    while high <= most and fits(high):
        low, high = high, high * 2
    high = min(high, most + 1)  # the first that does not fit, or past `most`
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def held_when_loaded(the_fit: PlanFit, tgt: Target) -> float:
    """What a run holds once its model is built and its method prepared (weights and masters): the
    part of a predicted peak that is already allocated when a run measures its free memory."""
    return the_fit.scalar("weights_bytes", tgt.layers) + the_fit.scalar("master_bytes", tgt.layers)


def budget(cfg: DictConfig, tgt: Target) -> tuple[int | None, int | None]:
    """(device bytes, usable bytes after the margin): hardware.memory_gib, else the visible GPU's."""
    total = cfg.hardware.get("memory_gib")
    if total is not None:
        total_bytes = int(total * GiB)
    elif tgt.gpu and torch.cuda.is_available():
        total_bytes = torch.cuda.get_device_properties(0).total_memory
    else:
        return None, None
    return total_bytes, int(total_bytes * (1 - cfg.plan.margin))


def predict(cfg: DictConfig) -> dict:
    """The plan of one run: plan.json's content (result.json's memory field names). Raises UserError
    before any probe where its profile run would refuse the model (models/fit.py `planned_model`, the same
    line): naming model.path / model.package when its config cannot be read, its weights cannot be read or hold a
    tensor of another shape than the config builds (models/fit.py `check_weights`), or the model cannot carry the
    head, model.shape[.<field>] when transformers cannot build the shape, and on profile.seq_len over a
    checkpoint's position table (a random-init shape's is sized to it in model.shape)."""
    planned_model(cfg)  # the planned model: model.path's config, else the shape's
    tgt = target(cfg)
    the_fit = plan_fit(cfg, tgt)
    timeline = on_device(the_fit, tgt, tgt.micro_batch)
    top, phase, op = peak(timeline)
    peaks = dict(zip(PHASES, phase_peaks(timeline, len(PHASES))))
    s = {name: int(round(the_fit.scalar(name, tgt.layers))) for name in SCALARS}
    held = s["weights_bytes"] + s["master_bytes"] + s["grad_bytes"] + s["optimizer_state_bytes"]
    total, usable = budget(cfg, tgt)
    largest = largest_micro_batch_from(the_fit, tgt, usable) if usable is not None else None
    return {
        "memory": {
            "device": "cuda:0" if tgt.gpu else "cpu",
            "train_peak_allocated_bytes": int(top),
            "train_peak_op": op,
            "train_peak_phase": PHASES[phase],
            "breakdown": {"weights_bytes": s["weights_bytes"], "trainable_bytes": s["trainable_bytes"],
                          "master_bytes": s["master_bytes"], "grad_bytes": s["grad_bytes"],
                          "optimizer_state_bytes": s["optimizer_state_bytes"],
                          "activations_bytes": max(int(top) - held, 0)},
            "optimizer_state_parts_bytes": the_fit.parts(STATE_PART, tgt.layers),
            "weights_parts_bytes": the_fit.parts(WEIGHT_PART, tgt.layers),
        },
        "plan": {
            "precision": tgt.hw.precision, "gradient_checkpointing": tgt.hw.gradient_checkpointing,
            "micro_batch_size": tgt.micro_batch, "accumulation": tgt.accumulation, "seq_len": tgt.seq_len,
            "layers": tgt.layers, "phase_peaks_bytes": {p: int(v) for p, (v, _) in peaks.items()},
            "device_memory_bytes": total, "margin": cfg.plan.margin, "budget_bytes": usable,
            "fits": None if usable is None else top <= usable, "largest_micro_batch": largest,
            "largest_micro_batch_capped": None if largest is None else largest == MAX_MICRO_BATCH,  # at least
            "gpu_additions_bytes": {  # what the GPU step adds to (or, fused AdamW, takes from) the CPU trace
                "cublas_workspace": CUBLAS_WORKSPACE_BYTES if tgt.gpu else 0,
                "flash_attention_backward": int(flash_backward_bytes(tgt, tgt.micro_batch)) if tgt.gpu else 0,
                "for_loop_adamw_temporaries": -int(the_fit.scalar("adamw_temp_bytes", tgt.layers)) if tgt.gpu else 0},
            "probe_width_divisors": list(the_fit.width_divs), "width_aligned": the_fit.aligned,
            "probes": the_fit.probes,
        },
    }

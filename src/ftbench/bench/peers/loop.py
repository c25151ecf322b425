"""The peers' training loop: plain PyTorch, written the way ftbench's profile mode measures.

    python -m ftbench.bench.peers.loop SPEC.json OUT.json     # one peer, one process (bench.py writes SPEC)

It builds the model from the spec (the same shape, seed, dtype, attention kernel
and checkpointing as ftbench's run), lets the peer module make it trainable,
and trains on the same synthetic batches (full-length random token ids, labels
= inputs, the same generator and seed as ftbench's `mode=profile`). Nothing
here imports ftbench's training code; the only shared piece is the CPU memory
tracer, so that both sides are measured by the same instrument.

What is measured, as ftbench's `train.py` and `measure.py` do:

- The step time of each of `steps` steps after `warmup_steps` untimed ones:
  synchronized before the batch moves to the device, synchronized after
  forward/backward, clipping, the optimizer and scheduler steps, `zero_grad`
  and reading the loss; drawing the batch is outside the timer. The median is
  reported.
- The peak memory of the timed steps: CUDA's allocated peak (counters reset
  after the warm-up); on the CPU the traced peak (`trace_memory.LiveTensorPeak`,
  on for the timed steps only) on top of what is held when the trace starts:
  the model's parameters and buffers, and the parameters and state of the
  optimizers (`Trainable.holders`) until they are freed, each tensor once.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import torch
from torch import nn

from ftbench.errors import exception_line

# The CPU tracer ftbench's measure.py uses, and its walk of an optimizer's state (tensors inside GaLore's
# and APOLLO's projector objects too): both sides are measured by the same instrument.
from ftbench.measure.meters import state_tensors
from ftbench.measure.trace import LiveTensorPeak

DTYPES = {"fp32": torch.float32, "bf16-pure": torch.bfloat16, "bf16-mixed": torch.float32}


@dataclass
class Trainable:
    """What a peer module hands to the loop."""

    model: nn.Module
    optimizer: torch.optim.Optimizer  # the one the loop steps
    holders: list[torch.optim.Optimizer]  # the optimizers whose parameters and state are held between steps
    package: str = ""  # the peer's library and version, for the table


def adamw(params: list[torch.Tensor], spec: dict) -> torch.optim.AdamW:
    """AdamW with ftbench's optim settings; fused on a GPU, as ftbench builds it there."""
    on_gpu = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(params, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"],
                             weight_decay=spec["weight_decay"], fused=on_gpu or None)


def build_model(spec: dict) -> nn.Module:
    """The random-init causal LM of `spec["shape"]`, built on the device in the run's weight dtype."""
    from transformers import AutoConfig, AutoModelForCausalLM, set_seed

    set_seed(spec["seed"])
    shape = dict(spec["shape"])
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    with torch.device(spec["device"]):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[spec["precision"]],
                                                 attn_implementation=spec["attn_implementation"])
    model.config.use_cache = False
    if spec["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def token_batches(batch_size: int, seq_len: int, vocab_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Full-length random token ids in [5, vocab), labels = inputs: ftbench's profile batches, drawn alike."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(5, max(vocab_size, 6), (batch_size, seq_len), generator=generator)
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def held(trainable: Trainable) -> tuple[int, list[torch.Tensor]]:
    """What is held between steps: the bytes of the model's parameters and buffers, and the optimizers'
    other parameters and state (a peer may free them mid-trace: BAdam's drops a leaving block's), each once."""
    model = {id(t): t for t in [*trainable.model.parameters(), *trainable.model.buffers()]}
    others = {}
    for optimizer in trainable.holders:
        for group in optimizer.param_groups:
            others.update((id(p), p) for p in group["params"] if id(p) not in model)
        for state in optimizer.state.values():
            others.update((id(t), t) for v in state.values() for t in state_tensors(v) if id(t) not in model)
    return sum(t.numel() * t.element_size() for t in model.values()), list(others.values())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeerRun:
    """One peer, built and ready to step: `step()` runs and times one optimizer step.

    Built under its own random state (seeded with the spec's seed, as its own process would be), which
    it keeps apart from the caller's: each `step()` swaps it in and out, outside the timer, so a
    benchmark that steps a peer between ftbench's steps in one process (paired.py) leaves ftbench's
    random draws (LoRA dropout, sampled layers) exactly what they are in a process of its own.
    `total_steps`: the LR schedule's length (default: the spec's warm-up + steps)."""

    def __init__(self, spec: dict, total_steps: int | None = None):
        from transformers import get_scheduler

        self.device = torch.device(spec["device"])
        if self.device.type == "cuda" and spec["allow_tf32"]:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        with RandomState() as self.random:
            model = build_model(spec)
            peer = import_module(f"{__package__}.{spec['module']}")
            self.trainable = peer.prepare(model, spec)
        self.model, self.optimizer = self.trainable.model, self.trainable.optimizer
        self.accumulation, self.max_grad_norm = spec["accumulation"], spec["max_grad_norm"]
        self.scheduler = get_scheduler(spec["scheduler"], self.optimizer,
                                       num_warmup_steps=spec["scheduler_warmup_steps"],
                                       num_training_steps=total_steps or spec["warmup_steps"] + spec["steps"])
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                       enabled=spec["precision"] == "bf16-mixed")
        self.batches = token_batches(spec["micro_batch_size"], spec["seq_len"], self.model.config.vocab_size,
                                     spec["seed"])
        self.losses: list[float] = []
        self.model.train()

    def step(self) -> float:
        """One optimizer step; its seconds: synchronized before the batch moves to the device and after
        the loss is read (drawing the batch is outside). Raises FloatingPointError on a NaN or inf loss."""
        model, optimizer, device = self.model, self.optimizer, self.device
        micro = [next(self.batches) for _ in range(self.accumulation)]
        with self.random:
            synchronize(device)
            started = time.perf_counter()
            step_loss = torch.zeros((), device=device)
            for batch in micro:
                with self.autocast:
                    loss = model(**{k: v.to(device) for k, v in batch.items()}).loss / self.accumulation
                loss.backward()
                step_loss += loss.detach().float()
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_grad_norm)
            optimizer.step()
            self.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = step_loss.item()
            synchronize(device)
            seconds = time.perf_counter() - started
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {len(self.losses)}")
        self.losses.append(value)
        return seconds


class RandomState:
    """A random state of its own (torch's CPU and CUDA generators, Python's, NumPy's), entered as a
    context: inside, the global generators hold it; on exit they hold again what they held before, and
    it keeps what was drawn inside. The first entry starts it from the caller's state."""

    def __init__(self):
        self.saved = None

    def __enter__(self) -> RandomState:
        self.outer = _capture()
        if self.saved is not None:
            _restore(self.saved)
        return self

    def __exit__(self, *exc) -> None:
        self.saved = _capture()
        _restore(self.outer)


def _capture() -> tuple:
    import random

    import numpy

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda, random.getstate(), numpy.random.get_state()


def _restore(state: tuple) -> None:
    import random

    import numpy

    cpu, cuda, python, numpy_state = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(python)
    numpy.random.set_state(numpy_state)


def train(spec: dict) -> dict:
    """Build, prepare and train one peer in this process; its measurements."""
    run = PeerRun(spec)
    warmup, steps = spec["warmup_steps"], spec["steps"]
    trace = spec["trace_memory"] and run.device.type == "cpu"
    tracer, trainable_count, times, held_at_start = None, 0, [], None
    for step in range(warmup + steps):
        if step == warmup:  # the measured steps begin
            trainable_count = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
            if run.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(run.device)
            if trace:
                weights, droppable = held(run.trainable)
                tracer = LiveTensorPeak(weights)
                tracer.hold(droppable)
                held_at_start = tracer.now_bytes
                tracer.__enter__()
        seconds = run.step()
        if step >= warmup:
            times.append(seconds)
    if tracer is not None:
        tracer.__exit__(None, None, None)

    by_op = None
    if run.device.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(run.device), "cuda_allocated"
    elif tracer is not None:
        peak, peak_kind = tracer.peak_bytes, "traced"
        by_op = dict(sorted(tracer.peak_by_op.items(), key=lambda item: -item[1])[:8])
    else:
        peak, peak_kind = None, None
    return {"package": run.trainable.package, "step_time_s_p50": statistics.median(times),
            "step_times_s": times, "peak_bytes": peak, "peak_kind": peak_kind,
            "held_bytes": held_at_start,
            "peak_op": tracer.peak_op if tracer is not None else None, "peak_by_op": by_op,
            "trainable": trainable_count, "loss_first": run.losses[0], "loss_last": run.losses[-1]}


def main(argv: list[str] | None = None) -> int:
    """Run the peer of SPEC.json; write OUT.json ({status: ok|failed, error, measurements}); exit 0 or 1."""
    spec_path, out_path = map(Path, argv if argv is not None else sys.argv[1:])
    spec = json.loads(spec_path.read_text())
    result = {"peer": spec["peer"], "status": "ok", "error": None}
    try:
        result.update(train(spec))
    except Exception as exc:  # the table reports any peer that cannot run, with its exact error
        result.update(status="failed", error=exception_line(exc))
        print(f"peer {spec['peer']}: {result['error']}", file=sys.stderr)
    out_path.write_text(json.dumps(result, indent=1))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())

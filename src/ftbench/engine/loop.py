"""The training loop. One optimizer step = `accumulation` micro-batches, then
clip, step, write-back. Read it top to bottom; methods plug in through their
hooks (see methods/base.py), never through branches here."""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from ftbench.engine.batches import to_device
from ftbench.engine.loss import Loss, model_loss
from ftbench.measure.meters import MemoryMeter, SpeedMeter, rss_peak_bytes
from ftbench.models.architecture import IGNORE_INDEX
from ftbench.parallel.distributed import GradientSync
from ftbench.results import GiB

log = logging.getLogger(__name__)


class NonFiniteLoss(Exception):
    """The loss of optimizer step `step` (counted from 1, as the log counts) was NaN or infinite."""

    def __init__(self, step: int, value: float):
        super().__init__(f"loss became {value} at step {step}; lower optim.lr or check the data")


@dataclass
class TrainSpec:
    """How many steps of what size: what the loop runs, fixed before it starts."""

    steps: int  # optimizer steps
    micro_batch_size: int
    accumulation: int  # micro-batches per optimizer step
    measure_from: int  # first step whose time and memory count (after the warm-up)
    max_grad_norm: float | None
    eval_every: int | None = None
    log_every: int = 10
    progress: bool = True
    stop_at_once: bool = False  # Ctrl-C/SIGTERM stop at once, not at the step's end (a plan's probe: nothing to keep)


@dataclass
class Trainee:
    """What a step changes: the model, its method (hooks, masters), the optimizer and the LR scheduler."""

    model: torch.nn.Module
    method: object  # methods.base.Method (a layer above: the loop knows only its hooks)
    optimizer: torch.optim.Optimizer
    scheduler: object  # torch.optim.lr_scheduler.LRScheduler


@dataclass
class Compute:
    """How a micro-batch is computed: the accelerator (device, backward, no_sync), the autocast, the
    head (`causal_lm` counts label tokens), the loss of one micro-batch and the data-parallel sync."""

    accelerator: object  # accelerate.Accelerator
    head: str
    autocast: Callable = nullcontext
    loss_fn: Loss = model_loss
    sync: GradientSync | None = None  # None: one process


@dataclass
class Watchers:
    """What runs beside the steps: the memory and speed meters, the metric logger, the validation
    (`evaluate(step)`, every `TrainSpec.eval_every` steps) and the checkpoint (`checkpoint(log,
    stopping)`, at every step's end, last, so a checkpoint holds the step's validation)."""

    meter: MemoryMeter
    speed: SpeedMeter
    logger: object  # engine.loggers.NullLogger or a subclass
    evaluate: Callable[[int], None] | None = None
    checkpoint: Callable[[TrainLog, bool], None] | None = None


@dataclass
class TrainLog:
    loss_curve: list[list[float]] = field(default_factory=list)
    steps: int = 0
    samples: int = 0
    tokens: int = 0  # every position, padding included
    tokens_nonpad: int = 0  # the examples' own tokens (what train.max_tokens budgets)
    pending_eval: bool = False  # the validation due after `steps` has not run yet (it was interrupted)


@dataclass
class Counts:
    samples: int
    tokens: int  # every position, padding included
    nonpad: int
    loss_units: int  # positions that carry a loss: label tokens, or one per sequence


def count(batch: dict[str, torch.Tensor], head: str) -> Counts:
    """Token counts of a CPU batch (before it moves, so counting never syncs the GPU)."""
    samples = batch["input_ids"].shape[0]
    nonpad = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    if head == "causal_lm":
        loss_units = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    else:
        loss_units = samples
    return Counts(samples, batch["input_ids"].numel(), nonpad, loss_units)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(trainee: Trainee, batches: Iterator[dict], spec: TrainSpec, compute: Compute, watchers: Watchers,
          history: TrainLog | None = None) -> TrainLog:
    """Train from `history` (a resumed run's log; None: step 0) to `spec.steps` optimizer steps of
    `spec.accumulation` micro-batches each, drawn from `batches` (CPU tensors). Returns the log, filled
    in place step by step (so `history` of a run that raised holds the steps done before). Raises
    NonFiniteLoss (a NaN or infinite loss) and KeyboardInterrupt (Ctrl-C, SIGTERM: at a step's end,
    after its checkpoint; at once with `spec.stop_at_once`)."""
    model, method, optimizer, scheduler = trainee.model, trainee.method, trainee.optimizer, trainee.scheduler
    accelerator, head, autocast, loss_fn = compute.accelerator, compute.head, compute.autocast, compute.loss_fn
    meter, speed, logger, evaluate, checkpoint = (watchers.meter, watchers.speed, watchers.logger,
                                                  watchers.evaluate, watchers.checkpoint)
    device = accelerator.device
    sync = compute.sync or GradientSync(device)
    history = history or TrainLog()
    progress = Progress(spec, enabled=spec.progress)
    model.train()
    with StopAtStepEnd(at_once=spec.stop_at_once) as stop:

        def validate_pending() -> None:
            try:
                with stop.at_once():  # an evaluation has nothing to save: a signal stops it promptly
                    evaluate(history.steps)
                history.pending_eval = False
            except KeyboardInterrupt as exc:  # the step's checkpoint is still written, its validation pending
                stop.requested, stop.reason = True, str(exc) or "canceled by Ctrl-C"

        if history.pending_eval:
            validate_pending()
        for step in range(history.steps, spec.steps):
            if stop.requested:
                break
            if step == max(spec.measure_from, history.steps):
                meter.start_train()
            micro = [next(batches) for _ in range(spec.accumulation)]
            counts = [count(b, head) for b in micro]
            step_counts = Counts(*sync.total_counts(  # over every rank: the loss is the global batch's mean
                [sum(getattr(c, f) for c in counts) for f in ("samples", "tokens", "nonpad", "loss_units")]))
            loss_units = step_counts.loss_units or 1

            synchronize(device)
            started = time.perf_counter()
            method.before_step(step)
            step_loss = torch.zeros((), device=device)
            for i, batch in enumerate(micro):
                last = i == len(micro) - 1
                with nullcontext() if last else accelerator.no_sync(model):
                    with autocast():
                        # Weight by loss positions so N micro-batches equal one N-times larger batch.
                        loss = loss_fn(model, to_device(batch, device)) * (counts[i].loss_units / loss_units)
                    accelerator.backward(loss)
                step_loss += loss.detach().float()
            method.before_optimizer_step(step)
            sync.reduce(method.optimizer_parameters())
            meter.sample_grads([*method.optimizer_parameters(), *model.parameters()])
            grad_norm = method.clip_grad_norm(spec.max_grad_norm)
            optimizer.step()
            method.after_step(step)
            if method.scheduler_steps(step):
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = sync.mean_loss(step_loss).item()  # waits for the step's kernels
            synchronize(device)
            seconds = time.perf_counter() - started

            if not math.isfinite(loss_value):
                raise NonFiniteLoss(step + 1, loss_value)
            if step >= spec.measure_from:
                speed.record(seconds, step_counts.samples, step_counts.tokens, step_counts.nonpad, step_counts.loss_units)
            meter.after_step(optimizer)
            history.steps = step + 1
            history.samples += step_counts.samples
            history.tokens += step_counts.tokens
            history.tokens_nonpad += step_counts.nonpad
            history.loss_curve.append([step + 1, loss_value])
            lr = scheduler.get_last_lr()[0]
            values = {"train/loss": loss_value, "train/lr": lr, "train/tokens_per_s": step_counts.nonpad / seconds,
                      "train/peak_memory_bytes": _peak_bytes(device)}
            if grad_norm is not None:
                values["train/grad_norm"] = float(grad_norm)
            logger.log(values, step + 1)
            progress.update(step + 1, loss_value, lr, step_counts.nonpad / seconds, _memory_now(device))
            # the last step's validation is the job's (Evaluation.final), after the loop
            if evaluate and spec.eval_every and (step + 1) % spec.eval_every == 0 and step + 1 < spec.steps:
                history.pending_eval = True
            stop.requested = sync.any(stop.requested)  # every rank stops (and checkpoints) at the same step
            if checkpoint:  # before the step's validation, which it holds pending: a run killed in it resumes there
                checkpoint(history, stop.requested)
            if history.pending_eval and not stop.requested:
                validate_pending()
                stop.requested = sync.any(stop.requested)
                if stop.requested and checkpoint:  # stopped in the validation: the step's checkpoint, if not due
                    checkpoint(history, True)
        if stop.requested:
            raise KeyboardInterrupt(stop.reason)
    progress.close()
    return history


SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class StopAtStepEnd:
    """Ctrl-C or SIGTERM (what schedulers send before preemption) during training stops the
    run when the current step ends; a second one stops it at once, and so does one that
    lands during an evaluation (`at_once`).

    The interrupt is then raised by the loop itself, never inside a library finalizer
    that happens to run when the signal lands (Python swallows exceptions there, and
    the run would go on), and never between an optimizer step and its write-back.
    `at_once`: every signal stops at once (steps whose result nobody keeps: a plan's probes).
    """

    def __init__(self, at_once: bool = False):
        self.always_at_once = at_once

    def __enter__(self) -> StopAtStepEnd:
        self.requested, self.reason, self.immediate = False, "", self.always_at_once
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        name = SIGNALS[signum]
        if self.requested or self.immediate:
            raise KeyboardInterrupt(f"canceled by {name}")
        self.requested, self.reason = True, f"canceled by {name}"
        log.warning("%s: stopping after this step (%s again to stop now)", name, name)

    @contextmanager
    def at_once(self):
        self.immediate = True
        try:
            yield
        finally:
            self.immediate = self.always_at_once

    def __exit__(self, *exc) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)


@contextmanager
def sigterm_cancels():
    """Outside the training steps, SIGTERM stops the job at once as Ctrl-C does (its default
    kills the process before result.json is written)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        raise KeyboardInterrupt("canceled by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _peak_bytes(device: torch.device) -> int | None:
    """The peak so far: CUDA's allocated bytes, or the process's peak RSS on the CPU (None where unknown)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss_peak_bytes()


def _memory_now(device: torch.device) -> str:
    peak = _peak_bytes(device)
    if device.type == "cuda":
        return f"{peak / GiB:.1f} GiB peak"
    return f"{peak / GiB:.2f} GiB peak RSS" if peak else ""


class Progress:
    """A rich progress bar on a terminal; a log line every `log_every` steps elsewhere."""

    def __init__(self, spec: TrainSpec, enabled: bool):
        self.spec = spec
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                    TextColumn("{task.fields[info]}"), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("train", total=spec.steps, info="")

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float, memory: str) -> None:
        info = f"loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s  {memory}"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif step % self.spec.log_every == 0 or step == self.spec.steps:
            log.info("step %d/%d  %s", step, self.spec.steps, info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

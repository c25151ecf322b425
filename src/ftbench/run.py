"""One job: build the model, apply the method, train, evaluate, write result.json.

`run_job` is what Hydra calls for every run and every job of a multirun. It
never lets an exception escape without first writing result.json with the
status and a one-line error.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from . import batches, distributed, fit_batch, preflight, rerun, results, sharding
from .checkpoint import Checkpointer
from .config import check
from .environment import environment
from .errors import UserError, first_line
from .hardware import make_accelerator, resolve, restored_process_settings, split_batch
from .lm_loss import make_loss, model_loss
from .logger import NullLogger, make_logger
from .measure import (
    MemoryMeter,
    SpeedMeter,
    flops_per_token,
    model_bytes,
    optimizer_state_bytes,
    peak_flops,
)
from .methods import MethodContext, build_method
from .models import load_model
from .optim import make_scheduler
from .progress import Work
from .tasks import EvalContext
from .tasks.base import to_device
from .train import NonFiniteLoss, Plan, sigterm_cancels, train

log = logging.getLogger("ftbench")


def run_job(cfg: DictConfig, output_dir: Path, overrides: list[str] | None = None) -> int:
    """Run one job and write its result.json (a plan: plan.json); return the process exit code."""
    if cfg.mode == "plan":
        from .plan_report import run_plan

        return run_plan(cfg, output_dir, overrides)
    outcome = distributed.on_main(lambda: rerun.prepare(cfg, output_dir))  # rank 0 moves files; all ranks follow
    if isinstance(outcome, UserError):
        print(f"ftbench: error: {outcome}", file=sys.stderr)
        return 2
    if outcome:  # a folder that holds a run: skip it (ok), resume it (interrupted) or rerun it (failed)
        print(f"ftbench: {output_dir}: finished ok earlier with this config; skipped", file=sys.stderr)
        return 0
    result = results.skeleton()
    started = time.time()
    result["run"].update(method=cfg.method.name, model=cfg.model.name, seed=cfg.seed, mode=cfg.mode,
                         task=cfg.task.name if cfg.mode == "train" else "profile", output_dir=str(output_dir),
                         started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         overrides=list(overrides or []))
    result["config"] = OmegaConf.to_container(cfg, resolve=True)
    code, logger = 0, None
    try:
        check(cfg)
        with ExitStack() as job_end, sigterm_cancels():  # what the job changed in the process is undone at its end
            logger = execute(cfg, output_dir, result, job_end)
        result["status"] = "ok"
    except (Exception, KeyboardInterrupt) as exc:
        status, error, code = classify(exc)
        result.update(status=status, error=error)
        print(f"ftbench: {status}: {error}", file=sys.stderr)
        if cfg.get("debug") and not isinstance(exc, KeyboardInterrupt):
            _finish(result, started, output_dir, logger)
            raise
    _finish(result, started, output_dir, logger)
    if result["status"] == "canceled":
        raise KeyboardInterrupt
    return code


def classify(exc: BaseException) -> tuple[str, str, int]:
    """(status, one-line error, exit code) of a run that stopped with `exc`."""
    if isinstance(exc, UserError):
        return "failed", str(exc), 2
    if isinstance(exc, KeyboardInterrupt):
        return "canceled", str(exc) or "canceled by the user (Ctrl-C)", 130
    if isinstance(exc, NonFiniteLoss):
        return "nan", str(exc), 1
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "oom", first_line(str(exc)) + " (lower the batch or hardware.max_micro_batch_size)", 1
    return "failed", f"{type(exc).__name__}: {first_line(str(exc))} (debug=true shows the traceback)", 1


def _finish(result: dict, started: float, output_dir: Path, logger) -> None:
    result["run"]["duration_s"] = round(time.time() - started, 3)
    if distributed.is_main():
        results.write(result, output_dir)
    if logger is not None:
        logger.close(result["status"])
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the next job of a multirun starts from a clean device


def execute(cfg: DictConfig, output_dir: Path, result: dict, job_end: ExitStack):
    """Build everything, train and evaluate, filling `result` as facts become known; what must be
    undone when the job ends (hooks, process-wide flags) goes on `job_end`."""
    from transformers import set_seed

    job_end.enter_context(restored_process_settings())
    hw = resolve(cfg.hardware)
    set_seed(cfg.seed)
    accelerator = make_accelerator(hw.device)
    device = accelerator.device
    profiling = cfg.mode == "profile"
    meter = MemoryMeter(device, trace=profiling and cfg.profile.trace_memory)

    # Data and model: tokenizer, task and the model's config checked against each other before any weight loads.
    inputs = preflight.inputs(cfg)
    result["config"] = OmegaConf.to_container(cfg, resolve=True)  # as settled (model source, task.max_length)
    task, tokenizer, head, num_labels = inputs.task, inputs.tokenizer, inputs.head, inputs.num_labels
    model = load_model(cfg.model, head, num_labels, device, hw.precision, hw.attn_implementation,
                       shape_overrides=inputs.shape_overrides)
    model.config.pad_token_id = inputs.pad_id
    model.config.use_cache = False
    if hw.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    batch_size = cfg.profile.batch_size if profiling else (cfg.train.batch_size or cfg.task.batch_size)
    # Data parallel: ranks take their own training micro-batches (rank=0, world=1: every rank the same ones).
    rank, world = distributed.rank(), distributed.world_size()
    if profiling:
        def stream(seed, micro, start=0, rank=rank, world=world):
            return batches.random_tokens(micro, cfg.profile.seq_len, model.config.vocab_size, head, num_labels,
                                         seed + 100_003 * rank, start)
    else:
        def stream(seed, micro, start=0, rank=rank, world=world):
            collate = lambda examples: task.collate(examples, hw.pad_to_multiple_of)  # noqa: E731
            return batches.shuffled(task.train_examples(), micro, collate, seed, rank, world, start)

    chunk_tokens = cfg.train.loss_chunk_tokens
    main = distributed.is_main()  # only rank 0 writes files; the others train alike (distributed.py)
    loss_fn = make_loss(model, head, chunk_tokens)  # takes the model as an argument: serves it once wrapped too

    def micro_loss(m, batch):
        with hw.autocast():
            return loss_fn(m, to_device(batch, device))

    fits: dict[str, dict] = {}  # hardware.max_micro_batch_size=auto: what the probes measured (fit_batch.py)

    def max_micro(what: str, optimizer_state: int = 0) -> int | None:
        if hw.max_micro_batch_size != "auto":
            return hw.max_micro_batch_size
        per_rank = split_batch(batch_size, None, world)[0]
        sequence = next(stream(cfg.seed, 1)) if profiling else task.collate(
            [max(task.train_examples(), key=lambda e: len(e["input_ids"]))], hw.pad_to_multiple_of)
        chosen = fit_batch.fit(model, micro_loss, sequence, per_rank, device, optimizer_state, what)
        fits[what] = chosen.summary()
        return distributed.smallest(chosen.micro_batch_size, device)  # ranks must agree: they step together

    calibration_micro = split_batch(batch_size, max_micro("calibration"), world)[0]

    def calibration_batches(n):
        it = stream(cfg.seed + 10_007, calibration_micro, rank=0, world=1)  # every rank selects alike, as one process
        with Work("calibration", n, "batches", cfg.train.progress and distributed.is_main()) as work:
            for _ in range(n):
                yield to_device(next(it), device)
                work.advance()

    # The method.
    method = build_method(cfg.method)
    job_end.callback(method.close)
    ctx = MethodContext(model_type=model.config.model_type, head=head, device=device, precision=hw.precision,
                        gradient_checkpointing=hw.gradient_checkpointing, seed=cfg.seed,
                        calibration_batches=calibration_batches, loss=micro_loss, output_dir=output_dir if main else None)
    model = method.prepare(model, ctx)
    sharded = sharding.shard(model, cfg)  # hardware.shard=fsdp on several processes: FSDP2 (sharding.py)
    lr = cfg.optim.lr if cfg.optim.lr is not None else cfg.method.lr
    optimizer = method.build_optimizer(method.param_groups(model, cfg.optim.weight_decay), cfg.optim, lr)
    method.attach(optimizer)
    optimizer_state = fit_batch.optimizer_state_bytes(method.trainable_size()[1], cfg.optim)
    scoring_only = not profiling and cfg.train.max_steps == 0  # no step: the calibration fit sizes the eval batch
    training_micro = calibration_micro if scoring_only else max_micro("training", optimizer_state)
    micro, accumulation = split_batch(batch_size, training_micro, world)
    method.discard_grads(model)
    sync = distributed.GradientSync(device, sharded, accumulation)  # gradients summed over ranks

    # The plan.
    if profiling:
        warmup = method.warmup_steps(cfg.profile.warmup_steps, cfg.profile.steps)  # HiFT: past first visits
        steps, measure_from = warmup + cfg.profile.steps, warmup
    else:
        steps = cfg.train.max_steps if cfg.train.max_steps is not None else cfg.task.max_steps or max(
            1, int((cfg.train.epochs or cfg.task.epochs) * len(task.train_examples()) // batch_size))
        measure_from = min(cfg.train.measure_warmup_steps, steps - 1)
    scheduler = make_scheduler(optimizer, cfg.optim, method.schedule_length(steps))
    plan = Plan(steps=steps, micro_batch_size=micro, accumulation=accumulation, measure_from=measure_from,
                max_grad_norm=cfg.optim.max_grad_norm, eval_every=None if profiling else cfg.eval.every_steps,
                log_every=cfg.train.log_every, progress=cfg.train.progress and main)
    meter.mark_loaded()

    masters = method.master_parameters()
    meter.held_bytes = lambda: (model_bytes(model, masters) + method.master_bytes()
                                + optimizer_state_bytes(optimizer, device)[0])
    n_trainable, trainable_bytes = method.trainable_size()
    master_ids = {id(p) for p in masters}  # masters may live inside the model (SIFT) or beside it (HiFT)
    total = sum(p.numel() for p in model.parameters() if id(p) not in master_ids)
    result["params"].update(total=total, trainable=n_trainable, trainable_pct=100.0 * n_trainable / max(total, 1))
    result["method"] = method.describe(model)
    result["plan"] = {"batch_size": batch_size, "micro_batch_size": micro, "accumulation": accumulation,
                      "steps": steps, "lr": lr, "measure_from_step": measure_from,
                      "loss_chunk_tokens": chunk_tokens if loss_fn is not model_loss else None,
                      "micro_batch_fit": fits or None}
    if task is not None:
        result["protocol"] = task.protocol()
        result["run"]["metric"] = task.metric
    logger = make_logger(cfg.logger, f"{cfg.method.name}-{result['run']['task']}", output_dir,
                         result["config"]) if main else NullLogger()
    result["env"] = environment(hw, world)

    # Train, validating on the way when asked; the final evaluation scores the selected checkpoint.
    validations: list[dict] = []
    eval_ctx = EvalContext(device=device, autocast=hw.autocast, batch_size=eval_batch_size(cfg, micro),
                           max_samples=cfg.eval.max_samples, output_dir=output_dir if main else distributed.scratch(job_end),
                           pad_to_multiple_of=hw.pad_to_multiple_of, num_beams=cfg.eval.num_beams,
                           max_new_tokens=cfg.eval.max_new_tokens, progress=cfg.train.progress and main)
    selector = Selector(cfg, task, method, model)

    def validate(step: int) -> None:
        meter.start_eval()
        metrics = task.validate(model, eval_ctx)
        meter.end_eval()
        validations.append({"step": step, "metrics": metrics})
        logger.log(metrics, step)
        selector.offer(step, metrics)

    saver = Checkpointer(cfg, output_dir, model=model, method=method, scheduler=scheduler, selector=selector,
                         validations=validations, accumulation=accumulation, steps=steps, result=result)
    history = saver.restore()  # a fresh log, or where the checkpoint to resume from left off

    speed = SpeedMeter()
    try:
        history = train(model, method, optimizer, scheduler, stream(cfg.seed, micro, saver.micro_batches), plan,
                        accelerator=accelerator, autocast=hw.autocast, head=head, meter=meter, speed=speed,
                        logger=logger, loss_fn=loss_fn, evaluate=None if profiling else validate, history=history,
                        checkpoint=saver, sync=sync)
    finally:
        meter.end_train()  # also stops the memory trace of a run that failed
    result["method"] = method.describe(model)  # again: what training measured (e.g. HiFT's copy times)
    # What training made is recorded and exported first: a failing evaluation cannot lose it.
    curve = history.loss_curve
    result["train"].update(steps=history.steps, samples=history.samples, tokens=history.tokens,
                           loss_first=curve[0][1] if curve else None, loss_last=curve[-1][1] if curve else None,
                           loss_curve=curve)
    if not profiling:
        if selector.policy == "best" and (not validations or validations[-1]["step"] != history.steps):
            validate(history.steps)
        result["validation_history"] = validations
        result["selection"] = selector.restore_chosen(history.steps)
        method.release_optimizer()  # the export and the final evaluation need no optimizer state
        if cfg.train.save != "none" and sharded:
            state = sharding.full_state(model)  # a collective: every rank gathers, rank 0 keeps
            if main:
                result["export"] = sharding.export(model, tokenizer, output_dir / "checkpoint", state)
        elif cfg.train.save != "none" and main:
            result["export"] = method.export(model, tokenizer, output_dir / "checkpoint")
        if main:  # on disk too, should the process die in the evaluation (replaced when the run ends)
            results.write({**result, "error": "stopped in the final evaluation, after training"}, output_dir)
        meter.start_eval()
        result["metrics"] = task.evaluate(model, eval_ctx)
        meter.end_eval()
        logger.log(result["metrics"], history.steps)

    # Facts.
    result["memory"] = meter.summary(model_bytes(model, masters), method.master_bytes())
    result["memory"]["breakdown"]["trainable_bytes"] = trainable_bytes
    distributed.record(result, sync)  # world size, gradient bytes per step, every rank's peaks
    seq_len = speed.tokens / max(speed.samples, 1)
    result["throughput"] = speed.summary(flops_per_token(model, seq_len), peak_flops(result["env"]["device_name"],
                                                                                       hw.precision, device.type == "cuda"))
    logger.summary({**result["metrics"], **{f"throughput/{k}": v for k, v in result["throughput"].items()}})
    return logger


def eval_batch_size(cfg: DictConfig, micro: int) -> int:
    """Prompts (or examples) per evaluation batch. eval.batch_size (null: two training micro-batches)
    counts sequences on the device; beam search holds num_beams of them per prompt."""
    beams = cfg.eval.num_beams or cfg.task.get("num_beams") or 1
    return max(1, (cfg.eval.batch_size or 2 * micro) // beams)


class Selector:
    """Which checkpoint the final evaluation scores: the last, or the best validation
    (by a metric; loss metrics: lowest). The best is kept as a CPU snapshot of what
    training changed and restored before the final evaluation and export."""

    def __init__(self, cfg: DictConfig, task, method, model):
        self.policy = cfg.train.select
        self.metric = cfg.train.select_metric or (task.metric if task else None)
        self.method, self.model = method, model
        self.best_value, self.best_step, self.snapshot = None, None, None

    def _better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value < self.best_value if self.metric.endswith("loss") else value > self.best_value

    def offer(self, step: int, metrics: dict[str, float]) -> None:
        if self.metric not in metrics and self.policy == "last":
            return  # nothing to choose (preflight checked train.select=best's metric before training)
        if self.metric not in metrics:
            raise UserError("train.select_metric", f"'{self.metric}' is not a validation metric of this task; "
                            f"choose one of: {', '.join(sorted(metrics))}")
        if self._better(metrics[self.metric]):
            self.best_value, self.best_step = metrics[self.metric], step
            if self.policy == "best":
                self.snapshot = self.method.snapshot(self.model)

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "best_step": self.best_step, "snapshot": self.snapshot}

    def load_state_dict(self, state: dict) -> None:
        self.best_value, self.best_step, self.snapshot = state["best_value"], state["best_step"], state["snapshot"]

    def restore_chosen(self, last_step: int) -> dict:
        if self.policy == "best" and self.snapshot is not None:
            self.method.restore(self.model, self.snapshot)
            self.snapshot = None
            return {"policy": "best", "metric": self.metric, "step": self.best_step, "value": self.best_value}
        return {"policy": "last", "metric": self.metric, "step": last_step}

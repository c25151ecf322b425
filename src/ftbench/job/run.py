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
import traceback
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ftbench import files, results
from ftbench.config.knobs import Settings, settle
from ftbench.config.schema import check
from ftbench.engine.loggers import NullLogger, make_logger
from ftbench.engine.loop import NonFiniteLoss, Plan, sigterm_cancels, train
from ftbench.engine.loss import model_loss
from ftbench.errors import Canceled, UserError, first_line
from ftbench.job import engagement, rerun, steps
from ftbench.job.checkpoint import Checkpointer
from ftbench.measure.environment import environment
from ftbench.measure.meters import (
    SpeedMeter,
    flops_per_token,
    model_bytes,
    optimizer_state_bytes,
    peak_flops,
)
from ftbench.parallel import distributed, sharding
from ftbench.plan.report import run_plan
from ftbench.tasks.base import EvalContext

log = logging.getLogger("ftbench")


def run_job(cfg: DictConfig, output_dir: Path, overrides: list[str] | None = None) -> int:
    """Run one job and write its result.json (a plan: plan.json); return the process exit code."""
    if cfg.mode == "plan":
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
        if cfg.get("debug") and not isinstance(exc, KeyboardInterrupt):
            traceback.print_exc()  # debug=true: the traceback too; the exit code stays (2 for a user error)
        print(f"ftbench: {status}: {error}", file=sys.stderr)
    _finish(result, started, output_dir, logger)
    if result["status"] == "canceled":
        raise Canceled(result["error"])  # stops a sweep; its line is printed
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
    undone when the job ends (hooks, process-wide flags) goes on `job_end`. Returns the logger.

    The recipe: set-up, data, model, method and optimizer, plan, train, evaluate, result; steps.py
    holds the steps that build, this module the ones that record."""
    s = steps.setup(cfg, job_end)
    inputs = steps.data(cfg)
    result["config"] = OmegaConf.to_container(cfg, resolve=True)  # as settled (model source, task.max_length)
    settings = settle(cfg, None if s.profiling else len(inputs.task.train_examples()))  # one owner per knob
    model = steps.model(cfg, inputs, s)
    feed = steps.Feed(cfg, inputs, model, s, settings.batch_size)
    model, method, optimizer, calibration_micro = steps.method_and_optimizer(cfg, model, feed, s, output_dir,
                                                                             job_end, settings.lr)
    plan, scheduler = steps.plan(cfg, model, method, optimizer, feed, s, calibration_micro, settings.steps)
    sync = steps.distribute(model, s, plan)  # data parallel: the gradients summed over ranks (distributed.py)
    # Counted before training: what HiFT holds beside the model changes as it rotates.
    masters, trainable = method.master_parameters(), method.trainable_size()
    logger = record_plan(cfg, output_dir, result, s, model, method, optimizer, feed, plan, settings, masters,
                         trainable)
    watched = engagement.watch(model, method, feed.head, masters, trainable[0])  # before training: what it changes
    scratch = output_dir if distributed.is_main() else distributed.scratch(job_end)  # other ranks' generations
    evaluation = None if s.profiling else Evaluation(cfg, scratch, s, inputs.task, method, model, plan, logger,
                                                     settings)
    speed = train_job(cfg, output_dir, result, s, model, method, optimizer, scheduler, feed, plan, logger,
                      evaluation, sync)
    result["engagement"] = watched.report()  # how much of what the method claims to train changed (and a warning)
    record_facts(result, s, model, method, speed, masters, trainable[1])  # in result.json before the evaluation
    if evaluation is not None:
        evaluation.final(cfg, output_dir, result, inputs.tokenizer)
        result["memory"]["eval_peak_allocated_bytes"] = s.meter.eval_peak_allocated  # the evaluation's own peak
    logger.summary({**result["metrics"], **{f"throughput/{k}": v for k, v in result["throughput"].items()}})
    distributed.record(result, sync)  # world size, gradient bytes per step, every rank's peaks
    return logger


def record_plan(cfg: DictConfig, output_dir: Path, result: dict, s: steps.Setup, model, method, optimizer,
                feed: steps.Feed, plan: Plan, settings: Settings, masters: list, trainable: tuple[int, int]):
    """Record what the job will do (params, method, plan, protocol, env) and start the logger (returned);
    the memory meter counts from here. `trainable`: (elements, bytes) a step updates."""
    s.meter.mark_loaded()
    s.meter.held_bytes = lambda: (model_bytes(model, masters) + method.master_bytes()
                                  + optimizer_state_bytes(optimizer, s.device)[0])
    n_trainable = trainable[0]
    master_ids = {id(p) for p in masters}  # masters may live inside the model (SIFT) or beside it (HiFT)
    total = sum(p.numel() for p in model.parameters() if id(p) not in master_ids)
    result["params"].update(total=total, trainable=n_trainable, trainable_pct=100.0 * n_trainable / max(total, 1))
    result["method"] = method.describe(model)
    result["plan"] = {"batch_size": feed.batch_size, "micro_batch_size": plan.micro_batch_size,
                      "accumulation": plan.accumulation, "steps": plan.steps, "lr": settings.lr,
                      "measure_from_step": plan.measure_from,
                      "loss_chunk_tokens": feed.chunk_tokens if feed.loss_fn is not model_loss else None,
                      "micro_batch_fit": feed.fits or None, **settings.record()}
    if feed.task is not None:
        result["protocol"] = feed.task.protocol()
        result["run"]["metric"] = feed.task.metric
    logger = make_logger(cfg.logger, f"{cfg.method.name}-{result['run']['task']}", output_dir,
                         result["config"]) if distributed.is_main() else NullLogger()
    result["env"] = environment(s.hw, distributed.world_size())
    return logger


def train_job(cfg: DictConfig, output_dir: Path, result: dict, s: steps.Setup, model, method, optimizer, scheduler,
              feed: steps.Feed, plan: Plan, logger, evaluation: Evaluation | None, sync) -> SpeedMeter:
    """Train from where a checkpoint left off (validating on the way when `evaluation` asks) and record
    what training made. Returns the speed meter."""
    saver = Checkpointer(cfg, output_dir, model=model, method=method, scheduler=scheduler,
                         selector=evaluation.selector if evaluation else Selector(cfg, None, method, model),
                         validations=evaluation.validations if evaluation else [], accumulation=plan.accumulation,
                         steps=plan.steps, result=result)
    history = saver.restore()  # a fresh log, or where the checkpoint to resume from left off
    speed = SpeedMeter()
    try:
        history = train(model, method, optimizer, scheduler,
                        feed.stream(cfg.seed, plan.micro_batch_size, saver.micro_batches), plan,
                        accelerator=s.accelerator, autocast=s.hw.autocast, head=feed.head, meter=s.meter, speed=speed,
                        logger=logger, loss_fn=feed.loss_fn, evaluate=evaluation.validate if evaluation else None,
                        history=history, checkpoint=saver, sync=sync)
    finally:
        s.meter.end_train()  # also stops the memory trace of a run that failed
    result["method"] = method.describe(model)  # again: what training measured (e.g. HiFT's copy times)
    curve = history.loss_curve
    result["train"].update(steps=history.steps, samples=history.samples, tokens=history.tokens,
                           loss_first=curve[0][1] if curve else None, loss_last=curve[-1][1] if curve else None,
                           loss_curve=curve)
    return speed


class Evaluation:
    """The task's validations during training (with the checkpoint selection) and its final evaluation,
    which scores the selected checkpoint."""

    def __init__(self, cfg: DictConfig, output_dir: Path, s: steps.Setup, task, method, model, plan: Plan, logger,
                 settings: Settings):
        self.s, self.task, self.method, self.model, self.logger = s, task, method, model, logger
        self.ctx = EvalContext(device=s.device, autocast=s.hw.autocast,
                               batch_size=eval_batch_size(cfg, plan.micro_batch_size, settings.num_beams),
                               max_samples=cfg.eval.max_samples, output_dir=output_dir,
                               pad_to_multiple_of=s.hw.pad_to_multiple_of, num_beams=settings.num_beams,
                               max_new_tokens=settings.max_new_tokens,
                               progress=cfg.train.progress and distributed.is_main())
        self.selector = Selector(cfg, task, method, model)
        self.validations: list[dict] = []

    def validate(self, step: int) -> None:
        """Score the validation split at `step` and offer the scores to the selector."""
        self.s.meter.start_eval()
        metrics = self.task.validate(self.model, self.ctx)
        self.s.meter.end_eval()
        self.validations.append({"step": step, "metrics": metrics})
        self.logger.log(metrics, step)
        self.selector.offer(step, metrics)

    def final(self, cfg: DictConfig, output_dir: Path, result: dict, tokenizer) -> None:
        """Restore the selected checkpoint, export it, and score it on the evaluation sets. What training
        made is recorded and exported first: a failing evaluation cannot lose it."""
        steps_done = result["train"]["steps"]
        if self.selector.policy == "best" and (not self.validations or self.validations[-1]["step"] != steps_done):
            self.validate(steps_done)
        result["validation_history"] = self.validations
        result["selection"] = self.selector.restore_chosen(steps_done)
        self.method.release_optimizer()  # the export and the final evaluation need no optimizer state
        main = distributed.is_main()  # only rank 0 writes
        if cfg.train.save != "none" and self.s.sharded:
            state = sharding.full_state(self.model)  # a collective: every rank gathers, rank 0 keeps
            if main:
                result["export"] = sharding.export(self.model, tokenizer, output_dir / "checkpoint", state)
        elif cfg.train.save != "none" and main:
            result["export"] = self.method.export(self.model, tokenizer, output_dir / "checkpoint")
        if cfg.train.save != "none" and main:  # safetensors writes 0600: the umask's mode, as any file
            files.normal_modes(output_dir / "checkpoint")
        if main:  # on disk too, should the process die in the evaluation (replaced when the run ends)
            results.write({**result, "error": "stopped in the final evaluation, after training"}, output_dir)
        self.s.meter.start_eval()
        result["metrics"] = self.task.evaluate(self.model, self.ctx)
        self.s.meter.end_eval()
        self.logger.log(result["metrics"], steps_done)


def record_facts(result: dict, s: steps.Setup, model, method, speed: SpeedMeter, masters: list,
                 trainable_bytes: int) -> None:
    """Record what training measured: memory (with its breakdown) and throughput."""
    result["memory"] = s.meter.summary(model_bytes(model, masters), method.master_bytes())
    result["memory"]["breakdown"]["trainable_bytes"] = trainable_bytes
    seq_len = speed.tokens / max(speed.samples, 1)
    result["throughput"] = speed.summary(flops_per_token(model, seq_len),
                                         peak_flops(result["env"]["device_name"], s.hw.precision,
                                                    s.device.type == "cuda"))


def eval_batch_size(cfg: DictConfig, micro: int, num_beams: int | None) -> int:
    """Prompts (or examples) per evaluation batch. eval.batch_size (null: two training micro-batches)
    counts sequences on the device; beam search holds `num_beams` (resolved: knobs.settle) per prompt."""
    return max(1, (cfg.eval.batch_size or 2 * micro) // (num_beams or 1))


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

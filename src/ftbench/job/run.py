"""One job: build the model, apply the method, train, evaluate, write result.json.

`run_job` is what Hydra calls for every run and every job of a multirun. It locks the job's
folder for as long as the job runs (job/lock.py) and hands a job that has to run to a `Job`,
the recipe of named steps (build, train, evaluate, summarize, write), which never lets an
exception escape without first writing result.json with the status and a one-line error.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ftbench import files, results
from ftbench.config.knobs import settle
from ftbench.config.schema import check
from ftbench.config.sources import given_keys, model_label
from ftbench.engine import loop
from ftbench.engine.loggers import NullLogger, make_logger
from ftbench.engine.loop import Compute, Trainee, Watchers, sigterm_cancels
from ftbench.engine.loss import model_loss
from ftbench.engine.outcome import stopped
from ftbench.errors import Canceled, UserError
from ftbench.job import engagement, lock, places, rerun, steps
from ftbench.job.checkpoint import Checkpointer, recorded_micro_batch
from ftbench.job.evaluation import Evaluation, Selector, eval_context
from ftbench.measure.environment import environment
from ftbench.measure.meters import (
    SpeedMeter,
    flops_per_token,
    model_bytes,
    optimizer_state_tensors,
    parameter_count,
    peak_flops,
)
from ftbench.methods.base import scheduler_for
from ftbench.parallel import distributed
from ftbench.plan import report as plan_report
from ftbench.plan.report import run_plan
from ftbench.results import Params, Result, Run, Train
from ftbench.tasks.harness import Harness

log = logging.getLogger(__name__)


def run_job(cfg: DictConfig, output_dir: Path, overrides: list[str] | None = None) -> int:
    """Run one job and write its result.json (a plan: plan.json); return the process exit code. The job's
    folder is locked for as long as it runs (job/lock.py): another process running in it is refused first."""
    with ExitStack() as running:
        outcome = distributed.on_main(lambda: begin(cfg, output_dir, running))  # rank 0 locks and moves files
        if isinstance(outcome, UserError):
            print(f"ftbench: error: {outcome}", file=sys.stderr)
            return 2
        if cfg.mode == "plan":
            return run_plan(cfg, output_dir, overrides)
        if outcome == output_dir:  # a folder that holds a run: skip it (ok), resume it (interrupted) or rerun it
            print(f"ftbench: {output_dir}: finished ok earlier with this config; skipped", file=sys.stderr)
            return 0
        if outcome is not None:  # a sweep's job whose config finished ok in another job's folder (rerun.py)
            print(f"ftbench: {output_dir}: finished ok earlier with this config in {outcome}; skipped, its result "
                  "stands for this job", file=sys.stderr)
            return 0
        return Job(cfg, output_dir, overrides).run()


def begin(cfg: DictConfig, output_dir: Path, running: ExitStack) -> Path | None:
    """On rank 0: take the folder's lock (released when `running` closes), then make the folder ready for
    the job (`rerun.prepare`, whose value this returns; a plan: what stands where it writes checked (places.py),
    `plan_report.prepare`, then its Hydra files)."""
    running.enter_context(lock.hold(output_dir, files.folder_key()))
    if cfg.mode != "plan":
        return rerun.prepare(cfg, output_dir)
    places.require(cfg, output_dir, files.folder_key())
    plan_report.prepare(output_dir)  # refused (an ok plan): the folder's record left as it was
    rerun.save_hydra_files(cfg, output_dir)
    return None


class Job:
    """One run of a method on a task (or one profile), as a recipe of named steps:

    1. `build`: set-up (device, seed, meters), data, model, method and optimizer, the training
       spec and LR scheduler, the data-parallel sync, what the job will do (in `result`), the logger,
       the engagement watch (job/engagement.py: before training), the evaluation and the
       lm-evaluation-harness tasks (checked before training);
    2. `train`: from where a checkpoint left off (validating on the way), then what training measured
       and changed (engagement, read before the export merges adapters);
    3. `evaluate`: the selected checkpoint, exported, scored on the task's evaluation sets;
    4. `summarize`: the logger's summary, the data-parallel figures (a collective), the harness scores;
    5. `write`: result.json, also when a step above raised (with the status and one line).

    Each step fills `result` as facts become known, so a run that stops anywhere reports what it
    did. What must be undone when the job ends (hooks, process-wide flags) goes on `job_end`.
    """

    def __init__(self, cfg: DictConfig, output_dir: Path, overrides: list[str] | None = None):
        self.cfg, self.output_dir = cfg, output_dir
        self.started = time.time()
        self.result = Result(run=Run(method=cfg.method.name, model=model_label(cfg.model, given_keys(overrides or [])),
                                     seed=cfg.seed, mode=cfg.mode,
                                     task=cfg.task.name if cfg.mode == "train" else "profile",
                                     output_dir=str(output_dir), overrides=list(overrides or []),
                                     started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                     phase="setup"),  # phases: rerun.py
                             config=OmegaConf.to_container(cfg, resolve=True))

    def run(self) -> int:
        """Every step in order; returns the exit code (0, 1, 2 for a user error; raises Canceled on Ctrl-C
        or SIGTERM once result.json is written, which stops a sweep)."""
        code, finished_logger = 0, None
        try:
            check(self.cfg)
            with ExitStack() as job_end, sigterm_cancels():  # what the job changed in the process is undone at its end
                self.build(job_end)
                self.train()
                self.evaluate()
                self.summarize()
                finished_logger = self.logger
            self.result.status = "ok"
        except (Exception, KeyboardInterrupt) as exc:
            self.result.status, self.result.error, code = stopped(exc, self.cfg.get("debug"))
        self.result.run.exit_code = code  # a sweep whose launcher ran the job elsewhere reads it (job/sweep.py)
        self.write(finished_logger)
        if self.result.status == "ok" and distributed.is_main():
            metric = self.cfg.task.get("metric") if self.cfg.mode == "train" else None
            headline = self.result.metrics.get(metric) if metric else None
            log.info(f"done: {self.output_dir / results.FILENAME}"
                     + ("" if headline is None else f" ({metric} {headline:.4f})"))
        if self.result.status == "canceled":
            raise Canceled(self.result.error)  # stops a sweep; its line is printed
        return code

    # -- 1. build -----------------------------------------------------------------------------
    def build(self, job_end: ExitStack) -> None:
        """Everything training needs, in the order the steps depend on each other (steps.py)."""
        cfg = self.cfg
        self.s = s = steps.setup(cfg, job_end)
        self.inputs = steps.data(cfg)
        self.harness = (Harness(cfg.eval.harness, self.output_dir, self.inputs.head)  # its tasks load, or a user error
                        if cfg.eval.harness.tasks and distributed.is_main() else None)
        self.result.config = OmegaConf.to_container(cfg, resolve=True)  # as settled (model source, task.max_length)
        self.settings = settle(cfg, None if s.profiling else len(self.inputs.task.train_examples()))  # one owner per knob
        self.feed = steps.Feed(cfg, self.inputs, steps.model(cfg, self.inputs, s), s, self.settings.batch_size)
        model, method, optimizer, calibration_micro = steps.method_and_optimizer(cfg, self.feed, s, self.output_dir,
                                                                                 job_end, self.settings.lr)
        resumed = recorded_micro_batch(cfg.train.resume, self.output_dir, self.result.config)  # auto keeps it
        self.spec = steps.train_spec(cfg, method, self.feed, s, calibration_micro, self.settings.steps, resumed)
        self.trainee = Trainee(model, method, optimizer, scheduler_for(optimizer, method, cfg.optim, self.spec.steps))
        self.sync = steps.distribute(s, self.spec)  # data parallel: the gradients summed over ranks (distributed.py)
        # Counted before training: what HiFT holds beside the model changes as it rotates.
        self.masters, self.trainable = method.master_parameters(), method.trainable_size()
        self.logger = self.record_start()
        self.watched = engagement.watch(model, method, self.feed.head, self.masters)  # before training
        scratch = self.output_dir if distributed.is_main() else distributed.scratch(job_end)  # other ranks' generations
        self.evaluation = None if s.profiling else Evaluation(
            cfg, s, self.inputs.task, self.trainee,
            eval_context(cfg, s, scratch, self.spec.micro_batch_size, self.settings), self.logger)

    def record_start(self):
        """Record what the job will do (params, method, training schedule, protocol, env) and start the
        logger (returned); the memory meter counts from here."""
        s, feed, spec, result = self.s, self.feed, self.spec, self.result
        model, method, optimizer, masters = self.trainee.model, self.trainee.method, self.trainee.optimizer, self.masters
        s.meter.mark_loaded()
        s.meter.held_bytes = lambda: model_bytes(model, masters)
        s.meter.held_tensors = lambda: [*method.held_tensors(), *optimizer_state_tensors(optimizer, s.device)]
        n_trainable = self.trainable[0]
        total = parameter_count(model, method.uncounted_parameters(model))  # each weight once: no masters, copies
        result.params = Params(total=total, trainable=n_trainable, trainable_pct=100.0 * n_trainable / max(total, 1))
        result.method = method.describe(model)
        result.plan = {"batch_size": feed.batch_size, "micro_batch_size": spec.micro_batch_size,
                       "accumulation": spec.accumulation, "steps": spec.steps, "lr": self.settings.lr,
                       "measure_from_step": spec.measure_from,
                       "loss_chunk_tokens": feed.chunk_tokens if feed.loss_fn is not model_loss else None,
                       "micro_batch_fit": feed.fits or None, **self.settings.record()}
        if feed.task is not None:
            result.protocol = feed.task.protocol()
            result.run.metric = feed.task.metric
        logger = make_logger(self.cfg.logger, f"{self.cfg.method.name}-{result.run.task}", self.output_dir,
                             result.config) if distributed.is_main() else NullLogger()
        result.env = environment(s.hw, distributed.world_size())
        return logger

    # -- 2. train -----------------------------------------------------------------------------
    def train(self) -> None:
        """Train from where a checkpoint left off (validating on the way when there is an evaluation),
        then record what training made and measured: memory (with its breakdown) and throughput."""
        cfg, s, feed, trainee, evaluation = self.cfg, self.s, self.feed, self.trainee, self.evaluation
        selector = evaluation.selector if evaluation else Selector(cfg, None, trainee.method, trainee.model)
        saver = Checkpointer(cfg, self.output_dir, trainee, self.spec, selector, self.result)
        history = saver.restore()  # a fresh log, or where the checkpoint to resume from left off
        self.result.run.phase = "train"
        speed = SpeedMeter()
        try:
            history = loop.train(trainee, self.training_batches(saver.micro_batches),
                                 self.spec, Compute(s.accelerator, feed.head, s.hw.autocast, feed.loss_fn, self.sync),
                                 Watchers(s.meter, speed, self.logger, evaluation.validate if evaluation else None,
                                          saver), history)
        finally:
            s.meter.end_train()  # also stops the memory trace of a run that failed
            self.result.train = Train.from_log(history)  # the steps done, also before a failure (nan, Ctrl-C)
        result, model, method = self.result, trainee.model, trainee.method
        # what the method claims to train that changed (and a warning): its claim over the steps done, and one step's
        claim = method.claimed_over_run(history.steps)
        result.engagement = self.watched.report(claim.elements, self.trainable[0], claim.names)
        result.method = method.describe(model)  # again: what training measured (e.g. HiFT's copy times)
        result.memory = s.meter.summary(model_bytes(model, self.masters), method.master_bytes())
        result.memory.breakdown.trainable_bytes = self.trainable[1]
        seq_len = speed.tokens / max(speed.samples, 1)
        result.throughput = speed.summary(flops_per_token(model, seq_len),
                                          peak_flops(result.env.device_name, s.hw.precision, s.device.type == "cuda"),
                                          each_step=s.profiling)

    def training_batches(self, start: int) -> Iterator[dict]:
        """The training stream from its `start`-th micro-batch on (a resumed run's). The loop draws a
        step's micro-batches before it starts the step's clock; the peers benchmark overrides this to
        step another loop there (bench/peers/paired.py)."""
        return self.feed.stream(self.cfg.seed, self.spec.micro_batch_size, start)

    # -- 3. evaluate --------------------------------------------------------------------------
    def evaluate(self) -> None:
        """The final evaluation of the selected checkpoint (none when profiling), with its own memory peak."""
        if self.evaluation is not None:
            self.evaluation.final(self.cfg, self.output_dir, self.result, self.inputs.tokenizer)
            self.result.memory.eval_peak_allocated_bytes = self.s.meter.eval_peak_allocated

    # -- 4. summarize -------------------------------------------------------------------------
    def summarize(self) -> None:
        """The logger's run summary; world size, gradient bytes per step and every rank's peaks; then, on
        rank 0, the lm-evaluation-harness scores (eval.harness.tasks)."""
        throughput = dataclasses.asdict(self.result.throughput)
        self.logger.summary({**self.result.metrics, **{f"throughput/{k}": v for k, v in throughput.items()}})
        self.result.distributed = distributed.record(self.sync, self.result.memory)
        if self.harness is not None:  # lm-evaluation-harness (tasks/harness.py): rank 0, after the collectives
            self.result.harness = self.harness.score(self.trainee.model, self.inputs.tokenizer)

    # -- 5. write -----------------------------------------------------------------------------
    def write(self, logger) -> None:
        """result.json (rank 0), the logger closed with the status (when the job got that far), the
        memory it held released."""
        self.result.run.duration_s = round(time.time() - self.started, 3)
        if distributed.is_main():
            results.write(self.result, self.output_dir)
        if logger is not None:
            logger.close(self.result.status)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next job of a multirun starts from a clean device

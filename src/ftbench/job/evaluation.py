"""A job's evaluations: the validations during training, the checkpoint they select, and the final
evaluation of that checkpoint on the task's evaluation sets (with the export before it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig

from ftbench import files, results
from ftbench.config.knobs import Settings
from ftbench.engine.loop import Trainee
from ftbench.errors import UserError
from ftbench.job import checkpoint
from ftbench.job.steps import Setup
from ftbench.models.loading import exported_as_loaded
from ftbench.parallel import distributed, sharding
from ftbench.results import Result
from ftbench.tasks.base import EvalContext, Task


def eval_context(cfg: DictConfig, s: Setup, output_dir: Path, micro: int, settings: Settings) -> EvalContext:
    """How the task scores the model: batches of `eval_batch_size` prompts, generations under `output_dir`."""
    return EvalContext(device=s.device, autocast=s.hw.autocast,
                       batch_size=eval_batch_size(cfg, micro, settings.num_beams),
                       max_samples=cfg.eval.max_samples, output_dir=output_dir,
                       pad_to_multiple_of=s.hw.pad_to_multiple_of, num_beams=settings.num_beams,
                       max_new_tokens=settings.max_new_tokens, progress=cfg.train.progress and distributed.is_main())


def eval_batch_size(cfg: DictConfig, micro: int, num_beams: int | None) -> int:
    """Prompts (or examples) per evaluation batch. eval.batch_size (null: two training micro-batches)
    counts sequences on the device; beam search holds `num_beams` (resolved: knobs.settle) per prompt."""
    return max(1, (cfg.eval.batch_size or 2 * micro) // (num_beams or 1))


class Evaluation:
    """The task's validations during training (with the checkpoint selection) and its final evaluation,
    which scores the selected checkpoint."""

    def __init__(self, cfg: DictConfig, s: Setup, task: Task, trainee: Trainee, ctx: EvalContext, logger):
        self.s, self.task, self.method, self.model, self.logger = s, task, trainee.method, trainee.model, logger
        self.ctx = ctx
        self.selector = Selector(cfg, task, trainee.method, trainee.model)

    def validate(self, step: int) -> None:
        """Score the validation split at `step` and offer the scores to the selector."""
        self.s.meter.start_eval()
        metrics = self.task.validate(self.model, self.ctx)
        self.s.meter.end_eval()
        self.selector.validations.append({"step": step, "metrics": metrics})
        self.logger.log(metrics, step)
        self.selector.offer(step, metrics)

    def final(self, cfg: DictConfig, output_dir: Path, result: Result, tokenizer) -> None:
        """Validate the last step (when validations run), restore the selected checkpoint, export it, and
        score it on the evaluation sets. What training made is recorded and exported first: a failing
        evaluation cannot lose it."""
        steps_done = result.train.steps
        validations = self.selector.validations
        # The last step is validated whenever validations run (the loop leaves it to here) or best must choose.
        validating = self.selector.policy == "best" or cfg.eval.every_steps is not None
        if validating and (not validations or validations[-1]["step"] != steps_done):
            self.validate(steps_done)
        result.validation_history = validations
        result.selection = self.selector.restore_chosen(steps_done)
        self.method.release_optimizer()  # the export and the final evaluation need no optimizer state
        main = distributed.is_main()  # only rank 0 writes
        with exported_as_loaded(self.model):  # config.json: the model's own use_cache, not training's
            if cfg.train.save != "none" and self.s.sharded:
                state = sharding.full_state(self.model)  # a collective: every rank gathers, rank 0 keeps
                if main:
                    result.export = sharding.export(self.model, tokenizer, output_dir / checkpoint.EXPORT, state)
            elif cfg.train.save != "none" and main:
                result.export = self.method.export(self.model, tokenizer, output_dir / checkpoint.EXPORT)
        if cfg.train.save != "none" and main:  # safetensors writes 0600: the umask's mode, as any file
            files.normal_modes(output_dir / checkpoint.EXPORT)
        result.run.phase = "evaluate"
        if main:  # on disk too, should the process die in the evaluation (replaced when the run ends)
            results.write(dataclasses.replace(result, error="stopped in the final evaluation, after training"),
                          output_dir)
        self.s.meter.start_eval()
        result.metrics = self.task.evaluate(self.model, self.ctx)
        self.s.meter.end_eval()
        self.logger.log(result.metrics, steps_done)


class Selector:
    """Which checkpoint the final evaluation scores: the last, or the best validation
    (by a metric; loss metrics: lowest). The best is kept as a CPU snapshot of what
    training changed and restored before the final evaluation and export. `validations`:
    every validation so far, [{step, metrics}]."""

    def __init__(self, cfg: DictConfig, task: Task | None, method, model):
        self.policy = cfg.train.select
        self.metric = cfg.train.select_metric or (task.metric if task else None)
        self.method, self.model = method, model
        self.best_value, self.best_step, self.snapshot = None, None, None
        self.validations: list[dict] = []

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

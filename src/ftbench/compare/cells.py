"""The runs of a comparison, in fixed folders: what each is, what is done, and how the rest run.

    <out>/<task>/lr/<arm>/lr<lr>/            stage 1: one run per lr of the arm's grid (the first seed),
                                             scored on the validation split carved from the training data
    <out>/<task>/seeds/<arm>/seed<N>/        stage 2: one run per seed at the arm's chosen lr, scored on the
                                             reported split

A run is done when its folder holds a result.json made from the run's config (the neutral keys aside,
as a job decides: job/rerun.py) whose status is ok, nan or oom (a diverged lr is a finding, not run
again). One made from another config is moved aside into <out>/_aside/ (never deleted) before the run is
made again (not while another ftbench process is running in it: job/lock.py); an interrupted or failed
one is left to the job, which resumes or reruns it. The pending runs of one arm and stage run as one
Hydra multirun of the ftbench CLI in a child process, so the launcher the spec's `set` names
(hydra/launcher=slurm, submitit_local) runs them, on a cluster as on a laptop.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ftbench import results
from ftbench.compare.spec import OWNED, Spec, arm_overrides, arms
from ftbench.config.schema import check
from ftbench.config.tree import config_dir
from ftbench.engine.batches import steps_for_tokens, tokens_for_steps
from ftbench.engine.outcome import REFUSALS_TO_PARENT
from ftbench.errors import UserError, explain_compose_error
from ftbench.job import children, lock, preflight
from ftbench.job.checkpoint import differing_keys
from ftbench.job.compose import pinned, register_configs
from ftbench.results import Result

STAGES = {"lr": "stage 1: the lr on a validation split carved from the training data",
          "seeds": "stage 2: every seed at the chosen lr, scored on the reported split"}
ASIDE = "_aside"
FINDINGS = ("ok", "nan", "oom")  # final outcomes: a diverged lr or an arm that does not fit is not run again


@dataclass
class Run:
    """One run of a comparison: its stage, task, arm, lr and seed, its folder and composed config."""

    stage: str  # lr | seeds (STAGES)
    task: str
    arm: str
    lr: float
    seed: int
    folder: Path
    config: dict
    budget_steps: int  # the steps the budget buys on the task (Composer.budget_steps): the validations' interval
    why: str | None = None  # None: done; else why it must run ("not run", "made from another config ...")

    @property
    def done(self) -> bool:
        return self.why is None

    def result(self) -> Result | None:
        """The run's result.json (results.load); None when there is none or it is not a valid result."""
        try:
            return results.load(self.folder / results.FILENAME)
        except (UserError, ValueError):
            return None


def task_overrides(spec: Spec, task: str) -> list[str]:
    """What every run of `task` shares: model, task and its data, budget, the carved validation split."""
    budget = (f"train.max_steps={spec.budget.steps}" if spec.budget.tokens is None
              else f"train.max_tokens={spec.budget.tokens}")
    overrides = [f"model={spec.model}", f"task={task}", budget, f"train.batch_size={spec.budget.batch_size}",
                 f"task.validation_from_train={held_out(spec.validation_from_train)}"]
    if spec.data:  # spec.check: every task has its folder
        overrides.append(f"task.data_dir={(Path(spec.data) / task).resolve()}")
    return [*overrides, *spec.set]


def held_out(value: int | float) -> str:
    """task.validation_from_train as given: a count (400) or a fraction (0.1)."""
    return str(int(value)) if value >= 1 else repr(value)


def stage_overrides(spec: Spec, stage: str, steps: int) -> list[str]:
    """Stage 1 never reads the reported split; stage 2 validates `spec.validations` times in `steps`."""
    if stage == "lr":
        return ["task.evaluate_reported=false"]
    return [f"eval.every_steps={-(-steps // spec.validations)}"]  # ceil: at most `validations`, the last step's too


def overrides(spec: Spec, stage: str, task: str, arm: str, steps: int) -> list[str]:
    """The ftbench overrides of the arm's runs on the task in the stage (lr and seed apart); `steps`:
    what the budget buys on the task (budget_steps)."""
    return [*arm_overrides(spec, arm), *task_overrides(spec, task), *stage_overrides(spec, stage, steps)]


class Composer:
    """Hydra's compose over conf/ for the runs of `spec`; a bad override is a UserError naming the spec's
    key it came from (blame)."""

    def __init__(self, spec: Spec):
        self.spec = spec

    def __enter__(self):
        self._steps: dict[str, int] = {}  # task -> budget_steps
        self._lengths: dict[tuple[str, int], list[int]] = {}  # (task, seed) -> train_lengths
        self._longest: dict[tuple[str, int], int] = {}  # (task, seed) -> longest
        self._metrics: dict[str, list[str] | None] = {}  # task -> the names its stage-1 runs validate
        register_configs()
        self._context = initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="ftbench")
        self._context.__enter__()
        return self

    def __exit__(self, *exc):
        self._context.__exit__(*exc)

    def compose(self, overrides: list[str], arm: str | None = None):
        """The config (a DictConfig) of `ftbench <overrides>` (a run of `arm`), checked."""
        try:
            cfg = compose("config", overrides=overrides)
            check(cfg, overrides)
        except (HydraException, OmegaConfBaseException) as exc:
            message = explain_compose_error(exc)
            raise UserError(blame(self.spec, arm, message), message) from None
        except UserError as exc:
            raise UserError(blame(self.spec, arm, str(exc)), in_spec_terms(self, None, str(exc))) from None
        return cfg

    def config(self, overrides: list[str], arm: str | None = None) -> dict:
        """The resolved config of `ftbench <overrides>` (a run of `arm`) as plain data, checked."""
        return OmegaConf.to_container(self.compose(overrides, arm), resolve=True)

    def train_lengths(self, task: str, seed: int) -> list[int]:
        """The token count of each training example a stage-1 run of `task` at `seed` trains on (the held-out
        split out), read as the run reads its data (preflight.inputs: the task's files or the hub's, checked
        against the model; never the reported split). Raises UserError naming the spec key of a refusal
        every run would meet (validation_from_train holding out all of a small training set)."""
        if (task, seed) not in self._lengths:
            spec, first = self.spec, arms(self.spec)[0]
            cfg = self.compose([*arm_overrides(spec, first), *task_overrides(spec, task),
                                *stage_overrides(spec, "lr", 1), f"seed={seed}"], first)  # stage 1: dev unread
            try:
                built = preflight.inputs(cfg).task
                examples = built.train_examples()
            except UserError as exc:
                raise UserError(blame(spec, first, str(exc)), f"{task}: {exc}") from None
            self._lengths[task, seed] = [len(e["input_ids"]) for e in examples]
            longest = max(examples, key=lambda e: len(e["input_ids"]))  # as a run's micro-batch fit collates it
            self._longest[task, seed] = int(built.collate([longest])["input_ids"].shape[1])  # (job/steps.py)
            names = built.validation_metrics()
            self._metrics[task] = None if names is None else [n.split("/", 1)[1] for n in names]
        return self._lengths[task, seed]

    def longest(self, task: str, seed: int) -> int:
        """The tokens of the longest training sequence a run of `task` at `seed` trains on, collated as the
        run collates it (its closing token appended), before any padding to a multiple."""
        self.train_lengths(task, seed)
        return self._longest[task, seed]

    def check_metric(self, task: str) -> None:
        """Raise UserError on `metric` when the spec names one the task's runs do not report: stage 1 decides
        on `val/<metric>`, which a task knows before it runs (Task.validation_metrics)."""
        names, metric = self._metrics.get(task), self.spec.metric
        if metric is not None and names is not None and metric not in names:
            raise UserError("metric", f"'{metric}' is not a metric {task} reports (it reports {', '.join(names)}); "
                            "set metric to one of them, or null for the task's headline")

    def check_data(self) -> None:
        """Read every task's training data before any run (train_lengths; under budget.tokens each seed's, whose
        order decides its steps) and count the steps budget.tokens buys on each task (budget_steps). Raises
        UserError on what some run would meet, or that a comparison makes: a deciding metric a task does not
        report (metric, Composer.check_metric), a training set smaller than one batch
        (budget.batch_size: a step would repeat examples, and budget.tokens counts whole batches), a token
        budget the count cannot walk (budget.tokens), more validations than steps (validations). Each refusal's
        advice is the bound of the task and seed that bind it most (the fewest examples, the fewest tokens an
        epoch, the fewest steps), so that following it passes for every task and seed."""
        spec, size = self.spec, self.spec.budget.batch_size
        seeds = spec.seeds if spec.budget.tokens is not None else spec.seeds[:1]
        lengths = {(task, seed): self.train_lengths(task, seed) for task in spec.tasks for seed in seeds}
        for task in spec.tasks:
            self.check_metric(task)
        task, seed = min(lengths, key=lambda cell: len(lengths[cell]))
        held = len(lengths[task, seed])  # (a run whose micro-batch is the batch refuses it once started)
        if held < size:
            raise UserError("budget.batch_size", f"{task}: the training set holds {held} examples once "
                            f"validation_from_train={held_out(spec.validation_from_train)} is held out, fewer than "
                            f"one batch of {size}; lower budget.batch_size to {held} or less, hold fewer out, or "
                            "give the task more training data")
        if spec.budget.tokens is None:
            return
        counts = {}  # the fewest tokens an epoch first: the bound its refusal advises holds for every cell
        for task, seed in sorted(lengths, key=lambda cell: sum(lengths[cell])):
            try:
                counts[task, seed] = steps_for_tokens(lengths[task, seed], size, size, seed, spec.budget.tokens,
                                                      keys=("budget.tokens", "budget.batch_size", "budget.steps"))
            except UserError as exc:
                raise UserError(exc.key, f"{task}, seed {seed}'s split: {exc.reason}") from None
        steps = {task: min(counts[task, seed] for seed in seeds) for task in spec.tasks}
        for task in spec.tasks:
            print(f"{task}: budget.tokens={spec.budget.tokens} buys {', '.join(str(counts[task, s]) for s in seeds)} "
                  f"steps (seeds {', '.join(map(str, seeds))})")
        task = min(spec.tasks, key=steps.get)
        if spec.validations > steps[task]:
            raise UserError("validations", f"{spec.validations} validations do not fit the {steps[task]} steps "
                            f"budget.tokens buys on {task}; lower validations to {steps[task]} or less, or raise "
                            "budget.tokens")
        self._steps = steps

    def budget_steps(self, task: str) -> int:
        """The optimizer steps the spec's budget buys on `task`: budget.steps, or under budget.tokens the
        fewest over the seeds (each seed's order has its own; every run still trains to its own count,
        train.max_tokens, and the validations come every `fewest / validations` steps), counted by check_data."""
        if self.spec.budget.tokens is None:
            return self.spec.budget.steps
        if not self._steps:
            self.check_data()
        return self._steps[task]


def blame(spec: Spec, arm: str | None, message: str) -> str:
    """The spec key a refused ftbench key came from, read off the error's leading ftbench key
    ('task=nosuch: no such option ...', 'method.rate: no such key ...', 'train.batch_size: the training
    set has 4 examples ...'): the arm's variants entry, the spec key that sets a key the comparison owns
    (spec.OWNED: tasks, budget.batch_size, validation_from_train, ...), set where it gives the key, else
    the option the key belongs to (model.hub_id: model), else set."""
    key = re.split(r"[=:]", message, maxsplit=1)[0].strip()

    def gives(overrides: list[str]) -> bool:
        return any(key == g or key.startswith(g + ".") for g in (o.split("=", 1)[0].lstrip("+~") for o in overrides))

    if arm in spec.variants and (key == "method" or gives(spec.variants[arm])):
        return f"variants.{arm}"
    if key == "optim.lr" and arm in spec.lr:
        return f"lr.{arm}"
    if key in OWNED or gives(spec.set):
        return OWNED.get(key, "set")
    return OWNED.get(key.split(".", 1)[0], "set")


def in_spec_terms(composer: Composer, task: str | None, message: str) -> str:
    """A refused run's line with the run's length advised on the spec's budget: train.max_steps as
    budget.steps, and train.max_tokens as budget.tokens, the fewest tokens that buy the advised steps at
    every seed of `task` (each seed's order has its own count, `Composer.budget_steps`; at least the run's
    own). `task`: None where no tokens are advised (a config's check: it counts no tokens)."""
    spec = composer.spec

    def tokens(advice: re.Match) -> str:
        steps, size = int(advice[2]), spec.budget.batch_size
        fewest = max(int(advice[1]), *(tokens_for_steps(composer.train_lengths(task, seed), size, size, seed, steps)
                                       for seed in spec.seeds))
        return f"budget.tokens to at least {fewest} (the tokens of {steps} steps at every seed)"

    message = re.sub(r"train\.max_tokens to at least (\d+) \(the tokens of (\d+) steps\)", tokens, message)
    return message.replace("train.max_steps", "budget.steps")


def make_runs(composer: Composer, spec: Spec, out: Path, stage: str, task: str, arm: str,
              lrs: list[float], seeds: list[int]) -> list[Run]:
    """The runs of one arm and stage (every lr at one seed, or one lr at every seed), surveyed."""
    steps = composer.budget_steps(task)
    common = overrides(spec, stage, task, arm, steps)
    made = []
    for lr in lrs:
        for seed in seeds:
            config = composer.config([*common, f"optim.lr={lr!r}", f"seed={seed}"], arm)
            run = Run(stage, task, arm, lr, seed, folder(out, stage, task, arm, lr, seed), config, steps)
            run.why = survey(run)
            made.append(run)
    return made


def folder(out: Path, stage: str, task: str, arm: str, lr: float, seed: int) -> Path:
    """The run's folder: by its lr in stage 1, by its seed in stage 2 (whatever lr stage 1 chooses)."""
    return out / task / stage / arm / (f"lr{lr!r}" if stage == "lr" else f"seed{seed}")


def survey(run: Run) -> str | None:
    """None when the run's folder holds an ok result made from its config; else why it must run."""
    if not run.folder.exists():
        return "not run"
    result = run.result()
    if result is None:
        return "interrupted (no readable result.json): resumes"
    keys = differing_keys(result.config or {}, run.config)
    if result.status not in FINDINGS:
        return f"status {result.status}: runs again"
    return f"made from another config (differs in: {', '.join(keys[:4])})" if keys else None


def set_aside(runs: list[Run], out: Path) -> None:
    """Move each result made from another config out of the way, whole folder: never delete one, never move a
    folder another ftbench process is running in (refused on --out, before any moves: job/lock.py)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    moved = [run for run in runs if run.why and run.why.startswith("made from another config")]
    for run in moved:
        lock.require_free(run.folder, "--out")
    for run in moved:
        target = out / ASIDE / run.folder.relative_to(out).parent / f"{run.folder.name}-{stamp}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run.folder), str(target))
        print(f"  {run.folder.relative_to(out)}: {run.why}; moved to {target}")


def argv(spec: Spec, pending: list[Run]) -> list[str]:
    """The ftbench command line that runs `pending` (runs of one arm and stage) as one multirun."""
    first = pending[0]
    lrs = sorted({r.lr for r in pending})
    seeds = sorted({r.seed for r in pending})
    subdir = "lr${optim.lr}" if first.stage == "lr" else "seed${seed}"
    return ["-m", *overrides(spec, first.stage, first.task, first.arm, first.budget_steps),
            "optim.lr=" + ",".join(map(repr, lrs)), "seed=" + ",".join(map(str, seeds)),
            pinned("hydra.sweep.dir", str(first.folder.parent)), f"hydra.sweep.subdir={subdir}", "~hydra.callbacks.report"]


def shown(args: list[str]) -> str:
    return "ftbench " + " ".join(shlex.quote(a) for a in args)


def execute(spec: Spec, pending: list[Run], out: Path) -> int:
    """Run `pending` (one arm and stage) in a child process; return its exit code (the worst of its runs', 2
    for a user error: job/sweep.py). A Ctrl-C stops the comparison."""
    set_aside(pending, out)
    args = argv(spec, pending)
    print(f"\n[{pending[0].task} {pending[0].stage} {pending[0].arm}] {shown(args)}", flush=True)
    code = children.run([sys.executable, "-c", "from ftbench.cli import main; main()", *args],
                        env={**os.environ, REFUSALS_TO_PARENT: "1"})  # runner.check_refused prints them
    if code == 130:
        raise KeyboardInterrupt
    return code

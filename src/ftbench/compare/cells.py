"""The runs of a comparison, in fixed folders: what each is, what is done, and how the rest run.

    <out>/<task>/lr/<arm>/lr<lr>/            stage 1: one run per lr of the arm's grid (the first seed),
                                             scored on the validation split carved from the training data
    <out>/<task>/seeds/<arm>/seed<N>/        stage 2: one run per seed at the arm's chosen lr, scored on the
                                             reported split

A run is done when its folder holds a result.json made from the run's config (the neutral keys aside,
as a job decides: job/rerun.py) whose status is ok, nan or oom (a diverged lr is a finding, not run again). One made from another config is moved aside into
<out>/_aside/ (never deleted) before the run is made again; an interrupted or failed one is left to the
job, which resumes or reruns it. The pending runs of one arm and stage run as one Hydra multirun of the
ftbench CLI in a child process, so the launcher the spec's `set` names (hydra/launcher=slurm,
submitit_local) runs them, on a cluster as on a laptop.
"""

from __future__ import annotations

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
from ftbench.compare.spec import Spec, arm_overrides
from ftbench.config.schema import check
from ftbench.errors import UserError, explain_compose_error
from ftbench.job import children
from ftbench.job.checkpoint import differing_keys
from ftbench.job.compose import config_dir, register_configs
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
    overrides = [f"model={spec.model}", f"task={task}", f"train.max_steps={spec.budget.steps}",
                 f"train.batch_size={spec.budget.batch_size}",
                 f"task.validation_from_train={spec.validation_from_train!r}"]
    if spec.data and (Path(spec.data) / task).is_dir():
        overrides.append(f"task.data_dir={(Path(spec.data) / task).resolve()}")
    return [*overrides, *spec.set]


def stage_overrides(spec: Spec, stage: str) -> list[str]:
    if stage == "lr":  # the reported split is never read
        return ["task.evaluate_reported=false"]
    return [f"eval.every_steps={max(1, spec.budget.steps // spec.validations)}"]


def overrides(spec: Spec, stage: str, task: str, arm: str) -> list[str]:
    return [*arm_overrides(spec, arm), *task_overrides(spec, task), *stage_overrides(spec, stage)]


class Composer:
    """Hydra's compose over conf/ for the runs of a comparison; a bad override is a UserError."""

    def __enter__(self):
        register_configs()
        self._context = initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="ftbench")
        self._context.__enter__()
        return self

    def __exit__(self, *exc):
        self._context.__exit__(*exc)

    def compose(self, overrides: list[str]):
        """The config (a DictConfig) of `ftbench <overrides>`, checked."""
        try:
            cfg = compose("config", overrides=overrides)
            check(cfg)
        except (HydraException, OmegaConfBaseException) as exc:
            raise UserError("set", explain_compose_error(exc)) from None
        return cfg

    def config(self, overrides: list[str]) -> dict:
        """The resolved config of `ftbench <overrides>` as plain data, checked."""
        return OmegaConf.to_container(self.compose(overrides), resolve=True)


def make_runs(composer: Composer, spec: Spec, out: Path, stage: str, task: str, arm: str,
              lrs: list[float], seeds: list[int]) -> list[Run]:
    """The runs of one arm and stage (every lr at one seed, or one lr at every seed), surveyed."""
    common = overrides(spec, stage, task, arm)
    made = []
    for lr in lrs:
        for seed in seeds:
            name = f"lr{lr!r}" if stage == "lr" else f"seed{seed}"
            config = composer.config([*common, f"optim.lr={lr!r}", f"seed={seed}"])
            run = Run(stage, task, arm, lr, seed, out / task / stage / arm / name, config)
            run.why = survey(run)
            made.append(run)
    return made


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
    """Move each result made from another config out of the way, whole folder: never delete one."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    for run in runs:
        if run.why and run.why.startswith("made from another config"):
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
    return ["-m", *overrides(spec, first.stage, first.task, first.arm), "optim.lr=" + ",".join(map(repr, lrs)),
            "seed=" + ",".join(map(str, seeds)), f"hydra.sweep.dir={first.folder.parent}",
            f"hydra.sweep.subdir={subdir}", "~hydra.callbacks.report"]


def shown(args: list[str]) -> str:
    return "ftbench " + " ".join(shlex.quote(a) for a in args)


def execute(spec: Spec, pending: list[Run], out: Path) -> None:
    """Run `pending` (one arm and stage) in a child process; a Ctrl-C stops the comparison."""
    set_aside(pending, out)
    args = argv(spec, pending)
    print(f"\n[{pending[0].task} {pending[0].stage} {pending[0].arm}] {shown(args)}", flush=True)
    if children.run([sys.executable, "-c", "from ftbench.cli import main; main()", *args]) == 130:
        raise KeyboardInterrupt

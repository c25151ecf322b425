"""A comparison's spec (comparisons/*.yaml): which arms, on which model and tasks, under which budget.

The spec is a typed config (OmegaConf structured, `Spec` below); keys given on the command line
(`ftbench compare SPEC.yaml seeds=[0,1] budget.steps=50`) override the file's. A problem is one line
naming the file and the key (`SpecError`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from ftbench import methods
from ftbench.config.schema import SEED_MAX
from ftbench.config.tree import config_dir
from ftbench.errors import explain_compose_error, first_line, kind_problem
from ftbench.files import folder_name_problem
from ftbench.tasks.config import held_out_problem

LR_FACTORS = [1 / 3, 1.0, 3.0]  # the default grid: each method's own lr times these
LR_DIGITS = 3  # significant digits of a grid lr (its folder name: lr3.33e-05)


class SpecError(Exception):
    """One line: '<file>: <key>: <what is wrong and the fix>'."""

    def __init__(self, path: Path | str, key: str, message: str):
        super().__init__(f"{path}: {key}: {message}")


@dataclass
class Budget:
    steps: Optional[int] = 300  # optimizer steps, the same for every arm (the same examples, in the same order)
    tokens: Optional[int] = None  # or training tokens (padding not counted; train.max_tokens), with steps null:
                                  # each seed's order decides the steps, the same for every arm
    batch_size: int = 32      # the effective batch (train.batch_size), the same for every arm


@dataclass
class Estimate:
    """--dry-run's estimate of a run on the machine the spec is for, used until the arm has finished runs
    (then their measured durations)."""

    step_s: float = 1.0       # seconds per optimizer step
    run_s: float = 15.0       # seconds a run spends outside its steps: loading, validations, the final evaluation
    device: str = "cpu"       # cpu: the estimate in hours of wall time | gpu: in GPU hours

    def run_seconds(self, steps: int) -> float:
        return steps * self.step_s + self.run_s


@dataclass
class Spec:
    title: str = ""
    model: str = "tiny-llama"                     # a conf/model option
    tasks: list[str] = field(default_factory=lambda: ["synthetic"])  # conf/task options
    data: Optional[str] = None                    # a folder: task.data_dir = DATA/<task> where that folder exists
    methods: list[str] = field(default_factory=list)  # registered methods or variants' labels; [] = every method
    variants: dict[str, list[str]] = field(default_factory=dict)  # label -> ftbench overrides (method=NAME, ...)
    budget: Budget = field(default_factory=Budget)
    lr_factors: list[float] = field(default_factory=lambda: list(LR_FACTORS))
    lr: dict[str, list[float]] = field(default_factory=dict)  # an arm's own grid of lrs (replaces the factors)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # stage 2; stage 1 uses the first
    metric: Optional[str] = None                  # the deciding metric's name (acc, mcc); null = each task's headline
    validation_from_train: Union[int, float] = 0.1  # task.validation_from_train: stage 1's split, stage 2's validations
    validations: int = 10                         # stage 2: validations over the run (the time-to-target curve)
    target: float = 0.9                           # time-to-target: within this ratio of full fine-tuning's final
                                                  # validation (× it, higher is better; ÷ it, lower: stats.target)
    alpha: float = 0.05                           # the paired tests' significance level
    gpu: Optional[str] = None                     # a conf/hardware option: the planner's predicted peak on it
    set: list[str] = field(default_factory=list)  # ftbench overrides for every run (hardware=cpu, eval.max_samples=...)
    estimate: Estimate = field(default_factory=Estimate)


def shipped_dir() -> Path:
    """The shipped specs (comparisons/): inside the package (wheel), else at the top of the checkout."""
    package = Path(__file__).resolve().parents[1]
    return next((c for c in (package / "comparisons", package.parents[1] / "comparisons") if c.is_dir()),
                package / "comparisons")


def find(path: Path) -> Path:
    """A spec file, or the name of a shipped spec (minilm-glue). Raises SpecError naming the shipped ones,
    or saying what the path holds instead of a file (a folder)."""
    if path.is_file():
        return path
    if path.exists():
        raise SpecError(path, "file", f"{kind_problem(path, 'file')}; give a spec file (YAML) or a shipped spec's name")
    if (shipped_dir() / f"{path.stem}.yaml").is_file():
        return shipped_dir() / f"{path.stem}.yaml"
    names = ", ".join(sorted(p.stem for p in shipped_dir().glob("*.yaml")))
    raise SpecError(path, "file", f"no such spec file; shipped specs: {names or 'none'}")


def load(path: Path, overrides: list[str]) -> Spec:
    """The spec in `path` with command-line `overrides` (KEY=VALUE, spec keys) applied; checked."""
    try:
        loaded = OmegaConf.load(path)
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as exc:
        raise SpecError(path, "file", f"cannot be read as YAML ({first_line(exc)})") from None
    if not isinstance(loaded, DictConfig):
        raise SpecError(path, "file", "holds a list, not the spec's keys (title:, model:, tasks:, methods:, ...)")
    if not loaded:  # an empty file (cut, never saved) is not "every default": the whole default comparison
        raise SpecError(path, "file", "is empty (no keys, comments at most); give the spec's keys (title:, model:, "
                        "tasks:, methods:, ...)")
    bad = next((o for o in overrides if "=" not in o), None)
    if bad is not None:
        raise SpecError(path, bad, "not KEY=VALUE (a spec key, e.g. seeds=[0,1] or budget.steps=50)")
    try:
        given = OmegaConf.from_dotlist(overrides)
    except (ValueError, yaml.YAMLError, OmegaConfBaseException) as exc:
        raise SpecError(path, "command line", f"cannot be read as KEY=VALUE in YAML ({first_line(exc)})") from None
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Spec), held_out_as_number(integer_lrs_as_floats(loaded)),
                                 held_out_as_number(integer_lrs_as_floats(given)))
        spec: Spec = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "spec"
        message = explain_compose_error(exc).removeprefix(f"{key}: ")
        if "ListConfig" in message:
            message = f"give a list in brackets, e.g. {key}=[a,b] ({first_line(message)})"
        elif not isinstance(exc, (ConfigAttributeError, ConfigKeyError)):
            message += " (each key's type: ftbench.compare.spec.Spec, docs/compare.md)"
        raise SpecError(path, key, message) from None
    check(spec, path)
    return spec


def integer_lrs_as_floats(conf: DictConfig) -> DictConfig:
    """`conf` with each integer of its `lr` lists made a float (lr={full:[1]}: an lr of 1.0). OmegaConf converts
    an int to a float in a list of floats, but not in a list under a dict (Spec.lr) when it merges one in: it
    refuses it as 'incompatible with type hint'. Anything else is left for the merge to refuse."""
    lrs = conf.get("lr")
    for label, values in (lrs.items() if isinstance(lrs, DictConfig) else ()):
        if isinstance(values, ListConfig):
            lrs[label] = [float(v) if type(v) is int else v for v in values]
    return conf


def held_out_as_number(conf: DictConfig) -> DictConfig:
    """`conf` with a `validation_from_train` written as a word that reads as a float (inf, nan: YAML reads them as
    words) made that float, which `check` then refuses as neither a fraction nor a count (a float key took them as
    floats; the key is int or float, so that an integer stays a count: tasks/config.held_out_problem)."""
    held = conf.get("validation_from_train")
    if isinstance(held, str):
        try:
            conf.validation_from_train = float(held)
        except ValueError:
            pass  # not a number: the merge refuses it
    return conf


def check(spec: Spec, path: Path) -> None:
    for key, names, example in (("variants", spec.variants, "a label such as lora-r4"),
                                ("tasks", spec.tasks, "a conf/task option such as sst2")):
        problem = next(filter(None, map(folder_name_problem, names)), None)  # each names a folder (cells.folder)
        if problem is not None:
            raise SpecError(path, key, f"{problem}; each names a folder of the comparison (<task>/lr/<arm>/): give "
                            f"{example}, a plain folder name (no '/', not '.' or '..')")
    known = methods.names()
    for label, overrides in spec.variants.items():
        named = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "method"]
        if len(named) != 1 or named[0] not in known:
            raise SpecError(path, f"variants.{label}", f"give exactly one method=NAME, NAME one of {', '.join(known)}")
        if label in known and named[0] != label:
            raise SpecError(path, f"variants.{label}", f"'{label}' is a method's name: its variant must keep "
                            f"method={label}; give the method={named[0]} variant another label")
        owned = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in set(OWNED) - {"method"}
                 or o.lstrip("+~").startswith("task.")]
        if owned:
            raise SpecError(path, f"variants.{label}", f"{owned[0]}: the comparison sets this for every arm alike "
                            "(lr: its grid, `lr: {arm: [...]}`; the data and budget: the spec's keys); drop it")
    for key, given in (("methods", spec.methods), ("tasks", spec.tasks)):
        twice = sorted({x for x in given if given.count(x) > 1})
        if twice:
            raise SpecError(path, key, f"'{twice[0]}' is listed twice; list each once")
    labels = [*known, *spec.variants]  # an lr entry of one that is not an arm (methods=[full]) is unused
    for key, given in (("methods", spec.methods), ("lr", list(spec.lr))):
        label = next((g for g in given if g not in labels), None)
        if label is not None:
            close = difflib.get_close_matches(label, labels, n=1)
            raise SpecError(path, key, f"'{label}' is neither a method ({', '.join(known)}) nor a variant's label; "
                            + (f"did you mean {close[0]}?" if close else "give one of them"))
    for name in spec.lr:
        runs_it = [a for a in arms(spec) if a in spec.variants and arm_method(spec, a) == name]
        if name not in arms(spec) and runs_it:  # else an entry of one that is not an arm is unused (methods=[full])
            raise SpecError(path, "lr", f"'{name}' names no arm; the variant {runs_it[0]} runs method={name}, so key "
                            f"its grid as {runs_it[0]}: lr={{{runs_it[0]}:[...]}}")
    if (spec.budget.steps is None) == (spec.budget.tokens is None):
        raise SpecError(path, "budget", "give one budget: budget.steps=N, or budget.tokens=N with budget.steps=null")
    for key, value, what in (("steps", spec.budget.steps, "the optimizer steps every arm trains"),
                             ("tokens", spec.budget.tokens, "the training tokens every run trains on"),
                             ("batch_size", spec.budget.batch_size, "the effective batch every arm trains at")):
        if value is not None and value < 1:
            raise SpecError(path, f"budget.{key}", f"{value} is not >= 1; give {what}")
    problem = held_out_problem(spec.validation_from_train)
    if problem is not None:
        raise SpecError(path, "validation_from_train", problem)
    if len(spec.seeds) < 2 or len(set(spec.seeds)) != len(spec.seeds):
        raise SpecError(path, "seeds", "give two or more distinct seeds >= 0, e.g. seeds=[0,1,2] (the intervals "
                        "and paired tests need two)")
    wrong = next((s for s in spec.seeds if not 0 <= s <= SEED_MAX), None)
    if wrong is not None:
        raise SpecError(path, "seeds", f"{wrong} is not between 0 and {SEED_MAX} (2**32 - 1, the seeds numpy takes); "
                        "give seeds in that range, e.g. seeds=[0,1,2]")
    if not spec.tasks:
        raise SpecError(path, "tasks", "give at least one task (a conf/task option)")
    if not spec.lr_factors or min(spec.lr_factors) <= 0:
        raise SpecError(path, "lr_factors", "give one or more factors, each > 0 (each arm's lr times them)")
    for label, values in spec.lr.items():
        if min(values, default=0) <= 0:
            raise SpecError(path, f"lr.{label}", "give one or more learning rates, each > 0")
    for key, ok, rule in (("target", 0 < spec.target <= 1, "in (0, 1]"), ("alpha", 0 < spec.alpha < 1, "in (0, 1)"),
                          ("validations", spec.validations >= 1, ">= 1")):
        if not ok:
            raise SpecError(path, key, f"{getattr(spec, key)} is not {rule}")
    if spec.budget.steps is not None and spec.validations > spec.budget.steps:  # tokens: cells.budget_steps
        raise SpecError(path, "validations", f"{spec.validations} validations do not fit {spec.budget.steps} steps "
                        "(at most one a step); lower validations or raise budget.steps")
    if spec.data is not None and not Path(spec.data).is_dir():
        raise SpecError(path, "data", f"{spec.data} {kind_problem(spec.data, 'folder')} (relative paths are read "
                        f"from {Path.cwd()}); give the folder holding one folder per task, or null for the hub")
    missing = [t for t in spec.tasks if spec.data is not None and not (Path(spec.data) / t).is_dir()]
    if missing and (Path(spec.data) / missing[0]).exists():
        raise SpecError(path, "data", f"{Path(spec.data) / missing[0]} {kind_problem(Path(spec.data) / missing[0], 'folder')}: "
                        "each task's files go in a folder of its name")
    if missing:
        raise SpecError(path, "data", f"{spec.data} has no {missing[0]}/ folder: add it (the task's files), or "
                        "set data: null for the hub")
    hardware = sorted(p.stem for p in (config_dir() / "hardware").glob("*.yaml"))
    if spec.gpu is not None and spec.gpu not in hardware:
        raise SpecError(path, "gpu", f"'{spec.gpu}' is not a hardware option; one of {', '.join(hardware)}")
    if spec.estimate.device not in ("cpu", "gpu"):
        raise SpecError(path, "estimate.device", "cpu or gpu")
    if spec.estimate.step_s <= 0:
        raise SpecError(path, "estimate.step_s", f"{spec.estimate.step_s} is not > 0 (seconds a step)")
    if spec.estimate.run_s < 0:
        raise SpecError(path, "estimate.run_s", f"{spec.estimate.run_s} is not >= 0 (seconds a run spends outside "
                        "its steps)")
    if "full" not in [arm_method(spec, a) for a in arms(spec)]:
        raise SpecError(path, "methods", "include full: time-to-target and the paired tests are against it")
    if any(o.split("=", 1)[0].lstrip("+~") in OWNED for o in spec.set):
        raise SpecError(path, "set", f"the comparison sets {', '.join(sorted(OWNED))} itself; change the spec's keys")


# ftbench keys the comparison owns (set per stage), each from the spec's key that a refusal of it names
# (cells.blame; optim.lr: lr.<arm> where the spec gives the arm's lrs; mode=plan and the planned shape: the
# planner for gpu, plans.predict)
OWNED = {"seed": "seeds", "optim.lr": "lr_factors", "train.max_steps": "budget.steps",
         "train.max_tokens": "budget.tokens", "train.batch_size": "budget.batch_size",
         "task.validation_from_train": "validation_from_train", "task.evaluate_reported": "validation_from_train",
         "eval.every_steps": "validations", "method": "methods", "model": "model", "task": "tasks",
         "task.data_dir": "data", "mode": "gpu", "profile.batch_size": "budget.batch_size", "profile.seq_len": "gpu"}


def arms(spec: Spec) -> list[str]:
    """The arms' labels: spec.methods, or every registered method."""
    return list(spec.methods) or methods.names()


def arm_method(spec: Spec, label: str) -> str:
    overrides = spec.variants.get(label)
    return label if overrides is None else next(o.split("=", 1)[1] for o in overrides if o.startswith("method="))


def arm_overrides(spec: Spec, label: str) -> list[str]:
    return list(spec.variants.get(label) or [f"method={label}"])


def grid(spec: Spec, label: str, default_lr: float) -> list[float]:
    """The arm's lrs, rounded to LR_DIGITS significant digits, ascending."""
    values = spec.lr.get(label) or [default_lr * f for f in spec.lr_factors]
    return sorted({float(f"{v:.{LR_DIGITS}g}") for v in values})

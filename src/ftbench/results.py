"""The result.json contract that every report, sweep and check reads.

A run's result is a `Result`: one dataclass per fixed section (`Run`, `Params`, `Train`,
`Memory` with its `Breakdown`, `Throughput`, `Env`) and plain JSON for the sections their
owners write (the method's `describe()`, the task's `protocol()`, the training schedule, the
checkpoints, the selection, the export, the data-parallel figures). `Result()` holds every
required key with null values, so a run that dies early still leaves a valid file.

It is serialised in one place (`Result.to_json`, written by `write`, atomically: temp file, then
rename, also when the run fails) and read back in one place (`Result.from_json`, `load`).
`problems` checks the JSON itself: what a file must hold, whatever wrote it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftbench import files

SCHEMA = 1
GiB = 2**30  # result.json counts bytes; tables and messages show GiB
STATUSES = ("ok", "failed", "oom", "nan", "canceled")
FILENAME = "result.json"
PREVIOUS = "result.previous-{}.json"  # an earlier attempt's result, kept when a rerun replaces it (job/rerun.py)
# The JSON files ftbench writes beside results, which a glob over a run, sweep or comparison folder hands
# in: earlier attempts kept aside (results', plans'), `ftbench plan`'s plan.json (read as a plan), `ftbench compare`'s
# comparison.json and an earlier one kept aside, method=s2ft's selection and an earlier attempt's. Not results.
OTHER_JSON = re.compile(r"(result|plan|comparison|s2ft_selection)\.previous-\d+\.json|plan\.json|comparison\.json"
                        r"|s2ft_selection\.json")


@dataclass
class Run:
    """What ran: names, seed, mode, folder, when (ISO 8601, UTC) and for how long (seconds)."""

    method: str | None = None
    model: str | None = None
    task: str | None = None  # the task's name; "profile" under mode=profile
    seed: int | None = None
    mode: str | None = None  # train | profile
    output_dir: str | None = None
    started_at: str | None = None
    duration_s: float | None = None
    overrides: list[str] = field(default_factory=list)  # the command line's, as Hydra got them
    metric: str | None = None  # the task's headline metric ('<split>/<name>'); None when profiling
    phase: str | None = None  # where the job got: setup | train | evaluate (job/rerun.py reads it)
    exit_code: int | None = None  # the process's: 0, 1, 2 for a user error (job/sweep.py reads it)


@dataclass
class Params:
    """Parameter counts (elements): the model's as a user counts them (the base plus what the method adds, each
    weight once: masters and copies left out, `Method.uncounted_parameters`), and what a step updates."""

    total: int | None = None
    trainable: int | None = None
    trainable_pct: float | None = None


@dataclass
class Train:
    """What training did: optimizer steps, sequences, token positions (padding included) and tokens
    (padding not counted), the loss."""

    steps: int | None = None
    samples: int | None = None
    tokens: int | None = None
    tokens_nonpad: int | None = None  # the examples' own tokens, padding not counted (train.max_tokens budgets these)
    loss_first: float | None = None
    loss_last: float | None = None
    loss_curve: list[list[float]] = field(default_factory=list)  # [[step, loss], ...]

    @classmethod
    def from_log(cls, log) -> Train:
        """The section of an `engine.loop.TrainLog` (steps done, samples, tokens, loss curve)."""
        curve = log.loss_curve
        return cls(steps=log.steps, samples=log.samples, tokens=log.tokens,
                   tokens_nonpad=log.tokens_nonpad, loss_curve=curve,
                   loss_first=curve[0][1] if curve else None, loss_last=curve[-1][1] if curve else None)


@dataclass
class Breakdown:
    """What training holds, by kind (bytes on the training device; host bytes apart)."""

    weights_bytes: int | None = None
    trainable_bytes: int | None = None
    master_bytes: int | None = None
    grad_bytes: int | None = None
    optimizer_state_bytes: int | None = None  # held: a walk over optimizer.state, not a formula
    optimizer_state_host_bytes: int | None = None
    activations_bytes: int | None = None  # the measured peak less what is held; None without a peak


@dataclass
class Memory:
    """Peaks by phase (bytes). CUDA's allocator counters are None on the CPU, where the traced peak
    (mode=profile, profile.trace_memory) stands in."""

    device: str | None = None  # cuda:N | cpu
    baseline_allocated_bytes: int | None = None
    load_allocated_bytes: int | None = None
    train_peak_allocated_bytes: int | None = None
    train_peak_reserved_bytes: int | None = None
    train_peak_active_bytes: int | None = None
    train_peak_traced_bytes: int | None = None
    train_peak_traced_op: str | None = None
    train_peak_traced_by_op: dict[str, int] | None = None
    eval_peak_allocated_bytes: int | None = None
    step_reserved_p50_bytes: int | None = None
    step_reserved_p99_bytes: int | None = None
    cpu_peak_rss_bytes: int | None = None
    optimizer_state_parts_bytes: dict[str, int] = field(default_factory=dict)
    breakdown: Breakdown = field(default_factory=Breakdown)


@dataclass
class Throughput:
    """Speed over the measured steps (after the warm-up): seconds per step, per-second rates, MFU (0-1)."""

    step_time_s_p50: float | None = None
    step_time_s_p90: float | None = None
    timed_steps: int | None = None
    samples_per_s: float | None = None
    tokens_per_s: float | None = None  # every position, padding included
    tokens_per_s_nonpad: float | None = None
    tokens_per_s_loss: float | None = None  # positions that carry a loss
    mfu: float | None = None
    step_times_s: list[float] | None = None  # mode=profile: each measured step's seconds, in order


@dataclass
class Env:
    """Versions, commit and machine: what a figure needs to be reproduced."""

    python: str | None = None
    torch: str | None = None
    transformers: str | None = None
    peft: str | None = None
    accelerate: str | None = None
    ftbench: str | None = None
    git_commit: str | None = None
    device_name: str | None = None
    cuda: str | None = None
    device_memory_bytes: int | None = None
    precision: str | None = None
    gradient_checkpointing: bool | None = None
    attn_implementation: str | None = None
    world_size: int | None = None
    cpu_threads: int | None = None
    alloc_conf: str | None = None


SECTIONS: dict[str, type] = {"run": Run, "params": Params, "train": Train, "memory": Memory,
                             "throughput": Throughput, "env": Env}
# Keys every file must hold (older files may lack the others of a section: they read back as None).
REQUIRED: dict[str, tuple[str, ...]] = {
    "run": ("method", "model", "task", "seed", "mode", "output_dir", "started_at", "duration_s"),
    "params": ("total", "trainable", "trainable_pct"),
    "train": ("steps", "samples", "tokens", "loss_first", "loss_last", "loss_curve"),
    "memory": ("device", "load_allocated_bytes", "train_peak_allocated_bytes", "train_peak_reserved_bytes",
               "train_peak_active_bytes", "eval_peak_allocated_bytes", "step_reserved_p50_bytes",
               "step_reserved_p99_bytes", "cpu_peak_rss_bytes", "breakdown"),
    "throughput": ("step_time_s_p50", "step_time_s_p90", "samples_per_s", "tokens_per_s",
                   "tokens_per_s_nonpad", "tokens_per_s_loss", "mfu"),
    "env": ("python", "torch", "transformers", "peft", "accelerate", "ftbench", "git_commit", "device_name",
            "precision", "gradient_checkpointing", "world_size"),
}
BREAKDOWN = ("weights_bytes", "trainable_bytes", "master_bytes", "grad_bytes", "optimizer_state_bytes",
             "activations_bytes")
# Sections their owners write as JSON; absent from the file until written.
OPEN_SECTIONS = ("method", "plan", "protocol", "validation_history", "selection",
                 "export", "distributed", "harness", "engagement")


@dataclass
class Result:
    """One run's result.json. `plan` is the training schedule the job settled on (batch, micro-batch,
    accumulation, steps, lr, which key set each knob), not the memory planner's plan.json."""

    status: str = "failed"
    error: str | None = None  # one line; None when ok
    config: dict | None = None  # the resolved config
    metrics: dict[str, float] = field(default_factory=dict)  # '<split>/<name>' -> value
    run: Run = field(default_factory=Run)
    params: Params = field(default_factory=Params)
    train: Train = field(default_factory=Train)
    memory: Memory = field(default_factory=Memory)
    throughput: Throughput = field(default_factory=Throughput)
    env: Env = field(default_factory=Env)
    checkpoints: list[dict] = field(default_factory=list)  # [{step, path, bytes, write_s, removed}]: every one written
    resumed_from: dict | None = None  # {path, steps_before}; None: started at step 0
    method: dict | None = None  # the method's describe()
    plan: dict | None = None
    protocol: dict | None = None  # the task's protocol()
    validation_history: list[dict] | None = None  # [{step, metrics}]
    selection: dict | None = None  # {policy, metric, step, value}
    export: dict | None = None
    distributed: dict | None = None
    harness: dict | None = None  # lm-evaluation-harness scores (tasks/harness.py); eval.harness.tasks set
    engagement: dict | None = None  # measure/engagement.py: what the method claims to train that changed

    def to_json(self) -> dict[str, Any]:
        """The file's content: every fixed section, the open ones that were written; non-finite floats
        become null (JSON has no NaN)."""
        out: dict[str, Any] = {"schema": SCHEMA}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in OPEN_SECTIONS and value is None:
                continue
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return _jsonable(out)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        """A result from a file's content (as `to_json` wrote it, or an older schema-1 file: keys it lacks
        read as None, keys this version does not know are dropped)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k not in SECTIONS}
        for name, section in SECTIONS.items():
            values[name] = _section(section, data.get(name) or {})
        return cls(**values)


def _section(cls: type, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in data.items() if k in names}
    if cls is Memory:
        values["breakdown"] = _section(Breakdown, data.get("breakdown") or {})
    return cls(**values)


def write(result: Result, directory: Path) -> Path:
    """Write `result.json` atomically: readers never see half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    return files.write_atomic(directory / FILENAME, json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def problems(data: dict[str, Any]) -> list[str]:
    """What is missing or malformed in a result file's content (empty when valid)."""
    found = []
    if data.get("schema") != SCHEMA:
        found.append(f"schema is {data.get('schema')!r}, expected {SCHEMA}")
    if data.get("status") not in STATUSES:
        found.append(f"status {data.get('status')!r} is not one of {', '.join(STATUSES)}")
    if data.get("status") != "ok" and not data.get("error"):
        found.append("a run that is not ok must say why in 'error'")
    for key in ("error", "config", "metrics"):
        if key not in data:
            found.append(f"missing key '{key}'")
    for section, keys in REQUIRED.items():
        body = data.get(section)
        if not isinstance(body, dict):
            found.append(f"missing section '{section}'")
            continue
        found += [f"missing key '{section}.{key}'" for key in keys if key not in body]
    breakdown = (data.get("memory") or {}).get("breakdown")
    if isinstance(breakdown, dict):
        found += [f"missing key 'memory.breakdown.{k}'" for k in BREAKDOWN if k not in breakdown]
    if not isinstance(data.get("metrics"), dict):
        found.append("'metrics' must be a mapping of '<split>/<name>' to numbers")
    else:
        found += [f"metric key '{k}' is not '<split>/<name>'" for k in data["metrics"] if "/" not in k]
    return found


def load(path: Path) -> Result:
    """Read a result file (or the result.json in a directory), check it and type it.

    Raises UserError (unreadable, empty, truncated or invalid JSON) or ValueError (not a valid result),
    each naming the file."""
    path = Path(path)
    if path.is_dir() and path.name != FILENAME:  # a folder named result.json is refused as one (read_json)
        path = path / FILENAME
    data = files.read_json(path, "", "rerun that run (same command and hydra.run.dir) or move the file aside")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a JSON {type(data).__name__}, not a result (a JSON object)")
    issues = problems(data)
    if issues:
        raise ValueError(f"{path}: {issues[0]}")
    return Result.from_json(data)


# Where the metric loggers keep copies of a run's result.json (MLflow's local artifact store): not runs.
LOGGER_COPIES = ("mlartifacts",)


def find(paths: list[Path]) -> list[Path]:
    """Every result.json under the given files or directories, sorted; the copies a logger keeps as
    artifacts (`LOGGER_COPIES` folders) left out. A file given is a result when named result.json or,
    named by the user, any other `.json` but those in `OTHER_JSON`; every other file (what ftbench writes
    beside results: multirun.yaml, reports, logs) is passed over, so a glob over a sweep folder works."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found += [path] if path.name == FILENAME or (
                path.suffix == ".json" and not OTHER_JSON.fullmatch(path.name)) else []
        elif path.name not in LOGGER_COPIES:
            found += sorted(p for p in path.rglob(FILENAME) if not set(p.relative_to(path).parts) & set(LOGGER_COPIES))
    return found

"""The result.json contract that every report, sweep and check reads.

A run writes one file, atomically (temp file, then rename), also when it fails.
`skeleton()` gives every required key with null values so that a run that dies
early still leaves a valid file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ftbench import files

SCHEMA = 1
GiB = 2**30  # result.json counts bytes; tables and messages show GiB
STATUSES = ("ok", "failed", "oom", "nan", "canceled")
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
FILENAME = "result.json"


def skeleton() -> dict[str, Any]:
    result: dict[str, Any] = {"schema": SCHEMA, "status": "failed", "error": None, "config": None, "metrics": {}}
    for section, keys in REQUIRED.items():
        result[section] = {key: None for key in keys}
    result["memory"]["breakdown"] = {key: None for key in BREAKDOWN}
    result["train"]["loss_curve"] = []
    return result


def write(result: dict[str, Any], directory: Path) -> Path:
    """Write `result.json` atomically: readers never see half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    return files.write_atomic(directory / FILENAME, json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n")


def _jsonable(value: Any) -> Any:
    """Non-finite floats become null (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def problems(result: dict[str, Any]) -> list[str]:
    """What is missing or malformed in a result (empty when valid)."""
    found = []
    if result.get("schema") != SCHEMA:
        found.append(f"schema is {result.get('schema')!r}, expected {SCHEMA}")
    if result.get("status") not in STATUSES:
        found.append(f"status {result.get('status')!r} is not one of {', '.join(STATUSES)}")
    if result.get("status") != "ok" and not result.get("error"):
        found.append("a run that is not ok must say why in 'error'")
    for key in ("error", "config", "metrics"):
        if key not in result:
            found.append(f"missing key '{key}'")
    for section, keys in REQUIRED.items():
        body = result.get(section)
        if not isinstance(body, dict):
            found.append(f"missing section '{section}'")
            continue
        found += [f"missing key '{section}.{key}'" for key in keys if key not in body]
    breakdown = (result.get("memory") or {}).get("breakdown")
    if isinstance(breakdown, dict):
        found += [f"missing key 'memory.breakdown.{k}'" for k in BREAKDOWN if k not in breakdown]
    if not isinstance(result.get("metrics"), dict):
        found.append("'metrics' must be a mapping of '<split>/<name>' to numbers")
    else:
        found += [f"metric key '{k}' is not '<split>/<name>'" for k in result["metrics"] if "/" not in k]
    return found


def read(path: Path) -> dict[str, Any]:
    """Read a result file (or the result.json in a directory) and check it.

    Raises UserError (unreadable, empty, truncated or invalid JSON) or ValueError (not a valid result),
    each naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    result = files.read_json(path, "", "rerun that run (same command and hydra.run.dir) or move the file aside")
    if not isinstance(result, dict):
        raise ValueError(f"{path}: holds a JSON {type(result).__name__}, not a result (a JSON object)")
    issues = problems(result)
    if issues:
        raise ValueError(f"{path}: {issues[0]}")
    return result


# Where the metric loggers keep copies of a run's result.json (MLflow's local artifact store): not runs.
LOGGER_COPIES = ("mlartifacts",)


def find(paths: list[Path]) -> list[Path]:
    """Every result.json under the given files or directories, sorted; the copies a logger keeps as
    artifacts (`LOGGER_COPIES` folders) left out."""
    found: list[Path] = []
    for path in map(Path, paths):
        found += [path] if path.is_file() else sorted(
            p for p in path.rglob(FILENAME) if not set(p.relative_to(path).parts) & set(LOGGER_COPIES))
    return found

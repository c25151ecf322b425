"""What every backend shares: where a job logs (the sweep's or the run's folder, its name in it), the
no-op logger, the one warning line of a failing backend, and result.json's figures flattened."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

log = logging.getLogger("ftbench")


@dataclass(frozen=True)
class Where:
    """Where a job logs. `folder`: the sweep folder of a multirun (one TensorBoard logdir, one MLflow
    store and experiment for all its jobs) or the run folder; `job`: this job's name in it (the sweep's
    subfolder, e.g. `method=lora`, or `<method>-<task>`); `experiment`: the sweep folder's name or "ftbench";
    `output_dir`: the job's own folder (result.json)."""

    folder: Path
    job: str
    experiment: str
    output_dir: Path


def where(run_name: str, output_dir: Path) -> Where:
    """The grouping of this job: a Hydra multirun's sweep folder when there is one, else the run folder."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep = Path(HydraConfig.get().sweep.dir)
        return Where(sweep, output_dir.name, sweep.name, output_dir)
    return Where(output_dir, run_name, "ftbench", output_dir)


class NullLogger:
    """Logs nothing: `logger=none`, and every rank but the first."""

    def log(self, values: dict[str, Any], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def close(self, status: str) -> None:
        pass


def warn(name: str, exc: BaseException) -> None:
    """The one line a failing backend costs."""
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    log.warning(f"logger.{name}: {type(exc).__name__}: {text}; the run goes on without it")


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}; lists stay whole (one value each)."""
    if not isinstance(values, dict):
        return {prefix: values}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def figures(result: dict[str, Any]) -> dict[str, float]:
    """The numeric figures of a result.json a logger keeps at the end of a run: metrics as they are;
    memory (bytes), throughput, params and the harness scores under their section's name
    (`memory/breakdown/weights_bytes`, `harness/ftbench_math/acc`)."""
    found = {k: v for k, v in (result.get("metrics") or {}).items() if number(v)}
    sections = {"memory": result.get("memory"), "throughput": result.get("throughput"), "params": result.get("params"),
                "harness": (result.get("harness") or {}).get("scores")}
    for name, section in sections.items():
        found.update({k.replace(".", "/"): v for k, v in flatten(section or {}, name).items() if number(v)})
    return found


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

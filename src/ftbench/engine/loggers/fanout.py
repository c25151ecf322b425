"""One logger over the selected backends; a backend that fails costs one warning line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftbench.engine.loggers.base import NullLogger, Where, warn, where
from ftbench.engine.loggers.mlflow_run import MlflowRun
from ftbench.engine.loggers.tensorboard_run import TensorBoardRun
from ftbench.engine.loggers.wandb_run import WandbRun


class Loggers(NullLogger):
    """The selected backends behind one logger. A call a backend raises on is reported in one warning
    line and that backend is dropped for the rest of the job."""

    def __init__(self, backends: dict[str, Any]):
        self.backends = backends

    def _each(self, call: str, *args) -> None:
        for name, backend in list(self.backends.items()):
            try:
                getattr(backend, call)(*args)
            except Exception as exc:  # a logger never stops the run
                warn(name, exc)
                del self.backends[name]

    def log(self, values: dict[str, Any], step: int) -> None:
        self._each("log", values, step)

    def summary(self, values: dict[str, Any]) -> None:
        self._each("summary", values)

    def close(self, status: str) -> None:
        self._each("close", status)


BACKENDS = {"wandb": WandbRun, "tensorboard": TensorBoardRun, "mlflow": MlflowRun}  # logger.<name>: its class


def make_logger(cfg, run_name: str, output_dir: Path, config: dict[str, Any]):
    """The backends `cfg` (the `logger` config) selects, started for this job; a NullLogger when none is.
    `config`: the resolved run config, logged as the run's parameters (flattened: `optim.lr`)."""
    selected = [name for name in BACKENDS if cfg.get(name) is not None]
    if not selected:
        return NullLogger()
    at, backends = where(run_name, output_dir), {}
    for name in selected:
        try:
            backends[name] = BACKENDS[name](cfg[name], at, config)
        except Exception as exc:
            warn(name, exc)
    return Loggers(backends)


def log_report(cfg, folder: Path, files: dict[str, Path]) -> None:
    """Keep a sweep's comparison report (`files`: report.md, .csv, .png) beside its runs: an MLflow run
    named `comparison` in the sweep's experiment, a TensorBoard `comparison` subdir holding the table."""
    at = Where(folder, "comparison", folder.name, folder)
    for name in ("tensorboard", "mlflow"):
        if cfg.get(name) is None:
            continue
        try:
            BACKENDS[name](cfg[name], at, {}).keep_report(files)
        except Exception as exc:
            warn(name, exc)

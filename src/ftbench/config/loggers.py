"""The metric loggers' schemas (the `logger` group: wandb, TensorBoard, MLflow) and the check that an optional
extra a knob needs is installed (`require_extra`, also for the harness's lm_eval)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Optional

from ftbench.errors import one_of, require

EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "lm_eval": "harness"}  # module -> ftbench extra


def require_extra(module: str, key: str) -> None:
    """Raise a `UserError` on `key` naming the extra to install when `module` is not importable (checked
    without importing it)."""
    require(importlib.util.find_spec(module) is not None, key,
            f"needs {module}, which is not installed; pip install 'ftbench[{EXTRAS[module]}]'")


@dataclass
class WandbConfig:
    project: str = "ftbench"
    entity: Optional[str] = None
    mode: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)

    def check(self, key: str) -> None:
        if self.mode is not None:
            one_of(self.mode, ("online", "offline", "disabled"), f"{key}.mode")


@dataclass
class TensorBoardConfig:
    dir: Optional[str] = None  # null: <sweep folder, or run folder>/tensorboard

    def check(self, key: str) -> None:
        require_extra("tensorboard", key)


@dataclass
class MlflowConfig:
    tracking_uri: Optional[str] = None  # null: sqlite:///<sweep folder, or run folder>/mlflow.db
    experiment: Optional[str] = None  # null: the sweep folder's name, "ftbench" for a single run
    timeout_s: float = 10.0  # a server that does not answer within it is given up (one warning line)

    def check(self, key: str) -> None:
        require_extra("mlflow", key)
        require(self.timeout_s > 0, f"{key}.timeout_s", "must be > 0 (seconds)")


@dataclass
class LoggerConfig:
    """The metric loggers of a run: each selected option of the `logger` group fills its own key
    (`logger=[tensorboard,mlflow]` sets `logger.tensorboard` and `logger.mlflow`); null = not used."""

    wandb: Optional[WandbConfig] = None
    tensorboard: Optional[TensorBoardConfig] = None
    mlflow: Optional[MlflowConfig] = None

    def check(self, key: str) -> None:
        for name in ("wandb", "tensorboard", "mlflow"):
            if getattr(self, name) is not None:
                getattr(self, name).check(f"{key}.{name}")

"""Metric loggers: none (default) or wandb, imported only when asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftbench.errors import UserError


class NullLogger:
    def log(self, values: dict[str, Any], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def close(self, status: str) -> None:
        pass


class WandbLogger(NullLogger):
    """One wandb run per job (a multirun never reuses a run); WANDB_MODE=offline works."""

    def __init__(self, cfg, run_name: str, output_dir: Path, config: dict[str, Any]):
        try:
            import wandb
        except ImportError as exc:
            raise UserError("logger", "wandb is not installed; pip install wandb, or use logger=none") from exc
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, group=cfg.group,
                              tags=list(cfg.tags), name=run_name, dir=str(output_dir), config=config,
                              reinit="create_new")

    def log(self, values: dict[str, Any], step: int) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update({k: v for k, v in values.items() if v is not None})

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "ok" else 1)


def make_logger(cfg, run_name: str, output_dir: Path, config: dict[str, Any]):
    return WandbLogger(cfg, run_name, output_dir, config) if cfg.name == "wandb" else NullLogger()

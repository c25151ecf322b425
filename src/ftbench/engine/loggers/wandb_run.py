"""Weights & Biases: one run per job (a multirun never reuses a run); WANDB_MODE=offline works."""

from __future__ import annotations

from typing import Any

from ftbench.engine.loggers.base import NullLogger, Where


class WandbRun(NullLogger):
    """A wandb run named after the job, its files under the job's folder, the resolved config as its
    config; a sweep's runs grouped under the sweep folder's name unless `group` is set. Raises
    ImportError when wandb is not installed (a core dependency)."""

    def __init__(self, cfg, at: Where, config: dict[str, Any]):
        import wandb

        sweep = at.experiment if at.folder != at.output_dir else None
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, group=cfg.group or sweep,
                              tags=list(cfg.tags), name=at.job, dir=str(at.output_dir), config=config,
                              reinit="create_new")

    def log(self, values: dict[str, Any], step: int) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update({k: v for k, v in values.items() if v is not None})

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "ok" else 1)

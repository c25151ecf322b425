"""The task registry: family -> class (the schemas: task_configs.py). A task YAML names its family."""

from __future__ import annotations

from importlib import import_module

from ..task_configs import CONFIGS
from .base import EvalContext, Task, TaskConfig

REGISTRY: dict[str, str] = {
    "synthetic": "ftbench.tasks.synthetic:SyntheticTask",
    "glue": "ftbench.tasks.glue:GlueTask",
    "instruct": "ftbench.tasks.instruct:AlpacaTask",
    "reasoning": "ftbench.tasks.reasoning:ReasoningTask",
    "synthetic_lm": "ftbench.tasks.synthetic_lm:SyntheticLMTask",
}


def _load(path: str):
    module, _, attr = path.partition(":")
    return getattr(import_module(module), attr)


def task_config_classes() -> dict[str, type[TaskConfig]]:
    """Task family -> its schema (task_configs.py: torch-free)."""
    return dict(CONFIGS)


def task_class(family: str) -> type[Task]:
    return _load(REGISTRY[family])


def build_task(cfg, tokenizer, seed: int) -> Task:
    from omegaconf import OmegaConf

    typed = OmegaConf.to_object(cfg) if not isinstance(cfg, TaskConfig) else cfg
    return _load(REGISTRY[typed.family])(typed, tokenizer, seed)


__all__ = ["EvalContext", "Task", "TaskConfig", "build_task", "task_class"]

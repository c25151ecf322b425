"""Tasks: data sets, their tokenization, collation and evaluation, by family (torch-free registry).

A task YAML (`conf/task/<name>.yaml`) names its family; the family's schema lives in `config.py`
(torch-free, what composing a config imports) and its class in its own module (imported when a job
builds the task). `harness` scores a trained model with lm-evaluation-harness (`eval.harness`) over the
offline task YAMLs in `harness_tasks/`. This package may import `ftbench.errors`, `ftbench.config`,
`ftbench.progress`, `ftbench.models` (tokenizers, the hub) and `ftbench.engine.batches`.
"""

from __future__ import annotations

from importlib import import_module

from ftbench.tasks.config import CONFIGS, TaskConfig

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
    """Task family -> its schema (config.py: torch-free)."""
    return dict(CONFIGS)


def task_class(family: str):
    """The `Task` subclass of `family` (imports its module, and torch)."""
    return _load(REGISTRY[family])


def build_task(cfg, tokenizer, seed: int):
    """The task of config `cfg` (a DictConfig or its schema object) over `tokenizer`; raises UserError when
    task.max_length left it nothing to train on (Task.check_sets)."""
    from omegaconf import OmegaConf

    typed = OmegaConf.to_object(cfg) if not isinstance(cfg, TaskConfig) else cfg
    task = _load(REGISTRY[typed.family])(typed, tokenizer, seed)
    task.check_sets()
    return task


__all__ = ["REGISTRY", "build_task", "task_class", "task_config_classes"]

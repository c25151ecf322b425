"""Composing a run's config: where the Hydra tree is, and the schemas Hydra checks it against.

Torch-free: `ftbench --help`, `--cfg job` and the config checks import only the schemas (the method
and task registries' `config.py` modules), never a method's or a task's code.
"""

from __future__ import annotations

import re

from ftbench import methods, tasks
from ftbench.config.schema import Config
from ftbench.config.tree import config_dir


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent): the run's (`ftbench_schema`), and one
    per registered method (`schema/method/<name>`) and task family (`schema/task/<family>`). A method
    registered without a `conf/method/<name>.yaml` (one a test or a plugin registers at run time) gets
    its schema as the `method/<name>` option itself, so `method=<name>` composes its defaults."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="ftbench_schema", node=Config)
    yamls = config_dir() / "method"
    for name, schema in methods.config_classes().items():
        store.store(group="schema/method", name=name, node=schema)
        if not (yamls / f"{name}.yaml").is_file():
            store.store(group="method", name=name, node=schema)
    for family, schema in tasks.task_config_classes().items():
        store.store(group="schema/task", name=family, node=schema)


def pinned(key: str, value: str) -> str:
    """The override `key=value`, the value quoted for Hydra's parser where it holds more than a plain path (a
    folder named `a,b` is not a sweep over two, nor `a~b` a syntax error)."""
    if re.fullmatch(r"[\w/.\-+:@%]*", value, flags=re.ASCII):
        return f"{key}={value}"
    return f"{key}='" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value) + "'"

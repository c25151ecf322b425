"""The method registry (torch-free): name -> its schema and its class.

A method is a folder here (`methods/<folder>/`: `config.py` its torch-free schema, `method.py` the
`Method` subclass, with its selection code beside them) whose `__init__.py` calls `register` once per
name it offers (`block_rotation/` offers hift, badam and lisa), plus its `conf/method/<name>.yaml`
(docs/adding-a-method.md). Importing this package imports every folder's `__init__` (schemas only), so a
new folder is found without editing a list; the method's class is imported when a job builds it. Every
list of methods in ftbench, its scripts and its tests is `names()`, and what those checks need to know
of a method is declared on its schema (methods/config.py) and class (methods/base.py). A name registered
at run time without a YAML composes from its schema alone (job/compose.py).

This package may import `ftbench.errors` and its own schemas at import time; `build_method` imports
the method's module (torch) when called.
"""

from __future__ import annotations

import pkgutil
from dataclasses import dataclass
from importlib import import_module

from ftbench.methods.config import MethodConfig


@dataclass(frozen=True)
class Registration:
    """One method name: its schema (what `conf/method/<name>.yaml` composes against) and where its
    class lives ("module:Class", imported only when a job builds the method)."""

    name: str
    config: type[MethodConfig]
    method: str


_REGISTRY: dict[str, Registration] = {}


def register(name: str, config: type[MethodConfig], method: str) -> None:
    """Offer method `name` (its YAML is `conf/method/<name>.yaml`); `method` is "module:Class".
    Registering a name twice with another schema or class raises ValueError."""
    entry = Registration(name, config, method)
    if _REGISTRY.get(name, entry) != entry:
        raise ValueError(f"method {name!r} is registered twice ({_REGISTRY[name].method} and {method})")
    _REGISTRY[name] = entry


def unregister(name: str) -> None:
    """Forget `name` (tests that register a method of their own remove it again)."""
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    """Every registered method name, sorted."""
    return sorted(_REGISTRY)


def config_class(name: str) -> type[MethodConfig]:
    return _REGISTRY[name].config


def config_classes() -> dict[str, type[MethodConfig]]:
    """Method name -> its schema (torch-free), for Hydra's config store."""
    return {name: entry.config for name, entry in sorted(_REGISTRY.items())}


def method_class(name: str):
    """The `Method` subclass of `name` (imports its module, and torch)."""
    module, _, attr = _REGISTRY[name].method.partition(":")
    return getattr(import_module(module), attr)


def build_method(cfg):
    """Instantiate the method named by `cfg.name` from its config (a DictConfig or its schema object)."""
    from omegaconf import OmegaConf

    typed = cfg if isinstance(cfg, MethodConfig) else OmegaConf.to_object(cfg)
    return method_class(typed.name)(typed)


for _folder in pkgutil.iter_modules(__path__):
    if _folder.ispkg:
        import_module(f"{__name__}.{_folder.name}")  # its __init__ registers the names it offers

__all__ = ["Registration", "build_method", "config_class", "config_classes", "method_class", "names", "register",
           "unregister"]

"""The method registry: name -> class. Adding a method = its schema in method_configs.py, one
module, one line here, one YAML in conf/method/, one row in tests/test_methods.py (README)."""

from __future__ import annotations

from importlib import import_module

from .base import Method, MethodConfig, MethodContext

REGISTRY: dict[str, str] = {
    "full": "ftbench.methods.full:FullFineTuning",
    "lora": "ftbench.methods.lora:Lora",
    "hift": "ftbench.methods.block_rotation:BlockRotation",
    "badam": "ftbench.methods.block_rotation:BlockRotation",
    "lisa": "ftbench.methods.block_rotation:BlockRotation",
    "meprop": "ftbench.methods.meprop:MeProp",
    "sparsegrad": "ftbench.methods.sparsegrad:SparseGrad",
    "s2ft": "ftbench.methods.s2ft:S2ft",
    "sift": "ftbench.methods.sift:Sift",
}


def method_class(name: str) -> type[Method]:
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(import_module(module), attr)


def build_method(cfg) -> Method:
    """Instantiate the method named by `cfg.name` from its (typed) config."""
    from omegaconf import OmegaConf

    typed = OmegaConf.to_object(cfg) if not isinstance(cfg, MethodConfig) else cfg
    return method_class(typed.name)(typed)


__all__ = ["Method", "MethodConfig", "MethodContext", "REGISTRY", "build_method", "method_class"]

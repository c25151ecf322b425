"""A method that ships nowhere: the tests register it at run time to show that a new method is picked up
by every table-driven check without editing a list (tests/test_registry.py).

It trains the normalisation scales and the biases, and the new task head (BitFit with the norms, as a
toy): a schema and a `Method` subclass, registered with `ftbench.methods.register`; it has no YAML, so
its schema is the `method=toy` option itself (job/compose.py). With FTBENCH_TEST_TOY_METHOD=1 in the
environment, tests/helpers.py registers it before any test module builds its table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ftbench import methods
from ftbench.methods.base import Method, MethodContext, Trains
from ftbench.methods.config import MethodConfig
from ftbench.models.architecture import architecture

NAME = "toy"
ENV = "FTBENCH_TEST_TOY_METHOD"


@dataclass
class ToyConfig(MethodConfig):
    name: str = NAME
    lr: float = 1e-3
    quick: ClassVar[tuple[str, ...]] = ("method.lr=1e-2",)


class Toy(Method):
    config_class = ToyConfig

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        heads = architecture(model).task_heads(ctx.head)
        for name, param in model.named_parameters():
            param.requires_grad_(param.ndim == 1 or name.split(".")[0] in heads)
        return model

    def trains(self, model: nn.Module, head: str) -> Trains:
        """Every 1-D parameter may change (an attention key's bias gets no gradient: softmax ignores a
        shift shared by all keys); the norms' and the new head's parameters must."""
        heads = architecture(model).task_heads(head)
        named = dict(model.named_parameters())
        dense = {n for n in named if n.split(".")[0] in heads}
        norms = {f"{m}.{n}" for m, module in model.named_modules() if "Norm" in type(module).__name__
                 for n, _ in module.named_parameters(recurse=False)}
        return Trains({n for n, p in named.items() if p.ndim == 1} | dense, norms | dense)


def register() -> None:
    methods.register(NAME, ToyConfig, f"{__name__}:Toy")


def unregister() -> None:
    """Forget the method, and its options in Hydra's ConfigStore (job/compose.py put them there). The
    store offers no removal: its `repo` dict (group -> name.yaml -> node) is edited directly."""
    from hydra.core.config_store import ConfigStore

    methods.unregister(NAME)
    repo = ConfigStore.instance().repo
    for group in (repo.get("method", {}), repo.get("schema", {}).get("method", {})):
        group.pop(f"{NAME}.yaml", None)

"""Engagement of one job (measure/engagement.py counts): which parameters to watch and their units.

The watched parameters are those the method says training may change (`Method.trains`), its fp32
masters excluded (they mirror elements of the dense weights, which are watched), FSDP's sharded ones
too (`watched` 0 then says nothing was counted); the units come from the
architecture (models/architecture.py): `embedding`, `layer <i>` (`layer <stack>.<i>` for several
stacks), `head`, and `other` (final norms, poolers).
"""

from __future__ import annotations

from torch import nn

from ftbench.measure.engagement import Watch
from ftbench.methods.base import Method
from ftbench.models.architecture import architecture


def watch(model: nn.Module, method: Method, head: str, masters: list) -> Watch:
    """Fingerprint what `method` may train in `model` before training."""
    may = method.trains(model, head).may
    master_ids = {id(p) for p in masters}
    # FSDP's sharded parameters (DTensors) are left out: each rank holds a part, and only rank 0 writes
    named = {n: p for n, p in model.named_parameters()
             if n in may and id(p) not in master_ids and not hasattr(p, "to_local")}
    return Watch(named, units(model))


def units(model: nn.Module):
    """`unit_of(parameter name) -> unit name` for `model` (a PEFT wrapper: its base model's architecture),
    the longest matching module path first."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = next(name for name, module in model.named_modules() if module is inner)
    arch = architecture(inner)
    several = len(arch.stacks) > 1
    prefixes = [(e, "embedding") for e in arch.embeddings]
    prefixes += [(b.name, f"layer {b.stack}.{b.index}" if several else f"layer {b.index}") for b in arch.blocks]
    prefixes += [(h, "head") for h in arch.heads]
    prefixes = sorted(((f"{base}.{p}" if base else p, unit) for p, unit in prefixes), key=lambda pair: -len(pair[0]))

    def unit_of(name: str) -> str:
        return next((unit for prefix, unit in prefixes if name.startswith(prefix + ".")), "other")

    return unit_of

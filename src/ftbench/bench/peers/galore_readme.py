"""Peer of GaLore: galore-torch's `GaLoreAdamW` over the parameter groups its README builds (the
`nn.Linear` weights whose module name holds "attn" or "mlp" projected with ftbench's rank,
update_proj_gap, scale and proj_type; every other weight in a plain group first)."""

from __future__ import annotations

from importlib.metadata import version

from torch import nn

from ftbench.bench.peers.loop import Trainable


def readme_groups(model: nn.Module, spec: dict, keys: tuple[str, ...]) -> list[dict]:
    """The README's two groups: the rest, then the attention and MLP linears with the library's `keys`."""
    projected = [m.weight for name, m in model.named_modules()
                 if isinstance(m, nn.Linear) and any(t in name for t in ("attn", "mlp"))]
    ids = {id(p) for p in projected}
    rest = [p for p in model.parameters() if id(p) not in ids]
    settings = {key: spec["method"][key] for key in keys}
    return [{"params": rest}, {"params": projected, **settings}]


def prepare(model: nn.Module, spec: dict) -> Trainable:
    from galore_torch import GaLoreAdamW

    groups = readme_groups(model, spec, ("rank", "update_proj_gap", "scale", "proj_type"))
    optimizer = GaLoreAdamW(groups, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"],
                            weight_decay=spec["weight_decay"], no_deprecation_warning=True)
    return Trainable(model, optimizer, [optimizer], package=f"galore-torch {version('galore-torch')}")

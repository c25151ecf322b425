"""Peer of APOLLO: apollo-torch's `APOLLOAdamW` over the parameter groups its README builds (the
attention and MLP linears projected with ftbench's rank, scale, scale_type, proj and
update_proj_gap; every other weight in a plain group first)."""

from __future__ import annotations

from importlib.metadata import version

from torch import nn

from ftbench.bench.peers.galore_readme import readme_groups
from ftbench.bench.peers.loop import Trainable


def prepare(model: nn.Module, spec: dict) -> Trainable:
    from apollo_torch import APOLLOAdamW

    method = spec["method"]
    groups = readme_groups(model, spec, ("rank", "update_proj_gap", "scale", "proj_type", "proj", "scale_type"))
    optimizer = APOLLOAdamW(groups, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"],
                            weight_decay=spec["weight_decay"], scale_front=method["scale_front"],
                            disable_nl=not method["norm_growth_limit"])
    return Trainable(model, optimizer, [optimizer], package=f"apollo-torch {version('apollo-torch')}")

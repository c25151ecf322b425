"""Peer of Adam-mini: the adam-mini package's `Adam_mini` as its README builds it, from the model's
named parameters and its config's hidden size and head counts (the library's own name rules pick
the blocks: ftbench's come from architecture.py)."""

from __future__ import annotations

from importlib.metadata import version

from torch import nn

from ftbench.bench.peers.loop import Trainable


def prepare(model: nn.Module, spec: dict) -> Trainable:
    from adam_mini import Adam_mini

    config = model.config
    optimizer = Adam_mini(named_parameters=model.named_parameters(), lr=spec["lr"], betas=tuple(spec["betas"]),
                          eps=spec["eps"], weight_decay=spec["weight_decay"], dim=config.hidden_size,
                          n_heads=config.num_attention_heads, n_kv_heads=config.num_key_value_heads, verbose=False)
    return Trainable(model, optimizer, [optimizer], package=f"adam-mini {version('adam-mini')}")

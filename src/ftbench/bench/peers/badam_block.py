"""Peer of BAdam: the `badam` package's `BlockOptimizer` around AdamW, as its README shows.

The blocks are badam's own (one per decoder layer; the embedding, the final norm
and the LM head frozen: include_embedding=False, include_lm_head=False). The
switch order is pinned to `ascending` (the first block is layer 0, as ftbench's
`order=down2up`): with gradient checkpointing a step's backward reaches down to
the active layer, so both sides must train the same one to cost the same.
"""

from __future__ import annotations

from importlib.metadata import version

from torch import nn

from ftbench.bench.peers.loop import Trainable, adamw


def prepare(model: nn.Module, spec: dict) -> Trainable:
    from badam import BlockOptimizer

    base = adamw(list(model.parameters()), spec)
    optimizer = BlockOptimizer(base_optimizer=base, named_parameters_list=list(model.named_parameters()),
                               switch_block_every=spec["method"]["steps_per_block"], switch_mode="ascending",
                               verbose=0)
    # BlockOptimizer keeps its fp32 copies of the active block (and their Adam state) in `base`.
    return Trainable(model, optimizer, [base], package=f"badam {version('badam')}")

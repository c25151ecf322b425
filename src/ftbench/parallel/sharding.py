"""Sharded data parallel training: `hardware.shard=fsdp` (PyTorch's FSDP2, `fully_shard`).

Each rank keeps 1/world of every weight, gradient and optimizer state; a layer's
weights are all-gathered right before its forward and backward and freed after,
and gradients are reduce-scattered during the backward. It buys memory (the
weights, gradients and AdamW state of full fine-tuning divide by the world size)
for traffic: one all-gather per layer in the forward and one in the backward,
and a reduce-scatter of its gradient, per micro-batch.

Sound for full fine-tuning and LoRA: what trains is whole parameters, sharded
along their first dimension like everything else. The other methods refuse at
compose time (their schema's `fsdp_refusal`, checked by `config.schema.check_sharding`):
their trainable part is not a whole parameter or changes during the run, and they
already hold little per rank.

FSDP runs with a gradient divide factor of 1: the loss of each micro-batch is
already weighted by its share of the global batch (train.py), so the
reduce-scattered sum is the one-process gradient.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ftbench.models.architecture import architecture
from ftbench.models.loading import save_merged
from ftbench.parallel import distributed


def shard(model: nn.Module, cfg) -> bool:
    """Apply FSDP2 to every block of every layer stack, then to the whole model (the embeddings and
    heads); return whether it did (hardware.shard=fsdp on more than one process)."""
    if cfg.hardware.shard != "fsdp" or distributed.world_size() == 1:
        return False
    from torch.distributed.fsdp import FSDPModule, fully_shard

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps the HF model
    for block in architecture(inner).blocks:
        fully_shard(inner.get_submodule(block.name))
    fully_shard(model)
    for module in model.modules():  # each sharded module reduces its own parameters
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # a sum: the losses are already weighted by the global batch
            module.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM, which a factor asks)
    return True


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight whole, on the CPU, on rank 0 (empty elsewhere); a collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export(model: nn.Module, tokenizer, path: Path, state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Rank 0 writes what `state` (full_state) holds: full fine-tuning a dense checkpoint
    (`from_pretrained` loads it); LoRA its adapter (PEFT's `from_pretrained` re-applies it; merge
    it with `merge_and_unload`)."""
    path.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config"):
        model.save_pretrained(path / "adapter", state_dict=state)
        return {"adapter": str(path / "adapter")}
    return {"merged": save_merged(model, tokenizer, path / "merged", state_dict=state)}

"""Peer of LoRA: PEFT's `get_peft_model` with ftbench's rank, alpha, dropout, targets and bias."""

from __future__ import annotations

from torch import nn

from ftbench.bench.peers.loop import Trainable, adamw


def prepare(model: nn.Module, spec: dict) -> Trainable:
    import peft
    from peft import LoraConfig, get_peft_model

    lora = spec["method"]
    targets = lora["target_modules"]
    config = LoraConfig(task_type="CAUSAL_LM", r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=targets if isinstance(targets, str) else list(targets), bias=lora["bias"])
    model = get_peft_model(model, config)
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], spec)
    return Trainable(model, optimizer, [optimizer], package=f"peft {peft.__version__}")

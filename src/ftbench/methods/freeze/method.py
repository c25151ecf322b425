"""Freeze tuning: the last `layers` blocks of each stack (models/architecture.py) and the new task head
train densely; everything else (the embeddings, the lower blocks, a causal LM's pretrained head) is
frozen, as LLaMA-Factory's freeze tuning (`freeze_trainable_layers: 2`, `freeze_trainable_modules: all`)
does it. No paper of its own: it is the classic partial fine-tuning baseline (e.g. Lee et al., 2019,
"What Would Elsa Do? Freezing Layers During Transformer Fine-Tuning").

Memory beyond the weights: gradients, fp32 masters (bf16 weights) and AdamW's two moments for the
trained blocks only, and activations saved for the backward of the trained blocks only (autograd
stops at the first trained block: nothing below it needs a gradient).
"""

from __future__ import annotations

from torch import nn

from ftbench.errors import UserError
from ftbench.methods.base import Method, MethodContext, Trains
from ftbench.methods.freeze.config import FreezeConfig
from ftbench.models.architecture import architecture


class Freeze(Method):
    config_class = FreezeConfig

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        trained = self.trained_modules(model, ctx.head)
        for name, param in model.named_parameters():
            param.requires_grad_(any(name.startswith(module + ".") for module in trained))
        self.trained = trained
        return model

    def trained_modules(self, model: nn.Module, head: str) -> list[str]:
        """Module paths that train: the last `layers` blocks of every stack, and the task heads. Raises
        UserError('method') when ftbench finds no stack of blocks in the model, UserError('method.layers') when
        a stack has fewer blocks than `layers` (it would train them all, and result.json misreport it)."""
        arch = architecture(model)
        if not arch.blocks:
            raise UserError("method", f"freeze cannot serve this {arch.model_type} model: ftbench finds no stack of "
                            "repeated blocks in it; use method=full or lora")
        stacks = {s: [b for b in arch.blocks if b.stack == s] for s in sorted({block.stack for block in arch.blocks})}
        depth = min(len(blocks) for blocks in stacks.values())
        if self.cfg.layers > depth:
            raise UserError("method.layers", f"{self.cfg.layers} is more than the {depth} blocks of this model's "
                            f"{'shortest ' if len(stacks) > 1 else ''}layer stack; give at most {depth} "
                            f"(method.layers={depth} trains every block)")
        last = [b.name for blocks in stacks.values() for b in blocks[-self.cfg.layers:]]
        return [*last, *arch.task_heads(head)]

    def trains(self, model: nn.Module, head: str) -> Trains:
        trained = self.trained_modules(model, head)
        names = {n for n, _ in model.named_parameters() if any(n.startswith(m + ".") for m in trained)}
        return Trains(names, names)

    def describe(self, model: nn.Module) -> dict:
        return {"name": "freeze", "layers": self.cfg.layers, "trains": self.trained,
                "masters": "fp32" if self.masters.pairs else "none: the optimizer steps the weights in their dtype"}

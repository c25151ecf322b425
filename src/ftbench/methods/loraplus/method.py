"""LoRA+ through PEFT's `peft.optimizers.create_loraplus_optimizer`, never a copy of it.

LoRA+ (Hayou et al., 2024, §3, Eq. 3 and Prop. 2) shows that with one learning rate for both
adapter matrices B (zero-initialised, d_out x r) and A (r x d_in), feature learning is inefficient
at large width, and sets η_B = λ η_A with λ >> 1 (the paper's default 2^4). PEFT's helper puts A in a
group at `lr`, B (and every 1-D tensor, e.g. the head's bias) at `lr x lr_ratio`, LoRA on embedding
layers at `lr_embedding`; the optimizer is the run's own (`optim.name`: AdamW or 8-bit AdamW), so
the memory is LoRA's exactly: only the step sizes differ.
"""

from __future__ import annotations

import torch

from ftbench.engine.optim import make_optimizer
from ftbench.methods.lora.method import Lora
from ftbench.methods.loraplus.config import LoraPlusConfig


class LoraPlus(Lora):
    config_class = LoraPlusConfig

    def build_optimizer(self, groups: list[dict], optim_cfg, lr: float) -> torch.optim.Optimizer:
        """PEFT's LoRA+ groups over the prepared model (`groups`, the plain split, is not used), built by the
        run's optimizer (fp32 masters for low-precision tensors, as every method's)."""
        from peft.optimizers import create_loraplus_optimizer

        def build(loraplus_groups: list[dict], lr: float) -> torch.optim.Optimizer:
            return make_optimizer(self.with_masters([g for g in loraplus_groups if g["params"]]), optim_cfg, lr)

        optimizer = create_loraplus_optimizer(self.peft_model, build, lr=lr, loraplus_lr_ratio=self.cfg.lr_ratio,
                                              loraplus_lr_embedding=self.cfg.lr_embedding,
                                              loraplus_weight_decay=optim_cfg.weight_decay)
        self.masters.attach(optimizer)
        return optimizer

    def describe(self, model) -> dict:
        return {**super().describe(model), "lr_ratio": self.cfg.lr_ratio}

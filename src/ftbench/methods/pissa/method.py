"""PiSSA through PEFT (`LoraConfig(init_lora_weights="pissa" | "pissa_niter_N")`), never a copy of it.

PiSSA (Meng et al., 2024, Eq. 2-4) takes the SVD W = U S V^T of each adapted weight, starts the
adapter from its r principal components (A = S_r^1/2 V_r^T, B = U_r S_r^1/2) and replaces the frozen
base weight by the residual W_res = W - BA, so the model's output is unchanged at step 0 and the
adapter trains the directions that carry most of W. `niter: N` uses a randomized SVD of N subspace
iterations (Halko et al., 2011: PEFT's `pissa_niter_N`); 0 the full SVD.

It changes the base weights, so an adapter trained here does not apply to the original base as it is.
The export gives (1) the merged model (W_res + BA = the trained weight, plain `from_pretrained`) and (2)
the adapter converted to a plain LoRA adapter of rank 2r over the *original* base (PEFT's
`save_pretrained(..., path_initial_model_for_weight_conversion=...)`: ΔW = BA - B0 A0), which
`PeftModel.from_pretrained` loads over the unmodified base model. The initial adapter B0, A0 is
kept on the host from `prepare` for that conversion (one adapter's bytes; it is recomputed by the same
`prepare` on a resume, the SVD being deterministic on the same weights and seed).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftbench.errors import UserError
from ftbench.methods.base import MethodContext
from ftbench.methods.lora.method import Lora, adapted
from ftbench.methods.pissa.config import PissaConfig


class Pissa(Lora):
    config_class = PissaConfig

    def adapter_options(self) -> dict[str, Any]:
        return {"init_lora_weights": "pissa" if self.cfg.niter == 0 else f"pissa_niter_{self.cfg.niter}"}

    def check_model(self, model: nn.Module, head: str) -> None:
        """LoRA's target check, then method.r against every weight PEFT will adapt (`adapted`), before its SVD
        of each: raises UserError('method.r') when r exceeds an adapted weight's smaller side, for its SVD has no
        more components, and PEFT would cut the adapter silently."""
        super().check_model(model, head)
        sides = [(min(m.weight.shape), path) for path, m in adapted(model, self.cfg.target_modules, head)]
        side, path = min(sides, default=(self.cfg.r, None))  # none: PEFT refuses such targets itself at the wrap
        if self.cfg.r > side:
            raise UserError("method.r", f"{self.cfg.r} is more than the {side} principal components an SVD of "
                            f"{path}.weight has (its smaller side); give at most {side}")

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        """LoRA's adapters started from the principal components (LoRA's `prepare` runs `check_model` first)."""
        model = super().prepare(model, ctx)
        self.initial = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if ".lora_" in n}
        return model

    def save_adapter(self, model: nn.Module, path: Path) -> None:
        """The trained adapter converted to a plain LoRA adapter over the original base (module docstring)."""
        params = dict(model.named_parameters())
        trained = {n: params[n].detach().clone() for n in self.initial}
        config = model.peft_config["default"]
        initial_dir = path.parent / "pissa-initial"
        try:
            with torch.no_grad():
                for n, value in self.initial.items():
                    params[n].copy_(value)
            config.init_lora_weights = True  # PEFT's recipe: the initial adapter is saved as a plain one
            model.save_pretrained(initial_dir)
        finally:
            config.init_lora_weights = self.adapter_options()["init_lora_weights"]
            with torch.no_grad():
                for n, value in trained.items():
                    params[n].copy_(value)
        model.save_pretrained(path, path_initial_model_for_weight_conversion=str(initial_dir))
        shutil.rmtree(initial_dir)

    def describe(self, model: nn.Module) -> dict:
        svd = "full" if self.cfg.niter == 0 else f"randomized, {self.cfg.niter} iterations"
        return {**super().describe(model), "init": f"principal singular components ({svd} SVD)"}

    def close(self) -> None:
        self.initial = {}
        super().close()

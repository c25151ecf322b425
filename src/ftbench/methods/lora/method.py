"""LoRA through PEFT (never hand-written): low-rank adapters on the target linears,
the new task head (architecture.py) trained densely.

`Lora` is also the base of the LoRA family: DoRA, PiSSA and LoRA+ are PEFT options on the same
adapters (`adapter_options`, `build_optimizer`), QLoRA puts them over a 4-bit base (`prepare`'s
`base_model` step, `merged`); each lives in its own folder and overrides only what differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftbench.errors import UserError
from ftbench.methods.base import Method, MethodContext, Trains
from ftbench.methods.lora.config import LoraMethodConfig
from ftbench.models.architecture import architecture, is_projection
from ftbench.models.loading import save_merged

PEFT_TASK_TYPES = {"seq_cls": "SEQ_CLS", "regression": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}


class Lora(Method):
    config_class = LoraMethodConfig

    def check_model(self, model: nn.Module, head: str) -> None:
        """A listed target names modules PEFT can adapt, not only the task heads (`require_adaptable`: raises
        UserError('method.target_modules')); all-linear always does."""
        targets = self.cfg.target_modules  # all-linear or a list of names (methods/config.py check_targets)
        if not isinstance(targets, str):
            require_adaptable(model, list(targets), architecture(model).task_heads(head))

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        self.check_model(model, ctx.head)
        targets = self.cfg.target_modules
        targets = targets if isinstance(targets, str) else list(targets)
        heads = architecture(model).task_heads(ctx.head)
        model = self.base_model(model, ctx)
        config = LoraConfig(
            task_type=PEFT_TASK_TYPES[ctx.head],
            r=self.cfg.r,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=targets,
            bias=self.cfg.bias,
            # The new task head trains densely. PEFT finds it by the names `classifier` and `score` only
            # (not T5's or BART's `classification_head`), so it is named here as architecture.py derives it.
            modules_to_save=heads or None,
            **self.adapter_options(),
        )
        self.peft_model = get_peft_model(model, config)
        return self.peft_model

    def base_model(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        """The model the adapters go over (QLoRA quantizes it); here the loaded model as it is."""
        return model

    def adapter_options(self) -> dict[str, Any]:
        """More `peft.LoraConfig` options (DoRA's `use_dora`, PiSSA's `init_lora_weights`); none here."""
        return {}

    def describe(self, model: nn.Module) -> dict:
        wrapped = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")})
        return {"name": self.cfg.name, "r": self.cfg.r, "alpha": self.cfg.alpha, "target_modules": wrapped}

    def trains(self, model: nn.Module, head: str) -> Trains:
        """The adapters (DoRA's magnitude vectors too), and PEFT's trainable copy of each new task head
        (`modules_to_save`); biases too when `bias` is not none."""
        heads = architecture(model.get_base_model()).task_heads(head)
        names = [n for n, _ in model.named_parameters()]
        adapters = {n for n in names if ".lora_" in n}
        copies = {n for n in names if ".modules_to_save." in n and n.split(".")[2] in heads}  # base_model.model.<head>
        biases = {n for n in names if n.endswith(".bias")} if self.cfg.bias != "none" else set()
        return Trains(adapters | copies | biases, adapters | {n for n in copies if n.endswith("weight")})

    def uncounted_parameters(self, model: nn.Module) -> list[torch.Tensor]:
        """The masters, and the frozen original of each task head PEFT trains as a copy (`modules_to_save` keeps
        both: `original_module` and `modules_to_save`): the head counts once in `params.total`."""
        from peft.utils import ModulesToSaveWrapper

        originals = [p for m in model.modules() if isinstance(m, ModulesToSaveWrapper)
                     for p in m.original_module.parameters()]
        return [*super().uncounted_parameters(model), *originals]

    def export(self, model: nn.Module, tokenizer, path: Path) -> dict[str, str]:
        """The adapter (PEFT's `save_pretrained`: loads over the base with `PeftModel.from_pretrained`) and the
        merged dense model (plain `from_pretrained`)."""
        path.mkdir(parents=True, exist_ok=True)
        self.save_adapter(model, path / "adapter")
        return {"adapter": str(path / "adapter"), "merged": save_merged(self.merged(model), tokenizer, path / "merged")}

    def save_adapter(self, model: nn.Module, path: Path) -> None:
        model.save_pretrained(path)

    def merged(self, model: nn.Module) -> nn.Module:
        """The base model with each adapter's delta added to its weight (PEFT's `merge_and_unload`)."""
        return model.merge_and_unload()


# What PEFT's LoRA wraps beyond a linear layer (its default dispatch, peft/tuners/lora/layer.py), DoRA and PiSSA too
PEFT_WRAPS = (nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)
# The heads PEFT keeps whole for a classifier whatever the config names (PeftModelForSequenceClassification)
PEFT_CLASSIFIERS = ("classifier", "score")


def require_adaptable(model: nn.Module, targets: list[str], heads: list[str]) -> None:
    """Raise UserError('method.target_modules') for the first name that matches no module of the model, or a
    module PEFT cannot put an adapter on (a norm, a whole block: PEFT's ValueError at the launch), naming the
    linear layers there are outside the task `heads` (trained densely): nn.Linear and transformers' Conv1D
    (models/architecture.py `is_projection`). A name matches as PEFT matches a list's entries: the module's
    whole path or its end after a dot (`q_proj`, `self_attn.q_proj`). A list naming only task heads is refused
    too: PEFT leaves a head to `modules_to_save` and finds nothing to adapt (NoMatchingPeftModuleError)."""
    linears = ", ".join(sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                                if is_projection(m) and n.split(".", 1)[0] not in heads}))
    in_heads = []
    for target in targets:
        named = [(n, m) for n, m in model.named_modules() if n == target or n.endswith(f".{target}")]
        found = [m for _, m in named]
        if named and all(n.split(".", 1)[0] in heads for n, _ in named):
            in_heads.append(target)
        if not found:
            raise UserError("method.target_modules", f"no module named {target!r} in this model; "
                            f"linear layers here: {linears}")
        other = next((m for m in found if not is_projection(m) and not isinstance(m, PEFT_WRAPS)), None)
        if other is not None:
            raise UserError("method.target_modules", f"{target!r} is a {type(other).__name__} in this model, which "
                            f"LoRA cannot adapt (PEFT adapts linear layers, embeddings and convolutions); name "
                            f"linear layers: {linears} (or all-linear)")
    if targets and len(in_heads) == len(targets):
        raise UserError("method.target_modules", f"[{', '.join(in_heads)}] names only the task head "
                        f"({', '.join(heads)}), which trains densely, not through adapters, so nothing is left "
                        f"to adapt; name linear layers: {linears} (or all-linear)")


def adapted(model: nn.Module, targets: str | list[str], head: str) -> list[tuple[str, nn.Module]]:
    """(path, module) of every module `get_peft_model` puts an adapter on for `targets` (all-linear or a list of
    names) under task head `head`, found as PEFT matches them (peft/tuners/tuners_utils.py), with nothing
    wrapped: all-linear takes every nn.Linear and Conv1D (`is_projection`) but the output embedding, a list every
    module whose path is an entry or ends in '.<entry>'. Neither takes a module inside one PEFT keeps whole
    (`modules_to_save`): the task heads and, for a classifier or regressor, any module named classifier or score."""
    arch = architecture(model)
    whole = {*arch.task_heads(head), *(PEFT_CLASSIFIERS if PEFT_TASK_TYPES[head] == "SEQ_CLS" else ())}

    def chosen(path: str, module: nn.Module) -> bool:
        if isinstance(targets, str):  # all-linear: the config's check allows no other string
            return is_projection(module) and path != arch.output_embedding
        return any(path == target or path.endswith(f".{target}") for target in targets)

    return [(path, module) for path, module in model.named_modules()
            if path and not whole & set(path.split(".")) and chosen(path, module)]

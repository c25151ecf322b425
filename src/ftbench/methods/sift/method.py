"""SIFT (Song et al., ICML 2024): sparse element-wise fine-tuning.

For every target weight a fixed set of k = ⌊rate·numel⌋+1 entries is chosen once,
before training (by default the top-k of |∂L/∂W| on calibration batches that are
never used for an update; see sift_select.py), and only those entries train. The
shared mechanism (partial_linear.py) keeps the dense weight in place for the forward,
mirrors the selected entries by a master vector (fp32 by default), hands autograd
only their gradient, and writes the masters back after every optimizer step.

Deliberate differences from the reference code (song-wx/SIFT), all fixes of its defects:
- write-back right after each optimizer step: no one-step lag, nothing left unmerged,
  and the first target in forward order trains like every other;
- weight decay (optim.weight_decay) decays the selected weights; in the reference it
  acted on an increment that had always just been zeroed, i.e. on nothing but the
  dense exception modules;
- fp32 masters by default (the reference trained bf16 increments on LLaMA; set
  method.master_dtype=weight to keep the weight's dtype);
- calibration_batches > 1 sums the gradients of N batches before the top-k (the
  reference used exactly one micro-batch, which is the default here).

How the selected entries' gradient is formed (`method.weight_grad`): `sampled` computes
those entries only (a sampled dense-dense product over chunks of tokens, sampled_grad.py),
`dense` forms the weight gradient a chunk of rows at a time and gathers them (what wins at
high rates), `auto` lets sampled_grad.py's cost model choose per layer; result.json records
each layer's choice (`method.weight_grad_paths`).

Biases of targeted layers (`method.bias`): `sparse`, as the reference, makes each bias
its own target with k = ⌊rate·d_out⌋+1 entries chosen by the same strategy; `dense`
trains them whole (d_out values per layer); `frozen` leaves them. Biases are never decayed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftbench import files
from ftbench.methods import linear_grad, partial_linear
from ftbench.methods.base import MethodContext, Trains, decay_split
from ftbench.methods.partial_linear import (
    PartialLinear,
    PartialMethod,
    part_gradient,
    partial_names,
)
from ftbench.methods.sampled_grad import choose
from ftbench.methods.sift.config import SiftConfig
from ftbench.methods.sift.select import (
    AUTO,
    PRESETS,
    resolve_exceptions,
    resolve_targets,
    select,
    selected_count,
    short_name,
)
from ftbench.models.architecture import architecture, replace_module

MASTER_SUFFIXES = (".master", ".bias_master")  # trainable copies: never part of a merged checkpoint
SELECTION_FILE = "sift_selection.safetensors"


class SiftLinear(PartialLinear):
    """A PartialLinear over selected elements whose bias may train sparsely too.

    The sparse bias is rebuilt from its master in each forward (one d_out-sized copy), so
    autograd gathers the selected entries' gradient with no custom code."""

    def __init__(self, linear: nn.Linear, index: torch.Tensor, master_dtype: torch.dtype | None,
                 bias_index: torch.Tensor | None, weight_grad: str):
        super().__init__(linear, "elements", index, master_dtype)
        out_features, in_features = self.weight.shape
        self.weight_grad = (choose(out_features, in_features, self.master.numel(), self.weight.device)
                            if weight_grad == "auto" else weight_grad)
        self.register_parameter("bias_master", None)
        if bias_index is not None:
            self.register_buffer("bias_index", bias_index.to(self.bias.device).sort().values, persistent=False)
            values = self.bias.detach().index_select(0, self.bias_index)
            self.bias_master = nn.Parameter(values.to(master_dtype or self.bias.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if self.bias_master is not None:
            bias = bias.index_copy(0, self.bias_index, self.bias_master.to(bias.dtype))
        grad = part_gradient(self.kind, self.index, self.block_counts, self.row_chunks, self.master.dtype,
                             sampled=self.weight_grad == "sampled")
        return linear_grad.linear(x, self.weight, bias, (self.master,), grad)

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the masters into the dense weight and bias."""
        super().write_back()
        if self.bias_master is not None:
            self.bias.index_copy_(0, self.bias_index, self.bias_master.detach().to(self.bias.dtype))


class Sift(PartialMethod):
    config_class = SiftConfig

    def check_model(self, model: nn.Module, head: str) -> None:
        """The exception and target modules resolve in this model (select.py's refusals), before the gradient
        selection calibrates."""
        resolve_targets(model, self.cfg.target_modules, resolve_exceptions(model, self.cfg.exception_modules, head))

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        cfg = self.cfg
        model.requires_grad_(False)
        self.exceptions = resolve_exceptions(model, cfg.exception_modules, ctx.head)
        targets = resolve_targets(model, cfg.target_modules, self.exceptions)
        tensors = {f"{name}.weight": layer.weight for name, layer in targets.items()}
        if cfg.bias == "sparse":
            tensors.update({f"{name}.bias": layer.bias for name, layer in targets.items() if layer.bias is not None})
        counts = {name: selected_count(p.numel(), cfg.sparse_rate) for name, p in tensors.items()}
        chosen = select(model, tensors, counts, cfg.selection, cfg.calibration_batches, ctx)
        self.target_numel = sum(p.numel() for p in tensors.values())

        master_dtype = torch.float32 if cfg.master_dtype == "fp32" else None
        self.named_layers: dict[str, SiftLinear] = {}
        for name in targets:
            layer = replace_module(model, name, lambda linear, name=name: SiftLinear(
                linear, chosen[f"{name}.weight"], master_dtype, chosen.get(f"{name}.bias"), cfg.weight_grad))
            if cfg.bias == "dense" and layer.bias is not None:
                layer.bias.requires_grad_(True)
            self.named_layers[name] = layer
        self.layers = list(self.named_layers.values())
        for name in self.exceptions:
            model.get_submodule(name).requires_grad_(True)
        if ctx.output_dir is not None:
            self._record(ctx.output_dir, ctx.seed)
        return model

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        """Selected weights decay (a deliberate difference from the reference); biases never do."""
        masters = {id(p) for p in self.master_parameters()}
        dense = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in masters]
        groups = [
            {"params": [layer.master for layer in self.layers], "weight_decay": weight_decay, "name": "selected"},
            {"params": [layer.bias_master for layer in self.layers if layer.bias_master is not None], "weight_decay": 0.0,
             "name": "selected_bias"},
            *decay_split(dense, weight_decay),
        ]
        return [g for g in groups if g["params"]]

    def master_parameters(self) -> list[torch.Tensor]:
        return [*super().master_parameters(), *(layer.bias_master for layer in self.layers if layer.bias_master is not None)]

    def trains(self, model: nn.Module, head: str) -> Trains:
        """The targets' selected entries (of a preset's projections, as the architecture names them; else
        the modules `target_modules` named) and their biases unless frozen; the exception modules densely."""
        arch, spec = architecture(model), self.cfg.target_modules
        presets = AUTO[arch.kind] if spec == "auto" else (spec,) if isinstance(spec, str) and spec in PRESETS else ()
        roles = {r for preset in presets for r in PRESETS[preset]}
        targets = {arch.path_of(b, r) for b in arch.blocks for r in roles if arch.has(b, r)} if presets else set(
            self.named_layers)
        dense = {n for name in resolve_exceptions(model, self.cfg.exception_modules, head)
                 for n, _ in model.get_submodule(name).named_parameters(prefix=name)}
        selected = partial_names(model, targets)
        biases = {f"{m}.bias" for m in targets} & {n for n, _ in model.named_parameters()}
        return Trains(selected | dense | (biases if self.cfg.bias != "frozen" else set()), selected | dense)

    # -- what was selected -----------------------------------------------------------------------------
    def selection(self) -> dict[str, torch.Tensor]:
        """Sorted flat indices per trained tensor (`<layer>.weight`, `<layer>.bias`)."""
        out = {}
        for name, layer in self.named_layers.items():
            out[f"{name}.weight"] = layer.selected_index()
            if layer.bias_master is not None:
                out[f"{name}.bias"] = layer.bias_index
        return out

    def _record(self, directory: Path, seed: int) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({n: i.cpu() for n, i in self.selection().items()}, str(directory / SELECTION_FILE),
                  metadata={"selection": self.cfg.selection, "sparse_rate": str(self.cfg.sparse_rate),
                            "calibration_batches": str(self.cfg.calibration_batches), "seed": str(seed)})
        files.normal_modes(directory / SELECTION_FILE)  # safetensors writes 0600

    def describe(self, model: nn.Module) -> dict[str, Any]:
        selected = sum(i.numel() for i in self.selection().values())
        dense = sum(p.numel() for name in self.exceptions for p in model.get_submodule(name).parameters())
        dense += sum(layer.bias.numel() for layer in self.layers if layer.bias is not None and layer.bias.requires_grad)
        return {
            "name": "sift", "sparse_rate": self.cfg.sparse_rate, "selection": self.cfg.selection,
            "calibration_batches": self.cfg.calibration_batches, "bias": self.cfg.bias,
            "master_dtype": str(self.layers[0].master.dtype).removeprefix("torch."),
            "target_modules": sorted({short_name(n) for n in self.named_layers}),
            "target_layers": len(self.layers), "target_numel": self.target_numel, "selected": selected,
            "selected_pct": 100.0 * selected / self.target_numel,
            "exception_modules": self.exceptions, "dense_trainable": dense,
            "weight_grad": self.cfg.weight_grad,
            "weight_grad_paths": {name: layer.weight_grad for name, layer in self.named_layers.items()},
        }

    # -- persistence -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"selection": {n: i.cpu() for n, i in self.selection().items()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Adopt a saved selection (same targets and rate): the masters restart from the dense weights."""
        selection = state["selection"]
        for name, layer in self.named_layers.items():
            layer.select(selection[f"{name}.weight"])
            layer.master.copy_(layer.selected_values())
            if layer.bias_master is not None:
                layer.bias_index.copy_(selection[f"{name}.bias"])
                layer.bias_master.copy_(layer.bias.index_select(0, layer.bias_index))

    def export(self, model: nn.Module, tokenizer, path: Path) -> dict[str, str]:
        """A merged checkpoint (plain `from_pretrained`) and a compact delta that `apply_delta`
        re-applies to the base model exactly: selected entries as indices and values, the
        densely trained tensors (exception modules, dense biases) whole."""
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        partial_linear.save_merged(model, tokenizer, path / "merged", MASTER_SUFFIXES)
        save_file(self.delta(model), str(path / "delta.safetensors"),
                  metadata={"method": "sift", "sparse_rate": str(self.cfg.sparse_rate)})
        return {"merged": str(path / "merged"), "delta": str(path / "delta.safetensors")}

    def delta(self, model: nn.Module) -> dict[str, torch.Tensor]:
        out = partial_linear.delta_tensors(model)  # "<layer>.elements.index" / ".values": the weights
        for name, layer in self.named_layers.items():
            if layer.bias_master is not None:
                out[f"{name}.bias.sparse_index"] = layer.bias_index.cpu()
                out[f"{name}.bias.sparse_values"] = layer.bias.detach().index_select(0, layer.bias_index).cpu()
        masters = {id(p) for p in self.master_parameters()}
        for name, p in model.named_parameters():
            if p.requires_grad and id(p) not in masters:
                out[name] = p.detach().cpu().contiguous()
        return out


@torch.no_grad()
def apply_delta(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Write a SIFT delta into a plain (base) model: reproduces the merged weights exactly."""
    partial_linear.apply_delta(model, tensors)
    for key, value in tensors.items():
        if key.endswith(".sparse_index"):
            param = model.get_parameter(key.removesuffix(".sparse_index"))
            values = tensors[key.removesuffix("index") + "values"]
            param.view(-1).index_copy_(0, value.to(param.device), values.to(param.device, param.dtype))
        elif not key.endswith((".index", ".values", ".sparse_values")):
            model.get_parameter(key).copy_(value)

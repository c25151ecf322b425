"""SparseGrad (Chekalina et al., EMNLP 2024): sparse updates of the MLP weights in a
rotated basis.

A short calibration (rotations.py) gives one orthogonal pair (u2, u3) per MLP layer
kind, shared by every block. Each MLP weight then trains as W̃ = u2ᵀ W u3ᵀ: every
step only the top-k entries of |∂L/∂W̃| (per layer) receive a gradient, sparse, and
lazy Adam updates just those (sparse_adam.py). Everything else trains densely with
the run's optimizer (the paper's protocol) or stays frozen (method.train_non_mlp).

How it is built (sparse_linear.py): the model keeps W, so the forward is the plain
`F.linear`; the optimizer adds L ΔW̃ Rᵀ to W after each step, which is W = u2 W̃ u3
materialised once per step without storing W̃ beside W. Memory per MLP weight: W,
two Adam moments, and k gradient entries, against full fine-tuning's W, a dense
gradient and two moments; plus one rotation pair per kind. With gradient
accumulation each micro-batch keeps its own top-k and the step updates their union
(at most accumulation × k entries), as the reference did; one top-k of the summed
gradient would need a dense gradient held across micro-batches.

Differences from the reference code (sayankotor/sparse_grads, lora_benchmark), fixes:
- the bias gradient is Σ g; the reference rotated it (g·u2), a wrong gradient;
- calibration leaves the model untouched; the reference fine-tuned it for those steps
  by accident (method.warm_start=true reproduces that);
- the top-k is by magnitude with exactly k entries (topk indices, never a threshold);
- LayerNorm trains as in full fine-tuning; the reference's optimizer skipped it in
  SparseGrad runs only (method.freeze_norms=true reproduces that);
- U/V live in non-persistent buffers of one shared module per kind, never class globals.
A deviation, by default: the reference rotates in fp32; here the pair is stored in bf16 and the
rotated gradient's products run in bf16 (method.rotation_dtype=bfloat16, half their time where bf16
products run at twice fp32's rate). Its top-k then differs from the fp32 one at the margin
(docs/results/peers.md, "SparseGrad's rotations in bf16"); method.rotation_dtype=float32 is the reference's.
MeProp (meprop.py) is the same layer and optimizer without the rotation.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from ftbench.errors import require
from ftbench.measure.meters import tensor_bytes
from ftbench.methods.base import Claim, Method, MethodContext, Trains, decay_split
from ftbench.methods.sparsegrad.config import SparseGradConfig
from ftbench.methods.sparsegrad.rotations import calibrate
from ftbench.methods.sparsegrad.sparse_adam import SparseMlpOptimizer, clip_grad_norm
from ftbench.methods.sparsegrad.sparse_linear import Basis, mlp_layers, wrap
from ftbench.models.architecture import MLP_ROLES, architecture


class SparseMlpMethod(Method):
    """Top-k sparse gradients on the MLP weights (in a basis the subclass chooses), lazy Adam
    on them, and the usual optimizer on whatever else trains."""

    needs_linear = True
    sparse_gradients = True

    @abstractmethod
    def bases(self, model: nn.Module, layers: dict[str, list[nn.Linear]], ctx: MethodContext) -> dict[str, Basis | None]:
        """One basis per MLP layer kind (None: the original basis)."""

    def check_model(self, model: nn.Module, head: str) -> None:
        """The MLP projections are `nn.Linear`s and each holds method.k entries, before the rotations calibrate."""
        for group in mlp_layers(model, self.cfg.name).values():
            for name, layer in group:
                self.k_for(name, layer)

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        named = mlp_layers(model, self.cfg.name)
        ks = {name: self.k_for(name, layer) for group in named.values() for name, layer in group}  # before calibrating
        bases = self.bases(model, {kind: [m for _, m in group] for kind, group in named.items()}, ctx)
        self.kinds = {kind: [wrap(model, name, bases[kind], ks[name]) for name, _ in group]
                      for kind, group in named.items()}
        self.layers = [layer for group in self.kinds.values() for layer in group]
        self._set_trainable(model, ctx.head)
        return model

    def k_for(self, name: str, layer: nn.Linear) -> int:
        """The entries of the MLP weight `name` kept per step: method.k, else density x its size. Raises
        UserError('method.k') when method.k is more than the weight holds."""
        size = layer.weight.numel()
        if self.cfg.k is None:
            return max(1, round(self.cfg.density * size))
        require(self.cfg.k <= size, "method.k", f"{self.cfg.k} is more than the {size} entries of {name}.weight; "
                f"give at most {size}, or null (method.density x the layer's size)")
        return self.cfg.k

    def _set_trainable(self, model: nn.Module, head: str) -> None:
        cfg = self.cfg
        norms = {id(p) for m in model.modules() if "Norm" in type(m).__name__ for p in m.parameters(recurse=False)}
        heads = {id(p) for name in architecture(model).task_heads(head) for p in model.get_submodule(name).parameters()}
        for param in model.parameters():
            if cfg.train_non_mlp:
                param.requires_grad_(not (cfg.freeze_norms and id(param) in norms))
            else:
                param.requires_grad_(id(param) in heads)
        for layer in self.layers:
            layer.weight.requires_grad_(True)

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        sparse = {id(layer.weight) for layer in self.layers}
        dense = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in sparse]
        return [*decay_split(dense, weight_decay),
                {"params": [layer.weight for layer in self.layers], "weight_decay": 0.0, "name": "sparse",
                 "sparse": True}]

    def build_optimizer(self, groups: list[dict], optim_cfg, lr: float) -> torch.optim.Optimizer:
        # Dense groups step through fp32 masters (masters.py); the sparse MLP weights round stochastically.
        optimizer = SparseMlpOptimizer(self.with_masters(groups), optim_cfg, lr,
                                       {layer.weight: layer.basis for layer in self.layers}, self.entries())
        self.masters.attach(optimizer)
        return optimizer

    def clip_grad_norm(self, max_norm: float | None) -> torch.Tensor | None:
        if max_norm is None:
            return None
        return clip_grad_norm(self.optimizer_parameters(), max_norm, self.entries())

    def entries(self) -> dict[torch.Tensor, int]:
        """Each MLP weight's k: the entries of one backward's gradient (sparse_adam.unique_entries)."""
        return {layer.weight: layer.k for layer in self.layers}

    def trainable_size(self) -> tuple[int, int]:
        """What one step updates: the densely trained tensors and k entries of each MLP weight
        (the optimizer holds the whole MLP weights, but a step moves only their top-k)."""
        sparse = {id(layer.weight) for layer in self.layers}
        dense = [p for p in self.optimizer_parameters() if id(p) not in sparse]
        elements = sum(p.numel() for p in dense) + sum(layer.k for layer in self.layers)
        return elements, sum(tensor_bytes(p) for p in dense) + sum(
            layer.k * layer.weight.element_size() for layer in self.layers)

    def claimed_over_run(self, steps: int) -> Claim:
        """Every element the optimizer holds, in every parameter `trains` names: a step moves each MLP
        weight's top-k entries, and any entry may be among some step's."""
        return Claim(sum(p.numel() for p in self.optimizer_parameters()))

    def trains(self, model: nn.Module, head: str) -> Trains:
        """The MLP weights (their top-k entries each step) and, under `train_non_mlp`, every other
        parameter densely (norms too unless `freeze_norms`); else only the task head besides them."""
        arch = architecture(model)
        if self.cfg.train_non_mlp:
            norms = {f"{m}.{n}" for m, module in model.named_modules() if "Norm" in type(module).__name__
                     for n, _ in module.named_parameters(recurse=False)} if self.cfg.freeze_norms else set()
            trained = {n for n, _ in model.named_parameters()} - norms
        else:
            trained = {f"{p}.weight" for p in arch.projections(MLP_ROLES)} | {
                n for n, _ in model.named_parameters() if n.split(".")[0] in arch.task_heads(head)}
        return Trains(trained, trained)

    def describe(self, model: nn.Module) -> dict[str, Any]:
        sparse = {id(layer.weight) for layer in self.layers}
        dense = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in sparse)
        per_kind = {kind: {"layers": len(group), "shape": list(group[0].weight.shape), "k": group[0].k,
                           "density": group[0].k / group[0].weight.numel()} for kind, group in self.kinds.items()}
        bases = {id(layer.basis): layer.basis for layer in self.layers if layer.basis is not None}
        return {"name": self.cfg.name, "mlp": per_kind, "train_non_mlp": self.cfg.train_non_mlp,
                "freeze_norms": self.cfg.freeze_norms, "dense_trainable": dense,
                "per_step_trainable": dense + sum(layer.k for layer in self.layers),
                "rotation_bytes": sum(b.left.numel() * b.left.element_size() + b.right.numel() * b.right.element_size()
                                      for b in bases.values())}


class SparseGrad(SparseMlpMethod):
    config_class = SparseGradConfig

    def bases(self, model: nn.Module, layers: dict[str, list[nn.Linear]], ctx: MethodContext) -> dict[str, Basis]:
        cfg = self.cfg
        return calibrate(model, layers, ctx, cfg.calibration_steps, cfg.warm_start, cfg.lr, cfg.core_basis,
                         cfg.rotation_dtype == "bfloat16")

    def describe(self, model: nn.Module) -> dict[str, Any]:
        cfg = self.cfg
        return {**super().describe(model), "calibration_steps": cfg.calibration_steps, "warm_start": cfg.warm_start,
                "basis": "u2ᵀ W u3 (HOSVD core)" if cfg.core_basis else "u2ᵀ W u3ᵀ (paper)",
                "rotation_dtype": cfg.rotation_dtype}

    def state_dict(self) -> dict[str, Any]:
        """The rotations: a resumed run must keep them (recalibrating would change the basis)."""
        return {"bases": {kind: {"left": group[0].basis.left.cpu(), "right": group[0].basis.right.cpu()}
                          for kind, group in self.kinds.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for kind, saved in state["bases"].items():
            basis = self.kinds[kind][0].basis
            basis.left.copy_(saved["left"])
            basis.right.copy_(saved["right"])

"""SparseGrad's calibration: one orthogonal pair per MLP layer kind, from the weight
gradients of a few backward passes.

The reference stacks every gradient G_k of a kind (steps × layers of them) into a
tensor and takes the left singular vectors of its mode-2 and mode-3 unfoldings.
Those are the eigenvectors of the Gram matrices Σ_k G_k G_kᵀ (d_out²) and
Σ_k G_kᵀ G_k (d_in²), which we accumulate as the gradients arrive (fp32 or
better) and never stack: the reference's stack is 4.4 GB for RoBERTa-large.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ftbench.methods.base import MethodContext
from ftbench.methods.sparsegrad.sparse_linear import Basis

log = logging.getLogger(__name__)


class GramAccumulator:
    """Σ G Gᵀ and Σ Gᵀ G over every gradient of one layer kind."""

    def __init__(self, weight: torch.Tensor):
        self.dtype = torch.promote_types(weight.dtype, torch.float32)
        d_out, d_in = weight.shape
        self.out_gram = torch.zeros(d_out, d_out, dtype=self.dtype, device=weight.device)
        self.in_gram = torch.zeros(d_in, d_in, dtype=self.dtype, device=weight.device)

    def add(self, grad: torch.Tensor) -> None:
        g = grad.to(self.dtype)
        self.out_gram.addmm_(g, g.t())
        self.in_gram.addmm_(g.t(), g)

    def basis(self, core: bool, bf16: bool) -> Basis:
        """u2, u3: eigenvectors by decreasing eigenvalue (= the unfoldings' left singular vectors).
        W̃ = u2ᵀ W u3ᵀ as the paper's code (core=False), or the HOSVD core u2ᵀ W u3 (core=True). Stored in
        bf16 (bf16=True, method.rotation_dtype=bfloat16) or in the Gram matrices' fp32-or-better dtype."""
        dtype = torch.bfloat16 if bf16 else self.dtype
        u2, u3 = (_eigenvectors(gram).to(dtype) for gram in (self.out_gram, self.in_gram))
        return Basis(u2, u3 if core else u3.t())


def _eigenvectors(gram: torch.Tensor) -> torch.Tensor:
    """Orthonormal eigenvectors (columns) of a symmetric PSD matrix, largest eigenvalue first;
    solved in float64 so the basis is orthogonal to fp32 precision."""
    _, vectors = torch.linalg.eigh(gram.double())
    return vectors.flip(-1)


def calibrate(model: nn.Module, layers: dict[str, list[nn.Linear]], ctx: MethodContext, steps: int,
              warm_start: bool, lr: float, core: bool, bf16: bool) -> dict[str, Basis]:
    """Run `steps` backward passes on calibration batches and return one basis per kind (in bf16 when
    `bf16`, else fp32 or the weights' wider dtype).

    warm_start=False: only gradients are taken; the model leaves exactly as it came.
    warm_start=True reproduces the reference's accidental warm start: each pass is also a step
    of full fine-tuning of every parameter with a fresh AdamW (lr, betas 0.9/0.999, no weight
    decay, no warm-up), whose state is then dropped.
    """
    trainable = {p: p.requires_grad for p in model.parameters()}
    mlp_weights = {layer.weight: kind for kind, group in layers.items() for layer in group}
    accumulators = {kind: GramAccumulator(group[0].weight) for kind, group in layers.items()}
    for param in model.parameters():
        param.requires_grad_(warm_start or param in mlp_weights)
    optimizer = torch.optim.AdamW(list(trainable), lr=lr, weight_decay=0.0) if warm_start else None

    def consume(param: torch.Tensor) -> None:
        accumulators[mlp_weights[param]].add(param.grad)
        if not warm_start:
            param.grad = None  # only one layer's gradient is alive at a time

    hooks = [weight.register_post_accumulate_grad_hook(consume) for weight in mlp_weights]
    was_training = model.training
    model.train()
    try:
        for batch in ctx.calibration_batches(steps):
            ctx.loss(model, batch).backward()
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
        for param, flag in trainable.items():
            param.grad = None
            param.requires_grad_(flag)
    bases = {kind: acc.basis(core, bf16) for kind, acc in accumulators.items()}
    log.info("sparsegrad: calibrated %s from %d backward passes%s", ", ".join(bases), steps,
             " (warm start: the model was fine-tuned meanwhile)" if warm_start else "")
    return bases

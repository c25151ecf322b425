"""One optimizer for the sparse MLP methods: lazy Adam (or plain SGD) on the top-k
entries of each MLP weight, in that weight's basis, and the run's usual optimizer
(AdamW or SGD, from `optim`) on every other trainable tensor.

Lazy Adam follows `torch.optim.SparseAdam` exactly: the moments are dense but
move only at the gradient's entries, bias correction uses the global step, and
there is no weight decay. Both halves keep their state in `self.state`, so
whatever walks `optimizer.state` (measure.py) sees every byte.

Gradients of the MLP weights are sparse COO tensors. One backward gives k unique
entries; accumulated micro-batches concatenate their supports, and repeated
entries are summed here with a fixed-size sort (never `coalesce()`, whose output
size would make the host wait for the GPU).
"""

from __future__ import annotations

import math

import torch

from ftbench.engine.optim import make_optimizer
from ftbench.errors import UserError
from ftbench.methods.sparsegrad.config import require_plain_sgd
from ftbench.methods.sparsegrad.sparse_linear import Basis


def unique_entries(grad: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(flat index, summed value, first-occurrence mask) per stored entry of a 2-D COO gradient.
    A repeated index carries its total at every occurrence; the mask keeps one of them.
    `k`: the entries one backward gives (`top_k_sparse`: sorted and unique). A gradient of exactly k
    entries holds each index once: one backward's, or a sum of several whose selections were the
    same (accumulating adds another backward's k entries, concatenated (2k) or merged (unique)). It
    is returned as it is, with mask None (every entry the first). Its coalesced flag cannot say so:
    autograd stores a sparse gradient as a new tensor without it."""
    rows, cols = grad._indices()
    if k is not None and grad._nnz() == k:
        return rows * grad.shape[1] + cols, grad._values(), None
    flat, order = (rows * grad.shape[1] + cols).sort(stable=True)
    values = grad._values().index_select(0, order)
    first = torch.ones_like(flat, dtype=torch.bool)
    first[1:] = flat[1:] != flat[:-1]
    group = first.cumsum(0) - 1
    totals = torch.zeros_like(values).index_add_(0, group, values)
    return flat, totals.index_select(0, group), first


def sparse_norm(grad: torch.Tensor, dtype: torch.dtype, k: int | None = None) -> torch.Tensor:
    _, values, first = unique_entries(grad, k)
    return torch.linalg.vector_norm(values if first is None else values * first, dtype=dtype)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float,
                   entries: dict[torch.Tensor, int] | None = None) -> torch.Tensor | None:
    """Clip the global norm over dense and sparse gradients alike; returns the norm before clipping.
    `entries`: the k of each sparse parameter's one-backward gradient (unique_entries)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    dtype = torch.promote_types(grads[0].dtype, torch.float32)
    dense = [g for g in grads if not g.is_sparse]
    sparse = [p for p in params if p.grad is not None and p.grad.is_sparse]
    norms = [sparse_norm(p.grad, dtype, (entries or {}).get(p)) for p in sparse]
    if dense:
        norms.append(torch.nn.utils.get_total_norm(dense).to(dtype))
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    if dense:
        torch._foreach_mul_(dense, scale)
    for p in sparse:
        p.grad._values().mul_(scale)
    return total


def add_rounded(weight: torch.Tensor, update: torch.Tensor) -> None:
    """weight += update. A rotated update is dense and ~1/√density smaller per entry than a
    full fine-tuning one, so bf16 round-to-nearest would drop most of it: bf16 weights get
    stochastic rounding (unbiased), wider types the exact sum."""
    if weight.dtype != torch.bfloat16:
        weight.add_(update.to(weight.dtype))
        return
    bits = (weight.float() + update.float()).view(torch.int32)
    bits += torch.randint_like(bits, 0, 1 << 16)  # random carry into the kept 16 bits
    weight.copy_((bits & -65536).view(torch.float32))  # exact in bf16: the low 16 bits are zero


class SparseMlpOptimizer(torch.optim.Optimizer):
    """Groups marked `sparse` hold MLP weights with COO gradients in their basis (`bases`), of `entries`
    (k) entries a backward; the other groups go to `make_optimizer` (AdamW or SGD), sharing these group
    dicts and state."""

    def __init__(self, groups: list[dict], optim_cfg, lr: float, bases: dict[torch.Tensor, Basis | None],
                 entries: dict[torch.Tensor, int] | None = None):
        if optim_cfg.name not in ("adamw", "sgd"):
            raise UserError("optim.name", f"sparse MLP methods train with adamw (lazy Adam on the MLP weights) "
                            f"or sgd, not {optim_cfg.name}")
        require_plain_sgd(optim_cfg)
        self.rule = "adam" if optim_cfg.name == "adamw" else "sgd"
        self.bases, self.entries = bases, entries or {}  # entries: each sparse weight's k (unique_entries)
        super().__init__(groups, {"lr": lr, "betas": tuple(optim_cfg.betas), "eps": optim_cfg.eps,
                                  "weight_decay": 0.0, "sparse": False})
        dense = [g for g in self.param_groups if not g["sparse"]]
        self.dense = make_optimizer(dense, optim_cfg, lr) if dense else None
        self._link()

    def _link(self) -> None:
        if self.dense is not None:
            self.dense.param_groups = [g for g in self.param_groups if not g["sparse"]]
            self.dense.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.dense is not None:
            self.dense.step()
        for group in self.param_groups:
            if group["sparse"]:
                for param in group["params"]:
                    self._sparse_step(param, group)
        return loss

    def _sparse_step(self, param: torch.Tensor, group: dict) -> None:
        state = self.state[param]
        if not state:
            state["step"] = 0
            if self.rule == "adam":  # fp32 moments: a bf16 second moment moves by 1e-3 steps, below its rounding
                state["exp_avg"] = torch.zeros_like(param, dtype=torch.promote_types(param.dtype, torch.float32))
                state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.promote_types(param.dtype, torch.float32))
        state["step"] += 1  # the global step: every sparse weight counts every optimizer step
        if param.grad is None:
            return
        flat, grad, first = unique_entries(param.grad, self.entries.get(param))
        lr = group["lr"]
        if self.rule == "sgd":
            delta = grad * -lr
        else:
            beta1, beta2 = group["betas"]
            exp_avg, exp_avg_sq = state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1)
            old_avg, old_sq = exp_avg.index_select(0, flat), exp_avg_sq.index_select(0, flat)
            avg_step = (grad - old_avg) * (1 - beta1)
            sq_step = (grad * grad - old_sq) * (1 - beta2)
            exp_avg.index_add_(0, flat, avg_step if first is None else avg_step * first)
            exp_avg_sq.index_add_(0, flat, sq_step if first is None else sq_step * first)
            bias1, bias2 = 1 - beta1 ** state["step"], 1 - beta2 ** state["step"]
            step_size = lr * math.sqrt(bias2) / bias1
            delta = (old_avg + avg_step) / ((old_sq + sq_step).sqrt() + group["eps"]) * -step_size
        if first is not None:
            delta = delta * first
        basis = self.bases[param]
        if basis is None:  # MeProp: the k entries themselves, rounded as add_rounded does
            if param.dtype == torch.bfloat16:
                unique = flat if first is None else flat[first]  # index_copy_ needs each index once
                values = param.view(-1).index_select(0, unique)
                add_rounded(values, delta if first is None else delta[first])
                param.view(-1).index_copy_(0, unique, values)
            else:
                param.view(-1).index_add_(0, flat, delta.to(param.dtype))
            return
        add_rounded(param, basis.unrotate_entries(flat, delta, param.shape))

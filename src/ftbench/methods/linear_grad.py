"""A linear layer whose weight gradient the method computes itself (SIFT, S2FT, SparseGrad, MeProp),
built so that gradient checkpointing skips its product when recomputing.

The method's gradient needs the layer's input x and output gradient g. A single custom autograd
Function that computes y = x Wᵀ and saves x would cost one product per checkpointed block:
torch's non-reentrant checkpoint stops recomputing once every tensor the forward saved has been
saved again, and a built-in op saves its inputs *before* computing (so the block's last product,
LLaMA's down projection, is never recomputed), while a custom Function saves *after* its forward
has run. Measured at the `make bench-peers` shape: 4 of the 115 products of a step, 4 % of it.

So the product is torch's own `F.linear`, with the weight detached (no dense weight gradient), between
two identity Functions that share one `_Pass`:

- on the input, `_SaveInput` saves x (cheap, before the product) and, in backward, after the
  product's input gradient, computes the method's gradients from x and the stashed g;
- on the output, `_StashGrad` puts g in the `_Pass` (backward order: it runs first).

An input that needs no gradient (the first block's, under a frozen embedding) is saved by the output
Function instead, which then computes the gradients itself: an input tap would make the product
form an input gradient nobody needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# (g, x) -> one gradient per tensor in `params`; g is (tokens, d_out), x is what `keep` saved, (tokens, ·)
WeightGrad = Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor | None]]


class _Pass:
    """What one call's two Functions share: the method's gradient rule and, between the two
    backward calls, the output gradient (held for one node of the graph, then dropped)."""

    __slots__ = ("weight_grad", "grad_output")

    def __init__(self, weight_grad: WeightGrad):
        self.weight_grad, self.grad_output = weight_grad, None

    def gradients(self, g: torch.Tensor, kept: torch.Tensor) -> Sequence[torch.Tensor | None]:
        """The method's gradients, its rule given both as (tokens, ·) matrices."""
        return self.weight_grad(g.reshape(-1, g.shape[-1]), kept.reshape(-1, kept.shape[-1]))


class _SaveInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kept, link: _Pass, *params):
        ctx.save_for_backward(kept)
        ctx.link = link
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_x):
        (kept,) = ctx.saved_tensors
        g, ctx.link.grad_output = ctx.link.grad_output, None
        return grad_x, None, None, *ctx.link.gradients(g, kept)


class _StashGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, kept, link: _Pass, *params):
        if kept is not None:  # no input tap: this Function computes the gradients itself
            ctx.save_for_backward(kept)
        ctx.link, ctx.computes = link, kept is not None
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        if not ctx.computes:
            ctx.link.grad_output = g
            return g, None, None, *(None for _ in ctx.needs_input_grad[3:])
        (kept,) = ctx.saved_tensors
        return g, None, None, *ctx.link.gradients(g, kept)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, params: Sequence[torch.Tensor],
           weight_grad: WeightGrad, keep: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` (x: (..., d_in), weight: (d_out, d_in)) whose gradient reaches
    `params` through `weight_grad(g, kept)` instead of reaching `weight`: g (tokens, d_out) is the output
    gradient, kept (tokens, ·) is `keep(x)` (x itself by default; S2FT keeps its selected columns), in the
    dtype the product ran in (autocast's, when on). The bias, when it requires grad, gets torch's own
    gradient. Equal to the single-Function layer in value and gradient; only the recompute differs."""
    if not torch.is_grad_enabled() or not any(p.requires_grad for p in params):
        return F.linear(x, weight.detach(), bias)
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))  # save what the product under autocast reads
    kept = x if keep is None else keep(x)
    link = _Pass(weight_grad)
    if x.requires_grad:
        y = F.linear(_SaveInput.apply(x, kept, link, *params), weight.detach(), bias)
        return _StashGrad.apply(y, None, link, *params)
    return _StashGrad.apply(F.linear(x, weight.detach(), bias), kept, link, *params)

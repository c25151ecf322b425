"""fp32 master weights for the low-precision tensors an optimizer would otherwise step in place.

AdamW on a bf16 weight adds each update to an 8-bit mantissa: an update smaller
than half a unit in the last place (2^-9 of the weight, relative) rounds away. At
the papers' learning rates (1e-5, 2e-5) most entries of a bf16 weight never move.
The usual mixed-precision remedy (Micikevicius et al., 2018; every common trainer):
the optimizer steps an fp32 copy (the master) and the copy is rounded into the
weight after each step. The forward and backward keep using the bf16 weight.

Per low-precision weight this holds 4 bytes (the master) and 4 bytes (its fp32
gradient, accumulated over micro-batches by a post-accumulate-grad hook that also
frees the bf16 gradient), and the optimizer's state follows the master's dtype
(AdamW: 8 bytes). Methods whose own masters cover their trainable part (SIFT, S2FT,
HiFT) send only fp32 tensors and their small dense extras (task heads) through here.

The hooks and the optimizer's step hook are removed by `close()` (the job's end).
"""

from __future__ import annotations

import torch
from torch import nn

MASTER_DTYPE = torch.float32


def low_precision(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.dtype.itemsize < MASTER_DTYPE.itemsize


class Masters:
    """Pairs (weight, fp32 master). `adopt` swaps the masters into the optimizer's groups."""

    def __init__(self) -> None:
        self.pairs: list[tuple[nn.Parameter, nn.Parameter]] = []
        self.handles: list = []  # hook handles, removed by close()

    def adopt(self, groups: list[dict]) -> list[dict]:
        """Copy of `groups` with every low-precision tensor replaced by an fp32 master.
        Groups marked `sparse` (SparseGrad's own optimizer rounds those) are left as they are."""
        adopted = []
        for group in groups:
            if group.get("sparse"):
                adopted.append(group)
                continue
            params = []
            for param in group["params"]:
                if low_precision(param):
                    master = nn.Parameter(param.detach().to(MASTER_DTYPE, copy=True))
                    self.pairs.append((param, master))
                    self.handles.append(param.register_post_accumulate_grad_hook(_accumulate_into(master)))
                    param = master
                params.append(param)
            adopted.append({**group, "params": params})
        return adopted

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Round the masters into the weights after every `optimizer.step()`."""
        if self.pairs:
            self.handles.append(optimizer.register_step_post_hook(lambda *_: self.write_back()))

    @torch.no_grad()
    def write_back(self) -> None:
        for param, master in self.pairs:
            param.copy_(master)

    @torch.no_grad()
    def refresh(self) -> None:
        """The weights changed outside the optimizer (a restored checkpoint): the masters follow."""
        for param, master in self.pairs:
            master.copy_(param)

    def tensors(self) -> list[torch.Tensor]:
        return [master for _, master in self.pairs]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.pairs = [], []


def _accumulate_into(master: nn.Parameter):
    """Hook: add a low-precision gradient into the master's fp32 gradient and free it, so
    micro-batches accumulate in fp32 and no bf16 gradient outlives its backward."""

    def hook(param: torch.Tensor) -> None:
        master.grad = param.grad.to(MASTER_DTYPE) if master.grad is None else master.grad.add_(param.grad)
        param.grad = None

    return hook

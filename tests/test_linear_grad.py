"""Every layer whose weight gradient a method computes itself (linear_grad.py), through the same checks:
under gradient checkpointing its product is not recomputed when it ends the block (as a built-in
linear's is not), its input gets no gradient product when it needs none, and its gradients are
those of the plain backward."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import (
    TorchDispatchMode,  # the public way to watch ops (no other API)
)
from torch.utils.checkpoint import checkpoint

from ftbench.methods.partial_linear import PartialLinear
from ftbench.methods.sift.method import SiftLinear
from ftbench.methods.sparsegrad.sparse_linear import Basis, TopKGradLinear

TOKENS, D_IN, D_OUT = 11, 7, 3  # distinct, so a product's output shape names it (tokens > d: no token-side rotation)


def orthogonal(n: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))[0]


def linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(D_IN, D_OUT, dtype=torch.float64)


LAYERS = {
    "elements (SIFT dense)": lambda: PartialLinear(linear(), "elements", torch.tensor([0, 4, 9, 20]), None),
    "elements (SIFT sampled)": lambda: SiftLinear(linear(), torch.tensor([0, 4, 9, 20]), None, None, "sampled"),
    "rows (S2FT)": lambda: PartialLinear(linear(), "rows", torch.tensor([1]), None),
    "cols (S2FT)": lambda: PartialLinear(linear(), "cols", torch.tensor([0, 5]), None),
    "top-k (MeProp)": lambda: TopKGradLinear(linear(), None, 6),
    "rotated top-k (SparseGrad)": lambda: TopKGradLinear(linear(), Basis(orthogonal(D_OUT, 1), orthogonal(D_IN, 2)), 6),
}


class Products(TorchDispatchMode):
    """Counts matrix products by output shape."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
            self.shapes.append(tuple(out.shape))
        return out


def trainable(layer: nn.Module) -> list[torch.Tensor]:
    return [p for p in layer.parameters() if p.requires_grad]


def backward_products(layer: nn.Module, x: torch.Tensor, checkpointed: bool) -> tuple[list, list]:
    """The products backward runs (by output shape) and the trainable tensors' gradients."""
    def block(t):
        return layer(torch.tanh(t))

    y = checkpoint(block, x, use_reentrant=False) if checkpointed else block(x)
    with Products() as products:
        y.square().sum().backward()
    grads = [p.grad.to_dense() if p.grad.is_sparse else p.grad for p in trainable(layer)]
    return products.shapes, grads


@pytest.mark.parametrize("name", LAYERS)
def test_checkpointing_does_not_recompute_the_product_that_ends_a_block(name):
    x = torch.randn(TOKENS, D_IN, dtype=torch.float64, requires_grad=True)
    layer = LAYERS[name]()
    products, _ = backward_products(layer, x, checkpointed=True)
    assert (TOKENS, D_OUT) not in products  # the forward product: a built-in linear's is not recomputed either
    assert (TOKENS, D_IN) in products  # the input gradient g W


@pytest.mark.parametrize("name", LAYERS)
def test_gradients_equal_the_plain_backward_with_or_without_input_gradient(name):
    x = torch.randn(TOKENS, D_IN, dtype=torch.float64)
    _, plain = backward_products(LAYERS[name](), x.clone().requires_grad_(), checkpointed=False)
    _, recomputed = backward_products(LAYERS[name](), x.clone().requires_grad_(), checkpointed=True)
    layer = LAYERS[name]()
    y = layer(torch.tanh(x))  # an input that needs no gradient (as after a frozen embedding)
    with Products() as products:
        y.square().sum().backward()
    assert (TOKENS, D_IN) not in products.shapes  # no input-gradient product for an input that needs none
    without = [p.grad.to_dense() if p.grad.is_sparse else p.grad for p in trainable(layer)]
    assert plain and len(plain) == len(recomputed) == len(without)
    for a, b, c in zip(plain, recomputed, without):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        torch.testing.assert_close(c, a, rtol=0, atol=0)


@pytest.mark.parametrize("name", LAYERS)
def test_no_grad_forward_is_the_plain_product(name):
    layer = LAYERS[name]()
    x = torch.randn(TOKENS, D_IN, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
    torch.testing.assert_close(y, nn.functional.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    assert y.grad_fn is None

"""The shared SIFT/S2FT mechanism against a dense reference (float64)."""

import pytest
import torch
from torch import nn

from ftbench.measure.trace import LiveTensorPeak
from ftbench.methods import partial_linear as partial_module
from ftbench.methods.partial_linear import (
    BLOCK,
    PartialLinear,
    Selection,
    apply_delta,
    delta_tensors,
    pack_elements,
    unpack_elements,
    wrap,
)


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def dense_and_partial(kind, index, bias=True):
    torch.manual_seed(0)
    dense = nn.Linear(7, 5, bias=bias)
    partial = PartialLinear(nn.Linear(7, 5, bias=bias), kind, index, torch.float64)
    with torch.no_grad():
        partial.weight.copy_(dense.weight)
        if bias:
            partial.bias.copy_(dense.bias)
            partial.bias.requires_grad_(True)
    partial.master.data.copy_(partial.selected_values())
    return dense, partial


CASES = [("elements", torch.tensor([0, 3, 17, 34])), ("rows", torch.tensor([1, 4])), ("cols", torch.tensor([0, 2, 6]))]


@pytest.mark.parametrize("kind,index", CASES)
def test_gradients_match_the_dense_layer(kind, index):
    dense, partial = dense_and_partial(kind, index)
    x = torch.randn(3, 4, 7)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    target = torch.randn(3, 4, 5)
    ((dense(x1) - target) ** 2).sum().backward()
    ((partial(x2) - target) ** 2).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    torch.testing.assert_close(partial.bias.grad, dense.bias.grad)
    g = dense.weight.grad
    expected = {"elements": lambda: g.reshape(-1)[index], "rows": lambda: g[index], "cols": lambda: g[:, index]}[kind]()
    torch.testing.assert_close(partial.master.grad, expected)
    assert partial.weight.grad is None  # the dense weight never holds a gradient


def test_element_positions_pack_into_two_bytes_across_blocks():
    """A 300 x 250 weight spans three blocks of 2^15 positions; the edges of each block survive."""
    numel = 300 * 250
    flat = torch.tensor([0, 1, BLOCK - 1, BLOCK, BLOCK + 7, 2 * BLOCK - 1, 2 * BLOCK, numel - 1])
    offsets, counts = pack_elements(flat, numel)
    assert offsets.dtype == torch.int16 and counts.tolist() == [3, 3, 2]
    assert torch.equal(unpack_elements(offsets, counts).long(), flat)
    assert unpack_elements(offsets, counts).dtype == torch.int32

    torch.manual_seed(0)
    dense = nn.Linear(250, 300, bias=False)
    layer = PartialLinear(nn.Linear(250, 300, bias=False), "elements", flat[torch.randperm(len(flat))], None)
    with torch.no_grad():
        layer.weight.copy_(dense.weight)
    x = torch.randn(4, 250)
    dense(x).pow(2).sum().backward()
    layer(x).pow(2).sum().backward()
    torch.testing.assert_close(layer.master.grad, dense.weight.grad.reshape(-1)[flat])
    assert torch.equal(layer.selected_index().long(), flat)


@pytest.mark.parametrize("chunk_rows", [1, 7, 300])
def test_element_gradient_formed_in_row_chunks_matches_the_dense_one(monkeypatch, chunk_rows):
    """Chunks of 1 row (empty ones included), 7 rows (a ragged last chunk) and the whole weight."""
    monkeypatch.setattr(partial_module, "GRAD_CHUNK_BYTES", chunk_rows * 250 * 8)
    torch.manual_seed(0)
    flat = torch.randperm(300 * 250)[:500].sort().values
    flat[:3] = torch.tensor([0, 1, 2])  # several entries in the first row
    dense = nn.Linear(250, 300, bias=False)
    layer = PartialLinear(nn.Linear(250, 300, bias=False), "elements", flat, None)
    with torch.no_grad():
        layer.weight.copy_(dense.weight)
    assert len(layer.row_chunks) == -(-300 // chunk_rows)
    assert layer.row_chunks[-1][1] == 300 and layer.row_chunks[-1][3] == 500
    x = torch.randn(2, 3, 250)
    dense(x).pow(2).sum().backward()
    layer(x).pow(2).sum().backward()
    torch.testing.assert_close(layer.master.grad, dense.weight.grad.reshape(-1)[flat])


def test_element_backward_holds_one_chunk_of_the_weight_gradient(monkeypatch):
    """Traced: a 512 x 256 float64 weight's gradient is 1 MiB; with 64 KiB chunks only one
    chunk of it is ever live (each is freed before the next GEMM allocates)."""
    monkeypatch.setattr(partial_module, "GRAD_CHUNK_BYTES", 64 * 2**10)
    layer = PartialLinear(nn.Linear(256, 512, bias=False), "elements", torch.arange(0, 512 * 256, 97), None)
    x = torch.randn(64, 256)
    loss = layer(x).sum()
    with LiveTensorPeak() as trace:
        loss.backward()
    assert trace.peak_by_op["aten::mm"] == 64 * 2**10  # the GEMM outputs live at the peak: one chunk
    assert trace.peak_new_bytes < 512 * 256 * 8 / 8  # far below the whole weight gradient
    assert layer.master.grad.shape == layer.master.shape


def test_input_columns_save_only_the_compact_slice():
    _, partial = dense_and_partial("cols", torch.tensor([2, 5]))
    x = torch.randn(2, 16, 7, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        partial(x)
    activation_bytes = [b for b in saved if b != partial.weight.untyped_storage().nbytes() and b > 16 * 8]
    assert activation_bytes == [2 * 16 * 2 * 8]  # x[..., S] only: 2 columns of 2x16 float64


@pytest.mark.parametrize("kind,index", CASES)
def test_write_back_and_delta_round_trip(kind, index):
    _, partial = dense_and_partial(kind, index)
    model = nn.Sequential(partial)
    with torch.no_grad():
        partial.master.add_(1.5)
    partial.write_back()
    torch.testing.assert_close(partial.selected_values(), partial.master.detach())
    base = nn.Sequential(nn.Linear(7, 5))
    with torch.no_grad():
        base[0].weight.copy_(partial.weight)
        base[0].weight.view(-1)[:] = base[0].weight.view(-1).roll(1)  # differ everywhere first
    original = base[0].weight.clone()
    apply_delta(base, delta_tensors(model))
    changed = base[0].weight != original
    assert torch.equal(base[0].weight[changed], partial.weight[changed])
    assert torch.equal(partial.selected_values(), PartialLinear(base[0], kind, index, None).selected_values())


def test_wrap_replaces_modules_by_name():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    layers = wrap(model, {"2": Selection("rows", torch.tensor([1]))}, torch.float32)
    assert isinstance(model[2], PartialLinear) and layers == [model[2]]
    assert model[2].master.shape == (1, 4)

"""methods/sampled_grad.py: SIFT's selected weight-gradient entries as a sampled product, against the dense
reference (float64), on both of SIFT's paths, within the dense path's memory."""

import pytest
import torch
from torch import nn

from ftbench.measure.trace import LiveTensorPeak
from ftbench.methods.sampled_grad import (
    SAMPLED_COST,
    choose,
    csr_pattern,
    sampled_entries,
    token_major,
)
from ftbench.methods.sift.method import SiftLinear


def problem(tokens: int, d_out: int, d_in: int, rate: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    g = torch.randn(tokens, d_out, generator=generator, dtype=torch.float64)
    x = torch.randn(tokens, d_in, generator=generator, dtype=torch.float64)
    k = max(1, round(rate * d_out * d_in))
    flat = torch.randperm(d_out * d_in, generator=generator)[:k].sort().values
    flat[0] = 0  # the first entry of the first row, and the last entry of the last row
    flat[-1] = d_out * d_in - 1
    return g, x, flat.unique()


SHAPES = [(37, 24, 40), (64, 48, 16), (5, 7, 3)]  # tokens, d_out, d_in
RATES = [0.01, 0.1, 0.6]


@pytest.mark.parametrize("tokens,d_out,d_in", SHAPES)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("chunks", [1, 4, 6])  # all at once, ragged chunks, empty chunks (5 tokens)
def test_fp32_entries_equal_the_dense_gradient_within_rounding(tokens, d_out, d_in, rate, chunks):
    g, x, flat = problem(tokens, d_out, d_in, rate)
    got = sampled_entries(g.float(), x.float(), flat.to(torch.int32), chunks)
    assert got.dtype == torch.float32
    exact = (g.t() @ x).reshape(-1)[flat]
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5 * tokens ** 0.5)


@pytest.mark.parametrize("tokens,d_out,d_in", SHAPES)
@pytest.mark.parametrize("rate", RATES)
def test_bf16_entries_are_within_bf16_tolerance_and_no_worse_than_the_dense_bf16_gemm(tokens, d_out, d_in, rate):
    g, x, flat = problem(tokens, d_out, d_in, rate, seed=1)
    gb, xb = g.bfloat16(), x.bfloat16()
    exact = (gb.double().t() @ xb.double()).reshape(-1)[flat]  # the same rounded inputs, summed exactly
    got = sampled_entries(gb, xb, flat).double()
    dense = (gb.t() @ xb).double().reshape(-1)[flat]
    scale = float(exact.abs().max())
    torch.testing.assert_close(got, exact, rtol=1.6e-2, atol=1.6e-2 * scale)
    assert float((got - exact).abs().max()) <= float((dense - exact).abs().max()) + 1e-6 * scale


@pytest.mark.parametrize("n,d", [(7, 48), (256, 1376), (1, 5), (0, 16)])  # a single token, none
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_token_major_copy_is_the_transpose_bit_for_bit(n, d, dtype):
    rows = torch.randn(n, d).to(dtype)
    got = token_major(rows, torch.float32)
    assert got.is_contiguous() and got.dtype == torch.float32
    assert torch.equal(got, rows.float().t())
    strided = torch.randn(d, n).t()  # not contiguous: the plain copy
    assert torch.equal(token_major(strided, torch.float32), strided.t())


def test_the_csr_pattern_has_one_row_pointer_per_output_row():
    flat = torch.tensor([0, 1, 9, 20, 23], dtype=torch.int32)  # rows 0, 0, 2, 5, 5 of a 6 x 4 matrix
    crow, col = csr_pattern(flat, 6, 4)
    assert crow.tolist() == [0, 2, 2, 3, 3, 3, 5] and col.tolist() == [0, 1, 1, 0, 3]
    assert crow.dtype == col.dtype == torch.int32


def test_the_cost_model_takes_the_sampled_product_below_one_entry_in_sampled_cost():
    cpu = torch.device("cpu")
    cost = SAMPLED_COST["cpu"]
    numel = 512 * 1376
    below, above = int(numel / cost) - 1, int(numel / cost) + 1
    assert choose(512, 1376, below, cpu) == "sampled" and choose(512, 1376, above, cpu) == "dense"
    assert choose(512, 1376, numel, cpu) == "dense"  # every entry: the GEMM


def sift_layers(rate: float, dtype=torch.float64):
    torch.manual_seed(0)
    dense = nn.Linear(40, 24, dtype=dtype)
    flat = torch.randperm(24 * 40)[:max(1, round(rate * 960))].sort().values
    layers = {}
    for path in ("sampled", "dense"):
        linear = nn.Linear(40, 24, dtype=dtype)
        linear.load_state_dict(dense.state_dict())
        layers[path] = SiftLinear(linear, flat, torch.float32, None, path)
    return dense, flat, layers


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_sift_paths_give_the_dense_layers_gradient(rate, dtype):
    dense, flat, layers = sift_layers(rate, dtype)
    x = torch.randn(3, 11, 40).to(dtype)
    dense(x).float().pow(2).sum().backward()
    expected = dense.weight.grad.float().reshape(-1)[flat]
    tolerance = {"rtol": 1.6e-2, "atol": 1.6e-2 * float(expected.abs().max())} if dtype == torch.bfloat16 else {}
    for path, layer in layers.items():
        layer(x).float().pow(2).sum().backward()
        assert layer.master.grad.dtype == torch.float32 and layer.weight.grad is None
        torch.testing.assert_close(layer.master.grad, expected, **tolerance, msg=path)


def test_auto_follows_the_cost_model_and_describes_itself():
    linear = nn.Linear(1376, 512)
    few = SiftLinear(nn.Linear(1376, 512), torch.arange(0, 512 * 1376, 997), None, None, "auto")
    every = SiftLinear(linear, torch.arange(512 * 1376), None, None, "auto")
    assert (few.weight_grad, every.weight_grad) == ("sampled", "dense")


def test_the_sampled_backward_holds_no_more_than_the_dense_one():
    """Traced, at the benchmark's MLP shape and batch (1376 x 512, 4 x 256 tokens; a weight gradient below
    GRAD_CHUNK_BYTES, so the dense path forms it whole): a quarter of the tokens' g and x, against it."""
    flat = torch.arange(0, 1376 * 512, 97)
    x = torch.randn(1024, 512)
    peaks = {}
    for path in ("dense", "sampled"):
        layer = SiftLinear(nn.Linear(512, 1376, bias=False), flat, None, None, path)
        loss = layer(x).sum()
        with LiveTensorPeak() as trace:
            loss.backward()
        peaks[path] = trace.peak_new_bytes
    assert peaks["sampled"] <= peaks["dense"]

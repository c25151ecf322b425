"""Measurement primitives: what is counted is what is held."""

import logging
import mmap

import pytest
import torch

from ftbench.measure.meters import (
    MemoryMeter,
    SpeedMeter,
    flops_per_token,
    held_optimizer_state_bytes,
    matmul_params,
    peak_flops,
    rss_peak_bytes,
    tensor_bytes,
)
from helpers import tiny_model


def test_optimizer_state_is_read_from_the_optimizer():
    weight = torch.nn.Parameter(torch.randn(10, 10))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    assert held_optimizer_state_bytes(optimizer, torch.device("cpu")) == (0, 0)  # lazy: nothing before a step
    weight.grad = torch.ones_like(weight)
    optimizer.step()
    held, host = held_optimizer_state_bytes(optimizer, torch.device("cpu"))
    assert held == 2 * 100 * 4 + 4 and host == 0  # exp_avg, exp_avg_sq, and the step counter


def test_sparse_tensors_count_what_they_store():
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 5]]), torch.tensor([1.0, 2.0]), (1000,), check_invariants=True)
    assert tensor_bytes(sparse) == 2 * 8 + 2 * 4


def test_cpu_peak_resets_between_phases():
    meter = MemoryMeter(torch.device("cpu"))
    # An anonymous mapping of its own: fresh pages that count in the RSS once touched and leave it when
    # unmapped. (A bytearray comes from malloc, which may serve it from pages the worker's heap already
    # holds resident and keep them after `del`: then the RSS never moves and nothing is measured.)
    block = mmap.mmap(-1, 300 * 2**20)
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1  # touch every page
    meter.mark_loaded()
    high = meter.cpu_peak_rss
    block.close()
    meter.start_train()
    assert rss_peak_bytes() < high - 200 * 2**20


def test_flops_per_token_counts_matmuls_and_attention():
    model = tiny_model("tiny-llama")
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_params(model) == linear
    assert flops_per_token(model, 16) == 6 * linear + 12 * 2 * 64 * 16


def test_speed_summary():
    speed = SpeedMeter()
    for seconds in (1.0, 2.0, 3.0):
        speed.record(seconds, samples=4, tokens=40, nonpad=30, loss_tokens=4)
    summary = speed.summary(flops_token=None, peak=None)
    assert summary.step_time_s_p50 == 2.0 and summary.step_time_s_p90 == 3.0
    assert summary.tokens_per_s == 120 / 6 and summary.tokens_per_s_nonpad == 90 / 6
    assert summary.mfu is None


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),  # not the SXM peak
    ("NVIDIA H200", 989e12),
    ("NVIDIA H800", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA L40", 181e12),  # not L4's
    ("NVIDIA L40S", 362e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA A40", 149.7e12),  # not A10's
    ("NVIDIA A10", 125e12),
    ("NVIDIA Tesla V100-SXM2-32GB", None),
    ("Some Future GPU H100", None),
])
def test_peak_flops_by_exact_device_name(name, peak, caplog):
    with caplog.at_level(logging.WARNING, logger="ftbench"):
        assert peak_flops(name, "bf16-pure") == peak
    assert len(caplog.records) == (peak is None)
    assert peak_flops(name, "fp32") is None
    assert peak_flops(name, "bf16-pure", cuda=False) is None

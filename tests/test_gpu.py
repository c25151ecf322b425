"""What only a GPU shows (marked `gpu`; skipped without CUDA; `make gpu-check` runs them)."""

import gc

import pytest
import torch

from helpers import run
from test_methods import METHODS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ON_GPU = ["hardware=auto", "hardware.precision=bf16-pure", "mode=profile", "profile.batch_size=2",
          "profile.seq_len=32", "profile.warmup_steps=1", "profile.steps=2"]


@pytest.mark.parametrize("name,overrides", METHODS)
def test_a_job_returns_device_memory_to_its_baseline(tmp_path, name, overrides):
    """A second job of the same method ends where the first ended: nothing of a job (weights, masters,
    HiFT's offloaded state) stays allocated. (The first job may leave cuBLAS workspaces, which the
    caching allocator keeps for the process: hence the first job sets the baseline.)"""
    allocated = []
    for job in ("first", "second"):
        result = run(tmp_path / job, *ON_GPU, f"method={name}", *overrides)
        assert result["exit_code"] == 0, result["error"]
        assert result["memory"]["train_peak_allocated_bytes"] > 0
        gc.collect()
        allocated.append(torch.cuda.memory_allocated())
    assert allocated[1] == allocated[0]


def test_tf32_is_on_during_the_job_and_restored_after(tmp_path):
    before = torch.backends.cuda.matmul.allow_tf32
    result = run(tmp_path / "run", *ON_GPU, "method=full", "hardware.allow_tf32=true")
    assert result["exit_code"] == 0, result["error"]
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_hift_offload_round_trips_through_pinned_host_memory(tmp_path):
    result = run(tmp_path / "run", *ON_GPU, "method=hift", "method.state_policy=offload")
    assert result["exit_code"] == 0, result["error"]
    transfers = result["method"]["transfers"]
    assert transfers["d2h_bytes"] > 0 and transfers["h2d_bytes"] > 0 and transfers["copy_s"] > 0


def test_bf16_full_fine_tuning_steps_fp32_masters(tmp_path):
    result = run(tmp_path / "run", *ON_GPU, "method=full")
    assert result["exit_code"] == 0, result["error"]
    assert result["memory"]["breakdown"]["master_bytes"] == 4 * result["params"]["total"]  # fp32 copies
    assert result["method"]["masters"] == "fp32"


def test_the_device_has_a_known_bf16_peak_for_mfu():
    from ftbench.measure.meters import peak_flops

    assert peak_flops(torch.cuda.get_device_name(), "bf16-pure") is not None, torch.cuda.get_device_name()


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.bfloat16, 1.6e-2)])
def test_sampled_entries_on_cuda_equal_the_dense_gradient(dtype, rtol):
    """SIFT's sampled path (torch.sparse.sampled_addmm, CSR, in token chunks) on CUDA, at a LLaMA MLP
    shape and SIFT's rate: the selected entries of gᵀx, summed in fp32."""
    from ftbench.methods.sampled_grad import sampled_entries

    generator = torch.Generator(device="cuda").manual_seed(0)
    g = torch.randn(2048, 1376, device="cuda", generator=generator).to(dtype)
    x = torch.randn(2048, 512, device="cuda", generator=generator).to(dtype)
    flat = torch.randperm(1376 * 512, device="cuda", generator=generator)[:7046].sort().values.to(torch.int32)
    exact = (g.double().t() @ x.double()).reshape(-1)[flat.long()]
    for chunks in (4, 1):
        got = sampled_entries(g, x, flat, chunks)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), exact, rtol=rtol, atol=rtol * float(exact.abs().max()))


@pytest.mark.parametrize("path", ["sampled", "dense"])
def test_sift_runs_either_weight_gradient_path(tmp_path, path):
    result = run(tmp_path / "run", *ON_GPU, "method=sift", f"method.weight_grad={path}")
    assert result["exit_code"] == 0, result["error"]
    assert set(result["method"]["weight_grad_paths"].values()) == {path}

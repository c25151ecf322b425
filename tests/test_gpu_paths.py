"""Faults of the GPU code paths that show on the CPU too: the final evaluation's memory, fp16
launches, TF32 flags that outlive a job."""

import pytest
import torch

import ftbench.job.preflight
import ftbench.job.steps
from ftbench.methods.base import Method
from helpers import run

LM = ["task=synthetic_lm", "task.max_steps=2", "task.num_train=16", "task.num_eval=8", "task.batch_size=4"]


def _watch_final_evaluation(monkeypatch) -> dict:
    """What the task's final evaluation sees: its batch size and the optimizer's state then."""
    seen: dict = {}
    build_task, attach = ftbench.job.preflight.build_task, Method.attach

    def recording_attach(self, optimizer):
        seen["optimizer"] = optimizer
        return attach(self, optimizer)

    def recording_build(*args, **kwargs):
        task = build_task(*args, **kwargs)
        evaluate = task.evaluate

        def recording_evaluate(model, ctx):
            seen.update(batch_size=ctx.batch_size, state_tensors=sum(
                torch.is_tensor(v) for s in seen["optimizer"].state.values() for v in s.values()))
            return evaluate(model, ctx)

        task.evaluate = recording_evaluate
        return task

    monkeypatch.setattr(ftbench.job.preflight, "build_task", recording_build)
    monkeypatch.setattr(Method, "attach", recording_attach)
    return seen


def test_the_final_evaluation_runs_without_optimizer_state(tmp_path, monkeypatch):
    seen = _watch_final_evaluation(monkeypatch)
    result = run(tmp_path / "run", "task.max_steps=2", "task.num_train=64", "task.num_eval=8")
    assert result["exit_code"] == 0, result["error"]
    assert result["memory"]["breakdown"]["optimizer_state_bytes"] > 0  # training had state
    assert seen["state_tensors"] == 0


def test_the_eval_batch_counts_beams(tmp_path, monkeypatch):
    """eval.batch_size counts sequences on the device: 4 beams per prompt leave 8 // 4 prompts a batch."""
    seen = _watch_final_evaluation(monkeypatch)
    result = run(tmp_path / "run", *LM, "eval.batch_size=8", "eval.num_beams=4", "eval.max_new_tokens=2")
    assert result["exit_code"] == 0, result["error"]
    assert seen["batch_size"] == 2


def test_fp16_from_accelerate_is_refused_in_one_line(tmp_path, monkeypatch):
    """`accelerate launch --mixed_precision fp16` sets this variable; its GradScaler would scale
    losses that nothing unscales."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    result = run(tmp_path / "run", "task.max_steps=1")
    assert result["exit_code"] == 2 and result["status"] == "failed"
    assert result["error"].startswith("hardware.precision: fp16") and "\n" not in result["error"]


def test_tf32_flags_are_restored_when_the_job_ends(tmp_path, monkeypatch):
    """resolve() switches TF32 on for GPUs; the next job of a multirun must find the process's own setting."""
    resolve = ftbench.job.steps.resolve

    def resolve_as_on_a_gpu(cfg):
        hw = resolve(cfg)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        return hw

    monkeypatch.setattr(ftbench.job.steps, "resolve", resolve_as_on_a_gpu)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        result = run(tmp_path / "run", "task.max_steps=1", "task.num_train=64", "task.num_eval=8")
        assert result["exit_code"] == 0, result["error"]
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


PROFILE = ["mode=profile", "profile.batch_size=2", "profile.seq_len=8", "profile.trace_memory=false"]


def test_hift_offload_checks_host_memory_before_pinning(tmp_path, monkeypatch):
    import ftbench.methods.block_rotation.state_store as state_store

    monkeypatch.setattr(state_store, "host_available_bytes", lambda: 2**20)
    result = run(tmp_path / "run", *PROFILE, "method=hift", "profile.warmup_steps=0", "profile.steps=1")
    assert result["exit_code"] == 2, result["error"]
    assert result["error"].startswith("method.state_policy: offload keeps") and "0.0 GiB available" in result["error"]


def test_profile_times_hift_after_a_cycle_of_first_visits(tmp_path):
    result = run(tmp_path / "run", *PROFILE, "method=hift", "profile.warmup_steps=1", "profile.steps=2")
    assert result["exit_code"] == 0, result["error"]
    cycle = result["method"]["cycle_steps"]
    assert cycle > 1 and result["plan"]["measure_from_step"] == cycle
    assert result["throughput"]["timed_steps"] == 2 and result["train"]["steps"] == cycle + 2


@pytest.mark.parametrize("steps_per_block,timed,warmup", [(5, 3, 1), (5, 6, 6), (2, 3, 3)])
def test_the_warm_up_grows_only_past_first_visits(steps_per_block, timed, warmup):
    """BAdam-like blocks (2 rotating layers): a timed window inside the first block needs no longer
    warm-up; one that reaches the second block's first visit (step 5, or 2) starts right after it."""
    from ftbench.methods import build_method
    from helpers import compose, method_context, tiny_model

    cfg = compose("method=badam", f"method.steps_per_block={steps_per_block}")
    method = build_method(cfg.method)
    method.prepare(tiny_model("tiny-llama"), method_context())
    assert method.warmup_steps(1, timed) == warmup


class _Props:
    def __init__(self, name, memory, major, minor):
        self.name, self.total_memory, self.major, self.minor = name, memory, major, minor


@pytest.mark.parametrize("props,precision,tf32", [
    (_Props("NVIDIA H200", 150_119_981_056, 9, 0), "bf16-pure", True),
    (_Props("NVIDIA A100-SXM4-80GB", 85_089_566_720, 8, 0), "bf16-pure", True),
    (_Props("Tesla V100-SXM2-32GB", 34_089_730_048, 7, 0), "fp32", False),  # bf16 only emulated there
])
def test_hardware_auto_reads_the_device_it_finds(monkeypatch, props, precision, tf32):
    from omegaconf import OmegaConf

    from ftbench.config.tree import config_dir
    from ftbench.engine.hardware import resolve, restored_process_settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation included
    with restored_process_settings():
        torch.backends.cuda.matmul.allow_tf32 = False
        hw = resolve(OmegaConf.load(config_dir() / "hardware" / "auto.yaml"))
        assert torch.backends.cuda.matmul.allow_tf32 is tf32
    assert hw.device.type == "cuda" and hw.precision == precision and hw.gradient_checkpointing
    assert (hw.info.name, hw.info.memory_bytes, hw.info.bf16, hw.info.tf32) == (
        props.name, props.total_memory, precision == "bf16-pure", tf32)

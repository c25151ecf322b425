"""Shared test helpers: compose configs, run jobs in-process, build tiny models and folders, train a few steps."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

import toy_method
from ftbench.config.tree import config_dir
from ftbench.job.compose import register_configs
from ftbench.methods import config_class, names

if os.environ.get(toy_method.ENV):  # before any test module builds its table of methods (tests/test_registry.py)
    toy_method.register()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# The whole batch per micro-batch: a test never depends on this machine's free memory (test_fit_batch
# tests hardware.max_micro_batch_size=auto, the default, on its own).
CPU_DEFAULTS = ["hardware=cpu", "train.progress=false", "hardware.max_micro_batch_size=null"]
# A one-step run on the synthetic task's small sets (the bad-input and bad-folder tests' runs)
QUICK = ["task.num_train=64", "task.num_eval=32", "train.max_steps=1"]


def method_table(*purposes: str) -> list[tuple[str, list[str]]]:
    """(name, overrides) of every registered method, the overrides its schema declares for `purposes`
    (methods/config.py: quick, short_setup, every_part, switching, same_draws), in that order."""
    return [(name, [o for purpose in purposes for o in getattr(config_class(name), purpose)]) for name in names()]


def compose(*overrides: str) -> DictConfig:
    """The composed config of `ftbench <overrides>` on the CPU."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=[*CPU_DEFAULTS, *overrides])


def run(out_dir: Path, *overrides: str) -> dict:
    """Run one job in-process; return its result.json with the exit code added."""
    from ftbench.job.run import run_job

    code = run_job(compose(*overrides), out_dir, overrides=list(overrides))
    result = json.loads((out_dir / "result.json").read_text())
    result["exit_code"] = code
    return result


CLI_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def gpu_check_script():
    """scripts/gpu_check.py (`make gpu-check`) imported as the module gpu_check."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def executable(name: str) -> str:
    """An entry point installed beside this Python (ftbench, ftbench-report, ...)."""
    return str(Path(sys.executable).with_name(name))


def peft_adapter(folder: Path, base: str | None) -> Path:
    """A PEFT LoRA adapter folder as PeftModel.save_pretrained writes it: adapter_config.json and the adapter's
    weights, no config.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "base_model_name_or_path": base, "r": 4, "target_modules": ["q_proj", "v_proj"]}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64)},
              folder / "adapter_model.safetensors")
    return folder


def tokenizer_only(folder: Path) -> Path:
    """A folder holding a byte-level tokenizer and no model."""
    from ftbench.models.tokenizer import byte_level_tokenizer

    byte_level_tokenizer().save_pretrained(folder)
    return folder


def an_export(folder: Path) -> Path:
    """ftbench's export of a LoRA run (<run>/checkpoint): the adapter and the merged model, each in a subfolder."""
    peft_adapter(folder / "adapter", None)
    (folder / "merged").mkdir()
    (folder / "merged" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def holding(files: dict[str, str]):
    """A maker of a folder holding these files (name: text)."""
    def make(folder: Path) -> Path:
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        return folder
    return make


def llm_adapters_rows(n: int) -> list[dict]:
    """Records in the LLM-Adapters format (task=math, task=commonsense): an 'answer' beside the output."""
    return [{"instruction": f"q{i}", "input": "", "output": f"a {i}", "answer": str(i)} for i in range(n)]


def refused(result: dict, key: str) -> str:
    """The error of a run stopped before training with exit 2 naming `key`."""
    assert result["exit_code"] == 2 and result["status"] == "failed", result["error"]
    assert result["error"].startswith(f"{key}: ") and "\n" not in result["error"]
    assert not (result["train"] or {}).get("loss_curve")  # stopped before the first step
    return result["error"]


def trained(result: dict, steps: int) -> dict:
    """The result of a run that trained `steps` steps."""
    assert result["exit_code"] == 0, result["error"]
    assert len(result["train"]["loss_curve"]) == steps
    return result


def cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run an installed entry point (`args[0]`) in a subprocess."""
    return subprocess.run([executable(args[0]), *args[1:]], cwd=cwd or REPO, env=CLI_ENV, capture_output=True,
                          text=True, timeout=timeout)


def tiny_model(model: str = "tiny-llama", head: str = "seq_cls", num_labels: int = 2,
               dtype: str = "fp32") -> torch.nn.Module:
    """A random-init tiny model from conf/model/<model>.yaml."""
    from ftbench.models.loading import load_model

    cfg = compose(f"model={model}")
    built = load_model(cfg.model, head, num_labels, torch.device("cpu"), dtype, "eager")
    built.config.pad_token_id = 0
    return built


def synthetic_batches(batch_size: int = 8, seed: int = 0, head: str = "seq_cls",
                      vocab: int = 64, length: int = 12) -> Iterator[dict[str, torch.Tensor]]:
    """Endless deterministic batches of token ids (no padding)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(5, vocab, (batch_size, length), generator=generator)
        labels = ids.clone() if head == "causal_lm" else torch.randint(0, 2, (batch_size,), generator=generator)
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def method_context(head: str = "seq_cls", checkpointing: bool = False, seed: int = 0):
    from ftbench.methods.base import MethodContext

    def calibration(n):
        stream = synthetic_batches(seed=seed + 1, head=head)
        return (next(stream) for _ in range(n))

    return MethodContext(head=head, device=torch.device("cpu"), precision="fp32",
                         gradient_checkpointing=checkpointing, seed=seed, calibration_batches=calibration,
                         loss=lambda m, b: m(**b).loss)


def train_steps(model, method, batches: Iterator[dict], steps: int, lr: float = 0.1, optimizer: str = "sgd",
        accumulation: int = 1, max_grad_norm: float | None = None, weight_decay: float = 0.0,
        method_state: dict | None = None):
    """Train `steps` optimizer steps with the real loop (constant lr); return the optimizer.
    `method_state` is loaded once the optimizer is attached (the resume timing rule)."""
    from ftbench.config.schema import OptimConfig
    from ftbench.engine.hardware import make_accelerator
    from ftbench.engine.loggers import NullLogger
    from ftbench.engine.loop import Compute, Trainee, TrainSpec, Watchers, train
    from ftbench.measure.meters import MemoryMeter, SpeedMeter
    from ftbench.methods.base import optimizer_for, scheduler_for

    optim_cfg = OptimConfig(name=optimizer, scheduler="constant", max_grad_norm=max_grad_norm,
                            weight_decay=weight_decay)
    opt = optimizer_for(method, model, optim_cfg, lr, method_state)
    scheduler = scheduler_for(opt, method, optim_cfg, steps)
    spec = TrainSpec(steps=steps, micro_batch_size=0, accumulation=accumulation, measure_from=0,
                     max_grad_norm=max_grad_norm, progress=False)
    train(Trainee(model, method, opt, scheduler), batches, spec,
          Compute(make_accelerator(torch.device("cpu")), _head_of(model)),
          Watchers(MemoryMeter(torch.device("cpu")), SpeedMeter(), NullLogger()))
    return opt


def _head_of(model) -> str:
    return "causal_lm" if "CausalLM" in type(model).__name__ else "seq_cls"


def sweep(argv: list[str], capsys) -> tuple[int, str]:
    """`ftbench -m ...` in this process (as the CLI runs it): (exit code, stderr). Hydra's
    logging setup is undone afterwards, so later tests log as before."""
    from ftbench.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with pytest.raises(SystemExit) as done:
            main(argv)
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
    return done.value.code, capsys.readouterr().err


def killed_in_a_child(run_dir: Path, command: list[str], arrange: Callable[[], None]) -> None:
    """Run the job in a forked process that first calls `arrange` (which makes the job SIGKILL itself at
    some point): no handler runs, nothing is written after that point. Raises AssertionError unless the
    child died of SIGKILL within 60 s."""
    import torch

    # GNU OpenMP is not fork-safe: after a parallel region of several threads the child hangs (conftest.py)
    assert torch.get_num_threads() == 1, "killed_in_a_child forks: run the tests with OMP_NUM_THREADS=1"
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            arrange()
            run(run_dir, *command)
        finally:
            os._exit(1)
    for _ in range(600):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError("the child did not finish within 60 s")

"""Where a result was measured: versions, commit, device, precision."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from ftbench import __version__
from ftbench.results import Env


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The checkout's commit (with '+dirty' when it has uncommitted changes); None outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment(hw, world_size: int) -> Env:
    on_gpu = hw.device.type == "cuda"
    return Env(
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=_version("transformers"),
        peft=_version("peft"),
        accelerate=_version("accelerate"),
        ftbench=__version__,
        git_commit=git_commit(),
        device_name=torch.cuda.get_device_name(hw.device) if on_gpu else platform.processor() or "cpu",
        cuda=torch.version.cuda if on_gpu else None,
        device_memory_bytes=hw.info.memory_bytes if hw.info else None,
        precision=hw.precision,
        gradient_checkpointing=hw.gradient_checkpointing,
        attn_implementation=hw.attn_implementation,
        world_size=world_size,
        cpu_threads=torch.get_num_threads(),
        alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF"),
    )

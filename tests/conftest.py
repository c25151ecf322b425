"""Tests run on the CPU, offline, with tiny models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from ftbench.quiet import quiet_libraries, quiet_transformers  # noqa: E402

quiet_libraries()
quiet_transformers()


@pytest.fixture(autouse=True)
def _seeded():
    import torch

    torch.manual_seed(0)

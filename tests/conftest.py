"""Tests run on the CPU, offline, with tiny models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One OpenMP thread, as `make test` runs: tests fork (helpers.killed_in_a_child), and a child forked after
# the parent ran a GNU OpenMP parallel region with more threads waits forever at that team's barrier.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from ftbench.quiet import quiet_libraries, quiet_transformers  # noqa: E402

quiet_libraries()
quiet_transformers()


@pytest.fixture(autouse=True)
def _earlier_objects_frozen():
    """Each run's job hygiene calls gc.collect(), which scans every object alive (torch's, transformers',
    ~0.3 s on 2 cores). Before each test the earlier tests' garbage is collected and what survives is frozen
    (gc.freeze: never scanned again), so a run's collect scans only what this test made."""
    import gc

    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _seeded():
    import torch

    torch.manual_seed(0)

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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: a second intra-op thread only adds its spinning (half a planner test file's CPU time). The
    planner's test files (test_plan_*.py) and test_resume.py use it for every test."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Test files whose module fixture trains several runs (minutes on 2 cores) or reads SmolLM2's tokenizer out of
# its GGUF file (~35 s of CPU). Under pytest-xdist (`make test`) each of these files runs whole on one worker,
# so its fixture runs once; every other test goes to whichever worker is free.
ONE_WORKER = ("test_compare.py", "test_distributed.py", "test_reproduce.py", "test_smollm2.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's default distribution (`-n N`, dist "load") with the ONE_WORKER files each kept whole.
    (xdist's own `--dist loadgroup` no longer groups under pytest 9.2: pytest-dev/pytest-xdist#1386.)
    Returns None for any other `--dist`, which xdist then serves."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class CostlyFixturesTogether(LoadScopeScheduling):
        # _split_scope (nodeid -> unit of work) is the method xdist's own LoadFile/LoadGroup schedulers override
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path.rsplit("/", 1)[-1] in ONE_WORKER else nodeid

    return CostlyFixturesTogether(config, log)

"""A new method is one folder and one YAML: a method registered at run time (tests/toy_method.py: a
schema and a `Method` subclass, no YAML) composes as `method=toy`, and every check that is table-driven
over the registry takes it without a list being edited: each test file's table (collected with
FTBENCH_TEST_TOY_METHOD=1; the quick ones run), the GPU check's jobs, the benchmarks' method lists and
`ftbench --help`. The whole toy run, every table's cases but the data-parallel launch:
`FTBENCH_TEST_TOY_METHOD=1 pytest -k toy tests/test_{methods,architecture,plan_methods,resume,hygiene,masters}.py`."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

import toy_method
from ftbench import methods
from helpers import CLI_ENV, REPO, compose

# Every test file with a table over the registry, and the toy's cases run here: those of a few seconds each
# (whole training runs, the planner's probes and the data-parallel launch are left to the command above).
TABLE_DRIVEN = ["test_methods.py", "test_architecture.py", "test_plan_methods.py", "test_resume.py", "test_distributed.py",
                "test_hygiene.py", "test_masters.py", "test_gpu.py", "test_generative.py", "test_config.py"]
RUN = ["test_architecture.py", "test_masters.py", "test_generative.py", "test_config.py",
       "test_methods.py::test_checkpointing_gives_every_trainable_tensor_a_gradient"]


@pytest.fixture
def toy():
    toy_method.register()
    try:
        yield toy_method.NAME
    finally:
        toy_method.unregister()


def test_the_toy_composes_from_its_schema_and_builds(toy):
    cfg = compose(f"method={toy}")
    assert cfg.method.name == toy and cfg.method.lr == toy_method.ToyConfig.lr
    assert type(methods.build_method(cfg.method)).__name__ == "Toy"


def test_the_gpu_check_benchmarks_and_help_list_the_toy(toy, tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # (dataclasses look their module up there)
    spec.loader.exec_module(gpu_check)
    assert [j.overrides for j in gpu_check.jobs(None) if j.label == toy] == [[f"method={toy}"]]

    from ftbench.bench import real
    from ftbench.bench.peers import timing

    ran = []

    def cell(out, overrides):
        ran.append(out.name)
        return {"status": "failed", "validation_history": []}

    monkeypatch.setattr(real, "run_cell", cell)
    real.main(["--tasks", "math", "--out", str(tmp_path)])
    assert ran == ["math-base", *(f"math-{m}" for m in methods.names())] and f"math-{toy}" in ran
    assert toy in timing.all_methods()

    from ftbench.cli import main

    main(["--help"])
    listing = re.search(r"^method: .*(?:\n  .*)*", capsys.readouterr().out, re.M).group(0)  # wrapped lines too
    assert re.search(rf"\b{toy}\b", listing)


def test_every_table_driven_test_runs_a_method_registered_at_run_time(tmp_path):
    env = {**CLI_ENV, toy_method.ENV: "1", "OMP_NUM_THREADS": "1"}
    pytest_ = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(REPO)]  # -q: pyproject
    collected = subprocess.run([*pytest_, "--collect-only", *(f"tests/{f}" for f in TABLE_DRIVEN)], cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stdout[-3000:]
    ids = collected.stdout.splitlines()
    for name in TABLE_DRIVEN:
        assert any(i.startswith(f"tests/{name}::") and re.search(r"\btoy\b", i) for i in ids), f"{name} skips the toy"
    done = subprocess.run([*pytest_, "-k", "toy", "--basetemp", str(tmp_path / "t"), *(f"tests/{f}" for f in RUN)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    assert re.search(r"(\d+) passed", done.stdout) and "failed" not in done.stdout.splitlines()[-1]

"""The config tree, the recipes and the shipped harness tasks are found from a checkout (editable install)
and from a wheel."""

import subprocess
import sys

import pytest

from ftbench.config.tree import config_dir
from ftbench.paper.recipes import recipes_dir
from helpers import REPO

PROBE = ("import ftbench, ftbench.cli as c, ftbench.paper.recipes as r, ftbench.tasks.harness as h; "
         "print(ftbench.__file__); print(c.config_dir()); print(r.recipes_dir()); "
         "print(c.validate(['method=lora', 'task=cola'], multirun=False)); "
         "print(all((h.SHIPPED / f).is_file() for f in ('ftbench_math.yaml', 'ftbench_answers.py')))")


def test_the_checkout_provides_both():
    assert config_dir() == REPO / "conf" and recipes_dir() == REPO / "recipes"


def test_a_wheel_carries_both_inside_the_package(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(REPO)], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"could not build a wheel here (needs hatchling from the package registry): {built.stderr[-200:]}")
    wheel = next((tmp_path / "dist").glob("ftbench-*.whl"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True,
                           env={"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert probe.returncode == 0, probe.stderr
    module, conf, recipes, problem, harness_tasks = probe.stdout.split("\n")[:5]
    assert module.startswith(str(site)) and conf == str(site / "ftbench" / "conf")
    assert recipes == str(site / "ftbench" / "recipes") and problem == "None"
    assert harness_tasks == "True"  # src/ftbench/tasks/harness_tasks/ travels inside the package


def test_the_torch_floor_covers_what_the_code_uses_and_the_readme_examples_meet_it():
    """torch.nn.utils.get_total_norm and transformers 5 need torch 2.6; every `TORCH='torch==X'`
    the README suggests must satisfy the declared floor."""
    import re

    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(Requirement(d) for d in deps if Requirement(d).name == "torch")
    assert not torch_req.specifier.contains("2.5.1") and torch_req.specifier.contains("2.6.0")
    examples = re.findall(r"TORCH='torch==([0-9.]+)'", (REPO / "README.md").read_text())
    assert examples and all(Version(v) >= Version("2.6") for v in examples)

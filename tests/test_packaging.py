"""The config tree and the recipes are found from a checkout (editable install) and from a wheel."""

import subprocess
import sys

import pytest

from ftbench.cli import config_dir
from ftbench.recipes import recipes_dir
from helpers import REPO

PROBE = ("import ftbench, ftbench.cli as c, ftbench.recipes as r; "
         "print(ftbench.__file__); print(c.config_dir()); print(r.recipes_dir()); "
         "print(c.validate(['method=lora', 'task=cola'], multirun=False))")


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
    module, conf, recipes, problem = probe.stdout.split("\n")[:4]
    assert module.startswith(str(site)) and conf == str(site / "ftbench" / "conf")
    assert recipes == str(site / "ftbench" / "recipes") and problem == "None"

"""wandb logging works offline and is imported only when asked for."""

import subprocess
import sys

from helpers import run


def test_wandb_offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = run(tmp_path / "run", "logger=wandb", "task.max_steps=3", "task.num_train=64", "task.num_eval=32")
    assert result["exit_code"] == 0, result["error"]
    assert any((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_a_run_without_wandb_never_imports_it():
    code = ("import sys; from ftbench.cli import main; from ftbench.job.run import run_job; "
            "print('wandb' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"

"""Sweeps on a cluster through Hydra's submitit launcher: submitit_local runs the same path as
submitit_slurm (each job pickled into its own process, results read back from the sweep folder),
so the comparison table comes from the jobs' result files."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install ftbench[cluster]")

from helpers import cli  # noqa: E402


def test_a_submitit_local_sweep_runs_every_job_and_prints_the_table(tmp_path):
    done = cli("ftbench", "-m", "hydra/launcher=submitit_local", "method=full,lora", "task=synthetic",
               "train.max_steps=3", "model=tiny-llama", "hardware=cpu", "train.progress=false",
               "task.num_train=64", "task.num_eval=16", "hardware.max_micro_batch_size=null",
               f"hydra.sweep.dir={tmp_path}", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    statuses = {p.parent.name: json.loads(p.read_text())["status"] for p in tmp_path.glob("*/result.json")}
    assert statuses == {"method=full": "ok", "method=lora": "ok"}  # job folders named by the swept key
    assert list((tmp_path / ".submitit").iterdir())  # the jobs went through submitit, not in-process
    table = [line for line in done.stdout.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in table] == ["full", "lora"]
    assert (tmp_path / "report.md").is_file() and (tmp_path / "report.png").is_file()


def test_the_exit_code_reflects_the_jobs_with_a_launcher_that_runs_them_elsewhere(tmp_path):
    """submitit's local launcher runs each job in a process of its own and reports nothing back: the
    sweep's exit code is read from the jobs' results (the nan job: 1)."""
    done = cli("ftbench", "-m", "hydra/launcher=submitit_local", "optim.lr=1e-3,1e12", "optim.name=sgd",
               "optim.max_grad_norm=null", "task.max_steps=2", "task.num_train=16", "task.num_eval=8",
               "task.batch_size=4", "train.progress=false", "hardware=cpu", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert done.returncode == 1, done.stderr
    status = {p.name: json.loads((p / "result.json").read_text())["status"]
              for p in (tmp_path / "sweep").iterdir() if (p / "result.json").is_file()}
    assert status == {"optim.lr=0.001": "ok", "optim.lr=1000000000000.0": "nan"}


def test_the_slurm_group_asks_one_task_per_gpu():
    from hydra import compose, initialize_config_dir

    from ftbench.config.tree import config_dir
    from ftbench.job.compose import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4",
                                           "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 4, 4)
    assert launcher.timeout_min > 0 and launcher.array_parallelism > 0

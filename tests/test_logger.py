"""The metric loggers: what W&B, TensorBoard and MLflow hold is read back through each library's own
reader and compared with result.json; a sweep groups its runs; a backend that fails costs one warning
line and the run goes on; none is imported unless selected."""

import importlib.util
import json
import logging
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ftbench.errors import UserError
from helpers import cli, compose, run

QUICK = ("task.max_steps=3", "task.num_train=64", "task.num_eval=32")


def scalars(logdir: Path, tag: str) -> list[list]:
    """[[step, value], ...] of one tag, through TensorBoard's own event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return [[e.step, e.value] for e in events.Scalars(tag)]


def mlflow_runs(folder: Path) -> dict:
    """{run name: run} of the local store under `folder`, through MLflow's client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = [r for e in experiments for r in client.search_runs([e.experiment_id])]
    return client, experiments, {r.info.run_name: r for r in runs}


def history(client, run, key: str) -> list[list]:
    return [[m.step, m.value] for m in client.get_metric_history(run.info.run_id, key)]


def close_to(logged: list[list], curve: list[list]) -> bool:
    """TensorBoard keeps float32: equal steps, values within float32's precision."""
    return [s for s, _ in logged] == [s for s, _ in curve] and all(
        abs(a - b) <= 1e-6 * max(1.0, abs(b)) for (_, a), (_, b) in zip(logged, curve))


def test_wandb_offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = run(tmp_path / "run", "logger=wandb", *QUICK)
    assert result["exit_code"] == 0, result["error"]
    assert any((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_tensorboard_and_mlflow_hold_what_result_json_holds(tmp_path):
    out = tmp_path / "run"
    result = run(out, "logger=[tensorboard,mlflow]", *QUICK)
    assert result["exit_code"] == 0, result["error"]
    curve = result["train"]["loss_curve"]
    assert len(curve) == 3

    logdir = out / "tensorboard" / "full-synthetic"  # a single run: its folder, the job named <method>-<task>
    assert close_to(scalars(logdir, "train/loss"), curve)
    assert close_to(scalars(logdir, "memory/breakdown/weights_bytes"),
                    [[3, result["memory"]["breakdown"]["weights_bytes"]]])

    client, experiments, runs = mlflow_runs(out)
    assert [e.name for e in experiments if e.name != "Default"] == ["ftbench"]
    logged = runs["full-synthetic"]
    assert history(client, logged, "train/loss") == curve  # float64 in the store: exactly the same
    assert logged.info.status == "FINISHED" and logged.data.tags["status"] == "ok"
    for key, value in result["metrics"].items():
        assert logged.data.metrics[key] == pytest.approx(value)
    assert logged.data.metrics["throughput/tokens_per_s"] == pytest.approx(result["throughput"]["tokens_per_s"])
    assert logged.data.params["optim.lr"] == str(result["config"]["optim"]["lr"])
    assert logged.data.params["method.name"] == "full"
    kept = Path(client.download_artifacts(logged.info.run_id, "result.json", str(tmp_path)))
    assert json.loads(kept.read_text())["train"]["loss_curve"] == curve


def test_a_sweep_is_one_experiment_and_one_logdir_with_runs_named_by_job_folder(tmp_path):
    sweep = tmp_path / "sweep"
    done = cli("ftbench", "-m", "method=full,lora", "logger=[tensorboard,mlflow]", "hardware=cpu",
               "train.progress=false", *QUICK, f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-2000:]
    curves = {p.parent.name: json.loads(p.read_text())["train"]["loss_curve"] for p in sweep.glob("*/result.json")}
    assert sorted(curves) == ["method=full", "method=lora"]

    assert sorted(p.name for p in (sweep / "tensorboard").iterdir()) == ["comparison", "method=full", "method=lora"]
    for job, curve in curves.items():
        assert close_to(scalars(sweep / "tensorboard" / job, "train/loss"), curve)

    client, experiments, runs = mlflow_runs(sweep)
    assert [e.name for e in experiments if e.name != "Default"] == [sweep.name]  # one experiment per sweep
    assert sorted(runs) == ["comparison", "method=full", "method=lora"]
    for job, curve in curves.items():
        assert history(client, runs[job], "train/loss") == curve
    kept = {a.path for a in client.list_artifacts(runs["comparison"].info.run_id)}
    assert {"report.md", "report.csv"} <= kept
    table = (sweep / "report.md").read_text().splitlines()[2:]  # each job once: MLflow's copies are no runs
    assert sorted(row.split("|")[1].strip() for row in table) == ["full", "lora"]


def failing_logger(case: str, tmp_path: Path, stack: ExitStack) -> list[str]:
    """The overrides of a logger that cannot work: an MLflow server on a closed port, one that takes the
    connection and never answers, a TensorBoard folder under a file (root may write anywhere else)."""
    if case == "unwritable folder":
        (tmp_path / "a-file").write_text("")
        return ["logger=tensorboard", f"logger.tensorboard.dir={tmp_path / 'a-file' / 'tb'}"]
    server = stack.enter_context(socket.socket())
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    if case == "silent server":
        server.listen(8)
    else:
        server.close()  # the port is closed again: nothing listens there
    return ["logger=mlflow", f"logger.mlflow.tracking_uri=http://127.0.0.1:{port}",
            "logger.mlflow.timeout_s=1"]


@pytest.mark.parametrize("case", ["closed port", "silent server", "unwritable folder"])
def test_a_logger_that_fails_costs_one_warning_line_and_the_run_goes_on(tmp_path, caplog, case):
    with ExitStack() as stack, caplog.at_level(logging.WARNING, logger="ftbench"):
        result = run(tmp_path / "run", *failing_logger(case, tmp_path, stack), *QUICK)
    assert result["exit_code"] == 0 and result["status"] == "ok", result["error"]
    assert len(result["train"]["loss_curve"]) == 3
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("logger.")]
    assert len(lines) == 1 and "the run goes on" in lines[0] and "\n" not in lines[0], lines


@pytest.mark.parametrize("group, module, extra", [("tensorboard", "tensorboard", "tensorboard"),
                                                   ("mlflow", "mlflow", "mlflow")])
def test_a_missing_extra_is_named_in_one_line(monkeypatch, group, module, extra):
    cfg = compose(f"logger={group}")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(UserError, match=rf"logger\.{group}: .*pip install 'ftbench\[{extra}\]'"):
        OmegaConf.to_object(cfg.logger).check("logger")


def test_a_run_without_loggers_never_imports_them():
    code = ("import sys; from ftbench.cli import main; from ftbench.job.run import run_job; "
            "print(sorted(m for m in ('wandb', 'tensorboard', 'mlflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stderr

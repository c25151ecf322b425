"""A canceled job says so in one line, exit code 130: a SIGTERM reaches a run's child process and stops a plan
at once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftbench.errors import Canceled

# Kind 3: a canceled run says so once.

@pytest.mark.parametrize("raised,lines", [(Canceled("canceled by SIGTERM"), 0), (KeyboardInterrupt(), 1)])
def test_a_canceled_job_is_one_line(monkeypatch, capsys, raised, lines):
    from ftbench import cli

    def launch(argv, folders=None):
        raise raised

    monkeypatch.setattr(cli, "launch", launch)
    monkeypatch.setattr(cli, "validate", lambda overrides, multirun, folders=None: None)
    with pytest.raises(SystemExit) as stop:
        cli.main(["train.max_steps=1"])
    assert stop.value.code == 130
    assert len(capsys.readouterr().err.strip().splitlines()) == lines  # the job printed its own line


# Kind 10: a run started in a child process stops with its parent.

PARENT = """
import sys
from ftbench.job import children
sys.exit(children.run([sys.executable, "-c", sys.argv[1]]))
"""
CHILD = """
import signal, sys, time
from pathlib import Path

def stop(signum, frame):
    Path("{marker}").write_text(str(signum))
    sys.exit(130)
signal.signal(signal.SIGTERM, stop)
Path("{marker}.ready").write_text("")
time.sleep(60)
"""


def test_sigterm_to_a_parent_reaches_its_child_run(tmp_path):
    marker = tmp_path / "child-got"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD.format(marker=marker)], env=env)
    deadline = time.time() + 30
    while not Path(f"{marker}.ready").exists() and time.time() < deadline:
        time.sleep(0.05)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 130  # it waited for the child, which recorded the signal
    assert marker.read_text() == str(int(signal.SIGTERM))


# Kind 11: SIGTERM stops a plan at once, as it stops a run: one line, plan.json says canceled, exit code 130
# (a probe's step used to run to its end first: minutes at a long profile.seq_len).

def test_sigterm_stops_a_plan_at_once(tmp_path):
    run_dir = tmp_path / "plan"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    plan = subprocess.Popen([sys.executable, "-m", "ftbench.cli", "plan", "model=llama2-7b", "hardware=h100-80gb",
                             f"hydra.run.dir={run_dir}"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / ".hydra" / "config.yaml").exists() and time.time() < deadline:  # the job has started
        time.sleep(0.1)
    time.sleep(5)  # into the probes (a 7B plan runs for tens of seconds)
    assert plan.poll() is None
    plan.send_signal(signal.SIGTERM)
    sent = time.time()
    assert plan.wait(timeout=60) == 130
    assert time.time() - sent < 20
    assert plan.stderr.read().splitlines()[-1:] == ["ftbench: canceled: canceled by SIGTERM"]
    written = json.loads((run_dir / "plan.json").read_text())
    assert (written["status"], written["error"]) == ("canceled", "canceled by SIGTERM")

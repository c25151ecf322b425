"""Multiruns: one table across jobs (printed, markdown, CSV, PNG), rebuilt by ftbench-report."""

import csv

from ftbench.report import rows
from helpers import cli


def test_a_multirun_prints_and_writes_one_table(tmp_path):
    sweep = tmp_path / "sweep"
    done = cli("ftbench", "-m", "method=full,lora", "task.max_steps=3", "task.num_train=64", "task.num_eval=32",
               f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr
    assert "ftbench comparison" in done.stdout
    assert {p.name for p in sweep.iterdir()} >= {"report.md", "report.csv", "report.png"}
    with (sweep / "report.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["run"] for row in table] == ["full", "lora"]
    assert all(row["status"] == "ok" and row["metric"] == "dev/acc" for row in table)
    assert float(table[1]["trainable_pct"]) < float(table[0]["trainable_pct"]) == 100.0

    rebuilt = tmp_path / "rebuilt"
    again = cli("ftbench-report", str(sweep), "--out", str(rebuilt))
    assert again.returncode == 0, again.stderr
    assert (rebuilt / "report.md").read_text() == (sweep / "report.md").read_text()


def test_report_without_results_is_one_line(tmp_path):
    done = cli("ftbench-report", str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("ftbench-report: error: no result.json under")


def fake(method: str, overrides: list[str]):
    from ftbench.results import Breakdown, Params, Result, Run

    result = Result(status="ok", metrics={"dev/acc": 0.5}, params=Params(trainable_pct=1.0),
                    run=Run(method=method, overrides=overrides, metric="dev/acc"))
    result.memory.breakdown = Breakdown(weights_bytes=10, master_bytes=0, grad_bytes=1, optimizer_state_bytes=2)
    return result


def test_rows_are_labelled_by_what_tells_them_apart():
    table = rows([fake("sift", ["method=sift", "method.sparse_rate=0.01", "task=cola"]),
                  fake("sift", ["method=sift", "method.sparse_rate=0.05", "task=cola"])])
    assert [r["run"] for r in table] == ["sift method.sparse_rate=0.01", "sift method.sparse_rate=0.05"]
    assert table[0]["state_bytes"] == 13 and table[0]["value"] == 0.5

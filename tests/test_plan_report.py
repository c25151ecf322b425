"""What a plan reports: the largest micro-batch that fits (at the search's cap, auto by default, planned by a job
without touching its Accelerator), plan.json, and ftbench-report's predicted peak beside the measured one."""

import json

import pytest

from ftbench import report
from ftbench.job.run import run_job
from ftbench.plan.planner import largest_micro_batch_from, peak_at, plan_fit, predict, target
from helpers import compose, run
from plan_helpers import SHAPE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_largest_micro_batch_is_the_last_that_fits():
    cfg = compose("mode=plan", *SHAPE, "method=lora", "hardware=gpu-24gb")
    tgt = target(cfg)
    the_fit = plan_fit(cfg, tgt)
    peaks = [peak_at(the_fit, tgt, b) for b in (1, 5, 6)]
    assert peaks[0] < peaks[1] < peaks[2]
    assert largest_micro_batch_from(the_fit, tgt, peaks[1]) == 5
    assert largest_micro_batch_from(the_fit, tgt, peaks[1] - 1) == 4
    assert largest_micro_batch_from(the_fit, tgt, peaks[0] - 1) == 0


def test_a_largest_micro_batch_at_the_search_cap_says_at_least(tmp_path, capsys):
    """A tiny model on 24 GB: was "largest micro-batch that fits: 4096", the search's cap (MAX_MICRO_BATCH) given
    as if it were what fits. Now "at least 4096 (the search's cap)", and plan.json says it was capped."""
    from ftbench.plan.planner import MAX_MICRO_BATCH
    from ftbench.plan.report import describe, run_plan, table_rows

    assert run_plan(compose("mode=plan", *SHAPE, "method=galore", "hardware=gpu-24gb"), tmp_path) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["plan"]["largest_micro_batch"] == MAX_MICRO_BATCH and plan["plan"]["largest_micro_batch_capped"]
    said = f"largest micro-batch that fits: at least {MAX_MICRO_BATCH} (the search's cap)"
    assert capsys.readouterr().out.rstrip().endswith(said)
    assert describe(plan).endswith(said) and table_rows([plan])[0][-1] == said.split(": ")[1]
    plan["plan"].update(largest_micro_batch=58, largest_micro_batch_capped=False)
    assert describe(plan).endswith("largest micro-batch that fits: 58") and table_rows([plan])[0][-1] == "58"


def test_plan_json_and_report_set_predicted_beside_measured(tmp_path, capsys):
    args = ["model=tiny-llama", "profile.batch_size=2", "profile.seq_len=16", "method=sift"]
    measured = run(tmp_path / "run", "mode=profile", *args, "profile.warmup_steps=1", "profile.steps=2")
    assert run_job(compose("mode=plan", *args), tmp_path / "run") == 0
    assert "predicted peak" in capsys.readouterr().out
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["status"] == "ok" and plan["run"]["mode"] == "plan"
    assert set(plan["memory"]["breakdown"]) == set(measured["memory"]["breakdown"]) - {"optimizer_state_host_bytes"}
    assert plan["memory"]["train_peak_allocated_bytes"] == measured["memory"]["train_peak_traced_bytes"]
    report.build([tmp_path / "run"], tmp_path / "report")
    table = (tmp_path / "report" / "report.md").read_text()
    assert "predicted peak" in table and "| 0.00 |" in table  # predicted vs measured: 0.00 %
    assert run_job(compose("mode=plan", *args), tmp_path / "run") == 2  # never overwrites a plan


def test_a_plan_beside_no_run_is_listed_with_the_reason(tmp_path):
    """Every plan named shows: one that predicts none of the runs (was: dropped without a word) gets its own
    table, plan.md, and a line under the report's table saying why; a failed plan in a run's folder too."""
    args = ["model=tiny-llama", "method=sift", "profile.seq_len=16"]
    assert run_job(compose("mode=plan", *args, "profile.batch_size=2"), tmp_path / "plan") == 0
    run(tmp_path / "run", "mode=profile", *args, "profile.batch_size=4", "profile.warmup_steps=1", "profile.steps=1")
    failed = {"schema": 1, "status": "failed", "error": "model.path: no such folder", "run": {"method": "sift"}}
    (tmp_path / "run" / "plan.json").write_text(json.dumps(failed))
    written = report.build([tmp_path / "plan", tmp_path / "run"], tmp_path / "report")
    text = written["markdown"].read_text()
    assert "predicted peak" not in text and text.count("\n| sift ") == 1
    assert (f"\n{tmp_path / 'plan' / 'plan.json'}: beside no run: no result.json in its folder, and no profile run "
            "of sift on tiny-llama with micro-batch 2 x 16 tokens (a training run is set beside the plan in its own "
            "folder only)\n") in text
    assert f"\n{tmp_path / 'run' / 'plan.json'}: beside no run: the plan failed (model.path: no such folder)\n" in text
    assert written["plans"] == tmp_path / "report" / "plan.md"
    assert written["plans"].read_text().count("\n| sift |") == 2


def test_the_default_auto_micro_batch_plans_the_whole_batch():
    """hardware.max_micro_batch_size=auto (every group's default) plans the batch at once; the plan says what fits."""
    tgt = target(compose("mode=plan", "model=tiny-llama", "profile.batch_size=4", "profile.seq_len=16", "method=lora"))
    assert (tgt.micro_batch, tgt.accumulation) == (4, 1)
    capped = target(compose("mode=plan", "model=tiny-llama", "profile.batch_size=4", "profile.seq_len=16",
                            "method=lora", "hardware.max_micro_batch_size=2"))
    assert (capped.micro_batch, capped.accumulation) == (2, 2)


def test_the_planners_probes_leave_the_jobs_accelerate_state_alone(monkeypatch):
    """A job plans its micro-batch with CPU probes after it made its Accelerator; accelerate keeps one
    process-wide state, so a probe that made an Accelerator of its own would move the job's to the CPU
    (on a GPU: every 7B job of `make gpu-check` stopped at its first forward, 2026-12-04)."""
    from ftbench.engine import hardware

    made = []
    monkeypatch.setattr(hardware, "reset_accelerator_state", lambda: made.append("reset"))
    predict(compose("mode=plan", "model=tiny-llama", "profile.batch_size=2", "profile.seq_len=16", "method=full"))
    assert made == []


def test_an_earlier_plan_md_is_kept_as_a_report_is(tmp_path):
    """plan.md was written over whatever was there: a folder in its place crashed ftbench-report (IsADirectoryError),
    an earlier table was lost. Now either is kept as plan.previous-N.md; the same table written again keeps nothing."""
    assert run_job(compose("mode=plan", "model=tiny-llama", "method=lora", "profile.seq_len=16"), tmp_path / "plan") == 0
    out = tmp_path / "report"
    (out / "plan.md").mkdir(parents=True)
    assert report.build([tmp_path / "plan"], out)["plans"].read_text().count("\n| lora |") == 1
    assert (out / "plan.previous-1.md").is_dir()
    (out / "plan.md").write_text("mine")
    report.build([tmp_path / "plan"], out)
    assert (out / "plan.previous-2.md").read_text() == "mine"
    report.build([tmp_path / "plan"], out)
    assert sorted(p.name for p in out.iterdir()) == ["plan.md", "plan.previous-1.md", "plan.previous-2.md"]

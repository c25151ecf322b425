"""Step-counting knobs a run of its length cannot reach are refused before training, in one line naming
the key (config/within.py): a warm-up as long as the run, a validation interval past its end, a
rotation that never switches. Knobs that may exceed the run on purpose are accepted."""

import pytest

from ftbench.cli import validate
from helpers import run

SHORT = ["train.max_steps=6"]


@pytest.mark.parametrize("overrides,key", [
    (["optim.warmup_steps=100"], "optim.warmup_steps: 100 is not below the run's 6 steps"),
    (["optim.warmup_steps=6"], "optim.warmup_steps: 6 is not below the run's 6 steps"),
    (["optim.warmup_ratio=0.9"], "optim.warmup_ratio: 0.9 warms up over all of the run's 6 steps"),
    (["eval.every_steps=7"], "eval.every_steps: 7 exceeds the run's 6 steps"),
    (["eval.every_steps=6", "train.select=best"], "eval.every_steps: 6 leaves train.select=best one validation"),
    (["-m", "optim.warmup_steps=2,50"], "optim.warmup_steps: 50 is not below"),  # a sweep: before any job runs
])
def test_a_knob_the_run_cannot_reach_is_one_line_naming_it(overrides, key):
    multirun = overrides[0] == "-m"
    problem = validate([*SHORT, *overrides[multirun:]], multirun=multirun)
    assert problem is not None and problem.startswith(key), problem
    assert "\n" not in problem


@pytest.mark.parametrize("overrides", [
    ["optim.warmup_steps=5"], ["optim.warmup_ratio=0.8"], ["eval.every_steps=6"],
    ["train.checkpoint_every=100"],  # the checkpoint after the last step is written anyway
    ["train.log_every=100"], ["train.measure_warmup_steps=100"],
    ["method=galore", "method.update_proj_gap=100"],  # one projection for the whole run
    ["mode=profile", "optim.warmup_steps=100"],  # profiling counts its own steps
    ["train.max_steps=0", "optim.warmup_steps=100"],  # scores the untouched model: nothing trains
])
def test_a_knob_that_may_exceed_the_run_is_accepted(overrides):
    assert validate([*SHORT, *overrides], multirun=False) is None


def refused_before_training(result: dict, key: str) -> None:
    assert result["exit_code"] == 2 and result["status"] == "failed", result["error"]
    assert result["error"].startswith(key) and "\n" not in result["error"]
    assert result["run"]["phase"] == "setup" and not result["train"]["loss_curve"]


QUICK = ["task.num_train=32", "task.num_eval=8", "task.batch_size=8", "train.progress=false"]


def test_steps_counted_from_the_data_are_checked_in_the_job(tmp_path):
    """Epochs decide the steps: the command line cannot know them, the job refuses once it has counted."""
    args = [*QUICK, "task.max_steps=null", "train.epochs=1", "optim.warmup_steps=10"]
    assert validate(args, multirun=False) is None
    refused_before_training(run(tmp_path / "run", *args), "optim.warmup_steps: 10 is not below the run's 4 steps")


def test_a_schedule_stepped_per_cycle_counts_cycles(tmp_path):
    """HiFT steps its schedule once per cycle (4 units of tiny-llama: 8 steps are 2 cycles)."""
    refused_before_training(run(tmp_path / "run", *QUICK, "method=hift", "task.max_steps=8", "optim.warmup_steps=2"),
                            "optim.warmup_steps: 2 is not below the 2 steps of the learning-rate schedule")


def test_a_rotation_that_never_switches_is_refused(tmp_path):
    """BAdam's 50 steps per block in a 3-step run: one layer trains, the other never would."""
    refused_before_training(run(tmp_path / "never", *QUICK, "method=badam", "task.max_steps=3"),
                            "method.steps_per_block: 50 steps per block in a 3-step run")
    switching = run(tmp_path / "switching", *QUICK, "method=badam", "task.max_steps=3", "method.steps_per_block=2")
    assert switching["status"] == "ok" and switching["train"]["steps"] == 3  # part of a cycle: allowed


@pytest.mark.parametrize("overrides,cycle", [
    (["method=hift"], 4),  # one step for each of tiny-llama's 4 units: layer.1 and the head would not train
    (["method=hift", "method.steps_per_block=2", "method.group_size=2"], 4),
])
def test_a_rotation_shorter_than_one_cycle_is_refused(tmp_path, overrides, cycle):
    """HiFT's per-cycle lr schedule: a run that ends before one cycle would never step its rate and would
    leave the cycle's later units untrained: refused, as a run that never switches."""
    result = run(tmp_path / "run", *QUICK, *overrides, "task.max_steps=3")
    refused_before_training(result, "method.steps_per_block: ")
    assert "one cycle of the" in result["error"] and f"takes {cycle} steps" in result["error"]
    assert f"set train.max_steps to at least {cycle}" in result["error"]


def test_a_rotation_of_one_cycle_or_sampled_groups_trains(tmp_path):
    """One whole cycle trains every unit; HiFT with a per-step schedule, and LISA's sampled layers, may end
    within a cycle once they have switched (as BAdam may, above)."""
    hift = run(tmp_path / "hift", *QUICK, "method=hift", "task.max_steps=4")
    assert hift["status"] == "ok" and hift["method"]["steps_done"] == hift["method"]["cycle_steps"] == 4
    per_step = run(tmp_path / "per_step", *QUICK, "method=hift", "method.lr_policy=per_step", "task.max_steps=3")
    assert per_step["status"] == "ok" and per_step["train"]["steps"] == 3
    lisa = run(tmp_path / "lisa", *QUICK, "method=lisa", "method.steps_per_block=2", "method.group_size=1",
               "task.max_steps=3")
    assert lisa["status"] == "ok"

"""Step-counting knobs a run of its length cannot reach are refused before training, in one line naming
the key (config/within.py): a warm-up as long as the run, a validation interval past its end, a
rotation that never switches. Knobs that may exceed the run on purpose are accepted."""

import dataclasses
import random
import re
from types import SimpleNamespace

import pytest

from ftbench.cli import validate
from ftbench.errors import UserError
from ftbench.methods.block_rotation import length
from ftbench.methods.block_rotation.units import Schedule
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


@pytest.mark.parametrize("overrides,steps", [
    (["train.max_steps=3", "optim.warmup_ratio=0.7"], 4),  # 2/3: was "at most 0.667", itself refused
    (["train.max_steps=9", "optim.warmup_ratio=0.95"], 20),
    (["train.max_steps=7", "optim.warmup_steps=7"], 8),
])
def test_the_value_a_warmup_refusal_suggests_is_accepted(overrides, steps):
    """Both fixes it names pass: a shorter warm-up, or the fewest steps that fit this one (was: 'or train for
    more steps', no count)."""
    problem = validate(overrides, multirun=False)
    key = overrides[-1].split("=")[0]
    assert validate([*overrides[:-1], f"{key}={advice(problem)}"], multirun=False) is None, problem
    assert problem.endswith(f", or set train.max_steps to at least {steps}"), problem
    assert validate([f"train.max_steps={steps}", overrides[-1]], multirun=False) is None
    assert validate([f"train.max_steps={steps - 1}", overrides[-1]], multirun=False) is not None


def advice(error: str) -> str:
    """The value a warm-up refusal suggests: its ratio ('at most R'), else the most steps below its bound."""
    ratio = re.search(r"set optim.warmup_ratio to at most ([0-9.]+)", error)
    return ratio.group(1) if ratio else str(int(re.search(r"set optim.warmup_steps below (\d+)", error).group(1)) - 1)


def followed(error: str) -> list[list[str]]:
    """The overrides of each fix a refusal names after its last ';', joined by ', or ' (each fix whole: 'use no
    warm-up (optim.warmup_steps=0) with train.max_steps to at least 8' is two overrides)."""
    fixes = []
    for fix in error.rsplit("; ", 1)[1].split(", or "):
        overrides = [f"{key}={value}" for key, value in re.findall(r"(method\.\w+)=(\d+)", fix)]
        overrides += [f"{key}=0" for key in re.findall(r"use no warm-up \((optim\.\w+)=0\)", fix)]
        overrides += [f"{key}={value}" for key, value in re.findall(r"(train\.max_\w+) to at least (\d+)", fix)]
        shorter = re.search(r"(optim.warmup_\w+) (below|to at most)", fix)
        overrides += [f"{shorter.group(1)}={advice(fix)}"] if shorter else []
        assert overrides, fix
        fixes.append(overrides)
    return fixes


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


@pytest.mark.parametrize("knob,value", [("optim.warmup_ratio", 0.9), ("optim.warmup_steps", 8)])
def test_a_warmup_under_a_per_cycle_schedule_is_refused_on_the_cycles_and_the_advice_trains(tmp_path, knob, value):
    """The command line cannot count HiFT's cycles (they count the model's units): the job refuses on them, and
    what it suggests trains (was: refused on the 8 optimizer steps, 'at most 0.875', then again on 2 cycles)."""
    args = [*QUICK, "method=hift", "task.max_steps=8"]
    assert validate([*args, f"{knob}={value}"], multirun=False) is None
    result = run(tmp_path / "refused", *args, f"{knob}={value}")
    refused_before_training(result, f"{knob}: {value} ")
    assert "the 2 steps of the learning-rate schedule" in result["error"], result["error"]
    assert run(tmp_path / "advised", *args, f"{knob}={advice(result['error'])}")["status"] == "ok"


def test_a_rotation_that_never_switches_is_refused(tmp_path):
    """BAdam's 50 steps per block in a 3-step run: one layer trains, the other never would."""
    refused_before_training(run(tmp_path / "never", *QUICK, "method=badam", "task.max_steps=3"),
                            "method.steps_per_block: 50 steps per block in a 3-step run")
    switching = run(tmp_path / "switching", *QUICK, "method=badam", "task.max_steps=3", "method.steps_per_block=2")
    assert switching["status"] == "ok" and switching["train"]["steps"] == 3  # part of a cycle: allowed


def test_a_rotation_that_never_switches_is_refused_before_a_warmup_advice_it_would_refuse(tmp_path):
    """A 4-step BAdam run of 50 steps per block and 90 % warm-up: the command line advised a ratio of 0.75,
    whose run was then refused on method.steps_per_block. The job refuses the rotation first; once it
    switches, the warm-up's refusal comes, and its advice trains."""
    args = [*QUICK, "method=badam", "train.max_steps=4"]
    assert validate([*args, "optim.warmup_ratio=0.9"], multirun=False) is None
    refused_before_training(run(tmp_path / "never", *args, "optim.warmup_ratio=0.9"),
                            "method.steps_per_block: 50 steps per block in a 4-step run")
    switching = [*args, "method.steps_per_block=3"]
    assert validate([*switching, "optim.warmup_ratio=0.9"], multirun=False) is None  # the steps count the layers
    problem = run(tmp_path / "warm", *switching, "optim.warmup_ratio=0.9")["error"]
    assert problem.startswith("optim.warmup_ratio: 0.9 warms up over all of the run's 4 steps"), problem
    assert run(tmp_path / "advised", *switching, f"optim.warmup_ratio={advice(problem)}")["status"] == "ok"


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
    within a cycle once they have switched (as BAdam may, above): LISA once it has drawn a second layer
    (seed 1: layer.0, then layer.1)."""
    hift = run(tmp_path / "hift", *QUICK, "method=hift", "task.max_steps=4")
    assert hift["status"] == "ok" and hift["method"]["steps_done"] == hift["method"]["cycle_steps"] == 4
    per_step = run(tmp_path / "per_step", *QUICK, "method=hift", "method.lr_policy=per_step", "task.max_steps=3")
    assert per_step["status"] == "ok" and per_step["train"]["steps"] == 3
    lisa = run(tmp_path / "lisa", *QUICK, "method=lisa", "method.steps_per_block=2", "method.group_size=1",
               "task.max_steps=3", "seed=1")
    assert lisa["status"] == "ok", lisa["error"]
    assert all(lisa["engagement"]["units"][f"layer {i}"]["changed"] for i in (0, 1))


@pytest.mark.parametrize("overrides,line", [
    (["train.max_steps=5"], "method.steps_per_block: 20 steps per block in a 5-step run: it never switches, so "
     "only layer.1 of the 2 rotating units would train; set method.steps_per_block=1, or set train.max_steps to "
     "at least 81"),
    (["method.steps_per_block=3", "optim.warmup_steps=3", "train.max_steps=4"], "method.steps_per_block: 3 steps "
     "per block in a 4-step run: its 2 blocks all draw layer.1 (order=sample draws at random, seed 0), so only "
     "layer.1 of the 2 rotating units would train; set train.max_steps to at least 13"),
])
def test_a_sampled_rotation_that_draws_its_first_group_alone_is_refused_and_each_fix_trains_another(
        tmp_path, overrides, line):
    """LISA draws its layers at random (seed 0: layer.1 for its first 4 intervals), so switching is not enough:
    a run whose draws all repeat its first group trains that group alone. Was: 5 steps advised 4 steps per block
    or 21 steps, each rc 0 with layer 0 unchanged; 4 steps of 3 a block under 3 warm-up steps, rc 0, layer 0
    unchanged and no warning. Refused, and each fix it names trains layer 0 as well."""
    args = [*QUICK, "method=lisa", "method.group_size=1", *overrides]
    result = run(tmp_path / "refused", *args)
    refused_before_training(result, "method.steps_per_block: ")
    assert result["error"] == line, result["error"]
    for i, fix in enumerate(followed(result["error"])):
        done = run(tmp_path / f"fix{i}", *args, *fix)
        assert done["status"] == "ok", (fix, done["error"])
        assert all(done["engagement"]["units"][f"layer {n}"]["changed"] for n in (0, 1)), (fix, done["engagement"])


def test_a_sampled_rotation_is_left_to_the_job_which_refuses_its_draws_first(tmp_path):
    """Whether LISA's draws reach a second layer depends on the model's layers, so the command line leaves a
    sampled rotation's run-wide knobs to the job (as it does a run within one block): there the rotation is
    refused first (was: eval.every_steps refused on the command line, then the run refused on its draws)."""
    args = [*QUICK, "method=lisa", "method.group_size=1", "method.steps_per_block=3", "train.max_steps=5",
            "eval.every_steps=6"]
    assert validate(args, multirun=False) is None
    refused_before_training(run(tmp_path / "drawn", *args), "method.steps_per_block: 3 steps per block in a "
                            "5-step run: its 2 blocks all draw layer.1")


def test_a_per_cycle_rotation_visiting_every_unit_within_its_first_cycle_says_its_rate_never_steps():
    """HiFT, 3 steps a block over 4 units in 10 steps: every unit is visited, but the per-cycle lr schedule has
    no whole cycle to step on (was: 'so 0 of them () would never train')."""
    with pytest.raises(UserError) as refused:
        length.check(Schedule((0, 1, 2, 3), (), 1, 3, "down2up", False, 0), ["embedding", "layer.0", "layer.1",
                     "head"], True, 10, length.NO_WARMUP)
    assert str(refused.value) == ("method.steps_per_block: 3 steps per block in a 10-step run: one cycle of the 4 "
                                  "rotating units takes 12 steps, so its learning-rate schedule, which steps once a "
                                  "cycle, would never step; set train.max_steps to at least 12, or "
                                  "method.steps_per_block=2")


@pytest.mark.parametrize("overrides,steps,line,need", [
    (["method=hift", "optim.warmup_steps=1"], 5, "optim.warmup_steps: a warm-up runs the first step of the learning-rate "
     "schedule at lr 0, here its whole first cycle (4 steps: the per-cycle schedule steps once a cycle), and 3 of the "
     "rotating units (layer.0, layer.1, head) are active only then in this 5-step run", 8),
    (["method=hift", "optim.warmup_ratio=0.5"], 7, "optim.warmup_ratio: a warm-up runs the first step", 8),
    (["method=badam", "method.steps_per_block=1", "optim.warmup_steps=1"], 2, "optim.warmup_steps: a warm-up runs "
     "the first step of the learning-rate schedule at lr 0, here its first step, and 1 of the rotating units "
     "(layer.0) are active only then in this 2-step run", 3),
])
def test_a_unit_active_only_while_the_warmup_holds_the_lr_at_0_is_refused(tmp_path, overrides, steps, line, need):
    """A warm-up starts the rate at 0 for the schedule's first step: under HiFT's per-cycle schedule that is a
    whole cycle, every unit's first visit (was: 5 steps, optim.warmup_steps=1, rc 0 with layer.0, layer.1 and the
    head unchanged); under a per-step one, BAdam's first block of one step. The refusal's step count trains every unit."""
    result = run(tmp_path / "short", *QUICK, *overrides, f"task.max_steps={steps}")
    refused_before_training(result, line.split(": ")[0] + ": ")
    assert result["error"].startswith(line) and f"set train.max_steps to at least {need}," in result["error"]
    done = run(tmp_path / "advised", *QUICK, *overrides, f"task.max_steps={need}")
    assert done["status"] == "ok", done["error"]
    idle = [name for name, unit in done["engagement"]["units"].items() if unit["watched"] and not unit["changed"]]
    assert not idle, idle


TOKENS = ["train.max_steps=null", "train.max_tokens=800"]  # 5 steps of 8 examples (seed 0)


@pytest.mark.parametrize("overrides,key,fixes", [
    # HiFT, 2 steps a block over 4 units: 8 steps are one cycle, one lr step, all of it the warm-up's
    (["method=hift", "method.order=up2down", "method.steps_per_block=2", "optim.warmup_steps=1", "train.max_steps=8"],
     "optim.warmup_steps: 1 is not below the 1 steps", [["optim.warmup_steps=0"], ["train.max_steps=15"]]),
    (["method=hift", "method.order=up2down", "method.steps_per_block=2", "optim.warmup_steps=1", "train.max_steps=9"],
     "optim.warmup_steps: a warm-up runs", [["train.max_steps=15"], ["optim.warmup_steps=0"]]),
    (["method=hift", "optim.warmup_steps=1", *TOKENS], "optim.warmup_steps: a warm-up runs", 2),
    (["method=hift", "optim.warmup_steps=1", "train.max_steps=null", "train.max_tokens=300"],  # 2 steps
     "method.steps_per_block: ", 2),
    (["method=badam", "method.steps_per_block=10", *TOKENS], "method.steps_per_block: ", 2),
    (["method=badam", "method.steps_per_block=10", "optim.warmup_steps=1", *TOKENS], "method.steps_per_block: ", 2),
    (["method=badam", "method.steps_per_block=2", "optim.warmup_ratio=0.9", "train.max_steps=8"],
     "optim.warmup_ratio: 0.9 warms up", 2),
    (["method=lisa", "method.group_size=1", "method.steps_per_block=1", "optim.warmup_steps=5", *TOKENS],
     "optim.warmup_steps: 5 is not below", 2),
    (["method=full", "optim.warmup_steps=5", *TOKENS], "optim.warmup_steps: 5 is not below", 2),
])
def test_every_fix_a_length_refusal_names_trains(tmp_path, overrides, key, fixes):
    """A rotation's or a warm-up's refusal names the fewest steps that pass every check (length.py and the
    warm-up's), in tokens under a token budget, and a setting that passes with the run's own length: each
    trains (was: 'or train for more steps' with no count; 9 steps then refused again, 15 worked; under
    train.max_tokens, 'train.max_steps to at least N', which is refused beside it; BAdam 'method.steps_per_block
    below 2' under a warm-up, refused on its lr-0 first step)."""
    args = [*QUICK, *overrides]
    result = run(tmp_path / "refused", *args)
    refused_before_training(result, key)
    found = followed(result["error"])
    assert found == fixes if isinstance(fixes, list) else len(found) == fixes, result["error"]
    if "train.max_steps=null" in overrides:
        assert "train.max_steps" not in result["error"] and "set train.max_tokens to at least" in result["error"]
    for i, fix in enumerate(found):
        done = run(tmp_path / f"fix{i}", *args, *fix)
        assert done["status"] == "ok", (fix, done["error"])
        if any(f.startswith("train.max_") for f in fix) and "optim" not in " ".join(fix):  # the fewest: one less refused
            key, value = next(f for f in fix if f.startswith("train.max_")).split("=")
            less = run(tmp_path / f"less{i}", *args, *fix[:-1], f"{key}={int(value) - 1}")
            assert less["status"] == "failed", (fix, less["error"])


def test_every_fix_a_rotation_refusal_names_passes_and_its_steps_are_the_fewest():
    """Over random rotations (orders, groups, blocks, per-cycle or per-step lr, warm-ups in steps and ratios) and
    run lengths: length.check refuses exactly what length.trains rejects, every fix it names passes, and
    length.fewest_steps is the first length that passes."""
    draw = random.Random(0)
    for _ in range(150):
        units, order = draw.randint(1, 5), draw.choice(["down2up", "up2down", "random", "sample"])
        s = Schedule(tuple(range(1, units + 1)), (), draw.randint(1, units if order == "sample" else units + 1),
                     draw.randint(1, 3), order, order == "random" and draw.random() < 0.5, draw.randint(0, 3))
        per_cycle = draw.random() < 0.5
        optim = draw.choice([SimpleNamespace(warmup_steps=draw.randint(0, 3), warmup_ratio=0.0),
                             SimpleNamespace(warmup_steps=None, warmup_ratio=draw.choice([0.0, 0.5, 0.7]))])
        fewest = length.fewest_steps(s, per_cycle, optim)
        assert fewest is None or length.trains(s, per_cycle, fewest, optim)
        assert not any(length.trains(s, per_cycle, n, optim) for n in range(1, fewest or 200))
        for steps in range(1, 16):
            try:
                length.check(s, [f"u{i}" for i in range(units + 1)], per_cycle, steps, optim)
            except UserError as refused:
                assert not length.trains(s, per_cycle, steps, optim)
                for fix in followed(str(refused)):
                    settings = dict(f.split("=") for f in fix)
                    changed = dataclasses.replace(s, **{k.split(".")[1]: int(v) for k, v in settings.items()
                                                        if k.startswith("method.")})
                    warmup = next((k for k in settings if k.startswith("optim.")), None)
                    fixed = SimpleNamespace(warmup_steps=int(settings[warmup]), warmup_ratio=0.0) \
                        if warmup == "optim.warmup_steps" else SimpleNamespace(
                            warmup_steps=None, warmup_ratio=float(settings[warmup])) if warmup else optim
                    longer = int(settings.get("train.max_steps", steps))
                    assert length.trains(changed, per_cycle, longer, fixed), (s, per_cycle, steps, optim, fix)
                    assert reaches_a_second_group(changed, longer), (s, per_cycle, steps, optim, fix)
            else:
                assert length.trains(s, per_cycle, steps, optim)
                assert reaches_a_second_group(s, steps), (s, per_cycle, steps, optim)


def reaches_a_second_group(s: Schedule, steps: int) -> bool:
    """Whether a run of `steps` steps makes a unit beyond its first group active (or has a single group),
    read off the schedule's draws themselves."""
    reached = set().union(*(s.rotating(i) for i in range(s.interval(steps - 1) + 1)))
    return len(s.queue) <= s.group_size or bool(reached - set(s.rotating(0)))

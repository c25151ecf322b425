"""Checkpoints and exact resume, for every method: a run stopped at a step's end (Ctrl-C,
SIGTERM) or killed (SIGKILL) and run again with the same command ends bitwise where the
run that was never stopped ends (CPU, fp32, gradient accumulation, validation on the way)."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

import ftbench.engine.batches
from ftbench.job.checkpoint import MICRO_BATCH_WHY
from helpers import killed_in_a_child, method_table, run, sweep

# method -> overrides: a short setup, and what trains switches within the few steps (HiFT's cycle wraps after
# step 4 by default: offload, per-cycle schedule)
METHODS = dict(method_table("short_setup", "switching"))
# 5 steps of 2 micro-batches; checkpoints every 2 steps (and after the last); validation every 2.
COMMAND = ["task.num_train=48", "task.num_eval=8", "task.max_length=16", "task.max_steps=5", "task.batch_size=8",
           "hardware.max_micro_batch_size=4", "train.checkpoint_every=2", "eval.every_steps=2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny models


def signal_at(monkeypatch, micro_batch: int, signum: int) -> None:
    """The training stream sends `signum` to this process while drawing micro-batch `micro_batch`
    (counted from the start of training, also in a resumed run)."""
    shuffled = ftbench.engine.batches.shuffled

    def hooked(examples, micro_batch_size, collate, seed, rank=0, world_size=1, skip=0, **kwargs):
        stream = shuffled(examples, micro_batch_size, collate, seed, rank, world_size, skip, **kwargs)
        if seed >= 10007:  # calibration draws from its own stream (the run's seed + 10007)
            yield from stream
            return
        for i, batch in enumerate(stream, start=skip):
            if i == micro_batch:
                os.kill(os.getpid(), signum)
            yield batch

    monkeypatch.setattr(ftbench.engine.batches, "shuffled", hooked)


def final_state(run_dir):
    """The last checkpoint's trainable tensors and optimizer state."""
    last = run_dir / "checkpoints" / "step-5"
    state = torch.load(last / "state.pt", weights_only=False)
    return load_file(str(last / "trainable.safetensors")), state["optimizer"], state["method"]


def assert_bitwise(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_bitwise(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise(x, y, f"{where}[{i}]")
    elif hasattr(a, "__dict__") and not isinstance(a, type):  # an object in an optimizer's state (a projector)
        assert type(a) is type(b), where
        assert_bitwise(vars(a), vars(b), where)
    else:
        assert a == b, where


def assert_same_run(resumed: dict, straight: dict, resumed_dir, straight_dir):
    assert resumed["status"] == straight["status"] == "ok"
    assert resumed["train"]["loss_curve"] == straight["train"]["loss_curve"]  # exact floats
    assert resumed["validation_history"] == straight["validation_history"]
    assert resumed["metrics"] == straight["metrics"]
    assert_bitwise(final_state(resumed_dir), final_state(straight_dir))


@pytest.mark.parametrize("method", METHODS)
def test_a_killed_then_stopped_run_resumes_bitwise(tmp_path, monkeypatch, method):
    """SIGKILL during step 4 (step 2's checkpoint survives), then the same command resumes and is
    stopped by Ctrl-C or SIGTERM (alternating by row) at the end of step 4 (its validation is
    then still due: it runs first on resume) or step 3; the same command finishes the run."""
    row = list(METHODS).index(method)
    command = [f"method={method}", *METHODS[method], *COMMAND]
    straight = run(tmp_path / "straight", *command)
    folder = tmp_path / "run"

    killed_in_a_child(folder, command, lambda: signal_at(monkeypatch, 6, signal.SIGKILL))
    assert not (folder / "result.json").exists()
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-2"]  # step 3 was done, not saved

    signum = (signal.SIGINT, signal.SIGTERM)[row % 2]
    stop_step = 4 - row % 2
    with monkeypatch.context() as patch:
        signal_at(patch, (stop_step - 1) * 2, signum)  # while drawing that step's first micro-batch
        with pytest.raises(KeyboardInterrupt):
            run(folder, *command)
    stopped = json.loads((folder / "result.json").read_text())
    assert stopped["status"] == "canceled"
    assert stopped["error"] == f"canceled by {'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'}"
    assert stopped["resumed_from"] == {"path": str(folder / "checkpoints" / "step-2"), "steps_before": 2}
    assert stopped["train"]["steps"] == stop_step
    assert [c["step"] for c in stopped["checkpoints"]] == [2, stop_step]
    assert all(c["bytes"] > 0 for c in stopped["checkpoints"]) and stopped["checkpoints"][-1]["write_s"] >= 0

    resumed = run(folder, *command)  # the same command, the same folder
    assert resumed["resumed_from"] == {"path": str(folder / "checkpoints" / f"step-{stop_step}"),
                                       "steps_before": stop_step}
    assert resumed["train"]["steps"] == 5
    assert (folder / "result.previous-1.json").exists()  # the canceled result, moved aside
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-5"]  # keep_checkpoints=1
    assert_same_run(resumed, straight, folder, tmp_path / "straight")


def test_a_checkpoint_of_another_config_is_refused_naming_the_keys(tmp_path, monkeypatch, capsys):
    command = ["method=sift", *COMMAND]
    with monkeypatch.context() as patch:
        signal_at(patch, 2, signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "run", *command)
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    capsys.readouterr()
    from ftbench.job.run import run_job
    from helpers import compose

    assert run_job(compose(*command, "optim.lr=0.1", "seed=3"), tmp_path / "run") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("ftbench: error: train.resume: ") and "differs in: optim.lr, seed)" in error
    assert len(error.splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before  # nothing moved

    assert run_job(compose(*command, "train.resume=/nonexistent"), tmp_path / "other") == 2
    assert "train.resume: '/nonexistent' is not a checkpoint folder" in capsys.readouterr().err


def test_a_checkpoint_of_another_micro_batch_is_refused_saying_why_and_the_command_that_made_it(
        tmp_path, monkeypatch, capsys):
    """The effective batch is the same, but the split is not the same arithmetic (dropout draws, float sums, the
    examples an epoch leaves out): refused, saying so, and giving the command that made it (meta.json's overrides)."""
    command = ["method=lora", *COMMAND]  # hardware.max_micro_batch_size=4
    with monkeypatch.context() as patch:
        signal_at(patch, 2, signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "run", *command)
    capsys.readouterr()
    from ftbench.job.run import run_job
    from helpers import compose

    smaller = [*command, "hardware.max_micro_batch_size=2"]
    assert run_job(compose(*smaller), tmp_path / "run", overrides=smaller) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "(differs in: hardware.max_micro_batch_size); hardware.max_micro_batch_size splits each batch" in error
    assert error.endswith(f"; run the command that made it (ftbench {' '.join(command)}) in the same "
                          "hydra.run.dir, or set a new hydra.run.dir to start afresh")


def planner_fits(patch, micro: int) -> None:
    """hardware.max_micro_batch_size=auto resolves to `micro` (the memory planner's answer, whatever is free)."""
    from ftbench.plan import planner

    patch.setattr(planner, "largest_micro_batch_from", lambda the_fit, tgt, budget, most: micro)


AUTO = ["method=lora", *[o for o in COMMAND if not o.startswith("hardware.max_micro_batch_size=")],
        "hardware.max_micro_batch_size=auto"]


def stopped_at_micro_batch_2(folder, monkeypatch) -> None:
    """AUTO run with `auto` resolving to 2 (4 micro-batches a step), stopped by Ctrl-C at the end of step 3."""
    with monkeypatch.context() as patch:
        planner_fits(patch, 2)
        signal_at(patch, 3 * 4 - 1, signal.SIGINT)  # while drawing step 3's last micro-batch
        with pytest.raises(KeyboardInterrupt):
            run(folder, *AUTO)
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-3"]


def test_auto_resumes_at_the_micro_batch_the_checkpoint_was_made_with(tmp_path, monkeypatch):
    """`auto` resolves to 2 while the checkpoint is made and to 4 on resume (more free memory, another machine):
    the run keeps 2, so it continues from the right place in the data and ends bitwise the run that never stopped."""
    with monkeypatch.context() as patch:
        planner_fits(patch, 2)
        straight = run(tmp_path / "straight", *AUTO)
    folder = tmp_path / "run"
    stopped_at_micro_batch_2(folder, monkeypatch)
    with monkeypatch.context() as patch:
        planner_fits(patch, 4)
        resumed = run(folder, *AUTO)
    assert resumed["resumed_from"]["steps_before"] == 3
    assert_same_run(resumed, straight, folder, tmp_path / "straight")
    assert resumed["plan"]["micro_batch_fit"]["training"]["micro_batch_size"] == 4  # what auto resolved to
    assert (resumed["plan"]["micro_batch_size"], resumed["plan"]["accumulation"]) == (2, 4)  # what trained


def test_auto_refuses_to_resume_at_a_micro_batch_that_no_longer_fits(tmp_path, monkeypatch):
    """Made at 2, and now only 1 fits: one line on hardware.max_micro_batch_size (why, and the fix), exit 2."""
    folder = tmp_path / "run"
    stopped_at_micro_batch_2(folder, monkeypatch)
    planner_fits(monkeypatch, 1)
    result = run(folder, *AUTO)
    assert result["exit_code"] == 2 and result["status"] == "failed"
    assert result["error"] == (
        f"hardware.max_micro_batch_size: auto resolves to 1 now, but {folder / 'checkpoints' / 'step-3'} was made "
        f"with micro-batch 2; {MICRO_BATCH_WHY}; resume it where 2 fits (more free memory), or set a new "
        "hydra.run.dir to start afresh")
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-3"]  # nothing lost


def test_an_older_checkpoint_under_auto_resumes_only_where_auto_resolves_to_its_micro_batch(tmp_path, monkeypatch):
    """A checkpoint from before meta.json recorded the micro-batch: its position in the data says which it was."""
    folder = tmp_path / "run"
    stopped_at_micro_batch_2(folder, monkeypatch)
    for step in (folder / "checkpoints").iterdir():
        meta = json.loads((step / "meta.json").read_text())
        meta.pop("micro_batch_size", None)
        (step / "meta.json").write_text(json.dumps(meta))
    planner_fits(monkeypatch, 4)
    result = run(folder, *AUTO)
    assert result["exit_code"] == 2
    assert result["error"] == (
        f"hardware.max_micro_batch_size: auto resolves to 4 now, but {folder / 'checkpoints' / 'step-3'} was made "
        f"with micro-batch 2 (its position in the data says so); {MICRO_BATCH_WHY}; set a new hydra.run.dir to "
        "start afresh")
    planner_fits(monkeypatch, 2)
    assert run(folder, *AUTO)["resumed_from"]["steps_before"] == 3

def test_the_checkpoints_listed_say_which_are_still_on_disk(tmp_path, monkeypatch):
    """keep_checkpoints=1: every checkpoint written stays listed (its write's cost), `removed` on those deleted
    since, in the run that wrote them and in one resumed from a checkpoint saved before they were deleted."""
    command = ["method=full", *COMMAND, "eval.every_steps=null", "train.keep_checkpoints=1"]
    folder = tmp_path / "run"
    with monkeypatch.context() as patch:
        signal_at(patch, 6, signal.SIGINT)  # stopped at the end of step 4: checkpoints 2 and 4 written
        with pytest.raises(KeyboardInterrupt):
            run(folder, *command)
    stopped = json.loads((folder / "result.json").read_text())["checkpoints"]
    assert [(c["step"], c["removed"]) for c in stopped] == [(2, True), (4, False)]
    resumed = run(folder, *command)["checkpoints"]
    assert [(c["step"], c["removed"]) for c in resumed] == [(2, True), (4, True), (5, False)]
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-5"] == [
        os.path.basename(c["path"]) for c in resumed if not c["removed"]]


def test_a_sweep_goes_on_past_a_failed_job_and_its_rerun_runs_only_that_job(tmp_path, capsys):
    folder = tmp_path / "sweep"
    command = ["-m", "optim.lr=1e-3,1e12,2e-3,3e-3", "optim.name=sgd", "optim.max_grad_norm=null", *COMMAND,
               "task.max_steps=2", "hardware=cpu", "train.progress=false", f"hydra.sweep.dir={folder}"]
    code, _ = sweep(command, capsys)
    assert code == 1  # the worst job's code
    jobs = sorted(p for p in folder.iterdir() if p.is_dir())  # named by the swept key, as Hydra writes its values
    status = {p.name: json.loads((p / "result.json").read_text())["status"] for p in jobs}
    assert status == {"optim.lr=0.001": "ok", "optim.lr=1000000000000.0": "nan", "optim.lr=0.002": "ok",
                      "optim.lr=0.003": "ok"}
    with (folder / "report.csv").open() as handle:
        assert sorted(row["status"] for row in csv.DictReader(handle)) == ["nan", "ok", "ok", "ok"]
    written = {p.name: (p / "result.json").read_text() for p in jobs}

    code, stderr = sweep(command, capsys)  # the same command, the same sweep folder
    assert code == 1
    assert stderr.count("finished ok earlier with this config; skipped") == 3
    for job in ("optim.lr=0.001", "optim.lr=0.002", "optim.lr=0.003"):  # untouched
        assert (folder / job / "result.json").read_text() == written[job]
        assert not list((folder / job).glob("result.previous-*"))
    rerun = folder / "optim.lr=1000000000000.0"
    assert (rerun / "result.previous-1.json").read_text() == written[rerun.name]  # moved aside, not deleted
    assert json.loads((rerun / "result.json").read_text())["status"] == "nan"
    assert not list(folder.glob("report.previous-*"))  # the sweep's own report, refreshed in place


@pytest.mark.parametrize("when", ["validation", "final evaluation"])
def test_sigterm_during_a_generative_evaluation_stops_at_once(tmp_path, monkeypatch, when):
    """The third forward pass of the generation sends SIGTERM; none follows it."""
    import ftbench.tasks.generate as generate

    forwards = []
    unwrap = generate.unwrap

    def hooked(model):
        model = unwrap(model)

        def count(module, args):
            forwards.append(len(forwards))
            if len(forwards) == 3:
                os.kill(os.getpid(), signal.SIGTERM)

        if not forwards:
            model.register_forward_pre_hook(count)
        return model

    monkeypatch.setattr(generate, "unwrap", hooked)
    steps = ["task.max_steps=2", "eval.every_steps=1"] if when == "validation" else ["task.max_steps=1"]
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", "task=synthetic_lm", "task.num_train=16", "task.num_eval=64", "task.batch_size=4",
            "train.checkpoint_every=1", *steps)
    assert len(forwards) == 3
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "canceled" and result["error"] == "canceled by SIGTERM"
    if when == "validation":  # the step's checkpoint is written, its validation still due
        state = torch.load(tmp_path / "run" / "checkpoints" / "step-1" / "state.pt", weights_only=False)
        assert state["log"]["pending_eval"] and state["validations"] == []
    else:  # training was done: run again, the job only evaluates
        monkeypatch.setattr(generate, "unwrap", unwrap)
        again = run(tmp_path / "run", "task=synthetic_lm", "task.num_train=16", "task.num_eval=64",
                    "task.batch_size=4", "train.checkpoint_every=1", *steps)
        assert again["status"] == "ok" and again["resumed_from"]["steps_before"] == 1
        assert again["train"]["steps"] == 1 and "dev/acc" in again["metrics"]


def test_a_resumed_stream_continues_where_the_stopped_one_was():
    from itertools import islice

    from ftbench.engine.batches import random_tokens, shuffled

    def same(a, b):
        assert len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                        for x, y in zip(a, b))

    examples = [{"input_ids": torch.tensor([i])} for i in range(10)]  # 3 micro-batches of 3 per epoch

    def collate(batch):
        return {"input_ids": torch.cat([e["input_ids"] for e in batch])}

    for rank, world in ((0, 1), (1, 2)):
        whole = list(islice(shuffled(examples, 3 // world, collate, 7, rank, world), 11))
        for skip in (1, 3, 7):
            same(list(islice(shuffled(examples, 3 // world, collate, 7, rank, world, skip), 11 - skip)), whole[skip:])
    for head in ("causal_lm", "seq_cls"):
        whole = list(islice(random_tokens(2, 5, 50, head, 3, seed=1), 6))
        same(list(islice(random_tokens(2, 5, 50, head, 3, seed=1, skip=4), 2)), whole[4:])


@pytest.mark.parametrize("broken,folder", [("meta.json", False), ("state.pt", False), ("meta.json", True),
                                           ("state.pt", True), ("trainable.safetensors", True)])
def test_an_unreadable_checkpoint_is_one_line_naming_train_resume(tmp_path, capsys, broken, folder):
    """A truncated checkpoint file, or a folder in a file's place (named as one: was "cannot be read
    (IsADirectoryError ...)"): exit 2 and one line naming train.resume and the way out, never a traceback."""
    from helpers import run

    args = ["method=sift", "task.max_steps=2", "task.num_train=16", "task.num_eval=8", "task.batch_size=4",
            "train.checkpoint_every=1", "train.progress=false"]
    first = run(tmp_path / "run", *args)
    assert first["status"] == "ok"
    (tmp_path / "run" / "result.json").unlink()  # as if the process had been killed after its last checkpoint
    step = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    if folder:
        (step / broken).unlink()
        (step / broken).mkdir()
    else:
        (step / broken).write_bytes((step / broken).read_bytes()[:20])
    capsys.readouterr()
    from ftbench.job.run import run_job
    from helpers import compose

    assert run_job(compose(*args), tmp_path / "run", overrides=args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ftbench")]
    what = f"'{step / broken}' is a directory, not a file; resume from an older one" if folder else "cannot be read"
    assert len(lines) == 1 and "train.resume:" in lines[0] and what in lines[0], lines
    written = tmp_path / "run" / "result.json"  # meta.json is read before the run starts; state.pt after
    assert not written.exists() or json.loads(written.read_text())["status"] == "failed"

"""Resume or rerun, decided from what is on disk: the newest checkpoint with the config it was made
under, and why the last attempt ended (its result.json's status and run.phase), never a status alone.
A process killed in the final evaluation resumes to an evaluation only; an attempt refused in its
set-up never turns a resumable run into one started afresh; checkpoints never move aside silently."""

from __future__ import annotations

import json
import os
import signal

import pytest
from omegaconf import OmegaConf

from ftbench import results
from ftbench.errors import UserError
from ftbench.job import rerun
from helpers import cli, compose, killed_in_a_child, run

STEPS = ["task.max_steps=2", "task.num_train=16", "task.num_eval=8", "task.batch_size=4", "train.progress=false"]


def folder(tmp_path, result: dict | None, checkpoint_config: dict | None):
    """A run folder as an earlier attempt left it: its result.json (None: none, as after a SIGKILL in
    training) and a checkpoint made under `checkpoint_config` (None: none)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    if result is not None:
        (run_dir / "result.json").write_text(json.dumps(result))
    if checkpoint_config is not None:
        step = run_dir / "checkpoints" / "step-2"
        step.mkdir(parents=True)
        (step / "meta.json").write_text(json.dumps({"step": 2, "config": checkpoint_config}))
    return run_dir


def attempt(status: str, phase: str | None, config: dict) -> dict:
    return {"status": status, "config": config, "run": {"phase": phase}, "error": None if status == "ok" else "x"}


SAME, OTHER = "same", "other"
# (the last attempt's result: (status, run.phase) or None, the checkpoint's config or None) -> what the job does
DECISIONS = [
    (("ok", "evaluate"), None, rerun.SKIP),
    (("failed", "evaluate"), SAME, rerun.RUN),  # killed in the final evaluation: its provisional result says failed
    (("failed", "train"), SAME, rerun.RUN),  # crashed in training: the checkpoint before it resumes
    (("nan", "train"), SAME, rerun.RUN),
    (("failed", "setup"), SAME, rerun.RUN),  # a refused attempt says nothing about the run
    (("canceled", "train"), SAME, rerun.RUN),
    (None, SAME, rerun.RUN),  # killed in training: no result, a checkpoint
    (None, None, rerun.RUN),
    (("failed", "train"), OTHER, rerun.AFRESH),  # it trained and failed; a changed setting starts afresh
    (("oom", "train"), OTHER, rerun.AFRESH),
    (("failed", "setup"), OTHER, "train.resume"),  # refused, naming the keys
    (("canceled", "train"), OTHER, "train.resume"),
    (None, OTHER, "train.resume"),
    (("ok", "evaluate"), OTHER, "hydra.run.dir"),  # an ok result of another config is never replaced
]


@pytest.mark.parametrize("last,checkpoint,expected", DECISIONS)
def test_what_a_job_does_with_a_folder_is_read_off_the_disk(tmp_path, last, checkpoint, expected):
    cfg = compose(*STEPS)
    config = OmegaConf.to_container(cfg, resolve=True)
    other = OmegaConf.to_container(compose(*STEPS, "seed=7"), resolve=True)
    result_config = other if expected == "hydra.run.dir" else config
    run_dir = folder(tmp_path, attempt(*last, result_config) if last else None,
                     {SAME: config, OTHER: other, None: None}[checkpoint])
    before = sorted(p.name for p in run_dir.rglob("*"))
    if expected in (rerun.SKIP, rerun.RUN, rerun.AFRESH):
        assert rerun.decide(cfg, run_dir) == expected
    else:
        with pytest.raises(UserError) as refused:
            rerun.decide(cfg, run_dir)
        assert refused.value.key == expected and "seed" in str(refused.value)
    assert sorted(p.name for p in run_dir.rglob("*")) == before  # deciding changes nothing


def test_a_checkpoint_of_another_config_is_refused_with_the_fix_its_source_takes(tmp_path):
    """The folder's own checkpoint (train.resume=auto): the command that made it, or another folder; one the
    user named (train.resume=PATH): another checkpoint, or none; a new folder would change nothing."""
    other = OmegaConf.to_container(compose(*STEPS, "seed=7"), resolve=True)
    own = folder(tmp_path / "own", None, other)
    with pytest.raises(UserError) as refused:
        rerun.decide(compose(*STEPS), own)
    assert str(refused.value).endswith("run the same command in the same hydra.run.dir, or set a new "
                                       "hydra.run.dir to start afresh")  # its meta.json records no overrides
    named = own / "checkpoints" / "step-2"
    with pytest.raises(UserError) as refused:
        rerun.decide(compose(*STEPS, f"train.resume={named}"), tmp_path / "new")
    assert refused.value.key == "train.resume" and str(refused.value).endswith(
        f"{named} was made with another config (differs in: seed); give a checkpoint made with this config, or "
        "drop train.resume (train.resume=auto) to start afresh")


def test_checkpoints_move_aside_with_one_line_and_a_resume_keeps_them(tmp_path, capsys):
    cfg = compose(*STEPS)
    config = OmegaConf.to_container(cfg, resolve=True)
    other = OmegaConf.to_container(compose(*STEPS, "seed=7"), resolve=True)
    kept = folder(tmp_path / "kept", attempt("failed", "evaluate", config), config)
    assert rerun.prepare(cfg, kept) is None  # the job runs here
    assert (kept / "checkpoints" / "step-2").is_dir() and (kept / "result.previous-1.json").is_file()
    assert capsys.readouterr().err == ""
    moved = folder(tmp_path / "moved", attempt("failed", "train", other), other)
    assert rerun.prepare(cfg, moved) is None
    assert not (moved / "checkpoints").exists() and (moved / "checkpoints.previous-1" / "step-2").is_dir()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "checkpoints.previous-1" in lines[0] and "another config" in lines[0]


def test_a_run_killed_in_its_final_evaluation_resumes_to_an_evaluation_only(tmp_path, monkeypatch):
    """SIGKILL once the final evaluation has begun (its provisional result.json is on disk): the same
    command resumes from the last step's checkpoint, trains nothing again and evaluates."""
    from ftbench.tasks.synthetic import SyntheticTask

    command = [*STEPS, "train.checkpoint_every=1"]
    run_dir = tmp_path / "run"
    killed_in_a_child(run_dir, command, lambda: monkeypatch.setattr(
        SyntheticTask, "evaluate", lambda *a: os.kill(os.getpid(), signal.SIGKILL)))
    killed = json.loads((run_dir / "result.json").read_text())
    assert killed["status"] == "failed" and killed["run"]["phase"] == "evaluate"

    again = run(run_dir, *command)
    assert again["status"] == "ok" and again["run"]["phase"] == "evaluate"
    assert again["resumed_from"]["steps_before"] == 2 and again["train"]["steps"] == 2
    assert "dev/acc" in again["metrics"]
    assert not list(run_dir.glob("checkpoints.previous-*"))
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-2"]


def test_a_run_killed_in_a_validation_resumes_into_it_without_training_again(tmp_path, monkeypatch):
    """SIGKILL inside step 1's validation: step 1's checkpoint is already written (its validation pending), so
    the same command resumes from it, validates and trains step 2 only; a checkpoint folder half-written by a
    killed attempt is removed when the next one is written."""
    import torch

    from ftbench.tasks.synthetic import SyntheticTask

    command = [*STEPS, "train.checkpoint_every=1", "eval.every_steps=1"]
    run_dir = tmp_path / "run"
    killed_in_a_child(run_dir, command, lambda: monkeypatch.setattr(
        SyntheticTask, "validate", lambda *a: os.kill(os.getpid(), signal.SIGKILL)))
    state = torch.load(run_dir / "checkpoints" / "step-1" / "state.pt", weights_only=False)
    assert state["log"]["pending_eval"] and state["validations"] == []
    (run_dir / "checkpoints" / ".step-2.0123abcd").mkdir()  # as a kill while writing step 2's leaves it

    again = run(run_dir, *command)
    assert again["status"] == "ok" and again["resumed_from"]["steps_before"] == 1
    assert [step for step, _ in again["train"]["loss_curve"]] == [1, 2]  # step 1 from the checkpoint, not again
    assert [v["step"] for v in again["validation_history"]] == [1, 2]  # step 1 validated once, on the rerun
    assert not list((run_dir / "checkpoints").glob(".step-*"))  # the half-written one is gone


def test_following_a_broken_checkpoints_advice_resumes_from_the_older_one(tmp_path, capsys):
    """The newest checkpoint is truncated: the attempt is refused in its set-up (exit 2, one line). Its
    advice, train.resume=<the older one>, then resumes from that one; nothing was moved aside."""
    from ftbench.job.run import run_job

    args = [*STEPS, "task.max_steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=2"]
    assert run(tmp_path / "run", *args)["status"] == "ok"
    run_dir = tmp_path / "run"
    (run_dir / "result.json").unlink()  # as if killed after its last checkpoint
    older, newest = sorted((run_dir / "checkpoints").iterdir())
    (newest / "state.pt").write_bytes((newest / "state.pt").read_bytes()[:20])
    capsys.readouterr()
    assert run_job(compose(*args), run_dir, overrides=args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ftbench")]
    assert len(lines) == 1 and "train.resume" in lines[0] and "cannot be read" in lines[0]
    refused = json.loads((run_dir / "result.json").read_text())
    assert refused["status"] == "failed" and refused["run"]["phase"] == "setup"

    again = run(run_dir, *args, f"train.resume={older}")
    assert again["status"] == "ok" and again["resumed_from"]["steps_before"] == 2
    assert not list(run_dir.glob("checkpoints.previous-*"))


def test_a_refused_attempt_leaves_the_runs_hydra_config_as_it_was(tmp_path):
    out = tmp_path / "run"
    first = cli("ftbench", *STEPS, "task.max_steps=1", f"hydra.run.dir={out}")
    assert first.returncode == 0, first.stderr
    recorded = (out / ".hydra" / "config.yaml").read_text()
    assert "seed: 0" in recorded
    refused = cli("ftbench", *STEPS, "task.max_steps=1", "seed=5", f"hydra.run.dir={out}")
    assert refused.returncode == 2 and "hydra.run.dir" in refused.stderr
    assert (out / ".hydra" / "config.yaml").read_text() == recorded


def test_a_run_whose_config_the_job_settles_skips_and_resumes_as_the_same_command(tmp_path, monkeypatch):
    """model.path under the default random-init group (model.random_init settled to false) and a task.max_length
    beyond the folder's 16 positions (cut to 16): the job records its config so settled, and the same command
    was refused on both ('made with another config (differs in: model.random_init, task.max_length)'), as a
    rerun of the finished run and as the resume of a killed one. It now skips, and resumes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftbench.tasks.synthetic import SyntheticTask

    model = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 vocab_size=64, max_position_embeddings=16)).save_pretrained(model)
    command = [*STEPS, f"model.path={model}", "task.max_length=24", "task.min_length=4"]
    done = run(tmp_path / "done", *command)
    assert done["status"] == "ok", done["error"]
    assert (done["config"]["model"]["random_init"], done["config"]["task"]["max_length"]) == (False, 16)
    written = (tmp_path / "done" / "result.json").read_bytes()
    assert run(tmp_path / "done", *command)["exit_code"] == 0  # skipped: the result stands
    assert (tmp_path / "done" / "result.json").read_bytes() == written

    run_dir, killed = tmp_path / "killed", [*command, "train.checkpoint_every=1"]
    killed_in_a_child(run_dir, killed, lambda: monkeypatch.setattr(
        SyntheticTask, "evaluate", lambda *a: os.kill(os.getpid(), signal.SIGKILL)))
    again = run(run_dir, *killed)
    assert again["status"] == "ok", again["error"]
    assert again["resumed_from"]["steps_before"] == 2 and not list(run_dir.glob("checkpoints.previous-*"))


def test_an_export_folder_already_there_is_moved_aside_not_overwritten(tmp_path, capsys):
    """train.save=last into a folder that holds a checkpoint/ (the user's, or an earlier attempt's): it is moved
    to checkpoint.previous-N/ with one line, as an earlier result.json is kept; train.save=none leaves it."""
    def holding_an_export(name):
        run_dir = tmp_path / name
        (run_dir / "checkpoint" / "merged").mkdir(parents=True)
        (run_dir / "checkpoint" / "merged" / "config.json").write_text("precious")
        (run_dir / "result.json").write_text(json.dumps(attempt("failed", "evaluate", {})))
        return run_dir

    left = holding_an_export("none")
    assert run(left, *STEPS)["status"] == "ok"
    assert (left / "checkpoint" / "merged" / "config.json").read_text() == "precious"
    assert not list(left.glob("checkpoint.previous-*")) and capsys.readouterr().err == ""

    moved = holding_an_export("last")
    result = run(moved, *STEPS, "train.save=last")
    assert result["status"] == "ok" and result["export"]["merged"] == str(moved / "checkpoint" / "merged")
    assert (moved / "checkpoint.previous-1" / "merged" / "config.json").read_text() == "precious"
    assert (moved / "result.previous-1.json").is_file()  # the attempt it replaces, under the same number
    assert json.loads((moved / "checkpoint" / "merged" / "config.json").read_text())["architectures"]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ftbench")]
    assert len(lines) == 1 and "checkpoint.previous-1" in lines[0] and "train.save=last" in lines[0]


def test_an_earlier_attempts_generations_are_kept_beside_its_result(tmp_path, capsys):
    """A rerun wrote its generations.jsonl over the earlier attempt's, so result.previous-N.json's answers
    were gone: now they are kept as generations.previous-N.jsonl, the same N, with one line saying so."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "result.json").write_text(json.dumps(attempt("failed", "evaluate", {})))
    (run_dir / "generations.previous-1.jsonl").write_text("older")  # taken: both move to N = 2
    (run_dir / "generations.jsonl").write_text("precious")
    assert run(run_dir, *STEPS, "task=synthetic_lm")["status"] == "ok"
    assert (run_dir / "generations.previous-2.jsonl").read_text() == "precious"
    assert (run_dir / "result.previous-2.json").is_file() and not (run_dir / "result.previous-1.json").exists()
    assert (run_dir / "generations.previous-1.jsonl").read_text() == "older"
    assert json.loads((run_dir / "generations.jsonl").read_text().splitlines()[0])["output"] is not None
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ftbench")]
    assert lines == [f"ftbench: {run_dir}: kept the earlier attempt's generations.jsonl as generations.previous-2.jsonl"]


def test_an_earlier_attempts_selection_is_kept_even_by_a_run_of_another_method(tmp_path, capsys):
    """s2ft_selection.json records the attempt whose result.json names it (method.selection_file): kept as
    s2ft_selection.previous-N.json with that result, also when the rerun writes none (method=full)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "result.json").write_text(json.dumps(attempt("failed", "train", {})))
    (run_dir / "s2ft_selection.json").write_text("precious")
    assert run(run_dir, *STEPS, "method=full")["status"] == "ok"
    assert (run_dir / "s2ft_selection.previous-1.json").read_text() == "precious"
    assert (run_dir / "result.previous-1.json").is_file() and not (run_dir / "s2ft_selection.json").exists()
    assert "s2ft_selection.previous-1.json" in capsys.readouterr().err
    assert results.find(list(run_dir.iterdir())) == [run_dir / "result.json"]  # ftbench-report RUN/* reads no selection


# What stands where a run writes: (name in the folder, a file or a folder, the overrides under which it writes there)
IN_THE_WAY = [
    ("checkpoints", "file", []),  # every run: a checkpoint at train.checkpoint_every, and at a stop
    ("checkpoint", "file", ["train.save=last"]),  # the export, after all training
    (".hydra", "file", []),
    ("generations.jsonl", "folder", ["task=synthetic_lm"]),
    ("harness_tasks", "file", ["eval.harness.tasks=[ftbench_math]"]),
    ("sift_selection.safetensors", "folder", ["method=sift"]),
    ("s2ft_selection.json", "folder", ["method=s2ft"]),
]


@pytest.mark.parametrize("name,kind,overrides", IN_THE_WAY)
def test_what_stands_where_a_run_writes_refuses_the_folder_changing_nothing(tmp_path, name, kind, overrides):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).mkdir() if kind == "folder" else (run_dir / name).write_text("x")
    before = sorted(p.name for p in run_dir.rglob("*"))
    with pytest.raises(UserError) as refused:
        rerun.decide(compose(*STEPS, *overrides), run_dir)
    other = "is a directory, not a file" if kind == "folder" else "is a file, not a directory"
    assert refused.value.key == "hydra.run.dir" and str(refused.value).startswith(
        f"hydra.run.dir: {run_dir / name} {other}, where ftbench writes ")
    assert sorted(p.name for p in run_dir.rglob("*")) == before
    if overrides:  # a run that does not write there takes the folder
        assert rerun.decide(compose(*STEPS), run_dir) == rerun.RUN


@pytest.mark.parametrize("name,overrides", [("checkpoints", ["train.checkpoint_every=1"]),
                                            ("checkpoint", ["train.save=last"])])
def test_a_file_where_a_run_makes_a_folder_ends_it_before_training(tmp_path, capsys, name, overrides):
    """It crashed after training had started (FileExistsError at the first checkpoint, or after all training at
    the export, which was lost): now exit 2 with one line, before anything is written."""
    from ftbench.job.run import run_job

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).write_text("x")
    assert run_job(compose(*STEPS, *overrides), run_dir, overrides=[*STEPS, *overrides]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ftbench")]
    assert len(lines) == 1 and f"{run_dir / name} is a file, not a directory" in lines[0], lines
    assert sorted(p.name for p in run_dir.iterdir()) == [name] and (run_dir / name).read_text() == "x"

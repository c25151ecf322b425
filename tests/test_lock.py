"""A run locks its folder (job/lock.py): a second ftbench process given a folder another one runs in is
refused in one line, exit 2, before it reads or writes anything there (a single run, a sweep's job folder,
a comparison's or a recipe's --out); once the holder ends, however it ends (SIGKILL too), the folder takes
a run again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import CLI_ENV, CPU_DEFAULTS, cli, run, sweep

QUICK = ["task.num_train=16", "task.num_eval=8", "task.batch_size=4", "train.max_steps=1"]
# Another ftbench process running in the folder, as the kernel sees it: flock on <folder>/run.lock, its pid
# and host written in; it holds the lock until its stdin closes, or until it is killed.
HOLDER = """
import fcntl, os, socket, sys
fd = os.open(os.path.join(sys.argv[1], "run.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()} {socket.gethostname()}\\n".encode())
print("held", flush=True)
sys.stdin.read()
"""


class Holder:
    """A process holding the lock on `folder` (made when missing) while the block runs."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=CLI_ENV, text=True)
        assert self.process.stdout.readline() == "held\n"
        self.pid = self.process.pid

    def end(self) -> None:
        self.process.communicate(timeout=30)  # stdin closed: it exits, and the kernel releases its lock

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.kill()


def listing(folder: Path) -> dict[str, int]:
    """Every path under `folder` with its modification time (the lock file aside: the holder's)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.name != "run.lock"}


def test_a_run_in_a_folder_another_process_runs_in_is_refused_until_it_ends(tmp_path):
    folder = tmp_path / "run"
    assert run(folder, *QUICK, "train.max_steps=2", "train.checkpoint_every=1")["status"] == "ok"
    (folder / "result.json").unlink()  # as if killed after its checkpoints: the next run resumes from them
    with Holder(folder) as holder:
        before = listing(folder)
        done = cli("ftbench", *CPU_DEFAULTS, *QUICK, "train.max_steps=2", "train.checkpoint_every=1",
                   f"hydra.run.dir={folder}")  # the same command: without the lock, it resumes the holder's run
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"ftbench: error: hydra.run.dir: {folder} is in use by another ftbench process (pid {holder.pid}), "
            "which holds its lock run.lock; wait for it to end, or give another hydra.run.dir"]
        assert listing(folder) == before  # nothing read moved, nothing written: no result.json, no .hydra
        holder.end()
    again = run(folder, *QUICK, "train.max_steps=2", "train.checkpoint_every=1")
    assert again["status"] == "ok" and again["exit_code"] == 0, again["error"]
    assert again["resumed_from"]  # the same folder's run continues, as before
    assert not (folder / "run.lock").exists()  # a run that ends removes its lock file


def test_a_killed_holder_leaves_no_lock(tmp_path):
    folder = tmp_path / "run"
    with Holder(folder) as holder:
        holder.kill()
    assert (folder / "run.lock").exists()  # the file stays, but no process holds its lock
    result = run(folder, *QUICK)
    assert result["status"] == "ok" and result["exit_code"] == 0, result["error"]


def test_a_run_refused_by_the_lock_names_the_holder_and_writes_nothing(tmp_path, capsys):
    """In one process too (flock locks one open file against every other): the job's own refusal, without
    the CLI; a folder that did not exist holds nothing after it."""
    from ftbench.job import lock
    from ftbench.job.run import run_job
    from helpers import compose

    folder = tmp_path / "run"
    folder.mkdir()
    fd = lock.take(folder / "run.lock", "hydra.run.dir")  # not `hold`: a folder this process holds is re-entered
    try:
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        assert run_job(compose(*QUICK), folder) == 2
        error = capsys.readouterr().err.strip()
        assert error == (f"ftbench: error: hydra.run.dir: {folder} is in use by another ftbench process (pid "
                         f"{os.getpid()}), which holds its lock run.lock; wait for it to end, or give another "
                         "hydra.run.dir")
        assert [p.name for p in folder.iterdir()] == ["run.lock"]
    finally:
        os.close(fd)


def test_a_folder_this_process_holds_is_re_entered(tmp_path):
    """The CLI holds the folder a command names while it runs, and the job in it takes the same lock."""
    from ftbench.job import lock

    folder = tmp_path / "run"
    with lock.hold(folder, "hydra.run.dir"):
        with lock.hold(folder, "hydra.run.dir"):
            assert (folder / "run.lock").exists()
        assert (folder / "run.lock").exists()  # still held: the first hold ends it
    assert list(folder.iterdir()) == []


def test_a_lock_file_removed_as_its_holder_ends_is_never_the_one_locked(tmp_path, monkeypatch):
    """A run that ends removes run.lock, then releases it: a process that opened the file just before, and
    locks it just after, holds a file no longer in the folder; it must lock the folder's new file instead, or
    two processes would each hold "the" lock."""
    import fcntl

    from ftbench.job import lock

    path = tmp_path / "run.lock"
    flock, calls = fcntl.flock, []

    def ended_meanwhile(fd, operation):  # the holder removes the file this process just opened
        if not calls:
            path.unlink()
            path.write_text("")
        calls.append(fd)
        return flock(fd, operation)

    monkeypatch.setattr(lock.fcntl, "flock", ended_meanwhile)
    path.write_text("")
    fd = lock.take(path, "hydra.run.dir")
    try:
        assert len(calls) == 2 and lock.same_file(fd, path)
    finally:
        os.close(fd)


def test_a_sweep_whose_job_folder_another_process_runs_in_is_refused_before_any_job_runs(tmp_path, capsys):
    folder = tmp_path / "sweep"
    base = ["-m", "hardware=cpu", "train.progress=false", *QUICK, f"hydra.sweep.dir={folder}", "optim.lr=1e-3,1e-2"]
    assert sweep(base, capsys)[0] == 0
    with Holder(folder / "optim.lr=0.01") as holder:
        before = listing(folder)
        code, stderr = sweep(base, capsys)
        lines = [line for line in stderr.splitlines() if line.startswith("ftbench")]
        assert code == 2 and lines == [
            f"ftbench: error: hydra.sweep.dir: job optim.lr=0.01 (nothing was run): {folder / 'optim.lr=0.01'} is "
            f"in use by another ftbench process (pid {holder.pid}), which holds its lock run.lock; wait for it to "
            "end, or give another hydra.sweep.dir"], stderr
        assert listing(folder) == before  # nothing ran, nothing moved
    code, stderr = sweep(base, capsys)  # the holder gone: the rerun skips what finished, as ever
    assert code == 0 and stderr.count("finished ok earlier with this config; skipped") == 2, stderr


@pytest.mark.parametrize("command", ["compare", "reproduce"])
def test_a_comparison_or_recipe_another_process_runs_in_is_refused_before_any_run(tmp_path, capsys, command):
    if command == "compare":
        from ftbench.compare import runner
        from test_compare_refusals import five_rows

        main, prog, held = runner.main, "ftbench compare", tmp_path / "out"
        argv = [str(five_rows(tmp_path, validation_from_train=2)), "--out", str(held)]
    else:
        from ftbench.paper import reproduce
        from test_reproduce import TINY

        (tmp_path / "tiny.yaml").write_text(TINY)
        main, prog, held = reproduce.main, "ftbench-reproduce", tmp_path / "out" / "tiny"
        argv = [str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "out")]
    with Holder(held) as holder:
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        error = capsys.readouterr().err.strip()
        assert stopped.value.code == 2 and error == (
            f"{prog}: error: --out: {held} is in use by another ftbench process (pid {holder.pid}), which holds its "
            "lock run.lock; wait for it to end, or give another --out")
        assert [p.name for p in held.iterdir()] == ["run.lock"]  # no run started


def test_a_folder_where_the_lock_file_goes_is_one_line(tmp_path):
    """Was an IsADirectoryError traceback, exit 1."""
    folder = tmp_path / "run"
    (folder / "run.lock").mkdir(parents=True)
    done = cli("ftbench", *QUICK, "train.progress=false", f"hydra.run.dir={folder}")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"ftbench: error: hydra.run.dir: {folder / 'run.lock'} is a folder, where ftbench keeps the lock of the run "
        f"in {folder}; remove it (it is not ftbench's), or give another hydra.run.dir")
    assert [p.name for p in folder.iterdir()] == ["run.lock"]


@pytest.mark.parametrize("dry_run", [["--dry-run"], []])
def test_a_recipe_whose_seed_folder_another_process_runs_in_is_refused_before_any_run(tmp_path, capsys, dry_run):
    """Another ftbench process running in one cell's seed folder: the recipe is refused whole on --out, before
    any cell runs (was: that cell's multirun refused on hydra.sweep.dir, the other cells run, exit 1)."""
    from ftbench.paper import reproduce
    from test_reproduce import TINY

    (tmp_path / "tiny.yaml").write_text(TINY)
    held = tmp_path / "out" / "tiny" / "lora" / "seed0"
    with Holder(held) as holder:
        with pytest.raises(SystemExit) as stopped:
            reproduce.main([str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "out"), *dry_run])
        error = capsys.readouterr().err.strip()
        assert stopped.value.code == 2 and error == (
            f"ftbench-reproduce: error: --out: {held} is in use by another ftbench process (pid {holder.pid}), which "
            "holds its lock run.lock; wait for it to end, or give another --out")
        assert [str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()] == [
            "tiny/lora/seed0/run.lock"]  # no cell ran


def test_a_sweep_into_a_folder_another_sweep_holds_is_refused_before_hydra_writes_there(tmp_path, capsys):
    """A sweep holds its folder's lock from before Hydra writes multirun.yaml there until it ends: a second
    sweep given the folder (its job folders not yet locked: the first sweep's job had not started) was launched,
    rewrote the running sweep's multirun.yaml with its own overrides and ran its job beside the first's."""
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "multirun.yaml").write_text("the running sweep's record\n")
    with Holder(folder) as holder:
        before = listing(folder)
        code, stderr = sweep(["-m", "hardware=cpu", "train.progress=false", *QUICK, f"hydra.sweep.dir={folder}",
                              "optim.lr=2e-3"], capsys)
        lines = [line for line in stderr.splitlines() if line.startswith("ftbench")]
        assert code == 2 and lines == [
            f"ftbench: error: hydra.sweep.dir: {folder} is in use by another ftbench process (pid {holder.pid}), "
            "which holds its lock run.lock; wait for it to end, or give another hydra.sweep.dir"], stderr
        assert (folder / "multirun.yaml").read_text() == "the running sweep's record\n"
        assert listing(folder) == before


def test_a_run_whose_folder_is_taken_after_the_checks_is_refused_before_hydra_launches(tmp_path, monkeypatch,
                                                                                         capsys):
    """Two runs given one folder at once both pass the check of the folder (`require_free`); the one that then
    fails to take its lock is refused before Hydra opens anything there (its log), not by its job."""
    from ftbench import cli as ftbench_cli
    from ftbench.job import lock

    folder = tmp_path / "run"
    monkeypatch.setattr(lock, "require_free", lambda *args: None)  # the check ran before the holder started
    monkeypatch.setattr(ftbench_cli, "launch", lambda *args: pytest.fail("launched into a folder in use"))
    with Holder(folder) as holder:
        with pytest.raises(SystemExit) as stopped:
            ftbench_cli.main([*CPU_DEFAULTS, *QUICK, f"hydra.run.dir={folder}"])
        assert stopped.value.code == 2 and capsys.readouterr().err.strip() == (
            f"ftbench: error: hydra.run.dir: {folder} is in use by another ftbench process (pid {holder.pid}), which "
            "holds its lock run.lock; wait for it to end, or give another hydra.run.dir")
        assert [p.name for p in folder.iterdir()] == ["run.lock"]

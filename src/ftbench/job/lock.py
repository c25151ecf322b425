"""The lock a running job holds on its folder: a second ftbench process given the same folder (the same
hydra.run.dir, a sweep job's folder, a comparison's or a recipe's --out) is refused before it moves or
writes anything there (a job reads nothing there either), instead of resuming from the first one's
checkpoint while both write checkpoints and result.json.

The lock is the kernel's: `flock` on `<folder>/run.lock`, taken without waiting. The kernel releases it
when the process ends, however it ends, so a killed run leaves no lock behind: the same command in the
same folder resumes as before. A run that ends removes the file; a killed one may leave it, and it locks
nothing then (what locks is a live process's `flock`, never the file being there). The holder writes
`<pid> <host>` into the file, for the refusal's line. Under data parallel (torchrun) the ranks are one
run: rank 0 holds the lock (job/run.py takes it where rank 0 prepares the folder).

The CLI takes the lock of the folder a command names (hydra.run.dir, hydra.sweep.dir) before Hydra writes
anything there (a sweep's multirun.yaml, the job's log), and holds it until the command ends; the job
then holding its own folder's lock in the same process re-enters it (`hold`).
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ftbench.errors import UserError

FILENAME = "run.lock"
_held: dict[Path, int] = {}  # the folders whose lock this process holds (`hold`), and how many holds each


@contextmanager
def hold(folder: Path, key: str) -> Iterator[None]:
    """Hold the lock on `folder` (made when missing) until the block ends; raise `UserError` on `key`, the
    key that named the folder, when another process holds it. A folder this process holds already is
    re-entered: the lock stays until its first hold ends."""
    where = Path(folder).resolve()
    if where in _held:
        _held[where] += 1
        try:
            yield
        finally:
            _held[where] -= 1
        return
    path = Path(folder) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = take(path, key)
    try:
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        _held[where] = 1
        yield
    finally:
        _held.pop(where, None)
        if same_file(fd, path):  # still ours (not removed by hand and taken by another process since)
            path.unlink()  # before the release: a process that opened it meanwhile finds it gone (`take`)
        os.close(fd)


def take(path: Path, key: str) -> int:
    """An open descriptor of `path` holding its lock, the file emptied; raise `UserError` naming the holder, or
    naming what stands where the lock file goes (a folder, a link to one)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except IsADirectoryError:
            raise a_folder(path, key) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = holder_of(fd)
            os.close(fd)
            raise UserError(key, refusal(path.parent, who, key)) from None
        except BaseException:
            os.close(fd)
            raise
        if same_file(fd, path):
            os.ftruncate(fd, 0)
            return fd
        os.close(fd)  # its holder removed it as it ended, after this process opened it: lock a new one


def a_folder(path: Path, key: str) -> UserError:
    """The refusal of a folder standing where the lock file goes."""
    return UserError(key, f"{path} is a folder, where ftbench keeps the lock of the run in {path.parent}; "
                     f"remove it (it is not ftbench's), or give another {key}")


def require_free(folder: Path, key: str) -> None:
    """Raise `UserError` on `key` when a process holds the lock on `folder`; takes nothing, creates nothing.
    Asked before anything starts: of a run's folder by the CLI (before Hydra opens its log there), of every
    job folder by a sweep's preflight, of every run folder a comparison or a recipe would use (before any run)
    and of one it would move aside. A folder where the lock file goes is refused too (`take` could not make it)."""
    if (Path(folder) / FILENAME).is_dir():
        raise a_folder(Path(folder) / FILENAME, key)
    try:
        fd = os.open(Path(folder) / FILENAME, os.O_RDONLY)
    except OSError:  # no lock file (or no folder): nothing holds it
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(key, refusal(Path(folder), holder_of(fd), key)) from None
    finally:
        os.close(fd)


def refusal(folder: Path, who: str, key: str) -> str:
    """The refusal's line (after `key: `)."""
    return (f"{folder} is in use by another ftbench process ({who}), which holds its lock {FILENAME}; wait for it "
            f"to end, or give another {key}")


def holder_of(fd: int) -> str:
    """Who holds the lock, in words, from what the holder wrote into the file (`hold`)."""
    try:
        words = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
    except OSError:
        words = []
    if not words or not words[0].isdigit():
        return "its pid not written yet"
    host = f" on {words[1]}" if len(words) > 1 and words[1] != socket.gethostname() else ""
    return f"pid {words[0]}{host}"


def same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        there = os.stat(path)
    except OSError:
        return False
    here = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

"""Files ftbench writes and reads: written with the mode any file the user creates gets, read
back with one line that names the file and what is wrong.

Modes: Python's `tempfile` makes files 0600 and folders 0700, and safetensors writes 0600
files, so results, checkpoints and exports would be private to their owner whatever the
user's umask says. Everything here gets 0666 (files) or 0777 (folders) less the umask, as
`open(path, "w")` and `mkdir` give.

Messages about the folder a job writes into name the key that set it: `folder_key`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from ftbench.errors import UserError, kind_problem


def umask() -> int:
    """The process umask (Python can only read it by setting it; it is put back at once)."""
    current = os.umask(0o022)
    os.umask(current)
    return current


def normal_modes(path: Path) -> None:
    """Give `path` (and, for a folder, everything under it) the umask's default mode."""
    mask = umask()
    path = Path(path)
    targets = [path, *path.rglob("*")] if path.is_dir() else [path]
    for target in targets:
        if not target.is_symlink():
            os.chmod(target, (0o777 if target.is_dir() else 0o666) & ~mask)


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder in `parent` with the umask's mode (tempfile.mkdtemp makes it 0700)."""
    path = Path(parent) / f"{prefix}{uuid.uuid4().hex[:12]}"
    path.mkdir()
    return path


def sync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then the folders themselves, to disk (fsync): a rename that publishes
    `folder` afterwards cannot survive a crash of the machine that loses what it holds."""
    folder = Path(folder)
    paths = sorted(folder.rglob("*"), key=lambda p: p.is_dir())  # files first, then the folders under it
    for path in [*paths, folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temp file in the same folder and a rename: readers never
    see half a file, and the file gets the umask's mode."""
    path = Path(path)
    temp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}{path.suffix}")
    try:
        with open(temp, "x", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def free_number(folder: Path, names: tuple[str, ...]) -> int:
    """The smallest N from 1 for which none of `names` (each with a `{}` for N) is in `folder`: the number
    under which files a new attempt replaces are kept (`result.previous-N.json`, `report.previous-N.md`)."""
    number = 1
    while any((Path(folder) / name.format(number)).exists() for name in names):
        number += 1
    return number


def previous(name: str) -> str:
    """The name, with a `{}` for N, under which an earlier `name` is kept when something replaces it:
    generations.jsonl -> generations.previous-{}.jsonl, comparison.md -> comparison.previous-{}.md."""
    path = Path(name)
    return f"{path.stem}.previous-{{}}{path.suffix}"


def keep_previous(folder: Path, names: tuple[str, ...], texts: dict[str, str],
                  replaceable: Callable[[], bool] | None = None) -> list[Path]:
    """Before a report's files `names` are written into `folder`: move whatever stands at those names aside
    as `previous(name)`, one N (the first free for all of them) for the lot, and return where each went.
    Nothing moves (returns []) when nothing is there, when it is what is about to be written (each name in
    `texts`, name -> the text to be written, already a file holding that text), or when `replaceable()`
    says the old may go (a sweep's own report, growing as the sweep finishes jobs)."""
    folder = Path(folder)
    present = [folder / name for name in names if os.path.lexists(folder / name)]
    same = all((folder / name).is_file() and (folder / name).read_bytes() == text.encode()
               for name, text in texts.items())
    if not present or same or (replaceable is not None and replaceable()):
        return []
    number = free_number(folder, tuple(map(previous, names)))
    kept = []
    for path in present:
        kept.append(folder / previous(path.name).format(number))
        os.replace(path, kept[-1])
    return kept


def read_json(path: Path, key: str, fix: str) -> Any:
    """The JSON document in `path`; raises UserError(key) naming the file, what is wrong (a folder in its
    place, unreadable, empty, truncated or invalid, with line and column) and `fix`."""
    path = Path(path)
    if path.is_dir():  # a folder where the file goes: say so, not "Is a directory" (nor look inside it)
        raise UserError(key, f"{path}: {kind_problem(path, 'file')}; {fix}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(key, f"{path}: cannot be read ({exc.strerror or exc}); {fix}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(key, f"{path}: not UTF-8 text, so not a JSON file ftbench wrote; {fix}") from exc
    if not text.strip():
        raise UserError(key, f"{path}: the file is empty; {fix}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        cut = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        what = "truncated" if cut else "not valid JSON"
        raise UserError(key, f"{path}: {what} (line {exc.lineno} column {exc.colno}: {exc.msg}); {fix}") from exc


def sweep_dir() -> Path | None:
    """The running multirun's hydra.sweep.dir; None outside one (a run, or a job not launched by Hydra:
    tests call `run_job` directly)."""
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return Path(HydraConfig.get().sweep.dir) if multirun else None


def folder_name_problem(name: str) -> str | None:
    """Why `name` cannot be one folder's name inside another (None when it can): a `/` nests it, `.` and `..`
    name the folder itself or its parent, an empty name names nothing, and no path holds a NUL."""
    if name in ("", ".", ".."):
        return {"": "'' (empty) names no folder", ".": "'.' is the folder it would be in, not one inside it",
                "..": "'..' is the parent of the folder it would be in"}[name]
    if "/" in name or "\0" in name:
        return f"'{name}' holds {'a /' if '/' in name else 'a NUL'}, which no folder's name holds"
    return None


def folder_key() -> str:
    """The key that names the running job's folder, for messages: hydra.sweep.dir in a multirun, else
    hydra.run.dir."""
    return "hydra.run.dir" if sweep_dir() is None else "hydra.sweep.dir"

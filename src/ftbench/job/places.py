"""Every path a job writes in its folder, and what must stand there: checked before the job moves or
writes anything (`require`, from rerun.decide: a run, every job of a sweep before the first starts), so
a file where the job makes a folder, or a folder where it writes a file, ends the run with one line
naming the path (exit 2) instead of a crash after training. What is not there yet is made when written.

| path                          | must be | written by                                               |
| ----------------------------- | ------- | -------------------------------------------------------- |
| checkpoints/                  | folder  | every run that trains or profiles (a stop writes one)     |
| checkpoint/                   | folder  | train.save=last/best: the export (an earlier one is moved aside first: rerun.prepare) |
| .hydra/                       | folder  | every job Hydra launches (its record of the config)       |
| cli.log                       | file    | Hydra's log of every job it launches (before the job runs: the CLI checks a run's, cli.py) |
| generations.jsonl             | file    | a task whose evaluation generates text                    |
| harness_tasks/                | folder  | eval.harness.tasks                                        |
| sift_selection.safetensors, s2ft_selection.json | file | method=sift, method=s2ft (their selection) |

Hydra writes some before any job runs, so the CLI and a sweep's preflight check those: a run's cli.log
(cli.py), a sweep's multirun.yaml (cli.py) and each job's folder (job/sweep.py).

result.json and plan.json are read before they are replaced (files.read_json refuses a folder in their
place), run.lock is the lock's (job/lock.py), and the `.previous-N` names a rerun moves things to are
free by construction (files.free_number). The files that record one attempt beside its result (`records`:
the generated answers, a method's selection) are moved aside by a rerun with that result, under the same N
(`generations.previous-N.jsonl` beside `result.previous-N.json`: rerun.prepare).
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ftbench.errors import UserError, kind_problem

HYDRA_FILES = ".hydra"
HYDRA_LOG = "cli.log"  # <hydra.job.name>.log: Hydra names a job after the file of its task function (cli.py)
MULTIRUN = "multirun.yaml"  # Hydra's record of a sweep, in hydra.sweep.dir


def written(cfg: DictConfig) -> list[tuple[str, str, str]]:
    """(name in the job's folder, "file" or "folder", what the job writes there) for each path the job
    `cfg` writes in its folder (the table above)."""
    from ftbench.job import checkpoint  # torch: not for the CLI, which checks HYDRA_LOG only
    from ftbench.methods.s2ft.method import SELECTION_FILE as S2FT_SELECTION
    from ftbench.methods.sift.method import SELECTION_FILE as SIFT_SELECTION
    from ftbench.tasks.generate import GENERATIONS_FILE
    from ftbench.tasks.harness import COPIED as HARNESS_TASKS

    places = [(HYDRA_FILES, "folder", "Hydra's record of the run's config"), (HYDRA_LOG, "file", "the run's log")]
    if cfg.mode == "plan":
        return places
    places.append((checkpoint.FOLDER, "folder", "the run's checkpoints (train.checkpoint_every, and at a stop)"))
    method_files = {"sift": SIFT_SELECTION, "s2ft": S2FT_SELECTION}
    if cfg.method.name in method_files:
        places.append((method_files[cfg.method.name], "file", f"method={cfg.method.name}'s selection"))
    if cfg.mode != "train":
        return places
    if cfg.train.save != "none":
        places.append((checkpoint.EXPORT, "folder", f"the run's trained model (train.save={cfg.train.save})"))
    if OmegaConf.to_object(cfg.task).generates():
        places.append((GENERATIONS_FILE, "file", "the task's generated answers"))
    if cfg.eval.harness.tasks:
        places.append((HARNESS_TASKS, "folder", "the lm-evaluation-harness tasks (eval.harness.tasks)"))
    return places


def records() -> tuple[str, ...]:
    """The files in a job's folder that record its attempt, read by no later one: the task's generated
    answers and a method's selection. A rerun keeps an earlier attempt's under `files.previous(name)`.
    Imported here as in `written` (torch)."""
    from ftbench.methods.s2ft.method import SELECTION_FILE as S2FT_SELECTION
    from ftbench.methods.sift.method import SELECTION_FILE as SIFT_SELECTION
    from ftbench.tasks.generate import GENERATIONS_FILE

    return GENERATIONS_FILE, SIFT_SELECTION, S2FT_SELECTION


def require(cfg: DictConfig, run_dir: Path, key: str) -> None:
    """Raise `UserError` on `key` (the key naming the job's folder) for the first path the job writes in
    `run_dir` (`written`) where something else stands: a file where a folder goes, a folder where a file
    goes, a link to nothing, a device or a pipe. Changes nothing."""
    for name, kind, what in written(cfg):
        require_place(Path(run_dir) / name, kind, what, key)


def require_place(path: Path, kind: str, what: str, key: str) -> None:
    """Raise `UserError` on `key` when something other than a `kind` ("file" or "folder") stands at `path`,
    where the run writes `what` (words); nothing there is fine."""
    if not os.path.lexists(path):
        return
    problem = kind_problem(path, kind)
    if problem == "does not exist":  # lexists: a symbolic link to nothing
        problem = "is a link to nothing"
    if problem is not None:
        raise UserError(key, f"{path} {problem}, where ftbench writes {what}; move it aside or remove it, "
                        f"or give another {key}")

"""A multirun's bookkeeping: where each job writes, whether the sweep's folder can take every job,
and what the sweep's exit code is.

- Job folders are named by what tells the jobs apart: `hydra.sweep.subdir` is Hydra's
  `${hydra.job.override_dirname}` (conf/config.yaml), and `naming` excludes from it every key the
  command line sets to one value, so `-m optim.lr=1e-4,1e-3` writes `optim.lr=1e-4/` and
  `optim.lr=1e-3/`. Adding a value to a finished sweep adds a folder; the finished jobs keep theirs
  and are skipped (job/rerun.py). A command line that sweeps nothing names its one job by the method.
  A config that finished under another name (a key swept since, `method=full,optim.lr=0.001/`; the
  one job of a sweep, `full/`) is found in its folder and skipped (`rerun.finished_elsewhere`).
- `preflight` runs each job's folder through the rerun rules (job/rerun.py) before any job
  launches: a sweep that would be refused half-way is refused whole, in one line. It also says
  where each job's result will be: its folder, or the one its config finished in. A user's subdir
  that names folders by the job's place (`${hydra.job.num}`) is resolved with the job's number, as
  the launcher will: a folder it finds holding another config's run is blamed on hydra.sweep.subdir.
  A job folder another ftbench process is running in (it holds the folder's lock: job/lock.py) refuses
  the sweep too; each job takes its folder's lock as it starts (job/run.py).
- `exit_code` is the worst of the jobs' exit codes. The basic launcher runs the jobs in this process
  and reports their codes; launchers that run them elsewhere (submitit) report nothing back, so the
  codes are read from the jobs' result.json (`run.exit_code`; a job that left none counts as failed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ftbench import files, results
from ftbench.errors import UserError
from ftbench.job import lock, places

SWEPT_KEYS = "hydra.job.config.override_dirname.exclude_keys"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"  # numbers its jobs' ids by place too


def naming(parsed: list) -> list[str]:
    """Hydra overrides that name each job's folder by the swept keys of `parsed` (Hydra `Override`s of
    the command line): the keys set to one value are excluded from the folder name; with nothing swept,
    the folder is the method's name."""
    fixed = [o.key_or_group for o in parsed if not o.is_sweep_override()]
    if len(fixed) == len(parsed):
        return ["hydra.sweep.subdir=${method.name}"]
    return [f"{SWEPT_KEYS}=[{','.join(fixed)}]"]


def folder(job: DictConfig, number: int) -> Path | None:
    """The folder a job composed with its Hydra config (`return_hydra_config=True`) writes into, resolved as the
    launch resolves it: `number`, the job's place in the sweep, is its hydra.job.num under every launcher (and
    its hydra.job.id under the basic one, BASIC); None when it depends on what only the launch knows (a cluster
    launcher's job id)."""
    job = job.copy()
    with open_dict(job):
        job.hydra.job.num = number
        if job.hydra.launcher.get("_target_") == BASIC:
            job.hydra.job.id = number
    try:
        return Path(job.hydra.sweep.dir) / str(job.hydra.sweep.subdir)
    except OmegaConfBaseException:  # a value that cannot be resolved before the launch
        return None


def preflight(jobs: list[DictConfig]) -> tuple[list[Path | None], str | None]:
    """Each job's result folder (`exit_code` reads them), and one line naming hydra.sweep.dir when the
    sweep's folder cannot take every job (an ok result made with another config, a checkpoint of another
    config that would be refused, a job folder another process is running in, a file where a job's folder goes
    or where its job writes: job/places.py), or hydra.sweep.subdir when
    two jobs of different configs share a folder or one named by a job's place in the sweep holds another
    config's run; None when it can. A job's result folder is its own (`folder`) unless its config finished
    ok only in another job's folder, which then holds its result (job/rerun.py)."""
    found: list[Path | None] = []
    configs: dict[Path, tuple[int, Any]] = {}  # a folder -> the first job writing it and its config
    for number, job in enumerate(jobs):
        where = folder(job, number)
        task = OmegaConf.masked_copy(job, [k for k in job if k != "hydra"])
        config = OmegaConf.to_container(task, resolve=True)
        first, first_config = configs.setdefault(where, (number, config)) if where is not None else (number, config)
        if first_config != config:
            return found, (f"hydra.sweep.subdir: jobs {first} and {number} of the sweep differ in config but would "
                           f"both write {where}; name each job's folder by what it sets (leave hydra.sweep.subdir "
                           "unset: ftbench names them by the swept keys)")
        if where is None or not Path(job.hydra.sweep.dir).is_dir():
            found.append(where)
            continue
        try:
            places.require_place(where, "folder", f"job {number}'s run", "hydra.sweep.dir")  # Hydra makes it
            lock.require_free(where, "hydra.sweep.dir")  # a job folder another process is running in
        except UserError as exc:
            return found, f"hydra.sweep.dir: job {where.name} (nothing was run): {exc.reason}"
        from ftbench.job import rerun  # torch: loaded here only for a sweep into an existing folder

        try:
            done = where.is_dir() and rerun.decide(task, where, "hydra.sweep.dir") == rerun.SKIP
        except UserError as exc:
            if where != folder(job, len(jobs) + number):  # the folder is named by the job's place in the sweep
                return found, (f"hydra.sweep.subdir: job {number} (nothing was run) writes a folder named by its "
                               f"place in the sweep, and {exc.reason}; or leave hydra.sweep.subdir unset (ftbench then "
                               "names job folders by the swept keys, so a sweep run again with more values finds what "
                               "finished)")
            return found, f"hydra.sweep.dir: job {where.name} (nothing was run): {exc.reason}"
        found.append(where if done else rerun.finished_elsewhere(config, where, Path(job.hydra.sweep.dir)) or where)
    return found, None


def exit_code(folders: list[Path | None], codes: list[int]) -> int:
    """The sweep's exit code: the worst of its jobs'. `codes`: those the launcher ran in this process
    reported; when it reported fewer than there are jobs, each job's result.json says."""
    if len(codes) >= len(folders):
        return max(codes, default=0)
    return max((_code_on_disk(f) for f in folders), default=0)


def _code_on_disk(where: Path | None) -> int:
    result = files.read_json(where / results.FILENAME, "hydra.sweep.dir", "") if where is not None and (
        where / results.FILENAME).is_file() else None
    if not isinstance(result, dict):
        return 1
    if result.get("status") == "ok":
        return 0
    return (result.get("run") or {}).get("exit_code") or 1

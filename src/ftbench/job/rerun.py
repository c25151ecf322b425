"""What a job does with a folder that already holds a run. Running the same command (or
the same `-m` sweep, with the same hydra.run.dir / hydra.sweep.dir) again finishes what
is left:

| the folder holds                           | the job                                              |
|--------------------------------------------|------------------------------------------------------|
| result.json `ok`, made with this config    | is skipped; the result stays                         |
| result.json `ok`, made with another config | is refused (exit 2): an ok result is never replaced  |
| result.json `canceled`, or none (killed)   | resumes from the newest checkpoint, if any           |
| result.json `failed`, `nan` or `oom`       | runs again from the start                            |

Nothing is deleted: the result a new attempt will replace is moved aside as
`result.previous-N.json`, and a rerun's old checkpoints as `checkpoints.previous-N/`
(reports read only files named result.json).
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ftbench import files, results
from ftbench.errors import UserError
from ftbench.job import checkpoint


def prepare(cfg: DictConfig, run_dir: Path) -> bool:
    """Make `run_dir` ready for this job; return True when the job is already done (skip it).

    Raises `UserError` (and leaves the folder untouched) when an ok result made with another
    config is there, or when the checkpoint to resume from was made with another config.
    """
    config = OmegaConf.to_container(cfg, resolve=True)
    existing = run_dir / results.FILENAME
    fix = "move it aside or pick a new hydra.run.dir"
    old = files.read_json(existing, "hydra.run.dir", fix) if existing.exists() else None
    if old is not None and not isinstance(old, dict):
        raise UserError("hydra.run.dir", f"{existing} is not a result (a JSON object); {fix}")
    if old is not None and old.get("status") == "ok":
        keys = checkpoint.differing_keys(old.get("config") or {}, config)
        if keys:
            raise UserError("hydra.run.dir", f"{run_dir} already holds a result, made with another config "
                            f"(differs in: {', '.join(keys[:6])}); pick a new directory")
        return True
    rerun = old is not None and old.get("status") != "canceled"
    if not rerun or cfg.train.resume != "auto":
        found = checkpoint.to_resume(cfg.train.resume, run_dir)
        if found is not None:
            checkpoint.check_config(found, config)
    if old is not None:
        attempt = _free_number(run_dir)
        os.replace(existing, run_dir / f"result.previous-{attempt}.json")
        if rerun and (run_dir / checkpoint.FOLDER).exists():
            os.replace(run_dir / checkpoint.FOLDER, run_dir / f"{checkpoint.FOLDER}.previous-{attempt}")
    return False


def _free_number(run_dir: Path) -> int:
    attempt = 1
    while (run_dir / f"result.previous-{attempt}.json").exists() or (
            run_dir / f"{checkpoint.FOLDER}.previous-{attempt}").exists():
        attempt += 1
    return attempt

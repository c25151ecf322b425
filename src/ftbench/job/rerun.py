"""What a job does with a folder that already holds a run. Running the same command (or
the same `-m` sweep, with the same hydra.run.dir / hydra.sweep.dir) again finishes what
is left. What decides is what is on disk: the result of the last attempt, and the newest
checkpoint with the config it was made under; a status alone never does.

| the folder holds                                   | the job                                          |
|----------------------------------------------------|--------------------------------------------------|
| result.json `ok`, made with this config             | is skipped; the result stays                     |
| result.json `ok`, made with another config          | is refused (exit 2): an ok result is never replaced |
| a checkpoint made under this config                 | resumes from the newest one, whatever the last attempt's status (killed in the final evaluation: it only evaluates) |
| a checkpoint made under another config, the last attempt trained and failed (`failed`, `nan`, `oom` after its set-up) | starts afresh; the checkpoints are moved aside, with one line saying so |
| a checkpoint made under another config, otherwise   | is refused (exit 2), naming the keys that differ |
| no checkpoint                                       | starts afresh                                    |

In a sweep, a job whose folder holds no ok result of its config looks for one in the sweep folder's
other job folders (`finished_elsewhere`, the same comparison): folders are named by how the command
line spells the sweep (job/sweep.py), so one config can get several names (`optim.lr=0.01/`, then
`method=full,optim.lr=0.01/` once `method=full,lora` is swept too, then `full/` as the one job of a
sweep). When another folder holds it, the job is skipped, pointing there, and its own folder is
left as it is; the sweep's report reads that result, so each config is one row.

Why the last attempt ended is read from its result.json: `status` and `run.phase`, the phase
it was in (`setup`: before the first training step, `train`, `evaluate`: the final
evaluation). An attempt refused in its set-up (a broken checkpoint, a config it cannot run)
says nothing about the run: it never turns a resumable run into one started afresh.

Nothing is deleted: the result a new attempt will replace is moved aside as
`result.previous-N.json`, with it the files that recorded that attempt (places.records: its generated
answers as `generations.previous-N.jsonl`, a method's selection as `sift_selection.previous-N.safetensors`,
`s2ft_selection.previous-N.json`; an attempt killed before its result, which a resume continues, keeps
them in place), checkpoints as `checkpoints.previous-N/`, and the export folder
`checkpoint/` of a run that exports (train.save=last/best) as `checkpoint.previous-N/`, whoever wrote it
(an earlier attempt, or the user), with one line saying so (reports pass them over, results.find). Before any of
that, every path the job writes in the folder is held to the kind it must be (job/places.py): a file
where the job makes a folder (`checkpoints`, `checkpoint`) refuses the folder. Hydra's `.hydra/` record
of the config (conf/config.yaml sets `hydra.output_subdir: null`) is written here, once the folder
has accepted the job: a refused attempt leaves the run's record as it was.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ftbench import files, results
from ftbench.errors import UserError
from ftbench.job import checkpoint, places, preflight

SKIP, RUN, AFRESH = "skip", "run", "afresh"  # what `decide` says the job does
FAILED = ("failed", "nan", "oom")  # statuses of an attempt that ended on its own, not stopped from outside


def prepare(cfg: DictConfig, run_dir: Path) -> Path | None:
    """Make `run_dir` ready for this job, or, when the job is already done (skip it), return the folder
    holding its ok result: `run_dir`, or in a sweep another job's folder (`finished_elsewhere`).

    Raises `UserError` (and leaves the folder untouched) when `decide` refuses the folder.
    """
    action = decide(cfg, run_dir)
    if action == SKIP:
        return run_dir
    sweep_dir = files.sweep_dir()
    elsewhere = sweep_dir and finished_elsewhere(OmegaConf.to_container(preflight.settled(cfg), resolve=True), run_dir,
                                                     sweep_dir)
    if elsewhere:
        return elsewhere
    existing = run_dir / results.FILENAME
    movable = (checkpoint.FOLDER, checkpoint.EXPORT, *places.records())  # each kept as files.previous(name)
    attempt = files.free_number(run_dir, (results.PREVIOUS, *map(files.previous, movable)))
    if existing.exists():
        os.replace(existing, run_dir / results.PREVIOUS.format(attempt))
        keep_records(run_dir, attempt)
    if action == AFRESH:
        aside = run_dir / f"{checkpoint.FOLDER}.previous-{attempt}"
        os.replace(run_dir / checkpoint.FOLDER, aside)
        print(f"ftbench: {run_dir}: the last attempt failed and its checkpoints were made with another config; "
              f"moved them to {aside.name}, starting afresh", file=sys.stderr)
    export = run_dir / checkpoint.EXPORT
    if cfg.mode == "train" and cfg.train.save != "none" and os.path.lexists(export):
        aside = run_dir / f"{checkpoint.EXPORT}.previous-{attempt}"
        os.replace(export, aside)
        print(f"ftbench: {run_dir}: moved the {checkpoint.EXPORT}/ folder already there to {aside.name}; this run "
              f"exports its trained model to {checkpoint.EXPORT}/ (train.save={cfg.train.save})", file=sys.stderr)
    save_hydra_files(cfg, run_dir)
    return None


def keep_records(run_dir: Path, attempt: int) -> None:
    """Move the files in `run_dir` that recorded the attempt whose result was just kept as
    result.previous-`attempt`.json (places.records) aside under the same number, with one line saying so."""
    records = [name for name in places.records() if os.path.lexists(run_dir / name)]
    for name in records:
        os.replace(run_dir / name, run_dir / files.previous(name).format(attempt))
    if records:
        kept = ", ".join(f"{name} as {files.previous(name).format(attempt)}" for name in records)
        print(f"ftbench: {run_dir}: kept the earlier attempt's {kept}", file=sys.stderr)


def decide(cfg: DictConfig, run_dir: Path, key: str | None = None) -> str:
    """What the job does with `run_dir` (the table above), changing nothing: SKIP, RUN (afresh, or from the
    checkpoint train.resume names) or AFRESH (the checkpoints moved aside first). Raises `UserError` when
    the folder refuses the job, naming `key` (default: the key that names this job's folder)."""
    key = key or files.folder_key()
    places.require(cfg, run_dir, key)
    config = OmegaConf.to_container(preflight.settled(cfg), resolve=True)  # as the job records its config
    existing = run_dir / results.FILENAME
    fix = f"move it aside or pick a new {key}"
    old = files.read_json(existing, key, fix) if existing.exists() else None
    if old is not None and not isinstance(old, dict):
        raise UserError(key, f"{existing} is not a result (a JSON object); {fix}")
    if old is not None and old.get("status") == "ok":
        keys = checkpoint.differing_keys(old.get("config") or {}, config)
        if keys:
            raise UserError(key, f"{run_dir} already holds a result, made with another config "
                            f"(differs in: {', '.join(keys[:6])}); pick a new {key}")
        return SKIP
    found = checkpoint.to_resume(cfg.train.resume, run_dir)
    if found is not None and checkpoint.config_differences(found, config):
        if cfg.train.resume != "auto" or not trained_and_failed(old):
            checkpoint.check_config(found, config, cfg.train.resume, key)  # refused, naming the keys
        return AFRESH
    return RUN


def finished_elsewhere(config: dict, run_dir: Path, sweep_dir: Path) -> Path | None:
    """The first folder under `sweep_dir` but `run_dir` whose result.json (those the sweep's report reads,
    results.find) ended ok and was made with `config` (resolved), by the comparison `decide` makes; None
    when none was. A file that cannot be read is passed over: it is another job's to refuse."""
    for path in results.find([sweep_dir]):
        if path.parent == run_dir:
            continue
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (isinstance(old, dict) and old.get("status") == "ok" and isinstance(old.get("config"), dict)
                and not checkpoint.differing_keys(old["config"], config)):
            return path.parent
    return None


def trained_and_failed(result: dict | None) -> bool:
    """Whether the attempt that wrote `result` got past its set-up and then failed on its own (an error,
    a non-finite loss, out of memory): not killed, not stopped, not refused before training."""
    if result is None or result.get("status") not in FAILED:
        return False
    phase = (result.get("run") or {}).get("phase")
    return phase in ("train", "evaluate")


def save_hydra_files(cfg: DictConfig, run_dir: Path) -> None:
    """Hydra's record of the job `cfg` (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`), written as
    Hydra writes it; nothing when the job was not launched by Hydra (tests call `run_job` directly)."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...}
    folder = run_dir / places.HYDRA_FILES
    folder.mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", cfg), ("hydra.yaml", hydra_cfg),
                       ("overrides.yaml", hydra_cfg.hydra.overrides.task)):
        files.write_atomic(folder / name, OmegaConf.to_yaml(node))

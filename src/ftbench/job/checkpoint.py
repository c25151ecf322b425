"""Checkpoints during training, and the exact resume from one.

A checkpoint is a folder `<run>/checkpoints/step-N/` (N optimizer steps done):

- `trainable.safetensors`: what training changed, and only that: `method.snapshot(model)`
  (SIFT's masters, S2FT's slices, LoRA's adapters, HiFT's units, whole weights for full);
- `state.pt`: the optimizer (`method.optimizer_state_dict()`), the LR scheduler,
  `method.state_dict()` (selection, rotations, block order, offloaded states), the random
  number generators (Python, NumPy, torch, CUDA) of every data-parallel rank, the position in the data stream
  (micro-batches drawn), the loss curve, the validation history and the best-checkpoint
  selection;
- `meta.json`: the step, the resolved config, the command line's overrides and the micro-batch trained
  with (what `hardware.max_micro_batch_size=auto` resolved to), read to refuse a resume under another
  config (naming the keys, and the command that made it) and to resume `auto` at the same micro-batch.

It is written into a temporary folder in `checkpoints/` and then renamed, so a run killed
while writing leaves whole checkpoints only. The last `train.keep_checkpoints` are kept; result.json's
`checkpoints` lists every one written (what each write cost), `removed: true` on those no longer on disk.

Restoring follows the method contract's one timing rule (methods/base.py): after
`prepare` and `attach`, before the first step. Everything the next step reads is then as
it was when the checkpoint was written, so on the CPU in fp32 a resumed run is bitwise
the run that was never stopped.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftbench import files
from ftbench.engine.loop import Trainee, TrainLog, TrainSpec
from ftbench.errors import UserError, exception_line, require_kind
from ftbench.parallel import distributed
from ftbench.results import Result

log = logging.getLogger(__name__)

FOLDER = "checkpoints"
EXPORT = "checkpoint"  # <run>/checkpoint/: the trained model exported after training (train.save; evaluation.py)
PREFIX = "step-"
# Keys that do not change what is trained: a checkpoint made under other values still resumes.
NEUTRAL_KEYS = ("train.resume", "train.checkpoint_every", "train.keep_checkpoints", "train.progress",
                "train.log_every", "train.save", "logger", "debug", "eval.batch_size", "eval.max_samples",
                "eval.num_beams", "eval.max_new_tokens", "eval.harness", "profile.trace_memory")


def checkpoints(run_dir: Path) -> list[Path]:
    """The finished checkpoints of a run, oldest first."""
    folder = Path(run_dir) / FOLDER
    found = [p for p in folder.glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def differing_keys(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (neutral keys left out)."""
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    keys = sorted(set(flat_saved) | set(flat_current))
    return [k for k in keys if flat_saved.get(k) != flat_current.get(k)
            and not any(k == n or k.startswith(n + ".") for n in NEUTRAL_KEYS)]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


RESUME_FIX = "resume from an older one (train.resume=PATH) or move its checkpoint folder aside"


def unreadable(path: Path, exc: BaseException) -> UserError:
    """One line for a checkpoint whose files cannot be read back (truncated, corrupted)."""
    return UserError("train.resume", f"{path} cannot be read ({exception_line(exc)}); {RESUME_FIX}")


def config_differences(path: Path, config: dict) -> list[str]:
    """The keys whose values differ between the config the checkpoint at `path` was made under and
    `config` (neutral keys left out); raises a `UserError` when its meta.json cannot be read."""
    require_kind(path / "meta.json", "file", "train.resume", RESUME_FIX)
    try:
        meta = json.loads((path / "meta.json").read_text())
        return differing_keys(meta["config"], config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise unreadable(path / "meta.json", exc) from exc


# Why a checkpoint made with another micro-batch is refused too, though the effective batch is the same: the split
# sets the dropout draws, the order of the float sums and which examples each epoch leaves out (batches.shuffled).
MICRO_BATCH = "hardware.max_micro_batch_size"
MICRO_BATCH_WHY = (f"{MICRO_BATCH} splits each batch, and with the split go the dropout draws, the order of the "
                   "float sums and which examples an epoch leaves out, so it would not continue the run that made it")


def kept_micro_batch(path: Path, made_with: int, fits: int) -> int:
    """`made_with`, the micro-batch the checkpoint at `path` was trained with, when it is no more than what
    `hardware.max_micro_batch_size=auto` resolves to now (`fits`); raises UserError(hardware.max_micro_batch_size)
    otherwise: a smaller one would not continue the run that made the checkpoint."""
    if made_with > fits:
        raise UserError(MICRO_BATCH, f"auto resolves to {fits} now, but {path} was made with micro-batch {made_with}; "
                        f"{MICRO_BATCH_WHY}; resume it where {made_with} fits (more free memory), or set a new "
                        f"{files.folder_key()} to start afresh")
    if made_with != fits:
        log.info("micro-batch for training: %d, as %s was made with (auto resolves to %d now)", made_with, path, fits)
    return made_with


def check_config(path: Path, config: dict, resume: str, folder: str | None = None) -> None:
    """Refuse, in one line naming the keys, a checkpoint made under another config (or one that is unreadable);
    `resume`: train.resume (auto: the checkpoint is the run folder's own, and the fix is the command that made
    it, as its meta.json records the overrides, or another folder; a path the user gave: another checkpoint, or
    none); `folder`: the key naming the run's folder in the message (default: `files.folder_key()`)."""
    keys = config_differences(path, config)
    if keys:
        shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
        why = f"; {MICRO_BATCH_WHY}" if MICRO_BATCH in keys else ""
        folder = folder or files.folder_key()
        fix = (f"run {made_by(path, folder)} in the same {folder}, or set a new {folder} to start afresh"
               if resume == "auto" else
               "give a checkpoint made with this config, or drop train.resume (train.resume=auto) to start afresh")
        raise UserError("train.resume", f"{path} was made with another config (differs in: {shown}){why}; {fix}")


def made_by(path: Path, folder: str) -> str:
    """The command that made the checkpoint at `path`, as its meta.json records the overrides (a sweep's: its
    job's); "the same command" for a checkpoint written before meta.json recorded them."""
    overrides = json.loads((path / "meta.json").read_text()).get("overrides")
    if not isinstance(overrides, list):
        return "the same command"
    line = shlex.join(["ftbench", *map(str, overrides)])
    return f"the sweep whose job made it ({line})" if folder == "hydra.sweep.dir" else f"the command that made it ({line})"


def recorded_micro_batch(resume: str, run_dir: Path, config: dict) -> tuple[Path, int] | None:
    """(checkpoint, its per-rank micro-batch) for the checkpoint a run under `config` continues from, as its
    meta.json records it; None when there is none to resume, or it is unreadable, made under another config
    (restore refuses these, naming why) or older than the record (restore checks its position in the data
    against the micro-batch the run resolves to)."""
    path = to_resume(resume, run_dir)
    if path is None:
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
        micro = meta.get("micro_batch_size")
        if differing_keys(meta["config"], config):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return (path, micro) if isinstance(micro, int) else None


def to_resume(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint a run continues from: `auto` = the newest in its folder (None: start afresh), or a path."""
    if resume == "auto":
        found = checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(os.path.expanduser(resume))
    if not (path / "meta.json").is_file():
        raise UserError("train.resume", f"'{resume}' is not a checkpoint folder (<run>/{FOLDER}/{PREFIX}N); "
                        "give one, or auto")
    return path


def rng_states() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Checkpointer:
    """Writes a checkpoint at the end of a step (every `train.checkpoint_every` steps, after
    the last step, and when a stop is requested) and restores one before the first step.

    `selector` (the best-checkpoint choice: `state_dict`/`load_state_dict`, and its `validations`)
    is the run's own, restored in place; `result` gets the `checkpoints` written (step, path,
    bytes, write_s, removed: whether `train.keep_checkpoints` has deleted it since), `resumed_from`
    (path, steps_before) and the `train` section a checkpoint holds.
    """

    def __init__(self, cfg, run_dir: Path, trainee: Trainee, spec: TrainSpec, selector, result: Result):
        self.every, self.keep = cfg.train.checkpoint_every, cfg.train.keep_checkpoints
        self.resume = cfg.train.resume
        self.folder = Path(run_dir) / FOLDER
        self.run_dir = Path(run_dir)
        self.model, self.method, self.scheduler = trainee.model, trainee.method, trainee.scheduler
        self.selector = selector
        self.micro_batch, self.accumulation, self.steps = spec.micro_batch_size, spec.accumulation, spec.steps
        self.result = result
        self.micro_batches = 0  # the position in the training stream to continue from

    # -- restore --------------------------------------------------------------------------
    def restore(self) -> TrainLog:
        """Continue from the checkpoint `train.resume` names (a fresh log when there is none).
        Call after prepare and attach, before the first step."""
        path = to_resume(self.resume, self.run_dir)
        if path is None:
            return TrainLog()
        check_config(path, self.result.config, self.resume)
        from safetensors.torch import load_file

        for name in ("state.pt", "trainable.safetensors"):  # a folder in a file's place: named as one
            require_kind(path / name, "file", "train.resume", RESUME_FIX)
        try:  # our own file; it holds Python and NumPy RNG states, which weights_only refuses
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
            trained = load_file(str(path / "trainable.safetensors"))
        except Exception as exc:  # torch and safetensors raise RuntimeError, EOFError, UnpicklingError, ...
            raise unreadable(path, exc) from exc
        saved_world = len(state["rng_ranks"])
        if saved_world != distributed.world_size():
            raise UserError("train.resume", f"{path} was made by {saved_world} process(es), this run has "
                            f"{distributed.world_size()}; relaunch with {saved_world} (the data split follows it)")
        made_with = self.micro_batch * self.accumulation * state["log"]["steps"] // max(state["micro_batches"], 1)
        if made_with != self.micro_batch:  # a checkpoint older than meta.json's micro_batch_size, under auto
            raise UserError(MICRO_BATCH, f"auto resolves to {self.micro_batch} now, but {path} was made with "
                            f"micro-batch {made_with} (its position in the data says so); {MICRO_BATCH_WHY}; set a new {files.folder_key()} to start afresh")
        log.info("resuming from %s (step %d)", path, state["log"]["steps"])
        self.method.load_state_dict(state["method"])
        self.method.load_optimizer_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.restore(self.model, trained)
        self.selector.load_state_dict(state["selector"])
        self.selector.validations[:] = state["validations"]
        self.result.checkpoints = state["checkpoints"]
        self.result.checkpoints[-1]["bytes"] = folder_bytes(path)  # known once it was written
        mark_removed(self.result.checkpoints)  # the list was saved before the newer ones were pruned
        self.result.resumed_from = {"path": str(path), "steps_before": state["log"]["steps"]}
        self.micro_batches = state["micro_batches"]  # this rank's: every rank draws as many
        set_rng_states(state["rng_ranks"][distributed.rank()])
        return TrainLog(**state["log"])

    # -- write ----------------------------------------------------------------------------
    def __call__(self, log: TrainLog, stopping: bool) -> None:
        """At a step's end: write a checkpoint when one is due."""
        due = self.every is not None and (log.steps % self.every == 0 or log.steps == self.steps)
        if stopping or due:  # every rank's random states; the rest is alike on every rank: rank 0 writes
            every_rank = distributed.gather_objects(rng_states())
            if distributed.is_main():
                self.write(log, every_rank)

    def write(self, log: TrainLog, every_rank: list[dict] | None = None) -> Path:
        from safetensors.torch import save_file

        started = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(f".{PREFIX}*"):  # half-written by an attempt killed while writing
            shutil.rmtree(stale)
        temp = files.temp_dir(self.folder, f".{PREFIX}{log.steps}.")
        save_file(self.method.snapshot(self.model), str(temp / "trainable.safetensors"))
        entry = {"step": log.steps, "path": str(self.folder / f"{PREFIX}{log.steps}"), "removed": False}
        torch.save({
            "method": self.method.state_dict(),
            "optimizer": self.method.optimizer_state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng_ranks": every_rank or [rng_states()],  # rank r resumes with entry r
            "log": {"steps": log.steps, "samples": log.samples, "tokens": log.tokens,
                    "tokens_nonpad": log.tokens_nonpad,
                    "loss_curve": [list(p) for p in log.loss_curve], "pending_eval": log.pending_eval},
            "micro_batches": log.steps * self.accumulation,
            "selector": self.selector.state_dict(),
            "validations": list(self.selector.validations),
            "checkpoints": [*self.result.checkpoints, entry],
        }, temp / "state.pt")
        (temp / "meta.json").write_text(json.dumps({"step": log.steps, "config": self.result.config,
                                                    "overrides": self.result.run.overrides,
                                                    "micro_batch_size": self.micro_batch}, indent=1))
        files.normal_modes(temp)  # safetensors writes 0600
        target = self.folder / f"{PREFIX}{log.steps}"
        if target.exists():  # written by an earlier attempt at this very step, under this config
            shutil.rmtree(target)
        os.replace(temp, target)
        entry.update(bytes=folder_bytes(target), write_s=round(time.perf_counter() - started, 4))
        self.result.checkpoints.append(entry)
        self._prune()
        return target

    def _prune(self) -> None:
        if self.keep is None:
            return
        for old in checkpoints(self.run_dir)[:-self.keep]:
            shutil.rmtree(old)
        mark_removed(self.result.checkpoints)


def mark_removed(entries: list[dict]) -> None:
    """Set each written checkpoint's `removed` (result.json `checkpoints`): True when its folder is gone."""
    for entry in entries:
        entry["removed"] = not Path(entry["path"]).is_dir()

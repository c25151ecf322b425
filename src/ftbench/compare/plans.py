"""The planner's prediction of each arm's peak on the GPU a spec names (`gpu: h100-80gb`), beside the
measured figures: `ftbench plan` of the arm's stage-2 config on that hardware at the runs' own shape (its
effective batch, split into micro-batches as the hardware option splits a run's, at the task's longest
training sequence, padded as a run on that hardware pads it: the micro-batch a run fits, job/steps.py),
run in this process (no download, no GPU), kept in <out>/<task>/plan/<arm>/plan.json and made again only
when the config moved (the old folder goes to <out>/_aside/).
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from ftbench.compare import cells
from ftbench.compare.spec import Spec
from ftbench.job.checkpoint import differing_keys
from ftbench.plan.report import FILENAME, run_plan


def predict(composer: cells.Composer, spec: Spec, out: Path, chosen: dict) -> dict[str, dict[str, dict]]:
    """{task: {arm: plan.json}} for every arm with a chosen lr; {} when the spec names no GPU."""
    if spec.gpu is None:
        return {}
    found: dict[str, dict[str, dict]] = {}
    for (task, arm), lr in chosen.items():
        if lr is None:
            continue
        steps = composer.budget_steps(task)
        overrides = [*cells.overrides(spec, "seeds", task, arm, steps), f"optim.lr={lr!r}", f"seed={spec.seeds[0]}",
                     "mode=plan", f"hardware={spec.gpu}"]
        hardware = composer.compose(overrides, arm).hardware
        overrides += [f"profile.batch_size={spec.budget.batch_size}",
                      f"profile.seq_len={padded(composer.longest(task, spec.seeds[0]), hardware)}"]
        cfg = composer.compose(overrides, arm)
        folder = plan_folder(out, task, arm)
        plan = read(folder)
        if plan is not None and (plan.get("status") != "ok" or differing_keys(plan.get("config") or {},
                                                                              OmegaConf.to_container(cfg, resolve=True))):
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            target = out / cells.ASIDE / task / "plan" / f"{arm}-{stamp}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(target))
            plan = None
        if plan is None:
            run_plan(cfg, folder, overrides)
            plan = read(folder)
        if plan is not None and plan.get("status") == "ok":
            found.setdefault(task, {})[arm] = plan
    return found


def padded(tokens: int, hardware) -> int:
    """`tokens` padded to the hardware option's multiple, as a run on it pads a batch (engine/hardware.py: null is
    8 on a GPU, none on the CPU)."""
    multiple = hardware.pad_to_multiple_of or (8 if hardware.device != "cpu" else 1)
    return -(-tokens // multiple) * multiple


def plan_folder(out: Path, task: str, arm: str) -> Path:
    return out / task / "plan" / arm


def read(folder: Path) -> dict | None:
    try:
        return json.loads((folder / FILENAME).read_text())
    except (OSError, ValueError):
        return None

"""`ftbench plan` / `mode=plan`: predict, print, write plan.json; and the tables that set
plans beside each other (a `-m` sweep) and beside measured runs (`ftbench-report`)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ftbench import files
from ftbench.config.schema import check
from ftbench.config.sources import given_keys, model_label
from ftbench.errors import Canceled, UserError
from ftbench.results import GiB, Result

FILENAME = "plan.json"
PREVIOUS = "plan.previous-{}.json"  # an earlier plan that did not end ok, kept when a plan replaces it (`prepare`)
TABLE = "plan.md"  # the plans' table; an earlier one that differs is kept as plan.previous-N.md (`print_plans`)
PARTS = {  # the breakdown rows listed by kind beneath them (a row of one kind alone is not)
    "weights_bytes": "weights_parts_bytes", "optimizer_state_bytes": "optimizer_state_parts_bytes"}
ROWS = (("weights", "weights_bytes"), ("fp32 masters", "master_bytes"), ("gradients", "grad_bytes"),
        ("optimizer state", "optimizer_state_bytes"), ("activations + transient", "activations_bytes"))


def run_plan(cfg: DictConfig, output_dir: Path, overrides: list[str] | None = None) -> int:
    """One plan job: predict, print, write plan.json; return the exit code. A plan that stops on an exception
    ends as a run does (engine/outcome.py): plan.json says failed with the error's line (exit 2 for a bad
    setting, 1 for anything else); Ctrl-C or SIGTERM stop it at once: plan.json says canceled, then `Canceled`
    is raised (the entry point exits 130; a sweep stops)."""
    # torch: loaded by a plan job, not by ftbench-report
    from ftbench.engine.loop import sigterm_cancels
    from ftbench.engine.outcome import stopped
    from ftbench.plan.planner import predict

    started = time.time()
    plan = {"schema": 1, "status": "ok", "error": None,
            "run": {"method": cfg.method.name, "model": model_label(cfg.model, given_keys(overrides or [])),
                    "mode": "plan", "output_dir": str(output_dir),
                    "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "overrides": list(overrides or [])},
            "config": OmegaConf.to_container(cfg, resolve=True)}
    code = 0
    try:
        check(cfg)
        with sigterm_cancels():
            plan.update(predict(cfg))
    except (Exception, KeyboardInterrupt) as exc:
        plan["status"], plan["error"], code = stopped(exc, cfg.get("debug"))
    plan["config"] = OmegaConf.to_container(cfg, resolve=True)  # as settled (a random-init position table)
    plan["run"]["duration_s"] = round(time.time() - started, 3)
    write(plan, output_dir)
    if code == 130:
        raise Canceled(plan["error"])  # its line is printed; a sweep stops
    if code == 0:
        print(describe(plan))
    return code


def prepare(output_dir: Path) -> None:
    """Make `output_dir` ready for a plan, as a run's folder is made ready (job/rerun.py): a plan.json that ended
    ok refuses it (UserError naming the folder's key); one that did not (failed, canceled) is an earlier
    attempt, moved aside as plan.previous-N.json (never deleted), and the plan runs again."""
    existing = output_dir / FILENAME
    if not existing.exists():
        return
    key = files.folder_key()
    fix = f"move it aside or pick a new {key}"
    old = files.read_json(existing, key, fix)
    if not isinstance(old, dict):
        raise UserError(key, f"{existing} is not a plan (a JSON object); {fix}")
    if old.get("status") == "ok":
        raise UserError(key, f"{output_dir} already holds a plan; pick a new directory")
    os.replace(existing, output_dir / PREVIOUS.format(files.free_number(output_dir, (PREVIOUS,))))


def write(plan: dict, directory: Path) -> Path:
    """plan.json, atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    return files.write_atomic(directory / FILENAME, json.dumps(plan, indent=2) + "\n")


def _gib(value) -> str:
    return "—" if value is None else f"{value / GiB:.2f}"


def describe(plan: dict) -> str:
    """The plan of one run, as the terminal shows it."""
    memory, p, cfg = plan["memory"], plan["plan"], plan["config"]
    hw = cfg["hardware"]
    lines = [f"ftbench plan: {plan['run']['method']} on {plan['run']['model']}, {hw['name']}, {p['precision']}, "
             f"checkpointing {'on' if p['gradient_checkpointing'] else 'off'}, micro-batch {p['micro_batch_size']} x "
             f"{p['seq_len']} tokens (x{p['accumulation']} accumulated)"]
    for label, key in ROWS:
        lines.append(f"  {label:<24}{_gib(memory['breakdown'][key]):>9} GiB")
        # by kind: 4-bit weights and their quantization state; projected rank-r moments, 8-bit states, projectors
        parts = memory.get(PARTS.get(key, "")) or {}
        if len(parts) > 1 or key == "optimizer_state_bytes":
            lines += [f"    {part:<22}{_gib(value):>9} GiB" for part, value in sorted(parts.items(), key=lambda kv: -kv[1])]
    lines.append(f"  {'predicted peak':<24}{_gib(memory['train_peak_allocated_bytes']):>9} GiB   "
                 f"in the {memory['train_peak_phase']}, at {memory['train_peak_op']}")
    if p["budget_bytes"] is None:
        lines.append("  budget: unknown (set hardware.memory_gib=GiB to get the largest micro-batch)")
    else:
        verdict = "fits" if p["fits"] else "does NOT fit"
        lines.append(f"  {'budget':<24}{_gib(p['budget_bytes']):>9} GiB   ({_gib(p['device_memory_bytes'])} GiB, "
                     f"{p['margin']:.0%} kept free): {verdict}; largest micro-batch that fits: {largest(p)}")
    return "\n".join(lines)


def largest(p: dict) -> str:
    """The largest micro-batch that fits, as said: the search stops at planner.MAX_MICRO_BATCH, so a plan
    that reached it says "at least" (a small model fits far more)."""
    if p["largest_micro_batch"] is None:
        return "—"
    capped = p.get("largest_micro_batch_capped")  # plan.json of an older ftbench: absent
    return f"at least {p['largest_micro_batch']} (the search's cap)" if capped else str(p["largest_micro_batch"])


def find(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in map(Path, paths):
        found += [path] if path.is_file() and path.name == FILENAME else sorted(path.rglob(FILENAME))
    return found


def read(path: Path) -> dict:
    """A plan.json; raises UserError naming the file when it is unreadable, truncated or not a plan."""
    plan = files.read_json(path, "", "rerun `ftbench plan` with the same settings, or move the file aside")
    if not isinstance(plan, dict) or not isinstance(plan.get("run"), dict):
        raise UserError("", f"{path}: not a plan (a JSON object with a 'run' section); rerun `ftbench plan` "
                        "with the same settings, or move the file aside")
    return plan


COLUMNS = ("run", "peak", "weights", "masters", "grads", "optim state", "activations", "phase", "fits",
           "largest micro-batch")


def table_rows(plans: list[dict]) -> list[list[str]]:
    rows = []
    for plan in plans:
        if plan["status"] != "ok":
            rows.append([plan["run"]["method"], "failed", *["—"] * (len(COLUMNS) - 2)])
            continue
        memory, p, b = plan["memory"], plan["plan"], plan["memory"]["breakdown"]
        rows.append([plan["run"]["method"], _gib(memory["train_peak_allocated_bytes"]), _gib(b["weights_bytes"]),
                     _gib(b["master_bytes"]), _gib(b["grad_bytes"]), _gib(b["optimizer_state_bytes"]),
                     _gib(b["activations_bytes"]), memory["train_peak_phase"],
                     "—" if p["fits"] is None else "yes" if p["fits"] else "no",
                     largest(p)])
    return rows


def markdown(plans: list[dict]) -> str:
    lines = ["| " + " | ".join(f"{c} (GiB)" if c in COLUMNS[1:7] else c for c in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(plans)]
    return "\n".join(lines) + "\n"


def print_plans(plans: list[dict], out_dir: Path) -> Path | None:
    """One table across `plans` (a `-m` sweep, or the plans no run was set beside); written to plan.md, an
    earlier plan.md there that differs (or whatever stands in its place) kept as plan.previous-N.md."""
    if not plans:
        return None
    from rich.console import Console
    from rich.table import Table

    shown = Table(title="ftbench plan (predicted train peak)")
    for column in COLUMNS:
        shown.add_column(column, justify="left" if column in ("run", "phase") else "right")
    for row in table_rows(plans):
        shown.add_row(*row)
    Console(width=200).print(shown)
    text = markdown(plans)
    for kept in files.keep_previous(out_dir, (TABLE,), {TABLE: text}):
        print(f"the earlier {TABLE}, which differs, is kept as {kept}")
    return files.write_atomic(out_dir / TABLE, text)


def matching_plan(result: Result, result_path: Path, plans: dict[Path, dict]) -> dict | None:
    """The plan of a measured run: the plan in the same folder, else, for a profile run, one of the same
    method, model, micro-batch and sequence length (a training run's batches vary in length). Only a plan
    that ended ok predicts anything."""
    same_folder = plans.get(result_path.parent / FILENAME)
    if same_folder is not None and same_folder["status"] == "ok":
        return same_folder
    config = result.config or {}
    key = (result.run.method, result.run.model, (result.plan or {}).get("micro_batch_size"),
           (config.get("profile") or {}).get("seq_len"))
    for plan in plans.values():
        p = plan.get("plan") or {}
        if plan["status"] == "ok" and (plan["run"]["method"], plan["run"]["model"], p.get("micro_batch_size"),
                                       p.get("seq_len")) == key and config.get("mode") == "profile":
            return plan
    return None


def unmatched(path: Path, plan: dict) -> str:
    """One line on why the plan at `path` stands beside no run of a report (`matching_plan`'s rule)."""
    if plan["status"] != "ok":
        return f"{path}: beside no run: the plan {plan['status']} ({plan.get('error')})"
    p, run = plan.get("plan") or {}, plan["run"]
    return (f"{path}: beside no run: no result.json in its folder, and no profile run of {run['method']} on "
            f"{run['model']} with micro-batch {p.get('micro_batch_size')} x {p.get('seq_len')} tokens (a training "
            "run is set beside the plan in its own folder only)")

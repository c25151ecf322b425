"""Every registered method on a real pretrained LLM (SmolLM2-135M), CPU-sized: base -> tuned held-out loss,
trainable %, step time, peak memory, and a check that the exported checkpoint reloads with plain
`from_pretrained` and gives the same held-out loss.

    python -m ftbench.bench.real --data ../shared/data                # make bench-real: every method, both tasks
    python -m ftbench.bench.real --data ../shared/data --tasks math --methods full lora
    python -m ftbench.bench.real --data ../shared/data --set task.max_length=256 train.batch_size=8 task.val_size=32

Each cell is one `ftbench` run in its own process (measured as if alone) under --out. The base
loss is a `train.max_steps=0` run of the same task. The held-out loss is the training objective
on task.val_size examples held out of the training file, validated at the last step
(train.select=best over one validation). Runs that already hold a result.json are read, not
rerun, so an interrupted benchmark resumes. Prints a markdown table and writes table.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from ftbench.job import children
from ftbench.methods import names
from ftbench.results import GiB

TASKS = ("math", "alpaca")
BUDGET = ["task.max_length=128", "train.batch_size=4", "train.max_steps=10", "task.val_size=16"]  # docs/results/real-llm.md
# The held-out loss is validated once, at the last step (eval.every_steps = the run's steps, set in main).
COMMON = ["model=smollm2-135m", "train.save=last", "train.select=last", "train.progress=false"]
# The base model: no step; train.select=best validates it once before the final evaluation (job/evaluation.py).
BASE = ["train.max_steps=0", "train.save=none", "train.select=best", "train.select_metric=val/loss",
        "eval.every_steps=1"]
# What each task scores besides the held-out loss, kept cheap: a few greedy answers (eval.max_samples,
# set to task.val_size, caps those and leaves the held-out set whole).
TASK_EXTRA = {"math": ["task.eval_sets=[MultiArith]", "eval.num_beams=1", "eval.max_new_tokens=32"],
              "alpaca": ["task.generate_samples=0"]}

def cell_overrides(task: str, data_dir: Path, settings: list[str]) -> tuple[list[str], list[str]]:
    """(the base model's overrides, every method's shared ones) for `task`; `settings` (KEY=VALUE) replace
    BUDGET's keys and are applied last."""
    budget = {o.split("=")[0]: o for o in BUDGET}
    budget.update({o.split("=")[0]: o for o in settings})
    val_size, steps = budget["task.val_size"].split("=")[1], budget["train.max_steps"].split("=")[1]
    shared = [*COMMON, f"task={task}", f"task.data_dir={data_dir}", *TASK_EXTRA[task], f"eval.max_samples={val_size}",
              f"eval.every_steps={steps}", *budget.values()]
    keys = {o.split("=")[0] for o in BASE}
    return [*(o for o in shared if o.split("=")[0] not in keys), *BASE], shared


def run_cell(out: Path, overrides: list[str]) -> dict:
    """One ftbench run in its own process (or the result it already left). A run refused before it started
    (a bad override: exit 2, no result.json) comes back as status "refused" with the log's last line."""
    log_path = out.parent / f"{out.name}.log"
    if not (out / "result.json").exists():
        command = [str(Path(sys.executable).with_name("ftbench")), f"hydra.run.dir={out}", *overrides]
        with open(log_path, "w") as log:
            if children.run(command, stdout=log, stderr=subprocess.STDOUT) == 130:  # canceled: stop the bench
                raise KeyboardInterrupt
    if not (out / "result.json").exists():
        lines = log_path.read_text().strip().splitlines() if log_path.exists() else []
        return {"status": "refused", "error": lines[-1] if lines else f"no result.json in {out}"}
    return json.loads((out / "result.json").read_text())


def heldout_val_loss(result: dict) -> float | None:
    history = result.get("validation_history") or []
    return history[-1]["metrics"].get("val/loss") if history else None


def reload_loss(result: dict) -> float:
    """The held-out loss of the exported merged checkpoint, loaded with plain from_pretrained."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftbench.tasks import (  # the child process's work: torch loads here
        build_task,
        task_config_classes,
    )
    from ftbench.tasks.base import EvalContext
    from ftbench.tasks.instruct import heldout_loss

    folder = result["export"]["merged"]
    cfg = OmegaConf.create(result["config"])
    schema = OmegaConf.structured(task_config_classes()[cfg.task.family])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    task = build_task(OmegaConf.merge(schema, cfg.task), tokenizer, cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ctx = EvalContext(device=torch.device("cpu"), autocast=contextlib.nullcontext,
                      batch_size=cfg.eval.batch_size or 2 * result["plan"]["micro_batch_size"], max_samples=None,
                      output_dir=Path(folder), pad_to_multiple_of=None, progress=False)
    return heldout_loss(model, task.val, ctx, task.collate)


def row(task: str, method: str, base: float | None, result: dict) -> dict:
    tuned = heldout_val_loss(result)
    cell = {"task": task, "method": method, "status": result["status"], "error": result.get("error"),
            "base_loss": base, "tuned_loss": tuned,
            "trainable_pct": (result.get("params") or {}).get("trainable_pct"),
            "step_time_s": (result.get("throughput") or {}).get("step_time_s_p50"),
            "peak_rss_gib": ((result.get("memory") or {}).get("cpu_peak_rss_bytes") or 0) / GiB or None,
            "micro_batch": (result.get("plan") or {}).get("micro_batch_size"), "reload_loss": None}
    if result["status"] == "ok" and result.get("export"):
        cell["reload_loss"] = reload_loss(result)
    return cell


def markdown(rows: list[dict]) -> str:
    def f(value, fmt):
        return "-" if value is None else format(value, fmt)

    lines = ["| task | method | held-out loss base -> tuned | trainable % | step time (s) | peak RSS (GiB) "
             "| micro-batch | reloaded loss | status |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fell = "" if r["tuned_loss"] is None or r["base_loss"] is None else (
            " (lower)" if r["tuned_loss"] < r["base_loss"] else " (NOT lower)")
        same = "-" if r["reload_loss"] is None else (
            f"{r['reload_loss']:.4f} ({'same' if abs(r['reload_loss'] - r['tuned_loss']) < 1e-4 else 'DIFFERS'})")
        lines.append(f"| {r['task']} | {r['method']} | {f(r['base_loss'], '.4f')} -> {f(r['tuned_loss'], '.4f')}{fell} "
                     f"| {f(r['trainable_pct'], '.2f')} | {f(r['step_time_s'], '.2f')} | {f(r['peak_rss_gib'], '.2f')} "
                     f"| {f(r['micro_batch'], 'd')} | {same} | {r['status']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding math/ and alpaca/")
    parser.add_argument("--out", default="outputs/bench-real")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--set", nargs="*", default=[], help="overrides, applied last (the CPU budget's "
                        f"default: {' '.join(BUDGET)})")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in args.tasks:
        base_cell, shared = cell_overrides(task, Path(args.data) / task, args.set)
        print(f"# {task}: ftbench {' '.join(shared)}", flush=True)
        base = heldout_val_loss(run_cell(out / f"{task}-base", base_cell))
        for method in args.methods or names():
            result = run_cell(out / f"{task}-{method}", [*shared, f"method={method}"])
            rows.append(row(task, method, base, result))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
            (out / "table.json").write_text(json.dumps(rows, indent=2))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

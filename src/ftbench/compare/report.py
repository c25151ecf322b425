"""A comparison's report: per task and arm, the lr chosen in stage 1 and stage 2's figures over seeds.

One markdown (comparison.md), one CSV (comparison.csv), one PNG (comparison.png: the Pareto fronts of
quality against peak memory and against training time, with the intervals) and comparison.json (the
spec, the lr chosen per arm with the stage-1 scores, the rows, and the runs that were counted), all in
the comparison's folder. `ftbench-report <folder>` rebuilds the same files from the runs listed there.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ftbench import files, results
from ftbench import report as run_report
from ftbench.compare import stats
from ftbench.results import Result

FILES = {"json": "comparison.json", "markdown": "comparison.md", "csv": "comparison.csv", "plot": "comparison.png"}
COLUMNS = ("task", "arm", "method", "lr", "ok_seeds", "metric", "mean", "ci95", "peak_bytes", "peak_kind",
           "predicted_peak_bytes", "steps", "step_s", "tokens_per_s", "trainable", "trainable_pct",
           "time_to_target_s", "reached", "p_vs_full", "vs_full", "p_vs_lora", "vs_lora", "changed_pct",
           "warnings")


@dataclass
class Counted:
    """An ok run made from its current config, as the report reads it."""

    stage: str
    task: str
    arm: str
    lr: float
    seed: int
    folder: str  # relative to the comparison's folder
    result: Result


def metric_name(spec: dict, task_metric: str) -> tuple[str, str]:
    """(split, name) of the deciding metric: the spec's name (or the task's headline name) on the task's
    reported split, e.g. ('dev', 'mcc')."""
    split, _, name = task_metric.partition("/")
    return split, spec["metric"] or name


def higher_is_better(name: str) -> bool:
    return not name.endswith("loss")


def summarize(spec: dict, counted: list[Counted], missing: list[str], plans: dict | None = None) -> dict:
    """The comparison as data: per task, the chosen lrs and one row per arm. `counted`: the finished runs
    (ok, nan, oom); `missing`: one line per run that did not count (not run, failed, diverged, made from
    another config); `plans`: {task: {arm: plan.json}}."""
    tasks = []
    for task in spec["tasks"]:
        runs = [c for c in counted if c.task == task]
        if not runs:
            tasks.append({"task": task, "metric": None, "chosen": {}, "rows": []})
            continue
        split, name = metric_name(spec, runs[0].result.config["task"]["metric"])
        better = higher_is_better(name)
        chosen = {}
        for arm in spec["arms"]:
            scores = {c.lr: c.result.metrics.get(f"val/{name}") for c in runs
                      if c.stage == "lr" and c.arm == arm}
            chosen[arm] = {"lr": stats.choose(scores, better), "scores": {repr(k): v for k, v in sorted(scores.items())}}
        final = {arm: {c.seed: c for c in runs if c.stage == "seeds" and c.arm == arm and c.result.status == "ok"}
                 for arm in spec["arms"]}
        values = {arm: {s: c.result.metrics[f"{split}/{name}"] for s, c in by_seed.items()
                        if f"{split}/{name}" in c.result.metrics} for arm, by_seed in final.items()}
        full = next((a for a in spec["arms"] if spec["arm_methods"][a] == "full"), None)
        lora = next((a for a in spec["arms"] if spec["arm_methods"][a] == "lora"), None)
        full_val = [last_validation(c.result, name) for c in final.get(full, {}).values()]
        full_val = [v for v in full_val if v is not None]
        target = stats.target(spec["target"], full_val, better)
        rows = [row(spec, task, arm, chosen[arm]["lr"], final[arm], values, full, lora, f"{split}/{name}", name,
                    target, (plans or {}).get(task, {}).get(arm)) for arm in spec["arms"]]
        tasks.append({"task": task, "metric": f"{split}/{name}", "target": target, "chosen": chosen, "rows": rows,
                      "full_final": sum(full_val) / len(full_val) if full_val else None})
    return {"spec": spec, "tasks": tasks, "missing": missing,
            "runs": sorted(c.folder for c in counted)}


def last_validation(result: Result, name: str) -> float | None:
    history = validation_curve(result, name)
    return history[-1][1] if history else None


def validation_curve(result: Result, name: str) -> list[tuple[int, float]]:
    return [(v["step"], v["metrics"][f"val/{name}"]) for v in result.validation_history or []
            if f"val/{name}" in v["metrics"]]


def row(spec: dict, task: str, arm: str, lr: float | None, by_seed: dict[int, Counted], values: dict, full: str | None,
        lora: str | None, metric: str, name: str, target: float | None, plan: dict | None) -> dict:
    """One arm's figures over its ok seeds (means; the metric with its Student's t interval)."""
    mine = values.get(arm, {})
    out = {c: None for c in COLUMNS}
    out.update(task=task, arm=arm, method=spec["arm_methods"][arm], lr=lr, metric=metric,
               ok_seeds=f"{len(mine)}/{len(spec['seeds'])}")
    if not mine:
        return out
    ci = stats.interval(list(mine.values()))
    loaded = [c.result for c in by_seed.values()]
    table = run_report.rows(loaded)
    peaks = [r["peak_alloc_bytes"] for r in table]
    kind = "peak allocated" if all(p is not None for p in peaks) else "weights + grads + optimizer state"
    if kind != "peak allocated":
        peaks = [r["state_bytes"] for r in table]
    step_s = [r["step_s"] for r in table if r["step_s"] is not None]
    times = [stats.time_to_target(validation_curve(c.result, name), target,
                                  c.result.throughput.step_time_s_p50, higher_is_better(name))
             for c in by_seed.values()] if target is not None else []
    reached = [t for t in times if t is not None]
    engagement = [c.result.engagement or {} for c in by_seed.values()]
    changed = [e["changed_pct_of_claimed"] for e in engagement if e.get("changed_pct_of_claimed") is not None]
    out.update(mean=ci.mean, ci95=ci.half_width, peak_bytes=mean(peaks), peak_kind=kind,
               predicted_peak_bytes=(plan or {}).get("memory", {}).get("train_peak_allocated_bytes"),
               steps=mean([r.train.steps for r in loaded]), step_s=mean(step_s),
               tokens_per_s=mean([r["tokens_per_s"] for r in table]),
               trainable=loaded[0].params.trainable, trainable_pct=loaded[0].params.trainable_pct,
               time_to_target_s=mean(reached), reached=f"{len(reached)}/{len(mine)}" if target is not None else None,
               changed_pct=min(changed) if changed else None,
               warnings="; ".join(sorted({e["warning"] for e in engagement if e.get("warning")})) or None)
    for other, key in ((full, "full"), (lora, "lora")):
        if other is not None and other != arm and values.get(other):
            test = stats.paired(mine, values[other], spec["alpha"], higher_is_better(name))
            out[f"p_vs_{key}"], out[f"vs_{key}"] = test.p, test.verdict
    return out


def mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def fmt(key: str, value) -> str:
    if value is None:
        return "—"
    if key.endswith("_bytes"):
        return f"{value / 2**20:,.1f}"
    if key in ("mean", "ci95"):
        return f"{value:.4f}"
    if key.startswith("p_vs"):
        return f"{value:.3f}"
    if key == "lr":
        return f"{value:.3g}"
    if key in ("step_s", "time_to_target_s"):
        return f"{value:.3f}" if key == "step_s" else f"{value:.1f}"
    if key == "tokens_per_s":
        return f"{value:,.0f}"
    if key == "trainable_pct" or key == "changed_pct":
        return f"{value:.3g}"
    if key == "trainable":
        return f"{value:,}"
    return str(value)


SHOWN = {"arm": "arm", "lr": "lr (chosen)", "metric": "metric", "mean": "mean", "ci95": "± 95 % CI",
         "ok_seeds": "seeds ok", "peak_bytes": "peak (MiB)", "predicted_peak_bytes": "planned peak (MiB)",
         "step_s": "step s", "tokens_per_s": "tok/s", "trainable_pct": "trainable %",
         "time_to_target_s": "time to target (s)", "reached": "reached", "vs_full": "vs full",
         "p_vs_full": "p", "vs_lora": "vs lora", "p_vs_lora": "p", "changed_pct": "changed % of claimed"}


def budget(given: dict) -> str:
    """The spec's budget in words (spec.Budget, as comparison.json keeps it)."""
    amount = (f"{given['steps']} optimizer steps" if given.get("tokens") is None else
              f"{given['tokens']:,} training tokens (padding not counted: each seed's order sets the steps)")
    return f"{amount} at an effective batch of {given['batch_size']}"


def target_text(task: dict) -> str:
    """The task's time-to-target line: the target, or why there is none."""
    if task["target"] is not None or task.get("full_final") is None:
        return f"target {fmt('mean', task['target'])}"
    return (f"no time to target: full fine-tuning's final validation is {task['full_final']:.4f}, at or below 0, "
            "so any fraction of it is reached before training")


def markdown(summary: dict) -> str:
    spec = summary["spec"]
    lines = [f"# {spec['title'] or spec['name']}", "",
             f"Model `{spec['model']}`; budget {budget(spec['budget'])} for every arm; seeds "
             f"{', '.join(map(str, spec['seeds']))}.",
             f"Stage 1 picked each arm's lr on `val`, {held(spec['validation_from_train'])} held out of the training "
             "data (the reported split unread), at the first seed; stage 2 ran every seed at that lr and scored the "
             "reported split.",
             "Means over seeds ± the half-width of a 95 % Student's t interval (n - 1 degrees of freedom). "
             f"`vs full`, `vs lora`: a paired t-test over seeds (scipy.stats.ttest_rel, two-sided, α = {spec['alpha']}); "
             "\"not distinguishable at n = k\" where its p-value is above α; no test where the difference is the "
             "same at every seed (no spread to weigh it against).",
             f"Time to target: training seconds (step × median step time) until the validation metric first comes "
             f"within a ratio of {spec['target']:g} of full fine-tuning's final validation value (mean over its seeds): "
             f"{spec['target']:g} × it where higher is better, it ÷ {spec['target']:g} where lower is (a loss).", ""]
    for task in summary["tasks"]:
        lines.append(f"## {task['task']} ({task['metric'] or 'no runs yet'})")
        if not task["rows"]:
            lines += ["", "No finished runs.", ""]
            continue
        lines += ["", "Stage 1 (lr: validation score):", ""]
        for arm, pick in task["chosen"].items():
            scores = ", ".join(f"{float(lr):.3g}: {'—' if v is None else f'{v:.4f}'}" for lr, v in pick["scores"].items())
            lines.append(f"- {arm}: {scores or 'not run'} → {fmt('lr', pick['lr'])}")
        rows = task["rows"]
        columns = [c for c in SHOWN if c != "metric" and any(r[c] is not None for r in rows)] or list(SHOWN)
        peak_kinds = sorted({r["peak_kind"] for r in rows if r["peak_kind"]})
        planned = (f"; planned peak: `ftbench plan` on hardware={spec['gpu']} of each arm's stage-2 run at its batch "
                   "and the longest training sequence" if spec["gpu"] else "")
        lines += ["", f"Peak: {' / '.join(peak_kinds) or '—'}{planned}; {target_text(task)}.", "",
                  "| " + " | ".join(SHOWN[c] for c in columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(fmt(c, r[c]) for c in columns) + " |" for r in rows]
        warned = [f"- {r['arm']}: {r['warnings']}" for r in rows if r["warnings"]]
        lines += ["", "Engagement warnings:", "", *warned] if warned else []
        lines.append("")
    if summary["missing"]:
        lines += ["## Runs that did not count", "", *[f"- {m}" for m in summary["missing"]], ""]
    return "\n".join(lines)


def held(size: int | float) -> str:
    return f"{100 * size:g} %" if size < 1 else f"{int(size)} examples"


def csv_text(summary: dict) -> str:
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=COLUMNS)
    writer.writeheader()
    for task in summary["tasks"]:
        writer.writerows(task["rows"])
    return handle.getvalue()


def plot(summary: dict, path: Path) -> Path | None:
    """Per task: quality (mean with its interval) against peak memory and against training time, the
    Pareto front (no other arm both cheaper and better) joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in summary["tasks"] if any(r["mean"] is not None for r in t["rows"])]
    if not tasks:
        return None
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4.2 * len(tasks)), squeeze=False)
    for (left, right), task in zip(axes, tasks):
        rows = [r for r in task["rows"] if r["mean"] is not None]
        for ax, cost, label in ((left, lambda r: r["peak_bytes"] / 2**20 if r["peak_bytes"] else None,
                                 f"peak memory (MiB; {rows[0]['peak_kind']})"),
                                (right, lambda r: r["step_s"] * r["steps"] if r["step_s"] and r["steps"] else None,
                                 "training time (s: steps × median step time)")):
            shown = [r for r in rows if cost(r) is not None]
            for r in shown:
                ax.errorbar(cost(r), r["mean"], yerr=r["ci95"] or 0, fmt="o", capsize=3)
                ax.annotate(r["arm"], (cost(r), r["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
            quality = [r["mean"] if higher_is_better(task["metric"]) else -r["mean"] for r in shown]
            front = stats.pareto([(cost(r), q) for r, q in zip(shown, quality)])
            ax.plot([cost(shown[i]) for i in front], [shown[i]["mean"] for i in front], "k--", lw=1, alpha=0.6,
                    marker="s", mfc="none", ms=12, label="Pareto front")
            ax.set_xlabel(label)
            ax.set_ylabel(f"{task['metric']} (mean ± 95 % t interval)")
            ax.set_title(task["task"])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(summary: dict, folder: Path) -> dict[str, Path]:
    """comparison.json, .md, .csv and .png into `folder`; returns what was written. An earlier comparison
    there that differs (another spec's, or this one's before more of its runs finished) is kept as
    comparison.previous-N.json/.md/.csv/.png (files.keep_previous), with one line saying so."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = {"json": json.dumps(summary, indent=1, default=_plain) + "\n", "markdown": markdown(summary),
             "csv": csv_text(summary)}
    kept = files.keep_previous(folder, tuple(FILES.values()), {FILES[key]: text for key, text in texts.items()})
    if kept:
        print(f"the earlier comparison, which differs, is kept as {', '.join(str(p) for p in kept)}")
    written = {key: files.write_atomic(folder / FILES[key], text) for key, text in texts.items()}
    if plot(summary, folder / FILES["plot"]) is not None:
        written["plot"] = folder / FILES["plot"]
    return written


def counted(folder: Path, runs: list[str]) -> list[Counted]:
    """The runs listed in a comparison.json, read again from `folder` (ftbench-report)."""
    found = []
    for relative in runs:
        task, stage, arm, _ = Path(relative).parts
        result = results.load(folder / relative / results.FILENAME)
        found.append(Counted(stage, task, arm, result.config["optim"]["lr"], result.config["seed"], relative, result))
    return found


def rebuild(folder: Path, out: Path | None = None) -> dict[str, Path]:
    """Write the comparison's files again (into `out`, default `folder`) from its comparison.json and the
    runs it lists."""
    summary = files.read_json(folder / FILES["json"], "", "run the comparison again (ftbench compare) to write it")
    plans = {t["task"]: {r["arm"]: {"memory": {"train_peak_allocated_bytes": r["predicted_peak_bytes"]}}
                         for r in t["rows"] if r["predicted_peak_bytes"] is not None} for t in summary["tasks"]}
    return write(summarize(summary["spec"], counted(folder, summary["runs"]), summary["missing"], plans), out or folder)


def _plain(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return asdict(value) if hasattr(value, "__dataclass_fields__") else str(value)

"""One table and one plot across runs: what each method costs (memory, speed) and buys (the metric).

Used at the end of every multirun (`SweepReport`, a Hydra callback) and by
`ftbench-report DIR...` on any result files.

A report never destroys an earlier one: when the folder already holds a report that differs from the
one about to be written, the old files are kept as `report.previous-N.md/.csv/.png` (the N free for all
three, as `result.previous-N.json`), with one line saying so; the same report written again replaces
itself. A sweep's own report, refreshed as a rerun of the sweep finishes more jobs, is the same report
growing: it replaces itself while every run of the old one is still in the new one, those that ended ok
with the same figures.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from ftbench import files, results
from ftbench.engine.loggers import log_report
from ftbench.plan import report as plan_report
from ftbench.results import GiB, Result

log = logging.getLogger("ftbench")

COLUMNS = ("run", "status", "trainable_pct", "peak_alloc_bytes", "state_bytes", "weights_bytes", "grads_bytes",
           "optim_state_bytes", "activations_bytes", "step_s", "tokens_per_s", "metric", "value")
PLAN_COLUMNS = ("predicted_peak_bytes", "predicted_error_pct")  # shown when a run has a plan.json (ftbench plan)
MEMORY = {c for c in COLUMNS + PLAN_COLUMNS if c.endswith("_bytes")}
HEADERS = {"run": "run", "status": "status", "trainable_pct": "trainable %", "peak_alloc_bytes": "peak alloc",
           "state_bytes": "state", "weights_bytes": "weights", "grads_bytes": "grads",
           "optim_state_bytes": "optim state", "activations_bytes": "activations", "step_s": "step s",
           "tokens_per_s": "tok/s (non-pad)", "metric": "metric", "value": "value",
           "predicted_peak_bytes": "predicted peak", "predicted_error_pct": "predicted vs measured %"}


def memory_unit(table: list[dict]) -> tuple[str, int]:
    """GiB when any figure reaches one, else MiB (tiny models)."""
    largest = max((row.get(c) or 0 for row in table for c in MEMORY), default=0)
    return ("GiB", GiB) if largest >= GiB else ("MiB", 2**20)


def _labels(loaded: list[Result]) -> list[str]:
    """Method name plus the overrides that tell the runs apart (e.g. method.sparse_rate=0.01)."""
    override_sets = [set(r.run.overrides or []) for r in loaded]
    shared = set.intersection(*override_sets) if override_sets else set()
    labels = []
    for result, overrides in zip(loaded, override_sets):
        own = sorted(o for o in overrides - shared if not o.startswith(("method=", "hydra.")))
        labels.append(" ".join([result.run.method, *own]))
    return labels


def rows(loaded: list[Result], plans: list[dict | None] | None = None) -> list[dict[str, Any]]:
    table = []
    for label, result, plan in zip(_labels(loaded), loaded, plans or [None] * len(loaded)):
        memory, breakdown = result.memory, result.memory.breakdown
        held = [breakdown.weights_bytes, breakdown.master_bytes, breakdown.grad_bytes, breakdown.optimizer_state_bytes]
        metric = result.run.metric
        table.append({
            "run": label,
            "status": result.status,
            "trainable_pct": result.params.trainable_pct,
            # CUDA's allocator counter, or on the CPU the peak traced op by op (mode=profile)
            "peak_alloc_bytes": memory.train_peak_allocated_bytes or memory.train_peak_traced_bytes,
            "state_bytes": sum(v for v in held if v) if any(held) else None,
            "weights_bytes": breakdown.weights_bytes,
            "grads_bytes": breakdown.grad_bytes,
            "optim_state_bytes": breakdown.optimizer_state_bytes,
            "activations_bytes": breakdown.activations_bytes,
            "step_s": result.throughput.step_time_s_p50,
            "tokens_per_s": result.throughput.tokens_per_s_nonpad,
            "metric": metric,
            "value": result.metrics.get(metric) if metric else None,
        })
        if plan is not None:  # ftbench plan's prediction for this run (plan.json)
            predicted = plan["memory"]["train_peak_allocated_bytes"]
            measured = table[-1]["peak_alloc_bytes"]
            table[-1]["predicted_peak_bytes"] = predicted
            table[-1]["predicted_error_pct"] = 100 * (predicted / measured - 1) if measured else None
    return table


def _fmt(key: str, value: Any, unit: tuple[str, int]) -> str:
    if value is None:
        return "—"
    if key in MEMORY:
        return f"{value / unit[1]:.2f}"
    if isinstance(value, float):
        if key == "tokens_per_s":
            return f"{value:,.0f}"
        if key == "step_s":
            return f"{value:.3f}"
        return f"{value:.4f}" if key == "value" else f"{value:.2f}" if value >= 0.01 or value == 0 else f"{value:.2e}"
    return str(value)


def _header(key: str, unit: tuple[str, int]) -> str:
    return f"{HEADERS[key]} ({unit[0]})" if key in MEMORY else HEADERS[key]


def _columns(table: list[dict]) -> tuple[str, ...]:
    """COLUMNS, and predicted vs measured where any run has a plan."""
    return COLUMNS + PLAN_COLUMNS if any("predicted_peak_bytes" in row for row in table) else COLUMNS


def markdown(table: list[dict]) -> str:
    unit, columns = memory_unit(table), _columns(table)
    lines = ["| " + " | ".join(_header(c, unit) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(c, row.get(c), unit) for c in columns) + " |" for row in table]
    return "\n".join(lines) + "\n"


def csv_text(table: list[dict]) -> str:
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=_columns(table), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    return handle.getvalue()


def plot(table: list[dict], path: Path) -> Path | None:
    """Memory against the task metric (or against step time for profile runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in table if r["status"] == "ok"]
    unit, scale = memory_unit(table)
    on_gpu = all(r["peak_alloc_bytes"] is not None for r in ok)
    x_key, x_label = ("peak_alloc_bytes", f"train peak allocated ({unit})") if on_gpu else (
        "state_bytes", f"weights + grads + optimizer state ({unit})")
    has_metric = any(r["value"] is not None for r in ok)
    y_key = "value" if has_metric else "step_s"
    y_label = (ok[0]["metric"] if has_metric else "step time (s)") if ok else ""
    points = [r for r in ok if r[x_key] is not None and r[y_key] is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for row in points:
        x = row[x_key] / scale
        ax.scatter(x, row[y_key], s=36)
        ax.annotate(row["run"], (x, row[y_key]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title("memory vs " + ("quality" if has_metric else "speed"))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_table(table: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    unit, columns = memory_unit(table), _columns(table)
    shown = Table(title="ftbench comparison")
    for column in columns:
        shown.add_column(_header(column, unit), justify="left" if column in ("run", "status", "metric") else "right")
    for row in table:
        shown.add_row(*(_fmt(c, row.get(c), unit) for c in columns))
    Console(width=200).print(shown)


def build(paths: list[Path], out_dir: Path, grows: bool = False) -> dict[str, Path]:
    """Read every result under `paths`; print the table; write report.md, report.csv, report.png into
    `out_dir`, an earlier report there that differs kept aside (`files.keep_previous`; `grows`: the sweep's
    own report, replaced while it only gains runs or finishes them). Plans (plan.json, `ftbench plan`)
    are set beside the runs they predict; plans alone make plan.md, and so do the plans beside no run,
    each named with the reason under the report's table.

    Raises ValueError when `paths` hold neither a result nor a plan, and what `results.load` raises for
    a result file that cannot be read."""
    found = results.find(paths)
    plans = {p: plan_report.read(p) for p in plan_report.find(paths)}
    out_dir.mkdir(parents=True, exist_ok=True)
    if not found and plans:
        return {"plans": plan_report.print_plans(list(plans.values()), out_dir)}
    if not found:
        raise ValueError(f"no {results.FILENAME} under {', '.join(map(str, paths))}")
    loaded = [results.load(p) for p in found]
    matched = [plan_report.matching_plan(r, p, plans) for r, p in zip(loaded, found)]
    alone = {path: plan for path, plan in plans.items() if not any(plan is m for m in matched)}
    notes = [plan_report.unmatched(path, plan) for path, plan in alone.items()]
    table = rows(loaded, matched)
    text, table_csv = markdown(table) + "".join(f"\n{note}\n" for note in notes), csv_text(table)
    kept = files.keep_previous(out_dir, REPORT, {"report.md": text, "report.csv": table_csv},
                               (lambda: _grown(out_dir, table_csv)) if grows else None)
    written = {"markdown": files.write_atomic(out_dir / "report.md", text),
               "csv": files.write_atomic(out_dir / "report.csv", table_csv)}
    image = plot(table, out_dir / "report.png")
    if image:
        written["plot"] = image
    print_table(table)
    if alone:  # every plan named shows: those beside no run in their own table, each with the reason
        print("\n".join(notes))
        written["plans"] = plan_report.print_plans(list(alone.values()), out_dir)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    if kept:
        print(f"the earlier report, which differs, is kept as {', '.join(str(p) for p in kept)}")
    return written


REPORT = ("report.md", "report.csv", "report.png")


def _grown(out_dir: Path, table_csv: str) -> bool:
    """Whether every run of the report.csv in `out_dir` is in `table_csv`, each that ended ok with the same
    figures (a rerun of the sweep finishes the others); False when it is missing or cannot be read."""
    try:
        with (out_dir / "report.csv").open(newline="", encoding="utf-8") as handle:
            old = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    new = list(csv.DictReader(io.StringIO(table_csv, newline="")))
    runs = {row["run"] for row in new}
    return all(row.get("run") in runs if row.get("status") != "ok" else any(row.items() <= n.items() for n in new)
               for row in old)


class SweepReport(Callback):
    """At the end of a multirun: the comparison table and plot, written into the sweep folder and kept by
    the sweep's loggers (TensorBoard, MLflow)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if results.find([sweep_dir]) or plan_report.find([sweep_dir]):
            log_report(config.logger, sweep_dir, build([sweep_dir], sweep_dir, grows=True))

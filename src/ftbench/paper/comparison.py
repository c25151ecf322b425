"""Published vs ours for one recipe: a table (markdown and CSV) and two plots.

`ours` is the median over the seeds whose result is ok and was made from the cell's current
config; mean and standard deviation sit beside it. Each line carries the protocol the runs really
followed (checkpoint selection, steps, precision, checkpointing, device), read from result.json,
so that a mismatch can be explained rather than guessed at.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftbench import files
from ftbench.paper.recipes import OOM, Compare, Recipe, lookup, measured
from ftbench.results import GiB

COLUMNS = ("group", "row", "column", "unit", "published", "ours", "mean", "std", "seeds", "diff", "tolerance",
           "verdict", "status", "protocol", "cell", "note")
FILES = ("comparison.md", "comparison.csv", "memory_vs_quality.png", "step_time.png")  # what `build` writes
DIGITS = {"percent": 1, "value": 2, "GB": 2, "GiB": 2, "MB": 1, "MiB": 1, "ms": 1, "s": 3, "steps/s": 2}
MARKS = {"within": "✓", "OUTSIDE": "✗"}


@dataclass
class CellResults:
    """What a cell's folder holds now: results that count (ok, current config) and every status."""

    cell: Any                    # recipes.Cell
    counted: dict[int, dict]     # seed -> result
    statuses: dict[int, str]     # seed -> ok | oom | failed | nan | canceled | stale | interrupted | not run


def _median_mean_std(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    return (statistics.median(values), statistics.fmean(values),
            statistics.stdev(values) if len(values) > 1 else None)


def status_line(found: CellResults) -> str:
    counts: dict[str, int] = {}
    for status in found.statuses.values():
        counts[status] = counts.get(status, 0) + 1
    total = len(found.statuses)
    return ", ".join(f"{status} {n}/{total}" for status, n in counts.items())


def protocol(result: dict) -> str:
    """How the run was made, in one line: what a reader needs to explain a difference."""
    run, env, params = result["run"], result.get("env") or {}, result.get("params") or {}
    config = result.get("config") or {}
    if run.get("mode") == "profile":
        shape = config.get("profile") or {}
        timed = (result.get("throughput") or {}).get("timed_steps")
        parts = [str(run.get("model")), f"profile {shape.get('batch_size')}x{shape.get('seq_len')}, "
                 f"{timed} timed steps"]
    else:
        selection, plan = result.get("selection") or {}, result.get("plan") or {}
        task = result.get("protocol") or {}
        examples = (task.get("sizes") or {}).get("train") or task.get("train_examples")
        parts = [str(run.get("model")), f"{selection.get('policy')} checkpoint (step {selection.get('step')} of "
                 f"{(result.get('train') or {}).get('steps')})", f"batch {plan.get('batch_size')}",
                 f"lr {plan.get('lr'):g}" if plan.get("lr") else "lr ?"]
        if examples:
            parts.append(f"{examples:,} train examples")
        sets = (result.get("metrics") or {}).get("avg/sets")
        if sets is not None:
            parts.append(f"avg over {sets:g} sets")
    parts.append(str(env.get("precision")))
    parts.append("checkpointing" if env.get("gradient_checkpointing") else "no checkpointing")
    if params.get("trainable_pct") is not None:
        parts.append(f"{params['trainable_pct']:.2f}% trainable")
    parts.append(str(env.get("device_name")))
    return ", ".join(parts)


def verdict(published, ours: float | None, allowed: float | None, out_of_memory: bool) -> str:
    if published is None:
        return "no published value"
    if published == OOM:
        if ours is not None:
            return "paper OOM, ours fits"
        return "both OOM" if out_of_memory else "no result"
    if ours is None:
        return "OOM (paper fits)" if out_of_memory else "no result"
    if allowed is None:
        return "not judged"
    return "within" if abs(ours - published) <= allowed * (1 + 1e-9) else "OUTSIDE"


def compare_line(found: CellResults, compare: Compare) -> dict[str, Any]:
    values = [v for v in (measured(r, compare) for r in found.counted.values()) if v is not None]
    median, mean, std = _median_mean_std(values)
    published = compare.published
    numeric = isinstance(published, (int, float))
    cell = found.cell
    first = next(iter(found.counted.values()), None)
    judged = verdict(published, median, compare.allowed(), "oom" in found.statuses.values())
    if judged == "no result" and first is not None:
        judged = "not in result.json"  # e.g. a GPU-only figure of a CPU run, or an eval set left out
    return {
        "group": cell.group, "row": cell.row, "column": compare.column, "unit": compare.unit,
        "published": published, "ours": median, "mean": mean, "std": std,
        "seeds": f"{len(values)}/{len(found.statuses)}",
        "diff": median - published if numeric and median is not None else None,
        "tolerance": compare.tolerance if numeric else None, "verdict": judged,
        "status": status_line(found), "protocol": protocol(first) if first else "", "cell": cell.id,
        "note": compare.note or "",
    }


def lines(recipe: Recipe, found: list[CellResults]) -> list[dict[str, Any]]:
    """Every comparison of the recipe, then its averages, then the references, in file order."""
    table = [compare_line(f, c) for f in found for c in f.cell.compare]
    for average in recipe.averages:
        parts = [line["ours"] for line in table if (line["group"], line["row"]) == (average.group, average.row)
                 and line["column"] in average.over]
        ours = statistics.fmean(parts) if len(parts) == len(average.over) and None not in parts else None
        allowed = Compare(average.column, "", average.unit, average.published, average.tolerance).allowed()
        table.append({
            "group": average.group, "row": average.row, "column": average.column, "unit": average.unit,
            "published": average.published, "ours": ours, "mean": None, "std": None,
            "seeds": f"mean of {len(average.over)} columns",
            "diff": ours - average.published if ours is not None and average.published is not None else None,
            "tolerance": average.tolerance, "verdict": verdict(average.published, ours, allowed, False),
            "status": "", "protocol": "", "cell": "", "note": average.note or ""})
    for reference in recipe.references:
        table += [{key: "" for key in COLUMNS} | {
            "group": reference.group, "row": reference.row, "column": column, "unit": reference.unit,
            "published": value, "ours": None, "mean": None, "std": None, "diff": None, "tolerance": None,
            "verdict": "reference (not run)", "note": reference.note or ""} for column, value in reference.values.items()]
    return table


def _fmt(value, unit: str, published: bool = False) -> str:
    """Ours to the unit's precision; published values exactly as transcribed."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        return value
    return f"{value:g}" if published else f"{value:.{DIGITS[unit]}f}"


def summary(table: list[dict]) -> str:
    """One block per group: rows × columns, each 'ours / published' with ✓ or ✗."""
    out = []
    for group in dict.fromkeys(line["group"] for line in table):
        block = [line for line in table if line["group"] == group]
        columns = list(dict.fromkeys(line["column"] for line in block))
        rows = list(dict.fromkeys(line["row"] for line in block))
        units = {line["column"]: line["unit"] for line in block}
        out += [f"**{group}** (ours / published)", "",
                "| | " + " | ".join(f"{c} ({units[c]})" for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for row in rows:
            cells = []
            for column in columns:
                line = next((x for x in block if x["row"] == row and x["column"] == column), None)
                if line is None:
                    cells.append("")
                    continue
                mark = MARKS.get(line["verdict"], "")
                ours, published = _fmt(line["ours"], line["unit"]), _fmt(line["published"], line["unit"], published=True)
                cells.append(f"{ours} / {published} {mark}".strip())
            out.append(f"| {row} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def markdown(recipe: Recipe, table: list[dict], out_dir: Path) -> str:
    shown = [c for c in COLUMNS if c not in ("mean", "cell")]
    head = [f"# {recipe.title}", "", f"Source: {recipe.provenance}", "",
            *[f"- {note}" for note in recipe.notes], "",
            f"Recipe `{recipe.path}`; results under `{out_dir}`. `ours` is the median over the seeds that "
            "finished ok (mean and std in the CSV and below); `diff` = ours − published, in the published unit; "
            "`tolerance`: absolute in that unit, or a percentage of the published value.", "",
            "## Summary", "", summary(table), "## Detail", "",
            "| " + " | ".join(shown).replace("std", "mean ± std") + " |", "|---" * len(shown) + "|"]
    body = []
    for line in table:
        cells = []
        for column in shown:
            value = line[column]
            if column == "std":
                value = "—" if line["mean"] is None else (
                    f"{_fmt(line['mean'], line['unit'])} ± {_fmt(value, line['unit'])}" if value is not None
                    else _fmt(line["mean"], line["unit"]))
            elif column in ("published", "ours", "diff"):
                value = _fmt(value, line["unit"], published=column == "published")
            elif column == "tolerance":
                value = "—" if value is None else str(value)
            cells.append(str(value).replace("|", "/"))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join(head + body) + "\n"


def csv_text(table: list[dict]) -> str:
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(table)
    return handle.getvalue()


def _median_of(found: CellResults, path: str) -> float | None:
    values = [v for v in (lookup(r, path) for r in found.counted.values()) if v is not None]
    return statistics.median(values) if values else None


def _state_bytes(found: CellResults) -> float | None:
    parts = [_median_of(found, f"memory.breakdown.{k}") for k in ("weights_bytes", "master_bytes", "grad_bytes",
                                                                  "optimizer_state_bytes")]
    return sum(p for p in parts if p is not None) if any(p is not None for p in parts) else None


def plot_memory_vs_quality(found: list[CellResults], path: Path) -> Path | None:
    """Each quality cell at (training memory, its first task metric), coloured by row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for cell_results in found:
        quality = next((c for c in cell_results.cell.compare if c.metric.startswith("metrics.")), None)
        values = [measured(r, quality) for r in cell_results.counted.values()] if quality else []
        values = [v for v in values if v is not None]
        if values:
            points.append((cell_results, quality, statistics.median(values)))
    if not points:
        return None
    on_gpu = all(_median_of(f, "memory.train_peak_allocated_bytes") is not None for f, _, _ in points)
    memory = (lambda f: _median_of(f, "memory.train_peak_allocated_bytes")) if on_gpu else _state_bytes
    largest = max((memory(f) or 0) for f, _, _ in points)
    unit, scale = ("GiB", GiB) if largest >= GiB else ("MiB", 2**20)
    x_label = f"train peak allocated ({unit})" if on_gpu else f"weights + masters + grads + optimizer state ({unit})"
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    colours = {row: f"C{i}" for i, row in enumerate(dict.fromkeys(f.cell.row for f, _, _ in points))}
    for cell_results, quality, value in points:
        x = (memory(cell_results) or 0) / scale
        ax.scatter(x, value, s=36, color=colours[cell_results.cell.row])
        ax.annotate(f"{quality.column}", (x, value), textcoords="offset points", xytext=(4, 3), fontsize=7)
    for row, colour in colours.items():
        ax.scatter([], [], color=colour, label=row)
    ax.legend(fontsize=8)
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"task metric ({points[0][1].unit})")
    ax.set_title("memory vs quality")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_step_time(found: list[CellResults], path: Path) -> Path | None:
    """Median training step time of every cell that has one, in recipe order (labelled by cell id)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f.cell.id, f.cell.row, 1e3 * t) for f in found
            if (t := _median_of(f, "throughput.step_time_s_p50")) is not None]
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.28 * len(bars)))
    labels, rows, values = zip(*bars)
    colours = {row: f"C{i}" for i, row in enumerate(dict.fromkeys(rows))}
    ax.barh(range(len(bars)), values, color=[colours[row] for row in rows])
    for row, colour in colours.items():
        ax.barh([], [], color=colour, label=row)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(range(len(bars)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("step time, median (ms)")
    ax.set_title("step time per method")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build(recipe: Recipe, found: list[CellResults], out_dir: Path) -> dict[str, Path]:
    """Write comparison.md, comparison.csv and the plots (`FILES`) into `out_dir`; print the summary. An
    earlier comparison there that differs (another recipe's, or this one's before more cells ran) is kept
    as comparison.previous-N.md/.csv, memory_vs_quality.previous-N.png, ... (files.keep_previous), with
    one line saying so."""
    table = lines(recipe, found)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {"comparison.md": markdown(recipe, table, out_dir), "comparison.csv": csv_text(table)}
    kept = files.keep_previous(out_dir, FILES, texts)
    written = {kind: files.write_atomic(out_dir / name, texts[name])
               for kind, name in (("markdown", "comparison.md"), ("csv", "comparison.csv"))}
    for kind, plot in (("memory vs quality", plot_memory_vs_quality), ("step time", plot_step_time)):
        image = plot(found, out_dir / f"{kind.replace(' ', '_')}.png")
        if image:
            written[kind] = image
    print(f"\n{recipe.title}\n\n{summary(table)}")
    for kind, path in written.items():
        print(f"{kind}: {path}")
    if kept:
        print(f"the earlier comparison, which differs, is kept as {', '.join(str(p) for p in kept)}")
    return written

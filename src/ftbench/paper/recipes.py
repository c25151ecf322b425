"""Paper recipes (recipes/*.yaml): which runs reproduce a published table, and what to compare.

A recipe lists cells. A cell is one configuration (an experiment preset plus overrides) run over
seeds; it names the published values it is compared with, each as a result.json path, the paper's
unit, the value and a tolerance. Published values from elsewhere that ftbench does not rerun
(rows a paper copied from another) are references; a table's headline mean over tasks is an
average. Anything wrong in a recipe is reported as one line naming the file and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftbench import files
from ftbench.errors import kind_problem
from ftbench.results import BREAKDOWN, REQUIRED

KINDS = ("quality", "memory")  # memory: the cells `--only-memory` runs (profile mode, random init)

# Published unit -> how a result.json value (fractions, bytes, seconds) is converted into it.
UNITS = {
    "percent": lambda v: 100.0 * v,   # a fraction (accuracy, MCC, Pearson) as the papers print it
    "value": lambda v: v,             # unchanged
    "GB": lambda v: v / 1e9,          # decimal gigabytes
    "GiB": lambda v: v / 2**30,
    "MB": lambda v: v / 1e6,
    "MiB": lambda v: v / 2**20,
    "ms": lambda v: 1e3 * v,          # from seconds
    "s": lambda v: v,
    "steps/s": lambda v: 1.0 / v if v else math.nan,  # from seconds per step
}
OOM = "OOM"  # a published cell that ran out of memory

# result.json paths a comparison may read (metrics.<split>/<name> is checked against the task).
NUMERIC_KEYS = {
    "memory": {*REQUIRED["memory"], "baseline_allocated_bytes"} - {"device", "breakdown"},
    "memory.breakdown": {*BREAKDOWN, "optimizer_state_host_bytes"},
    "throughput": {*REQUIRED["throughput"], "timed_steps"},
    "params": set(REQUIRED["params"]),
    "train": {"steps", "samples", "tokens", "loss_first", "loss_last"},
}


class RecipeError(Exception):
    """A problem in a recipe file, as one line: '<file>: <field>: <what is wrong and the fix>'."""

    def __init__(self, path: Path | str, field: str, message: str):
        super().__init__(f"{path}: {field}: {message}" if field else f"{path}: {message}")


@dataclass(frozen=True)
class Compare:
    column: str                      # the paper's column, e.g. "CoLA" or "optimizer state"
    metric: str                      # result.json path; "a + b" sums paths (e.g. weights + masters)
    unit: str                        # the published unit (UNITS)
    published: float | str | None    # the paper's value, "OOM", or None (no published value)
    tolerance: float | str | None    # absolute in `unit`, "10%" of the published value, or None (not judged)
    note: str | None = None

    def paths(self) -> list[str]:
        return [p.strip() for p in self.metric.split("+")]

    def allowed(self) -> float | None:
        """The largest |ours - published| counted as reproduced."""
        if self.tolerance is None or not isinstance(self.published, (int, float)):
            return None
        if isinstance(self.tolerance, str):
            return abs(self.published) * float(self.tolerance.rstrip("%")) / 100.0
        return float(self.tolerance)


@dataclass(frozen=True)
class Cell:
    id: str
    group: str                       # the table's block, e.g. a model or a setting
    row: str                         # the table's row, usually the method
    kind: str
    preset: str | None               # conf/experiment/<preset>.yaml
    overrides: tuple[str, ...]
    data: str | None                 # task.data_dir = <--data>/<data> when --data is given
    seeds: tuple[int, ...]
    gpu_hours: float                 # an estimate per seed, never a measurement
    compare: tuple[Compare, ...]
    field: str                       # where the cell sits in the file (for error lines)


@dataclass(frozen=True)
class Average:
    """The mean of our values over some columns of one row (a table's headline average)."""

    group: str
    row: str
    column: str
    over: tuple[str, ...]
    unit: str
    published: float | None
    tolerance: float | str | None
    note: str | None = None


@dataclass(frozen=True)
class Reference:
    """A published row ftbench does not rerun (rows copied from another paper, methods ftbench lacks)."""

    group: str
    row: str
    unit: str
    values: dict[str, float | str]   # column -> published value (or OOM)
    note: str | None = None


@dataclass(frozen=True)
class Recipe:
    """One paper table (recipes/*.yaml): what to run (experiments x tasks x seeds, overrides), the
    published cells and averages to compare with, and the rows it only quotes."""

    path: Path
    name: str
    title: str
    provenance: str
    notes: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...]
    cells: tuple[Cell, ...]
    averages: tuple[Average, ...]
    references: tuple[Reference, ...]


class _Fields:
    """Pops typed fields out of one YAML mapping, naming the field in every error."""

    def __init__(self, path: Path, where: str, body: Any):
        if not isinstance(body, dict):
            raise RecipeError(path, where or "recipe", "must be a mapping of field: value")
        self.path, self.where, self.body = path, where, dict(body)

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, types: tuple, default: Any = ..., check=None, why: str = "") -> Any:
        if key not in self.body:
            if default is ...:
                raise RecipeError(self.path, self._name(key), "missing (required)")
            return default
        value = self.body.pop(key)
        if value is None and default is None:
            return None
        if (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
                or (check is not None and not check(value))):
            raise RecipeError(self.path, self._name(key), f"{value!r} is not {why or _kind(types)}")
        return value

    def strings(self, key: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(key, (list,), default, lambda v: all(isinstance(s, str) for s in v), "a list of strings")
        return tuple(value or ())

    def done(self) -> None:
        if self.body:
            raise RecipeError(self.path, self._name(sorted(self.body)[0]), "no such field")


def _kind(types: tuple) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a mapping", bool: "true/false"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _folder_name(name: str) -> bool:
    return files.folder_name_problem(name) is None and name[0] not in "._"


def _number_or(*words: str):
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) or v in words


def _tolerance(value) -> bool:
    if isinstance(value, str):
        try:
            return value.endswith("%") and float(value[:-1]) >= 0
        except ValueError:
            return False
    return value >= 0


def _compare(path: Path, where: str, body: Any, defaults: dict, columns: dict) -> Compare:
    if isinstance(body, dict):
        column = body.get("column")
        body = {**defaults, **(columns.get(column, {}) if isinstance(column, str) else {}), **body}
    fields = _Fields(path, where, body)
    compare = Compare(
        column=fields.get("column", (str,)),
        metric=fields.get("metric", (str,)),
        unit=fields.get("unit", (str,), check=lambda u: u in UNITS, why=f"one of {', '.join(UNITS)}"),
        published=fields.get("published", (int, float, str), None, _number_or(OOM), f"a number, {OOM} or null"),
        tolerance=fields.get("tolerance", (int, float, str), None, _tolerance, "a number >= 0, 'N%' or null"),
        note=fields.get("note", (str,), None),
    )
    fields.done()
    for metric in compare.paths():
        problem = metric_path_problem(metric)
        if problem:
            raise RecipeError(path, f"{where}.metric", problem)
    return compare


def metric_path_problem(path: str) -> str | None:
    """What is wrong with a result.json path, structurally (metrics.* is checked against the task later)."""
    section, _, rest = path.partition(".")
    if section == "metrics":
        return None if "/" in rest else f"'{path}': a task metric is metrics.<split>/<name>, e.g. metrics.dev/acc"
    parent, _, key = path.rpartition(".")
    if parent not in NUMERIC_KEYS:
        return f"'{path}': not a numeric result.json path; it starts with one of: metrics, {', '.join(NUMERIC_KEYS)}"
    if key not in NUMERIC_KEYS[parent]:
        return f"'{path}': {parent} has no '{key}'; choose one of: {', '.join(sorted(NUMERIC_KEYS[parent]))}"
    return None


def _cell(path: Path, index: int, body: Any, seeds: tuple[int, ...], defaults: dict, columns: dict) -> Cell:
    where = f"cells[{index}]"
    fields = _Fields(path, where, body)
    cell_id = fields.get("id", (str,), check=_folder_name, why="a folder name (no '/', not starting with '.' or '_')")
    cell_seeds = fields.get("seeds", (list,), None, lambda v: v and all(type(s) is int and s >= 0 for s in v),
                            "a non-empty list of integers >= 0")
    compares = fields.get("compare", (list,), check=bool, why="a non-empty list")
    cell = Cell(
        id=cell_id,
        group=fields.get("group", (str,)),
        row=fields.get("row", (str,)),
        kind=fields.get("kind", (str,), check=lambda k: k in KINDS, why=f"one of {', '.join(KINDS)}"),
        preset=fields.get("preset", (str,), None),
        overrides=fields.strings("overrides", []),
        data=fields.get("data", (str,), None),
        seeds=tuple(cell_seeds) if cell_seeds else seeds,
        gpu_hours=float(fields.get("gpu_hours", (int, float), check=lambda h: h >= 0, why="a number of hours >= 0")),
        compare=tuple(_compare(path, f"{where}.compare[{i}]", c, defaults, columns) for i, c in enumerate(compares)),
        field=where,
    )
    fields.done()
    for i, override in enumerate(cell.overrides):
        if "=" not in override:
            raise RecipeError(path, f"{where}.overrides[{i}]", f"'{override}' is not key=value")
    if cell.kind == "memory" and any(p.startswith("metrics.") for c in cell.compare for p in c.paths()):
        raise RecipeError(path, f"{where}.compare", "memory cells run in profile mode, which has no task metrics")
    return cell


def recipes_dir() -> Path | None:
    """The shipped recipes: inside the package (wheel), else at the top of the checkout."""
    package = Path(__file__).resolve().parents[1]
    return next((d for d in (package / "recipes", package.parents[1] / "recipes") if d.is_dir()), None)


def find(path: Path | str) -> Path:
    """A recipe file, or the name of a shipped recipe (e.g. sift-table2-glue)."""
    path = Path(path)
    shipped = recipes_dir()
    if not path.is_file() and shipped is not None and (shipped / f"{path.stem}.yaml").is_file():
        return shipped / f"{path.stem}.yaml"
    return path


def load(path: Path | str) -> Recipe:
    """Read and check a recipe file (structure, units, paths; configs are checked by composing them)."""
    import yaml

    path = find(path)
    if not path.is_file() and path.exists():
        raise RecipeError(path, "", f"{kind_problem(path, 'file')}; give a recipe file (YAML) or a shipped recipe's name")
    if not path.is_file():
        shipped = sorted(p.stem for p in recipes_dir().glob("*.yaml")) if recipes_dir() else []
        raise RecipeError(path, "", "no such recipe file" + (f"; shipped recipes: {', '.join(shipped)}" if shipped else ""))
    try:
        body = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise RecipeError(path, where, f"not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not body:
        raise RecipeError(path, "", "is empty (no fields, comments at most); give the recipe's fields (name:, title:, "
                          "seeds:, cells:, ...)")
    fields = _Fields(path, "", body)
    seeds = fields.get("seeds", (list,), check=lambda v: v and all(type(s) is int and s >= 0 for s in v),
                       why="a non-empty list of integers >= 0")
    defaults = fields.get("compare_defaults", (dict,), {})
    unknown = sorted(set(defaults) - {"unit", "tolerance"})
    if unknown:
        raise RecipeError(path, f"compare_defaults.{unknown[0]}", "no such field; give unit or tolerance")
    columns = fields.get("columns", (dict,), {})
    for column, spec in columns.items():
        extra = sorted(set(spec) - {"metric", "unit", "tolerance", "note"}) if isinstance(spec, dict) else ["?"]
        if extra:
            raise RecipeError(path, f"columns.{column}", "must map to metric, unit, tolerance or note")
    name = fields.get("name", (str,), check=_folder_name, why="a folder name (no '/', not starting with '.' or '_')")
    title = fields.get("title", (str,))
    provenance = fields.get("provenance", (str,))
    notes = fields.strings("notes", [])
    overrides = fields.strings("overrides", [])
    cells = tuple(_cell(path, i, c, tuple(seeds), defaults, columns)
                  for i, c in enumerate(fields.get("cells", (list,), check=bool, why="a non-empty list")))
    averages = tuple(_average(path, i, a, defaults, columns)
                     for i, a in enumerate(fields.get("averages", (list,), [])))
    references = tuple(_reference(path, i, r, defaults) for i, r in enumerate(fields.get("references", (list,), [])))
    fields.done()
    ids = [c.id for c in cells]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate:
        raise RecipeError(path, f"cells[{ids.index(duplicate)}].id", f"'{duplicate}' is used twice; ids name folders")
    columns = {(c.group, c.row, k.column) for c in cells for k in c.compare}
    for i, average in enumerate(averages):
        missing = [col for col in average.over if (average.group, average.row, col) not in columns]
        if missing:
            raise RecipeError(path, f"averages[{i}].over", f"no cell compares ({average.group}, {average.row}, "
                              f"{missing[0]}); list columns the row's cells compare")
    return Recipe(path, name, title, provenance, notes, tuple(seeds), overrides, cells, averages, references)


def _average(path: Path, index: int, body: Any, defaults: dict, columns: dict) -> Average:
    if isinstance(body, dict):
        spec = columns.get(body.get("column"), {}) if isinstance(body.get("column"), str) else {}
        body = {**defaults, **{k: v for k, v in spec.items() if k != "metric"}, **body}
    fields = _Fields(path, f"averages[{index}]", body)
    average = Average(
        group=fields.get("group", (str,)), row=fields.get("row", (str,)), column=fields.get("column", (str,)),
        over=fields.strings("over"),
        unit=fields.get("unit", (str,), check=lambda u: u in UNITS, why=f"one of {', '.join(UNITS)}"),
        published=fields.get("published", (int, float), None),
        tolerance=fields.get("tolerance", (int, float, str), None, _tolerance, "a number >= 0, 'N%' or null"),
        note=fields.get("note", (str,), None))
    fields.done()
    return average


def _reference(path: Path, index: int, body: Any, defaults: dict) -> Reference:
    merged = {"unit": defaults["unit"], **body} if isinstance(body, dict) and "unit" in defaults else body
    fields = _Fields(path, f"references[{index}]", merged)
    reference = Reference(
        group=fields.get("group", (str,)), row=fields.get("row", (str,)),
        unit=fields.get("unit", (str,), check=lambda u: u in UNITS, why=f"one of {', '.join(UNITS)}"),
        values=fields.get("values", (dict,), check=lambda v: v and all(_number_or(OOM)(x) for x in v.values()),
                          why=f"a mapping of column: number or {OOM}"),
        note=fields.get("note", (str,), None))
    fields.done()
    return reference


def lookup(result: dict, path: str) -> float | None:
    """The number at a result.json path ('metrics.dev/acc', 'memory.breakdown.grad_bytes'), or None."""
    section, _, rest = path.partition(".")
    if section == "metrics":
        value = (result.get("metrics") or {}).get(rest)
    else:
        value = result
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def measured(result: dict, compare: Compare) -> float | None:
    """Our value for one comparison, in the published unit (None when a path is missing)."""
    parts = [lookup(result, p) for p in compare.paths()]
    if any(p is None for p in parts):
        return None
    value = UNITS[compare.unit](sum(parts))
    return value if math.isfinite(value) else None

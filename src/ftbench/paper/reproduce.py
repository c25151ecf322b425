"""`ftbench-reproduce RECIPE...`: run a paper recipe and set our numbers beside the published ones.

Each cell runs as one Hydra multirun of the ftbench CLI over its seeds, into a fixed folder
(<out>/<recipe>/<cell>/seed<N>), so a rerun finds the seeds earlier runs finished and runs only
the rest. A seed whose result is not ok, or was made from another config, is moved aside into
<out>/<recipe>/_aside/ (never deleted or overwritten) before it runs again; one another ftbench process
is running in is refused instead. Every cell of every recipe is composed and checked before anything
runs; the comparison is rebuilt from whatever results exist, so a partial run gives a partial table.
While it runs, a recipe holds the lock on its folder (job/lock.py): a second ftbench-reproduce of it
into the same --out is refused.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ftbench.config.schema import check
from ftbench.config.tree import config_dir
from ftbench.errors import UserError, explain_compose_error, kind_problem
from ftbench.job import children, lock
from ftbench.job.compose import pinned, register_configs
from ftbench.paper import comparison
from ftbench.paper.comparison import CellResults
from ftbench.paper.recipes import Cell, Recipe, RecipeError, load
from ftbench.quiet import entry_point, quiet_libraries

ASIDE = "_aside"
PROFILE_OVERRIDES = ("mode=profile", "model.random_init=true")  # what --only-memory forces


@dataclass
class CellRun:
    """One cell's runs (its seeds, launched as one multirun) under this invocation's options: its overrides,
    folder and config, and which seeds are done."""

    cell: Cell
    overrides: list[str]
    seeds: list[int]
    folder: Path
    config: dict                 # the resolved config, seed excluded
    selected: bool               # run by this invocation (--cells, --only-memory)
    done: list[int] = field(default_factory=list)
    redo: dict[int, str] = field(default_factory=dict)  # seed -> why its earlier result is set aside

    def seed_dir(self, seed: int) -> Path:
        return self.folder / f"seed{seed}"

    @property
    def pending(self) -> list[int]:
        return [s for s in self.seeds if s not in self.done]

    def argv(self, seeds: list[int]) -> list[str]:
        """The ftbench command line that runs `seeds` of this cell as one multirun (without the sweep's
        own table: the recipe's comparison replaces it)."""
        return ["-m", *self.overrides, "seed=" + ",".join(map(str, seeds)), pinned("hydra.sweep.dir", str(self.folder)),
                "hydra.sweep.subdir=seed${seed}", "~hydra.callbacks.report"]


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge(overrides: list[str]) -> list[str]:
    """Later overrides of a key replace earlier ones (so --set model=tiny-llama swaps a cell's model)."""
    merged: dict[str, str] = {}
    for override in overrides:
        key = override_key(override)
        merged.pop(key, None)
        merged[key] = override
    return list(merged.values())


def cell_overrides(recipe: Recipe, cell: Cell, args: argparse.Namespace, selected: bool) -> list[str]:
    overrides = [f"experiment={cell.preset}"] if cell.preset else []
    overrides += [*recipe.overrides, *cell.overrides]
    if args.data and cell.data and (args.data / cell.data).is_dir():  # else the task's hub download
        overrides.append(f"task.data_dir={(args.data / cell.data).resolve()}")
    if selected:
        overrides += args.set
        if args.only_memory:
            overrides += PROFILE_OVERRIDES
    return merge(overrides)


def is_selected(cell: Cell, args: argparse.Namespace) -> bool:
    if args.only_memory and cell.kind != "memory":
        return False
    return not args.cells or any(fnmatch.fnmatchcase(cell.id, pattern) for pattern in args.cells)


def task_metrics(task) -> set[str] | None:
    """The metric keys a task's final evaluation writes, where they are known before running."""
    if task.family == "glue":
        from ftbench.tasks.glue import SPECS, SPLIT_NAMES  # torch: only for a GLUE cell

        spec = SPECS[task.name]
        return {f"{SPLIT_NAMES[s]}/{m}" for s in spec.eval_splits for m in (*spec.metrics, "loss")}
    if task.family == "reasoning":
        return {f"{s}/{m}" for s in task.eval_sets for m in ("acc", "samples")} | {"avg/acc", "avg/sets"}
    return None


def check_metrics(recipe: Recipe, cell: Cell, cfg) -> None:
    for i, compare in enumerate(cell.compare):
        for path in compare.paths():
            if not path.startswith("metrics."):
                continue
            where = f"{cell.field}.compare[{i}].metric"
            if cfg.mode == "profile":
                raise RecipeError(recipe.path, where, f"'{path}': profile runs have no task metrics")
            known = task_metrics(cfg.task)
            key = path.removeprefix("metrics.")
            if known is not None and key not in known:
                raise RecipeError(recipe.path, where, f"'{path}': the {cfg.task.name} task reports "
                                  f"{', '.join('metrics.' + k for k in sorted(known))}")


def cells(recipe: Recipe, args: argparse.Namespace) -> list[CellRun]:
    """Compose and check every cell (its config, its metric paths) and survey its folder."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException


    register_configs()
    presets = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
    cell_runs = []
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="ftbench"):
        for cell in recipe.cells:
            if cell.preset and cell.preset not in presets:
                raise RecipeError(recipe.path, f"{cell.field}.preset", f"no experiment '{cell.preset}' in "
                                  f"conf/experiment; choose one of: {', '.join(presets)}")
            selected = is_selected(cell, args)
            overrides = cell_overrides(recipe, cell, args, selected)
            if any(override_key(o) == "seed" for o in overrides):
                raise RecipeError(recipe.path, f"{cell.field}.overrides", "give seeds in the recipe's seeds "
                                  "(or --seeds), not as an override")
            try:
                cfg = compose("config", overrides=overrides)
                check(cfg, overrides)
            except UserError as exc:
                raise RecipeError(recipe.path, f"{cell.field} ({cell.id})", str(exc)) from None
            except (HydraException, OmegaConfBaseException) as exc:
                raise RecipeError(recipe.path, f"{cell.field} ({cell.id})", explain_compose_error(exc)) from None
            check_metrics(recipe, cell, cfg)
            config = OmegaConf.to_container(cfg, resolve=True)
            config.pop("seed")
            seeds = list(args.seeds or cell.seeds) if selected else list(cell.seeds)
            cell_run = CellRun(cell, overrides, seeds, args.out / recipe.name / cell.id, config, selected)
            survey(cell_run)
            cell_runs.append(cell_run)
    return cell_runs


def read_result(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return None


def survey(cell_run: CellRun) -> None:
    """Which seeds have an ok result made from this config; why the others must run again."""
    cell_run.done, cell_run.redo = [], {}
    for seed in cell_run.seeds:
        folder = cell_run.seed_dir(seed)
        if not folder.exists():
            continue
        result = read_result(folder)
        if result is None:
            cell_run.redo[seed] = "no readable result.json (the run was interrupted)"
        elif result.get("status") != "ok":
            cell_run.redo[seed] = f"status {result.get('status')}: {result.get('error')}"
        elif result.get("config") != {**cell_run.config, "seed": seed}:
            cell_run.redo[seed] = "made from another config"
        else:
            cell_run.done.append(seed)


def found(cell_run: CellRun) -> CellResults:
    """The cell's results as the comparison reads them."""
    counted, statuses = {}, {}
    for seed in cell_run.seeds:
        result = read_result(cell_run.seed_dir(seed)) if cell_run.seed_dir(seed).exists() else None
        if result is None:
            statuses[seed] = "interrupted" if cell_run.seed_dir(seed).exists() else "not run"
        elif result.get("status") == "ok" and result.get("config") != {**cell_run.config, "seed": seed}:
            statuses[seed] = "stale"
        else:
            statuses[seed] = result.get("status", "failed")
            if statuses[seed] == "ok":
                counted[seed] = result
    return CellResults(cell_run.cell, counted, statuses)


def set_aside(cell_run: CellRun, recipe_dir: Path) -> None:
    """Move each seed folder that must run again out of the way: never delete a result, never move a folder
    another ftbench process is running in (refused on --out, before any moves: job/lock.py)."""
    for seed in cell_run.redo:
        lock.require_free(cell_run.seed_dir(seed), "--out")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    for seed, why in cell_run.redo.items():
        target = recipe_dir / ASIDE / cell_run.cell.id / f"seed{seed}-{stamp}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(cell_run.seed_dir(seed)), str(target))
        print(f"  {cell_run.cell.id} seed {seed}: {why}; moved to {target}")


def require_free(cell_runs: list[CellRun], recipe_dir: Path) -> None:
    """Raise UserError on --out, naming the folder and its holder, when another ftbench process holds the
    recipe's folder or a seed folder of a selected cell (job/lock.py)."""
    selected = [cell_run for cell_run in cell_runs if cell_run.selected]
    if selected:  # none: this invocation touches nothing there
        for folder in [recipe_dir, *(cell_run.seed_dir(seed) for cell_run in selected for seed in cell_run.seeds)]:
            lock.require_free(folder, "--out")


def shown(argv: list[str]) -> str:
    return "ftbench " + " ".join(shlex.quote(a) for a in argv)


def describe(recipe: Recipe, cell_runs: list[CellRun]) -> float:
    """Print what this invocation runs; return the estimated GPU hours of the runs to do."""
    chosen = [j for j in cell_runs if j.selected]
    hours = sum(j.cell.gpu_hours * len(j.pending) for j in chosen)
    print(f"{recipe.name}: {recipe.title} ({recipe.path})")
    for cell_run in chosen:
        state = "done" if not cell_run.pending else ", ".join(
            f"seed {s}: " + (f"rerun ({cell_run.redo[s]})" if s in cell_run.redo else "to run") for s in cell_run.pending)
        print(f"  {cell_run.cell.id}  [{cell_run.cell.kind}, ~{cell_run.cell.gpu_hours:g} GPU h per seed]  {state}")
        if cell_run.pending:
            print(f"    {shown(cell_run.argv(cell_run.pending))}")
    runs = sum(len(j.pending) for j in chosen)
    print(f"  {len(chosen)} of {len(cell_runs)} cells selected, {runs} runs to do, ~{hours:.2f} GPU hours "
          "(the recipe's per-run estimates, not measurements)")
    return hours


def execute(cell_run: CellRun, recipe_dir: Path) -> None:
    set_aside(cell_run, recipe_dir)
    command = [sys.executable, "-c", "from ftbench.cli import main; main()", *cell_run.argv(cell_run.pending)]
    print(f"\n[{cell_run.cell.id}] {shown(cell_run.argv(cell_run.pending))}", flush=True)
    if children.run(command) == 130:  # a Ctrl-C or SIGTERM reaches the run, which records it
        raise KeyboardInterrupt


def reproduce(recipe: Recipe, cell_runs: list[CellRun], args: argparse.Namespace) -> int:
    """Run what is pending, then write the comparison; 1 when a run failed (OOM and NaN are findings)."""
    describe(recipe, cell_runs)
    if args.dry_run or not any(cell_run.selected for cell_run in cell_runs):
        return 0
    recipe_dir = args.out / recipe.name
    with lock.hold(recipe_dir, "--out"):  # a second ftbench-reproduce of this recipe into --out is refused
        for cell_run in cell_runs:
            if cell_run.selected and cell_run.pending:
                execute(cell_run, recipe_dir)
        results = [found(cell_run) for cell_run in cell_runs]
        comparison.build(recipe, results, recipe_dir)
    broken = [f"{r.cell.id} seed {s}: {status}" for r, cell_run in zip(results, cell_runs) if cell_run.selected
              for s, status in r.statuses.items() if status not in ("ok", "oom", "nan")]
    for line in broken:
        print(f"ftbench-reproduce: {line}", file=sys.stderr)
    return 1 if broken else 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ftbench-reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", type=Path,
                        help="recipe files or shipped recipe names (recipes/sift-table2-glue.yaml, sift-table2-glue)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their estimated GPU hours only")
    parser.add_argument("--only-memory", action="store_true",
                        help="only the memory and speed cells, in profile mode on random-init models")
    parser.add_argument("--out", type=Path, default=Path("outputs/reproduce"),
                        help="results go to OUT/<recipe name>/<cell>/seed<N> (default: outputs/reproduce)")
    parser.add_argument("--seeds", type=int, nargs="+", help="replace the seeds of the selected cells")
    parser.add_argument("--cells", action="append", default=[], metavar="GLOB",
                        help="run only the cells whose id matches (repeatable), e.g. 'llama2-7b-*'")
    parser.add_argument("--data", type=Path, help="local data root: task.data_dir = DATA/<the cell's data> "
                        "(e.g. ../shared/data/glue/cola) where that folder exists, else the hub")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for the selected cells, applied last (e.g. hardware=h100-80gb)")
    args = parser.parse_args(argv)
    bad = next((s for s in args.set if "=" not in s), None)
    if bad is not None:
        parser.exit(2, f"ftbench-reproduce: error: --set: '{bad}' is not KEY=VALUE\n")
    if args.seeds and min(args.seeds) < 0:
        parser.exit(2, "ftbench-reproduce: error: --seeds: seeds are integers >= 0\n")
    if args.data and not args.data.is_dir():
        parser.exit(2, f"ftbench-reproduce: error: --data: '{args.data}' {kind_problem(args.data, 'folder')}\n")
    if args.out.exists() and not args.out.is_dir():
        parser.exit(2, f"ftbench-reproduce: error: --out: '{args.out}' {kind_problem(args.out, 'folder')}; give a "
                    "folder (new or holding earlier runs)\n")
    args.out = args.out.resolve()
    return args


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = parse(argv)

    try:
        recipes = [load(path) for path in args.recipes]
        names = [r.name for r in recipes]
        twice = next((r for r in recipes if names.count(r.name) > 1), None)
        if twice:
            raise RecipeError(twice.path, "name", f"'{twice.name}' is the name of another recipe given")
        quiet_libraries()
        surveyed = [(recipe, cells(recipe, args)) for recipe in recipes]  # every recipe checked before any run
    except RecipeError as exc:
        print(f"ftbench-reproduce: error: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        for recipe, cell_runs in surveyed:  # before any run (and --dry-run too): not every cell but the one in use
            require_free(cell_runs, args.out / recipe.name)
        sys.exit(max(reproduce(recipe, cell_runs, args) for recipe, cell_runs in surveyed))
    except UserError as exc:  # a folder another process is running in
        print(f"ftbench-reproduce: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("ftbench-reproduce: canceled", file=sys.stderr)
        sys.exit(130)

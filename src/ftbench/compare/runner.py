"""`ftbench compare SPEC.yaml [KEY=VALUE ...]`: a comparison that survives scrutiny, in two stages.

Stage 1 runs each arm over its lr grid at the first seed, trained on the training data less a held-out
validation split and scored on that split only (task.evaluate_reported=false: the reported split is never
read), and picks the lr with the best validation score. Stage 2 runs each arm at its chosen lr over every
seed and scores the reported split. Both stages live in fixed folders (cells.py): a rerun runs only what
is missing or was made from another config, and on a finished folder runs nothing and prints the same
report. `--dry-run` lists the runs and their estimated time. Bad input is one line naming the spec's key,
exit 2: found before any run where the spec, the tasks' data and the folders tell (spec.check,
Composer.check_data, require_free: a run folder another ftbench process runs in),
else after the first multirun whose every run was refused alike (check_refused).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from ftbench.compare import cells, plans, report, stats
from ftbench.compare.cells import Composer, Run
from ftbench.compare.spec import Spec, SpecError, arm_method, arms, find, grid, load
from ftbench.errors import UserError
from ftbench.job import lock
from ftbench.quiet import quiet_libraries


def as_data(spec: Spec, name: str) -> dict:
    """The spec as the report reads it (and comparison.json keeps it): its keys, name, arms and their methods."""
    return {**asdict(spec), "name": name, "arms": arms(spec), "arm_methods": {a: arm_method(spec, a) for a in arms(spec)}}


def stage_one(composer: Composer, spec: Spec, out: Path) -> list[Run]:
    runs = []
    composer.check_data()  # the tasks' data read once, before any run: their refusals here
    for task in spec.tasks:
        for arm in arms(spec):
            steps = composer.budget_steps(task)
            default = composer.config(cells.overrides(spec, "lr", task, arm, steps), arm)["method"]["lr"]
            runs += cells.make_runs(composer, spec, out, "lr", task, arm, grid(spec, arm, default), spec.seeds[:1])
    return runs


def require_free(spec: Spec, out: Path, first: list[Run]) -> None:
    """Raise UserError on --out, naming the folder and its holder, when another ftbench process holds `out` or a
    folder the comparison would use (stage 1's `first`, stage 2's every seed of every arm, with gpu: the
    planner's): asked before any run (and by --dry-run), so that nothing runs, rather than every arm but the
    one in use (job/lock.py)."""
    used = [cells.folder(out, "seeds", task, arm, 0.0, seed) for task in spec.tasks for arm in arms(spec)
            for seed in spec.seeds]
    if spec.gpu is not None:
        used += [plans.plan_folder(out, task, arm) for task in spec.tasks for arm in arms(spec)]
    for folder in [out, *(run.folder for run in first), *used]:
        lock.require_free(folder, "--out")


def chosen_lrs(spec: Spec, runs: list[Run]) -> dict[tuple[str, str], float | None]:
    """(task, arm) -> the lr stage 1 chose (None: no run scored), for the arms whose stage-1 runs are all done."""
    chosen = {}
    for task in spec.tasks:
        for arm in arms(spec):
            mine = [r for r in runs if r.task == task and r.arm == arm]
            if mine and all(r.done for r in mine):
                _, name = report.metric_name(asdict(spec), mine[0].config["task"]["metric"])
                scores = {r.lr: r.result().metrics.get(f"val/{name}") for r in mine}
                chosen[task, arm] = stats.choose(scores, report.higher_is_better(name))
    return chosen


def stage_two(composer: Composer, spec: Spec, out: Path, chosen: dict) -> list[Run]:
    return [run for (task, arm), lr in chosen.items() if lr is not None
            for run in cells.make_runs(composer, spec, out, "seeds", task, arm, [lr], spec.seeds)]


def counted_run(run: Run, out: Path) -> report.Counted:
    return report.Counted(run.stage, run.task, run.arm, run.lr, run.seed, str(run.folder.relative_to(out)), run.result())


def run_seconds(spec: Spec, known: list[Run], stage: str, task: str, arm: str, steps: int) -> tuple[float, str]:
    """Seconds one run of the arm on the task takes, from its start to its result.json: the median of the
    arm's finished runs in the stage, else the spec's estimate (stage 2 evaluates more than stage 1: one
    stage's runs do not price the other's)."""
    measured = sorted(r.result().run.duration_s for r in known if r.task == task and r.arm == arm and r.done
                      and r.stage == stage and r.result().run.duration_s)
    if measured:
        return measured[len(measured) // 2], "measured"
    return spec.estimate.run_seconds(steps), "spec estimate"


def describe(spec: Spec, stage: str, runs: list[Run], known: list[Run], waiting: dict[str, int] | None = None,
             steps: dict[str, int] | None = None) -> float:
    """Print the stage's runs to do, one multirun a line; return their estimated seconds. `waiting`: per
    task, the runs not yet listed (stage 2 before stage 1 has chosen), costed at the spec's estimate of
    `steps[task]` steps."""
    pending = [r for r in runs if not r.done]
    later = sum((waiting or {}).values())
    print(f"{cells.STAGES[stage]}: {len(runs) - len(pending)} of {len(runs)} runs done"
          + (f"; {later} more once stage 1 has chosen their lr" if later else ""))
    seconds = 0.0
    for task in spec.tasks:
        for arm in arms(spec):
            mine = [r for r in pending if r.task == task and r.arm == arm]
            if not mine:
                continue
            run_s, source = run_seconds(spec, known, stage, task, arm, mine[0].budget_steps)
            seconds += len(mine) * run_s
            whys = sorted({r.why for r in mine})
            print(f"  {task} {arm}: {len(mine)} runs, ~{len(mine) * run_s / 60:.1f} min ({run_s:.0f} s a run, "
                  f"{source}); {'; '.join(whys)}\n    {cells.shown(cells.argv(spec, mine))}")
    for task, count in (waiting or {}).items():
        seconds += count * spec.estimate.run_seconds(steps[task])
    return seconds


def execute(composer: Composer, spec: Spec, runs: list[Run], out: Path) -> None:
    """Run what is pending, one multirun per task, arm and stage; after each, check that its runs were not all
    refused alike (which stops the comparison after one multirun, not after all)."""
    for task in spec.tasks:
        for arm in arms(spec):
            mine = [r for r in runs if r.task == task and r.arm == arm and not r.done]
            if mine:
                code = cells.execute(spec, mine, out)
                check_refused(composer, spec, mine, code)
    for run in runs:
        run.why = cells.survey(run)


def check_refused(composer: Composer, spec: Spec, runs: list[Run], code: int) -> None:
    """Raise UserError on the spec key it came from (cells.blame), its advice on the spec's budget
    (cells.in_spec_terms), when every run of a multirun (`code`: its exit code) was refused as bad input with
    the same line (status failed, run.exit_code 2: a UserError, not a crash): running the other arms, or these
    again, meets it again. Else print each refused run's line, which the runs leave to this process
    (engine/outcome.py REFUSALS_TO_PARENT) so that a refusal is one line."""
    found = [run.result() for run in runs]
    refused = [r for r in found if r is not None and r.status == "failed" and r.run.exit_code == 2]
    errors = {r.error for r in refused}
    if code == 2 and len(refused) == len(found) and len(errors) == 1 and None not in errors:
        error, first = errors.pop(), runs[0]
        raise UserError(cells.blame(spec, first.arm, error), f"{first.task} {first.arm}: every "
                        f"{'stage-1' if first.stage == 'lr' else 'stage-2'} run was refused: "
                        + cells.in_spec_terms(composer, first.task, error))
    for result in refused:
        print(f"ftbench: {result.status}: {result.error}", file=sys.stderr)


def compare(spec: Spec, name: str, out: Path, dry_run: bool) -> int:
    """Run what is missing (nothing with `dry_run`), then write and print the report; 1 when a run failed.
    From its first run to its report, the comparison holds the lock on `out` (job/lock.py): a second
    `ftbench compare` into the same folder is refused."""
    with ExitStack() as running:
        return report_on(spec, name, out, dry_run, running)


def report_on(spec: Spec, name: str, out: Path, dry_run: bool, running: ExitStack) -> int:
    """`compare`'s work; `out`'s lock goes on `running` before the first run."""
    with Composer(spec) as composer:
        first = stage_one(composer, spec, out)
        require_free(spec, out, first)  # a folder another process runs in: refused before any run
        total = describe(spec, "lr", first, first)
        if not dry_run:
            running.enter_context(lock.hold(out, "--out"))  # after the refusals found before any run
            execute(composer, spec, first, out)
        chosen = chosen_lrs(spec, first)
        second = stage_two(composer, spec, out, chosen)
        waiting = {task: len(arms(spec)) * len(spec.seeds) - len([r for r in second if r.task == task])
                   for task in spec.tasks} if dry_run else None
        steps = {task: composer.budget_steps(task) for task in spec.tasks}
        total += describe(spec, "seeds", second, first + second, waiting, steps)
        if dry_run:
            unit = "GPU hours" if spec.estimate.device == "gpu" else "hours of wall time on the spec's machine"
            amount = f"{total / 3600:.2f} {unit}" if total >= 3600 or spec.estimate.device == "gpu" else \
                f"{total / 60:.1f} minutes of wall time on the spec's machine"
            print(f"to do: ~{amount} (each run's start, steps, validations and evaluation: the "
                  "arm's finished runs where there are some, else the spec's estimate)")
            return 0
        execute(composer, spec, second, out)
        predicted = plans.predict(composer, spec, out, chosen)
    runs = first + second
    missing = [f"{r.folder.relative_to(out)}: {r.why or 'status ' + r.result().status}" for r in runs
               if not r.done or r.result().status != "ok"]
    missing += [f"{task} {arm}: no lr chosen (no stage-1 run scored)" for (task, arm), lr in chosen.items() if lr is None]
    summary = report.summarize(as_data(spec, name), [counted_run(r, out) for r in runs if r.done], missing, predicted)
    written = report.write(summary, out)
    print("\n" + written["markdown"].read_text())
    for kind, path in written.items():
        print(f"{kind}: {path}")
    broken = [r for r in runs if not r.done and getattr(r.result(), "status", None) not in ("nan", "oom")]
    return 1 if broken else 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ftbench compare", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="a spec file or a shipped spec's name (comparisons/minilm-glue.yaml, "
                        "minilm-glue)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="spec keys, e.g. methods=[full,lora] seeds=[0,1] budget.steps=20")
    parser.add_argument("--dry-run", action="store_true", help="list the runs to do and their estimated time only")
    parser.add_argument("--out", type=Path, help="the comparison's folder (default: outputs/compare/<spec name>)")
    return parser.parse_intermixed_args(argv)  # spec keys before or after the options


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    quiet_libraries()
    out = (args.out or Path("outputs/compare") / args.spec.stem).resolve()
    if out.exists() and not out.is_dir():
        print(f"ftbench compare: error: --out: {out} is a file, not a folder; give a folder (new or holding this "
              "comparison)", file=sys.stderr)
        sys.exit(2)
    try:
        spec = load(find(args.spec), args.overrides)
        code = compare(spec, args.spec.stem, out, args.dry_run)
    except (SpecError, UserError) as exc:
        print(f"ftbench compare: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("ftbench compare: canceled", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)

"""Entry points: `ftbench` (Hydra runs and sweeps; `ftbench compare`: a two-stage comparison) and
`ftbench-report`.

Before Hydra launches anything, every job of the command line is composed and
checked here, so a typo, a wrong type or a bad value ends with one line that
names the key and exit code 2, before any model is built.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ftbench import methods, report, usage
from ftbench.config.schema import check
from ftbench.config.tree import config_dir
from ftbench.errors import Canceled, UserError, explain_compose_error, kind_problem
from ftbench.job import lock, places, sweep
from ftbench.job.compose import pinned, register_configs
from ftbench.quiet import entry_point, quiet_libraries, quiet_transformers

# Hydra flags that do not launch a run: hand them to Hydra untouched (--cfg's config is checked first: SHOWN).
PASSTHROUGH = {"--help", "-h", "--hydra-help", "--version", "--info", "-i", "--cfg", "-c", "--resolve",
               "--package", "-p", "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn",
               "--config-dir", "-cd", "--experimental-rerun"}
SHOWN = {"--cfg", "-c"}  # print the composed config: a bad key or value is refused as a run's would be
PRINT_ONLY = {"--hydra-help", "--version", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc"}  # no job runs
WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
              "-cd", "--experimental-rerun"}  # Hydra flags followed by their value (--cfg job)
INFO = {"--info", "-i"}  # Hydra's flag whose value is optional: one of INFO_CHOICES, else none (--info = --info all)
INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def expand(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of every job a command line launches: the cartesian product of the sweeps,
    in the order Hydra's basic sweeper launches them (a key given twice: the last wins)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not multirun:
        return [overrides]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())  # resolves glob(*)
    choices: dict[str, list[str]] = {}
    for override in parser.parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise HydraException(f"{key}: a range or interval sweep needs a sweeper plugin; list the values")
    return [list(job) for job in itertools.product(*choices.values())]


def validate(overrides: list[str], multirun: bool, folders: list[Path | None] | None = None) -> str | None:
    """Compose and check every job, and for a sweep its folder against the sweep folder (job/sweep.py);
    return the first problem as one line, or None. `folders` (a sweep's) gets the folder of each job's result."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="ftbench"):
        try:
            given = expand(overrides, multirun)
            jobs = [compose("config", overrides=job, return_hydra_config=multirun) for job in given]
            for job, keys in zip(jobs, given):
                check(job, keys)
        except UserError as exc:
            return str(exc)
        except (HydraException, OmegaConfBaseException) as exc:
            return explain_compose_error(exc)
        except ValueError:  # Hydra's refusal of a group given a number, a boolean or null (hardware=5)
            problem = not_an_option(overrides)
            if problem is None:
                raise
            return problem
    if not multirun:
        return None
    found, problem = sweep.preflight(jobs)
    if folders is not None:
        folders[:] = found
    return problem


def not_an_option(overrides: list[str]) -> str | None:
    """One line for the first override that gives a config group (conf/<group>/) a value none of its options
    is named, with the options (as for a name that is not one); None when there is none."""
    for override in overrides:
        key, sep, value = override.partition("=")
        group = key.lstrip("+~")
        if sep and (config_dir() / group).is_dir() and not (config_dir() / group / f"{value}.yaml").is_file():
            options = methods.names() if group == "method" else sorted(
                f.stem for f in (config_dir() / group).glob("*.yaml"))
            return f"{group}={value}: no such option; choose one of: {', '.join(options)}"
    return None


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """A command line's Hydra flags (each followed by its value, if it takes one) and its KEY=VALUE overrides,
    each in the order given."""
    flags: list[str] = []
    overrides: list[str] = []
    previous = None
    for arg in argv:
        is_value = not arg.startswith("-") and (previous in WITH_VALUE or previous in INFO and arg in INFO_CHOICES)
        (flags if arg.startswith("-") or is_value else overrides).append(arg)
        previous = None if is_value else arg
    return flags, overrides


def overrides_in(argv: list[str]) -> list[str]:
    """The KEY=VALUE overrides of a command line: neither flags nor the values of the flags that take one."""
    return split_argv(argv)[1]


def hydra_order(argv: list[str]) -> list[str]:
    """The command line as Hydra's argparse takes it: the overrides in one run of arguments, then the flags.
    The user may put a flag anywhere (`ftbench method=lora --cfg job`, `ftbench a=1 -m b=2`), and ftbench
    appends overrides of its own (`mode=plan`, the run's folder): interleaved, argparse took the overrides
    after a flag as unrecognized arguments (a usage dump naming what the user never typed). A bare `--info`
    last, no override is read as its value."""
    flags, overrides = split_argv(argv)
    return [*overrides, *flags]


def sweep_argv(argv: list[str]) -> list[str]:
    """A multirun's command line as launched: job folders named by the swept keys (job/sweep.py; unless the
    user names them, hydra.sweep.subdir), and the sweep folder resolved once (`${now:...}`), so the folders
    checked before the launch are the ones the jobs write (under torchrun: `launch_overrides`, rank 0's clock)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = overrides_in(argv)
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="ftbench"):
        try:
            parsed = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader()).parse_overrides(
                overrides)
            folder = compose("config", overrides=expand(overrides, True)[0], return_hydra_config=True).hydra.sweep.dir
        except (HydraException, OmegaConfBaseException, ValueError):
            return argv  # validate() says what is wrong in one line
    given = {o.key_or_group: o for o in parsed}
    named = [] if "hydra.sweep.subdir" in given else sweep.naming(parsed)
    ranks = int(os.environ.get("WORLD_SIZE", "1")) > 1  # torchrun: every rank takes rank 0's clock instead
    if ranks or "hydra.sweep.dir" in given and "${" not in given["hydra.sweep.dir"].input_line:
        return [*argv, *named]
    return [*(a for a in argv if not a.startswith("hydra.sweep.dir=")), *named, pinned("hydra.sweep.dir", folder)]


def run_argv(argv: list[str]) -> list[str]:
    """A run's command line with its folder resolved once (`${now:...}`, `${method.name}`), as `sweep_argv`
    does a sweep's: the folder the CLI locks before the launch (`folder_lock`) is the one the job writes."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    given = [a for a in argv if a.partition("=")[0].lstrip("+~") == "hydra.run.dir"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or given and "${" not in given[-1]:
        return argv
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="ftbench"):
        try:
            folder = compose("config", overrides=overrides_in(argv), return_hydra_config=True).hydra.run.dir
        except (HydraException, OmegaConfBaseException, ValueError):
            return argv  # validate() says what is wrong in one line
    return [*(a for a in argv if a not in given), pinned("hydra.run.dir", folder)]


@contextmanager
def folder_lock(argv: list[str], multirun: bool) -> Iterator[None]:
    """Hold the lock of the folder the command line names (job/lock.py) while the command runs: taken before
    Hydra writes anything there (a sweep's multirun.yaml, a run's log), so a second process given the folder
    is refused before it writes. Raises `UserError` on the key when another process holds it. Nothing to hold
    under torchrun (rank 0's job takes it) or where the folder is resolved only at the launch."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    values = [unquoted(a) for a in argv if a.partition("=")[0].lstrip("+~") == key]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or not values or values[-1] is None or "${" in values[-1]:
        yield
        return
    with lock.hold(Path(values[-1]).expanduser(), key):
        yield


def unquoted(override: str) -> str | None:
    """The value of `override` (KEY=VALUE) as Hydra reads it (`'/tmp/a b'` is /tmp/a b), `${...}` kept as
    written; None when Hydra cannot parse it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return str(OverridesParser.create().parse_override(override.lstrip("+~")).value())
    except HydraException:
        return None


def launch(argv: list[str], folders: list[Path | None] | None = None) -> int:
    """Hand the command line to Hydra; return the worst exit code of its jobs (a sweep's `folders`: read
    from their results where the launcher ran the jobs in other processes)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    codes: list[int] = []

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
    def job(cfg) -> int:
        # torch and the rest load when a job runs, not for --help or --cfg
        from ftbench.job.run import run_job
        from ftbench.parallel.distributed import join_job_tasks

        join_job_tasks()  # a cluster job of several tasks (hydra/launcher=slurm): one rank each
        quiet_transformers()
        runtime = HydraConfig.get()
        # Each job calls gc.collect() twice (its memory baseline, its end), and a collect scans every object
        # alive: ~0.3 s for torch's and transformers' ~480,000. What is alive around the process's first job
        # (the libraries, and those the job imported) is frozen, so later collects scan only what jobs make.
        # Only then: a frozen object is never collected, and each later job's config would stay.
        first = not codes
        if first:
            gc.freeze()
        code = run_job(cfg, Path(runtime.runtime.output_dir), overrides=list(runtime.overrides.task))
        if first:
            gc.freeze()
        codes.append(code)
        return code

    sys.argv = ["ftbench", *hydra_order(argv)]
    job()
    return max(codes, default=0) if folders is None else sweep.exit_code(folders, codes)


def output_dir_problem(argv: list[str]) -> str | None:
    """One line when `hydra.run.dir` / `hydra.sweep.dir` cannot hold a run: empty (it would write into the
    current folder), an existing file, under a folder this user cannot write, a run folder whose Hydra log
    or a sweep folder whose multirun.yaml is not a file (job/places.py; the job checks the rest of what it
    writes), or a run folder another ftbench process is running in (job/lock.py: refused before Hydra opens
    its log there; each job of a sweep is asked in `validate`); else None."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+~") not in ("hydra.run.dir", "hydra.sweep.dir"):
            continue
        key, value = key.lstrip("+~"), unquoted(arg)
        if value is None:  # `validate` names the key and how to quote it
            continue
        if not value.strip():
            return f"{key}: empty; give a folder for the run's files (e.g. {key}=outputs/my-run)"
        path = Path(value).expanduser()
        if path.exists() and not path.is_dir():
            return f"{key}: {value} is a file, not a folder; give a folder (new or holding an earlier run)"
        if key == "hydra.sweep.dir":
            try:
                places.require_place(path / places.MULTIRUN, "file", "Hydra's record of the sweep", key)
            except UserError as exc:
                return str(exc)
        if key == "hydra.run.dir" and not {"-m", "--multirun"} & set(argv):
            try:
                lock.require_free(path, key)
                places.require_place(path / places.HYDRA_LOG, "file", "the run's log", key)  # Hydra opens it first
            except UserError as exc:
                return str(exc)
        existing = next(p for p in (path, *path.parents) if p.exists())
        try:  # a real try: permission bits say nothing for root or on special file systems (/proc)
            os.rmdir(tempfile.mkdtemp(prefix=".ftbench-probe-", dir=existing))
        except OSError:
            return f"{key}: cannot create folders under {existing}; give a folder you can write to"
    return None


@entry_point
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:  # `ftbench compare SPEC.yaml ...`: a two-stage comparison (compare/runner.py)
        from ftbench.compare import runner  # lazy: scipy and the job layer, not for --help

        runner.main(argv[1:])
    planning = argv[:1] == ["plan"]
    if planning:  # `ftbench plan ...` = `ftbench mode=plan ...`
        argv = [*argv[1:], "mode=plan"]
    register_configs()
    if {"--help", "-h"}.intersection(argv):
        usage.print_help(overrides_in(argv), usage.PLAN_HELP if planning else "")
        return
    folders: list[Path | None] | None = None
    if not PASSTHROUGH.intersection(argv) or SHOWN.intersection(argv):
        multirun = "-m" in argv or "--multirun" in argv
        argv, folders = (sweep_argv(argv), []) if multirun else (run_argv(argv), None)
        problem = output_dir_problem(argv) or validate(overrides_in(argv), multirun, folders)
        if problem:
            print(f"ftbench: error: {problem}", file=sys.stderr)
            sys.exit(2)
    quiet_libraries()
    if PRINT_ONLY.intersection(argv):  # Hydra prints its traceback of a closed pipe (`--cfg job | head`) itself
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # nothing but stdout is written: end as SIGPIPE ends a tool
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: the ranks make one run (imports torch)
        from ftbench.parallel.distributed import launch_overrides  # torch

        argv = [*argv, *launch_overrides(argv, config_dir() / "config.yaml")]
    with ExitStack() as running:
        if not PASSTHROUGH.intersection(argv):  # a command checked above (not handed to Hydra as it is)
            try:
                running.enter_context(folder_lock(argv, "-m" in argv or "--multirun" in argv))
            except UserError as exc:  # another process took the folder since the checks
                print(f"ftbench: error: {exc}", file=sys.stderr)
                sys.exit(2)
        try:
            sys.exit(launch(argv, folders))
        except KeyboardInterrupt as exc:
            if not isinstance(exc, Canceled):  # a canceled job printed its own line
                print("ftbench: canceled", file=sys.stderr)
            sys.exit(130)


def report_folder(paths: list[Path]) -> Path | None:
    """Where a report of `paths` goes by default: the folder named alone, the folder of a file named alone,
    else the deepest folder holding every path named (`DIR/*`, a shell glob over a sweep's job folders and
    the files beside them, gives DIR, not its first job's folder). None when that is the filesystem's root."""
    folders = [p if p.is_dir() else p.parent for p in paths]
    if len(paths) == 1:
        return folders[0]
    common = Path(os.path.commonpath([f.resolve() for f in folders]))
    return None if common == common.parent else common


@entry_point
def report_main(argv: list[str] | None = None) -> None:
    """`ftbench-report DIR...`: one table (markdown, CSV) and one plot from any result files."""
    parser = argparse.ArgumentParser(prog="ftbench-report", description=report_main.__doc__)
    parser.add_argument("paths", nargs="+", type=Path,
                        help="result.json files (or other .json results) or folders holding them; other files "
                             "ftbench writes beside results (multirun.yaml, reports, logs) are passed over")
    parser.add_argument("--out", type=Path, help="where to write report.md/.csv/.png (default: the folder named, or "
                        "the one that holds every path named, e.g. DIR for DIR/*); a report already there that "
                        "differs is kept as report.previous-N.md/.csv/.png")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(f"ftbench-report: error: {missing[0]}: no such file or folder", file=sys.stderr)
        sys.exit(2)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        print(f"ftbench-report: error: --out: {args.out} {kind_problem(args.out, 'folder')}; give a folder",
              file=sys.stderr)
        sys.exit(2)
    out = args.out or report_folder(args.paths)
    if out is None:
        print(f"ftbench-report: error: the paths named share no folder but {Path('/').resolve()}; say where the "
              f"report goes with --out DIR", file=sys.stderr)
        sys.exit(2)
    comparisons = [p for p in args.paths if (p / "comparison.json").is_file()]
    try:
        if comparisons:  # an `ftbench compare` folder: its comparison, written again from its runs
            from ftbench.compare.report import rebuild  # lazy: scipy, only for a comparison

            for folder in comparisons:
                for kind, path in rebuild(folder, args.out).items():
                    print(f"{kind}: {path}")
            return
        report.build(args.paths, out)
    except (ValueError, UserError) as exc:  # a file that is not a result (or plan): one line naming it
        print(f"ftbench-report: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":  # `python -m ftbench.cli ...` (a checkout without the entry points installed)
    main()

"""Entry points: `ftbench` (Hydra runs and sweeps) and `ftbench-report`.

Before Hydra launches anything, every job of the command line is composed and
checked here, so a typo, a wrong type or a bad value ends with one line that
names the key and exit code 2, before any model is built.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

# Hydra flags that do not launch a run: hand them to Hydra untouched.
PASSTHROUGH = {"--help", "-h", "--hydra-help", "--version", "--info", "-i", "--cfg", "-c", "--resolve",
               "--package", "-p", "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn",
               "--config-dir", "-cd", "--experimental-rerun"}


def config_dir() -> Path:
    """The Hydra tree: inside the package (wheel), else at the top of the checkout (editable)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise SystemExit("ftbench: error: the config tree (conf/config.yaml) is missing; reinstall ftbench")


def quiet_libraries() -> None:
    """Keep library chatter (deprecations, init notices) out of the user's terminal."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|peft|accelerate)\.")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("peft").setLevel(logging.ERROR)


def expand(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of every job a command line launches."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not multirun:
        return [overrides]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    batches = BasicSweeper.split_arguments(parser.parse_overrides(overrides), max_batch_size=None)
    return [job for batch in batches for job in batch]


def validate(overrides: list[str], multirun: bool) -> str | None:
    """Compose and check every job; return the first problem as one line, or None."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .config import check, register_configs
    from .errors import UserError, explain_compose_error

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="ftbench"):
        try:
            for job in expand(overrides, multirun):
                check(compose("config", overrides=job))
        except UserError as exc:
            return str(exc)
        except (HydraException, OmegaConfBaseException) as exc:
            return explain_compose_error(exc)
    return None


def launch(argv: list[str]) -> int:
    """Hand the command line to Hydra; return the worst exit code of its jobs."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from .run import run_job

    codes: list[int] = []

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
    def job(cfg) -> int:
        from .distributed import join_job_tasks

        join_job_tasks()  # a cluster job of several tasks (hydra/launcher=slurm): one rank each
        runtime = HydraConfig.get()
        code = run_job(cfg, Path(runtime.runtime.output_dir), overrides=list(runtime.overrides.task))
        codes.append(code)
        return code

    sys.argv = ["ftbench", *argv]
    job()
    return max(codes, default=0)


def output_dir_problem(argv: list[str]) -> str | None:
    """One line when `hydra.run.dir` / `hydra.sweep.dir` cannot hold a run: empty (it would write into the
    current folder), an existing file, or under a folder this user cannot write; else None."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+~") not in ("hydra.run.dir", "hydra.sweep.dir"):
            continue
        key = key.lstrip("+~")
        if not value.strip():
            return f"{key}: empty; give a folder for the run's files (e.g. {key}=outputs/my-run)"
        path = Path(value).expanduser()
        if path.exists() and not path.is_dir():
            return f"{key}: {value} is a file, not a folder; give a folder (new or holding an earlier run)"
        existing = next(p for p in (path, *path.parents) if p.exists())
        try:  # a real try: permission bits say nothing for root or on special file systems (/proc)
            os.rmdir(tempfile.mkdtemp(prefix=".ftbench-probe-", dir=existing))
        except OSError:
            return f"{key}: cannot create folders under {existing}; give a folder you can write to"
    return None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["plan"]:  # `ftbench plan ...` = `ftbench mode=plan ...`
        argv = [*argv[1:], "mode=plan"]
    from .config import register_configs

    register_configs()
    if not PASSTHROUGH.intersection(argv):
        multirun = "-m" in argv or "--multirun" in argv
        problem = output_dir_problem(argv) or validate([a for a in argv if not a.startswith("-")], multirun)
        if problem:
            print(f"ftbench: error: {problem}", file=sys.stderr)
            sys.exit(2)
    quiet_libraries()
    from .distributed import launch_overrides

    argv = [*argv, *launch_overrides(argv, config_dir() / "config.yaml")]  # torchrun: the ranks make one run
    try:
        sys.exit(launch(argv))
    except KeyboardInterrupt as exc:
        from .errors import Canceled

        if not isinstance(exc, Canceled):  # a canceled job printed its own line
            print("ftbench: canceled", file=sys.stderr)
        sys.exit(130)


def report_main(argv: list[str] | None = None) -> None:
    """`ftbench-report DIR...`: one table (markdown, CSV) and one plot from any result files."""
    parser = argparse.ArgumentParser(prog="ftbench-report", description=report_main.__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="result.json files or folders holding them")
    parser.add_argument("--out", type=Path, help="where to write report.md/.csv/.png (default: the first folder)")
    args = parser.parse_args(argv)
    from . import report
    from .errors import UserError

    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(f"ftbench-report: error: {missing[0]}: no such file or folder", file=sys.stderr)
        sys.exit(2)
    out = args.out or next((p for p in args.paths if p.is_dir()), args.paths[0].parent)
    try:
        report.build(args.paths, out)
    except (ValueError, UserError) as exc:  # a file that is not a result (or plan): one line naming it
        print(f"ftbench-report: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":  # `python -m ftbench.cli ...` (a checkout without the entry points installed)
    main()

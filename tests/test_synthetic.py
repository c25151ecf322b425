"""The synthetic task: deterministic, balanced, at chance untrained, learned by full fine-tuning."""

import contextlib
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from ftbench.errors import UserError
from ftbench.job import preflight
from ftbench.models.loading import architecture_config
from ftbench.models.tokenizer import byte_level_tokenizer
from ftbench.tasks.base import EvalContext
from ftbench.tasks.synthetic import MARKERS, SyntheticConfig, SyntheticTask, generate
from helpers import compose, run, tiny_model


def test_deterministic_per_seed_and_balanced():
    cfg = SyntheticConfig()
    assert generate(100, cfg, random.Random(3)) == generate(100, cfg, random.Random(3))
    assert generate(100, cfg, random.Random(3)) != generate(100, cfg, random.Random(4))
    examples = generate(2000, cfg, random.Random(0))
    assert 0.45 < sum(e["labels"] for e in examples) / len(examples) < 0.55
    assert all(sum(t in MARKERS for t in e["input_ids"]) == 1 for e in examples)


def test_an_untrained_model_is_at_chance(tmp_path):
    task = SyntheticTask(SyntheticConfig(num_train=32, num_eval=512), None, seed=0)
    ctx = EvalContext(device=torch.device("cpu"), autocast=contextlib.nullcontext, batch_size=64, max_samples=None,
                      output_dir=tmp_path, pad_to_multiple_of=None)
    accuracy = task.evaluate(tiny_model("tiny-llama"), ctx)["dev/acc"]
    assert 0.4 < accuracy < 0.6


def test_full_fine_tuning_of_the_default_run_learns_it(tmp_path):
    result = run(tmp_path / "run")  # the embedded default: full fine-tuning of tiny-llama
    assert result["exit_code"] == 0, result["error"]
    assert result["metrics"]["dev/acc"] >= 0.95


def test_a_min_length_above_the_cut_position_table_is_refused(tmp_path):
    """A checkpoint's position table cuts task.max_length (24 positions here); a task.min_length left above the
    cut is refused on its key before the task is built (was: rc 1, ValueError: empty range for randrange())."""
    config = architecture_config(compose("model=tiny-llama").model, max_position_embeddings=24)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    byte_level_tokenizer().save_pretrained(tmp_path)
    cfg = compose("model=tiny-llama", f"model.path={tmp_path}", "task=synthetic", "task.min_length=30")
    with pytest.raises(UserError) as refused:
        preflight.inputs(cfg)
    assert str(refused.value) == (f"task.min_length: 30 is above task.max_length=24, and task.max_length=32 was "
                                  f"cut to the 24 positions of model.path={tmp_path}; give a task.min_length that "
                                  "fits 24 tokens, or a model with a longer position table")
    cut = compose("model=tiny-llama", f"model.path={tmp_path}", "task=synthetic", "task.min_length=20")
    assert preflight.inputs(cut).task is not None and cut.task.max_length == 24  # one that fits the cut trains

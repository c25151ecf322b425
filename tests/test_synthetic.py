"""The synthetic task: deterministic, balanced, at chance untrained, learned by full fine-tuning."""

import contextlib
import random

import torch

from ftbench.tasks.base import EvalContext
from ftbench.tasks.synthetic import MARKERS, SyntheticConfig, SyntheticTask, generate
from helpers import run, tiny_model


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

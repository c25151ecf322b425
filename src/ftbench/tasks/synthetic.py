"""A classification task generated in-process: no download, deterministic per seed.

Each sequence is random filler tokens with exactly one marker token, A or B, at a
random position; the label says which marker it is. An untrained model is at
chance (the classes are balanced and the marker's position is random); a model
must learn to find the marker among distractors, which a tiny transformer does
in a few hundred steps on a CPU.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import require
from . import classify
from .base import EvalContext, Example, Task, TaskConfig

MARKERS = (3, 4)  # token ids of marker A and marker B; 0-2 are pad/bos/eos
FIRST_FILLER = 5


@dataclass
class SyntheticConfig(TaskConfig):
    name: str = "synthetic"
    family: str = "synthetic"
    metric: str = "dev/acc"
    batch_size: int = 32
    max_length: int = 32
    epochs: float = 1.0
    max_steps: int | None = 300
    vocab_size: int = 64
    min_length: int = 8
    num_train: int = 8192
    num_eval: int = 512

    def check(self, key: str) -> None:
        super().check(key)
        require(self.vocab_size > FIRST_FILLER, f"{key}.vocab_size", f"must be > {FIRST_FILLER}")
        require(2 <= self.min_length <= self.max_length, f"{key}.min_length",
                "must be between 2 and task.max_length")
        require(self.num_train >= 1, f"{key}.num_train", "must be >= 1")
        require(self.num_eval >= 1, f"{key}.num_eval", "must be >= 1")


def generate(count: int, cfg: SyntheticConfig, rng: random.Random) -> list[Example]:
    examples = []
    for _ in range(count):
        length = rng.randint(cfg.min_length, cfg.max_length)
        ids = [rng.randrange(FIRST_FILLER, cfg.vocab_size) for _ in range(length)]
        label = rng.randrange(2)
        ids[rng.randrange(length)] = MARKERS[label]
        examples.append({"input_ids": ids, "labels": label})
    return examples


class SyntheticTask(Task):
    head = "seq_cls"
    num_labels = 2
    needs_tokenizer = False

    def __init__(self, cfg: SyntheticConfig, tokenizer, seed: int):
        super().__init__(cfg, tokenizer, seed)
        self.pad_id = 0  # the task speaks token ids directly; 0 is padding
        rng = random.Random(seed)
        self.train = generate(cfg.num_train, cfg, rng)
        self.dev = generate(cfg.num_eval, cfg, rng)

    def train_examples(self) -> list[Example]:
        return self.train

    def evaluate(self, model, ctx: EvalContext) -> dict[str, float]:
        return classify.score(model, self.dev, ctx, self.collate, ("acc",), regression=False, split="dev")

    def validation_metrics(self) -> list[str]:
        return ["dev/acc", "dev/loss"]

    def protocol(self) -> dict:
        return {"rule": "label = which marker token (A or B) the sequence holds",
                "num_train": len(self.train), "num_eval": len(self.dev)}

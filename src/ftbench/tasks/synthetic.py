"""A classification task generated in-process: no download, deterministic per seed.

Each sequence is random filler tokens with exactly one marker token, A or B, at a
random position; the label says which marker it is. An untrained model is at
chance (the classes are balanced and the marker's position is random); a model
must learn to find the marker among distractors, which a tiny transformer does
in a few hundred steps on a CPU.
"""

from __future__ import annotations

import random

from ftbench.tasks import classify
from ftbench.tasks.base import EvalContext, Example, Task
from ftbench.tasks.config import SYNTHETIC_FIRST_FILLER, SyntheticConfig

MARKERS = (3, 4)  # token ids of marker A and marker B; 0-2 are pad/bos/eos
FIRST_FILLER = SYNTHETIC_FIRST_FILLER


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
        self.train, self.val = classify.hold_out(generate(cfg.num_train, cfg, rng), cfg.validation_from_train, seed)
        self.dev = generate(cfg.num_eval, cfg, rng) if cfg.evaluate_reported else []  # drawn after train: the same

    def train_examples(self) -> list[Example]:
        return self.train

    def evaluate(self, model, ctx: EvalContext) -> dict[str, float]:
        if not self.cfg.evaluate_reported:
            return self.validate(model, ctx)
        return classify.score(model, self.dev, ctx, self.collate, ("acc",), regression=False, split="dev")

    def validate(self, model, ctx: EvalContext) -> dict[str, float]:
        if not self.val:
            return self.evaluate(model, ctx)
        return classify.score(model, self.val, ctx, self.collate, ("acc",), regression=False,
                              split=classify.VALIDATION)

    def validation_metrics(self) -> list[str]:
        split = classify.VALIDATION if self.val else "dev"
        return [f"{split}/acc", f"{split}/loss"]

    def protocol(self) -> dict:
        return {"rule": "label = which marker token (A or B) the sequence holds",
                "num_train": len(self.train), "num_eval": len(self.dev), "num_val": len(self.val)}

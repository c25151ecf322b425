"""A generative task made in-process (no download, deterministic per seed): small additions.

The prompt is "a+b=" and the target the sum, then EOS; the loss is on the target only. It is
scored like the reasoning tasks: generate, take the last number, compare. An untrained model
is near chance (about 1 in 2·max_operand+1 sums); tiny-llama with full fine-tuning at its
default lr answers every problem after ~2000 steps (about a minute on 2 CPU cores).
Train and eval problems come from the same small space of (max_operand+1)² additions, so
the task measures how fast a method fits, not how it generalizes.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from ftbench.tasks import answers, generate
from ftbench.tasks.base import EvalContext, Example, Task
from ftbench.tasks.config import SyntheticLMConfig
from ftbench.tasks.instruct import encode_pairs, encode_prompts

log = logging.getLogger(__name__)


def problems(count: int, max_operand: int, rng: random.Random) -> list[tuple[str, str]]:
    """(prompt, answer) pairs such as ("12+7=", "19")."""
    pairs = []
    for _ in range(count):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        pairs.append((f"{a}+{b}=", str(a + b)))
    return pairs


class SyntheticLMTask(Task):
    head = "causal_lm"

    def __init__(self, cfg: SyntheticLMConfig, tokenizer, seed: int):
        super().__init__(cfg, tokenizer, seed)
        rng = random.Random(seed)
        train = problems(cfg.num_train, cfg.max_operand, rng)
        self.dev = problems(cfg.num_eval, cfg.max_operand, rng)
        self.train, dropped = encode_pairs(tokenizer, [p for p, _ in train], [a for _, a in train],
                                           cfg.max_length, train_on_input=False)
        if dropped:
            log.warning("%d of %d training problems dropped: their prompt fills task.max_length=%d", dropped,
                        len(train), cfg.max_length)

    def train_examples(self) -> list[Example]:
        return self.train

    def evaluate(self, model, ctx: EvalContext) -> dict[str, float]:
        ids = encode_prompts(self.tokenizer, [p for p, _ in self.dev])
        prompts = [generate.Prompt("dev", p, i, a) for (p, a), i in zip(self.dev, ids)]
        decoding = generate.Decoding.resolve(ctx, self.cfg)
        return generate.score(model, self.tokenizer, {"dev": (prompts, answers.NUMBER_RULE)}, ctx, decoding)

    def protocol(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"prompt": "BOS, then 'a+b=' (no template)", "target": "the sum, then EOS (loss on it only)",
                "answer_rule": {"dev": answers.NUMBER_RULE.name}, "max_operand": cfg.max_operand,
                "distinct_problems": (cfg.max_operand + 1) ** 2, "num_train": len(self.train),
                "eval_sets": {"dev": len(self.dev)},
                "decoding_default": {"num_beams": cfg.num_beams, "max_new_tokens": cfg.max_new_tokens,
                                     "min_new_tokens": cfg.min_new_tokens, "sampling": False,
                                     "overridden_by": "eval.num_beams, eval.max_new_tokens"}}

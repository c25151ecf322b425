"""Answer extraction: the rules of the LLM-Adapters evaluation scripts that S2FT, DoRA
and their peers use, kept exactly, because each choice moves accuracy by points.

- commonsense: lowercase the output; the FIRST match of the set's answer vocabulary
  (``true|false``, ``solution1|2``, ``answer1-5``, ``ending1-4``, ``option1|2``) must
  equal the gold label;
- arithmetic: strip commas; the LAST number (``-?\\d+\\.?\\d*``) must be within 1e-3 of
  the gold number;
- AQuA: the FIRST capital letter A-E anywhere in the output (case-sensitive, so the
  "A" of "Answer" counts: that is the published rule) must equal the gold letter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ANSWER_1_TO_5 = tuple(f"answer{i}" for i in range(1, 6))
COMMONSENSE_CHOICES: dict[str, tuple[str, ...]] = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": ANSWER_1_TO_5,
    "hellaswag": tuple(f"ending{i}" for i in range(1, 5)),
    "winogrande": ("option1", "option2"),
    "ARC-Easy": ANSWER_1_TO_5,
    "ARC-Challenge": ANSWER_1_TO_5,
    "openbookqa": ANSWER_1_TO_5,
}
NUMBER_SETS = ("gsm8k", "SVAMP", "MultiArith", "AddSub", "SingleEq", "mawps")
LETTER_SETS = ("AQuA",)
NUMBER = re.compile(r"-?\d+\.?\d*")
LETTER = re.compile(r"[A-E]")
TOLERANCE = 1e-3


def first_choice(text: str, choices: tuple[str, ...]) -> str | None:
    """The first (leftmost) occurrence of any choice in the lowercased text."""
    found = re.search("|".join(map(re.escape, choices)), text.lower())
    return found.group(0) if found else None


def last_number(text: str) -> float | None:
    """The last number in the text after removing thousands separators."""
    found = NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def first_letter(text: str) -> str | None:
    """The first capital A-E anywhere in the text."""
    found = LETTER.search(text)
    return found.group(0) if found else None


@dataclass(frozen=True)
class AnswerRule:
    """How one eval set turns a generation into a prediction and judges it."""

    name: str
    extract: Callable[[str], Any]
    judge: Callable[[Any, str], bool]  # (prediction, gold as stored in the data) -> correct
    gold: str  # what a gold answer is, e.g. "a number" (said when a data file holds another)
    accepts: Callable[[str], bool]  # whether a gold answer as stored in the data is one

    def score(self, output: str, gold: str) -> tuple[Any, bool]:
        prediction = self.extract(output)
        return prediction, prediction is not None and self.judge(prediction, gold)


def is_number(text: str) -> bool:
    """Whether `text` is a finite number as float() reads it (what NUMBER_RULE's judge compares against)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def choice_rule(choices: tuple[str, ...]) -> AnswerRule:
    return AnswerRule(f"first match of {'|'.join(choices)} (lowercased)",
                      lambda text: first_choice(text, choices), lambda pred, gold: pred == gold.lower(),
                      f"one of {', '.join(choices)}", lambda gold: gold.lower() in choices)


NUMBER_RULE = AnswerRule(f"last number, commas stripped, |pred - gold| <= {TOLERANCE}", last_number,
                         lambda pred, gold: abs(pred - float(gold)) <= TOLERANCE, "a number", is_number)
LETTER_RULE = AnswerRule("first capital letter A-E anywhere", first_letter, lambda pred, gold: pred == gold,
                         "one of A, B, C, D, E", lambda gold: gold in ("A", "B", "C", "D", "E"))
KNOWN_SETS = (*COMMONSENSE_CHOICES, *NUMBER_SETS, *LETTER_SETS)


def rule_for(eval_set: str) -> AnswerRule:
    """The published rule of an eval set (names as in the LLM-Adapters data release)."""
    if eval_set in COMMONSENSE_CHOICES:
        return choice_rule(COMMONSENSE_CHOICES[eval_set])
    if eval_set in LETTER_SETS:
        return LETTER_RULE
    if eval_set in NUMBER_SETS:
        return NUMBER_RULE
    raise KeyError(eval_set)

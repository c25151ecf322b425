"""How the shipped arithmetic tasks judge an answer: task=math's rules (`ftbench.tasks.answers`), so the
harness and ftbench's own evaluation agree. lm-evaluation-harness loads this file beside the YAMLs
(`process_results: !function ftbench_answers.number_rule`)."""

from ftbench.tasks.answers import LETTER_RULE, NUMBER_RULE


def number_rule(doc: dict, results: list[str]) -> dict[str, float]:
    """{"acc": 1.0} when the last number of the answer is within 1e-3 of the gold number, else 0.0."""
    return {"acc": float(NUMBER_RULE.score(results[0], doc["answer"])[1])}


def letter_rule(doc: dict, results: list[str]) -> dict[str, float]:
    """{"acc": 1.0} when the first capital A-E of the answer is the gold letter, else 0.0."""
    return {"acc": float(LETTER_RULE.score(results[0], doc["answer"])[1])}

"""Answer extraction per data set, on hand-written model outputs (the published LLM-Adapters rules)."""

import json

import pytest

from ftbench.tasks import answers
from helpers import SHARED_DATA


@pytest.mark.parametrize("eval_set,output,gold,prediction,correct", [
    # The FIRST match of the set's vocabulary wins, wherever it is and whatever follows.
    ("boolq", "the correct answer is true", "true", "true", True),
    ("boolq", "False. It is true that the law changed later.", "true", "false", False),
    ("boolq", "It is not true.", "false", "true", False),  # no negation handling: the published rule
    ("piqa", "the correct answer is solution2", "solution2", "solution2", True),
    ("piqa", "Solution1 would break; the correct answer is solution2", "solution2", "solution1", False),
    ("social_i_qa", "the correct answer is answer3 (not answer1)", "answer3", "answer3", True),
    ("ARC-Easy", "Answer2: the sun. The correct answer is answer4", "answer4", "answer2", False),
    ("ARC-Challenge", "the correct answer is answer5", "answer5", "answer5", True),
    ("openbookqa", "the correct answer is answer1", "answer1", "answer1", True),
    ("hellaswag", "the correct answer is ending3", "ending3", "ending3", True),
    ("winogrande", "the correct answer is option2", "option2", "option2", True),
    ("winogrande", "OPTION1", "option1", "option1", True),  # lowercased before matching
    # No candidate at all: no prediction, never correct.
    ("boolq", "I cannot tell.", "false", None, False),
    ("ARC-Easy", "the correct answer is the third one", "answer3", None, False),
])
def test_commonsense_first_match(eval_set, output, gold, prediction, correct):
    assert answers.rule_for(eval_set).score(output, gold) == (prediction, correct)


@pytest.mark.parametrize("output,gold,prediction,correct", [
    ("There are 7 - 3 = 4 crayons. The answer is 4.", "4", 4.0, True),  # the LAST number; "4." parses
    ("The answer is 4. Check: 2 + 2 = 4, not 5", "4.0", 5.0, False),  # last, even after the answer
    ("He earns $1,234 a month.", "1234.0", 1234.0, True),  # thousands separators stripped
    ("It went from 3 to -5 degrees.", "-5", -5.0, True),  # negative numbers
    ("Each piece is 3.75 meters long.", "3.75", 3.75, True),  # decimals
    ("The answer is 1.833", "1.8333333333333335", 1.833, True),  # |pred - gold| = 3.3e-4 <= 1e-3
    ("The answer is 1.83", "1.8333333333333335", 1.83, False),  # 3.3e-3 > 1e-3
    ("The answer is 576", "576.0", 576.0, True),
    ("She ate 1/2 of it.", "0.5", 2.0, False),  # fractions are two numbers: the published rule
    ("I do not know.", "4", None, False),  # no number: never correct
])
def test_math_last_number(output, gold, prediction, correct):
    for eval_set in answers.NUMBER_SETS:
        assert answers.rule_for(eval_set).score(output, gold) == (prediction, correct)


@pytest.mark.parametrize("output,gold,prediction,correct", [
    ("The correct option is (C).", "C", "C", True),
    ("Answer: (B)", "B", "A", False),  # the "A" of "Answer" comes first: the published rule
    ("Both (D) and (E) look close, (D) is right.", "D", "B", False),
    ("the answer is c", "C", None, False),  # lowercase letters do not count
])
def test_aqua_first_letter(output, gold, prediction, correct):
    assert answers.rule_for("AQuA").score(output, gold) == (prediction, correct)


def test_unknown_set_has_no_rule():
    with pytest.raises(KeyError):
        answers.rule_for("BoolQ")


@pytest.mark.skipif(not (SHARED_DATA / "commonsense").is_dir(), reason="shared commonsense data absent")
def test_reference_outputs_of_every_commonsense_file_score_perfectly():
    """The vocabularies match the data: each stored reference output yields its gold label."""
    for path in sorted((SHARED_DATA / "commonsense").glob("*.json")):
        rule = answers.rule_for(path.name.split(".")[0])
        rows = json.loads(path.read_text())
        wrong = [row["output"] for row in rows if not rule.score(row["output"], row["answer"])[1]]
        assert not wrong, f"{path.name}: {wrong[:3]}"


@pytest.mark.skipif(not (SHARED_DATA / "math").is_dir(), reason="shared math data absent")
def test_every_math_gold_answer_is_judgeable():
    for path in sorted((SHARED_DATA / "math").glob("*.test.json")):
        name = path.name.split(".")[0]
        for row in json.loads(path.read_text()):
            if name in answers.LETTER_SETS:
                assert row["answer"] in "ABCDE"
            else:
                float(row["answer"])

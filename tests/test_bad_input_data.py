"""Bad data files: null or mistyped fields, unjudgeable gold answers, malformed lines, a file of another task and
too little data, each named by file:line with the count and the fix."""

import json
from pathlib import Path

import pytest

from ftbench.errors import UserError
from ftbench.models.tokenizer import byte_level_tokenizer
from ftbench.tasks import build_task
from helpers import compose, llm_adapters_rows, run

# Kinds 6 and 8: null fields, and the first bad record or line named by file:line with the count.

def alpaca(folder: Path, rows: list, jsonl: bool = False) -> Path:
    folder.mkdir(exist_ok=True)
    text = "\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows, indent=1)
    (folder / "alpaca_data.json").write_text(text)
    return folder


def test_a_null_input_reads_as_empty(tmp_path):
    rows = [{"instruction": f"say {i}", "input": None if i % 2 else "", "output": str(i)} for i in range(6)]
    cfg = compose("task=alpaca", f"task.data_dir={alpaca(tmp_path, rows)}", "task.val_size=1")
    task = build_task(cfg.task, byte_level_tokenizer(), seed=0)
    assert len(task.train_examples()) == 5
    assert all(row["input"] == "" for row in task.val_rows)


@pytest.mark.parametrize("jsonl", [False, True])
def test_a_null_required_field_names_file_line_record_and_count(tmp_path, jsonl):
    rows = [{"instruction": "a", "input": "", "output": "b"}] * 3 + [{"instruction": None, "input": "", "output": "c"},
                                                                     {"instruction": "d", "output": None}]
    cfg = compose("task=alpaca", f"task.data_dir={alpaca(tmp_path, rows, jsonl)}", "task.val_size=1")
    line = 4 if jsonl else 17  # indent=1: five lines per record after the opening bracket
    with pytest.raises(UserError, match=rf"^task.data_dir: .*alpaca_data.json:{line}: record 4 has 'instruction': "
                                        r"null \(2 of 5 records have such a problem\); give every record the text "
                                        r"fields instruction, output$"):
        build_task(cfg.task, byte_level_tokenizer(), seed=0)


@pytest.mark.parametrize("field,value,what", [
    ("output", 5, "has 'output' of type int, not text"),  # was accepted as the text "5"
    ("instruction", True, "has 'instruction' of type bool, not text"),
    ("input", ["a", "b"], "has 'input' of type list, not text"),  # was formatted into the prompt as a list
])
def test_a_field_of_the_wrong_type_names_file_line_record_and_field(tmp_path, field, value, what):
    rows = [{"instruction": "a", "input": "", "output": "b"} for _ in range(4)]
    rows[1][field] = value
    cfg = compose("task=alpaca", f"task.data_dir={alpaca(tmp_path, rows, jsonl=True)}", "task.val_size=1")
    with pytest.raises(UserError, match=rf"^task.data_dir: .*alpaca_data.json:2: record 2 {what}; give every "
                                        r"record the text fields instruction, output$"):
        build_task(cfg.task, byte_level_tokenizer(), seed=0)


@pytest.mark.parametrize("instruction", ["", " \n"])
def test_an_empty_instruction_names_file_line_and_record(tmp_path, instruction):
    """An Alpaca record {"instruction": "", "input": "", "output": ""} was trained on (a prompt asking nothing)."""
    rows = [{"instruction": "a", "input": "", "output": "b"} for _ in range(4)]
    rows[2] = {"instruction": instruction, "input": "", "output": ""}
    cfg = compose("task=alpaca", f"task.data_dir={alpaca(tmp_path, rows, jsonl=True)}", "task.val_size=1")
    with pytest.raises(UserError, match=r"^task.data_dir: .*alpaca_data.json:3: record 3 has an empty "
                                        r"'instruction'; give every record the text fields instruction, output$"):
        build_task(cfg.task, byte_level_tokenizer(), seed=0)


def test_an_empty_input_or_output_is_accepted(tmp_path):
    """No input is the common case; an empty output is a target of the EOS alone (the public Alpaca and
    Math10K releases hold a few such records)."""
    rows = [{"instruction": f"say {i}", "input": "", "output": "" if i == 1 else str(i)} for i in range(6)]
    cfg = compose("task=alpaca", f"task.data_dir={alpaca(tmp_path, rows)}", "task.val_size=1")
    assert len(build_task(cfg.task, byte_level_tokenizer(), seed=0).train_examples()) == 5


def test_an_empty_question_in_an_eval_set_is_refused(tmp_path):
    (tmp_path / "train.train.json").write_text(json.dumps(llm_adapters_rows(4)))
    tests = [{"instruction": "" if i == 1 else "q", "answer": "true"} for i in range(3)]
    (tmp_path / "boolq.test.json").write_text("\n".join(json.dumps(row) for row in tests))
    cfg = compose("task=commonsense", f"task.data_dir={tmp_path}", "task.train_files=[train.train.json]",
                  "task.val_size=0", "task.eval_sets=[boolq]")
    with pytest.raises(UserError, match=r"^task.data_dir: .*boolq.test.json:2: record 2 has an empty 'instruction'"):
        build_task(cfg.task, byte_level_tokenizer(), seed=0)


@pytest.mark.parametrize("task,name,answer,expected", [
    ("math", "gsm8k", "banana", "a number"),  # was scored, always wrong
    ("math", "gsm8k", "inf", "a number"),
    ("math", "AQuA", "F", "one of A, B, C, D, E"),
    ("commonsense", "boolq", "maybe", "one of true, false"),
    ("commonsense", "piqa", 1, "one of solution1, solution2"),
])
def test_a_gold_answer_the_set_cannot_judge_is_refused(tmp_path, task, name, answer, expected):
    (tmp_path / "train.train.json").write_text(json.dumps(llm_adapters_rows(4)))
    good = {"gsm8k": "3", "AQuA": "A", "boolq": "true", "piqa": "solution1"}[name]
    tests = [{"instruction": "q", "answer": answer if i == 2 else good} for i in range(4)]
    (tmp_path / f"{name}.test.json").write_text("\n".join(json.dumps(row) for row in tests))
    cfg = compose(f"task={task}", f"task.data_dir={tmp_path}", "task.train_files=[train.train.json]",
                  "task.val_size=0", f"task.eval_sets=[{name}]")
    with pytest.raises(UserError, match=rf"^task.data_dir: .*{name}.test.json:3: record 3 has 'answer' "
                                        rf"'{answer}', not {expected}; give every record the text fields "
                                        rf"instruction, answer \(answer: {expected}\)$"):
        build_task(cfg.task, byte_level_tokenizer(), seed=0)


def test_a_math_answer_stored_as_a_number_is_read(tmp_path):
    (tmp_path / "train.train.json").write_text(json.dumps(llm_adapters_rows(4)))
    (tmp_path / "gsm8k.test.json").write_text(json.dumps([{"instruction": "q", "answer": 42}, {"instruction": "r",
                                                                                               "answer": "-1.5"}]))
    cfg = compose("task=math", f"task.data_dir={tmp_path}", "task.train_files=[train.train.json]", "task.val_size=0")
    task = build_task(cfg.task, byte_level_tokenizer(), seed=0)
    assert [row["answer"] for row in task.tests["gsm8k"]] == ["42", "-1.5"]


def glue(folder: Path, task: str, train: str, dev: str | None = None):
    folder.mkdir(exist_ok=True)
    (folder / "train.tsv").write_text(train)
    (folder / "dev.tsv").write_text(dev if dev is not None else train)
    return build_task(compose(f"task={task}", f"task.data_dir={folder}").task, byte_level_tokenizer(), seed=0)


def test_a_malformed_tsv_line_is_named_with_the_count(tmp_path):
    good = "".join(f"film {i}\t{i % 2}\n" for i in range(20))
    with pytest.raises(UserError, match=r"^task.data_dir: .*train.tsv:4: 1 columns, expected 2 \(2 of 24 "
                                        r"lines are bad\); fix those lines"):
        glue(tmp_path, "sst2", "sentence\tlabel\nfine\t1\nok\t0\nno tab here\n" + good + "bad\n")


@pytest.mark.parametrize("task,train,message", [
    ("sst2", "sentence\tlabel\nfine\t1\nok\t0\t\n", r"train.tsv:3: 3 columns, expected 2"),  # was accepted
    ("cola", "fine .\t1\nok .\t0\textra\n", r"train.tsv:2: 3 columns, expected 2"),
    ("cola", "gj04\t1\t\tfine .\ngj04\t0\tok .\n", r"train.tsv:2: 3 columns, expected 4"),
    ("stsb", "sentence1\tsentence2\tscore\nA .\tB .\t4.2\nA .\tC .\tnan\n", r"train.tsv:3: label 'nan' is not "
     r"one of STSB's \(a number\)"),
])
def test_a_line_whose_columns_do_not_line_up_is_bad(tmp_path, task, train, message):
    with pytest.raises(UserError, match=r"^task.data_dir: .*" + message + r" \(1 of 2 lines are bad\)"):
        glue(tmp_path, task, train)


@pytest.mark.parametrize("task,train,message", [
    ("sst2", "sentence\tlabel\nfine\t1\n\t0\n", r"train.tsv:3: empty 'sentence'"),  # was trained on
    ("cola", "fine .\t1\n \t0\n", r"train.tsv:2: empty 'sentence'"),
    ("rte", "index\tsentence1\tsentence2\tlabel\n0\tA .\tB .\tentailment\n1\tA .\t \tentailment\n",
     r"train.tsv:3: empty 'sentence2'"),
])
def test_a_line_with_an_empty_text_is_bad(tmp_path, task, train, message):
    with pytest.raises(UserError, match=r"^task.data_dir: .*" + message + r" \(1 of 2 lines are bad\)"):
        glue(tmp_path, task, train)


@pytest.mark.parametrize("line,problem", [("no tab here", "1 columns, expected 2"),
                                          ("a fine film\t2", "label '2' is not one of SST2's (0, 1)")])
def test_a_rare_malformed_line_is_skipped_with_a_warning_and_recorded(tmp_path, caplog, line, problem):
    """At most 1% of a GLUE file's lines may be malformed (the public QQP file has a few): skipped, named in a
    warning and, so that the numbers compared say what trained, in result.json's protocol (was: the warning
    alone)."""
    good = [f"film {i}\t{i % 2}\n" for i in range(200)]
    task = glue(tmp_path, "sst2", "".join(["sentence\tlabel\n", *good[:100], line + "\n", *good[100:]]),
                dev="".join(["sentence\tlabel\n", *good[:10]]))
    assert len(task.train_examples()) == 200
    assert f"train.tsv:102: {problem} (1 of 201 lines like it skipped" in caplog.text
    protocol = task.protocol()
    assert protocol["sizes"] == {"train": 200, "dev": 10}
    assert protocol["skipped_malformed"] == {"train": {"count": 1, "of": 201, "unit": "lines",
                                                       "first": f"{tmp_path / 'train.tsv'}:102: {problem}"}}


def test_a_glue_file_without_malformed_lines_records_none_skipped(tmp_path):
    task = glue(tmp_path, "sst2", "sentence\tlabel\n" + "".join(f"film {i}\t{i % 2}\n" for i in range(20)))
    assert task.protocol()["skipped_malformed"] == {}


@pytest.mark.parametrize("task,header,column,places", [
    ("sst2", "sentence\tlabel\tlabel", "label", "2, 3"),  # was: the first label column read, silently
    ("sst2", "sentence\tsentence\tlabel", "sentence", "1, 2"),
    ("mnli", "index\tsentence1\tsentence2\tgold_label\tgold_label", "gold_label", "4, 5"),  # an alias
])
def test_a_header_naming_a_column_twice_is_refused(tmp_path, task, header, column, places):
    labels = ("1", "0") if task == "sst2" else ("entailment", "neutral")
    width = header.count("\t") + 1
    rows = "".join("\t".join([*(["0"] if task == "mnli" else []), f"text {i}",
                              *(["more"] * (width - 2 - (task == "mnli"))), labels[i % 2]]) + "\n"
                   for i in range(4))
    with pytest.raises(UserError, match=rf"^task.data_dir: .*train.tsv: the header names the column '{column}' more "
                                        rf"than once \(columns {places} of: {header.replace(chr(9), ', ')}\); keep "
                                        "one column of that name$"):
        glue(tmp_path, task, header + "\n" + rows)


# Kind 9: a file of another task is refused naming task.data_dir, what was found and what was expected.

@pytest.mark.parametrize("task,train,message", [
    ("cola", "sentence\tlabel\na fine film \t1\n", r"train.tsv is a GLUE SST2 file \(header: sentence, label\), not "
     r"COLA \(no header.*\); set task=sst2"),
    ("sst2", "the cat sat .\t1\ncat the sat .\t0\n", r"train.tsv: line 1 is data, not a header; GLUE SST2 files start "
     r"with a header naming the columns sentence, label \(.*task=cola\)"),
    ("mnli", "index\tsentence1\tsentence2\tlabel\n0\tA .\tB .\tnot_entailment\n", r"is a GLUE RTE file"),
    ("rte", "index\tquestion\tsentence\tlabel\n0\tWho ?\tBob .\tentailment\n", r"is a GLUE QNLI file"),
    ("sst2", "sentence\tlabel\ngood\tpositive\nbad\tnegative\n", r"train.tsv:2: label 'positive' is not one of "
     r"SST2's \(0, 1\) \(2 of 2 lines are bad\)"),
])
def test_a_glue_file_of_another_task_is_refused(tmp_path, task, train, message):
    with pytest.raises(UserError, match=r"^task.data_dir: .*" + message):
        glue(tmp_path, task, train)


@pytest.mark.parametrize("jsonl", [False, True])
def test_a_record_naming_a_field_twice_is_refused_with_file_line_and_count(tmp_path, jsonl):
    """JSON keeps the last of two values silently (was: trained on it); the first such record and the count."""
    rows = [{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(5)]
    text = "\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows, indent=1)
    twice = '"output": "3", "output": "three"' if jsonl else '"output": "3",\n  "output": "three"'
    text = text.replace('"output": "3"', twice).replace('"output": "4"', '"output": "4", "output": "four"')
    (tmp_path / "alpaca_data.json").write_text(text)
    line = 4 if jsonl else 17  # indent=1: five lines per record after the opening bracket
    cfg = compose("task=alpaca", f"task.data_dir={tmp_path}", "task.val_size=1")
    with pytest.raises(UserError, match=rf"^task.data_dir: .*alpaca_data.json:{line}: record 4 names the field "
                                        r"'output' more than once \(2 of 5 records do\); JSON keeps the last "
                                        r"silently: keep one$"):
        build_task(cfg.task, byte_level_tokenizer(), seed=0)


def test_a_test_set_record_naming_a_field_twice_is_refused(tmp_path):
    """The reasoning tasks' files are read the same way: here an eval set's answer given twice."""
    (tmp_path / "math_data.train.json").write_text(json.dumps(llm_adapters_rows(4)))
    (tmp_path / "gsm8k.test.json").write_text('[{"instruction": "1+1?", "answer": "2", "answer": "3"}]')
    cfg = compose("task=math", f"task.data_dir={tmp_path}", "task.val_size=0")
    with pytest.raises(UserError, match=r"^task.data_dir: .*gsm8k.test.json:1: record 1 names the field 'answer' "
                                        r"more than once; JSON keeps the last silently: keep one$"):
        build_task(cfg.task, byte_level_tokenizer(), seed=0)


def test_alpaca_refuses_llm_adapters_data(tmp_path):
    (tmp_path / "math_data.train.json").write_text(json.dumps(llm_adapters_rows(4)))
    cfg = compose("task=alpaca", f"task.data_dir={tmp_path}", "task.val_size=1")
    with pytest.raises(UserError, match=r"^task.data_dir: .*math_data.train.json: every record has an 'answer' "
                                        r"field: the LLM-Adapters format of task=math"):
        build_task(cfg.task, byte_level_tokenizer(), seed=0)


def test_math_on_a_commonsense_folder_names_the_task(tmp_path):
    (tmp_path / "boolq.train.json").write_text(json.dumps(llm_adapters_rows(4)))
    (tmp_path / "boolq.test.json").write_text(json.dumps(llm_adapters_rows(2)))
    cfg = compose("task=math", f"task.data_dir={tmp_path}", "task.val_size=0")
    with pytest.raises(UserError, match=r"^task.data_dir: no eval set file in .*; it holds the test sets of "
                                        r"task=commonsense \(boolq\): set task=commonsense$"):
        build_task(cfg.task, byte_level_tokenizer(), seed=0)


# Kind 7: too little data for one micro-batch says what to lower, and to what.

def test_fewer_examples_than_a_micro_batch_says_what_to_lower(tmp_path):
    result = run(tmp_path / "run", "task.num_train=8", "train.batch_size=16", "task.num_eval=8", "train.max_steps=1")
    assert result["exit_code"] == 2 and result["status"] == "failed"
    assert result["error"] == ("train.batch_size: the training set has 8 examples, fewer than one micro-batch of 16; "
                               "lower train.batch_size to 8 or less, or give more training data")


def test_fewer_examples_than_a_micro_batch_per_process():
    from ftbench.engine.batches import shuffled

    with pytest.raises(UserError, match=r"^task.batch_size: the training set has 6 examples, fewer than one "
                                        r"micro-batch of 4 on each of 2 processes; lower task.batch_size to 6 or less"):
        next(shuffled([{"input_ids": [1]}] * 6, 4, list, seed=0, rank=0, world_size=2))


EMPTIED = ("task.max_length: every training prompt fills the 12 tokens of task.max_length, leaving no room for its "
           "answer; raise task.max_length")


@pytest.mark.parametrize("task", ["synthetic_lm", "alpaca"])
def test_a_training_set_emptied_by_max_length_is_refused_for_every_task(tmp_path, task):
    """Every prompt fills task.max_length: no example is left to train on (synthetic_lm crashed in the
    micro-batch fit, max() of nothing), and alpaca says so before its held-out set's emptiness."""
    if task == "alpaca":
        rows = [{"instruction": f"a long instruction {i}", "input": "", "output": str(i)} for i in range(6)]
        source = [f"task.data_dir={alpaca(tmp_path, rows)}", "task.val_size=1"]
    else:
        source = ["task.max_operand=1000000000000", "task.num_train=64"]  # "a+b=" of ~13-digit operands
    cfg = compose(f"task={task}", *source, "task.max_length=12")
    with pytest.raises(UserError) as refusal:
        build_task(cfg.task, byte_level_tokenizer(), seed=0)
    assert str(refusal.value) == EMPTIED

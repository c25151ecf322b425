"""Data files and evaluation settings checked before training (one line naming the file or key and the fix), and
a failing final evaluation that loses nothing."""

import json
import random

import pytest

from ftbench.errors import UserError
from ftbench.models.tokenizer import byte_level_tokenizer
from ftbench.tasks import build_task
from helpers import compose, refused, run, trained

# Kind 4: every data-reading failure names the file, what is wrong and the fix.

def glue(folder, train: bytes, task="sst2"):
    folder.mkdir(exist_ok=True)
    (folder / "train.tsv").write_bytes(train)
    (folder / "dev.tsv").write_text("sentence\tlabel\na fine film\t1\n")
    return build_task(compose(f"task={task}", f"task.data_dir={folder}").task, byte_level_tokenizer(), seed=0)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    task = glue(tmp_path / "bom", "\ufeffsentence\tlabel\ncafé au lait\t1\n".encode())
    assert [e["labels"] for e in task.train_examples()] == [1]
    folder = tmp_path / "alpaca"
    folder.mkdir()
    rows = [{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(6)]
    (folder / "alpaca_data.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    cfg = compose("task=alpaca", f"task.data_dir={folder}", "task.val_size=2")
    assert len(build_task(cfg.task, byte_level_tokenizer(), seed=0).train_examples()) == 4


@pytest.mark.parametrize("content,message", [
    ("sentence\tlabel\ncaf\xe9\t1\n".encode("latin-1"), r"train.tsv: not UTF-8 text \(byte 0xe9 on line 2\); save it as UTF-8"),
    (b"", r"train.tsv: the file is empty"),
    (b"sentence\tlabel\n" + b"a" * 200_000 + b"\t1\n", r"train.tsv:2: not TSV \(field larger"),
    (b"text\tscore\na\t1\n", r"train.tsv has no 'sentence' column"),
])
def test_a_bad_tsv_names_the_file_and_the_fix(tmp_path, content, message):
    with pytest.raises(UserError, match=r"^task.data_dir: .*" + message):
        glue(tmp_path / "data", content)


@pytest.mark.parametrize("content,message", [
    ('[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]', r"alpaca_data.json: invalid JSON "
     r"at line 2 column \d+ .*json.tool"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "c", \n', r"alpaca_data.json: line 2 is not a JSON object"),
    ('{"rows": []}', r"alpaca_data.json must hold a list of objects"),
    ('[{"instruction": "a", "response": "b"}]', r"alpaca_data.json:1: record 1 has no 'output' field \(it has: "
     r"instruction, response\); give every record the text fields instruction, output"),
    ("  \n", r"alpaca_data.json: the file is empty"),
])
def test_a_bad_json_file_names_the_file_and_the_fix(tmp_path, content, message):
    (tmp_path / "alpaca_data.json").write_text(content, encoding="utf-8")
    cfg = compose("task=alpaca", f"task.data_dir={tmp_path}", "task.val_size=1")
    with pytest.raises(UserError, match=r"^task.data_dir: .*" + message):
        build_task(cfg.task, byte_level_tokenizer(), seed=0)


# Kind 5: checks before training; a failing final evaluation loses nothing.

def alpaca_rows(n: int, long_at: set[int]) -> list[dict]:
    return [{"instruction": f"say {i}", "input": "x" * 400 if i in long_at else "", "output": str(i)}
            for i in range(n)]


def test_a_heldout_set_emptied_by_truncation_is_refused_before_training(tmp_path):
    order = list(range(20))
    random.Random(0).shuffle(order)  # the task's split: the first val_size rows of this order are held out
    folder = tmp_path / "alpaca"
    folder.mkdir()
    (folder / "alpaca_data.json").write_text(json.dumps(alpaca_rows(20, set(order[:4]))))
    result = run(tmp_path / "run", "task=alpaca", f"task.data_dir={folder}", "task.val_size=4",
                 "task.max_length=200", "task.batch_size=4", "train.max_steps=2", "task.generate_samples=0")
    error = refused(result, "task.max_length")
    assert "all 4 held-out examples" in error and "task.val_size" in error


def test_min_new_tokens_over_the_answer_cap_is_refused_before_training(tmp_path):
    result = run(tmp_path / "run", "task=synthetic_lm", "task.min_new_tokens=6", "eval.max_new_tokens=4",
                 "task.num_train=64", "task.max_steps=2")
    assert "exceeds the answer cap 4" in refused(result, "task.min_new_tokens")


@pytest.fixture
def commonsense(tmp_path):
    folder = tmp_path / "commonsense"
    folder.mkdir()
    rows = [{"instruction": f"is {i} even?", "input": "", "output": "the answer is true"} for i in range(12)]
    (folder / "boolq.train.json").write_text(json.dumps(rows))
    (folder / "boolq.test.json").write_text(json.dumps([{"instruction": "is 2 even?", "answer": "true"}] * 2))
    return ["task=commonsense", f"task.data_dir={folder}", "task.eval_sets=[boolq]", "task.val_size=2",
            "task.batch_size=4", "train.max_steps=2", "eval.every_steps=1", "eval.max_new_tokens=2",
            "eval.num_beams=1"]


def test_periodic_validation_with_select_last_needs_no_headline_metric(tmp_path, commonsense):
    result = trained(run(tmp_path / "run", *commonsense), 2)
    assert [(v["step"], v["metrics"].keys() == {"val/loss"}) for v in result["validation_history"]] == [
        (1, True), (2, True)]  # every step, the last included
    assert "avg/acc" in result["metrics"]


def test_select_best_on_a_metric_validation_lacks_is_refused_before_training(tmp_path, commonsense):
    error = refused(run(tmp_path / "run", *commonsense, "train.select=best"), "train.select_metric")
    assert "'avg/acc'" in error and "val/loss" in error


def test_a_failing_final_evaluation_keeps_the_loss_curve_and_the_export(tmp_path, monkeypatch):
    from ftbench.tasks.synthetic import SyntheticTask

    on_disk = {}

    def broken(self, model, ctx):  # by now result.json holds the train section, should the process die here
        on_disk.update(json.loads((ctx.output_dir / "result.json").read_text()))
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(SyntheticTask, "evaluate", broken)
    result = run(tmp_path / "run", "task.num_train=64", "task.num_eval=16", "task.max_steps=2", "train.save=last")
    assert result["exit_code"] == 1 and "evaluation broke" in result["error"]
    assert len(result["train"]["loss_curve"]) == 2 and result["train"]["steps"] == 2
    assert (tmp_path / "run" / "checkpoint" / "merged" / "config.json").is_file()
    assert on_disk["train"]["loss_curve"] == result["train"]["loss_curve"] and on_disk["export"]["merged"]
    for facts in (on_disk, result):  # what training measured is kept too (was lost with a failed evaluation)
        assert facts["memory"]["cpu_peak_rss_bytes"] > 0 and facts["memory"]["breakdown"]["weights_bytes"] > 0
        assert facts["throughput"]["tokens_per_s"] > 0

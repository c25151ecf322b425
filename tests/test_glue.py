"""GLUE loading from TSV fixtures written here (every task's distribution layout), and a tiny run."""

import pytest

from ftbench.errors import UserError
from ftbench.models.tokenizer import byte_level_tokenizer
from ftbench.tasks import build_task
from helpers import compose, run

# task -> (header, rows); the GLUE distribution's column layouts.
FIXTURES = {
    "sst2": ("sentence\tlabel", ["a fine film\t1", "dull and slow\t0"]),
    "mrpc": ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", ["1\t1\t2\tHe left .\tHe went away .", "0\t3\t4\tA cat .\tThe sea ."]),
    "stsb": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
             ["0\tmain\tf\t2012\t1\ts\ts\tA man plays .\tA man is playing .\t4.6", "1\tmain\tf\t2012\t2\ts\ts\tA dog .\tRain .\t0.2"]),
    "qqp": ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", ["0\t1\t2\tWhy ?\tWhy so ?\t1", "1\t3\t4\tHow ?\tWhere ?\t0"]),
    "mnli": ("index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tgold_label",
             ["0\t1\t1\tfic\tA man sleeps .\tA person rests .\tentailment", "1\t2\t2\tfic\tIt rains .\tIt is dry .\tcontradiction"]),
    "qnli": ("index\tquestion\tsentence\tlabel", ["0\tWho ?\tBob did .\tentailment", "1\tWhen ?\tA cat .\tnot_entailment"]),
    "rte": ("index\tsentence1\tsentence2\tlabel", ["0\tA is B .\tB is A .\tentailment", "1\tIt is .\tIt is not .\tnot_entailment"]),
    "cola": (None, ["the cat sat .\t1", "cat the sat .\t0"]),  # header-less (the headed sentence/label is SST-2)
}
EXPECTED_LABELS = {"stsb": [4.6, 0.2], "mnli": [0, 2], "qnli": [0, 1], "rte": [0, 1]}


def write_glue(folder, task, header, rows, splits=("train", "dev")):
    folder.mkdir(parents=True, exist_ok=True)
    if task == "mnli":
        splits = ("train", "dev_matched", "dev_mismatched")
    for split in splits:
        (folder / f"{split}.tsv").write_text("\n".join([header, *rows]) + "\n" if header else "\n".join(rows) + "\n")
    return folder


def load(task, folder):
    cfg = compose(f"task={task}", f"task.data_dir={folder}")
    return build_task(cfg.task, byte_level_tokenizer(), seed=0)


@pytest.mark.parametrize("task", sorted(FIXTURES))
def test_every_task_loads_its_tsv_layout(tmp_path, task):
    header, rows = FIXTURES[task]
    loaded = load(task, write_glue(tmp_path, task, header, rows))
    train = loaded.train_examples()
    assert len(train) == 2
    assert [e["labels"] for e in train] == EXPECTED_LABELS.get(task, [1, 0])
    assert all(e["input_ids"][0] == 1 and e["input_ids"][-1] == 2 for e in train)  # <s> ... </s>
    assert loaded.head == ("regression" if task == "stsb" else "seq_cls")


@pytest.mark.parametrize("rows", [
    ["the cat sat .\t1", "cat the sat .\t0"],  # header-less sentence<TAB>label (../shared/data)
    ["gj04\t1\t\tthe cat sat .", "gj04\t0\t*\tcat the sat ."],  # the original header-less 4-column layout
])
def test_cola_header_less_layouts(tmp_path, rows):
    loaded = load("cola", write_glue(tmp_path, "cola", None, rows))
    assert [e["labels"] for e in loaded.train_examples()] == [1, 0]
    assert loaded.tokenizer.decode(loaded.train_examples()[0]["input_ids"], skip_special_tokens=True) == "the cat sat ."


def test_a_file_without_the_expected_columns_names_the_key(tmp_path):
    write_glue(tmp_path, "rte", "index\tpremise\tlabel", ["0\tA .\tentailment"])
    with pytest.raises(UserError, match=r"^task.data_dir: .*train.tsv has no 'sentence1' column"):
        load("rte", tmp_path)


def test_a_missing_file_names_the_key(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na\t1\n")
    with pytest.raises(UserError, match=r"^task.data_dir: no dev.tsv in"):
        load("sst2", tmp_path)


def test_the_hub_while_offline_says_so_in_one_line():
    cfg = compose("task=rte")
    with pytest.raises(UserError, match=r"^task.data_dir: could not load nyu-mll/glue/rte: the hub is unreachable"):
        build_task(cfg.task, byte_level_tokenizer(), seed=0)


def test_a_pair_task_trains_end_to_end(tmp_path):
    header, rows = FIXTURES["rte"]
    folder = write_glue(tmp_path / "data", "rte", header, rows * 16)
    result = run(tmp_path / "run", "task=rte", f"task.data_dir={folder}", "model=tiny-bert", "task.batch_size=8",
                 "train.max_steps=4")
    assert result["exit_code"] == 0, result["error"]
    assert set(result["metrics"]) == {"dev/acc", "dev/loss"}
    assert result["protocol"]["sizes"] == {"train": 32, "dev": 32}


def test_a_validation_split_carved_from_train_leaves_the_dev_file_unread(tmp_path):
    header, rows = FIXTURES["sst2"]
    folder = write_glue(tmp_path / "data", "sst2", header, rows * 10)
    cfg = compose("task=sst2", f"task.data_dir={folder}", "task.validation_from_train=0.25")
    carved = build_task(cfg.task, byte_level_tokenizer(), seed=0)
    assert len(carved.train_examples()) == 15 and len(carved.val) == 5 and len(carved.splits["validation"]) == 20
    assert carved.validation_metrics() == ["val/acc", "val/loss"]
    (folder / "dev.tsv").write_bytes(b"\xff\xfe garbage")  # not even text
    cfg = compose("task=sst2", f"task.data_dir={folder}", "task.validation_from_train=0.25",
                  "task.evaluate_reported=false")
    blind = build_task(cfg.task, byte_level_tokenizer(), seed=0)
    assert blind.val == carved.val and "validation" not in blind.splits
    with pytest.raises(UserError, match="task.data_dir"):
        load("sst2", folder)  # the reported split is read by default


@pytest.mark.parametrize("overrides,key", [(["task.validation_from_train=1.5"], "task.validation_from_train"),
                                           (["task.evaluate_reported=false"], "task.evaluate_reported"),
                                           (["task=alpaca", "task.validation_from_train=0.1"],
                                            "task.validation_from_train")])
def test_validation_knobs_refuse_what_cannot_work(overrides, key):
    from ftbench.config.schema import check

    with pytest.raises(UserError, match=key):
        check(compose(*overrides))


def hub_set(monkeypatch, train: dict, validation: dict | None = None):
    """datasets.load_dataset answering with a local DatasetDict in the hub's layout (never the network)."""
    import datasets

    splits = {"train": train, "validation": validation or {"sentence": ["ok ."], "label": [1], "idx": [0]}}
    data = datasets.DatasetDict({name: datasets.Dataset.from_dict(rows) for name, rows in splits.items()})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: data)


def test_hub_rows_load_as_tsv_lines_do(monkeypatch):
    hub_set(monkeypatch, {"sentence": ["a fine film", "dull and slow"], "label": [1, 0], "idx": [0, 1]})
    task = build_task(compose("task=sst2").task, byte_level_tokenizer(), seed=0)
    assert [e["labels"] for e in task.splits["train"]] == [1, 0] and len(task.splits["validation"]) == 1


@pytest.mark.parametrize("sentence,label,problem", [
    ("", 0, "empty 'sentence'"),  # was trained on
    (None, 0, "'sentence' is None, not text"),  # was the tokenizer's TypeError (exit 1)
    ("fine", 5, r"label '5' is not one of SST2's \(0, 1\)"),  # was a label past the head's classes
    ("fine", -1, r"label '-1' is not one of SST2's \(0, 1\)"),  # the hub's unlabeled test rows
])
def test_a_bad_hub_row_is_refused_as_a_tsv_line_is(monkeypatch, sentence, label, problem):
    hub_set(monkeypatch, {"sentence": ["a fine film", sentence], "label": [1, label], "idx": [0, 1]})
    with pytest.raises(UserError, match=rf"^task.hub_id: nyu-mll/glue/sst2 train row 2: {problem} \(1 of 2 rows "
                                        r"are bad\); give task.data_dir the GLUE TSV files"):
        build_task(compose("task=sst2").task, byte_level_tokenizer(), seed=0)


def test_a_rare_bad_hub_row_is_skipped_with_a_warning(monkeypatch, caplog):
    sentences = [f"film {i}" for i in range(200)]
    sentences[50] = " "
    hub_set(monkeypatch, {"sentence": sentences, "label": [i % 2 for i in range(200)], "idx": list(range(200))})
    task = build_task(compose("task=sst2").task, byte_level_tokenizer(), seed=0)
    assert len(task.splits["train"]) == 199
    assert "nyu-mll/glue/sst2 train row 51: empty 'sentence' (1 of 200 rows like it skipped" in caplog.text
    assert task.protocol()["skipped_malformed"] == {"train": {"count": 1, "of": 200, "unit": "rows",
                                                              "first": "nyu-mll/glue/sst2 train row 51: empty 'sentence'"}}


def test_a_hub_set_without_a_column_names_it(monkeypatch):
    hub_set(monkeypatch, {"text": ["a fine film"], "label": [1]})
    with pytest.raises(UserError, match=r"^task.hub_id: nyu-mll/glue/sst2 train has no 'sentence' column \(it has "
                                        r"text, label\)"):
        build_task(compose("task=sst2").task, byte_level_tokenizer(), seed=0)

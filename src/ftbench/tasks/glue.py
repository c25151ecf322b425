"""The eight GLUE tasks, from the hub (nyu-mll/glue) or from the GLUE TSVs in a local folder."""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from ftbench.errors import UserError, kind_problem
from ftbench.models.hub import hub_error, use_cache_only_if_offline
from ftbench.tasks import classify
from ftbench.tasks.base import EvalContext, Example, Task, read_text
from ftbench.tasks.config import GlueConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlueSpec:
    fields: tuple[str, ...]  # text columns, in the hub's names
    labels: tuple[str, ...] | None  # label names in hub order; None = regression
    metrics: tuple[str, ...]
    eval_splits: tuple[str, ...] = ("validation",)
    # Accepted TSV header names per column (GLUE distribution first, then hub names).
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)


BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")
SPECS: dict[str, GlueSpec] = {
    "cola": GlueSpec(("sentence",), BINARY, ("mcc", "acc")),
    "sst2": GlueSpec(("sentence",), BINARY, ("acc",)),
    "mrpc": GlueSpec(("sentence1", "sentence2"), BINARY, ("acc", "f1"),
                     aliases={"sentence1": ("#1 String",), "sentence2": ("#2 String",), "label": ("Quality",)}),
    "stsb": GlueSpec(("sentence1", "sentence2"), None, ("pearson", "spearman"), aliases={"label": ("score",)}),
    "qqp": GlueSpec(("question1", "question2"), BINARY, ("acc", "f1"), aliases={"label": ("is_duplicate",)}),
    "mnli": GlueSpec(("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("acc",),
                     eval_splits=("validation_matched", "validation_mismatched"),
                     aliases={"premise": ("sentence1",), "hypothesis": ("sentence2",), "label": ("gold_label",)}),
    "qnli": GlueSpec(("question", "sentence"), NLI2, ("acc",)),
    "rte": GlueSpec(("sentence1", "sentence2"), NLI2, ("acc",)),
}
# What marks a headed TSV as one task's file in the GLUE distribution (CoLA's files have no header):
# a file that bears another task's mark is refused naming both, whatever columns it shares.
MARKS = {
    "sst2": lambda header: header == ["sentence", "label"],
    "qnli": lambda header: {"question", "sentence"} <= set(header),
    "rte": lambda header: header == ["index", "sentence1", "sentence2", "label"],
    "mrpc": lambda header: "#1 String" in header,
    "stsb": lambda header: {"genre", "score"} <= set(header),
    "qqp": lambda header: "is_duplicate" in header,
    "mnli": lambda header: "gold_label" in header,
}
LAYOUTS = {"cola": "no header; sentence<TAB>label, or source<TAB>label<TAB>mark<TAB>sentence",
           "sst2": "the header sentence<TAB>label"}
# Our split names (used in metric keys) and the GLUE distribution's file stems.
SPLIT_NAMES = {"validation": "dev", "validation_matched": "dev_matched", "validation_mismatched": "dev_mismatched"}


class GlueTask(Task):
    def __init__(self, cfg: GlueConfig, tokenizer, seed: int):
        super().__init__(cfg, tokenizer, seed)
        if tokenizer is None:
            raise UserError("model.tokenizer", "GLUE needs a tokenizer; give model.tokenizer=DIR")
        self.spec = SPECS[cfg.name]
        self.head = "regression" if self.spec.labels is None else "seq_cls"
        self.num_labels = 1 if self.spec.labels is None else len(self.spec.labels)
        # task.evaluate_reported=false: the reported splits are never read (ftbench compare's lr search)
        splits = ("train", *self.spec.eval_splits) if cfg.evaluate_reported else ("train",)
        read = read_tsv_splits(cfg, self.spec, splits) if cfg.data_dir else read_hub_splits(cfg, self.spec, splits)
        self.splits = {name: self._tokenize(read[name][0]) for name in splits}
        self.skipped = {SPLIT_NAMES.get(name, name): read[name][1] for name in splits if read[name][1]}
        self.splits["train"], self.val = classify.hold_out(self.splits["train"], cfg.validation_from_train, seed)

    def _tokenize(self, rows: list[dict]) -> list[Example]:
        columns = [[row[f] for row in rows] for f in self.spec.fields]
        encoded = self.tokenizer(*columns, truncation=True, max_length=self.cfg.max_length)
        return [{"input_ids": ids, "labels": row["label"]} for ids, row in zip(encoded["input_ids"], rows)]

    def train_examples(self) -> list[Example]:
        return self.splits["train"]

    def evaluate(self, model, ctx: EvalContext) -> dict[str, float]:
        if not self.cfg.evaluate_reported:
            return self.validate(model, ctx)
        results: dict[str, float] = {}
        for split in self.spec.eval_splits:
            results.update(classify.score(model, self.splits[split], ctx, self.collate, self.spec.metrics,
                                          regression=self.spec.labels is None, split=SPLIT_NAMES[split]))
        return results

    def validate(self, model, ctx: EvalContext) -> dict[str, float]:
        if not self.val:
            return self.evaluate(model, ctx)
        return classify.score(model, self.val, ctx, self.collate, self.spec.metrics,
                              regression=self.spec.labels is None, split=classify.VALIDATION)

    def validation_metrics(self) -> list[str]:
        splits = [classify.VALIDATION] if self.val else [SPLIT_NAMES[s] for s in self.spec.eval_splits]
        return [f"{s}/{m}" for s in splits for m in (*self.spec.metrics, "loss")]

    def protocol(self) -> dict:
        sizes = {SPLIT_NAMES.get(s, s): len(v) for s, v in self.splits.items()}
        if self.val:
            sizes[classify.VALIDATION] = len(self.val)
        return {"source": self.cfg.data_dir or self.cfg.hub_id, "max_length": self.cfg.max_length,
                "padding": "dynamic", "sizes": sizes, SKIPPED: self.skipped}


def convert_label(raw: str | int | float, spec: GlueSpec):
    """GLUE labels as the hub numbers them: class index, or a float score for STS-B (from a TSV's text, or a
    hub row's number)."""
    raw = str(raw).strip()
    if spec.labels is None:
        score = float(raw)
        if not math.isfinite(score):
            raise ValueError(raw)
        return score
    if raw in spec.labels:
        return spec.labels.index(raw)
    index = int(raw)
    if not 0 <= index < len(spec.labels):
        raise ValueError(raw)
    return index


def example_problem(example: dict, task: str, spec: GlueSpec) -> str | None:
    """What is wrong with one example's fields, a TSV line's or a hub row's, e.g. "empty 'sentence'" (None:
    nothing); its label is converted in place (`convert_label`). A text to classify must hold more than white
    space."""
    for column in spec.fields:
        text = example[column]
        if not isinstance(text, str):
            return f"'{column}' is {text!r}, not text"
        if not text.strip():
            return f"empty '{column}'"
    try:
        example["label"] = convert_label(example["label"], spec)
    except ValueError:
        expected = ", ".join(spec.labels) if spec.labels else "a number"
        return f"label {str(example['label']).strip()!r} is not one of {task.upper()}'s ({expected})"
    return None


SKIPPED = "skipped_malformed"  # protocol key: per split, the malformed lines or rows left out (`well_formed`)


def well_formed(examples: list[dict], bad: list[str], total: int, key: str, unit: str,
                fix: str) -> tuple[list[dict], dict | None]:
    """(`examples`, what was skipped), when the `bad` ones ("place: problem", the first first) are at most 1% of
    the `total` (the GLUE distribution's QQP has malformed lines) and some examples are left: those few are
    skipped with a warning naming the first, and described as {"count", "of", "unit", "first"} for result.json
    (None when none was). Else raises UserError on `key` naming the first, the count and `fix`."""
    if bad and (not examples or len(bad) > 0.01 * total):
        raise UserError(key, f"{bad[0]} ({len(bad)} of {total} {unit} are bad); {fix}")
    if not bad:
        return examples, None
    log.warning("%s (%d of %d %s like it skipped: up to 1%% may be; result.json's protocol.%s counts them)",
                bad[0], len(bad), total, unit, SKIPPED)
    return examples, {"count": len(bad), "of": total, "unit": unit, "first": bad[0]}


def read_tsv_splits(cfg: GlueConfig, spec: GlueSpec,
                    splits: tuple[str, ...]) -> dict[str, tuple[list[dict], dict | None]]:
    """The rows of each split's TSV in task.data_dir, and what was skipped (`read_tsv`). Raises UserError on
    task.data_dir when a split's file is missing (naming what the folder holds) or is not a file (a folder by
    its name), and as `read_tsv`."""
    folder = Path(cfg.data_dir).expanduser()
    out = {}
    for split in splits:
        stem = SPLIT_NAMES.get(split, split)
        path = folder / f"{stem}.tsv"
        if not path.is_file():
            expected = f"expected the GLUE {cfg.name.upper()} files " + ", ".join(
                SPLIT_NAMES.get(s, s) + ".tsv" for s in splits)
            if path.exists():  # a folder (or a device) by the file's name
                raise UserError("task.data_dir", f"'{path}' {kind_problem(path, 'file')}; {expected}")
            present = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) if folder.is_dir() else "no such folder"
            raise UserError("task.data_dir", f"no {path.name} in {folder} (it holds: {present or 'nothing'}); {expected}")
        out[split] = read_tsv(path, cfg.name, spec)
    return out


def read_tsv(path: Path, task: str, spec: GlueSpec) -> tuple[list[dict], dict | None]:
    """Read one GLUE TSV: the distribution's headed files, or CoLA's header-less layouts. Returns the rows and
    what was skipped (`well_formed`).

    Raises UserError on task.data_dir naming the file: another task's file (by its header or its
    labels), a missing column, a column it reads named twice in the header (which one holds the data would
    be a guess), or malformed lines (file:line of the first, and the count: a column count other than the
    header's, an empty text, or a label that is not one of the task's / a finite number for STS-B) beyond
    the 1% the GLUE distribution has (QQP); fewer are skipped with a warning that names them the same way."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        rows = [(reader.line_num, row) for row in reader if row]
    except csv.Error as exc:
        raise UserError("task.data_dir", f"{path}:{reader.line_num}: not TSV ({exc}); "
                        f"give the GLUE {task.upper()} TSV files (tab-separated, one example a line)") from exc
    if not rows:
        raise UserError("task.data_dir", f"{path} is empty")
    name = task.upper()
    header = [h.strip() for h in rows[0][1]]
    mark = next((other for other, marks in MARKS.items() if marks(header)), None)
    if mark is not None and mark != task:
        layout = LAYOUTS.get(task, "its own header")
        raise UserError("task.data_dir", f"{path} is a GLUE {mark.upper()} file (header: {', '.join(header)}), "
                        f"not {name} ({layout}); set task={mark}, or give task.data_dir the {name} folder")
    wanted = (*spec.fields, "label")
    if task == "cola" and header[1:2] and header[1].strip() in BINARY:
        # Header-less CoLA: `sentence<TAB>label`, or the original `source label star sentence`.
        columns = {"sentence": 0, "label": 1} if len(header) == 2 else {"sentence": 3, "label": 1}
        width = 2 if len(header) == 2 else 4
        body = rows
    else:
        columns = {}
        twice = next((h for h in header if header.count(h) > 1 and any(h in (c, *spec.aliases.get(c, ()))
                                                                        for c in wanted)), None)
        if twice is not None:
            places = ", ".join(str(i + 1) for i, h in enumerate(header) if h == twice)
            raise UserError("task.data_dir", f"{path}: the header names the column {twice!r} more than once (columns "
                            f"{places} of: {', '.join(header)}); keep one column of that name")
        for column in wanted:
            found = next((header.index(a) for a in (column, *spec.aliases.get(column, ())) if a in header), None)
            if found is None:
                choices = " or ".join(repr(a) for a in (column, *spec.aliases.get(column, ())))
                if any(h in BINARY or h in (spec.labels or ()) for h in header):
                    raise UserError("task.data_dir", f"{path}: line 1 is data, not a header; GLUE {name} files "
                                    f"start with a header naming the columns {', '.join(wanted)}"
                                    + (" (a header-less sentence<TAB>label file is CoLA's: task=cola)"
                                       if len(header) == 2 and header[1] in BINARY else ""))
                raise UserError("task.data_dir", f"{path} has no {choices} column (header: {', '.join(header)}); "
                                f"give the GLUE {name} TSV files")
            columns[column] = found
        width = len(header)
        body = rows[1:]
    if not body:
        raise UserError("task.data_dir", f"{path} holds a header and no examples; give the GLUE {name} TSV files")
    examples, bad = [], []
    for line, row in body:
        if len(row) != width:  # a tab too many or too few: the columns no longer line up with the header's
            bad.append(f"{path}:{line}: {len(row)} columns, expected {width}")
            continue
        example = {column: row[i] for column, i in columns.items()}
        problem = example_problem(example, task, spec)
        if problem is not None:
            bad.append(f"{path}:{line}: {problem}")
            continue
        examples.append(example)
    return well_formed(examples, bad, len(body), "task.data_dir", "lines", f"fix those lines (a tab inside a "
                       f"text?) or give the GLUE {name} TSV files (is task={task} the task of this folder?)")


def read_hub_splits(cfg: GlueConfig, spec: GlueSpec,
                    splits: tuple[str, ...]) -> dict[str, tuple[list[dict], dict | None]]:
    """The rows of each split of task.hub_id's GLUE set, and what was skipped, checked as TSV lines are
    (`example_problem`, `well_formed`: the first bad row and the count). Raises UserError on task.hub_id when
    a split or a column is missing, or bad rows are more than 1%; on task.data_dir when the set cannot be
    loaded."""
    import datasets

    use_cache_only_if_offline()
    try:
        data = datasets.load_dataset(cfg.hub_id, cfg.name)
    except Exception as exc:  # no network, no cache, or a hub error: say so in one line
        raise hub_error("task.data_dir", f"{cfg.hub_id}/{cfg.name}", exc,
                        "download the GLUE TSVs and set task.data_dir=DIR") from exc
    where = f"{cfg.hub_id}/{cfg.name}"
    fix = "give task.data_dir the GLUE TSV files, or task.hub_id a copy of nyu-mll/glue"
    out = {}
    for split in splits:
        if split not in data:
            raise UserError("task.hub_id", f"{where} has no {split} split (it has {', '.join(data)}); {fix}")
        table = data[split]
        missing = [c for c in (*spec.fields, "label") if c not in table.column_names]
        if missing:
            raise UserError("task.hub_id", f"{where} {split} has no {missing[0]!r} column (it has "
                            f"{', '.join(table.column_names)}); {fix}")
        examples, bad = [], []
        for index, row in enumerate(table):
            example = {column: row[column] for column in (*spec.fields, "label")}
            problem = example_problem(example, cfg.name, spec)
            if problem is not None:
                bad.append(f"{where} {split} row {index + 1}: {problem}")
                continue
            examples.append(example)
        out[split] = well_formed(examples, bad, len(table), "task.hub_id", "rows", fix)
    return out

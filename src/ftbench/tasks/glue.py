"""The eight GLUE tasks, from the hub (nyu-mll/glue) or from the GLUE TSVs in a local folder."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..hub import hub_error, use_cache_only_if_offline
from ..task_configs import GlueConfig
from . import classify
from .base import EvalContext, Example, Task, read_text


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
        splits = ("train", *self.spec.eval_splits)
        rows = read_tsv_splits(cfg, self.spec, splits) if cfg.data_dir else read_hub_splits(cfg, splits)
        self.splits = {name: self._tokenize(rows[name]) for name in splits}

    def _tokenize(self, rows: list[dict]) -> list[Example]:
        columns = [[row[f] for row in rows] for f in self.spec.fields]
        encoded = self.tokenizer(*columns, truncation=True, max_length=self.cfg.max_length)
        return [{"input_ids": ids, "labels": row["label"]} for ids, row in zip(encoded["input_ids"], rows)]

    def train_examples(self) -> list[Example]:
        return self.splits["train"]

    def evaluate(self, model, ctx: EvalContext) -> dict[str, float]:
        results: dict[str, float] = {}
        for split in self.spec.eval_splits:
            results.update(classify.score(model, self.splits[split], ctx, self.collate, self.spec.metrics,
                                          regression=self.spec.labels is None, split=SPLIT_NAMES[split]))
        return results

    def validation_metrics(self) -> list[str]:
        return [f"{SPLIT_NAMES[s]}/{m}" for s in self.spec.eval_splits for m in (*self.spec.metrics, "loss")]

    def protocol(self) -> dict:
        sizes = {SPLIT_NAMES.get(s, s): len(v) for s, v in self.splits.items()}
        return {"source": self.cfg.data_dir or self.cfg.hub_id, "max_length": self.cfg.max_length,
                "padding": "dynamic", "sizes": sizes}


def convert_label(raw: str, spec: GlueSpec):
    """GLUE labels as the hub numbers them: class index, or a float score for STS-B."""
    raw = raw.strip()
    if spec.labels is None:
        return float(raw)
    if raw in spec.labels:
        return spec.labels.index(raw)
    index = int(raw)
    if not 0 <= index < len(spec.labels):
        raise ValueError(raw)
    return index


def read_tsv_splits(cfg: GlueConfig, spec: GlueSpec, splits: tuple[str, ...]) -> dict[str, list[dict]]:
    folder = Path(cfg.data_dir).expanduser()
    out = {}
    for split in splits:
        stem = SPLIT_NAMES.get(split, split)
        path = folder / f"{stem}.tsv"
        if not path.is_file():
            raise UserError("task.data_dir", f"no {path.name} in {folder}; expected the GLUE files "
                            f"{', '.join(SPLIT_NAMES.get(s, s) + '.tsv' for s in splits)}")
        out[split] = read_tsv(path, cfg.name, spec)
    return out


def read_tsv(path: Path, task: str, spec: GlueSpec) -> list[dict]:
    """Read one GLUE TSV: the distribution's headed files, or CoLA's header-less layouts."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        rows = [row for row in reader if row]
    except csv.Error as exc:
        raise UserError("task.data_dir", f"{path}: line {reader.line_num} is not TSV ({exc}); "
                        f"give the GLUE {task.upper()} TSV files (tab-separated, one example a line)") from exc
    if not rows:
        raise UserError("task.data_dir", f"{path} is empty")
    wanted = (*spec.fields, "label")
    header = [h.strip() for h in rows[0]]
    if task == "cola" and header[1:2] and header[1].strip() in BINARY:
        # Header-less CoLA: `sentence<TAB>label`, or the original `source label star sentence`.
        columns = {"sentence": 0, "label": 1} if len(header) == 2 else {"sentence": 3, "label": 1}
        body = rows
    else:
        columns = {}
        for name in wanted:
            found = next((header.index(a) for a in (name, *spec.aliases.get(name, ())) if a in header), None)
            if found is None:
                choices = " or ".join(repr(a) for a in (name, *spec.aliases.get(name, ())))
                raise UserError("task.data_dir", f"{path} has no {choices} column (header: {', '.join(header)}); "
                                f"give the GLUE {task.upper()} TSV files")
            columns[name] = found
        body = rows[1:]
    examples, skipped = [], 0
    for row in body:
        try:
            example = {name: row[i] for name, i in columns.items()}
            example["label"] = convert_label(example["label"], spec)
        except (IndexError, ValueError):
            skipped += 1  # malformed lines exist in the GLUE distribution (e.g. QQP); skip them
            continue
        examples.append(example)
    if not examples:
        raise UserError("task.data_dir", f"{path} has no usable rows; is it a GLUE {task.upper()} file?")
    if skipped > 0.01 * len(body):
        raise UserError("task.data_dir", f"{path}: {skipped} of {len(body)} rows are malformed; "
                        f"is it a GLUE {task.upper()} file?")
    return examples


def read_hub_splits(cfg: GlueConfig, splits: tuple[str, ...]) -> dict[str, list[dict]]:
    import datasets

    use_cache_only_if_offline()
    try:
        data = datasets.load_dataset(cfg.hub_id, cfg.name)
    except Exception as exc:  # no network, no cache, or a hub error: say so in one line
        raise hub_error("task.data_dir", f"{cfg.hub_id}/{cfg.name}", exc,
                        "download the GLUE TSVs and set task.data_dir=DIR") from exc
    return {split: [dict(row) for row in data[split]] for split in splits}

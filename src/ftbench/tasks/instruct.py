"""Instruction tuning: prompt templates, loss masking, data loading, held-out loss,
and the Alpaca task built from them (the reasoning tasks reuse all of it).

How the papers' prompts map onto ftbench's tokenizers: the LLM-Adapters scripts write
a literal "<s> " before the prompt with add_bos_token=False, and Stanford Alpaca lets
the LLaMA tokenizer add BOS. Both mean "BOS id, then the prompt text", which is what
`encode` does for any tokenizer (SentencePiece LLaMA: "<s> Below" == [BOS, "▁Below"];
the in-process byte-level tokenizer would otherwise turn the space after "<s>" into a
token of its own). The target is the output (plus the template's answer suffix) then
the EOS id. Prompt and prompt+target are tokenized as whole strings and the first
len(BOS + prompt) labels are masked, as both reference scripts do.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import re
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ftbench.engine.batches import to_device
from ftbench.errors import UserError, kind_problem
from ftbench.models.architecture import IGNORE_INDEX
from ftbench.models.hub import hub_error, use_cache_only_if_offline
from ftbench.progress import Work
from ftbench.tasks import generate
from ftbench.tasks.answers import AnswerRule
from ftbench.tasks.base import EvalContext, Example, Task, batched, read_text
from ftbench.tasks.config import InstructConfig

log = logging.getLogger(__name__)

_ALPACA_HEAD = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
_ALPACA_INPUT_HEAD = ("Below is an instruction that describes a task, paired with an input that provides further "
                      "context. Write a response that appropriately completes the request.")
_PAD_LINE = " " * 16  # the indented blank line of the LLM-Adapters training prompt


@dataclass(frozen=True)
class Template:
    """A prompt format: training and evaluation prompts (with and without an input) and
    what goes between the output and EOS."""

    source: str
    train: str
    train_with_input: str
    eval: str
    eval_with_input: str
    answer_suffix: str

    def prompt(self, row: dict, training: bool) -> str:
        has_input = bool(row.get("input"))
        if training:
            text = self.train_with_input if has_input else self.train
        else:
            text = self.eval_with_input if has_input else self.eval
        return text.format_map({"instruction": row["instruction"], "input": row.get("input", "")})

    def describe(self) -> dict[str, str]:
        return {"source": self.source, "train_prompt": self.train, "eval_prompt": self.eval,
                "target": "{output}" + self.answer_suffix + "<EOS>", "prefix": "BOS id (see tasks/instruct.py)"}


_STANFORD = f"{_ALPACA_HEAD}\n\n### Instruction:\n{{instruction}}\n\n### Response:"
_STANFORD_INPUT = f"{_ALPACA_INPUT_HEAD}\n\n### Instruction:\n{{instruction}}\n\n### Input:\n{{input}}\n\n### Response:"
TEMPLATES: dict[str, Template] = {
    # Stanford Alpaca train.py (used by SIFT): one prompt for training and evaluation; target = output + EOS.
    "alpaca": Template("Stanford Alpaca train.py PROMPT_DICT", _STANFORD, _STANFORD_INPUT, _STANFORD,
                       _STANFORD_INPUT, answer_suffix=""),
    # S2FT/LLM-Adapters: the training prompt has two spaces after "request." and an indented blank line;
    # the evaluation prompt has one space and no such line. Target = output + " " + EOS.
    "llm-adapters": Template(
        "S2FT experiments/utils/data_utils.py (train) and experiments/eval/run_*_parallel.py (eval)",
        train=f"{_ALPACA_HEAD}  \n\n### Instruction:\n{{instruction}}\n{_PAD_LINE}\n### Response:\n",
        train_with_input=(f"{_ALPACA_HEAD}  \n\n### Instruction:\n{{instruction}}\n\n### Input:\n{{input}}\n"
                          f"{_PAD_LINE}\n### Response:\n"),
        eval=f"{_ALPACA_HEAD} \n\n### Instruction:\n{{instruction}}\n\n### Response:\n",
        eval_with_input=f"{_ALPACA_HEAD} \n\n### Instruction:\n{{instruction}}\n\n### Input:\n{{input}}\n\n### Response:\n",
        answer_suffix=" "),
}


def special_ids(tokenizer) -> tuple[list[int], int]:
    """([BOS] or [], EOS) of a tokenizer; generation and training targets need an EOS."""
    if tokenizer is None or tokenizer.eos_token_id is None:
        raise UserError("model.tokenizer", "generative tasks need a tokenizer with an end-of-sequence token")
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    return bos, tokenizer.eos_token_id


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    bos, _ = special_ids(tokenizer)
    return [bos + ids for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []


def encode_pairs(tokenizer, prompts: list[str], targets: list[str], max_length: int,
                 train_on_input: bool) -> tuple[list[Example], int]:
    """Token ids and labels of prompt+target+EOS, truncated to max_length; labels are -100 over
    BOS+prompt unless train_on_input. Returns (examples, dropped): an example whose target was cut
    off entirely carries no loss and is dropped."""
    if not prompts:
        return [], 0
    bos, eos = special_ids(tokenizer)
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer([p + t for p, t in zip(prompts, targets)], add_special_tokens=False)["input_ids"]
    examples, dropped = [], 0
    for prompt, full in zip(prompt_ids, full_ids):
        ids = (bos + full + [eos])[:max_length]
        masked = len(bos) + len(prompt)
        if masked >= len(ids) and not train_on_input:
            dropped += 1
            continue
        labels = list(ids) if train_on_input else [IGNORE_INDEX] * masked + ids[masked:]
        examples.append({"input_ids": ids, "labels": labels})
    return examples, dropped


def read_json_rows(path: Path, key: str = "task.data_dir") -> list[dict]:
    """A JSON list of objects, or JSON Lines (one object a line).

    Raises UserError on `key` naming the file, the place of a syntax error and the fix, or the first record
    that names a field twice (file:line and the count: JSON keeps the last silently, so which text the
    record holds would be a guess)."""
    text = read_text(path, key)
    repeated: list[tuple[dict, str]] = []  # every object that names a key twice, and that key
    hook = functools.partial(unique_keys, repeated=repeated)
    try:
        rows = json.loads(text, object_pairs_hook=hook)
    except json.JSONDecodeError as whole:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if text.lstrip().startswith("[") or len(lines) < 2:  # meant as one JSON document
            raise UserError(key, f"{path}: invalid JSON at line {whole.lineno} column {whole.colno} "
                            f"({whole.msg}); fix the file (python -m json.tool {path.name} shows where)") from whole
        repeated.clear()  # the whole text's objects up to its error: the lines are read again below
        rows = []
        for number, line in lines:
            try:
                rows.append(json.loads(line, object_pairs_hook=hook))
            except json.JSONDecodeError as exc:
                raise UserError(key, f"{path}: line {number} is not a JSON object ({exc.msg}); give a "
                                "JSON list of objects or JSON Lines (one object a line)") from exc
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise UserError(key, f"{path} must hold a list of objects, one per example "
                        "(e.g. [{\"instruction\": ..., \"output\": ...}])")
    twice = {id(obj): name for obj, name in repeated}
    bad = [(index, twice[id(row)]) for index, row in enumerate(rows) if id(row) in twice]
    if bad:
        index, name = bad[0]
        count = f" ({len(bad)} of {len(rows)} records do)" if len(bad) > 1 else ""
        raise UserError(key, f"{path}:{record_line(path, index)}: record {index + 1} names the field {name!r} more "
                        f"than once{count}; JSON keeps the last silently: keep one")
    return rows


def unique_keys(pairs: list[tuple[str, Any]], repeated: list[tuple[dict, str]]) -> dict:
    """json's object_pairs_hook: the object, noted in `repeated` with the first key it names twice."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        names = [name for name, _ in pairs]
        repeated.append((obj, next(name for name in names if names.count(name) > 1)))
    return obj


def require_keys(rows: list[dict], keys: tuple[str, ...], where: Path | str, key: str = "task.data_dir",
                 gold: AnswerRule | None = None) -> list[dict]:
    """`rows` checked in place: each has the text `keys`, an 'instruction' not empty, and an optional `input`
    as text (null is read as empty); with `gold` (the set's answer rule) an 'answer' that rule can judge (one
    stored as a JSON number becomes its text). An empty `input` or `output` is accepted: no input is the
    common case, and an empty output is a target of the EOS alone (the public Alpaca and Math10K releases
    hold a few). Raises UserError naming the first bad record (file:line when `where` is a local file), its
    field and what is wrong, how many records have such a problem, and the fix."""
    if not rows:
        raise UserError(key, f"{where} holds no examples")
    bad = [(index, problem) for index, row in enumerate(rows)
           if (problem := record_problem(row, keys, gold)) is not None]
    if not bad:
        return rows
    index, what = bad[0]
    line = record_line(where, index) if isinstance(where, Path) else None
    place = f"{where}:{line}" if line else str(where)
    count = f" ({len(bad)} of {len(rows)} records have such a problem)" if len(bad) > 1 else ""
    answer = f" (answer: {gold.gold})" if gold is not None else ""
    raise UserError(key, f"{place}: record {index + 1} {what}{count}; give every record the text fields "
                    f"{', '.join(keys)}{answer}")


def record_problem(row: dict, keys: tuple[str, ...], gold: AnswerRule | None) -> str | None:
    """What is wrong with one record's fields, e.g. "has 'output' of type int, not text" (None: nothing)."""
    if row.get("input", "") is None:  # "input": null in Alpaca-style data means no input
        row["input"] = ""
    answer = row.get("answer")
    if gold is not None and isinstance(answer, (int, float)) and not isinstance(answer, bool):
        row["answer"] = str(answer)  # an answer stored as 42 is the text "42" the rule reads
    for field in (*keys, "input"):
        if field not in row:
            if field in keys:
                return f"has no '{field}' field (it has: {', '.join(sorted(row))})"
            continue
        value = row[field]
        if value is None:
            return f"has '{field}': null"
        if not isinstance(value, str):
            return f"has '{field}' of type {type(value).__name__}, not text"
        if field == "instruction" and not value.strip():  # the prompt would ask nothing
            return "has an empty 'instruction'"
        if field == "answer" and gold is not None and not gold.accepts(value):
            return f"has 'answer' {value[:40]!r}, not {gold.gold}"
    return None


def record_line(path: Path, index: int) -> int | None:
    """The line on which record `index` (from 0) of a JSON list or JSON Lines file starts (None: not found)."""
    text = read_text(path)
    if not text.lstrip().startswith("["):  # JSON Lines: one record a non-blank line
        lines = [number for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        return lines[index] if index < len(lines) else None
    decoder, gap = json.JSONDecoder(), re.compile(r"[\s,]*")
    position = text.index("[") + 1
    for _ in range(index):
        position = decoder.raw_decode(text, gap.match(text, position).end())[1]
    return text.count("\n", 0, gap.match(text, position).end()) + 1


def resolve_files(folder: Path, patterns: list[str]) -> list[Path]:
    """The files of the first pattern that matches a file (a list of alternatives, best first). Raises
    UserError on task.train_files when none does: naming what a pattern matches instead (a folder by the
    file's name), else what the folder holds."""
    for pattern in patterns:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if found:
            return found
    other = next((p for pattern in patterns for p in sorted(folder.glob(pattern))), None)
    if other is not None:
        raise UserError("task.train_files", f"'{other}' {kind_problem(other, 'file')}; name the training files, "
                        f"e.g. task.train_files='[my_train.json]'")
    present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise UserError("task.train_files", f"none of {list(patterns)} matches a file in {folder} (it holds: {present}); "
                    f"name the training files, e.g. task.train_files='[my_train.json]'")


def load_remote_rows(key: str, what: str, fix: str, *args, **kwargs) -> list[dict]:
    """Rows of a hub data set (or a JSON URL through `datasets`); one clear line when it cannot be had."""
    import datasets

    use_cache_only_if_offline()
    try:
        data = datasets.load_dataset(*args, split="train", **kwargs)
    except Exception as exc:  # no network, no cache, a hub error: say so in one line
        raise hub_error(key, what, exc, fix) from exc
    return [dict(row) for row in data]


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, examples: list[Example], ctx: EvalContext, collate) -> float:
    """Mean loss per target token over `examples` (the training objective, on held-out data)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with Work("held-out loss", len(examples), "examples", ctx.progress) as work:
        for chunk in batched(examples, ctx.batch_size):
            batch = collate(chunk, ctx.pad_to_multiple_of)
            count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            with ctx.autocast():
                loss = model(**to_device(batch, ctx.device)).loss
            total += float(loss) * count
            tokens += count
            work.advance(len(chunk))
    model.train(was_training)
    return total / max(tokens, 1)


class InstructTask(Task):
    """Instruction/response pairs: a template, masked targets, a held-out split for the validation loss.
    Subclasses say where the training rows come from and how the model is scored."""

    head = "causal_lm"

    def __init__(self, cfg: InstructConfig, tokenizer, seed: int):
        super().__init__(cfg, tokenizer, seed)
        special_ids(tokenizer)
        self.template = TEMPLATES[cfg.template]
        self.sources: list[str] = []
        rows = self.training_rows()
        random.Random(seed).shuffle(rows)
        if cfg.val_size >= len(rows):
            raise UserError("task.val_size", f"{cfg.val_size} held-out examples leave none of the {len(rows)} "
                            "to train on; lower it")
        self.val_rows, train_rows = rows[:cfg.val_size], rows[cfg.val_size:]
        self.train, dropped = self.encode_rows(train_rows)
        self.val, dropped_val = self.encode_rows(self.val_rows)
        self.dropped = dropped + dropped_val
        if self.dropped:
            log.warning("%d examples dropped: their prompt fills task.max_length=%d", self.dropped, cfg.max_length)

    def check_sets(self) -> None:
        super().check_sets()
        cfg = self.cfg
        if self.val_rows and not self.val:
            raise UserError("task.max_length", f"all {len(self.val_rows)} held-out examples (task.val_size="
                            f"{cfg.val_size}) have prompts of {cfg.max_length} tokens or more and are dropped; raise "
                            "task.max_length or task.val_size")

    @abstractmethod
    def training_rows(self) -> list[dict]:
        """Rows with instruction, input (optional) and output; record where they came from in self.sources."""

    def encode_rows(self, rows: list[dict]) -> tuple[list[Example], int]:
        prompts = [self.template.prompt(row, training=True) for row in rows]
        targets = [row["output"] + self.template.answer_suffix for row in rows]
        return encode_pairs(self.tokenizer, prompts, targets, self.cfg.max_length, self.cfg.train_on_input)

    def train_examples(self) -> list[Example]:
        return self.train

    def validation_metrics(self) -> list[str]:
        if not self.val:
            raise UserError("task.val_size", f"task {self.cfg.name} holds out no validation examples; "
                            "set task.val_size=N (e.g. 120) to validate on N training examples")
        return ["val/loss"]

    def validate(self, model, ctx: EvalContext) -> dict[str, float]:
        """The held-out loss: the cheap periodic signal for checkpoint selection."""
        self.validation_metrics()
        examples = self.val[: ctx.max_samples] if ctx.max_samples is not None else self.val
        return {"val/loss": heldout_loss(model, examples, ctx, self.collate)}

    def decoding(self, ctx: EvalContext) -> generate.Decoding:
        return generate.Decoding.resolve(ctx, self.cfg)

    def protocol(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"template": {"name": cfg.template, **self.template.describe()},
                "train_on_input": cfg.train_on_input, "max_length": cfg.max_length, "padding": "right, dynamic",
                "pad_token": "the tokenizer's (EOS for LLaMA); the S2FT scripts add [PAD] and resize the vocab",
                "sources": self.sources, "train_examples": len(self.train), "val_examples": len(self.val),
                "dropped_too_long": self.dropped,
                "decoding_default": {"num_beams": cfg.num_beams, "max_new_tokens": cfg.max_new_tokens,
                                     "min_new_tokens": cfg.min_new_tokens, "sampling": False,
                                     "overridden_by": "eval.num_beams, eval.max_new_tokens"}}


class AlpacaTask(InstructTask):
    """Alpaca instruction tuning. Scored by held-out loss and perplexity (the papers' MT-Bench and
    MMLU need a judge model or another data set); a few held-out responses are generated for reading."""

    def training_rows(self) -> list[dict]:
        cfg = self.cfg
        keys = ("instruction", "output")
        if cfg.data_dir is None:
            self.sources = [cfg.hub_id]
            rows = load_remote_rows("task.data_dir", cfg.hub_id, "download the Alpaca JSON and set task.data_dir=DIR",
                                    cfg.hub_id)
            return require_keys(rows, keys, cfg.hub_id, key="task.hub_id")
        rows = []
        for path in resolve_files(Path(cfg.data_dir).expanduser(), list(cfg.train_files)):
            self.sources.append(str(path))
            found = require_keys(read_json_rows(path), keys, path)
            if all("answer" in row for row in found):  # Alpaca records are instruction, input, output
                raise UserError("task.data_dir", f"{path}: every record has an 'answer' field: the LLM-Adapters "
                                "format of task=math and task=commonsense, not Alpaca's (instruction, input, output); "
                                "set the task of that data, or give task.data_dir the Alpaca folder")
            rows += found
        return rows

    def evaluate(self, model, ctx: EvalContext) -> dict[str, float]:
        metrics = self.validate(model, ctx)
        metrics["val/ppl"] = math.exp(metrics["val/loss"])
        chosen = self.val_rows[: self.cfg.generate_samples]
        if chosen:
            decoding = self.decoding(ctx)
            prompts = [generate.Prompt("val", row["instruction"], ids) for row, ids in
                       zip(chosen, encode_prompts(self.tokenizer, [self.template.prompt(r, False) for r in chosen]))]
            throughput = generate.Throughput()
            outputs = generate.complete(model, self.tokenizer, prompts, ctx, decoding, throughput)
            generate.write_jsonl(ctx.output_dir / generate.GENERATIONS_FILE, [
                {"set": "val", "index": i, "question": row["instruction"], "input": row.get("input", ""),
                 "output": out, "reference": row["output"]} for i, (row, out) in enumerate(zip(chosen, outputs))])
            metrics.update({**throughput.metrics(), **decoding.metrics()})
        return metrics

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), "metrics": "held-out loss per target token and its perplexity",
                "generated_for_reading": self.cfg.generate_samples, "checkpoint_selection": "last (1 or 3 epochs)"}

"""The task contract: examples in, metrics out. A task tokenizes its data once,
collates micro-batches with dynamic padding and scores a model on its eval sets."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ftbench.engine.batches import Example
from ftbench.errors import UserError
from ftbench.models.architecture import IGNORE_INDEX
from ftbench.tasks.config import TaskConfig


@dataclass
class EvalContext:
    """What a task needs to score a model."""

    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    batch_size: int
    max_samples: Optional[int]
    output_dir: Path
    pad_to_multiple_of: Optional[int]
    num_beams: Optional[int] = None
    max_new_tokens: Optional[int] = None
    progress: bool = True  # a bar on a terminal, else a log line every 30 s (progress.py)


class Task(ABC):
    """A tokenized data set with its collator and evaluator."""

    head: str = "seq_cls"
    num_labels: int = 2
    needs_tokenizer: bool = True
    # The token every batch's sequences end with: an encoder-decoder classifier's eos (BART's and T5's
    # heads read the state at it and refuse a sequence without one), set by the preflight
    # (job/preflight.py) once the model's config is known; None when the model needs none.
    closing_id: Optional[int] = None

    def __init__(self, cfg: TaskConfig, tokenizer, seed: int):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.seed = seed
        self.pad_id = 0 if tokenizer is None else tokenizer.pad_token_id

    @property
    def metric(self) -> str:
        """The headline metric key, e.g. 'dev/mcc'."""
        return self.cfg.metric

    @abstractmethod
    def train_examples(self) -> list[Example]:
        """Tokenized training examples: dicts with input_ids (and labels)."""

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        """Score the model on every eval set: {"<split>/<name>": value}. Runs once, at the end."""

    def validate(self, model: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        """The periodic evaluation used to pick the best checkpoint (default: the full evaluation).
        Tasks whose evaluation is expensive (generation) return a cheap validation loss here."""
        return self.evaluate(model, ctx)

    def check_sets(self) -> None:
        """Raise UserError when truncation to task.max_length emptied a set (build_task calls it): an
        example whose prompt fills it has no room for its answer and is dropped (instruct.encode_pairs)."""
        if not self.train_examples():
            raise UserError("task.max_length", f"every training prompt fills the {self.cfg.max_length} tokens of "
                            "task.max_length, leaving no room for its answer; raise task.max_length")

    def validation_metrics(self) -> list[str] | None:
        """The keys `validate` returns, known before training (None: known only once it runs).
        Raises UserError when the task has nothing to validate on."""
        return None

    def protocol(self) -> dict[str, Any]:
        """Choices that move the numbers (recorded in result.json)."""
        return {}

    def collate(self, examples: list[Example], pad_to_multiple_of: Optional[int] = None) -> dict[str, torch.Tensor]:
        """One padded batch; a sequence that does not end with `closing_id` (when set) gets it appended
        (the preflight left a position for it)."""
        closing = self.closing_id
        if closing is not None:
            examples = [e if e["input_ids"][-1:] == [closing] else {**e, "input_ids": [*e["input_ids"], closing]}
                        for e in examples]
        return pad_collate(examples, self.pad_id, pad_to_multiple_of)


def pad_collate(examples: list[Example], pad_id: int, pad_to_multiple_of: Optional[int] = None,
                padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest example (dynamic padding); sequence labels pad with -100."""
    longest = max(len(e["input_ids"]) for e in examples)
    if pad_to_multiple_of:
        longest = math.ceil(longest / pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    token_labels = "labels" in examples[0] and isinstance(examples[0]["labels"], list)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long) if token_labels else None
    for row, example in enumerate(examples):
        ids = example["input_ids"]
        span = slice(longest - len(ids), longest) if padding_side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, span] = 1
        if token_labels:
            labels[row, span] = torch.tensor(example["labels"], dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_labels:
        batch["labels"] = labels
    elif "labels" in examples[0]:
        values = [e["labels"] for e in examples]
        dtype = torch.float32 if isinstance(values[0], float) else torch.long
        batch["labels"] = torch.tensor(values, dtype=dtype)
    return batch


def read_text(path: Path, key: str = "task.data_dir") -> str:
    """A data file's text: UTF-8, with or without a byte-order mark (UTF-16 files with a BOM too).

    Raises UserError naming the file, what is wrong and the fix: unreadable, empty, not UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(key, f"{path}: cannot be read ({exc.strerror or exc}); check the path and its permissions") from exc
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"  # drops a UTF-8 byte-order mark (Excel, Notepad)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UserError(key, f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save it as UTF-8, "
                        f"e.g. iconv -f latin1 -t utf-8 {path.name} > fixed_{path.name}") from exc
    if not text.strip():
        raise UserError(key, f"{path}: the file is empty; give the data file itself (was it fully downloaded?)")
    return text


def batched(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]



"""A checkpoint's tensors that do not fit the model its config describes (models/loading.py `load_model`), in
words: the tensor, its shape in the checkpoint and in the model, and the config field that sized it wrong where
one is found (a field config.json leaves out takes the family's default: LLaMA's vocab_size 32000 against an
embedding of 300 rows), with the fix. transformers only logs its own table of them and raises a line that
points at it ("look at the above report"), or, told to ignore them, starts those tensors at random.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftbench.config.folders import CONFIG


def mismatch_problem(config, source: str, mismatched: dict, order: list[str]) -> str:
    """Why the checkpoint at `source` does not fit the model `config` builds: `mismatched` maps each tensor that
    differs to its (checkpoint, model) shapes; the first in the model's `order` (its state_dict's keys) is named,
    with the count of the others, and the field of `config` whose value is the model's size where the shapes
    differ (one config.json leaves out first: its family's default was taken)."""
    name = min(mismatched, key=lambda k: order.index(k) if k in order else len(order))
    ckpt, model = (list(shape) for shape in mismatched[name])
    more = len(mismatched) - 1
    found = (f"the checkpoint's {name} is {ckpt} against the model's {model}"
             + (f" (and {more} more tensor{'s' if more > 1 else ''})" if more else ""))
    differs = [(c, m) for c, m in zip(ckpt, model) if c != m] if len(ckpt) == len(model) else []
    if len(differs) != 1:
        return f"{found}; fix its config.json's sizes to the checkpoint's, or give a folder written by save_pretrained"
    want, have = differs[0]
    given = given_fields(source, config)
    values = config.to_dict()
    fields = sorted((k for k, v in values.items() if type(v) is int and v == have), key=lambda k: k in given)
    if not fields:
        return f"{found}; fix its config.json's sizes to the checkpoint's, or give a folder written by save_pretrained"
    field = fields[0]
    said = (f"its config.json sets {field} {have}" if field in given else
            f"its config.json sets no {field}, so the {config.model_type} default {have} is taken")
    return f"{said}, but {found}; write \"{field}\": {want} in its config.json"


def given_fields(source: str, config) -> set[str]:
    """The fields the checkpoint's config.json sets: a local folder's file, else (a hub id) those that differ
    from the family's defaults."""
    try:
        return set(json.loads((Path(source) / CONFIG).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return set(config.to_diff_dict())

"""The model, its tokenizer, the task and its data, checked against each other before any
weight loads or any step runs.

`inputs(cfg)` reads the model's architecture config (config.json only, or the named shape for
random init), builds the tokenizer and the task, and compares them. What has one sensible
answer is settled with one log line; the rest ends the run with a `UserError` naming the key.
The head is checked first, before the tokenizer is built: a model that cannot do the task is
the root cause of every later mismatch (an encoder's tokenizer has no EOS for generation).

| check                                        | settled (one log line)                | refused (exit 2)                        |
| -------------------------------------------- | ------------------------------------- | --------------------------------------- |
| model.path / model.package vs random_init     | the given folder is loaded            |                                         |
| the head the task needs vs the architecture  |                                       | model.path (or hub_id, shape.model_type) |
| pad token (pad, else eos, else unk)          | random init: a `<pad>` token is added | a checkpoint: model.tokenizer           |
| an encoder-decoder classifier's eos vs its tokenizer's | random init: the shape takes the tokenizer's eos (`</s>` added to one with none) | a checkpoint: model.tokenizer, both ids |
| an encoder-decoder classifier's pad is its eos | random init: a `<pad>` token is added | a checkpoint: model.tokenizer (task=synthetic: the model's key) |
| token ids vs embedding rows (mode=profile: model.tokenizer's) | random init: rows sized to the ids | a checkpoint: model.tokenizer, both sizes |
| task.max_length vs the position table        | random init: table sized to it; a checkpoint: cut to the table | a knob held to it left above the cut: its key (task.min_length) |
| an encoder-decoder classifier's eos          | appended to each sequence without it (Task.closing_id), a position kept for it | none in its config: model.path (shape.eos_token_id) |
| max_new_tokens vs the position table         | random init: table holds task.max_length + it; longer prompts: cut from the left when generating | a checkpoint: its key, when it fills the table |
| profile.seq_len vs the position table        | random init: table sized to it        | a checkpoint: profile.seq_len           |
| (a plan: its profile run's checks, against the model it plans: `planned_model`) | | (the same keys)   |
| held-out set, decoding lengths, selection    |                                       | task.*, train.select_metric             |
"""

from __future__ import annotations

import logging
from copy import deepcopy
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ftbench.config.knobs import decoding as decoding_knobs
from ftbench.errors import UserError
from ftbench.models.architecture import closing_token
from ftbench.models.fit import check_head, check_profiled, fit_vocab, profile_head
from ftbench.models.loading import (
    architecture_config,
    describe,
    local_source,
    pretrained_config,
    settle_source,
    source_key,
)
from ftbench.models.positions import fit_positions
from ftbench.models.tokenizer import load_tokenizer
from ftbench.tasks import build_task, task_class
from ftbench.tasks.base import Task
from ftbench.tasks.generate import Decoding

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """What the model is built for: the checked tokenizer and task, the head and label count, the pad
    id, and for random init the config values that size the shape to the inputs (vocab, positions)."""

    tokenizer: Any
    task: Task | None
    head: str
    num_labels: int
    pad_id: int
    shape_overrides: dict[str, int] = field(default_factory=dict)


def settle(cfg) -> None:
    """Settle in place the config values a run decides from the model before it loads it, each change with one
    log line (a second call changes nothing): model.random_init (false when model.path or model.package names
    the weights) and a checkpoint's task.max_length (cut to its position table, less the position of an
    encoder-decoder classifier's closing eos). A run records its config so settled (result.json, checkpoints),
    so an earlier run in its folder is compared with this one settled too (rerun.decide). What the model
    cannot do is left for `inputs` to refuse."""
    settle_source(cfg.model)
    if cfg.mode != "train" or cfg.model.random_init:
        return
    try:
        config = pretrained_config(cfg.model)
        closing = closing_token(config, task_class(cfg.task.family).head)
        fit_positions(cfg, config, "task.max_length", answer_length(cfg), closing=int(closing is not None))
    except UserError:
        return


# The modules whose log lines say what `settle` changed (models/loading.py, models/positions.py).
SETTLING_LOGGERS = ("ftbench.models.loading", "ftbench.models.positions")


def settled(cfg) -> DictConfig:
    """A copy of `cfg` as `settle` leaves it, without its log lines (the job logs them as it settles its own
    config): what a folder's earlier run recorded is compared with it (rerun.decide)."""
    copy = deepcopy(cfg)
    loggers = [logging.getLogger(name) for name in SETTLING_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        settle(copy)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return copy


def inputs(cfg) -> Inputs:
    """Tokenizer and task built and checked against the model's config; raises UserError (see the table above).

    May settle two config values in place, each with a log line: model.random_init (false when
    model.path or model.package names the weights) and task.max_length (cut to the table): `settle`."""
    asked = cfg.task.max_length if cfg.mode == "train" else None  # before settle cuts it (cut_length_refusal)
    settle(cfg)
    config = model_config(cfg.model)
    if cfg.mode == "profile":
        return Inputs(None, None, profile_head(cfg), 2, 0, check_profiled(cfg, config))
    family = task_class(cfg.task.family)
    check_head(cfg.model, config, family.head)  # the model first: a wrong model is the root cause of the rest
    tokenizer = load_tokenizer(cfg.model) if family.needs_tokenizer else None
    closing = closing_token(config, family.head)
    overrides = {}
    if tokenizer is not None:
        overrides = settle_eos(cfg.model, tokenizer, closing)
        closing = overrides.get("eos_token_id", closing)
        ensure_pad(cfg.model, tokenizer, closing)
    overrides.update(fit_positions(cfg, config, "task.max_length", answer_length(cfg),
                                   closing=int(closing is not None)))
    require_held_to_cut(cfg, asked)
    try:
        task = build_task(cfg.task, tokenizer, cfg.seed)
    except UserError as exc:
        raise cut_length_refusal(exc, asked, cfg) from exc
    if task.head != family.head:  # a head that depends on the data set (GLUE's STS-B: regression)
        check_head(cfg.model, config, task.head)
    if closing is not None and task.pad_id == closing:  # a task that speaks token ids pads with its own id
        raise UserError("model.shape.eos_token_id" if cfg.model.random_init else source_key(cfg.model),
                        f"{describe(cfg.model)} ends each sequence with eos id {closing}, the id task={cfg.task.name} "
                        "pads with: its classification head reads the one eos of each sequence; give a model whose "
                        f"eos_token_id is not {closing}")
    task.closing_id = closing
    overrides.update(fit_vocab(cfg.model, config, tokenizer, task))
    check_plan(cfg, task)
    return Inputs(tokenizer, task, task.head, task.num_labels, task.pad_id, overrides)


def require_held_to_cut(cfg, asked: int | None) -> None:
    """The task's own checks again once the position table cut task.max_length (from `asked`: settle): a knob
    held to task.max_length (task.min_length) that the cut left above it is refused on its key (as though the
    user set it alone: the cut, not the user, set task.max_length), the cut said, with the fix the cut leaves."""
    cut = cfg.task.max_length
    if asked is None or cut >= asked:
        return
    try:
        task = OmegaConf.to_object(cfg.task)
        task.check("task")
        task.check_given("task", {"task.min_length"})
    except UserError as exc:
        what = exc.reason.split("; ")[0]  # the task's finding, without its advice on task.max_length
        raise UserError(exc.key, f"{what}, and task.max_length={asked} was cut to the {cut} positions of "
                        f"{describe(cfg.model)}; give a {exc.key} that fits {cut} tokens, or a model with a longer "
                        "position table") from exc


def cut_length_refusal(exc: UserError, asked: int, cfg) -> UserError:
    """A task's refusal on task.max_length, told that the position table cut it (raising it cannot help)."""
    cut = cfg.task.max_length
    if exc.key != "task.max_length" or cut >= asked:
        return exc
    what = exc.reason.split("; ")[0]  # the task's finding, without its advice to raise task.max_length
    return UserError("task.max_length", f"{what}: task.max_length={asked} was cut to the {cut} positions of "
                     f"{describe(cfg.model)}; use shorter examples or a model with a longer position table")


def model_config(mcfg):
    """The architecture config: the named shape for random init, else the checkpoint's config.json."""
    return architecture_config(mcfg) if mcfg.random_init else pretrained_config(mcfg)


def answer_length(cfg) -> tuple[str, int] | None:
    """(the key that sets it, max_new_tokens) of a generative task; None for a task that does not generate."""
    if not OmegaConf.to_object(cfg.task).generates():
        return None
    return decoding_knobs(cfg.eval.num_beams, cfg.eval.max_new_tokens, cfg.task)["max_new_tokens"]


def settle_eos(mcfg, tokenizer, closing: int | None) -> dict[str, int]:
    """`closing`, an encoder-decoder classifier's eos_token_id, is where its head reads the state of each sequence
    (transformers' BART, mBART and T5 classifiers count `input_ids == config.eos_token_id`), so no text may hold
    it: it must be the tokenizer's eos. A tokenizer with none, or with another, gives that id to a token of text
    (a `"`, its unk). A random-init shape takes the tokenizer's eos (`</s>` added to a tokenizer with none), one
    log line: {"eos_token_id": its id}; a checkpoint is refused on model.tokenizer, naming both ids. {} when
    they agree or the model reads no eos."""
    if closing is None or tokenizer.eos_token_id == closing:
        return {}
    held = tokenizer.convert_ids_to_tokens(closing) if closing < len(tokenizer) else None
    as_text = f"{held!r} in the tokenizer" if held is not None else "past the tokenizer's tokens"
    if mcfg.random_init:  # no checkpoint to keep: the shape's eos is the tokenizer's
        added = tokenizer.eos_token is None
        if added:
            tokenizer.add_special_tokens({"eos_token": "</s>"})
        log.warning("model.shape.eos_token_id %d is %s, not its eos: set to the tokenizer's eos %s (id %d%s), the "
                    "one token of each sequence the encoder-decoder's classification head reads", closing, as_text,
                    tokenizer.eos_token, tokenizer.eos_token_id, ", added" if added else "")
        return {"eos_token_id": tokenizer.eos_token_id}
    where = mcfg.tokenizer or local_source(mcfg) or mcfg.hub_id
    has = "no eos token" if tokenizer.eos_token is None else f"eos {tokenizer.eos_token} (id {tokenizer.eos_token_id})"
    own = " (the model's own: model.tokenizer=null)" if mcfg.tokenizer else ""
    raise UserError("model.tokenizer", f"the tokenizer of {where} has {has}, but {describe(mcfg)} reads each "
                    f"sequence's class at its eos_token_id {closing} ({as_text}): the encoder-decoder's "
                    f"classification head needs the one eos of each sequence, which no text may hold; give a "
                    f"tokenizer whose eos is id {closing}{own}")


def ensure_pad(mcfg, tokenizer, closing: int | None) -> None:
    """Batches are padded with the tokenizer's pad token (load_tokenizer falls back to eos, then unk), which
    must not be `closing`, an encoder-decoder classifier's eos: its head reads the state at the one eos of
    each sequence and refuses a batch whose sequences hold different counts of it."""
    clash = closing is not None and tokenizer.pad_token_id == closing
    if tokenizer.pad_token is not None and not clash:
        return
    lacks = (f"pads with its eos ({tokenizer.pad_token}, id {closing}), which the encoder-decoder's classification "
             "head reads once per sequence" if clash else "has no pad, eos or unk token")
    if mcfg.random_init:  # no checkpoint to keep: the embedding is sized to the tokenizer afterwards
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
        log.warning("model.tokenizer %s: added <pad> (id %d) for the random-init model", lacks,
                    tokenizer.pad_token_id)
        return
    where = mcfg.tokenizer or local_source(mcfg) or mcfg.hub_id
    fix = ("a pad token other than its eos (set tokenizer.pad_token and save_pretrained; the model's embedding "
           "needs a row for a token added)" if clash else "one (set tokenizer.pad_token and save_pretrained)")
    raise UserError("model.tokenizer", f"the tokenizer of {where} {lacks}, so batches cannot be padded; give a "
                    f"tokenizer that defines {fix}")


def check_plan(cfg, task: Task) -> None:
    """What would otherwise fail after training: decoding lengths and checkpoint selection."""
    if hasattr(task.cfg, "min_new_tokens"):
        Decoding.resolve(SimpleNamespace(num_beams=cfg.eval.num_beams, max_new_tokens=cfg.eval.max_new_tokens),
                         task.cfg)
    if cfg.eval.every_steps is None and cfg.train.select != "best":
        return
    keys = task.validation_metrics()  # raises when the task has nothing to validate on
    metric = cfg.train.select_metric or task.metric
    if cfg.train.select == "best" and keys is not None and metric not in keys:
        key = "train.select_metric"
        raise UserError(key, f"'{metric}' is not a validation metric of task {task.cfg.name}; train.select=best "
                        f"needs one of: {', '.join(keys)} (or train.select=last)")

"""The model against what a run asks of it, read from its config before any weight loads: the head the
run trains (`check_head`), the embedding rows against the tokens (`fit_vocab`), and for a profile run and
its plan both with the position table (`check_profiled`, `planned_model`). The run's preflight
(job/preflight.py) and the planner (plan/planner.py) share them, so a plan refuses what its run refuses; a plan,
which loads no weights, also holds a folder's config to its weight files' shapes (`check_weights`), as the run's
load does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ftbench.errors import UserError
from ftbench.models.architecture import closing_token
from ftbench.models.loading import (
    architecture_config,
    auto_class,
    config_shape,
    describe,
    local_source,
    pretrained_config,
    refused_as_load,
    settle_source,
    source_key,
)
from ftbench.models.mismatch import (
    body_mismatches,
    check_depths,
    checkpoint_shapes,
    mismatch_error,
    shapes_against,
)
from ftbench.models.positions import fit_positions
from ftbench.models.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


def profile_head(cfg) -> str:
    """The head a profile run (and its plan) trains: profile.objective, else (auto) the model group's kind's."""
    if cfg.profile.objective != "auto":
        return cfg.profile.objective
    return "causal_lm" if cfg.model.kind == "decoder" else "seq_cls"


def check_profiled(cfg, config) -> dict[str, int]:
    """What a profile run checks of its model, and a plan of the same run (`planned_model`): the head against
    the architecture, profile.seq_len against the position table (fit_positions), and a model.tokenizer given
    against the embedding (fit_vocab: the embedding the run would train); the random-init overrides returned."""
    check_head(cfg.model, config, profile_head(cfg))
    overrides = fit_positions(cfg, config, "profile.seq_len")
    if cfg.model.tokenizer:
        overrides.update(fit_vocab(cfg.model, config, load_tokenizer(cfg.model), None))
    return overrides


def planned_model(cfg) -> None:
    """What a plan (mode=plan) settles before its probes: the model it plans, checked as its profile run checks
    it (`check_profiled`: the same refusals, on the same keys). A folder the user names (model.path,
    model.package: its config.json, read locally) is planned as a run loads it, its config written into
    model.shape (the probes build that shape at random init, `config_shape`), once its weight files' shapes are
    found to fit it (`check_weights`); else model.shape (a plan
    downloads nothing). A random-init shape's position table is sized to profile.seq_len in place (model.shape)."""
    mcfg = cfg.model
    settle_source(mcfg)
    local = not mcfg.random_init and bool(mcfg.path or mcfg.package)
    config = pretrained_config(mcfg) if local else architecture_config(mcfg)
    rows = check_profiled(cfg, config)
    if local:
        check_weights(mcfg, config, profile_head(cfg))
        mcfg.shape = config_shape(config)
    for name, value in rows.items():
        mcfg.shape[name] = value


def check_weights(mcfg, config, head: str) -> None:
    """Refuse the folder of model.path / model.package whose weight files (their headers: mismatch.py
    `checkpoint_shapes`, no data read) hold a tensor of another shape than the model `config` builds under `head`
    (on the meta device), with the line its run's load gives (`body_mismatches`, `mismatch_error`: a classifier's
    head of another size is replaced, not refused), or another number of layers than the config sets
    (`check_depths`); or whose weights cannot be read, as the run's load words it (`refused_as_load`). A folder
    that holds no weights (config.json alone) is planned from its config."""
    source = local_source(mcfg)
    with refused_as_load(mcfg, source):
        shapes = checkpoint_shapes(Path(source))
    if not shapes:
        return
    with torch.device("meta"):
        model = auto_class(head).from_config(config)
    wrong = body_mismatches(shapes_against(model, shapes), head, model.base_model_prefix)
    if wrong:
        raise mismatch_error(source_key(mcfg), source, config, wrong, list(model.state_dict()))
    check_depths(source_key(mcfg), source, config, model, shapes)


def check_head(mcfg, config, head: str) -> None:
    """Refuse a model that cannot carry the head the run needs (e.g. an encoder-decoder in a causal-LM run)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    key = "model.shape.model_type" if mcfg.random_init else source_key(mcfg)
    kind = config.model_type
    if head == "causal_lm":
        fix = ("causal-LM runs (generative tasks, mode=profile under a decoder's model group) need a decoder-only model such as "
               "model=tiny-llama; for a classifier use a GLUE task (or profile.objective=seq_cls)")
        if getattr(config, "is_encoder_decoder", False):
            raise UserError(key, f"{describe(mcfg)} is an encoder-decoder ({kind}); {fix}")
        encoder_only = kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
        if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or encoder_only:
            raise UserError(key, f"{describe(mcfg)} is not a decoder-only model ({kind}); {fix}")
    elif kind not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise UserError(key, f"{describe(mcfg)} ({kind}) has no sequence-classification head in transformers; "
                        "give a model that has one (e.g. model=minilm, roberta-base, tiny-llama)")
    elif getattr(config, "is_encoder_decoder", False) and closing_token(config, head) is None:
        eos_key = "model.shape.eos_token_id" if mcfg.random_init else key
        raise UserError(eos_key, f"{describe(mcfg)} is an encoder-decoder ({kind}) with no eos_token_id: its "
                        "classification head reads the state at each sequence's eos; set eos_token_id in its "
                        "config.json (the tokenizer's eos id), or give a model that has one")


def fit_vocab(mcfg, config, tokenizer, task=None) -> dict[str, int]:
    """Embedding rows against the tokenizer's tokens (else the task.vocab_size of `task`, a tasks/base.py Task
    that speaks token ids): {} when the model's are enough, the vocab_size to build for random init; raises UserError
    for a checkpoint with too few rows."""
    rows = config.vocab_size
    if tokenizer is not None:
        needed, key, what = len(tokenizer), "model.tokenizer", f"the tokenizer has {len(tokenizer)} tokens"
        own = ("the model's own tokenizer (model.tokenizer=null) or " if mcfg.tokenizer else
               f"a tokenizer of at most {rows} tokens (model.tokenizer=DIR) or ")  # (unset: the model's own is this one)
        fix = f"give {own}a model whose vocabulary covers it"
    else:  # a task that speaks token ids directly (synthetic: ids 0..task.vocab_size-1, in every split)
        needed, key = task.cfg.vocab_size, "task.vocab_size"
        what = f"the task uses token ids 0..{needed - 1} (task.vocab_size={needed})"
        fix = f"set task.vocab_size to at most {rows}, or give a model whose vocabulary covers it"
    if needed <= rows:
        return {}
    if mcfg.random_init:
        log.warning("%s but model.shape.vocab_size=%d: the random-init embedding gets %d rows", what, rows, needed)
        return {"vocab_size": needed}
    raise UserError(key, f"{what} but the embedding of {describe(mcfg)} has {rows} rows; {fix}")

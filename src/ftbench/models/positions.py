"""The position table: the longest sequence a model's config holds, and the one rule every entry applies
to a sequence longer than that (a run's preflight and a plan's, before its probes: job/preflight.py).

A random-init table is sized to the sequences (one log line), unless one sequence of that length cannot fit
the machine (a plan's planned device) at all (`UserError` on the length's key, before anything is allocated:
`require_one_sequence`; relative positions too); a checkpoint's cuts task.max_length
(one log line) and refuses a longer profile.seq_len (`UserError`, exit 2). Generation adds its answer
(max_new_tokens) after a prompt: a random-init table also holds a task.max_length prompt and its answer,
a checkpoint's refuses an answer cap that leaves no room for a prompt, and prompts longer than the rest
are cut from the left when generating (`prompt_room`, tasks/generate.py: one warning). A closing token
the collate appends (an encoder-decoder classifier's eos) takes a position too. Rotary models,
whose config still states max_position_embeddings, follow the same rule.
"""

from __future__ import annotations

import logging
import os

import torch
from omegaconf import OmegaConf

from ftbench.errors import UserError
from ftbench.models.loading import describe

log = logging.getLogger(__name__)

# Architectures whose position ids start after the padding index (RoBERTa's family): the usable
# length is max_position_embeddings - pad_token_id - 1 (514 rows hold 512 positions).
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                    "data2vec-text", "longformer", "mpnet", "ernie_m")


def position_limit(config) -> int | None:
    """The longest sequence the model's position table holds; None when positions are relative (T5)."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not limit:
        return None
    if config.model_type in OFFSET_POSITIONS:
        limit -= (config.pad_token_id or 0) + 1
    return limit


def fit_positions(cfg, config, key: str, new_tokens: tuple[str, int] | None = None, closing: int = 0) -> dict[str, int]:
    """Sequences (`key`: task.max_length or profile.seq_len) against the position table: a random-init
    table is sized to them; a checkpoint's cuts task.max_length and refuses a longer profile.seq_len.
    `new_tokens` (a generative task: the key that sets max_new_tokens and its value): a random-init
    table holds `key` plus the answer; a checkpoint's refuses an answer that leaves no room for a prompt.
    `closing`: tokens appended after each sequence (Task.closing_id): a random-init table holds them
    too, a checkpoint's cuts task.max_length to leave them room.
    Relative positions (T5) hold any length that one sequence of fits the machine (`require_one_sequence`).
    Returns the random-init config value to override ({} when none)."""
    limit = position_limit(config)
    length = OmegaConf.select(cfg, key)
    new_key, new = new_tokens or (None, 0)
    if limit is None:
        require_one_sequence(cfg, config, key, length, length + new + closing, None)
        return {}
    if cfg.model.random_init:
        if length + new + closing <= limit:
            return {}
        name = "max_position_embeddings" if "max_position_embeddings" in config.to_dict() else "n_positions"
        rows = getattr(config, name) + length + new + closing - limit
        what = f"{key}={length} plus {new_key}={new}" if new else f"{key}={length}"
        require_one_sequence(cfg, config, key, length, length + new + closing, limit)
        log.warning("%s%s exceeds the %d positions of %s: its position table gets %d rows",
                    what, " plus its closing eos" if closing else "", limit, describe(cfg.model), rows)
        return {name: rows}
    if new >= limit:
        raise UserError(new_key, f"{new} new tokens fill the {limit} positions of {describe(cfg.model)} and leave "
                        f"no room for a prompt; use {new_key}<{limit} (prompts longer than the rest are cut)")
    room = limit - closing
    if length <= room:
        return {}
    if key == "profile.seq_len":
        raise UserError(key, f"{length} tokens exceed the {limit} positions of {describe(cfg.model)}; "
                        f"use {key}<={limit}")
    log.warning("%s=%d exceeds the %d positions of %s%s; sequences are truncated to %d tokens",
                key, length, limit, describe(cfg.model), " less its closing eos" if closing else "", room)
    OmegaConf.update(cfg, key, room)
    return {}


def prompt_room(config, new_tokens: int) -> int | None:
    """The longest prompt the position table holds before `new_tokens` generated ones (None: no limit)."""
    limit = position_limit(config)
    return None if limit is None else limit - new_tokens


HIDDEN_BYTES = 2  # a bf16 hidden state: the least a training forward keeps of a token at a layer's boundary


def machine_bytes(cfg) -> tuple[int, str]:
    """The most memory one sequence could be given, and where: a plan's (mode=plan) planned device when
    hardware.memory_gib states it (the plan is for that device, not this machine); else this machine's, its
    physical memory or its largest visible GPU's when larger (a run's device, or the device a plan without
    hardware.memory_gib plans)."""
    planned = cfg.hardware.memory_gib if cfg.mode == "plan" else None
    if planned is not None:
        return int(planned * 2**30), "the planned device has (hardware.memory_gib)"
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpus = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    return max([host, *gpus]), "this machine has"


def require_one_sequence(cfg, config, key: str, length: int, tokens: int, limit: int | None) -> None:
    """Refuse (`UserError` on `key`, which set `length`) sequences of `tokens` that not even one of could be
    held: a random-init table grown past its `limit` positions to them, or relative positions (`limit` None).
    A sequence keeps at least one bf16 hidden state per token at every layer's boundary (gradient
    checkpointing keeps no fewer), here more bytes than the device has (`machine_bytes`: this machine's, a
    plan's planned device's); the run would build its data and model for a step that never comes."""
    per_token = config.hidden_size * (config.num_hidden_layers + 1) * HIDDEN_BYTES
    have, where = machine_bytes(cfg)
    if tokens * per_token <= have:
        return
    most = max(limit or 1, have // per_token - (tokens - length))
    grows = (f"{length} tokens grow the {limit} positions of {describe(cfg.model)}, and one sequence" if limit else
             f"{length} tokens in {describe(cfg.model)}: one sequence")
    raise UserError(key, f"{grows} of them keeps at least {tokens * per_token / 2**30:.1f} GiB of hidden states "
                    f"({config.num_hidden_layers + 1} of {config.hidden_size} bf16 values per token), more than the "
                    f"{have / 2**30:.1f} GiB {where}; give a far shorter {key} (this bound alone leaves at "
                    f"most {most})")

"""The training loss, and a causal LM's loss computed a chunk of tokens at a time.

At 7B shapes the vocabulary-sized logits are the largest activation of a step:
for 4 × 512 tokens and a 32k vocabulary, the bf16 logits, their fp32 copy, the
log-softmax the cross-entropy saves and its gradient are ~0.8 GiB alive together,
more than one checkpointed decoder layer recomputes. Computing the LM head and
the cross-entropy per chunk, and recomputing a chunk's logits in backward, keeps
one chunk's logits alive instead. The sum is the same loss, and the cost is one
extra LM-head matmul per step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ftbench.models.architecture import CAUSAL_LM, IGNORE_INDEX, PLAIN_LM_HEAD

Loss = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def model_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own loss (its forward with labels)."""
    return model(**batch).loss


def chunk_tokens_of(model_type: str, head: str, chunk_tokens: int | None) -> int | None:
    """The tokens per chunk of the loss a `model_type` model trains with (make_loss); None: the model's own loss."""
    return chunk_tokens if head == CAUSAL_LM and chunk_tokens and model_type in PLAIN_LM_HEAD else None


def make_loss(model: nn.Module, head: str, chunk_tokens: int | None, whole_chunks: bool = False) -> Loss:
    """The chunked loss where it applies (a causal LM whose logits are its plain LM head's, see
    architecture.PLAIN_LM_HEAD; chunks asked for), else the model's own. `whole_chunks`: see
    chunked_causal_lm_loss."""
    chunk_tokens = chunk_tokens_of(_language_model(model).config.model_type, head, chunk_tokens)
    if chunk_tokens is None:
        return model_loss
    return partial(chunked_causal_lm_loss, chunk_tokens=chunk_tokens, whole_chunks=whole_chunks)


def chunked_causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], chunk_tokens: int,
                           whole_chunks: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions, as the model's own loss.

    `whole_chunks` (the memory planner's probes, plan/probe.py): the last of several chunks is the last
    `chunk_tokens` positions, those the chunk before it counted ignored (the same loss): every chunk then
    holds `chunk_tokens` logits, as the largest chunk of any longer micro-batch does."""
    lm = _language_model(model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = lm.get_decoder()(**inputs).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = F.pad(batch["labels"], (0, 1), value=IGNORE_INDEX)[:, 1:].reshape(-1)  # position t predicts token t + 1
    head = lm.get_output_embeddings()
    total = hidden.new_zeros((), dtype=torch.float32)
    tokens = labels.numel()
    for start in range(0, tokens, chunk_tokens):
        chunk = slice(start, start + chunk_tokens)
        chunk_labels = labels[chunk]
        if whole_chunks and start and start + chunk_tokens >= tokens:  # the last chunk of several
            chunk = slice(tokens - chunk_tokens, tokens)
            chunk_labels = labels[chunk].clone()
            chunk_labels[:start - chunk.start] = IGNORE_INDEX  # counted by the chunk before
        total = total + checkpoint(_summed_cross_entropy, head, hidden[chunk], chunk_labels, use_reentrant=False)
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def _summed_cross_entropy(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()  # fp32 for the softmax, as the model's own loss does
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def _language_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model

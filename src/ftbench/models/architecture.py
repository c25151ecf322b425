"""Architecture knowledge in one place: what a loaded model is made of.

From a loaded model (an `nn.Module`, usually a Hugging Face transformers model)
`architecture(model)` derives, from the model's structure:

- the layer *stacks*: every `nn.ModuleList` of same-class blocks that hold linear
  layers, not nested in another stack (one for BERT or LLaMA; encoder and decoder
  for T5 or BART), in registration (forward) order;
- the *task heads*: the top-level modules that a `*ForSequenceClassification` or
  `*ForCausalLM` class adds around its base model (`base_model_prefix`), e.g.
  `classifier`, `score`, `classification_head`, `lm_head`;
- the output embedding (`get_output_embeddings()`), the *embeddings* (every
  `nn.Embedding`: tokens, positions, token types) and the *tied* weights (one
  tensor under several names, e.g. GPT-2's `lm_head.weight` and `wte.weight`);
- the attention and MLP *projections* of each block, by role.

From a config (a named shape or a checkpoint's) it knows the fields that size a model (`SIZES`:
each a positive integer, `bad_size`), and those that hold one entry per layer (`per_layer_fields`). Which
sizes must agree with each other (heads that divide the width, ...) is `ftbench.config.sizes`, a layer below:
a folder's config.json is checked with the config, before anything loads.

Only the roles need a table, because a module's role cannot be read off its
shape (BERT's four attention linears all map hidden -> hidden; BART registers
k_proj before q_proj). `LAYOUTS` holds one naming scheme per family, in the
manner of PEFT's per-architecture target-module mapping: a role and the regular
expression its module path inside a block matches in full. A block takes the
layout that names most of its projections, so families that share a scheme
(LLaMA, Mistral, Qwen2/3, Gemma, Phi-3) need no entry of their own.

Roles: q k v o (self-attention), qkv (fused q, k, v rows, in that order: Phi-3,
GPT-2), cross_q cross_k cross_v cross_o (a decoder's cross-attention), gate up
down (MLP), gate_up (fused gate and up rows, in that order: Phi-3).

Adding a model family: docs/adding-a-model-family.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache

from huggingface_hub.errors import StrictDataclassError
from torch import nn

from ftbench.errors import UserError

IGNORE_INDEX = -100  # the label of a position without a loss (prompt, padding), as transformers' losses read it
CAUSAL_LM = "causal_lm"  # the task head of a language model: its output embedding is pretrained, not new

ATTENTION_ROLES = ("q", "k", "v", "qkv", "o", "cross_q", "cross_k", "cross_v", "cross_o")
MLP_ROLES = ("gate", "up", "gate_up", "down")
FUSED = {"q": ("qkv", 0), "k": ("qkv", 1), "v": ("qkv", 2), "gate": ("gate_up", 0), "up": ("gate_up", 1)}


@dataclass(frozen=True)
class Layout:
    """One naming scheme of a transformer block.

    kind: encoder | decoder (what a single stack of these blocks without cross-attention
    is; two stacks make an encoder-decoder). roles: role -> regular expression of the module path inside
    one block (matched in full)."""

    kind: str
    roles: dict[str, str] = field(default_factory=dict)


LAYOUTS: dict[str, Layout] = {
    # LLaMA, Mistral, Qwen2, Qwen3, Gemma, Phi-3 (fused qkv_proj / gate_up_proj)
    "llama": Layout("decoder", {
        "q": r"self_attn\.q_proj", "k": r"self_attn\.k_proj", "v": r"self_attn\.v_proj", "qkv": r"self_attn\.qkv_proj",
        "o": r"self_attn\.o_proj", "gate": r"mlp\.gate_proj", "up": r"mlp\.up_proj", "gate_up": r"mlp\.gate_up_proj",
        "down": r"mlp\.down_proj"}),
    # BERT, RoBERTa, XLM-RoBERTa, ELECTRA, MiniLM: the FFN output is `output.dense`, the attention's
    # `attention.output.dense`
    "bert": Layout("encoder", {
        "q": r"attention\.self\.query", "k": r"attention\.self\.key", "v": r"attention\.self\.value",
        "o": r"attention\.output\.dense", "up": r"intermediate\.dense", "down": r"output\.dense"}),
    # GPT-2: transformers' Conv1D (weight stored in x out), fused c_attn
    "gpt2": Layout("decoder", {"qkv": r"attn\.c_attn", "o": r"attn\.c_proj", "up": r"mlp\.c_fc",
                               "down": r"mlp\.c_proj"}),
    # T5 (a decoder block adds EncDecAttention; gated variants split wi into wi_0 and wi_1)
    "t5": Layout("encoder", {
        "q": r"layer\.0\.SelfAttention\.q", "k": r"layer\.0\.SelfAttention\.k", "v": r"layer\.0\.SelfAttention\.v",
        "o": r"layer\.0\.SelfAttention\.o", "cross_q": r"layer\.1\.EncDecAttention\.q",
        "cross_k": r"layer\.1\.EncDecAttention\.k", "cross_v": r"layer\.1\.EncDecAttention\.v",
        "cross_o": r"layer\.1\.EncDecAttention\.o", "gate": r"layer\.\d+\.DenseReluDense\.wi_0",
        "up": r"layer\.\d+\.DenseReluDense\.wi(_1)?", "down": r"layer\.\d+\.DenseReluDense\.wo"}),
    # BART, mBART, Marian, Pegasus
    "bart": Layout("encoder", {
        "q": r"self_attn\.q_proj", "k": r"self_attn\.k_proj", "v": r"self_attn\.v_proj", "o": r"self_attn\.out_proj",
        "cross_q": r"encoder_attn\.q_proj", "cross_k": r"encoder_attn\.k_proj", "cross_v": r"encoder_attn\.v_proj",
        "cross_o": r"encoder_attn\.out_proj", "up": r"fc1", "down": r"fc2"}),
}

# The config fields that size a model, under each family's names (LLaMA/BERT, GPT-2, T5, BART, ALBERT):
# each must be a positive integer, or null where the family derives it (num_key_value_heads, n_inner).
# transformers accepts 0 or a negative size, then fails on a tensor of negative dimension or builds a model
# with no layers. Not here: head_dim and type_vocab_size (0 is a family's "derive it" or "none" value).
SIZES = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "max_position_embeddings", "embedding_size",
    "n_embd", "n_layer", "n_head", "n_positions", "n_inner",
    "d_model", "d_ff", "d_kv", "num_layers", "num_decoder_layers", "num_heads",
    "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim",
    "decoder_ffn_dim"})


# The fields that set the depth of one stack (the attribute each family maps num_hidden_layers to among them,
# and a decoder's own), and those that set a width: hidden, FFN (FFN_WIDTHS), head dimension, vocabulary.
DEPTHS = ("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers", "encoder_layers", "decoder_layers")
DECODER_DEPTHS = ("num_decoder_layers", "decoder_layers")  # those of DEPTHS that set an encoder-decoder's decoder's
FFN_WIDTHS = ("intermediate_size", "n_inner", "d_ff", "encoder_ffn_dim", "decoder_ffn_dim")
WIDTHS = ("hidden_size", "n_embd", "d_model", *FFN_WIDTHS, "head_dim", "d_kv", "vocab_size")


# What a family's config raises when its defaults cannot be built at another depth (fields of a fixed length,
# a depth set by other fields: Funnel's block_sizes).
DEFAULTS_ERRORS = (StrictDataclassError, ValueError, TypeError, KeyError, RuntimeError)


@cache
def per_layer_fields(model_type: str) -> frozenset[str]:
    """The config fields of a family that hold one entry per layer of its num_hidden_layers stack (layer_types,
    mlp_layer_types, no_rope_layers, layer_rope_theta, ...): the lists its config derives to as many entries as
    layers, read from its defaults at two depths; none where they cannot be built so (DEFAULTS_ERRORS)."""
    from transformers import CONFIG_MAPPING

    try:
        two, three = (CONFIG_MAPPING[model_type](num_hidden_layers=n).to_dict() for n in (2, 3))
    except DEFAULTS_ERRORS:
        return frozenset()
    return frozenset(name for name, value in two.items() if isinstance(value, list) and len(value) == 2
                     and isinstance(three.get(name), list) and len(three[name]) == 3)


def bad_size(values) -> str | None:
    """The first field of `values` (a shape or a config's dict) that sizes the model (SIZES) and is not a
    positive integer; None when every size is one (or null)."""
    return next((name for name, value in values.items() if name in SIZES and value is not None and
                 (isinstance(value, bool) or not isinstance(value, int) or value < 1)), None)


# Causal LMs whose logits are exactly `lm_head(decoder(...).last_hidden_state)`: no logit scaling or
# soft-capping (Gemma 2, Cohere) that a loss computing the head itself would skip. Not derivable.
PLAIN_LM_HEAD = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def is_projection(module: nn.Module) -> bool:
    """A linear layer: `nn.Linear` or transformers' `Conv1D` (GPT-2; weight stored in x out)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


@dataclass(frozen=True)
class Block:
    """One block of a stack and its projections by role."""

    name: str  # module path, e.g. model.layers.3
    stack: int  # position of its stack (0 = the first, the encoder of an encoder-decoder)
    index: int  # position in its stack
    layout: str | None  # the LAYOUTS entry that names its projections; None when none does
    roles: dict[str, str]  # role -> module path inside the block, e.g. v -> self_attn.v_proj

    def path(self, role: str) -> str:
        return f"{self.name}.{self.roles[role]}"


@dataclass(frozen=True)
class Architecture:
    """What `architecture(model)` derives; every method, the loss and the unit rotation ask it."""

    model_type: str
    kind: str  # encoder | decoder | encoder-decoder | unknown
    stacks: tuple[str, ...]  # module paths of the layer lists, in forward order
    blocks: tuple[Block, ...]  # every block of every stack, in forward order
    heads: tuple[str, ...]  # top-level modules outside the base model (task head, LM head)
    output_embedding: str | None  # module path of get_output_embeddings(), if any
    tied: tuple[tuple[str, ...], ...]  # parameter names that share one tensor
    embeddings: tuple[str, ...] = ()  # module paths of every nn.Embedding (tokens, positions, token types)

    def task_heads(self, head: str) -> list[str]:
        """The heads a task adds at random init (trained densely by the sparse methods): every head of
        a classifier or regressor; none for a causal LM, whose head is the pretrained output embedding."""
        return [] if head == CAUSAL_LM else list(self.heads)

    def depth_fields(self, config) -> dict[str, str]:
        """Each stack (module path) -> the field of `config` that sets its depth, under the family's own name: a
        stack of blocks with cross-attention (an encoder-decoder's decoder, BartForCausalLM's lone one) reads
        num_decoder_layers or decoder_layers, any other stack num_hidden_layers as the config maps it (GPT-2's
        n_layer, T5's num_layers, BART's encoder_layers). A stack whose field does not hold its length is left
        out (a depth ftbench cannot name: ALBERT's one shared layer, a family of other names)."""
        own = getattr(config, "attribute_map", {}).get("num_hidden_layers", "num_hidden_layers")
        fields = {}
        for index, stack in enumerate(self.stacks):
            blocks = [block for block in self.blocks if block.stack == index]
            names = DECODER_DEPTHS if any("cross_o" in block.roles for block in blocks) else (own,)
            field = next((name for name in names if isinstance(getattr(config, name, None), int)), None)
            if field is not None and getattr(config, field) == len(blocks):
                fields[stack] = field
        return fields

    def projections(self, roles) -> list[str]:
        """Module paths of the given roles in every block, in forward order."""
        return [block.path(r) for block in self.blocks for r in block.roles if r in roles]

    def kind_name(self, block: Block, role: str) -> str:
        """The name of a projection across blocks: its path inside the block (`mlp.up_proj`), prefixed
        by the stack's path when the model has several stacks (`model.decoder.layers.*.fc1`)."""
        inside = block.roles[role]
        return inside if len(self.stacks) == 1 else f"{self.stacks[block.stack]}.*.{inside}"

    def attention_heads(self, model: nn.Module, block: Block) -> tuple[int, int, int]:
        """(query heads, key/value heads, head dim) of a block's self-attention, from the config and the
        output projection's width. A decoder stack reads `decoder_attention_heads` where the config has
        one (BART), else `num_attention_heads` (every config maps its own name to it)."""
        config = model.config
        heads = config.num_attention_heads
        if block.stack == 1 and getattr(config, "decoder_attention_heads", None):
            heads = config.decoder_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        width = model.get_submodule(block.path("o")).in_features
        return heads, kv_heads, width // heads

    def rows(self, model: nn.Module, block: Block, role: str) -> tuple[str, int, int]:
        """(module path, first row, row count) of a role's output rows: the whole module's, or its part
        of a fused projection (qkv: q, k, v; gate_up: gate, up)."""
        if role in block.roles:
            return block.path(role), 0, model.get_submodule(block.path(role)).out_features
        fused, part = FUSED[role]
        module = model.get_submodule(block.path(fused))
        if fused == "gate_up":
            size = module.out_features // 2
            return block.path(fused), part * size, size
        heads, kv_heads, head_dim = self.attention_heads(model, block)
        sizes = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
        return block.path(fused), sum(sizes[:part]), sizes[part]

    def has(self, block: Block, role: str) -> bool:
        """Whether the block has the role, on its own or as part of a fused projection."""
        return role in block.roles or (role in FUSED and FUSED[role][0] in block.roles)

    def path_of(self, block: Block, role: str) -> str:
        """The module that holds a role: its own, or the fused projection it is part of."""
        return block.path(role) if role in block.roles else block.path(FUSED[role][0])

    def require_linear(self, model: nn.Module, roles, method: str) -> None:
        """Refuse up front when a block lacks one of `roles` or holds it in a module that is not an
        `nn.Linear` (GPT-2's Conv1D). Raises UserError('method', ...)."""
        if not self.blocks:
            raise UserError("method", f"{method} cannot serve this {self.model_type} model: ftbench finds no stack of "
                            "repeated blocks in it; use method=full or lora")
        for block in self.blocks:
            missing = [r for r in roles if not self.has(block, r)]
            other = [p for p in (self.path_of(block, r) for r in roles if self.has(block, r))
                     if not isinstance(model.get_submodule(p), nn.Linear)]
            if missing or other:
                what = (f"has no {'/'.join(missing)} projection that ftbench can find" if missing else
                        f"holds {other[0]} as a {type(model.get_submodule(other[0])).__name__}, not an nn.Linear")
                raise UserError("method", f"{method} cannot serve this {self.model_type} model: block {block.name} "
                                f"{what}; use method=full, lora or hift, or add the family to "
                                "ftbench/models/architecture.py LAYOUTS")


def architecture(model: nn.Module) -> Architecture:
    """Derive the stacks, blocks, projections, heads and tied weights of a loaded model."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None) or type(model).__name__
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    base_name = prefix if isinstance(base, nn.Module) and base is not model else ""
    stacks = _stacks(model, base_name)
    blocks = tuple(_block(f"{name}.{i}", s, i, child) for s, (name, layers) in enumerate(stacks)
                   for i, child in enumerate(layers))
    heads = tuple(name for name, child in model.named_children()
                  if base_name and name != base_name and any(True for _ in child.parameters()))
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    output_name = next((n for n, m in model.named_modules() if output is not None and m is output), None)
    layouts = {b.layout for b in blocks if b.layout}
    if getattr(config, "is_encoder_decoder", False) or len(stacks) > 1:
        kind = "encoder-decoder"
    elif any("cross_o" in b.roles for b in blocks):
        kind = "decoder"  # the decoder of an encoder-decoder family on its own (BartForCausalLM)
    else:
        kind = LAYOUTS[next(iter(layouts))].kind if len(layouts) == 1 else "unknown"
    embeddings = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Embedding))
    return Architecture(model_type, kind, tuple(n for n, _ in stacks), blocks, heads, output_name, _tied(model),
                        embeddings)


def _stacks(model: nn.Module, base_name: str) -> list[tuple[str, nn.ModuleList]]:
    found: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if base_name and not (name == base_name or name.startswith(base_name + ".")):
            continue
        if not isinstance(module, nn.ModuleList) or len(module) == 0 or len({type(c) for c in module}) != 1:
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue  # a list inside a block (T5's sublayers, MoE experts)
        if is_projection(module[0]) or not any(is_projection(m) for m in module[0].modules()):
            continue
        found.append((name, module))
    return found


def _block(name: str, stack: int, index: int, block: nn.Module) -> Block:
    inside = [n for n, m in block.named_modules() if is_projection(m)]
    best: tuple[int, str | None, dict[str, str]] = (0, None, {})
    for layout_name, layout in LAYOUTS.items():
        roles = {}
        for role, pattern in layout.roles.items():
            matched = [n for n in inside if re.fullmatch(pattern, n)]
            if matched:
                roles[role] = matched[0]
        if len(roles) > best[0]:
            best = (len(roles), layout_name, roles)
    return Block(name, stack, index, best[1], best[2])


def _tied(model: nn.Module) -> tuple[tuple[str, ...], ...]:
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return tuple(tuple(group) for group in names.values() if len(group) > 1)


def replace_module(model: nn.Module, name: str, build) -> nn.Module:
    """Replace the submodule at path `name` by `build(old)`; return the new module."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new = build(getattr(parent, child))
    setattr(parent, child, new)
    return new


def closing_token(config, head: str) -> int | None:
    """The token every sequence of a classifier's or regressor's batch must end with: an encoder-decoder's
    eos (BART's and T5's heads read the state at it, and refuse a sequence without one); else None.
    Profile batches end with it (engine/batches.py), a task's collate appends it (Task.closing_id)."""
    eos = getattr(config, "eos_token_id", None)
    if head == "causal_lm" or not getattr(config, "is_encoder_decoder", False) or eos is None:
        return None
    return eos[0] if isinstance(eos, (list, tuple)) else eos

"""The sizes of a transformers config that must agree with each other, for the families ftbench knows (FAMILIES):
checked on a folder's config.json before anything is built (folders.py `value_problem`: every command that checks
its config), and on a random-init model.shape where its config is built (models/loading.py `architecture_config`).

Each rule is one the family's own classes break on (tests/test_config_sizes.py builds and steps each case with
transformers): its config refuses it (LLaMA's equal heads, RoPE's even head width), its model cannot be built (BERT's,
GPT-2's and BART's equal heads; an embedding whose padding row is past its last row) or its first forward fails
(grouped key/value heads, an odd head width under RoPE, a decoder start or eos id past the embedding). What a family
accepts is not refused: a head_dim other than the width over the heads (LLaMA, Mistral, Qwen2/3, Phi-3, Gemma), a
width that Mistral, Qwen2/3, Phi-3 and Gemma split into heads of width // heads, T5's d_model, num_heads and d_kv
(independent sizes), a negative pad id (the Hub's -1). A family not in FAMILIES is left to the loader.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Family:
    """What of a family's config must agree, under its own field names."""

    width: str = "hidden_size"
    split: tuple[str, ...] = ()  # head counts that must divide `width`: the family cuts it into heads of equal width
    kv_heads: bool = False  # grouped-query attention: each key/value head serves as many query heads
    rotary: bool = False  # RoPE over the whole head (no partial_rotary_factor below 1): the head width must be even
    token_ids: tuple[str, ...] = ()  # ids the model reads as tokens (an embedding's padding row): below vocab_size


DECODER = Family(kv_heads=True, rotary=True, token_ids=("pad_token_id",))  # head width: head_dim, else width // heads
BERT = Family(split=("num_attention_heads",), token_ids=("pad_token_id",))
BART = Family(width="d_model", split=("encoder_attention_heads", "decoder_attention_heads"),  # also mBART
              token_ids=("pad_token_id", "decoder_start_token_id", "eos_token_id"))
FAMILIES = {
    "llama": Family(split=("num_attention_heads",), kv_heads=True, rotary=True, token_ids=("pad_token_id",)),
    "mistral": DECODER, "qwen2": DECODER, "qwen3": DECODER, "phi3": DECODER, "gemma": DECODER,
    "gpt2": Family(width="n_embd", split=("n_head",)),
    "bert": BERT, "roberta": BERT, "xlm-roberta": BERT, "electra": BERT,
    "bart": BART, "mbart": BART,
    "t5": Family(width="d_model", token_ids=("decoder_start_token_id", "eos_token_id")),
}


def size_problem(values: dict) -> str | None:
    """The first disagreement between the sizes of a config (`values`: config.json's, or a shape's, with its
    model_type), in words naming the fields, their values and the fix; None when they agree, for a family not in
    FAMILIES, or where a size involved is not a positive integer (refused on its own: architecture.py `bad_size`).
    A field the values leave out has the family's default (said so)."""
    from transformers import CONFIG_MAPPING

    model_type = values["model_type"]
    family = FAMILIES.get(model_type)
    if family is None:
        return None
    defaults = {f.name: f.default for f in fields(CONFIG_MAPPING[model_type])}

    def get(name):
        return values.get(name, defaults.get(name))

    def shown(name, value=None) -> str:
        value = get(name) if value is None else value
        return f"{name} {value}" + ("" if name in values else f" (not set: the {model_type} default)")

    width, heads = get(family.width), get("num_attention_heads")
    for name in family.split:
        if sizes(width, get(name)) and width % get(name):
            count = get(name)
            return (f"{shown(family.width)} is not a multiple of {shown(name)}: {model_type} cuts {family.width} into "
                    f"{count} heads of equal width; write {name} as a divisor of {width} ({near(divisors(width), count)}) "
                    f"or {family.width} as a multiple of {count} ({near(range(count, 2 * width + count, count), width)})")
    kv = get("num_key_value_heads")
    kv = heads if kv is None else kv  # the families derive it so
    if family.kv_heads and sizes(heads, kv) and heads % kv:
        return (f"{shown('num_attention_heads')} is not a multiple of {shown('num_key_value_heads', kv)}: each "
                f"key/value head serves an equal group of query heads; write num_key_value_heads as a divisor of "
                f"{heads} ({near(divisors(heads), kv)})")
    head_dim = get("head_dim")
    if family.rotary and sizes(width, heads) and (head_dim is None or sizes(head_dim)):
        given = head_dim is not None
        head_dim = head_dim if given else width // heads
        if head_dim % 2 and int(head_dim * rotary_factor(values)) == head_dim:  # a partial one rounds up: it fits
            how = shown("head_dim") if given else f"{shown(family.width)} // {shown('num_attention_heads')}"
            return (f"the attention heads are {head_dim} wide ({how}), an odd width, and rotary position embeddings "
                    f"turn pairs of dimensions; write head_dim {head_dim - 1} or {head_dim + 1}")
    vocab = get("vocab_size")
    for name in family.token_ids:
        ids = get(name) if isinstance(get(name), list) else [get(name)]
        past = [i for i in ids if sizes(vocab) and isinstance(i, int) and not isinstance(i, bool) and i >= vocab]
        if past:
            return (f"{shown(name)} is past the embedding's last row (ids 0 to {vocab - 1}: {shown('vocab_size')}), "
                    f"and {model_type} reads that row; write the tokenizer's {name}, below {vocab}")
    return None


def sizes(*values) -> bool:
    """Whether every value is a positive integer (a size the rules can compute with)."""
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)


def divisors(number: int) -> list[int]:
    return [d for d in range(1, number + 1) if number % d == 0]


def near(candidates, value: int) -> str:
    """The one or two of `candidates` nearest to `value`, below and above it: "2 or 4"."""
    below = [c for c in candidates if c < value]
    above = [c for c in candidates if c > value]
    return " or ".join(str(c) for c in (below[-1:] + above[:1]))


def rotary_factor(values: dict) -> float:
    """The share of each head that RoPE turns: partial_rotary_factor, given on its own or among the RoPE settings
    (rope_parameters, or rope_scaling as older config.json files name them); 1 when none is given (the default of
    every family in FAMILIES)."""
    for holder in (values, values.get("rope_parameters"), values.get("rope_scaling")):
        if isinstance(holder, dict) and isinstance(holder.get("partial_rotary_factor"), (int, float)):
            return holder["partial_rotary_factor"]
    return 1

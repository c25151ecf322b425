"""Sizes of a config that disagree with each other (config/sizes.py): refused exactly where the family's own
transformers classes break on them (their config, their model's construction, or the first training step), and
nowhere else; the words name the fields, their values and the fix."""

import warnings

import pytest
import torch

from ftbench.config.sizes import FAMILIES, size_problem

DECODER = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 64}
ENCODER = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
           "vocab_size": 64}
BART = {"d_model": 16, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "encoder_layers": 1, "decoder_layers": 1,
        "encoder_attention_heads": 4, "decoder_attention_heads": 4, "vocab_size": 64, "max_position_embeddings": 32}
# A tiny config of each family in FAMILIES that trains (phi3's default pad id, 32000, is past 64 rows)
BASES = {"llama": DECODER, "mistral": DECODER, "qwen2": DECODER, "qwen3": {**DECODER, "head_dim": 4},
         "phi3": {**DECODER, "pad_token_id": 0}, "gemma": {**DECODER, "head_dim": 4},
         "gpt2": {"n_embd": 16, "n_layer": 1, "n_head": 4, "vocab_size": 64}, "bert": ENCODER, "roberta": ENCODER,
         "xlm-roberta": ENCODER, "electra": {**ENCODER, "embedding_size": 16}, "bart": BART, "mbart": BART,
         "t5": {"d_model": 16, "d_ff": 32, "d_kv": 4, "num_layers": 1, "num_heads": 4, "vocab_size": 64,
                "decoder_start_token_id": 0}}
CAUSAL = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gpt2"}
LEFT_OUT = None  # a field taken out of the base: the family's default

# (family, changes to its base, the refusal's start: None where transformers trains it)
CASES = [
    *[(family, {}, None) for family in BASES],
    # the width cut into equal heads: LLaMA's config refuses it, BERT's, GPT-2's and BART's models are not built,
    # ELECTRA's first step fails
    ("llama", {"num_attention_heads": 3, "num_key_value_heads": 3}, "hidden_size 16 is not a multiple of "
     "num_attention_heads 3: llama cuts hidden_size into 3 heads of equal width; write num_attention_heads as a "
     "divisor of 16 (2 or 4) or hidden_size as a multiple of 3 (15 or 18)"),
    ("gpt2", {"n_head": 3}, "n_embd 16 is not a multiple of n_head 3: gpt2 cuts n_embd"),
    ("bert", {"num_attention_heads": 3}, "hidden_size 16 is not a multiple of num_attention_heads 3"),
    ("roberta", {"num_attention_heads": 3}, "hidden_size 16 is not a multiple of num_attention_heads 3"),
    ("xlm-roberta", {"num_attention_heads": 6}, "hidden_size 16 is not a multiple of num_attention_heads 6"),
    ("electra", {"num_attention_heads": 3}, "hidden_size 16 is not a multiple of num_attention_heads 3"),
    ("bart", {"decoder_attention_heads": 3}, "d_model 16 is not a multiple of decoder_attention_heads 3: bart cuts "
     "d_model into 3 heads of equal width; write decoder_attention_heads as a divisor of 16 (2 or 4) or d_model as a "
     "multiple of 3 (15 or 18)"),
    ("mbart", {"encoder_attention_heads": 3}, "d_model 16 is not a multiple of encoder_attention_heads 3"),
    # ... which the others split into heads of width // heads, or of head_dim (an even width under RoPE: trains)
    ("mistral", {"hidden_size": 20, "num_attention_heads": 3, "num_key_value_heads": 3}, None),
    ("qwen2", {"hidden_size": 20, "num_attention_heads": 3, "num_key_value_heads": 3}, None),
    ("phi3", {"hidden_size": 24, "num_attention_heads": 3, "num_key_value_heads": 3}, None),
    ("gemma", {"num_attention_heads": 3, "num_key_value_heads": 3}, None),
    ("llama", {"head_dim": 8}, None), ("mistral", {"head_dim": 8}, None), ("qwen3", {"head_dim": 8}, None),
    ("t5", {"num_heads": 3, "d_kv": 7}, None),  # T5's sizes are independent
    # grouped key/value heads: the first step fails
    ("llama", {"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3: each "
     "key/value head serves an equal group of query heads; write num_key_value_heads as a divisor of 4 (2 or 4)"),
    ("llama", {"num_key_value_heads": 8}, "num_attention_heads 4 is not a multiple of num_key_value_heads 8"),
    ("mistral", {"num_key_value_heads": LEFT_OUT, "hidden_size": 24, "num_attention_heads": 6},
     "num_attention_heads 6 is not a multiple of num_key_value_heads 8 (not set: the mistral default)"),
    ("qwen2", {"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ("qwen3", {"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ("phi3", {"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ("gemma", {"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    # an odd head width under RoPE: refused by the config above 4, else at the first step
    ("llama", {"head_dim": 5}, "the attention heads are 5 wide (head_dim 5), an odd width, and rotary position "
     "embeddings turn pairs of dimensions; write head_dim 4 or 6"),
    ("llama", {"hidden_size": 12}, "the attention heads are 3 wide (hidden_size 12 // num_attention_heads 4)"),
    ("mistral", {"hidden_size": 16, "num_attention_heads": 3, "num_key_value_heads": 3}, "the attention heads are 5 "
     "wide (hidden_size 16 // num_attention_heads 3)"),
    ("qwen2", {"hidden_size": 16, "num_attention_heads": 3, "num_key_value_heads": 3}, "the attention heads are 5 wide"),
    ("qwen3", {"head_dim": 7}, "the attention heads are 7 wide (head_dim 7)"),
    ("phi3", {"hidden_size": 20, "num_key_value_heads": 4}, "the attention heads are 5 wide"),
    ("phi3", {"hidden_size": 20, "num_key_value_heads": 4, "partial_rotary_factor": 0.5}, None),  # RoPE on 2 of 5
    ("gemma", {"head_dim": 5}, "the attention heads are 5 wide (head_dim 5)"),
    # token ids the model reads past its embedding: a padding row (not built), a decoder start or eos (first step)
    ("llama", {"pad_token_id": 64}, "pad_token_id 64 is past the embedding's last row (ids 0 to 63: vocab_size 64), "
     "and llama reads that row; write the tokenizer's pad_token_id, below 64"),
    ("llama", {"pad_token_id": -1}, None),  # the Hub's "no pad": the last row
    ("qwen2", {"pad_token_id": 70}, "pad_token_id 70 is past the embedding's last row"),
    ("phi3", {"pad_token_id": LEFT_OUT}, "pad_token_id 32000 (not set: the phi3 default) is past the embedding's"),
    ("bert", {"pad_token_id": 64}, "pad_token_id 64 is past the embedding's last row"),
    ("bart", {"pad_token_id": 64}, "pad_token_id 64 is past the embedding's last row"),
    ("bart", {"decoder_start_token_id": 64}, "decoder_start_token_id 64 is past the embedding's last row"),
    ("bart", {"eos_token_id": 64}, "eos_token_id 64 is past the embedding's last row"),
    ("t5", {"decoder_start_token_id": 64}, "decoder_start_token_id 64 is past the embedding's last row"),
    ("t5", {"eos_token_id": 64}, "eos_token_id 64 is past the embedding's last row"),
    ("gpt2", {"pad_token_id": 100}, None), ("t5", {"pad_token_id": 64}, None),  # rows they never read
]


def trains(family: str, values: dict) -> bool:
    """Whether transformers builds the family's config and model from `values` and takes one training step (the
    task head a run gives it: a causal LM, else a classifier whose sequences end with the config's eos, as ftbench's
    collate ends them for an encoder-decoder)."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = AutoConfig.for_model(family, **values)
            causal = family in CAUSAL
            config.num_labels = 2
            model = (AutoModelForCausalLM if causal else AutoModelForSequenceClassification).from_config(config)
            ids = torch.randint(4, 60, (2, 8), generator=torch.Generator().manual_seed(0))
            if config.is_encoder_decoder:
                ids[:, -1] = config.eos_token_id
            model(input_ids=ids, labels=ids if causal else torch.tensor([0, 1])).loss.backward()
    except (StrictDataclassError, AssertionError, IndexError, RuntimeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("family,changes,refusal", CASES,
                         ids=[f"{f}-{'-'.join(map(str, c)) or 'base'}" for f, c, _ in CASES])
def test_sizes_are_refused_where_the_familys_classes_break_on_them(family, changes, refusal):
    values = {k: v for k, v in {**BASES[family], **changes}.items() if v is not LEFT_OUT}
    problem = size_problem({"model_type": family, **values})
    assert (problem is None) == trains(family, values), problem
    assert problem is None if refusal is None else problem.startswith(refusal), problem


def test_every_family_has_its_cases():
    assert set(BASES) == set(FAMILIES)
    assert size_problem({"model_type": "falcon", "hidden_size": 16, "num_attention_heads": 3}) is None  # the loader's

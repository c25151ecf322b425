"""The units block rotation (HiFT, BAdam, LISA) cuts a model into: the embedding, each layer and the head, by
each family's structure, every parameter in one unit; LLaMA-7B's as HiFT's paper counts them."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from ftbench.methods.block_rotation.units import derive_units
from ftbench.models.loading import architecture_config
from helpers import compose


def tiny_config(model_type, **extra):
    shapes = {"llama": dict(num_key_value_heads=2), "mistral": dict(num_key_value_heads=2),
              "bert": {}, "roberta": dict(pad_token_id=1)}
    return AutoConfig.for_model(model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                num_attention_heads=4, vocab_size=100, max_position_embeddings=64,
                                **shapes[model_type], **extra)


@pytest.mark.parametrize("model_type,causal,tied,embedding,head", [
    ("llama", True, False, ["model.embed_tokens.weight"], ["model.norm.weight", "lm_head.weight"]),
    ("llama", True, True, ["model.embed_tokens.weight"], ["model.norm.weight"]),
    ("llama", False, False, ["model.embed_tokens.weight"], ["model.norm.weight", "score.weight"]),
    ("mistral", True, False, ["model.embed_tokens.weight"], ["model.norm.weight", "lm_head.weight"]),
    ("bert", False, False, ["bert.embeddings.word_embeddings.weight", "bert.embeddings.LayerNorm.bias"],
     ["bert.pooler.dense.weight", "classifier.bias"]),
    ("roberta", False, False, ["roberta.embeddings.word_embeddings.weight"],
     ["classifier.dense.weight", "classifier.out_proj.bias"]),
])
def test_units_follow_the_model_structure(model_type, causal, tied, embedding, head):
    config = tiny_config(model_type, tie_word_embeddings=tied)
    model = (AutoModelForCausalLM if causal else AutoModelForSequenceClassification).from_config(config)
    units = derive_units(model)
    assert [u.name for u in units] == ["embedding", "layer.0", "layer.1", "layer.2", "head"]
    names = {u.name: [n for n, _ in u.params] for u in units}
    assert set(embedding) <= set(names["embedding"]) and set(head) <= set(names["head"])
    if tied:
        assert not any(n.startswith("lm_head") for n in names["head"])
    # Every parameter in exactly one unit; a tied weight counted once.
    owned = [id(p) for u in units for _, p in u.params]
    assert len(owned) == len(set(owned)) == len({id(p) for p in model.parameters()})


def test_llama_7b_units_match_hifts_figures():
    """One LLaMA-7B layer: 202.38 M parameters, fp32 gradients 772.03 MiB, AdamW state 1544.06 MiB
    (HiFT's memory table); built on the meta device, so it costs no memory."""
    config = architecture_config(compose("model=llama-7b").model)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    units = {u.name: u.numel for u in derive_units(model)}
    assert len(units) == 34 and sum(units.values()) == 6_738_415_616
    layer = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
    assert all(units[f"layer.{i}"] == layer == 202_383_360 for i in range(32))
    assert round(layer * 4 / 2**20, 2) == 772.03 and round(layer * 8 / 2**20, 2) == 1544.06
    assert units["embedding"] == 32000 * 4096 and units["head"] == 32000 * 4096 + 4096


# (a run's group of blocks, its depth, the least shallower probe): a middle block of a 6-layer stack has its place
# from the bottom or the top in probes of 4 layers, not 3 (there it was placed lower: BAdam +13 %); the last block
# never becomes the first of a probe nor the first its last
REPLAYED = [(((0, 3, 6),), 6, 4), (((0, 2, 6),), 6, 4), (((0, 1, 6),), 6, 3), (((0, 5, 6),), 6, 3),
            (((0, 4, 8),), 8, 5), (((0, 0, 6), (0, 5, 6)), 6, 3), (((0, 3, 6),), 3, 3)]


@pytest.mark.parametrize("group,layers,depth", REPLAYED)
def test_replayed_blocks_are_probed_at_their_place(group, layers, depth):
    from ftbench.methods.block_rotation.units import replay_depth

    assert replay_depth((group, (("head",),)), layers, 3) == depth

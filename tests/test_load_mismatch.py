"""A checkpoint whose tensors do not fit the model its config.json describes (models/mismatch.py): refused on
model.path naming the tensor, both shapes and the field that sized it, with the fix; only a classifier's head
of another size is replaced (was: rc 2 with transformers' "look at the above report", which no one saw, and the
wrong fix; a classification run trained a random embedding of the default 32000 rows, logged as a new head)."""

import json

import pytest
import torch
import transformers as T

from ftbench.errors import UserError
from ftbench.models.architecture import architecture
from ftbench.models.loading import load_model
from ftbench.models.mismatch import check_depths, mismatch_problem
from helpers import compose


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 1-layer LLaMA of 300 token rows, as save_pretrained writes it."""
    path = tmp_path_factory.mktemp("llama300")
    T.LlamaForCausalLM(T.LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2)).save_pretrained(path)
    return path


def loaded(path, head: str):
    mcfg = compose("model=tiny-llama", f"model.path={path}", "model.random_init=false").model
    return load_model(mcfg, head, 2, torch.device("cpu"), "fp32", "eager")


@pytest.mark.parametrize("head,more", [("causal_lm", " (and 1 more tensor)"), ("seq_cls", "")])
@pytest.mark.parametrize("vocab,said", [
    (None, "its config.json sets no vocab_size, so the llama default 32000 is taken"),
    (500, "its config.json sets vocab_size 500"),
])
def test_a_config_json_size_the_tensors_disagree_with_is_named(folder, tmp_path, head, more, vocab, said):
    config = json.loads((folder / "config.json").read_text())
    config.pop("vocab_size") if vocab is None else config.update(vocab_size=vocab)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(folder / "model.safetensors")
    rows = 32000 if vocab is None else vocab
    with pytest.raises(UserError) as refused:
        loaded(tmp_path, head)
    assert str(refused.value) == (f"model.path: could not load {tmp_path}: {said}, but the checkpoint's "
                                  f"model.embed_tokens.weight is [300, 16] against the model's [{rows}, 16]{more}; "
                                  'write "vocab_size": 300 in its config.json')


def test_only_a_classifier_head_of_another_size_is_replaced(tmp_path):
    T.LlamaForSequenceClassification(T.LlamaConfig(
        vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=5, pad_token_id=0)).save_pretrained(tmp_path)
    assert loaded(tmp_path, "seq_cls").score.out_features == 2


# A checkpoint of as many layers as its config sets loads whatever it holds outside them (mismatch.py check_depths
# refuses only layers beyond the config's count or missing from it): a causal LM's lm_head and BERT's pretraining
# heads (cls.predictions.*) are left unused by a classifier
@pytest.mark.parametrize("build,head", [
    (lambda sizes: T.LlamaForCausalLM(T.LlamaConfig(**sizes, num_key_value_heads=2)), "causal_lm"),
    (lambda sizes: T.LlamaForCausalLM(T.LlamaConfig(**sizes, num_key_value_heads=2)), "seq_cls"),
    (lambda sizes: T.BertForPreTraining(T.BertConfig(**sizes, max_position_embeddings=32)), "seq_cls"),
], ids=["llama", "llama-lm-head-unused", "bert-pretraining-heads-unused"])
def test_a_checkpoint_of_its_config_s_layers_loads_whatever_else_it_holds(tmp_path, build, head):
    build({"vocab_size": 300, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 2}).save_pretrained(tmp_path)
    assert len(architecture(loaded(tmp_path, head)).blocks) == 2


def test_layers_the_load_ignores_are_not_held_against_the_config():
    """DeepSeek-V3's checkpoints hold a multi-token-prediction layer 61 beyond its num_hidden_layers 61, which
    from_pretrained ignores (_keys_to_ignore_on_load_unexpected): not refused; a layer past it is."""
    with torch.device("meta"):
        model = T.DeepseekV3ForCausalLM(T.DeepseekV3Config(
            vocab_size=300, hidden_size=16, intermediate_size=32, moe_intermediate_size=8, num_hidden_layers=61,
            num_attention_heads=2, num_key_value_heads=2, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
            topk_group=1, first_k_dense_replace=1, q_lora_rank=None, kv_lora_rank=8, qk_rope_head_dim=4,
            qk_nope_head_dim=4, v_head_dim=4))
    names = list(model.state_dict())
    mtp = [name.replace(".60.", ".61.") for name in names if name.startswith("model.layers.60.")]
    check_depths("model.path", "DIR", model.config, model, names + mtp)
    with pytest.raises(UserError, match=r"holds layers 0-62 of model.layers \(model.layers.62.input_layernorm.weight "
                                        r"of layers 61-62 would be left out\)"):
        check_depths("model.path", "DIR", model.config, model, [*names, *mtp, "model.layers.62.input_layernorm.weight"])


def test_tensors_no_single_field_explains_are_named_with_the_generic_fix():
    config = T.LlamaConfig(hidden_size=16, num_attention_heads=2, num_key_value_heads=2)
    problem = mismatch_problem(config, "org/name", {"model.layers.0.mlp.up_proj.weight": ((48, 24), (32, 16))},
                               [])
    assert problem == ("the checkpoint's model.layers.0.mlp.up_proj.weight is [48, 24] against the model's [32, 16]; "
                       "fix its config.json's sizes to the checkpoint's, or give a folder written by save_pretrained")

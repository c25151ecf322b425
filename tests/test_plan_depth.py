"""The memory planner on runs no deeper than its probes: a run shallower than the shallower of the layer counts a
method probes at (`probe_depths`: 2 and 3, a rotating group's more) is probed at its own depth (`planner_depths`).
Carried down from deeper probes, a line through their ops of a layer the run lacks kept that layer's activations:
a 1-layer GPT-2 (Conv1D, a GELU MLP four times as wide, dropout) planned +18 % from 2 and 3 layers, its absent second
layer's GELU backward over the loss's peak; a 1-layer Qwen2's layer keeps less than its loss and planned right."""

import pytest

from ftbench.methods import config_class, names
from ftbench.plan.planner import predict
from helpers import compose, run


def gpt2_folder(path):  # tied embeddings, Conv1D
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=300, n_positions=64)).save_pretrained(path)


def qwen2_folder(path):  # tied embeddings, a layer_types list of 1
    from transformers import Qwen2Config, Qwen2ForCausalLM

    Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2, vocab_size=300, max_position_embeddings=64,
                                 tie_word_embeddings=True)).save_pretrained(path)


def t5_folder(path):  # an encoder and a decoder of one block each
    from transformers import T5Config, T5ForConditionalGeneration

    T5ForConditionalGeneration(T5Config(d_model=32, d_ff=64, d_kv=8, num_layers=1, num_decoder_layers=1, num_heads=4,
                                        vocab_size=300, pad_token_id=0, eos_token_id=1,
                                        decoder_start_token_id=0)).save_pretrained(path)


def bart_folder(path):
    from transformers import BartConfig, BartForConditionalGeneration

    BartForConditionalGeneration(BartConfig(d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=1,
                                            decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                                            vocab_size=300, max_position_embeddings=64)).save_pretrained(path)


# (layout: overrides, a folder to write for model.path or None); one layer of every stack
LAYOUTS = {
    "llama": (["model=tiny-llama", "model.shape.num_hidden_layers=1"], None),
    "gpt2": (["model=tiny-llama"], gpt2_folder),
    "gpt2-lisa": (["model=tiny-llama", "method=lisa", "method.group_size=1"], gpt2_folder),
    "qwen2": (["model=tiny-llama"], qwen2_folder),
    "bert": (["model=tiny-bert", "model.shape.num_hidden_layers=1"], None),
    "t5": (["model=tiny-bert", "profile.objective=seq_cls"], t5_folder),
    "bart": (["model=tiny-bert", "profile.objective=seq_cls"], bart_folder),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny models


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_plan_of_one_layer_predicts_the_traced_peak(tmp_path, layout):
    overrides, folder = LAYOUTS[layout]
    args = [*overrides, "profile.batch_size=2", "profile.seq_len=48", "profile.warmup_steps=1", "profile.steps=2"]
    if folder is not None:
        folder(tmp_path / layout)
        args.append(f"model.path={tmp_path / layout}")
    real = run(tmp_path / "real", "mode=profile", *args)
    assert real["status"] == "ok", real["error"]
    plan = predict(compose("mode=plan", *args))
    predicted, traced = plan["memory"]["train_peak_allocated_bytes"], real["memory"]["train_peak_traced_bytes"]
    assert abs(predicted / traced - 1) < 0.01, (predicted, traced)
    assert plan["plan"]["layers"] == 1
    assert min(p["layers"] for p in plan["plan"]["probes"]) == 1  # probed at its own depth


# (method, its settings): every registered method at its defaults, and rotating groups of two taken in turn
DEPTH_METHODS = [(name, {}) for name in names()] + [("badam", {"group_size": 2}), ("hift", {"group_size": 2}),
                                                    ("lisa", {"group_size": 2})]


@pytest.mark.parametrize("name,settings", DEPTH_METHODS, ids=lambda v: str(v) if isinstance(v, str) else None)
@pytest.mark.parametrize("layers", [1, 2, 3, 4, 5, 8])
def test_a_run_is_never_planned_from_probes_deeper_than_itself(name, settings, layers):
    """Both probes at or above the run's depth only where the shallower one is the run's own."""
    method = config_class(name)(**settings)
    shallow, deep = method.planner_depths(layers)
    assert shallow < deep
    assert shallow <= layers
    assert (shallow, deep) == method.probe_depths(layers) or shallow == layers

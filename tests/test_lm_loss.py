"""The chunked causal-LM loss is the model's own loss, with less memory."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ftbench.engine.loss import chunked_causal_lm_loss, make_loss, model_loss
from ftbench.measure.trace import LiveTensorPeak
from ftbench.models.architecture import PLAIN_LM_HEAD
from helpers import run, tiny_model


def causal_lm(model_type: str, vocab: int = 100, tied: bool = False):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                                  max_position_embeddings=64, tie_word_embeddings=tied)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def prompt_masked_batch(vocab: int = 100):
    """Two sequences: a masked prompt, and right padding (no loss, no attention)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (2, 13), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.clone()
    labels[:, :4] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads_of(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_type,tied", [*((t, False) for t in sorted(PLAIN_LM_HEAD)), ("llama", True)])
@pytest.mark.parametrize("chunk_tokens", [1, 5, 26, 1000])  # one token, uneven chunks, exact, one chunk
@pytest.mark.parametrize("whole_chunks", [False, True], ids=["as-run", "whole"])  # whole: the planner's probes
def test_chunked_loss_equals_the_models_loss_and_gradients(model_type, tied, chunk_tokens, whole_chunks):
    model = causal_lm(model_type, tied=tied)
    batch = prompt_masked_batch()
    reference = model_loss(model, batch)
    expected = grads_of(model, reference)
    chunked = chunked_causal_lm_loss(model, batch, chunk_tokens, whole_chunks)
    torch.testing.assert_close(chunked, reference)
    got = grads_of(model, chunked)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_chunked_loss_through_a_peft_wrapper():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(causal_lm("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    batch = prompt_masked_batch()
    loss_fn = make_loss(model, "causal_lm", 7)
    assert loss_fn is not model_loss
    torch.testing.assert_close(loss_fn(model, batch), model_loss(model, batch))


def test_chunks_apply_only_where_they_are_exact():
    assert make_loss(tiny_model("tiny-llama", head="causal_lm"), "causal_lm", 256) is not model_loss
    assert make_loss(tiny_model("tiny-llama", head="causal_lm"), "causal_lm", None) is model_loss
    assert make_loss(tiny_model("tiny-llama"), "seq_cls", 256) is model_loss
    gpt2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", n_embd=32, n_layer=1, n_head=2))
    assert make_loss(gpt2, "causal_lm", 256) is model_loss  # a layout not known to be lm_head(decoder(x))


def test_chunks_lower_the_traced_peak():
    """With a large vocabulary the logits dominate; chunking keeps one chunk of them."""
    model = causal_lm("llama", vocab=8000)
    ids = torch.randint(0, 8000, (4, 64))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def peak(loss_fn) -> int:
        model.zero_grad(set_to_none=True)
        with LiveTensorPeak() as trace:
            loss_fn(model, batch).backward()
        return trace.peak_new_bytes

    logits_bytes = 4 * 64 * 8000 * 4  # one fp32 copy of the logits
    whole, chunked = peak(model_loss), peak(make_loss(model, "causal_lm", 32))
    assert whole - chunked > 2 * logits_bytes


def test_a_run_records_the_chunks(tmp_path):
    result = run(tmp_path / "run", "task=synthetic_lm", "train.max_steps=2", "train.loss_chunk_tokens=8")
    assert result["status"] == "ok" and result["plan"]["loss_chunk_tokens"] == 8
    plain = run(tmp_path / "plain", "task=synthetic_lm", "train.max_steps=2", "train.loss_chunk_tokens=null")
    assert plain["plan"]["loss_chunk_tokens"] is None
    assert result["train"]["loss_first"] == pytest.approx(plain["train"]["loss_first"], rel=1e-5)

"""Generation at a usable speed: the KV cache is on (and changes nothing), batches run longest
prompt first, and answers come back in the order the prompts were given."""

import contextlib

import pytest
import torch

from ftbench.models.tokenizer import byte_level_tokenizer
from ftbench.tasks import generate
from ftbench.tasks.base import EvalContext
from ftbench.tasks.instruct import encode_prompts
from helpers import tiny_model

QUESTIONS = ["1+1=", "a much longer prompt: 12+30=", "7+", "what is 3 times 4? ", "9-"]


def context(tmp_path, batch_size):
    return EvalContext(device=torch.device("cpu"), autocast=contextlib.nullcontext, batch_size=batch_size,
                       max_samples=None, output_dir=tmp_path, pad_to_multiple_of=None, progress=False)


@pytest.fixture(scope="module")
def setup():
    tokenizer = byte_level_tokenizer()
    model = tiny_model("tiny-llama", head="causal_lm")
    model.config.use_cache = False  # as run.py leaves it for training
    prompts = [generate.Prompt("s", q, ids) for q, ids in zip(QUESTIONS, encode_prompts(tokenizer, QUESTIONS))]
    return tokenizer, model, prompts


def record_forward_widths(model):
    widths = []
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                             with_kwargs=True)
    return widths, handle


@pytest.mark.parametrize("num_beams", [1, 3])
def test_with_the_cache_equals_without(tmp_path, setup, num_beams):
    tokenizer, model, prompts = setup
    decoding = generate.Decoding(num_beams=num_beams, max_new_tokens=8, min_new_tokens=0)
    widths, handle = record_forward_widths(model)
    try:
        cached = generate.complete(model, tokenizer, prompts, context(tmp_path, 5), decoding, generate.Throughput())
    finally:
        handle.remove()
    assert widths[0] > 1 and set(widths[1:]) == {1}  # after the prompt, one new token per forward: the cache is on
    model.eval()
    uncached = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt.ids])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 num_beams=num_beams, max_new_tokens=8, use_cache=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            new = out[0, ids.shape[1]:]
            length = int(generate.generated_lengths(new.unsqueeze(0), tokenizer.eos_token_id)[0])
            uncached.append(tokenizer.decode(new[:length], skip_special_tokens=True))
    model.train()
    assert cached == uncached
    assert model.config.use_cache is False  # restored for training


def test_batches_run_longest_first_and_answers_keep_the_prompt_order(tmp_path, setup):
    tokenizer, model, prompts = setup
    decoding = generate.Decoding(num_beams=1, max_new_tokens=4, min_new_tokens=0)
    widths, handle = record_forward_widths(model)
    try:
        batched = generate.complete(model, tokenizer, prompts, context(tmp_path, 2), decoding, generate.Throughput())
    finally:
        handle.remove()
    prompt_widths = [w for w in widths if w > 1]  # the first forward of each batch holds its padded prompts
    assert prompt_widths == sorted(prompt_widths, reverse=True) and len(prompt_widths) == 3
    assert prompt_widths[0] == max(len(p.ids) for p in prompts)
    alone = [generate.complete(model, tokenizer, [p], context(tmp_path, 1), decoding, generate.Throughput())[0]
             for p in prompts]
    assert batched == alone


def test_long_generation_logs_a_sign_of_life_within_a_batch(tmp_path, setup, monkeypatch, caplog):
    from ftbench import progress

    tokenizer, model, prompts = setup
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    decoding = generate.Decoding(num_beams=1, max_new_tokens=3, min_new_tokens=3)
    with caplog.at_level("INFO", logger="ftbench"):
        generate.complete(model, tokenizer, prompts, context(tmp_path, 5), decoding, generate.Throughput())
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "generate s: 5 prompts ..."
    assert "generate s: 0/5 prompts done, a batch of 5 at 2 new tokens" in lines
    assert lines[-1].startswith("generate s: 5 prompts in ")

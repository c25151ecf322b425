"""The LoRA family (methods/qlora, dora, pissa, loraplus over methods/lora), freeze tuning and
optim.name=adamw8bit: each does what its library says it does, its export reloads in plain
transformers/PEFT and computes what the trained model computed, what each holds is counted as held
(4-bit weights and their quantization state, 8-bit moments), and what a method cannot train with is
refused in one line when the config is composed."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from ftbench.config.schema import check
from ftbench.errors import UserError
from ftbench.measure.meters import QUANT_STATE, QUANTIZED, optimizer_state_parts, weight_parts
from ftbench.methods import build_method, config_class
from ftbench.methods.lora.config import LoraMethodConfig
from ftbench.models.architecture import architecture
from ftbench.plan.planner import plan_fit, target
from helpers import (
    compose,
    method_context,
    method_table,
    run,
    synthetic_batches,
    tiny_model,
    train_steps,
)

STEPS = 3


def trained(name: str, *overrides: str, optimizer: str = "adamw", lr: float = 1e-2):
    """A tiny causal LM prepared by method `name` and trained STEPS steps; (method, model, optimizer)."""
    method = build_method(compose(f"method={name}", *overrides).method)
    model = method.prepare(tiny_model(head="causal_lm"), method_context(head="causal_lm"))
    optimizer = train_steps(model, method, synthetic_batches(batch_size=4, head="causal_lm"), steps=STEPS, lr=lr,
                            optimizer=optimizer)
    return method, model, optimizer


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


BATCH = next(synthetic_batches(batch_size=2, seed=7, head="causal_lm"))


def test_qlora_holds_the_block_projections_in_4_bit_and_counts_their_quantization_state():
    import bitsandbytes as bnb

    method = build_method(compose("method=qlora").method)
    projections = architecture(tiny_model(head="causal_lm")).projections(("q", "k", "v", "o", "gate", "up", "down"))
    model = method.prepare(tiny_model(head="causal_lm"), method_context(head="causal_lm"))
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == len(projections)
    weight = quantized[0].weight
    assert weight.dtype == torch.uint8 and weight.numel() * 2 == quantized[0].in_features * quantized[0].out_features
    state = weight.quant_state
    assert state.blocksize == 64 and state.nested  # double quantization: uint8 absmax + its own fp32 absmax
    parts = weight_parts(model, [])
    assert parts[QUANTIZED] == sum(m.weight.numel() for m in quantized)  # two 4-bit values per byte
    absmax = sum(m.weight.quant_state.absmax.numel() for m in quantized)  # one uint8 per block of 64
    assert absmax <= parts[QUANT_STATE] < absmax + len(quantized) * (16 * 4 + 256 * 4 + 64)  # + code books, scalars


def test_qlora_merged_export_is_the_dequantized_base_plus_the_adapters(tmp_path):
    method, model, _ = trained("qlora", "method.dropout=0")
    expected = logits(model, BATCH)
    merged = AutoModelForCausalLM.from_pretrained(method.export(model, None, tmp_path)["merged"])
    assert torch.allclose(logits(merged, BATCH), expected, atol=1e-5)


def test_qlora_trains_the_same_after_an_evaluation():
    """An evaluation (eval mode, no grad) between training steps changes nothing training computes: the
    loss and every adapter's gradient are those of the same model never evaluated. bitsandbytes' AVX512-BF16
    CPU kernel, which repacks the weight at such a forward and has no backward, is kept off (the method)."""
    import bitsandbytes as bnb

    def step(evaluate_first: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        method = build_method(compose("method=qlora", "method.dropout=0").method)
        model = method.prepare(tiny_model(head="causal_lm"), method_context(head="causal_lm"))
        for name, param in model.named_parameters():  # B starts at 0: give every adapter a gradient to compare
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1, generator=torch.Generator().manual_seed(len(name)))
        if evaluate_first:
            logits(model, BATCH)
        assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules()
                       if isinstance(m, bnb.nn.Linear4bit))
        model.train()
        loss = model(input_ids=BATCH["input_ids"], attention_mask=BATCH["attention_mask"], labels=BATCH["input_ids"]).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if "lora_" in n}

    loss, grads = step(evaluate_first=True)
    fresh_loss, fresh_grads = step(evaluate_first=False)
    assert torch.equal(loss, fresh_loss)
    assert grads.keys() == fresh_grads.keys() and len(grads) > 0
    assert all(torch.equal(grads[n], fresh_grads[n]) for n in grads)


def test_pissa_adapter_converts_to_plain_lora_over_the_original_base(tmp_path):
    """PiSSA changes the base weights; its exported adapter (rank 2r) applies to the unchanged base."""
    from peft import PeftModel

    torch.manual_seed(0)
    original = tiny_model(head="causal_lm")
    base = {n: p.detach().clone() for n, p in original.named_parameters()}
    method = build_method(compose("method=pissa", "method.niter=0").method)
    model = method.prepare(original, method_context(head="causal_lm"))
    train_steps(model, method, synthetic_batches(batch_size=4, head="causal_lm"), steps=STEPS, lr=1e-2, optimizer="adamw")
    expected = logits(model, BATCH)
    paths = method.export(model, None, tmp_path)
    fresh = tiny_model(head="causal_lm")
    fresh.load_state_dict(base)
    adapter = PeftModel.from_pretrained(fresh, paths["adapter"])
    assert adapter.peft_config["default"].r == 2 * compose("method=pissa").method.r
    assert torch.allclose(logits(adapter, BATCH), expected, atol=1e-4)
    merged = AutoModelForCausalLM.from_pretrained(paths["merged"])
    assert torch.allclose(logits(merged, BATCH), expected, atol=1e-4)


def test_dora_trains_a_magnitude_per_output_feature():
    method, model, _ = trained("dora")
    magnitudes = {n: p for n, p in model.named_parameters() if "lora_magnitude_vector" in n}
    layer = model.get_submodule(next(iter(magnitudes)).rsplit(".lora_magnitude_vector", 1)[0])
    assert magnitudes and next(iter(magnitudes.values())).shape == (layer.base_layer.out_features,)
    assert set(magnitudes) <= method.trains(model, "causal_lm").must
    assert all(p.grad is None or p.requires_grad for p in magnitudes.values())


def test_loraplus_steps_b_with_lr_ratio_times_the_lr_of_a():
    method, model, optimizer = trained("loraplus")
    ratio = compose("method=loraplus").method.lr_ratio
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    a = [p for n, p in model.named_parameters() if ".lora_A." in n]
    b = [p for n, p in model.named_parameters() if ".lora_B." in n]
    assert {lr_of[id(p)] for p in a} == {1e-2} and {lr_of[id(p)] for p in b} == {1e-2 * ratio}


@pytest.mark.parametrize("layers", [1, 2])
def test_freeze_trains_the_last_layers_only(layers):
    method, model, _ = trained("freeze", f"method.layers={layers}")
    blocks = architecture(model).blocks
    trained_blocks = {b.name for b in blocks if any(p.requires_grad for p in model.get_submodule(b.name).parameters())}
    assert trained_blocks == {b.name for b in blocks[-layers:]}
    assert not any(p.requires_grad for n, p in model.named_parameters() if "embed" in n or n.startswith("lm_head"))


def test_freeze_is_planned_from_probes_that_hold_its_trained_layers():
    """Both probes train all N layers above one frozen layer (the larger above two): methods/config.py
    probe_layers, plan/planner.py plan_fit."""
    cfg = compose("mode=plan", "model=tiny-llama", "model.shape.num_hidden_layers=6", "method=freeze",
                  "method.layers=3", "profile.batch_size=2", "profile.seq_len=16")
    assert {p["layers"] for p in plan_fit(cfg, target(cfg)).probes} == {4, 5}


def test_adamw8bit_holds_uint8_moments_for_large_tensors():
    """bitsandbytes' AdamW8bit: moments of tensors of at least 4096 elements in uint8 (state1, state2), their
    absmax and code books beside; the others in fp32 (the library's min_8bit_size)."""
    _, model, optimizer = trained("full", optimizer="adamw8bit", lr=1e-3)
    parts = optimizer_state_parts(optimizer, None)
    large = [p for p in model.parameters() if p.numel() >= 4096]
    assert large and all(optimizer.state[p]["state1"].dtype == torch.uint8 for p in large)
    assert {"state1", "state2", "absmax1", "absmax2", "qmap1", "qmap2"} <= set(parts)
    full = sum(8 * p.numel() for p in model.parameters())  # AdamW's two fp32 moments
    assert parts["state1"] + parts["state2"] < full / 2


@pytest.mark.parametrize("method", ["lora", "qlora", "dora", "pissa", "loraplus", "freeze", "sift", "hift"])
def test_adamw8bit_is_accepted_by_the_methods_that_step_with_adamw(method):
    check(compose(f"method={method}", "optim.name=adamw8bit"))


@pytest.mark.parametrize("overrides,key", [
    (["method=galore", "optim.name=adamw8bit"], "optim.name"),  # their own optimizers (galore: method.optimizer)
    (["method=apollo", "optim.name=adamw8bit"], "optim.name"),
    (["method=adam-mini", "optim.name=adamw8bit"], "optim.name"),
    (["method=sparsegrad", "optim.name=adamw8bit"], "optim.name"),
    (["method=meprop", "optim.name=adamw8bit"], "optim.name"),
    (["method=loraplus", "optim.name=sgd"], "optim.name"),
    (["method=qlora", "hardware.shard=fsdp"], "hardware.shard"),
    (["method=dora", "hardware.shard=fsdp"], "hardware.shard"),
    (["method=pissa", "hardware.shard=fsdp"], "hardware.shard"),
    (["method=qlora", "method.quant_type=int4"], "method.quant_type"),
    (["method=qlora", "method.block_size=32"], "method.block_size"),
    (["method=pissa", "method.niter=-1"], "method.niter"),
    (["method=freeze", "method.layers=0"], "method.layers"),
])
def test_refused_in_one_line_when_composed(overrides, key):
    with pytest.raises(UserError) as refused:
        check(compose(*overrides))
    assert refused.value.key == key


def test_qlora_refuses_gpt2s_conv1d():
    method = build_method(compose("method=qlora").method)
    with pytest.raises(UserError) as refused:
        method.prepare(_gpt2(), method_context(head="causal_lm"))
    assert refused.value.key == "method" and "qlora" in str(refused.value)



TARGETED = [(name, quick) for name, quick in method_table("quick")
            if "target_modules" in {f.name for f in dataclasses.fields(config_class(name))}]


@pytest.mark.parametrize("name,quick", TARGETED, ids=[name for name, _ in TARGETED])
def test_a_target_that_is_no_linear_layer_is_refused_on_the_key(tmp_path, name, quick):
    """`method=lora method.target_modules=[norm]` (tiny-llama's final RMSNorm): was PEFT's ValueError, exit 1.
    Every method that takes target_modules refuses it in one line on the key, before training (exit 2)."""
    result = run(tmp_path / "run", f"method={name}", *quick, "method.target_modules=[norm]", "task.max_steps=2")
    error = result["error"]
    assert result["exit_code"] == 2 and result["status"] == "failed" and result["train"]["steps"] in (None, 0)
    assert error.startswith("method.target_modules: ") and "\n" not in error, error
    if issubclass(config_class(name), LoraMethodConfig):
        assert "'norm' is a LlamaRMSNorm" in error and "name linear layers: down_proj, gate_proj" in error, error


@pytest.mark.parametrize("value", ["q_proj", ".*proj"])
@pytest.mark.parametrize("name", [name for name, _ in TARGETED], ids=[name for name, _ in TARGETED])
def test_a_string_other_than_all_linear_is_refused_when_composed(name, value):
    """`method=lora method.target_modules=q_proj`: PEFT read the string as a regex over whole module paths
    (NoMatchingPeftModuleError, exit 1) while ftbench checked it as one name (`.*proj`, which PEFT matches, was
    refused as no module); GaLore and APOLLO took it as one name. A string is all-linear (or SIFT's presets) only."""
    with pytest.raises(UserError) as refused:
        check(compose(f"method={name}", f"method.target_modules={value}"))
    assert refused.value.key == "method.target_modules" and "list of module names" in str(refused.value)


def test_a_bare_module_name_is_refused_before_training(tmp_path):
    result = run(tmp_path / "run", "method=lora", "method.target_modules=q_proj", "task.max_steps=2")
    assert result["exit_code"] == 2 and result["status"] == "failed" and result["train"]["steps"] in (None, 0)
    assert result["error"].startswith("method.target_modules: 'q_proj' is not all-linear,"), result["error"]


@pytest.mark.parametrize("name", [name for name, _ in TARGETED if issubclass(config_class(name), LoraMethodConfig)])
def test_a_listed_path_end_is_adapted_as_peft_matches_it(name):
    """`[self_attn.q_proj]`: PEFT matches a list's entry against the end of a module's path; the check did
    against its last name only and refused it."""
    method = build_method(compose(f"method={name}", "method.target_modules=[self_attn.q_proj]").method)
    prepared = method.prepare(tiny_model(head="causal_lm"), method_context(head="causal_lm"))
    assert method.describe(prepared)["target_modules"] == ["q_proj"]


@pytest.mark.parametrize("name", [name for name, _ in TARGETED if issubclass(config_class(name), LoraMethodConfig)])
def test_lora_family_adapts_what_peft_adapts_besides_nn_linear(name):
    """Not refused: an embedding (every LoRA variant of PEFT wraps nn.Embedding) and GPT-2's Conv1D (QLoRA
    refuses GPT-2 itself: test_qlora_refuses_gpt2s_conv1d)."""
    models = [("embed_tokens", tiny_model(head="causal_lm"))] + ([] if name == "qlora" else [("c_attn", _gpt2())])
    for module, model in models:
        method = build_method(compose(f"method={name}", f"method.target_modules=[{module}]").method)
        prepared = method.prepare(model, method_context(head="causal_lm"))
        assert method.describe(prepared)["target_modules"] == [module]

LORA_FAMILY = [name for name, _ in TARGETED if issubclass(config_class(name), LoraMethodConfig)]


@pytest.mark.parametrize("model,head,linear", [("tiny-llama", "score", "q_proj"), ("tiny-bert", "classifier", "query")])
@pytest.mark.parametrize("name", LORA_FAMILY)
def test_a_list_naming_only_the_task_head_is_refused_and_a_mixed_one_adapts_the_rest(name, model, head, linear):
    """`method=lora method.target_modules=[score]`: PEFT leaves the head to modules_to_save, found nothing to
    adapt and raised NoMatchingPeftModuleError (exit 1); refused on the key, naming the linear layers. The head
    beside a real linear is not refused: PEFT adapts the linear and not the head."""
    method = build_method(compose(f"method={name}", f"method.target_modules=[{head}]").method)
    with pytest.raises(UserError) as refused:
        method.prepare(tiny_model(model), method_context())
    assert refused.value.key == "method.target_modules", refused.value
    assert f"[{head}] names only the task head ({head})" in str(refused.value), refused.value
    assert "name linear layers: " in str(refused.value) and linear in str(refused.value), refused.value
    method = build_method(compose(f"method={name}", f"method.target_modules=[{head},{linear}]").method)
    prepared = method.prepare(tiny_model(model), method_context())
    assert method.describe(prepared)["target_modules"] == [linear]
    assert not [n for n, _ in prepared.named_parameters() if "lora_" in n and f".{head}." in n]


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))


def test_adamw8bit_state_resumes_bitwise(tmp_path, monkeypatch):
    """tests/test_resume.py's kill-and-resume run with the 8-bit states (every tensor in 8 bits, however small):
    the uint8 moments, their absmax and code books travel in the checkpoint and the run continues bitwise."""
    import test_resume

    monkeypatch.setitem(test_resume.METHODS, "qlora",
                        [*test_resume.METHODS["qlora"], "optim.name=adamw8bit", "optim.min_8bit_size=1"])
    test_resume.test_a_killed_then_stopped_run_resumes_bitwise(tmp_path, monkeypatch, "qlora")


def test_a_4_bit_weight_counts_its_elements_not_its_bytes(tmp_path):
    from helpers import run

    counts = {name: run(tmp_path / name, f"method={name}", "task.max_steps=1", "task.num_train=16",
                        "task.num_eval=8")["params"] for name in ("lora", "qlora")}
    assert counts["qlora"]["total"] == counts["lora"]["total"]

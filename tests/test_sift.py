"""SIFT against dense references: rate 1.0 is fine-tuning of the targets, small rates touch only
the selected entries, accumulation and checkpointing change nothing, the optimizer holds k-sized
state, exports round-trip, and every selection strategy picks what it says."""

import copy
import functools
import json
from dataclasses import asdict

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from ftbench.errors import UserError
from ftbench.measure.meters import held_optimizer_state_bytes
from ftbench.methods.base import Method, MethodConfig
from ftbench.methods.sampled_grad import choose
from ftbench.methods.sift.method import (
    MASTER_SUFFIXES,
    SELECTION_FILE,
    Sift,
    SiftConfig,
    apply_delta,
)
from ftbench.methods.sift.select import head_modules, resolve_targets, selected_count, top_k
from ftbench.models import architecture
from helpers import compose, method_context, run, synthetic_batches, tiny_model, train_steps


@functools.cache
def _pristine(model_name, dtype):
    torch.manual_seed(0)
    return tiny_model(model_name, dtype=dtype)


def fresh(model_name="tiny-llama", dtype="fp32"):
    """The same random-init tiny model every time (built once: composing configs is slow)."""
    return copy.deepcopy(_pristine(model_name, dtype))


def prepared(model_name="tiny-llama", checkpointing=False, dtype="fp32", seed=0, output_dir=None, **settings):
    model = fresh(model_name, dtype)
    torch.manual_seed(0)  # calibration draws dropout masks
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    method = Sift(SiftConfig(**settings))
    ctx = method_context(checkpointing=checkpointing, seed=seed)
    ctx.output_dir = output_dir
    return method.prepare(model, ctx), method


def dense_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(MASTER_SUFFIXES)}


class DenseSubset(Method):
    """The reference: the named tensors train densely, everything else is frozen."""

    def __init__(self, names):
        super().__init__(MethodConfig(name="dense-subset"))
        self.names = names

    def prepare(self, model, ctx):
        for name, param in model.named_parameters():
            param.requires_grad_(name in self.names)
        return model


def test_yaml_matches_the_schema_defaults():
    composed = OmegaConf.to_container(compose("method=sift").method)
    assert composed == asdict(SiftConfig())


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-bert"])
def test_rate_one_with_sgd_is_fine_tuning_of_the_targets_step_by_step(model_name):
    sift_model, method = prepared(model_name, sparse_rate=1.0, selection="random")
    trained = [f"{n}.{kind}" for n, layer in method.named_layers.items() for kind in ("weight", "bias")
               if getattr(layer, kind) is not None]
    trained += [f"{m}.{n}" for m in method.exceptions for n, _ in sift_model.get_submodule(m).named_parameters()]
    reference = DenseSubset(set(trained))
    dense_model = reference.prepare(fresh(model_name), None)
    assert dense_state(sift_model).keys() == dense_model.state_dict().keys()
    sift_batches, dense_batches = synthetic_batches(seed=3), synthetic_batches(seed=3)
    for step in range(3):  # SGD has no state: one-step fits are the same run, checked after every step
        torch.manual_seed(step)  # the same dropout masks
        train_steps(sift_model, method, sift_batches, 1, lr=0.5)
        torch.manual_seed(step)
        train_steps(dense_model, reference, dense_batches, 1, lr=0.5)
        expected = dense_model.state_dict()
        for key, value in dense_state(sift_model).items():
            torch.testing.assert_close(value, expected[key], msg=key)
    assert any(not torch.equal(v, fresh(model_name).state_dict()[k]) for k, v in expected.items())


def test_small_rate_changes_only_the_selected_entries_of_every_target():
    model, method = prepared("tiny-bert", sparse_rate=0.05)
    before = dense_state(model)
    train_steps(model, method, synthetic_batches(), 4, lr=1e-2, optimizer="adamw")
    after = dense_state(model)
    first = next(iter(method.named_layers))
    assert first == "bert.encoder.layer.0.attention.self.query"  # the one the reference never trained
    for name, layer in method.named_layers.items():
        for kind, index in (("weight", layer.selected_index()), ("bias", layer.bias_index)):
            changed = (after[f"{name}.{kind}"] != before[f"{name}.{kind}"]).reshape(-1).nonzero().squeeze(1)
            assert torch.equal(changed, index.long()), f"{name}.{kind}: changed entries differ from the selection"
    untouched = [k for k in before if k.split(".weight")[0].split(".bias")[0] not in method.named_layers
                 and not k.startswith("classifier.")]
    assert untouched and all(torch.equal(before[k], after[k]) for k in untouched)
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])  # the head trains densely


def halves(stream):
    for batch in stream:
        yield {k: v[:4] for k, v in batch.items()}
        yield {k: v[4:] for k, v in batch.items()}


def test_accumulation_equals_one_larger_batch():
    whole_model, whole = prepared(sparse_rate=0.1)
    split_model, split = prepared(sparse_rate=0.1)
    train_steps(whole_model, whole, synthetic_batches(8, seed=5), 3, lr=0.5)
    train_steps(split_model, split, halves(synthetic_batches(8, seed=5)), 3, lr=0.5, accumulation=2)
    expected = dense_state(whole_model)
    for key, value in dense_state(split_model).items():
        torch.testing.assert_close(value, expected[key], msg=key)


def test_checkpointing_on_and_off_give_the_same_weights():
    plain_model, plain = prepared(sparse_rate=0.1)
    ckpt_model, ckpt = prepared(sparse_rate=0.1, checkpointing=True)
    assert all(torch.equal(a, b) for a, b in zip(plain.selection().values(), ckpt.selection().values()))
    train_steps(plain_model, plain, synthetic_batches(), 3, lr=1e-2, optimizer="adamw")
    train_steps(ckpt_model, ckpt, synthetic_batches(), 3, lr=1e-2, optimizer="adamw")
    expected = dense_state(plain_model)
    for key, value in dense_state(ckpt_model).items():
        torch.testing.assert_close(value, expected[key], msg=key)


@pytest.mark.parametrize("dtype,master_dtype,state_bytes", [("fp32", "fp32", 4), ("bf16-pure", "fp32", 4),
                                                            ("bf16-pure", "weight", 2)])
def test_optimizer_holds_two_states_per_selected_entry_and_no_dense_gradient(dtype, master_dtype, state_bytes):
    model, method = prepared(dtype=dtype, sparse_rate=0.05, master_dtype=master_dtype, exception_modules=[])
    optimizer = train_steps(model, method, synthetic_batches(), 1, lr=1e-3, optimizer="adamw")
    assert {id(p) for p in optimizer.state} == {id(p) for p in method.master_parameters()}
    k_total = 0
    for layer in method.layers:
        k = selected_count(layer.weight.numel(), 0.05)
        k_total += k
        state = optimizer.state[layer.master]
        assert layer.index.dtype == torch.int16 and layer.index.numel() == k  # 2 bytes per selected entry
        assert layer.block_counts.numel() == -(-layer.weight.numel() // 2**15)  # and one count per 2^15 entries
        assert {n: t.numel() * t.element_size() for n, t in state.items() if n != "step"} == \
            {"exp_avg": state_bytes * k, "exp_avg_sq": state_bytes * k}
    held, _ = held_optimizer_state_bytes(optimizer, torch.device("cpu"))
    step_counters = sum(s["step"].numel() * s["step"].element_size() for s in optimizer.state.values())
    assert held - step_counters == 2 * state_bytes * k_total
    model.train()
    model(**next(synthetic_batches())).loss.backward()
    kept = [n for n, p in model.named_parameters() if p.grad is not None and not n.endswith(MASTER_SUFFIXES)]
    assert kept == [], "a dense gradient outlived the backward pass"


def test_weight_decay_decays_the_selected_weights_not_the_biases():
    runs = {}
    for decay in (0.0, 0.5):
        model, method = prepared("tiny-bert", sparse_rate=0.05, exception_modules=[])
        before = dense_state(model)
        train_steps(model, method, synthetic_batches(), 1, lr=1e-2, optimizer="adamw", weight_decay=decay)
        runs[decay] = dense_state(model)
    name, layer = next(iter(method.named_layers.items()))
    w0 = before[f"{name}.weight"].reshape(-1)[layer.selected_index()]
    shift = (runs[0.5][f"{name}.weight"] - runs[0.0][f"{name}.weight"]).reshape(-1)[layer.selected_index()]
    torch.testing.assert_close(shift, -1e-2 * 0.5 * w0)  # AdamW's decoupled decay: W <- W (1 - lr wd)
    assert torch.equal(runs[0.5][f"{name}.bias"], runs[0.0][f"{name}.bias"])


@pytest.mark.parametrize("policy", ["sparse", "dense", "frozen"])
def test_bias_policies(policy):
    model, method = prepared("tiny-bert", sparse_rate=0.05, bias=policy, exception_modules=[])
    before = dense_state(model)
    train_steps(model, method, synthetic_batches(), 2, lr=1e-2, optimizer="adamw")
    after = dense_state(model)
    for name, layer in method.named_layers.items():
        changed = (after[f"{name}.bias"] != before[f"{name}.bias"]).sum().item()
        expected = {"sparse": selected_count(layer.bias.numel(), 0.05), "dense": layer.bias.numel(), "frozen": 0}
        assert changed == expected[policy], name
    groups = {g["name"]: g["weight_decay"] for g in method.param_groups(model, 0.1)}
    assert groups.pop("selected") == 0.1 and all(decay == 0.0 for decay in groups.values())


def test_export_round_trips(tmp_path):
    from transformers import AutoModelForSequenceClassification

    base = fresh("tiny-bert")
    model, method = prepared("tiny-bert", sparse_rate=0.05)
    train_steps(model, method, synthetic_batches(), 3, lr=1e-2, optimizer="adamw")
    paths = method.export(model, None, tmp_path)
    merged = AutoModelForSequenceClassification.from_pretrained(paths["merged"]).state_dict()
    trained = dense_state(model)
    assert merged.keys() == trained.keys()
    assert all(torch.equal(merged[k], trained[k]) for k in merged)
    delta = load_file(paths["delta"])
    assert sum(v.numel() for v in delta.values()) < 0.2 * sum(v.numel() for v in merged.values())
    apply_delta(base, delta)
    rebuilt = base.state_dict()
    assert all(torch.equal(rebuilt[k], merged[k]) for k in merged), "delta + base != merged"


def test_sparse_rate_sweep_runs(tmp_path):
    from ftbench.cli import main

    with pytest.raises(SystemExit) as done:  # the real multirun, in this process (no interpreter start-up)
        main(["-m", "method=sift", "method.sparse_rate=0.01,0.05", "hardware=cpu", "task.max_steps=3",
              "task.num_train=64", "task.num_eval=16", "train.progress=false", f"hydra.sweep.dir={tmp_path}"])
    assert done.value.code == 0
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/result.json"))]
    assert [r["status"] for r in results] == ["ok", "ok"]
    rates = [r["method"]["sparse_rate"] for r in results]
    selected = [r["method"]["selected"] for r in results]
    assert rates == [0.01, 0.05] and selected[0] < selected[1]


# -- targets and exceptions ------------------------------------------------------------------------

def test_presets_resolve_per_architecture():
    bert, llama = fresh("tiny-bert"), fresh("tiny-llama")
    attention = resolve_targets(bert, "attention", [])
    assert [n.split("layer.0.")[-1] for n in attention][:4] == [
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]
    mlp = resolve_targets(bert, "mlp", [])
    assert len(mlp) == 4 and not any("attention" in n for n in mlp)  # output.dense, never attention.output.dense
    assert list(resolve_targets(bert, "auto", [])) == list(attention)
    assert "bert.pooler.dense" in resolve_targets(bert, "all-linear", head_modules(bert, "seq_cls"))
    assert "classifier" not in resolve_targets(bert, "all-linear", [])
    projections = resolve_targets(llama, "auto", [])
    assert len(projections) == 14 and "score" not in projections
    assert list(resolve_targets(bert, ["query", "attention.output.dense"], [])) == [
        n for n in attention if n.endswith(("query", "attention.output.dense"))]
    assert head_modules(bert, "seq_cls") == ["classifier"] and head_modules(llama, "seq_cls") == ["score"]
    assert head_modules(llama, "causal_lm") == []


@pytest.mark.parametrize("spec,layouts", [(["nope"], None), (["attention"], None), ("auto", {})])
def test_bad_targets_name_the_key_and_the_linear_layers(spec, layouts, monkeypatch):
    if layouts is not None:  # a family whose projections the registry cannot name: no preset
        monkeypatch.setattr(architecture, "LAYOUTS", layouts)
    with pytest.raises(UserError) as caught:
        resolve_targets(fresh("tiny-bert"), spec, [])
    assert caught.value.key == "method.target_modules" and "attention.self.query" in str(caught.value)


def test_a_target_list_of_the_exception_modules_alone_lists_the_layers_outside_them():
    """[score] under exception_modules=head selects nothing; the layers offered exclude the head (it listed score)."""
    llama = fresh("tiny-llama")
    with pytest.raises(UserError, match=r"^method.target_modules: \['score'\] selects no layer outside the exception "
                                        r"modules") as caught:
        resolve_targets(llama, ["score"], head_modules(llama, "seq_cls"))
    offered = str(caught.value).split("linear layers outside them: ")[1].split(", ")
    assert "self_attn.q_proj" in offered and "score" not in offered


def test_bad_values_end_the_run_with_a_user_error(tmp_path):
    result = run(tmp_path / "a", "method=sift", "method.sparse_rate=0")
    assert result["exit_code"] == 2 and result["error"].startswith("method.sparse_rate")
    result = run(tmp_path / "b", "method=sift", "method.target_modules=[nope]", "task.num_train=64")
    assert result["exit_code"] == 2 and "linear layers here" in result["error"]


# -- selection -------------------------------------------------------------------------------------

def calibration_gradients(n_batches):
    """The dense reference: summed gradients of the target weights on the calibration batches."""
    model = fresh()
    model.requires_grad_(False)
    targets = resolve_targets(model, "auto", ["score"])
    for layer in targets.values():
        layer.weight.requires_grad_(True)
    model.train()
    for batch in method_context().calibration_batches(n_batches):
        model(**batch).loss.backward()
    return {f"{n}.weight": layer.weight.grad for n, layer in targets.items()}


@pytest.mark.parametrize("n_batches", [1, 2])
def test_grad_selection_is_the_top_k_of_the_calibration_gradient(n_batches):
    untouched = dense_state(fresh())
    model, method = prepared(sparse_rate=0.05, calibration_batches=n_batches)
    for name, grad in calibration_gradients(n_batches).items():
        assert torch.equal(method.selection()[name].long(), top_k(grad.abs(), selected_count(grad.numel(), 0.05))), name
    assert all(torch.equal(v, untouched[k]) for k, v in dense_state(model).items())  # no update from calibration
    assert all(p.grad is None for p in model.parameters())


def test_random_and_magnitude_selection():
    first = prepared(sparse_rate=0.05, selection="random", seed=1)[1].selection()
    again = prepared(sparse_rate=0.05, selection="random", seed=1)[1].selection()
    other = prepared(sparse_rate=0.05, selection="random", seed=2)[1].selection()
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)
    q, k = (first[f"model.layers.0.self_attn.{p}.weight"] for p in ("q_proj", "o_proj"))
    assert not torch.equal(q, k)  # equal-sized tensors get different draws
    model, method = prepared(sparse_rate=0.05, selection="magnitude")
    for layer in method.layers:
        assert torch.equal(layer.selected_index().long(), top_k(layer.weight.detach().abs(), layer.master.numel()))


def test_top_k_breaks_ties_towards_the_lower_index():
    assert top_k(torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0]), 2).tolist() == [1, 2]
    assert top_k(torch.zeros(6), 3).tolist() == [0, 1, 2]


def test_selection_is_recorded_and_described(tmp_path):
    model, method = prepared("tiny-bert", sparse_rate=0.02, output_dir=tmp_path)
    recorded = load_file(str(tmp_path / SELECTION_FILE))
    assert recorded.keys() == method.selection().keys()
    assert all(torch.equal(recorded[n], i) for n, i in method.selection().items())
    info = method.describe(model)
    expected = sum(selected_count(model.get_parameter(n).numel(), 0.02) for n in recorded)
    assert info["selected"] == expected and info["target_layers"] == 8 and info["exception_modules"] == ["classifier"]
    assert info["dense_trainable"] == sum(p.numel() for p in model.classifier.parameters())
    assert info["weight_grad"] == "auto" and info["weight_grad_paths"] == {  # the cost model's choice per layer
        name: choose(*layer.weight.shape, layer.master.numel(), layer.weight.device)
        for name, layer in method.named_layers.items()}


def test_state_dict_carries_the_selection():
    _, source = prepared("tiny-bert", sparse_rate=0.05, selection="random", seed=1)
    model, target = prepared("tiny-bert", sparse_rate=0.05, selection="random", seed=2)
    target.load_state_dict(copy.deepcopy(source.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(source.selection().values(), target.selection().values()))
    for layer in target.layers:
        assert torch.equal(layer.master, layer.weight.reshape(-1)[layer.selected_index()])
        assert torch.equal(layer.bias_master, layer.bias[layer.bias_index])

"""S2FT against dense references: selecting everything is full fine-tuning of V/O/Up/Down,
small ratios change only the selected slices, O/Down save only the selected inputs, each
strategy picks what it claims on a hand-made model, and the adapter switches exactly."""

import copy
import dataclasses
import functools
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from ftbench.config.schema import check
from ftbench.errors import UserError
from ftbench.methods.full.method import FullConfig, FullFineTuning
from ftbench.methods.partial_linear import partial_layers
from ftbench.methods.s2ft import adapter as s2ft_adapter
from ftbench.methods.s2ft.method import S2ft, S2ftConfig
from ftbench.methods.s2ft.select import find_blocks, select_units
from helpers import REPO, compose, method_context, synthetic_batches, tiny_model, train_steps

EVERYTHING = dict(v_ratio=1.0, o_ratio=1.0, u_ratio=1.0, d_ratio=1.0)


@functools.cache
def _built(name):
    torch.manual_seed(0)
    return tiny_model(name)


def base_model(name="tiny-llama", dtype=torch.float64):
    """A fresh copy of the same random-init base model."""
    return copy.deepcopy(_built(name)).to(dtype)


def prepared(model, model_name="tiny-llama", seed=0, **settings):
    method = S2ft(S2ftConfig(**settings))
    model = method.prepare(model, method_context(seed=seed))
    return model, method


def projection_weights(model):
    return [f"{block[p].name}.weight" for block in find_blocks(model) for p in "voud"]


def recording(method, model, names):
    """Snapshot `names` after every optimizer step (the loop's after_step hook)."""
    steps, after_step = [], method.after_step

    def after(step):
        after_step(step)
        steps.append({n: model.get_parameter(n).detach().clone() for n in names})

    method.after_step = after
    return steps


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-bert"])  # GQA; biased layers
def test_selecting_everything_is_full_finetuning_of_the_projections(model_name):
    reference = base_model(model_name)
    model, method = prepared(copy.deepcopy(reference), model_name, master_dtype="weight", **EVERYTHING)
    dense = FullFineTuning(FullConfig())
    reference = dense.prepare(reference, method_context())
    trained = projection_weights(reference) + method.head
    for name, param in reference.named_parameters():
        param.requires_grad_(name in trained)
    stream = synthetic_batches()
    batches = [next(stream) for _ in range(3)]
    runs = []
    for m, how in ((reference, dense), (model, method)):
        runs.append(recording(how, m, trained))
        torch.manual_seed(1)  # the same dropout masks in both (BERT)
        train_steps(m, how, iter(batches), steps=3, lr=0.5)
    assert len(runs[1]) == 3
    for step, (expected, got) in enumerate(zip(*runs)):
        for name in trained:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12, msg=f"step {step}: {name}")
    assert all(model.get_parameter(n).grad is None for n in projection_weights(model))


def test_small_ratios_change_only_the_selected_slices():
    model = base_model(dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, method = prepared(model, v_ratio=0.5, o_ratio=0.25, u_ratio=0.05, d_ratio=0.05, train_head=False)
    train_steps(model, method, synthetic_batches(), steps=3, lr=1e-2, optimizer="adamw")
    layers = {f"{name}.weight": layer for name, layer in partial_layers(model).items()}
    assert {layer.kind for layer in layers.values()} == {"rows", "cols"}
    for name, param in model.named_parameters():
        if name.endswith(".master"):
            continue
        changed = param.detach() != before[name]
        allowed = torch.zeros_like(changed)
        if name in layers:
            layer = layers[name]
            allowed.index_fill_(0 if layer.kind == "rows" else 1, layer.index, True)
            slice_changed = changed[layer.index] if layer.kind == "rows" else changed[:, layer.index]
            assert slice_changed.all(), f"{name}: a selected element did not train"
        assert not (changed & ~allowed).any(), f"{name} changed outside the selected slices"
    assert not any(n.endswith(("q_proj.weight", "k_proj.weight", "gate_proj.weight")) for n in layers)


def test_column_slices_save_only_the_selected_inputs():
    model, method = prepared(base_model(dtype=torch.float32), o_ratio=0.5, d_ratio=0.25)
    saved, active = {}, []
    for name, layer in partial_layers(model).items():
        layer.register_forward_pre_hook(lambda m, a, name=name: active.append(name))
        layer.register_forward_hook(lambda m, a, o: active.clear())

    def pack(t):
        if active:
            saved.setdefault(active[0], []).append(t)
        return t

    batch = next(synthetic_batches(batch_size=4, length=10))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch)
    layers = partial_layers(model)
    assert {layers[n].kind for n in saved} == {"cols"} and len(saved) == len(layers)
    for name, tensors in saved.items():
        layer = layers[name]
        activations = [t for t in tensors if t.data_ptr() != layer.weight.data_ptr() and t.dtype != torch.long]
        width = layer.index.numel()
        assert [tuple(t.shape) for t in activations] == [(4, 10, width)], name
        assert activations[0].untyped_storage().nbytes() == 4 * 10 * width * 4, f"{name} pins a larger input"


def test_accumulation_equals_a_larger_batch():
    stream = synthetic_batches(batch_size=8)
    batches = [next(stream), next(stream)]
    halves = [{k: v[part] for k, v in b.items()} for b in batches for part in (slice(0, 4), slice(4, 8))]
    runs = []
    for data, accumulation in ((batches, 1), (halves, 2)):
        model, method = prepared(base_model(), master_dtype="weight", o_ratio=0.5, d_ratio=0.25, v_ratio=0.5,
                                 u_ratio=0.1)
        train_steps(model, method, iter(data), steps=2, lr=1e-2, optimizer="adamw", accumulation=accumulation)
        runs.append({n: p.detach() for n, p in model.named_parameters()})
    for name, value in runs[0].items():
        torch.testing.assert_close(runs[1][name], value, rtol=1e-10, atol=1e-12, msg=name)


# -- selection -------------------------------------------------------------------------------

def test_random_selection_is_reproducible_and_counts_add_up():
    model = base_model()
    blocks = find_blocks(model)
    assert [blocks[0][p].units for p in "voud"] == [2, 4, 128, 128]  # GQA: V has the 2 K/V heads
    assert [blocks[0][p].unit_size for p in "voud"] == [16, 16, 1, 1]
    cfg = S2ftConfig(v_ratio=0.5, o_ratio=0.5, u_ratio=0.1, d_ratio=0.1)
    draw = [select_units(model, blocks, cfg, method_context(seed=s)) for s in (3, 3, 4)]
    assert all(torch.equal(a, b) for p in draw[0] for a, b in zip(draw[0][p], draw[1][p]))
    assert any(not torch.equal(a, b) for p in draw[0] for a, b in zip(draw[0][p], draw[2][p]))
    totals = {p: sum(u.numel() for u in per_block) for p, per_block in draw[0].items()}
    assert totals == {"v": 2, "o": 4, "u": 25, "d": 25}
    even = select_units(model, blocks, dataclasses.replace(cfg, allocation="per_layer"), method_context(seed=3))
    assert sorted(u.numel() for u in even["u"]) == [12, 13]


# Per layer: a marked K/V head (layer 0: head 1, i.e. query heads 2 and 3; layer 1: head 0) and 4 channels.
MARKED = [(1, torch.tensor([3, 40, 77, 120])), (0, torch.tensor([0, 9, 64, 127]))]


# Which weights make a marked unit stand out, per score: its own slice (weight); the weights that
# produce its activation (O and Down read V's and Up's outputs); the weights its gradient flows
# through (O and Down: their inputs; V and Up: the O columns and Down columns reading them).
SOURCES = {
    "weight": {"v": ("v", "rows"), "o": ("o", "cols"), "u": ("u", "rows"), "d": ("d", "cols")},
    "activation": {"v": ("v", "rows"), "o": ("v", "rows"), "u": ("u", "rows"), "d": ("u", "rows")},
    "gradient": {"v": ("o", "cols"), "o": ("v", "rows"), "u": ("d", "cols"), "d": ("u", "rows")},
}
SOURCES["weight_x_activation"] = SOURCES["activation"]


def scale(model, marked, projection, factor, strategy):
    """Multiply the weights that drive the marked units' scores by `factor`."""
    source, axis = SOURCES[strategy][projection]
    with torch.no_grad():
        for block, (kv_head, channels) in zip(find_blocks(model), marked):
            weight = model.get_submodule(block[source].name).weight
            if source in ("v", "o"):  # K/V head rows of V, or the columns of its two query heads in O
                index = torch.arange(16 * kv_head, 16 * (kv_head + 1)) if source == "v" else \
                    torch.arange(32 * kv_head, 32 * (kv_head + 1))
            else:
                index = channels
            if axis == "rows":
                weight[index] = weight[index] * factor
            else:
                weight[:, index] = weight[:, index] * factor


def expected_units(marked, projection):
    if projection == "v":
        return [torch.tensor([kv]) for kv, _ in marked]
    if projection == "o":
        return [torch.tensor([2 * kv, 2 * kv + 1]) for kv, _ in marked]
    return [channels for _, channels in marked]


RATIO_FOR = {"v": 0.5, "o": 0.5, "u": 4 / 128, "d": 4 / 128}  # exactly the marked count per layer


@pytest.mark.parametrize("projection", ["v", "o", "u", "d"])
@pytest.mark.parametrize("order,factor", [("smallest", 0.0), ("largest", 100.0)])
@pytest.mark.parametrize("strategy", ["weight", "activation", "weight_x_activation", "gradient"])
def test_each_strategy_selects_what_it_claims(strategy, order, factor, projection):
    model = base_model().requires_grad_(False)  # as prepare() leaves it
    scale(model, MARKED, projection, factor, strategy)
    ratios = {f"{p}_ratio": RATIO_FOR[p] if p == projection else 0.0 for p in "voud"}
    cfg = S2ftConfig(strategy=strategy, order=order, allocation="per_layer", calibration_samples=8, **ratios)
    units = select_units(model, find_blocks(model), cfg, method_context())[projection]
    for got, want in zip(units, expected_units(MARKED, projection)):
        assert torch.equal(got, want.sort().values), f"{strategy}/{order}: got {got.tolist()}"
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())  # calibration left no trace


def test_global_allocation_follows_the_scores_across_layers():
    model = base_model()
    o_weights = [model.get_submodule(b["o"].name).weight for b in find_blocks(model)]
    with torch.no_grad():
        o_weights[0][:, :48].mul_(10)  # heads 0, 1, 2 of layer 0
        o_weights[1][:, 48:].mul_(10)  # head 3 of layer 1
    cfg = S2ftConfig(strategy="weight", order="largest", o_ratio=0.5, d_ratio=0.0)
    units = select_units(model, find_blocks(model), cfg, method_context())["o"]
    assert [u.tolist() for u in units] == [[0, 1, 2], [3]]


def test_selection_is_recorded_and_reused_on_resume(tmp_path):
    ctx = dataclasses.replace(method_context(seed=5), output_dir=tmp_path)
    method = S2ft(S2ftConfig(o_ratio=0.5, d_ratio=0.1))
    method.prepare(base_model(), ctx)
    record = json.loads((tmp_path / "s2ft_selection.json").read_text())
    assert record["blocks"][1]["o_heads"] == method.units["o"][1].tolist()
    assert record["blocks"][0]["block"] == "model.layers.0"
    described = method.describe(None)
    assert described["selected"] == {"o_heads": 4, "d_channels": 25}
    resumed = S2ft(S2ftConfig(o_ratio=0.5, d_ratio=0.1))
    resumed.prepare(base_model(), method_context(seed=6))  # another seed draws another selection
    assert any(not torch.equal(a, b) for p in method.units for a, b in zip(method.units[p], resumed.units[p]))
    resumed.load_state_dict(method.state_dict())  # after prepare (and attach): the loaded selection wins
    assert all(torch.equal(a, b) for p in method.units for a, b in zip(method.units[p], resumed.units[p]))
    for layer in resumed.named_layers.values():  # the slices moved, their masters restart from the weights
        assert torch.equal(layer.master, layer.selected_values().to(layer.master.dtype))
    fresh = S2ft(S2ftConfig(o_ratio=0.5, d_ratio=0.1))
    fresh.prepare(base_model(), method_context(seed=5))
    assert resumed.named_layers.keys() == fresh.named_layers.keys()
    assert all(torch.equal(resumed.named_layers[n].index, layer.index) for n, layer in fresh.named_layers.items())
    assert all(torch.equal(resumed.base[n].index, s.index) and torch.equal(resumed.base[n].base, s.base)
               for n, s in fresh.base.items())


def test_bad_settings_name_the_key():
    for overrides, key in ((["method.o_ratio=0", "method.d_ratio=0"], "method.o_ratio"),
                           (["method.strategy=magnitude"], "method.strategy"),
                           (["method.d_ratio=1.5"], "method.d_ratio"),
                           (["method.master_dtype=fp16"], "method.master_dtype")):
        with pytest.raises(UserError) as error:
            check(compose("method=s2ft", *overrides))
        assert error.value.key == key
    gpt2 = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(
        "gpt2", n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=64))
    with pytest.raises(UserError, match="Conv1D") as error:
        find_blocks(gpt2)  # GPT-2's projections are Conv1D, not nn.Linear
    assert error.value.key == "method"



@pytest.mark.parametrize("ratio,refused", [(0.001, True), (1 / 256, False)])  # 2 layers x 128 channels: 1/256 picks one
def test_ratios_that_pick_no_unit_are_refused_before_scoring_on_data(ratio, refused):
    """How many units a ratio picks depends on the blocks alone: the refusal comes before the calibration (was: a
    gradient strategy scored 256 calibration samples first), from `check_model` and from `prepare` alike."""
    drawn, ctx = [], method_context()
    calibration = ctx.calibration_batches
    ctx.calibration_batches = lambda n: drawn.append(n) or calibration(n)
    method = S2ft(S2ftConfig(strategy="gradient", calibration_samples=2, o_ratio=0.0, d_ratio=ratio))
    model = base_model(dtype=torch.float32)
    if not refused:
        method.check_model(model, "seq_cls")
        method.prepare(model, ctx)
        assert drawn and sum(layer.index.numel() for layer in method.layers) == 1
        return
    for step in (lambda: method.check_model(model, "seq_cls"), lambda: method.prepare(model, ctx)):
        with pytest.raises(UserError, match="^method.o_ratio: the ratios select no head or channel in this model; "
                                            "raise v_ratio, o_ratio, u_ratio or d_ratio$"):
            step()
    assert drawn == []


# -- the adapter -----------------------------------------------------------------------------

@functools.cache
def trained_adapter(seed, tmp_path=None, **ratios):
    model, method = prepared(base_model(dtype=torch.float32), seed=seed, **ratios)
    train_steps(model, method, synthetic_batches(seed=seed), steps=2, lr=1e-2, optimizer="adamw")
    if tmp_path is None:
        return model, s2ft_adapter.extract(model, method.base)
    exported = method.export(model, None, tmp_path)
    return model, s2ft_adapter.load(Path(exported["adapter"]))


def plain_state(model):
    return {k: v for k, v in model.state_dict().items() if not k.endswith(".master")}


def test_adapter_fuses_and_unfuses_exactly(tmp_path):
    trained, adapter = trained_adapter(1, tmp_path, v_ratio=0.5, o_ratio=0.5, u_ratio=0.1, d_ratio=0.1)
    assert "score.weight" in adapter and adapter["score.weight"].dim == 0  # the dense head travels too
    base = base_model(dtype=torch.float32)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    s2ft_adapter.fuse(base, adapter)
    merged = plain_state(trained)
    assert all(torch.equal(base.state_dict()[k], merged[k]) for k in merged)
    s2ft_adapter.unfuse(base, adapter)
    assert all(torch.equal(base.state_dict()[k], original[k]) for k in original)


@pytest.mark.parametrize("overlap", ["sum", "mean"])
def test_two_adapters_fuse_into_one(overlap):
    _, first = trained_adapter(1, o_ratio=0.5, d_ratio=0.3)
    _, second = trained_adapter(2, o_ratio=0.5, d_ratio=0.3)
    both = s2ft_adapter.combine(first, second, overlap)
    kinds = set()
    for name, s in both.items():
        for position, value in zip(s.index.tolist(), s.tuned.unbind(s.dim)):
            owners = [a for a in (first, second) if name in a and position in a[name].index.tolist()]
            picks = [a[name].index.tolist().index(position) for a in owners]
            if len(owners) == 1:
                kinds.add("one")
                assert torch.equal(value, owners[0][name].tuned.select(s.dim, picks[0]))
            else:
                kinds.add("both")
                base = owners[0][name].base.select(s.dim, picks[0]).double()
                deltas = [a[name].delta().select(s.dim, i) for a, i in zip(owners, picks)]
                delta = (deltas[0] + deltas[1]) / (2 if overlap == "mean" else 1)
                assert torch.equal(value, (base + delta).float())
    assert kinds == {"one", "both"}
    model = base_model(dtype=torch.float32)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    s2ft_adapter.fuse(model, both)
    s2ft_adapter.unfuse(model, both)
    assert all(torch.equal(model.state_dict()[k], original[k]) for k in original)


def test_adapters_from_different_bases_do_not_fuse():
    _, first = trained_adapter(1, o_ratio=1.0, d_ratio=0.0)
    shifted = {n: dataclasses.replace(s, base=s.base + 1) for n, s in first.items()}
    with pytest.raises(ValueError, match="different base"):
        s2ft_adapter.combine(first, shifted)


def test_switch_benchmark_writes_its_table(tmp_path, capsys):
    from ftbench.bench.switch import main

    report = main(["--sizes", "32", "--k", "4", "--repeats", "2", "--out", str(tmp_path / "switch.json")])
    row = json.loads((tmp_path / "switch.json").read_text())["rows"][0]
    assert row == report["rows"][0] and row["lora_r"] == 2 and row["s2ft_params"] == row["lora_params"]
    assert all(row[k] > 0 for k in ("s2ft_fuse_rows_ms", "s2ft_fuse_cols_ms", "lora_merge_ms", "lora_unmerge_ms"))
    assert "merge" in capsys.readouterr().out


# -- configs ---------------------------------------------------------------------------------

PRESETS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("s2ft-*.yaml"))


def test_presets_exist():
    assert len(PRESETS) == 6


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_compose_to_the_paper_settings(preset):
    cfg = compose(f"experiment={preset}")
    check(cfg)
    task = preset.split("-")[1]
    assert cfg.method.name == "s2ft" and cfg.task.name == task
    assert cfg.method.lr == {"commonsense": 2e-4, "math": 1e-3}[task] and cfg.optim.lr is None
    assert list(cfg.optim.betas) == [0.9, 0.95] and cfg.optim.warmup_steps == 100
    assert cfg.train.batch_size == 64 and cfg.train.epochs == 3 and cfg.optim.scheduler == "linear"
    assert cfg.train.select == {"commonsense": "best", "math": "last"}[task]
    ratios = {p: cfg.method[f"{p}_ratio"] for p in "voud"}
    expected = {"v": 0.0, "o": 0.0, "u": 0.0, "d": 0.03} if "llama3" in preset else \
        {"v": 0.0, "o": 0.052, "u": 0.0, "d": 0.02}
    assert ratios == expected

"""HiFT, BAdam and LISA (one block-rotating method) against dense references: one group over the
whole model is full fine-tuning, rotation is block coordinate descent with per-unit optimizers,
accumulation and resume change nothing, and the optimizer holds only what each policy says."""

import functools
import gc
import weakref

import pytest
import torch

from ftbench.config.schema import OptimConfig, check
from ftbench.engine.optim import make_optimizer
from ftbench.errors import UserError
from ftbench.measure.meters import held_optimizer_state_bytes, tensor_bytes
from ftbench.methods import build_method
from ftbench.methods.base import decay_split
from ftbench.methods.block_rotation.method import BlockRotation, BlockRotationConfig
from ftbench.methods.block_rotation.units import derive_units
from ftbench.models.loading import load_model
from helpers import REPO, method_context, run, synthetic_batches, train_steps
from helpers import compose as compose_uncached

TINY_UNITS = ["embedding", "layer.0", "layer.1", "head"]



@functools.cache
def compose(*overrides):
    return compose_uncached(*overrides)


def tiny(layers=2, dtype="fp32", head="seq_cls"):
    cfg = compose("model=tiny-llama", f"model.shape.num_hidden_layers={layers}")
    torch.manual_seed(0)
    model = load_model(cfg.model, head, 2, torch.device("cpu"), dtype, "eager")
    model.config.pad_token_id = 0
    return model


def prepared(model, name="hift", **settings):
    cfg = compose(f"method={name}", *(f"method.{k}={v}" for k, v in settings.items()))
    method = build_method(cfg.method)
    return method.prepare(model, method_context()), method


def watch(method, model):
    """Record, per optimizer step, the active units and which of them changed."""
    units = derive_units(model)
    log = []

    def before(step, inner=method.before_step):
        inner(step)
        log.append({"active": [units[i].name for i in method.active],
                    "before": {n: p.detach().clone() for u in units for n, p in u.params}})

    def after(step, inner=method.after_step):
        inner(step)
        entry = log[-1]
        entry["changed"] = sorted({u.name for u in units for n, p in u.params if not torch.equal(p, entry["before"][n])})
        entry["state"] = {h: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                          for h, s in method.optimizer.state.items()}
        del entry["before"]

    method.before_step, method.after_step = before, after
    return log


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same_weights(a, b, exact=True):
    for name in a:
        if exact:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], msg=name)


# -- equivalences ------------------------------------------------------------------------------------
def test_one_group_covering_the_model_is_full_fine_tuning():
    full_model, hift_model = tiny(), tiny()
    full_cfg = compose("method=full")
    full = build_method(full_cfg.method)
    full.prepare(full_model, method_context())
    hift_model, hift = prepared(hift_model, group_size=len(TINY_UNITS))
    for model, method in ((full_model, full), (hift_model, hift)):
        train_steps(model, method, synthetic_batches(), steps=4, lr=1e-2, optimizer="adamw", max_grad_norm=0.5,
            weight_decay=0.1)
    assert_same_weights(weights(full_model), weights(hift_model), exact=False)


def reference(model, groups, steps, optimizer, policy, lr, max_grad_norm=None):
    """Block coordinate descent written out: each unit has its own optimizer over fp32 masters
    (the weights themselves when fp32); only the active unit's gradient is formed, clipped and
    applied. offload keeps masters and state between visits, keep keeps the state and rebuilds
    masters from the weights, drop rebuilds both."""
    units = derive_units(model)
    cfg = OptimConfig(name=optimizer, momentum=0.9 if optimizer == "sgd" else 0.0)
    fp32 = next(model.parameters()).dtype == torch.float32
    masters = {i: [(n, p if fp32 else p.detach().float().requires_grad_()) for n, p in u.params]
               for i, u in enumerate(units)}
    optimizers, batches = {}, synthetic_batches()
    for step in range(steps):
        active = groups[step]
        for p in model.parameters():
            p.requires_grad_(False)
        for i in active:
            for (_, p), (_, m) in zip(units[i].params, masters[i]):
                p.requires_grad_(True)
                if step == 0 or active != groups[step - 1]:
                    if policy != "offload" and not fp32:
                        m.data.copy_(p.detach())
            if i not in optimizers or (policy == "drop" and active != groups[step - 1]):
                optimizers[i] = make_optimizer(decay_split(masters[i], 0.0), cfg, lr)
        model(**next(batches)).loss.backward()
        params = []
        for i in active:
            for (_, p), (_, m) in zip(units[i].params, masters[i]):
                if not fp32:
                    m.grad, p.grad = p.grad.float(), None
            params += [m for g in decay_split(masters[i], 0.0) for m in g["params"]]
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        for i in active:
            optimizers[i].step()
            optimizers[i].zero_grad(set_to_none=True)
            with torch.no_grad():
                for (_, p), (_, m) in zip(units[i].params, masters[i]):
                    p.copy_(m)
    return weights(model)


@pytest.mark.parametrize("optimizer,dtype,policy,ahead", [
    *((name, "bf16-pure", "offload", False) for name in ("adamw", "sgd", "adagrad", "adafactor")),
    ("adamw", "bf16-pure", "offload", True), ("adamw", "bf16-pure", "keep", False),
    ("adamw", "bf16-pure", "drop", False), ("adamw", "fp32", "offload", False)])
def test_rotation_is_block_coordinate_descent(optimizer, dtype, policy, ahead):
    steps, lr = 8, 1e-2
    model, method = prepared(tiny(dtype=dtype), state_policy=policy, prefetch_ahead=ahead)
    opt_cfg = dict(lr=lr, optimizer=optimizer, max_grad_norm=0.5)
    if optimizer == "sgd":
        method.build_optimizer = lambda groups, cfg, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9)
    train_steps(model, method, synthetic_batches(), steps=steps, **opt_cfg)
    assert type(method.optimizer).__name__.lower() == optimizer
    groups = [[i % len(TINY_UNITS)] for i in range(steps)]
    expected = reference(tiny(dtype=dtype), groups, steps, optimizer, policy, lr, max_grad_norm=0.5)
    assert_same_weights(weights(model), expected, exact=False)


def test_each_step_changes_only_the_active_group_and_a_cycle_changes_every_unit_once():
    model, method = prepared(tiny(layers=3), group_size=2)
    log = watch(method, model)
    train_steps(model, method, synthetic_batches(), steps=6, lr=1e-2, optimizer="adamw")
    units = ["embedding", "layer.0", "layer.1", "layer.2", "head"]
    assert [e["active"] for e in log[:3]] == [units[0:2], units[2:4], units[4:5]]
    assert [e["active"] for e in log[3:]] == [e["active"] for e in log[:3]]  # the next cycle repeats it
    for entry in log:
        assert entry["changed"] == entry["active"]
    changed_in_cycle = [u for e in log[:3] for u in e["changed"]]
    assert sorted(changed_in_cycle) == sorted(units)


def test_rotation_waits_for_the_optimizer_step_so_accumulation_equals_a_larger_batch():
    def halves(stream):
        for batch in stream:
            yield {k: v[:4] for k, v in batch.items()}
            yield {k: v[4:] for k, v in batch.items()}

    results = []
    for accumulation, batches in ((1, synthetic_batches(8)), (2, halves(synthetic_batches(8)))):
        model, method = prepared(tiny())
        log = watch(method, model)
        train_steps(model, method, batches, steps=4, lr=0.1, optimizer="sgd", accumulation=accumulation)
        results.append((weights(model), [e["active"] for e in log]))
    assert results[0][1] == results[1][1] == [[u] for u in TINY_UNITS]
    assert_same_weights(results[0][0], results[1][0], exact=False)


# -- what the optimizer holds ------------------------------------------------------------------------
def active_handles(method):
    return {id(s.handle) for s in method.active_slots}


@pytest.mark.parametrize("dtype", ["fp32", "bf16-pure"])
def test_offload_keeps_only_the_active_groups_state_and_masters_on_the_device(dtype):
    model, method = prepared(tiny(dtype=dtype))
    device_bytes = []

    def after(step, inner=method.after_step):
        inner(step)
        live = 0
        for handle, state in method.optimizer.state.items():
            for value in (v for v in state.values() if torch.is_tensor(v)):
                in_host = method.store.arena.holds(value)
                assert in_host != (id(handle) in active_handles(method))  # on the host iff inactive
                live += 0 if in_host else tensor_bytes(value)
        active_state = sum(tensor_bytes(v) for s in method.active_slots
                           for v in method.optimizer.state[s.handle].values() if torch.is_tensor(v))
        device_bytes.append((live, active_state))
        for slot in method.all_slots():  # masters: on the device for the active group, on the host once visited
            if slot.master is not None and slot in method.active_slots:
                assert slot.master.numel() and not method.store.arena.holds(slot.master)
            elif slot.master is not None:
                assert not slot.master.numel() or method.store.arena.holds(slot.master)

    method.after_step = after
    train_steps(model, method, synthetic_batches(), steps=8, lr=1e-2, optimizer="adamw")
    assert all(live == active for live, active in device_bytes)
    assert [s.name for s in method.all_slots() if s.master is not None] == (
        [] if dtype == "fp32" else [n for n, _ in model.named_parameters()])


def test_on_the_cpu_the_host_buffers_take_only_what_they_hold():
    """Host and device are one memory there: a 1 GiB pinned-style chunk was 1 GiB of the traced peak."""
    model, method = prepared(tiny())
    train_steps(model, method, synthetic_batches(), steps=4, lr=1e-2, optimizer="adamw")
    stats = method.store.stats()
    assert 0 < stats["host_reserved_bytes"] == stats["host_used_bytes"] < 2**20


def test_drop_really_frees_the_leaving_state_and_keep_holds_every_visited_one():
    model, method = prepared(tiny(), state_policy="drop")
    train_steps(model, method, synthetic_batches(), steps=1, lr=1e-2, optimizer="adamw")
    first = method.active_slots[0]
    moments = [weakref.ref(v) for v in method.optimizer.state[first.handle].values() if torch.is_tensor(v)]
    method.before_step(1)  # the next group arrives: the embedding's state must go
    gc.collect()
    assert moments and all(ref() is None for ref in moments)
    assert first.handle not in method.optimizer.state

    for policy, expected in (("drop", [1, 1, 1, 1]), ("keep", [1, 2, 3, 4])):
        model, method = prepared(tiny(), state_policy=policy)
        held = []

        def count_units(step, inner=method.after_step, m=method, held=held):
            inner(step)
            held.append(len({s.unit for s in m.all_slots() if s.handle in m.optimizer.state}))

        method.after_step = count_units
        train_steps(model, method, synthetic_batches(), steps=4, lr=1e-2, optimizer="adamw")
        assert held == expected
        if policy == "drop":  # what measure.py walks: never more than the active group's state
            bytes_now = held_optimizer_state_bytes(method.optimizer, torch.device("cpu"))[0]
            assert bytes_now == sum(tensor_bytes(v) for s in method.active_slots
                                    for v in method.optimizer.state[s.handle].values())


# -- resume --------------------------------------------------------------------------------------------
def test_a_resumed_run_continues_the_same_order_and_the_same_weights():
    settings = dict(order="random", reshuffle=True, group_size=1)
    model, method = prepared(tiny(dtype="bf16-pure"), **settings)
    log = watch(method, model)
    train_steps(model, method, synthetic_batches(), steps=8, lr=1e-2, optimizer="adamw")
    straight = weights(model), [e["active"] for e in log]

    batches = synthetic_batches()
    model, method = prepared(tiny(dtype="bf16-pure"), **settings)
    first = watch(method, model)
    train_steps(model, method, batches, steps=5, lr=1e-2, optimizer="adamw")
    saved_weights, saved_state = model.state_dict(), method.state_dict()
    assert saved_state["steps_done"] == 5 and saved_state["cycle"] == 1 and saved_state["queue_position"] == 1

    resumed = tiny(dtype="bf16-pure")
    resumed.load_state_dict(saved_weights)
    resumed, method = prepared(resumed, **settings)
    second = watch(method, resumed)
    train_steps(resumed, method, batches, steps=3, lr=1e-2, optimizer="adamw", method_state=saved_state)
    assert [e["active"] for e in first + second] == straight[1]
    assert straight[1][:4] != straight[1][4:8]  # reshuffled per cycle
    assert_same_weights(weights(resumed), straight[0])


# -- BAdam and LISA ----------------------------------------------------------------------------------
def test_badam_runs_k_steps_per_block_in_a_reshuffled_order_and_restarts_adam_at_each_switch():
    model, method = prepared(tiny(layers=4), name="badam", steps_per_block=2)
    log = watch(method, model)
    train_steps(model, method, synthetic_batches(), steps=8, lr=1e-3, optimizer="adamw")
    layers = [[u for u in e["active"] if u.startswith("layer")] for e in log]
    assert all(e["active"][-1] == "head" and len(layer) == 1 for e, layer in zip(log, layers))
    assert all(layers[i] == layers[i - i % 2] for i in range(8))  # K steps on one block
    assert all("embedding" not in e["changed"] for e in log)
    slots, run = {s.name: s for s in method.all_slots()}, 0
    for i, entry in enumerate(log):  # Adam's step count restarts whenever the block changes
        run = run + 1 if i and layers[i] == layers[i - 1] else 1
        index = layers[i][0].split(".")[1]
        assert int(entry["state"][slots[f"model.layers.{index}.mlp.up_proj.weight"].handle]["step"]) == run
    # Each block-epoch visits every layer once, in a new order (the schedule is a pure function of the step).
    epochs = [[method.units[i].name for e in range(4 * c, 4 * c + 4) for i in method.schedule.rotating(e)]
              for c in range(6)]
    assert all(sorted(e) == [f"layer.{i}" for i in range(4)] for e in epochs) and len(set(map(tuple, epochs))) > 2
    assert method.scheduler_steps(0) and method.schedule_length(40) == 40  # per-step LR


def test_lisa_trains_embedding_and_head_always_and_samples_gamma_layers_per_interval():
    model, method = prepared(tiny(layers=4), name="lisa", steps_per_block=2)
    log = watch(method, model)
    train_steps(model, method, synthetic_batches(), steps=8, lr=1e-3, optimizer="adamw")
    sampled = [tuple(u for u in e["active"] if u.startswith("layer")) for e in log]
    assert all(e["active"][0] == "embedding" and e["active"][-1] == "head" for e in log)
    assert all(len(s) == 2 for s in sampled) and all(sampled[i] == sampled[i + 1] for i in range(0, 8, 2))
    visited = {u for s in sampled for u in s}
    kept = {s.name.split(".")[2] for s in method.all_slots()
            if s.handle in method.optimizer.state and s.name.startswith("model.layers")}
    assert kept == {u.split(".")[1] for u in visited}  # keep: every visited layer's state stays
    # Uniform draws of γ = 2 of 4 layers per interval: all 6 pairs turn up, none of them favoured.
    draws = [tuple(method.schedule.rotating(i)) for i in range(600)]
    assert sorted(set(draws)) == sorted((a, b) for a in range(1, 5) for b in range(a + 1, 5))
    assert max(draws.count(d) for d in set(draws)) < 2 * min(draws.count(d) for d in set(draws))


# -- schedule and configuration ------------------------------------------------------------------------
def test_per_cycle_lr_counts_the_horizon_in_cycles():
    model, method = prepared(tiny(), lr_policy="per_cycle")
    assert method.schedule_length(40) == 10 and method.schedule_length(41) == 11
    flags = []
    for step in range(8):
        method.after_step(step)
        flags.append(method.scheduler_steps(step))
    assert flags == [False, False, False, True] * 2
    _, per_step = prepared(tiny(), lr_policy="per_step")
    assert per_step.schedule_length(40) == 40


@pytest.mark.parametrize("settings,key", [
    (dict(frozen_units=["layer.9"]), "method.frozen_units"),
    (dict(always_active=["head"], frozen_units=["head"]), "method.always_active"),
    (dict(order="sample", group_size=5), "method.group_size"),
    (dict(frozen_units=TINY_UNITS), "method.frozen_units"),
])
def test_bad_settings_name_the_key(settings, key):
    with pytest.raises(UserError) as caught:
        BlockRotation(BlockRotationConfig(**settings)).prepare(tiny(), method_context())
    assert caught.value.key == key
    # a reshuffle of a fixed order: unused, refused where the user set it (tests/test_config_unused.py)
    assert [u.knob for u in BlockRotationConfig(order="down2up", reshuffle=True).unused("method", None)] == [
        "method.reshuffle"]


def test_profile_breakdown_holds_one_groups_fp32_grads_masters_and_state(tmp_path):
    result = run(tmp_path / "run", "mode=profile", "method=hift", "method.state_policy=drop",
                 "hardware.precision=bf16-pure", "profile.batch_size=2", "profile.seq_len=16",
                 "profile.warmup_steps=2", "profile.steps=2")
    assert result["exit_code"] == 0, result["error"]
    units = result["method"]["units"]
    largest = max(units.values())
    assert largest == units["layer.0"] == result["method"]["trainable_per_step_max"] == result["params"]["trainable"]
    tensors = len(derive_units(tiny(head="causal_lm"))[1].params)
    breakdown = result["memory"]["breakdown"]
    assert breakdown["grad_bytes"] == breakdown["master_bytes"] == breakdown["trainable_bytes"] == 4 * largest
    # (fp32 gradients: no bf16 gradient outlives the backward)
    assert breakdown["optimizer_state_bytes"] == 8 * largest + 4 * tensors  # AdamW's two moments + step counts
    assert result["params"]["total"] == sum(units.values())
    # The warm-up covers the first cycle (each unit's first visit), then 2 timed steps.
    assert result["plan"]["measure_from_step"] == result["method"]["cycle_steps"] == len(units)
    assert result["method"]["steps_done"] == len(units) + 2


PRESETS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("hift-*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_compose_to_hifts_settings(preset):
    cfg = compose(f"experiment={preset}")
    check(cfg)
    assert cfg.method.name == "hift" and cfg.method.group_size == 1 and cfg.method.order == "down2up"
    assert cfg.optim.name == "adamw" and cfg.method.state_policy == "offload"
    if "roberta" in preset:
        assert cfg.model.name == preset.split("-glue")[0].removeprefix("hift-") and cfg.task.family == "glue"
        assert cfg.method.lr == 3e-5 and cfg.train.batch_size == 8 and cfg.task.max_length == 512
        assert cfg.optim.warmup_ratio == 0.02 and cfg.optim.weight_decay == 0 and cfg.train.epochs == 100
        assert cfg.method.lr_policy == "per_cycle"
        assert compose(f"experiment={preset}", "task=cola").task.name == "cola"  # any GLUE task
    else:
        assert cfg.mode == "profile" and cfg.model.name == "llama-7b" and cfg.model.random_init
        assert cfg.profile.batch_size == 4 and cfg.profile.seq_len == 512
        assert cfg.profile.warmup_steps == cfg.profile.steps == 34  # one cycle: embedding, 32 layers, head

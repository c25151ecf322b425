"""The memory planner on every method: a plan made from probes of fewer layers and smaller micro-batches
predicts the traced peak of the real run, of each registered method and variant on a decoder's and an
encoder's stack, of rotating groups and over a loss chunk."""

import pytest
import torch

from ftbench.methods import build_method, config_class
from ftbench.models.loading import load_model
from ftbench.plan.planner import predict
from helpers import compose, method_context, method_table, run
from plan_helpers import LAYERS, SHAPE

pytestmark = pytest.mark.usefixtures("one_thread")


# Each kind of layer stack the planner plans (profile.objective=auto: a decoder's causal LM, an encoder's
# classifier), as the named tiny shapes of conf/model build them: LLaMA's layout (checkpointed), BERT's (not: an
# encoder step keeps every layer's activations, and a rotating method's steps differ most there).
ENCODER = ["model=tiny-bert", "model.shape.num_hidden_layers=6", "profile.batch_size=4", "profile.seq_len=32",
           "hardware.max_micro_batch_size=null"]
STACKS = {"decoder": (SHAPE, "causal_lm"), "encoder": (ENCODER, "seq_cls")}
# (stack, method, overrides): a short setup, and the probes draw what the real run draws; a method whose probes
# take its groups in another order than the run (`probe_settings`: BAdam's random order, bottom up) switches
# every step, so the traced run visits every group too (BAdam's lowest layer, whose step keeps the most, is
# otherwise reached after a random number of 50-step blocks); then each variant its schema declares for this
# check (methods/config.py `Variant.plan_check`: GaLore's layer-wise mode, APOLLO-Mini), with the variant's
# overrides added
METHODS = [pytest.param(name, [*overrides, *(config_class(name).every_part if config_class(name)().probe_settings()
                                              else ())], id=name)
           for name, overrides in method_table("short_setup", "same_draws")]
METHODS += [pytest.param(p.values[0], [*p.values[1], *variant.overrides], id=f"{p.values[0]}-{label}")
            for p in METHODS for label, variant in config_class(p.values[0]).variants.items() if variant.plan_check]
CASES = [pytest.param(stack, *p.values, id=f"{stack}-{p.id}") for stack in STACKS for p in METHODS]


def planned_steps(cfg, head: str = "causal_lm") -> int:
    """The steps the planner traces (`Method.planned_steps`) at the real run's depth: a method whose
    steps differ (HiFT: a new unit every step) shows its peak only over all of them."""
    method = build_method(cfg.method)
    model = load_model(cfg.model, head, 2, torch.device("cpu"), "fp32", "eager")
    method.prepare(model, method_context(head=head))
    try:
        return method.planned_steps()
    finally:
        method.close()


def test_hift_is_traced_over_a_whole_cycle():
    assert planned_steps(compose(*SHAPE, "method=hift")) == LAYERS + 2  # the embedding, each layer, the head


@pytest.mark.parametrize("stack,method,overrides", CASES)
def test_plan_from_fewer_layers_predicts_the_traced_peak(tmp_path, stack, method, overrides):
    assert_plan_predicts_the_traced_peak(tmp_path, stack, method, overrides)


# Rotating groups of two layers on an 8-layer encoder: probes of 3 and 4 layers ended in a group of one, then of
# two, and the line through them missed (6 layers: BAdam +10 %, HiFT +7 %); probes of 4 and 6 end in whole groups.
# BAdam's random order replays the groups its profile draws, each probed at its place (units.replay_depth): a group
# with layers above it needs probes that deep, here up to the run's own 8 layers.
GROUPS = [pytest.param(method, ["model.shape.num_hidden_layers=8", "method.steps_per_block=1", "method.group_size=2"],
                       method != "badam", id=f"{method}-pairs") for method in ("badam", "hift")]


@pytest.mark.parametrize("method,overrides,shallower", GROUPS)
def test_a_plan_of_rotating_groups_predicts_the_traced_peak(tmp_path, method, overrides, shallower):
    assert_plan_predicts_the_traced_peak(tmp_path, "encoder", method, overrides, shallower)


def assert_plan_predicts_the_traced_peak(tmp_path, stack, method, overrides, shallower=True):
    shape, head = STACKS[stack]
    args = [*shape, f"method={method}", *overrides]
    steps = planned_steps(compose(*args), head)
    window = ["profile.warmup_steps=1", f"profile.steps={steps}"]  # the steps a plan plans (a random order's draws)
    real = run(tmp_path / "real", "mode=profile", *args, *window)
    assert real["status"] == "ok", real["error"]
    plan = predict(compose("mode=plan", *args, *window))
    predicted, traced = plan["memory"]["train_peak_allocated_bytes"], real["memory"]["train_peak_traced_bytes"]
    assert abs(predicted / traced - 1) < 0.03, (predicted, traced)
    for key in ("weights_bytes", "master_bytes", "grad_bytes", "optimizer_state_bytes"):  # held state: exact
        assert plan["memory"]["breakdown"][key] == pytest.approx(real["memory"]["breakdown"][key], rel=1e-3, abs=64), key
    deepest = max(p["layers"] for p in plan["plan"]["probes"])
    assert deepest < plan["plan"]["layers"] if shallower else deepest <= plan["plan"]["layers"]


# A causal LM's micro-batch over train.loss_chunk_tokens: the loss's largest chunk holds loss_chunk_tokens' logits
# whatever the micro-batch, and runs behind the LM head's gradient the chunks before it left (not checkpointed: the
# loss's share of the peak is large). Two chunks of 128 tokens (probed at 3 and 4 sequences, two chunks each; probes
# of 2 and 3, one chunk and two, planned -9 %), and eight chunks of 64 from 4 layers (probed at 5 and 6 sequences,
# three chunks each, 2 and 3 layers; probes of 2 and 3 sequences planned +6 %).
CHUNKED = {"two-chunks": ["profile.batch_size=4", "profile.seq_len=64", "train.loss_chunk_tokens=128"],
           "eight-chunks": ["model.shape.num_hidden_layers=4", "profile.batch_size=8", "profile.seq_len=32",
                            "train.loss_chunk_tokens=64"]}


@pytest.mark.parametrize("overrides", [pytest.param(v, id=k) for k, v in CHUNKED.items()])
def test_a_plan_over_one_loss_chunk_predicts_the_traced_peak(tmp_path, overrides):
    args = ["model=tiny-llama", "method=full", *overrides]
    real = run(tmp_path / "real", "mode=profile", *args, "profile.warmup_steps=1", "profile.steps=1")
    assert real["status"] == "ok", real["error"]
    plan = predict(compose("mode=plan", *args))
    predicted, traced = plan["memory"]["train_peak_allocated_bytes"], real["memory"]["train_peak_traced_bytes"]
    assert abs(predicted / traced - 1) < 0.03, (predicted, traced)


def test_a_step_whose_op_count_differs_by_width_still_pairs_its_ops():
    """An optimizer with a data-dependent branch (APOLLO's norm-growth limiter) runs one op more in one
    probe: the ops before and after it still pair across the widths and take the quadratic (exact at w=1)."""
    import numpy as np

    from ftbench.plan.extrapolate import Step, at_full_width

    widths = [1 / 16, 1 / 32, 1 / 64]
    ops = ["mm", "mm", "add", "sqrt", "div", "add_"]
    phases = np.array([0, 1, 2, 2, 2, 2])

    def bytes_at(w, i):  # weight-like and per-token parts: a quadratic in w per op
        return 1000.0 * i + 5e6 * w * w * (i + 1) + 3e4 * w

    def step(w, extra):
        names, values, kinds = list(ops), [bytes_at(w, i) for i in range(len(ops))], list(phases)
        if extra:  # one more scalar op in the optimizer phase, after `sqrt`
            names.insert(4, "div.Scalar")
            values.insert(4, values[3] + 4)
            kinds.insert(4, 2)
        return Step(np.array(values), np.array(kinds), names, [1] * len(names))

    timeline, aligned = at_full_width([[step(widths[0], False)], [step(widths[1], True)], [step(widths[2], False)]],
                                      widths)
    assert not aligned
    assert timeline[0].values == pytest.approx([bytes_at(1.0, i) for i in range(len(ops))], rel=1e-9)

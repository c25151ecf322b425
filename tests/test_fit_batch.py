"""hardware.max_micro_batch_size=auto (the choice from a fake budget, the effective batch kept, the
one-line refusal, a probe that leaves no trace, a calibration fit only for a method that calibrates, and neither
it nor `prepare` before a refusal the model's structure decides) and train.max_steps=0 (the untouched model
scored)."""

import pytest
import torch

from ftbench.errors import UserError
from ftbench.job import steps
from ftbench.plan import micro_batch
from helpers import method_table, refused, run, tiny_model

QUICK = ["train.max_steps=2", "task.batch_size=16", "train.measure_warmup_steps=0"]


@pytest.mark.parametrize("budget, fixed, per_sequence, state, batch, expected", [
    (100, 10, 20, 0, 16, 4),     # (100 - 10) // 20
    (100, 10, 20, 30, 16, 3),    # the optimizer state comes off the top
    (10_000, 10, 20, 0, 16, 16),  # never more than the batch
    (25, 10, 20, 0, 16, 0),      # not even one
    (100, 10, 0, 0, 8, 8),       # nothing grows with the batch
])
def test_the_largest_micro_batch_that_fits(budget, fixed, per_sequence, state, batch, expected):
    assert micro_batch.choose(batch, budget, fixed, per_sequence, state) == expected


def probe_sequence(length=24):
    ids = torch.arange(5, 5 + length).unsqueeze(0)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def loss(model, batch):
    return model(**batch).loss


def test_the_probe_measures_per_sequence_cost_and_leaves_nothing(monkeypatch):
    model = tiny_model(head="causal_lm")
    monkeypatch.setattr(micro_batch, "budget_bytes", lambda device: 10**12)
    state = torch.random.get_rng_state()
    chosen = micro_batch.batch_fit(model, loss, probe_sequence(), 64, torch.device("cpu"))
    assert chosen.micro_batch_size == 64 and chosen.per_sequence_bytes > 0
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), state)
    # A budget for exactly three sequences (plus what does not grow) gets three.
    budget = chosen.fixed_bytes + 3 * chosen.per_sequence_bytes + 1000 + chosen.per_sequence_bytes // 2
    monkeypatch.setattr(micro_batch, "budget_bytes", lambda device: budget - 1000)
    assert micro_batch.batch_fit(model, loss, probe_sequence(), 64, torch.device("cpu"), optimizer_state=1000).micro_batch_size == 3
    # Twice the length costs at least about twice as much per sequence (the probe really measures it;
    # attention scores grow with the square of the length).
    monkeypatch.setattr(micro_batch, "budget_bytes", lambda device: 10**12)
    longer = micro_batch.batch_fit(model, loss, probe_sequence(48), 64, torch.device("cpu"))
    assert longer.per_sequence_bytes > 1.6 * chosen.per_sequence_bytes


def test_not_even_one_sequence_is_one_line_naming_the_knobs(monkeypatch):
    monkeypatch.setattr(micro_batch, "budget_bytes", lambda device: 1000)
    with pytest.raises(UserError, match=r"^hardware.max_micro_batch_size: one sequence of 24 tokens needs .* GiB "
                                        r"for training but 0.0 GiB are free .*task.max_length.*gradient_checkpointing"):
        micro_batch.batch_fit(tiny_model(head="causal_lm"), loss, probe_sequence(), 8, torch.device("cpu"))


def test_cpu_budget_reads_the_memory_available():
    assert 0 < micro_batch.cpu_available_bytes() < 2**50
    assert micro_batch.budget_bytes(torch.device("cpu")) < micro_batch.cpu_available_bytes()


def test_auto_splits_the_batch_to_fit_and_keeps_the_effective_batch(tmp_path, monkeypatch):
    real_fit = micro_batch.batch_fit

    def three_sequences(model, loss_fn, sequence, batch, device, optimizer_state=0, what="training"):
        monkeypatch.setattr(micro_batch, "budget_bytes", lambda d: 10**12)
        measured = real_fit(model, loss_fn, sequence, batch, device, optimizer_state, what)
        budget = measured.fixed_bytes + optimizer_state + 3 * measured.per_sequence_bytes + 1
        monkeypatch.setattr(micro_batch, "budget_bytes", lambda d: budget)
        return real_fit(model, loss_fn, sequence, batch, device, optimizer_state, what)

    monkeypatch.setattr(micro_batch, "batch_fit", three_sequences)
    monkeypatch.setattr(micro_batch, "planned", lambda *args: None)  # the probe's way (the planner's: below)
    auto = run(tmp_path / "auto", *QUICK, "hardware.max_micro_batch_size=auto")
    assert auto["status"] == "ok"
    plan = auto["plan"]
    assert plan["micro_batch_fit"]["training"]["micro_batch_size"] == 3
    assert (plan["batch_size"], plan["micro_batch_size"], plan["accumulation"]) == (16, 2, 8)  # 2 divides 16
    assert auto["train"]["samples"] == 2 * 16
    monkeypatch.setattr(micro_batch, "batch_fit", real_fit)
    fixed = run(tmp_path / "fixed", *QUICK, "hardware.max_micro_batch_size=2")
    assert fixed["plan"]["micro_batch_fit"] is None
    assert auto["train"]["loss_curve"] == fixed["train"]["loss_curve"]  # the probes changed nothing


def test_auto_refuses_before_training_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(micro_batch, "budget_bytes", lambda device: 1000)
    result = run(tmp_path / "r", *QUICK, "hardware.max_micro_batch_size=auto")
    assert result["exit_code"] == 2 and result["status"] == "failed"
    assert result["error"].startswith("hardware.max_micro_batch_size: one sequence of")
    assert "\n" not in result["error"] and result["train"]["steps"] in (None, 0)


def test_max_steps_zero_scores_the_untouched_model(tmp_path):
    full = run(tmp_path / "full", "train.max_steps=0", "method=full")
    lora = run(tmp_path / "lora", "train.max_steps=0", "method=lora")
    for result in (full, lora):
        assert result["status"] == "ok" and result["train"]["steps"] == 0 and result["train"]["loss_curve"] == []
    assert full["metrics"] and full["metrics"] == pytest.approx(lora["metrics"], rel=1e-6)


def test_auto_takes_the_training_micro_batch_from_the_planner(tmp_path, monkeypatch):
    """auto: the memory planner sizes the training micro-batch (no probe step of the model), and full
    fine-tuning, which does not calibrate, fits no calibration micro-batch; result.json says which way."""
    from ftbench.plan import planner

    probed, budgets = [], []
    real_fit, real_largest = micro_batch.batch_fit, planner.largest_micro_batch_from

    def spy_fit(*args, **kwargs):
        probed.append(args[6] if len(args) > 6 else kwargs.get("what", "training"))
        return real_fit(*args, **kwargs)

    def three(the_fit, tgt, budget, most):
        budgets.append(budget)
        assert most == 16 and real_largest(the_fit, tgt, budget, most) == 16  # this machine holds a tiny model's batch
        return 3

    monkeypatch.setattr(micro_batch, "batch_fit", spy_fit)
    monkeypatch.setattr(planner, "largest_micro_batch_from", three)
    auto = run(tmp_path / "auto", *QUICK, "eval.max_samples=8", "hardware.max_micro_batch_size=auto")
    assert auto["status"] == "ok", auto["error"]
    fits = auto["plan"]["micro_batch_fit"]
    assert fits["training"]["chosen_by"] == "planner" and fits["training"]["micro_batch_size"] == 3
    assert "calibration" not in fits and probed == []
    assert auto["plan"]["micro_batch_size"] == 2 and budgets  # 3 -> the largest divisor of 16

    def broken(*args, **kwargs):
        raise RuntimeError("no plan")

    monkeypatch.setattr(planner, "plan_fit", broken)  # where the planner cannot answer, the probe does
    fallback = run(tmp_path / "fallback", *QUICK, "eval.max_samples=8", "hardware.max_micro_batch_size=auto")
    assert fallback["status"] == "ok" and fallback["plan"]["micro_batch_fit"]["training"]["chosen_by"] == "probe"


def test_max_steps_zero_neither_probes_nor_plans_a_training_micro_batch(tmp_path, monkeypatch):
    asked = []
    real_planned, real_fit = micro_batch.planned, micro_batch.batch_fit
    monkeypatch.setattr(micro_batch, "planned", lambda *a: asked.append(("plan", a[-1])) or real_planned(*a))
    monkeypatch.setattr(micro_batch, "batch_fit", lambda *a: asked.append(("probe", a[-1])) or real_fit(*a))
    result = run(tmp_path / "r", "train.max_steps=0", "eval.max_samples=8", "hardware.max_micro_batch_size=auto")
    assert result["status"] == "ok" and result["train"]["steps"] == 0
    assert "training" not in result["plan"]["micro_batch_fit"] and all(what != "training" for _, what in asked)


def test_the_planner_changes_nothing_a_run_draws(tmp_path):
    """The planner's probes seed and draw random numbers; LoRA's dropout masks after them are those of a
    run with a fixed micro-batch (the planner re-seeded the global streams mid-job before: the demo's
    LoRA accuracy moved from 0.998 to 1.000)."""
    lora = [*QUICK, "method=lora", "method.dropout=0.5", "eval.max_samples=8"]
    auto = run(tmp_path / "auto", *lora, "hardware.max_micro_batch_size=auto")
    assert auto["plan"]["micro_batch_fit"]["training"]["chosen_by"] == "planner"
    fixed = run(tmp_path / "fixed", *lora, f"hardware.max_micro_batch_size={auto['plan']['micro_batch_size']}")
    assert auto["train"]["loss_curve"] == fixed["train"]["loss_curve"]


# Every registered method at its defaults (SIFT selects by gradient, S2FT at random), and the settings under which
# SIFT and S2FT do the other: (name, overrides, whether prepare draws calibration batches).
CALIBRATION_TABLE = [(name, overrides, name in ("sift", "sparsegrad"))
                     for name, overrides in method_table("short_setup")] + [
    ("sift", ["method.selection=random"], False), ("s2ft", ["method.strategy=activation"], True)]


@pytest.mark.parametrize("name,overrides,calibrates", CALIBRATION_TABLE)
def test_only_a_method_that_calibrates_fits_a_calibration_micro_batch(tmp_path, monkeypatch, name, overrides,
                                                                      calibrates):
    drawn, real = [], steps.Feed.calibration
    monkeypatch.setattr(steps.Feed, "calibration",
                        lambda feed, micro: lambda n: drawn.append(n) or real(feed, micro)(n))
    result = run(tmp_path / "r", f"method={name}", *overrides, "train.max_steps=0", "task.batch_size=16",
                 "eval.max_samples=8", "hardware.max_micro_batch_size=auto")  # no step: the fits before training only
    assert result["status"] == "ok", result["error"]
    assert bool(drawn) == calibrates and ("calibration" in result["plan"]["micro_batch_fit"]) == calibrates


# A setting the model's structure rules out, under settings that calibrate or a `prepare` that is costly: refused by
# `Method.check_model` with the line `prepare` gave, before the calibration micro-batch fit, any calibration batch
# and `prepare` (was: they ran first, then prepare refused; on a 7B model, minutes: PiSSA's SVD of every target). The momentum `SparseMlpOptimizer` refuses once calibrated is the
# config's to refuse (`SparseMlpConfig.check_run`). "{gpt2}": a GPT-2 folder, whose projections are Conv1D.
STRUCTURE_REFUSALS = [
    (["method=sift", "method.target_modules=[nosuch]"], "method.target_modules: 'nosuch' names no linear layer; "
     "linear layers here: mlp.down_proj, mlp.gate_proj, mlp.up_proj, score, self_attn.k_proj, self_attn.o_proj, "
     "self_attn.q_proj, self_attn.v_proj"),
    (["method=sift", "method.exception_modules=[nosuch]"], "method.exception_modules: no module named 'nosuch' in "
     "this model; top-level modules: model, score"),
    (["method=sift", "method.target_modules=[score]"], "method.target_modules: ['score'] selects no layer outside the "
     "exception modules (method.exception_modules: trained densely); linear layers outside them: mlp.down_proj, "
     "mlp.gate_proj, mlp.up_proj, self_attn.k_proj, self_attn.o_proj, self_attn.q_proj, self_attn.v_proj"),
    (["method=sift", "model.path={gpt2}"], "method: sift trains nn.Linear weights; this gpt2 model holds "
     "transformer.h.0.attn.c_attn as a Conv1D: use method=full, lora or hift"),
    (["method=s2ft", "method.strategy=gradient", "method.o_ratio=0.001", "method.d_ratio=0"], "method.o_ratio: the "
     "ratios select no head or channel in this model; raise v_ratio, o_ratio, u_ratio or d_ratio"),
    (["method=s2ft", "method.strategy=activation", "model.path={gpt2}"], "method: s2ft cannot serve this gpt2 model: "
     "block transformer.h.0 holds transformer.h.0.attn.c_attn as a Conv1D, not an nn.Linear; use method=full, lora "
     "or hift, or add the family to ftbench/models/architecture.py LAYOUTS"),
    (["method=sparsegrad", "method.k=8193"], "method.k: 8193 is more than the 8192 entries of "
     "model.layers.0.mlp.gate_proj.weight; give at most 8192, or null (method.density x the layer's size)"),
    (["method=sparsegrad", "model.path={gpt2}"], "method: sparsegrad cannot serve this gpt2 model: block "
     "transformer.h.0 holds transformer.h.0.mlp.c_fc as a Conv1D, not an nn.Linear; use method=full, lora or hift, "
     "or add the family to ftbench/models/architecture.py LAYOUTS"),
    (["method=sparsegrad", "optim.name=sgd", "optim.momentum=0.9"], "optim.momentum: sparse MLP methods support "
     "plain SGD only; set 0 or use adamw"),
    (["method=pissa", "method.r=100000"], "method.r: 100000 is more than the 32 principal components an SVD of "
     "model.layers.0.self_attn.k_proj.weight has (its smaller side); give at most 32"),
    (["method=pissa", "method.target_modules=[up_proj,score]", "method.r=65"], "method.r: 65 is more than the 64 "
     "principal components an SVD of model.layers.0.mlp.up_proj.weight has (its smaller side); give at most 64"),
    (["method=pissa", "method.target_modules=[nosuch]"], "method.target_modules: no module named 'nosuch' in this "
     "model; linear layers here: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"),
]


@pytest.mark.parametrize("overrides,line", STRUCTURE_REFUSALS)
def test_a_setting_the_model_rules_out_is_refused_before_calibration_or_prepare(tmp_path, monkeypatch, overrides,
                                                                                 line):
    from plan_helpers import gpt2_folder

    if any("{gpt2}" in o for o in overrides):
        gpt2_folder(tmp_path / "gpt2")
    asked, fit, draws, build = [], steps.Feed.max_micro, steps.Feed.calibration, steps.build_method
    monkeypatch.setattr(steps.Feed, "max_micro", lambda feed, what, *a: asked.append(f"{what} fit") or fit(feed, what, *a))
    monkeypatch.setattr(steps.Feed, "calibration",
                        lambda feed, micro: lambda n: asked.append("calibration batches") or draws(feed, micro)(n))

    def spied(cfg):
        method = build(cfg)
        prepare = method.prepare
        method.prepare = lambda model, ctx: asked.append("prepare") or prepare(model, ctx)
        return method

    monkeypatch.setattr(steps, "build_method", spied)
    result = run(tmp_path / "r", *(o.format(gpt2=tmp_path / "gpt2") for o in overrides),
                 "hardware.max_micro_batch_size=auto", "task.num_train=64", "task.num_eval=32", "train.max_steps=1")
    assert refused(result, line.split(":")[0]) == line
    assert asked == []

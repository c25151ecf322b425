"""Every registered method through the same checks (table-driven over `ftbench.methods.names()`)."""

import contextlib

import pytest
import torch

from ftbench import results
from ftbench.methods import build_method
from helpers import compose, method_context, method_table, run, synthetic_batches, tiny_model

# name, the overrides that make its 30-step run train visibly (its schema's `quick`; its defaults otherwise)
METHODS = method_table("quick")
QUICK = ["task.max_steps=30", "task.num_train=512", "task.num_eval=64"]


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-bert"])
@pytest.mark.parametrize("name,overrides", METHODS)
def test_trains_scores_and_exports(tmp_path, name, overrides, model):
    result = run(tmp_path / "run", f"method={name}", f"model={model}", "train.save=last", *QUICK, *overrides)
    assert result["exit_code"] == 0, result["error"]
    assert results.problems(result) == []
    assert 0 < result["params"]["trainable"] <= result["params"]["total"] + result["memory"]["breakdown"]["master_bytes"]
    assert result["params"]["total"] == total_by_hand(name, overrides, model)
    curve = [loss for _, loss in result["train"]["loss_curve"]]
    assert sum(curve[-5:]) < sum(curve[:5]), "the loss should fall"
    assert result["memory"]["breakdown"]["optimizer_state_bytes"] > 0
    assert result["engagement"]["changed"] > 0 and result["engagement"]["warning"] is None, result["engagement"]
    # The merged export loads with plain from_pretrained and scores exactly as the trained model did.
    from transformers import AutoModelForSequenceClassification

    from ftbench.tasks import build_task
    from ftbench.tasks.base import EvalContext

    merged = AutoModelForSequenceClassification.from_pretrained(result["export"]["merged"])
    assert merged.config.use_cache == tiny_model(model).config.use_cache  # the model's own, not training's off
    cfg = compose(f"model={model}", *QUICK)
    task = build_task(cfg.task, None, cfg.seed)
    ctx = EvalContext(device=torch.device("cpu"), autocast=contextlib.nullcontext, batch_size=64, max_samples=None,
                      output_dir=tmp_path, pad_to_multiple_of=None)
    assert task.evaluate(merged, ctx)["dev/acc"] == pytest.approx(result["metrics"]["dev/acc"], abs=1e-9)


def lora_adds(model, heads: list[str], r: int, magnitude: bool = False) -> int:
    """LoRA's adapters counted by hand: r x (in + out) on every linear outside the task heads (all-linear), and with
    `magnitude` (DoRA) one magnitude per output too."""
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[0] not in heads]
    return sum(r * (m.in_features + m.out_features) + (m.out_features if magnitude else 0) for m in linears)


# What each method adds to the base model's parameters, by hand (model, task heads, method config); every other
# registered method adds none (masters are copies, not new parameters).
ADDS = {"lora": lambda m, h, c: lora_adds(m, h, c.r), "qlora": lambda m, h, c: lora_adds(m, h, c.r),
        "pissa": lambda m, h, c: lora_adds(m, h, c.r), "loraplus": lambda m, h, c: lora_adds(m, h, c.r),
        "dora": lambda m, h, c: lora_adds(m, h, c.r, magnitude=True)}


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-bert"])
@pytest.mark.parametrize("name,overrides", METHODS)
def test_params_total_is_the_base_plus_what_the_method_adds(name, overrides, model_name):
    """result.json's params.total counts each weight once: PEFT's two copies of a task head (modules_to_save) and
    a method's masters count as one weight; run.py counts it so (Method.uncounted_parameters)."""
    from ftbench.measure.meters import parameter_count

    cfg = compose(f"method={name}", *overrides)
    method = build_method(cfg.method)
    model = method.prepare(tiny_model(model_name), method_context())
    method.attach(method.build_optimizer(method.param_groups(model, 0.0), cfg.optim, 1e-3))
    assert parameter_count(model, method.uncounted_parameters(model)) == total_by_hand(name, overrides, model_name)


def total_by_hand(name: str, overrides: list[str], model_name: str) -> int:
    """The base model's parameters (a sequence classifier's) and what method `name` adds to them (ADDS)."""
    from ftbench.models.architecture import architecture

    base = tiny_model(model_name)
    adds = ADDS.get(name, lambda *_: 0)(base, architecture(base).task_heads("seq_cls"),
                                        compose(f"method={name}", *overrides).method)
    return sum(p.numel() for p in base.parameters()) + adds


@pytest.mark.parametrize("name,overrides", METHODS)
def test_checkpointing_gives_every_trainable_tensor_a_gradient(name, overrides):
    model = tiny_model("tiny-llama")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cfg = compose(f"method={name}", *overrides)
    method = build_method(cfg.method)
    model = method.prepare(model, method_context(checkpointing=True))
    method.attach(method.build_optimizer(method.param_groups(model, 0.0), cfg.optim, 1e-3))
    model.train()
    model(**next(synthetic_batches())).loss.backward()
    missing = [i for i, p in enumerate(method.optimizer_parameters()) if p.grad is None]
    assert not missing, f"{len(missing)} trainable tensors got no gradient"


@pytest.mark.parametrize("name,overrides", METHODS)
def test_profile_mode(tmp_path, name, overrides):
    result = run(tmp_path / "run", "mode=profile", f"method={name}", "profile.batch_size=2", "profile.seq_len=16",
                 "profile.warmup_steps=1", "profile.steps=2", *overrides)
    assert result["exit_code"] == 0, result["error"]
    assert results.problems(result) == []
    assert result["metrics"] == {} and result["run"]["task"] == "profile"
    assert result["throughput"]["timed_steps"] == 2 and result["throughput"]["tokens_per_s"] > 0


@pytest.mark.parametrize("name,overrides", METHODS)
def test_chunked_loss_trains_like_the_models_loss(tmp_path, name, overrides):
    """The causal-LM loss in chunks (recomputed in backward) reaches every method's trainable tensors as the
    model's own loss does: the same loss curve."""
    common = ["mode=profile", f"method={name}", "profile.batch_size=2", "profile.seq_len=16",
              "profile.warmup_steps=0", "profile.steps=3", "profile.trace_memory=false", *overrides]
    chunked = run(tmp_path / "chunked", *common, "train.loss_chunk_tokens=5")
    whole = run(tmp_path / "whole", *common, "train.loss_chunk_tokens=null")
    assert chunked["plan"]["loss_chunk_tokens"] == 5 and whole["plan"]["loss_chunk_tokens"] is None
    curve = lambda r: [loss for _, loss in r["train"]["loss_curve"]]  # noqa: E731
    assert curve(chunked) == pytest.approx(curve(whole), rel=1e-5)


# a count knob above what tiny-llama holds (2 layers; BAdam rotates 2 units, HiFT 4) is refused naming the knob and
# the most it takes, never clamped silently (was: freeze layers=5 trained both layers, result.json said layers: 5)
MORE_THAN_THE_MODEL = [
    (["method=freeze", "method.layers=3"], "method.layers: 3 is more than the 2 blocks of this model's layer stack; "
     "give at most 2"),
    (["method=badam", "method.group_size=3"], "method.group_size: 3 is more than the 2 rotating units (order=random"),
    (["method=hift", "method.group_size=5"], "method.group_size: 5 is more than the 4 rotating units (order=down2up"),
    (["method=lisa", "method.group_size=3"], "method.group_size: 3 is more than the 2 rotating units (order=sample"),
    (["method=sparsegrad", "method.k=8193"], "method.k: 8193 is more than the 8192 entries of "
     "model.layers.0.mlp.gate_proj.weight; give at most 8192"),
    (["method=meprop", "method.k=8193"], "method.k: 8193 is more than the 8192 entries of"),
    (["method=galore", "method.rank=33"], "method.rank: 33 is more than the 32 singular vectors an SVD of "
     "model.layers.0.self_attn.k_proj.weight has (its smaller side); give at most 32"),
    (["method=apollo", "method.proj=svd", "method.rank=33"], "method.rank: 33 is more than the 32 singular vectors"),
    # a random projection to more rows than the side it compresses enlarges the gradient (was: accepted, its moments
    # 30x the weights at rank 1000), and an SVD-started adapter has no more components (was: cut silently by PEFT)
    (["method=apollo", "method.rank=33"], "method.rank: 33 is more than 32, the side of "
     "model.layers.0.self_attn.k_proj.weight its random projection compresses (method.proj_type=std): a larger rank "
     "enlarges the gradient instead, and its moments outgrow AdamW's of the whole weight; give at most 32"),
    (["method=apollo", "method.proj_type=reverse_std", "method.rank=65"], "method.rank: 65 is more than 64, the side "
     "of model.layers.0.self_attn.k_proj.weight its random projection compresses (method.proj_type=reverse_std)"),
    (["method=pissa", "method.r=33"], "method.r: 33 is more than the 32 principal components an SVD of "
     "model.layers.0.self_attn.k_proj.weight has (its smaller side); give at most 32"),
]


@pytest.mark.parametrize("overrides,expected", MORE_THAN_THE_MODEL)
def test_a_count_above_the_models_is_refused_before_training(overrides, expected):
    from ftbench.errors import UserError

    method = build_method(compose(*overrides).method)
    with pytest.raises(UserError) as refused:
        method.prepare(tiny_model("tiny-llama"), method_context())
    assert str(refused.value).startswith(expected), refused.value


@pytest.mark.parametrize("overrides", [["method=apollo", "method.proj_type=reverse_std", "method.rank=64"],
                                       ["method=lora", "method.r=64"]])
def test_a_rank_that_still_compresses_or_adds_capacity_is_taken(overrides):
    """APOLLO's random projection of the larger side (reverse_std) to more rows than the smaller side still
    compresses; a LoRA rank above a weight's smaller side is PEFT's to take (more adapter, no cut)."""
    method = build_method(compose(*overrides).method)
    assert method.prepare(tiny_model("tiny-llama"), method_context()) is not None


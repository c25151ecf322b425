"""GaLore, APOLLO and Adam-mini (methods/galore, apollo, adam_mini): ftbench trains with the library
exactly as the library's README loop does (the same weights, bitwise), layer-wise GaLore steps as
the whole-model step does while holding no gradient, what each cannot do is refused in one line,
and the optimizer state is counted as it is held (projectors, per-block second moments)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ftbench.errors import UserError
from ftbench.measure.meters import held_optimizer_state_bytes, optimizer_state_parts
from ftbench.methods import build_method
from helpers import compose, method_context, run, synthetic_batches, tiny_model, train_steps

STEPS = 3
LR = 1e-2


def batches():
    return synthetic_batches(batch_size=4, head="causal_lm")


def trained_by_ftbench(model: nn.Module, *overrides: str):
    """`model` trained STEPS steps by the method through ftbench's loop (fp32, no clipping, constant lr)."""
    method = build_method(compose(*overrides).method)
    model = method.prepare(model, method_context(head="causal_lm"))
    optimizer = train_steps(model, method, batches(), steps=STEPS, lr=LR, optimizer="adamw")
    return method, optimizer


def trained_by_readme_loop(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The loop the libraries' READMEs show: forward, backward, step, zero_grad."""
    stream = batches()
    model.train()
    for _ in range(STEPS):
        model(**next(stream)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def readme_groups(model: nn.Module, **settings) -> list[dict]:
    """galore-torch's and apollo-torch's README: the attention and MLP linears projected, the rest plain."""
    projected = [m.weight for name, m in model.named_modules()
                 if isinstance(m, nn.Linear) and any(t in name for t in ("attn", "mlp"))]
    ids = {id(p) for p in projected}
    return [{"params": [p for p in model.parameters() if id(p) not in ids]}, {"params": projected, **settings}]


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name


def test_galore_trains_as_galore_torchs_readme_loop():
    from galore_torch import GaLoreAdamW

    ours = tiny_model(head="causal_lm")
    theirs = copy.deepcopy(ours)  # the same start
    start = copy.deepcopy(ours.state_dict())
    trained_by_ftbench(ours, "method=galore", "method.rank=4", "method.update_proj_gap=2")
    groups = readme_groups(theirs, rank=4, update_proj_gap=2, scale=2.0, proj_type="std")
    trained_by_readme_loop(theirs, GaLoreAdamW(groups, lr=LR, eps=1e-8, no_deprecation_warning=True))
    assert_same_weights(ours, theirs)
    assert not torch.equal(ours.state_dict()["model.layers.0.mlp.up_proj.weight"],
                           start["model.layers.0.mlp.up_proj.weight"])


def test_apollo_trains_as_apollo_torchs_readme_loop():
    """APOLLO-Mini's settings (rank 1, tensor-wise scaling, scale 128); the projections are seeded by each
    weight's position, so the same groups in the same order draw the same ones."""
    from apollo_torch import APOLLOAdamW

    ours = tiny_model(head="causal_lm")
    theirs = copy.deepcopy(ours)  # the same start
    trained_by_ftbench(ours, "method=apollo", "method.rank=1", "method.scale_type=tensor", "method.scale=128")
    groups = readme_groups(theirs, rank=1, proj="random", scale_type="tensor", scale=128, update_proj_gap=200,
                           proj_type="std")
    trained_by_readme_loop(theirs, APOLLOAdamW(groups, lr=LR, eps=1e-8))
    assert_same_weights(ours, theirs)


def test_adam_mini_trains_as_its_readme_with_the_blocks_of_architecture_py():
    """On LLaMA names the library's own name rules and architecture.py's roles partition alike."""
    from adam_mini import Adam_mini

    ours = tiny_model(head="causal_lm")
    theirs = copy.deepcopy(ours)  # the same start
    method, optimizer = trained_by_ftbench(ours, "method=adam-mini")
    config = theirs.config
    trained_by_readme_loop(theirs, Adam_mini(named_parameters=theirs.named_parameters(), lr=LR, eps=1e-8,
                                             dim=config.hidden_size, n_heads=config.num_attention_heads,
                                             n_kv_heads=config.num_key_value_heads, verbose=False))
    assert_same_weights(ours, theirs)
    # One second moment per head (q: 4, k: 2), per row (v, o, MLP, embedding, head), one per norm.
    vmean = {group["name"]: optimizer.state[group["params"][0]]["vmean"].numel() for group in optimizer.param_groups}
    assert (vmean["model.layers.0.self_attn.q_proj.weight"], vmean["model.layers.0.self_attn.k_proj.weight"]) == (4, 2)
    assert vmean["model.layers.0.mlp.down_proj.weight"] == 64 and vmean["model.embed_tokens.weight"] == 512
    assert vmean["model.layers.0.input_layernorm.weight"] == 1


def test_adam_mini_takes_bert_blocks_from_architecture_py():
    """BERT's names are not the library's (query, key, value, attention.output.dense, intermediate.dense):
    architecture.py's roles put each in its block kind."""
    model = tiny_model("tiny-bert")
    method = build_method(compose("method=adam-mini").method)
    model = method.prepare(model, method_context())
    optimizer = train_steps(model, method, synthetic_batches(), steps=1, lr=1e-3, optimizer="adamw")
    state = {g["name"]: optimizer.state[g["params"][0]] for g in optimizer.param_groups}  # names lower-cased
    layer = "bert.encoder.layer.0."
    assert state[layer + "attention.self.query.weight"]["vmean"].numel() == 4  # per head
    assert state[layer + "attention.self.value.weight"]["vmean"].numel() == 64  # per neuron
    assert state[layer + "intermediate.dense.weight"]["vmean"].numel() == 128
    assert state[layer + "attention.output.layernorm.weight"]["vmean"].numel() == 1  # per tensor
    assert state[layer + "attention.self.query.bias"]["v"].numel() == 64  # biases keep AdamW's v
    assert state["classifier.weight"]["vmean"].numel() == 2  # the new head: per row


def test_layerwise_galore_steps_as_the_whole_model_step_and_holds_no_gradient():
    """Each weight stepped in its own hook during the backward ends where one step after the backward
    ends (bitwise), and no gradient is left when the loop reaches the optimizer step."""
    whole = tiny_model(head="causal_lm")
    layerwise = copy.deepcopy(whole)
    trained_by_ftbench(whole, "method=galore", "method.rank=4")
    method, _ = trained_by_ftbench(layerwise, "method=galore", "method.rank=4", "method.layerwise=true",
                                   "optim.max_grad_norm=null")
    assert_same_weights(whole, layerwise)
    assert all(p.grad is None for p in layerwise.parameters())
    assert method.held_gradients() == []


def test_layerwise_galore_trains_as_galore_torchs_readme_per_parameter_loop():
    """galore-torch's README layer-wise loop: one optimizer per parameter, stepped in its hook."""
    from galore_torch import GaLoreAdamW

    ours = tiny_model(head="causal_lm")
    theirs = copy.deepcopy(ours)  # the same start
    trained_by_ftbench(ours, "method=galore", "method.rank=4", "method.layerwise=true", "optim.max_grad_norm=null")
    (rest, projected) = readme_groups(theirs, rank=4, update_proj_gap=200, scale=2.0, proj_type="std")
    settings = {k: v for k, v in projected.items() if k != "params"}
    optimizers = {p: GaLoreAdamW([{"params": [p], **(settings if g is projected else {})}], lr=LR, eps=1e-8,
                                 no_deprecation_warning=True) for g in (rest, projected) for p in g["params"]}

    def hook(p):
        optimizers[p].step()
        optimizers[p].zero_grad()

    handles = [p.register_post_accumulate_grad_hook(hook) for p in optimizers]
    stream = batches()
    for _ in range(STEPS):
        theirs(**next(stream)).loss.backward()
    for handle in handles:
        handle.remove()
    assert_same_weights(ours, theirs)


def test_layerwise_galore_run_records_no_gradient_bytes(tmp_path):
    result = run(tmp_path / "run", "mode=profile", "method=galore", "method.layerwise=true", "optim.max_grad_norm=null",
                 "profile.batch_size=2", "profile.seq_len=16", "profile.warmup_steps=1", "profile.steps=1")
    assert result["exit_code"] == 0, result["error"]
    breakdown = result["memory"]["breakdown"]
    assert breakdown["grad_bytes"] == 0 and breakdown["optimizer_state_bytes"] > 0


def test_layerwise_galore_refuses_clipping_at_compose_time(tmp_path):
    result = run(tmp_path / "run", "method=galore", "method.layerwise=true", "task.max_steps=1")
    assert result["exit_code"] == 2 and result["status"] == "failed"
    assert result["error"].startswith("optim.max_grad_norm: ") and "optim.max_grad_norm=null" in result["error"]


def test_layerwise_galore_refuses_gradient_accumulation_in_one_line(tmp_path):
    result = run(tmp_path / "run", "method=galore", "method.layerwise=true", "optim.max_grad_norm=null",
                 "task.max_steps=2", "task.batch_size=8", "hardware.max_micro_batch_size=4", "task.num_train=32",
                 "task.num_eval=8")
    assert result["exit_code"] == 2 and result["status"] == "failed"
    assert result["error"].startswith("hardware.max_micro_batch_size: ") and "\n" not in result["error"]


def test_layerwise_galore_refuses_data_parallel(monkeypatch):
    import ftbench.methods.galore.method as galore

    monkeypatch.setattr(galore.distributed, "world_size", lambda: 2)
    method = build_method(compose("method=galore", "method.layerwise=true", "optim.max_grad_norm=null").method)
    with pytest.raises(UserError) as refused:
        method.prepare(tiny_model(), method_context())
    assert refused.value.key == "method.layerwise"


@pytest.mark.parametrize("overrides,key", [
    (["method=galore", "optim.name=sgd"], "optim.name"),
    (["method=apollo", "optim.name=adafactor"], "optim.name"),
    (["method=adam-mini", "optim.name=adagrad"], "optim.name"),
    (["method=galore", "hardware.shard=fsdp"], "hardware.shard"),
    (["method=apollo", "hardware.shard=fsdp"], "hardware.shard"),
    (["method=adam-mini", "hardware.shard=fsdp"], "hardware.shard"),
    (["method=galore", "method.target_modules=[nosuch]"], "method.target_modules"),
    (["method=galore", "method.optimizer=adamw8bit"], "method.optimizer"),  # CUDA only
])
def test_what_cannot_run_is_one_line_naming_the_key(tmp_path, overrides, key):
    result = run(tmp_path / "run", *overrides, "task.max_steps=1")
    assert result["exit_code"] == 2, result["error"]
    assert result["error"].startswith(f"{key}: ") and "\n" not in result["error"]


def test_a_missing_library_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "galore_torch", None)  # import galore_torch raises ImportError
    result = run(tmp_path / "run", "method=galore", "task.max_steps=1")
    assert result["exit_code"] == 2 and "pip install 'ftbench[optimizers]'" in result["error"]


def test_the_state_count_includes_the_projection_matrices():
    """GaLore keeps each projection inside a projector object in the state: the walk counts it, by kind."""
    model = tiny_model(head="causal_lm")
    method, optimizer = trained_by_ftbench(model, "method=galore", "method.rank=4")
    cpu = torch.device("cpu")
    parts = optimizer_state_parts(optimizer, cpu)
    projected = [p for g in optimizer.param_groups if "rank" in g for p in g["params"]]
    projectors = sum(optimizer.state[p]["projector"].ortho_matrix.numel() * 4 for p in projected)
    assert parts["projector (rank 4)"] == projectors > 0
    moments = sum(optimizer.state[p]["exp_avg"].numel() * 4 for p in projected)
    assert parts["exp_avg (rank 4)"] == parts["exp_avg_sq (rank 4)"] == moments
    assert moments < sum(p.numel() * 4 for p in projected) / 4  # rank 4 of 32..128-wide weights
    assert held_optimizer_state_bytes(optimizer, cpu)[0] == sum(parts.values())


def test_the_plan_shows_the_rank_r_states_as_lines(tmp_path, capsys):
    from ftbench.job.run import run_job

    assert run_job(compose("mode=plan", "method=galore", "profile.batch_size=2", "profile.seq_len=16"),
                   tmp_path / "plan") == 0
    out = capsys.readouterr().out
    assert "    exp_avg (rank 16)" in out and "    projector (rank 16)" in out


@pytest.mark.parametrize("shape, name", [("linear", "linear"), ("cosine", "cosine"),
                                         ("constant", "constant_with_warmup")])
def test_the_lr_schedules_are_transformers_schedules(shape, name):
    """engine/optim.make_scheduler computes transformers' get_scheduler factors itself (no import of
    transformers.optimization, which imports peft): the same lr at every step, the same state_dict."""
    from types import SimpleNamespace

    from transformers import get_scheduler

    from ftbench.engine.optim import make_scheduler

    for total in (1, 2, 5, 17):
        for warmup in (0, 1, 3, total, total + 2):
            ours, theirs = (torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.3) for _ in range(2))
            mine = make_scheduler(ours, SimpleNamespace(warmup_steps=warmup, warmup_ratio=0.0, scheduler=shape), total)
            reference = get_scheduler(name, theirs, num_warmup_steps=warmup, num_training_steps=total)
            for _ in range(total + 3):
                assert mine.get_last_lr() == reference.get_last_lr(), (total, warmup)
                ours.step(), theirs.step(), mine.step(), reference.step()
            assert mine.state_dict() == reference.state_dict()

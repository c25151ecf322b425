"""bf16 training through fp32 masters: at small learning rates a bf16 weight stepped in place
does not move (the update rounds away); every method's optimizer must step fp32 tensors."""

import copy

import pytest
import torch

from ftbench.methods import build_method
from helpers import compose, method_context, synthetic_batches, tiny_model, train_steps
from test_methods import METHODS


def _trained(model, overrides, lr, steps=3):
    cfg = compose("method=full", *overrides)
    method = build_method(cfg.method)
    model = method.prepare(model, method_context())
    train_steps(model, method, synthetic_batches(), steps=steps, lr=lr, optimizer="adamw")
    return method, model


def test_bf16_full_fine_tuning_moves_weights_as_fp32_does():
    """lr 1e-5, 3 AdamW steps: the values the optimizer steps move as fp32 weights do (AdamW's
    update is about lr per entry, far below half a bf16 unit of a 0.02-sized weight)."""
    bf16 = tiny_model("tiny-llama", dtype="bf16-pure")
    fp32 = copy.deepcopy(bf16).float()  # the same start, exactly
    start = [p.detach().float().clone() for p in fp32.parameters()]
    full_bf16, bf16 = _trained(bf16, [], lr=1e-5)
    full_fp32, fp32 = _trained(fp32, [], lr=1e-5)
    stepped_bf16 = [p.detach().float() for p in full_bf16.optimizer_parameters()]
    stepped_fp32 = [p.detach() for p in full_fp32.optimizer_parameters()]
    start_by_id = {id(p): s for p, s in zip(fp32.parameters(), start)}
    starts = [start_by_id[id(p)] for p in full_fp32.optimizer_parameters()]
    moved_bf16 = torch.cat([(b - s).flatten() for b, s in zip(stepped_bf16, starts)])
    moved_fp32 = torch.cat([(f - s).flatten() for f, s in zip(stepped_fp32, starts)])
    trained = moved_fp32 != 0  # (embedding rows of tokens the batches never hold get no gradient)
    assert trained.float().mean() > 0.5
    assert (moved_bf16[trained] != 0).float().mean() > 0.95, "bf16 rounding swallowed the updates"
    assert torch.linalg.vector_norm(moved_bf16 - moved_fp32) < 0.3 * torch.linalg.vector_norm(moved_fp32)
    # The forward uses the bf16 weights: each is its master rounded to bf16.
    for param, master in full_bf16.masters.pairs:
        assert torch.equal(param, master.to(torch.bfloat16))
    assert full_bf16.master_bytes() == 4 * sum(p.numel() for p in bf16.parameters())


def test_bf16_full_fine_tuning_opt_out_steps_the_weights():
    bf16 = tiny_model("tiny-llama", dtype="bf16-pure")
    method, model = _trained(bf16, ["method.master_dtype=weight"], lr=1e-5, steps=1)
    assert method.master_bytes() == 0
    assert all(p.dtype == torch.bfloat16 for p in method.optimizer_parameters())


@pytest.mark.parametrize("name,overrides", METHODS)
def test_the_optimizer_steps_no_bf16_tensor(name, overrides):
    """Every method under bf16 weights: the tensors its optimizer steps densely are fp32
    (heads and other dense extras included); SparseGrad's sparse MLP groups round stochastically."""
    model = tiny_model("tiny-llama", dtype="bf16-pure")
    cfg = compose(f"method={name}", *overrides)
    method = build_method(cfg.method)
    model = method.prepare(model, method_context())
    optimizer = method.build_optimizer(method.param_groups(model, 0.0), cfg.optim, 1e-5)
    method.attach(optimizer)
    low = [tuple(p.shape) for g in optimizer.param_groups if not g.get("sparse") for p in g["params"]
           if p.dtype == torch.bfloat16]
    assert not low, f"{len(low)} bf16 tensors stepped in place, e.g. {low[:3]}"
    method.close()


def test_meprop_rounds_bf16_updates_stochastically():
    """MeProp's top-k entries of a bf16 weight: updates far below half a unit move the weight on
    average (stochastic rounding), where round-to-nearest would leave it unchanged."""
    from ftbench.config.schema import OptimConfig
    from ftbench.methods.sparsegrad.sparse_adam import SparseMlpOptimizer

    weight = torch.nn.Parameter(torch.full((64, 64), 0.5, dtype=torch.bfloat16))
    optimizer = SparseMlpOptimizer([{"params": [weight], "sparse": True, "name": "sparse"}],
                                   OptimConfig(name="sgd", momentum=0.0), 1e-4, {weight: None})
    index = torch.stack(torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")).reshape(2, -1)
    for _ in range(20):
        weight.grad = torch.sparse_coo_tensor(index, torch.ones(64 * 64, dtype=torch.bfloat16), (64, 64),
                                              check_invariants=True)
        optimizer.step()
    assert weight.float().mean().item() == pytest.approx(0.5 - 20 * 1e-4, abs=2e-4)


def test_lazy_adam_keeps_fp32_moments_for_bf16_weights():
    from ftbench.config.schema import OptimConfig
    from ftbench.methods.sparsegrad.sparse_adam import SparseMlpOptimizer

    weight = torch.nn.Parameter(torch.full((8, 8), 0.5, dtype=torch.bfloat16))
    optimizer = SparseMlpOptimizer([{"params": [weight], "sparse": True, "name": "sparse"}],
                                   OptimConfig(name="adamw"), 1e-5, {weight: None})
    weight.grad = torch.sparse_coo_tensor(torch.tensor([[0, 1], [2, 3]]), torch.ones(2, dtype=torch.bfloat16),
                                          (8, 8), check_invariants=True)
    optimizer.step()
    assert optimizer.state[weight]["exp_avg"].dtype == optimizer.state[weight]["exp_avg_sq"].dtype == torch.float32

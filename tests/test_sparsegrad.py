"""SparseGrad and MeProp against dense references (float64 where exactness is claimed)."""

import copy
import functools

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from ftbench.config.schema import OptimConfig, check
from ftbench.errors import UserError
from ftbench.measure.meters import held_optimizer_state_bytes, tensor_bytes
from ftbench.methods import build_method
from ftbench.methods.full.method import FullConfig, FullFineTuning
from ftbench.methods.meprop.method import MeProp, MePropConfig
from ftbench.methods.sparsegrad.method import SparseGrad, SparseGradConfig
from ftbench.methods.sparsegrad.sparse_adam import (
    SparseMlpOptimizer,
    add_rounded,
    clip_grad_norm,
    unique_entries,
)
from ftbench.methods.sparsegrad.sparse_linear import Basis, TopKGradLinear, mlp_layers, top_k_sparse
from helpers import compose, method_context, synthetic_batches, tiny_model, train_steps

CPU = torch.device("cpu")


def orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q


def tiny_bert64():
    torch.manual_seed(0)
    return tiny_model("tiny-bert").double()


def prepared(method, model=None, calibration_steps=2):
    model = model if model is not None else tiny_bert64()
    if isinstance(method, SparseGrad):
        method.cfg.calibration_steps = calibration_steps
    return method.prepare(model, method_context())


def rotated(layer: TopKGradLinear) -> torch.Tensor:
    """W̃ with W = L W̃ Rᵀ, in fp64 (L⁻¹ W R⁻ᵀ; Lᵀ W R for an orthogonal pair)."""
    w = layer.weight.detach().double()
    if layer.basis is None:
        return w.clone()
    left, right = layer.basis.left.double(), layer.basis.right.double()
    return torch.linalg.solve(left, w) @ torch.linalg.inv(right).t()


# -- the MLP layers and the calibration ---------------------------------------------------------

def test_mlp_kinds_per_architecture():
    bert = mlp_layers(tiny_model("tiny-bert"), "sparsegrad")
    assert {k: [n for n, _ in v] for k, v in bert.items()} == {
        "intermediate.dense": ["bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.1.intermediate.dense"],
        "output.dense": ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]}
    llama = mlp_layers(tiny_model("tiny-llama"), "sparsegrad")
    assert sorted(llama) == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"] and all(len(v) == 2 for v in llama.values())
    gpt2 = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(
        "gpt2", n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=64))
    with pytest.raises(UserError, match="Conv1D") as error:
        mlp_layers(gpt2, "sparsegrad")  # GPT-2's MLP is Conv1D, not nn.Linear
    assert error.value.key == "method"


def test_calibration_gives_the_unfoldings_singular_vectors_and_changes_nothing():
    model = tiny_bert64()
    before = copy.deepcopy(model.state_dict())
    method = SparseGrad(SparseGradConfig(rotation_dtype="float32"))
    prepared(method, model, calibration_steps=3)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"calibration changed {key}"
    # Reference: stack every gradient of a kind (steps x layers) and take the SVD of the mode-2/3 unfoldings.
    reference = tiny_bert64()
    stacks = {kind: [] for kind in method.kinds}
    named = {f"{n}.weight": k for k, group in mlp_layers(reference, "sparsegrad").items() for n, _ in group}
    reference.train()  # its RNG stands where the calibrated model's stood: the same dropout masks
    for batch in method_context().calibration_batches(3):
        reference.zero_grad()
        reference(**batch).loss.backward()
        for name, param in reference.named_parameters():
            if name in named:
                stacks[named[name]].append(param.grad.clone())
    for kind, grads in stacks.items():
        basis = method.kinds[kind][0].basis
        eye_out, eye_in = torch.eye(basis.left.shape[0], dtype=torch.float64), torch.eye(basis.right.shape[0],
                                                                                         dtype=torch.float64)
        torch.testing.assert_close(basis.left.t() @ basis.left, eye_out)
        torch.testing.assert_close(basis.right @ basis.right.t(), eye_in)
        stack = torch.stack(grads)  # (K, d_out, d_in)
        u2 = torch.linalg.svd(stack.permute(1, 2, 0).reshape(stack.shape[1], -1), full_matrices=False)[0]
        u3 = torch.linalg.svd(stack.permute(2, 0, 1).reshape(stack.shape[2], -1), full_matrices=False)[0]
        assert isinstance(basis, Basis) and basis.left.dtype == torch.float64
        # Leading singular vectors agree up to sign (W̃ = u2ᵀ W u3ᵀ: right = u3ᵀ).
        for mine, theirs in ((basis.left, u2), (basis.right.t(), u3)):
            overlap = (mine[:, :4].t() @ theirs[:, :4]).abs()
            assert overlap.diagonal().min() > 1 - 1e-6, f"{kind}: {overlap.diagonal()}"


def test_a_bf16_basis_is_the_fp32_basis_rounded():
    """method.rotation_dtype=bfloat16 (the default) stores the same calibrated pair, rounded to bf16."""
    exact, rounded = SparseGrad(SparseGradConfig(rotation_dtype="float32")), SparseGrad(SparseGradConfig())
    for method in (exact, rounded):
        prepared(method)
    for kind in exact.kinds:
        a, b = exact.kinds[kind][0].basis, rounded.kinds[kind][0].basis
        assert b.left.dtype == b.right.dtype == torch.bfloat16
        assert torch.equal(b.left, a.left.to(torch.bfloat16)) and torch.equal(b.right, a.right.to(torch.bfloat16))
        assert b.left.t().is_contiguous() and b.right.t().is_contiguous()  # column-major, as the update reads them


def test_warm_start_fine_tunes_during_calibration():
    model = tiny_bert64()
    before = {n: p.clone() for n, p in model.named_parameters()}
    method = SparseGrad(SparseGradConfig(warm_start=True, lr=1e-2))
    prepared(method, model)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)  # every parameter, as the reference's full fine-tuning steps


def test_core_basis_ablation_uses_u3_untransposed():
    paper, core = SparseGrad(SparseGradConfig()), SparseGrad(SparseGradConfig(core_basis=True))
    for method in (paper, core):
        torch.manual_seed(0)
        prepared(method)
    for kind in paper.kinds:
        a, b = paper.kinds[kind][0].basis, core.kinds[kind][0].basis
        assert torch.equal(a.left, b.left) and torch.equal(a.right, b.right.t())


# -- the layer ------------------------------------------------------------------------------

@pytest.mark.parametrize("rotate", [True, False])
def test_layer_equals_nn_linear_and_keeps_the_top_k_of_the_rotated_gradient(rotate):
    torch.manual_seed(0)
    dense = nn.Linear(6, 5).double()
    basis = Basis(orthogonal(5, 1), orthogonal(6, 2)) if rotate else None
    layer = TopKGradLinear(copy.deepcopy(dense), basis, k=7)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    target = torch.randn(3, 4, 5, dtype=torch.float64)
    y1, y2 = dense(x1), layer(x2)
    assert torch.equal(y1, y2)  # the forward is F.linear itself
    ((y1 - target) ** 2).sum().backward()
    ((y2 - target) ** 2).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    torch.testing.assert_close(layer.bias.grad, dense.bias.grad)  # Σ g, never rotated
    grad = layer.weight.grad
    assert grad.is_sparse and grad._nnz() == 7
    full = dense.weight.grad if basis is None else basis.left.t() @ dense.weight.grad @ basis.right
    expected = torch.zeros_like(full).view(-1)
    top = full.reshape(-1).abs().topk(7).indices
    expected[top] = full.reshape(-1)[top]
    torch.testing.assert_close(grad.to_dense(), expected.view_as(full))


@pytest.mark.parametrize("tokens", [3, 7, 12])  # L and R on the tokens, R only (6 < 7 < 9), neither
@pytest.mark.parametrize("d_out,d_in", [(9, 6), (6, 9)])
def test_the_rotated_gradient_is_the_same_in_every_order(tokens, d_out, d_in):
    torch.manual_seed(0)
    basis = Basis(orthogonal(d_out, 1), orthogonal(d_in, 2))
    g, x = torch.randn(tokens, d_out, dtype=torch.float64), torch.randn(tokens, d_in, dtype=torch.float64)
    torch.testing.assert_close(basis.rotated_gradient(g, x), basis.left.t() @ g.t() @ x @ basis.right)


@pytest.mark.parametrize("tokens", [16, 64, 256])  # L and R on the tokens, R only, neither
@pytest.mark.parametrize("d_out,d_in", [(96, 48), (48, 96)])
def test_a_bf16_basis_keeps_the_top_k_but_at_its_margin(tokens, d_out, d_in):
    """rotation_dtype=bfloat16: the products run in bf16 (fp32 accumulation), so the k kept entries are the
    top-k of Lᵀ G R for the stored pair except at the margin: each within 2 % of the k-th largest
    magnitude (fp64), nearly all the same entries, and the values within bf16's rounding."""
    generator = torch.Generator().manual_seed(0)
    basis = Basis(orthogonal(d_out, 1).to(torch.bfloat16), orthogonal(d_in, 2).to(torch.bfloat16))
    g, x = (torch.randn(tokens, n, generator=generator) for n in (d_out, d_in))
    layer = TopKGradLinear(nn.Linear(d_in, d_out, bias=False), basis, k=200)
    got = layer.weight_grad(g, x)[0]
    assert got.dtype == torch.float32 and got._nnz() == 200 and got.is_coalesced()
    exact = (basis.left.double().t() @ g.double().t() @ x.double() @ basis.right.double()).reshape(-1)
    rows, cols = got._indices()
    kept = rows * d_in + cols
    top = exact.abs().topk(200)
    assert exact.abs()[kept].min() >= 0.98 * top.values.min()
    assert len(set(kept.tolist()) ^ set(top.indices.tolist())) <= 2 * 200 // 25  # at most 4 % swapped
    torch.testing.assert_close(got._values().double(), exact[kept], rtol=2**-7, atol=2**-7 * exact.abs().max())


@pytest.mark.parametrize("tokens", [3, 7, 12])
@pytest.mark.parametrize("d_out,d_in", [(9, 6), (6, 9)])
def test_the_top_k_of_the_rotated_gradient_is_the_same_in_either_memory_order(tokens, d_out, d_in):
    """rotated_gradient returns a column-major matrix when R goes on the gradient (tokens 7, d_out 6);
    top_k_sparse then searches it in place: the same entries, sorted and coalesced, as from a copy."""
    torch.manual_seed(0)
    basis = Basis(orthogonal(d_out, 1), orthogonal(d_in, 2))
    g, x = torch.randn(tokens, d_out, dtype=torch.float64), torch.randn(tokens, d_in, dtype=torch.float64)
    rotated = basis.rotated_gradient(g, x)
    got, want = top_k_sparse(rotated, 11, torch.float32), top_k_sparse(rotated.contiguous(), 11, torch.float32)
    assert got.is_coalesced() and torch.equal(got._indices(), want._indices())
    assert torch.equal(got._values(), want._values())
    rows, cols = got._indices()
    assert bool(((rows * d_in + cols).diff() > 0).all())  # row-major order, as the coalesced flag claims
    column_major = top_k_sparse(rotated.t().contiguous().t(), 11, torch.float32)
    assert torch.equal(column_major._indices(), want._indices()) and torch.equal(column_major._values(), want._values())


@pytest.mark.parametrize("d_out,d_in", [(9, 6), (6, 9)])
def test_an_update_of_k_entries_unrotates_as_the_dense_product(d_out, d_in):
    torch.manual_seed(0)
    basis = Basis(orthogonal(d_out, 1), orthogonal(d_in, 2))
    flat = torch.tensor([0, 5, 5, 17, d_out * d_in - 1])  # sorted, as the optimizer holds them; a repeat adds
    values = torch.randn(5, dtype=torch.float64)
    dense = torch.zeros(d_out * d_in, dtype=torch.float64).index_add_(0, flat, values).view(d_out, d_in)
    torch.testing.assert_close(basis.unrotate_entries(flat, values, torch.Size((d_out, d_in))),
                               basis.left @ dense @ basis.right.t())


def test_a_basis_keeps_its_transposes_contiguous_for_the_sparse_products():
    """The update's sparse products read Lᵀ and Rᵀ; a row-major basis would be copied on every step."""
    left, right = orthogonal(9, 1), orthogonal(6, 2).t().contiguous().t()  # row-major, column-major
    basis = Basis(left.contiguous(), right)
    assert basis.left.t().is_contiguous() and basis.right.t().is_contiguous()
    assert torch.equal(basis.left, left) and torch.equal(basis.right, right)
    assert basis.right.data_ptr() == right.data_ptr()  # already column-major: no copy


def test_ties_keep_exactly_k_entries_deterministically():
    layer = TopKGradLinear(nn.Linear(4, 3, bias=False), None, k=5)
    supports = []
    for _ in range(2):
        layer.weight.grad = None
        layer(torch.ones(2, 4)).sum().backward()  # every gradient entry is equal
        supports.append(layer.weight.grad._indices())
    assert supports[0].shape[1] == 5 and torch.equal(*supports)


# -- training against full fine-tuning ------------------------------------------------------------

EXACT = [(SparseGrad, functools.partial(SparseGradConfig, rotation_dtype="float32")), (MeProp, MePropConfig)]


@pytest.mark.parametrize("method_class,config_class", EXACT)
@pytest.mark.parametrize("accumulation", [1, 2])
def test_k_all_with_sgd_equals_full_fine_tuning(method_class, config_class, accumulation):
    """SGD is rotation-invariant: with every entry kept, W += L(-lr Lᵀ G R)Rᵀ = W - lr G (an orthogonal pair:
    rotation_dtype=float32, in the fp64 model's precision)."""
    method = method_class(config_class(density=1.0))  # every entry (a k above a weight's entries is refused)
    model = prepared(method)
    reference = tiny_bert64()
    full = FullFineTuning(FullConfig())
    reference = full.prepare(reference, method_context())
    for m, meth in ((model, method), (reference, full)):
        torch.manual_seed(1)  # the same dropout masks in both runs
        train_steps(m, meth, synthetic_batches(batch_size=4), steps=4, lr=0.5, accumulation=accumulation, max_grad_norm=0.3)
    trained = dict(model.named_parameters())
    for name, param in reference.named_parameters():
        torch.testing.assert_close(trained[name], param, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("method_class,config_class", [*EXACT, (SparseGrad, SparseGradConfig)])
def test_exactly_k_entries_of_the_rotated_weight_change_per_step(method_class, config_class):
    """W̃ = L⁻¹ W R⁻ᵀ: the rotated weight of W = L W̃ Rᵀ, also for a bf16 pair (orthogonal only to bf16's
    precision); the fp64 model's update runs in fp64 whatever the pair's dtype."""
    method = method_class(config_class(k=11))
    model = prepared(method)
    # Weight decay applies to the dense groups only: decaying W̃ would move every entry.
    optimizer = method.build_optimizer(method.param_groups(model, 0.1), OptimConfig(weight_decay=0.1), 1e-3)
    method.attach(optimizer)
    batches = synthetic_batches(batch_size=4)
    for _ in range(3):
        before = [rotated(layer) for layer in method.layers]
        model(**next(batches)).loss.backward()
        method.clip_grad_norm(1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for layer, old in zip(method.layers, before):
            assert int(((rotated(layer) - old).abs() > 1e-12).sum()) == 11


def test_state_and_gradient_bytes_follow_the_semantics():
    """Lazy Adam: two dense moments per MLP weight (its step is a host int); AdamW: two moments
    and a step tensor per other weight. Gradients: k values + 2 int64 indices per MLP layer."""
    model = tiny_model("tiny-bert")
    method = SparseGrad(SparseGradConfig(k=13))
    prepared(method, model)
    optimizer = train_steps(model, method, synthetic_batches(batch_size=4), steps=2, lr=1e-3, optimizer="adamw")
    sparse = {id(layer.weight) for layer in method.layers}
    dense = [p for p in method.optimizer_parameters() if id(p) not in sparse]
    expected = sum(2 * tensor_bytes(layer.weight) for layer in method.layers)
    expected += sum(2 * tensor_bytes(p) + 4 for p in dense)
    assert held_optimizer_state_bytes(optimizer, CPU) == (expected, 0)
    model(**next(synthetic_batches(batch_size=4))).loss.backward()
    for layer in method.layers:
        assert layer.weight.grad.is_sparse and tensor_bytes(layer.weight.grad) == 13 * (4 + 2 * 8)


# -- the optimizer ----------------------------------------------------------------------------

def test_lazy_adam_equals_torch_sparse_adam_even_on_repeated_entries():
    torch.manual_seed(0)
    mine = nn.Parameter(torch.randn(4, 5, dtype=torch.float64))
    theirs = nn.Parameter(mine.detach().clone())
    optimizer = SparseMlpOptimizer([{"params": [mine], "sparse": True}], OptimConfig(), 0.01, {mine: None})
    reference = torch.optim.SparseAdam([theirs], lr=0.01)
    for _ in range(4):
        index = torch.tensor([[0, 3, 1, 0], [2, 4, 1, 2]])  # (0, 2) twice: an accumulated, uncoalesced gradient
        grad = torch.sparse_coo_tensor(index, torch.randn(4, dtype=torch.float64), (4, 5), check_invariants=True)
        mine.grad, theirs.grad = grad.clone(), grad.coalesce()
        assert not mine.grad.is_coalesced()
        optimizer.step()
        reference.step()
        torch.testing.assert_close(mine, theirs)
    torch.testing.assert_close(optimizer.state[mine]["exp_avg"], reference.state[theirs]["exp_avg"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("rotated", [False, True])
def test_one_backwards_gradient_skips_the_sort_that_sums_repeats(dtype, rotated):
    """A gradient of k entries is one backward's top-k (sorted, unique): the same clip, step and state
    without the sort as with it; two micro-batches' (more than k entries) take the sort."""
    torch.manual_seed(0)
    layer = TopKGradLinear(nn.Linear(5, 4, bias=False).to(dtype), None, k=6)
    layer(torch.randn(3, 5, dtype=dtype)).pow(2).sum().backward()
    one = layer.weight.grad.clone()
    layer(torch.randn(3, 5, dtype=dtype)).pow(2).sum().backward()  # accumulated: adds to the same tensor
    two = layer.weight.grad
    assert one._nnz() == 6 and two._nnz() > 6
    assert unique_entries(one, 6)[2] is None and unique_entries(two, 6)[2] is not None
    basis = Basis(*(torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))[0] for n in (4, 5))) if rotated else None
    start = torch.randn(4, 5, dtype=torch.float64).to(dtype)
    for grad in (one, two):
        runs = []
        for k in (6, None):  # None: the sort always
            param = nn.Parameter(start.clone())
            optimizer = SparseMlpOptimizer([{"params": [param], "sparse": True}], OptimConfig(), 0.01,
                                           {param: basis}, {param: k} if k else None)
            for _ in range(3):
                param.grad = grad.clone()
                torch.manual_seed(1)  # bf16's stochastic rounding draws alike on both
                norm = clip_grad_norm([param], 0.5, {param: k} if k else None)
                optimizer.step()
            runs.append((norm, param.detach(), optimizer.state[param]["exp_avg_sq"]))
        for a, b in zip(*runs):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unique_entries_and_clipping_sum_repeated_entries():
    grad = torch.sparse_coo_tensor(torch.tensor([[1, 0, 1], [2, 0, 2]]), torch.tensor([3.0, 1.0, 4.0]), (2, 3),
                                   check_invariants=True)
    flat, values, first = unique_entries(grad)
    assert flat.tolist() == [0, 5, 5] and values.tolist() == [1.0, 7.0, 7.0] and first.tolist() == [True, True, False]
    param = nn.Parameter(torch.zeros(2, 3))
    param.grad = grad
    norm = clip_grad_norm([param], max_norm=1.0)
    torch.testing.assert_close(norm, torch.tensor(50.0).sqrt())
    torch.testing.assert_close(torch.linalg.vector_norm(param.grad.coalesce()._values()), torch.tensor(1.0))


def test_bf16_rotated_updates_are_rounded_stochastically_without_bias():
    weight = torch.ones(200_000, dtype=torch.bfloat16)
    add_rounded(weight, torch.full((200_000,), 1e-3))  # a quarter of bf16's half-ulp at 1.0
    assert set(weight.unique().tolist()) == {1.0, 1.0078125}
    assert weight.float().mean().item() == pytest.approx(1.001, abs=5e-5)


def test_optimizer_rejects_unsupported_settings():
    param = nn.Parameter(torch.zeros(2, 2))
    for cfg, key in ((OptimConfig(name="adafactor"), "optim.name"), (OptimConfig(name="sgd", momentum=0.9),
                                                                       "optim.momentum")):
        with pytest.raises(UserError, match=key):
            SparseMlpOptimizer([{"params": [param], "sparse": True}], cfg, 0.1, {param: None})


# -- protocol, config, persistence, export ------------------------------------------------------

def test_protocol_options_choose_what_trains():
    peft = MeProp(MePropConfig(train_non_mlp=False))
    model = prepared(peft)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    mlp = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, TopKGradLinear)}
    assert len(mlp) == 4 and trainable == mlp | {"classifier.weight", "classifier.bias"}
    model = prepared(MeProp(MePropConfig(freeze_norms=True)))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if "LayerNorm" in n}


@pytest.mark.parametrize("override,key", [("method.k=0", "method.k"), ("method.density=0", "method.density"),
                                          ("method.calibration_steps=0", "method.calibration_steps"),
                                          ("method.rotation_dtype=float16", "method.rotation_dtype")])
def test_bad_values_name_their_key(override, key):
    with pytest.raises(UserError, match=key):
        check(compose("method=sparsegrad", override))


def test_presets_compose_for_every_model_and_task():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ftbench.config.tree import config_dir
    from helpers import CPU_DEFAULTS

    presets = sorted(p.stem for p in (config_dir() / "experiment").glob("sparsegrad-*.yaml"))
    assert len(presets) == 24
    compose()  # registers the schemas
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        configs = [hydra_compose("config", overrides=[*CPU_DEFAULTS, f"experiment={name}"]) for name in presets]
    for cfg in configs:
        check(cfg)
        assert cfg.method.name == "sparsegrad" and cfg.train.select == "best" and cfg.eval.every_steps
        assert cfg.method.rotation_dtype == "float32"  # the reference's precision, not ftbench's bf16 default
        assert cfg.optim.scheduler == "constant" and cfg.task.max_length == 128 and cfg.train.epochs == 20


def test_rotations_survive_a_method_state_round_trip():
    first, second = SparseGrad(SparseGradConfig()), SparseGrad(SparseGradConfig())
    prepared(first)
    prepared(second, calibration_steps=1)
    second.load_state_dict(first.state_dict())
    for a, b in zip(first.layers, second.layers):
        assert torch.equal(a.basis.left, b.basis.left) and torch.equal(a.basis.right, b.basis.right)


def test_export_reproduces_the_trained_function(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    model = tiny_model("tiny-bert")
    method = build_method(compose("method=sparsegrad", "method.calibration_steps=2").method)
    prepared(method, model)
    train_steps(model, method, synthetic_batches(batch_size=4), steps=3, lr=1e-2, optimizer="adamw")
    paths = method.export(model, None, tmp_path)
    saved = load_file(f"{paths['merged']}/model.safetensors")
    assert not any(key.endswith((".left", ".right")) for key in saved)
    reloaded = AutoModelForSequenceClassification.from_pretrained(paths["merged"], attn_implementation="eager").eval()
    batch = next(synthetic_batches(batch_size=4, seed=5))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)

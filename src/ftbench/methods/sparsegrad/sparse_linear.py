"""The layer SparseGrad and MeProp share: an exact `nn.Linear` whose weight gradient
is the top-k, by magnitude, of the gradient written in a basis, returned as a
sparse COO tensor.

A basis is a pair of orthogonal matrices (L, R) and the rotated weight is
W̃ = Lᵀ W R; SparseGrad's calibrated pair is L = u2, R = u3ᵀ (W̃ = u2ᵀ W u3ᵀ),
MeProp has none (W̃ = W). The module keeps W itself, so the forward is `F.linear`
unchanged and bit-exact; W̃ is never stored. Its gradient Lᵀ G R is formed per
layer during backward (`linear_grad.linear`), cut to k entries and freed, so no dense weight
gradient outlives the layer's backward. The optimizer (sparse_adam.py) updates W̃ at those
entries and adds the update to W as L ΔW̃ Rᵀ: this is training W̃ with W = L W̃ Rᵀ
materialised after every step, without a second copy of the weight.
"""

from __future__ import annotations

import torch
from torch import nn

from ftbench.methods import linear_grad
from ftbench.methods.top_k import top_k
from ftbench.models.architecture import MLP_ROLES, architecture, replace_module


def mlp_layers(model: nn.Module, method: str) -> dict[str, list[tuple[str, nn.Linear]]]:
    """The MLP linears of every block (architecture.py), grouped by kind: one kind per projection role
    and stack, named by its path inside the block (e.g. all `intermediate.dense`), in forward order.
    Raises UserError('method') when a block has no up/down projection that is an `nn.Linear`."""
    arch = architecture(model)
    arch.require_linear(model, ("up", "down"), method)
    found: dict[str, list[tuple[str, nn.Linear]]] = {}
    for block in arch.blocks:
        for role in (r for r in MLP_ROLES if r in block.roles):
            found.setdefault(arch.kind_name(block, role), []).append(
                (block.path(role), model.get_submodule(block.path(role))))
    return found


class Basis(nn.Module):
    """One orthogonal pair shared by every layer of a kind: W̃ = leftᵀ W right.

    The pair's dtype is the rotated gradient's precision (method.rotation_dtype): in bf16 its products run
    at bf16's rate, with fp32 accumulation, on bf16 copies of g and x. A bf16 pair is orthogonal only to
    bf16's precision (LᵀL = I within about 2⁻⁸); W = L W̃ Rᵀ stays an exact reparametrisation all the same,
    and Lᵀ G R is then exactly ∂L/∂W̃ for the pair as stored. The update (`unrotate_entries`) runs in fp32
    or better whatever the pair's dtype: torch's CPU sparse kernels take no bf16.

    Buffers are non-persistent: they move with the model but never enter a checkpoint. Both are kept
    column-major (their transposes contiguous): the update's sparse products read Lᵀ and Rᵀ
    (`unrotate_entries`), and torch's sparse-times-dense kernel copies a dense operand that is not
    contiguous (a 1376 × 1376 basis: 7.6 MB copied per layer per step); the dense products take either
    layout without a copy."""

    def __init__(self, left: torch.Tensor, right: torch.Tensor):
        super().__init__()
        self.register_buffer("left", column_major(left), persistent=False)
        self.register_buffer("right", column_major(right), persistent=False)

    def rotate(self, dense: torch.Tensor) -> torch.Tensor:
        """Lᵀ G R, in the basis's precision."""
        return self.left.t() @ dense.to(self.left.dtype) @ self.right

    def rotated_gradient(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Lᵀ gᵀ x R (d_out × d_in, the basis's dtype) for output gradients g (tokens × d_out) and
        inputs x (tokens × d_in). Each rotation goes where it costs least: L on the tokens (g L:
        tokens·d_out² multiply-adds) when there are fewer tokens than d_in, else on the weight gradient
        (Lᵀ G: d_out²·d_in); R likewise (x R against G R) when there are fewer tokens than d_out. A
        token-side product (tokens × d) is then smaller than the weight gradient it replaces.
        When R goes on the weight gradient the result is column-major (its transpose contiguous): the
        product is formed as Rᵀ Gᵀ, with the basis on the left, which torch's CPU GEMM runs 15–20 %
        faster than G R at the bench's shape (512 × 1376 by 1376², 2 cores: 30 against 36 ms)."""
        tokens, d_out, d_in = g.shape[0], g.shape[1], x.shape[1]
        left_on_tokens, right_on_tokens = tokens < d_in, tokens < d_out
        if not (left_on_tokens or right_on_tokens):
            return self.rotate(g.t() @ x)
        dtype = self.left.dtype
        a = g.to(dtype) @ self.left if left_on_tokens else g.to(dtype)
        if right_on_tokens:
            out = a.t() @ (x.to(dtype) @ self.right)
            return out if left_on_tokens else self.left.t() @ out
        return (self.right.t() @ (x.to(dtype).t() @ a)).t()  # (Rᵀ xᵀ (g L))ᵀ, L on the tokens here

    def unrotate_entries(self, flat: torch.Tensor, values: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """L S Rᵀ (dense, `shape`) for the sparse S holding `values` at the sorted flat positions `flat`
        (repeats add). The sparse product comes first, on the side that leaves the smaller dense one:
        (L S) Rᵀ costs k·d_out + d_out·d_in² multiply-adds, L (S Rᵀ) k·d_in + d_out²·d_in (L X Rᵀ of a
        dense X: d_out·d_in·(d_out + d_in)). The sparse operand is CSR (faster than COO in torch's CPU
        kernels), built without a host sync. Runs in the wider of fp32, the pair's and the values' dtypes: a
        bf16 pair is widened for the call (a transient of its size; the strides, column-major, are kept)."""
        d_out, d_in = shape
        rows, cols = flat // d_in, flat % d_in
        dtype = torch.promote_types(torch.promote_types(self.left.dtype, values.dtype), torch.float32)
        left, right, values = self.left.to(dtype), self.right.to(dtype), values.to(dtype)
        if d_out >= d_in:
            order = cols.argsort(stable=True)  # Sᵀ row by row
            s_t = _csr(cols.index_select(0, order), rows.index_select(0, order), values.index_select(0, order),
                       (d_in, d_out))
            return (s_t @ left.t()).t() @ right.t()  # (Sᵀ Lᵀ)ᵀ Rᵀ
        return left @ (_csr(rows, cols, values, (d_out, d_in)) @ right.t())


def column_major(matrix: torch.Tensor) -> torch.Tensor:
    """The same matrix with its transpose contiguous (one copy unless it already is)."""
    return matrix.t().contiguous().t()


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix of entries sorted by row (repeated positions add)."""
    crow = torch.searchsorted(rows, torch.arange(shape[0] + 1, device=rows.device))
    return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


def top_k_sparse(dense: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """The k largest-magnitude entries of a matrix (row- or column-major) as a coalesced COO tensor.
    Ties go to `topk`'s choice: always exactly k entries (top_k.py: the same set as a full `torch.topk`).
    A column-major matrix is searched in its own memory order, not copied; its k positions are then
    sorted into row-major order, as a coalesced tensor needs."""
    column_major = not dense.is_contiguous() and dense.t().is_contiguous()
    stored = dense.t() if column_major else dense
    flat = stored.reshape(-1)
    index = top_k(flat.abs(), k)  # ascending in memory order
    values = flat.index_select(0, index).to(dtype)
    if column_major:
        index, order = (index % dense.shape[0] * dense.shape[1] + index // dense.shape[0]).sort()
        values = values.index_select(0, order)
    cols = dense.shape[1]
    indices = torch.stack([index // cols, index % cols])
    return torch.sparse_coo_tensor(indices, values, dense.shape, is_coalesced=True, check_invariants=False)


class TopKGradLinear(nn.Linear):
    """An `nn.Linear` whose weight gradient is the top-k of Lᵀ G R (sparse, in the basis).

    It reuses the wrapped layer's weight and bias (no copy), so checkpoints keep the
    base model's keys; the shared basis is a non-persistent buffer.
    The bias gets torch's own gradient, Σ g in the original basis (the reference rotated it by mistake)."""

    def __init__(self, linear: nn.Linear, basis: Basis | None, k: int):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.basis = basis
        self.k = min(k, self.weight.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_grad.linear(x, self.weight, self.bias, (self.weight,), self.weight_grad)

    def weight_grad(self, g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor]:
        """The top-k of ∂L/∂W in the basis (sparse COO, the weight's dtype) from output gradients g
        (tokens × d_out) and inputs x (tokens × d_in); the dense gradient is transient."""
        x = x.to(g.dtype)
        rotated = g.t() @ x if self.basis is None else self.basis.rotated_gradient(g, x)
        return (top_k_sparse(rotated, self.k, self.weight.dtype),)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}, rotated={self.basis is not None}"


def wrap(model: nn.Module, name: str, basis: Basis | None, k: int) -> TopKGradLinear:
    return replace_module(model, name, lambda linear: TopKGradLinear(linear, basis, k))

"""One mechanism for SIFT and S2FT: train a selected part of a frozen dense weight.

The dense weight stays in place (e.g. bf16) and the forward uses it unchanged.
The selected part is mirrored by a plain trainable tensor, the *master* (fp32 by
default). The layer returns the gradient of the selected part only (`linear_grad.linear`, whose
product checkpointing need not recompute) and never keeps a dense weight gradient past the layer's
backward:

- ``elements`` (SIFT): either only the selected entries of the weight gradient
  are formed (``sampled``: sampled_grad.py, chunked over tokens), or the weight
  gradient is formed a few output rows at a time (at most `GRAD_CHUNK_BYTES`),
  gathered at the selected flat indices, and dropped at once (``dense``);
- ``rows`` (S2FT: V, Up): output rows S; a thin GEMM ``g[..., S]ᵀ x``;
- ``cols`` (S2FT: O, Down): input columns S; only a compact copy of
  ``x[..., S]`` is saved, and the gradient is one flattened GEMM ``gᵀ x_S``.

After every optimizer step `write_back` copies the masters into the dense
weights, so the next forward (and any eval or export) sees the update at once.
Because masters are ordinary `nn.Parameter`s, accumulation, clipping and
checkpointing need no special cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ftbench.methods import linear_grad
from ftbench.methods.base import Method
from ftbench.methods.linear_grad import WeightGrad
from ftbench.methods.sampled_grad import sampled_entries
from ftbench.models.architecture import replace_module

KINDS = ("elements", "rows", "cols")


def part_gradient(kind: str, index: torch.Tensor, block_counts: torch.Tensor | None,
                  row_chunks: tuple[tuple[int, int, int, int], ...], master_dtype: torch.dtype,
                  sampled: bool = False) -> WeightGrad:
    """The gradient of a layer's selected part (the master's shape) from output gradients g
    (tokens, d_out) and the kept input (tokens, d_in; for `cols`, tokens × |S|): linear_grad.py's rule."""

    def grad(g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor]:
        x = x.to(g.dtype)
        if kind == "elements" and sampled:
            part = sampled_entries(g, x, unpack_elements(index, block_counts))
        elif kind == "elements":
            flat = unpack_elements(index, block_counts)
            part = torch.empty(flat.numel(), dtype=master_dtype, device=flat.device)
            for row_start, row_end, first, last in row_chunks:
                dense = g[:, row_start:row_end].t() @ x  # rows of the layer's weight gradient: transient
                offsets = flat[first:last] - row_start * x.shape[1]
                part[first:last] = dense.view(-1).index_select(0, offsets)
                del dense  # freed before the next chunk's GEMM allocates its own
        elif kind == "rows":
            part = g.index_select(1, index).t() @ x  # (|S|, in)
        else:
            part = g.t() @ x  # (out, |S|): x already holds only the selected columns
        return (part.to(master_dtype),)
    return grad


class PartialLinear(nn.Linear):
    """An `nn.Linear` whose selected part trains through a master tensor.

    It reuses the wrapped layer's own weight and bias parameters (no copy), so
    state-dict keys stay those of the base model, plus `<name>.master`.
    """

    def __init__(self, linear: nn.Linear, kind: str, index: torch.Tensor, master_dtype: torch.dtype | None):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.weight.requires_grad_(False)
        self.kind = kind
        self.select(index)
        self.master = nn.Parameter(self.selected_values().to(master_dtype or self.weight.dtype))

    def select(self, index: torch.Tensor) -> None:
        """Adopt a selection: element positions are packed (2 bytes each), rows and columns kept as int64."""
        index = index.to(self.weight.device, torch.long).sort().values
        self.row_chunks = row_chunks(index, self.weight) if self.kind == "elements" else ()
        if self.kind == "elements":
            index, counts = pack_elements(index, self.weight.numel())
        else:
            counts = None
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("block_counts", counts, persistent=False)

    def selected_index(self) -> torch.Tensor:
        """The selection, sorted: flat element positions (int32 below 2^31 entries), rows or columns."""
        return unpack_elements(self.index, self.block_counts) if self.kind == "elements" else self.index

    def selected_values(self) -> torch.Tensor:
        """The selected part of the dense weight, as the master's shape."""
        w = self.weight.detach()
        if self.kind == "elements":
            return w.reshape(-1).index_select(0, self.selected_index()).clone()
        return w.index_select(0 if self.kind == "rows" else 1, self.index).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grad = part_gradient(self.kind, self.index, self.block_counts, self.row_chunks, self.master.dtype)
        # Input columns need only x[..., S]: index_select makes a compact copy, never a view of x.
        keep = (lambda x: x.index_select(-1, self.index)) if self.kind == "cols" else None
        return linear_grad.linear(x, self.weight, self.bias, (self.master,), grad, keep)

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the master into the dense weight (rounded to the weight's dtype)."""
        write_selected(self.weight, self.kind, self.selected_index(), self.master.detach())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kind={self.kind}, selected={self.master.numel()}"


# Selected element positions are held as int16 offsets within blocks of 2^15 flat positions,
# plus one count per block: 2 bytes per entry where int32 takes 4 (0.12 GiB less at SIFT's
# rate 0.01 on LLaMA2-7B). The flat positions are rebuilt when used (backward, write-back)
# and freed at once: a few MiB per layer, one layer at a time.
BLOCK = 2**15


def pack_elements(flat: torch.Tensor, numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted flat positions -> (int16 offset of each within its block, int64 entries per block)."""
    counts = torch.bincount(flat // BLOCK, minlength=-(-numel // BLOCK))
    return (flat % BLOCK).to(torch.int16), counts


def unpack_elements(offsets: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The sorted flat positions back, int32 when every position fits (no host sync: sizes are known)."""
    dtype = torch.int32 if counts.numel() * BLOCK < 2**31 else torch.long
    starts = torch.arange(counts.numel(), device=counts.device, dtype=dtype) * BLOCK
    return starts.repeat_interleave(counts, output_size=offsets.numel()) + offsets


# SIFT forms a layer's weight gradient at most this many bytes at a time, so its transient
# stays a slice of the largest weight (LLaMA2-7B's MLP: 32 of 86 MiB) while the GEMMs stay
# wide enough to run at full speed.
GRAD_CHUNK_BYTES = 32 * 2**20


def row_chunks(flat: torch.Tensor, weight: torch.Tensor) -> tuple[tuple[int, int, int, int], ...]:
    """(first row, end row, first entry, end entry) per chunk of output rows, for sorted flat
    positions. Computed once per selection, so backward needs no host sync to slice."""
    rows, cols = weight.shape
    step = max(1, GRAD_CHUNK_BYTES // (cols * weight.element_size()))
    starts = list(range(0, rows, step))
    ends = starts[1:] + [rows]
    bounds = torch.searchsorted(flat, torch.tensor(starts + [rows], device=flat.device) * cols).tolist()
    return tuple(zip(starts, ends, bounds[:-1], bounds[1:]))


def write_selected(weight: torch.Tensor, kind: str, index: torch.Tensor, values: torch.Tensor) -> None:
    """Write `values` (the master's shape) into the selected part of `weight`, in place."""
    values = values.to(weight.device, weight.dtype)
    index = index.to(weight.device)
    if kind == "elements":
        weight.view(-1).index_put_((index,), values.reshape(-1))  # index_put_ takes int32 indices
    else:
        weight.index_copy_(0 if kind == "rows" else 1, index, values)


@dataclass(frozen=True)
class Selection:
    kind: str  # elements | rows | cols
    index: torch.Tensor  # flat element indices, row indices or column indices


def wrap(model: nn.Module, selections: dict[str, Selection], master_dtype: torch.dtype | None) -> list[PartialLinear]:
    """Replace each named `nn.Linear` by a `PartialLinear` over its selection."""
    wrapped = []
    for name, selection in selections.items():
        wrapped.append(replace_module(model, name, lambda linear, s=selection: PartialLinear(
            linear, s.kind, s.index, master_dtype)))
    return wrapped


def partial_layers(model: nn.Module) -> dict[str, PartialLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, PartialLinear)}


@torch.no_grad()
def write_back(model: nn.Module) -> None:
    for layer in partial_layers(model).values():
        layer.write_back()


def delta_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The compact delta: per layer its indices and the selected values of the dense weight."""
    out = {}
    for name, layer in partial_layers(model).items():
        out[f"{name}.{layer.kind}.index"] = layer.selected_index().cpu()
        out[f"{name}.{layer.kind}.values"] = layer.selected_values().cpu().contiguous()
    return out


@torch.no_grad()
def apply_delta(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Write a compact delta into a plain (base) model: reproduces the merged weights exactly."""
    for key, index in tensors.items():
        if not key.endswith(".index"):
            continue
        prefix = key[: -len(".index")]
        name, kind = prefix.rsplit(".", 1)
        write_selected(model.get_submodule(name).weight, kind, index, tensors[f"{prefix}.values"])


def save_merged(model: nn.Module, tokenizer, path: Path, master_suffixes: tuple[str, ...] = (".master",)) -> None:
    """A dense checkpoint that loads with plain `from_pretrained` (masters left out)."""
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(master_suffixes)}
    model.save_pretrained(path, state_dict=state)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


class PartialMethod(Method):
    """Shared behaviour of methods built on `PartialLinear` (SIFT, S2FT): masters are
    written back after every optimizer step, and exports carry a compact delta."""

    layers: list[PartialLinear]
    needs_linear = True

    def after_step(self, step: int) -> None:
        for layer in self.layers:
            layer.write_back()

    def master_parameters(self) -> list[torch.Tensor]:
        return [*super().master_parameters(), *(layer.master for layer in self.layers)]

    def restore(self, model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
        super().restore(model, snapshot)
        self.after_step(-1)


def partial_names(model: nn.Module, modules) -> set[str]:
    """The parameter names training moves in the `PartialLinear` modules named `modules`: the masters
    (`master`, `bias_master`) and the dense weight they are written back into."""
    every = {n for n, _ in model.named_parameters()}
    return {f"{m}.{p}" for m in modules for p in ("weight", "master", "bias_master")} & every

"""The S2FT adapter: what training changed, in the base model's own coordinates.

One entry per trained parameter: the dimension (0: output rows, 1: input
columns), the sorted indices along it, and two value blocks of that slice's
shape, the base values and the tuned values. The delta against the base is
`tuned - base`. Both are kept, rather than the delta alone, so every switch
is exact: `fuse` writes the tuned values (bit for bit what training produced)
and `unfuse` writes the base values back (bit for bit the base model), where
adding and subtracting a floating-point delta would round.

A switch is one `index_copy_` of k rows or columns per parameter, whatever the
weight's size (LoRA's merge forms a d_out × d_in product B·A); see
`python -m ftbench.bench.switch`.

Two adapters fuse into one (the paper's adapter fusion, §6.2): where only one
adapter trained a row or column its tuned values are kept exactly; where both
trained the same one their deltas combine, `sum` (base + Δa + Δb, task
arithmetic) or `mean` (base + (Δa + Δb)/2), computed in float64 and rounded
once to the weight's dtype. Both must start from the same base values there.

Fuse into a plain model (a loaded base), not into one that is training: the
masters of a training model would overwrite the fused values at the next step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

KIND_DIM = {"rows": 0, "cols": 1}
DIM_KIND = {0: "rows", 1: "cols"}
OVERLAPS = ("sum", "mean")
FORMAT = "ftbench-s2ft-adapter/1"


@dataclass(frozen=True)
class Slice:
    dim: int  # 0: output rows, 1: input columns
    index: torch.Tensor  # sorted positions along `dim` (int64)
    base: torch.Tensor  # the base values there
    tuned: torch.Tensor  # the trained values there

    def delta(self) -> torch.Tensor:
        return self.tuned.double() - self.base.double()


Adapter = dict[str, Slice]  # parameter name -> its trained slice


def _take(param: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    taken = param.detach().index_select(dim, index.to(param.device))
    return taken if taken.is_meta else taken.cpu()  # meta: the planner counts a selection's bytes (plan_held.py)


def capture(model: nn.Module, where: dict[str, tuple[int, torch.Tensor]]) -> Adapter:
    """The base values at the given slices: an adapter whose tuned values are still the base (a CPU copy)."""
    adapter = {}
    for name, (dim, index) in where.items():
        values = _take(model.get_parameter(name), dim, index)
        adapter[name] = Slice(dim, index.cpu(), values, values)
    return adapter


def extract(model: nn.Module, base: Adapter) -> Adapter:
    """The adapter of a trained model: its current values at the slices captured before training."""
    return {name: replace(s, tuned=_take(model.get_parameter(name), s.dim, s.index)) for name, s in base.items()}


def to(adapter: Adapter, device: torch.device | str) -> Adapter:
    """The adapter on `device` (switching then moves no data between devices)."""
    return {name: Slice(s.dim, s.index.to(device), s.base.to(device), s.tuned.to(device))
            for name, s in adapter.items()}


@torch.no_grad()
def fuse(model: nn.Module, adapter: Adapter) -> None:
    """Write the tuned values into the model."""
    for name, s in adapter.items():
        param = model.get_parameter(name)
        param.index_copy_(s.dim, s.index.to(param.device), s.tuned.to(param.device, param.dtype))


@torch.no_grad()
def unfuse(model: nn.Module, adapter: Adapter) -> None:
    """Write the base values back: the model is the base model again, bit for bit."""
    for name, s in adapter.items():
        param = model.get_parameter(name)
        param.index_copy_(s.dim, s.index.to(param.device), s.base.to(param.device, param.dtype))


def combine(first: Adapter, second: Adapter, overlap: str = "sum") -> Adapter:
    """One adapter holding both: exact where they are disjoint, deltas combined where they overlap."""
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap must be one of {OVERLAPS}, got {overlap!r}")
    fused = dict(first)
    for name, s in second.items():
        fused[name] = _combine(name, first[name], s, overlap) if name in first else s
    return fused


def _combine(name: str, a: Slice, b: Slice, overlap: str) -> Slice:
    if a.dim != b.dim:
        raise ValueError(f"{name}: one adapter trains rows, the other columns; they cannot be fused")
    dim = a.dim
    index = torch.cat([a.index, b.index]).unique()  # sorted
    at_a, at_b = torch.searchsorted(index, a.index), torch.searchsorted(index, b.index)
    shape = list(a.base.shape)
    shape[dim] = index.numel()
    base, tuned = a.base.new_empty(shape), a.tuned.new_empty(shape)
    for target, source_a, source_b in ((base, a.base, b.base), (tuned, a.tuned, b.tuned)):
        target.index_copy_(dim, at_a, source_a)
        target.index_copy_(dim, at_b, source_b)
    shared_in_a, shared_in_b = torch.isin(a.index, b.index), torch.isin(b.index, a.index)
    if shared_in_a.any():
        pick_a, pick_b = shared_in_a.nonzero().squeeze(1), shared_in_b.nonzero().squeeze(1)
        base_shared = a.base.index_select(dim, pick_a)
        if not torch.equal(base_shared, b.base.index_select(dim, pick_b)):
            raise ValueError(f"{name}: the adapters were trained from different base values; fuse needs one base")
        delta = a.delta().index_select(dim, pick_a) + b.delta().index_select(dim, pick_b)
        if overlap == "mean":
            delta = delta / 2
        tuned.index_copy_(dim, at_a[pick_a], (base_shared.double() + delta).to(tuned.dtype))
    return Slice(dim, index, base, tuned)


def save(adapter: Adapter, path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors: `<param>.<rows|cols>.{index,base,tuned}` per trained parameter."""
    from safetensors.torch import save_file

    tensors = {}
    for name, s in adapter.items():
        prefix = f"{name}.{DIM_KIND[s.dim]}"
        tensors.update({f"{prefix}.index": s.index.contiguous(), f"{prefix}.base": s.base.contiguous(),
                        f"{prefix}.tuned": s.tuned.contiguous()})
    save_file(tensors, str(path), metadata={"format": FORMAT, **(metadata or {})})


def load(path: Path) -> Adapter:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        if (handle.metadata() or {}).get("format") != FORMAT:
            raise ValueError(f"{path} is not an S2FT adapter ({FORMAT})")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    adapter = {}
    for key in tensors:
        if key.endswith(".index"):
            name, kind, _ = key.rsplit(".", 2)
            prefix = f"{name}.{kind}"
            adapter[name] = Slice(KIND_DIM[kind], tensors[key], tensors[f"{prefix}.base"], tensors[f"{prefix}.tuned"])
    return adapter


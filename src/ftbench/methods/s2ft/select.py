"""S2FT selection: which attention heads and FFN channels train in every block.

The trained slices, in PyTorch's convention W ∈ R^{out×in}, y = x Wᵀ:

    V     output rows of the selected heads        (kind "rows")
    O     input columns of the selected heads      (kind "cols")
    Up    output rows of the selected channels     (kind "rows")
    Down  input columns of the selected channels   (kind "cols")

Q, K and Gate never train. The slices are given as index tensors in the
model's own coordinates: no weight is ever permuted, so checkpoints stay
element-wise comparable with the base model. The projections of each block
come from architecture.py; where one is part of a fused weight (Phi-3's
qkv_proj, gate_up_proj) its rows are an offset range of that weight.

Grouped-query attention (LLaMA-3, Mistral): V's rows belong to the K/V heads
(num_key_value_heads × head_dim), O's columns to the query heads
(num_attention_heads × head_dim). O therefore selects query heads, and o_ratio
counts against layers × num_attention_heads; V selects K/V heads, and v_ratio
counts against layers × num_key_value_heads. The two draws are independent, as
the reference draws V and O independently.

Allocation of T = ⌊units × layers × ratio⌋ units per projection:
  global     drawn jointly over all (layer, unit) pairs (the reference): the
             per-layer counts vary;
  per_layer  ⌊T/L⌋ per layer, and T mod L layers (drawn at random) get one
             more: the same total, spread evenly.

Strategies score every unit and keep the `smallest` or `largest` scores:
  random               a uniform draw (the order makes no difference);
  weight               ‖W_slice‖₂;
  activation           ‖A‖₂ of the unit's own activation on calibration data,
                       forward only: the input columns for O/Down, the output
                       rows for V/Up (all rows share one input);
  weight_x_activation  ‖W_slice‖₂ · ‖A‖₂;
  gradient             ‖∂L/∂W_slice‖₂ summed in square over calibration
                       micro-batches; each layer's weight gradient is reduced
                       and freed as soon as it is formed (as in GaLore).

Random draws use a torch.Generator seeded from the run seed and calibration
scores are summed over ranks, so every rank selects the same slices.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ftbench.errors import UserError
from ftbench.methods.s2ft.config import S2FT_PROJECTIONS as PROJECTIONS
from ftbench.models.architecture import architecture

KIND = {"v": "rows", "o": "cols", "u": "rows", "d": "cols"}
UNIT_NAMES = {"v": "v_heads", "o": "o_heads", "u": "u_channels", "d": "d_channels"}

# The role (architecture.py) of each projection.
ROLES = {"v": "v", "o": "o", "u": "up", "d": "down"}


@dataclass(frozen=True)
class Projection:
    """One trainable projection of one block, and how its units map to weight rows or columns."""

    name: str  # module name in the model
    kind: str  # rows | cols
    units: int  # heads or channels
    unit_size: int  # head_dim, or 1 for an FFN channel
    offset: int = 0  # first row of the projection in a fused module (Phi-3's qkv_proj, gate_up_proj)

    def index(self, units: torch.Tensor) -> torch.Tensor:
        """The weight rows (or columns) of the given units, in the model's coordinates."""
        offsets = torch.arange(self.unit_size, device=units.device)
        return (units[:, None] * self.unit_size + offsets).reshape(-1) + self.offset

    def per_unit(self, feature_values: torch.Tensor) -> torch.Tensor:
        """Sum a per-row (or per-column) quantity of the module over each unit's rows (or columns)."""
        own = feature_values[self.offset:self.offset + self.units * self.unit_size]
        return own.reshape(self.units, self.unit_size).sum(1)


@dataclass(frozen=True)
class Block:
    """One transformer block: its module prefix and its four projections by letter (v, o, u, d)."""

    prefix: str
    projections: dict[str, Projection]

    def __getitem__(self, letter: str) -> Projection:
        return self.projections[letter]


def find_blocks(model: nn.Module) -> list[Block]:
    """The V/O/Up/Down projections of every block of every stack (architecture.py), in forward order.
    Raises UserError('method') when a block lacks one of them or holds it outside an `nn.Linear`."""
    arch = architecture(model)
    arch.require_linear(model, tuple(ROLES.values()), "s2ft")
    blocks = []
    for block in arch.blocks:
        heads, kv_heads, head_dim = arch.attention_heads(model, block)
        rows = {p: arch.rows(model, block, ROLES[p]) for p in ("v", "u")}
        cols = {p: block.path(ROLES[p]) for p in ("o", "d")}
        channels = rows["u"][2]
        units = {"v": kv_heads, "o": heads, "u": channels, "d": channels}
        widths = {"v": rows["v"][2], "o": model.get_submodule(cols["o"]).in_features, "u": channels,
                  "d": model.get_submodule(cols["d"]).in_features}
        if widths["v"] != kv_heads * head_dim or widths["d"] != channels:
            raise UserError("method", f"s2ft cannot map the heads and channels of {block.name} "
                            f"(V {widths['v']} rows for {kv_heads} x {head_dim}, Down {widths['d']} columns for "
                            f"{channels} channels); use method=full, lora or hift")
        names = {**{p: r[0] for p, r in rows.items()}, **cols}
        offsets = {p: r[1] for p, r in rows.items()}
        blocks.append(Block(block.name, {p: Projection(names[p], KIND[p], units[p], widths[p] // units[p],
                                                       offsets.get(p, 0)) for p in PROJECTIONS}))
    if len({tuple(b[p].units for p in PROJECTIONS) for b in blocks}) > 1:
        raise UserError("method", "s2ft draws from one (layers x units) table, and this model's blocks differ in "
                        "heads or channels; use method=full, lora or hift")
    return blocks


def drawn_count(layers: int, units: int, ratio: float) -> int:
    """T = ⌊layers × units × ratio⌋: the (layer, unit) pairs a projection's allocation picks."""
    return math.floor(layers * units * ratio + 1e-9)  # the reference's int(); the epsilon absorbs 0.29*100


def require_units(blocks: list[Block], cfg) -> None:
    """Refuse ratios that pick no unit in these blocks (whatever the strategy scores: the count depends on the
    ratios and the blocks' units alone). Raises UserError('method.o_ratio')."""
    if not any(drawn_count(len(blocks), blocks[0][p].units, getattr(cfg, f"{p}_ratio")) for p in PROJECTIONS):
        raise UserError("method.o_ratio", "the ratios select no head or channel in this model; "
                        "raise v_ratio, o_ratio, u_ratio or d_ratio")


def select_units(model: nn.Module, blocks: list[Block], cfg, ctx) -> dict[str, list[torch.Tensor]]:
    """Per projection with a nonzero ratio: the selected unit ids of every block (sorted, on the CPU)."""
    ratios = {p: getattr(cfg, f"{p}_ratio") for p in PROJECTIONS}
    wanted = [p for p in PROJECTIONS if ratios[p] > 0]
    generator = torch.Generator().manual_seed(ctx.seed)
    if cfg.strategy == "random":
        scores = {p: torch.rand(len(blocks), blocks[0][p].units, generator=generator, dtype=torch.float64)
                  for p in wanted}
    else:
        scores = unit_scores(model, blocks, wanted, cfg.strategy, ctx, cfg.calibration_samples)
    return {p: allocate(scores[p], ratios[p], cfg.allocation, cfg.order, generator) for p in wanted}


def allocate(scores: torch.Tensor, ratio: float, allocation: str, order: str,
             generator: torch.Generator) -> list[torch.Tensor]:
    """Pick ⌊layers × units × ratio⌋ (layer, unit) pairs from a (layers, units) score table."""
    layers, units = scores.shape
    total = drawn_count(layers, units, ratio)
    largest = order == "largest"
    if allocation == "global":
        flat = scores.reshape(-1).topk(total, largest=largest).indices
        picked = [flat[flat // units == layer] % units for layer in range(layers)]
    else:
        counts = torch.full((layers,), total // layers)
        counts[torch.randperm(layers, generator=generator)[: total % layers]] += 1
        picked = [scores[layer].topk(int(count), largest=largest).indices for layer, count in enumerate(counts)]
    return [p.sort().values for p in picked]


def unit_scores(model: nn.Module, blocks: list[Block], wanted: list[str], strategy: str, ctx,
                samples: int) -> dict[str, torch.Tensor]:
    """(layers, units) scores of each wanted projection: norms, or a product of two norms."""
    energies = {}
    if strategy in ("weight", "weight_x_activation"):
        energies["weight"] = {(i, p): _feature_energy(model.get_submodule(block[p].name).weight, block[p].kind)
                              for i, block in enumerate(blocks) for p in wanted}
    if strategy in ("activation", "weight_x_activation"):
        energies["activation"] = _activation_energy(model, blocks, wanted, ctx, samples)
    if strategy == "gradient":
        energies["gradient"] = _gradient_energy(model, blocks, wanted, ctx, samples)
    scores = {}
    for p in wanted:
        table = torch.ones(len(blocks), blocks[0][p].units, dtype=torch.float64)
        for source, energy in energies.items():
            per_unit = torch.stack([block[p].per_unit(energy[(i, p)]) for i, block in enumerate(blocks)])
            if source != "weight":  # each rank calibrated on its own data
                per_unit = _sum_over_ranks(per_unit)
            table *= per_unit.double().cpu().sqrt()
        scores[p] = table
    return scores


def _feature_energy(t: torch.Tensor, kind: str) -> torch.Tensor:
    """Σ t² per row ("rows") or per column ("cols"), in fp32."""
    return t.detach().float().pow(2).sum(1 if kind == "rows" else 0)


def _calibration(ctx, samples: int) -> Iterator[dict[str, torch.Tensor]]:
    """Calibration micro-batches until `samples` sequences have been seen."""
    seen = 0
    for batch in ctx.calibration_batches(samples):  # each batch holds >= 1 sequence: `samples` bounds the count
        yield batch
        seen += batch["input_ids"].shape[0]
        if seen >= samples:
            return


def _activation_energy(model, blocks, wanted, ctx, samples) -> dict:
    """Σ over calibration tokens (padding excluded) of each unit's activation², forward only."""
    energy, handles, mask = {}, [], {}

    def hook(key, kind):
        def record(module, inputs, output):
            t = (output if kind == "rows" else inputs[0]).detach()
            t = t.reshape(-1, t.shape[-1]).float()
            if mask.get("tokens") is not None and mask["tokens"].numel() == t.shape[0]:
                t = t * mask["tokens"][:, None]
            energy[key] = energy.get(key, 0) + t.pow(2).sum(0)
        return record

    for i, block in enumerate(blocks):
        for p in wanted:
            module = model.get_submodule(block[p].name)
            handles.append(module.register_forward_hook(hook((i, p), block[p].kind)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in _calibration(ctx, samples):
                attention = batch.get("attention_mask")
                mask["tokens"] = None if attention is None else attention.reshape(-1).float()
                ctx.loss(model, batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return energy


def _gradient_energy(model, blocks, wanted, ctx, samples) -> dict:
    """Σ over calibration micro-batches of each slice's squared gradient norm; every weight gradient
    is reduced to per-row/column energies and freed right after it is accumulated."""
    energy, handles, weights = {}, [], []

    def hook(key, kind):
        def reduce(param):
            energy[key] = energy.get(key, 0) + _feature_energy(param.grad, kind)
            param.grad = None
        return reduce

    for i, block in enumerate(blocks):
        for p in wanted:
            weight = model.get_submodule(block[p].name).weight
            weight.requires_grad_(True)
            weights.append(weight)
            handles.append(weight.register_post_accumulate_grad_hook(hook((i, p), block[p].kind)))
    was_training = model.training
    # Hugging Face models recompute activations only in train mode: keep it when checkpointing bounds memory.
    model.train(ctx.gradient_checkpointing)
    try:
        for batch in _calibration(ctx, samples):
            ctx.loss(model, batch).backward()
    finally:
        for handle in handles:
            handle.remove()
        for weight in weights:
            weight.requires_grad_(False)
            weight.grad = None
        model.train(was_training)
    return energy


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Sum calibration energies over ranks, so every rank selects alike."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t

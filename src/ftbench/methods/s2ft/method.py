"""S2FT (Yang et al., NeurIPS 2024): structured sparse fine-tuning of whole attention
heads and FFN channels, "select sparsely, compute densely".

In every block a few heads and channels are selected (see s2ft_select.py for
the slices, the GQA mapping, the allocations and the strategies) and only their
slices train: output rows of V and Up, input columns of O and Down. Everything
else is frozen, and Q, K and Gate never train. The slices run on the shared
partial-weight mechanism (partial_linear.py): the dense weight stays in place and is
used by the forward as is; each slice is mirrored by an fp32 master; O and Down
save only a compact copy of x[..., S] and get their gradient from one flattened
thin GEMM; the masters are written back after every optimizer step. No weight
is permuted, unlike the reference, so the merged checkpoint is element-wise
comparable with the base model.

Biases stay frozen, as in the reference (its trained deltas carry no bias): a
bias entry belongs to an output row, so for the column slices of O and Down it
is not part of the slice at all, and for V and Up it would add one trainable
value per selected row. A new task head (what a sequence classifier adds
around its base model: architecture.py) is random at the start, so it trains densely (`train_head`), as
PEFT's LoRA does.

Exports: the merged dense checkpoint, and the compact adapter (adapter.py)
that fuses into the base model and unfuses exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftbench.errors import require
from ftbench.methods.base import MethodContext, Trains
from ftbench.methods.partial_linear import (
    PartialMethod,
    Selection,
    partial_names,
    save_merged,
    wrap,
)
from ftbench.methods.s2ft import adapter
from ftbench.methods.s2ft.config import S2ftConfig
from ftbench.methods.s2ft.select import (
    KIND,
    PROJECTIONS,
    ROLES,
    UNIT_NAMES,
    find_blocks,
    require_units,
    select_units,
)
from ftbench.models.architecture import architecture

MASTER_DTYPES = {"fp32": torch.float32, "weight": None}
SELECTION_FILE = "s2ft_selection.json"


class S2ft(PartialMethod):
    config_class = S2ftConfig

    def __init__(self, cfg: S2ftConfig):
        super().__init__(cfg)
        self.layers = []
        self.blocks = []
        self.units: dict[str, list[torch.Tensor]] = {}  # projection -> per block: selected unit ids
        self.head: list[str] = []
        self.base: adapter.Adapter = {}
        self.selection_file: Path | None = None

    def check_model(self, model: nn.Module, head: str) -> None:
        """The blocks' heads and channels map onto their V/O/Up/Down `nn.Linear`s, and the ratios pick some of
        them, before a scoring strategy calibrates."""
        require_units(find_blocks(model), self.cfg)

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        model.requires_grad_(False)
        self.blocks = find_blocks(model)
        require_units(self.blocks, self.cfg)
        self.units = select_units(model, self.blocks, self.cfg, ctx)
        selections = {}
        for p, per_block in self.units.items():
            for block, units in zip(self.blocks, per_block):
                if units.numel():
                    selections[block[p].name] = Selection(KIND[p], block[p].index(units))
        self.layers = wrap(model, selections, MASTER_DTYPES[self.cfg.master_dtype])
        self.named_layers = dict(zip(selections, self.layers))
        self.model = model  # load_state_dict re-captures the base slices of a loaded selection
        if self.cfg.train_head:
            heads = architecture(model).task_heads(ctx.head)
            self.head = [n for n, _ in model.named_parameters() if n.split(".")[0] in heads]
            for name in self.head:
                model.get_parameter(name).requires_grad_(True)
        where = {f"{name}.weight": (adapter.KIND_DIM[s.kind], s.index) for name, s in selections.items()}
        where.update({name: (0, torch.arange(model.get_parameter(name).shape[0])) for name in self.head})
        self.base = adapter.capture(model, where)
        if ctx.output_dir is not None and _is_main_process():
            self.selection_file = Path(ctx.output_dir) / SELECTION_FILE
            self.selection_file.parent.mkdir(parents=True, exist_ok=True)
            self.selection_file.write_text(json.dumps(self.selection_record(ctx.seed), indent=1))
        return model

    def selection_record(self, seed: int) -> dict[str, Any]:
        """The selection in readable form: per block, the selected heads and channels."""
        settings = {k: getattr(self.cfg, k) for k in ("strategy", "order", "allocation")}
        blocks = []
        for i, block in enumerate(self.blocks):
            entry = {"block": block.prefix}
            entry.update({UNIT_NAMES[p]: per_block[i].tolist() for p, per_block in self.units.items()})
            blocks.append(entry)
        return {**settings, "seed": seed, "v_heads_are": "key/value heads", "o_heads_are": "query heads",
                "blocks": blocks}

    def describe(self, model: nn.Module) -> dict[str, Any]:
        selected = {UNIT_NAMES[p]: [int(u.numel()) for u in per_block] for p, per_block in self.units.items()}
        return {
            "name": "s2ft",
            "strategy": self.cfg.strategy, "order": self.cfg.order, "allocation": self.cfg.allocation,
            "ratios": {f"{p}_ratio": getattr(self.cfg, f"{p}_ratio") for p in PROJECTIONS},
            "selected": {name: sum(counts) for name, counts in selected.items()},
            "selected_per_block": selected,
            "slice_elements": sum(layer.master.numel() for layer in self.layers),
            "master_dtype": self.cfg.master_dtype,
            "trained_head": self.head,
            "gqa": "o selects query heads; v selects key/value heads",
            "selection_file": str(self.selection_file) if self.selection_file else None,
        }

    def trains(self, model: nn.Module, head: str) -> Trains:
        """Slices of the projections whose ratio is above 0 (V, O, Up, Down as the architecture names them),
        and the new task head when `train_head`. Every such projection of every block must train under
        per-layer allocation; a global draw may leave a block out, so then only the drawn ones must."""
        arch = architecture(model)
        roles = [ROLES[p] for p in PROJECTIONS if getattr(self.cfg, f"{p}_ratio") > 0]
        sliced = {arch.path_of(b, r) for b in arch.blocks for r in roles if arch.has(b, r)}
        drawn = sliced if self.cfg.allocation == "per_layer" else set(self.named_layers)
        heads = {n for n, _ in model.named_parameters() if n.split(".")[0] in arch.task_heads(head)}
        dense = heads if self.cfg.train_head else set()
        return Trains(partial_names(model, sliced) | dense, partial_names(model, drawn) | dense)

    def state_dict(self) -> dict[str, Any]:
        return {"units": {p: [u.clone() for u in per_block] for p, per_block in self.units.items()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Adopt a saved selection (after prepare and attach, before the first step; the dense
        weights still the base ones): each slice moves to the saved heads and channels, its
        master restarts from the dense weight (same Parameter, so the optimizer still holds it).
        The saved selection must train the same layers as the drawn one."""
        units = {p: [torch.as_tensor(u, dtype=torch.long) for u in per_block] for p, per_block in state["units"].items()}
        for p, per_block in units.items():
            for block, mine, saved in zip(self.blocks, self.units[p], per_block, strict=True):
                if torch.equal(mine, saved):
                    continue
                require(bool(mine.numel()) == bool(saved.numel()), "method",
                        f"the saved selection has {saved.numel()} units in {block[p].name}, this run {mine.numel()}; "
                        "resume with the same method settings")
                layer = self.named_layers[block[p].name]
                layer.select(block[p].index(saved))
                layer.master.data = layer.selected_values().to(layer.master.dtype)
                self.base.update(adapter.capture(self.model, {
                    f"{block[p].name}.weight": (adapter.KIND_DIM[layer.kind], layer.index)}))
        self.units = units

    def export(self, model: nn.Module, tokenizer, path: Path) -> dict[str, str]:
        path.mkdir(parents=True, exist_ok=True)
        save_merged(model, tokenizer, path / "merged")
        delta = adapter.extract(model, self.base)
        adapter.save(delta, path / "adapter.safetensors", metadata={"method": "s2ft"})
        return {"merged": str(path / "merged"), "adapter": str(path / "adapter.safetensors")}


def _is_main_process() -> bool:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return not distributed or torch.distributed.get_rank() == 0

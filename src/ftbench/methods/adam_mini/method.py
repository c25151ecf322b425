"""Adam-mini through the adam-mini package (never a copy of its algorithm): `Adam_mini` over every
weight, with the model's blocks taken from models/architecture.py, never from names of our own.

Adam-mini keeps AdamW's first moment m for every weight, and replaces the second moment v by the
mean of g^2 over each block of the Hessian's near-block-diagonal structure (Zhang et al., 2025,
§2.3, Alg. 1): one value per attention head for queries and keys, one per output neuron (row) for
values, the attention output and the MLP, one per token (row) for embeddings and output heads, one
per tensor for norms; biases keep AdamW's full v. The state is then about one moment per weight
(AdamW: two), the second moment a few kilobytes.

The library assigns a weight to a block kind by its name: it tests whether any entry of its name
sets (`embd_names`, `output_names`, `wqk_names`, `wv_names`, `attn_proj_names`, `mlp_names`) is a
substring of the weight's lower-cased name. Those sets are public attributes its own warnings tell
users to fill; here they hold the exact names of the weights architecture.py assigns to each role,
so no name pattern of ours or the library's decides. A weight of no role (a 2-D one outside the
blocks, e.g. BERT's pooler) counts per output neuron, as the paper's partition of linear layers.
"""

from __future__ import annotations

import torch
from torch import nn

from ftbench.errors import UserError
from ftbench.methods.adam_mini.config import AdamMiniConfig
from ftbench.methods.base import Method, MethodContext, is_no_decay
from ftbench.methods.projected import library
from ftbench.models.architecture import architecture

# role (architecture.py) -> the library's name set whose block kind it is
ROLE_SETS = {"q": "wqk_names", "k": "wqk_names", "qkv": "wqk_names", "cross_q": "wqk_names", "cross_k": "wqk_names",
             "v": "wv_names", "cross_v": "wv_names", "o": "attn_proj_names", "cross_o": "attn_proj_names",
             "gate": "mlp_names", "up": "mlp_names", "gate_up": "mlp_names", "down": "mlp_names"}
NAME_SETS = ("embd_names", "output_names", "wqk_names", "wv_names", "attn_proj_names", "mlp_names")


class AdamMini(Method):
    config_class = AdamMiniConfig
    needs_linear = True  # a head is a block of a q/k/v/o weight's rows: GPT-2's Conv1D is refused up front

    def check_model(self, model: nn.Module, head: str) -> None:
        """A head is a block of the q/k/v/o weights' rows: they are `nn.Linear`s, and the heads span the hidden
        width as the library sizes them."""
        arch = architecture(model)
        arch.require_linear(model, ("q", "k", "v", "o"), "adam-mini")
        heads, _, head_dim = arch.attention_heads(model, arch.blocks[0])
        dim = model.get_submodule(arch.path_of(arch.blocks[0], "q")).in_features
        if heads * head_dim != dim:
            raise UserError("method", f"adam-mini 1.1.1 sizes a head as hidden^2 / heads, and this model's heads are "
                            f"{head_dim} wide x {heads} != hidden {dim}; use method=full")

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        self.check_model(model, ctx.head)
        arch = architecture(model)
        self.heads, self.kv_heads, _ = arch.attention_heads(model, arch.blocks[0])
        self.dim = model.get_submodule(arch.path_of(arch.blocks[0], "q")).in_features
        for param in model.parameters():
            param.requires_grad_(True)
        self.kinds = self.block_kinds(model)
        return model

    @staticmethod
    def block_kinds(model: nn.Module) -> dict[str, str]:
        """Weight name -> the library's name set for its block kind (module docstring); biases and norms
        are left to the library's own rule (a bias keeps AdamW's v, any other tensor one v)."""
        arch = architecture(model)
        kinds = {}
        for block in arch.blocks:
            for role, inside in block.roles.items():
                kinds[f"{block.name}.{inside}.weight"] = ROLE_SETS[role]
        outputs = [*arch.heads, *([arch.output_embedding] if arch.output_embedding else [])]
        for name, param in model.named_parameters():
            module = name.rpartition(".")[0]
            if module in arch.embeddings:
                kinds[name] = "embd_names"
            elif any(module == head or module.startswith(head + ".") for head in outputs) and param.ndim == 2:
                kinds[name] = "output_names"
            elif param.ndim == 2:
                kinds.setdefault(name, "mlp_names")  # a linear outside the blocks: one v per output neuron
        return kinds

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        """One group per tensor, named (the library builds its groups so, from named parameters)."""
        return [{"params": [p], "name": n, "weight_decay": 0.0 if is_no_decay(n, p) else weight_decay}
                for n, p in model.named_parameters() if p.requires_grad]

    def build_optimizer(self, groups: list[dict], optim_cfg, lr: float) -> torch.optim.Optimizer:
        adam_mini = library("adam_mini", "adam-mini", "adam-mini")
        groups = self.with_masters(groups)
        optimizer = adam_mini.Adam_mini([(g["name"], g["params"][0]) for g in groups], lr=lr,
                                        betas=tuple(optim_cfg.betas), eps=optim_cfg.eps,
                                        weight_decay=optim_cfg.weight_decay, dim=self.dim, n_heads=self.heads,
                                        n_kv_heads=self.kv_heads, verbose=False)
        for attribute in NAME_SETS:  # the blocks of architecture.py, as exact (lower-cased) weight names
            setattr(optimizer, attribute, {n.lower() for n, kind in self.kinds.items() if kind == attribute})
        # The library decays by its own name rule; ftbench's rule (methods/base.py is_no_decay) applies instead.
        for group, ours in zip(optimizer.param_groups, groups):
            group["weight_decay"] = ours["weight_decay"]
        # The library takes the CUDA device count for the number of ranks that each hold a shard of a norm
        # (and all-gathers over them). ftbench's ranks each hold whole weights (FSDP is refused), so every
        # tensor is whole here: one "rank", also on a multi-GPU host running one process.
        optimizer.world_size = 1
        self.masters.attach(optimizer)
        return optimizer

    def describe(self, model: nn.Module) -> dict:
        counts = {kind: sum(1 for k in self.kinds.values() if k == kind) for kind in NAME_SETS}
        return {"name": "adam-mini", "optimizer": "Adam_mini", "blocks": counts, "heads": self.heads,
                "kv_heads": self.kv_heads,
                "masters": "fp32" if self.masters.pairs else "none: the optimizer steps the weights in their dtype"}

"""What GaLore and APOLLO share: every weight trains at full rank, as in full fine-tuning, but the
optimizer keeps its state for the projected weights in a rank-r projection of their gradients.

Which weights are projected: the attention and MLP projections of every block, as
`models/architecture.py` finds them (`target_modules: all-linear`), or those among them whose
module name is listed (`[q_proj, v_proj]`). Embeddings, norms, biases and the task or LM head
are stepped by the same optimizer as plain AdamW (full-size moments), as both libraries and
LLaMA-Factory do.

The libraries read the projection from the parameter groups: a group holding a `rank` key
(with `update_proj_gap`, `scale`, `proj_type`, and APOLLO's `proj` and `scale_type`) is
projected. For a weight of m x n (m >= n under proj_type `std`) the optimizer then holds two
moments of m x r and a projection matrix of r x n instead of AdamW's two m x n moments
(GaLore, Zhao et al., 2024, Alg. 1; APOLLO, Zhu et al., 2025, Alg. 1); the breakdown and the
planner count them as they are held (measure/meters.py `optimizer_state_parts`).

Low-precision (bf16) weights are stepped through fp32 masters (masters.py), as full fine-tuning
steps them: the projection and its moments are then fp32.

Optional dependencies (galore-torch, apollo-torch) are imported where the optimizer is built:
`pip install 'ftbench[optimizers]'` installs them, and a run without them stops in one line.
"""

from __future__ import annotations

from abc import abstractmethod
from importlib import import_module
from typing import Any

import torch
from torch import nn

from ftbench.errors import UserError
from ftbench.methods.base import Method, MethodContext, decay_split
from ftbench.models.architecture import ATTENTION_ROLES, MLP_ROLES, architecture

EXTRA = "optimizers"  # pip install 'ftbench[optimizers]': galore-torch, apollo-torch, adam-mini, bitsandbytes


def library(module: str, package: str, method: str):
    """Import an optional optimizer library, or stop in one line naming the extra that installs it."""
    try:
        return import_module(module)
    except ImportError as exc:
        raise UserError("method", f"{method} needs the {package} package ({exc}); install it with "
                        f"pip install 'ftbench[{EXTRA}]'") from exc


def projected_modules(model: nn.Module, target_modules: Any) -> list[str]:
    """Module paths of the weights to project: every attention and MLP projection of every block
    ("all-linear"), or those whose own name (`q_proj`, BERT's `query`) is listed. Raises UserError
    ('method.target_modules') naming the projections there are when a listed name matches none."""
    paths = architecture(model).projections((*ATTENTION_ROLES, *MLP_ROLES))
    if not paths:
        raise UserError("method", "ftbench finds no attention or MLP projection in this model to project; "
                        "use method=full, or add the family to ftbench/models/architecture.py LAYOUTS")
    if isinstance(target_modules, str) and target_modules == "all-linear":
        return paths
    wanted = list(target_modules)  # the config's check allows no other string (methods/config.py check_targets)
    names = sorted({p.rsplit(".", 1)[-1] for p in paths})
    missing = [t for t in wanted if t not in names]
    if missing:
        raise UserError("method.target_modules", f"no block projection named {missing[0]!r} in this model; "
                        f"its projections: {', '.join(names)} (or all-linear)")
    return [p for p in paths if p.rsplit(".", 1)[-1] in wanted]


class ProjectedStates(Method):
    """Full fine-tuning stepped by a library optimizer that projects the block projections' states.

    Subclasses give the library's group keys (`projection`) and its optimizer (`make`)."""

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        self.modules = projected_modules(model, self.cfg.target_modules)
        self.projected = {id(model.get_submodule(path).weight) for path in self.modules}
        side, path = min((self.largest_rank(model.get_submodule(path).weight.shape), path) for path in self.modules)
        if self.cfg.rank > side:
            raise UserError("method.rank", f"{self.cfg.rank} is more than {self.rank_bound(side, f'{path}.weight')}; "
                            f"give at most {side}")
        return model

    def largest_rank(self, shape: torch.Size) -> int:
        """The largest method.rank a weight of `shape` (m x n) is projected to: its smaller side, the most vectors
        an SVD basis (GaLore's) holds, so a larger rank would be cut silently."""
        return min(shape)

    def rank_bound(self, side: int, weight: str) -> str:
        """`largest_rank` of the weight named `weight` (`side`), in words for the refusal of a larger rank."""
        return f"the {side} singular vectors an SVD of {weight} has (its smaller side)"

    @abstractmethod
    def projection(self) -> dict[str, Any]:
        """The keys that make a parameter group projected, as the library reads them."""

    @abstractmethod
    def make(self, groups: list[dict], optim_cfg, lr: float) -> torch.optim.Optimizer:
        """The library's optimizer over `groups` (masters already swapped in)."""

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        """The rest split by the usual decay rule, then the projected weights in one group (decayed, with
        the library's rank keys). Last, as both libraries' READMEs order them: APOLLO seeds each weight's
        random projection by its position among the optimizer's tensors."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        projected = [p for _, p in named if id(p) in self.projected]
        rest = [(n, p) for n, p in named if id(p) not in self.projected]
        return [*decay_split(rest, weight_decay),
                {"params": projected, "weight_decay": weight_decay, "name": "projected", **self.projection()}]

    def build_optimizer(self, groups: list[dict], optim_cfg, lr: float) -> torch.optim.Optimizer:
        optimizer = self.make(self.with_masters(groups), optim_cfg, lr)
        self.attach_masters(optimizer)
        return optimizer

    def attach_masters(self, optimizer: torch.optim.Optimizer) -> None:
        """Round the fp32 masters into the weights after every `optimizer.step()` (layer-wise
        GaLore rounds each in its own hook instead)."""
        self.masters.attach(optimizer)

    def describe(self, model: nn.Module) -> dict:
        kinds = sorted({path.rsplit(".", 1)[-1] for path in self.modules})
        return {"name": self.cfg.name, "rank": self.cfg.rank, "projected_modules": kinds,
                "projected_weights": len(self.modules), "update_proj_gap": self.cfg.update_proj_gap,
                "scale": self.cfg.scale,
                "masters": "fp32" if self.masters.pairs else "none: the optimizer steps the weights in their dtype"}

"""Which tensors SIFT trains and which of their entries: target and exception
modules resolved per architecture, k = ⌊rate·numel⌋+1 per tensor, and the three
selection strategies (gradient top-k from calibration batches, random, magnitude).

Every strategy is deterministic: ties go to the lower flat index, random draws
come from a generator seeded by the run's seed, and with several processes every
rank takes rank 0's choice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from torch import nn

from ftbench.errors import UserError
from ftbench.methods.base import MethodContext
from ftbench.models.architecture import ATTENTION_ROLES, MLP_ROLES, architecture

PRESETS = {"attention": ATTENTION_ROLES, "mlp": MLP_ROLES}  # projection roles (architecture.py)
# The paper's default: attention on encoders (GLUE), the 7 projections on decoders (Alpaca); an
# encoder-decoder is served as a decoder.
AUTO = {"encoder": ("attention",), "decoder": ("attention", "mlp"), "encoder-decoder": ("attention", "mlp")}


def selected_count(numel: int, rate: float) -> int:
    """k = ⌊rate·numel⌋ + 1 (the reference's rule), at most numel."""
    return min(math.floor(rate * numel) + 1, numel)


# -- which modules ----------------------------------------------------------------------------------

def _matches(name: str, entry: str) -> bool:
    return name == entry or name.endswith("." + entry)


def short_name(name: str) -> str:
    """A module name without its layer prefix: `bert.encoder.layer.3.attention.self.query` -> `attention.self.query`."""
    return re.split(r"\.\d+\.", name)[-1]


def linear_names(model: nn.Module) -> list[str]:
    return sorted({short_name(n) for n, m in model.named_modules() if isinstance(m, nn.Linear)})


def head_modules(model: nn.Module, head: str) -> list[str]:
    """The task head of a classification model (trained densely, as the paper does); none for a causal LM."""
    return architecture(model).task_heads(head)


def resolve_exceptions(model: nn.Module, spec, head: str) -> list[str]:
    """Module names trained densely: `head`, or a list of names (matched as a name suffix)."""
    if spec == "head":
        return head_modules(model, head)
    names = [n for n, _ in model.named_modules() if n]
    found = []
    for entry in spec:
        matched = [n for n in names if _matches(n, entry)]
        if not matched:
            raise UserError("method.exception_modules", f"no module named {entry!r} in this model; "
                            f"top-level modules: {', '.join(n for n, _ in model.named_children())}")
        found += [n for n in matched if n not in found]
    return found


def _inside(name: str, modules: list[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def resolve_targets(model: nn.Module, spec, excluded: list[str]) -> dict[str, nn.Linear]:
    """The sparse target layers, in forward (registration) order, outside the excluded modules.

    `spec` is a preset (auto, attention, mlp, all-linear: roles from architecture.py) or a list of
    module names matched as a name suffix (`query` or `attention.self.query`).
    Raises UserError('method.target_modules') when nothing is selected or a name is not a linear layer,
    UserError('method') when a preset's projections are not `nn.Linear` (GPT-2's Conv1D)."""
    arch = architecture(model)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not _inside(n, excluded)}
    heads = [*arch.heads, *([arch.output_embedding] if arch.output_embedding else [])]
    if isinstance(spec, str):
        if spec == "all-linear":
            chosen = [n for n in linears if not _inside(n, heads)]
        else:
            if arch.kind == "unknown":
                raise UserError("method.target_modules", f"no preset {spec!r} for model_type {arch.model_type}; "
                                f"name the modules, e.g. [{', '.join(linear_names(model)[:3])}], or use all-linear")
            roles = {r for preset in (AUTO[arch.kind] if spec == "auto" else (spec,)) for r in PRESETS[preset]}
            found = arch.projections(roles)
            other = [n for n in found if not isinstance(model.get_submodule(n), nn.Linear)]
            if other:
                raise UserError("method", f"sift trains nn.Linear weights; this {arch.model_type} model holds {other[0]} "
                                f"as a {type(model.get_submodule(other[0])).__name__}: use method=full, lora or hift")
            chosen = [n for n in linears if n in set(found)]
    else:
        chosen = []
        for entry in spec:
            matched = [n for n, _ in model.named_modules() if _matches(n, entry)]
            if not matched or any(not isinstance(model.get_submodule(n), nn.Linear) for n in matched):
                problem = "no linear layer" if not matched else "a module that is not a linear layer"
                raise UserError("method.target_modules", f"{entry!r} names {problem}; linear layers here: "
                                f"{', '.join(linear_names(model))}")
            chosen += [n for n in matched if n in linears]
        chosen = [n for n in linears if n in set(chosen)]
    if not chosen:
        outside = sorted({short_name(n) for n in linears if not _inside(n, heads)})
        raise UserError("method.target_modules", f"{spec!r} selects no layer outside the exception modules "
                        f"(method.exception_modules: trained densely); linear layers outside them: "
                        f"{', '.join(outside)}")
    return {n: linears[n] for n in chosen}


# -- which entries ----------------------------------------------------------------------------------

def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted flat indices of the k largest scores; ties go to the lower index (reproducible)."""
    flat = scores.reshape(-1)
    threshold = flat.topk(k, sorted=False).values.min()
    above = (flat > threshold).nonzero().squeeze(1)
    ties = (flat == threshold).nonzero().squeeze(1)[: k - above.numel()]
    return torch.cat([above, ties]).sort().values


def select(model: nn.Module, tensors: dict[str, nn.Parameter], counts: dict[str, int], strategy: str,
           calibration_batches: int, ctx: MethodContext) -> dict[str, torch.Tensor]:
    """Sorted flat indices for every named tensor; the model is left unchanged."""
    if strategy == "grad":
        chosen = gradient_top_k(model, tensors, counts, calibration_batches, ctx)
    elif strategy == "magnitude":
        chosen = {name: top_k(p.detach().abs(), counts[name]) for name, p in tensors.items()}
    else:
        chosen, generators = {}, {}
        for name, p in tensors.items():  # one stream per device, drawn in a fixed order: reproducible
            generator = generators.setdefault(p.device, torch.Generator(device=p.device).manual_seed(ctx.seed))
            draw = torch.randperm(p.numel(), generator=generator, device=p.device)[: counts[name]]
            chosen[name] = draw.sort().values
    return _agree_across_ranks(chosen)


def gradient_top_k(model: nn.Module, tensors: dict[str, nn.Parameter], counts: dict[str, int], n_batches: int,
                   ctx: MethodContext) -> dict[str, torch.Tensor]:
    """Top-k of |Σ_b ∂L_b/∂θ| over `n_batches` calibration batches (never used for an update).

    One batch (the default, as the reference): each tensor's dense gradient is reduced to its k
    indices by a hook the moment autograd accumulates it, so at most about one layer's dense
    gradient is alive, and calibration costs one forward/backward pass.
    N > 1: the gradients must be summed before the top-k, and holding the sum for every target
    at once would be a whole-model dense gradient. So the N batches are replayed once per
    transformer block, holding only that block's fp32 gradient sum (LLaMA-7B: 202 M values,
    0.8 GB); calibration then costs N x blocks forward/backward passes (backward stops at the block).
    """
    batches = list(ctx.calibration_batches(n_batches))
    groups = [tensors] if n_batches == 1 else _by_block(tensors)
    was_training = model.training
    model.train()  # the gradient of a training step, dropout included, as the reference took it
    chosen: dict[str, torch.Tensor] = {}
    for group in groups:
        sums: dict[str, torch.Tensor] = {}
        last = [False]
        for p in group.values():
            p.requires_grad_(True)
        handles = [p.register_post_accumulate_grad_hook(_reducer(name, counts[name], sums, chosen, last))
                   for name, p in group.items()]
        try:
            for i, batch in enumerate(batches):
                last[0] = i == len(batches) - 1
                ctx.loss(model, batch).backward()
        finally:
            for handle in handles:
                handle.remove()
            for p in group.values():
                p.requires_grad_(False)
                p.grad = None
    model.train(was_training)
    silent = [name for name in tensors if name not in chosen]
    if silent:
        raise UserError("method.target_modules", f"{silent[0]} gets no gradient from the loss; drop it from the "
                        "targets or use method.selection=magnitude")
    return chosen


def _reducer(name: str, k: int, sums: dict, chosen: dict, last: list[bool]) -> Callable[[torch.Tensor], None]:
    def reduce(param: torch.Tensor) -> None:
        grad, param.grad = param.grad, None
        if name in sums:
            grad = sums.pop(name).add_(grad)
        elif not last[0]:
            grad = grad.float()
        if last[0]:
            chosen[name] = top_k(grad.abs(), k)
        else:
            sums[name] = grad
    return reduce


def _by_block(tensors: dict[str, nn.Parameter]) -> list[dict[str, nn.Parameter]]:
    """Group tensors by their transformer block (the name up to the first layer index)."""
    groups: dict[str, dict[str, nn.Parameter]] = {}
    for name, p in tensors.items():
        block = re.match(r"^(.*?\.\d+)\.", name)
        groups.setdefault(block.group(1) if block else name, {})[name] = p
    return list(groups.values())


def _agree_across_ranks(chosen: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank trains the same entries: rank 0's choice (its calibration data differs from the others')."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for index in chosen.values():
            torch.distributed.broadcast(index, src=0)
    return chosen

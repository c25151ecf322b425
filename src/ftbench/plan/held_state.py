"""Held state counted on the planned model itself, for methods whose held state is not
linear in the layer count.

The planner extrapolates what a step holds from shallow probes (two and three layers
for most methods: planner.py). That is exact when every layer adds the same bytes, as it does for
full fine-tuning, LoRA, SIFT (k per weight) or HiFT. S2FT's global allocation
draws ⌊layers × units × ratio⌋ heads and channels over all layers at once: the
count rounds down once for the whole model (0, 0 and 1 O heads at 1, 2 and 8
tiny layers), so two shallow probes do not give the trained bytes at depth.

For such a method the planner builds the full-depth model on the meta device
(shapes and dtypes, no memory), prepares the method on it with the settings its schema declares
`data_free` (S2FT: a scored selection picks other heads than a random one, never
another number of them: every block has the same units), builds its optimizer
and takes one step on zero gradients. What the model, the method and the
optimizer then hold is the held state the run will hold, counted from real
(meta) tensors: weights, masters, the gradients of what the optimizer steps,
and the optimizer's state.

A method whose state grows with the units it has visited (LISA keeps every drawn layer's) is probed
holding every unit's state (`Method.probe_warmup_steps`); the same meta-device preparation gives the
schedule at full depth, and with it the layers the profiled run has not yet visited, whose state the
plan takes off, and the groups a random order draws at the profiled steps, which the probes replay
(`profiled_window`).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ftbench import methods
from ftbench.measure.meters import model_bytes, optimizer_state_parts, tensor_bytes, weight_parts
from ftbench.methods.base import MethodContext
from ftbench.models.loading import load_model

STATE_PART = "optimizer_state_bytes:"  # prefix of a scalar counting one kind of optimizer state
WEIGHT_PART = "weights_bytes:"  # prefix of a scalar counting one kind of weights (meters.weight_parts: 4-bit, ...)


def counted_on_meta(cfg: DictConfig) -> bool:
    """Whether `cfg.method`'s held state is counted on the meta model (see the module docstring)."""
    return methods.config_class(cfg.method.name).data_free is not None


def profiled_window(cfg: DictConfig, head: str, precision: str, gradient_checkpointing: bool) -> tuple[float, Any]:
    """What the planned steps hold that depends on which steps they are, read off the method prepared on the
    full-depth meta model: `Method.unvisited_layers` and `Method.draws`. The planned steps are the profiled
    run's (mode=profile's warm-up and steps, job/steps.py) where the plan is of one (`ftbench plan`, a
    profile's micro-batch); a training run's micro-batch plans a long run: every unit visited, any group its
    order can draw. (0, None) without building it for a method that does not rotate."""
    if not methods.method_class(cfg.method.name).rotates:
        return 0.0, None
    method, model = _prepared(cfg, cfg.method, head, precision, gradient_checkpointing)
    if cfg.mode == "train":
        return method.unvisited_layers(None), None
    start = method.warmup_steps(cfg.profile.warmup_steps, cfg.profile.steps)
    layers = int(model.config.num_hidden_layers)  # the planner's depth (planner.target: Target.layers)
    return method.unvisited_layers(start + cfg.profile.steps), method.draws(start, cfg.profile.steps, layers)


def _prepared(cfg: DictConfig, mcfg_method, head: str, precision: str, gradient_checkpointing: bool):
    """The method of `mcfg_method` prepared on the full-depth model built on the meta device; and the model."""
    device = torch.device("meta")
    model = load_model(OmegaConf.merge(cfg.model, {"random_init": True}), head, 2, device, precision, "eager")
    method = methods.build_method(mcfg_method)
    ctx = MethodContext(head=head, device=device, precision=precision,
                        gradient_checkpointing=gradient_checkpointing, seed=cfg.seed, calibration_batches=None,
                        loss=None, output_dir=None)
    return method, method.prepare(model, ctx)


def held_state(cfg: DictConfig, head: str, precision: str, gradient_checkpointing: bool) -> dict[str, int]:
    """Bytes the run holds between steps (plan.json's breakdown names, and the optimizer state by kind
    under `STATE_PART`, the weights by kind under `WEIGHT_PART`), counted on the full-depth model built on the meta device; `head` and
    `precision` as the run resolves them."""
    method, model = _prepared(cfg, OmegaConf.merge(cfg.method, methods.config_class(cfg.method.name).data_free),
                              head, precision, gradient_checkpointing)
    lr = cfg.optim.lr if cfg.optim.lr is not None else cfg.method.lr
    optimizer = method.build_optimizer(method.param_groups(model, cfg.optim.weight_decay), cfg.optim, lr)
    method.attach(optimizer)
    for p in method.optimizer_parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the state as the first real step does (AdamW: two moments and a step count)
    parts = optimizer_state_parts(optimizer, None)  # every tensor, as a run on the CPU counts them
    return {"weights_bytes": model_bytes(model, method.master_parameters()),
            "trainable_bytes": method.trainable_size()[1], "master_bytes": method.master_bytes(),
            "grad_bytes": sum(tensor_bytes(p) for p in method.held_gradients()),
            "optimizer_state_bytes": sum(parts.values()),
            **{f"{STATE_PART}{label}": value for label, value in parts.items()},
            **{f"{WEIGHT_PART}{label}": value for label, value in weight_parts(model, method.master_parameters()).items()}}

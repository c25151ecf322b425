"""The method contract: a method turns a loaded model into a trainable one and
owns everything specific to it. The training loop never asks which method runs.

Call order, per run:

    method.check_model(model, head)         # the loaded model: before the calibration micro-batch fit and prepare
    model = method.prepare(model, ctx)
    optimizer = method.build_optimizer(method.param_groups(model, weight_decay), optim_cfg)
    method.attach(optimizer)
    if resuming (checkpoint.py), in this order:
        method.load_state_dict(saved)             # after prepare and attach, before the first step
        method.load_optimizer_state_dict(saved)
        scheduler.load_state_dict(saved)
        method.restore(model, saved trainable tensors)
    for each optimizer step:
        method.before_step(step)            # before the first micro-batch's forward
        ... forward/backward over the micro-batches ...
        method.before_optimizer_step(step)  # grads are complete
        method.clip_grad_norm(max_norm)
        optimizer.step()
        method.after_step(step)             # write-back, rotation, offload
        if method.scheduler_steps(step): scheduler.step()
    method.release_optimizer()              # before the final evaluation: the state is no longer needed
    method.export(model, tokenizer, path)
    method.close()                          # always (in a finally): hooks removed, nothing of the job kept

What the project's checks hold a method to is declared on it: its schema's class attributes
(methods/config.py: what it can do, the overrides each check adds) and, here, `trains` (which
parameters training moves) and the class attributes `needs_linear`, `rotates`, `sparse_gradients` and
`quantizes_base`.

Low-precision tensors that reach the optimizer are stepped through fp32 masters
(masters.py) unless the method's `master_dtype` is `weight`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from ftbench.config import within
from ftbench.engine.optim import make_optimizer, make_scheduler
from ftbench.measure.meters import tensor_bytes
from ftbench.methods.config import MethodConfig
from ftbench.methods.masters import Masters
from ftbench.models.loading import save_merged


@dataclass
class MethodContext:
    """What a method may use while preparing the model."""

    head: str  # seq_cls | regression | causal_lm
    device: torch.device
    precision: str  # bf16-mixed | bf16-pure | fp32
    gradient_checkpointing: bool
    seed: int
    # Yields training micro-batches (already on the device) for calibration;
    # they are drawn from a separate stream and never reused for updates.
    calibration_batches: Callable[[int], Iterator[dict[str, torch.Tensor]]]
    # The loss of one micro-batch, under the run's autocast.
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    # The run's folder: a method may record what it selected there (e.g. selection.safetensors).
    output_dir: Path | None = None


NO_DECAY_MARKERS = ("bias", "norm", "layernorm", "ln_")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and normalisation weights are not decayed (the usual convention)."""
    lowered = name.lower()
    return param.ndim < 2 or any(marker in lowered for marker in NO_DECAY_MARKERS)


def decay_split(named: list[tuple[str, torch.Tensor]], weight_decay: float) -> list[dict]:
    decay = [p for n, p in named if not is_no_decay(n, p)]
    no_decay = [p for n, p in named if is_no_decay(n, p)]
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


class Trains(NamedTuple):
    """Parameter names of a prepared model (as `named_parameters` gives them) that training may change and
    must change; `must` is a subset of `may`."""

    may: set[str]
    must: set[str]


class Claim(NamedTuple):
    """What a method's steps, all of them, may change (`Method.claimed_over_run`): `elements`, and the
    parameters they lie in (`names`, as `named_parameters` gives them; None: every one `trains` says may
    change)."""

    elements: int
    names: frozenset[str] | None = None


class Method(ABC):
    """Base class: the behaviour of a plain trainable model; subclasses override what differs."""

    config_class: type[MethodConfig] = MethodConfig
    # What the checks need to know of the method's class (tests/test_architecture.py, test_distributed.py):
    # needs_linear: it replaces or slices projections, or splits their rows into blocks (Adam-mini's heads), so
    #   they must be nn.Linear: `check_model` (and `prepare`) refuses a model that holds them otherwise (GPT-2's
    #   Conv1D) with UserError("method") before anything trains.
    needs_linear: ClassVar[bool] = False
    # rotates: what trains changes between optimizer steps: a step's gradients, and what data parallel reduces,
    #   are the active part's; `trainable_size` reports the largest step.
    rotates: ClassVar[bool] = False
    # sparse_gradients: part of the gradients reaches the optimizer as top-k sparse tensors (a value and two
    #   int64 indices per entry); `describe` then reports `dense_trainable` and `per_step_trainable` elements.
    sparse_gradients: ClassVar[bool] = False
    # quantizes_base: it stores the base weights lossily (QLoRA's 4-bit): the prepared model computes what the
    #   loaded model computes only up to the quantization error, and what it computes exactly is its merged
    #   export (the dequantized base plus the adapters).
    quantizes_base: ClassVar[bool] = False

    def __init__(self, cfg: MethodConfig):
        self.cfg = cfg
        self.optimizer: torch.optim.Optimizer | None = None
        self.masters = Masters()  # fp32 masters of the low-precision tensors the optimizer steps

    # -- building ---------------------------------------------------------
    def check_model(self, model: nn.Module, head: str) -> None:
        """Refuse, with the `UserError` `prepare` would raise (the same line), a setting that the loaded `model`'s
        structure rules out (task head `head`): a target the model lacks, a projection that is not an `nn.Linear`,
        a count the layers cannot hold. It reads the config and the module tree, types and shapes only: it draws no
        data, runs no forward and changes nothing in the model. The job calls it once, after the model is loaded
        and before the calibration micro-batch fit and `prepare` (job/steps.py), so that such a refusal costs no
        calibration; `prepare` still refuses alike when called without it. A method whose settings calibrate
        (`MethodConfig.calibrates`) refuses here whatever its `prepare` would refuse before drawing data, any
        method what the structure decides that its `prepare` would refuse after costly work (PiSSA's SVD), and
        every method that `needs_linear` refuses here a projection held otherwise. Here: nothing to refuse."""

    @abstractmethod
    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        """Freeze, wrap or replace modules; return the model to train."""

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return decay_split(named, weight_decay)

    def build_optimizer(self, groups: list[dict], optim_cfg, lr: float) -> torch.optim.Optimizer:
        """The optimizer over `groups`; low-precision tensors are stepped through fp32 masters
        (masters.py) unless the method's `master_dtype` is `weight` (bf16 updates rounded in place)."""
        optimizer = make_optimizer(self.with_masters(groups), optim_cfg, lr)
        self.masters.attach(optimizer)
        return optimizer

    def with_masters(self, groups: list[dict]) -> list[dict]:
        if getattr(self.cfg, "master_dtype", "fp32") == "weight":
            return groups
        return self.masters.adopt(groups)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    # -- the step ---------------------------------------------------------
    def before_step(self, step: int) -> None:
        pass

    def before_optimizer_step(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

    def planned_steps(self) -> int:
        """Optimizer steps that show every memory state of the run, traced by the planner's probes
        (plan/probe.py) after their warm-up: 1 when a step holds what most steps hold; a method whose
        steps differ (HiFT: a new group every step) says how many steps visit them all."""
        return 1

    def warmup_steps(self, requested: int, timed: int) -> int:
        """Profile mode's warm-up: at least `requested` steps, and enough that the `timed` steps after it are
        steady state (methods whose parts start training later, e.g. HiFT's units, extend it)."""
        return requested

    def probe_warmup_steps(self, timed: int) -> int:
        """The warm-up of the planner's probes (plan/probe.py) before their `timed` traced steps: as
        profile mode's from one step; a method whose held state grows with what it has visited warms up
        until the probe holds what the real run holds at depth."""
        return self.warmup_steps(1, timed)

    def unvisited_layers(self, steps: int | None) -> float:
        """Layers' worth of optimizer state a probe warmed up by `probe_warmup_steps` holds and a run of
        `steps` steps (None: a long run) does not (the planner takes it off the extrapolated state): 0 for
        most methods."""
        return 0.0

    def draws(self, start: int, steps: int, layers: int) -> Any:
        """What a run's steps `start` .. `start + steps - 1` train where it depends on the run's seed (a random
        order's groups), for the planner's probes to replay (`probe_groups`); `layers`: the run's depth as the
        planner counts it (its stacks of that depth are the ones a probe cuts down). Its `depths`: the layer counts
        the planner probes at to replay it (plan/planner.py). None for most methods."""
        return None

    def probe_groups(self, planned, draws: Any) -> None:
        """Rearrange a planner's probe (a method prepared with `probe_settings`) so that it shows what the
        `planned` run's steps hold: it replays the run's `draws`, or without them shows the costliest step
        the config can produce: a no-op for most methods."""

    def scheduler_steps(self, step: int) -> bool:
        """Whether the LR scheduler advances after optimizer step `step`."""
        return True

    def schedule_length(self, total_steps: int) -> int:
        """How many scheduler steps the LR schedule spans for `total_steps` optimizer steps."""
        return total_steps

    def check_length(self, steps: int, optim, budget: within.Budget = within.STEPS) -> None:
        """Refuse, with a `UserError` naming the key to change, a training run of `steps` optimizer steps
        too short for the method's own schedule to do what it claims, under the `optim` config's warm-up
        (its first scheduler step runs at lr 0; a schedule shorter than the run checks its warm-up here), with
        advice that passes every such check (`budget`: what sets the run's length, within.Budget) (called after
        `prepare`, before training; the run-wide knobs are config/within.py's). Most methods have no such
        schedule."""

    def optimizer_parameters(self) -> list[torch.Tensor]:
        assert self.optimizer is not None, "attach() the optimizer first"
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def held_gradients(self) -> list[torch.Tensor]:
        """The tensors whose gradients all exist at once when the optimizer steps (the planner counts
        them on the meta model): every optimizer parameter, unless a method steps each tensor in its own
        backward hook and frees its gradient there (GaLore's layer-wise mode: none)."""
        return self.optimizer_parameters()

    def discard_grads(self, model: nn.Module) -> None:
        """Drop every gradient a forward and backward left behind (the micro-batch probe's), so
        the first step starts from none; methods that keep gradients elsewhere drop those too."""
        for p in [*model.parameters(), *self.optimizer_parameters()]:
            p.grad = None

    def trainable_size(self) -> tuple[int, int]:
        """(elements, bytes) the optimizer updates in a step; methods that rotate what trains report their largest step."""
        params = self.optimizer_parameters()
        return sum(p.numel() for p in params), sum(tensor_bytes(p) for p in params)

    def claimed_over_run(self, steps: int) -> Claim:
        """What the method says its first `steps` optimizer steps may change, all of them together
        (engagement sets what changed against it, and names what of it never changed): here the same set
        every step, `trainable_size`'s, in every parameter `trains` names; a method whose set moves from step
        to step overrides it."""
        return Claim(self.trainable_size()[0])

    def clip_grad_norm(self, max_norm: float | None) -> torch.Tensor | None:
        """Clip over the tensors the optimizer updates (never over frozen weights)."""
        params = [p for p in self.optimizer_parameters() if p.grad is not None]
        if max_norm is None or not params:
            return None
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    # -- accounting -------------------------------------------------------
    def master_parameters(self) -> list[torch.Tensor]:
        """Trainable copies held beside the model's own weights (e.g. fp32 masters); overrides add theirs to these."""
        return self.masters.tensors()

    def uncounted_parameters(self, model: nn.Module) -> list[torch.Tensor]:
        """Tensors that result.json's `params.total` leaves out as copies of weights it counts, so that the total is
        the model's parameters as a user counts them (the base, plus what the method adds, each weight once): the
        masters; overrides add theirs (PEFT's frozen original of a head it trains as a copy)."""
        return self.master_parameters()

    def held_tensors(self) -> list[torch.Tensor]:
        """What the method holds between steps besides the optimizer's state, counted by a traced peak until it is
        freed (measure/trace.LiveTensorPeak.hold): its masters; overrides add theirs (a rotation's host buffers)."""
        return self.master_parameters()

    def master_bytes(self) -> int:
        """Device bytes of the masters at their peak (methods whose masters come and go override it)."""
        return sum(tensor_bytes(t) for t in self.master_parameters())

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Settings that shape memory, and what is trained."""
        return {"name": self.cfg.name}

    def trains(self, model: nn.Module, head: str) -> Trains:
        """What training the prepared `model` (task head `head`: seq_cls | regression | causal_lm) changes,
        derived from the architecture (models/architecture.py) and the settings, not from `requires_grad`:
        the parameters that may change, and those that must change within as many optimizer steps as the
        model has units (embedding, each block, head) under the schema's `every_part` overrides. The
        layout checks hold every method to it on every architecture. Here: every parameter (full
        fine-tuning's claim); a method that trains less overrides it."""
        every = {n for n, _ in model.named_parameters()}
        return Trains(every, every)

    # -- the job's end ----------------------------------------------------
    def release_optimizer(self) -> None:
        """Free the optimizer's state (training is over; the final evaluation needs the memory)."""
        if self.optimizer is not None:
            self.optimizer.state.clear()
            self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Undo what the method did to the process: remove its hooks, drop its references to the
        model and the optimizer, release caches. Called once per job, in a finally; overrides call it."""
        self.masters.close()
        self.optimizer = None

    # -- persistence ------------------------------------------------------
    def snapshot(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A CPU copy of everything training changed (to restore the best checkpoint)."""
        return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def restore(self, model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in snapshot.items():
                params[name].copy_(value)
        self.masters.refresh()

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs beyond the trainable tensors and the optimizer: selections,
        rotations, queue position, states the method keeps outside the optimizer. CPU tensors
        and plain values; read at a step's end (a checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`. The one timing rule, for every method: call after `prepare`
        and `attach`, before the first step, and before `load_optimizer_state_dict` and
        `restore` (which then bring back the optimizer and the trained values)."""

    def optimizer_state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the optimizer (methods that own its state override it)."""
        assert self.optimizer is not None, "attach() the optimizer first"
        return self.optimizer.state_dict()

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        """Load what `optimizer_state_dict` gave; called right after `load_state_dict`."""
        assert self.optimizer is not None, "attach() the optimizer first"
        self.optimizer.load_state_dict(state)

    def export(self, model: nn.Module, tokenizer, path: Path) -> dict[str, str]:
        """Write a merged dense checkpoint that loads with plain `from_pretrained`."""
        path.mkdir(parents=True, exist_ok=True)
        return {"merged": save_merged(model, tokenizer, path / "merged")}


def trainable_named_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    return ((n, p) for n, p in model.named_parameters() if p.requires_grad)


def optimizer_for(method: Method, model: torch.nn.Module, optim_cfg, lr: float,
                   method_state: dict | None = None) -> torch.optim.Optimizer:
    """The method's optimizer over its parameter groups, attached to the method; `method_state` (a
    resume) is loaded once it is attached, the one timing rule of the method contract (methods/base.py)."""
    optimizer = method.build_optimizer(method.param_groups(model, optim_cfg.weight_decay), optim_cfg, lr)
    method.attach(optimizer)
    if method_state is not None:
        method.load_state_dict(method_state)
    return optimizer


def scheduler_for(optimizer: torch.optim.Optimizer, method: Method, optim_cfg, steps: int):
    """The learning-rate schedule over `steps` optimizer steps (the method's schedule length: BAdam
    counts cycles)."""
    return make_scheduler(optimizer, optim_cfg, method.schedule_length(steps))

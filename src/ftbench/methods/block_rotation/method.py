"""HiFT (Liu et al., 2024) as one block-rotating strategy; BAdam and LISA are
configurations of the same code (conf/method/{hift,badam,lisa}.yaml).

The model's units (embedding, each layer, head: units.py) are grouped and visited
in a chosen order; at each optimizer step only the active group's weights get
gradients and updates. Rotation happens at optimizer-step boundaries only
(`before_step`, before the step's first forward), so every micro-batch of an
accumulated step trains the same group. A leaving group's optimizer state is
offloaded, dropped or kept (state_store.py). Low-precision (bf16) weights train
through fp32 masters that exist for the active group only; fp32 weights are
their own masters.

Clipping covers the active group's gradient: that is all that exists at a step
(the reference does the same). It is a weaker clip than full fine-tuning's
global norm.

LR policy: `per_step`, or `per_cycle` (HiFT): the scheduler advances once per
cycle, so every group of a cycle gets the same rate. Its horizon and its
warm-up (optim.warmup_ratio, or optim.warmup_steps read as cycles) are then
counted in cycles, so the rate decays over the run. The reference's horizon,
counted in steps, barely decays.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ftbench.config import within
from ftbench.errors import UserError, require
from ftbench.measure.meters import tensor_bytes
from ftbench.methods.base import Claim, Method, MethodContext, Trains, is_no_decay
from ftbench.methods.block_rotation import length
from ftbench.methods.block_rotation.config import BlockRotationConfig
from ftbench.methods.block_rotation.planning import Planning
from ftbench.methods.block_rotation.state_store import MASTER_DTYPE, Slot, StateStore
from ftbench.methods.block_rotation.units import Schedule, derive_units, pick


def _low_precision(param: torch.Tensor) -> bool:
    return param.is_floating_point() and param.dtype.itemsize < MASTER_DTYPE.itemsize


class BlockRotation(Planning, Method):
    config_class = BlockRotationConfig
    rotates = True

    def __init__(self, cfg: BlockRotationConfig):
        super().__init__(cfg)
        self.steps_done = 0
        self.active: tuple[int, ...] = ()
        self.active_slots: list[Slot] = []
        self.pending: list[Slot] = []  # arrived; installed right before their first optimizer step
        self.peak_master_bytes = 0
        self.hooks: list = []  # gradient hooks on the model's weights, removed by close()
        self.store: StateStore | None = None
        self.slots: dict[int, list[Slot]] = {}
        self.scripted: tuple[int, int] | None = None  # a planner's probe replaying draws: (warm-up, traced steps)
        self.renewed: dict[int, tuple[int, ...]] = {}  # its intervals' units that stay (the others arrive anew)

    # -- building ---------------------------------------------------------------------
    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        cfg = self.cfg
        self.units = derive_units(model)
        # the planner's layers (config.num_hidden_layers): the stacks this deep are the ones its probes cut; a model
        # whose config has no such field (a family registered outside transformers) cuts its deepest stack
        stacks = [u.place[2] for u in self.units if len(u.place) == 3]
        self.depth = int(getattr(model.config, "num_hidden_layers", 0) or max(stacks, default=1))
        frozen = pick(self.units, cfg.frozen_units, "method.frozen_units")
        always = pick(self.units, cfg.always_active, "method.always_active")
        for i in set(frozen) & set(always):
            raise UserError("method.always_active", f"unit '{self.units[i].name}' is also in method.frozen_units")
        queue = [i for i in range(len(self.units)) if i not in frozen and i not in always]
        require(bool(queue or always), "method.frozen_units", "every unit is frozen: nothing would train")
        require(cfg.group_size <= len(queue), "method.group_size",  # more would train every unit at once
                f"{cfg.group_size} is more than the {len(queue)} rotating units (order={cfg.order} "
                f"{'draws' if cfg.order == 'sample' else 'takes'} groups of group_size of them); use at most "
                f"{len(queue)}")
        self.schedule = Schedule(tuple(queue), tuple(always), cfg.group_size, cfg.steps_per_block, cfg.order,
                                 cfg.reshuffle, ctx.seed)
        for param in model.parameters():
            param.requires_grad_(False)
        self.slots: dict[int, list[Slot]] = {}
        for i in [*queue, *always]:
            self.slots[i] = [Slot(name, p, i, not is_no_decay(name, p)) for name, p in self.units[i].params]
        for slot in self.all_slots():
            if _low_precision(slot.param):
                slot.master = nn.Parameter(torch.empty(0, dtype=MASTER_DTYPE, device=slot.param.device))
                slot.param.requires_grad_(True)  # (a hook needs it; _switch sets the real flags)
                self.hooks.append(slot.param.register_post_accumulate_grad_hook(_accumulate_into(slot)))
                slot.param.requires_grad_(False)
        self.store = StateStore(cfg.state_policy, ctx.device, window=self.schedule.cycle_steps)
        self._switch(self.schedule.active(0))
        self._install()
        return model

    def all_slots(self) -> list[Slot]:
        return [slot for i in sorted(self.slots) for slot in self.slots[i]]

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        return [{"params": [s.handle for s in self.active_slots if s.decay], "weight_decay": weight_decay,
                 "name": "decay"},
                {"params": [s.handle for s in self.active_slots if not s.decay], "weight_decay": 0.0,
                 "name": "no_decay"}]

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        super().attach(optimizer)
        self.store.check_host_memory(self.all_slots(), _states_per_weight(optimizer))  # before anything is pinned
        self.store.optimizer = optimizer

    # -- the step ---------------------------------------------------------------------
    def before_step(self, step: int) -> None:
        self.store.step = self.steps_done
        interval = self.schedule.interval(self.steps_done)
        wanted = self.schedule.active(interval)
        if interval in self.renewed:  # a probe's: the run's units that stay, where others share their probe units
            self._switch(self.renewed[interval])
        if wanted != self.active:
            self._switch(wanted)
        last_of_interval = (self.steps_done + 1) % self.schedule.steps_per_block == 0
        if self.cfg.prefetch_ahead and self.cfg.state_policy == "offload" and last_of_interval:
            upcoming = set(self.schedule.active(interval + 1)) - set(wanted)
            self.store.fetch([s for i in sorted(upcoming) for s in self.slots[i]])

    def before_optimizer_step(self, step: int) -> None:
        self._install()
        for slot in self.active_slots:
            if slot.master is not None:
                slot.master.grad, slot.grad = slot.grad, None

    def after_step(self, step: int) -> None:
        with torch.no_grad():
            for slot in self.active_slots:
                if slot.master is not None:
                    slot.param.copy_(slot.master)
        self.steps_done += 1

    def scheduler_steps(self, step: int) -> bool:
        return self.cfg.lr_policy == "per_step" or self.steps_done % self.schedule.cycle_steps == 0

    def schedule_length(self, total_steps: int) -> int:
        return length.schedule_length(self.schedule, self.cfg.lr_policy == "per_cycle", total_steps)

    def check_length(self, steps: int, optim, budget: within.Budget = within.STEPS) -> None:
        """The run's length against the rotation (length.py): too short for the schedule or its warm-up, or a
        unit active only while a warm-up holds the rate at 0; `UserError` on the key to change."""
        length.check(self.schedule, [u.name for u in self.units], self.cfg.lr_policy == "per_cycle", steps,
                     optim, budget)

    def _switch(self, wanted: tuple[int, ...]) -> None:
        """Freeze the leaving units, unfreeze the arriving ones (before the step's forward)."""
        leaving = [s for i in self.active if i not in wanted for s in self.slots[i]]
        arriving = [s for i in wanted if i not in self.active for s in self.slots[i]]
        for slot in leaving:
            slot.param.requires_grad_(False)
            slot.param.grad = slot.handle.grad = slot.grad = None
        self.store.leave(leaving)
        for slot in arriving:
            slot.param.requires_grad_(True)
        self.store.fetch(arriving)
        self.pending.extend(arriving)
        self.active = wanted
        self.active_slots = [s for i in wanted for s in self.slots[i]]
        if self.optimizer is not None:
            groups = {g["name"]: g for g in self.optimizer.param_groups}
            groups["decay"]["params"] = [s.handle for s in self.active_slots if s.decay]
            groups["no_decay"]["params"] = [s.handle for s in self.active_slots if not s.decay]

    def _install(self) -> None:
        if self.pending:
            self.store.install(self.pending)
            self.pending = []
            masters = sum(tensor_bytes(s.master) for s in self.active_slots if s.master is not None)
            self.peak_master_bytes = max(self.peak_master_bytes, masters)

    def close(self) -> None:
        """Remove the gradient hooks (they hold the slots, which hold the weights), free the
        masters and the host arena, and return the pinned pages to the system."""
        for handle in self.hooks:
            handle.remove()
        self.hooks = []
        for slot in self.all_slots():
            slot.master = slot.grad = None
        self.active_slots, self.pending, self.slots = [], [], {}
        self.release_optimizer()  # offloaded state lives in the host arena: freed before the arena goes
        if self.store is not None:
            self.store.close()
        super().close()

    def discard_grads(self, model: nn.Module) -> None:
        super().discard_grads(model)
        for slot in self.all_slots():
            slot.grad = None  # low-precision weights accumulate here (_accumulate_into)

    # -- accounting -------------------------------------------------------------------
    def master_parameters(self) -> list[torch.Tensor]:
        return [s.master for s in self.active_slots if s.master is not None]

    def held_tensors(self) -> list[torch.Tensor]:
        """The masters, and under offload every host buffer and in-flight copy (StateStore.held_tensors): a buffer
        of a unit active when tracing starts is in no optimizer state then, yet holds memory on the CPU."""
        return [*self.master_parameters(), *self.store.held_tensors()]

    def master_bytes(self) -> int:
        return self.peak_master_bytes

    def trainable_size(self) -> tuple[int, int]:
        """The largest group the schedule can make active (HiFT's "trainable per step"), in the
        dtype the optimizer steps (fp32 masters for low-precision weights)."""
        return (self.schedule.largest_group([u.numel for u in self.units]),
                self.schedule.largest_group([sum(_stepped_bytes(p) for _, p in u.params) for u in self.units]))

    def claimed_over_run(self, steps: int) -> Claim:
        """The units the schedule made active over `steps` steps (the always-active ones and each
        interval's group), each counted once, and their parameters: a rotation claims a block only for the
        steps it holds it."""
        intervals = range(math.ceil(steps / self.schedule.steps_per_block))
        visited = set(self.schedule.always).union(*(self.schedule.rotating(i) for i in intervals))
        return Claim(sum(self.units[i].numel for i in visited),
                     frozenset(name for i in visited for name, _ in self.units[i].params))

    def describe(self, model: nn.Module) -> dict[str, Any]:
        sizes = [u.numel for u in self.units]
        cfg = self.cfg
        info = {
            "name": cfg.name,
            "units": {u.name: u.numel for u in self.units},
            "rotating_units": [self.units[i].name for i in self.schedule.queue],
            "always_active": [self.units[i].name for i in self.schedule.always],
            "frozen_units": [u.name for i, u in enumerate(self.units) if i not in self.slots],
            "group_size": cfg.group_size, "groups_per_cycle": self.schedule.groups_per_cycle,
            "steps_per_block": cfg.steps_per_block, "cycle_steps": self.schedule.cycle_steps,
            "order": cfg.order, "reshuffle": cfg.reshuffle and cfg.order == "random", "state_policy": cfg.state_policy,
            "prefetch_ahead": cfg.prefetch_ahead and cfg.state_policy == "offload", "lr_policy": cfg.lr_policy,
            "trainable_total": sum(sizes[i] for i in self.slots),
            "trainable_per_step_max": self.schedule.largest_group(sizes),
            "masters": "fp32, active group only" if any(s.master is not None for s in self.all_slots())
            else "none: the weights are fp32",
            "clip_scope": "active group",
            "steps_done": self.steps_done,
        }
        if cfg.state_policy == "offload":
            info["transfers"] = self.store.stats()
        return info

    # -- persistence ------------------------------------------------------------------
    def trains(self, model: nn.Module, head: str) -> Trains:
        """Every unit but the frozen ones (units.py names them); all of them once a cycle has passed, or
        under order=sample (units drawn at random) only the always-active ones for sure."""
        units = derive_units(model)

        def params(key: str, picked) -> set[str]:
            return {n for i in pick(units, picked, key) for n, _ in units[i].params}

        may = {n for n, _ in model.named_parameters()} - params("method.frozen_units", self.cfg.frozen_units)
        always = params("method.always_active", self.cfg.always_active)
        return Trains(may, always if self.cfg.order == "sample" else may)

    def snapshot(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {s.name: s.param.detach().to("cpu", copy=True) for s in self.all_slots()}

    def restore(self, model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
        self.store.synchronize()
        by_name = {s.name: s for s in self.all_slots()}
        with torch.no_grad():
            for name, value in snapshot.items():
                slot = by_name[name]
                slot.param.copy_(value)
                if slot.master is not None and slot.master.numel():
                    slot.master.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """Queue position, cycle, and every unit's optimizer state and masters (CPU copies)."""
        self.store.synchronize()
        states, device_keys = {}, {}
        for slot in self.all_slots():
            state = self.optimizer.state.get(slot.handle) if self.optimizer is not None else None
            if state:
                states[slot.name] = {k: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else v
                                     for k, v in state.items()}
                device_keys[slot.name] = [k for k, v in state.items() if torch.is_tensor(v) and (
                    v.device.type == self.store.device.type or self.store.is_offloaded(slot, k))]
        interval = self.schedule.interval(self.steps_done)
        return {
            "units": [u.name for u in self.units],
            "steps_done": self.steps_done,
            "cycle": interval // self.schedule.groups_per_cycle,
            "queue_position": interval % self.schedule.groups_per_cycle,
            "active_units": [self.units[i].name for i in self.active],
            "optimizer_state": states,
            "device_keys": device_keys,
            "masters": {s.name: s.master.detach().to("cpu", copy=True) for s in self.all_slots()
                        if s.master is not None and s.master.numel()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` left off (after prepare and attach, before the first step).
        The group that was active when it was saved is active again, with its masters and
        optimizer states; the other units' states go where the policy keeps them. The next
        `before_step` then switches groups exactly as the uninterrupted run did."""
        names = [u.name for u in self.units]
        if state["units"] != names:
            raise UserError("method", f"the saved state is for units {state['units'][:3]}.., this model has "
                            f"{names[:3]}..; resume with the same model and method settings")
        self.steps_done = state["steps_done"]
        self._switch(tuple(names.index(name) for name in state["active_units"]))
        by_name = {s.name: s for s in self.all_slots()}
        for name, value in state["masters"].items():
            slot = by_name[name]
            slot.master.data = self.store.adopt(slot, "master", value, slot.unit in self.active)
        self._install()
        self._place_states(state)

    def optimizer_state_dict(self) -> dict[str, Any]:
        """The groups' settings (lr, ...) only: every unit's optimizer state is in `state_dict`."""
        return {"param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]}

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        groups = {g["name"]: g for g in self.optimizer.param_groups}
        for saved in state["param_groups"]:
            groups[saved["name"]].update(saved)

    def _place_states(self, state: dict[str, Any]) -> None:
        by_name = {s.name: s for s in self.all_slots()}
        for name, values in state["optimizer_state"].items():
            slot = by_name[name]
            on_device = set(state["device_keys"][name])
            placed = {}
            for key, value in values.items():
                if torch.is_tensor(value) and key in on_device:
                    value = self.store.adopt(slot, key, value, slot.unit in self.active)
                placed[key] = value
            self.optimizer.state[slot.handle] = placed


def _stepped_bytes(param: torch.Tensor) -> int:
    """Bytes of a weight in the dtype the optimizer steps (fp32 masters for low-precision weights)."""
    return param.numel() * (MASTER_DTYPE.itemsize if _low_precision(param) else param.element_size())


def _states_per_weight(optimizer: torch.optim.Optimizer) -> int:
    """Tensors of a weight's shape the optimizer keeps per weight: AdamW 2, SGD 1 with momentum (else 0),
    Adagrad 1; any other optimizer is counted as AdamW (Adafactor keeps less: an upper bound)."""
    if isinstance(optimizer, torch.optim.SGD):
        return int(any(g.get("momentum", 0) for g in optimizer.param_groups))
    if isinstance(optimizer, torch.optim.Adagrad):
        return 1
    return 2


def _accumulate_into(slot: Slot):
    """Hook: move a low-precision gradient into the fp32 accumulator at once, so
    micro-batches accumulate in fp32 and no bf16 gradient outlives its backward."""

    def hook(param: torch.Tensor) -> None:
        slot.grad = param.grad.float() if slot.grad is None else slot.grad.add_(param.grad)
        param.grad = None

    return hook

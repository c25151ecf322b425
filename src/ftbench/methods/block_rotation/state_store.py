"""Where a block-rotating method keeps each unit's optimizer state and fp32 masters
between visits.

Policies, applied when a unit leaves the active set:

- ``offload`` (HiFT): the unit's device-resident optimizer state and its master are
  copied into host memory and copied back when the unit returns. Every weight
  keeps one host buffer per state tensor for the whole run.
- ``drop`` (BAdam): the state is freed; the master is rebuilt from the weights at
  the next visit, and the optimizer starts that unit afresh.
- ``keep`` (LISA as shipped): the state stays on the device; masters as ``drop``.

On CUDA the copies run on one side stream, non-blocking, from/to pinned memory.
A copy-out first waits for the main stream (the optimizer step that last touched
the unit). A copy-in needs only the host buffers, so it overlaps the forward and
backward of the step that needs it (or, with prefetch_ahead, the previous step);
the main stream waits for it right before the optimizer step. The tensors a
copy-in allocates belong to the side stream's pool, and the side stream always
waits for the main stream before they are freed: the next copy-in reuses the
blocks the copy-out just released, so the device holds one group's state, not
two. On the CPU the same copies run synchronously (host and device are one
memory), which keeps the bookkeeping under test.

The offloaded tensors stay in `optimizer.state` (as host tensors), so measure.py
reports them as host bytes by walking it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ftbench.errors import UserError
from ftbench.measure.meters import host_available_bytes, tensor_bytes

MASTER = "master"  # the key of a weight's master among its offloaded tensors
MASTER_DTYPE = torch.float32


@dataclass(eq=False)
class Slot:
    """One trainable weight: what the forward uses and what the optimizer steps."""

    name: str
    param: nn.Parameter  # the model's weight, used by the forward
    unit: int
    decay: bool
    # An fp32 copy the optimizer steps when the weight is low precision. Empty while
    # the unit is inactive, except under offload, where it then lives on the host.
    master: nn.Parameter | None = None
    grad: torch.Tensor | None = None  # the fp32 gradient, accumulated from the weight's own

    @property
    def handle(self) -> torch.Tensor:
        """The tensor in the optimizer's param groups (the key of its state)."""
        return self.master if self.master is not None else self.param


class HostArena:
    """Host buffers carved from large chunks that are never freed.

    The pinned allocator rounds every request up to a power of two. Chunks are
    powers of two, so that rounding wastes nothing, and one tensor per state
    would otherwise waste up to half its size. Unpinned (a CPU run, where host
    and device are one memory) each buffer is its own chunk of exactly its
    size: a 1 GiB chunk there is 1 GiB of the run's own memory.
    """

    CHUNK_BYTES = 1 << 30
    ALIGN = 64  # bytes: each buffer starts on a cache line, whatever its dtype

    def __init__(self, pin: bool):
        self.pin = pin
        self.chunks: list[torch.Tensor] = []
        self.used: list[int] = []

    def take(self, like: torch.Tensor) -> torch.Tensor:
        """A host buffer with the shape and dtype of `like`."""
        nbytes = tensor_bytes(like)
        need = -(-nbytes // self.ALIGN) * self.ALIGN
        index = next((i for i, c in enumerate(self.chunks) if c.numel() - self.used[i] >= need), None)
        if index is None:
            size = max(self.CHUNK_BYTES, 1 << max(need - 1, 0).bit_length()) if self.pin else need
            self.chunks.append(torch.empty(size, dtype=torch.uint8, pin_memory=self.pin))
            self.used.append(0)
            index = len(self.chunks) - 1
        start = self.used[index]
        self.used[index] += need
        return self.chunks[index][start:start + nbytes].view(like.dtype).view(like.shape)

    def holds(self, tensor: torch.Tensor) -> bool:
        address = tensor.data_ptr()
        return any(c.data_ptr() <= address < c.data_ptr() + c.numel() for c in self.chunks)

    @property
    def nbytes(self) -> int:
        return sum(c.numel() for c in self.chunks)


class StateStore:
    """Applies the state policy when units leave, and makes returning units usable again."""

    def __init__(self, policy: str, device: torch.device, window: int):
        self.policy = policy
        self.device = device
        self.cuda = device.type == "cuda"
        self.optimizer: torch.optim.Optimizer | None = None
        self.arena = HostArena(pin=self.cuda)
        self.buffers: dict[tuple[Slot, str], torch.Tensor] = {}  # (weight, key) -> its host buffer
        self.offloaded: dict[Slot, dict[str, torch.Tensor]] = {}  # weight -> {key: host tensor}
        self.fetched: dict[Slot, tuple[dict[str, torch.Tensor], object]] = {}  # in-flight copy-ins, with their event
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.timings: list[tuple[str, int, object, object]] = []  # (copy | wait, step, start, end), not yet read
        self.totals = {"copy_s": 0.0, "wait_s": 0.0, "h2d_bytes": 0, "d2h_bytes": 0, "switches": 0}
        self.step = 0  # the optimizer step the copies serve (set by the method)
        self.window = window  # steps of the last cycle, whose copy times are kept per step
        self.recent: dict[int, dict[str, float]] = {}

    def check_host_memory(self, slots: list[Slot], states_per_weight: int) -> None:
        """Before anything is pinned: the host must hold every weight's offloaded state and master
        (AdamW on bf16 weights: 4 + 2 x 4 = 12 bytes per parameter). Raises UserError naming what
        is needed and what the host has available (/proc/meminfo MemAvailable)."""
        if self.policy != "offload":
            return
        need = sum(slot.param.numel() * MASTER_DTYPE.itemsize * (states_per_weight + 1) if slot.master is not None
                   else tensor_bytes(slot.param) * states_per_weight for slot in slots)
        have = host_available_bytes()
        if have is not None and need > have:
            raise UserError("method.state_policy", f"offload keeps {need / 2**30:.1f} GiB of optimizer state and "
                            f"masters in {'pinned ' if self.cuda else ''}host memory; this host has "
                            f"{have / 2**30:.1f} GiB available. Use method.state_policy=drop or keep, or a "
                            "host with more memory")

    # -- the three moments of a switch ---------------------------------------------------
    def leave(self, slots: list[Slot]) -> None:
        """The units of `slots` stop training (their last optimizer step is queued)."""
        if not slots:
            return
        self.totals["switches"] += 1
        state = self.optimizer.state if self.optimizer is not None else {}
        if self.policy != "offload":
            for slot in slots:
                if self.policy == "drop":
                    state.pop(slot.handle, None)
                if slot.master is not None:
                    slot.master.data = torch.empty(0, dtype=MASTER_DTYPE, device=slot.param.device)
            return
        with self._side_stream(after_main=True):
            for slot in slots:
                moved = {}
                for key, value in state.get(slot.handle, {}).items():
                    if torch.is_tensor(value) and value.device.type == self.device.type:
                        state[slot.handle][key] = moved[key] = self._copy_out(slot, key, value)
                if slot.master is not None and slot.master.numel():
                    slot.master.data = moved[MASTER] = self._copy_out(slot, MASTER, slot.master.data)
                self.offloaded[slot] = moved

    def fetch(self, slots: list[Slot]) -> None:
        """Start copying offloaded units back to the device (overlaps the main stream)."""
        todo = [s for s in slots if s in self.offloaded and s not in self.fetched]
        if not todo:
            return
        with self._side_stream(after_main=False):
            copies = {slot: {key: self._copy_in(host) for key, host in self.offloaded[slot].items()} for slot in todo}
            done = self._event()
        for slot, tensors in copies.items():
            self.fetched[slot] = (tensors, done)

    def install(self, slots: list[Slot]) -> None:
        """Make the units' state and masters usable by the next optimizer step."""
        self.fetch(slots)  # whatever was not prefetched: copied now
        waits = {id(self.fetched[s][1]): self.fetched[s][1] for s in slots if s in self.fetched}
        if self.cuda and waits:
            main = torch.cuda.current_stream(self.device)
            start = self._event()
            for event in waits.values():
                main.wait_event(event)
            self.timings.append(("wait", self.step, start, self._event()))
        state = self.optimizer.state if self.optimizer is not None else {}
        for slot in slots:
            if slot in self.fetched:
                tensors, _ = self.fetched.pop(slot)
                del self.offloaded[slot]
                for key, value in tensors.items():
                    if key == MASTER:
                        slot.master.data = value
                    else:
                        state[slot.handle][key] = value
            if slot.master is not None and not slot.master.numel():
                slot.master.data = slot.param.detach().to(MASTER_DTYPE, copy=True)
        self._fold()

    def held_tensors(self) -> list[torch.Tensor]:
        """The host arena's chunks (every unit's buffers, whether its state is on the host now or not) and the
        copy-ins not yet installed."""
        return [*self.arena.chunks, *(t for tensors, _ in self.fetched.values() for t in tensors.values())]

    # -- resume -----------------------------------------------------------------------
    def adopt(self, slot: Slot, key: str, value: torch.Tensor, active: bool) -> torch.Tensor:
        """Place a loaded tensor where this policy keeps it: the device, or (offload, inactive) the host."""
        if active or self.policy != "offload":
            return value.to(self.device, copy=True)
        host = self._buffer(slot, key, value)
        host.copy_(value)
        self.offloaded.setdefault(slot, {})[key] = host
        return host

    def is_offloaded(self, slot: Slot, key: str) -> bool:
        return key in self.offloaded.get(slot, {})

    def synchronize(self) -> None:
        """Wait for in-flight copies (before reading host buffers, e.g. for a checkpoint)."""
        if self.cuda:
            self.stream.synchronize()

    def close(self) -> None:
        """Release the host arena and the in-flight copies (the job's end); on CUDA the pinned
        pages go back to the system, not to the caching host allocator."""
        self.synchronize()
        self.buffers, self.offloaded, self.fetched, self.timings = {}, {}, {}, []
        self.arena.chunks, self.arena.used = [], []
        self.optimizer = None
        if self.cuda:
            release_host_cache()

    # -- copies and their timing --------------------------------------------------------
    def _buffer(self, slot: Slot, key: str, like: torch.Tensor) -> torch.Tensor:
        host = self.buffers.get((slot, key))
        if host is None or host.shape != like.shape or host.dtype != like.dtype:
            host = self.buffers[(slot, key)] = self.arena.take(like)
        return host

    def _copy_out(self, slot: Slot, key: str, value: torch.Tensor) -> torch.Tensor:
        host = self._buffer(slot, key, value)
        host.copy_(value, non_blocking=self.cuda)
        if self.cuda:
            value.record_stream(self.stream)  # the main stream may not reuse it before the copy reads it
        self.totals["d2h_bytes"] += tensor_bytes(value)
        return host

    def _copy_in(self, host: torch.Tensor) -> torch.Tensor:
        value = torch.empty_like(host, device=self.device)
        value.copy_(host, non_blocking=self.cuda)
        self.totals["h2d_bytes"] += tensor_bytes(host)
        return value

    @contextmanager
    def _side_stream(self, after_main: bool):
        if not self.cuda:
            yield
            return
        if after_main:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            start = self._event()
            yield
            self.timings.append(("copy", self.step, start, self._event()))

    def _event(self):
        if not self.cuda:
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _fold(self) -> None:
        """Add up the timings whose events have completed (never blocks)."""
        pending = []
        for kind, step, start, end in self.timings:
            if not end.query():
                pending.append((kind, step, start, end))
                continue
            seconds = start.elapsed_time(end) / 1000
            self.totals[f"{kind}_s"] += seconds
            per_step = self.recent.setdefault(step, {"copy_s": 0.0, "wait_s": 0.0})
            per_step[f"{kind}_s"] += seconds
        self.timings = pending
        for step in [s for s in self.recent if s <= self.step - self.window]:
            del self.recent[step]

    def stats(self) -> dict:
        """Bytes moved each way, the host memory held, and (CUDA only) seconds the side
        stream spent copying and the main stream stalled waiting for copies: in total,
        and per step over the last cycle (steady state: every unit has been visited)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self._fold()
        timed = {k: v if self.cuda else None for k, v in self.totals.items() if k.endswith("_s")}
        last = range(self.step + 1 - self.window, self.step + 1)
        for key in ("copy_s", "wait_s"):
            steady = self.cuda and last.start >= self.window  # a whole cycle after the first visits
            timed[f"last_cycle_{key}_per_step"] = (
                sum(self.recent.get(s, {}).get(key, 0.0) for s in last) / self.window if steady else None)
        return {**self.totals, **timed, "host_used_bytes": sum(self.arena.used),
                "host_reserved_bytes": self.arena.nbytes}


def release_host_cache() -> None:
    """Return cached pinned host memory to the system (torch.accelerator.empty_host_cache, torch >= 2.9;
    older versions keep the pages cached for the process's next pinned allocation)."""
    empty = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
    if empty is not None:
        empty()


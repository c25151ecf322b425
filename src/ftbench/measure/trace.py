"""Peak allocated memory on a device without an allocator counter (the CPU).

CUDA's caching allocator counts every byte it hands out; the CPU allocator counts
nothing, and the process RSS mixes in the Python heap, libraries and freed pages
the allocator kept. `LiveTensorPeak` watches every operator through a dispatch
mode instead: each storage an operator creates is counted until it is freed, on
top of what is held when tracing starts: bytes held throughout (the weights),
and storages counted until they are freed (`hold`: masters and optimizer
state, which a method may free mid-trace: BAdam drops a leaving block's). Autograd's saved tensors, gradients and checkpoint recomputes
are all operator outputs, so the traced peak is the figure
`torch.cuda.max_memory_allocated` would give, less kernel workspaces. What was
live at the peak is kept by creating operator (e.g. `aten::mm`: GEMM outputs,
`aten::_to_copy`: dtype casts), which says where a method's memory goes.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorPeak(TorchDispatchMode):
    """Live bytes of the storages created while the mode is on, and their peak.

    A storage is new when no input of the operator that returned it shares it
    (views and in-place results are not allocations). A counted storage is
    uncounted when it is freed, by a weak reference's callback: torch keeps a
    storage's Python object alive as long as the storage itself (its "PyObject
    preservation", which `weakref.ref` on an `UntypedStorage` relies on; torch
    has no public hook on a storage's release), so the callback runs when the
    memory goes, inside the operator or between two, and the count after an
    operator is exact without a pass over every live storage (that pass, once
    per operator, took most of a plan's time). A freed buffer whose address is
    reused is never counted twice.
    """

    def __init__(self, held_bytes: int = 0):
        super().__init__()
        self.held_bytes = held_bytes  # held throughout the trace
        self.held: dict[int, tuple[weakref.ref, int]] = {}  # data_ptr -> (weak ref, bytes): held until freed
        self.held_live_bytes = 0
        self.live: dict[int, tuple[weakref.ref, int, str]] = {}  # data_ptr -> (weak ref, bytes, creating op)
        self.live_bytes = 0
        self.live_by_op: dict[str, int] = {}
        self.peak_new_bytes = 0  # the peak of what `hold` registered and is still alive, plus the live bytes
        self.peak_op: str | None = None  # the operator whose result set the peak
        self.peak_by_op: dict[str, int] = {}  # what was live at the peak, by the operator that created it

    @property
    def peak_bytes(self) -> int:
        return self.held_bytes + self.peak_new_bytes

    @property
    def now_bytes(self) -> int:
        """Bytes held and live now."""
        return self.held_bytes + self.held_live_bytes + self.live_bytes

    def hold(self, tensors) -> None:
        """Count the storages of `tensors` (each once) as held until they are freed."""
        for storage in _storages(tensors):
            ptr = storage.data_ptr()
            if ptr and not self._counted(ptr):
                self.held[ptr] = (weakref.ref(storage, lambda ref, ptr=ptr: self._free_held(ptr, ref)),
                                  storage.nbytes())
                self.held_live_bytes += storage.nbytes()

    def reset_peak(self) -> None:
        self.peak_new_bytes, self.peak_op = self.held_live_bytes + self.live_bytes, None
        self.peak_by_op = dict(self.live_by_op)

    def _counted(self, ptr: int) -> bool:
        """Whether a storage at address `ptr` is counted now. One whose storage is gone but whose callback has
        not run yet (a release torch defers) is uncounted here, so its address can count a new storage."""
        for table, free in ((self.held, self._free_held), (self.live, self._free_live)):
            if ptr in table:
                ref = table[ptr][0]
                if ref() is not None:
                    return True
                free(ptr, ref)
        return False

    def _free_held(self, ptr: int, ref: weakref.ref) -> None:
        if ptr in self.held and self.held[ptr][0] is ref:
            self.held_live_bytes -= self.held.pop(ptr)[1]

    def _free_live(self, ptr: int, ref: weakref.ref) -> None:
        if ptr in self.live and self.live[ptr][0] is ref:
            _, nbytes, op = self.live.pop(ptr)
            self.live_bytes -= nbytes
            self.live_by_op[op] -= nbytes
            if not self.live_by_op[op]:
                del self.live_by_op[op]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {s.data_ptr() for s in _storages((args, kwargs))}
        op = func.name()
        for storage in _storages(out):
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if ptr in inputs or ptr == 0 or self._counted(ptr):
                continue
            self.live[ptr] = (weakref.ref(storage, lambda ref, ptr=ptr: self._free_live(ptr, ref)), nbytes, op)
            self.live_bytes += nbytes
            self.live_by_op[op] = self.live_by_op.get(op, 0) + nbytes
        if self.held_live_bytes + self.live_bytes > self.peak_new_bytes:
            self.peak_new_bytes, self.peak_op = self.held_live_bytes + self.live_bytes, op
            self.peak_by_op = dict(self.live_by_op)
        return out


def _storages(tree) -> list[torch.UntypedStorage]:
    """The storages behind the tensors of a pytree; a sparse tensor's are its indices' and values' (COO),
    or its row pointers', column indices' and values' (CSR)."""
    found = []
    for t in tree_leaves(tree):
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        if t.layout == torch.sparse_csr:
            parts = (t.crow_indices(), t.col_indices(), t.values())
        else:
            parts = (t._indices(), t._values()) if t.is_sparse else (t,)
        found.extend(part.untyped_storage() for part in parts)
    return found

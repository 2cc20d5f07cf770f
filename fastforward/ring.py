"""SlotRing: the batch buffers, and the rule that keeps held batches intact.

::

    ring = [slot 0][slot 1] ... [slot S-1]        S = batches_ahead + 3
    slot = {buffer key: (batch_size, *shape) array per allocation}

Decoders and operations write each batch into the buffers of one slot; the
batch handed to the user is made of views of those buffers (NumPy views, and
torch tensors made with ``torch.from_numpy``, keep their buffer alive).

The contract: **a buffer is refilled only when nothing outside the ring
refers to it any more.** Before reusing a slot, the ring checks each buffer's
reference count: a slot whose batch (or any tensor or view made from it) is
still alive, in the user's hands or in the loader's queue, is skipped. When
every slot is held, a fresh slot is allocated, and the oldest held one leaves
the ring (the user's references keep its memory alive, unchanged, until they
are dropped). So holding batches never corrupts them and never blocks the
loader; it costs one slot of memory per batch held.

Nothing is shared between processes: the loader's workers are threads (the
kernels release the GIL), so the slots are ordinary process memory.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .pipeline.allocation_query import AllocationQuery

Layout = dict[str, AllocationQuery | Sequence[AllocationQuery]]


class Slot:
    """One batch's buffers."""

    def __init__(self, batch_size: int, pinned: bool = False) -> None:
        self.batch_size = batch_size
        self.pinned = pinned  # page-locked host memory, for asynchronous copies to a GPU
        self.fence: Any = None  # an event to wait for before refilling (a copy in flight)
        self.layout: Layout = {}
        self._arrays: list[Any] = []  # every buffer, once
        self._owners: list[Any] = []  # the base-most array of each (what views refer to)
        self._baseline: list[int] = []  # their reference counts with no view alive
        self._where: dict[str, int | tuple[int, ...]] = {}

    def fit(self, layout: Layout) -> None:
        """Allocate the buffers *layout* asks for (kept when shapes are unchanged)."""
        if layout == self.layout:
            return
        arrays: list[Any] = []
        where: dict[str, int | tuple[int, ...]] = {}
        for key, query in layout.items():
            old = self.layout.get(key)
            kept = self.get(key) if old == query else None
            queries = (query,) if isinstance(query, AllocationQuery) else tuple(query)
            values = (kept,) if isinstance(query, AllocationQuery) and kept is not None else kept
            positions = []
            for k, q in enumerate(queries):
                arrays.append(values[k] if values is not None else self._allocate(q))
                positions.append(len(arrays) - 1)
            where[key] = positions[0] if isinstance(query, AllocationQuery) else tuple(positions)
            del kept, values
        self._arrays, self._where, self.layout = arrays, where, dict(layout)
        # Views of an array keep its base-most array alive (NumPy collapses
        # bases), so that is the one to watch; its count now is the baseline.
        self._owners = [_owner(a) for a in arrays]
        owners = self._owners
        self._baseline = [sys.getrefcount(owners[i]) for i in range(len(owners))]

    def get(self, key: str) -> Any:
        """The buffer (or tuple of buffers) for *key*."""
        where = self._where[key]
        if isinstance(where, tuple):
            return tuple(self._arrays[i] for i in where)
        return self._arrays[where]

    def _allocate(self, query: AllocationQuery) -> Any:
        if not is_host(query):
            return None  # device buffers are new for every batch (see fastforward.device)
        shape, dtype = (self.batch_size, *query.shape), host_dtype(query.dtype)
        if self.pinned:
            from .device import pinned_empty

            return pinned_empty(shape, dtype)
        return np.empty(shape, dtype)

    def is_held(self) -> bool:
        """Whether anything outside the slot still refers to one of its buffers."""
        owners, baseline = self._owners, self._baseline
        return any(owners[i] is not None and sys.getrefcount(owners[i]) > baseline[i]
                   for i in range(len(owners)))

    @property
    def nbytes(self) -> int:
        """Bytes of all buffers."""
        return sum(int(getattr(a, "nbytes", 0)) for a in self._arrays)


def _owner(array: Any) -> Any:
    """The base-most NumPy array behind *array* (None for no buffer)."""
    while isinstance(getattr(array, "base", None), np.ndarray):
        array = array.base
    return array


def is_host(query: AllocationQuery) -> bool:
    """Whether *query* asks for host memory (kept in the slot) rather than device memory."""
    return query.device is None or str(query.device) == "cpu"


def host_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype of a host buffer for *dtype* (NumPy or torch).

    Host buffers are always NumPy arrays, so the ring can see who holds them;
    a torch dtype without a NumPy twin (bfloat16) gets an unsigned integer of
    its size, viewed as the torch dtype when handed out.
    """
    if isinstance(dtype, np.dtype) or not type(dtype).__module__.startswith("torch"):
        return np.dtype(dtype)
    from .fields.ndarray import torch_to_numpy_dtype

    try:
        return torch_to_numpy_dtype(dtype)
    except ValueError:
        return np.dtype(f"u{dtype.itemsize}")


class SlotRing:
    """A fixed number of reusable slots; never blocks (see the module docstring)."""

    def __init__(self, num_slots: int, batch_size: int) -> None:
        self.batch_size = batch_size
        self.num_slots = num_slots
        self.pinned = False  # set before the first acquire when a pipeline copies to a GPU
        self._free: list[Slot] = [Slot(batch_size) for _ in range(num_slots)]
        self._lock = threading.Lock()
        self.replaced = 0  # slots given up because the user still held them

    def acquire(self, layout: Layout) -> Slot:
        """A slot whose buffers nothing else refers to, shaped for *layout*."""
        with self._lock:
            for position, slot in enumerate(self._free):
                if not slot.is_held():
                    del self._free[position]
                    break
            else:
                slot = Slot(self.batch_size, self.pinned)
                if len(self._free) >= self.num_slots:
                    # the user holds them all: let the oldest go (their references
                    # keep it alive, unchanged) so the ring stays its size
                    del self._free[0]
                    self.replaced += 1
        if slot.pinned != self.pinned:
            slot.pinned, slot.layout = self.pinned, {}  # allocate again, pinned
        if slot.fence is not None:
            slot.fence.synchronize()  # the last copy out of these buffers has finished
            slot.fence = None
        slot.fit(layout)
        return slot

    def release(self, slot: Slot) -> None:
        """Give a slot back once its batch has been handed over."""
        with self._lock:
            self._free.append(slot)

    def clear(self) -> None:
        """Drop every slot (memory returns once the user drops their batches)."""
        with self._lock:
            self._free.clear()

"""The batch buffers (slots), and the rule that keeps held batches intact.

::

    SlotPool: free slots [slot 0][slot 1] ... [slot S-1]     S = batches_ahead + 3
    slot    = {buffer key: (batch_size, *shape) array per allocation}
    shared slot (process workers): every buffer of the slot in one memfd segment,
              [key a | pad to 4 KiB | key b | ...], mapped by the loader and by
              each worker process that writes into it

The protocol: a batch **acquires** a slot (shaped for the epoch's layout), its
decoders and operations **fill** it (worker processes write straight into a
shared slot), the batch made of views of its buffers is **published** to the
consumer, and the slot is **released** back to the pool at once. Decoders and
operations write each batch into the buffers of one slot; the batch handed to
the user is made of views of those buffers (NumPy views, and torch tensors
made with ``torch.from_numpy``, keep their buffer alive).

The fence: **a buffer is refilled only when nothing outside the pool refers
to it any more.** Before reusing a released slot, ``acquire`` checks each
buffer's reference count in the loader's process: a slot whose batch (or any
tensor or view made from it) is still alive, in the user's hands or in the
loader's queue, is skipped. When every slot is held, a fresh slot is
allocated and the oldest held one leaves the pool (the user's references keep
its memory alive, unchanged, until they are dropped). So holding batches
never corrupts them and never blocks the loader; it costs one slot of memory
per batch held. Worker processes keep no reference: they write a slot only
while the loader's process has it acquired for that batch.

Shared segments vanish with their last holder: a memfd (or a file unlinked at
once), never a name in ``/dev/shm``, so nothing is left behind after a crash
or SIGKILL. The loader's process closes its descriptor when the slot goes;
the mapping lives while views of it do. Workers are told to unmap segments
the loader dropped (``SlotPool.dropped``).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .pipeline.allocation_query import AllocationQuery
from .utils import anonymous_shared_fd, map_shared, private_empty

Layout = dict[str, AllocationQuery | Sequence[AllocationQuery]]
Offsets = dict[str, list[tuple[int, tuple[int, ...], np.dtype]]]
"""Where each buffer of a shared slot lies: ``{key: [(offset, shape, dtype)]}``."""

HEAP, PINNED, SHARED = "heap", "pinned", "shared"
ALIGN = 4096  # buffers of a shared segment start on page boundaries

_segment_ids = itertools.count(1)


class Segment:
    """A shared-memory segment: a descriptor to send to workers and its map here."""

    def __init__(self, nbytes: int, on_drop: Any = None) -> None:
        self.id = next(_segment_ids)
        self.nbytes = max(int(nbytes), 1)
        self.fd = anonymous_shared_fd(self.nbytes, "fastforward-slot")
        try:
            # every buffer is a view of this one array: the slot's fence watches it;
            # the map keeps no descriptor, so batches kept cost none
            self.whole = map_shared(self.fd, self.nbytes)
        except BaseException:
            os.close(self.fd)
            raise
        # the descriptor closes with this object; the map lives while views of it do
        self._finalizer = weakref.finalize(self, _drop_segment, self.fd, self.id, on_drop)

    def array(self, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A writable view of the segment at *offset*."""
        count = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return self.whole[offset : offset + count].view(dtype).reshape(shape)


def _drop_segment(fd: int, segment_id: int, on_drop: Any) -> None:
    os.close(fd)
    if on_drop is not None:
        on_drop(segment_id)


class Slot:
    """One batch's buffers."""

    def __init__(self, batch_size: int, kind: str = HEAP, on_drop: Any = None) -> None:
        self.batch_size = batch_size
        self.kind = kind  # HEAP, PINNED (page-locked, for copies to a GPU) or SHARED
        self.pinned = kind == PINNED
        self.fence: Any = None  # an event to wait for before refilling (a copy in flight)
        self.layout: Layout = {}
        self.segment: Segment | None = None  # SHARED: the memory every buffer lives in
        self.pin_shared = False  # SHARED and page-locked (registered with CUDA)
        # the pipelines whose host buffers are page-locked (PINNED, or SHARED and
        # pin_shared): those the CUDA stage copies to a GPU; the others' outputs are
        # ordinary memory, which a user's own non_blocking copy stages before it
        # returns (a page-locked one would be read later, maybe after a refill)
        self.pin_pipelines: frozenset[str] = frozenset()
        self._on_drop = on_drop
        self._arrays: list[Any] = []  # every buffer, once
        self._owners: list[Any] = []  # what the fence watches: each buffer, its base-most array
        self._baseline: list[int] = []  # their reference counts with no view alive
        self._where: dict[str, int | tuple[int, ...]] = {}
        self._offsets: Offsets = {}

    def fit(self, layout: Layout) -> None:
        """Allocate the buffers *layout* asks for (kept when the layout is unchanged)."""
        if layout == self.layout:
            return
        if self.kind == SHARED:
            self._fit_shared(layout)
        else:
            self._fit_private(layout)
        # Views of an array keep its base-most array alive (NumPy collapses
        # bases), so that is the one to watch, and the buffer itself where it is
        # another object (a shared slot's buffers are views of its segment: a
        # decoder's output() may hand out the buffer itself); their counts now
        # are the baseline.
        self._owners = owners = _watched(self._arrays)
        self._baseline = [sys.getrefcount(owners[i]) for i in range(len(owners))]

    def _fit_private(self, layout: Layout) -> None:
        arrays: list[Any] = []
        where: dict[str, int | tuple[int, ...]] = {}
        for key, query in layout.items():
            old = self.layout.get(key)
            kept = self.get(key) if old == query else None
            queries = (query,) if isinstance(query, AllocationQuery) else tuple(query)
            values = (kept,) if isinstance(query, AllocationQuery) and kept is not None else kept
            positions = []
            for k, q in enumerate(queries):
                arrays.append(values[k] if values is not None else self._allocate(q, key))
                positions.append(len(arrays) - 1)
            where[key] = positions[0] if isinstance(query, AllocationQuery) else tuple(positions)
            del kept, values
        self._arrays, self._where, self.layout = arrays, where, dict(layout)

    def _fit_shared(self, layout: Layout) -> None:
        """Carve every host buffer out of one new segment (device buffers stay None)."""
        plan: list[tuple[str, int | None, tuple[int, ...] | None, np.dtype | None]] = []
        size, pinned = 0, None
        # the buffers to page-lock first: one registered range, ending on a page
        items = sorted(layout.items(), key=lambda item: not self._pins(item[0]))
        for key, query in items:
            if pinned is None and not self._pins(key):
                pinned = size
            for q in ((query,) if isinstance(query, AllocationQuery) else tuple(query)):
                if not is_host(q):
                    plan.append((key, None, None, None))
                    continue
                batch_shape, host = (self.batch_size, *q.shape), host_dtype(q.dtype)
                plan.append((key, size, batch_shape, host))
                nbytes = int(np.prod(batch_shape, dtype=np.int64)) * host.itemsize
                size += -(-max(nbytes, 1) // ALIGN) * ALIGN
        pinned = size if pinned is None else pinned
        segment = Segment(size, self._on_drop)
        if self.pin_shared and pinned:
            from .device import pin_segment

            pin_segment(segment, pinned)
        arrays: list[Any] = []
        positions: dict[str, list[int]] = collections.defaultdict(list)
        offsets: Offsets = collections.defaultdict(list)
        for key, offset, shape, dtype in plan:
            if offset is None:
                arrays.append(None)
            else:
                assert shape is not None
                assert dtype is not None
                arrays.append(segment.array(offset, shape, dtype))
                offsets[key].append((offset, shape, dtype))  # pickled: structured dtypes too
            positions[key].append(len(arrays) - 1)
        self.segment = segment
        self._arrays, self.layout = arrays, dict(layout)
        self._where = {key: (positions[key][0] if isinstance(query, AllocationQuery)
                             else tuple(positions[key])) for key, query in layout.items()}
        self._offsets = dict(offsets)

    def describe(self) -> tuple[int, int, Offsets]:
        """A shared slot as a worker maps it: ``(segment id, nbytes, {key: [(offset,
        shape, dtype)]})``."""
        assert self.segment is not None, "only shared slots are described"
        return self.segment.id, self.segment.nbytes, self._offsets

    def get(self, key: str) -> Any:
        """The buffer (or tuple of buffers) for *key*."""
        where = self._where[key]
        if isinstance(where, tuple):
            return tuple(self._arrays[i] for i in where)
        return self._arrays[where]

    def _pins(self, key: str) -> bool:
        """Whether buffer *key* (``pipeline/step``) is page-locked."""
        return ((self.pinned or self.pin_shared)
                and key.rsplit("/", 1)[0] in self.pin_pipelines)

    def _allocate(self, query: AllocationQuery, key: str) -> Any:
        if not is_host(query):
            return None  # device buffers are new for every batch (see fastforward.device)
        shape, dtype = (self.batch_size, *query.shape), host_dtype(query.dtype)
        if self._pins(key):
            from .device import pinned_empty

            return pinned_empty(shape, dtype)
        return private_empty(shape, dtype)

    def is_held(self) -> bool:
        """Whether anything outside the slot still refers to one of its buffers."""
        owners, baseline = self._owners, self._baseline
        return any(owners[i] is not None and sys.getrefcount(owners[i]) > baseline[i]
                   for i in range(len(owners)))

    @property
    def nbytes(self) -> int:
        """Bytes of all buffers."""
        return sum(int(getattr(a, "nbytes", 0)) for a in self._arrays)


def _watched(arrays: list[Any]) -> list[Any]:
    """What the fence of a slot with *arrays* watches: each buffer and its base-most
    array, once each (a function of its own: its locals hold no reference after)."""
    watched: dict[int, Any] = {}
    for array in arrays:
        for obj in (_owner(array), array):
            if obj is not None:
                watched.setdefault(id(obj), obj)
    return list(watched.values())


def _owner(array: Any) -> Any:
    """The base-most NumPy array behind *array* (None for no buffer)."""
    while isinstance(getattr(array, "base", None), np.ndarray):
        array = array.base
    return array


def layout_nbytes(layout: Layout, batch_size: int) -> int:
    """Bytes of host memory a slot of *batch_size* rows takes for *layout*: one
    batch of every buffer the pipelines declare (each output, and each
    operation's own), as its buffers are allocated."""
    return sum(nbytes for *_, nbytes in _host_buffers(layout, batch_size))


def _host_buffers(layout: Layout, batch_size: int
                  ) -> Iterator[tuple[str, tuple[int, ...], np.dtype, int]]:
    """Each host buffer a slot of *batch_size* rows holds for *layout*: its layout
    key, its shape, dtype and bytes."""
    for key, query in layout.items():
        for q in ((query,) if isinstance(query, AllocationQuery) else tuple(query)):
            if is_host(q):
                shape = (batch_size, *(int(d) for d in q.shape))
                dtype = host_dtype(q.dtype)
                yield key, shape, dtype, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def largest_buffer(layout: Layout, batch_size: int) -> tuple[str, tuple[int, ...], np.dtype, int]:
    """The largest host buffer of a slot: its layout key (``'image/decoder'``), its
    shape for a batch, dtype and bytes. The layout must hold a host buffer."""
    return max(_host_buffers(layout, batch_size), key=lambda buffer: buffer[3])


def is_host(query: AllocationQuery) -> bool:
    """Whether *query* asks for host memory (kept in the slot) rather than device memory."""
    return query.device is None or str(query.device) == "cpu"


def host_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype of a host buffer for *dtype* (NumPy or torch).

    Host buffers are always NumPy arrays, so the pool can see who holds them;
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


class SlotPool:
    """Released slots, reused once nothing refers to them; never blocks (see the
    module docstring)."""

    def __init__(self, num_slots: int, batch_size: int) -> None:
        self.batch_size = batch_size
        self.num_slots = num_slots
        self.kind = HEAP  # set before the first acquire (PINNED for a CUDA stage, SHARED
        self.pin_shared = False  # for process workers, pinned too with a CUDA stage)
        self.pin_pipelines: frozenset[str] = frozenset()  # see Slot.pin_pipelines
        self._free: list[Slot] = [Slot(batch_size) for _ in range(num_slots)]
        self._lock = threading.Lock()
        self.replaced = 0  # slots given up because the user still held them
        self.dropped: collections.deque[int] = collections.deque()
        """Ids of shared segments this process has let go (workers may unmap them)."""

    def acquire(self, layout: Layout, rows: int | None = None) -> Slot:
        """A slot whose buffers nothing else refers to, shaped for *layout*, of
        *rows* samples (default: the pool's ``batch_size``; a loader's batch size
        may change between epochs)."""
        rows = self.batch_size if rows is None else rows
        let_go = None
        with self._lock:
            for position, slot in enumerate(self._free):
                if not slot.is_held():
                    del self._free[position]
                    break
            else:
                slot = self._new_slot(rows)
                if len(self._free) >= self.num_slots:
                    # the user holds them all: let the oldest go (their references
                    # keep it alive, unchanged) so the pool stays its size
                    let_go = self._free.pop(0)
                    self.replaced += 1
        if let_go is not None and let_go.fence is not None:
            # buffers the user does not hold (a pinned image buffer, when the user
            # holds its labels) go back to their allocator: once copied out of
            let_go.fence.synchronize()
        if slot.fence is not None:
            slot.fence.synchronize()  # the last copy out of these buffers has finished
            slot.fence = None  # (before buffers of another kind replace them)
        if (slot.kind, slot.pin_shared, slot.pin_pipelines, slot.batch_size) != (
                self.kind, self.pin_shared, self.pin_pipelines, rows):
            slot.__init__(rows, self.kind, self.dropped.append)  # type: ignore[misc]
            slot.pin_shared, slot.pin_pipelines = self.pin_shared, self.pin_pipelines
        slot.fit(layout)
        return slot

    def _new_slot(self, rows: int) -> Slot:
        slot = Slot(rows, self.kind, self.dropped.append)
        slot.pin_shared, slot.pin_pipelines = self.pin_shared, self.pin_pipelines
        return slot

    def release(self, slot: Slot) -> None:
        """Give a slot back once its batch has been published (handed towards the
        consumer): from now on only the user's references fence it."""
        with self._lock:
            self._free.append(slot)

    def clear(self) -> None:
        """Drop every slot (memory returns once the user drops their batches), after
        the copies out of them have finished: a shared slot's memory is unregistered
        from CUDA and unmapped when it goes, and a copy still reading it would read
        freed pages."""
        with self._lock:
            slots, self._free = self._free, []
        for slot in slots:
            if slot.fence is not None:
                # CUDA torn down already (at exit): no copy runs
                with contextlib.suppress(RuntimeError):
                    slot.fence.synchronize()
                slot.fence = None

"""``os_cache=False``: each batch's payloads are read ahead of use into memory
of its own, with ``pread``, and released when the batch is done.

The byte ranges of a batch are sorted and coalesced (``read_starts``: a gap of
at most 4 KiB, or at most 64 KiB before a payload at least as large, is read
across), so the pages of a QUASI_RANDOM or SEQUENTIAL batch are read nearly
sequentially. The file's pages are then
dropped from the kernel's page cache (``POSIX_FADV_DONTNEED``), so a
dataset larger than RAM does not push everything else out. The kernel drops
only whole pages inside the range it is given, so the range is rounded out to
the OS page size (else the partial pages at both ends of every read stay: 13%
of a file after a RANDOM epoch, more with small samples), and the file is
opened for random access (``POSIX_FADV_RANDOM``: no readahead, whose pages
past a read's end are not dropped: 68% of a file after a SEQUENTIAL epoch).
Dropping a page that another read still needs costs only that read going to
the disk again: every read copies into memory of its own. What the Reader read
on opening the file (header, metadata, allocation table), now in arrays of its
own, is dropped when the manager starts. After an epoch over a file dropped
from the cache first, nothing of it is left cached but the pages another user
of the file brought in meanwhile (``tests/test_process_cache.py``).

Memory bound: the loader keeps at most ``batches_ahead + 1`` batches in
flight, so this manager holds at most ``batches_ahead + 1`` batches' reads,
each at most twice the batch's payload bytes plus 4 KiB per payload (the gaps
its reads bridge), whatever the order: RANDOM included (FFCV's process cache
needs the whole dataset for RANDOM).

The reads go into buffers that are reused (``ReadBuffers``): private anonymous
maps, each returned to a free list when the last view of a batch's read is
gone. A new array for each batch came from the C heap, and glibc kept what
other threads freed: with thread workers, 30 epochs of a 1,000-image file left
the process 200 MB larger, and closing the loader gave none of it back. The
maps are unmapped when the manager closes.
"""

from __future__ import annotations

import collections
import mmap
import os
import threading
import weakref
from collections.abc import Collection
from typing import Any

import numpy as np

from ...reader import Reader
from ...utils import private_map
from ..base import BatchData, MemoryContext, MemoryManager

ProcessCacheContext = MemoryContext
"""FFCV's name for the context of ``ProcessCacheManager.schedule_epoch``."""

GAP = 64 << 10
"""The largest gap between two payloads that one read bridges, where the payload
after it is as large (a gap of at most ``PAGE_GAP`` is bridged whatever it is)."""
PAGE_GAP = 4 << 10


def read_starts(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Where each new read begins among byte ranges sorted by start: a gap to the
    furthest end so far is bridged (read and held) when it is at most
    ``PAGE_GAP``, or at most both ``GAP`` and the size of the range after it, so
    that the bytes bridged are never more than the payload beside them plus
    ``PAGE_GAP`` per gap. (Bridging every gap under ``GAP`` read and held 50×
    the payload of a RANDOM batch of 100-byte samples.)"""
    new = np.ones(len(starts), bool)
    if len(starts) > 1:
        gap = starts[1:] - np.maximum.accumulate(ends)[:-1]
        bridged = np.maximum(PAGE_GAP, np.minimum(GAP, ends[1:] - starts[1:]))
        new[1:] = gap > bridged
    return new


class ReadBuffers:
    """Reused buffers for reads: ``take(nbytes)`` hands out a uint8 array of
    *nbytes* over a private anonymous map, which goes back to the free list once
    no view of the array is left (from whichever thread drops the last one).

    A free map too small for a request is unmapped and a larger one made, with a
    quarter to spare, so that batches of varying size settle on maps that fit
    them all. Maps are made only when none is free, so there are never more than
    were once in use together. No lock: the free list is a deque, whose
    ``append`` and ``pop`` are atomic, and which a finalizer may append to while
    another thread (or a garbage collection inside ``take``) pops.
    """

    def __init__(self) -> None:
        self._free: collections.deque[mmap.mmap] = collections.deque()
        self.closed = False
        self.made = 0  # maps made, for tests and for measuring

    def take(self, nbytes: int) -> np.ndarray:
        """A writable uint8 array of *nbytes*, its contents undefined."""
        if nbytes <= 0:
            return np.empty(0, np.uint8)
        while True:
            try:
                memory = self._free.pop()  # the most recently used: warm in the caches
            except IndexError:
                size = nbytes + nbytes // 4
                memory = private_map(size + -size % mmap.PAGESIZE)
                self.made += 1
                break
            if len(memory) >= nbytes:
                break
            del memory  # too small: unmapped (nothing else refers to it)
        array = np.frombuffer(memory, np.uint8, count=nbytes)
        weakref.finalize(array, self._give_back, memory).atexit = False
        return array

    def _give_back(self, memory: mmap.mmap) -> None:
        if not self.closed:
            self._free.append(memory)

    def close(self) -> None:
        """Unmap the free maps; those still in use are unmapped when their last view goes."""
        self.closed = True
        self._free.clear()


def _reopen(reader: Reader) -> int:
    """A descriptor of the file *reader* opened, whatever its name names now (a file
    renamed over it, or none), with an open file of its own where the platform
    allows (Linux's ``/proc/self/fd``): ``POSIX_FADV_RANDOM`` is then this
    manager's alone, not the reader's, whose descriptor other processes may share
    (a loader hands it to its worker processes). Elsewhere, a duplicate of the
    reader's."""
    fd = reader.fileno()
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    except OSError:  # no /proc here
        return os.dup(fd)


class ProcessCacheManager(MemoryManager):
    """Batches are read ahead into private buffers; see the module docstring."""

    def __init__(self, reader: Reader, verify_checksums: bool = False) -> None:
        super().__init__(reader, verify_checksums)
        self._fd = _reopen(reader)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
            # the Reader has what it read on opening the file in arrays of its own: the
            # header, descriptors and metadata (with the kernel's readahead after them, up
            # to the first payload) and the allocation table at the end
            table = reader.alloc_table
            first_payload = int(table["ptr"].min()) if len(table) else int(
                reader.header["alloc_table_ptr"])
            self._drop(0, first_payload)
            self._drop(int(reader.header["alloc_table_ptr"]), os.fstat(self._fd).st_size)
        self._lock = threading.Lock()
        self.buffers = ReadBuffers()
        self.live_bytes = 0  # bytes of fetched batches still in memory
        self.peak_bytes = 0

    def fetch(self, indices: np.ndarray, fields: Collection[int] | None = None) -> BatchData:
        self.check_pages(indices)
        fields = [i for i in self.offsets if fields is None or i in fields]
        if not fields:
            return BatchData({})
        starts = np.concatenate([self.offsets[i][indices] for i in fields])
        sizes = np.concatenate([self.sizes[i][indices] for i in fields])
        order = np.argsort(starts, kind="stable")
        s, e = starts[order].astype(np.int64), (starts[order] + sizes[order]).astype(np.int64)
        new = read_starts(s, e)
        group = np.cumsum(new) - 1
        read_start = s[new]
        read_end = np.maximum.reduceat(e, np.flatnonzero(new))
        lengths = read_end - read_start
        base = np.concatenate(([0], np.cumsum(lengths)))
        buffer = self.buffers.take(int(base[-1]))
        for k in range(len(read_start)):
            self._pread_into(buffer[base[k] : base[k + 1]], int(read_start[k]))
        local = np.empty(len(starts), np.uint64)
        local[order] = (s - read_start[group] + base[group]).astype(np.uint64)
        data = BatchData(nbytes=buffer.nbytes)
        n = len(indices)
        for k, i in enumerate(fields):
            data.fields[i] = (buffer, local[k * n : (k + 1) * n], sizes[k * n : (k + 1) * n])
        self._account(buffer.nbytes)
        # counted until the buffer is freed, however the batch ends (done, failed, cancelled)
        weakref.finalize(buffer, self._account, -buffer.nbytes)
        return data

    def read_page(self, page: int) -> Any:
        """Page *page* read with ``pread`` (then dropped from the page cache, as
        the batches' reads are), for its checksum."""
        start, end = self.reader.page_range(page)
        out = self.buffers.take(end - start)
        self._pread_into(out, start)
        return out

    def _account(self, delta: int) -> None:
        with self._lock:
            self.live_bytes += delta
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def _pread_into(self, out: np.ndarray, offset: int) -> None:
        view = out.data
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n == 0:
                raise OSError(f"{self.reader.fname}: unexpected end of file at {offset + done}")
            done += n
        if hasattr(os, "posix_fadvise"):
            self._drop(offset, offset + len(view))

    def _drop(self, start: int, end: int) -> None:
        """Drop ``[start, end)`` of the file from the page cache, with the partial OS
        pages at its ends (the kernel drops only the whole pages inside a range)."""
        start -= start % mmap.PAGESIZE
        end += -end % mmap.PAGESIZE
        if end > start:
            os.posix_fadvise(self._fd, start, end - start, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        self.buffers.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

"""Gather variable-length records into the rows of a batch buffer.

Compiled because it runs once per batch per array/bytes field, over every
sample, and a Python loop of slice copies holds the GIL for all of it.

Memory touched: reads ``sizes[i]`` bytes at ``offsets[i]`` of ``src`` (a
memory map of the file, or a batch's prefetched bytes), writes every byte of
``out``'s first ``n`` rows: the record, then zeros to the end of the row, so
no stale bytes of an earlier batch can show through.

The copy itself is ``ff_gather`` in ``copier.h`` (it prefetches the pages of
records a few places ahead: on 32×32 images in random order, 1.9M → 2.6M
records/s on one thread). ``Copier`` runs the same copy on threads of its
own, so the thread that prepares batches does not wait for it.
"""

import collections
import os
import threading

cimport cython
from libc.stdint cimport uint8_t, uint64_t, int64_t
from libc.stdlib cimport free, malloc
from posix.unistd cimport getpid


cdef extern from "copier.h":
    ctypedef struct ff_copy_job:
        const uint8_t *src
        const uint64_t *offsets
        const uint64_t *sizes
        uint8_t *out
        uint64_t width
        int64_t n
        int parts
        int left
    ctypedef struct ff_copier:
        pass
    enum: FF_COPIER_MAX_THREADS
    void ff_gather(const uint8_t *src, const uint64_t *offsets, const uint64_t *sizes,
                   uint8_t *out, uint64_t width, int64_t n) nogil
    int ff_copier_start(ff_copier *c, int threads) nogil
    uint64_t ff_copier_submit(ff_copier *c, ff_copy_job job) nogil
    int ff_copier_wait(ff_copier *c, uint64_t ticket) nogil
    int ff_copier_wait_for(ff_copier *c, uint64_t ticket, double seconds) nogil
    uint64_t ff_copier_completed(ff_copier *c) nogil
    uint64_t ff_copier_submitted(ff_copier *c) nogil
    void ff_copier_stop(ff_copier *c) nogil
    void ff_copier_destroy(ff_copier *c) nogil


cdef ff_copy_job _job(const uint8_t[::1] src, const uint64_t[::1] offsets,
                      const uint64_t[::1] sizes, uint8_t[:, ::1] out) except *:
    """The checked job for a gather (raises on a record that does not fit)."""
    cdef Py_ssize_t n = offsets.shape[0], width = out.shape[1], i
    cdef uint64_t end = <uint64_t>src.shape[0]
    cdef ff_copy_job job
    if sizes.shape[0] != n:
        raise ValueError(f"{n} offsets but {sizes.shape[0]} sizes")
    if n > out.shape[0]:
        raise ValueError(f"out has {out.shape[0]} rows, need {n}")
    for i in range(n):
        if sizes[i] > <uint64_t>width:
            raise ValueError(f"record {i} has {sizes[i]} bytes, the row holds {width}")
        if offsets[i] > end or sizes[i] > end - offsets[i]:
            raise IndexError(f"record {i} ends past the end of the source")
    # with no source bytes every record is empty: nothing is read at src
    job.src = &src[0] if end else NULL
    job.offsets = &offsets[0] if n else NULL
    job.sizes = &sizes[0] if n else NULL
    job.out = &out[0, 0] if out.shape[0] and width else NULL
    job.width = <uint64_t>width
    job.n = n if width else 0  # rows of no bytes: nothing to write
    job.parts = job.left = 1  # ff_copier_submit splits it
    return job


def gather_into(const uint8_t[::1] src not None, const uint64_t[::1] offsets not None,
                const uint64_t[::1] sizes not None, uint8_t[:, ::1] out not None):
    """Copy record ``i`` (``sizes[i]`` bytes at ``offsets[i]``) into row ``i`` of *out*, zero-padded."""
    cdef ff_copy_job job = _job(src, offsets, sizes, out)  # checked with the GIL ...
    with nogil:  # ... copied without it
        ff_gather(job.src, job.offsets, job.sizes, job.out, job.width, job.n)
    return offsets.shape[0]


@cython.no_gc_clear  # __dealloc__ needs _held: copies may still be writing
@cython.auto_pickle(False)  # threads and C state: never pickled (TypeError)
cdef class Copier:
    """``gather_into`` on background threads (POSIX threads that never take the GIL).

    ``Copier(threads)``: a copy of more than 64 KiB is split into up to
    *threads* ranges of records, copied at once. ``submit`` checks the
    records, queues the copy and returns a ticket at once; ``wait(ticket)``
    returns once that copy (and every one before it) has finished. Until then
    the copier holds the arrays it was given, so their memory stays alive and
    a ring slot being written stays held; do not change them meanwhile.
    ``close()`` finishes the queued copies and ends the threads. A copier
    belongs to the process that made it: in a forked child, its methods raise
    (its copies run in the parent's memory); make a new one there.
    """

    cdef ff_copier *_c
    cdef object _held  # (ticket, arrays) of copies not known to be finished
    cdef object _held_lock
    cdef readonly object pid
    cdef readonly bint closed
    cdef readonly int threads

    def __cinit__(self, int threads=1):
        if threads < 1:
            raise ValueError(f"a copier needs at least one thread, got {threads}")
        self.threads = min(threads, FF_COPIER_MAX_THREADS)
        self._c = <ff_copier *>malloc(sizeof(ff_copier))
        if self._c is NULL:
            raise MemoryError()
        cdef int err = ff_copier_start(self._c, self.threads)
        if err:
            free(self._c)
            self._c = NULL
            raise OSError(err, f"fastforward could not start a copy thread: {os.strerror(err)}")
        self._held = collections.deque()
        self._held_lock = threading.Lock()
        self.pid = getpid()
        self.closed = False

    cdef _own(self):
        if getpid() != self.pid:
            raise RuntimeError("this copier's threads belong to the parent process (it was "
                               "forked): its copies never run here; make a new Copier")

    def submit(self, src, offsets, sizes, out) -> int:
        """Queue ``gather_into(src, offsets, sizes, out)``; returns its ticket."""
        self._own()
        if self.closed:
            raise RuntimeError("the copier is closed")
        # the buffers stay exported while the copy may run: a bytearray, say,
        # cannot be resized (and its memory moved) under it, and a ring slot being
        # written stays held (each view holds the object it was taken from)
        cdef const uint8_t[::1] s = src
        cdef const uint64_t[::1] o = offsets
        cdef const uint64_t[::1] z = sizes
        cdef uint8_t[:, ::1] w = out
        cdef ff_copy_job job = _job(s, o, z, w)
        cdef uint64_t ticket
        self._prune()
        with nogil:  # waits only while 64 copies are queued
            ticket = ff_copier_submit(self._c, job)
        if ticket:  # 0: the copier was closing, and the copy ran here
            with self._held_lock:
                self._held.append((ticket, (s, o, z, w)))
        return ticket

    def wait(self, uint64_t ticket, timeout=None) -> None:
        """Return once the copy with *ticket*, and every one before it, has finished;
        ``TimeoutError`` if that takes more than *timeout* seconds (None: no limit)."""
        self._own()
        cdef int err
        cdef double seconds = -1.0 if timeout is None else max(0.0, float(timeout))
        with nogil:  # valid after close() too: every copy has finished then
            err = ff_copier_wait_for(self._c, ticket, seconds)
        if err < 0:
            raise ValueError(f"no copy has ticket {ticket}")
        if err:
            raise TimeoutError(f"the batch's copies did not finish in {timeout:g} s")
        self._prune()

    def drain(self) -> None:
        """Return once every copy submitted so far has finished (and let go of its arrays)."""
        self._own()
        with nogil:
            ff_copier_wait(self._c, ff_copier_submitted(self._c))
        self._prune()

    @property
    def pending(self) -> int:
        """Copies queued or running."""
        self._own()
        self._prune()
        return len(self._held)

    cdef _prune(self):
        """Let go of the arrays of finished copies."""
        cdef uint64_t completed = ff_copier_completed(self._c)
        held = self._held
        with self._held_lock:  # (tickets may be appended a little out of order: the
            while held and held[0][0] <= completed:  # later ones wait a prune longer)
                held.popleft()

    def close(self) -> None:
        """Finish every queued copy and end the threads (idempotent; nothing in a forked child)."""
        if getpid() != self.pid:
            return
        with nogil:  # every caller returns once no copy is running (one joins the threads)
            ff_copier_stop(self._c)
        self.closed = True  # only now: wait() by another thread still waits for the copies
        with self._held_lock:
            self._held.clear()

    def __dealloc__(self):
        if self._c is not NULL:
            if getpid() == self.pid:  # a forked child has no thread to join (no os here:
                # at interpreter exit, modules may be gone before this runs)
                ff_copier_destroy(self._c)
                free(self._c)
            self._c = NULL

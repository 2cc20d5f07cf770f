"""Workers: who runs stage 1 of a batch (decoding and per-range operations).

Two strategies behind one interface, ``WorkerPool.open_epoch(plan, slots)`` giving an
``EpochWorkers`` whose ``run(job, slot, data, copies)`` runs stage 1 of one
batch over ranges of its samples and returns once every range is written
(and ``grace``, ``abandon()``, ``close()`` for the epoch's end):

- ``ThreadWorkers``: threads of the loader's process (``fastforward-decode-N``),
  new for each epoch. Right when stage 1 releases the GIL (every built-in
  decoder and operation does: ``Operation.releases_gil``).
- ``ProcessWorkers``: worker processes (``fastforward-worker-N``), started at
  the first epoch and kept for the loader's life. Each maps the file the
  loader opened (through the loader's descriptor: see **The file** below),
  fetches its range's payloads, runs the plan's stage 1 and writes straight
  into the batch's slot, which lives in shared memory (``ring.SHARED``); only
  small messages cross the process boundary (the plan once per epoch, then
  one per range: the batch's indices and where its slot is). Right when stage
  1 holds Python operations that keep the GIL.

Process workers, in detail:

- **Ranges.** A batch is cut into one range per worker, queued, and each range
  goes to the worker that would finish it first, judged by how long its
  ranges take (a moving average; a worker idle for longer than one of its
  ranges counts as fast again, one whose range runs late looks slower the
  longer it runs), once that worker holds fewer than ``DEPTH`` (the one it
  runs and the next); a slower worker with room is passed over, and the
  choice looked at again every ``RECHECK`` seconds until the range is sent.
  One thread sends them (``fastforward-dispatch``), woken as ranges are
  queued, end, or workers die: neither a batch's thread nor the reader thread
  ever waits on a worker's socket. A range whose message fails goes to
  another worker, and the worker is killed if it still runs. So a worker
  slowed by its neighbours (the loader's process, other jobs) or by costlier
  samples takes fewer ranges instead of every batch waiting for its fixed
  share: with one range of each batch per worker, the second of two workers
  idled 58-68 ms at the end of each 0.3 s epoch of ``bench/``'s python_op
  pipeline, waiting for the first; dispatched, 0-31 ms (up to one range).
- **Start.** From a fork server (``multiprocessing``'s forkserver: a clean,
  single-threaded process, started once, that imports the main module and
  forks the workers), or spawned where there is none; ``fork`` only when the
  user asks for it (``Loader(start_method='fork')``): the loader's process
  runs threads, and a forked child inherits every lock another thread held.
  Either way the workers import the main module (multiprocessing's rule: a
  script keeps its top level under ``if __name__ == '__main__':``). A worker
  never touches CUDA, and runs torch on one thread.
- **The file.** A new worker is first handed the descriptor of the file the
  loader's ``Reader`` opened (SCM_RIGHTS, as the slots' segments are), and
  opens its own ``Reader`` on it, never on the file's name: a new file
  renamed over the name (``DatasetWriter`` writes so) or the name removed
  after ``Loader()`` leaves every worker, a replacement started epochs
  later included, reading the file the loader opened, as threads do.
- **Messages** (pickled over a socket pair per worker): ``plan`` (once per
  epoch, its stage 1 only, ``Plan.for_workers``: stage 2's operations never
  cross; a worker keeps the plans of the epochs still open), ``unplan`` (an
  epoch ended), ``segment`` (a slot's shared memory, its descriptor passed with
  SCM_RIGHTS the first time a worker writes into it), ``forget`` (segments the
  loader let go, told to every worker that mapped them, with its next range),
  ``range`` (one range of one batch, its ``BatchJob`` pickled once per batch;
  the worker answers ``running`` as it starts it, then ``done`` or ``error``
  with the pickled exception, its traceback and its text, should it not
  unpickle here), ``None`` (exit).
- **Lifetime.** The pool's thread (``fastforward-workers``) reads every
  worker's replies and watches their sentinels (one selector for its life): a
  worker that dies (SIGKILL, out of memory) fails its ranges with
  ``WorkerError`` naming the batch, at once, and is replaced at the next epoch
  (a worker found dead when an epoch opens is replaced first); queued ranges
  go to the others, or fail at once when none is left. An epoch that
  ends early (``break``, Ctrl-C, ``close()``) waits ``ProcessEpoch.grace``
  seconds for the ranges in flight, then kills the workers still running them
  (an operation that never returns): they are replaced at the next epoch; its
  ranges still queued fail without running. Workers ignore SIGINT (the
  loader's process handles Ctrl-C) and exit when the loader's process is gone,
  however it died, even in the middle of an operation: a watchdog thread
  waits on the loader's process (a pidfd; where there is none, it checks
  every half second). ``close()`` asks them to exit, then kills what is left.
  A loader's workers belong to the process that started them: in a forked
  child, the loader refuses to run an epoch, and closing it there lets go of
  the child's copies only.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import faulthandler
import functools
import itertools
import multiprocessing
import os
import pickle
import select
import selectors
import signal
import sys
import textwrap
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import recv_handle, send_handle
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FastForwardError, WorkerError, exception_text, portable
from ..pipeline.plan import Plan, bind_plan
from ..scheduler import DaemonPool
from ..utils import (
    anonymous_shared_fd,
    forkserver_preload,
    main_module_hint,
    map_shared,
    worker_started,
)
from .runner import BatchJob, ranged_pipelines, run_stage1

if TYPE_CHECKING:
    from ..reader import Reader, SharedTables

THREAD, PROCESS = "thread", "process"

GRACE = 2.0
"""Seconds an epoch that ends early waits for the ranges of process workers still
running before it kills the workers running them (``ProcessEpoch.grace``)."""

DEPTH = 2
"""Ranges a worker process holds at once: the one it runs and the next, sent ahead
so that it never waits for a message between two ranges."""

CRASH_PAGE = 4096
"""A worker's crash file (shared memory, handed over as it starts) starts with
the cells where the worker notes where it is: the id of the range it runs, and
the sample a per-sample operation started (``BatchContext.progress``); what
``faulthandler`` writes when a fatal signal ends it follows, from this offset."""

CRASH_REPORT = 16384
"""The most of ``faulthandler``'s report the loader reads back (the crashing
thread's stack only: at most 100 frames)."""

NATIVE_CRASHES = frozenset((signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                            signal.SIGABRT))
"""The signals of a crash in native code: those ``faulthandler`` reports."""

RECHECK = 0.02
"""Seconds after which the dispatcher looks again, without a reply to wake it, when
it kept a range for a fuller worker while another had room (that worker's range
may stall: the longer it runs late, the slower it looks)."""


def bounds(count: int, parts: int) -> list[tuple[int, int]]:
    """``range(count)`` cut into at most *parts* nearly equal, non-empty ranges."""
    cuts = np.linspace(0, count, max(1, min(parts, count)) + 1).astype(int)
    return [(int(lo), int(hi)) for lo, hi in itertools.pairwise(cuts) if hi > lo]


def settle(futures: list[Future[Any]]) -> None:
    """Wait for every future, then raise the first one's exception, if any: no range
    may still be writing into the slot when the batch gives it back."""
    first: BaseException | None = None
    future: Future[Any] | None = None
    for future in futures:
        try:
            future.result()
        except BaseException as exc:
            first = first or exc
    # each future holds its exception, and the exception's traceback this frame and
    # the caller's: let go of them, so that a loader dropped after a failed epoch is
    # freed at once, not at the garbage collector's next pass
    futures.clear()
    future = None
    if first is not None:
        try:
            raise first
        finally:
            first = None


class ThreadWorkers:
    """Stage 1 on threads of this process (see the module docstring)."""

    kind = THREAD

    def __init__(self, size: int) -> None:
        self.size = max(1, int(size))

    def open_epoch(self, plan: Plan, slots: Any) -> ThreadEpoch:
        """Threads for one epoch; ``close()`` them at its end."""
        return ThreadEpoch(plan, self.size)

    def close(self) -> None:
        """Nothing outlives an epoch."""


class ThreadEpoch:
    """One epoch's decode threads."""

    kind = THREAD
    grace: float | None = None  # a thread cannot be stopped (nothing to abandon)

    def __init__(self, plan: Plan, size: int) -> None:
        self.plan = plan
        self.size = size
        # the loader fetches the fields that a decoder reads, and those only (a field
        # left out, or one that only a filter's probe reads, costs no read)
        self.fields = frozenset(p.field_index for p in plan.pipelines if p.decoder is not None)
        # daemon threads: one stuck in an operation must not hold the interpreter's exit
        self._pool = DaemonPool(size, "fastforward-decode", lazy=True)

    def run(self, job: BatchJob, slot: Any, data: Any, copies: Any) -> None:
        """Stage 1 of *job* over ``size`` ranges, on the threads; wait for all."""
        if not job.ranged:
            return
        ranges = bounds(len(job.indices), self.size)
        if len(ranges) == 1:  # one range: no hop to another thread
            run_stage1(self.plan, job, data, slot, 0, len(job.indices), copies)
            return
        futures = []
        try:
            for lo, hi in ranges:
                futures.append(self._pool.submit(run_stage1, self.plan, job, data.rows(lo, hi),
                                                 slot, lo, hi, copies))
        finally:  # (a submit refused once the epoch ended: the ranges sent still write
            settle(futures)  # into the slot, which goes back only after them)

    def abandon(self) -> bool:
        """Nothing to do: threads cannot be stopped. Returns False (none was)."""
        return False

    def close(self, wait: bool = True) -> None:
        """Stop the threads: after the ranges in progress, or (*wait* False: the
        engine gave up on ranges that do not end) leaving them running."""
        self._pool.shutdown(wait=wait, cancel_futures=True)


class _Worker:
    """The loader's end of one worker process."""

    def __init__(self, index: int, process: Any, conn: Connection) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.send_lock = threading.Lock()
        self.segments: set[int] = set()  # shared segments it has mapped
        self.dropped: set[int] = set()  # of those, the ones to forget with its next range
        self.plans: set[int] = set()  # the plans of open epochs it was sent
        self.pending: set[int] = set()  # ranges sent, not answered
        self.running: int | None = None  # the range it said it started last
        self.started_at = 0.0  # when (time.perf_counter())
        self.range_seconds = 0.0  # how long its ranges take (a moving average; 0: unknown)
        self.answered_at = 0.0  # when it last ended a range
        self.dead = False
        self.unreachable = False  # a message to it failed: it is dying, send it no more
        self.why: str | None = None  # why the loader killed it, if it did
        self.send_error: str | None = None  # a message that failed in this process (EMFILE)
        # its crash file, mapped (``CRASH_PAGE``): where it is, and faulthandler's report
        self.crash: np.ndarray | None = None  # (uint8)
        self.crash_report = ""  # read once it is buried
        # the process itself, whatever multiprocessing believes (see _end); closed with
        # this object, so that no thread can signal a number another pidfd took
        self.pidfd = _open_pidfd(getattr(process, "pid", None))  # (tests: stand-ins)
        self._pidfd_closer = (None if self.pidfd is None
                              else weakref.finalize(self, os.close, self.pidfd))

    def sample_of(self, job_id: int | None) -> str:
        """``, at sample 123`` when the worker's cells say that a per-sample operation
        started sample 123 in range *job_id*; else ''."""
        crash = self.crash  # (release() may drop it meanwhile)
        if job_id is None or crash is None:
            return ""
        running, sample = (int(cell) for cell in crash[:16].view(np.int64))
        return f", at sample {sample}" if running == job_id and sample >= 0 else ""

    def read_crash_report(self) -> None:
        """Keep what ``faulthandler`` wrote if a fatal signal ended the worker (its
        stack), less the list of extension modules it ends with."""
        crash = self.crash
        if crash is not None:
            text = bytes(crash[CRASH_PAGE:]).split(b"\0", 1)[0].decode(errors="replace")
            self.crash_report = text.split("\nExtension modules:", 1)[0].strip()

    def release(self) -> None:
        """Let go of the ended process's descriptors (its pidfd, multiprocessing's
        sentinel): a closed loader that is still referred to holds none."""
        if self._pidfd_closer is not None:
            self._pidfd_closer()
        self.pidfd = None
        self.crash = None  # its map goes with the last view (a closed loader kept holds none)
        with contextlib.suppress(ValueError, AttributeError):  # (stand-ins in tests)
            self.process.close()


def _stop_unpublished(workers: list[_Worker]) -> None:
    """Stop workers started but never published, and let go of their descriptors
    at once (an exception's traceback, which refers to them, may live long)."""
    for worker in workers:
        with contextlib.suppress(OSError):
            _kill(worker)
        worker.process.join()
        worker.conn.close()
        worker.release()


@dataclasses.dataclass
class _Range:
    """One range of one batch, waiting for a worker with room (``DEPTH``)."""

    job_id: int
    future: Future[Any]
    slot: Any
    plan_id: int
    job: bytes  # the pickled BatchJob (pickled once for all the batch's ranges)
    lo: int
    hi: int
    what: str


class ProcessWorkers:
    """Stage 1 in worker processes, kept across epochs (see the module docstring).

    Args:
        size: worker processes.
        reader: the loader's: each worker reads the file it opened (its descriptor
            is handed to the worker), with its custom fields.
        os_cache: each worker's memory manager.
        start_method: ``"fork"``, ``"forkserver"`` or ``"spawn"``; None: a fork
            server where the platform has one, else spawn.
    """

    kind = PROCESS

    def __init__(self, size: int, reader: Reader, os_cache: bool,
                 start_method: str | None = None) -> None:
        self.size = max(1, int(size))
        self.reader = reader
        # every worker maps the loader's reader's tables (shared memory: one copy
        # of about 90 bytes a sample, however many workers), none builds its own
        self._tables, layout = reader.share_tables()
        self.config = (reader.fname, dict(reader.custom_handlers), bool(os_cache), layout)
        self.start_method = start_method
        self.method_used: str | None = None
        self._workers: list[_Worker] = []
        # close() and abandon() one at a time: close() lets go of the descriptors
        # (pidfds, the wake pipe) that abandon() signals and writes through
        self._closing = threading.RLock()
        self._lock = threading.Lock()  # the pending table and the workers list
        self._buried = threading.Condition(self._lock)  # notified when a worker is buried
        # job id: its future, its worker, what it is (for errors), its epoch's plan id
        self._pending: dict[int, tuple[Future[Any], _Worker, str, int]] = {}
        self._queue: collections.deque[_Range] = collections.deque()  # not sent yet
        self._owner = os.getpid()  # the workers belong to this process
        self._live_plans: dict[int, bytes] = {}  # open epochs' plans: a new worker gets them
        _POOLS.add(self)
        self._jobs = itertools.count(1)
        self._plans = itertools.count(1)
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()  # tells the reader thread the workers changed
        self._reader: threading.Thread | None = None
        self._dispatcher: threading.Thread | None = None  # sends the queued ranges
        self._running: set[str] = set()  # which of the two runs ("_reader", "_dispatcher")
        self._wanted = threading.Condition(self._lock)  # wakes the dispatcher
        self._stale = False  # set (under the lock) when the dispatcher has work
        self._selector: selectors.BaseSelector | None = None  # the reader thread's
        self._watched: dict[_Worker, tuple[int, int]] = {}  # its workers' fds, registered
        self.started_seconds = 0.0  # how long the last (re)start took
        self.started = 0  # worker processes started so far (replacements included)

    # -- lifetime ------------------------------------------------------------------

    def _method(self) -> str:
        methods = multiprocessing.get_all_start_methods()
        if self.start_method is not None:
            if self.start_method not in methods:
                raise ValueError(f"start method {self.start_method!r} is not available here "
                                 f"({methods})")
            return self.start_method
        return "forkserver" if "forkserver" in methods else "spawn"

    def _ensure_started(self) -> None:
        """Start the workers that are missing (all at first; dead ones later)."""
        if self._closed:
            raise RuntimeError("the loader's worker processes are closed")
        for worker in list(self._workers):  # dead, but not yet seen by the reader thread
            if not worker.dead and _gone(worker):
                self._await_buried(worker)
        missing = [k for k in range(self.size)
                   if k >= len(self._workers) or self._workers[k].dead]
        if not missing:
            self._start_threads()  # Ctrl-C may have cut the last start short
            return
        start = time.perf_counter()
        method = self._method()
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            # imported once by the server (if this starts it), not by every worker: the
            # main module (where scripts define their operations) and what they need
            forkserver_preload(ctx, _preload())
        started: list[_Worker] = []
        try:
            for k in missing:
                parent_end, child_end = ctx.Pipe(duplex=True)
                inherited = [w.conn.fileno() for w in self._workers if not w.dead] + [
                    w.conn.fileno() for w in started] + [
                    parent_end.fileno(), self._wake_r, self._wake_w]
                if self._selector is not None and hasattr(self._selector, "fileno"):
                    inherited.append(self._selector.fileno())  # the reader's epoll
                try:
                    process = _start_process(ctx, method, k, (
                        child_end, self.config, inherited if method == "fork" else [],
                        self._owner))
                finally:
                    child_end.close()
                started.append(_Worker(k, process, parent_end))
                self.started += 1
                self._hand_file(started[-1])
            for worker in started:
                self._await_ready(worker, method)
                for plan_id, blob in self._live_plans.items():  # epochs still open
                    if _try_send(worker, functools.partial(worker.conn.send,
                                                           ("plan", plan_id, blob))):
                        worker.plans.add(plan_id)
        except BaseException:  # none of them is published: stop them all here
            _stop_unpublished(started)
            raise
        # published only once ready: the reader thread must never read a new
        # worker's "ready" (it would leave _await_ready waiting for it)
        with self._lock:
            closed = self._closed  # by another thread meanwhile: these are not its to stop
            if not closed:
                for worker in started:
                    if worker.index < len(self._workers):
                        self._workers[worker.index] = worker
                    else:
                        self._workers.append(worker)
        if closed:
            _stop_unpublished(started)
            raise RuntimeError("the loader's worker processes are closed")
        self._kick()  # ranges of an open epoch queued while none had room
        self.method_used = method
        self.started_seconds = time.perf_counter() - start
        self._start_threads()
        os.write(self._wake_w, b"w")  # the reader thread watches the new workers

    def _start_threads(self) -> None:
        """Start the reader and the dispatcher threads, each where it does not run:
        at the first epoch, and at a later one where Ctrl-C cut a start short
        (``Thread.start()`` may raise before its thread runs, or after: a thread
        superseded so returns at once, ``_thread``), else every epoch after it
        would wait for ranges that no thread sends."""
        for attr, name in (("_reader", "fastforward-workers"),
                           ("_dispatcher", "fastforward-dispatch")):
            with self._lock:
                if attr in self._running:
                    continue
                thread = threading.Thread(target=self._thread, args=(attr,), name=name,
                                          daemon=True)
                setattr(self, attr, thread)
            thread.start()

    def _thread(self, attr: str) -> None:
        """The reader (``attr`` ``"_reader"``) or dispatcher thread, unless another
        took its place (its start was cut short, and the next epoch started one)."""
        with self._lock:
            if getattr(self, attr) is not threading.current_thread() or self._closed:
                return
            self._running.add(attr)
        try:
            if attr == "_reader":
                self._read()
            else:
                self._dispatching()
        finally:
            with self._lock:
                self._running.discard(attr)

    def _hand_file(self, worker: _Worker) -> None:
        """Send a new *worker* the descriptor of the file the loader opened, its first
        message: it reads that file, not what the name names now (a new file renamed
        over it, or none); then the reader's tables and its crash file. A worker that
        died already is reported by ``_await_ready``."""
        try:
            send_handle(worker.conn, self.reader.fileno(), worker.process.pid)
            send_handle(worker.conn, self._tables, worker.process.pid)
            crash = anonymous_shared_fd(CRASH_PAGE + CRASH_REPORT, "fastforward-worker")
            try:
                with contextlib.suppress(OSError):  # (without it, no sample nor stack)
                    worker.crash = map_shared(crash, CRASH_PAGE + CRASH_REPORT)
                send_handle(worker.conn, crash, worker.process.pid)
            finally:
                os.close(crash)  # the map is the loader's end
        except (OSError, RuntimeError) as exc:  # RuntimeError: macOS, not acknowledged
            if not _gone(worker):  # alive, waiting for a descriptor that will not come
                worker.why = f"the loader could not hand it the file: {exception_text(exc)}"
                with contextlib.suppress(OSError):
                    _kill(worker)

    def _await_ready(self, worker: _Worker, method: str) -> None:
        """Wait for a new worker's first message: it opened the file and is ready."""
        ready = wait([worker.conn, worker.process.sentinel])
        if worker.conn in ready:
            message: tuple[Any, ...] = ("gone",)
            with contextlib.suppress(EOFError, OSError):  # it died without a word
                message = worker.conn.recv()
            if message[0] == "ready":
                return
            if message[0] == "error":  # raised out of the suppress: it may be an OSError
                self.close()
                raise _unpacked(*message[2:])
        worker.process.join(5)
        worker.dead = True
        code = worker.process.exitcode
        if worker.why is None and code is not None and code < 0:
            # killed while it started (the OOM killer, a user's kill): not the plan's
            # or the script's fault, so the pool stays open and the next epoch
            # starts it again
            raise WorkerError(f"{self.config[0]}: worker process {worker.index} (pid "
                              f"{worker.process.pid}) was {_killed_by(-code)} while it "
                              "started; the next epoch starts it again")
        self.close()
        if worker.why is not None:
            raise WorkerError(f"{self.config[0]}: worker process {worker.index} failed to "
                              f"start ({worker.why})")
        instead = "worker_type='thread'"
        hint = "" if method == "fork" else f" Process {main_module_hint(method, instead)}."
        raise WorkerError(f"{self.config[0]}: worker process {worker.index} failed to start "
                          f"(exit code {worker.process.exitcode}); its error is printed "
                          f"above.{hint}")

    def _await_buried(self, worker: _Worker, timeout: float = 5.0) -> None:
        """Wait until the reader thread has buried *worker* (its process has ended or
        is ending): its ranges failed, and the next epoch will replace it. (Only the
        reader thread joins a worker: with the fork server, joining reads its exit
        status from the sentinel, which two threads must not both do.)"""
        if os.getpid() != self._owner:  # a forked child has no reader thread
            return
        with self._lock:
            reading = "_reader" in self._running
        if not reading:  # no reader (yet): nothing can be pending on it
            worker.dead = True
            return
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"w")
        with self._buried:
            self._buried.wait_for(lambda: worker.dead, timeout)

    def abandon(self, plan_id: int) -> bool:
        """Kill the workers still running ranges of the epoch of *plan_id*, which
        ended without them (an operation that does not return): their ranges
        fail, and the next epoch replaces them. Returns whether the workers held
        ranges of the epoch (queued or running; False in a forked child, whose
        workers are the parent's)."""

        def stuck(worker: _Worker) -> bool:
            # it holds ranges of the epoch, and is not visibly running another open
            # epoch's range (ranges queued behind one run once it is done): it runs
            # one of the epoch's, or runs nothing (stopped before it said so)
            if worker.dead or not any(self._pending[job][3] == plan_id
                                      for job in worker.pending if job in self._pending):
                return False
            running = self._pending.get(worker.running) if worker.running is not None \
                else None
            return running is None or running[3] == plan_id

        if os.getpid() != self._owner:  # a forked child: the workers are the parent's
            return False
        with self._closing:
            if self._closed:  # close() ends every worker
                return False
            with self._lock:
                held = any(item[3] == plan_id for item in self._pending.values())
            held |= self._drop_queued(plan_id, "its epoch had ended")
            with self._lock:
                stuck_ones = [worker for worker in self._workers if stuck(worker)]
            for worker in stuck_ones:
                worker.why = ("killed by the loader: its epoch had ended, its range still "
                              "running")
                with contextlib.suppress(OSError):
                    _kill(worker)
            for worker in stuck_ones:
                self._await_buried(worker)
            return held

    def close(self) -> None:
        """Ask every worker to exit, wait a little, kill what is left (idempotent).

        In a forked child of the loader's process, only lets go of the child's
        copies of the sockets: the workers are the parent's."""
        if os.getpid() != self._owner:  # (without the lock: a parent's thread may have
            if not self._closed:        # held it when this process was forked)
                self._closed = True
                for worker in self._workers:
                    worker.conn.close()
                os.close(self._wake_r)
                os.close(self._wake_w)
            return
        with self._closing:
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kick()  # the dispatcher sees the pool closed, and stops
        for worker in self._workers:
            # politely, unless a send to it is stuck (a stopped worker's socket full)
            if worker.send_lock.acquire(timeout=0.5):
                try:
                    with contextlib.suppress(OSError):
                        worker.conn.send(None)
                finally:
                    worker.send_lock.release()
        deadline = time.monotonic() + 2
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                _kill(worker)
                worker.process.join()
            _end(worker)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        for thread in (self._reader, self._dispatcher):  # (one never started: no ident)
            if thread is not None and thread.ident is not None \
                    and thread is not threading.current_thread():
                thread.join()
        for worker in self._workers:
            worker.conn.close()
        self._fail_all(RuntimeError("the loader was closed"))
        os.close(self._wake_r)
        os.close(self._wake_w)
        workers, self._workers = self._workers, []
        for worker in workers:  # ended (_end above), and every thread that used it joined
            worker.release()

    @property
    def owner(self) -> int:
        """The process the workers belong to (the one that made the loader)."""
        return self._owner

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and monitoring)."""
        return [w.process.pid for w in self._workers if not w.dead]

    def running(self) -> list[str]:
        """What each live worker process runs now, for a ``BatchTimeout``'s message:
        ``pid 123 has run batch 2 (samples 5, …), rows 0:4, at sample 9 for 3.1 s``
        (the sample where a per-sample operation says it is). A range of
        one batch may wait behind another batch's stuck range on the same worker,
        so the batch that timed out is not always the one that is stuck."""
        now, prefix = time.perf_counter(), f"running {self.config[0]}: "
        busy = []
        with self._lock:
            for worker in self._workers:
                entry = None if worker.running is None else self._pending.get(worker.running)
                if worker.dead or entry is None:
                    continue
                busy.append(f"pid {worker.process.pid} has run {entry[2].removeprefix(prefix)}"
                            f"{worker.sample_of(worker.running)} for "
                            f"{now - worker.started_at:.1f} s")
        return busy

    # -- epochs ------------------------------------------------------------------

    def open_epoch(self, plan: Plan, slots: Any) -> ProcessEpoch:
        """Start (or restart) the workers and send them *plan*; *slots* is the
        loader's ``SlotPool`` (its shared slots are where the workers write). One
        thread at a time (the loader's ``_opening``): two threads starting epochs at
        once each started a pool, and a worker started by one missed the other's
        plan."""
        if os.getpid() != self._owner:
            raise RuntimeError(
                f"{self.config[0]}: this loader's worker processes belong to process "
                f"{self._owner}, and this is its forked child {os.getpid()}: create a "
                "new Loader here (or pass worker_type='thread')")
        plan_id = next(self._plans)
        blob = pickle.dumps(plan.for_workers(), protocol=pickle.HIGHEST_PROTOCOL)
        lost: list[_Worker] = []
        for _ in range(2):  # once more if a worker turns out dead as the plan is sent
            self._ensure_started()
            lost = []
            for worker in list(self._workers):
                if plan_id in worker.plans:
                    continue
                if _try_send(worker, functools.partial(worker.conn.send,
                                                       ("plan", plan_id, blob))):
                    worker.plans.add(plan_id)
                else:
                    lost.append(worker)
            for worker in lost:
                self._await_buried(worker)
            if not lost:
                self._live_plans[plan_id] = blob
                return ProcessEpoch(self, plan, plan_id, slots.dropped)
        raise self._death(lost[0], "receiving its work")

    def retire(self, plan_id: int) -> None:
        """The epoch of *plan_id* has ended: the workers forget its plan."""
        if self._closed or os.getpid() != self._owner:
            return
        self._live_plans.pop(plan_id, None)
        self._drop_queued(plan_id, "its epoch had ended")
        for worker in list(self._workers):
            worker.plans.discard(plan_id)
            if not worker.dead:
                _try_send(worker, functools.partial(worker.conn.send, ("unplan", plan_id)))

    def drop_segments(self, segments: list[int]) -> None:
        """The loader let go of *segments*: each worker that mapped one unmaps it
        with its next range (every worker, not only the next batch's: a batch
        smaller than the pool gives some workers no range)."""
        if not segments:
            return
        for worker in list(self._workers):
            with worker.send_lock:
                worker.dropped.update(s for s in segments if s in worker.segments)

    def submit(self, slot: Any, plan_id: int, job: bytes, lo: int, hi: int,
               what: str) -> Future[Any]:
        """Queue one range of the batch *job* (a pickled ``BatchJob``) for the
        dispatcher thread; its future is done once the range is written, or
        failed."""
        future: Future[Any] = Future()
        item = _Range(next(self._jobs), future, slot, plan_id, job, lo, hi, what)
        with self._lock:
            if self._closed:
                raise RuntimeError("the loader's worker processes are closed")
            if self._workers and all(w.dead for w in self._workers):
                raise self._death(self._workers[0], what)
            self._queue.append(item)
        self._kick()
        return future

    def _kick(self) -> None:
        """Tell the dispatcher thread that a worker may have room, or died."""
        with self._lock:
            self._stale = True
            self._wanted.notify()

    def _dispatching(self) -> None:
        """The dispatcher thread (``fastforward-dispatch``): the only one that sends
        ranges, so that neither a batch's thread nor the reader thread ever
        waits on a worker's socket (a busy worker's may be full)."""
        recheck: float | None = None
        while True:
            with self._lock:
                self._wanted.wait_for(lambda: self._stale or self._closed, recheck)
                if self._closed:
                    return
                self._stale = False
            try:
                recheck = self._dispatch()
            except Exception:  # never let this thread die: the loader would hang
                traceback.print_exc()
                recheck = RECHECK

    def _dispatch(self) -> float | None:
        """Send queued ranges to the workers with room, each to the one that would
        finish it first. Returns in how many seconds to look again without a
        kick (a worker with room was passed over for a fuller one, whose range
        may stall), or None."""
        while True:
            with self._lock:
                if not self._queue or self._closed:
                    return None
                live = [w for w in self._workers if not w.dead and not w.unreachable]
                if not live:
                    if not self._workers or not all(w.dead for w in self._workers):
                        return None  # none started yet, or one is being buried: kicked after
                    # every worker died: nothing would ever run these
                    dead, left = self._workers[-1], list(self._queue)
                    self._queue.clear()
                    break
                # the worker that would finish it first, if it has room (else wait for it:
                # a slower one would hold up the batch); unknown speeds count as fast
                now = time.perf_counter()
                known = [w.range_seconds for w in live if w.range_seconds]
                prior = sum(known) / len(known) if known else 0.0
                worker = min(live, key=lambda w: (_finish(w, now, prior), len(w.pending)))
                if len(worker.pending) >= DEPTH:
                    passed = any(len(w.pending) < DEPTH for w in live)
                    return RECHECK if passed else None
                item = self._queue.popleft()
                self._pending[item.job_id] = (item.future, worker, item.what, item.plan_id)
                worker.pending.add(item.job_id)
            try:
                if _try_send(worker, functools.partial(self._send_range, worker, item)):
                    continue
            except BaseException as exc:  # not the socket (it would be an OSError): the
                with self._lock:  # range fails alone, with what its sending raised
                    entry = self._pending.pop(item.job_id, None)
                    worker.pending.discard(item.job_id)
                if entry is not None:
                    item.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            # the worker died, or a message to it failed half-way (it would wait for
            # the rest): another worker takes the range (if its epoch is still open),
            # and this one is killed if it still runs; the reader thread buries it,
            # the next epoch replaces it
            with self._lock:
                worker.unreachable = True
                entry = self._pending.pop(item.job_id, None)
                worker.pending.discard(item.job_id)
                if entry is not None and item.plan_id in self._live_plans:
                    self._queue.appendleft(item)
                    entry = None
            if entry is not None:  # its epoch ended meanwhile (abandon())
                item.future.set_exception(_unsent(item, "its epoch had ended"))
            if not _gone(worker) and not _ends_by_itself(worker):
                worker.why = "killed by the loader: a message to it failed" + (
                    f" ({worker.send_error})" if worker.send_error else "")
                with contextlib.suppress(OSError):
                    _kill(worker)
        for item in left:
            item.future.set_exception(self._death(
                dead, "running its ranges", f", and none was left for a queued one ({item.what})"))
        return None

    def _send_range(self, worker: _Worker, item: _Range) -> None:
        """Send *item* to *worker* (under its lock): the segments it should forget,
        its slot's segment if new to it, then the range."""
        if worker.dropped:
            gone = sorted(worker.dropped)
            worker.conn.send(("forget", gone))
            worker.segments.difference_update(gone)
            worker.dropped.clear()
        segment_id, nbytes, offsets = item.slot.describe()
        if segment_id not in worker.segments:
            worker.conn.send(("segment", segment_id, nbytes, offsets))
            send_handle(worker.conn, item.slot.segment.fd, worker.process.pid)
            worker.segments.add(segment_id)
        worker.conn.send_bytes(pickle.dumps(  # as conn.send would, without its overhead
            ("range", item.job_id, item.plan_id, segment_id, item.job, item.lo, item.hi),
            protocol=pickle.HIGHEST_PROTOCOL))

    def _drop_queued(self, plan_id: int, why: str) -> bool:
        """Fail the queued ranges of *plan_id*'s epoch: they will never be sent.
        Returns whether there were any."""
        with self._lock:
            left = [item for item in self._queue if item.plan_id == plan_id]
            self._queue = collections.deque(i for i in self._queue if i.plan_id != plan_id)
        for item in left:
            item.future.set_exception(_unsent(item, why))
        return bool(left)

    # -- the reader thread ---------------------------------------------------------

    def _read(self) -> None:
        # one selector for the thread's life (a fresh one per wake-up cost more than
        # the replies): each live worker's socket and sentinel, and the wake-up pipe
        self._selector = selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._closed:
                with self._lock:
                    alive = [w for w in self._workers if not w.dead]
                for worker in alive:
                    if worker not in self._watched:
                        fds = (worker.conn.fileno(), worker.process.sentinel)
                        selector.register(fds[0], selectors.EVENT_READ, (worker, True))
                        selector.register(fds[1], selectors.EVENT_READ, (worker, False))
                        self._watched[worker] = fds
                for key, _ in selector.select():
                    if key.data is None:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 64)
                        continue
                    worker, reply = key.data
                    if worker.dead:
                        continue
                    self._serve(worker, reply)
                    self._kick()  # a worker has room, or died: its ranges move on
        finally:
            selector.close()

    def _serve(self, worker: _Worker, reply: bool) -> None:
        """One reply of *worker* (*reply*), or its death."""
        try:
            if reply:
                self._receive(worker)
            else:
                self._bury(worker)
        except Exception as exc:  # a reply that does not unpickle here, or any other
            # failure: trust the worker no more, and never let this thread die (the
            # loader would hang)
            worker.why = f"killed by the loader: a reply could not be read ({exception_text(exc)})"
            with contextlib.suppress(OSError):
                _kill(worker)
            self._bury(worker)

    def _receive(self, worker: _Worker) -> None:
        try:
            reply = worker.conn.recv()
        except (EOFError, OSError):
            self._bury(worker)
            return
        self._receive_one(worker, reply)

    def _receive_one(self, worker: _Worker, reply: tuple[Any, ...]) -> None:
        status, job_id = reply[0], reply[1]
        if status == "failed":  # outside any range: it ends (buried when it has)
            if worker.why is None:
                worker.why = f"it failed: {reply[2]}".rstrip()
            return
        if status == "running":
            with self._lock:
                worker.running, worker.started_at = job_id, time.perf_counter()
            return
        now = time.perf_counter()
        if status == "done" and worker.running == job_id:
            took = now - worker.started_at
            worker.range_seconds = took if not worker.range_seconds else (
                0.7 * worker.range_seconds + 0.3 * took)
        worker.answered_at = now
        with self._lock:
            entry = self._pending.pop(job_id, None)
            worker.pending.discard(job_id)
            worker.running = None
        if entry is None:
            return
        future = entry[0]
        if status == "done":
            future.set_result(None)
        else:
            future.set_exception(_unpacked(*reply[2:]))

    def _bury(self, worker: _Worker) -> None:
        """A worker died: fail its ranges (the batches waiting for them raise), once
        its process is certainly gone (a batch gives its slot back when they fail)."""
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            _kill(worker)
            worker.process.join()
        _end(worker)
        worker.read_crash_report()
        # what it said before it died (a reply that does not unpickle here is dropped)
        with contextlib.suppress(Exception):
            while not worker.dead and worker.conn.poll():
                self._receive_one(worker, worker.conn.recv())
        with self._lock:
            worker.dead = True
            lost = [(job_id, self._pending.pop(job_id)) for job_id in sorted(worker.pending)
                    if job_id in self._pending]
            worker.pending.clear()
            running = dict(lost).get(worker.running) if worker.running is not None else None
            self._buried.notify_all()
        for fd in self._watched.pop(worker, ()):  # before the socket closes: its number
            if self._selector is not None:  # may be a new worker's next
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(fd)
        # nothing sends to it now that it is marked dead, but a send may have begun
        # before (it fails at once: the worker is gone); then its number is free
        locked = worker.send_lock.acquire(timeout=5)
        try:
            worker.conn.close()
        finally:
            if locked:
                worker.send_lock.release()
        at = worker.sample_of(worker.running)  # where a per-sample operation was
        culprit = None if running is None else running[2] + at
        for job_id, (future, _, what, _) in lost:
            if job_id == worker.running or culprit is None:
                error = self._death(worker, what + (at if job_id == worker.running else ""))
            else:  # queued behind the range that killed it
                error = self._death(worker, culprit, f", before {what}")
            future.set_exception(error)

    def _death(self, worker: _Worker, what: str, also: str = "") -> WorkerError:
        process = worker.process
        # its exit status only once the reader thread has buried it: with the fork
        # server, reading it reads the sentinel, which two threads must not both do
        code = process.exitcode if worker.dead else None
        if worker.why is not None:
            how = worker.why
        elif code is None:
            how = "its socket closed"
        elif code < 0:
            how = _killed_by(-code)
        else:
            how = f"exit code {code}: an operation ended the process (os._exit?)"
        crashed = code is not None and -code in NATIVE_CRASHES  # (faulthandler's signals)
        report = ("" if not (crashed and worker.crash_report) else ". faulthandler's "
                  f"report as it crashed:\n{textwrap.indent(worker.crash_report, '    ')}")
        return WorkerError(f"{self.config[0]}: worker process {worker.index} (pid "
                           f"{process.pid}) died ({how}) while {what}{also}{report}")

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            lost = list(self._pending.values()) + [
                (item.future, None, item.what, item.plan_id) for item in self._queue]
            self._pending.clear()
            self._queue.clear()
        for future, _, _, _ in lost:
            if not future.done():
                future.set_exception(exc)


class ProcessEpoch:
    """One epoch's use of the process pool."""

    kind = PROCESS

    @property
    def grace(self) -> float | None:
        """Seconds an epoch that ends early waits for its ranges in flight before
        ``abandon()`` kills the workers still running them (``GRACE``); None in a
        forked child, where the workers are not its own."""
        return GRACE if os.getpid() == self.pool.owner else None

    def __init__(self, pool: ProcessWorkers, plan: Plan, plan_id: int,
                 dropped: collections.deque[int]) -> None:
        self.pool = pool
        self.plan = plan
        self.plan_id = plan_id
        self.dropped = dropped  # segments the loader let go: workers unmap them
        # the loader's process fetches only what its own decoders read: those not run
        # in ranges (one that decodes whole batches, as the nvJPEG decoders do, and
        # any decoder that follows it: its geometry exists only after stage 1)
        ranged = ranged_pipelines(plan, None, always=True)
        self.fields = frozenset(p.field_index for position, p in enumerate(plan.pipelines)
                                if p.decoder is not None and position not in ranged)

    def run(self, job: BatchJob, slot: Any, data: Any, copies: Any) -> None:
        """Stage 1 of *job*: one range per worker, queued for the dispatcher; wait
        for all."""
        if not job.ranged:
            return
        pool = self.pool
        pool.drop_segments(_drain(self.dropped))
        futures = []
        blob = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            # one range per worker: cutting four per worker, for finer balance, cost
            # 12% of python_op's images/s (each range costs its messages and set-up)
            for lo, hi in bounds(len(job.indices), pool.size):
                what = f"running {job.where(self.plan.fname)}, rows {lo}:{hi}"
                futures.append(pool.submit(slot, self.plan_id, blob, lo, hi, what))
        finally:
            settle(futures)

    def abandon(self) -> bool:
        """The epoch ended, and ranges of it still run after ``grace`` seconds: kill
        the workers running them. Returns whether the workers held ranges of it (False:
        what still runs, runs in this process)."""
        return self.pool.abandon(self.plan_id)

    def close(self, wait: bool = True) -> None:
        """The workers forget this epoch's plan; the pool stays for the next epoch
        (*wait*: nothing to wait for here)."""
        self.pool.retire(self.plan_id)


def _unsent(item: _Range, why: str) -> RuntimeError:
    """The error of a range that was never run, and *why*."""
    return RuntimeError(f"{item.what}: not run, {why}")


def _finish(worker: _Worker, now: float, prior: float) -> float:
    """Seconds until *worker* would have run one more range, from how long its
    ranges take (*prior*, the others' average, until it has ended one): those it
    holds, less what it has done of the one it runs, or more once that one runs
    late (a stalled worker looks slower the longer it stalls). One idle for
    longer than a range of its own counts as fast again (a slow range may have
    been a passing hitch: it is measured anew)."""
    took = worker.range_seconds or prior
    if not worker.pending and now - worker.answered_at > took:
        return 0.0
    ahead = len(worker.pending) * took
    if worker.running is not None:
        elapsed = now - worker.started_at
        ahead += elapsed if elapsed > took else -elapsed
    return ahead + took


def _try_send(worker: _Worker, send: Callable[[], None]) -> bool:
    """Run *send* under the worker's lock; False if its pipe is broken (it died).
    The OSError is dropped here, not chained: its traceback would keep the
    pickled message's buffer alive in a cycle."""
    try:
        with worker.send_lock:
            send()
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, None):
            # not the worker's end: this process's (out of descriptors, of memory)
            worker.send_error = f"in the loader's process: {exc.strerror or exc}"
        return False
    return True


_POOLS: weakref.WeakSet[ProcessWorkers] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child inherits multiprocessing's list of this process's children,
    whose exit hook terminates the daemonic ones: the workers are the parent's, so
    they leave the child's list (a child that exits normally would SIGTERM them)."""
    from multiprocessing import process

    for pool in list(_POOLS):
        for worker in pool._workers:
            process._children.discard(worker.process)  # type: ignore[attr-defined]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _start_process(ctx: Any, method: str, index: int, args: tuple[Any, ...]) -> Any:
    """Start worker *index*. A fork server that is dying (its socket closed: a
    start interrupted by Ctrl-C makes CPython's server exit, where fastforward
    did not start it: ``_forkserver_main._survive_cut_starts``) is used again by
    multiprocessing until it has reaped it, which takes up to a second or two
    while the server unloads what it preloaded (torch): starts are tried again
    for up to ``SERVER_GRACE`` seconds, when a new server takes over."""
    deadline = time.monotonic() + SERVER_GRACE
    while True:
        process = ctx.Process(target=_worker_main, name=f"fastforward-worker-{index}",
                              args=args, daemon=True)
        try:
            process.start()
            return process
        except (BrokenPipeError, ConnectionError, EOFError):
            if method != "forkserver" or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            forkserver_preload(ctx, _preload())  # the next server imports the main module


SERVER_GRACE = 10.0
"""Seconds a worker's start waits for a dying fork server to be replaced."""


def _open_pidfd(pid: int | None) -> int | None:
    """A descriptor of process *pid* itself (Linux 5.3+), or None."""
    if pid is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # ENOSYS, or it has ended already (then its sentinel says so)
        return None


def _ended(worker: _Worker) -> bool | None:
    """Whether *worker*'s process has ended, told by its pidfd (None without one)."""
    if worker.pidfd is None:
        return None
    return _readable(worker.pidfd, 0)


def _readable(fd: int, timeout: float | None) -> bool:
    """Whether *fd* is readable within *timeout* seconds (None: wait). poll, not
    select: a training process may hold descriptors past select's 1023."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else int(timeout * 1000)))


def _kill(worker: _Worker) -> None:
    """SIGKILL *worker*'s process (through its pidfd, which cannot name another
    process: multiprocessing's ``kill()`` does nothing once it believes the process
    ended, which it does of every worker when the fork server dies)."""
    if worker.pidfd is not None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(worker.pidfd, signal.SIGKILL)
        return
    worker.process.kill()


def _ends_by_itself(worker: _Worker, seconds: float = 1.0) -> bool:
    """Whether *worker*, whose socket a message to it found closed, ends within
    *seconds* without being killed. A worker's socket closes as its process exits
    (the kernel closes a process's files before it reports its end): a worker that
    an operation ended (``os._exit(3)``) was killed in that moment, and its death
    blamed on the loader ("a message to it failed") instead of the exit code.
    A message that failed in this process (``send_error``: out of descriptors)
    leaves the worker waiting for the rest of it: killed at once."""
    if worker.send_error is not None or worker.pidfd is None:
        return False
    return _readable(worker.pidfd, seconds)


def _end(worker: _Worker) -> None:
    """Make sure *worker*'s process has ended before its slots are handed on.

    When multiprocessing's fork server dies, each worker's sentinel (its socket to
    the server) reaches end of file: multiprocessing gives it exit code 255 and
    takes it for dead while it runs on, and may still write into a slot that a
    later batch is handed in. Its pidfd tells the truth: kill it, and wait."""
    if worker.pidfd is not None and _ended(worker) is False:
        if worker.why is None:
            worker.why = ("its fork server died (multiprocessing took the worker for "
                          "dead; the loader killed it)")
        _kill(worker)
        _readable(worker.pidfd, None)  # SIGKILL: it ends


def _gone(worker: _Worker) -> bool:
    """Whether *worker*'s process has ended, or is ending (a SIGKILL waiting for it
    to be scheduled). Its pidfd says so where there is one. Otherwise its sentinel
    says so once its parent has reaped it; with the fork server, that parent (the
    server) reaps it and writes its exit status a moment after it ended, and until
    then only its pid tells: a zombie, or none (its socket does not reach end of
    file: the server holds a copy)."""
    pid = worker.process.pid
    ended = _ended(worker)
    if ended is not None:
        return ended or _ending(pid)
    if wait([worker.process.sentinel], 0):
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            if stat.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                return True
    except FileNotFoundError:
        return True
    except (OSError, IndexError, ValueError):  # no /proc here
        pass
    else:
        return _ending(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass
    return False


def _ending(pid: int) -> bool:
    """Whether a SIGKILL waits for process *pid* to be scheduled, or it is gone
    (False where /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            kill = 1 << (signal.SIGKILL - 1)
            return any(int(line.split()[1], 16) & kill for line in status
                       if line.startswith((b"SigPnd:", b"ShdPnd:")))
    except FileNotFoundError:
        return True
    except (OSError, IndexError, ValueError):
        return False


def _drain(queue: collections.deque[int]) -> list[int]:
    items: list[int] = []
    while True:
        try:
            items.append(queue.popleft())
        except IndexError:
            return items


def _packed(exc: BaseException) -> tuple[bytes, str]:
    """*exc* (from ``portable``) pickled, and its text with its notes, for the
    loader's process to show should it not unpickle there."""
    notes = "\n".join(str(note) for note in getattr(exc, "__notes__", ()))
    return pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL), f"{exception_text(exc)}\n{notes}"


def _unpacked(blob: bytes, text: str) -> BaseException:
    """The exception ``_packed`` sent; where it cannot be rebuilt in this process,
    a ``FastForwardError`` with its text."""
    try:
        return pickle.loads(blob)
    except BaseException as exc:  # whatever rebuilding it raises
        return FastForwardError(f"{text}\n(a worker process raised this, and it could not be "
                                f"rebuilt in the loader's process: {exception_text(exc)})")


def _killed_by(number: int) -> str:
    """How a worker that signal *number* ended died, for messages."""
    if number == signal.SIGKILL:
        return "killed by signal 9 (SIGKILL): out of memory, or killed"
    how = f"killed by signal {number} ({_signal_name(number)})"
    if number in NATIVE_CRASHES:
        how += ": a crash in native code"
    return how


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _preload() -> list[str]:
    """What the fork server imports before it forks workers: the main module (as
    multiprocessing does anyway, so operations defined there unpickle), this
    module, and torch when this process uses it."""
    modules = ["__main__", __name__]
    if "torch" in sys.modules:
        modules.append("torch")
    return modules


# -- the worker process --------------------------------------------------------------


class _MappedSlot:
    """A slot's buffers, as a worker maps them."""

    def __init__(self, fd: int, nbytes: int, offsets: dict[str, list[Any]]) -> None:
        try:
            # mapped whole at once (MAP_POPULATE, Linux): writing each page of a
            # fresh mapping would take a page fault the first time, and a worker
            # writes a different part of each slot from batch to batch, so a
            # short warm-up leaves tens of thousands of them for later batches
            whole = map_shared(fd, nbytes, populate=True)
        finally:
            os.close(fd)
        self.buffers: dict[str, Any] = {}
        for key, entries in offsets.items():
            arrays = []
            for offset, shape, dtype in entries:
                dtype = np.dtype(dtype)
                count = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                arrays.append(whole[offset : offset + count].view(dtype).reshape(shape))
            self.buffers[key] = arrays[0] if len(arrays) == 1 else tuple(arrays)

    def get(self, key: str) -> Any:
        return self.buffers.get(key)


def _watch_owner(owner: int) -> None:
    """Exit as soon as the loader's process is gone, however it ended, whatever this
    process is doing. With the fork server that process is not this one's parent
    (the server is), so it is waited on by a pidfd (Linux 5.3+); elsewhere, checked
    every half second."""
    try:
        handle = os.pidfd_open(owner)
    except ProcessLookupError:  # gone already
        os._exit(1)
    except (AttributeError, OSError):
        handle = None
    if handle is not None:
        _readable(handle, None)  # once the process has ended
        os._exit(1)
    parent = os.getppid()
    while True:
        time.sleep(0.5)
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os._exit(1)
        except OSError:
            pass
        if os.getppid() != parent:
            os._exit(1)


def _worker_main(conn: Connection, config: tuple[str, dict[str, type], bool, SharedTables],
                 inherited: list[int], owner: int) -> None:
    worker_started(seeds_globals=True)  # np.random, random, torch's: seeded per sample here
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the loader's to handle
    for fd in inherited:  # a forked child holds the loader's ends of every pipe: let go
        with contextlib.suppress(OSError):
            os.close(fd)
    threading.Thread(target=_watch_owner, args=(owner,), daemon=True,
                     name="fastforward-watchdog").start()
    from ..memory_managers import OSCacheManager, ProcessCacheManager
    from ..reader import Reader

    fname, custom_fields, os_cache, layout = config
    where = f"fastforward worker process {os.getpid()}"
    try:
        # the loader's descriptor of the file (``_hand_file``), never its name: the name
        # may name another file by now, or none; then its reader's tables
        fd = recv_handle(conn)
        try:
            tables = recv_handle(conn)
        except BaseException:
            os.close(fd)
            raise
        progress = _report_crashes(recv_handle(conn))
        reader = Reader(fname, custom_fields, fd=fd, tables=(tables, layout))
        manager = OSCacheManager(reader) if os_cache else ProcessCacheManager(reader)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # the loader is gone (EOFError above)
            conn.send(("error", 0, *_packed(portable(exc, where))))
        return
    conn.send(("ready", 0))
    plans: dict[int, Plan] = {}
    slots: dict[int, _MappedSlot | _BrokenPlan] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        try:
            _serve(conn, message, reader, manager, plans, slots, where, fname, progress)
        except BaseException as exc:  # outside any range: this worker cannot go on
            with contextlib.suppress(BaseException):
                conn.send(("failed", 0, f"{exception_text(exc)}\n{traceback.format_exc()}"))
            return


def _report_crashes(fd: int) -> np.ndarray:
    """In a worker: a fatal signal (SIGSEGV in native code, SIGABRT …) writes the
    stack of the thread that crashed into the crash file *fd* (``faulthandler``), which the
    loader reads back for its ``WorkerError``; returns the file's progress cells
    (``BatchContext.progress``)."""
    os.lseek(fd, CRASH_PAGE, os.SEEK_SET)
    # the crashing thread's stack (all of them could outgrow what the loader reads);
    # *fd* is kept open for it, never closed
    faulthandler.enable(file=fd, all_threads=False)
    # a process an operation forks reports its own crashes where any process would:
    # written here, they would pass for this worker's
    os.register_at_fork(after_in_child=_report_crashes_to_stderr)
    try:
        return map_shared(fd, CRASH_PAGE)[:16].view(np.int64)
    except OSError:  # (no room to map it: the loader's reports lack the sample)
        return np.full(2, -1, dtype=np.int64)


def _report_crashes_to_stderr() -> None:
    with contextlib.suppress(Exception):  # (stderr closed or replaced: none)
        faulthandler.enable(file=sys.stderr, all_threads=True)


def _serve(conn: Connection, message: tuple[Any, ...], reader: Reader, manager: Any,
           plans: dict[int, Plan], slots: dict[int, _MappedSlot | _BrokenPlan], where: str,
           fname: str, progress: np.ndarray) -> None:
    """Carry out one message of the loader's, in a worker process."""
    kind = message[0]
    if kind == "range":
        _, job_id, plan_id, segment_id, blob, lo, hi = message
        progress[1] = -1  # no sample yet (the loader reads the range's id first)
        progress[0] = job_id
        conn.send(("running", job_id))  # so that a death here names this range
        try:
            job = pickle.loads(blob)
            plan = plans[plan_id]
            slot = slots[segment_id]
            if isinstance(plan, _BrokenPlan):  # its error, as it was told the first time
                reply: tuple[Any, ...] = ("error", job_id, *plan.packed)
            elif isinstance(slot, _BrokenPlan):  # the slot could not be mapped here
                reply = ("error", job_id, *slot.packed)
            else:
                data = manager.fetch(job.indices[lo:hi], fields=frozenset(
                    p.field_index for position, p in enumerate(plan.pipelines)
                    if p.decoder is not None and position in job.ranged))
                run_stage1(plan, job, data, slot, lo, hi, progress=progress)
                del data
                reply = ("done", job_id)
        except BaseException as exc:
            try:
                reply = ("error", job_id, *_packed(portable(exc, where)))
            except BaseException:
                reply = ("error", job_id, b"", f"{where}: {exception_text(exc)}, which "
                         f"could not be sent back:\n{traceback.format_exc()}")
        with contextlib.suppress(OSError):
            conn.send(reply)
    elif kind == "plan":
        _, plan_id, blob = message
        try:
            plan = pickle.loads(blob)
            bind_plan(plan, reader)
        except BaseException as exc:  # reported with each range that needs it
            if isinstance(exc, AttributeError) and "__mp_main__" in str(exc):
                # pickled by name from the main module, which the worker imported
                # without running its `if __name__ == "__main__":` block
                exc = WorkerError(
                    f"{fname}: {where} could not rebuild the loader's pipelines "
                    f"({exception_text(exc)}): a class or function defined inside `if "
                    "__name__ == \"__main__\":` (or in `python -c`) does not exist where "
                    "the workers import your main module; define it at your script's "
                    "top level or in a module, or pass worker_type='thread'")
            else:
                exc = portable(exc, where)
                exc.add_note(f"{fname}: the loader's pipelines could not be rebuilt in "
                             f"{where} (an operation that pickles there but does not "
                             "unpickle in a fresh process?)")
            plan = _BrokenPlan(_packed(exc))  # type: ignore[assignment]
        plans[plan_id] = plan
        torch = sys.modules.get("torch")
        if torch is not None:  # the workers are the parallelism: one thread each
            torch.set_num_threads(1)
    elif kind == "unplan":
        plans.pop(message[1], None)
    elif kind == "segment":
        _, segment_id, nbytes, offsets = message
        fd = recv_handle(conn)  # (failing, it leaves the socket out of step: fatal)
        try:
            slots[segment_id] = _MappedSlot(fd, nbytes, offsets)
        except BaseException as exc:  # reported with each range in the slot
            exc = portable(exc, where)
            exc.add_note(f"{where}: mapping a batch's slot ({nbytes} bytes of shared "
                         "memory) failed (a limit on address space: ulimit -v?)")
            slots[segment_id] = _BrokenPlan(_packed(exc))
    elif kind == "forget":
        for segment_id in message[1]:
            slots.pop(segment_id, None)


class _BrokenPlan:
    """A plan that did not unpickle in the worker, or a slot it could not map: its
    error (``_packed``), sent back for each range."""

    def __init__(self, packed: tuple[bytes, str]) -> None:
        self.packed = packed

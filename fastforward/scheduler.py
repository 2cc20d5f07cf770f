"""The epoch engine: one thread running an asyncio loop (uvloop when installed)
that schedules page prefetch and batches, and hands finished batches to the
consumer in order, through a bounded channel.

Lifecycle of one epoch::

    consumer thread          scheduler thread (event loop)         threads / processes
    ---------------          -----------------------------         -------------------
    Engine(plan)  ────────>  TaskGroup:
                               produce: for each batch, in order,
                                 start a batch task ─────────────> io: fetch payloads
                                 (at most batches_ahead at once)  batch thread: take a slot,
                                                                    stage 1 on the workers
                                                                    (ranges), stage 2 here
                               deliver: await tasks in order,
    next() <── channel <────── put (one batch waits there at most)
    close() ──call_soon_threadsafe(stop)──> every task cancelled; threads stopped; joined

Ownership: the engine owns its thread, its loop, its pools (``fastforward-io``,
``fastforward-batch-N``), the epoch's workers (``EpochWorkers``; process
workers themselves belong to the loader) and the slots of the batches it is
computing. Any exception anywhere (``BaseException`` subclasses included:
``StopIteration``, ``CancelledError``, ``KeyboardInterrupt`` raised by an
operation) is caught where it happens, carried as a value, and raised by the
consumer's ``next()`` after every batch before it, its message naming the file,
the sample and the field. ``StopIteration`` is wrapped in a ``RuntimeError``
(PEP 479's rule): raised from ``next()``, it would end the user's loop as if
the epoch were over; so is ``SystemExit``, which would end the user's program.
Nothing polls: hand-over, cancellation and the scheduler's end are events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BatchTimeout, annotate

try:
    import uvloop

    _loop_factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
except ImportError:  # optional: asyncio's own loop is correct, only slower
    _loop_factory = asyncio.new_event_loop

_END = object()


@dataclass
class EpochPlan:
    """Everything an engine needs to compute one epoch.

    ``run_batch(batch_index, indices, data, slot) -> outputs`` is called on a
    batch thread (or the scheduler thread, for light batches) with the batch's
    fetched payloads and its slot; ``workers`` runs stage 1 for it and is closed
    with the engine.
    """

    batches: Sequence[np.ndarray]
    fetch: Callable[[np.ndarray], Any]
    acquire_slot: Callable[[], Any]
    release_slot: Callable[[Any], None]
    run_batch: Callable[..., Any]
    batches_ahead: int
    workers: Any = None  # EpochWorkers (loader.workers); closed when the epoch ends
    fetch_is_cheap: bool = False  # views of a map: fetch on the batch thread, no io hop


class DaemonPool(Executor):
    """The engine's thread pool: ``ThreadPoolExecutor``'s, but with daemon threads.

    The interpreter joins a ``ThreadPoolExecutor``'s threads at exit before any
    ``atexit`` hook runs; a batch thread waiting on a range that a stuck worker
    process never ends (an epoch iterator still alive at exit: a global ``it =
    iter(loader)``) then held the exit up for ever, and the hook that would end
    the epoch (the loader's finalizer, which kills the stuck worker after
    ``ProcessEpoch.grace``) never ran. Daemon threads are not joined: the
    finalizer runs, and ``shutdown()`` joins them.
    """

    def __init__(self, size: int, name: str, lazy: bool = False) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._size, self._name = size, name
        if lazy:  # a thread started per submit() until there are *size*, as a
            return  # ThreadPoolExecutor starts them (a batch of one range starts none)
        try:
            for _ in range(size):
                self._start_thread()
        except BaseException:  # out of threads, or Ctrl-C: those started end
            self.shutdown(wait=False)
            raise

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._work, name=f"{self._name}_{len(self._threads)}",
                                  daemon=True)
        # listed first: Ctrl-C in start()'s wait leaves a thread that did start, which
        # shutdown() must end; one that could not start (start() raises an Exception,
        # "can't start new thread", before its wait) is no thread of the pool
        self._threads.append(thread)
        try:
            thread.start()
        except Exception:
            self._threads.remove(thread)
            raise

    def runs_this_thread(self) -> bool:
        """Whether the calling thread is one of the pool's."""
        return threading.current_thread() in self._threads

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if len(self._threads) < self._size:
                self._start_thread()
            self._queue.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # as ThreadPoolExecutor: the future carries it
                    future.set_exception(exc)
                    del exc
                else:
                    future.set_result(result)
                    del result
            del future, fn, args, kwargs

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            if not self._closed:
                self._closed = True
                for _ in self._threads:
                    self._queue.put(None)  # each thread ends after the work queued before
            elif cancel_futures:
                for _ in self._threads:  # the drain took an earlier shutdown's ends
                    self._queue.put(None)
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()


STUCK_SECONDS = 2.0
"""How long an epoch that ends (its end, ``break``, ``close()``, Ctrl-C) waits for
the batches still running before it gives up on them (see ``Engine._shut_down``)."""

LIGHT_BATCH_SECONDS = 0.0005
"""A batch whose work takes less than this (as the last few did) runs on the
scheduler thread itself: handing it to a pool thread and back would cost more.
One that turns out slow (a cold page cache faults inside it) holds the loop up
once, and the batches after it go back to the pool."""


@dataclass(frozen=True)
class ChannelStats:
    """What the hand-over saw (``EpochIterator.stats()``, ``Loader.stats()``).

    Attributes:
        batches: batches handed to the consumer.
        consumer_wait_seconds: time ``next()`` spent waiting for a batch: the
            training loop waited for data this long. Near zero: loading is not
            the bottleneck.
        producer_wait_seconds: time finished batches waited for the consumer
            to take the one before (the loader was ahead).
        first_batch_seconds: from the engine's start to the first batch handed
            over (None before it).
    """

    batches: int = 0
    consumer_wait_seconds: float = 0.0
    producer_wait_seconds: float = 0.0
    first_batch_seconds: float | None = None

    def __add__(self, other: ChannelStats) -> ChannelStats:
        return ChannelStats(self.batches + other.batches,
                            self.consumer_wait_seconds + other.consumer_wait_seconds,
                            self.producer_wait_seconds + other.producer_wait_seconds,
                            self.first_batch_seconds if self.first_batch_seconds is not None
                            else other.first_batch_seconds)


class Channel:
    """A bounded hand-over: the loop puts, the consumer thread takes.

    Holds at most one item; the loop waits (an asyncio event) until the consumer
    took the previous one. ``finish()`` wakes a waiting consumer for good (the
    engine stopped). Counts how long each side waited.
    """

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._changed = threading.Condition()
        self._finished = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._taken: asyncio.Event | None = None
        self._started = time.perf_counter()
        self._batches = 0
        self._consumer_wait = 0.0
        self._producer_wait = 0.0
        self._first: float | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the producing loop (on it)."""
        self._loop = loop
        self._taken = asyncio.Event()
        self._taken.set()

    async def put(self, item: Any, stop: asyncio.Event) -> None:
        """Hand *item* over once the consumer took the previous one, unless *stop* is
        set first (which also sets the taken event, to wake this)."""
        taken = self._taken
        assert taken is not None
        start = time.perf_counter()
        if not stop.is_set():
            await taken.wait()
        if stop.is_set():
            raise asyncio.CancelledError
        self._producer_wait += time.perf_counter() - start
        taken.clear()
        with self._changed:
            self._items.append(item)
            self._changed.notify()

    def wake_producer(self) -> None:
        """On the loop: let a waiting ``put`` return (it then sees the stop)."""
        if self._taken is not None:
            self._taken.set()

    def take(self, timeout: float | None = None) -> Any:
        """The next item, waiting for it; None once finished without one.
        Raises ``BatchTimeout`` when none came in *timeout* seconds (None: no limit)."""
        start = time.perf_counter()
        with self._changed:
            while not self._items:
                if self._finished:
                    return None
                left = None if timeout is None else start + timeout - time.perf_counter()
                if left is not None and left <= 0:
                    self._consumer_wait += time.perf_counter() - start
                    raise BatchTimeout("no batch came in time")
                self._changed.wait(None if left is None else min(left, threading.TIMEOUT_MAX))
            item = self._items.popleft()
        now = time.perf_counter()
        self._consumer_wait += now - start
        if item is not _END and not isinstance(item, _Failure):
            self._batches += 1
            if self._first is None:
                self._first = now - self._started
        loop, taken = self._loop, self._taken
        if loop is not None and taken is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have just finished
                loop.call_soon_threadsafe(taken.set)
        return item

    def finish(self) -> None:
        """No more items will come: wake the consumer (any thread)."""
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    def stats(self) -> ChannelStats:
        """The counts so far."""
        return ChannelStats(self._batches, self._consumer_wait, self._producer_wait,
                            self._first)


class Engine:
    """Computes one epoch in the background; ``next_batch()`` returns batches in order."""

    def __init__(self, plan: EpochPlan) -> None:
        self.plan = plan
        self.channel = Channel()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._durations: collections.deque[float] = collections.deque(maxlen=4)
        self._in_flight = 0  # batches given to the batch threads, not yet ended
        self._idle = threading.Condition()
        self._stop: asyncio.Event | None = None
        self._closed = False  # close() was called (the epoch ends on it)
        self._closing = False  # a close() is shutting down, or has
        self._close_lock = threading.Lock()
        self._stopped = threading.Event()  # set once close() has stopped everything
        self._pid = os.getpid()  # (a forked child's copy waits for none of the parent's)
        self.left_running = False  # close() left batches running on threads (stuck)
        self._finished = False
        self._thread = threading.Thread(target=self._run, name="fastforward-scheduler",
                                        daemon=True)
        self._start_lock = threading.Lock()
        self._abandoned = False  # __init__ failed: a scheduler thread that runs now returns
        self._running = False  # the scheduler thread runs (and will set _ready)
        self._pools: list[DaemonPool] = []
        try:
            self._io_pool = self._pool(1, "fastforward-io")
            # a batch waits on its ranges, so batches run on a pool of their own
            self._batch_pool = self._pool(max(1, plan.batches_ahead), "fastforward-batch")
            self._thread.start()
            self._ready.wait()
        except BaseException:  # no thread left behind: the caller never gets this engine
            self._abandon_start()
            raise

    def _pool(self, size: int, name: str) -> DaemonPool:
        pool = DaemonPool(size, name)
        self._pools.append(pool)
        return pool

    def _abandon_start(self) -> None:
        """``__init__`` failed (out of threads, Ctrl-C while a thread started): stop
        what it started. The pools' threads would wait on their queues for ever,
        and a started scheduler would run the epoch with nobody to take it."""
        with self._start_lock:  # Thread.start() may have been interrupted before or
            self._abandoned = True  # after the thread began: the thread itself says
            running = self._running
        if not running:
            for pool in self._pools:
                pool.shutdown(wait=False)
            if self.plan.workers is not None:
                self.plan.workers.close()
            return
        self._ready.wait()  # set within milliseconds, or as the thread ends
        self.close()

    # -- consumer side ------------------------------------------------------------

    def next_batch(self, timeout: float | None = None) -> Any:
        """The next batch's outputs; raises StopIteration at the end of the epoch,
        or the exception that stopped it; ``TimeoutError`` when none came in
        *timeout* seconds (``BatchTimeout``; the epoch stays open: a later call
        waits again)."""
        if self._finished or self._closed:
            self.close()  # returns once a close() in progress has stopped everything
            raise StopIteration
        try:
            item = self.channel.take(timeout)
        except BatchTimeout:  # (the epoch stays open)
            raise
        except BaseException:  # Ctrl-C while waiting
            self.close()
            raise
        if item is None:  # closed from another thread, or the scheduler stopped
            ended_by_close = self._closed
            self.close()
            if ended_by_close:
                raise StopIteration
            raise RuntimeError("fastforward's scheduler thread stopped without ending "
                               "the epoch (a bug: please report it)")
        if item is _END:
            self._finished = True
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            self.close()
            exc = item.consumer_exception()
            # no reference to it left in this frame, which its traceback keeps (a cycle
            # that kept the loader, and its workers, until a garbage collection)
            item = None
            try:
                raise exc
            finally:
                del exc
        return item

    def close(self) -> None:
        """Stop the epoch, the thread and the pools (idempotent, any thread but the loop's).

        Returns once everything has stopped, whichever thread called it first: a
        consumer woken by another thread's close() must not start a new epoch on
        the same slots while this one's batches are still being written.
        """
        first = False
        try:
            with self._close_lock:
                self._closed = True
                first, self._closing = not self._closing, True
            if first:
                self._shut_down()
                self._stopped.set()
        except BaseException:
            # Ctrl-C while joining the thread (or anywhere in the shutdown): the
            # next close() (the loader's finalizer at exit, at the latest) does it
            # all again, instead of waiting forever for this one to finish
            if first:
                with self._close_lock:
                    self._closing = False
            raise
        if first or threading.current_thread() is self._thread:
            return
        while not self._stopped.wait(0.05):
            with self._close_lock:
                interrupted = not self._closing
            if interrupted:  # the first close() was cut short: finish its work here
                self.close()
                return

    def _shut_down(self) -> None:
        """close()'s work: wake the consumer, stop the loop, join the thread, shut the
        pools and the workers down (each step can run again after an interrupt).

        Batches still running ``STUCK_SECONDS`` after the stop wait on something that
        does not end (an operation stuck, a read that never returns, a stopped
        worker). Process workers running their ranges are killed (``abandon()``,
        every ``grace`` seconds while they hold ranges of the epoch), and the batches
        fail. Threads cannot be stopped: what still runs on this process's threads
        then is left running (daemon threads, which do not hold the interpreter's
        exit up; each keeps its batch's slot, which is not reused while it does: a
        slow batch finishes in the background, a stuck one stays), and close()
        returns; ``left_running`` says so. No warning: close() runs in finalizers,
        where a warning turned into an error would stop the clean-up."""
        self.channel.finish()  # a consumer waiting in another thread
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may have just finished
                loop.call_soon_threadsafe(self._request_stop)
        forked = os.getpid() != self._pid  # a forked child: the batches in flight, and
        left = forked                      # the threads running them, are the parent's
        if not forked and threading.current_thread() is not self._thread:
            self._thread.join(STUCK_SECONDS)  # (a light batch runs on the thread itself)
            left = self._thread.is_alive()
        workers = self.plan.workers
        mine = int(self._batch_pool.runs_this_thread())  # (a batch of its own: not waited for)
        if not left:
            self._batch_pool.shutdown(wait=False, cancel_futures=True)  # none starts now
            grace = STUCK_SECONDS if workers is None or workers.grace is None \
                else workers.grace
            while True:
                with self._idle:
                    if self._idle.wait_for(lambda: self._in_flight <= mine, grace):
                        break
                if workers is None or not workers.abandon():  # nothing it could stop
                    left = True
                    break
        self.left_running = left and not forked
        for pool in (self._batch_pool, self._io_pool):
            pool.shutdown(wait=not left, cancel_futures=True)
        if workers is not None:
            workers.close(wait=not left)

    @property
    def is_running(self) -> bool:
        """Whether the engine's thread is alive."""
        return self._thread.is_alive()

    # -- scheduler thread ---------------------------------------------------------

    def _run(self) -> None:
        # close() cancels every task, this one too; one that is already ending can
        # still finish as cancelled (a cancellation requested while it was not
        # waiting is delivered as it returns). Nothing is lost: close() wants none
        # of its results.
        with self._start_lock:
            if self._abandoned:  # __init__ failed before this thread ran: nobody waits
                return
            self._running = True
        try:
            # the suppress is outside the runner: its own clean-up runs as tasks
            with (contextlib.suppress(asyncio.CancelledError),
                  asyncio.Runner(loop_factory=_loop_factory) as runner):
                runner.run(self._start())
        finally:
            self._ready.set()
            self.channel.finish()  # whatever happened, a waiting consumer wakes up

    def _request_stop(self) -> None:
        """On the loop: end everything. Cancels every task and sets the stop event,
        so that the epoch ends even where a task group absorbed a cancellation."""
        assert self._stop is not None
        if self._stop.is_set():  # asked again by a close() that finishes one cut short:
            return  # cancelling now would cancel the runner's own clean-up tasks
        self._stop.set()
        self.channel.wake_producer()
        for task in asyncio.all_tasks():
            task.cancel()

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.channel.bind(self._loop)
        self._stop = asyncio.Event()
        self._ready.set()
        outcome: Any = None
        try:
            await self._pipeline()
            outcome = _END
        except asyncio.CancelledError as stopped:  # close() asked for it
            # Its traceback runs through the task group's __aexit__, whose frame holds
            # it (asyncio of Python 3.11 to 3.13): a cycle that kept the engine, the
            # plan, the reader and the slots of a loader left by ``break`` until the
            # next garbage collection. The finished frames' locals are of no use.
            traceback.clear_frames(stopped.__traceback__)
        except BaseException as exc:  # hand the root cause to the consumer
            cause = _root_cause(exc)
            outcome = None if isinstance(cause, _Delivered) else _Failure(cause)
        try:
            if outcome is not None:
                await self.channel.put(outcome, self._stop)
            # keep the loop for the consumer's last take(); close() ends it
            await self._stop.wait()
        except asyncio.CancelledError:
            pass

    async def _pipeline(self) -> None:
        # At most batches_ahead batches are computing or waiting to be handed
        # over; with the one in the channel and the one the consumer holds,
        # that is batches_ahead + 2 of the pool's batches_ahead + 3 slots.
        plan = self.plan
        budget = asyncio.Semaphore(plan.batches_ahead)
        pending: asyncio.Queue[asyncio.Task[Any]] = asyncio.Queue()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._produce(group, pending, budget))
            group.create_task(self._deliver(pending, budget, len(plan.batches)))

    async def _produce(self, group: asyncio.TaskGroup, pending: asyncio.Queue[asyncio.Task[Any]],
                       budget: asyncio.Semaphore) -> None:
        for index, indices in enumerate(self.plan.batches):
            await budget.acquire()
            pending.put_nowait(group.create_task(self._batch(index, indices)))

    async def _deliver(self, pending: asyncio.Queue[asyncio.Task[Any]],
                       budget: asyncio.Semaphore, count: int) -> None:
        assert self._stop is not None
        for _ in range(count):
            task = await pending.get()
            outputs = await task
            await self.channel.put(outputs, self._stop)  # once the consumer took the last
            if isinstance(outputs, _Failure):
                # every batch before it went out; stop the rest (this frame, kept by
                # _Delivered's traceback, keeps no reference to the failure)
                del task, outputs
                raise _Delivered
            del outputs
            budget.release()

    async def _batch(self, index: int, indices: np.ndarray) -> Any:
        """One batch's outputs, or its failure as a value (never an exception: an
        executor future holding StopIteration or CancelledError would never reach
        its awaiting task)."""
        loop = asyncio.get_running_loop()
        plan = self.plan
        if not plan.fetch_is_cheap:  # os_cache=False: read the bytes on the io thread
            data = await loop.run_in_executor(self._io_pool, _guarded, plan.fetch, indices)
            if isinstance(data, _Failure):
                return data
            return await self._on_batch_thread(index, indices, data)
        # not worth a hop to a pool thread and back; never with process workers, whose
        # ranges close() may have to abandon (it does so for the batch threads' only)
        if self._light() and (plan.workers is None or plan.workers.grace is None):
            return self._whole_batch(index, indices)
        return await self._on_batch_thread(index, indices)

    def _on_batch_thread(self, *args: Any) -> asyncio.Future[Any]:
        """``_whole_batch(*args)`` on the batch pool, counted in ``_in_flight`` from
        now until it returns, or is cancelled before it starts."""
        with self._idle:
            self._in_flight += 1
        try:
            future = self._batch_pool.submit(self._whole_batch, *args)
        except BaseException:
            self._batch_done(None)
            raise
        future.add_done_callback(self._batch_done)
        return asyncio.wrap_future(future)

    def _batch_done(self, _: Any) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def _whole_batch(self, index: int, indices: np.ndarray, data: Any = None) -> Any:
        """Fetch (unless given *data*), take a slot, run the pipelines, give the slot back.

        All on one thread, so a cancelled batch cannot give its slot back while this
        still writes into it: the slot returns to the pool only after ``run_batch``.
        Returns the outputs, or a ``_Failure`` holding whatever was raised.
        """
        plan = self.plan
        start = time.perf_counter()
        try:
            if data is None:
                data = plan.fetch(indices)
            slot = plan.acquire_slot()
            try:
                return plan.run_batch(index, indices, data, slot)
            finally:
                del data  # os_cache=False: the batch's bytes go now
                plan.release_slot(slot)  # the user's references (if any) now fence it
                self._durations.append(time.perf_counter() - start)
        except BaseException as exc:  # delivered in order, after the batches before it
            return _Failure(exc)

    def _light(self) -> bool:
        """Whether the last few batches each took less than ``LIGHT_BATCH_SECONDS``."""
        recent = self._durations
        return len(recent) == recent.maxlen and max(recent) < LIGHT_BATCH_SECONDS


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or a ``_Failure`` holding whatever it raised."""
    try:
        return fn(*args)
    except BaseException as exc:
        return _Failure(exc)


@dataclass
class _Failure:
    exception: BaseException

    def consumer_exception(self) -> BaseException:
        """What ``next()`` raises: the exception itself, but two, raised as a
        ``RuntimeError`` that says what happened, caused by them: StopIteration,
        which would silently end the consumer's ``for`` loop (PEP 479's
        reasoning), and SystemExit (``sys.exit()`` in an operation, argparse in
        a helper), which would end the user's program with its status and no
        word (the writer does the same with its workers' ``SystemExit``)."""
        exc = self.exception
        if isinstance(exc, StopIteration):
            what = f"an operation raised StopIteration: {exc}".rstrip(": ")
        elif isinstance(exc, SystemExit):
            what = f"an operation called sys.exit({exc.code!r})"
        else:
            return exc
        wrapped = RuntimeError(what)
        wrapped.__cause__ = exc
        for note in getattr(exc, "__notes__", ()):
            # where it was raised (file, batch, sample, field, operation) is a note of
            # such an exception (``errors.annotate``): the message says it here
            if "\n" in note:
                wrapped.add_note(note)
            else:
                annotate(wrapped, note)
        return wrapped


class _Delivered(Exception):
    """A batch's failure reached the consumer: stop the epoch."""


def _root_cause(exc: BaseException) -> BaseException:
    """The first real exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = inner[0] if inner else exc.exceptions[0]
    return exc


"""The epoch engine: one thread running an asyncio loop (uvloop when installed)
that schedules page prefetch, decoding and transforms on thread pools, and
hands finished batches to the consumer in order.

Lifecycle of one epoch::

    consumer thread          scheduler thread (event loop)         pools
    ---------------          -----------------------------         -----
    Engine(plan)  ────────>  TaskGroup:
                               produce: for each batch, in order,
                                 start batch task ───────────────> io: fetch payloads
                                 (at most batches_ahead at once)  batch: run the pipelines,
                                                                     decode: ranges of samples
                               deliver: await tasks in order,
    next() <── hand-over box <── put (batch, outputs), once the box is empty
    close() ──call_soon_threadsafe(cancel)──> TaskGroup cancelled; pools shut down; joined

Ownership: the engine owns its thread, its loop, its two executors
(``fastforward-io``, ``fastforward-batch-N``, ``fastforward-decode-N``) and the ring slots of the
batches it is computing. A failure anywhere cancels the epoch and reaches the
consumer's ``next()`` as the original exception, its message naming the file,
the sample and the field. Nothing polls: cancellation and hand-over are
events on the loop.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    import uvloop

    _loop_factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
except ImportError:  # optional: asyncio's own loop is correct, only slower
    _loop_factory = asyncio.new_event_loop

_END = object()
_LIVE: weakref.WeakSet[Engine] = weakref.WeakSet()


@dataclass
class EpochPlan:
    """Everything an engine needs to compute one epoch.

    ``run_batch(batch_index, indices, data, slot) -> outputs`` is called on a
    pool thread with the batch's fetched payloads and its ring slot; it may
    itself submit decode ranges through ``map_ranges``.
    """

    batches: Sequence[np.ndarray]
    fetch: Callable[[np.ndarray], Any]
    acquire_slot: Callable[[], Any]
    release_slot: Callable[[Any], None]
    run_batch: Callable[..., Any]
    num_workers: int
    batches_ahead: int
    stats: dict[str, int] = field(default_factory=dict)
    fetch_is_cheap: bool = False  # views of a map: fetch on the batch thread, no io hop


LIGHT_BATCH_SECONDS = 0.0005
"""A batch whose work takes less than this (as the last few did) runs on the
scheduler thread itself: handing it to a pool thread and back would cost more.
One that turns out slow (a cold page cache faults inside it) holds the loop up
once, and the batches after it go back to the pool."""


class Engine:
    """Computes one epoch in the background; ``next_batch()`` returns batches in order."""

    def __init__(self, plan: EpochPlan) -> None:
        self.plan = plan
        self._decode_pool = ThreadPoolExecutor(max(1, plan.num_workers),
                                               thread_name_prefix="fastforward-decode")
        self._io_pool = ThreadPoolExecutor(1, thread_name_prefix="fastforward-io")
        # batch tasks wait on decode ranges, so they run on a pool of their own
        self._batch_pool = ThreadPoolExecutor(max(1, plan.batches_ahead),
                                              thread_name_prefix="fastforward-batch")
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        # the hand-over box: at most one finished batch, taken by the consumer
        # without a trip through the loop; `_taken` tells the loop it is empty
        self._box: collections.deque[Any] = collections.deque()
        self._box_changed = threading.Condition()
        self._taken: asyncio.Event | None = None
        self._durations: collections.deque[float] = collections.deque(maxlen=4)
        self._stop: asyncio.Event | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        self._stopped = threading.Event()  # set once close() has stopped everything
        self._finished = False
        self._thread = threading.Thread(target=self._run, name="fastforward-scheduler",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        _LIVE.add(self)

    # -- consumer side ------------------------------------------------------------

    def next_batch(self) -> Any:
        """The next batch's outputs; raises StopIteration at the end of the epoch,
        or the exception that stopped it."""
        if self._finished or self._closed:
            self.close()  # returns once a close() in progress has stopped everything
            raise StopIteration
        try:
            item = self._take()
        except BaseException:  # Ctrl-C while waiting, or the scheduler died
            self.close()
            raise
        if item is None:  # close() from another thread
            self.close()
            raise StopIteration
        if item is _END:
            self._finished = True
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            self.close()
            raise item.exception
        return item

    def _take(self) -> Any:
        """Wait for the box's batch and take it (None once the engine is closed)."""
        with self._box_changed:
            while not self._box:
                if self._closed:
                    return None
                if not self._thread.is_alive():
                    raise RuntimeError("fastforward's scheduler thread stopped without ending "
                                       "the epoch (a bug: please report it)")
                self._box_changed.wait(0.5)  # woken by a batch or by close()
            item = self._box.popleft()
        loop, taken = self._loop, self._taken
        if loop is not None and taken is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have just finished
                loop.call_soon_threadsafe(taken.set)
        return item

    def map_ranges(self, fn: Callable[[int, int], None], count: int) -> None:
        """Run ``fn(lo, hi)`` over ``range(count)`` split across the decode threads; wait."""
        if count == 0:
            return
        bounds = np.linspace(0, count, min(self.plan.num_workers, count) + 1).astype(int)
        futures = [self._decode_pool.submit(fn, int(lo), int(hi))
                   for lo, hi in itertools.pairwise(bounds) if hi > lo]
        first_error: BaseException | None = None
        for future in futures:  # wait for all, so no range is still writing afterwards
            try:
                future.result()
            except BaseException as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def close(self) -> None:
        """Stop the epoch, the thread and the pools (idempotent, any thread but the loop's).

        Returns once everything has stopped, whichever thread called it first: a
        consumer woken by another thread's close() must not start a new epoch on
        the same ring while this one's batches are still being written.
        """
        with self._close_lock:
            first, self._closed = not self._closed, True
        if not first:
            if threading.current_thread() is not self._thread:
                self._stopped.wait()
            return
        with self._box_changed:
            self._box_changed.notify_all()  # a consumer waiting in another thread
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may have just finished
                loop.call_soon_threadsafe(self._request_stop)
        if threading.current_thread() is not self._thread:
            self._thread.join()
        for pool in (self._batch_pool, self._decode_pool, self._io_pool):
            pool.shutdown(wait=True, cancel_futures=True)
        _LIVE.discard(self)
        self._stopped.set()

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
        with (asyncio.Runner(loop_factory=_loop_factory) as runner,
              contextlib.suppress(asyncio.CancelledError)):
            runner.run(self._start())

    def _request_stop(self) -> None:
        """On the loop: end everything. Cancels every task and sets the stop event,
        so that the epoch ends even where a task group absorbed a cancellation."""
        assert self._stop is not None
        self._stop.set()
        if self._taken is not None:
            self._taken.set()  # wakes a _put waiting for the consumer
        for task in asyncio.all_tasks():
            task.cancel()

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._taken = asyncio.Event()
        self._taken.set()
        self._stop = asyncio.Event()
        self._main = asyncio.current_task()
        self._ready.set()
        outcome: Any = None
        try:
            await self._pipeline()
            outcome = _END
        except asyncio.CancelledError:
            pass  # close() asked for it
        except BaseException as exc:  # hand the root cause to the consumer
            cause = _root_cause(exc)
            outcome = None if isinstance(cause, _Delivered) else _Failure(cause)
        try:
            if outcome is not None:
                await self._put(outcome)
            # keep the loop for the consumer's last get(); close() ends it
            await self._stop.wait()
        except asyncio.CancelledError:
            pass

    async def _put(self, item: Any) -> None:
        """Hand *item* to the consumer once it took the previous one, unless the
        engine is stopped first (``_request_stop`` sets ``_taken`` too, to wake this)."""
        assert self._taken is not None
        assert self._stop is not None
        if not self._stop.is_set():
            await self._taken.wait()
        if self._stop.is_set():
            raise asyncio.CancelledError
        self._taken.clear()
        with self._box_changed:
            self._box.append(item)
            self._box_changed.notify()

    async def _pipeline(self) -> None:
        # At most batches_ahead batches are computing or waiting to be handed
        # over; with the one in the out queue and the one the consumer holds,
        # that is the ring's batches_ahead + 2 slots.
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
        for _ in range(count):
            task = await pending.get()
            outputs = await task
            await self._put(outputs)  # returns once the consumer took the previous one
            if isinstance(outputs, _Failure):
                raise _Delivered  # every batch before it went out; stop the rest
            del outputs
            budget.release()

    async def _batch(self, index: int, indices: np.ndarray) -> Any:
        loop = asyncio.get_running_loop()
        plan = self.plan
        try:
            if not plan.fetch_is_cheap:  # os_cache=False: read the bytes on the io thread
                data = await loop.run_in_executor(self._io_pool, plan.fetch, indices)
                return await loop.run_in_executor(self._batch_pool, self._whole_batch, index,
                                                  indices, data)
            if self._light():  # not worth a hop to a pool thread and back
                return self._whole_batch(index, indices)
            return await loop.run_in_executor(self._batch_pool, self._whole_batch, index,
                                              indices)
        except Exception as exc:  # delivered in order, after the batches before it
            return _Failure(exc)

    def _whole_batch(self, index: int, indices: np.ndarray, data: Any = None) -> Any:
        """Fetch (unless given *data*), take a slot, run the pipelines, give the slot back.

        All on one thread, so a cancelled batch cannot give its slot back while this
        still writes into it: the slot returns to the ring only after ``run_batch``.
        """
        plan = self.plan
        start = time.perf_counter()
        if data is None:
            data = plan.fetch(indices)
        slot = plan.acquire_slot()
        try:
            return plan.run_batch(index, indices, data, slot, self.map_ranges)
        finally:
            del data  # os_cache=False: the batch's bytes go now
            plan.release_slot(slot)  # the user's references (if any) now fence it
            self._durations.append(time.perf_counter() - start)

    def _light(self) -> bool:
        """Whether the last few batches each took less than ``LIGHT_BATCH_SECONDS``."""
        recent = self._durations
        return len(recent) == recent.maxlen and max(recent) < LIGHT_BATCH_SECONDS


@dataclass
class _Failure:
    exception: BaseException


class _Delivered(Exception):
    """A batch's failure reached the consumer: stop the epoch."""


def _root_cause(exc: BaseException) -> BaseException:
    """The first real exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = inner[0] if inner else exc.exceptions[0]
    return exc


def close_all() -> None:
    """Stop every live engine (at interpreter exit, so no thread outlives it)."""
    for engine in list(_LIVE):
        engine.close()


atexit.register(close_all)

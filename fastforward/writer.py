"""Write datasets to .beton v2 files that FFCV 1.0.2 reads.

How a write runs:

1. The parent takes the target's lock, ``.<name>.lock`` beside it (a second
   writer of the same target is refused), removes the ``.<name>.*.part``
   files that writers killed earlier left there, and opens the output: on
   Linux an unnamed file in the target's directory (``O_TMPFILE``), which
   vanishes with its last descriptor whatever kills the process; where that
   is unavailable, a hidden ``.<name>.<random>.part`` file. It writes the
   header (with ``alloc_table_ptr = 0``) and the field descriptors.
2. Worker processes encode chunks of consecutive samples. ``malloc`` hands
   each field a fresh buffer and a *provisional* pointer; a chunk comes back
   as its metadata rows plus one blob of payload bytes.
3. The parent places the chunks in sample order: each sample's payloads go
   back to back into the current page, or into a fresh page when they do not
   fit, and the provisional pointers in the metadata become file offsets.
   Pages are written whole.
4. At the end: the checksum block (``checksums=True``: the sums of the pages,
   hashed as they were written, and of the other parts), the allocation table
   after it, the metadata table, the final header and ``fsync``. Only then
   does the file get a name: the unnamed file is linked under a hidden
   temporary name (``linkat`` through ``/proc/self/fd``), which ``os.replace``
   moves onto the target; a ``.part`` file is renamed onto it. Last, the lock
   file is removed.

Placement happens in one process, in sample order, so the file depends only
on the inputs and the seed, never on ``num_workers`` or timing. Any failure
(a bad sample, a dead worker, a full disk, Ctrl-C, SIGTERM) stops the
workers, removes the partial file and raises: no file that looks valid is
left behind.

Workers never outlive the parent, whatever kills it: a forked worker closes
the parent's ends of the pipes it inherited (so that the parent's death reads
as end-of-file), and on Linux each asks the kernel to kill it when its parent
dies (``PR_SET_PDEATHSIG``). Workers are forked only from a process that has
a single thread at the fork (see ``_Pool``); otherwise they start from
multiprocessing's fork server, and the dataset and fields are pickled.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import heapq
import inspect
import itertools
import multiprocessing
import operator
import os
import pickle
import queue
import re
import secrets
import signal
import stat
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple, NoReturn

import numpy as np

from ._compat import not_provided
from .checksums import PageHasher, block_size, build_block
from .errors import (
    EncodeError,
    FastForwardError,
    Terminated,
    WorkerError,
    annotate,
    exception_text,
    portable,
)
from .fields import Field
from .fields.base import CURRENT_SAMPLE, SAMPLE_SIZES, SampleSizes
from .types import (
    ALLOC_TABLE_TYPE,
    CURRENT_VERSION,
    FIELD_NAME_BYTES,
    MAX_PAGE_SIZE,
    MIN_PAGE_SIZE,
    FieldDescType,
    HeaderType,
    data_offset,
    get_metadata_type,
    metadata_offset,
    type_id_of,
    validate_page_size,
)
from .utils import (
    default_workers,
    forkserver_preload,
    in_a_worker,
    install_hint,
    kind_of_file,
    main_module_hint,
    refuse_in_a_worker,
    sample_numbers,
    whole_number,
    worker_started,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no advisory locks
    fcntl = None  # type: ignore[assignment]

__all__ = ["MAX_PAGE_SIZE", "MIN_PAGE_SIZE", "DatasetWriter", "SkippedSample",
           "TargetLockedError", "WorkerError"]

# Provisional pointers handed out by malloc: PROVISIONAL + k for a sample's
# k-th allocation. No real file offset comes near this value, and a u8 of a
# sample's metadata counts as a pointer only when it is one of that sample's own
# PROVISIONAL + k (k below its count of allocations): any other value, however
# large (a 64-bit hash, an id), is the field's data, kept as it is.
PROVISIONAL = 0xFFF5_A1E0_0000_0000
MAX_ALLOCS_PER_SAMPLE = 1 << 20
_IN_FLIGHT_PER_WORKER = 2
# Memory: a chunk is encoded in a worker, pickled, sent and held by the parent until
# the chunks before it are written. For an indexed dataset, a task is cut to about
# TASK_BYTES of encoded data (less with many workers: see _Pool.run), judged by the
# chunks received so far, and a worker ends a chunk once it holds that much (the
# parent sends the rest of the task again); the first task each worker gets has
# PROBE_SAMPLES samples at most, before anything is known. A worker is given a
# second task only while the tasks in flight stay within IN_FLIGHT_BYTES. A
# WebDataset shard is one task: its worker sends chunks of TASK_BYTES as it goes,
# and the parent reads no more from a worker while it holds IN_FLIGHT_BYTES,
# unless that worker's next chunk is the next to write (_encode_task).
TASK_BYTES = 32 << 20
IN_FLIGHT_BYTES = 256 << 20
PROBE_SAMPLES = 4


class TargetLockedError(FastForwardError, RuntimeError):
    """Another writer is writing the same target file (it holds its lock)."""


class SkippedSample(NamedTuple):
    """A sample left out of the file because encoding it raised one of the
    writer's ``skip_errors`` (``DatasetWriter.skipped`` lists them)."""

    # its position in the order the writer was given (a field that hides tuple.index)
    index: int  # type: ignore[assignment]
    source: Any  # its dataset index (``from_indexed_dataset``) or ``'shard#n'``
    field: str | None  # the field whose encoding failed; None: reading the sample did
    error: str  # the exception, as ``Type: message``


class _Unread(NamedTuple):
    """What ``_IndexedSource`` yields for a sample whose reading from the dataset
    raised one of the writer's ``skip_errors``."""

    error: str  # the exception, as ``Type: message``


class _Chunk:
    """One chunk as encoded by a worker (plain arrays; pickled back to the parent)."""

    __slots__ = ("alloc_counts", "alloc_offsets", "alloc_sizes", "blob", "extra", "metadata",
                 "packed", "skipped")

    def __init__(self, metadata: np.ndarray, blob: bytes, packed: np.ndarray,
                 alloc_counts: np.ndarray, alloc_offsets: np.ndarray,
                 alloc_sizes: np.ndarray, skipped: list[SkippedSample],
                 extra: tuple[int, int] | None = None) -> None:
        self.metadata = metadata  # rows of this chunk's kept samples, pointers provisional
        self.blob = blob  # every sample's payloads, packed as they will lie in a page
        self.packed = packed  # bytes each sample occupies in the blob
        self.alloc_counts = alloc_counts  # allocations per sample
        self.alloc_offsets = alloc_offsets  # each allocation's offset within its sample
        self.alloc_sizes = alloc_sizes  # each allocation's size
        self.skipped = skipped  # the samples left out (only with skip_errors)
        self.extra = extra  # (sample, its number of values): the first with more than fields


def _length(value: Any) -> int | None:
    """How many values FFCV's writer would take from *value* as a sample's: the
    length of a sequence (not text or bytes) or of an array, tensor or series of
    at least one dimension; None for anything else (a dict, a 0-d array, a
    sparse matrix, whose length is ambiguous)."""
    if isinstance(value, (str, bytes, bytearray, memoryview, Mapping)):
        return None
    if hasattr(value, "ndim"):
        if int(value.ndim) < 1 or not hasattr(value, "__iter__"):
            return None
    elif not isinstance(value, Sequence):
        return None
    try:
        return len(value)
    except TypeError:
        return None


def _doubled(rows: np.ndarray) -> np.ndarray:
    """*rows* followed by as many zero rows. Copied into zeros, not concatenated: a
    structured copy may go field by field, and np.concatenate's output would keep
    whatever its memory held in the padding between fields (written to the file)."""
    out = np.zeros(2 * len(rows), rows.dtype)
    out[: len(rows)] = rows
    return out


class _Encoder:
    """Encodes samples into chunks; lives in each worker process."""

    def __init__(self, fname: str, names: Sequence[str], fields: Sequence[Field],
                 row_type: np.dtype, page_size: int, seed: int,
                 skip_errors: tuple[type[BaseException], ...] = ()) -> None:
        self.fname = fname
        self.names = list(names)
        self.fields = list(fields)
        self.row_type = row_type
        self.page_size = page_size
        self.seed = seed
        self.skip_errors = skip_errors
        # the fields that others follow are encoded first (their sizes are recorded),
        # a mask that follows an image before the boxes that follow the mask
        depths = _follow_depths(dict(zip(self.names, self.fields, strict=True)))
        self.order = sorted(range(len(self.fields)), key=lambda i: depths[self.names[i]])
        self.leaders = {self.names.index(field.follows) for field in self.fields
                        if field.follows is not None}

    def encode(self, samples: Iterable[tuple[int, Any, Any]],
               describe: Callable[[Any], str | None], limit: int | None = None) -> _Chunk:
        """Encode ``(dest_index, source, sample)`` triples; ``describe(source)``
        says where a sample comes from in error messages. With *limit*, stop after
        the sample that brings the payloads to that many bytes (the chunk's
        ``packed`` and ``skipped`` say how many samples it covers).

        Each sample is encoded as soon as it is read, before the next one is:
        a dataset may hand out the same buffers every time, refilled in place
        (FFCV encodes in the same order).
        """
        # where fields follow images, the images record their sizes here
        token = SAMPLE_SIZES.set(SampleSizes(self.names) if self.leaders else None)
        try:
            return self._encode(samples, describe, limit)
        finally:
            SAMPLE_SIZES.reset(token)

    def _encode(self, samples: Iterable[tuple[int, Any, Any]],
                describe: Callable[[Any], str | None], limit: int | None) -> _Chunk:
        metadata = np.zeros(16, self.row_type)
        packed = np.zeros(16, np.int64)
        counts = np.zeros(16, np.int64)
        parts: list[np.ndarray] = []
        offsets: list[int] = []
        sizes: list[int] = []
        skipped: list[SkippedSample] = []
        extra: tuple[int, int] | None = None
        j = 0  # the row of the next kept sample
        held = 0  # bytes of payloads
        images = SAMPLE_SIZES.get()
        for dest, source, sample in samples:
            if j == len(metadata):  # room for twice as many rows
                metadata, packed, counts = (_doubled(a) for a in (metadata, packed, counts))
            columns = [metadata[f"f{i}"] for i in range(len(self.fields))]
            if isinstance(sample, _Unread):
                skipped.append(SkippedSample(dest, source, None, sample.error))
                continue
            allocs: list[np.ndarray] = []

            def malloc(size: int, allocs: list[np.ndarray] = allocs) -> tuple[int, np.ndarray]:
                size = int(size)
                if size < 0:
                    raise ValueError(f"malloc of a negative size ({size})")
                if size > self.page_size:
                    raise EncodeError(_too_large(size, self.page_size))
                if len(allocs) >= MAX_ALLOCS_PER_SAMPLE:
                    raise EncodeError("too many allocations for one sample")
                allocs.append(np.zeros(size, np.uint8))
                return PROVISIONAL + len(allocs) - 1, allocs[-1]

            values, count = self._values(sample, dest, source, describe)
            if extra is None and count > len(self.fields):
                extra = (dest, count)
            failed = None
            if images is not None:
                images.sizes.clear()
            for i in self.order:
                token = CURRENT_SAMPLE.set((self.seed, dest, i))
                try:
                    self.fields[i].encode(columns[i][j : j + 1], values[i], malloc)
                except self.skip_errors as exc:
                    failed = SkippedSample(dest, source, self.names[i],
                                           f"{type(exc).__name__}: {exc}")
                    break
                except BaseException as exc:
                    where = self._where(dest, source, describe, self.names[i])
                    _raise_located(exc, where, "the field's encode")
                finally:
                    CURRENT_SAMPLE.reset(token)
                if i in self.leaders and images is not None and self.names[i] not in images.sizes:
                    raise TypeError(  # the class's fault, whatever the sample: never skipped
                        f"{self.fname}: field {self.names[i]!r} is followed, but its "
                        f"{type(self.fields[i]).__name__}.encode recorded no image size: a "
                        "field with RECORDS_SIZE = True calls fastforward.fields.base."
                        "record_size(given, stored) for each image")
            if failed is not None:
                skipped.append(failed)
                metadata[j : j + 1] = np.zeros(1, self.row_type)  # what it wrote of the row
                continue
            cursor = 0
            for buf in allocs:
                offsets.append(cursor)
                sizes.append(buf.size)
                # A zero-length payload still takes one byte, so that no two
                # allocations share an offset (FFCV's reader would confuse them).
                cursor += max(buf.size, 1)
                parts.append(buf if buf.size else np.zeros(1, np.uint8))
            if cursor > self.page_size:
                raise EncodeError(
                    f"{self._where(dest, source, describe)}: {_too_large(cursor, self.page_size)}"
                )
            packed[j] = cursor
            counts[j] = len(allocs)
            j += 1
            held += cursor
            if limit is not None and held >= limit:
                break
        blob = b"".join([p.data for p in parts])  # (one copy, not two as through NumPy)
        return _Chunk(metadata[:j], blob, packed[:j], counts[:j],
                      np.asarray(offsets, np.int64), np.asarray(sizes, np.int64), skipped,
                      extra)

    def _values(self, sample: Any, dest: int, source: Any,
                describe: Callable[[Any], str | None]) -> tuple[Sequence[Any], int]:
        """The sample's values, one per field in the fields' order, and how many it
        holds. As FFCV's writer pairs them (``zip``, iterating): a tuple or list,
        or with several fields any sequence (an array's or a tensor's rows, a
        pandas row in its order); values past the last field are not written
        (``_Chunk.extra`` tells the parent, which warns once). With one field, a
        value that is not a tuple or list is the sample's value."""
        wanted = len(self.fields)
        count = _length(sample)
        if isinstance(sample, (tuple, list)):
            values: Sequence[Any] = sample
        elif wanted > 1 and count is not None:
            values = list(itertools.islice(iter(sample), wanted))
        elif wanted == 1:
            return (sample,), 1
        else:
            count = None
        if count is not None and count >= wanted:
            return values, count
        got = f"a {type(sample).__name__}"
        if count is not None:
            got += f" of {count} values"
        raise EncodeError(
            f"{self._where(dest, source, describe)}: expected a tuple of "
            f"{wanted} values (for fields {self.names}), got {got}")

    def _where(self, dest: int, source: Any, describe: Callable[[Any], str | None],
               field: str | None = None) -> str:
        return _where(self.fname, dest, source, describe(source), field)


def _where(fname: str, dest: int, source: Any, description: str | None,
           field: str | None = None) -> str:
    """``file: sample N (where it comes from), field 'name'``, for error messages."""
    where = f"{fname}: sample {dest}"
    if description:
        where += f" ({description})"
    elif source != dest:
        where += f" (dataset index {source})"
    if field is not None:
        where += f", field {field!r}"
    return where


def _raise_located(exc: BaseException, where: str, who: str) -> NoReturn:
    """Raise *exc*, from user code (*who*: the dataset, a pipeline, a field), with
    *where* (file, sample, field) in its message (``errors.annotate``).

    Two are raised as a ``RuntimeError`` that says what happened, caused by them:
    ``StopIteration``, which a generator on its way (PEP 479) would turn into a
    bare "generator raised StopIteration", its location lost; and, in a writer's
    worker process, ``SystemExit`` (``sys.exit()`` in the dataset, argparse in a
    helper), which the caller's program would take as its own exit, silently.
    In the caller's own process (the webdataset counting pass) a ``SystemExit``
    is the program's (its SIGTERM handler may call ``sys.exit``): it stays one,
    as does a ``KeyboardInterrupt``, which stops the write as Ctrl-C does; each
    gets its location in a note.
    """
    if isinstance(exc, StopIteration):
        wrapped = RuntimeError(f"{who} raised StopIteration: {exc}".rstrip(": "))
    elif isinstance(exc, SystemExit) and in_a_worker():
        wrapped = RuntimeError(f"{who} called sys.exit({exc.code!r})")
    else:
        raise annotate(exc, where) from exc.__cause__
    for note in getattr(exc, "__notes__", ()):
        wrapped.add_note(note)
    raise annotate(wrapped, where) from exc


def _too_large(nbytes: int, page_size: int) -> str:
    suggestion = max(1 << max(nbytes - 1, 1).bit_length(), MIN_PAGE_SIZE)
    return (
        f"the sample needs {nbytes} bytes, more than a page ({page_size} bytes); "
        f"every sample must fit in one page: use page_size={suggestion} "
        f"(fastforward convert --page-size {suggestion >> 20}M)"
    )


# -- worker processes -----------------------------------------------------------

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_IN_WORKER = "the writer's worker process"


def _worker_main(conn: Connection, job: Any, inherited: tuple[list[Connection], list[int]],
                 parent_pid: int | None) -> None:
    worker_started()
    # The parent handles Ctrl-C, SIGTERM and SIGHUP (sent to the whole process
    # group by a terminal, `timeout` or a batch system) and stops its workers
    # itself (and they die with it, whatever kills it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for signum in _STOPPING_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    # A forked worker holds copies of the parent's descriptors: its ends of
    # this pipe and of the other workers' (kept, the parent's death would
    # never read as EOF here), its lock and its output file.
    conns, fds = inherited
    for parent_end in conns:
        parent_end.close()
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _die_with_parent(parent_pid)
    if job is None:  # started by the fork server: the job comes pickled, first
        try:
            job = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        except BaseException as exc:
            with contextlib.suppress(OSError):
                conn.send(("error", -1, portable(exc, _IN_WORKER)))
            return
    encoder, source = job
    # Tasks are read by a thread of their own, so that reading never waits on
    # a result being sent: the parent may be sending the next task (a large
    # chunk's indices can fill the socket) while this one's result (images,
    # always larger) waits for the parent to read it; each would wait for the
    # other for ever.
    tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
    threading.Thread(target=_read_tasks, args=(conn, tasks), name="fastforward-tasks",
                     daemon=True).start()
    while True:
        task = tasks.get()
        if task is None:
            return
        _, payload, limit = task
        try:
            conn.send(_encode_task(encoder, source, payload, limit, conn.send))
        except (BrokenPipeError, OSError):
            return


def _encode_task(encoder: _Encoder, source: Any, task: Any, limit: int | None,
                 send: Callable[[Any], None]) -> tuple[str, int, Any]:
    """Encode *task* ``(first, what)``; return the message that ends it: ``("ok",
    first sample, chunk)`` or ``("error", first sample, exception)``.

    With *limit*, a chunk ends once it holds that many bytes. The parent sends an
    indexed dataset's rest again (cut to its estimate), but a source that streams
    (a WebDataset shard, which could only be taken up again by reading it from
    its start) goes on here: each chunk but the last is sent as it is encoded,
    ``("part", its first sample, chunk)``, and the parent stops reading this
    worker while it holds enough, so that the send waits and the shard's
    encoded samples are never all held, here or there (an error further on in
    the shard is then met, or read, only once the parent reads this worker again).
    """
    first = int(task[0])
    stream = getattr(source, "streams", False)
    remaining = _task_samples(task)
    try:
        samples = source.expand(task)
        while True:
            chunk = encoder.encode(samples, source.describe, limit)
            covered = _covered(chunk)
            remaining -= covered
            if stream and limit is not None and int(chunk.packed.sum()) >= limit:  # its size
                if remaining > 0:
                    send(("part", first, chunk))
                    first += covered
                    continue
                next(samples, None)  # at its end, the source checks its count
            return ("ok", first, chunk)
    except BaseException as exc:
        return ("error", first, portable(exc, _IN_WORKER))


def _seed(value: Any, name: str) -> int:
    """*value* as a seed: an integer, at least 0 (NumPy's generators take no other)."""
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        seed = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if seed < 0:
        raise ValueError(f"{name} must be at least 0, got {seed}")
    return seed


def _read_tasks(conn: Connection, tasks: queue.SimpleQueue[Any]) -> None:
    """Put each task the parent sends on *tasks*, then None at its end.

    Its end: None from the parent, the parent's death (end of file), or a
    message that cannot be read; the worker then exits, and the parent, if
    alive, reports its death.
    """
    try:
        while (task := conn.recv()) is not None:
            tasks.put(task)
    except BaseException:  # any end of reading ends the worker
        pass
    finally:
        tasks.put(None)


def _die_with_parent(parent_pid: int | None) -> None:
    """On Linux, have the kernel SIGKILL this process when its parent dies.

    PR_SET_PDEATHSIG fires when the thread that forked us exits: the writer
    forks only from a process with a single thread, which is the one writing.
    A parent that died before the call is caught by comparing getppid() with
    *parent_pid* (None: unknown, as under the fork server, whose workers see
    the parent's death as end-of-file on their pipe at their next read).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return  # cannot fail on Linux; the pipe still tells us of the parent's death
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def _os_threads() -> int | None:
    """This process's thread count as the kernel sees it (None: unknown)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _start_method(requested: str | None) -> str:
    """The start method to try: *requested*, else fork if it may be safe."""
    methods = multiprocessing.get_all_start_methods()
    if requested is not None:
        if requested not in methods:
            raise ValueError(f"start_method must be one of {methods}, got {requested!r}")
        return requested
    if ("fork" in methods and sys.platform.startswith("linux")
            and threading.active_count() == 1 and _os_threads() is not None):
        return "fork"  # verified after the fork, see _Pool
    return "forkserver" if "forkserver" in methods else "spawn"


class _Estimate:
    """Encoded bytes per sample, from the chunks received so far: the larger of
    their average and the last chunk's, so that it rises with the first chunk of
    larger samples (an average over thousands of small ones hardly moved)."""

    def __init__(self) -> None:
        self.samples = 0
        self.nbytes = 0
        self.last = (0, 0)  # the last chunk's samples and bytes

    def add(self, samples: int, nbytes: int) -> None:
        self.samples += samples
        self.nbytes += nbytes
        if samples:
            self.last = (samples, nbytes)

    def _rate(self) -> tuple[int, int]:
        """Bytes per sample as a fraction (bytes, samples)."""
        samples, nbytes = self.last
        if nbytes * self.samples > self.nbytes * samples:
            return nbytes, samples
        return self.nbytes, self.samples

    def samples_within(self, nbytes: int) -> int | None:
        """How many samples make about *nbytes* (at least one); None before any chunk."""
        if not self.samples:
            return None
        per, samples = self._rate()
        return max(1, nbytes * samples // max(per, 1))

    def fits(self, samples: int, in_flight: Iterable[Any], held: int, budget: int) -> bool:
        """Whether *samples* more, beside the tasks *in_flight* and the *held* samples
        received and not yet yielded, stay within *budget* bytes."""
        if not self.samples:
            return True
        per, counted = self._rate()
        count = samples + held + sum(_task_samples(task) for task in in_flight)
        return count * per <= budget * counted


def _covered(chunk: Any) -> int:
    """How many samples an encoded chunk covers (kept and skipped)."""
    return len(chunk.packed) + len(chunk.skipped) if isinstance(chunk, _Chunk) else 0


def _result_bytes(chunk: Any) -> int:
    """The size of an encoded chunk as the parent holds it."""
    if not isinstance(chunk, _Chunk):
        return 0
    return len(chunk.blob) + chunk.metadata.nbytes + chunk.packed.nbytes


def _is_shard(what: Any) -> bool:
    """Whether a task's *what* is a shard's ``(shard, count)``, not dataset indices."""
    return isinstance(what, tuple) and len(what) == 2 and isinstance(what[1], int)


def _after(task: Any, count: int) -> Any:
    """What *task* has left after its first *count* samples (as sent, for messages
    and counts: a shard's rest is never sent, its worker goes on with it)."""
    first, what = task
    if _is_shard(what):
        return (first + count, (what[0], what[1] - count))
    return (first + count, what[count:])


def _task_samples(task: Any) -> int:
    """How many samples a task covers: ``(first, [dataset indices])`` or ``(first,
    (shard, count))``."""
    what = task[1]
    return int(what[1]) if _is_shard(what) else len(what)


class _Schedule:
    """What one ``_Pool.run`` keeps track of, and decides: the tasks not yet sent
    (and the rests of tasks cut short), the tasks each worker holds, the chunks
    received and not yet yielded, and the first sample to yield next. The pool
    sends, receives and yields; see ``_Pool.run`` for the rules."""

    def __init__(self, tasks: Sequence[Any], conns: Sequence[Connection],
                 split: Callable[[Any, int], tuple[Any, Any]] | None, streams: bool) -> None:
        self.split = split
        # not yet sent (an empty shard's task would share its first sample with the
        # next task's: it has nothing to encode, and is left out)
        self.waiting = collections.deque(task for task in tasks if _task_samples(task))
        self.again: list[tuple[int, Any]] = []  # heap of the rests of tasks cut short
        self.sent: dict[int, Any] = {}  # tasks sent and not answered, by first sample
        self.spans: dict[int, int] = {}  # by first sample: the samples a task sent covers
        self.received: dict[int, Any] = {}  # chunks by first sample, not yet yielded
        # the tasks each worker holds, by first sample (a part's rest in its place)
        self.held: dict[Connection, list[int]] = {conn: [] for conn in conns}
        self.following = int(self.waiting[0][0]) if self.waiting else 0  # to yield next
        self.held_samples = self.held_bytes = 0  # in the chunks received, not yielded
        self.window = _IN_FLIGHT_PER_WORKER * len(conns) * 2
        self.per_task = min(TASK_BYTES,
                            IN_FLIGHT_BYTES // ((_IN_FLIGHT_PER_WORKER + 1) * len(conns)))
        self.limit = self.per_task if split is not None or streams else None  # for workers
        self.estimate = _Estimate()

    def unfinished(self) -> bool:
        """Whether any task is still to send, or any chunk still to yield."""
        return bool(self.waiting or self.again or self.spans)

    def next_task(self, conn: Connection) -> Any | None:
        """The task to send *conn*'s worker now, taken off its queue (cut to
        ``per_task`` where it can be), or None where it should wait."""
        # the rest of a task a worker cut short, the earliest first; the one that
        # the next chunk to yield begins with is needed for anything to go on, so
        # neither the window nor the budget holds it back (with the window full of
        # later chunks, it waited for ever), the others they do
        queue = self.again if self.again else self.waiting
        needed = queue is self.again and self.again[0][0] == self.following
        if not queue or (not needed and len(self.spans) >= self.window):
            return None
        task = self.again[0][1] if queue is self.again else self.waiting[0]
        most = self.estimate.samples_within(self.per_task)
        if most is None:  # nothing received yet: one small task per worker
            if self.held[conn]:
                return None
            most = PROBE_SAMPLES
        rest = None
        if self.split is not None and _task_samples(task) > most:
            task, rest = self.split(task, most)
        if not needed and self.held[conn] and not self.estimate.fits(
                _task_samples(task), self.sent.values(), self.held_samples, IN_FLIGHT_BYTES):
            return None  # the tasks in flight are enough for now
        if queue is self.again:
            heapq.heappop(self.again)
            if rest is not None:
                heapq.heappush(self.again, (int(rest[0]), rest))
        elif rest is None:
            self.waiting.popleft()
        else:
            self.waiting[0] = rest
        return task

    def sent_to(self, conn: Connection, task: Any) -> None:
        """Note that *task* went to *conn*'s worker."""
        first = int(task[0])
        self.sent[first] = task
        self.spans[first] = _task_samples(task)
        self.held[conn].append(first)

    def readable(self) -> list[Connection]:
        """The workers to read: the one that holds the next chunk to yield always
        (it may come after another task of that worker's: the rest of a task cut
        short is sent to a worker that has one already); the others while the
        chunks held stay within the budget (their sends wait)."""
        return [conn for conn, firsts in self.held.items()
                if self.held_bytes < IN_FLIGHT_BYTES or self.following in firsts]

    def take(self, conn: Connection, status: str, first: int, value: Any) -> None:
        """Keep the chunk *value* that *conn*'s worker sent for the task at *first*:
        a "part" of a task it goes on with, or the end of the task (all of it, or
        where it cut the chunk at its size: the rest is then sent again, first)."""
        task = self.sent.pop(first)
        covered, nbytes = _covered(value), _result_bytes(value)
        self.estimate.add(covered, nbytes)
        self.held_samples += covered
        self.held_bytes += nbytes
        self.received[first] = value
        held = self.held[conn]
        if status == "part":  # the worker goes on with the rest
            rest = _after(task, covered)
            self.sent[rest[0]] = rest
            self.spans[rest[0]] = self.spans[first] - covered
            self.spans[first] = covered
            held[held.index(first)] = rest[0]
            return
        held.remove(first)
        if self.split is not None and 0 < covered < self.spans[first]:
            # the worker ended the chunk at its size: the rest goes first
            self.spans[first] = covered
            heapq.heappush(self.again, (first + covered, self.split(task, covered)[1]))

    def in_order(self) -> Iterator[Any]:
        """Give up the chunks received that come next, in order."""
        while self.following in self.received:
            chunk = self.received.pop(self.following)
            self.held_samples -= _covered(chunk)
            self.held_bytes -= _result_bytes(chunk)
            self.following += self.spans.pop(self.following)
            yield chunk
            del chunk  # not held while the pool waits on its workers


class _Pool:
    """Worker processes, each fed over its own pipe; the parent waits on the
    pipes and on the processes' sentinels, so a dead worker is noticed at once.

    How workers start: fork is used (unless *start_method* says otherwise)
    only while the process has a single thread at the fork, as the kernel
    counts them. A thread may hold a lock the child then needs forever (a
    stream's, logging's, an allocator's), which is why Python 3.12 warns
    about forking a process with threads. The count is taken twice: no other
    Python thread may run before the fork, and /proc/self/task must list one
    thread right after it (libraries such as OpenBLAS stop their threads for
    a fork, in pthread_atfork handlers, and start them again only when next
    used). If another thread is there, the forked workers, which have done
    nothing yet, are killed, and the workers start from multiprocessing's
    fork server instead, which needs the dataset and fields to be picklable.
    """

    def __init__(self, num_workers: int, job: Any, start_method: str | None = None,
                 inherited_fds: Sequence[int] = (), fname: str = "the writer") -> None:
        self.fname = fname  # for messages
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        self.method = _start_method(start_method)
        # not fork, and not asked: threads in this process (before the trial fork, or
        # after it, below), or no fork here
        self.fell_back = start_method is None and self.method != "fork"
        try:
            if self.method == "fork" and start_method is None:
                with warnings.catch_warnings():
                    # Python 3.12+ warns (in the parent, after the fork) when it sees
                    # other threads; this fork is a trial, and then they are refused.
                    # catch_warnings is safe here: no other Python thread runs
                    warnings.filterwarnings("ignore", r"This process .* is multi-threaded",
                                            DeprecationWarning)
                    self._start(num_workers, job, inherited_fds)
                    single = _os_threads() == 1
                if not single:
                    self.terminate()
                    self.fell_back = True  # (said by _warn_of_copies when it costs)
                    self.method = "forkserver"
                    self._start(num_workers, job, inherited_fds)
            else:
                self._start(num_workers, job, inherited_fds)
        except BaseException:
            self.terminate()
            raise

    def _start(self, num_workers: int, job: Any, inherited_fds: Sequence[int]) -> None:
        ctx = multiprocessing.get_context(self.method)
        blob = None
        if self.method != "fork":
            blob = _pickled_job(job, self.method, self.fname, self.fell_back)
            _warn_of_copies(blob, num_workers, self.method, self.fname, self.fell_back)
            if self.method == "forkserver":
                forkserver_preload(ctx, [__name__])  # workers start in ms, not seconds
        for i in range(num_workers):
            parent_end, child_end = ctx.Pipe()
            args: tuple[Any, ...]
            if self.method == "fork":  # the job as it is in memory; nothing is pickled
                args = (child_end, job, ([parent_end, *self.conns], list(inherited_fds)),
                        os.getpid())
            else:
                args = (child_end, None, ([], []), None)
            proc = ctx.Process(  # type: ignore[attr-defined]  # not in typeshed's BaseContext
                target=_worker_main, args=args, name=f"fastforward-writer-{i}", daemon=True)
            try:
                proc.start()
            except BaseException:
                parent_end.close()
                raise
            finally:
                child_end.close()
            self.conns.append(parent_end)
            self.procs.append(proc)
        if blob is not None:  # once all have started: a large job takes a while to send
            for parent_end, proc in zip(self.conns, self.procs, strict=True):
                try:
                    parent_end.send_bytes(blob)
                except OSError:
                    raise self._died(proc) from None

    def run(self, tasks: Sequence[Any],
            split: Callable[[Any, int], tuple[Any, Any]] | None = None,
            streams: bool = False) -> Iterator[Any]:
        """Yield the results of *tasks* in order; raise the first failure.

        A task is ``(first, what)``, *first* its first sample's place in the file,
        and the tasks follow one another. *split(task, n)* cuts one into its first
        *n* samples and the rest (where the source can). Then each task sent is cut
        to about ``per_task`` bytes of encoded data (``TASK_BYTES``, less with many
        workers, so that each has work within ``IN_FLIGHT_BYTES``), as estimated
        from the chunks received so far, and a worker ends a chunk at that size:
        the rest of the task is sent before any other (cut again), the earliest
        first. Where tasks cannot be split but *streams* (WebDataset shards), a
        worker sends a task's chunks of that size as it encodes them, and the
        parent stops reading a worker, whose next send then waits, while the
        chunks it holds reach ``IN_FLIGHT_BYTES``, unless that worker's next chunk
        is the next to yield. Chunks are yielded in the order of their first sample. A worker
        with nothing to do is given a task whenever fewer than
        ``_IN_FLIGHT_PER_WORKER * 2`` per worker are sent or waiting to be yielded;
        a second one only while those stay within ``IN_FLIGHT_BYTES``, as
        estimated. The rest of a cut task that the next chunk to yield begins
        with is sent whatever the window and the budget: nothing else can go on."""
        schedule = _Schedule(tasks, self.conns, split, streams)
        sentinels = {proc.sentinel: conn for conn, proc in zip(self.conns, self.procs,
                                                                strict=True)}
        self._feed(schedule)
        while schedule.unfinished():
            ready = wait([*schedule.readable(), *sentinels])
            dead = [sentinels[r] for r in ready if r in sentinels]
            # what a dead worker sent before dying (an error, say) is read first
            answered: list[Any] = [r for r in ready if r not in sentinels]
            answered += [conn for conn in dead if conn not in answered and conn.poll()]
            for conn in answered:
                self._receive(schedule, conn)
            for conn in dead:
                if conn not in answered and not conn.poll():
                    raise self._died_in(schedule, conn)
            yield from schedule.in_order()
            self._feed(schedule)

    def _feed(self, schedule: _Schedule) -> None:
        """Send the workers what *schedule* has for them: the idle workers first, each
        one task before any gets a second."""
        for level in range(1, _IN_FLIGHT_PER_WORKER + 1):
            for conn in self.conns:
                while len(schedule.held[conn]) < level and (
                        task := schedule.next_task(conn)) is not None:
                    try:
                        conn.send((int(task[0]), task, schedule.limit))
                    except OSError:  # BrokenPipeError: it died since the last wait()
                        raise self._died_in(schedule, conn) from None
                    schedule.sent_to(conn, task)

    def _receive(self, schedule: _Schedule, conn: Connection) -> None:
        """Read one reply of *conn*'s worker into *schedule*, or raise what it says."""
        try:
            status, first, value = conn.recv()
        except (EOFError, OSError):
            raise self._died_in(schedule, conn) from None
        if status == "error":
            if first < 0:
                raise WorkerError(
                    f"{self.fname}: a writer worker ({self.method} start) could not "
                    f"load the dataset and fields it was sent: "
                    f"{type(value).__name__}: {value}. Their classes must be "
                    "importable by name (defined at the top level of a module, not "
                    "in a notebook or inside a function)"
                ) from value
            try:
                raise value
            finally:  # not the frame's too: a cycle through its traceback
                value = None
        schedule.take(conn, status, first, value)

    def _died_in(self, schedule: _Schedule, conn: Connection) -> WorkerError:
        """``_died`` for *conn*'s worker, with the tasks *schedule* says it held."""
        return self._died(self.procs[self.conns.index(conn)], schedule.sent,
                          schedule.held[conn])

    def _died(self, proc: Any, tasks: Mapping[int, Any] | None = None,
              held: Sequence[int] = ()) -> WorkerError:
        """The error for a worker that ended without a word: its exit code, what
        that suggests, and the samples it was given and had not returned."""
        proc.join(timeout=5)
        code = proc.exitcode
        if code == 1 and self.method != "fork":
            hint = main_module_hint(self.method, "start_method='fork'")
            why = f"it may have failed before it started (its traceback is printed above): {hint}"
        elif code == -signal.SIGKILL:
            why = "killed (SIGKILL): out of memory? (the kernel's OOM killer sends it)"
        elif code is not None and code < 0:
            why = (f"killed by {signal.Signals(-code).name}" if -code in signal.valid_signals()
                   else f"killed by signal {-code}")
            if -code in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGABRT):
                why += ": a crash in native code (the dataset's, or a library it calls)"
        elif code is None:
            why = "it stopped answering"
        else:
            why = "it exited (os._exit in the dataset?)"
        encoding = [tasks[k] for k in held] if tasks is not None else []
        ranges = [f"{int(task[0])}" + (f"-{int(task[0]) + count - 1}" if count > 1 else "")
                  for task in encoding if (count := _task_samples(task))]
        given = f"; it was encoding samples {', '.join(ranges)}" if ranges else ""
        return WorkerError(
            f"{self.fname}: writer worker {proc.name} died (exit code {code}) "
            f"without reporting an error{given}; {why}"
        )

    def close(self) -> None:
        """Ask the workers to finish and wait for them."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self.procs:
            proc.join(timeout=5)
        self.terminate()

    def terminate(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc in self.procs:
            proc.join()
            # its sentinel's descriptor, now: an error's traceback keeps run()'s frame,
            # which refers to the process, as long as the error lives
            proc.close()
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []


LARGE_JOB_BYTES = 256 << 20
"""A dataset and fields that pickle to this many bytes or more are worth a warning
when each worker gets its own copy (``_warn_of_copies``)."""


def _why_not_forked(fell_back: bool) -> str:
    """Why the writer's workers do not fork, for a message: the user asked for
    another start method, or the writer chose one."""
    if not fell_back:
        return "as asked"
    threads = _os_threads() or threading.active_count()
    if threads > 1:
        return (f"this process runs {threads} threads, and forking a process with threads "
                "may deadlock")
    return "fork is not the default here"


def _warn_of_copies(blob: bytes, workers: int, method: str, fname: str,
                    fell_back: bool) -> None:
    """Say so when every worker gets its own copy of a large pickled dataset: the
    fork server or spawn (a process running threads falls back on the fork server)
    unpickles the dataset in each worker, where forked workers share its pages."""
    if len(blob) < LARGE_JOB_BYTES:
        return
    mib = len(blob) / (1 << 20)
    warnings.warn(
        f"{fname}: the writer's workers start with {method} here ({_why_not_forked(fell_back)}), "
        f"so each worker ({workers}) gets its own copy of the dataset and fields ({mib:,.0f} MiB "
        f"pickled; about {workers * mib * 2:,.0f} MiB in all as they unpickle it). Write from a "
        "process with no other threads (before torch or a progress bar has run), let the "
        "dataset read its samples from files rather than hold them, or accept the risk "
        "with DatasetWriter(..., start_method='fork')", RuntimeWarning, stacklevel=2)


def _pickled_job(job: Any, method: str, fname: str, fell_back: bool) -> bytes:
    """*job* pickled for workers that do not share the parent's memory."""
    try:
        return pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(
            f"{fname}: the writer's workers start with {method} here "
            f"({_why_not_forked(fell_back)}), so the dataset and fields must be picklable, "
            f"and they are not: {type(exc).__name__}: {exc}. Make them picklable (a function "
            "defined at a module's top level, not a lambda), write from a process with no "
            "other threads, or accept the risk with DatasetWriter(..., start_method='fork')"
        ) from exc


# -- the file -----------------------------------------------------------------

# what a writer leaves at worst: `.<target's name>.<8 of [a-z0-9_]>.part`
# (mkstemp's names, which earlier versions used, have the same shape)
_PART_MIDDLE = re.compile(r"[a-z0-9_]{8}")


_PART_SUFFIX = ".12345678.part"  # as long as a .part name's end
_HASHED_DIGITS = 16


def _name_max(dir_fd: int) -> int:
    """The longest file name, in bytes, that the directory *dir_fd* allows."""
    try:
        return int(os.fpathconf(dir_fd, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # unknown here: POSIX's usual
        return 255


def _hidden_stem(base: str, dir_fd: int) -> str:
    """What the hidden names beside the target *base* are made of:
    ``.<stem>.lock`` and ``.<stem>.<8 of [a-z0-9_]>.part``.

    The target's name itself, unless the longer of those would be longer than
    the directory allows (a name of over 240 bytes where 255 is the limit):
    then as much of the name as fits, ``~`` and 16 hex digits of its SHA-256,
    so that any name the target may have can be written.
    """
    return fitted_stem(base, 1 + len(_PART_SUFFIX), _name_max(dir_fd))


def fitted_stem(name: str, extra: int, limit: int) -> str:
    """*name*, or, where *extra* more bytes around it would make a name longer than
    *limit* bytes, as much of it as fits, ``~`` and 16 hex digits of its SHA-256
    (distinct names stay distinct)."""
    raw = os.fsencode(name)
    if len(raw) + extra <= limit:
        return name
    keep = max(limit - extra - 1 - _HASHED_DIGITS, 0)
    head = raw[:keep].decode("utf-8", "ignore")  # whole characters only
    return f"{head}~{hashlib.sha256(raw).hexdigest()[:_HASHED_DIGITS]}"


def _is_part_of(name: str, base: str) -> bool:
    """Whether *name* is a partial file that a writer of the target whose hidden
    stem is *base* leaves."""
    prefix = f".{base}."
    return (name.startswith(prefix) and name.endswith(".part")
            and _PART_MIDDLE.fullmatch(name[len(prefix):-len(".part")]) is not None)


def _check_name_length(target: str, dir_fd: int) -> None:
    """Refuse, before any work, a target whose name its directory cannot hold
    (the write would fail only when the file is named, at its very end)."""
    length, limit = len(os.fsencode(os.path.basename(target))), _name_max(dir_fd)
    if length > limit:
        raise OSError(errno.ENAMETOOLONG, f"File name too long: {length} bytes, where this "
                      f"directory allows at most {limit}", target)


class _TargetLock:
    """An advisory lock (``flock``) on ``.<name>.lock`` beside the target.

    The file holds the writer's pid, for the message a second writer gets.
    It is removed when the write ends (after a SIGKILL it stays, unlocked,
    and the next writer of the target takes it over). Removal happens while
    the lock is held, so a writer that opened the old file checks, once it
    holds the lock, that the name still leads to what it locked.
    """

    def __init__(self, target: str, dir_fd: int) -> None:
        self.target = target
        self.dir_fd = dir_fd
        self.name = f".{_hidden_stem(os.path.basename(target), dir_fd)}.lock"
        self.path = os.path.join(os.path.dirname(target), self.name)
        self.fd = -1

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover - not POSIX
            return
        while True:
            try:
                fd = os.open(self.name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666,
                             dir_fd=self.dir_fd)
            except OSError as exc:
                failed = OSError(exc.errno, f"{exc.strerror or exc}, creating its lock "
                                 f"{self.path}", self.target)
                raise failed from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = "another writer" + (f" (pid {holder})" if holder else "")
                raise TargetLockedError(
                    f"{self.target}: {who} is writing this file: it holds the lock "
                    f"{self.path}. Wait for it to finish, or write to another file"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                try:
                    named = os.stat(self.name, dir_fd=self.dir_fd)
                except FileNotFoundError:
                    named = None
                locked = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            if named is not None and (named.st_dev, named.st_ino) == (locked.st_dev,
                                                                      locked.st_ino):
                break
            os.close(fd)  # its holder removed it meanwhile: lock the new one
        self.fd = fd  # ours: release() removes it, whatever happens next
        # the pid is for a second writer's message only: a full disk (which fails the
        # write itself a moment later, naming the target) must not leave the lock behind
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name, dir_fd=self.dir_fd)
        os.close(self.fd)
        self.fd = -1


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    return None


def _open_unnamed(dir_fd: int) -> int | None:
    """An unnamed file in the directory *dir_fd* (Linux's O_TMPFILE) that can be
    named later through /proc/self/fd; None where either is unavailable."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag:
        return None
    try:
        fd = os.open(".", flag | os.O_RDWR | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
    except OSError as exc:
        # the file system cannot (EOPNOTSUPP), or the kernel predates it
        # (EISDIR: it opened the directory; EINVAL)
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise
    try:  # linkat needs /proc to name the file at the end
        ours, proc = os.fstat(fd), os.stat(f"/proc/self/fd/{fd}")
        if (ours.st_dev, ours.st_ino) == (proc.st_dev, proc.st_ino):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


class _Output:
    """The file being written, in the target's directory, with no name (or a
    hidden ``.part`` name) until ``publish`` gives it the target's.

    Errors from writing it name the target and say how far it got.
    """

    def __init__(self, target: str, dir_fd: int) -> None:
        self.target = target
        self.dir_fd = dir_fd
        self.base = os.path.basename(target)
        self.stem = _hidden_stem(self.base, dir_fd)
        self.written = 0  # bytes handed to write() so far
        self.published = False
        self.part: str | None = None  # the .part file's name, when there is one
        try:
            fd = _open_unnamed(dir_fd)
            if fd is None:
                fd, self.part = self._create_part()
        except OSError as exc:
            raise self._failed(exc, "creating") from None
        self.fd = fd
        self.file = open(fd, "wb", closefd=True)  # noqa: SIM115 - closed by publish/discard

    def _temp_name(self) -> str:
        return f".{self.stem}.{secrets.token_hex(4)}.part"

    def _create_part(self) -> tuple[int, str]:
        while True:
            name = self._temp_name()
            with contextlib.suppress(FileExistsError):
                return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666,
                               dir_fd=self.dir_fd), name

    def write(self, data: Any) -> None:
        try:
            self.file.write(data)
        except OSError as exc:
            raise self._failed(exc, "writing") from None
        self.written += memoryview(data).nbytes

    def seek(self, offset: int) -> None:
        try:
            self.file.seek(offset)
        except OSError as exc:
            raise self._failed(exc, "writing") from None

    def truncate(self) -> None:
        try:
            self.file.truncate()
        except OSError as exc:
            raise self._failed(exc, "writing") from None

    def move(self, source: int, destination: int, length: int) -> None:
        """Copy *length* bytes of the file from *source* down to *destination*
        (lower: copied forward, in pieces, each read before it is overwritten)."""
        if not destination <= source:
            raise ValueError(f"can only move bytes down the file, not {source} to {destination}")
        try:
            self.file.flush()
            done = 0
            while done < length:
                piece = memoryview(os.pread(self.fd, min(1 << 24, length - done), source + done))
                if not piece:
                    raise OSError(errno.EIO, f"the file ended at {source + done} bytes")
                while piece:
                    n = os.pwrite(self.fd, piece, destination + done)
                    piece, done = piece[n:], done + n
        except OSError as exc:
            raise self._failed(exc, "writing") from None

    def sync(self) -> None:
        """Flush and fsync: a full disk shows here, before anything is named."""
        try:
            self.file.flush()
            os.fsync(self.fd)
        except OSError as exc:
            raise self._failed(exc, "writing") from None

    def publish(self, naming: Callable[[], None] = lambda: None) -> None:
        """Flush, fsync, and give the file the target's name, atomically;
        *naming* is called just before the name is given."""
        self.sync()
        try:
            name = self.part if self.part is not None else self._link()
            try:
                naming()
                os.replace(name, self.base, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            except BaseException:
                if self.part is None:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=self.dir_fd)
                raise
            self.published = True
            self.part = None
            with contextlib.suppress(OSError):  # the name itself, durably
                os.fsync(self.dir_fd)
        except OSError as exc:
            raise self._failed(exc, "naming") from None
        finally:
            self._close()

    def _link(self) -> str:
        """Name the unnamed file: linkat(AT_SYMLINK_FOLLOW) from /proc/self/fd
        (an explicit dir_fd makes os.link use linkat with that flag)."""
        while True:
            name = self._temp_name()
            with contextlib.suppress(FileExistsError):
                os.link(f"/proc/self/fd/{self.fd}", name, dst_dir_fd=self.dir_fd,
                        follow_symlinks=True)
                return name

    def discard(self) -> None:
        """Drop the partial file (an unnamed one goes with its descriptor)."""
        self._close()
        if self.part is not None and not self.published:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.part, dir_fd=self.dir_fd)
            self.part = None

    def _close(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # a full disk fails the flush again
            self.file.close()

    def _failed(self, exc: OSError, doing: str) -> OSError:
        """*exc* again, naming the target and saying how much was written."""
        why = {
            errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is exceeded",
            errno.EFBIG: "the file would exceed the largest file size allowed here",
        }.get(exc.errno or 0)
        text = exc.strerror or str(exc)
        if why:
            text += f" ({why})"
        text += f", {doing} it after {self.written:,} bytes; no partial file is left behind"
        new = OSError(exc.errno, text, self.target) if exc.errno else OSError(
            f"{self.target}: {text}")
        new.__cause__ = exc
        return new


# the signals that stop a write cleanly where they would kill the process outright:
# SIGTERM (`timeout`, batch systems, `kill`) and SIGHUP (the terminal closed)
_STOPPING_SIGNALS = {getattr(signal, name): (name, why) for name, why in
                     (("SIGTERM", ""), ("SIGHUP", " (the terminal closed)"))
                     if hasattr(signal, name)}


class _Companion:
    """A file that goes with the target: *data* written now beside it, unnamed
    (or a hidden ``.part``), and given *path* by ``publish`` once the target has
    its name; or, with *data* None, an earlier file at *path* that ``publish``
    removes (it described a file that the new one replaces)."""

    def __init__(self, path: str, data: bytes | None, keep_permissions: bool = False) -> None:
        self.path = os.fspath(path)
        self.output: _Output | None = None
        # its folder as the kernel finds it, as the target's (abspath made lnk/.. the
        # current folder: the list went elsewhere, or removed another file's list)
        self.dir_fd = os.open(os.path.dirname(in_its_folder(self.path)),
                              os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if os.path.isdir(self.path):  # it could be neither written nor removed
                raise IsADirectoryError(errno.EISDIR, "is a directory", self.path)
            if data is not None:
                _check_name_length(self.path, self.dir_fd)
                self.output = _Output(self.path, self.dir_fd)
                if keep_permissions:  # those of the file it replaces, if any
                    with contextlib.suppress(FileNotFoundError):
                        os.fchmod(self.output.fd, stat.S_IMODE(os.stat(self.path).st_mode))
                self.output.write(data)
                # all of it on the disk now: a full disk fails the write before the
                # target is named (a short list was only flushed after it had its name)
                self.output.sync()
        except BaseException:
            self.discard()
            raise

    def publish(self) -> None:
        try:
            if self.output is not None:
                self.output.publish()
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.basename(self.path), dir_fd=self.dir_fd)
        except OSError as exc:
            if not (self.output is None and exc.errno == errno.ENAMETOOLONG):  # none there
                raise
        finally:
            self.discard()

    def discard(self) -> None:
        if self.output is not None:
            self.output.discard()
            self.output = None
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


def replace_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write *data* at *path* atomically, as the writer writes its target: unnamed
    beside it (or under a hidden ``.part`` name), then named *path*, replacing the
    file there, whose permissions it keeps (a new one's follow the umask). A
    failure leaves nothing; its ``OSError`` names *path*."""
    _Companion(os.fspath(path), data, keep_permissions=True).publish()


class _SignalGuard:
    """Whether Ctrl-C, SIGTERM or SIGHUP may still stop the write: until the file
    is being named, or the write cleaned up after an error."""

    armed = True

    def __init__(self) -> None:
        self.pending: list[int] = []  # came while disarmed: delivered at the end

    def disarm(self) -> None:
        """From now on the file is being named, or the write cleaned up: a stopping
        signal waits for the end (an interrupted clean-up left workers running,
        and the interpreter's exit waited on them for ever; an interrupted naming
        left the new file without its list of skipped samples)."""
        self.armed = False


@contextlib.contextmanager
def _signals_stop_the_write(target: str) -> Iterator[_SignalGuard]:
    """Turn SIGTERM and SIGHUP into ``Terminated`` while a write runs, and Ctrl-C
    into KeyboardInterrupt: the write stops cleanly and leaves no file (neither
    the lock file nor a ``.part``).

    Only from the main thread (the only one that may set handlers), and only
    for a signal whose handler is the default (Python's for SIGINT, which
    raises KeyboardInterrupt): a handler of the caller's (or SIG_IGN, as under
    ``nohup``) is left alone. The previous handlers are restored afterwards. A
    second signal of the kind that stopped the write is ignored during the
    clean-up it started (a SIGKILL still works); another kind, or one that
    comes while the guard is disarmed (the file being named, or the write
    cleaned up after an error), is delivered when the write returns: SIGTERM
    and SIGHUP to their default action (the process ends), then Ctrl-C as a
    KeyboardInterrupt unless the write was already stopped by a signal.
    """
    guard = _SignalGuard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    fired: int | None = None  # the signal that stopped the write

    def handler(signum: int, frame: Any) -> None:
        nonlocal fired
        if signum == fired:  # a second one, during the clean-up the first started
            return
        if not guard.armed or fired is not None:
            if signum not in guard.pending:
                guard.pending.append(signum)
            return
        fired = signum
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        name, why = _STOPPING_SIGNALS[signum]
        raise Terminated(f"{target}: stopped by {name}{why} during the write; "
                         "no file was written", 128 + signum)

    previous = {}
    try:
        for signum in _STOPPING_SIGNALS:
            if signal.getsignal(signum) is signal.SIG_DFL:
                previous[signum] = signal.signal(signum, handler)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, handler)
        yield guard
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)
        # SIGTERM and SIGHUP first: their default action ends the process (a
        # KeyboardInterrupt raised first would have left them undelivered); a Ctrl-C
        # while the write was already stopping adds nothing to the exception under way
        for signum in guard.pending:
            if signum != signal.SIGINT:
                signal.raise_signal(signum)
        if signal.SIGINT in guard.pending and fired is None:
            signal.raise_signal(signal.SIGINT)


class _PageWriter:
    """Places encoded chunks into whole pages of the output file, in order."""

    def __init__(self, file: Any, start: int, page_size: int, num_samples: int,
                 row_type: np.dtype, pointer_leaves: Sequence[tuple[str, str | None]]) -> None:
        self.file = file
        # where the pages are written: after the metadata of every sample given; with
        # samples skipped, ``finish`` may move them down, and gives every pointer
        # (kept until then as an offset from the first page) its place in the file
        self.start = start
        self.page_size = page_size
        self.page = -1  # index of the page being filled (relative to start)
        self.cursor = page_size  # fill level of that page: full, so the first sample opens one
        self.metadata = np.zeros(num_samples, row_type)
        self.leaves = pointer_leaves
        self.pointers: dict[tuple[str, str | None], np.ndarray] = {}  # leaf -> rows that point
        self.alloc_rows: list[np.ndarray] = []
        self.next_sample = 0
        # every byte of the pages goes through the hasher as it is written (its sums
        # are stored only with checksums=True; hashing costs far less than encoding)
        self.hasher = PageHasher()

    def add(self, chunk: _Chunk) -> None:
        n = len(chunk.packed)
        first = self.next_sample
        alloc_ptrs = np.empty(len(chunk.alloc_sizes), np.uint64)
        samples = np.arange(first, first + n, dtype=np.uint64)
        sample_of_alloc = np.repeat(samples, chunk.alloc_counts)
        alloc_start = np.concatenate(([0], np.cumsum(chunk.alloc_counts)))
        blob = memoryview(chunk.blob)
        blob_pos = 0
        for j in range(n):
            size = int(chunk.packed[j])
            if size == 0:
                continue
            if self.cursor + size > self.page_size:
                self._open_page()
            base = self.page * self.page_size + self.cursor  # from the first page
            self.file.write(blob[blob_pos : blob_pos + size])
            self.hasher.update(blob[blob_pos : blob_pos + size])
            lo, hi = alloc_start[j], alloc_start[j + 1]
            alloc_ptrs[lo:hi] = base + chunk.alloc_offsets[lo:hi]
            self.cursor += size
            blob_pos += size
        self._relocate(chunk, alloc_ptrs, alloc_start, first)
        self.metadata[first : first + n] = chunk.metadata
        rows = np.empty(len(alloc_ptrs), ALLOC_TABLE_TYPE)
        rows["sample_id"], rows["ptr"] = sample_of_alloc, alloc_ptrs
        rows["size"] = chunk.alloc_sizes
        self.alloc_rows.append(rows)
        self.next_sample += n

    def _relocate(self, chunk: _Chunk, alloc_ptrs: np.ndarray, alloc_start: np.ndarray,
                  first: int) -> None:
        """Replace each provisional pointer in the metadata of the chunk (whose first
        sample is *first*) by its offset from the first page, and note where it was."""
        counts = chunk.alloc_counts.astype(np.uint64)
        for leaf in self.leaves:
            column, sub = leaf
            values = chunk.metadata[column] if sub is None else chunk.metadata[column][sub]
            with np.errstate(over="ignore"):  # below PROVISIONAL: wraps to a huge k
                k = values.astype(np.uint64) - np.uint64(PROVISIONAL)
            rows = np.flatnonzero(k < counts)  # one of the sample's own allocations
            if not rows.size:
                continue
            values[rows] = alloc_ptrs[alloc_start[rows] + k[rows].astype(np.int64)]
            if leaf not in self.pointers:
                self.pointers[leaf] = np.zeros(len(self.metadata), bool)
            self.pointers[leaf][first + rows] = True

    def _pad_page(self) -> None:
        """Write the rest of the current page (pages are written whole) and sum it."""
        if self.cursor < self.page_size:
            padding = bytes(self.page_size - self.cursor)
            self.file.write(padding)
            self.hasher.update(padding)
        self.hasher.finish_page()

    def _open_page(self) -> None:
        if self.page >= 0:
            self._pad_page()
        self.page += 1
        self.cursor = 0
        self.file.seek(self.start + self.page * self.page_size)

    def finish(self, start: int) -> int:
        """Pad the last page; move the pages down to *start* (the first page's place
        for the samples kept, where ``self.start`` was for every sample given: the
        skipped ones' metadata may have taken a page more), and give the pointers
        their offsets in the file. Returns where the allocation table goes (-1: no
        pages)."""
        if self.page >= 0:
            self._pad_page()
            if start != self.start:
                self.file.move(self.start, start, (self.page + 1) * self.page_size)
        offset = np.uint64(start)
        for (column, sub), rows in self.pointers.items():
            values = self.metadata[column] if sub is None else self.metadata[column][sub]
            values[rows] += offset
        for rows in self.alloc_rows:
            rows["ptr"] += offset
        return -1 if self.page < 0 else start + (self.page + 1) * self.page_size


def _pointer_leaves(row_type: np.dtype) -> list[tuple[str, str | None]]:
    """The u8 scalars of a metadata row: where fields may have stored pointers."""
    leaves: list[tuple[str, str | None]] = []
    u8 = np.dtype("<u8")
    for name in row_type.names or ():
        assert row_type.fields is not None  # a structured dtype has both
        column = row_type.fields[name][0]
        if column.names is None:
            if column == u8:
                leaves.append((name, None))
        else:
            assert column.fields is not None
            leaves.extend((name, sub) for sub in column.names if column.fields[sub][0] == u8)
    return leaves


def refuse_to_replace(fname: str | os.PathLike[str]) -> None:
    """Refuse a target that a written file must not replace: a directory, or
    anything but a regular file (a device such as /dev/null, a named pipe, a
    socket), which the write's final rename would swap for a regular file."""
    fname = os.fspath(fname)
    if not fname:
        raise FileNotFoundError(errno.ENOENT, "an empty name is no file to write", "''")
    if os.path.isdir(fname):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file to write", fname)
    if not os.path.basename(fname):  # "out/": a folder's name, as open() takes it
        raise IsADirectoryError(errno.EISDIR, "names a directory (it ends with a slash), "
                                "not a file to write", fname)
    try:
        mode = os.stat(fname).st_mode
    except OSError:  # absent, or a name the write itself refuses more precisely
        return
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, f"{kind_of_file(mode)}, not a file to write: writing "
                      "would replace it with a regular file", fname)


def in_its_folder(fname: str | os.PathLike[str]) -> str:
    """*fname* as an absolute path whose folder is the one the kernel finds,
    links followed before ``..`` (``os.path.abspath`` collapses ``lnk/..`` first:
    another folder, where ``lnk`` is a link); its last part as it is. A folder
    that is not there (``nosub/..``) is left as written, so that using it fails
    as ``open()`` fails."""
    fname = os.fspath(fname)
    head, tail = os.path.split(fname if os.path.isabs(fname)
                               else os.path.join(os.getcwd(), fname))
    if os.path.isdir(head):
        head = os.path.realpath(head)
    return os.path.join(head, tail)


def written_through_links(fname: str | os.PathLike[str]) -> str:
    """The absolute path a write to *fname* replaces: *fname* itself, or, where
    it is a symbolic link (dangling or not), the file the links lead to, as
    ``open(fname, "w")`` would write it; the link stays, leading to the new
    file (renaming over *fname* would replace the link with a regular file,
    in the link's directory, perhaps on another disk).

    The folder is resolved as the kernel resolves it, links first, then ``..``:
    ``lnk/../x.beton``, where ``lnk`` leads to ``data/sub``, is ``data/x.beton``
    (``os.path.abspath`` made it ``./x.beton``, another file than ``open()``'s)."""
    fname = in_its_folder(fname)
    if not os.path.islink(fname):
        return fname
    target = os.path.realpath(fname)
    if os.path.islink(target):  # links in a loop: open() would fail, not replace one
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), fname)
    return target


def _check_leader(name: str, leader: str | None, fields: Mapping[str, Field]) -> None:
    """That the field *name* follows (``RaggedField(follows=...)``), if any, is
    another field of the dataset that records its images' sizes."""
    if leader is None:
        return
    if leader not in fields or leader == name:
        others = [n for n in fields if n != name]
        raise ValueError(f"field {name!r} follows {leader!r}, which is not another field of "
                         f"the dataset (fields: {others})")
    if not fields[leader].RECORDS_SIZE:
        raise TypeError(f"field {name!r} follows {leader!r} ({type(fields[leader]).__name__}): "
                        "only an image field can be followed (RGBImageField, MaskField, "
                        "MultiChannelImageField, or one with RECORDS_SIZE = True)")


def _follow_depths(fields: Mapping[str, Field]) -> dict[str, int]:
    """How many fields each field's ``follows`` chain passes through (0: it follows
    none), refusing a chain that comes back to itself."""
    depths: dict[str, int] = {}
    for name in fields:
        chain = [name]
        while (leader := fields[chain[-1]].follows) is not None and leader not in depths:
            if leader in chain:
                raise ValueError("fields follow each other in a circle: "
                                 + " -> ".join([*chain[chain.index(leader):], leader]))
            chain.append(leader)
        depth = 0 if leader is None else depths[leader] + 1
        for field in reversed(chain):
            depths[field] = depth
            depth += 1
    return depths


class DatasetWriter:
    """Write a dataset to a .beton v2 file, readable by fastforward and FFCV.

    Args:
        fname: the output file. It appears only once the write has succeeded.
        fields: ``{name: Field}``, in the order of the values of each sample.
            Names are ASCII, at most 16 bytes.
        page_size: bytes per page, a power of two in [2 MiB, 4 GiB). Every
            sample must fit in one page.
        num_workers: worker processes; ``-1`` (or below 1) uses every CPU this
            process may run on.
        seed: seeds ``shuffle_indices`` and per-sample randomness
            (``RGBImageField(write_mode='proportion')``). The same inputs and
            seed give a byte-identical file, whatever ``num_workers`` is.
        progress: show a tqdm progress bar.
        skip_errors: (keyword only) an exception class, or a sequence of them,
            that leave a sample out
            of the file instead of stopping the write, when a field's
            encoding raises one, or reading the sample from the dataset
            (``from_indexed_dataset``'s ``dataset[i]``) does:
            ``fastforward convert --skip-bad`` passes ``(DecodeError,
            OSError)``. The file then holds the other samples, in order;
            ``skipped`` lists the ones left out.
        start_method: (keyword only) how worker processes start. ``None``
            (the default): fork while the process has a single thread, else
            multiprocessing's fork server (the dataset and fields are then
            pickled). ``'fork'`` forks even with other threads running.

        checksums: (keyword only) store a checksum of every page and of the
            header, field descriptors, metadata and allocation table, in a
            block that FFCV never reads (``fastforward.checksums``):
            ``fastforward verify`` and ``Loader(..., verify_checksums=True)``
            then find any damaged byte. False writes exactly FFCV's layout.

    A write holds a lock on ``.<name>.lock`` beside the target: a second
    writer of the same target raises ``TargetLockedError``. SIGTERM or SIGHUP
    during a write (where the process has no handler of its own for it) stops
    it as Ctrl-C does, raising ``fastforward.errors.Terminated`` (a
    ``SystemExit`` with status 143, or 129 for SIGHUP), and leaves no file.
    """

    skipped: list[SkippedSample]
    """The samples the last write left out (see *skip_errors*), in order."""

    # Called with ``skipped`` once the file is complete, before it is named:
    # ``(path, data)`` of a file published with it (``fastforward convert``'s
    # list of skipped images), written now and named right after the target;
    # data None: a file of that name is removed right after the target is named.
    _companion: Callable[[list[SkippedSample]], tuple[str, bytes | None]] | None = None

    def __init__(self, fname: str | os.PathLike[str], fields: Mapping[str, Field],
                 page_size: int = 4 * MIN_PAGE_SIZE, num_workers: int = -1,
                 seed: int = 0, progress: bool = True, *, checksums: bool = True,
                 skip_errors: type[Exception] | Sequence[type[Exception]] = (),
                 start_method: str | None = None) -> None:
        refuse_in_a_worker("DatasetWriter()")
        self.fname = os.fspath(fname)
        validate_page_size(int(page_size))
        self.page_size = int(page_size)
        if not fields:
            raise ValueError("a dataset needs at least one field")
        if len(fields) > 0xFFFF:
            raise ValueError(f"at most 65535 fields, got {len(fields)}")
        for name, field in fields.items():
            if not isinstance(field, Field):
                raise TypeError(f"field {name!r} is a {type(field).__name__}, not a Field")
            raw = (name.encode("ascii", errors="strict")
                   if isinstance(name, str) and name.isascii() else None)
            if raw is None or not 0 < len(raw) <= FIELD_NAME_BYTES or b"\0" in raw:
                raise ValueError(
                    f"field name {name!r} must be 1 to {FIELD_NAME_BYTES} ASCII characters "
                    "(the format stores 16 bytes)"
                )
        for name, field in fields.items():
            _check_leader(name, field.follows, fields)
        _follow_depths(fields)
        for name, field in fields.items():
            try:  # the descriptor the header will store: refused now, not at the write
                field.to_binary()
            except (TypeError, ValueError) as exc:
                raise annotate(exc, f"{self.fname}: field {name!r}") from None
        self.fields = dict(fields)
        num_workers = whole_number(num_workers, "num_workers")
        self.num_workers = default_workers() if num_workers < 1 else num_workers
        self.seed = _seed(seed, "seed")
        self.progress = progress
        self.checksums = bool(checksums)
        self.row_type = get_metadata_type(list(self.fields.values()))
        if isinstance(skip_errors, type):  # one class, as `except` takes
            skip_errors = (skip_errors,)
        if not isinstance(skip_errors, Iterable) or isinstance(skip_errors, (str, bytes)):
            raise TypeError(f"skip_errors takes exception types (a class or a sequence of "
                            f"them), got {skip_errors!r}")
        self.skip_errors = tuple(skip_errors)
        for kind in self.skip_errors:
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                raise TypeError(f"skip_errors must hold Exception subclasses, got {kind!r}")
        if start_method is not None:
            _start_method(start_method)  # validated now rather than at the write
        self.start_method = start_method
        self.skipped = []

    # -- entry points -------------------------------------------------------------

    def from_indexed_dataset(self, dataset: Any, indices: Sequence[int] | None = None,
                             chunksize: int = 100, shuffle_indices: bool = False,
                             seed: int | None = None) -> None:
        """Write ``dataset[i]`` for each ``i`` of *indices* (default: all).

        Args:
            dataset: anything with ``__len__`` and ``__getitem__`` returning a
                tuple with one value per field (a bare value for one field,
                except a list or tuple, which is taken as the values: a
                single field whose value is a list returns ``(value,)``).
            indices: which source samples, in which order (integers of at
                least 0; a boolean mask, floats or negative indices are
                refused).
            chunksize: samples per unit of work sent to a worker, at most (cut to
                about ``TASK_BYTES`` of encoded data where samples are large).
            shuffle_indices: shuffle the order, seeded by *seed*.
            seed: for the shuffle; defaults to the writer's seed.
        """
        if chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, got {chunksize}")
        order = np.arange(self._length(dataset)) if indices is None else self._indices(indices)
        if shuffle_indices:
            rng = np.random.default_rng(self.seed if seed is None else _seed(seed, "seed"))
            order = rng.permutation(order)
        tasks = [
            (start, order[start : start + chunksize].tolist())
            for start in range(0, len(order), chunksize)
        ]
        self._write(lambda: (len(order), tasks),
                    _IndexedSource(dataset, self.fname, self.skip_errors))

    def _length(self, dataset: Any) -> int:
        """``len(dataset)``, or a TypeError naming the file when the dataset has no
        length (a generator, an ``IterableDataset``) or a negative one."""
        try:
            return len(dataset)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{self.fname}: from_indexed_dataset takes a dataset with __len__ and "
                f"__getitem__, and len() of this {type(dataset).__name__} failed ({exc}); for "
                "an iterable dataset, collect its samples in a list, or use from_webdataset"
            ) from exc

    def _indices(self, indices: Sequence[int]) -> np.ndarray:
        """*indices* as int64, refusing what would silently become other samples
        (``utils.sample_numbers``, and negative numbers: ``dataset[-1]`` is the
        last sample, another one than the index says)."""
        as_int = sample_numbers(indices, f"{self.fname}: indices")
        if as_int.size and as_int.min() < 0:
            raise ValueError(f"{self.fname}: indices must be at least 0, got "
                             f"{int(as_int.min())} (a negative index would count from the "
                             "end of the dataset)")
        return as_int

    def from_webdataset(self, shards: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                        pipeline: Callable[[Any], Iterable[Any]]) -> None:
        """Write the samples of WebDataset *shards*, shard by shard, in order.

        ``pipeline(webdataset.WebDataset(shard))`` must yield one tuple per
        sample. The shards are read once to count the samples, then written;
        one shard is one unit of work. *shards* is a sequence of paths or
        URLs, or one of them; each is expanded as ``webdataset.WebDataset``
        expands a string (``train-{0000..0099}.tar`` is a hundred shards,
        ``a.tar::b.tar`` two), so that every shard is a unit of work, and an
        error names its shard.
        """
        names = [one for shard in self._shards(shards) for one in _expand_shards(shard)]
        refuse_to_replace(self.fname)  # before the shards are read to be counted
        source = _WebDatasetSource(pipeline, self.fname)

        def count() -> tuple[int, list[Any]]:  # holding the target's lock
            counts: list[int] = []
            for shard in names:
                counts.append(source.count(shard, sum(counts)))
            starts = np.concatenate(([0], np.cumsum(counts)))[:-1].tolist()
            return int(sum(counts)), list(zip(starts, zip(names, counts, strict=True),
                                              strict=True))

        self._write(count, source)

    def _shards(self, shards: Any) -> list[str]:
        """*shards* as a list of strings: one path (a string: not its characters),
        or a sequence of them."""
        if isinstance(shards, (str, os.PathLike)):
            shards = [shards]
        elif isinstance(shards, (bytes, bytearray)) or not isinstance(shards,
                                                                     (Sequence, np.ndarray)):
            raise TypeError(f"{self.fname}: shards must be a path or URL, or a sequence of "
                            f"them, got {type(shards).__name__}")
        found = []
        for shard in shards:
            name = os.fspath(shard) if isinstance(shard, (str, os.PathLike)) else None
            if not isinstance(name, str):
                raise TypeError(f"{self.fname}: shards must be paths or URLs (str or "
                                f"os.PathLike), got {type(shard).__name__} {shard!r:.40}")
            found.append(name)
        return found

    # -- the write ------------------------------------------------------------------

    def _write(self, prepare: Callable[[], tuple[int, list[Any]]], source: Any) -> None:
        """Write the file: *prepare* gives the number of samples and the workers'
        tasks, once the target's lock is held (``from_webdataset`` reads every shard
        to count its samples: a second writer of the target is refused meanwhile)."""
        names = list(self.fields)
        fields = list(self.fields.values())
        encoder = _Encoder(self.fname, names, fields, self.row_type, self.page_size, self.seed,
                           self.skip_errors)
        self.skipped = []
        refuse_to_replace(self.fname)
        target = written_through_links(self.fname)
        with _signals_stop_the_write(self.fname) as sigterm:
            self._write_locked(prepare, source, encoder, names, fields, target, sigterm)

    def _write_locked(self, prepare: Callable[[], tuple[int, list[Any]]], source: Any,
                      encoder: _Encoder, names: list[str], fields: list[Field], target: str,
                      sigterm: _SignalGuard) -> None:
        dir_fd = os.open(os.path.dirname(target), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        lock = _TargetLock(target, dir_fd)
        output = pool = companion = None
        try:
            _check_name_length(target, dir_fd)
            lock.acquire()
            self._remove_stale_parts(dir_fd, target)
            num_samples, tasks = prepare()
            output = _Output(target, dir_fd)
            self._write_head(output, num_samples, names, fields)
            start = data_offset(len(fields), num_samples, self.row_type, self.page_size)
            pages = _PageWriter(output, start, self.page_size, num_samples, self.row_type,
                                _pointer_leaves(self.row_type))
            pool = _Pool(min(self.num_workers, max(len(tasks), 1)), (encoder, source),
                         self.start_method, [dir_fd, lock.fd, output.fd], self.fname)
            extra_told = False
            with self._progress_bar(num_samples) as bar:
                for chunk in pool.run(tasks, getattr(source, "split", None),
                                      getattr(source, "streams", False)):
                    pages.add(chunk)
                    self.skipped.extend(chunk.skipped)
                    bar.update(len(chunk.packed) + len(chunk.skipped))
                    if chunk.extra is not None and not extra_told:
                        extra_told = True
                        sample, count = chunk.extra
                        hint = "" if len(names) > 1 else (
                            "; with one field, a list or tuple is the sample's values: a "
                            "value that is a list or tuple is returned as (value,)")
                        warnings.warn(
                            f"{self.fname}: sample {sample} holds {count} values for the "
                            f"{len(names)} fields {names}: values past the last field are "
                            f"not written (as FFCV's writer does){hint}", UserWarning,
                            stacklevel=2)
            pool.close()
            pool = None
            if pages.next_sample + len(self.skipped) != num_samples:
                raise EncodeError(
                    f"{self.fname}: expected {num_samples} samples, the dataset gave "
                    f"{pages.next_sample + len(self.skipped)}"
                )
            self._write_tail(output, pages, pages.next_sample, len(fields))
            if self._companion is not None:
                companion = _Companion(*self._companion(self.skipped))
            output.publish(sigterm.disarm)
            if companion is not None:
                companion.publish()
        except BaseException:
            sigterm.disarm()  # a signal now waits for the clean-up's end
            if pool is not None:
                pool.terminate()
            if output is not None:
                output.discard()
            if companion is not None:
                companion.discard()
            raise
        finally:
            sigterm.disarm()
            lock.release()
            os.close(dir_fd)

    def _remove_stale_parts(self, dir_fd: int, target: str) -> None:
        """Remove the partial files that killed writers of *target* left
        (holding the lock, we know that none of them is still writing)."""
        base = _hidden_stem(os.path.basename(target), dir_fd)
        for name in os.listdir(dir_fd):
            if _is_part_of(name, base):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)

    def _write_head(self, file: _Output, num_samples: int, names: list[str],
                    fields: list[Field]) -> None:
        file.write(self._header(num_samples, alloc_table_ptr=0).tobytes())
        file.write(_descriptors(names, fields).tobytes())

    def _write_tail(self, file: _Output, pages: _PageWriter, num_samples: int,
                    num_fields: int) -> None:
        meta_start = metadata_offset(num_fields)
        table_ptr = pages.finish(data_offset(num_fields, num_samples, self.row_type,
                                             self.page_size))
        if table_ptr < 0:  # no payloads at all: the table follows the metadata
            table_ptr = meta_start + num_samples * self.row_type.itemsize
        table = (np.concatenate(pages.alloc_rows) if pages.alloc_rows
                 else np.zeros(0, ALLOC_TABLE_TYPE))
        if self.checksums:  # the block sits between the last page and the table
            sums = pages.hasher.sums
            final = self._header(num_samples, table_ptr + block_size(len(sums)))
            head = final.tobytes() + _descriptors(list(self.fields),
                                                  list(self.fields.values())).tobytes()
            file.seek(table_ptr)
            file.write(build_block(head, pages.metadata[:num_samples], table, sums))
            table_ptr += block_size(len(sums))
        file.seek(table_ptr)
        file.write(table.tobytes())
        file.truncate()
        file.seek(meta_start)
        file.write(pages.metadata[:num_samples].tobytes())
        file.seek(0)
        file.write(self._header(num_samples, table_ptr).tobytes())

    def _header(self, num_samples: int, alloc_table_ptr: int) -> np.ndarray:
        header = np.zeros(1, HeaderType)
        header["version"] = CURRENT_VERSION
        header["num_fields"] = len(self.fields)
        header["page_size"] = self.page_size
        header["num_samples"] = num_samples
        header["alloc_table_ptr"] = alloc_table_ptr
        return header

    def _progress_bar(self, total: int) -> Any:
        from tqdm import tqdm

        class Bar(tqdm):  # type: ignore[type-arg]  # generic in its stubs only, not at run time
            # no monitor thread: a later write forks workers, and forking a
            # process with threads is unsafe (Python 3.12 warns about it)
            monitor_interval = 0

        # no stderr (closed: `2>&-`, or None, as under pythonw): no bar, not a failed write
        return Bar(total=total, disable=not self.progress or sys.stderr is None,
                   unit="samples", desc=os.path.basename(self.fname), file=sys.stderr)


def _descriptors(names: list[str], fields: list[Field]) -> np.ndarray:
    """The field descriptors as the file stores them."""
    descriptors = np.zeros(len(fields), FieldDescType)
    for desc, name, field in zip(descriptors, names, fields, strict=True):
        desc["type_id"] = type_id_of(field)
        raw = np.frombuffer(name.encode("ascii"), np.uint8)
        desc["name"][: raw.size] = raw
        desc["arguments"][:] = np.frombuffer(field.to_binary().tobytes(), np.uint8)
    return descriptors


class _IndexedSource:
    """Chunks of an indexed dataset: ``(first_dest, [source indices])``.

    A dataset with a ``describe(index) -> str`` method (``ImageFolder`` has
    one: the file's path) gets that description in error messages.
    """

    def __init__(self, dataset: Any, fname: str,
                 skip_errors: tuple[type[BaseException], ...] = ()) -> None:
        self.dataset = dataset
        self.fname = fname
        self.skip_errors = skip_errors  # a sample whose reading raises one is left out
        self.describe_source = getattr(dataset, "describe", None)

    def describe(self, src: int) -> str | None:
        """Where dataset index *src* comes from, for messages (None: its index says it)."""
        return None if self.describe_source is None else str(self.describe_source(src))

    @staticmethod
    def split(task: tuple[int, list[int]], count: int) -> tuple[tuple[int, list[int]],
                                                                tuple[int, list[int]]]:
        """*task* as its first *count* samples and the rest."""
        start, sources = task
        return (start, sources[:count]), (start + count, sources[count:])

    def expand(self, task: tuple[int, list[int]]) -> Iterator[tuple[int, Any, Any]]:
        start, sources = task
        for offset, src in enumerate(sources):
            dest = start + offset
            try:
                sample = self.dataset[src]
            except self.skip_errors as exc:
                yield dest, src, _Unread(exception_text(exc))
                continue
            except BaseException as exc:
                where = _where(self.fname, dest, src, self.describe(src) or f"dataset index {src}")
                _raise_located(exc, f"{where}, reading it from the dataset", "the dataset")
            yield dest, src, sample


def _expand_shards(shard: str) -> list[str]:
    """The shards *shard* names, as ``webdataset.WebDataset`` expands a string:
    ``::`` separates shards, braces are expanded (``train-{0000..0099}.tar``)."""
    try:
        import webdataset  # noqa: F401
        from braceexpand import braceexpand  # webdataset's own dependency
    except ImportError as exc:
        raise ImportError(f"from_webdataset needs webdataset: {install_hint('webdataset')}") \
            from exc
    return [one for part in shard.split("::") for one in braceexpand(part)]


class _WebDatasetSource:
    """Shards of a WebDataset: ``(first_dest, (shard, expected_count))``; a worker
    sends a shard's chunks as it encodes them (it streams, see ``_encode_task``)."""

    streams = True

    def __init__(self, pipeline: Callable[[Any], Iterable[Any]], fname: str) -> None:
        self.pipeline = pipeline
        self.fname = fname

    def iterate(self, shard: str) -> Iterable[Any]:
        import webdataset

        options: dict[str, Any] = {"shardshuffle": False}
        if "empty_check" in inspect.signature(webdataset.WebDataset).parameters:
            options["empty_check"] = False  # an empty shard adds no samples (it raised)
        return self.pipeline(webdataset.WebDataset(shard, **options))

    def describe(self, src: str) -> str | None:
        return src

    def count(self, shard: str, start: int) -> int:
        """The samples of *shard*, whose first will be sample *start*; an error
        names the file, the shard and the sample it came at."""
        n = 0
        try:
            samples = iter(self.iterate(shard))
        except BaseException as exc:
            _raise_located(exc, f"{self.fname}: shard {shard}, counting its samples",
                           "the pipeline")
        while True:
            try:
                next(samples)
            except StopIteration:
                return n
            except BaseException as exc:
                where = _where(self.fname, start + n, None, f"{shard}#{n}")
                _raise_located(exc, f"{where}, counting the shard's samples", "the pipeline")
            n += 1

    def expand(self, task: tuple[int, tuple[str, int]]) -> Iterator[tuple[int, Any, Any]]:
        start, (shard, count) = task
        n = 0
        try:
            samples = iter(self.iterate(shard))
        except BaseException as exc:
            _raise_located(exc, f"{self.fname}: shard {shard}", "the pipeline")
        while True:
            try:
                sample = next(samples)
            except StopIteration:
                break
            except BaseException as exc:
                where = _where(self.fname, start + n, None, f"{shard}#{n}")
                _raise_located(exc, f"{where}, reading it from the shard", "the pipeline")
            n += 1
            if n > count:
                break
            yield start + n - 1, f"{shard}#{n - 1}", sample
        if n != count:
            raise EncodeError(f"{self.fname}: shard {shard} gave {n} samples, "
                              f"{count} when counted")


__getattr__ = not_provided(__name__, dict.fromkeys(
    ("count_samples_in_shard", "from_shard", "handle_sample", "worker_job_indexed_dataset",
     "worker_job_webdataset"),
    "one of FFCV's writer worker functions; fastforward's workers are internal: call "
    "DatasetWriter(...).from_indexed_dataset(dataset) or .from_webdataset(shards, pipeline)"))

"""Write datasets to .beton v2 files that FFCV 1.0.2 reads.

How a write runs:

1. The parent opens a temporary file beside the target and writes the header
   (with ``alloc_table_ptr = 0``) and the field descriptors.
2. Worker processes encode chunks of consecutive samples. ``malloc`` hands
   each field a fresh buffer and a *provisional* pointer; a chunk comes back
   as its metadata rows plus one blob of payload bytes.
3. The parent places the chunks in sample order: each sample's payloads go
   back to back into the current page, or into a fresh page when they do not
   fit, and the provisional pointers in the metadata become file offsets.
   Pages are written whole.
4. At the end: the checksum block (``checksums=True``: the sums of the pages,
   hashed as they were written, and of the other parts), the allocation table
   after it, the metadata table, the final header, ``fsync``, and an atomic
   rename onto the target.

Placement happens in one process, in sample order, so the file depends only
on the inputs and the seed, never on ``num_workers`` or timing. Any failure
(a bad sample, a dead worker, Ctrl-C) stops the workers, removes the
temporary file and raises: no file that looks valid is left behind.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from .checksums import PageHasher, block_size, build_block
from .errors import EncodeError, FastForwardError, annotate
from .fields import Field
from .fields.base import CURRENT_SAMPLE
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
from .utils import default_workers

__all__ = ["MAX_PAGE_SIZE", "MIN_PAGE_SIZE", "DatasetWriter"]

# Provisional pointers handed out by malloc: PROVISIONAL + k for a sample's
# k-th allocation. No real file offset comes near this value.
PROVISIONAL = 0xFFF0_0000_0000_0000
MAX_ALLOCS_PER_SAMPLE = 1 << 20
_IN_FLIGHT_PER_WORKER = 2


class WorkerError(FastForwardError, RuntimeError):
    """A writer worker process died without reporting an exception."""


class _Chunk:
    """One chunk as encoded by a worker (plain arrays; pickled back to the parent)."""

    __slots__ = ("alloc_counts", "alloc_offsets", "alloc_sizes", "blob", "metadata", "packed")

    def __init__(self, metadata: np.ndarray, blob: bytes, packed: np.ndarray,
                 alloc_counts: np.ndarray, alloc_offsets: np.ndarray,
                 alloc_sizes: np.ndarray) -> None:
        self.metadata = metadata  # rows of this chunk, pointers provisional
        self.blob = blob  # every sample's payloads, packed as they will lie in a page
        self.packed = packed  # bytes each sample occupies in the blob
        self.alloc_counts = alloc_counts  # allocations per sample
        self.alloc_offsets = alloc_offsets  # each allocation's offset within its sample
        self.alloc_sizes = alloc_sizes  # each allocation's size


class _Encoder:
    """Encodes samples into chunks; lives in each worker process."""

    def __init__(self, fname: str, names: Sequence[str], fields: Sequence[Field],
                 row_type: np.dtype, page_size: int, seed: int) -> None:
        self.fname = fname
        self.names = list(names)
        self.fields = list(fields)
        self.row_type = row_type
        self.page_size = page_size
        self.seed = seed

    def encode(self, samples: Iterable[tuple[int, Any, Any]]) -> _Chunk:
        """Encode ``(dest_index, source_label, sample)`` triples."""
        items = list(samples)
        metadata = np.zeros(len(items), self.row_type)
        columns = [metadata[f"f{i}"] for i in range(len(self.fields))]
        parts: list[np.ndarray] = []
        packed = np.zeros(len(items), np.int64)
        counts = np.zeros(len(items), np.int64)
        offsets: list[int] = []
        sizes: list[int] = []
        for j, (dest, source, sample) in enumerate(items):
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

            values = self._as_tuple(sample, dest, source)
            for i, (field, value) in enumerate(zip(self.fields, values, strict=True)):
                token = CURRENT_SAMPLE.set((self.seed, dest, i))
                try:
                    field.encode(columns[i][j : j + 1], value, malloc)
                except Exception as exc:
                    raise annotate(exc, self._where(dest, source, self.names[i])) from None
                finally:
                    CURRENT_SAMPLE.reset(token)
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
                    f"{self._where(dest, source)}: {_too_large(cursor, self.page_size)}"
                )
            packed[j] = cursor
            counts[j] = len(allocs)
        blob = np.concatenate(parts).tobytes() if parts else b""
        return _Chunk(metadata, blob, packed, counts,
                      np.asarray(offsets, np.int64), np.asarray(sizes, np.int64))

    def _as_tuple(self, sample: Any, dest: int, source: Any) -> Sequence[Any]:
        if len(self.fields) == 1 and not isinstance(sample, (tuple, list)):
            return (sample,)
        if not isinstance(sample, (tuple, list)) or len(sample) != len(self.fields):
            got = f"a {type(sample).__name__}"
            if isinstance(sample, (tuple, list)):
                got += f" of {len(sample)} values"
            raise EncodeError(
                f"{self._where(dest, source)}: expected a tuple of {len(self.fields)} values "
                f"(for fields {self.names}), got {got}"
            )
        return sample

    def _where(self, dest: int, source: Any, field: str | None = None) -> str:
        where = f"{self.fname}: sample {dest}"
        if isinstance(source, str):
            where += f" ({source})"
        elif source is not None and source != dest:
            where += f" (dataset index {source})"
        if field is not None:
            where += f", field {field!r}"
        return where


def _too_large(nbytes: int, page_size: int) -> str:
    suggestion = 1 << max(nbytes - 1, 1).bit_length()
    return (
        f"the sample needs {nbytes} bytes, more than a page ({page_size} bytes); "
        f"every sample must fit in one page: use page_size={max(suggestion, MIN_PAGE_SIZE)}"
    )


# -- worker processes -----------------------------------------------------------

def _worker_main(conn: Connection, job: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    # forked workers receive the job as it is in memory (nothing is pickled);
    # spawned ones get it pickled
    encoder, expand = job
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        task_id, payload = task
        try:
            result: Any = ("ok", task_id, encoder.encode(expand(payload)))
        except BaseException as exc:
            result = ("error", task_id, _portable(exc))
        try:
            conn.send(result)
        except (BrokenPipeError, OSError):
            return


def _portable(exc: BaseException) -> BaseException:
    """*exc* if it survives pickling, else an EncodeError with its text."""
    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = EncodeError(f"{type(exc).__name__}: {exc}")
    exc.add_note(f"in the writer's worker process:\n{text}")
    return exc


def _died(proc: Any) -> WorkerError:
    proc.join(timeout=5)
    return WorkerError(
        f"writer worker {proc.name} died (exit code {proc.exitcode}) without reporting "
        "an error; out of memory?"
    )


class _Pool:
    """Worker processes, each fed over its own pipe; the parent waits on the
    pipes and on the processes' sentinels, so a dead worker is noticed at once."""

    def __init__(self, num_workers: int, job: Any) -> None:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        try:
            for i in range(num_workers):
                parent_end, child_end = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker_main,
                    args=(child_end, job),
                    name=f"fastforward-writer-{i}",
                    daemon=True,
                )
                proc.start()
                child_end.close()
                self.conns.append(parent_end)
                self.procs.append(proc)
        except BaseException:
            self.terminate()
            raise

    def run(self, tasks: Sequence[Any]) -> Iterator[Any]:
        """Yield the results of *tasks* in order; raise the first failure."""
        results: dict[int, Any] = {}
        busy: dict[Connection, int] = dict.fromkeys(self.conns, 0)
        sentinels = {p.sentinel: p for p in self.procs}
        owner = dict(zip(self.conns, self.procs, strict=True))
        next_task = next_result = 0
        window = _IN_FLIGHT_PER_WORKER * len(self.conns) * 2

        def feed(conn: Connection) -> None:
            nonlocal next_task
            while (busy[conn] < _IN_FLIGHT_PER_WORKER and next_task < len(tasks)
                   and next_task - next_result < window):
                try:
                    conn.send((next_task, tasks[next_task]))
                except OSError:  # BrokenPipeError: it died since the last wait()
                    raise _died(owner[conn]) from None
                busy[conn] += 1
                next_task += 1

        for conn in self.conns:
            feed(conn)
        while next_result < len(tasks):
            for ready in wait([*self.conns, *sentinels]):
                if ready in sentinels:
                    raise _died(sentinels[ready])
                assert isinstance(ready, Connection)
                try:
                    status, task_id, value = ready.recv()
                except (EOFError, OSError):
                    raise _died(owner[ready]) from None
                if status == "error":
                    raise value
                busy[ready] -= 1
                results[task_id] = value
            while next_result in results:
                yield results.pop(next_result)
                next_result += 1
            for conn in self.conns:
                feed(conn)

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
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []


# -- the file -----------------------------------------------------------------


class _PageWriter:
    """Places encoded chunks into whole pages of the output file, in order."""

    def __init__(self, file: Any, start: int, page_size: int, num_samples: int,
                 row_type: np.dtype, pointer_leaves: Sequence[tuple[str, str | None]]) -> None:
        self.file = file
        self.start = start  # first data page
        self.page_size = page_size
        self.page = -1  # index of the page being filled (relative to start)
        self.cursor = page_size  # fill level of that page: full, so the first sample opens one
        self.metadata = np.zeros(num_samples, row_type)
        self.leaves = pointer_leaves
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
            base = self.start + self.page * self.page_size + self.cursor
            self.file.write(blob[blob_pos : blob_pos + size])
            self.hasher.update(blob[blob_pos : blob_pos + size])
            lo, hi = alloc_start[j], alloc_start[j + 1]
            alloc_ptrs[lo:hi] = base + chunk.alloc_offsets[lo:hi]
            self.cursor += size
            blob_pos += size
        self._relocate(chunk, alloc_ptrs, alloc_start)
        self.metadata[first : first + n] = chunk.metadata
        rows = np.empty(len(alloc_ptrs), ALLOC_TABLE_TYPE)
        rows["sample_id"], rows["ptr"] = sample_of_alloc, alloc_ptrs
        rows["size"] = chunk.alloc_sizes
        self.alloc_rows.append(rows)
        self.next_sample += n

    def _relocate(self, chunk: _Chunk, alloc_ptrs: np.ndarray, alloc_start: np.ndarray) -> None:
        """Replace each provisional pointer in the metadata by its file offset."""
        for column, sub in self.leaves:
            values = chunk.metadata[column] if sub is None else chunk.metadata[column][sub]
            k = values.astype(np.uint64) - np.uint64(PROVISIONAL)
            mask = values >= np.uint64(PROVISIONAL)
            if not mask.any():
                continue
            rows = np.flatnonzero(mask)
            if np.any(k[rows] >= chunk.alloc_counts[rows].astype(np.uint64)):
                raise EncodeError("a field stored a pointer that malloc never returned")
            values[rows] = alloc_ptrs[alloc_start[rows] + k[rows].astype(np.int64)]

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

    def finish(self) -> int:
        """Pad the last page; return where the allocation table goes (-1: no pages)."""
        if self.page < 0:
            return -1
        self._pad_page()
        return self.start + (self.page + 1) * self.page_size


def _pointer_leaves(row_type: np.dtype) -> list[tuple[str, str | None]]:
    """The u8 scalars of a metadata row: where fields may have stored pointers."""
    leaves: list[tuple[str, str | None]] = []
    u8 = np.dtype("<u8")
    for name in row_type.names or ():
        column = row_type.fields[name][0]
        if column.names is None:
            if column == u8:
                leaves.append((name, None))
        else:
            leaves.extend((name, sub) for sub in column.names if column.fields[sub][0] == u8)
    return leaves


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
        checksums: store a checksum of every page and of the header, field
            descriptors, metadata and allocation table, in a block that FFCV
            never reads (``fastforward.checksums``): ``fastforward verify`` and
            ``Loader(..., verify_checksums=True)`` then find any damaged byte.
            False writes exactly FFCV's layout.
    """

    def __init__(self, fname: str | os.PathLike[str], fields: Mapping[str, Field],
                 page_size: int = 4 * MIN_PAGE_SIZE, num_workers: int = -1,
                 seed: int = 0, progress: bool = True, *, checksums: bool = True) -> None:
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
            raw = name.encode("ascii", errors="strict") if name.isascii() else None
            if raw is None or not 0 < len(raw) <= FIELD_NAME_BYTES or b"\0" in raw:
                raise ValueError(
                    f"field name {name!r} must be 1 to {FIELD_NAME_BYTES} ASCII characters "
                    "(the format stores 16 bytes)"
                )
        self.fields = dict(fields)
        self.num_workers = default_workers() if num_workers < 1 else int(num_workers)
        self.seed = int(seed)
        self.progress = progress
        self.checksums = bool(checksums)
        self.row_type = get_metadata_type(list(self.fields.values()))

    # -- entry points -------------------------------------------------------------

    def from_indexed_dataset(self, dataset: Any, indices: Sequence[int] | None = None,
                             chunksize: int = 100, shuffle_indices: bool = False,
                             seed: int | None = None) -> None:
        """Write ``dataset[i]`` for each ``i`` of *indices* (default: all).

        Args:
            dataset: anything with ``__len__`` and ``__getitem__`` returning a
                tuple with one value per field (a bare value for one field).
            indices: which source samples, in which order.
            chunksize: samples per unit of work sent to a worker.
            shuffle_indices: shuffle the order, seeded by *seed*.
            seed: for the shuffle; defaults to the writer's seed.
        """
        if chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, got {chunksize}")
        order = np.arange(len(dataset)) if indices is None else np.asarray(indices, np.int64)
        if order.ndim != 1:
            raise ValueError("indices must be one-dimensional")
        if shuffle_indices:
            rng = np.random.default_rng(self.seed if seed is None else seed)
            order = rng.permutation(order)
        tasks = [
            (start, order[start : start + chunksize].tolist())
            for start in range(0, len(order), chunksize)
        ]
        self._write(len(order), tasks, _IndexedSource(dataset))

    def from_webdataset(self, shards: Sequence[str], pipeline: Callable[[Any], Iterable[Any]]
                        ) -> None:
        """Write the samples of WebDataset *shards*, shard by shard, in order.

        ``pipeline(webdataset.WebDataset(shard))`` must yield one tuple per
        sample. The shards are read once to count the samples, then written;
        one shard is one unit of work.
        """
        try:
            import webdataset  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "from_webdataset needs webdataset: pip install 'fastforward[webdataset]'"
            ) from exc
        source = _WebDatasetSource(pipeline)
        counts = [sum(1 for _ in source.iterate(shard)) for shard in shards]
        starts = np.concatenate(([0], np.cumsum(counts)))[:-1].tolist()
        tasks = list(zip(starts, zip(shards, counts, strict=True), strict=True))
        self._write(int(sum(counts)), tasks, source)

    # -- the write ------------------------------------------------------------------

    def _write(self, num_samples: int, tasks: list[Any], source: Any) -> None:
        names = list(self.fields)
        fields = list(self.fields.values())
        encoder = _Encoder(self.fname, names, fields, self.row_type, self.page_size, self.seed)
        directory = os.path.dirname(os.path.abspath(self.fname))
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.fname)}.", suffix=".part",
                                   dir=directory)
        pool = None
        try:
            with os.fdopen(fd, "wb") as file:
                self._write_head(file, num_samples, names, fields)
                start = data_offset(len(fields), num_samples, self.row_type, self.page_size)
                pages = _PageWriter(file, start, self.page_size, num_samples, self.row_type,
                                    _pointer_leaves(self.row_type))
                pool = _Pool(min(self.num_workers, max(len(tasks), 1)), (encoder, source.expand))
                with self._progress_bar(num_samples) as bar:
                    for chunk in pool.run(tasks):
                        pages.add(chunk)
                        bar.update(len(chunk.packed))
                pool.close()
                pool = None
                if pages.next_sample != num_samples:
                    raise EncodeError(
                        f"{self.fname}: expected {num_samples} samples, the dataset gave "
                        f"{pages.next_sample}"
                    )
                self._write_tail(file, pages, num_samples, len(fields))
                file.flush()
                os.fsync(file.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, self.fname)
        except BaseException:
            if pool is not None:
                pool.terminate()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _write_head(self, file: Any, num_samples: int, names: list[str],
                    fields: list[Field]) -> None:
        file.write(self._header(num_samples, alloc_table_ptr=0).tobytes())
        file.write(_descriptors(names, fields).tobytes())

    def _write_tail(self, file: Any, pages: _PageWriter, num_samples: int,
                    num_fields: int) -> None:
        meta_start = metadata_offset(num_fields)
        table_ptr = pages.finish()
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
            file.write(build_block(head, pages.metadata, table, sums))
            table_ptr += block_size(len(sums))
        file.seek(table_ptr)
        file.write(table.tobytes())
        file.truncate()
        file.seek(meta_start)
        file.write(pages.metadata.tobytes())
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

        class Bar(tqdm):  # type: ignore[misc]
            # no monitor thread: a later write forks workers, and forking a
            # process with threads is unsafe (Python 3.12 warns about it)
            monitor_interval = 0

        return Bar(total=total, disable=not self.progress, unit="samples",
                   desc=os.path.basename(self.fname), file=sys.stderr)


def _descriptors(names: list[str], fields: list[Field]) -> np.ndarray:
    """The field descriptors as the file stores them."""
    descriptors = np.zeros(len(fields), FieldDescType)
    for desc, name, field in zip(descriptors, names, fields, strict=True):
        desc["type_id"] = type_id_of(field)
        raw = np.frombuffer(name.encode("ascii"), np.uint8)
        desc["name"][: raw.size] = raw
        desc["arguments"][:] = np.frombuffer(field.to_binary().tobytes(), np.uint8)
    return descriptors


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _IndexedSource:
    """Chunks of an indexed dataset: ``(first_dest, [source indices])``.

    A dataset with a ``describe(index) -> str`` method (``ImageFolder`` has
    one: the file's path) gets that description in error messages.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.describe = getattr(dataset, "describe", None)

    def expand(self, task: tuple[int, list[int]]) -> Iterator[tuple[int, Any, Any]]:
        start, sources = task
        for offset, src in enumerate(sources):
            dest = start + offset
            try:
                sample = self.dataset[src]
            except Exception as exc:
                where = f"reading dataset index {src} (sample {dest})"
                if self.describe is not None:
                    where += f", {self.describe(src)}"
                raise annotate(exc, where) from None
            yield dest, src if self.describe is None else self.describe(src), sample


class _WebDatasetSource:
    """Shards of a WebDataset: ``(first_dest, (shard, expected_count))``."""

    def __init__(self, pipeline: Callable[[Any], Iterable[Any]]) -> None:
        self.pipeline = pipeline

    def iterate(self, shard: str) -> Iterable[Any]:
        import webdataset

        return self.pipeline(webdataset.WebDataset(shard, shardshuffle=False))

    def expand(self, task: tuple[int, tuple[str, int]]) -> Iterator[tuple[int, Any, Any]]:
        start, (shard, count) = task
        n = 0
        for n, sample in enumerate(self.iterate(shard), 1):
            if n > count:
                break
            yield start + n - 1, f"{shard}#{n - 1}", sample
        if n != count:
            raise EncodeError(f"shard {shard} gave {n} samples, {count} when counted")

"""Where a batch's payload bytes come from.

A memory manager turns a batch's sample indices into ``BatchData``: for each
field with payloads, a source buffer and each sample's offset and size in it.
Decoders read nothing else. The offsets and sizes are the ones the ``Reader``
checked when it opened the file.

With ``verify_checksums=True`` (and a file that has checksums), ``fetch``
first checks the pages of the batch that this process has not checked yet,
and raises ``FormatError`` naming the file, the page and its samples on a
mismatch, before any decoder sees the bytes. The record of checked pages lives
in the ``Reader`` (each process has its own).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..reader import Reader


@dataclass
class BatchData:
    """The payloads of one batch: per field index, ``(source, offsets, sizes)``."""

    fields: dict[int, tuple[Any, np.ndarray, np.ndarray]] = field(default_factory=dict)
    nbytes: int = 0  # bytes this batch holds in memory of its own (0 for a memory map)

    def field(self, index: int) -> tuple[Any, np.ndarray, np.ndarray]:
        """``(source, offsets, sizes)``: sample ``j``'s bytes are
        ``source[offsets[j] : offsets[j] + sizes[j]]``."""
        return self.fields[index]

    def rows(self, lo: int, hi: int) -> BatchData:
        """The payloads of the batch's samples ``lo:hi`` (views, no copy)."""
        return BatchData({i: (source, offsets[lo:hi], sizes[lo:hi])
                          for i, (source, offsets, sizes) in self.fields.items()}, 0)


class MemoryManager(ABC):
    """Base class: knows every sample's payload offset and size, per field.

    Args:
        reader: the open file (its checks passed).
        verify_checksums: check each page against its sum before its first use.
    """

    def __init__(self, reader: Reader, verify_checksums: bool = False) -> None:
        self.reader = reader
        self.offsets: dict[int, np.ndarray] = reader.payload_offsets
        self.sizes: dict[int, np.ndarray] = reader.payload_nbytes
        self.verify_checksums = bool(verify_checksums) and reader.checksums is not None

    def check_pages(self, indices: np.ndarray) -> None:
        """With ``verify_checksums``: check the pages of samples *indices* (each
        page once); raise FormatError on a mismatch."""
        if self.verify_checksums:
            self.reader.check_pages(self.reader.sample_pages[indices], self.read_page)

    def read_page(self, page: int) -> Any:
        """Data page *page*'s bytes, for its checksum (default: from the memory map)."""
        start, end = self.reader.page_range(page)
        return memoryview(self.reader.buffer)[start:end]

    @abstractmethod
    def fetch(self, indices: np.ndarray, fields: Collection[int] | None = None) -> BatchData:
        """The payloads of the samples *indices* (called ahead of decoding), for the
        field indices *fields* (default: every field with payloads)."""

    def close(self) -> None:  # noqa: B027 - most managers hold nothing to release
        """Release files and maps (idempotent)."""

    # FFCV's interface, for code that reads payloads itself (FFCV-style decoders and
    # tests): the loader uses fetch(), never these.

    def schedule_epoch(self, batches: Any) -> MemoryContext:
        """FFCV's ``schedule_epoch``: a context whose ``state`` ``compile_reader()``'s
        function reads any payload of the file from (through a read-only map)."""
        return MemoryContext(self)

    def compile_reader(self) -> Any:
        """FFCV's ``compile_reader``: ``read(ptr, state)``, the bytes of the payload at file
        offset *ptr* (a read-only view), compiled with numba when FFCV's ``Compiler`` is
        enabled and numba installed, plain Python otherwise."""
        from ..pipeline.compiler import Compiler, _compiled, _numba_or_none, read_payload

        if Compiler.is_enabled and _numba_or_none() is not None:
            return _compiled(read_payload)
        return read_payload


class MemoryContext:
    """FFCV's epoch context (``with manager.schedule_epoch(batches) as context``).

    ``state`` is the ``storage_state`` FFCV's readers take: the file mapped
    read-only, and every payload's offset and size, sorted.
    """

    def __init__(self, manager: MemoryManager) -> None:
        from ..pipeline.compiler import file_storage_state

        self.state = file_storage_state(manager.reader)

    def start_batch(self, batch: int) -> None:
        """FFCV's hook before each batch: nothing to do (everything is mapped)."""

    def __enter__(self) -> MemoryContext:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

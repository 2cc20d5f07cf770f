"""Where a batch's payload bytes come from.

A memory manager turns a batch's sample indices into ``BatchData``: for each
field with payloads, a source buffer and each sample's offset and size in it.
Decoders read nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..fields import Field
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
    """Base class: knows every sample's payload offset and size, per field."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.offsets: dict[int, np.ndarray] = {}
        self.sizes: dict[int, np.ndarray] = {}
        samples = np.arange(reader.num_samples, dtype=np.uint64)
        for i, handler in enumerate(reader.handlers.values()):
            pointers = _pointers(handler, reader.metadata[f"f{i}"])
            if pointers is None:
                continue
            sizes = reader.payload_sizes(pointers, samples)
            missing = np.flatnonzero(sizes < 0)
            if missing.size:
                raise reader._error(
                    f"sample {int(missing[0])}, field {reader.field_names[i]!r}: no allocation "
                    f"starts at offset {int(pointers[missing[0]])}"
                )
            self.offsets[i] = np.ascontiguousarray(pointers, dtype=np.uint64)
            self.sizes[i] = sizes.astype(np.uint64)

    @abstractmethod
    def fetch(self, indices: np.ndarray, fields: Collection[int] | None = None) -> BatchData:
        """The payloads of the samples *indices* (called ahead of decoding), for the
        field indices *fields* (default: every field with payloads)."""

    def close(self) -> None:  # noqa: B027 - most managers hold nothing to release
        """Release files and maps (idempotent)."""


def _pointers(handler: Field, column: np.ndarray) -> np.ndarray | None:
    pointers = handler.payload_pointers(column)
    return None if pointers is None else np.asarray(pointers, dtype=np.uint64)

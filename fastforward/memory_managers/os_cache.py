"""``os_cache=True``: payloads are read straight from a memory map of the file.

The kernel's page cache holds the data, shared by every process on the host;
nothing is copied before decoding.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from ..reader import Reader
from .base import BatchData, MemoryContext, MemoryManager

OSCacheContext = MemoryContext
"""FFCV's name for the context of ``OSCacheManager.schedule_epoch``."""


class OSCacheManager(MemoryManager):
    """Batches are views into a read-only map of the file."""

    def __init__(self, reader: Reader, verify_checksums: bool = False) -> None:
        super().__init__(reader, verify_checksums)
        self._source = np.frombuffer(reader.buffer, np.uint8)

    def fetch(self, indices: np.ndarray, fields: Collection[int] | None = None) -> BatchData:
        self.check_pages(indices)
        return BatchData({i: (self._source, offsets[indices], self.sizes[i][indices])
                          for i, offsets in self.offsets.items()
                          if fields is None or i in fields})

    def close(self) -> None:
        self._source = np.zeros(0, np.uint8)

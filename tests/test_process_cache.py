"""``os_cache=False`` leaves nothing of the file in the page cache (Linux: ``posix_fadvise``
to drop, ``mincore`` to look)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from fastforward.benchmark import cached_fraction, drop_from_page_cache
from fastforward.fields import BytesField, IntField
from fastforward.fields.decoders import BytesDecoder, IntDecoder
from fastforward.loader import Loader, OrderOption
from fastforward.writer import DatasetWriter

pytestmark = pytest.mark.skipif(sys.platform != "linux" or not hasattr(os, "posix_fadvise"),
                                reason="dropping a file from the page cache needs Linux")

SAMPLES = 600
# Before the fix, an epoch left 17% of this file cached with RANDOM and QUASI_RANDOM (the
# partial OS pages at both ends of every read) and 36% with SEQUENTIAL (the readahead).
LEFT_AT_MOST = 0.005


def blob(i: int) -> np.ndarray:
    """Sample *i*'s bytes: 1-40 kB, so that reads end anywhere in an OS page and
    neighbours share pages."""
    size = 1_000 + (i * 7_919) % 39_000
    return ((np.arange(size) + i) % 256).astype(np.uint8)


class Blobs:
    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        return i, blob(i)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("page-cache") / "blobs.beton"
    DatasetWriter(path, {"index": IntField(), "blob": BytesField()}, page_size=1 << 21,
                  num_workers=1, progress=False).from_indexed_dataset(Blobs(), chunksize=100)
    return path


CASES = [(OrderOption.SEQUENTIAL, "thread"), (OrderOption.RANDOM, "thread"),
         (OrderOption.QUASI_RANDOM, "thread"), (OrderOption.RANDOM, "process")]


@pytest.mark.parametrize(("order", "workers"), CASES, ids=[f"{o.name}-{w}" for o, w in CASES])
def test_an_epoch_leaves_the_file_out_of_the_page_cache(blobs: Path, order: OrderOption,
                                                        workers: str) -> None:
    """Process workers each read with a manager of their own, as the loader does."""
    drop_from_page_cache(blobs)
    if cached_fraction(blobs) > 0.01:
        pytest.skip("this filesystem keeps the file cached when told to drop it (tmpfs?)")
    loader = Loader(blobs, 16, num_workers=2, os_cache=False, order=order, seed=3,
                    drop_last=False, worker_type=workers,
                    pipelines={"index": [IntDecoder()], "blob": [BytesDecoder()]})
    seen = []
    with loader:
        for indices, data in loader:
            for i, row, length in zip(indices.ravel(), data, data.lengths, strict=True):
                # pages dropped under a read that still needed them are read again, right
                np.testing.assert_array_equal(row[:length], blob(int(i)))
                seen.append(int(i))
    assert sorted(seen) == list(range(SAMPLES))
    assert cached_fraction(blobs) <= LEFT_AT_MOST


def test_read_starts_bridges_a_gap_of_exactly_its_bounds() -> None:
    """A gap of exactly ``PAGE_GAP``, or of exactly the next payload's size (under
    ``GAP``), is read through: one read, not two."""
    from fastforward.memory_managers.process_cache import GAP, PAGE_GAP, read_starts

    gap = PAGE_GAP
    assert read_starts(np.array([0, 10 + gap]), np.array([10, 20 + gap])).tolist() == [True, False]
    assert read_starts(np.array([0, 11 + gap]), np.array([10, 21 + gap])).tolist() == [True, True]
    gap = 10_000  # over PAGE_GAP, under GAP: bridged where the next payload is as large
    assert gap < GAP
    for size, starts_anew in ((gap, False), (gap - 1, True)):
        got = read_starts(np.array([0, 10 + gap]), np.array([10, 10 + gap + size]))
        assert got.tolist() == [True, starts_anew]

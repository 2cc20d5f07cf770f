"""gather_into against the NumPy reference."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
from reference import gather

from fastforward._ext.collate import gather_into


@pytest.fixture(scope="module")
def src() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8)


CASES = {
    "several": ([0, 100, 37, 9990], [5, 0, 40, 10]),
    "one": ([123], [64]),
    "empty-batch": ([], []),
    "touching-the-end": ([9936], [64]),
    "overlapping": ([10, 12, 14], [30, 30, 30]),
}


@pytest.mark.parametrize(("offsets", "sizes"), CASES.values(), ids=CASES.keys())
def test_matches_reference(src: np.ndarray, offsets: list[int], sizes: list[int]) -> None:
    o, s = np.array(offsets, np.uint64), np.array(sizes, np.uint64)
    out = np.full((max(len(offsets), 1), 64), 0xAB, np.uint8)  # stale bytes to overwrite
    assert gather_into(src, o, s, out) == len(offsets)
    np.testing.assert_array_equal(out[: len(offsets)], gather(src, o, s, 64))


def test_reads_from_a_memory_map(tmp_path: Path, src: np.ndarray) -> None:
    path = tmp_path / "blob"
    path.write_bytes(src.tobytes())
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        source = np.frombuffer(m, np.uint8)
        out = np.empty((2, 8), np.uint8)
        gather_into(source, np.array([3, 500], np.uint64), np.array([8, 2], np.uint64), out)
        np.testing.assert_array_equal(out, gather(src, np.array([3, 500]), np.array([8, 2]), 8))
        del source


@pytest.mark.parametrize(
    ("offsets", "sizes", "error", "match"),
    [([9999], [2], IndexError, "past the end"), ([0], [65], ValueError, "row holds"),
     ([0, 1], [1], ValueError, "sizes")],
    ids=["past-end", "too-wide", "mismatch"],
)
def test_rejects_bad_records(src: np.ndarray, offsets: list[int], sizes: list[int],
                             error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        gather_into(src, np.array(offsets, np.uint64), np.array(sizes, np.uint64),
                    np.empty((2, 64), np.uint8))

"""gather_into and Copier against the NumPy reference."""

from __future__ import annotations

import mmap
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from reference import gather

from fastforward._ext.collate import Copier, gather_into


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


# -- Copier: the same copies on background threads ----------------------------------


def random_records(rng: np.random.Generator, src: np.ndarray, count: int, width: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    sizes = rng.integers(0, width + 1, count).astype(np.uint64)
    offsets = (rng.random(count) * (len(src) - sizes)).astype(np.uint64)
    return offsets, sizes


@pytest.mark.parametrize("threads", [1, 3])
def test_copier_matches_reference(src: np.ndarray, threads: int) -> None:
    """Many queued copies, small (one part) and large (split across the threads),
    each equal to the reference once its ticket is waited for."""
    rng = np.random.default_rng(threads)
    copier = Copier(threads)
    try:
        jobs = []
        for k in range(100):  # more than the queue holds: submit waits for room
            count, width = (3, 16) if k % 2 else (700, 200)  # 140 KB: split in parts
            offsets, sizes = random_records(rng, src, count, width)
            out = np.full((count, width), 0xAB, np.uint8)
            jobs.append((copier.submit(src, offsets, sizes, out), offsets, sizes, out))
        assert [t for t, *_ in jobs] == list(range(1, 101))
        for ticket, offsets, sizes, out in reversed(jobs):  # any order
            copier.wait(ticket)
            np.testing.assert_array_equal(out, gather(src, offsets, sizes, out.shape[1]))
        assert copier.pending == 0
    finally:
        copier.close()


def test_copier_keeps_its_arrays_alive(src: np.ndarray) -> None:
    copier = Copier(2)
    try:
        out = np.zeros((2000, 64), np.uint8)
        offsets, sizes = random_records(np.random.default_rng(1), src, 2000, 64)
        # the copier's references are the only ones to these copies of the inputs
        ticket = copier.submit(src.copy(), offsets.copy(), sizes.copy(), out)
        copier.wait(ticket)
        np.testing.assert_array_equal(out, gather(src, offsets, sizes, 64))
    finally:
        copier.close()


def test_copier_close_finishes_queued_copies(src: np.ndarray) -> None:
    copier = Copier(1)
    outs, inputs = [], []
    for k in range(40):
        offsets, sizes = random_records(np.random.default_rng(k), src, 500, 128)
        outs.append(np.zeros((500, 128), np.uint8))
        inputs.append((offsets, sizes))
        copier.submit(src, offsets, sizes, outs[-1])
    copier.close()
    copier.close()  # idempotent
    for out, (offsets, sizes) in zip(outs, inputs, strict=True):
        np.testing.assert_array_equal(out, gather(src, offsets, sizes, 128))
    assert copier.closed
    assert copier.pending == 0
    copier.wait(40)  # returns: every copy has finished
    with pytest.raises(RuntimeError, match="closed"):
        copier.submit(src, *inputs[0], outs[0])


def test_copier_rejects_bad_records_before_queueing(src: np.ndarray) -> None:
    copier = Copier()
    try:
        with pytest.raises(IndexError, match="past the end"):
            copier.submit(src, np.array([9999], np.uint64), np.array([2], np.uint64),
                          np.empty((1, 64), np.uint8))
        with pytest.raises(ValueError, match="row holds"):
            copier.submit(src, np.array([0], np.uint64), np.array([65], np.uint64),
                          np.empty((1, 64), np.uint8))
        assert copier.pending == 0
        with pytest.raises(ValueError, match="no copy has ticket 1"):
            copier.wait(1)  # never given out: it would never finish
        with pytest.raises(ValueError, match="at least one thread"):
            Copier(0)
    finally:
        copier.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads (3.12+)
def test_copier_refuses_work_in_a_forked_child(src: np.ndarray) -> None:
    """Its threads stay in the parent: a child that submitted or waited would wait forever."""
    copier = Copier()
    try:
        copier.submit(src, np.zeros(1, np.uint64), np.ones(1, np.uint64),
                      np.empty((1, 1), np.uint8))
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status
            code = 0
            for call in (lambda: copier.submit(src, np.zeros(1, np.uint64), np.ones(1, np.uint64),
                                               np.empty((1, 1), np.uint8)),
                         lambda: copier.wait(1), copier.drain, lambda: copier.pending):
                try:
                    call()
                    code = 1  # it should have refused: its copies never run here
                except RuntimeError:
                    pass
                except BaseException:
                    code = 2
            copier.close()  # nothing to do in the child
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    finally:
        copier.close()


def test_copier_drain_waits_for_everything(src: np.ndarray) -> None:
    copier = Copier(2)
    try:
        outs = [np.zeros((1000, 256), np.uint8) for _ in range(10)]
        inputs = [random_records(np.random.default_rng(k), src, 1000, 256) for k in range(10)]
        for out, (offsets, sizes) in zip(outs, inputs, strict=True):
            copier.submit(src, offsets, sizes, out)
        copier.drain()
        assert copier.pending == 0
        for out, (offsets, sizes) in zip(outs, inputs, strict=True):
            np.testing.assert_array_equal(out, gather(src, offsets, sizes, 256))
    finally:
        copier.close()


def test_copier_keeps_a_bytearray_from_moving(src: np.ndarray) -> None:
    """The copier holds the source's buffer exported until the copy has finished."""
    copier = Copier()
    try:
        blob = bytearray(src.tobytes())
        out = np.zeros((4000, 64), np.uint8)
        offsets, sizes = random_records(np.random.default_rng(3), src, 4000, 64)
        ticket = copier.submit(blob, offsets, sizes, out)
        with pytest.raises(BufferError):  # held until a wait sees the copy finished
            blob.extend(b"x" * 100_000)
        copier.wait(ticket)
        assert copier.pending == 0
        blob.extend(b"x")  # let go once finished
        np.testing.assert_array_equal(out, gather(src, offsets, sizes, 64))
    finally:
        copier.close()


def test_copier_holds_the_array_it_writes_into(src: np.ndarray) -> None:
    """A ring slot is reused only when nothing refers to its buffer: a queued copy
    into a view of it must count, until a wait sees the copy finished."""
    import sys

    copier = Copier()
    try:
        owner = np.zeros((8, 64), np.uint8)
        baseline = sys.getrefcount(owner)
        ticket = copier.submit(src, np.zeros(4, np.uint64), np.full(4, 64, np.uint64), owner[:4])
        assert sys.getrefcount(owner) > baseline
        copier.wait(ticket)
        assert sys.getrefcount(owner) == baseline
    finally:
        copier.close()


def test_a_copier_is_not_pickled() -> None:
    copier = Copier(1)
    try:
        with pytest.raises(TypeError, match="cannot pickle"):
            pickle.dumps(copier)
    finally:
        copier.close()


def test_copier_wait_with_a_timeout() -> None:
    """A copy that has not finished in time is a TimeoutError (Loader(timeout=...)
    bounds the wait for a batch's copies); one that has, returns."""
    big = np.ones(256 << 20, np.uint8)  # a quarter of a GiB: tens of milliseconds to copy
    out = np.empty((1, big.size), np.uint8)
    copier = Copier(1)
    try:
        ticket = copier.submit(big, np.zeros(1, np.uint64), np.array([big.size], np.uint64), out)
        with pytest.raises(TimeoutError, match=r"did not finish in 0 s"):
            copier.wait(ticket, 0)
        copier.wait(ticket, 60)
        assert out[0, -1] == 1
        copier.wait(ticket, 0)  # finished: no wait
        with pytest.raises(ValueError, match="no copy has ticket"):
            copier.wait(ticket + 1, 1)
    finally:
        copier.close()

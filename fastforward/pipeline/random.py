"""Counter-based randomness: values are a pure function of
``(seed, epoch, sample index, stream, k)``.

So augmentations are reproducible whatever ``num_workers`` is, whichever
thread computes a sample, and whichever batch it lands in; and epochs differ.
The hash is splitmix64's finaliser over a mixed key; its low-discrepancy
failures are irrelevant here, its speed (vectorised NumPy) is not.
"""

from __future__ import annotations

import contextlib
import random as pyrandom
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..utils import seeds_globals

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_K = [np.uint64(k) for k in (0xD6E8FEB86659FD93, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB,
                             0x8EBC6AF09C88C6E3, 0x589965CC75374CC3)]


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def stream_id(name: str) -> int:
    """A stable 32-bit id for a named stream of random numbers."""
    return zlib.crc32(name.encode("utf-8"))


def random_bits(seed: int, epoch: int, indices: np.ndarray, stream: int, count: int) -> np.ndarray:
    """``(len(indices), count)`` uint64 hashes of the key."""
    with np.errstate(over="ignore"):
        idx = np.asarray(indices, dtype=np.int64).astype(np.uint64)[:, None]
        k = np.arange(count, dtype=np.uint64)[None, :]
        key = (np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _K[0]
               + np.uint64(epoch & 0xFFFFFFFFFFFFFFFF) * _K[1]
               + np.uint64(stream & 0xFFFFFFFFFFFFFFFF) * _K[2])
        x = _mix(key + idx * _K[3] + _GOLDEN)
        return _mix(x + k * _K[4] + _GOLDEN)


def uniform(seed: int, epoch: int, indices: np.ndarray, stream: int, count: int) -> np.ndarray:
    """``(len(indices), count)`` floats, uniform in [0, 1)."""
    bits = random_bits(seed, epoch, indices, stream, count)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def generator(seed: int, epoch: int, index: int, stream: int) -> np.random.Generator:
    """A NumPy generator for one sample (for draws that need more than uniforms)."""
    bits = random_bits(seed, epoch, np.array([index]), stream, 2)[0]
    return np.random.Generator(np.random.Philox(key=[int(bits[0]), int(bits[1])]))


_GLOBALS_LOCK = threading.RLock()
_GLOBALS_STREAM = 0x6C6F6261
_globals_holder: tuple[str, float] | None = None  # (thread name, time.monotonic()) of the
# session holding the lock, for a BatchTimeout to say who holds it up


def globals_holder() -> tuple[str, float] | None:
    """The thread holding the global generators' lock (``globals_session``) and since
    when (``time.monotonic()``), or None."""
    return _globals_holder


@contextlib.contextmanager
def _holding() -> Iterator[None]:
    """``_GLOBALS_LOCK``, noting who holds it (an outer session's note kept)."""
    global _globals_holder
    with _GLOBALS_LOCK:
        outer = _globals_holder
        if outer is None:
            _globals_holder = (threading.current_thread().name, time.monotonic())
        try:
            yield
        finally:
            _globals_holder = outer


def globals_are_ours() -> bool:
    """Whether this thread may seed (and then restore) the global generators.

    In a loader's worker process (``utils.seeds_globals``: no training loop of
    the user's runs there), yes; not in a writer's, whose dataset may draw from
    them while a loader it opened runs on threads. In the user's process only
    in its main thread, which is where the user's own code runs, so nothing of
    the user's draws from them meanwhile (an operation called directly, as in
    tests). Never from the loader's threads there: the user's training loop
    draws from the same generators at the same time (dropout on the CPU draws
    from torch's), so each would shift the other's draws, and restoring the
    states at the end of a batch would replay the loop's.
    """
    return seeds_globals() or threading.current_thread() is threading.main_thread()


def global_seeds(seed: int, epoch: int, indices: np.ndarray, stream: int) -> np.ndarray:
    """The value ``seeded_globals`` seeds the global generators with, for each
    of *indices* (uint64): one vectorised hash for a whole batch."""
    return random_bits(seed, epoch, indices, stream ^ _GLOBALS_STREAM, 1)[:, 0]


def _seed_globals(value: int) -> None:
    value = int(value)
    np.random.seed(value & 0xFFFFFFFF)
    pyrandom.seed(value)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.random.default_generator.manual_seed(value & ((1 << 63) - 1))


def _leave_alone(value: int) -> None:
    """``reseed`` where the generators are not ours."""


@contextlib.contextmanager
def globals_session() -> Iterator[Callable[[int], None]]:
    """Hold the global generators (``np.random``, ``random``, torch's default
    CPU generator) for a run of samples: their states are saved once, the
    yielded ``reseed(value)`` seeds all three (a value of ``global_seeds``)
    before each sample, and the states are restored at the end (torch's too
    when an operation imported torch during the run).

    Saving and restoring NumPy's state costs about 50 µs, seeding a few: one
    session per batch instead of per sample. Held under one lock, since the
    generators are process-wide: such operations run one at a time per
    process (they keep the GIL anyway; worker processes run them in parallel).

    Where the generators are not ours (``globals_are_ours``: a loader's thread
    in the user's process), nothing is seeded, saved or restored: draws there
    come from the generators as the user's code left them. The lock is held
    all the same: such operations still run one at a time per process (an
    albumentations transform seeds its own generator, then draws from it).
    """
    if not globals_are_ours():
        with _holding():
            yield _leave_alone
        return
    saved: dict[str, Any] = {}

    def reseed(value: int) -> None:
        torch = sys.modules.get("torch")
        if torch is not None and "torch" not in saved:  # imported since the run began
            saved["torch"] = torch.random.get_rng_state()
        _seed_globals(value)

    with _holding():
        np_state, py_state = np.random.get_state(), pyrandom.getstate()
        torch = sys.modules.get("torch")
        if torch is not None:
            saved["torch"] = torch.random.get_rng_state()
        try:
            yield reseed
        finally:
            np.random.set_state(np_state)
            pyrandom.setstate(py_state)
            if "torch" in saved:
                sys.modules["torch"].random.set_rng_state(saved["torch"])


@contextlib.contextmanager
def seeded_globals(seed: int, epoch: int, index: int, stream: int) -> Iterator[None]:
    """Seed ``np.random``, ``random`` and torch's default CPU generator for one
    sample, from the same key as ``generator``; restore them afterwards.

    For per-sample operations written against the global generators (most
    third-party augmentations): their draws become a function of
    ``(seed, epoch, sample, stream)`` too. ``Operation.apply`` seeds a whole
    batch's samples in one ``globals_session`` with the same values.
    """
    value = global_seeds(seed, epoch, np.array([index]), stream)[0]
    with globals_session() as reseed:
        reseed(value)
        yield

"""How an epoch's samples are split over distributed ranks, and resumed.

Every rank computes the same global plan from ``(seed, epoch)`` and takes its
share, so no communication is needed:

- SEQUENTIAL, RANDOM and custom orders: as PyTorch's ``DistributedSampler``,
  the epoch's order is padded to a multiple of the world size by repeating
  its head, and rank ``r`` takes positions ``r, r + world, …``.
- QUASI_RANDOM: the pages are split into ``world`` disjoint sets of nearly
  equal sample counts, and each rank orders its own pages (see
  ``QuasiRandom.rank_orders``); shorter ranks are padded with their own first
  samples. With fewer pages than ranks, pages are shared.

With ``even_batches=False`` (evaluation) nothing is padded: every sample is
seen exactly once over all ranks, and ranks may get different numbers of
batches.

Resuming: a ``Shard`` is a rank's samples with a mask of the padding. After
``k`` batches on each of ``world`` ranks, the epoch's remaining samples are
the unconsumed, non-padding samples of every rank, in rank order; a resumed
run (on any number of ranks) splits those evenly again: none lost, none
repeated (but for new padding to even the ranks out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Shard:
    """One rank's samples for an epoch."""

    order: np.ndarray
    padding: np.ndarray  # True where the sample repeats one to even the ranks out

    @staticmethod
    def of(order: np.ndarray) -> Shard:
        order = np.asarray(order, dtype=np.int64)
        return Shard(order, np.zeros(len(order), bool))


def pad_to(shard: Shard, length: int, fallback: np.ndarray, start: int = 0) -> Shard:
    """*shard* lengthened to *length* by repeating its own samples from the start
    (or *fallback*'s from position *start* on, for an empty shard: every rank must
    get the same batches)."""
    missing = length - len(shard.order)
    if missing <= 0:
        return shard
    source = shard.order if len(shard.order) else np.asarray(fallback, dtype=np.int64)
    if len(source) == 0:
        return shard
    if not len(shard.order):
        source = np.roll(source, -(start % len(source)))
    extra = np.resize(source, missing)
    return Shard(np.concatenate([shard.order, extra]),
                 np.concatenate([shard.padding, np.ones(missing, bool)]))


def strided(order: np.ndarray, world: int, even: bool) -> list[Shard]:
    """DistributedSampler's split: pad with the head to a multiple of *world*, then stride."""
    order = np.asarray(order, dtype=np.int64)
    n = len(order)
    padding = np.zeros(n, bool)
    if even and n % world:
        extra = world - n % world
        order = np.concatenate([order, np.resize(order, extra)])
        padding = np.concatenate([padding, np.ones(extra, bool)])
    return [Shard(order[r::world], padding[r::world]) for r in range(world)]


def contiguous(order: np.ndarray, world: int, even: bool) -> list[Shard]:
    """Near-equal contiguous chunks (keeps page locality); padded when *even*."""
    order = np.asarray(order, np.int64)
    chunks = [Shard.of(c) for c in np.array_split(order, world)]
    return even_out(chunks, order) if even else chunks


def even_out(shards: list[Shard], fallback: np.ndarray) -> list[Shard]:
    """Pad every shard to the longest one's length (see ``pad_to``). Empty
    shards take *fallback*'s samples in turn, each where the one before
    stopped, so that more ranks than samples repeat each sample about equally
    often, not the first one on every rank."""
    longest = max(len(s.order) for s in shards)
    padded, start = [], 0
    for shard in shards:
        padded.append(pad_to(shard, longest, fallback, start))
        if not len(shard.order):
            start += longest
    return padded


def resume(shards: list[Shard], consumed: int, world: int, even: bool) -> list[Shard]:
    """The shards after *consumed* samples of each, for *world* ranks.

    On the same number of ranks each rank simply goes on with its own
    samples, exactly as an uninterrupted run would. On another number, the
    remaining samples are split again (``remaining``, then ``contiguous``).
    """
    if world == len(shards):
        return [Shard(s.order[consumed:], s.padding[consumed:]) for s in shards]
    return contiguous(remaining(shards, consumed), world, even)


def remaining(shards: list[Shard], consumed: int) -> np.ndarray:
    """The samples not yet consumed (*consumed* per rank), padding left out, in rank order."""
    parts = [s.order[consumed:][~s.padding[consumed:]] for s in shards]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)

"""QUASI_RANDOM: a shuffled order that reads only ``window`` pages at a time.

Each sample gets a key ``rank(page) + U(0, window)`` (modulo the number of
pages) and the epoch visits samples by key. At any point of the epoch the
samples come from about ``window`` pages, and each page is opened at most
twice (once more where the keys wrap around), so reads stay local and a cold
cache or ``os_cache=False`` needs only those pages.

Mixing: pages are ranked by *stratified* shuffling: the file is cut into
``window`` contiguous strata and the ranks interleave them, so every window
holds pages from all over the file. A file written class by class (each page
one class) then still gives batches close to RANDOM's class balance. The
measure, checked by the tests: the mean total-variation distance between each
batch's class histogram and the overall class distribution is at most 1.5×
RANDOM's with the default window of 64 pages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import TraversalOrder

DEFAULT_WINDOW = 64


def sample_pages(reader: Any) -> np.ndarray:
    """The page of every sample (-1 for samples with no payload)."""
    table = reader.alloc_table
    pages = np.full(reader.num_samples, -1, np.int64)
    shift = int(reader.page_size).bit_length() - 1
    pages[table["sample_id"].astype(np.int64)] = (table["ptr"] >> np.uint64(shift)).astype(
        np.int64)
    return pages


def quasi_random_order(indices: np.ndarray, pages: np.ndarray, window: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Order *indices* (whose pages are *pages*) reading about *window* pages at a time."""
    if len(indices) == 0:
        return indices.copy()
    unique, page_of = np.unique(pages, return_inverse=True)
    num_pages = len(unique)
    window = max(1, min(int(window), num_pages))
    rank = np.empty(num_pages)
    rank[stratified_pages(num_pages, window, rng)] = np.arange(num_pages)
    keys = np.mod(rank[page_of] + rng.random(len(indices)) * window, num_pages)
    return indices[np.argsort(keys, kind="stable")]


def stratified_pages(num_pages: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """Page numbers ``0 … num_pages-1`` in visiting order, shuffled in strata.

    Stratum ``s`` holds a contiguous run of the file's pages; its pages are
    spread evenly over the visit in random order, with a random phase, so any
    *window* consecutive pages come from all over the file.
    """
    window = max(1, min(int(window), num_pages))
    stratum = (np.arange(num_pages) * window) // num_pages
    position = np.empty(num_pages)
    for s in range(window):
        members = np.flatnonzero(stratum == s)
        spacing = num_pages / len(members)
        position[members] = (rng.permutation(len(members)) + rng.random()) * spacing
    return np.argsort(position, kind="stable")


class QuasiRandom(TraversalOrder):
    """Random order with page locality; see the module docstring.

    Args:
        window: pages open at a time (``order_kwargs={'window': n}``).
    """

    def __init__(self, loader: Any, window: int = DEFAULT_WINDOW) -> None:
        super().__init__(loader)
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.window = int(window)
        pages = sample_pages(loader.reader)
        self.pages = pages[self.indices]
        if (self.pages < 0).any():
            raise ValueError(
                "QUASI_RANDOM orders samples by the page holding their payloads, and some "
                "samples have none (a file of scalar fields only): use RANDOM"
            )

    def sample_order(self, epoch: int) -> np.ndarray:
        return quasi_random_order(self.indices, self.pages, self.window, self.rng(epoch))

    def rank_orders(self, epoch: int, world: int, even: bool = True) -> list[Any]:
        """Disjoint page sets per rank, each ordered with page locality.

        Pages are shuffled (stratified, as for one process) and cut into
        *world* runs of nearly equal sample counts; rank ``r`` orders the
        samples of its run. With fewer pages than ranks the single-process
        order is split into contiguous chunks instead (pages are then shared).
        """
        from .sharding import Shard, contiguous, even_out

        if world == 1:
            return [Shard.of(self.sample_order(epoch))]
        unique, page_of = np.unique(self.pages, return_inverse=True)
        if len(unique) < world:
            return contiguous(self.sample_order(epoch), world, even)
        rng = self.rng(epoch)
        ranked = stratified_pages(len(unique), self.window, rng)  # page ids in visiting order
        counts = np.bincount(page_of, minlength=len(unique))[ranked]
        cumulative = np.cumsum(counts)
        # cut where the running count passes k/world of the samples; every rank gets a page
        # the page boundary nearest each k/world of the samples
        targets = cumulative[-1] * np.arange(1, world) / world
        after = np.searchsorted(cumulative, targets)  # first page reaching the target
        before_gap = targets - np.concatenate(([0], cumulative))[after]
        after_gap = cumulative[after] - targets
        cuts = np.where(after_gap < before_gap, after + 1, after)
        for k in range(world - 1):  # every rank gets at least one page
            low = cuts[k - 1] + 1 if k else 1
            cuts[k] = min(max(cuts[k], low), len(unique) - (world - 1 - k))
        owner = np.empty(len(unique), np.int64)
        owner[ranked] = np.searchsorted(cuts, np.arange(len(unique)), side="right")
        shards = []
        for r in range(world):
            mine = owner[page_of] == r
            shards.append(Shard.of(quasi_random_order(
                self.indices[mine], self.pages[mine], self.window,
                self.rng(epoch, salt=1 + r))))
        return even_out(shards, self.indices) if even else shards


def mixing_distance(order: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """The mixing measure: the mean, over the epoch's full batches, of the
    total-variation distance between the batch's class histogram and the class
    distribution of the whole epoch. 0 is perfect; RANDOM gives about
    ``sqrt(classes / (2π · batch_size))``."""
    order = np.asarray(order)
    count = len(order) // batch_size
    if count == 0:
        raise ValueError(f"fewer than {batch_size} samples: no full batch")
    classes, coded = np.unique(np.asarray(labels)[order], return_inverse=True)
    overall = np.bincount(coded, minlength=len(classes)) / len(coded)
    batches = coded[: count * batch_size].reshape(count, batch_size)
    hist = np.stack([np.bincount(b, minlength=len(classes)) for b in batches]) / batch_size
    return float(0.5 * np.abs(hist - overall).sum(axis=1).mean())

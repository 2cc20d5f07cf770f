"""QUASI_RANDOM: a shuffled order that reads only ``window`` pages at a time.

Each page gets a slot on a cycle of ``num_pages`` slots (``page_cycle``), each
sample the key ``slot(page) + U(0, window)`` modulo ``num_pages``, and the
epoch visits samples by key. A page's samples are spread over the ``window``
slots after its own, so at any point of the epoch exactly ``window`` pages are
open (a batch of ``B`` samples draws from about ``window + ⌈B / samples per
page⌉``; the keys are random, so a batch can take one more), and a page is
opened once, or twice for the ``window - 1`` pages whose keys wrap around the
epoch's end. A cold cache or ``os_cache=False`` needs only those pages. The
order is a function of the generator alone, so of ``(seed, epoch)``.

Mixing comes from which pages share a window: ``page_cycle`` makes every run
of ``window`` consecutive slots take pages evenly from the whole file. With
``d = gcd(num_pages, window)`` the file is cut into ``d`` strata of
``num_pages / d`` consecutive pages, and each block of ``d`` slots holds one
page of every stratum, so a window (``window / d`` blocks, wherever it starts)
holds the same number of pages of every stratum, whatever the page count.
Block ``j`` takes position ``g·j + c`` in every stratum (modulo its length),
with the step ``g`` chosen so that any ``window / d`` consecutive blocks'
positions are as evenly spaced as they can be (a rank-1 lattice). A file
written class by class (each page of one class) then gives every window, and so
every batch, its class balance to within about a page per class.
``docs/orders-and-memory.md`` has the analysis, the measure and the figures.
"""

from __future__ import annotations

from functools import lru_cache
from math import gcd
from typing import Any

import numpy as np

from .._compat import not_provided
from .base import TraversalOrder

DEFAULT_WINDOW = 64
# steps this close to the best one (in pages of unevenness) are drawn from at random, so
# that which pages share a window changes from epoch to epoch at no cost in balance
_STEP_TOLERANCE = 0.25
_MAX_STEPS_TRIED = 4096


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
    slot = np.empty(num_pages)
    slot[page_cycle(num_pages, window, rng)] = np.arange(num_pages)
    keys = np.mod(slot[page_of] + rng.random(len(indices)) * window, num_pages)
    return indices[np.argsort(keys, kind="stable")]


def page_cycle(num_pages: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """Page numbers ``0 … num_pages-1`` in visiting order, as a cycle in which any
    *window* consecutive pages are spread evenly over the file (module docstring).

    With ``window >= num_pages`` every window is the whole file: a plain shuffle.
    """
    window = max(1, min(int(window), num_pages))
    if window >= num_pages:
        return rng.permutation(num_pages)
    strata = gcd(num_pages, window)
    length, run = num_pages // strata, window // strata  # pages per stratum; blocks per window
    if run == 1:  # a window is one block, one page of each stratum: any order of positions
        position = rng.permutation(length)
    else:
        steps = lattice_steps(length, run)
        position = (int(rng.choice(steps)) * np.arange(length) + int(rng.integers(length))) % length
    # every window holds the same strata whatever their order within a block; in file
    # order (from a random stratum) a window cuts the file in one place only, the strata
    # after the cut taking the positions of one run of blocks and those before it the
    # next run's, so that neighbouring strata mostly take the same positions
    first = (np.arange(strata) + int(rng.integers(strata))) % strata * length
    return (position[:, None] + first[None, :]).ravel()


@lru_cache(maxsize=64)
def lattice_steps(length: int, run: int) -> np.ndarray:
    """The steps ``g`` (coprime to *length*) whose *run* consecutive multiples,
    modulo *length*, are the most evenly spaced, within ``_STEP_TOLERANCE``.

    Unevenness is measured on the smaller of the run and its complement (they are
    equally uneven): the spread of ``point_i - i·spacing`` over the sorted points,
    in units of the spacing. It bounds, in pages, how far any stretch of the
    stratum is from its share of a window.
    """
    span = min(run, length - run)
    steps = np.arange(1, length, dtype=np.int64)
    if len(steps) > _MAX_STEPS_TRIED:  # a spread of candidates; many are near-perfect
        steps = np.unique(np.linspace(1, length - 1, _MAX_STEPS_TRIED).astype(np.int64))
    steps = steps[np.gcd(steps, length) == 1]
    points = np.sort((steps[:, None] * np.arange(span)[None, :]) % length, axis=1)
    spacing = length / span
    offset = points - np.arange(span)[None, :] * spacing
    unevenness = (offset.max(axis=1) - offset.min(axis=1)) / spacing
    chosen = steps[unevenness <= unevenness.min() + _STEP_TOLERANCE]
    chosen.setflags(write=False)
    return chosen


class QuasiRandom(TraversalOrder):
    """Random order with page locality; see the module docstring.

    Args:
        window: pages open at a time (``order_kwargs={'window': n}``).
    """

    def __init__(self, loader: Any, window: int = DEFAULT_WINDOW) -> None:
        super().__init__(loader)
        # a whole number only: 8.7 was cut to 8 without a word, and 8.0, which orders
        # as 8 does, made a state saved with one refused by a loader with the other
        if isinstance(window, (bool, np.bool_)) or not isinstance(window, (int, np.integer)) \
                or window < 1:
            raise ValueError(f"QUASI_RANDOM's window must be an integer of at least 1 "
                             f"(pages), got {window!r}")
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
        """Nearly disjoint page sets per rank, each ordered with page locality.

        Pages are laid out on a cycle (``page_cycle``, whose runs of about
        ``pages / world`` pages are spread over the file), their samples one
        page after another along it, and that sequence is cut into *world*
        runs of equal sample counts (to one sample); rank ``r`` orders the
        samples of its run. A page that a cut falls inside is shared by the
        ranks either side of it: at most ``world - 1`` pages are read by more
        than one rank, and by two at most where a rank's share is at least a
        page. (Cutting between pages instead left the
        ranks of a file with few or uneven pages far apart: 1,441, 117 and
        1,442 samples over 3 ranks, the second padded with 13 repeats of each
        of its samples.) With fewer pages than ranks the single-process
        order is split into contiguous chunks instead.
        """
        from .sharding import Shard, contiguous, even_out

        if world == 1:
            return [Shard.of(self.sample_order(epoch))]
        unique, page_of = np.unique(self.pages, return_inverse=True)
        if len(unique) < world:
            return contiguous(self.sample_order(epoch), world, even)
        cycle = page_cycle(len(unique), max(1, len(unique) // world), self.rng(epoch))
        place = np.empty(len(unique), np.int64)
        place[cycle] = np.arange(len(unique))
        laid_out = np.argsort(place[page_of], kind="stable")  # page by page along the cycle
        shards = [Shard.of(quasi_random_order(self.indices[run], self.pages[run], self.window,
                                              self.rng(epoch, salt=1 + r)))
                  for r, run in enumerate(np.array_split(laid_out, world))]
        return even_out(shards, self.indices) if even else shards


def mixing_distance(order: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """The mixing measure: the mean, over the epoch's full batches, of the
    total-variation distance between the batch's class histogram and the class
    distribution of the whole epoch. 0 is perfect; RANDOM gives about
    ``sqrt((classes - 1) / (2π · batch_size))``."""
    order = np.asarray(order)
    count = len(order) // batch_size
    if count == 0:
        raise ValueError(f"fewer than {batch_size} samples: no full batch")
    classes, coded = np.unique(np.asarray(labels)[order], return_inverse=True)
    overall = np.bincount(coded, minlength=len(classes)) / len(coded)
    batches = coded[: count * batch_size].reshape(count, batch_size)
    hist = np.stack([np.bincount(b, minlength=len(classes)) for b in batches]) / batch_size
    return float(0.5 * np.abs(hist - overall).sum(axis=1).mean())


__getattr__ = not_provided(__name__, {
    "generate_order_inner": "FFCV's compiled kernel of its QUASI_RANDOM order; fastforward's "
                            "order is QuasiRandom(loader).sample_order(epoch)"})

"""QUASI_RANDOM: a permutation, page-local, a function of (seed, epoch), well mixed."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fastforward.fields import BytesField, IntField
from fastforward.loader import Loader, OrderOption
from fastforward.reader import Reader
from fastforward.traversal_order.quasi_random import (
    DEFAULT_WINDOW,
    QuasiRandom,
    mixing_distance,
    page_cycle,
    quasi_random_order,
    sample_pages,
)
from fastforward.writer import DatasetWriter

BATCH = 256


def layout(samples: int, per_page: int, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A file written class by class, with no shuffle: labels and pages."""
    labels = np.repeat(np.arange(classes), samples // classes)
    return labels, np.arange(len(labels)) // per_page


@pytest.mark.parametrize(("samples", "per_page"), [(25_600, 100), (25_600, 400),
                                                   (51_200, 20), (25_600, 3000)],
                         ids=["100-per-page", "400-per-page", "20-per-page", "3000-per-page"])
def test_mixing_within_1_5x_of_random(samples: int, per_page: int) -> None:
    labels, pages = layout(samples, per_page)
    indices = np.arange(len(labels))
    rng = np.random.default_rng(0)
    random = np.mean([mixing_distance(rng.permutation(indices), labels, BATCH)
                      for _ in range(3)])
    quasi = np.mean([mixing_distance(quasi_random_order(indices, pages, DEFAULT_WINDOW,
                                                        np.random.default_rng(s)), labels, BATCH)
                     for s in range(3)])
    assert quasi <= 1.5 * random, (quasi, random)


# -- the sweep: every page count, every window ---------------------------------------
#
# A window of W pages, each of one class, holds the 10 classes only to the nearest page:
# 6 or 7 pages of 64, so even the best W pages give batches some imbalance. For W = 8, 16
# and 32 that alone is over 1.1x RANDOM (best_possible, below), so the sweep holds those
# windows to their own best, and windows of 60 pages or more to 1.1x RANDOM.

TARGET = 1.1
WINDOWS_AT_TARGET = [64, 100, 128]
SMALL_WINDOWS = [8, 16, 32, 50]
COUNTS = [*range(16, 201), 229, 256, 300, 333, 400, 479, 512, 640, 700, 768, 999, 1000, 1001,
          1024, 1500, 2000, 2047, 2500, 2999, 3000]
PER_PAGE = 125  # samples per page, as in the sweep


def binomial_mad(p: np.ndarray, q: np.ndarray, n: int = BATCH) -> np.ndarray:
    """``E|X/n - q|`` for ``X ~ Binomial(n, p)``, elementwise over *p* (``..., classes``)
    with *q* per class: ``E|X - a| = (np - a) + 2 E[(a - X)+]`` with ``a = nq``, whose
    second term needs the probabilities of ``X <= a`` only."""
    a = n * np.asarray(q, float)
    k = np.arange(int(a.max()) + 1)
    log_choose = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                           for i in k])
    p = np.clip(p, 1e-12, 1 - 1e-12)[..., None]
    pmf = np.exp(log_choose + k * np.log(p) + (n - k) * np.log1p(-p))
    below = (np.clip(a[..., None] - k, 0, None) * pmf).sum(-1)
    return (n * p[..., 0] - a + 2 * below) / n


def expected_mixing_ratio(cycle: np.ndarray, window: int, counts: np.ndarray) -> float:
    """The mixing measure of QUASI_RANDOM over RANDOM's, in expectation over the keys.

    *cycle* is ``page_cycle``'s visiting order, *counts* the samples of each class in
    each page. A page at slot ``t`` spreads its samples evenly over keys ``[t, t + window)``
    (modulo the page count), as ``quasi_random_order`` draws them; batches cut the keys
    into runs of BATCH samples. Each batch's classes are then binomial around its
    expected shares, and RANDOM's around the file's: the ratio of the mean
    total-variation distances, with no sampling noise.
    """
    pages, classes = counts.shape
    w = min(window, pages)
    by_slot = counts[cycle]
    running = np.concatenate([np.zeros((1, classes)), np.cumsum(np.tile(by_slot, (2, 1)), 0)])
    slot = np.arange(pages) + pages
    density = (running[slot + 1] - running[slot + 1 - w]) / w  # per class, on [t, t + 1)
    cumulative = np.concatenate([np.zeros((1, classes)), np.cumsum(density, 0)])
    total = counts.sum()
    cuts = np.interp(np.arange(int(total // BATCH) + 1) * BATCH, cumulative.sum(1),
                     np.arange(pages + 1))
    at_cuts = np.stack([np.interp(cuts, np.arange(pages + 1), cumulative[:, c])
                        for c in range(classes)], 1)
    shares = np.diff(at_cuts, axis=0) / BATCH
    overall = counts.sum(0) / total
    quasi = binomial_mad(shares, overall).sum(1).mean()
    random = binomial_mad(overall, overall).sum()
    return float(quasi / random)


def class_counts(pages: int, per_page: int, classes: int = 10) -> np.ndarray:
    """Samples of each class in each page of a file written class by class."""
    labels, page = layout_of(pages * per_page, per_page, classes)
    counts = np.zeros((pages, classes))
    np.add.at(counts, (page, labels), 1)
    return counts


def layout_of(samples: int, per_page: int, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Labels and pages of *samples* written class by class (classes as equal as can be)."""
    return (np.arange(samples) * classes) // samples, np.arange(samples) // per_page


def best_possible(window: int, classes: int = 10) -> float:
    """The measure for batches drawn evenly from the best *window* single-class pages:
    each class gets ``window // classes`` or one more of them."""
    few, extra = divmod(window, classes)
    shares = np.array([few + 1] * extra + [few] * (classes - extra)) / window
    overall = np.full(classes, 1 / classes)
    return float(binomial_mad(shares, overall).sum() / binomial_mad(overall, overall).sum())


def sweep(window: int) -> dict[int, float]:
    return {pages: expected_mixing_ratio(
        page_cycle(pages, window, np.random.default_rng([pages, window])), window,
        class_counts(pages, PER_PAGE)) for pages in COUNTS}


def test_best_possible_puts_small_windows_out_of_reach() -> None:
    assert [round(best_possible(w), 2) for w in SMALL_WINDOWS] == [2.78, 2.09, 1.19, 1.0]
    assert best_possible(64) == pytest.approx(1.08, abs=0.005)


@pytest.mark.parametrize("window", WINDOWS_AT_TARGET)
def test_every_page_count_mixes_within_target(window: int) -> None:
    ratios = sweep(window)
    worst = max(ratios, key=ratios.get)
    assert ratios[worst] <= TARGET, (worst, ratios[worst])


@pytest.mark.parametrize("window", SMALL_WINDOWS)
def test_small_windows_mix_close_to_their_best(window: int) -> None:
    ratios = sweep(window)
    worst = max(ratios, key=ratios.get)
    assert ratios[worst] <= 1.2 * best_possible(window), (worst, ratios[worst])


def test_window_of_the_whole_file_is_random() -> None:
    # window >= pages: every page is open for the whole epoch, each sample's key uniform
    for pages in (16, 37, 64):
        cycle = page_cycle(pages, 64, np.random.default_rng(pages))
        assert sorted(cycle.tolist()) == list(range(pages))
        assert expected_mixing_ratio(cycle, 64, class_counts(pages, PER_PAGE)) == \
            pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(("pages", "window"), [(80, 64), (101, 64), (160, 64), (3000, 64),
                                               (72, 32), (2047, 100)])
def test_cycle_visits_every_page_once_with_whole_strata_per_window(pages: int,
                                                                    window: int) -> None:
    cycle = page_cycle(pages, window, np.random.default_rng(7))
    assert sorted(cycle.tolist()) == list(range(pages))
    strata = math.gcd(pages, window)
    length = pages // strata
    stratum = np.tile(cycle // length, 2)
    for start in range(0, pages, 7):  # every window, wrapping around, takes as many
        held = np.bincount(stratum[start : start + window], minlength=strata)
        assert (held == window // strata).all()  # pages from every stratum


# The sweep at 125 samples per page, its 100 pages at 100 per page, and more
# counts that are not multiples of 64: the real orders, measured as docs/orders-and-memory.md says.
MEASURED = [(72, 125), (80, 125), (96, 125), (160, 125), (100, 100), (101, 125), (390, 125)]


@pytest.mark.parametrize(("pages", "per_page"), MEASURED,
                         ids=[f"{p}-pages-{s}-per-page" for p, s in MEASURED])
def test_measured_mixing_within_target(pages: int, per_page: int) -> None:
    labels, page = layout_of(pages * per_page, per_page)
    indices = np.arange(len(labels))
    epochs = -(-3000 // (len(labels) // BATCH))  # some 3,000 batches: the mean to about 1%
    quasi = np.mean([mixing_distance(quasi_random_order(indices, page, DEFAULT_WINDOW,
                                                        np.random.default_rng(e)), labels, BATCH)
                     for e in range(epochs)])
    random = np.mean([mixing_distance(np.random.default_rng(10_000 + e).permutation(indices),
                                      labels, BATCH) for e in range(epochs)])
    expected = expected_mixing_ratio(page_cycle(pages, DEFAULT_WINDOW,
                                                np.random.default_rng(0)),
                                     DEFAULT_WINDOW, class_counts(pages, per_page))
    assert quasi / random <= TARGET, quasi / random
    assert quasi / random == pytest.approx(expected, abs=0.04)  # the sweep's model holds


def open_pages(order: np.ndarray, pages: np.ndarray, span: int) -> int:
    """The most distinct pages any run of *span* consecutive samples touches."""
    return max(len(np.unique(pages[order[i : i + span]]))
               for i in range(0, len(order) - span + 1, span // 2))


def test_locality_and_reads_per_page() -> None:
    labels, pages = layout(25_600, 100)
    order = quasi_random_order(np.arange(len(labels)), pages, 16, np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(len(labels)))
    # a window of 16 pages of 100 samples: any 800 consecutive samples touch few pages
    assert open_pages(order, pages, 800) <= 3 * 16
    # a page's samples lie together in the epoch, but for the pages whose keys wrap
    # around its end (those are opened twice)
    spread = np.array([np.ptp(np.flatnonzero(pages[order] == p)) for p in range(256)])
    assert (spread > len(order) / 2).sum() <= 16
    assert np.median(spread) < 20 * 100


def test_window_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "b.beton"
    DatasetWriter(path, {"b": BytesField()}, num_workers=1, progress=False) \
        .from_indexed_dataset([np.zeros(10, np.uint8)] * 10)
    for window in (0, 8.7, 8.0, "8", True):  # 8.7 was cut to 8, 8.0 taken as 8
        with pytest.raises(ValueError, match=f"window must be an integer.*{window!r}"):
            Loader(path, 2, order=OrderOption.QUASI_RANDOM, seed=0,
                   order_kwargs={"window": window}, pipelines={"b": None})
    for window in (1, np.int32(8)):
        loader = Loader(path, 2, order=OrderOption.QUASI_RANDOM, seed=0,
                        order_kwargs={"window": window}, pipelines={"b": None})
        assert loader.traversal_order.window == window
        assert type(loader.traversal_order.window) is int


class ClassByClass:
    """10 classes of 1,280 samples, 20 kB each, in class order: 128 pages of 2 MiB."""

    def __len__(self) -> int:
        return 12_800

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        return i // 1280, np.full(20_000, i % 251, np.uint8)


@pytest.fixture(scope="module")
def class_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("quasi") / "classes.beton"
    DatasetWriter(path, {"label": IntField(), "blob": BytesField()}, page_size=1 << 21,
                  num_workers=2, progress=False).from_indexed_dataset(ClassByClass(),
                                                                        chunksize=500)
    return path


def labels_of(loader: Loader) -> np.ndarray:
    return np.concatenate([labels.ravel() for (labels,) in loader])


def test_real_file_mixes_like_random(class_file: Path) -> None:
    from fastforward.fields.decoders import IntDecoder

    reader = Reader(class_file)
    pages = sample_pages(reader)
    assert len(np.unique(pages)) == 124  # not a multiple of the window: 124 = 4 x 31
    assert all(len(np.unique(reader.metadata["f0"][pages == p])) <= 2 for p in np.unique(pages))

    def mixing(order: OrderOption, epochs: int = 20) -> float:
        loader = Loader(class_file, BATCH, order=order, seed=5,
                        pipelines={"label": [IntDecoder()], "blob": None})
        epoch_labels = [labels_of(loader) for _ in range(epochs)]
        return float(np.mean([mixing_distance(np.arange(len(labels)), labels, BATCH)
                              for labels in epoch_labels]))

    q, r = mixing(OrderOption.QUASI_RANDOM), mixing(OrderOption.RANDOM)
    assert q <= TARGET * r, (q, r)
    assert mixing(OrderOption.SEQUENTIAL, epochs=1) > 5 * r  # the measure can fail


def fake_quasi_random(pages: int, per_page: int, page_size: int = 1 << 21) -> QuasiRandom:
    """QuasiRandom over a file of *pages* pages of *per_page* samples, without the file."""
    samples = pages * per_page
    table = np.zeros(samples, dtype=[("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
    table["sample_id"] = np.arange(samples)
    table["ptr"] = np.arange(samples) // per_page * page_size + np.arange(samples) % per_page
    reader = SimpleNamespace(alloc_table=table, num_samples=samples, page_size=page_size)
    return QuasiRandom(SimpleNamespace(reader=reader, indices=np.arange(samples), seed=0,
                                       distributed=True))


@pytest.mark.parametrize(("pages", "world"), [(200, 2), (300, 3), (1000, 8), (130, 4),
                                              (64, 3), (77, 5)])
def test_ranks_get_the_files_classes_in_proportion(pages: int, world: int) -> None:
    """Each rank's pages hold every class to within a page and a half of its share (the
    page sets used to be cut from runs of the stratified order: 2.5-4 pages off)."""
    order = fake_quasi_random(pages, PER_PAGE)
    labels, _ = layout_of(pages * PER_PAGE, PER_PAGE)
    for epoch in range(5):
        shards = order.rank_orders(epoch, world, even=False)
        assert sorted(np.concatenate([s.order for s in shards]).tolist()) == \
            list(range(len(labels)))
        for shard in shards:
            counts = np.bincount(labels[shard.order], minlength=10)
            assert np.abs(counts - len(shard.order) / 10).max() <= 1.5 * PER_PAGE


@pytest.mark.parametrize(("per_page", "world"), [([1441, 1442, 117], 3), ([1441, 1442, 117], 2),
                                                 ([250] * 9 + [3], 4), ([7, 300, 2, 300], 4),
                                                 ([104] * 29, 16)])
def test_ranks_get_equal_counts_whatever_the_pages_hold(per_page: list[int],
                                                        world: int) -> None:
    """Ranks' sample counts differ by at most one, so evening them out repeats
    fewer samples than there are ranks (as DistributedSampler); a cut inside a
    page shares it between two ranks. Cutting between pages gave 1,441, 117 and
    1,442 samples over 3 ranks, and 1,326 repeats an epoch to even them out."""
    page_size = 1 << 21
    page = np.repeat(np.arange(len(per_page)), per_page)
    within = np.concatenate([np.arange(n) for n in per_page])
    samples = len(page)
    table = np.zeros(samples, dtype=[("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
    table["sample_id"] = np.arange(samples)
    table["ptr"] = page * page_size + within
    reader = SimpleNamespace(alloc_table=table, num_samples=samples, page_size=page_size)
    order = QuasiRandom(SimpleNamespace(reader=reader, indices=np.arange(samples), seed=0,
                                        distributed=True))
    for epoch in range(3):
        shards = order.rank_orders(epoch, world, even=False)
        counts = [len(s.order) for s in shards]
        assert max(counts) - min(counts) <= 1, counts
        assert sorted(np.concatenate([s.order for s in shards]).tolist()) == list(range(samples))
        ranks_of_page = [{r for r, s in enumerate(shards) if (page[s.order] == p).any()}
                         for p in range(len(per_page))]
        assert sum(len(r) > 1 for r in ranks_of_page) <= world - 1
        if min(counts) >= max(per_page):  # a page larger than a rank's share spans more
            assert max(len(r) for r in ranks_of_page) <= 2
        evened = order.rank_orders(epoch, world, even=True)
        assert sum(int(s.padding.sum()) for s in evened) <= world - 1

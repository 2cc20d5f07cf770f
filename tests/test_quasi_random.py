"""QUASI_RANDOM: a permutation, page-local, a function of (seed, epoch), well mixed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastforward.fields import BytesField, IntField
from fastforward.loader import Loader, OrderOption
from fastforward.reader import Reader
from fastforward.traversal_order.quasi_random import (
    DEFAULT_WINDOW,
    mixing_distance,
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
    with pytest.raises(ValueError, match="window"):
        Loader(path, 2, order=OrderOption.QUASI_RANDOM, seed=0, order_kwargs={"window": 0},
               pipelines={"b": None})


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
    assert len(np.unique(pages)) >= 100
    assert all(len(np.unique(reader.metadata["f0"][pages == p])) <= 2 for p in np.unique(pages))

    def epoch_labels(order: OrderOption) -> np.ndarray:
        loader = Loader(class_file, BATCH, order=order, seed=5,
                        pipelines={"label": [IntDecoder()], "blob": None})
        return labels_of(loader)

    quasi, random = epoch_labels(OrderOption.QUASI_RANDOM), epoch_labels(OrderOption.RANDOM)
    identity = np.arange(len(quasi))
    q, r = mixing_distance(identity, quasi, BATCH), mixing_distance(identity, random, BATCH)
    assert q <= 1.5 * r, (q, r)
    sequential = epoch_labels(OrderOption.SEQUENTIAL)
    assert mixing_distance(identity, sequential, BATCH) > 5 * r  # the measure can fail

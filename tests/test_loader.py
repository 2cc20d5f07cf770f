"""Loader: FFCV's semantics, orders, reproducibility, and the safety contract.

Pipelines here stay in NumPy (no ToTensor), so these run without torch.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastforward.errors import DecodeError, FormatError
from fastforward.fields import BytesField, FloatField, IntField, RGBImageField
from fastforward.fields.bytes import BytesBatch
from fastforward.fields.decoders import (
    BytesDecoder,
    CenterCropRGBImageDecoder,
    FloatDecoder,
    IntDecoder,
    RandomResizedCropRGBImageDecoder,
    SimpleRGBImageDecoder,
)
from fastforward.loader import Loader, OrderOption
from fastforward.pipeline import AllocationQuery, Operation, PipelineSpec, State
from fastforward.reader import Reader
from fastforward.transforms import RandomHorizontalFlip
from fastforward.traversal_order import TraversalOrder
from fastforward.writer import DatasetWriter

NUMPY_ONLY = {"image": None}


def fastforward_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("fastforward")]


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 30  # close() joins them: this only spares a busy machine
    while fastforward_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fastforward_threads() == []


@pytest.fixture(scope="module")
def scalars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 samples: index and sin(index)."""
    path = tmp_path_factory.mktemp("loader") / "scalars.beton"
    DatasetWriter(path, {"index": IntField(), "value": FloatField()}, num_workers=1,
                  progress=False).from_indexed_dataset([(i, float(np.sin(i)))
                                                        for i in range(600)])
    return path


def write_photos(path: Path, images: list[np.ndarray], checksums: bool = True) -> Path:
    data = [(images[i % len(images)], i) for i in range(60)]
    DatasetWriter(path, {"image": RGBImageField(write_mode="proportion", max_resolution=160),
                         "label": IntField()}, num_workers=2, progress=False,
                  checksums=checksums).from_indexed_dataset(data)
    return path


@pytest.fixture(scope="module")
def photos_file(tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray]) -> Path:
    """60 real photographs of varied sizes as JPEG (odd samples raw), with labels."""
    return write_photos(tmp_path_factory.mktemp("loader") / "photos.beton", images)


@pytest.fixture(scope="module")
def plain_photos_file(tmp_path_factory: pytest.TempPathFactory,
                      images: list[np.ndarray]) -> Path:
    """``photos_file`` without checksums (as FFCV writes it), for tampering with."""
    return write_photos(tmp_path_factory.mktemp("loader") / "plain.beton", images, False)


def index_loader(path: Path, **kw) -> Loader:
    kw.setdefault("pipelines", {"index": [IntDecoder()], "value": None})
    kw.setdefault("num_workers", 2)
    return Loader(path, **kw)


def collect(loader: Loader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch.ravel()]


# -- FFCV's semantics -------------------------------------------------------------


def test_sequential_first_batch(scalars: Path) -> None:
    first = next(iter(index_loader(scalars, batch_size=8)))
    assert first[0].ravel().tolist() == list(range(8))
    assert first[0].shape == (8, 1)
    assert first[0].dtype == np.int64


@pytest.mark.parametrize(("batch_size", "drop_last", "length", "last"),
                         [(7, True, 85, 7), (7, False, 86, 5), (60, True, 10, 60),
                          (60, False, 10, 60)])
def test_partial_batches(scalars: Path, batch_size: int, drop_last: bool, length: int,
                         last: int) -> None:
    loader = index_loader(scalars, batch_size=batch_size, drop_last=drop_last)
    batches = [b for (b,) in loader]
    assert len(loader) == len(batches) == length
    assert len(batches[-1]) == last


def test_outputs_in_file_order_and_none_drops(scalars: Path) -> None:
    loader = Loader(scalars, 10, pipelines={"value": [FloatDecoder()], "index": [IntDecoder()]})
    index, value = next(iter(loader))
    np.testing.assert_array_equal(value.ravel(), np.sin(index.ravel()))
    loader = Loader(scalars, 10, pipelines={"index": None, "value": [FloatDecoder()]})
    assert len(next(iter(loader))) == 1


def test_indices_subset(scalars: Path) -> None:
    loader = index_loader(scalars, batch_size=4, indices=[5, 9, 2, 7, 100, 3], drop_last=False)
    assert collect(loader) == [5, 9, 2, 7, 100, 3]
    with pytest.raises(IndexError, match="600"):
        index_loader(scalars, batch_size=4, indices=[600])


@pytest.mark.parametrize(("indices", "error", "match"), [
    ([1.5, 2.7], TypeError, r"integers, got float64 \(1.5\)"),
    (["3", "4"], TypeError, "integers"),
    (np.array([[1, 2], [3, 4]]), ValueError, "one-dimensional"),
    (np.array([2**63], np.uint64), IndexError, "9223372036854775808"),
    ([-1], IndexError, "-1 out of range"),
], ids=["fractions", "strings", "2-D", "past int64", "negative"])
def test_indices_that_would_be_other_samples(scalars: Path, indices: object,
                                             error: type[Exception], match: str) -> None:
    """What np.asarray(..., int64) would turn into other samples is refused
    (fractions truncated, strings parsed, 2-D flattened, 2**63 wrapped to a
    negative number), as the writer refuses it."""
    with pytest.raises(error, match=match):
        index_loader(scalars, batch_size=4, indices=indices)
    # whole numbers given as floats are still the samples they name
    assert collect(index_loader(scalars, batch_size=4, indices=[3.0, 1.0],
                                drop_last=False)) == [3, 1]


def test_unknown_output_needs_pipeline_spec(scalars: Path) -> None:
    with pytest.raises(ValueError, match="PipelineSpec"):
        Loader(scalars, 4, pipelines={"nope": [IntDecoder()]})


class Asks(Operation):
    """Declares *query* as its buffer."""

    def __init__(self, query: object) -> None:
        super().__init__()
        self.query = query

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, object]:
        return previous_state, self.query

    def apply(self, values: np.ndarray, destination: object, context: object) -> np.ndarray:
        return values


@pytest.mark.parametrize(("query", "error", "match"), [
    (AllocationQuery((1,), "notadtype"), TypeError, r"of dtype 'notadtype': no NumPy or torch"),
    (AllocationQuery((-1, 5), np.int64), ValueError, r"of shape \(-1, 5\): a negative side"),
    (AllocationQuery(None, np.int64), TypeError, r"of shape None: not a tuple of integers"),
    (AllocationQuery((2.5,), np.int64), TypeError, r"of shape \(2\.5,\): not a tuple"),
    ([AllocationQuery((1,), np.int64), 5], TypeError, r"5, not an AllocationQuery"),
])
def test_a_buffer_that_cannot_be_allocated_is_refused_naming_the_operation(
        scalars: Path, query: object, error: type[Exception], match: str) -> None:
    """At Loader(), naming the operation: it failed at the first batch, in the ring,
    naming nothing ("data type 'notadtype' not understood", "memory mapped length
    must be positive")."""
    with pytest.raises(error, match=rf"^{re.escape(str(scalars))}: pipeline 'index': Asks "
                                    rf"asked for .*{match}"):
        index_loader(scalars, batch_size=4,
                     pipelines={"index": [IntDecoder(), Asks(query)], "value": None})


class KeepsRows(Operation):
    """A batch operation that returns *rows* rows (None: a 0-d array), whatever it is given."""

    def __init__(self, rows: int | None, sample_independent: bool) -> None:
        super().__init__()
        self.rows = rows
        self.sample_independent = sample_independent

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)

    def apply(self, values: np.ndarray, destination: np.ndarray, context: object) -> np.ndarray:
        return values[0, 0] if self.rows is None else np.repeat(values[:1], self.rows, axis=0)


@pytest.mark.parametrize("worker_type", ["thread", "process"])
@pytest.mark.parametrize("sample_independent", [False, True], ids=["batch", "range"])
@pytest.mark.parametrize("rows", [1, 20, None])
def test_an_operation_that_changes_the_number_of_rows_is_refused(
        scalars: Path, worker_type: str, sample_independent: bool, rows: int | None) -> None:
    """Returned as they were, 1 image would have come with 10 labels, silently."""
    loader = Loader(scalars, 10, num_workers=2, worker_type=worker_type, pipelines={
        "index": [IntDecoder(), KeepsRows(rows, sample_independent)], "value": None})
    got = "a 0-d array" if rows is None else f"{rows} rows? \\(shape \\({rows}, 1\\)\\)"
    with loader, pytest.raises(ValueError, match=rf"batch 0 .*pipeline 'index', KeepsRows "
                                                 rf"returned {got} for \d+ samples: an "
                                                 "operation returns one row per sample"):
        next(iter(loader))


@pytest.mark.parametrize("pipelines", [..., [[IntDecoder()]], "index"])
def test_pipelines_that_are_no_mapping_are_refused(scalars: Path, pipelines: object) -> None:
    with pytest.raises(TypeError, match=r"pipelines maps each output's name to its "
                                        rf"operations .*got a {type(pipelines).__name__}$"):
        Loader(scalars, 4, pipelines=pipelines)  # type: ignore[arg-type]


def test_pipeline_spec_makes_two_outputs_from_one_field(photos_file: Path) -> None:
    loader = Loader(photos_file, 6, pipelines={
        "image": [CenterCropRGBImageDecoder((32, 32), 1.0)],
        "label": None,
        "small": PipelineSpec("image", CenterCropRGBImageDecoder((16, 16), 1.0)),
    })
    big, small = next(iter(loader))
    assert big.shape == (6, 32, 32, 3)
    assert small.shape == (6, 16, 16, 3)


def test_branch_from_an_operation(photos_file: Path) -> None:
    decoder = CenterCropRGBImageDecoder((32, 32), 1.0)
    loader = Loader(photos_file, 6, pipelines={
        "image": [decoder, Invert()], "label": None,
        "plain": PipelineSpec(decoder),
    })
    inverted, plain = next(iter(loader))
    np.testing.assert_array_equal(inverted, 255 - plain)


@pytest.fixture(scope="module")
def two_photo_fields(tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray]) -> Path:
    """24 samples of two photographs each (different images and sizes) and two labels
    (``fine`` = i, ``coarse`` = i // 4), for pipelines shared by two fields."""
    path = tmp_path_factory.mktemp("loader") / "pairs.beton"
    data = [(images[i % len(images)], images[(i + 3) % len(images)], i, i // 4)
            for i in range(24)]
    DatasetWriter(path, {"left": RGBImageField(max_resolution=96),
                         "right": RGBImageField(max_resolution=80),
                         "fine": IntField(), "coarse": IntField()},
                  num_workers=1, progress=False).from_indexed_dataset(data)
    return path


def test_one_pipeline_list_for_two_fields(two_photo_fields: Path) -> None:
    """FFCV's ``{'fine': lp, 'coarse': lp}``: each field decodes its own values, and
    its random draws are its own, as if it had a list of its own."""
    label = [IntDecoder()]
    image = [RandomResizedCropRGBImageDecoder((40, 40)), RandomHorizontalFlip(), Invert()]
    shared = Loader(two_photo_fields, 6, order=OrderOption.RANDOM, seed=3,
                    pipelines={"left": image, "right": image, "fine": label,
                               "coarse": label})

    def own() -> list[Operation]:
        return [RandomResizedCropRGBImageDecoder((40, 40)), RandomHorizontalFlip(), Invert()]

    separate = Loader(two_photo_fields, 6, order=OrderOption.RANDOM, seed=3,
                      pipelines={"left": own(), "right": own(), "fine": [IntDecoder()],
                                 "coarse": [IntDecoder()]})
    for epoch in range(2):
        for got, expected in zip(shared, separate, strict=True):
            left, right, fine, coarse = got
            np.testing.assert_array_equal(coarse, fine // 4)
            assert left.shape == right.shape == (6, 40, 40, 3)
            assert not np.array_equal(left, right)
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"epoch {epoch}")


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_one_decoder_for_two_fields_follows_its_output_size(two_photo_fields: Path,
                                                            worker_type: str) -> None:
    decoder = CenterCropRGBImageDecoder((32, 32), 1.0)
    loader = Loader(two_photo_fields, 8, num_workers=2, worker_type=worker_type,
                    pipelines={"left": [decoder, Invert()], "right": [decoder],
                               "fine": None, "coarse": None})
    inverted, plain = next(iter(loader))
    assert inverted.shape == plain.shape == (8, 32, 32, 3)
    reference = Loader(two_photo_fields, 8, pipelines={
        "left": [CenterCropRGBImageDecoder((32, 32), 1.0)],
        "right": [CenterCropRGBImageDecoder((32, 32), 1.0)], "fine": None, "coarse": None})
    left, right = next(iter(reference))
    np.testing.assert_array_equal(inverted, 255 - left)
    np.testing.assert_array_equal(plain, right)
    decoder.output_size = (24, 20)  # between epochs, for both fields
    inverted, plain = next(iter(loader))
    assert inverted.shape == plain.shape == (8, 24, 20, 3)
    loader.close()


def _settings_cases() -> dict[str, tuple[Callable[..., Operation], str, Any, bool]]:
    """Operations whose settings derive what they use, with a setting to change
    between epochs: (maker taking the setting, its name, the new value, torch)."""
    import fastforward.transforms as T

    white, clear = np.full((32, 32, 3), 255, np.uint8), np.zeros((32, 32))
    return {
        "Poison alpha": (lambda alpha=clear: T.Poison(white, alpha, range(60)),
                         "alpha", np.ones((32, 32)), False),
        "Poison mask": (lambda mask=white: T.Poison(mask, np.full((32, 32), 0.5), range(60)),
                        "mask", np.zeros((32, 32, 3), np.uint8), False),
        "Solarization threshold": (lambda threshold=128: T.Solarization(1.0, threshold),
                                   "threshold", 64, False),
        "NormalizeImage mean": (lambda mean=(120.0, 110.0, 100.0): T.NormalizeImage(
            np.asarray(mean), np.array([60.0, 60.0, 60.0]), np.float32), "mean",
            np.array([10.0, 20.0, 30.0]), False),
        "AutoAugment policy": (lambda policy="imagenet": T.AutoAugment(policy), "policy",
                               "svhn", False),
        "TrivialAugmentWide fill": (lambda fill=None: T.TrivialAugmentWide(fill=fill), "fill",
                                    (200, 30, 90), False),
        "Cutout fill": (lambda fill=(0, 0, 0): T.Cutout(12, fill), "fill", (7, 8, 9), False),
        "Cutout fill on tensors": (lambda fill=(0, 0, 0): T.Cutout(12, fill), "fill",
                                   (7, 8, 9), True),
    }


@pytest.mark.parametrize("case", list(_settings_cases()))
def test_an_operations_settings_changed_between_epochs_are_used(photos_file: Path,
                                                                 case: str) -> None:
    """The loader copies the operations each epoch, and says a setting changed on the
    object given is used (as FFCV's recompile=True): Poison's mask and alpha,
    Solarization's threshold, NormalizeImage's mean and AutoAugment's policy were
    turned into tables once, in __init__, and a Cutout on tensors kept its first
    fill in a cache its copies shared."""
    make, setting, value, torch = _settings_cases()[case]
    if torch:
        pytest.importorskip("torch", reason="torch is an optional extra")
    from fastforward.transforms import ToTensor

    def epoch_one(op: Operation, change: bool = False) -> np.ndarray:
        loader = Loader(photos_file, 20, order=OrderOption.RANDOM, seed=4, pipelines={
            "image": [CenterCropRGBImageDecoder((32, 32), 1.0),
                      *([ToTensor()] if torch else []), op], "label": None})
        with loader:
            for _ in loader:
                pass
            if change:
                setattr(op, setting, value)
            return np.concatenate([np.asarray(images) for (images,) in loader])

    changed = epoch_one(make(), change=True)
    np.testing.assert_array_equal(changed, epoch_one(make(value)))
    assert not np.array_equal(changed, epoch_one(make()))  # the change changes something


def test_a_fused_normalisation_checks_its_settings_changed_between_epochs(
        photos_file: Path) -> None:
    """Fused into the decoder, a NormalizeImage is never declared: a mean set to a
    list between epochs failed with "bad operand type for unary -: 'list'", and a
    zero std gave inf instead of the error __init__ gives."""
    from fastforward.transforms import NormalizeImage

    norm = NormalizeImage(np.array([120.0, 110.0, 100.0]), np.array([60.0, 60.0, 60.0]),
                          np.float32)
    with Loader(photos_file, 20, pipelines={"image": [CenterCropRGBImageDecoder((32, 32), 1.0),
                                                      norm], "label": None}) as loader:
        first = np.concatenate([images for (images,) in loader])
        norm.mean = [120.0, 110.0, 100.0]  # a list, as __init__ takes
        np.testing.assert_array_equal(np.concatenate([images for (images,) in loader]), first)
        norm.std = [60.0, 0.0, 60.0]
        with pytest.raises(ValueError, match="std has a zero"):
            next(iter(loader))


def test_one_decoder_for_two_fields_and_a_branch_is_refused(two_photo_fields: Path) -> None:
    decoder = CenterCropRGBImageDecoder((32, 32), 1.0)
    with pytest.raises(ValueError, match=r"one CenterCropRGBImageDecoder instance decodes "
                                         r"outputs 'left' and 'right', and another pipeline "
                                         r"branches from it"):
        Loader(two_photo_fields, 4, pipelines={
            "left": [decoder], "right": [decoder], "extra": PipelineSpec(decoder),
            "fine": None, "coarse": None})


def test_one_operation_in_two_fields_and_a_branch_is_refused(two_photo_fields: Path) -> None:
    """The branch read the last field's output, silently."""
    invert = Invert()
    with pytest.raises(ValueError, match=r"one Invert instance is in pipelines 'left' and "
                                         r"'right', and another pipeline branches from it"):
        Loader(two_photo_fields, 4, pipelines={
            "left": [CenterCropRGBImageDecoder((24, 24), 1.0), invert],
            "right": [CenterCropRGBImageDecoder((16, 16), 1.0), invert],
            "extra": PipelineSpec(invert), "fine": None, "coarse": None})


def test_user_lists_are_not_modified(scalars: Path) -> None:
    ops = [IntDecoder()]
    Loader(scalars, 4, pipelines={"index": ops, "value": None})
    assert len(ops) == 1


# -- orders -------------------------------------------------------------------------


def test_random_is_a_permutation_per_epoch(scalars: Path) -> None:
    loader = index_loader(scalars, batch_size=50, order=OrderOption.RANDOM, seed=1)
    first, second = collect(loader), collect(loader)
    assert sorted(first) == sorted(second) == list(range(600))
    assert first != second
    assert collect(index_loader(scalars, batch_size=50, order=OrderOption.RANDOM,
                                seed=1)) == first


def test_order_depends_only_on_seed_and_epoch(photos_file: Path) -> None:
    def loader() -> Loader:
        return Loader(photos_file, 5, order=OrderOption.QUASI_RANDOM, seed=9,
                      pipelines={"image": None, "label": [IntDecoder()]})

    a = loader()
    epoch0, epoch1 = collect(a), collect(a)
    b = loader()
    b.next_epoch = 1  # straight to epoch 1, without epoch 0
    assert collect(b) == epoch1
    assert sorted(epoch0) == list(range(60))


@pytest.mark.parametrize("order", ["random", 2, OrderOption])
def test_an_unknown_order_is_a_value_error_as_in_ffcv(scalars: Path, order: object) -> None:
    """FFCV code catching ValueError for order='random' got a TypeError."""
    with pytest.raises(ValueError, match="order must be an OrderOption or a TraversalOrder"):
        index_loader(scalars, batch_size=100, order=order)


def test_custom_traversal_order(scalars: Path) -> None:
    class Backwards(TraversalOrder):
        def sample_order(self, epoch: int) -> np.ndarray:
            return self.indices[::-1]

    assert collect(index_loader(scalars, batch_size=100, order=Backwards))[:3] == [599, 598, 597]


def test_a_custom_order_written_for_ffcv_returns_the_whole_epoch(
        scalars: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FFCV's orders take their own rank's share when ``self.distributed`` is
    true; the loader splits the epoch again: each rank saw 1/world² of it."""
    import fastforward.loader.loader as loader_module

    class FFCVStyle(TraversalOrder):  # FFCV's Sequential, its sampler by hand
        def sample_order(self, epoch: int) -> np.ndarray:
            if not self.distributed:
                return self.indices
            rank, world = self.loader.rank, self.loader.world_size
            return self.indices[rank::world]

    seen = []
    for rank in range(2):
        monkeypatch.setattr(loader_module, "_distributed_context", lambda r=rank: (r, 2))
        with index_loader(scalars, batch_size=10, order=FFCVStyle, distributed=True,
                          seed=1) as loader:
            assert loader.distributed
            assert not loader.traversal_order.distributed
            assert loader.traversal_order.sampler is None
            seen.append(collect(loader))
    assert seen == [list(range(0, 600, 2)), list(range(1, 600, 2))]  # DistributedSampler's


def test_a_custom_order_may_visit_samples_twice(scalars: Path) -> None:
    """Weighted sampling with replacement: an epoch longer than the indices.
    Slots are sized for the samples only under the built-in orders (a batch of 6
    failed to fit slots of 3 rows, naming nothing)."""
    class Twice(TraversalOrder):
        def sample_order(self, epoch: int) -> np.ndarray:
            return np.concatenate([self.indices, self.indices])

    for worker_type in ("thread", "process"):
        with index_loader(scalars, batch_size=8, order=Twice, indices=[1, 2, 3],
                          drop_last=False, worker_type=worker_type) as loader:
            assert collect(loader) == [1, 2, 3, 1, 2, 3]


@pytest.mark.parametrize(("given", "error", "match"), [
    ([0, -1], IndexError, "Wrong of epoch 0: sample -1 out of range"),
    ([0, 600], IndexError, "Wrong of epoch 0: sample 600 out of range"),
    ([0.0, 2.5], TypeError, r"scalars\.beton: Wrong\.sample_order\(0\) must be integers"),
    (KeyError("x"), KeyError, r"scalars\.beton: Wrong\.sample_order\(0\): x"),
], ids=["negative", "past the end", "fraction", "its own error"])
def test_custom_order_numbers_are_checked(scalars: Path, given: list[float] | Exception,
                                          error: type[Exception], match: str) -> None:
    """A custom order's sample numbers are held to what indices= is: -1 read
    sample 599 and 2.5 sample 2, 600 failed in NumPy without naming the order. Its
    errors, and its own, name the file and the order (a KeyError it raised named
    neither)."""
    class Wrong(TraversalOrder):
        def sample_order(self, epoch: int) -> list[float]:
            if isinstance(given, Exception):
                raise given
            return given

    loader = index_loader(scalars, batch_size=2, order=Wrong)
    with pytest.raises(error, match=match):
        iter(loader)
    assert loader.next_epoch == 0  # the epoch is not used up


def test_quasi_random_needs_payloads(scalars: Path) -> None:
    with pytest.raises(ValueError, match="QUASI_RANDOM"):
        index_loader(scalars, batch_size=4, order=OrderOption.QUASI_RANDOM, seed=0)


# -- images ---------------------------------------------------------------------------


def test_center_crop_matches_reference(photos_file: Path) -> None:
    from fastforward._ext.resize import crop_resize_into
    from fastforward.transforms.crop import get_center_crop

    reader = Reader(photos_file)
    loader = Loader(photos_file, 7, pipelines={
        "image": [CenterCropRGBImageDecoder((24, 20), 224 / 256)], "label": [IntDecoder()]})
    for images, labels in loader:
        for image, label in zip(images, labels.ravel(), strict=True):
            full = reader.read(int(label))[0]
            i, j, h, w = get_center_crop(*full.shape[:2], 224 / 256)
            expected = np.empty((24, 20, 3), np.uint8)
            crop_resize_into(full, i, j, h, w, expected)
            np.testing.assert_array_equal(image, expected)


@pytest.mark.parametrize("mode", ["raw", "jpg"])
def test_crop_decoders_on_images_of_a_pixel(tmp_path: Path, mode: str) -> None:
    """1x1 and 1x9 images: the centre crop at 0.875 had a side of 0 and the
    random one's fallback a height of 0, which failed the first batch with a
    bare ValueError naming no sample; each takes a pixel at least now."""
    path = tmp_path / "tiny.beton"
    images = [np.full((1, 1, 3), 70, np.uint8), np.full((1, 9, 3), 140, np.uint8),
              np.full((9, 1, 3), 210, np.uint8)]
    DatasetWriter(path, {"image": RGBImageField(write_mode=mode), "label": IntField()},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(image, k) for k, image in enumerate(images)])
    for decoder in (CenterCropRGBImageDecoder((8, 6), 0.875),
                    RandomResizedCropRGBImageDecoder((8, 6), ratio=(5, 5)),
                    RandomResizedCropRGBImageDecoder((8, 6), ratio=(0.1, 0.1))):
        loader = Loader(path, 3, pipelines={"image": [decoder], "label": [IntDecoder()]},
                        seed=0)
        (got, labels), = list(loader)
        assert got.shape == (3, 8, 6, 3)
        for image, label in zip(got, labels.ravel(), strict=True):  # flat images stay flat
            np.testing.assert_allclose(image, np.broadcast_to(images[label][0, 0], image.shape),
                                       atol=2 if mode == "jpg" else 0)


def test_a_crop_outside_the_image_names_the_sample(photos_file: Path) -> None:
    class Outside(CenterCropRGBImageDecoder):
        def crops(self, heights: np.ndarray, widths: np.ndarray, u: object) -> np.ndarray:
            crops = super().crops(heights, widths, u)
            crops[-1, 2] = heights[-1] + 1  # the range's last sample: a row too many
            return crops

    loader = Loader(photos_file, 7, num_workers=1, pipelines={
        "image": [Outside((24, 20), 224 / 256)], "label": [IntDecoder()]})
    with pytest.raises(ValueError, match=r"sample 6\b.*'image'.*Outside.crops\(\) gave the "
                                         r"window .* outside the \d+x\d+ image"):
        next(iter(loader))


def test_simple_decoder_refuses_mixed_sizes(photos_file: Path) -> None:
    with pytest.raises(TypeError, match="different sizes"):
        Loader(photos_file, 4, pipelines={"image": [SimpleRGBImageDecoder()], "label": None})


def test_simple_decoder_on_equal_sizes(tmp_path: Path, images: list[np.ndarray]) -> None:
    path = tmp_path / "same.beton"
    crops = [np.ascontiguousarray(im[:17, :17]) for im in images]
    DatasetWriter(path, {"image": RGBImageField()}, num_workers=1, progress=False) \
        .from_indexed_dataset(crops)
    (batch,) = next(iter(Loader(path, 20, pipelines={"image": [SimpleRGBImageDecoder()]})))
    np.testing.assert_array_equal(batch, np.stack(crops))


@pytest.mark.parametrize("write_mode", ["raw", "jpg", "proportion"])
def test_simple_decoder_splits_only_batches_with_jpegs(tmp_path: Path, images: list[np.ndarray],
                                                      write_mode: str) -> None:
    from fastforward.pipeline import BatchContext

    path = tmp_path / "same.beton"
    crops = [np.ascontiguousarray(im[:16, :16]) for im in images] * 3
    DatasetWriter(path, {"image": RGBImageField(write_mode=write_mode, compress_probability=0.5)},
                  num_workers=1, progress=False).from_indexed_dataset(crops)
    loader = Loader(path, 16, num_workers=2, order=OrderOption.RANDOM,
                    pipelines={"image": [SimpleRGBImageDecoder()]})
    decoder = loader.pipelines[0].decoder
    modes = Reader(path).metadata["f0"]["mode"]
    for indices in (np.arange(len(crops)), np.flatnonzero(modes == 1), np.flatnonzero(modes == 0)):
        if indices.size:
            expected = bool((modes[indices] == 0).any())  # any JPEG: worth the threads
            assert decoder.split_batch(BatchContext(indices, 0, 0)) == expected
    # and every batch, split or not, holds the right pixels
    for (batch,) in Loader(path, 16, num_workers=2, pipelines={"image": [SimpleRGBImageDecoder()]}):
        assert batch.shape[1:] == (16, 16, 3)
    (batch,) = next(iter(Loader(path, len(crops), num_workers=2,
                                pipelines={"image": [SimpleRGBImageDecoder()]})))
    expected = np.stack([Reader(path).read(i)[0] for i in range(len(crops))])
    np.testing.assert_array_equal(batch, expected)


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray]) -> Path:
    """240 raw 16×16 crops of the photographs (pipeline c in small)."""
    path = tmp_path_factory.mktemp("raw") / "raw.beton"
    crops = [np.ascontiguousarray(np.roll(im[:16, :16], k, axis=1))
             for k in range(4) for im in images]
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw")}, num_workers=1,
                  progress=False).from_indexed_dataset(crops)
    return path


@pytest.mark.parametrize("after", [[], ["Invert"]], ids=["copy-thread", "read-after"])
def test_raw_batches_on_the_copy_thread_are_whole(raw_file: Path, after: list[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Raw rows are copied by the loader's copy thread while the scheduler goes on;
    a batch reaches the consumer only once its copy has finished. With an
    operation that reads the rows at once, they are copied in place. Every batch
    is held, so a copy into a reused slot would show."""
    from fastforward.loader import loader as loader_module

    queued = []
    original = loader_module.PendingCopies.gather_into
    monkeypatch.setattr(loader_module.PendingCopies, "gather_into",
                        lambda self, *args: queued.append(1) or original(self, *args))
    reader = Reader(raw_file)
    expected = np.stack([reader.read(i)[0] for i in range(reader.num_samples)])
    ops = [SimpleRGBImageDecoder(), *(Invert() for _ in after)]
    with Loader(raw_file, 16, num_workers=2, batches_ahead=2, order=OrderOption.RANDOM,
                pipelines={"image": ops}) as loader:
        for _ in range(2):
            order = np.concatenate(loader._batches(loader.next_epoch, [], loader.batch_size))
            held = [batch for (batch,) in loader]
            got = np.concatenate(held)
            np.testing.assert_array_equal(got, 255 - expected[order] if after else expected[order])
        # copied on the copy threads, unless an operation reads the rows right away
        assert len(queued) == (0 if after else 2 * len(loader))
        copier = loader._owned.copier
    if after:
        assert copier is None  # no pipeline could use the copy threads: none started
    else:
        assert copier.closed  # close() finished its copies and ended its threads


def rrc_batches(path: Path, workers: int, seed: int = 3, epochs: int = 1) -> list[np.ndarray]:
    loader = Loader(path, 8, num_workers=workers, seed=seed, order=OrderOption.RANDOM,
                    pipelines={"image": [RandomResizedCropRGBImageDecoder((32, 32))],
                               "label": None})
    return [np.concatenate([b for (b,) in loader]) for _ in range(epochs)]


def test_augmentation_is_reproducible_whatever_num_workers(photos_file: Path) -> None:
    one = rrc_batches(photos_file, 1, epochs=2)
    three = rrc_batches(photos_file, 3, epochs=2)
    np.testing.assert_array_equal(one[0], three[0])
    np.testing.assert_array_equal(one[1], three[1])
    assert not np.array_equal(one[0], one[1])  # epochs differ
    assert not np.array_equal(one[0], rrc_batches(photos_file, 1, seed=4)[0])


def test_output_size_changes_between_epochs(photos_file: Path) -> None:
    decoder = RandomResizedCropRGBImageDecoder((32, 32))
    loader = Loader(photos_file, 8, pipelines={"image": [decoder], "label": None})
    assert next(iter(loader))[0].shape == (8, 32, 32, 3)
    decoder.output_size = (48, 40)
    assert next(iter(loader))[0].shape == (8, 48, 40, 3)


# -- safety -----------------------------------------------------------------------------


def test_held_batches_stay_intact(photos_file: Path) -> None:
    """FFCV #231: batches kept by the user were overwritten. Hold 3× the ring."""
    reader = Reader(photos_file)
    loader = Loader(photos_file, 2, batches_ahead=2, num_workers=2, pipelines={
        "image": [CenterCropRGBImageDecoder((16, 16), 1.0)], "label": [IntDecoder()]})
    held = list(loader)  # 30 batches, ring of 4 slots
    assert len(held) == 30
    labels = np.concatenate([labels.ravel() for _, labels in held])
    assert labels.tolist() == list(range(60))
    fresh = Loader(photos_file, 60, pipelines={
        "image": [CenterCropRGBImageDecoder((16, 16), 1.0)], "label": None})
    (expected,) = next(iter(fresh))
    np.testing.assert_array_equal(np.concatenate([images for images, _ in held]), expected)
    assert reader.num_samples == 60


def test_slots_are_reused_when_released(scalars: Path) -> None:
    loader = index_loader(scalars, batch_size=10, batches_ahead=2)
    seen = set()
    for (batch,) in loader:
        seen.add(batch.base.__array_interface__["data"][0])
        del batch
    assert len(seen) <= 4 + 1  # the ring's slots (and at most one replaced)


class Invert(Operation):
    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)

    def apply(self, batch: np.ndarray, destination: np.ndarray, context) -> np.ndarray:  # type: ignore[no-untyped-def]
        np.subtract(255, batch, out=destination)
        return destination


def test_slot_bytes_counts_each_operations_buffer(photos_file: Path) -> None:
    """A slot holds a batch of every buffer declared, not only of the outputs (the
    README said 'one batch of every output'): two operations that each write a new
    array make three batches of images per slot."""
    image = 8 * 32 * 32 * 3
    for extra, batches in (([], 1), ([Invert()], 2), ([Invert(), Invert()], 3)):
        with Loader(photos_file, 8, pipelines={
                "image": [CenterCropRGBImageDecoder((32, 32), 1.0), *extra],
                "label": [IntDecoder()]}) as loader:
            assert loader.slot_bytes == batches * image + 8 * 8  # the labels: int64
            list(loader)
            assert max(slot.nbytes for slot in loader._slots._free) == loader.slot_bytes


class Explode(Operation):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def apply(self, batch: np.ndarray, destination: None, context) -> np.ndarray:  # type: ignore[no-untyped-def]
        if self.at in context.indices:
            raise ZeroDivisionError(f"cannot handle sample {self.at}")
        return batch


def test_exception_in_an_operation_reaches_the_loop(scalars: Path) -> None:
    loader = index_loader(scalars, batch_size=10,
                          pipelines={"index": [IntDecoder(), Explode(at=123)], "value": None})
    iterator = iter(loader)
    for _ in range(12):  # every batch before the failing one arrives
        next(iterator)
    with pytest.raises(ZeroDivisionError, match="cannot handle sample 123") as info:
        next(iterator)
    message = str(info.value)
    assert str(scalars) in message
    assert "'index'" in message
    assert "Explode" in message


def test_corrupt_jpeg_names_sample_and_field(tmp_path: Path, photos_file: Path) -> None:
    path = tmp_path / "corrupt.beton"
    path.write_bytes(photos_file.read_bytes())
    reader = Reader(path)
    jpegs = np.flatnonzero(reader.metadata["f0"]["mode"] == 0)
    victim = int(jpegs[len(jpegs) // 2])
    ptr = int(reader.metadata[victim]["f0"]["data_ptr"])
    with open(path, "r+b") as f:
        f.seek(ptr + 2)
        f.write(bytes(200))  # the header after SOI: garbage
    loader = Loader(path, 4, pipelines={"image": [CenterCropRGBImageDecoder((8, 8), 1.0)],
                                        "label": None})
    with pytest.raises(DecodeError, match=rf"sample {victim}, field 'image'"):
        for _ in loader:
            pass


@pytest.mark.parametrize(("mode", "change", "error", "message"), [
    (0, {"mode=": 7}, FormatError, "unknown image mode 7"),
    (0, {"height": +8}, DecodeError, "the metadata says"),
    (0, {"height": +20000}, DecodeError, "the metadata says"),
    (1, {"height": +8}, FormatError, "needs .* bytes, has"),
    (1, {"width=": 0}, FormatError, "empty image"),
], ids=["unknown-mode", "jpeg-size", "jpeg-huge", "raw-short", "raw-empty"])
def test_bad_image_metadata_names_sample_and_field(tmp_path: Path, plain_photos_file: Path,
                                                   mode: int, change: dict[str, int],
                                                   error: type, message: str) -> None:
    # refused when the file is opened where the metadata alone shows it (FormatError),
    # when decoded for a JPEG (its header disagrees), before any buffer is sized from it
    from fastforward.types import metadata_offset

    path = tmp_path / "tampered.beton"
    path.write_bytes(plain_photos_file.read_bytes())
    reader = Reader(path)
    column = reader.metadata["f0"]
    victim = int(np.flatnonzero(column["mode"] == mode)[3])
    row = np.array(column[victim])
    for key, value in change.items():  # "key=": set it, "key": add to it
        name = key.rstrip("=")
        row[name] = value if key.endswith("=") else (int(row[name]) + value) % (1 << 16)
    start = (metadata_offset(reader.num_fields) + victim * reader.metadata_type.itemsize
             + reader.metadata_type.fields["f0"][1])
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(row.tobytes())
    def one_epoch() -> None:
        loader = Loader(path, 8, pipelines={
            "image": [RandomResizedCropRGBImageDecoder((16, 16))], "label": None})
        for _ in loader:
            pass

    with pytest.raises(error, match=message) as info:
        one_epoch()
    assert f"sample {victim}, field 'image'" in str(info.value)
    assert str(path) in str(info.value)


def test_break_close_and_context_manager_stop_everything(scalars: Path) -> None:
    loader = index_loader(scalars, batch_size=5)
    for i, _ in enumerate(loader):
        if i == 3:
            break
    assert fastforward_threads() == []  # the dropped iterator stopped its threads
    iterator = iter(loader)
    next(iterator)
    iterator.close()
    assert fastforward_threads() == []
    with index_loader(scalars, batch_size=5) as managed:
        it = iter(managed)
        next(it)
    assert fastforward_threads() == []
    with pytest.raises(RuntimeError, match="closed"):
        iter(managed)


def test_ctrl_c_stops_the_threads(scalars: Path) -> None:
    loader = index_loader(scalars, batch_size=1, pipelines={
        "index": [IntDecoder(), Sleepy(0.05)], "value": None})
    # Python's own handler, even where SIGINT came in ignored (a job started
    # with & by a non-interactive shell)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    running, over = threading.Event(), threading.Event()

    def ctrl_c_once_the_loop_runs() -> None:
        # not after a fixed delay: a slow machine may not have started the epoch by
        # then (and 600 batches of 0.05 s keep the loop running for seconds after)
        running.wait(60)
        if not over.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    def loop() -> None:
        for _ in loader:
            running.set()

    timer = threading.Thread(target=ctrl_c_once_the_loop_runs)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop()
    finally:
        over.set()  # no Ctrl-C after the test, whatever happened
        running.set()
        timer.join()
        signal.signal(signal.SIGINT, previous)
    assert fastforward_threads() == []


class Sleepy(Operation):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def apply(self, batch: np.ndarray, destination: None, context) -> np.ndarray:  # type: ignore[no-untyped-def]
        time.sleep(self.seconds)
        return batch


def test_two_loaders_and_two_iterators_at_once(scalars: Path) -> None:
    a = index_loader(scalars, batch_size=100)
    b = index_loader(scalars, batch_size=100, order=OrderOption.RANDOM, seed=2)
    it_a, it_b, it_a2 = iter(a), iter(b), iter(a)
    got = [(next(it_a)[0][0, 0], next(it_a2)[0][0, 0]) for _ in range(3)]
    assert [x for x, _ in got] == [0, 100, 200]
    assert sorted(int(i) for (batch,) in it_b for i in batch.ravel()) != []
    for it in (it_a, it_a2):
        it.close()


def counted_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes of each read ``os_cache=False`` makes from now on, in a list."""
    from fastforward.memory_managers.process_cache import ProcessCacheManager

    read: list[int] = []
    pread = ProcessCacheManager._pread_into

    def counted(self: ProcessCacheManager, out: np.ndarray, offset: int) -> None:
        read.append(out.nbytes)
        pread(self, out, offset)

    monkeypatch.setattr(ProcessCacheManager, "_pread_into", counted)
    return read


def test_process_cache_reads_small_samples_without_the_gaps_between_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A RANDOM batch of 100-byte samples spread over the file: reads bridged every gap
    under 64 KiB, so each batch read and held most of the file (50× its payload at
    batch 256, 160× the file's bytes read in an epoch, ten times slower)."""
    path = tmp_path / "small.beton"
    DatasetWriter(path, {"b": BytesField()}, num_workers=1, progress=False) \
        .from_indexed_dataset([bytes([i % 251]) * 100 for i in range(20_000)])
    read = counted_reads(monkeypatch)
    with Loader(path, 64, os_cache=False, order=OrderOption.RANDOM, seed=0,
                batches_ahead=2, worker_type="thread", drop_last=False,
                pipelines={"b": [BytesDecoder()]}) as loader:
        seen = [bytes(row[:100]) for (b,) in loader for row in b]
        manager = loader.memory_manager
    assert sorted(seen) == sorted(bytes([i % 251]) * 100 for i in range(20_000))
    # each batch: at most twice its 64 × 100 bytes, plus 4 KiB for each of its 63 gaps
    batches = -(-20_000 // 64)
    assert sum(read) <= 2 * 20_000 * 100 + (20_000 - batches) * 4096
    assert 0 < manager.peak_bytes <= (2 + 1) * (2 * 64 * 100 + 63 * 4096)


def test_reads_bridge_a_gap_no_larger_than_the_payload_after_it_or_a_page() -> None:
    """``read_starts`` against a plain loop, on sorted ranges with overlaps, shared
    offsets and empty payloads."""
    from fastforward.memory_managers.process_cache import GAP, PAGE_GAP, read_starts

    rng = np.random.default_rng(0)
    for case in range(300):
        n = int(rng.integers(1, 40))
        sizes = rng.choice([0, 10, 3000, 20_000, 70_000], n) * (rng.random(n) < 0.9)
        starts = np.sort(rng.integers(0, [10_000, 400_000, 4_000_000][case % 3], n))
        ends = starts + sizes
        expected, furthest = [], -1
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            gap = start - furthest
            expected.append(not expected or gap > max(PAGE_GAP, min(GAP, end - start)))
            furthest = max(furthest, end)
        new = read_starts(starts, ends)
        np.testing.assert_array_equal(new, expected)
        # the bound the docs state: twice the payload, plus 4 KiB a payload
        firsts = np.flatnonzero(new)
        read = (np.maximum.reduceat(ends, firsts) - starts[firsts]).sum()
        assert read <= 2 * sizes.sum() + PAGE_GAP * n


def test_deleting_a_loader_mid_epoch(scalars: Path) -> None:
    loader = index_loader(scalars, batch_size=5)
    iterator = iter(loader)
    next(iterator)
    del loader
    del iterator
    assert fastforward_threads() == []


def test_process_cache_memory_bound(tmp_path: Path) -> None:
    path = tmp_path / "bytes.beton"
    rng = np.random.default_rng(0)
    blobs = [rng.integers(0, 256, 20_000, dtype=np.uint8) for _ in range(400)]
    DatasetWriter(path, {"blob": BytesField()}, num_workers=1, progress=False) \
        .from_indexed_dataset(blobs)
    loader = Loader(path, 10, os_cache=False, order=OrderOption.RANDOM, seed=0,
                    batches_ahead=2, pipelines={"blob": [BytesDecoder()]})
    reader = Reader(path)
    for epoch in range(2):
        for (data,) in loader:
            assert (data.lengths == 20_000).all()
            del data
        assert epoch == loader.next_epoch - 1
    np.testing.assert_array_equal(next(iter(loader))[0][0], reader.read(
        int(loader.traversal_order.sample_order(2)[0]))[0])
    manager = loader.memory_manager
    # at most batches_ahead + 1 batches in memory at once, whatever the order: each at
    # most twice the batch's 10 × 20 kB, plus 4 KiB for each of the 9 gaps it may bridge
    assert 0 < manager.peak_bytes <= (2 + 1) * (2 * 10 * 20_000 + 9 * 4096)
    loader.close()
    assert manager.live_bytes == 0


def test_bytes_decoder_shows_no_stale_bytes(tmp_path: Path) -> None:
    path = tmp_path / "b.beton"
    blobs = [np.full(n, 7, np.uint8) for n in (50, 3, 0, 20)]
    DatasetWriter(path, {"blob": BytesField()}, num_workers=1, progress=False) \
        .from_indexed_dataset(blobs)
    for (data,) in Loader(path, 2, pipelines={"blob": [BytesDecoder()]}):
        for row, n in zip(data, data.lengths, strict=True):
            assert (row[:n] == 7).all()
            assert (row[n:] == 0).all()


def test_bytes_batch_is_ffcvs_array_with_lengths(tmp_path: Path) -> None:
    path = tmp_path / "b.beton"
    blobs = [np.arange(n, dtype=np.uint8) for n in (5, 1, 0, 9, 4)]
    DatasetWriter(path, {"blob": BytesField()}, num_workers=1, progress=False) \
        .from_indexed_dataset(blobs)
    loader = Loader(path, 2, drop_last=False, pipelines={"blob": [BytesDecoder()]})
    seen = []
    for (batch,) in loader:
        assert isinstance(batch, BytesBatch)
        assert batch.dtype == np.uint8
        assert batch.shape == (len(batch.lengths), 9)  # FFCV's (B, largest sample)
        assert type(batch[0]) is np.ndarray  # rows are plain arrays
        seen += [s.tolist() for s in batch.samples()]
    assert seen == [b.tolist() for b in blobs]
    (batch,) = next(iter(loader))
    kept = batch.copy()
    assert kept.lengths.tolist() == [5, 1]
    assert kept.lengths is not batch.lengths
    assert (batch + 0).lengths is None  # a derived array does not know its rows' lengths
    with pytest.raises(ValueError, match="lengths"):
        batch.T.samples()


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_a_field_of_empty_samples_gives_ffcvs_zero_columns(tmp_path: Path,
                                                           worker_type: str) -> None:
    """Every sample empty: FFCV's ``(B, 0)``, as a tensor too (it was ``(B, 1)``)."""
    torch = pytest.importorskip("torch")
    from fastforward.transforms import ToTensor

    path = tmp_path / "b.beton"
    DatasetWriter(path, {"blob": BytesField(), "label": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset(
        [(np.zeros(0, np.uint8), i) for i in range(6)])
    loader = Loader(path, 4, drop_last=False, num_workers=2, worker_type=worker_type,
                    pipelines={"blob": [BytesDecoder()], "label": [IntDecoder()]})
    shapes, labels = [], []
    for batch, label in loader:
        assert isinstance(batch, BytesBatch)
        shapes.append(batch.shape)
        assert batch.lengths.tolist() == [0] * len(batch)
        assert [s.size for s in batch.samples()] == [0] * len(batch)
        labels += label.ravel().tolist()
    loader.close()
    assert shapes == [(4, 0), (2, 0)]
    assert labels == list(range(6))
    as_tensors = Loader(path, 3, worker_type=worker_type,
                        pipelines={"blob": [BytesDecoder(), ToTensor()], "label": None})
    assert [tuple(t.shape) for (t,) in as_tensors] == [(3, 0), (3, 0)]
    assert all(t.dtype == torch.uint8 for (t,) in as_tensors)
    as_tensors.close()


def test_an_interrupt_while_a_batch_is_handed_over_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while next() waited for a batch's copies (the copy threads') counted the
    batch as handed out: a checkpoint saved then resumed after it, a batch the loop
    never got (14 of 200 timed SIGINTs), and the iterator went on past it."""
    from fastforward.loader import loader as loader_module

    path = tmp_path / "b.beton"
    DatasetWriter(path, {"blob": BytesField(), "label": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset(
        [(np.full(50, i, np.uint8), i) for i in range(24)])

    def make() -> Loader:
        return Loader(path, 4, order=OrderOption.RANDOM, seed=3,
                      pipelines={"blob": [BytesDecoder()], "label": [IntDecoder()]})

    with make() as reference:
        full = [label.ravel().tolist() for _, label in reference]
    waits = 0
    original = loader_module.PendingCopies.wait

    def interrupted(self: object, timeout: float | None = None) -> None:
        nonlocal waits
        waits += 1
        original(self, timeout)  # type: ignore[arg-type]
        if waits == 3:  # the third batch's: as a signal raised when the wait returns
            raise KeyboardInterrupt

    monkeypatch.setattr(loader_module.PendingCopies, "wait", interrupted)
    loader = make()
    iterator = iter(loader)
    got = [next(iterator)[1].ravel().tolist() for _ in range(2)]
    with pytest.raises(KeyboardInterrupt):
        next(iterator)
    state = loader.state_dict()
    assert state["segments"] == [[1, 2]]  # two handed out
    with make() as resumed:
        resumed.load_state_dict(state)
        assert [label.ravel().tolist() for _, label in resumed] == full[2:]
    # the loop that catches it and goes on gets that batch next
    got += [label.ravel().tolist() for _, label in iterator]
    assert got == full
    assert loader.state_dict()["epoch"] == 1
    loader.close()
    # closed after the interrupt: the batch is not handed out after all
    waits = 0
    loader = make()
    iterator = iter(loader)
    next(iterator), next(iterator)
    with pytest.raises(KeyboardInterrupt):
        next(iterator)
    iterator.close()
    with pytest.raises(StopIteration):
        next(iterator)
    assert loader.state_dict()["segments"] == [[1, 2]]
    loader.close()


def test_threads_sharing_an_epoch_take_a_batch_each(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a lock in ``next()``, a thread entering while another waited for its
    batch's copies handed out that batch again."""
    from fastforward.loader.loader import PendingBatch

    hand_over = PendingBatch.hand_over

    def slowly(self: PendingBatch, timeout: float | None = None) -> tuple[object, ...]:
        time.sleep(0.01)  # the other thread comes in meanwhile
        return hand_over(self, timeout)

    monkeypatch.setattr(PendingBatch, "hand_over", slowly)
    path = tmp_path / "b.beton"
    DatasetWriter(path, {"blob": BytesField(), "label": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset(
        [(np.full(50, i, np.uint8), i) for i in range(96)])
    loader = Loader(path, 4, order=OrderOption.RANDOM, seed=3,
                    pipelines={"blob": [BytesDecoder()], "label": [IntDecoder()]})
    iterator = iter(loader)
    taken: list[list[int]] = [[], []]

    def take(mine: list[int]) -> None:
        for _, label in iterator:
            mine += label.ravel().tolist()

    threads = [threading.Thread(target=take, args=(mine,)) for mine in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken[0] + taken[1]) == list(range(96))
    assert iterator.position.delivered == 24
    loader.close()


def test_bytes_batch_holds_its_slot(tmp_path: Path) -> None:
    path = tmp_path / "b.beton"
    blobs = [np.full(i % 7 + 1, i, np.uint8) for i in range(40)]
    DatasetWriter(path, {"blob": BytesField()}, num_workers=1, progress=False) \
        .from_indexed_dataset(blobs)
    loader = Loader(path, 2, batches_ahead=1, order=OrderOption.RANDOM, seed=1,
                    pipelines={"blob": [BytesDecoder()]})
    held = [batch for (batch,) in loader]  # more batches than the ring has slots
    expected = [(b.view(np.ndarray).copy(), b.lengths.copy()) for b in held]
    lengths = [b.lengths for b in held]
    rows = held[::2]
    del held  # half the batches, and every batch's lengths alone, still hold their buffers
    for _ in range(2):
        for (batch,) in loader:
            del batch
    assert all((n == e[1]).all() for n, e in zip(lengths, expected, strict=True))
    assert all((b == e[0]).all() for b, e in zip(rows, expected[::2], strict=True))


def test_fused_flip_equals_the_separate_flip(photos_file: Path) -> None:
    from fastforward.transforms import RandomHorizontalFlip

    def first_batch(branch: bool) -> np.ndarray:
        decoder = RandomResizedCropRGBImageDecoder((24, 24))
        pipelines = {"image": [decoder, RandomHorizontalFlip()], "label": None}
        if branch:  # a branch reads the unflipped image, so the flip stays separate
            pipelines["plain"] = PipelineSpec(decoder)
        loader = Loader(photos_file, 16, seed=2, pipelines=pipelines)
        fused = loader.pipelines[0].decoder.fused_flip is not None
        assert fused is not branch
        return next(iter(loader))[0]

    fused, separate = first_batch(False), first_batch(True)
    np.testing.assert_array_equal(fused, separate)


def test_fetch_failure_comes_after_the_batches_before_it(scalars: Path) -> None:
    loader = index_loader(scalars, batch_size=10)
    fetch = loader.memory_manager.fetch

    def failing(indices: np.ndarray, **options):  # type: ignore[no-untyped-def]
        if indices[0] == 30:  # batch 3 (batches may be fetched in any order)
            raise OSError("disk unplugged")
        return fetch(indices, **options)

    loader.memory_manager.fetch = failing  # type: ignore[method-assign]
    iterator = iter(loader)
    assert [int(next(iterator)[0][0, 0]) for _ in range(3)] == [0, 10, 20]
    with pytest.raises(OSError, match="disk unplugged"):
        next(iterator)


def test_a_failed_iter_keeps_the_epoch(photos_file: Path) -> None:
    decoder = RandomResizedCropRGBImageDecoder((8, 8))
    loader = Loader(photos_file, 4, pipelines={"image": [decoder], "label": None})
    decoder.output_size = (0, 8)
    with pytest.raises(ValueError, match="output_size"):
        iter(loader)
    assert loader.next_epoch == 0
    decoder.output_size = (8, 8)
    assert next(iter(loader))[0].shape == (4, 8, 8, 3)


@pytest.mark.parametrize(("size", "error", "message"), [
    (16, TypeError, "output_size must be a \\(height, width\\) pair, got 16"),
    ("16", TypeError, "output_size must be a \\(height, width\\) pair, got '16'"),
    ((16, 16, 3), TypeError, "pair, got \\(16, 16, 3\\)"),
    ((16.5, 16), TypeError, "output_size must be a whole number, got 16.5"),
    ((0, 16), ValueError, "output_size must be positive, got \\(0, 16\\)"),
], ids=["number", "string", "three", "fraction", "zero"])
def test_a_crop_decoders_output_size_is_a_pair_of_whole_numbers(
        photos_file: Path, size: Any, error: type, message: str) -> None:
    """16 and (16, 16, 3) failed in Python's words ("'int' object is not iterable"),
    "16" made images of 1×6, and 16.5 was cut to 16."""
    for decoder in (RandomResizedCropRGBImageDecoder(size),
                    CenterCropRGBImageDecoder(size, ratio=1)):
        with pytest.raises(error, match=message):
            Loader(photos_file, 4, pipelines={"image": [decoder], "label": None})
    decoder = CenterCropRGBImageDecoder((np.int64(6), 8.0), ratio=1)
    loader = Loader(photos_file, 4, pipelines={"image": [decoder], "label": None})
    assert next(iter(loader))[0].shape == (4, 6, 8, 3)


def test_a_class_given_for_its_operation_is_named(scalars: Path) -> None:
    """``[IntDecoder(), ToTensor]`` named neither the file nor the pipeline, nor the
    missing call."""
    from fastforward.transforms import ToTensor

    with pytest.raises(TypeError, match=r"scalars\.beton: pipeline 'index': ToTensor is a "
                                        r"class, not an operation: give one, ToTensor\(\.\.\.\)"):
        index_loader(scalars, batch_size=4,
                     pipelines={"index": [IntDecoder(), ToTensor], "value": None})
    with pytest.raises(TypeError, match=r"scalars\.beton: pipeline 'index': IntDecoder is a "
                                        r"class"):
        index_loader(scalars, batch_size=4, pipelines={"index": [IntDecoder], "value": None})
    with pytest.raises(TypeError, match=r"scalars\.beton: pipeline 'index': 5 is not an "
                                        r"Operation"):
        index_loader(scalars, batch_size=4, pipelines={"index": [IntDecoder(), 5], "value": None})
    with pytest.raises(TypeError, match=r"scalars\.beton: pipeline 'index': expected a list "
                                        r"of operations, a PipelineSpec or None, got int"):
        index_loader(scalars, batch_size=4, pipelines={"index": 5, "value": None})


def test_a_close_cut_short_by_ctrl_c_is_finished_by_the_next(scalars: Path) -> None:
    # Ctrl-C landing while close() joins the scheduler thread: the next close()
    # (the loader's finalizer at exit) used to wait forever for the first
    iterator = iter(index_loader(scalars, batch_size=5))
    next(iterator)
    engine = iterator._engine  # type: ignore[attr-defined]
    join = engine._thread.join

    def interrupted(*args: object) -> None:
        engine._thread.join = join
        raise KeyboardInterrupt

    engine._thread.join = interrupted
    with pytest.raises(KeyboardInterrupt):
        engine.close()
    closer = threading.Thread(target=engine.close)  # another thread waiting for it
    closer.start()
    engine.close()
    closer.join(10)
    assert not closer.is_alive()
    assert not engine.is_running
    assert fastforward_threads() == []


class Gated(Operation):
    """Calls ``gate(batch index)`` before passing the batch on (a function: the
    loader's copy of the operation calls the same one)."""

    def __init__(self, gate: Callable[[int], None]) -> None:
        super().__init__()
        self.gate = gate

    def apply(self, batch: np.ndarray, destination: None, context) -> np.ndarray:  # type: ignore[no-untyped-def]
        self.gate(context.batch_index)
        return batch


def test_close_from_another_thread_ends_the_loop(scalars: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from fastforward import scheduler
    from fastforward.scheduler import Engine

    # every batch on a batch thread: a gated one run on the scheduler thread would
    # hold up the delivery of those before it
    monkeypatch.setattr(scheduler, "LIGHT_BATCH_SECONDS", 0.0)
    ungated = 5
    engines: list[Engine] = []

    def gate(batch_index: int) -> None:
        # the batches after the first few wait for close() to begin, so the epoch
        # cannot end before it however late the closing thread runs (30 s: a hang
        # guard, after which the loop runs to its end and the test fails)
        deadline = time.monotonic() + 30
        while (batch_index >= ungated and time.monotonic() < deadline
               and not (engines and engines[0]._closed)):
            time.sleep(0.005)

    loader = index_loader(scalars, batch_size=1, pipelines={
        "index": [IntDecoder(), Gated(gate)], "value": None})
    reached = threading.Event()

    def close_once_the_loop_waits() -> None:
        reached.wait(60)  # the loop took every batch it can have: it waits for the next
        loader.close()

    closer = threading.Thread(target=close_once_the_loop_waits)
    closer.start()
    seen = 0
    iterator = iter(loader)
    engines.append(iterator._engine)  # type: ignore[attr-defined]
    for _ in iterator:
        seen += 1
        if seen == ungated:
            reached.set()
    reached.set()  # the closer ends even if the loop did not get that far
    closer.join()
    # ended by close(), mid-epoch: the batch the loop was waiting for may still
    # come (it was let go by close()), none after it
    assert ungated <= seen <= ungated + 1


def test_close_from_another_thread_while_an_epoch_starts_ends_its_loop(
        photos_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() that ran while iter() was starting an epoch missed it, and released
    the file under its threads: the loop got a DecodeError of a sound file ("payload
    of 5230 bytes at 8388608 is outside the data", 42% of closes 0-4 ms after iter()
    began, in a chaos test). The epoch now ends as one closed in progress does."""
    from fastforward.loader import loader as module

    loader = Loader(photos_file, 4, num_workers=2, worker_type="thread", pipelines={
        "image": [CenterCropRGBImageDecoder((16, 16), 1.0)], "label": [IntDecoder()]})
    assert len(list(loader)) == len(loader)  # the workers are up: the next epoch starts
    engine = module.Engine

    def closed_meanwhile(plan: Any) -> Any:
        # the epoch is past iter()'s check that the loader is open, not yet among the
        # loader's epochs: another thread's close() runs to its end now
        closer = threading.Thread(target=loader.close)
        closer.start()
        closer.join()
        return engine(plan)

    monkeypatch.setattr(module, "Engine", closed_meanwhile)
    assert list(iter(loader)) == []
    with pytest.raises(RuntimeError, match="the loader is closed"):
        iter(loader)


def test_bad_arguments(scalars: Path) -> None:
    with pytest.raises(TypeError, match="boolean mask"):
        index_loader(scalars, batch_size=4, indices=np.ones(600, bool))
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\), got -1"):
        index_loader(scalars, batch_size=4, seed=-1)
    with pytest.raises(TypeError, match=r"seed must be an integer .* got 2\.5"):
        index_loader(scalars, batch_size=4, seed=2.5)  # not 2, silently


@pytest.mark.parametrize(("kw", "error", "message"), [
    ({"num_workers": "2"}, TypeError, r"num_workers \(-1: one per core\) must be a whole "
                                      r"number, got '2'"),
    ({"num_workers": None}, TypeError, r"num_workers .* must be a whole number, got None"),
    ({"num_workers": 2.5}, TypeError, r"num_workers .* must be a whole number, got 2\.5"),
    ({"batches_ahead": "3"}, TypeError, r"batches_ahead must be a whole number, got '3'"),
    ({"batches_ahead": 2.5}, TypeError, r"batches_ahead must be a whole number, got 2\.5"),
    ({"batches_ahead": True}, TypeError, r"batches_ahead must be a whole number, got True"),
    ({"timeout": "5"}, ValueError, r"timeout must be a number of seconds above 0, or None, "
                                   r"got '5'"),
    ({"indices": {1, 2}}, TypeError, r"indices must be a sequence of integers \(a list, range "
                                     r"or array\), got set"),
    ({"indices": (i for i in range(3))}, TypeError, r"indices must be a sequence .* got "
                                                     r"generator"),
    ({"indices": "012"}, TypeError, r"indices must be a sequence .* got str"),
    ({"custom_fields": {"index": int}}, TypeError, r"scalars\.beton: custom_fields\['index'\] "
                                                   r"must be a Field class .* got <class 'int'>"),
    ({"custom_fields": {"index": None}}, TypeError, r"custom_fields\['index'\] must be a "
                                                    r"Field class .* got None"),
], ids=["workers-str", "workers-none", "workers-fraction", "ahead-str", "ahead-fraction",
        "ahead-bool", "timeout-str", "indices-set", "indices-generator", "indices-str",
        "custom-int", "custom-none"])
def test_arguments_of_the_wrong_kind_are_refused_by_name(scalars: Path, kw: dict[str, Any],
                                                          error: type, message: str) -> None:
    """They failed on a comparison ("'<' not supported between instances of 'str' and
    'int'"), in a field's reading, or were cut silently (2.5 workers: 2; True: 1)."""
    with pytest.raises(error, match=message):
        index_loader(scalars, batch_size=4, **kw)
    assert index_loader(scalars, batch_size=4, num_workers=2.0, batches_ahead=np.int64(2),
                        timeout=np.float64(5)).num_workers == 2


def test_a_loader_says_it_cannot_be_pickled_or_copied(scalars: Path) -> None:
    """Lightning's and DDP spawn's pickling met the loader's lock: "cannot pickle
    '_thread.RLock' object"; ``copy.copy`` gave a second loader sharing the first's
    file, threads and workers (closing one closed the other's)."""
    import copy
    import pickle

    with index_loader(scalars, batch_size=4) as loader:
        for attempt in (pickle.dumps, copy.deepcopy, copy.copy):
            with pytest.raises(TypeError, match=r"scalars\.beton: a Loader cannot be pickled "
                                                r"or copied .* make one in each process"):
                attempt(loader)
        epoch = iter(loader)
        with pytest.raises(TypeError, match="a loader's epoch cannot be pickled or copied"):
            pickle.dumps(epoch)
        epoch.close()


def test_a_decoder_of_another_fields_type_is_refused_when_the_loader_is_built(
        scalars: Path, photos_file: Path) -> None:
    """An IntDecoder on a FloatField cut each value to an integer without a word; an
    image decoder on an IntField failed at the first batch in NumPy's words."""
    with pytest.raises(TypeError, match=r"scalars\.beton: pipeline 'value': IntDecoder decodes "
                                        r"IntField, and field 'value' is a FloatField \(its "
                                        r"decoder: FloatDecoder; to read it as another type, "
                                        r"say so: custom_fields=\{'value': ThatField\}\)"):
        Loader(scalars, 4, pipelines={"value": [IntDecoder()], "index": None})
    with pytest.raises(TypeError, match=r"pipeline 'label': CenterCropRGBImageDecoder decodes "
                                        r"RGBImageField, and field 'label' is an IntField"):
        Loader(photos_file, 4, pipelines={"label": [CenterCropRGBImageDecoder((8, 8), 1.0)],
                                          "image": None})
    with pytest.raises(TypeError, match=r"pipeline 'image': FloatDecoder decodes FloatField"):
        Loader(photos_file, 4, pipelines={"image": [FloatDecoder()], "label": None})

    class Halves(IntDecoder):  # a subclass reads what its base reads
        pass

    with Loader(scalars, 4, pipelines={"index": [Halves()], "value": None}) as loader:
        assert next(iter(loader))[0].ravel().tolist() == [0, 1, 2, 3]
    # integers as floats lose nothing (FFCV's FloatDecoder reads them too)
    with Loader(scalars, 4, pipelines={"index": [FloatDecoder()], "value": None}) as loader:
        assert next(iter(loader))[0].ravel().tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("pipeline", ["two decoders", "operation first"])
def test_a_second_decoder_or_one_after_an_operation_is_refused(scalars: Path,
                                                               pipeline: str) -> None:
    """Both were taken, and failed at the first batch: "IntDecoder: 'NoneType' object
    is not subscriptable" (the second decoder was never bound to the field)."""
    ops: list[Operation] = ([IntDecoder(), IntDecoder()] if pipeline == "two decoders"
                            else [RandomHorizontalFlip(), IntDecoder()])
    with pytest.raises(ValueError, match=r"scalars\.beton: pipeline 'index': IntDecoder is a "
                                         r"decoder at position 2 of its list: a pipeline has one "
                                         r"decoder, first"):
        Loader(scalars, 4, pipelines={"index": ops, "value": None})


class RaisingDecoder(IntDecoder):
    parallel = True  # decoded in ranges: in the worker processes, with process workers

    def decode_range(self, lo: int, hi: int, destination: np.ndarray, context: Any) -> None:
        raise ValueError(f"boom in {os.getpid()}")


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_what_a_decoder_raises_names_the_file_batch_pipeline_and_decoder(
        scalars: Path, worker_type: str) -> None:
    """An operation's error was located; a decoder's was not (bare "boom"), unless
    the decoder named the sample itself (the built-in ones, which stay as they are)."""
    with Loader(scalars, 4, num_workers=2, worker_type=worker_type,
                pipelines={"index": [RaisingDecoder()], "value": None}) as loader, \
            pytest.raises(ValueError, match="RaisingDecoder: boom") as info:
        next(iter(loader))
    message = str(info.value)
    assert message.startswith(f"{scalars}: batch 0 (samples 0, …, 3), pipeline 'index', "
                              "RaisingDecoder: boom in ")
    pid = int(message.rsplit(" ", 1)[1])
    assert (pid == os.getpid()) == (worker_type == "thread")  # where it was decoded


def test_seed_and_next_epoch_set_later_are_checked_and_seen_by_all(scalars: Path) -> None:
    """A seed set on a loader seeds its order too (it seeded its augmentations
    and its states only: such a state resumed with other batches); an epoch no
    state could hold is refused where it is set, by name."""
    loader = index_loader(scalars, batch_size=10, seed=5, order=OrderOption.RANDOM)
    loader.seed = 7
    assert loader.seed == 7
    assert loader.state_dict()["seed"] == 7
    fresh = index_loader(scalars, batch_size=10, seed=7, order=OrderOption.RANDOM)
    assert collect(loader) == collect(fresh)
    for bad, error in ((2.5, TypeError), ("3", TypeError), (None, TypeError),
                       (True, TypeError), (-1, ValueError), (1 << 63, ValueError)):
        with pytest.raises(error, match=r"next_epoch must be an integer in \[0, 2\*\*63\)"):
            loader.next_epoch = bad
        with pytest.raises(error, match=r"seed must be an integer in \[0, 2\*\*63\)"):
            loader.seed = bad
    assert (loader.next_epoch, loader.seed) == (1, 7)
    loader.next_epoch = np.int64(3)
    assert type(loader.next_epoch) is int
    assert loader.state_dict()["epoch"] == 3


def test_no_seed_draws_one_from_numpys_global_generator_as_ffcv(scalars: Path) -> None:
    """A script that calls np.random.seed() gets the same order each run (the
    seed came from the OS: FFCV users' seeded scripts lost their order)."""
    def order() -> tuple[int, list[int]]:
        loader = index_loader(scalars, batch_size=50, order=OrderOption.RANDOM)
        return loader.seed, collect(loader)

    np.random.seed(0)
    first = order()
    np.random.seed(0)
    assert order() == first
    assert order()[0] != first[0]  # the generator moved on: another seed


@pytest.mark.parametrize("name", ["drop_last", "even_batches", "indices",
                                  "num_workers", "os_cache", "distributed", "world_size",
                                  "rank", "batches_ahead", "verify_checksums"])
def test_what_a_loader_is_built_around_cannot_be_changed_after(scalars: Path,
                                                                name: str) -> None:
    """``loader.batch_size = 20`` failed deep in a batch's copy; ``drop_last`` set
    after a first state_dict() was left out of the states that followed."""
    loader = index_loader(scalars, batch_size=10)
    before = getattr(loader, name)
    with pytest.raises(AttributeError, match=f"a Loader's {name} is fixed when it is made"):
        setattr(loader, name, before)
    assert getattr(loader, name) is before
    assert len(collect(loader)) == 600


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_a_batch_size_schedule_between_epochs(photos_file: Path, worker_type: str) -> None:
    """FFCV's loader reads ``batch_size`` at each epoch's start (a batch-size schedule);
    ``loader.batch_size = 20`` failed deep in a batch's copy. Each epoch is the one a
    loader made with that batch size gives, and a batch held across the change keeps
    its values (its slot is not re-sized under it)."""
    def make(batch_size: int, **kw) -> Loader:
        return Loader(photos_file, batch_size, num_workers=2, worker_type=worker_type,
                      order=OrderOption.RANDOM, seed=4, drop_last=False, pipelines={
                          "image": [RandomResizedCropRGBImageDecoder((24, 24)), Invert()],
                          "label": [IntDecoder()]}, **kw)

    loader = make(8)
    held = next(iter(loader))  # epoch 0, left unfinished
    kept = [a.copy() for a in held]
    for epoch, size in enumerate([8, 20, 3, 60, 8], 1):
        loader.batch_size = size
        assert loader.batch_size == size
        assert len(loader) == -(-60 // size)
        reference = make(size)
        reference.next_epoch = epoch
        got = list(loader)
        assert [len(b[1]) for b in got] == [min(size, 60 - k) for k in range(0, 60, size)]
        for batch, expected in zip(got, reference, strict=True):
            for a, b in zip(batch, expected, strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"epoch {epoch}, size {size}")
        reference.close()
    for a, b in zip(held, kept, strict=True):
        np.testing.assert_array_equal(a, b)
    assert loader.filter("label", lambda label: label % 2 == 0).batch_size == 8
    loader.close()


def test_a_batch_size_set_mid_epoch_applies_to_the_next(scalars: Path) -> None:
    """The epoch under way keeps its batches and its state_dict() says their size; a
    state resumes on a loader of that batch size."""
    loader = index_loader(scalars, batch_size=10, order=OrderOption.RANDOM, seed=2)
    epoch = iter(loader)
    first = [next(epoch)[0].ravel().tolist() for _ in range(3)]
    loader.batch_size = 25
    assert len(loader) == 24  # the next epoch's
    fourth = next(epoch)[0].ravel().tolist()
    assert len(fourth) == 10
    state = loader.state_dict()
    assert state["batch_size"] == 10
    rest = [int(i) for (b,) in epoch for i in b.ravel()]
    assert sorted([i for b in first for i in b] + fourth + rest) == list(range(600))
    assert {len(b) for (b,) in loader} == {25}

    other = index_loader(scalars, batch_size=25, order=OrderOption.RANDOM, seed=2)
    with pytest.raises(ValueError, match=r"saved with batch_size=10, this loader has 25 "
                                         r"\(a batch-size schedule: set loader.batch_size = "
                                         r"10 before load_state_dict\(\)\)"):
        other.load_state_dict(state)
    other.batch_size = 10
    other.load_state_dict(state)
    # a resumed epoch was started (elsewhere): it keeps its size, as does its state;
    # the size set now applies from the next epoch
    other.batch_size = 25
    assert other.state_dict() == state
    assert len(other) == len(rest) // 10
    resumed = iter(other)
    assert [int(i) for (b,) in resumed for i in b.ravel()] == rest
    assert {len(b) for (b,) in other} == {25}

    # another state of another size, after one was loaded (the size set for it)
    again = index_loader(scalars, batch_size=10, order=OrderOption.RANDOM, seed=2)
    again.load_state_dict(state)
    again.batch_size = 25
    later = other.state_dict()
    again.load_state_dict(later)
    assert again.state_dict() == later
    again.next_epoch = 5  # no longer the resumed epoch: the loader's size
    assert len(again) == 24


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_a_batch_size_set_while_an_epoch_starts(scalars: Path, worker_type: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """batch_size set (by another thread, or here by the workers' start itself)
    while iter() starts an epoch: the epoch is of one size, the one it started
    with (its batches were cut for one size and its slots sized for the other:
    'out holds 4 images, the range has 32')."""
    loader = Loader(scalars, 64, num_workers=1, worker_type=worker_type, pipelines={
        "index": [IntDecoder()], "value": None})
    open_epoch = loader.workers.open_epoch
    states = []

    def meanwhile(*args, **kw):  # type: ignore[no-untyped-def]
        loader.batch_size = 4
        return open_epoch(*args, **kw)

    monkeypatch.setattr(loader.workers, "open_epoch", meanwhile)
    epoch = iter(loader)
    first = [next(epoch)[0]]
    states.append(loader.state_dict())
    first += [index for (index,) in epoch]
    assert {len(index) for index in first} == {64}
    assert states[0]["batch_size"] == 64
    assert {len(index) for (index,) in loader} == {4}
    loader.close()


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-3, ValueError),
                                              (2.5, TypeError), ("8", TypeError),
                                              (True, TypeError), (None, TypeError)])
def test_a_batch_size_must_be_a_whole_number(scalars: Path, value: object,
                                             error: type[Exception]) -> None:
    with pytest.raises(error, match="batch_size"):
        Loader(scalars, value)  # type: ignore[arg-type]
    loader = index_loader(scalars, batch_size=10)
    with pytest.raises(error, match="batch_size"):
        loader.batch_size = value  # type: ignore[assignment]
    assert loader.batch_size == 10
    loader.batch_size = np.int64(12)
    assert type(loader.batch_size) is int
    loader.batch_size = 16.0
    assert loader.batch_size == 16
    assert len(collect(loader)) == 592


def test_failed_construction_leaks_no_file(scalars: Path) -> None:
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(20):
        with pytest.raises(ValueError, match="PipelineSpec"):
            Loader(scalars, 4, os_cache=False, pipelines={"nope": [IntDecoder()]})
        with pytest.raises(TypeError):
            Loader(scalars, 4, os_cache=False,
                   pipelines={"index": [IntDecoder(), "not an op"], "value": None})
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) <= before + 2


def test_errors_name_the_file_once(photos_file: Path) -> None:
    with pytest.raises(TypeError, match="different sizes") as info:
        Loader(photos_file, 4, pipelines={"image": [SimpleRGBImageDecoder()], "label": None})
    message = str(info.value)
    assert message.startswith(f"{photos_file}: pipeline 'image', SimpleRGBImageDecoder: ")
    assert message.count(str(photos_file)) == 1


def test_a_dead_scheduler_is_an_error_not_a_hang(scalars: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from fastforward import scheduler

    async def ends_at_once(self: scheduler.Engine) -> None:  # a scheduler with a bug
        self._loop = asyncio.get_running_loop()
        self._ready.set()

    monkeypatch.setattr(scheduler.Engine, "_start", ends_at_once)
    with pytest.raises(RuntimeError, match="stopped without ending the epoch"):
        next(iter(index_loader(scalars, batch_size=5)))
    assert fastforward_threads() == []


def test_light_batches_run_on_the_scheduler_thread_with_the_same_results(
        scalars: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastforward import scheduler

    where: list[str] = []
    original = scheduler.Engine._whole_batch

    def spy(self: scheduler.Engine, index: int, indices: np.ndarray) -> object:
        where.append(threading.current_thread().name)
        return original(self, index, indices)

    monkeypatch.setattr(scheduler.Engine, "_whole_batch", spy)
    # light: under a second, not the real 0.5 ms, which a batch preempted on a busy
    # machine can take however little work it does (this tests the switch, not the bar)
    monkeypatch.setattr(scheduler, "LIGHT_BATCH_SECONDS", 1.0)
    inline = collect(index_loader(scalars, batch_size=7, order=OrderOption.RANDOM, seed=4))
    assert "fastforward-scheduler" in where  # after a few quick batches
    assert any(name.startswith("fastforward-batch") for name in where)  # the first ones
    monkeypatch.setattr(scheduler, "LIGHT_BATCH_SECONDS", 0.0)  # never inline
    where.clear()
    pooled = collect(index_loader(scalars, batch_size=7, order=OrderOption.RANDOM, seed=4))
    assert "fastforward-scheduler" not in where
    assert inline == pooled


@pytest.mark.parametrize("cheap_fetch", [True, False], ids=["mapped", "read"])
def test_close_returns_slots_only_after_their_batches_are_written(cheap_fetch: bool) -> None:
    from fastforward.scheduler import Engine, EpochPlan

    events: list[tuple[str, int]] = []
    lock = threading.Lock()
    writing = threading.Event()

    def run_batch(index, indices, data, slot):  # type: ignore[no-untyped-def]
        writing.set()
        time.sleep(0.3)  # still writing into the slot when close() comes
        with lock:
            events.append(("written", slot))
        return (indices,)

    def release(slot: int) -> None:
        with lock:
            events.append(("released", slot))

    slots = iter(range(100))
    plan = EpochPlan(batches=[np.arange(k, k + 1) for k in range(20)],
                     fetch=lambda indices: indices, acquire_slot=lambda: next(slots),
                     release_slot=release, run_batch=run_batch, batches_ahead=3,
                     fetch_is_cheap=cheap_fetch)
    engine = Engine(plan)
    # close() while a batch is being written, however slow the machine is to start one
    assert writing.wait(30)
    closer = threading.Thread(target=engine.close)
    closer.start()
    with pytest.raises(StopIteration):  # woken by the other thread's close() ...
        engine.next_batch()
    # ... and back only once everything stopped: no slot given back unwritten
    written = {slot for what, slot in events if what == "written"}
    released = [slot for what, slot in events if what == "released"]
    assert released
    assert set(released) <= written
    for slot in released:
        assert events.index(("written", slot)) < events.index(("released", slot))
    closer.join()
    assert not engine.is_running


def test_filter_keeps_the_samples_that_satisfy_the_condition(scalars: Path) -> None:
    # FFCV's Loader.filter, but sample numbers of `indices` (not positions) are kept
    subset = np.arange(599, 99, -1)  # samples 599..100, in that order
    loader = Loader(scalars, 16, num_workers=2, indices=subset, drop_last=False,
                    order=OrderOption.SEQUENTIAL, seed=3,
                    pipelines={"index": [IntDecoder()], "value": [FloatDecoder()]})
    odd = loader.filter("index", lambda sample: int(sample[0]) % 2 == 1)
    assert odd.indices.tolist() == [i for i in subset.tolist() if i % 2 == 1]
    assert (odd.batch_size, odd.seed, odd.drop_last) == (16, 3, False)
    assert [int(i) for index, _ in odd for i in index.ravel()] == odd.indices.tolist()
    negative = loader.filter("value", lambda sample: float(sample[0]) < 0)
    assert negative.indices.tolist() == [i for i in subset.tolist() if np.sin(i) < 0]
    with pytest.raises(ValueError, match="not a field"):
        loader.filter("label", lambda sample: True)
    for made in (odd, negative, loader):
        made.close()


def test_filter_of_a_loader_with_order_options(scalars: Path) -> None:
    """The filter's own pass reads in SEQUENTIAL order, which takes no options:
    a loader given order_kwargs failed to filter ("Sequential takes no options")."""
    class Every(TraversalOrder):
        def __init__(self, loader: Loader, step: int = 1) -> None:
            super().__init__(loader)
            self.step = step

        def sample_order(self, epoch: int) -> np.ndarray:
            return self.indices[:: self.step]

    with index_loader(scalars, batch_size=16, order=Every, order_kwargs={"step": 3},
                      drop_last=False) as loader, \
            loader.filter("index", lambda sample: int(sample[0]) % 2 == 0) as even:
        assert even.indices.tolist() == list(range(0, 600, 2))
        assert collect(even) == list(range(0, 600, 6))  # the filtered loader keeps its order


def test_filter_uses_the_default_decoder_of_a_field_without_a_pipeline(scalars: Path) -> None:
    pytest.importorskip("torch", reason="a default pipeline ends in ToTensor()")
    loader = Loader(scalars, 32, num_workers=2, pipelines={"index": [IntDecoder()]})
    small = loader.filter("value", lambda sample: float(sample[0]) > 0.99)
    assert small.indices.tolist() == [i for i in range(600) if np.sin(i) > 0.99]
    small.close()
    loader.close()


def test_a_batch_is_named_by_its_first_and_last_samples() -> None:
    """In a shuffled order they are not a span: "235, …, 120", not "235…120"."""
    from fastforward.errors import listed

    assert listed(np.array([235, 3, 7, 120])) == "235, …, 120"
    assert listed(np.array([5, 9])) == "5, 9"
    assert listed(np.array([5])) == "5"
    assert listed(np.array([], np.int64)) == "none"


@pytest.mark.parametrize("where", ["no thread to start",
                                   *(f"Ctrl-C in wait {n}" for n in range(1, 7))])
def test_an_epoch_that_fails_to_start_leaves_no_thread(scalars: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       where: str) -> None:
    """An epoch's engine starts its pools' threads, then its scheduler thread, and
    waits for each (six waits with batches_ahead=3). When a thread cannot start
    (the process is out of threads), or Ctrl-C lands in any of those waits, the
    caller never gets the engine to close: it stops what it started itself (the
    autouse fixture checks that no fastforward thread is left)."""
    if where == "no thread to start":
        start = threading.Thread.start

        def refuse(thread: threading.Thread) -> None:
            if thread.name == "fastforward-scheduler":
                raise RuntimeError("can't start new thread")
            start(thread)

        monkeypatch.setattr(threading.Thread, "start", refuse)
        error: type[BaseException] = RuntimeError
    else:
        nth = int(where.rsplit(" ", 1)[1])

        class Interrupted(threading.Event):
            """The main thread's nth wait without a timeout is interrupted (as
            Thread.start waits)."""

            waits = 0

            def wait(self, timeout: float | None = None) -> bool:
                if (timeout is None and Interrupted.waits < nth
                        and threading.current_thread() is threading.main_thread()):
                    Interrupted.waits += 1
                    if Interrupted.waits == nth:
                        raise KeyboardInterrupt
                return super().wait(timeout)

        monkeypatch.setattr(threading, "Event", Interrupted)
        error = KeyboardInterrupt
    loader = index_loader(scalars, batch_size=4)
    with pytest.raises(error):
        iter(loader)
    monkeypatch.undo()
    assert len(collect(loader)) == len(loader) * 4  # the next epoch runs


HUGE_JPEG_SCRIPT = """
import resource, sys
import numpy as np
from fastforward.fields import RGBImageField
from fastforward.fields.decoders import CenterCropRGBImageDecoder
from fastforward.loader import Loader
from fastforward.reader import Reader
from fastforward.types import metadata_offset
from fastforward.writer import DatasetWriter

if __name__ == "__main__":
    path, side = sys.argv[1], 65000
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg")}, num_workers=1,
                  progress=False, checksums=False).from_indexed_dataset(
        [(np.full((32, 32, 3), 128, np.uint8),)] * 3)
    with Reader(path) as reader:  # sample 1: its JPEG's SOF and its metadata say side²
        pointers = reader.metadata["f0"]["data_ptr"]
        ptr, size = int(pointers[1]), int(reader.payload_sizes(pointers[[1]], np.array([1]))[0])
        row = reader.metadata_type
        column = metadata_offset(1) + row.itemsize + row.fields["f0"][1]
        inside = row.fields["f0"][0].fields
    with open(path, "r+b") as f:
        f.seek(ptr)
        blob = bytearray(f.read(size))
        sof = blob.index(b"\\xff\\xc0")
        blob[sof + 5 : sof + 9] = side.to_bytes(2, "big") * 2
        f.seek(ptr)
        f.write(blob)
        for name in ("height", "width"):
            f.seek(column + inside[name][1])
            f.write(np.uint16(side).tobytes())
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) for line in status if line.startswith("VmSize"))
    limit = (size << 10) + (256 << 20)  # not the 4 GB a 65000² window at 1/8 takes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        with Loader(path, 3, num_workers=1,
                    pipelines={"image": [CenterCropRGBImageDecoder((8, 8), 1.0)]}) as loader:
            list(loader)
        print("no error")
    except MemoryError as exc:
        print("MemoryError", exc)
"""


def test_a_jpeg_too_large_for_memory_names_file_sample_and_field(tmp_path: Path) -> None:
    """A tiny JPEG that says 65000×65000 (its metadata too), decoded under an
    address-space limit: libjpeg's allocation failed with a MemoryError naming
    only the sample's place in its range."""
    import subprocess
    import sys

    from fastforward.fields.rgb_image import _region

    if _region is None:
        pytest.skip("built without libjpeg-turbo: simplejpeg decodes")
    script = tmp_path / "huge.py"
    script.write_text(HUGE_JPEG_SCRIPT)
    path = tmp_path / "huge.beton"
    done = subprocess.run([sys.executable, str(script), str(path)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"MemoryError {path}: sample 1, field 'image': no memory to "
                                   "decode its JPEG (65000×65000)")



def test_os_cache_false_reads_only_the_fields_decoded(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A field left out (``None``), or one a filter does not look at, is not read:
    with thread workers every field's payloads were read and held. (Reads of the
    fields decoded bridge no gap larger than their payloads and 4 KiB.)"""
    path = tmp_path / "two.beton"
    DatasetWriter(path, {"big": BytesField(), "small": BytesField(), "label": IntField()},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(bytes([i]) * 100_000, bytes([i]) * 10, i) for i in range(64)])
    read = counted_reads(monkeypatch)
    loader = Loader(path, 16, os_cache=False, worker_type="thread",
                    pipelines={"big": None, "small": [BytesDecoder()], "label": None})
    assert [len(batch[0][0]) for batch in loader] == [10] * 4
    assert 0 < sum(read) < 64 * 100
    read.clear()
    kept = Loader(path, 16, os_cache=False, worker_type="thread", pipelines={
        "big": None, "small": None, "label": [IntDecoder()]}).filter(
        "label", lambda label: label % 2 == 0)
    assert len(kept.indices) == 32
    assert sum(read) == 0  # labels live in the metadata: no payload to read
    assert [len(batch[0]) for batch in Loader(path, 16, os_cache=False, pipelines={
        "big": None, "small": None, "label": [IntDecoder()]})] == [16] * 4
    assert sum(read) == 0


def test_a_state_taken_while_an_epoch_starts_resumes_that_epoch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state_dict() from another thread (a checkpoint thread) while iter() started
    epoch k said epoch k + 1: resumed from it, epoch k was skipped whole."""
    from fastforward.loader import loader as loader_module

    path = tmp_path / "i.beton"
    DatasetWriter(path, {"i": IntField()}, num_workers=1, progress=False) \
        .from_indexed_dataset(list(range(32)))

    def make() -> Loader:
        return Loader(path, 8, order=OrderOption.RANDOM, seed=5,
                      pipelines={"i": [IntDecoder()]})

    loader = make()
    during: list[dict] = []
    engine = loader_module.Engine

    def starting(plan: object) -> object:  # the moment the epoch's threads start
        during.append(loader.state_dict())
        return engine(plan)

    monkeypatch.setattr(loader_module, "Engine", starting)
    expected = [batch.ravel().tolist() for (batch,) in loader]  # epoch 0
    assert during[0]["epoch"] == 0
    monkeypatch.undo()
    resumed = make()
    resumed.load_state_dict(during[0])
    assert [batch.ravel().tolist() for (batch,) in resumed] == expected

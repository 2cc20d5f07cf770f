"""The loader with torch: FFCV's Quick Start pipeline and the behaviours FFCV's
own test suite checks (array, JSON and custom fields, custom operations)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is an optional extra")

from fastforward.fields import (  # noqa: E402 - after the skip
    FloatField,
    IntField,
    JSONField,
    NDArrayField,
    RGBImageField,
    TorchTensorField,
)
from fastforward.fields.decoders import (  # noqa: E402
    BytesDecoder,
    CenterCropRGBImageDecoder,
    FloatDecoder,
    IntDecoder,
    NDArrayDecoder,
    RandomResizedCropRGBImageDecoder,
    SimpleRGBImageDecoder,
)
from fastforward.loader import Loader, OrderOption  # noqa: E402
from fastforward.pipeline import Operation  # noqa: E402
from fastforward.pipeline.allocation_query import AllocationQuery  # noqa: E402
from fastforward.transforms import (  # noqa: E402
    Convert,
    NormalizeImage,
    RandomHorizontalFlip,
    Squeeze,
    ToDevice,
    ToTensor,
    ToTorchImage,
)
from fastforward.writer import DatasetWriter  # noqa: E402


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray]) -> Path:
    path = tmp_path_factory.mktemp("torch") / "train.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", max_resolution=128),
                         "label": IntField()}, num_workers=2, progress=False) \
        .from_indexed_dataset([(images[i % 20], i % 10) for i in range(96)])
    return path


def test_quick_start(train_file: Path) -> None:
    device = torch.device("cpu")
    loader = Loader(train_file, batch_size=16, num_workers=2, order=OrderOption.QUASI_RANDOM,
                    seed=0, pipelines={
                        "image": [RandomResizedCropRGBImageDecoder((64, 64)), ToTensor(),
                                  ToDevice(device), ToTorchImage()],
                        "label": [IntDecoder(), ToTensor(), ToDevice(device)],
                    })
    count = 0
    for images, labels in loader:
        assert isinstance(images, torch.Tensor)
        assert images.shape == (16, 3, 64, 64)
        assert images.dtype == torch.uint8
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert labels.shape == (16, 1)
        count += 1
    assert count == len(loader) == 6


def test_default_pipelines_are_decoder_and_to_tensor(train_file: Path) -> None:
    loader = Loader(train_file, 8, pipelines={"image": [CenterCropRGBImageDecoder((32, 32), 1.0),
                                                        ToTensor()]})
    images, labels = next(iter(loader))
    assert isinstance(labels, torch.Tensor)
    assert labels.dtype == torch.int64
    assert labels.shape == (8, 1)
    assert images.shape == (8, 32, 32, 3)


def test_standard_training_pipeline(train_file: Path) -> None:
    mean, std = np.array([125.0, 120.0, 110.0]), np.array([60.0, 58.0, 59.0])
    loader = Loader(train_file, 16, seed=1, order=OrderOption.RANDOM, pipelines={
        "image": [RandomResizedCropRGBImageDecoder((48, 48)), RandomHorizontalFlip(), ToTensor(),
                  ToTorchImage(), Convert(torch.float16)],
        "label": [IntDecoder(), ToTensor(), Squeeze()],
        "normalized": None,
    })
    images, labels = next(iter(loader))
    assert images.dtype == torch.float16
    assert images.shape == (16, 3, 48, 48)
    assert labels.shape == (16,)
    normalize = Loader(train_file, 16, seed=1, order=OrderOption.RANDOM, pipelines={
        "image": [RandomResizedCropRGBImageDecoder((48, 48)), RandomHorizontalFlip(), ToTensor(),
                  ToTorchImage(), NormalizeImage(mean, std, np.float32)], "label": None})
    (normalized,) = next(iter(normalize))
    expected = (images.float() - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalized.float(), expected.float(), atol=1e-3, rtol=1e-3)


def test_held_label_tensors_stay_intact(train_file: Path) -> None:
    """FFCV #231, with tensors: labels appended across batches kept their values."""
    loader = Loader(train_file, 4, batches_ahead=1, pipelines={
        "image": None, "label": [IntDecoder(), ToTensor(), Squeeze()]})
    kept = [labels for (labels,) in loader]
    assert torch.cat(kept).tolist() == [i % 10 for i in range(96)]


def test_array_and_tensor_fields(tmp_path: Path) -> None:
    """FFCV's test_array_field: 3 array fields per sample land in one page."""
    path = tmp_path / "arrays.beton"
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal(2048).astype("f4"), torch.arange(6, dtype=torch.int32) + i,
             rng.standard_normal(2048).astype("f4")) for i in range(256)]
    DatasetWriter(path, {"a": NDArrayField(np.dtype("f4"), (2048,)),
                         "t": TorchTensorField(torch.int32, (6,)),
                         "b": NDArrayField(np.dtype("f4"), (2048,))},
                  num_workers=2, progress=False).from_indexed_dataset(data)
    loader = Loader(path, 32, pipelines={"a": [NDArrayDecoder(), ToTensor()],
                                         "t": [NDArrayDecoder(), ToTensor()],
                                         "b": [NDArrayDecoder(), ToTensor()]})
    position = 0
    for a, t, b in loader:
        for k in range(len(a)):
            np.testing.assert_array_equal(a[k].numpy(), data[position][0])
            assert t[k].tolist() == (data[position][1]).tolist()
            np.testing.assert_array_equal(b[k].numpy(), data[position][2])
            position += 1
    assert position == 256


def test_arrays_of_another_byte_order_become_tensors(tmp_path: Path) -> None:
    """NDArrayField('>f4') was written and read, but the default pipeline's
    ToTensor failed (torch refuses another byte order): swapped to the native one."""
    path = tmp_path / "big.beton"
    values = [np.array([i + 0.5, -i, 1e30], ">f4") for i in range(10)]
    DatasetWriter(path, {"x": NDArrayField(np.dtype(">f4"), (3,))}, num_workers=1,
                  progress=False).from_indexed_dataset(values)
    with Loader(path, 4, drop_last=False) as loader:
        got = np.concatenate([x.numpy() for (x,) in loader])
    assert got.dtype == np.float32
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, np.stack(values))


def test_json_field(tmp_path: Path) -> None:
    path = tmp_path / "json.beton"
    values = [{"id": i, "name": "x" * (i % 7), "nested": {"v": [i, None]}} for i in range(50)]
    DatasetWriter(path, {"meta": JSONField(), "i": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset([(v, i) for i, v in enumerate(values)])
    loader = Loader(path, 10, pipelines={"meta": [BytesDecoder()], "i": None})
    decoded = [v for (batch,) in loader for v in JSONField.unpack(batch)]
    assert decoded == values
    loader = Loader(path, 10, pipelines={"meta": [BytesDecoder(), ToTensor()], "i": None})
    (first,) = next(iter(loader))
    assert JSONField.unpack(first) == values[:10]
    assert json.dumps(values[0])
    # every form: a tensor without lengths (read up to the NUL), the (data, lengths)
    # pair, one row (FFCV returns its one value)
    plain = first.clone()
    assert not hasattr(plain, "lengths")
    assert JSONField.unpack(plain) == values[:10]
    assert JSONField.unpack((first.numpy(), first.lengths.numpy())) == values[:10]
    assert JSONField.unpack(first[3]) == values[3]


class StringField(NDArrayField):
    def __init__(self) -> None:
        super().__init__(np.dtype("u1"), (8,))

    @staticmethod
    def from_binary(binary: np.ndarray) -> StringField:
        return StringField()

    def encode(self, destination, field, malloc) -> None:  # type: ignore[no-untyped-def]
        data = np.zeros(8, np.uint8)
        data[: len(field)] = np.frombuffer(field.encode(), np.uint8)
        super().encode(destination, data, malloc)


def test_custom_field(tmp_path: Path) -> None:
    path = tmp_path / "custom.beton"
    DatasetWriter(path, {"s": StringField()}, num_workers=1, progress=False) \
        .from_indexed_dataset([f"s{i}" for i in range(16)])
    with pytest.raises(ValueError, match="custom_fields"):
        Loader(path, 4)
    loader = Loader(path, 4, custom_fields={"s": StringField})
    (batch,) = next(iter(loader))
    assert bytes(batch[2].numpy()).rstrip(b"\0") == b"s2"


class Doubler(Operation):
    """FFCV's test_basic_pipeline custom operation, in plain Python."""

    def apply(self, batch: np.ndarray, destination: None, context) -> np.ndarray:  # type: ignore[no-untyped-def]
        return batch * 2


class PerSampleNegate(Operation):
    per_sample = True

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        return -sample


def test_custom_operations(tmp_path: Path) -> None:
    path = tmp_path / "floats.beton"
    DatasetWriter(path, {"f": FloatField()}, num_workers=1, progress=False) \
        .from_indexed_dataset([float(i) for i in range(20)])
    loader = Loader(path, 5, pipelines={"f": [FloatDecoder(), Doubler(), PerSampleNegate(),
                                              ToTensor()]})
    (first,) = next(iter(loader))
    assert first.ravel().tolist() == [0.0, -2.0, -4.0, -6.0, -8.0]


class PerSampleNegateIntoItsBuffer(Operation):
    """Per sample on tensors, with a buffer; returns a new tensor (or a view of the
    buffer), which the loader copies into the buffer."""

    per_sample = True

    def __init__(self, view: bool) -> None:
        super().__init__()
        self.view = view

    def declare_state_and_memory(self, previous_state):  # type: ignore[no-untyped-def]
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        if self.view:  # written reversed, returned as a reversed view of the buffer
            destination[:] = -sample.flip(0)
            return destination.flip(0)
        destination = -sample
        return destination


@pytest.mark.parametrize("view", [False, True])
def test_a_per_sample_tensor_returned_beside_its_buffer_is_kept(tmp_path: Path,
                                                                view: bool) -> None:
    path = tmp_path / "pairs.beton"
    DatasetWriter(path, {"f": NDArrayField(np.dtype("float32"), (2,))}, num_workers=1,
                  progress=False).from_indexed_dataset(
        [np.array([i, 10 * i], np.float32) for i in range(6)])
    loader = Loader(path, 3, pipelines={"f": [NDArrayDecoder(), ToTensor(),
                                              PerSampleNegateIntoItsBuffer(view)]})
    (first,) = next(iter(loader))
    assert first.tolist() == [[0.0, 0.0], [-1.0, -10.0], [-2.0, -20.0]]


def test_torch_module_in_a_pipeline(train_file: Path) -> None:
    loader = Loader(train_file, 8, pipelines={
        "image": [CenterCropRGBImageDecoder((16, 16), 1.0), ToTensor(), ToTorchImage(),
                  Convert(torch.float32), torch.nn.AvgPool2d(2)], "label": None})
    (batch,) = next(iter(loader))
    assert batch.shape == (8, 3, 8, 8)
    assert batch.dtype == torch.float32


@pytest.mark.parametrize("last", ["convert", "normalize"])
def test_fused_conversion_equals_the_separate_steps(train_file: Path, last: str) -> None:
    from fastforward.pipeline import PipelineSpec

    mean, std = np.array([125.0, 120.0, 110.0]), np.array([60.0, 58.0, 59.0])

    def first_batch(branch: bool) -> torch.Tensor:
        decoder = RandomResizedCropRGBImageDecoder((40, 40))
        final = Convert(torch.float16) if last == "convert" else NormalizeImage(mean, std,
                                                                               np.float16)
        pipelines = {"image": [decoder, RandomHorizontalFlip(), ToTensor(), ToTorchImage(),
                               final], "label": None}
        if branch:  # reading the decoder's output elsewhere turns fusion off
            pipelines["plain"] = PipelineSpec(decoder)
        loader = Loader(train_file, 12, seed=4, pipelines=pipelines)
        assert (loader.pipelines[0].decoder.fused_output is None) is branch
        assert len(loader.pipelines[0].steps) == (2 if not branch else 4)
        return next(iter(loader))[0]

    fused, separate = first_batch(False), first_batch(True)
    assert fused.dtype == separate.dtype == torch.float16
    assert fused.is_contiguous(memory_format=torch.channels_last)
    if last == "convert":
        torch.testing.assert_close(fused, separate, atol=0, rtol=0)
    else:  # float32 arithmetic fused, float64 separate: at most a unit in the last place
        torch.testing.assert_close(fused, separate, atol=2e-3, rtol=1e-3)


class MirrorView(Operation):
    """A view that relabels (negative strides): the loader does not wait before it."""

    reads_input = False

    def apply(self, batch: np.ndarray, destination: None, context) -> np.ndarray:  # type: ignore[no-untyped-def]
        return batch[:, ::-1]


def test_to_tensor_waits_for_copies_before_copying(tmp_path: Path) -> None:
    """ToTensor shares a writable batch, but copies a mirrored view: it waits for
    the copy thread first, or it would take rows that are still being written."""
    path = tmp_path / "arrays.beton"
    rows = np.random.default_rng(0).integers(0, 255, (512, 4096), dtype=np.uint8)
    DatasetWriter(path, {"a": NDArrayField(np.dtype("u1"), (4096,))}, num_workers=1,
                  progress=False).from_indexed_dataset([(r,) for r in rows])
    with Loader(path, 256, num_workers=2, pipelines={
            "a": [NDArrayDecoder(), MirrorView(), ToTensor()]}) as loader:
        for _ in range(3):
            got = torch.cat([a for (a,) in loader])
            np.testing.assert_array_equal(got.numpy(), rows[:, ::-1])


def test_an_empty_pipeline_is_the_default_one_as_in_ffcv(tmp_path: Path) -> None:
    """FFCV treats a pipeline with no decoder and no operations (``[]``,
    ``PipelineSpec('label')``) as the default: the field's decoder and ToTensor.
    They gave NumPy arrays."""
    from fastforward.pipeline import PipelineSpec
    from fastforward.writer import DatasetWriter

    path = tmp_path / "labels.beton"
    DatasetWriter(path, {"label": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset([(i,) for i in range(8)])
    for pipelines in ({"label": []}, {"label": PipelineSpec("label")},
                      {"label": None, "again": PipelineSpec("label")}):
        with Loader(path, 4, pipelines=pipelines) as loader:
            (batch,) = next(iter(loader))
        assert isinstance(batch, torch.Tensor), pipelines
        assert batch.view(-1).tolist() == [0, 1, 2, 3]
    with Loader(path, 4, pipelines={"label": [IntDecoder()]}) as loader:
        (batch,) = next(iter(loader))
    assert isinstance(batch, np.ndarray)  # a decoder alone: its arrays, as in FFCV


# -- where a tensor image keeps its channels -------------------------------------------


def coordinate_images(height: int, width: int, count: int = 6) -> list[np.ndarray]:
    """Images whose red is the column, green the row, blue the sample: every
    pixel says where it came from."""
    rows, cols = np.mgrid[0:height, 0:width]
    return [np.stack([cols * 9, rows * 40, np.full_like(rows, 30 * k)], axis=-1).astype(np.uint8)
            for k in range(count)]


def layout_ops() -> dict[str, Any]:
    from fastforward.transforms import Cutout, TrivialAugmentWide

    return {"flip": lambda: RandomHorizontalFlip(1.0), "cutout": lambda: Cutout(1, (7, 8, 9)),
            "normalize": lambda: NormalizeImage(np.array([10.0, 100.0, 150.0]),
                                                np.array([2.0, 3.0, 4.0]), np.float32),
            "policy": TrivialAugmentWide}


@pytest.mark.parametrize("height", [3, 1, 5])
@pytest.mark.parametrize("op", sorted(layout_ops()))
def test_a_tensor_image_of_height_3_or_1_is_read_as_hwc(tmp_path: Path, height: int,
                                                         op: str) -> None:
    """(H, W, 3) tensors after ToTensor whose H is 3 or 1 were taken for (C, H, W):
    a flip reversed the channels, NormalizeImage took a row's mean per row, a
    policy ran on the wrong pixels, and height 1 was refused. The pipeline's
    state says where the channels are (State.channels_first); the torch path
    gives what the NumPy path gives at the same position."""
    path = tmp_path / "coords.beton"
    images = coordinate_images(height, 7)
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(image, k) for k, image in enumerate(images)])
    make = layout_ops()[op]

    def run(first: Operation, last: list) -> np.ndarray:
        loader = Loader(path, 6, seed=3, pipelines={
            "image": [SimpleRGBImageDecoder(), first, make(), *last], "label": [IntDecoder()]})
        (batch, _), = list(loader)
        return batch.numpy() if hasattr(batch, "numpy") else batch

    # the NumPy path, with a no-op at the torch path's ToTensor position
    want = run(RandomHorizontalFlip(0.0), [ToTensor()])
    got = run(ToTensor(), [])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    if op == "flip":  # and what the NumPy path gives is right
        np.testing.assert_array_equal(want, np.stack(images)[:, :, ::-1])
    if op in ("flip", "normalize"):  # draws nothing: the same one position later
        # channels first after ToTorchImage: a (3, 3, 7) sample is (C, H, W) there
        (batch, _), = list(Loader(path, 6, seed=3, pipelines={
            "image": [SimpleRGBImageDecoder(), ToTensor(), ToTorchImage(), make()],
            "label": [IntDecoder()]}))
        np.testing.assert_allclose(batch.permute(0, 2, 3, 1).numpy(), got, rtol=1e-6)


def test_an_operation_that_reshapes_without_saying_leaves_the_layout_unknown() -> None:
    """The compiler forgets State.channels_first after a custom operation that
    changes the shape and keeps the flag (it may have moved the channels), so
    the operations after it guess from the sizes, as before the flag."""
    from dataclasses import replace

    from fastforward.pipeline import AllocationQuery, State
    from fastforward.pipeline.plan import _declare

    class Permute(Operation):
        def declare_state_and_memory(self, previous_state: State) -> tuple:
            h, w, c = previous_state.shape
            return (replace(previous_state, shape=(c, h, w)),
                    AllocationQuery((c, h, w), previous_state.dtype))

        def apply(self, batch: Any, destination: Any, context: Any) -> Any:
            return batch

    hwc = State(jit_mode=False, shape=(3, 5, 3), channels_first=False)
    assert _declare(Permute(), hwc, "x")[0].channels_first is None
    assert _declare(ToTorchImage(), hwc, "x")[0].channels_first is True  # says so
    assert _declare(Convert(torch.float16), hwc, "x")[0].channels_first is False  # same shape


def test_one_flip_object_in_two_outputs_of_two_layouts(tmp_path: Path) -> None:
    """One RandomHorizontalFlip after ToTensor in one output, after ToTorchImage
    in another: the loader keeps one copy of it, which kept the layout the last
    pipeline declared and refused (or mis-flipped) the other's samples."""
    from fastforward.pipeline import PipelineSpec

    path = tmp_path / "coords.beton"
    images = coordinate_images(24, 24, 4)
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(image, k) for k, image in enumerate(images)])
    flip = RandomHorizontalFlip(1.0)
    for width in (24, 12):
        def decoder(width: int = width) -> CenterCropRGBImageDecoder:
            return CenterCropRGBImageDecoder((24, width), 1.0)

        loader = Loader(path, 4, pipelines={
            "image": [decoder(), ToTensor()], "label": None,
            "hwc": PipelineSpec("image", decoder(), [ToTensor(), flip]),
            "chw": PipelineSpec("image", decoder(), [ToTensor(), ToTorchImage(), flip])})
        (plain, hwc, chw), = list(loader)
        np.testing.assert_array_equal(hwc.numpy(), plain.numpy()[:, :, ::-1])
        np.testing.assert_array_equal(chw.permute(0, 2, 3, 1).numpy(), plain.numpy()[:, :, ::-1])


def test_one_pipeline_list_for_two_fields_as_in_ffcv(tmp_path: Path,
                                                     images: list[np.ndarray]) -> None:
    """FFCV's ``{'fine': label_pipeline, 'coarse': label_pipeline}``, and one list of
    operations after two decoders of different output sizes: each field gets what a
    list of its own gives (the shared operations fused and declared per field)."""
    path = tmp_path / "pairs.beton"
    DatasetWriter(path, {"image": RGBImageField(max_resolution=96), "fine": IntField(),
                         "coarse": IntField()}, num_workers=1, progress=False) \
        .from_indexed_dataset([(images[i % len(images)], i, i // 4) for i in range(20)])
    from fastforward.pipeline import PipelineSpec

    def tail() -> list[Operation]:
        return [ToTensor(), ToTorchImage(),
                NormalizeImage(np.array([120.0, 110, 100]), np.array([60.0, 55, 50]),
                               np.float16)]

    def pipelines(labels: list[Any], labels2: list[Any], ops: list[Any],
                  ops2: list[Any]) -> dict[str, Any]:
        return {"image": [CenterCropRGBImageDecoder((32, 32), 0.9), *ops],
                "small": PipelineSpec("image", CenterCropRGBImageDecoder((16, 24), 0.9),
                                      ops2),
                "fine": labels, "coarse": labels2}

    labels, ops = [IntDecoder(), ToTensor(), Squeeze()], tail()
    shared = Loader(path, 8, pipelines=pipelines(labels, labels, ops, ops))
    separate = Loader(path, 8, pipelines=pipelines(
        [IntDecoder(), ToTensor(), Squeeze()], [IntDecoder(), ToTensor(), Squeeze()],
        tail(), tail()))
    for got, expected in zip(shared, separate, strict=True):
        image, fine, coarse, small = got
        assert image.shape[1:] == (3, 32, 32)
        assert small.shape[1:] == (3, 16, 24)
        assert image.dtype == small.dtype == torch.float16
        torch.testing.assert_close(coarse, fine // 4, rtol=0, atol=0)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

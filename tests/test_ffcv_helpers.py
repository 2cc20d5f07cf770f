"""FFCV's small public helpers that fastforward provides at FFCV's paths."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference

from fastforward.fields import BytesField, FloatField, IntField
from fastforward.fields.basics import BasicDecoder, IntDecoder
from fastforward.fields.rgb_image import encode_jpeg, resizer
from fastforward.libffcv import imdecode, memcpy, read, resize_crop
from fastforward.loader import Loader
from fastforward.memory_managers import OSCacheManager, ProcessCacheManager
from fastforward.pipeline.allocation_query import AllocationQuery, allocate_query
from fastforward.pipeline.compiler import Compiler
from fastforward.reader import Reader
from fastforward.transforms.crop import RANDOM_CROP_UNIFORMS
from fastforward.transforms.utils import fast_crop
from fastforward.utils import s_print
from fastforward.writer import DatasetWriter


class HalfDecoder(BasicDecoder):
    """A BasicDecoder subclass, as FFCV's docstring suggests: another scalar dtype."""

    dtype = np.dtype("<f2")


def test_basic_decoder_subclass(tmp_path: Path) -> None:
    path = tmp_path / "f.beton"
    DatasetWriter(path, {"x": FloatField()}, num_workers=1, progress=False) \
        .from_indexed_dataset([(i / 4,) for i in range(10)])
    (batch,) = next(iter(Loader(path, 10, pipelines={"x": [HalfDecoder()]})))
    assert batch.shape == (10, 1)
    assert batch.dtype == np.float16
    assert batch[:, 0].tolist() == [i / 4 for i in range(10)]


class OldBindDecoder(IntDecoder):
    """Overrides ``bind`` with the five arguments it took before the reader."""

    def bind(self, field, name, index, metadata, fname):  # type: ignore[no-untyped-def,override]
        super().bind(field, name, index, metadata, fname)
        self.bound_with = 5


class NewBindDecoder(IntDecoder):
    def bind(self, field, name, index, metadata, fname, reader=None):  # type: ignore[no-untyped-def]
        super().bind(field, name, index, metadata, fname, reader)
        self.bound_with = 6


@pytest.mark.parametrize("decoder_type", [OldBindDecoder, NewBindDecoder])
def test_bind_overrides_of_either_signature(tmp_path: Path, decoder_type: type) -> None:
    path = tmp_path / "f.beton"
    DatasetWriter(path, {"x": IntField()}, num_workers=1, progress=False) \
        .from_indexed_dataset([(i,) for i in range(10)])
    decoder = decoder_type()
    copy = decoder.runtime_copy()
    with Reader(path) as reader:
        copy.bind_to(reader.handlers["x"], "x", 0, reader.metadata["f0"], str(path), reader)
        assert copy.bound_with == (5 if decoder_type is OldBindDecoder else 6)
        assert copy.reader is reader  # given afterwards to the old signature
    (batch,) = next(iter(Loader(path, 10, pipelines={"x": [decoder]})))
    assert batch[:, 0].tolist() == list(range(10))


def test_allocate_query() -> None:
    buffers = allocate_query(AllocationQuery((3, 2), np.dtype("<i2")), 5, 4)
    assert buffers.shape == (4, 5, 3, 2)
    assert buffers.dtype == np.int16


def test_memcpy_copies_bytes() -> None:
    source = np.random.default_rng(0).uniform(0, 255, (10, 9)).astype(np.float32)
    dest = np.zeros((10, 9), np.float32)
    memcpy(source, dest)
    np.testing.assert_array_equal(source, dest)
    bytes_out = np.zeros(400, np.uint8)
    memcpy(source, bytes_out)  # into a larger byte buffer, from its start
    np.testing.assert_array_equal(bytes_out[:360].view(np.float32), source.ravel())
    with pytest.raises(ValueError, match="C-contiguous"):
        memcpy(source, np.zeros((10, 18), np.float32)[:, ::2])


def test_read_is_pread(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)))
    out = np.zeros(10, np.uint8)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read(fd, out, 100) == 10
    finally:
        os.close(fd)
    assert out.tolist() == list(range(100, 110))


def test_imdecode_gives_the_loaders_pixels(images: list[np.ndarray]) -> None:
    import simplejpeg

    image = images[3]
    data = encode_jpeg(image, 90)
    assert data.dtype == np.uint8
    decoded = np.zeros_like(image)
    assert imdecode(data, decoded, *image.shape[:2]) == 0
    np.testing.assert_array_equal(decoded, simplejpeg.decode_jpeg(data.tobytes(),
                                                                 fastdct=True))
    window = np.zeros((10, 12, 3), np.uint8)
    imdecode(data, window, *image.shape[:2], 10, 12, 5, 4, enable_crop=True, do_flip=True)
    np.testing.assert_array_equal(window, decoded[4:14, 5:17][:, ::-1])


def test_resizer_and_resize_crop(images: list[np.ndarray]) -> None:
    image = images[0]
    small = resizer(image, 16)
    assert max(small.shape[:2]) == 16
    assert resizer(image, 10_000) is image  # never enlarged
    out = np.zeros((8, 8, 3), np.uint8)
    resize_crop(image, 2, 14, 3, 15, out)
    reference_out = reference.crop_resize(image, 2, 3, 12, 12, 8, 8).astype(int)
    assert np.abs(out.astype(int) - reference_out).max() <= 1


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "numba"])
def test_fast_crop_is_the_decoders_sampler(compiled: bool) -> None:
    crop = fast_crop.crop_from_uniforms
    if compiled:
        numba = pytest.importorskip("numba")
        from fastforward.pipeline.compiler import _numba

        _numba()  # registers the helpers

        @numba.njit
        def crop_in_numba(h, w, scale, ratio, u):
            return fast_crop.crop_from_uniforms(h, w, scale, ratio, u)

        crop = crop_in_numba
    rng = np.random.default_rng(7)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 700, 2))
        scale = (float(rng.uniform(0.01, 0.5)), float(rng.uniform(0.5, 1.0)))
        ratio = (float(rng.uniform(0.2, 1.0)), float(rng.uniform(1.0, 5.0)))
        u = rng.random(RANDOM_CROP_UNIFORMS)
        expected = reference.random_crop(h, w, scale, ratio, u)
        assert tuple(crop(h, w, scale, ratio, u)) == expected
    assert fast_crop.get_center_crop(100, 200, 0.875) == (6, 56, 87, 87)
    np.random.seed(0)
    i, j, h, w = fast_crop.get_random_crop(100, 200, (0.08, 1.0), (3 / 4, 4 / 3))
    assert 0 <= i <= 100 - h
    assert 0 <= j <= 200 - w


def test_ffcv_signature_of_get_random_crop() -> None:
    from fastforward.fields.rgb_image import get_random_crop

    np.random.seed(1)
    first = get_random_crop(50, 60, (0.08, 1.0), (3 / 4, 4 / 3))  # FFCV's four arguments
    np.random.seed(1)
    assert get_random_crop(50, 60, (0.08, 1.0), (3 / 4, 4 / 3)) == first


@pytest.mark.parametrize("manager", [OSCacheManager, ProcessCacheManager])
@pytest.mark.parametrize("enabled", [False, True], ids=["python", "compiled"])
def test_memory_managers_ffcv_reader(tmp_path: Path, manager: type, enabled: bool) -> None:
    if enabled:
        pytest.importorskip("numba")
    rng = np.random.default_rng(3)
    blobs = [rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8) for _ in range(80)]
    path = tmp_path / "b.beton"
    DatasetWriter(path, {"i": IntField(), "b": BytesField()}, num_workers=1,
                  progress=False).from_indexed_dataset(list(enumerate(blobs)))
    reader = Reader(path)
    memory = manager(reader)
    Compiler.set_enabled(enabled)
    try:
        read_payload = memory.compile_reader()
        with memory.schedule_epoch(np.array([0, 1])) as context:
            for k in rng.permutation(80)[:30]:
                ptr = reader.metadata["f1"]["ptr"][k]
                np.testing.assert_array_equal(read_payload(ptr, context.state)[: len(blobs[k])],
                                              blobs[k])
    finally:
        Compiler.set_enabled(True)
        memory.close()
        reader.close()


def test_s_print() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        s_print("a", 1)
    assert out.getvalue() == "a 1\n"


def test_ch_dtype_from_numpy() -> None:
    torch = pytest.importorskip("torch")
    from fastforward.transforms.normalize import ch_dtype_from_numpy

    assert ch_dtype_from_numpy(np.float16) == torch.float16


def test_ffcv_api_names_found_by_a_review(tmp_path: Path) -> None:
    """``Reader.file_name``, ``get_handlers(descriptors)``, ``fields.rgb_image``'s
    four-argument ``get_center_crop`` and ``Loader.next_traversal_order()``, as FFCV's."""
    from fastforward.fields.rgb_image import get_center_crop
    from fastforward.loader import OrderOption
    from fastforward.types import get_handlers

    path = tmp_path / "f.beton"
    DatasetWriter(path, {"x": IntField(), "blob": BytesField()}, num_workers=1,
                  progress=False).from_indexed_dataset(
        [(i, np.full(3, i, np.uint8)) for i in range(10)])
    with Reader(path) as reader:
        assert reader.file_name == str(path)
        handlers = get_handlers(reader.field_descriptors)
        assert [type(h).__name__ for h in handlers] == ["IntField", "BytesField"]
    from test_reader import EMPTY_CUSTOM, Blob

    with Reader(EMPTY_CUSTOM, custom_handlers={"blob": Blob, "tail": Blob}) as reader:
        # a custom field's entry is None, as FFCV's (it raised KeyError('blob', 255))
        assert [type(h).__name__ for h in get_handlers(reader.field_descriptors)] == [
            "NoneType", "BytesField", "NoneType"]
        with pytest.raises(KeyError):  # where names are given, it says which has none
            get_handlers(reader.field_descriptors, reader.field_names)
    assert get_center_crop(100, 80, None, 0.875) == (15, 5, 70, 70)  # FFCV's fields.rgb_image
    assert get_center_crop(100, 80, 0.875) == (15, 5, 70, 70)  # its transforms' form
    with pytest.raises(TypeError, match="get_center_crop"):
        get_center_crop(100, 80)
    loader = Loader(path, 4, order=OrderOption.RANDOM, seed=3, drop_last=False,
                    pipelines={"x": [IntDecoder()], "blob": None})
    order = loader.next_traversal_order()
    assert sorted(order.tolist()) == list(range(10))
    first = np.concatenate([x.ravel() for (x,) in loader])
    assert first.tolist() == order.tolist()  # the epoch that followed
    assert loader.next_traversal_order().tolist() != order.tolist()  # the next one's
    # FFCV's attributes of the loader (found by a comparison of the two APIs)
    assert loader.first_traversal_order.tolist() == order.tolist()
    assert loader.field_name_to_f_ix == {"x": 0, "blob": 1}
    specs = loader.pipeline_specs
    assert list(specs) == ["x"]  # 'blob' given None
    assert type(specs["x"].decoder or specs["x"].transforms[0]).__name__ == "IntDecoder"


def test_a_loader_subclass_that_replaces_its_order_runs(tmp_path: Path) -> None:
    """FFCV users' loaders that sample by their own order (an imbalanced sampler's
    ``FfcvSamplerOrder``) replace ``traversal_order`` in ``__init__``, then call
    ``self.generate_code()`` and assign ``self.first_traversal_order``, as FFCV's
    ``Loader()`` does: both raised AttributeError."""
    from fastforward.traversal_order import TraversalOrder

    class EachTwice(TraversalOrder):
        def sample_order(self, epoch: int) -> np.ndarray:
            return np.repeat(np.asarray(self.indices)[::-1], 2)

    class SamplerLoader(Loader):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.traversal_order = EachTwice(self)
            self.generate_code()
            self.first_traversal_order = self.next_traversal_order()

    path = tmp_path / "f.beton"
    DatasetWriter(path, {"x": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset([(i,) for i in range(10)])
    loader = SamplerLoader(path, 4, drop_last=False, pipelines={"x": [IntDecoder()]})
    expected = [9, 9, 8, 8, 7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0]
    assert loader.first_traversal_order.tolist() == expected
    assert len(loader) == 5
    assert np.concatenate([x.ravel() for (x,) in loader]).tolist() == expected

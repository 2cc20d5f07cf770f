"""FFCV's numba operations (``generate_code``) run unchanged, through ``NumbaOperation``.

The operations here are written the way FFCV's documentation teaches: a
function returned by ``generate_code()``, looping with
``Compiler.get_iterator()``, with ``is_parallel`` and ``with_indices``; a
decoder reading payloads with ``self.memory_read``. Each result is compared
with plain NumPy.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fastforward.fields import BytesField, Field, IntField, RGBImageField
from fastforward.fields.base import ARG_TYPE
from fastforward.fields.decoders import (
    IntDecoder,
    RandomResizedCropRGBImageDecoder,
    ResizedCropRGBImageDecoder,
)
from fastforward.loader import Loader, OrderOption
from fastforward.pipeline.allocation_query import AllocationQuery
from fastforward.pipeline.compiler import Compiler, NumbaOperation
from fastforward.pipeline.operation import Operation
from fastforward.pipeline.state import State
from fastforward.writer import DatasetWriter

SIDE = 24


class MirrorRows(Operation):
    """Flip every image upside down, in a buffer of its own (deterministic)."""

    def generate_code(self) -> Callable:
        loop = Compiler.get_iterator()

        def mirror(images, out):
            for i in loop(images.shape[0]):
                for row in range(images.shape[1]):
                    out[i, row] = images[i, images.shape[1] - 1 - row]
            return out

        mirror.is_parallel = True
        return mirror

    def declare_state_and_memory(self, previous_state: State):
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)


class QuarterAtRandom(Operation):
    """Keep the top-left or the bottom-right quarter of each image, by a coin
    drawn with np.random (FFCV's custom transform tutorial, in other words)."""

    def generate_code(self) -> Callable:
        loop = Compiler.get_iterator()

        def quarter(images, out):
            coin = np.random.rand(images.shape[0])
            h, w = images.shape[1] // 2, images.shape[2] // 2
            for i in loop(images.shape[0]):
                if coin[i] < 0.5:
                    out[i] = images[i, :h, :w]
                else:
                    out[i] = images[i, h : 2 * h, w : 2 * w]
            return out

        quarter.is_parallel = True
        return quarter

    def declare_state_and_memory(self, previous_state: State):
        h, w, c = previous_state.shape
        shape = (h // 2, w // 2, c)
        return replace(previous_state, shape=shape), AllocationQuery(shape, previous_state.dtype)


class RelabelSomeSamples(Operation):
    """Give a fixed random new label to about a fifth of the samples, chosen by
    their index (FFCV's transform_with_inds tutorial, in other words): in place,
    no buffer, ``with_indices``."""

    def generate_code(self) -> Callable:
        loop = Compiler.get_iterator()

        def relabel(labels, _, indices):
            for i in loop(labels.shape[0]):
                np.random.seed(indices[i])
                if np.random.rand() < 0.2:
                    labels[i] = 100 + np.random.randint(0, 10)
            return labels

        relabel.is_parallel = True
        relabel.with_indices = True
        return relabel

    def declare_state_and_memory(self, previous_state: State):
        return previous_state, None


class PlusShared(Operation):
    """Add a per-batch value prepared by generate_code_for_shared_state."""

    def declare_shared_memory(self, previous_state: State):
        return AllocationQuery((1,), np.dtype("<i8"))

    def generate_code_for_shared_state(self) -> Callable:
        def init(shared):
            shared[:] = 1000
        return init

    def generate_code(self) -> Callable:
        def plus(labels, out, shared):
            out[:] = labels + shared
            return out
        return plus

    def declare_state_and_memory(self, previous_state: State):
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)


class PlusSharedThroughSuper(PlusShared):
    """FFCV's Operation defines the shared-state hooks: a subclass may call them."""

    def declare_shared_memory(self, previous_state: State):
        assert super(PlusShared, self).declare_shared_memory(previous_state) is None
        assert super(PlusShared, self).generate_code_for_shared_state() is None
        return super().declare_shared_memory(previous_state)


class PackedInts(BytesField):
    """A custom field: a variable-length list of int32 per sample, as bytes."""

    @staticmethod
    def from_binary(binary: np.ndarray) -> PackedInts:
        return PackedInts()

    def encode(self, destination, field, malloc) -> None:  # type: ignore[no-untyped-def]
        super().encode(destination, np.asarray(field, "<i4").view(np.uint8), malloc)

    def get_decoder_class(self) -> type:
        return FirstInts


class FirstInts(Operation):
    """An FFCV-style decoder of PackedInts: the first 4 values, zero-padded,
    copied with FFCV's memcpy from the bytes memory_read finds."""

    def declare_state_and_memory(self, previous_state: State):
        return (replace(previous_state, jit_mode=True, shape=(4,), dtype=np.dtype("<i4")),
                AllocationQuery((4,), np.dtype("<i4")))

    def generate_code(self) -> Callable:
        from fastforward.libffcv import memcpy

        read = self.memory_read
        copy = Compiler.compile(memcpy)
        loop = Compiler.get_iterator()

        def decode(indices, destination, metadata, storage_state):
            for k in loop(indices.shape[0]):
                row = metadata[indices[k]]
                data = read(row["ptr"], storage_state)
                destination[k] = 0
                n = min(data.shape[0], 16)
                copy(data[:n], destination[k].view(np.uint8))
            return destination

        decode.is_parallel = True
        return decode


class ScratchInts(Field):
    """PackedInts written from scratch on FFCV's ``Field`` (which has no
    ``payload_pointers``): a pointer and a size per sample, FirstInts to decode."""

    @property
    def metadata_type(self) -> np.dtype:
        return np.dtype([("ptr", "<u8"), ("size", "<u8")])

    @staticmethod
    def from_binary(binary: np.ndarray) -> ScratchInts:
        return ScratchInts()

    def to_binary(self) -> np.ndarray:
        return np.zeros(1, dtype=ARG_TYPE)[0]

    def encode(self, destination, field, malloc) -> None:  # type: ignore[no-untyped-def]
        data = np.asarray(field, "<i4").view(np.uint8)
        destination["ptr"], buffer = malloc(max(data.size, 1))
        buffer[: data.size] = data
        destination["size"] = data.size

    def get_decoder_class(self) -> type:
        return FirstInts


@pytest.fixture(autouse=True)
def compiler_defaults() -> Iterator[None]:
    """Every test starts from FFCV's defaults and leaves them so."""
    yield
    Compiler.set_enabled(True)
    Compiler.num_threads = 1


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray]) -> Path:
    """40 real photographs, raw, all SIDE × SIDE, with labels 0..39."""
    from fastforward.fields.rgb_image import resize_area

    path = tmp_path_factory.mktemp("numba") / "photos.beton"
    data = [(resize_area(images[i % len(images)], SIDE, SIDE), i) for i in range(40)]
    DatasetWriter(path, {"image": RGBImageField(), "label": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset(data)
    return path


@pytest.fixture(scope="module")
def packed_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[int]]]:
    rng = np.random.default_rng(5)
    values = [rng.integers(-1000, 1000, int(rng.integers(0, 9))).tolist() for _ in range(30)]
    path = tmp_path_factory.mktemp("numba") / "packed.beton"
    DatasetWriter(path, {"ints": PackedInts(), "i": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset([(v, i) for i, v in enumerate(values)])
    return path, values


def image_loader(path: Path, op: Operation, **kw) -> Loader:
    from fastforward.fields.decoders import SimpleRGBImageDecoder

    kw.setdefault("num_workers", 2)
    return Loader(path, 8, pipelines={"image": [SimpleRGBImageDecoder(), op],
                                      "label": [IntDecoder()]}, **kw)


def test_a_transform_compares_with_numpy(photo_file: Path) -> None:
    pytest.importorskip("numba")
    from fastforward.fields.decoders import SimpleRGBImageDecoder

    plain = Loader(photo_file, 8, pipelines={"image": [SimpleRGBImageDecoder()],
                                             "label": None})
    loader = image_loader(photo_file, MirrorRows())
    step = loader.pipelines[0].steps[0].op
    assert isinstance(step, NumbaOperation)
    assert step.jit
    assert not step.numba_parallel  # one thread: range, compiled serially
    for (images, labels), (reference,) in zip(loader, plain, strict=True):
        np.testing.assert_array_equal(images, reference[:, ::-1])
        assert labels.shape == (8, 1)


def test_compiled_once_before_the_first_batch(photo_file: Path) -> None:
    pytest.importorskip("numba")
    loader = image_loader(photo_file, MirrorRows())
    step = loader.pipelines[0].steps[0].op
    assert step.compile_seconds > 0
    assert len(step._fn.signatures) == 1  # compiled at Loader(), for the declared types
    for _ in range(2):
        for _ in loader:
            pass
    assert len(step._fn.signatures) == 1  # no compilation after that


@pytest.mark.parametrize("threads", [1, 2], ids=["serial", "parallel"])
def test_random_draws_are_reproducible(photo_file: Path, threads: int) -> None:
    pytest.importorskip("numba")
    Compiler.set_num_threads(threads)

    def epoch(seed: int, workers: int) -> list[np.ndarray]:
        loader = image_loader(photo_file, QuarterAtRandom(), seed=seed, num_workers=workers,
                              order=OrderOption.RANDOM)
        assert loader.pipelines[0].steps[0].op.numba_parallel == (threads > 1)
        return [images.copy() for images, _ in loader]

    first = epoch(3, 1)
    assert first[0].shape == (8, SIDE // 2, SIDE // 2, 3)
    if threads == 1:  # numba's generator, seeded per call by the loader
        assert all((a == b).all() for a, b in zip(first, epoch(3, 2), strict=True))
        assert any((a != b).any() for a, b in zip(first, epoch(4, 1), strict=True))
    # each image is one of its two quarters, whichever thread drew the coin
    from fastforward.fields.decoders import SimpleRGBImageDecoder

    full = {int(label): image for images, labels in Loader(
        photo_file, 8, pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
        for image, label in zip(images, labels[:, 0], strict=True)}
    loader = image_loader(photo_file, QuarterAtRandom(), seed=3)
    half = SIDE // 2
    for images, labels in loader:
        for image, label in zip(images, labels[:, 0], strict=True):
            source = full[int(label)]
            assert ((image == source[:half, :half]).all()
                    or (image == source[half:, half:]).all())


def test_with_indices_in_place(photo_file: Path) -> None:
    pytest.importorskip("numba")

    def labels(order: OrderOption) -> dict[int, int]:
        loader = Loader(photo_file, 8, order=order, seed=0, pipelines={
            "image": None, "label": [IntDecoder(), RelabelSomeSamples()]})
        out = {}
        for (batch,) in loader:
            assert batch.shape == (8, 1)
            out.update({k: int(v) for k, v in zip(range(len(out), len(out) + 8),
                                                   batch[:, 0], strict=True)})
        return out

    by_position = labels(OrderOption.SEQUENTIAL)
    changed = {i for i, v in by_position.items() if v != i}
    assert changed  # about a fifth of 40
    assert all(100 <= by_position[i] < 110 for i in changed)

    # the labels follow the index (numba's generator seeded by it), whatever the order
    import numba

    @numba.njit
    def draw(i):
        np.random.seed(i)
        return (100 + np.random.randint(0, 10)) if np.random.rand() < 0.2 else -1

    expected = {i: i if draw(np.uint64(i)) < 0 else draw(np.uint64(i)) for i in range(40)}
    assert by_position == expected
    assert labels(OrderOption.RANDOM) != by_position  # positions differ...
    loader = Loader(photo_file, 8, order=OrderOption.RANDOM, seed=0, pipelines={
        "image": None, "label": [IntDecoder(), RelabelSomeSamples()]})
    indices = loader.traversal_order.sample_order(0)
    got = [int(v) for (b,) in loader for v in b[:, 0]]
    assert got == [expected[int(i)] for i in indices[: len(got)]]  # ...values do not


@pytest.mark.parametrize("op", [PlusShared, PlusSharedThroughSuper], ids=["own", "super"])
def test_shared_state(photo_file: Path, op: type[Operation]) -> None:
    pytest.importorskip("numba")
    loader = Loader(photo_file, 8, pipelines={"image": None,
                                              "label": [IntDecoder(), op()]})
    assert [int(v) for (b,) in loader for v in b[:, 0]] == [1000 + i for i in range(40)]


@pytest.mark.parametrize("os_cache", [True, False], ids=["os-cache", "process-cache"])
def test_a_numba_decoder_reads_payloads(packed_file: tuple[Path, list[list[int]]],
                                        os_cache: bool) -> None:
    pytest.importorskip("numba")
    path, values = packed_file
    loader = Loader(path, 5, os_cache=os_cache, order=OrderOption.RANDOM, seed=2,
                    custom_fields={"ints": PackedInts},
                    pipelines={"ints": [FirstInts()], "i": [IntDecoder()]})
    assert isinstance(loader.pipelines[0].decoder, NumbaOperation)
    seen = 0
    for ints, index in loader:
        for row, i in zip(ints, index[:, 0], strict=True):
            expected = (values[i] + [0] * 4)[:4]
            assert row.tolist() == expected
            seen += 1
    assert seen == 30
    # the field's default decoder is the FFCV one too
    default = Loader(path, 5, custom_fields={"ints": PackedInts}, pipelines={"i": None})
    assert isinstance(default.pipelines[0].decoder, NumbaOperation)


@pytest.mark.parametrize("compiled", [True, False], ids=["numba", "python"])
@pytest.mark.parametrize("os_cache", [True, False], ids=["os-cache", "process-cache"])
def test_a_field_without_payload_pointers_is_read_through_memory_read(
        tmp_path: Path, compiled: bool, os_cache: bool) -> None:
    """FFCV's Field declares no payload pointers, so the loader fetches nothing
    for such a field: its decoder finds its samples' payloads through
    memory_read in the whole file, as in FFCV (it found none: IndexError)."""
    if compiled:
        pytest.importorskip("numba")
    Compiler.set_enabled(compiled)
    rng = np.random.default_rng(6)
    values = [rng.integers(-1000, 1000, int(rng.integers(0, 9))).tolist() for _ in range(30)]
    path = tmp_path / "scratch.beton"
    DatasetWriter(path, {"ints": ScratchInts(), "i": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset([(v, i) for i, v in enumerate(values)])
    loader = Loader(path, 7, os_cache=os_cache, order=OrderOption.RANDOM, seed=4, drop_last=False,
                    num_workers=2, custom_fields={"ints": ScratchInts},
                    pipelines={"ints": [FirstInts()], "i": [IntDecoder()]})
    seen = 0
    for ints, index in loader:
        for row, i in zip(ints, index[:, 0], strict=True):
            assert row.tolist() == (values[i] + [0] * 4)[:4]
            seen += 1
    assert seen == 30


def test_disabled_compiler_runs_python(photo_file: Path) -> None:
    Compiler.set_enabled(False)
    loader = image_loader(photo_file, MirrorRows())
    step = loader.pipelines[0].steps[0].op
    assert not step.jit
    from fastforward.fields.decoders import SimpleRGBImageDecoder

    plain = Loader(photo_file, 8, pipelines={"image": [SimpleRGBImageDecoder()],
                                             "label": None})
    for (images, _), (reference,) in zip(loader, plain, strict=True):
        np.testing.assert_array_equal(images, reference[:, ::-1])


def test_without_numba_loader_says_what_to_install(photo_file: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numba", None)  # as if numba were not installed
    with pytest.raises(ImportError, match=r"MirrorRows .*pip install numba, or pip install "
                                          r"'\.\[numba\]'.*apply\(self, batch, destination, "
                                          r"context\)"):
        image_loader(photo_file, MirrorRows())


class PythonUpsideDown(Operation):
    """An FFCV operation that declares ``jit_mode=False``: plain Python on NumPy
    batches (what FFCV users write for PIL or cv2 code), before ``ToTensor``."""

    def generate_code(self) -> Callable:
        def upside_down(images, out):
            flipped = {i: image[::-1] for i, image in enumerate(images)}  # not numba
            for i, image in flipped.items():
                out[i] = image
            return out
        return upside_down

    def declare_state_and_memory(self, previous_state: State):
        return (replace(previous_state, jit_mode=False),
                AllocationQuery(previous_state.shape, previous_state.dtype))


@pytest.mark.parametrize("numba", ["installed", "missing"])
def test_a_python_operation_on_numpy_before_to_tensor(photo_file: Path, numba: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """FFCV runs it as Python and ToTensor takes its NumPy batches; fastforward
    refused it (ToTensor said it got torch tensors). It needs no numba."""
    torch = pytest.importorskip("torch")
    from fastforward.fields.decoders import SimpleRGBImageDecoder
    from fastforward.transforms import ToTensor, ToTorchImage

    if numba == "missing":
        monkeypatch.setitem(sys.modules, "numba", None)
    loader = Loader(photo_file, 8, pipelines={
        "image": [SimpleRGBImageDecoder(), PythonUpsideDown(), ToTensor(), ToTorchImage()],
        "label": None})
    assert not loader.pipelines[0].steps[0].op.jit
    plain = Loader(photo_file, 8, pipelines={"image": [SimpleRGBImageDecoder()],
                                             "label": None})
    for (images,), (reference,) in zip(loader, plain, strict=True):
        assert isinstance(images, torch.Tensor)
        expected = torch.from_numpy(np.ascontiguousarray(reference[:, ::-1]))
        torch.testing.assert_close(images, expected.permute(0, 3, 1, 2), rtol=0, atol=0)


class InheritsPython(Operation):
    """Mirrors left-right with Python numba cannot compile, keeping the state it is
    given (``replace(previous_state)``): after a jit_mode=False operation FFCV runs
    it as Python too."""

    def generate_code(self) -> Callable:
        def mirror(images, out):
            rows = {i: image[:, ::-1] for i, image in enumerate(images)}  # not numba
            for i, image in rows.items():
                out[i] = image
            return out
        return mirror

    def declare_state_and_memory(self, previous_state: State):
        return replace(previous_state), AllocationQuery(previous_state.shape,
                                                        previous_state.dtype)


def test_an_operation_after_a_python_one_inherits_its_mode(photo_file: Path) -> None:
    """FFCV's operations see jit_mode=False after a Python one, and one that keeps
    it runs as Python (fastforward compiled it, and numba refused its code); one
    that sets jit_mode=True is compiled, as in FFCV."""
    pytest.importorskip("numba")
    torch = pytest.importorskip("torch")
    from fastforward.fields.decoders import SimpleRGBImageDecoder
    from fastforward.transforms import ToTensor

    loader = Loader(photo_file, 8, pipelines={
        "image": [SimpleRGBImageDecoder(), PythonUpsideDown(), InheritsPython(),
                  CompiledMirrorRows(), MirrorRows(), ToTensor()],
        "label": None})
    assert [step.op.jit for step in loader.pipelines[0].steps[:4]] == [False, False, True, True]
    plain = Loader(photo_file, 8, pipelines={"image": [SimpleRGBImageDecoder()],
                                             "label": None})
    for (images,), (reference,) in zip(loader, plain, strict=True):
        # upside down, mirrored, upside down twice more (compiled)
        expected = np.ascontiguousarray(reference[:, ::-1, ::-1])
        torch.testing.assert_close(images, torch.from_numpy(expected), rtol=0, atol=0)


class CompiledMirrorRows(MirrorRows):
    """MirrorRows that declares jit_mode=True, whatever came before it."""

    def declare_state_and_memory(self, previous_state: State):
        return (replace(previous_state, jit_mode=True),
                AllocationQuery(previous_state.shape, previous_state.dtype))


class PythonTensorDecoder(Operation):
    """An FFCV-style decoder in Python (jit_mode=False, NumPy dtype) that returns
    a tensor."""

    def declare_state_and_memory(self, previous_state: State):
        return (State(jit_mode=False, shape=(1,), dtype=np.dtype("<i8")),
                AllocationQuery((1,), np.dtype("<i8")))

    def generate_code(self) -> Callable:
        import torch

        def decode(indices, destination, metadata, storage_state):
            return torch.from_numpy(indices.astype(np.int64)[:, None])
        return decode


class TensorsWithANumPyDtype(PythonUpsideDown):
    """Returns torch tensors, but declares NumPy batches."""

    def generate_code(self) -> Callable:
        import torch

        def to_tensors(images, out):
            return torch.from_numpy(images.copy())
        return to_tensors


@pytest.mark.parametrize(("role", "match"), [
    ("decoder", r"samples 0, …, 7, field 'label', PythonTensorDecoder: PythonTensorDecoder "
                r"declares jit_mode=False with the NumPy dtype int64 .* returned a torch.Tensor"),
    ("operation", r"TensorsWithANumPyDtype declares jit_mode=False with the NumPy dtype uint8 "
                  r".* returned a torch.Tensor: return a NumPy array, or declare"),
])
def test_a_python_function_that_says_numpy_and_returns_tensors(photo_file: Path, role: str,
                                                               match: str) -> None:
    """A decoder's or an operation's: a TypeError that says so, not a failure in the
    next step ('Tensor' object has no attribute 'flags')."""
    pytest.importorskip("torch")
    from fastforward.fields.decoders import SimpleRGBImageDecoder
    from fastforward.transforms import ToTensor

    pipelines = {"image": None, "label": [PythonTensorDecoder(), ToTensor()]} \
        if role == "decoder" else {"image": [SimpleRGBImageDecoder(), TensorsWithANumPyDtype(),
                                             ToTensor()], "label": None}
    loader = Loader(photo_file, 8, pipelines=pipelines)
    with pytest.raises(TypeError, match=match):
        next(iter(loader))


class NotNumba(Operation):
    def generate_code(self) -> Callable:
        def bad(images, out):
            out[:] = {"a": images}  # not something numba compiles
            return out
        return bad

    def declare_state_and_memory(self, previous_state: State):
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)


def test_compile_error_at_construction(photo_file: Path) -> None:
    pytest.importorskip("numba")
    with pytest.raises(Exception, match=r"pipeline 'image'.*NotNumba: numba could not "
                                        r"compile") as info:
        image_loader(photo_file, NotNumba())
    assert "photos.beton" in str(info.value)


class FailsAtRunTime(Operation):
    def generate_code(self) -> Callable:
        def fail(labels, _):
            if labels.shape[0] > 0:
                raise ValueError("this batch is refused")
            return labels
        return fail

    def declare_state_and_memory(self, previous_state: State):
        return previous_state, None


def test_run_time_error_names_batch_and_operation(photo_file: Path) -> None:
    pytest.importorskip("numba")
    loader = Loader(photo_file, 8, pipelines={"image": None,
                                              "label": [IntDecoder(), FailsAtRunTime()]})
    with pytest.raises(ValueError, match=r"batch 0 .*pipeline 'label'.*FailsAtRunTime: this "
                                         r"batch is refused"):
        next(iter(loader))


def test_ported_operation_is_not_wrapped() -> None:
    class Ported(MirrorRows):
        def apply(self, batch, destination, context):  # type: ignore[no-untyped-def]
            destination[:] = batch[:, ::-1]
            return destination

    from fastforward.pipeline.compiler import is_numba_operation

    assert is_numba_operation(MirrorRows())
    assert not is_numba_operation(Ported())
    assert not is_numba_operation(IntDecoder())


class CountingMirror(MirrorRows):
    """MirrorRows that counts its generate_code() calls."""

    generated = 0

    def generate_code(self) -> Callable:
        CountingMirror.generated += 1
        return super().generate_code()


def test_generated_once_across_epochs_and_shared_by_loaders(photo_file: Path) -> None:
    pytest.importorskip("numba")
    op = CountingMirror()
    CountingMirror.generated = 0
    first = image_loader(photo_file, op)
    second = image_loader(photo_file, op)  # one operation object, two loaders (FFCV's tests)
    for _ in range(3):
        for (a, _), (b, _) in zip(first, second, strict=True):
            np.testing.assert_array_equal(a, b)
    assert CountingMirror.generated == 2  # once per loader, not per epoch


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_any_worker_type(packed_file: tuple[Path, list[list[int]]], worker_type: str) -> None:
    pytest.importorskip("numba")
    path, values = packed_file
    loader = Loader(path, 5, worker_type=worker_type, custom_fields={"ints": PackedInts},
                    pipelines={"ints": [FirstInts()], "i": [IntDecoder(), PlusShared()]})
    rows = [(r.tolist(), int(i)) for ints, index in loader
            for r, i in zip(ints, index[:, 0], strict=True)]
    assert rows == [((values[k] + [0] * 4)[:4], 1000 + k) for k in range(30)]
    loader.close()


def test_recompile_generates_again_each_epoch(photo_file: Path) -> None:
    pytest.importorskip("numba")
    CountingMirror.generated = 0
    loader = image_loader(photo_file, CountingMirror(), recompile=True)
    for _ in range(2):
        for _ in loader:
            pass
    assert CountingMirror.generated == 3  # at Loader(), then at each epoch's start


def test_a_branch_from_an_ffcv_operation(photo_file: Path) -> None:
    pytest.importorskip("numba")
    from fastforward.fields.decoders import SimpleRGBImageDecoder
    from fastforward.pipeline import PipelineSpec

    mirror = MirrorRows()
    loader = Loader(photo_file, 8, pipelines={
        "image": [SimpleRGBImageDecoder(), mirror], "label": None,
        "again": PipelineSpec(mirror, transforms=[MirrorRows()])})
    plain = Loader(photo_file, 8, pipelines={"image": [SimpleRGBImageDecoder()],
                                             "label": None})
    for (mirrored, twice), (reference,) in zip(loader, plain, strict=True):
        np.testing.assert_array_equal(mirrored, reference[:, ::-1])
        np.testing.assert_array_equal(twice, reference)


# FFCV's way to choose a crop: a subclass whose get_crop_generator gives
# f(height, width, scale, ratio) -> (i, j, h, w), compiled with numba; beside it,
# fastforward's way to the same fixed crop (crops()). At the top level: process
# workers pickle the decoders.
def top_left(height, width, scale, ratio):  # type: ignore[no-untyped-def]
    return 0, 0, height // 2, width // 3


def random_band(height, width, scale, ratio):  # type: ignore[no-untyped-def]
    i = np.random.randint(0, height // 2)  # np.random, as FFCV's own generator
    return i, 0, height // 2, int(width * scale[1])


class TopLeft(RandomResizedCropRGBImageDecoder):
    @property
    def get_crop_generator(self) -> Callable:
        from numba import njit

        return njit(top_left)


class RandomBand(RandomResizedCropRGBImageDecoder):
    @property
    def get_crop_generator(self) -> Callable:
        from numba import njit

        return njit(random_band)


class TopLeftCrops(RandomResizedCropRGBImageDecoder):
    def crops(self, heights: np.ndarray, widths: np.ndarray, u: np.ndarray | None) -> np.ndarray:
        return np.stack([0 * heights, 0 * widths, heights // 2, widths // 3], axis=1)


def crop_epoch(path: Path, decoder: Operation, seed: int = 4, **kw) -> np.ndarray:
    loader = Loader(path, 8, order=OrderOption.RANDOM, seed=seed,
                    pipelines={"image": [decoder], "label": None}, **kw)
    with loader:
        return np.concatenate([images for (images,) in loader])


def test_an_ffcv_crop_generator_chooses_the_crop(photo_file: Path) -> None:
    """A subclass's get_crop_generator was ignored: the images were random crops."""
    pytest.importorskip("numba")
    np.testing.assert_array_equal(crop_epoch(photo_file, TopLeft((10, 12))),
                                  crop_epoch(photo_file, TopLeftCrops((10, 12))))


@pytest.mark.parametrize("compiled", [True, False], ids=["numba", "python"])
def test_an_ffcv_crop_generator_draws_reproducibly(photo_file: Path, compiled: bool) -> None:
    """np.random in the generator is seeded per sample: the same batches for a
    seed whatever the workers (numba's generator is per thread; run as Python,
    with the compiler disabled, the global one where it is the loader's: in
    process workers)."""
    pytest.importorskip("numba")
    Compiler.set_enabled(compiled)
    workers = [("thread", 1), ("thread", 2), ("process", 2)] if compiled else [
        ("process", 1), ("process", 2)]
    runs = [crop_epoch(photo_file, RandomBand((10, 12), scale=(0.5, 0.9)), worker_type=kind,
                       num_workers=count) for kind, count in workers]
    for run in runs[1:]:
        np.testing.assert_array_equal(run, runs[0])
    other = crop_epoch(photo_file, RandomBand((10, 12), scale=(0.5, 0.9)), seed=5,
                       worker_type=workers[0][0], num_workers=1)
    assert not np.array_equal(other, runs[0])  # the draws follow the seed


class HalfByClosure(RandomResizedCropRGBImageDecoder):
    """A generator made anew at each call of the property, over an array (a closure)."""

    asked = 0

    @property
    def get_crop_generator(self) -> Callable:
        from numba import njit

        type(self).asked += 1
        fraction = np.array([0.5, 0.5])

        @njit
        def half(height, width, scale, ratio):  # type: ignore[no-untyped-def]
            return 0, 0, int(height * fraction[0]), int(width * fraction[1])

        return half


def test_an_ffcv_crop_generator_is_asked_for_once_a_loader(photo_file: Path) -> None:
    """The property was read, and a closure compiled, once per batch: 8 compiles an
    epoch, each kept (with its arrays) in the compiler's cache."""
    pytest.importorskip("numba")
    from fastforward.pipeline import compiler

    HalfByClosure.asked = 0
    before = len(compiler._CACHE)
    loader = Loader(photo_file, 4, num_workers=2, pipelines={"image": [HalfByClosure((6, 6))],
                                                             "label": None})
    with loader:
        for _ in range(2):
            for _ in loader:
                pass
    assert HalfByClosure.asked == 1
    assert len(compiler._CACHE) - before == 1


def test_an_ffcv_crop_generator_out_of_the_image_is_named(photo_file: Path) -> None:
    pytest.importorskip("numba")
    from numba import njit

    @njit
    def too_tall(height, width, scale, ratio):
        return 0, 0, height + 1, width

    class TooTall(RandomResizedCropRGBImageDecoder):
        @property
        def get_crop_generator(self):
            return too_tall

    with pytest.raises(ValueError, match=r"field 'image'.*TooTall\.get_crop_generator gave "
                                         r"the window \[0, 0, 25, 24\]"):
        crop_epoch(photo_file, TooTall((8, 8)))


def test_a_crop_decoder_without_a_crop_says_so(photo_file: Path) -> None:
    """A subclass of ResizedCropRGBImageDecoder with no way to crop failed with an
    empty NotImplementedError."""
    class NoCrop(ResizedCropRGBImageDecoder):
        pass

    with pytest.raises(NotImplementedError, match=r"NoCrop says no crop: .*crops\(\).*"
                                                  r"get_crop_generator"):
        crop_epoch(photo_file, NoCrop((8, 8)))

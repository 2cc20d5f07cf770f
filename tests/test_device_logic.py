"""The CUDA stage's bookkeeping, on the CPU, with stand-ins for CUDA's streams,
events and tensors (CI has no GPU; ``test_cuda.py`` runs the real thing)."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is an optional extra")

from fastforward import device  # noqa: E402 - after the skip


class FakeTensor:
    def __init__(self, name: str, cuda: bool = True) -> None:
        self.name, self.is_cuda = name, cuda
        self.recorded: list[Any] = []

    def record_stream(self, stream: Any) -> None:
        self.recorded.append(stream)


class FakeStream:
    def __init__(self) -> None:
        self.waited: list[Any] = []

    def wait_event(self, event: Any) -> None:
        self.waited.append(event)


def test_hand_over_records_every_cuda_tensor_on_the_consumers_stream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A dict output (a RaggedDecoder's named columns after ToDevice) is walked too:
    a tensor left out would go back to the side stream's pool while the
    consumer's kernels still read it."""
    consumer = FakeStream()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: consumer)
    image, host = FakeTensor("image"), FakeTensor("label", cuda=False)
    columns = {"boxes": FakeTensor("boxes"), "lengths": FakeTensor("lengths"),
               "nested": [FakeTensor("deep"), {"deeper": FakeTensor("deeper")}]}
    event = object()
    outputs = (image, host, columns)
    assert device.DeviceBatch(outputs, event).hand_over() is outputs
    assert consumer.waited == [event]
    cuda = [image, columns["boxes"], columns["lengths"], *columns["nested"][:1],
            columns["nested"][1]["deeper"]]
    assert [t.name for t in cuda if t.recorded != [consumer]] == []
    assert host.recorded == []


class FakeFence:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def synchronize(self) -> None:
        self.log.append(self.name)


def test_dropping_the_slots_waits_for_their_copies() -> None:
    """close() drops the ring: a shared slot is then unregistered from CUDA and
    unmapped, so every copy still reading a slot must have finished first."""
    from fastforward.ring import SlotPool

    pool = SlotPool(3, 4)
    log: list[str] = []
    slots = list(pool._free)
    slots[0].fence, slots[2].fence = FakeFence(log, "a"), FakeFence(log, "c")
    pool.clear()
    assert log == ["a", "c"]
    assert pool._free == []
    assert all(slot.fence is None for slot in slots)


def test_a_slot_let_go_while_held_waits_for_its_copies(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """When the user holds every slot, the oldest is let go: its buffers the user
    does not hold (a pinned image buffer, its labels held) went back to their
    allocator while a copy out of them could still run."""
    from fastforward.ring import SlotPool

    pool = SlotPool(2, 4)
    log: list[str] = []
    slots = list(pool._free)
    slots[0].fence, slots[1].fence = FakeFence(log, "oldest"), FakeFence(log, "newer")
    for slot in slots:
        monkeypatch.setattr(slot, "is_held", lambda: True)
    monkeypatch.setattr(pool, "_new_slot", lambda rows: type(slots[0])(rows))
    monkeypatch.setattr(type(slots[0]), "fit", lambda self, layout: None)
    fresh = pool.acquire({})
    assert fresh not in slots
    assert log == ["oldest"]
    assert pool.replaced == 1
    assert pool._free == [slots[1]]


def test_nvjpeg_waits_for_the_stream_and_names_a_bad_jpeg(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """nvJPEG writes before the stream's queued work has run (pytorch/vision#9606):
    the stream is drained first. A batch that fails is decoded one by one, so
    that the error names the sample."""
    import sys
    import types

    from fastforward.errors import DecodeError
    from fastforward.fields.rgb_image_gpu import NvJpegRandomResizedCropRGBImageDecoder

    log: list[str] = []

    class Stream:
        def synchronize(self) -> None:
            log.append("drained")

    class ImageReadMode:
        RGB = "RGB"

    def decode_jpeg(data: Any, device: Any, mode: Any = None) -> Any:
        assert mode == "RGB"  # (a grayscale JPEG would come back with one channel)
        batch = data if isinstance(data, list) else [data]
        log.append(f"decode {len(batch)}")
        if any(bytes(item) == b"bad" for item in batch):
            raise RuntimeError("Error while decoding JPEG images")
        return [f"image {bytes(item).decode()}" for item in batch]

    io = types.ModuleType("torchvision.io")
    io.decode_jpeg = decode_jpeg  # type: ignore[attr-defined]
    io.ImageReadMode = ImageReadMode  # type: ignore[attr-defined]
    vision = types.ModuleType("torchvision")
    vision.io = io  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", vision)
    monkeypatch.setitem(sys.modules, "torchvision.io", io)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    decoder = NvJpegRandomResizedCropRGBImageDecoder((8, 8))
    decoder.fname, decoder.field_name = "train.beton", "image"
    assert decoder._nvjpeg([b"a", b"b"], [4, 9], "cuda") == ["image a", "image b"]
    assert log == ["drained", "decode 2"]
    with pytest.raises(DecodeError, match=r"train\.beton: sample 9, field 'image': nvJPEG "
                                          r"cannot decode its JPEG: Error while decoding"):
        decoder._nvjpeg([b"a", b"bad", b"c"], [4, 9, 11], "cuda")
    failures = iter([RuntimeError("batched decode failed"), None, None])

    def flaky(data: Any, device: Any, mode: Any = None) -> Any:  # the batch fails, not each
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return decode_jpeg(data, device, mode)

    io.decode_jpeg = flaky  # type: ignore[attr-defined]
    assert decoder._nvjpeg([b"a", b"b"], [4, 9], "cuda") == [["image a"], ["image b"]]

    def out_of_memory(data: Any, device: Any, mode: Any = None) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory")

    io.decode_jpeg = out_of_memory  # type: ignore[attr-defined]
    with pytest.raises(torch.OutOfMemoryError):
        decoder._nvjpeg([b"a"], [4], "cuda")


def test_only_what_the_gpu_stage_copies_is_page_locked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels left on the CPU stay ordinary memory: a user's own
    ``labels.cuda(non_blocking=True)`` from page-locked memory would read it
    whenever the copy runs, maybe after the slot was refilled."""
    import numpy as np

    from fastforward.pipeline.allocation_query import AllocationQuery
    from fastforward.ring import PINNED, SHARED, SlotPool

    pinned: list[tuple[int, ...]] = []

    def pinned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        pinned.append(shape)
        return np.empty(shape, dtype)

    registered: list[tuple[int, int]] = []
    monkeypatch.setattr(device, "pinned_empty", pinned_empty)
    monkeypatch.setattr(device, "pin_segment", lambda segment, nbytes: registered.append(
        (int(segment.whole.ctypes.data), nbytes)))
    layout = {"label/decoder": AllocationQuery((1,), np.dtype("<i8")),
              "my/image/decoder": AllocationQuery((64, 64, 3), np.dtype("u1")),
              "my/image/3": AllocationQuery((3, 64, 64), np.dtype("u1")),
              "boxes/decoder": AllocationQuery((4,), np.dtype("f4"))}

    pool = SlotPool(2, 8)
    pool.kind, pool.pin_pipelines = PINNED, frozenset({"my/image"})
    slot = pool.acquire(layout)
    assert sorted(pinned) == [(8, 3, 64, 64), (8, 64, 64, 3)]

    shared = SlotPool(2, 8)
    shared.kind, shared.pin_shared = SHARED, True
    shared.pin_pipelines = frozenset({"my/image"})
    slot = shared.acquire(layout)
    start = int(slot.segment.whole.ctypes.data)
    image_bytes = 2 * -(-8 * 64 * 64 * 3 // 4096) * 4096
    assert registered == [(start, image_bytes)]
    for key in ("my/image/decoder", "my/image/3"):
        assert int(slot.get(key).ctypes.data) - start < image_bytes
    for key in ("label/decoder", "boxes/decoder"):
        assert int(slot.get(key).ctypes.data) - start >= image_bytes

    registered.clear()
    nothing = SlotPool(2, 8)
    nothing.kind, nothing.pin_shared = SHARED, True
    nothing.acquire({"label/decoder": layout["label/decoder"]})
    assert registered == []


def test_a_branch_left_on_the_cpu_keeps_its_source_unpinned(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A branch's outputs may be views of its source pipeline's buffers: where the
    source copies to the GPU and the branch stays on the CPU, the source is not
    page-locked (the branch's labels are then safe to copy with non_blocking)."""
    from fastforward.fields import IntField
    from fastforward.fields.decoders import IntDecoder
    from fastforward.loader import Loader
    from fastforward.pipeline import PipelineSpec
    from fastforward.transforms import Squeeze, ToTensor
    from fastforward.writer import DatasetWriter

    path = tmp_path / "ints.beton"
    DatasetWriter(path, {"a": IntField(), "c": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset([(i, i) for i in range(8)])
    tensor, squeezed = ToTensor(), Squeeze()
    loader = Loader(path, 4, pipelines={
        "a": [IntDecoder(), tensor, squeezed], "c": [IntDecoder(), ToTensor()],
        "b": PipelineSpec(tensor, None, [Squeeze()]),
        "d": PipelineSpec(squeezed, None, [])})
    on_gpu: dict[str, set[str]] = {"a": {"cuda:0"}, "c": {"cuda:0"}}
    assert loader._pinned_pipelines(on_gpu) == {"c"}
    on_gpu.update(b={"cuda:0"}, d={"cuda:0"})
    assert loader._pinned_pipelines(on_gpu) == {"a", "b", "c", "d"}
    on_gpu.pop("d")
    assert loader._pinned_pipelines(on_gpu) == {"b", "c"}
    loader.close()

"""The CUDA stage, on a GPU (skipped without one; CI has none).

Run on a GPU machine with ``pytest tests/test_cuda.py -m cuda``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is an optional extra")

from fastforward.fields import IntField, RGBImageField  # noqa: E402 - after the skip
from fastforward.fields.decoders import (  # noqa: E402
    IntDecoder,
    RandomResizedCropRGBImageDecoder,
)
from fastforward.loader import Loader, OrderOption  # noqa: E402
from fastforward.transforms import (  # noqa: E402
    NormalizeImage,
    Squeeze,
    ToDevice,
    ToTensor,
    ToTorchImage,
)
from fastforward.writer import DatasetWriter  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]
MEAN, STD = np.array([125.0, 120.0, 110.0]), np.array([60.0, 58.0, 59.0])


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray]) -> Path:
    path = tmp_path_factory.mktemp("cuda") / "train.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", max_resolution=128),
                         "label": IntField()}, num_workers=2, progress=False) \
        .from_indexed_dataset([(images[i % 20], i) for i in range(256)])
    return path


def pipelines(device: str) -> dict:
    return {"image": [RandomResizedCropRGBImageDecoder((64, 64)), ToTensor(), ToDevice(device),
                      ToTorchImage(), NormalizeImage(MEAN, STD, np.float16)],
            "label": [IntDecoder(), ToTensor(), Squeeze(), ToDevice(device)]}


def test_batches_land_on_the_gpu(train_file: Path) -> None:
    loader = Loader(train_file, 32, seed=0, pipelines=pipelines("cuda"))
    assert loader._slots.kind == "pinned"
    for images, labels in loader:
        assert images.is_cuda
        assert labels.is_cuda
        assert images.dtype == torch.float16
        assert images.is_contiguous(memory_format=torch.channels_last)


def test_gpu_results_equal_cpu_results(train_file: Path) -> None:
    gpu = Loader(train_file, 32, seed=5, order=OrderOption.RANDOM, pipelines=pipelines("cuda"))
    cpu = Loader(train_file, 32, seed=5, order=OrderOption.RANDOM, pipelines=pipelines("cpu"))
    for (g, gl), (c, cl) in zip(gpu, cpu, strict=True):
        assert torch.equal(gl.cpu(), cl)
        torch.testing.assert_close(g.float().cpu(), c.float(), atol=2e-2, rtol=2e-3)


@pytest.mark.parametrize("workers", [{}, {"num_workers": 2, "worker_type": "process"}],
                         ids=["threads", "processes"])
def test_slow_consumer_sees_intact_batches(train_file: Path, workers: dict) -> None:
    """FFCV #37/#198: the GPU lagging far behind must not let a copy read refilled
    buffers; with process workers, the fence holds across processes too (a worker
    never refills a shared slot that a copy still reads)."""
    def load() -> Loader:
        return Loader(train_file, 16, seed=1, batches_ahead=1, pipelines=pipelines("cuda"),
                      **workers)

    with load() as loader:
        reference = [(i.cpu(), label.cpu()) for i, label in loader]
    held = []
    with load() as lagging:
        for images, labels in lagging:
            torch.cuda._sleep(50_000_000)  # keep the consumer's stream busy
            held.append((images, labels))
        torch.cuda.synchronize()
    assert len(held) == len(reference)
    for (images, labels), (want_images, want_labels) in zip(held, reference, strict=True):
        assert torch.equal(labels.cpu(), want_labels)
        assert torch.equal(images.cpu(), want_images)
    # the loader's own stream lagging (its copies out of the pinned slot run late,
    # so a slot refilled before they ran would show), and each batch dropped once a
    # copy of it is queued behind a sleep (its memory, recorded on the consumer's stream,
    # must not be reused by the next batch before the copy has read it)
    copies = []
    with load() as lagging:
        stage = lagging._stage
        assert stage is not None
        iterator = iter(lagging)
        while True:
            with torch.cuda.stream(stage.stream):
                torch.cuda._sleep(20_000_000)
            try:
                images, labels = next(iterator)
            except StopIteration:
                break
            torch.cuda._sleep(20_000_000)  # the consumer's stream too, then a copy
            copies.append((images.clone(), labels.clone()))  # read after the sleep
            del images, labels
        torch.cuda.synchronize()
    assert len(copies) == len(reference)
    for (images, labels), (want_images, want_labels) in zip(copies, reference, strict=True):
        assert torch.equal(labels.cpu(), want_labels)
        assert torch.equal(images.cpu(), want_images)


def test_held_device_batches_stay_intact(train_file: Path) -> None:
    loader = Loader(train_file, 8, batches_ahead=2, seed=3, pipelines=pipelines("cuda"))
    held = list(loader)  # 32 batches, 3× more than the ring has slots
    again = list(Loader(train_file, 8, batches_ahead=2, seed=3, pipelines=pipelines("cuda")))
    for (a, al), (b, bl) in zip(held, again, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(al, bl)


def test_nvjpeg_decoder_crops_like_the_cpu_decoder(train_file: Path) -> None:
    pytest.importorskip("torchvision", reason="nvJPEG decoding needs torchvision")
    from fastforward.fields.rgb_image_gpu import NvJpegRandomResizedCropRGBImageDecoder

    gpu = Loader(train_file, 16, seed=2, pipelines={
        "image": [NvJpegRandomResizedCropRGBImageDecoder((48, 48)), ToTorchImage()],
        "label": None})
    cpu = Loader(train_file, 16, seed=2, pipelines={
        "image": [RandomResizedCropRGBImageDecoder((48, 48)), ToTensor(), ToTorchImage()],
        "label": None})
    for (g,), (c,) in zip(gpu, cpu, strict=True):
        assert g.is_cuda
        difference = (g.float().cpu() - c.float()).abs().mean()
        assert difference < 6  # the same windows; filters and IDCTs differ slightly


def test_process_workers_feed_the_gpu(train_file: Path) -> None:
    """Shared slots, page-locked with cudaHostRegister, give the thread path's batches."""
    threads = Loader(train_file, 32, seed=5, order=OrderOption.RANDOM, num_workers=2,
                     worker_type="thread", pipelines=pipelines("cuda"))
    processes = Loader(train_file, 32, seed=5, order=OrderOption.RANDOM, num_workers=2,
                       worker_type="process", pipelines=pipelines("cuda"))
    with threads, processes:
        assert processes.workers.kind == "process"
        for (p, pl), (t, tl) in zip(processes, threads, strict=True):
            assert p.is_cuda
            assert torch.equal(p, t)
            assert torch.equal(pl, tl)
        assert processes._slots.kind == "shared"
        assert processes._slots.pin_shared


def test_resume_on_the_gpu(train_file: Path) -> None:
    whole = [(i.cpu(), label.cpu()) for i, label in
             Loader(train_file, 16, seed=4, order=OrderOption.QUASI_RANDOM,
                    pipelines=pipelines("cuda"))]
    first = Loader(train_file, 16, seed=4, order=OrderOption.QUASI_RANDOM,
                   pipelines=pipelines("cuda"))
    iterator = iter(first)
    for _ in range(5):
        next(iterator)
    state = first.state_dict()
    first.close()
    again = Loader(train_file, 16, seed=4, order=OrderOption.QUASI_RANDOM, num_workers=3,
                   pipelines=pipelines("cuda"))
    again.load_state_dict(state)
    rest = [(i.cpu(), label.cpu()) for i, label in again]
    assert len(rest) == len(whole) - 5
    for (images, labels), (want_images, want_labels) in zip(rest, whole[5:], strict=True):
        assert torch.equal(labels, want_labels)
        assert torch.equal(images, want_images)


@pytest.mark.parametrize("size", [64, 176])  # 176² is no power of two (Contrast's mean)
def test_policies_on_the_gpu(train_file: Path, size: int) -> None:
    """TrivialAugmentWide, RandAugment and AutoAugment after ToDevice run on the GPU,
    batched, and give the pixels they give on the CPU."""
    from fastforward.transforms import AutoAugment, RandAugment, TrivialAugmentWide

    for name, policy in [("TrivialAugmentWide", TrivialAugmentWide),
                         ("RandAugment", lambda: RandAugment(2, 9)),
                         ("AutoAugment", AutoAugment)]:
        def load(device: str, make=policy) -> Loader:
            return Loader(train_file, 32, seed=7, pipelines={
                "image": [RandomResizedCropRGBImageDecoder((size, size)), ToTensor(),
                          ToDevice(device), ToTorchImage(), make()],
                "label": [IntDecoder(), ToTensor(), Squeeze(), ToDevice(device)]})

        for (g, gl), (c, cl) in zip(load("cuda"), load("cpu"), strict=True):
            assert g.is_cuda
            assert torch.equal(gl.cpu(), cl)
            differ = g.cpu() != c
            assert not differ.any(), (
                f"{name}: {differ.float().mean().item():.3%} of values differ, by up to "
                f"{(g.cpu().int() - c.int()).abs().max().item()}")


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_labels_left_on_the_cpu_survive_the_users_own_copies(train_file: Path,
                                                             worker_type: str) -> None:
    """Labels the pipeline leaves on the CPU are ordinary memory: the user's own
    ``non_blocking`` copy, queued behind a busy stream, reads them before the
    slot can be refilled (page-locked, it would read them whenever it ran)."""
    def load() -> Loader:
        return Loader(train_file, 16, seed=1, batches_ahead=1, num_workers=2,
                      worker_type=worker_type, pipelines={
                          "image": pipelines("cuda")["image"],
                          "label": [IntDecoder(), ToTensor(), Squeeze()]})

    with load() as loader:
        reference = [label.clone() for _, label in loader]
    copied = []
    with load() as lagging:
        for _, labels in lagging:
            assert not labels.is_pinned()
            torch.cuda._sleep(50_000_000)
            copied.append(labels.cuda(non_blocking=True))
        torch.cuda.synchronize()
    assert [torch.equal(c.cpu(), r) for c, r in zip(copied, reference, strict=True)] == [
        True] * len(reference)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_cuda_names_the_gpu_current_when_the_loader_was_made(train_file: Path) -> None:
    """A DDP script that makes its loader before torch.cuda.set_device(rank): every
    batch lands on the loader's GPU, the side stream's, whichever is current at
    iter()."""
    torch.cuda.set_device(0)
    loader = Loader(train_file, 32, seed=0, pipelines=pipelines("cuda"))
    torch.cuda.set_device(1)
    try:
        for images, labels in loader:
            assert images.device == labels.device == torch.device("cuda", 0)
    finally:
        torch.cuda.set_device(0)

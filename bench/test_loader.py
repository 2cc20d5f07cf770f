"""Loader throughput, side by side on the same data, in one run.

Pipelines: (a) CenterCrop(224, ratio 224/256), uint8; (b) RandomResizedCrop(192) +
RandomHorizontalFlip + ToTensor + ToTorchImage + Convert(float16); (b) with
TrivialAugmentWide() or RandAugment(2, 9) after the flip; (c) small raw 32×32
images. Each is measured for fastforward, the decode limit (simplejpeg
on every core), PyTorch's DataLoader and FFCV 1.0.2 when it is installed (here,
or in the environments given by ``--torchvision-python`` and ``--ffcv-python``),
in turn, ``--bench-rounds`` times. The closing table prints images/s and
fastforward's ratio to each.

Every loader is measured at steady state: each epoch's first batch (and
fastforward's ring warm-up in its first epoch, FFCV's whole JIT epoch) is
left out and the clock starts when it arrives (``steady_state`` in
fastforward/benchmark.py, ``steady_epoch`` in baselines.py), so that no
loader's per-epoch start-up weighs on its figure however short the epochs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pytest
from baselines import importable, throughput
from conftest import record

from fastforward._ext.collate import gather_into
from fastforward.benchmark import (
    Measurement,
    cached_fraction,
    decode_limit,
    drop_from_page_cache,
    first_batch_seconds,
    loader_throughput,
    side_by_side,
    stored_jpegs,
    warmup_batches,
)
from fastforward.reader import Reader

pytestmark = pytest.mark.benchmark(group="loader")
PIPELINES = {"a": "center_crop", "b": "train"}


def run_once(benchmark, fn):  # type: ignore[no-untyped-def]
    """One round: the measurements time themselves, without their warm-up."""
    return benchmark.pedantic(fn, rounds=1, iterations=1)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_side_by_side(benchmark, beton: Path, beton_unmarked: Path, folder256: Path,
                      pipeline: str, cores: int, rounds: int,
                      comparators: dict[str, str | None]) -> None:
    """Every figure of a pipeline, taken in turn, ``--bench-rounds`` times (medians):

    - the decode limit: simplejpeg decoding the stored JPEGs on every core (accurate
      IDCT, a new array each; beside it the fast IDCT the crop decoders and FFCV use,
      and that into one reused buffer per thread: the strictest ceiling); and the
      same images without restart markers (accurate IDCT), whole-image decoding's
      own ceiling;
    - fastforward's Loader (RANDOM order, batch 256, every core), on its own files
      (a restart marker at each MCU row);
    - PyTorch's DataLoader on the same 256 px images without markers (as its users'
      files are), num_workers = cores;
    - FFCV 1.0.2 on the same images without markers (as its writer stores them),
      where it is installed.
    """
    if pipeline == "b":
        pytest.importorskip("torch", reason="pipeline (b) ends in torch tensors")
    blobs = stored_jpegs(Reader(beton), "image")
    unmarked = stored_jpegs(Reader(beton_unmarked), "image")
    name = PIPELINES[pipeline]
    measures = {
        "decode limit": lambda: decode_limit(blobs, cores, repeat=2),
        "decode limit, files without restart markers": lambda: dataclasses.replace(
            decode_limit(unmarked, cores, repeat=2),
            name=f"decode limit (simplejpeg, {cores} threads), files without restart markers"),
        "decode limit, fastdct": lambda: decode_limit(blobs, cores, fastdct=True, repeat=2),
        "decode limit, fastdct, reused buffers": lambda: decode_limit(
            blobs, cores, fastdct=True, repeat=2, reuse_buffers=True),
        "fastforward": lambda: loader_throughput(beton, name, epochs=2, warmup_epochs=1),
    }
    if importable("torch", comparators["dataloader"]):
        measures["DataLoader"] = lambda: throughput("dataloader", folder256, name, cores,
                                                    comparators["dataloader"])
    if importable("ffcv", comparators["ffcv"]):
        measures["FFCV"] = lambda: throughput("ffcv", beton_unmarked, name, cores,
                                              comparators["ffcv"])
    figures = run_once(benchmark, lambda: side_by_side(measures, rounds))
    for role, m in figures.items():
        record(pipeline, role, m)
    assert figures["decode limit"].images == 2 * len(blobs)
    assert figures["decode limit, files without restart markers"].images == 2 * len(unmarked)
    assert all(m.images > 0 for m in figures.values())


POLICY_PIPELINES = {"b+trivialaugment": "train_trivialaugment",
                    "b+randaugment": "train_randaugment"}


@pytest.mark.parametrize("pipeline", POLICY_PIPELINES)
def test_policy_side_by_side(benchmark, beton: Path, folder256: Path, pipeline: str,
                             cores: int, rounds: int,
                             comparators: dict[str, str | None]) -> None:
    """Pipeline (b) with an augmentation policy after the flip (TrivialAugmentWide(), or
    RandAugment(2, 9)), taken in turn with (b) itself and with PyTorch's DataLoader
    running torchvision's policy on the same 256 px JPEGs (when torchvision is
    installed), ``--bench-rounds`` times (medians). Targets: at least 3× the
    DataLoader, at least 0.6× (b)."""
    pytest.importorskip("torch", reason="the pipeline ends in torch tensors")
    name = POLICY_PIPELINES[pipeline]
    measures = {
        "fastforward": lambda: loader_throughput(beton, name, epochs=2, warmup_epochs=1),
        "fastforward (b), no policy": lambda: loader_throughput(beton, "train", epochs=2,
                                                                   warmup_epochs=1),
    }
    if importable("torchvision", comparators["dataloader"]):
        measures["DataLoader"] = lambda: throughput("dataloader", folder256, name, cores,
                                                    comparators["dataloader"])
    figures = run_once(benchmark, lambda: side_by_side(measures, rounds))
    for role, m in figures.items():
        record(pipeline, role, m)
    assert all(m.images > 0 for m in figures.values())


PYTHON_PIPELINES = ["python_op", "tv_trivialaugment"]


@pytest.mark.parametrize("pipeline", PYTHON_PIPELINES)
def test_python_augmentations(benchmark, beton: Path, folder256: Path, pipeline: str,
                              cores: int, rounds: int,
                              comparators: dict[str, str | None]) -> None:
    """A per-sample Python augmentation after RandomResizedCrop(192) + flip, in turn:
    fastforward on 1 and on every core's worth of worker processes, on threads
    (all cores), and the DataLoader running the same transforms with as many
    worker processes.

    - ``python_op``: a NumPy operation of about 50 µs (``fastforward._bench_ops``);
    - ``tv_trivialaugment``: torchvision's ``TrivialAugmentWide`` (needs
      torchvision here and in the DataLoader's environment).
    """
    if pipeline == "tv_trivialaugment":
        pytest.importorskip("torchvision", reason="TrivialAugmentWide is torchvision's")
    measures = {
        "fastforward": lambda: loader_throughput(beton, pipeline, num_workers=cores,
                                                 worker_type="process", epochs=2,
                                                 warmup_epochs=1,
                                                 batch_size=256),
        "fastforward, 1 process": lambda: loader_throughput(
            beton, pipeline, num_workers=1, worker_type="process", epochs=2, warmup_epochs=1,
            batch_size=256),
        "fastforward, threads": lambda: loader_throughput(
            beton, pipeline, num_workers=cores, worker_type="thread", epochs=2,
            warmup_epochs=1, batch_size=256),
    }
    if importable("torchvision" if pipeline == "tv_trivialaugment" else "torch",
                  comparators["dataloader"]):
        measures["DataLoader"] = lambda: throughput("dataloader", folder256, pipeline, cores,
                                                    comparators["dataloader"])
    figures = run_once(benchmark, lambda: side_by_side(measures, rounds))
    for role, m in figures.items():
        record(pipeline, role, m)
    assert all(m.images > 0 for m in figures.values())


def test_small_raw(benchmark, small_raw: Path, cores: int, rounds: int,
                   comparators: dict[str, str | None]) -> None:
    """(c): 32×32 raw images through SimpleRGBImageDecoder, a memcpy of the same
    bytes, and FFCV where it is installed, in turn."""
    reader = Reader(small_raw)
    source = np.frombuffer(reader.buffer, np.uint8)
    pointers = reader.metadata["f0"]["data_ptr"].astype(np.uint64)
    sizes = np.full(len(pointers), 3072, np.uint64)
    out = np.empty((len(pointers), 3072), np.uint8)
    out.fill(0)  # faulted in before timing, as fastforward's ring slots are by its warm-up

    def memcpy() -> Measurement:
        start = time.perf_counter()
        for _ in range(3):
            gather_into(source, pointers, sizes, out)
        return Measurement("memcpy of the same bytes (one thread)", 3 * len(pointers),
                           time.perf_counter() - start)

    measures = {
        "fastforward": lambda: loader_throughput(small_raw, "simple", epochs=2,
                                                 warmup_epochs=1),
        "memcpy": memcpy,
    }
    if importable("ffcv", comparators["ffcv"]):
        measures["FFCV"] = lambda: throughput("ffcv", small_raw, "simple", cores,
                                              comparators["ffcv"])
    figures = run_once(benchmark, lambda: side_by_side(measures, rounds))
    for role, m in figures.items():
        record("c", role, m)
    assert all(m.images > 0 for m in figures.values())


COLD = [("RANDOM", True), ("QUASI_RANDOM", True), ("RANDOM", False), ("QUASI_RANDOM", False)]


@pytest.mark.parametrize(("order", "os_cache"), COLD,
                         ids=[f"{o}-os_cache={c}" for o, c in COLD])
def test_cold_page_cache(benchmark, beton: Path, order: str, os_cache: bool) -> None:
    """Pipeline (a) with the file dropped from the page cache first, then again warm:
    what QUASI_RANDOM (page-local reads) and os_cache=False (no cache) are for."""
    from fastforward.loader import OrderOption

    if not hasattr(os, "posix_fadvise") or not Path("/proc").exists():
        pytest.skip("dropping one file from the page cache needs Linux")

    def measure() -> tuple[Measurement, Measurement, float]:
        drop_from_page_cache(beton)
        left = cached_fraction(beton)
        cold = loader_throughput(beton, "center_crop", epochs=2, order=OrderOption[order],
                                 os_cache=os_cache)
        warm = loader_throughput(beton, "center_crop", epochs=2, order=OrderOption[order],
                                 os_cache=os_cache)
        return cold, warm, left

    cold, warm, left = run_once(benchmark, measure)
    label = f"{order}, os_cache={os_cache}"
    record("cold cache", f"{label}: cold", Measurement(
        f"{label}, cold ({left:.0%} cached)", cold.images, cold.seconds))
    record("cold cache", f"{label}: warm", Measurement(f"{label}, warm", warm.images,
                                                      warm.seconds))
    assert left < 0.5, "the file stayed in the page cache"
    assert cold.images > 0


def test_first_batch_latency(benchmark, beton: Path) -> None:
    """Seconds from Loader(...) to the first batch (FFCV: about 8 s of JIT)."""
    seconds = run_once(benchmark, lambda: first_batch_seconds(beton, "center_crop"))
    record("startup", "fastforward first batch, in ms (as images/s column)",
           Measurement("first batch latency (value = milliseconds)", int(seconds * 1e3), 1.0))
    assert seconds < 30


def anonymous_rss() -> int:
    """Bytes of this process's memory not backed by files (the map is file-backed)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def test_memory_beyond_the_map(benchmark, beton: Path) -> None:
    """Peak anonymous RSS growth while loading, against the ring's slot bytes."""
    import threading

    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux)")
    before, peak, done = anonymous_rss(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], anonymous_rss())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        m = run_once(benchmark, lambda: loader_throughput(beton, "center_crop", epochs=2))
    finally:
        done.set()
        sampler.join()
    grown = max(peak[0] - before, 0)
    slots = (3 + 3) * 256 * 224 * 224 * 3  # batches_ahead + 3 slots
    record("memory", "peak RSS growth, MB (as images/s column)",
           Measurement(f"peak RSS growth (MB); ring slots = {slots / 1e6:.0f} MB",
                       int(grown / 1e6), 1.0))
    assert m.images >= 0


SCENE_PIPELINES = ["segmentation", "detection"]
SCENE_MEAN = np.array([0.485, 0.456, 0.406]) * 255
SCENE_STD = np.array([0.229, 0.224, 0.225]) * 255


def scenes_throughput(path: Path, pipeline: str, epochs: int = 2) -> Measurement:
    """Images/s of fastforward on the scenes (after ``warmup_batches`` batches):

    - ``segmentation``: RandomResizedCrop(256) + flip + normalise (float32, CHW) on the
      image, the mask following (batch 64);
    - ``detection``: shorter side 320 (longer at most 512) + flip + normalise, padded
      batch, each image's size, the boxes and class ids following (batch 32).
    """
    import torch  # noqa: F401 - the pipelines end in tensors

    from fastforward.fields.decoders import (
        ImageSizeDecoder,
        MaskDecoder,
        RaggedDecoder,
        RandomResizedCropRGBImageDecoder,
        ShorterSideRGBImageDecoder,
    )
    from fastforward.loader import Loader, OrderOption
    from fastforward.pipeline import PipelineSpec
    from fastforward.transforms import NormalizeImage, RandomHorizontalFlip, ToTensor, ToTorchImage

    after = [RandomHorizontalFlip(), ToTensor(), ToTorchImage(),
             NormalizeImage(SCENE_MEAN, SCENE_STD, np.float32)]
    if pipeline == "segmentation":
        batch_size = 64
        pipelines: dict = {"image": [RandomResizedCropRGBImageDecoder((256, 256)), *after],
                           "mask": [MaskDecoder(follows="image"), ToTensor()], "objects": None}
    else:
        batch_size = 32
        pipelines = {"image": [ShorterSideRGBImageDecoder(320, max_size=512), *after],
                     "mask": None,
                     "objects": [RaggedDecoder(follows="image", boxes="boxes"), ToTensor()],
                     "sizes": PipelineSpec("image", ImageSizeDecoder(follows="image"))}
    with Loader(path, batch_size=batch_size, order=OrderOption.RANDOM, seed=0,
                pipelines=pipelines) as loader:
        skip = warmup_batches(len(loader) * epochs, loader.ring_slots)
        images = seen = 0
        start = None
        for _ in range(epochs):
            for batch in loader:
                seen += 1
                if seen == skip:
                    start = time.perf_counter()
                elif seen > skip:
                    images += len(batch[0])
        seconds = time.perf_counter() - start if start is not None else 0.0
    return Measurement(f"fastforward {pipeline} ({loader.num_workers} threads)", images,
                       seconds)


@pytest.mark.parametrize("pipeline", SCENE_PIPELINES)
def test_scenes(benchmark, scenes_beton: Path, scenes_folder: Path, pipeline: str, cores: int,
                rounds: int, comparators: dict[str, str | None]) -> None:
    """Segmentation and detection (issue 16), in turn: fastforward, and the DataLoader
    with torchvision's transforms.v2 (``tv_tensors.Mask``, ``tv_tensors.BoundingBoxes``)
    on the same scenes, as many worker processes as cores (for segmentation, masks
    read as PNG files, as datasets ship them, and as .npy)."""
    pytest.importorskip("torch", reason="both pipelines end in torch tensors")
    measures = {"fastforward": lambda: scenes_throughput(scenes_beton, pipeline)}
    if importable("torchvision", comparators["dataloader"]):
        variants = ["segmentation", "segmentation_npy"] if pipeline == "segmentation" else [
            "detection"]
        for variant in variants:
            measures[f"DataLoader {variant}"] = lambda v=variant: throughput(
                "dataloader_scenes", scenes_folder, v, cores, comparators["dataloader"])
    figures = run_once(benchmark, lambda: side_by_side(measures, rounds))
    for role, m in figures.items():
        record(pipeline, role, m)
    assert all(m.images > 0 for m in figures.values())

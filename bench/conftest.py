"""Benchmark fixtures: a realistic corpus made offline, the files made from it,
and the closing table of images/s with fastforward's ratios.

``--bench-scale N`` multiplies the corpus size (default 1: a smoke-size run).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from baselines import WITH_START_UP

from fastforward.benchmark import Measurement, paired_ratios
from fastforward.fields import IntField, RGBImageField
from fastforward.utils import default_workers
from fastforward.writer import DatasetWriter

BASE_IMAGES = 300

RESULTS: dict[str, dict[str, Measurement]] = defaultdict(dict)
"""pipeline -> role ('decode limit', 'fastforward', 'FFCV', 'DataLoader', ...) -> figure."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-scale", type=float, default=1.0,
                     help=f"corpus size as a multiple of {BASE_IMAGES} images")
    parser.addoption("--torchvision-python", default=None, metavar="PYTHON",
                     help="run the DataLoader baseline under this interpreter (a virtual "
                          "environment with torch==2.14.1 torchvision==0.29.1)")
    parser.addoption("--ffcv-python", default=None, metavar="PYTHON",
                     help="run the FFCV baseline under this interpreter (a virtual "
                          "environment with ffcv==1.0.2)")
    parser.addoption("--bench-rounds", type=int, default=1,
                     help="take every figure of a pipeline in turn this many times and "
                          "keep each one's median")


@pytest.fixture(scope="session")
def corpus_size(request: pytest.FixtureRequest) -> int:
    return max(16, int(BASE_IMAGES * request.config.getoption("--bench-scale")))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, corpus_size: int) -> Path:
    """An ImageFolder of real photographs, about 500×375, ~100 KB at quality 89-97."""
    from fastforward.demo import make_corpus

    return make_corpus(tmp_path_factory.mktemp("bench") / "images", corpus_size, seed=0)


@pytest.fixture(scope="session")
def beton(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus at max_resolution=256, jpeg_quality=90."""
    from fastforward.datasets import ImageFolder

    path = tmp_path_factory.mktemp("bench") / "train.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", max_resolution=256,
                                                jpeg_quality=90),
                         "label": IntField()}, progress=False).from_indexed_dataset(
        ImageFolder(corpus))
    return path


@pytest.fixture(scope="session")
def beton_unmarked(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images without restart markers (``restart_markers=False``: the same
    DCT coefficients, so the same pixels), as FFCV's writer and a DataLoader user's
    files have them: the comparators read these (a marker at each MCU row helps
    fastforward's crop decoders, and slows whole-image decoding)."""
    from fastforward.datasets import ImageFolder

    path = tmp_path_factory.mktemp("bench") / "train-unmarked.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", max_resolution=256,
                                                jpeg_quality=90, restart_markers=False),
                         "label": IntField()}, progress=False).from_indexed_dataset(
        ImageFolder(corpus))
    return path


@pytest.fixture(scope="session")
def folder256(beton_unmarked: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The JPEGs of ``beton_unmarked``, as an ImageFolder (for the DataLoader)."""
    from baselines import export_image_folder

    return export_image_folder(beton_unmarked, tmp_path_factory.mktemp("bench") / "folder256")


@pytest.fixture(scope="session")
def small_raw(tmp_path_factory: pytest.TempPathFactory, corpus_size: int) -> Path:
    """CIFAR-like: 32×32 raw images, 50× the corpus size."""
    from fastforward.demo import load_photos, make_image

    photos = load_photos()
    rng = np.random.default_rng(0)
    images = [make_image(photos, rng, (32, 32)) for _ in range(100)]
    count = corpus_size * 50
    path = tmp_path_factory.mktemp("bench") / "small.beton"
    data = [(np.ascontiguousarray(images[i % 100][0][:32, :32]), images[i % 100][1])
            for i in range(count)]
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                  progress=False).from_indexed_dataset(data)
    return path


@pytest.fixture(scope="session")
def comparators(request: pytest.FixtureRequest) -> dict[str, str | None]:
    """Interpreters for the baselines (None: this one)."""
    return {"dataloader": request.config.getoption("--torchvision-python"),
            "ffcv": request.config.getoption("--ffcv-python")}


@pytest.fixture(scope="session")
def rounds(request: pytest.FixtureRequest) -> int:
    return max(1, int(request.config.getoption("--bench-rounds")))


@pytest.fixture(scope="session")
def cores() -> int:
    return default_workers()


def record(pipeline: str, role: str, measurement: Measurement) -> Measurement:
    """Keep a figure for the closing table."""
    RESULTS[pipeline][role] = measurement
    return measurement


def record_throughput(benchmark: object, items: int, unit: str = "images_per_s") -> None:
    """Put items/s beside pytest-benchmark's timings (stats are None under --benchmark-disable)."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        rate = items / stats.stats.median
        benchmark.extra_info[unit] = rate  # type: ignore[attr-defined]
        record("writer", benchmark.name, Measurement(benchmark.name, items,  # type: ignore[attr-defined]
                                                     stats.stats.median))


def pytest_terminal_summary(terminalreporter: object) -> None:
    """Images/s of every figure, and fastforward's ratio to each comparator."""
    if not RESULTS:
        return
    write = terminalreporter.write_line  # type: ignore[attr-defined]
    write("")
    write(f"{'pipeline':<12} {'what':<72} {'images/s':>10}  fastforward ÷ this "
          "(of the medians; round by round: median, range)")
    for pipeline, rows in RESULTS.items():
        ours = rows.get("fastforward")
        for role, m in rows.items():
            ratio = ""
            if ours is None or role == "fastforward" or m.rate <= 0:
                pass
            elif (not role.startswith("decode limit")  # (a limit has no start-up to time)
                    and ours.name.endswith(WITH_START_UP) != m.name.endswith(WITH_START_UP)):
                ratio = "(none: one loader is timed with start-up, the other without)"
            else:
                ratio = f"{ours.rate / m.rate:6.2f}×"
                paired = sorted(paired_ratios(ours, m))
                if paired:
                    ratio += (f"  (rounds: {paired[len(paired) // 2]:.2f}×, "
                              f"{paired[0]:.2f}-{paired[-1]:.2f})")
            write(f"{pipeline:<12} {m.name:<72} {m.rate:>10,.0f}  {ratio}")


@pytest.fixture(scope="session")
def scenes_beton(tmp_path_factory: pytest.TempPathFactory, corpus_size: int) -> Path:
    """Detection and segmentation scenes (``fastforward.scenes``, about 240×320): the
    image as JPEG (quality 90), its class-id mask, and its objects (boxes, class ids)."""
    from fastforward.fields import MaskField, RaggedField
    from fastforward.scenes import make_scenes

    scenes = make_scenes(corpus_size, seed=0, size=(240, 320))
    path = tmp_path_factory.mktemp("bench") / "scenes.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", jpeg_quality=90),
                         "mask": MaskField(),
                         "objects": RaggedField(columns={"boxes": (np.float32, (4,)),
                                                         "labels": np.int64})},
                  progress=False).from_indexed_dataset(
        [(s.image, s.mask, s.objects()) for s in scenes])
    return path


@pytest.fixture(scope="session")
def scenes_folder(scenes_beton: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same scenes as files, for the DataLoader: the very JPEGs the .beton holds,
    the masks as PNG (and as .npy), the objects in one JSON file."""
    import json

    from PIL import Image

    from fastforward.reader import Reader

    root = tmp_path_factory.mktemp("bench") / "scenes"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    reader = Reader(scenes_beton)
    objects = []
    for index in range(reader.num_samples):
        row = reader.metadata[index]
        (root / "images" / f"{index:06d}.jpg").write_bytes(
            bytes(reader.payload(int(row["f0"]["data_ptr"]), index)))
        _, mask, found = reader.read(index)
        Image.fromarray(mask).save(root / "masks" / f"{index:06d}.png")
        np.save(root / "masks" / f"{index:06d}.npy", mask)
        objects.append([found["boxes"].tolist(), found["labels"].tolist()])
    (root / "objects.json").write_text(json.dumps(objects))
    return root

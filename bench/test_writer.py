"""Writer throughput: ImageFolder of JPEGs -> .beton at max_resolution=256, quality 90.

Beside it: FFCV 1.0.2's writer on the same folder (where FFCV is installed,
here or under ``--ffcv-python``), and two per-image limits, each one core's
rate times the number of cores: decoding the source JPEG to RGB and encoding
the stored one with simplejpeg (every loader that goes through RGB), and the
writer's own kernel, ``shrink_jpeg``, which shrinks and encodes without
leaving YCbCr (builds with libjpeg-turbo).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import record_throughput

from fastforward.datasets import ImageFolder
from fastforward.fields import IntField, RGBImageField
from fastforward.reader import Reader
from fastforward.utils import default_workers
from fastforward.writer import DatasetWriter

pytestmark = pytest.mark.benchmark(group="writer")


def fields() -> dict:
    return {"image": RGBImageField(write_mode="jpg", max_resolution=256, jpeg_quality=90),
            "label": IntField()}


def test_writer_images_per_s(benchmark, corpus: Path, tmp_path: Path) -> None:
    """Images/s of DatasetWriter over the corpus, every core."""
    dataset = ImageFolder(corpus)
    out = tmp_path / "out.beton"

    def run() -> None:
        DatasetWriter(out, fields(), num_workers=default_workers(), progress=False) \
            .from_indexed_dataset(dataset)

    benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    record_throughput(benchmark, len(dataset))
    reader = Reader(out)
    assert reader.num_samples == len(dataset)
    assert reader.verify() == []
    sides = np.maximum(reader.metadata["f0"]["width"], reader.metadata["f0"]["height"])
    assert sides.max() == 256


def test_ffcv_writer(benchmark, corpus: Path, comparators: dict[str, str | None]) -> None:
    """Images/s of FFCV 1.0.2's DatasetWriter on the same folder, every core."""
    from baselines import importable, throughput
    from conftest import record

    if not importable("ffcv", comparators["ffcv"]):
        pytest.skip("FFCV 1.0.2 is not installed (see README)")
    m = benchmark.pedantic(lambda: throughput("ffcv_writer", corpus, "", default_workers(),
                                              comparators["ffcv"]), rounds=1, iterations=1)
    record("writer", "FFCV", m)
    assert m.images > 0


def test_writer_side_by_side(benchmark, corpus: Path, tmp_path: Path, rounds: int,
                             comparators: dict[str, str | None]) -> None:
    """fastforward's writer and FFCV 1.0.2's, every core, taken in turn,
    ``--bench-rounds`` times: the ratio of the medians and, round by round, the
    ratios of figures taken minutes apart at most (FFCV's writer swings with the
    machine's load more than fastforward's)."""
    from baselines import importable, throughput
    from conftest import record

    from fastforward.benchmark import Measurement, side_by_side

    if not importable("ffcv", comparators["ffcv"]):
        pytest.skip("FFCV 1.0.2 is not installed (see README)")
    dataset = ImageFolder(corpus)
    workers = default_workers()

    def ours() -> Measurement:
        start = time.perf_counter()
        DatasetWriter(tmp_path / "out.beton", fields(), num_workers=workers,
                      progress=False).from_indexed_dataset(dataset)
        return Measurement(f"fastforward DatasetWriter ({workers} workers)", len(dataset),
                           time.perf_counter() - start)

    figures = benchmark.pedantic(lambda: side_by_side({
        "fastforward": ours,
        "FFCV": lambda: throughput("ffcv_writer", corpus, "", workers, comparators["ffcv"]),
    }, rounds), rounds=1, iterations=1)
    for role, m in figures.items():
        record("writer, side by side", role, m)
    assert all(m.images == len(dataset) for m in figures.values())


def test_decode_encode_limit(benchmark, corpus: Path, cores: int) -> None:
    """Images/s of bare simplejpeg decode (source) + encode (256 px), one core, x cores."""
    import simplejpeg

    blobs = [p.read_bytes() for p in sorted(corpus.glob("*/*.jpg"))]
    small = np.ascontiguousarray(simplejpeg.decode_jpeg(blobs[0])[::2, ::2])

    def run() -> None:
        for blob in blobs:
            simplejpeg.decode_jpeg(blob)
            simplejpeg.encode_jpeg(small, quality=90, colorsubsampling="420")

    benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    record_throughput(benchmark, len(blobs) * cores)  # the CPUs this process may use


def test_shrink_jpeg_limit(benchmark, corpus: Path, cores: int) -> None:
    """Images/s of the writer's kernel alone (source JPEG to stored JPEG without
    leaving YCbCr), one core, x cores."""
    import simplejpeg

    from fastforward._ext.resize import Workspace
    from fastforward.fields import rgb_image
    from fastforward.fields.rgb_image import target_size

    if rgb_image._region is None:
        pytest.skip("built without libjpeg-turbo")
    blobs = [p.read_bytes() for p in sorted(corpus.glob("*/*.jpg"))]
    targets = [target_size(*simplejpeg.decode_jpeg_header(b)[:2], 256, None) for b in blobs]
    decoder, workspace = rgb_image._region.JpegDecoder(), Workspace()

    def run() -> None:
        for blob, (height, width) in zip(blobs, targets, strict=True):
            rgb_image._region.shrink_jpeg(decoder, blob, height, width, 8, 90, 1, workspace)

    benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    record_throughput(benchmark, len(blobs) * cores)  # the CPUs this process may use

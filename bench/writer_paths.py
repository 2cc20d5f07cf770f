"""The writer's two paths from a source JPEG to the stored one, side by side (not a test):

    python bench/writer_paths.py IMAGE_FOLDER [ROUNDS]

IMAGE_FOLDER is an ImageFolder of JPEGs (``fastforward.demo.make_corpus`` writes
one; ``python bench/restart_markers.py --corpus N DIR`` makes N images under DIR).
Every image is stored at max_resolution=256, quality 90, 4:2:0, as the writer does.

- **RGB path** (the writer's before 2026-12-02, and still its path for sources
  ``shrink_jpeg`` does not take): decode to RGB at the smallest DCT scale that
  keeps twice the stored size (fast chroma upsampling), shrink by area
  averaging, encode (libjpeg-turbo, a restart marker per MCU row).
- **YCbCr path** (``shrink_jpeg``): decode each component without upsampling, shrink
  each plane by area averaging, encode the planes.

Each round: both paths per image on one thread, over the same images (the
first 600) in turn; then the writer end to end over all of them (every core;
fork start, so that the RGB path, chosen by switching
``RGBImageField._transcode`` off in this process, is the workers' too), each
path in turn. Then the quality of both on every image: PSNR of the stored image
against a full decode (accurate IDCT, smooth upsampling) shrunk by area
averaging in RGB.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import simplejpeg

from fastforward._ext.resize import Workspace, crop_resize_into
from fastforward.datasets import ImageFolder
from fastforward.fields import IntField, RGBImageField, rgb_image
from fastforward.utils import default_workers
from fastforward.writer import DatasetWriter

SIDE, QUALITY = 256, 90


FIELD = RGBImageField(write_mode="jpg", max_resolution=SIDE, jpeg_quality=QUALITY)


def rgb_path(data: bytes) -> bytes:
    """The writer's RGB path for a source JPEG (``RGBImageField._prepare``, then encode)."""
    return rgb_image.encode_jpeg(FIELD._prepare(data), QUALITY).tobytes()


def ycbcr_path(data: bytes) -> bytes:
    """The writer's YCbCr path (``RGBImageField._transcode``)."""
    transcoded = FIELD._transcode(data)
    assert transcoded is not None, "a JPEG the YCbCr path does not take"
    return transcoded[2]


def per_image_us(blobs: list[bytes]) -> dict[str, float]:
    """µs per image of each path on this thread, one pass each, in turn."""
    times = {}
    for name, path in (("rgb", rgb_path), ("ycbcr", ycbcr_path)):
        start = time.perf_counter()
        for data in blobs:
            path(data)
        times[name] = (time.perf_counter() - start) / len(blobs) * 1e6
    return times


def writer_rate(folder: Path, out: Path, transcode: bool) -> float:
    """Images/s of DatasetWriter on every core, with or without the YCbCr path."""
    saved = RGBImageField._transcode
    if not transcode:
        RGBImageField._transcode = lambda self, field: None  # type: ignore[method-assign]
    try:
        dataset = ImageFolder(folder)
        start = time.perf_counter()
        DatasetWriter(out, {"image": RGBImageField(write_mode="jpg", max_resolution=SIDE,
                                                   jpeg_quality=QUALITY),
                            "label": IntField()}, num_workers=default_workers(),
                      progress=False, start_method="fork").from_indexed_dataset(dataset)
        return len(dataset) / (time.perf_counter() - start)
    finally:
        RGBImageField._transcode = saved  # type: ignore[method-assign]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def quality(blobs: list[bytes], targets: list[tuple[int, int]]) -> dict[str, list[float]]:
    workspace = Workspace()
    scores: dict[str, list[float]] = {"rgb": [], "ycbcr": []}
    for data, (height, width) in zip(blobs, targets, strict=True):
        full = simplejpeg.decode_jpeg(data)
        reference = np.empty((height, width, 3), np.uint8)
        crop_resize_into(full, 0, 0, *full.shape[:2], reference, workspace=workspace)
        scores["rgb"].append(psnr(simplejpeg.decode_jpeg(rgb_path(data)), reference))
        scores["ycbcr"].append(psnr(simplejpeg.decode_jpeg(ycbcr_path(data)), reference))
    return scores


def main(folder: Path, rounds: int) -> None:
    if rgb_image._region is None:
        raise SystemExit("this build has no libjpeg-turbo (see setup.py)")
    paths = [p for p, _ in ImageFolder(folder).samples]
    blobs = [p.read_bytes() for p in paths]
    targets = [rgb_image.target_size(*simplejpeg.decode_jpeg_header(b)[:2], SIDE, None)
               for b in blobs]
    print(f"{len(blobs)} JPEGs, {np.mean([len(b) for b in blobs]) / 1e3:.0f} KB on average, "
          f"stored at {SIDE} px, quality {QUALITY}")
    some = slice(0, min(len(blobs), 600))
    with tempfile.TemporaryDirectory() as work:
        for r in range(rounds):
            us = per_image_us(blobs[some])
            rates = {name: writer_rate(folder, Path(work) / f"{name}.beton", name == "ycbcr")
                     for name in ("rgb", "ycbcr")}
            print(f"round {r + 1}: one thread, µs per image: RGB {us['rgb']:.0f}, YCbCr "
                  f"{us['ycbcr']:.0f} (×{us['rgb'] / us['ycbcr']:.2f}); writer, "
                  f"{default_workers()} workers: RGB {rates['rgb']:.0f}, YCbCr "
                  f"{rates['ycbcr']:.0f} images/s (×{rates['ycbcr'] / rates['rgb']:.2f})")
    scores = quality(blobs, targets)
    for name, values in scores.items():
        print(f"PSNR against a full decode shrunk in RGB, {name:5}: worst {min(values):.2f} "
              f"dB, median {statistics.median(values):.2f} dB")
    differences = np.subtract(scores["ycbcr"], scores["rgb"])
    print(f"YCbCr − RGB per image: worst {differences.min():+.2f} dB, median "
          f"{np.median(differences):+.2f} dB, best {differences.max():+.2f} dB")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3)

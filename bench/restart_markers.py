"""Restart markers in the writer's JPEGs: file size and loader speed, with and
without, in one run, in turn (not a test):

    python bench/restart_markers.py IMAGE_FOLDER [ROUNDS] [WORKDIR]

IMAGE_FOLDER is an ImageFolder (``fastforward.demo.make_corpus`` writes one;
``python bench/restart_markers.py --corpus N DIR`` makes N images under DIR).
The folder is written twice at max_resolution=256, quality 90, 4:2:0: once as
the writer does (a restart marker at each MCU row), once with the same
libjpeg-turbo encoder and no markers. Then each round takes, for each file,
the decode limit (simplejpeg, accurate IDCT, every core, whole images) and
pipelines (a) center_crop and (b) train (one warm-up epoch, three timed);
every figure is printed with its ratio to the same round's limit on the same
file. Then the crop kernel alone (one thread, pipeline (b)'s crops) on the
marked file, starting at the markers and not; last, the writer (2 workers)
with markers, without, and, with libjpeg-turbo switched off, through RGB with
simplejpeg's decoder and encoder, in turn, each round.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import fastforward.fields.rgb_image as rgb_image
from fastforward.benchmark import decode_limit, loader_throughput, stored_jpegs
from fastforward.datasets import ImageFolder
from fastforward.fields import IntField, RGBImageField
from fastforward.reader import Reader
from fastforward.writer import DatasetWriter


def write(folder: Path, path: Path, markers: bool, num_workers: int = 1) -> None:
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", max_resolution=256,
                                                jpeg_quality=90, restart_markers=markers),
                         "label": IntField()}, num_workers=num_workers,
                  progress=False).from_indexed_dataset(ImageFolder(folder))


def writer_rates(folder: Path, workdir: Path) -> dict[str, float]:
    """Images/s of the writer (2 workers) with markers, without, and through RGB with
    simplejpeg (chosen by clearing ``rgb_image._region`` in this process: a
    measurement aid; the forked workers inherit it), in turn."""
    count = len(ImageFolder(folder))
    region = rgb_image._region
    rates = {}
    try:
        for mode in ("markers", "none", "simplejpeg"):
            rgb_image._region = None if mode == "simplejpeg" else region
            start = time.perf_counter()
            write(folder, workdir / f"writer-{mode}.beton", mode == "markers", num_workers=2)
            rates[mode] = count / (time.perf_counter() - start)
    finally:
        rgb_image._region = region
    return rates


def kernel_us(path: Path, restarts: bool, count: int = 2000) -> float:
    """µs per image of decode_crop_resize_range over pipeline (b)'s crops."""
    from fastforward._ext.resize import Workspace
    from fastforward.transforms.crop import RANDOM_CROP_UNIFORMS, random_crops

    reader = Reader(path)
    blobs = stored_jpegs(reader, "image", count)
    source = np.frombuffer(b"".join(blobs), np.uint8)
    sizes = np.array([len(b) for b in blobs], np.uint64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
    meta = reader.metadata[f"f{reader.field_names.index('image')}"][:len(blobs)]
    heights = meta["height"].astype(np.int64)
    widths = meta["width"].astype(np.int64)
    rng = np.random.default_rng(0)
    crops = random_crops(heights, widths, (0.08, 1.0), (3 / 4, 4 / 3),
                         rng.random((len(blobs), RANDOM_CROP_UNIFORMS))).astype(np.int64)
    out = np.empty((len(blobs), 192, 192, 3), np.uint8)
    decoder, workspace = rgb_image._region.JpegDecoder(), Workspace()
    raw = np.zeros(len(blobs), np.uint8)
    flips = np.zeros(len(blobs), np.uint8)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        failed = rgb_image._region.decode_crop_resize_range(
            decoder, source, starts, sizes, raw, heights, widths, crops, flips, out, None,
            None, workspace, restarts=restarts)
        best = min(best, time.perf_counter() - start)
        assert failed is None, failed
    return best / len(blobs) * 1e6


def main(folder: Path, rounds: int, workdir: Path) -> None:
    if rgb_image._region is None:
        raise SystemExit("this build has no libjpeg-turbo (see setup.py)")
    workdir.mkdir(parents=True, exist_ok=True)
    files = {"markers": workdir / "markers.beton", "none": workdir / "none.beton"}
    for name, path in files.items():
        write(folder, path, name == "markers")
    sizes = {name: sum(len(b) for b in stored_jpegs(Reader(p), "image"))
             for name, p in files.items()}
    print(f"JPEG bytes: markers {sizes['markers']:,}, none {sizes['none']:,} "
          f"(+{(sizes['markers'] / sizes['none'] - 1) * 100:.2f}%)")
    figures: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name, path in files.items():
            figures.setdefault((name, "limit"), []).append(
                decode_limit(stored_jpegs(Reader(path), "image"), repeat=2).rate)
            for pipeline in ("center_crop", "train"):
                figures.setdefault((name, pipeline), []).append(loader_throughput(
                    path, pipeline, epochs=3, warmup_epochs=1).rate)
    for (name, what), rates in figures.items():
        limits = figures[(name, "limit")]
        print(f"{name:8} {what:12} " + " ".join(f"{r:7.0f}" for r in rates)
              + "   ÷ its limit: " + " ".join(f"{r / lim:.2f}" for r, lim in zip(
                  rates, limits, strict=True)))
    for restarts in (True, False):
        runs = [kernel_us(files["markers"], restarts) for _ in range(3)]
        print(f"crop kernel, (b)'s crops, one thread, markers file, "
              f"{'from the markers' if restarts else 'from the top   '}: "
              f"{statistics.median(runs):.1f} µs/image "
              f"(runs {', '.join(f'{r:.1f}' for r in runs)})")
    runs = [kernel_us(files["none"], True) for _ in range(3)]
    print(f"crop kernel, (b)'s crops, one thread, unmarked file: "
          f"{statistics.median(runs):.1f} µs/image")
    writes = [writer_rates(folder, workdir) for _ in range(rounds)]
    for mode in writes[0]:
        print(f"writer, 2 workers, {mode:10}: "
              + " ".join(f"{w[mode]:7.0f}" for w in writes) + " images/s")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(len(sys.argv) < 2)
    if sys.argv[1] == "--corpus":
        from fastforward.demo import make_corpus

        make_corpus(sys.argv[3], int(sys.argv[2]), seed=0)
        raise SystemExit(0)
    work = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(tempfile.mkdtemp())
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3, work)

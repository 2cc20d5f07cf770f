"""fastforward's Huffman decoder against libjpeg-turbo's, side by side (not a test):

    python bench/huffman.py IMAGE_FOLDER [ROUNDS] [WORKDIR]

IMAGE_FOLDER is an ImageFolder of JPEGs (``fastforward.demo.make_corpus`` writes
one; ``python bench/restart_markers.py --corpus N DIR`` makes N images under DIR).
It is written twice at max_resolution=256, quality 90: as the writer does (a
restart marker at each MCU row) and without markers (into WORKDIR, where files
already there are used as they are: give a fresh WORKDIR for another folder). Each round, each line
runs libjpeg's entropy decoder (``JpegDecoder.libjpeg_huffman``, or
``FASTFORWARD_HUFFMAN=libjpeg`` for whole loaders and writers) and then
fastforward's, on the same data, and prints the medians over rounds and the
median of the per-round ratios (libjpeg's time ÷ fastforward's):

- the crop kernel alone, one thread, pipelines (a) (centre crops, 224 px) and
  (b) (random resized crops, 192 px), on both files;
- whole stored images (``decode_window`` over all of it), both files;
- the writer's kernel (``shrink_jpeg``) on the source JPEGs;
- the loader, pipelines (a) and (b), every core, on the file with markers,
  with the decode limit (simplejpeg, whole images, accurate IDCT, every core)
  on the file without markers, the fastest whole-image decode of those images;
- the writer end to end (every core).
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from restart_markers import write

import fastforward.fields.rgb_image as rgb_image
from fastforward._ext.resize import Workspace
from fastforward.benchmark import decode_limit, loader_throughput, stored_jpegs
from fastforward.datasets import ImageFolder
from fastforward.reader import Reader
from fastforward.transforms.crop import RANDOM_CROP_UNIFORMS, center_crops, random_crops
from fastforward.utils import default_workers

MODES = ("libjpeg", "fastforward")


def decoder(mode: str) -> object:
    made = rgb_image._region.JpegDecoder()
    made.libjpeg_huffman = mode == "libjpeg"
    return made


def kernel_range(path: Path, pipeline: str, count: int = 1000) -> tuple:
    """decode_crop_resize_range's arguments for the first *count* images of *path*."""
    reader = Reader(path)
    blobs = stored_jpegs(reader, "image", count)
    meta = reader.metadata[f"f{reader.field_names.index('image')}"][:len(blobs)]
    heights, widths = meta["height"].astype(np.int64), meta["width"].astype(np.int64)
    if pipeline == "a":
        crops, size = center_crops(heights, widths, 224 / 256), 224
    else:
        uniforms = np.random.default_rng(0).random((len(blobs), RANDOM_CROP_UNIFORMS))
        crops, size = random_crops(heights, widths, (0.08, 1.0), (3 / 4, 4 / 3), uniforms), 192
    sizes = np.array([len(b) for b in blobs], np.uint64)
    n = len(blobs)
    return (np.frombuffer(b"".join(blobs), np.uint8),
            np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64), sizes,
            np.zeros(n, np.uint8), heights, widths, crops.astype(np.int64), np.zeros(n, np.uint8),
            np.empty((n, size, size, 3), np.uint8))


def kernel_us(arguments: tuple, mode: str) -> float:
    workspace = Workspace()
    start = time.perf_counter()
    failed = rgb_image._region.decode_crop_resize_range(decoder(mode), *arguments, None, None,
                                                        workspace)
    assert failed is None, failed
    return (time.perf_counter() - start) / len(arguments[1]) * 1e6


def whole_us(blobs: list[bytes], mode: str) -> float:
    from PIL import Image

    made = decoder(mode)
    sizes = [Image.open(io.BytesIO(b)).size for b in blobs]
    start = time.perf_counter()
    for blob, (width, height) in zip(blobs, sizes, strict=True):
        rgb_image._region.decode_window(made, blob, height, width, 8, 0, height, 0, width)
    return (time.perf_counter() - start) / len(blobs) * 1e6


def shrink_us(blobs: list[bytes], mode: str) -> float:
    """The writer's kernel on each source: stored at 256 px (its DCT scale rule)."""
    from PIL import Image

    made, workspace = decoder(mode), Workspace()
    plans = []
    for blob in blobs:
        width, height = Image.open(io.BytesIO(blob)).size
        ratio = 256 / max(height, width)
        target = (max(1, round(height * ratio)), max(1, round(width * ratio)))
        plans.append((blob, target, rgb_image.source_scale(height, width, *target)))
    start = time.perf_counter()
    for blob, (height, width), scale in plans:
        rgb_image._region.shrink_jpeg(made, blob, height, width, scale, 90, workspace=workspace)
    return (time.perf_counter() - start) / len(blobs) * 1e6


def with_environment(mode: str, run: Callable[[], float]) -> float:
    """*run* with FASTFORWARD_HUFFMAN set (decoders made meanwhile, in this process or
    in forked workers, use that decoder)."""
    before = os.environ.get("FASTFORWARD_HUFFMAN")
    os.environ["FASTFORWARD_HUFFMAN"] = mode
    try:
        return run()
    finally:
        if before is None:
            del os.environ["FASTFORWARD_HUFFMAN"]
        else:
            os.environ["FASTFORWARD_HUFFMAN"] = before


def report(name: str, figures: dict[str, list[float]], unit: str, higher_is_faster: bool) -> None:
    ratios = [(ours / theirs if higher_is_faster else theirs / ours)
              for theirs, ours in zip(figures["libjpeg"], figures["fastforward"], strict=True)]
    print(f"{name:44} libjpeg {statistics.median(figures['libjpeg']):8.1f}  "
          f"fastforward {statistics.median(figures['fastforward']):8.1f} {unit}   "
          f"fastforward is {statistics.median(ratios):.3f}x "
          f"({min(ratios):.3f}-{max(ratios):.3f})", flush=True)


def main(folder: Path, rounds: int, workdir: Path) -> None:
    if rgb_image._region is None:
        raise SystemExit("this build has no libjpeg-turbo (see setup.py)")
    workdir.mkdir(parents=True, exist_ok=True)
    files = {"markers": workdir / "markers.beton", "none": workdir / "none.beton"}
    for name, path in files.items():
        if not path.exists():
            write(folder, path, name == "markers", num_workers=default_workers())
    sources = [Path(p).read_bytes() for p, _ in ImageFolder(folder).samples[:400]]
    print(f"{len(ImageFolder(folder))} images; {default_workers()} cores; {rounds} rounds")

    def rounds_of(measure: Callable[[str], float]) -> dict[str, list[float]]:
        figures: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(rounds):
            for mode in MODES:
                figures[mode].append(measure(mode))
        return figures

    for pipeline in ("a", "b"):
        for name, path in files.items():
            arguments = kernel_range(path, pipeline)
            kernel_us(arguments, "fastforward")  # fault the output in
            report(f"crop kernel ({pipeline}), one thread, {name}",
                   rounds_of(lambda mode, a=arguments: kernel_us(a, mode)), "µs/image", False)
    for name, path in files.items():
        blobs = stored_jpegs(Reader(path), "image", 600)
        report(f"whole stored image, one thread, {name}",
               rounds_of(lambda mode, b=blobs: whole_us(b, mode)), "µs/image", False)
    report("writer kernel (shrink_jpeg), one thread",
           rounds_of(lambda mode: shrink_us(sources, mode)), "µs/image", False)
    unmarked = stored_jpegs(Reader(files["none"]), "image")
    loader: dict[str, dict[str, list[float]]] = {p: {m: [] for m in MODES}
                                                 for p in ("center_crop", "train")}
    limits = []
    for _ in range(rounds):
        limits.append(decode_limit(unmarked, repeat=2).rate)
        for pipeline in loader:
            for mode in MODES:
                loader[pipeline][mode].append(with_environment(mode, lambda p=pipeline: (
                    loader_throughput(files["markers"], p, epochs=3, warmup_epochs=1).rate)))
    print(f"decode limit (unmarked files): {statistics.median(limits):.0f} images/s "
          f"({min(limits):.0f}-{max(limits):.0f})")
    for pipeline, figures in loader.items():
        report(f"loader {pipeline}, every core, markers", figures, "images/s", True)
        for mode in MODES:
            ratios = [r / lim for r, lim in zip(figures[mode], limits, strict=True)]
            print(f"    {mode:12} ÷ decode limit: "
                  + " ".join(f"{r:.2f}" for r in ratios))

    def writer_rate(mode: str) -> float:
        def run() -> float:
            start = time.perf_counter()
            write(folder, workdir / "writer.beton", True, num_workers=default_workers())
            return len(ImageFolder(folder)) / (time.perf_counter() - start)
        return with_environment(mode, run)

    report("writer end to end, every core", rounds_of(writer_rate), "images/s", True)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(len(sys.argv) < 2)
    work = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(tempfile.mkdtemp())
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3, work)

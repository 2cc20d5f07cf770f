"""Where the writer's CPU goes, per image, against its kernel alone (not a test):

    python bench/writer_cpu.py IMAGE_FOLDER [ROUNDS]

IMAGE_FOLDER is an ImageFolder of JPEGs (``fastforward.demo.make_corpus`` writes
one). Every image is stored at max_resolution=256, quality 90, as
``bench/test_writer.py`` stores them.

Each round, in turn in one process:

- the kernel alone (``shrink_jpeg``, the writer's path from a source JPEG to the
  stored one) over every image on one thread: images/s and CPU per image;
- the writer end to end with 1 worker, then with one per core: images/s, the
  workers' CPU per image and the parent's.

Workers are forked (``start_method='fork'``), so that their CPU time, once they
are reaped, is this process's children's (``RUSAGE_CHILDREN``). A worker's CPU
beyond the kernel's is reading each file, the dataset and the field's Python
work, its start and the results sent to the parent; the parent receives the
chunks, places them in pages and writes the file.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import simplejpeg

from fastforward._ext.resize import Workspace
from fastforward.datasets import ImageFolder
from fastforward.fields import IntField, RGBImageField, rgb_image
from fastforward.fields.rgb_image import source_scale, target_size
from fastforward.utils import default_workers
from fastforward.writer import DatasetWriter

SIDE, QUALITY = 256, 90


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def kernel(blobs: list[bytes]) -> tuple[float, float]:
    """Images/s and CPU µs per image of ``shrink_jpeg`` alone, one thread."""
    assert rgb_image._region is not None
    sizes = [simplejpeg.decode_jpeg_header(blob)[:2] for blob in blobs]
    targets = [target_size(h, w, SIDE, None) for h, w in sizes]
    scales = [source_scale(h, w, *t) for (h, w), t in zip(sizes, targets, strict=True)]
    decoder, workspace = rgb_image._region.JpegDecoder(), Workspace()
    began, cpu = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)
    for blob, (height, width), scale in zip(blobs, targets, scales, strict=True):
        rgb_image._region.shrink_jpeg(decoder, blob, height, width, scale, QUALITY, 1,
                                      workspace)
    wall = time.perf_counter() - began
    return len(blobs) / wall, (cpu_seconds(resource.RUSAGE_SELF) - cpu) / len(blobs) * 1e6


def writer(folder: Path, out: Path, workers: int) -> tuple[float, float, float]:
    """Images/s, the workers' CPU µs per image and the parent's."""
    dataset = ImageFolder(folder)
    fields = {"image": RGBImageField(write_mode="jpg", max_resolution=SIDE,
                                     jpeg_quality=QUALITY), "label": IntField()}
    began = time.perf_counter()
    children, parent = cpu_seconds(resource.RUSAGE_CHILDREN), cpu_seconds(resource.RUSAGE_SELF)
    DatasetWriter(out, fields, num_workers=workers, progress=False,
                  start_method="fork").from_indexed_dataset(dataset)
    wall = time.perf_counter() - began
    n = len(dataset)
    return (n / wall, (cpu_seconds(resource.RUSAGE_CHILDREN) - children) / n * 1e6,
            (cpu_seconds(resource.RUSAGE_SELF) - parent) / n * 1e6)


def main() -> None:
    if len(sys.argv) not in (2, 3) or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(len(sys.argv) not in (2, 3))
    folder = Path(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) == 3 else 3
    if rgb_image._region is None:
        sys.exit("built without libjpeg-turbo: the writer goes through RGB")
    blobs = [path.read_bytes() for path in sorted(folder.glob("*/*.jpg"))]
    if not blobs:
        sys.exit(f"{folder}: no */*.jpg images")
    cores = default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            rate, cpu = kernel(blobs)
            print(f"round {r + 1}: kernel, 1 thread: {rate:7,.0f} images/s, "
                  f"{cpu:5.0f} µs of CPU an image", flush=True)
            for workers in sorted({1, cores}):
                rate, child, parent = writer(folder, Path(tmp) / "out.beton", workers)
                print(f"round {r + 1}: writer, {workers} worker(s): {rate:7,.0f} images/s, "
                      f"workers {child:5.0f} µs of CPU an image, parent {parent:4.0f}",
                      flush=True)


if __name__ == "__main__":
    main()

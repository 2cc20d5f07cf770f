"""How much pipeline (b)'s crop kernel moves from round to round on this
machine, and whether the batch it writes is why (not a test):

    python bench/kernel_drift.py FILE.beton [--rounds 8] [--images 2816]

One thread; the same stored JPEGs and the same RandomResizedCrop(192) + flip
boxes in every round, float16 out (the region kernel, as in
``bench/profile_kernels.py region_b``). Each round times, in CPU time per
image, in turn:

- ``batch``: the kernel writing batches of 256 images into one 56 MB array,
  as the loader writes its slots (more than the caches hold);
- ``small``: the same images, 16 at a time into one 3.5 MB array, reused;
- ``whole``: simplejpeg decoding the same JPEGs whole (accurate IDCT) into one
  reused buffer: the decode limit's work.

If the 56 MB written per batch were what makes (b) move more than the decode
limit from run to run, ``batch`` would move and ``small`` would not.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import simplejpeg

from fastforward._ext import jpeg
from fastforward._ext.resize import Workspace
from fastforward.benchmark import stored_jpegs
from fastforward.reader import Reader
from fastforward.transforms.crop import get_random_crop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a .beton file with an 'image' field of JPEGs")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--images", type=int, default=2816)
    args = parser.parse_args()

    blobs = stored_jpegs(Reader(args.path), "image", limit=args.images)
    count = len(blobs) - len(blobs) % 256
    if count == 0:
        raise SystemExit(f"{args.path}: fewer than 256 stored JPEGs")
    shapes = [simplejpeg.decode_jpeg_header(b)[:2] for b in blobs[:count]]
    rng = np.random.default_rng(0)
    crops = np.array([get_random_crop(h, w, (0.08, 1.0), (3 / 4, 4 / 3), rng.random(22))
                      for h, w in shapes], np.int64)
    flips = (rng.random(count) < 0.5).astype(np.uint8)
    source = np.frombuffer(b"".join(blobs[:count]), np.uint8)
    sizes = np.array([len(b) for b in blobs[:count]], np.uint64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
    heights = np.array([s[0] for s in shapes], np.int64)
    widths = np.array([s[1] for s in shapes], np.int64)
    decoder, workspace = jpeg.JpegDecoder(), Workspace()
    outputs = {n: np.ones((n, 192, 192, 3), np.float16) for n in (256, 16)}
    buffer = np.empty(4 << 20, np.uint8)

    def region(n: int) -> float:
        out, plain = outputs[n], np.zeros(n, np.uint8)
        start = time.process_time()
        for first in range(0, count, n):
            part = slice(first, first + n)
            failed = jpeg.decode_crop_resize_range(
                decoder, source, starts[part], sizes[part], plain, heights[part],
                widths[part], crops[part], flips[part], out, None, None, workspace)
            assert failed is None, failed
        return (time.process_time() - start) / count * 1e6

    def whole() -> float:
        start = time.process_time()
        for blob in blobs[:count]:
            simplejpeg.decode_jpeg(blob, buffer=buffer)
        return (time.process_time() - start) / count * 1e6

    region(256), region(16)  # fault the outputs in, derive the tables
    print(f"{count} images, µs of CPU per image, one thread")
    print(f"{'round':>5} {'batch':>7} {'small':>7} {'whole':>7}  whole÷batch")
    rows = []
    for k in range(args.rounds):
        row = (region(256), region(16), whole())
        rows.append(row)
        print(f"{k + 1:>5} {row[0]:7.0f} {row[1]:7.0f} {row[2]:7.0f}  {row[2] / row[0]:.2f}")
    table = np.array(rows)
    low, high = table.min(axis=0), table.max(axis=0)
    print("range " + " ".join(f"{lo:.0f}-{hi:.0f} (x{hi / lo:.2f})"
                              for lo, hi in zip(low, high, strict=True)))


if __name__ == "__main__":
    main()

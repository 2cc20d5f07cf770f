"""One kernel over the first N stored JPEGs of a file, for a profiler (not a test).

    python bench/profile_kernels.py FILE.beton MODE [N]

MODE is what runs after the common setup (reading the JPEGs, drawing the crops):

- ``base``: nothing (subtract its count from the others);
- ``whole_accurate`` / ``whole_fastdct``: simplejpeg decoding whole images
  (the decode limit / the fallback's decode);
- ``whole_b`` / ``whole_a``: the fallback crop decoders' work, whole decode
  (fastdct) + ``crop_resize_into``, for pipeline (b) (RandomResizedCrop 192,
  flip, float16) and (a) (CenterCrop 224 of 256, uint8);
- ``region_b`` / ``region_a``: the region kernel doing the same, all N images
  in one call (builds with libjpeg-turbo).

Instruction counts are stable on a shared machine where times are not::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p python \
        bench/profile_kernels.py train.beton region_b 200

then (count - base count) / N per image; ``callgrind_annotate`` splits it by
function (libjpeg-turbo's ``decode_mcu`` is the Huffman decoding).
"""

from __future__ import annotations

import sys

import numpy as np
import simplejpeg

from fastforward._ext.resize import Workspace, crop_resize_into
from fastforward.benchmark import stored_jpegs
from fastforward.reader import Reader
from fastforward.transforms.crop import get_center_crop, get_random_crop


def main(path: str, mode: str, count: int) -> None:
    blobs = stored_jpegs(Reader(path), "image", limit=count)
    shapes = [simplejpeg.decode_jpeg_header(b)[:2] for b in blobs]
    rng = np.random.default_rng(0)
    if mode.endswith("_a"):
        crops = [get_center_crop(h, w, 224 / 256) for h, w in shapes]
        flips = np.zeros(len(blobs), np.uint8)
        out = np.zeros((len(blobs), 224, 224, 3), np.uint8)
    else:
        crops = [get_random_crop(h, w, (0.08, 1.0), (3 / 4, 4 / 3), rng.random(22))
                 for h, w in shapes]
        flips = (rng.random(len(blobs)) < 0.5).astype(np.uint8)
        out = np.zeros((len(blobs), 192, 192, 3), np.float16)
    buffer, workspace = np.empty(4 << 20, np.uint8), Workspace()
    if mode == "base":
        return
    if mode in ("whole_accurate", "whole_fastdct"):
        for blob in blobs:
            simplejpeg.decode_jpeg(blob, fastdct=mode == "whole_fastdct", buffer=buffer)
    elif mode in ("whole_a", "whole_b"):
        for k, blob in enumerate(blobs):
            image = simplejpeg.decode_jpeg(blob, fastdct=True, buffer=buffer)
            crop_resize_into(image, *crops[k], out[k], bool(flips[k]), workspace=workspace)
    elif mode in ("region_a", "region_b"):
        from fastforward._ext import jpeg

        source = np.frombuffer(b"".join(blobs), np.uint8)
        sizes = np.array([len(b) for b in blobs], np.uint64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
        failed = jpeg.decode_crop_resize_range(
            jpeg.JpegDecoder(), source, starts, sizes, np.zeros(len(blobs), np.uint8),
            np.array([s[0] for s in shapes], np.int64), np.array([s[1] for s in shapes], np.int64),
            np.array(crops, np.int64), flips, out, None, None, workspace)
        assert failed is None, failed
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 200)

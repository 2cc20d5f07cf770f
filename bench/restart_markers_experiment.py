"""Experiment (reverted in the next commit): JPEGs with a restart marker per MCU row,
and crops that start entropy decoding at the marker above them.

    python bench/restart_markers_experiment.py size 0|1          # mean bytes per JPEG
    valgrind --tool=callgrind python bench/restart_markers_experiment.py MODE ROWS
      MODE: base (setup only), b (RandomResizedCrop 192 float16), a (CenterCrop 224),
      whole (simplejpeg, accurate DCT); ROWS: 0 (no markers) or 1 (one per MCU row)

It reads /tmp/jb/train600.beton (600 images of fastforward.demo.make_corpus, written
at max_resolution=256, jpeg_quality=90) and re-encodes 200 of its images.
"""
import sys

import numpy as np
import simplejpeg

from fastforward._ext import jpeg
from fastforward._ext.resize import Workspace
from fastforward.benchmark import stored_jpegs
from fastforward.reader import Reader
from fastforward.transforms.crop import get_center_crop, get_random_crop

mode, rows = sys.argv[1], int(sys.argv[2])
stored = stored_jpegs(Reader("/tmp/jb/train600.beton"), "image")[:200]
images = [simplejpeg.decode_jpeg(b) for b in stored]
blobs = [jpeg.encode_jpeg(image, 90, rows) for image in images]
if mode == "size":
    print(rows, sum(map(len, blobs)) / len(blobs))
    sys.exit()
shapes = [image.shape[:2] for image in images]
rng = np.random.default_rng(0)
rrc = [get_random_crop(h, w, (0.08, 1.0), (3 / 4, 4 / 3), rng.random(22)) for h, w in shapes]
cc = [get_center_crop(h, w, 224 / 256) for h, w in shapes]
flips = (rng.random(len(blobs)) < 0.5).astype(np.uint8)
n = len(blobs)
decoder, workspace = jpeg.JpegDecoder(), Workspace()
source = np.frombuffer(b"".join(blobs), np.uint8)
sizes = np.array([len(b) for b in blobs], np.uint64)
starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
heights = np.array([s[0] for s in shapes], np.int64)
widths = np.array([s[1] for s in shapes], np.int64)


def kernel(crops: list, out: np.ndarray, flip: np.ndarray) -> None:
    failed = jpeg.decode_crop_resize_range(decoder, source, starts, sizes, np.zeros(n, np.uint8),
                                           heights, widths, np.array(crops, np.int64), flip, out,
                                           None, None, workspace)
    assert failed is None


if mode == "b":
    kernel(rrc, np.zeros((n, 192, 192, 3), np.float16), flips)
elif mode == "a":
    kernel(cc, np.zeros((n, 224, 224, 3), np.uint8), np.zeros(n, np.uint8))
elif mode == "whole":
    buffer = np.empty(4 << 20, np.uint8)
    for blob in blobs:
        simplejpeg.decode_jpeg(blob, fastdct=False, buffer=buffer)

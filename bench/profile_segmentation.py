"""The segmentation pipeline's decoders on one thread, for a profiler (not a test).

    python bench/profile_segmentation.py FILE.beton MODE [N]

FILE holds an ``image`` (JPEG) and a ``mask`` field (``MaskField``), as the
scenes of ``bench/conftest.py`` (``scenes_beton``). The decoders run exactly
as a loader runs them, in batches of 64 decoded as one range each, on the
first N samples (default 512): RandomResizedCrop(256) + a fused flip +
NormalizeImage(float32) for the image, the mask following it. MODE:

- ``base``: the common setup only (subtract its count from the others);
- ``image``: the image decoder alone (it still writes the geometry rows);
- ``mask``: the image decoder, then the mask decoder (so ``mask - image``
  is what the mask costs);
- ``time``: both, timed, five passes over the N samples in turn (µs per
  sample: image alone, image + mask).

Instruction counts are stable on a shared machine where times are not::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p python \\
        bench/profile_segmentation.py scenes.beton mask 512

then (count - base count) / N per sample; ``callgrind_annotate`` splits it by
function.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from fastforward.fields.decoders import MaskDecoder, RandomResizedCropRGBImageDecoder
from fastforward.memory_managers.os_cache import OSCacheManager
from fastforward.pipeline import BatchContext
from fastforward.pipeline.geometry import GEOMETRY
from fastforward.pipeline.state import State
from fastforward.reader import Reader
from fastforward.transforms import NormalizeImage, RandomHorizontalFlip

MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255
BATCH = 64


def setup(path: str, count: int) -> tuple:
    """The bound decoders, their buffers and the batches' payloads."""
    reader = Reader(path)
    image = RandomResizedCropRGBImageDecoder((256, 256))
    mask = MaskDecoder(follows="image")
    for decoder, name in ((image, "image"), (mask, "mask")):
        index = reader.field_names.index(name)
        decoder.bind(reader.handlers[name], name, index, reader.metadata[f"f{index}"],
                     reader.fname)
    image.fuse([RandomHorizontalFlip(), NormalizeImage(MEAN, STD, np.float32)], [1, 2])
    image_state, image_query = image.declare_state_and_memory(State())
    mask.leader_state = image_state
    _, mask_query = mask.declare_state_and_memory(State())
    images = np.empty((BATCH, *image_query.shape), image_query.dtype)
    masks = np.empty((BATCH, *mask_query.shape), mask_query.dtype)
    geometry = np.empty(BATCH, GEOMETRY)
    manager = OSCacheManager(reader)
    batches = []
    count = min(count, reader.num_samples)
    for lo in range(0, count, BATCH):
        indices = np.arange(lo, min(lo + BATCH, count))
        batches.append((indices, manager.fetch(indices)))
    return image, mask, images, masks, geometry, batches


def run(parts: tuple, with_mask: bool) -> None:
    image, mask, images, masks, geometry, batches = parts
    for number, (indices, data) in enumerate(batches):
        n = len(indices)
        context = BatchContext(indices, 0, 0, stream=1, batch_index=number, data=data,
                               geometry_out=geometry[:n])
        image.decode_range(0, n, images, context)
        if with_mask:
            context = BatchContext(indices, 0, 0, stream=2, batch_index=number, data=data,
                                   geometry={"image": geometry[:n]})
            mask.decode_range(0, n, masks, context)


def main(path: str, mode: str, count: int) -> None:
    parts = setup(path, count)
    samples = sum(len(indices) for indices, _ in parts[-1])
    if mode == "base":
        return
    if mode in ("image", "mask"):
        run(parts, mode == "mask")
        return
    if mode != "time":
        raise SystemExit(f"unknown mode {mode!r}")
    run(parts, True)  # warm up: buffers faulted in, scratch grown
    for _ in range(5):
        figures = []
        for with_mask in (False, True):
            start = time.perf_counter()
            run(parts, with_mask)
            figures.append((time.perf_counter() - start) / samples * 1e6)
        print(f"image {figures[0]:.1f} µs, image + mask {figures[1]:.1f} µs: the mask "
              f"{figures[1] - figures[0]:.1f} µs per sample", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 512)

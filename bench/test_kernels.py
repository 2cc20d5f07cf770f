"""Per image, on one thread: what the crop decoders' inner loop costs.

Each stored JPEG is decoded into a kept buffer (fastdct, as the loader does),
then, in the same pass, cropped and resized into a kept output with
``crop_resize_into``: the decoded image is still in the cache, as in the
loader's fallback (builds without libjpeg-turbo). Beside them, the crop
decoders' kernel in builds with it: each crop's region decoded, then resized,
all images in one call. The closing table shows each beside the decode alone
(the ratio is the share of decode speed kept), for pipelines (a) and (b).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import record

from fastforward._ext.resize import Workspace, crop_resize_into
from fastforward.benchmark import Measurement, stored_jpegs
from fastforward.reader import Reader
from fastforward.transforms.crop import get_center_crop, get_random_crop

pytestmark = pytest.mark.benchmark(group="kernels")


def _per_image(blobs: list[bytes], windows: list[tuple[int, int, int, int, bool]] | None,
               out: np.ndarray, repeat: int) -> float:
    """Best seconds per image over *repeat* passes (decode only without *windows*)."""
    import simplejpeg

    buffer, workspace = np.empty(4 << 20, np.uint8), Workspace()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for k, blob in enumerate(blobs):
            image = simplejpeg.decode_jpeg(blob, fastdct=True, buffer=buffer)
            if windows is not None:
                *crop, flip = windows[k]
                crop_resize_into(image, *crop, out, flip, workspace=workspace)
        best = min(best, time.perf_counter() - start)
    return best / len(blobs)


def _region_per_image(blobs: list[bytes], shapes: list[tuple[int, int]],
                      windows: list[tuple[int, int, int, int, bool]], out: np.ndarray,
                      repeat: int) -> float | None:
    """Best seconds per image of the crop decoders' kernel: region decoding, then the
    resize pass, for all the images in one call (None in builds without libjpeg-turbo)."""
    from fastforward.fields.rgb_image import _region

    if _region is None:
        return None
    source = np.frombuffer(b"".join(blobs), np.uint8)
    sizes = np.array([len(b) for b in blobs], np.uint64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
    heights = np.array([s[0] for s in shapes], np.int64)
    widths = np.array([s[1] for s in shapes], np.int64)
    crops = np.array([w[:4] for w in windows], np.int64)
    flips = np.array([w[4] for w in windows], np.uint8)
    outs = np.empty((len(blobs), *out.shape), out.dtype)
    decoder, workspace = _region.JpegDecoder(), Workspace()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        failed = _region.decode_crop_resize_range(
            decoder, source, starts, sizes, np.zeros(len(blobs), np.uint8), heights, widths,
            crops, flips, outs, None, None, workspace)
        best = min(best, time.perf_counter() - start)
        assert failed is None, failed
    out[...] = outs[-1]
    return best / len(blobs)


@pytest.mark.parametrize("pipeline", ["a", "b"])
def test_decode_then_resize(benchmark, beton: Path, rounds: int, pipeline: str) -> None:
    import simplejpeg

    blobs = stored_jpegs(Reader(beton), "image", limit=800)
    shapes = [simplejpeg.decode_jpeg_header(blob)[:2] for blob in blobs]
    rng = np.random.default_rng(0)
    if pipeline == "a":
        windows = [(*get_center_crop(h, w, 224 / 256), False) for h, w in shapes]
        out = np.zeros((224, 224, 3), np.uint8)  # zeros: a window not written shows
    else:
        windows = [(*get_random_crop(h, w, (0.08, 1.0), (3 / 4, 4 / 3), rng.random(22)),
                    bool(rng.random() < 0.5)) for h, w in shapes]
        out = np.full((192, 192, 3), np.nan, np.float16)  # NaN: a window not written shows
    repeat = 2 * rounds + 1

    def measure() -> tuple[float, float]:
        return _per_image(blobs, None, out, repeat), _per_image(blobs, windows, out, repeat)

    region = _region_per_image(blobs, shapes, windows, out, repeat)
    decode, both = benchmark.pedantic(measure, rounds=1, iterations=1)
    what = "CenterCrop 224 uint8" if pipeline == "a" else "RandomResizedCrop 192 float16"
    key = f"kernel {pipeline}"
    record(key, "decode", Measurement(f"decode only (fastdct, 1 thread; {decode * 1e6:.0f} µs)",
                                      1, decode))
    # "fastforward" is what the crop decoders run in this build
    record(key, "whole" if region is not None else "fastforward",
           Measurement(f"whole + {what} ({both * 1e6:.0f} µs)", 1, both))
    if region is not None:
        record(key, "fastforward", Measurement(
            f"region + {what} ({region * 1e6:.0f} µs)", 1, region))
    # the last window's pixels were written: whole values in 0..255, not all 0
    values = out.astype(np.float64)
    assert np.array_equal(values, np.round(values))
    assert values.min() >= 0
    assert 0 < values.max() <= 255

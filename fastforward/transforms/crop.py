"""Crop samplers shared by ``RandomResizedCrop`` and the crop decoders.

Both return ``(i, j, h, w)``: the top row, the left column, the height and the
width of the window to keep, which always lies inside the image. They are
plain Python on floats (one call per image): the random one consumes a row of
``RANDOM_CROP_UNIFORMS`` uniforms instead of calling a generator, so a crop is
a pure function of ``(seed, epoch, sample index)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RANDOM_CROP_UNIFORMS = 22
"""Uniforms ``get_random_crop`` reads per image: two per try (10 tries), then the
row and the column of the window."""

_TRIES = 10


def get_random_crop(height: int, width: int, scale: tuple[float, float],
                    ratio: tuple[float, float], u: np.ndarray | Sequence[float]
                    ) -> tuple[int, int, int, int]:
    """Pick a random window of a ``height × width`` image, as torchvision's RandomResizedCrop.

    Up to 10 tries draw an area ``A·U(scale)`` (``A = height·width``) and a
    log-uniform aspect ratio in *ratio*; the first window that fits is placed
    uniformly. If none fits, the whole image clamped to the ratio range is
    taken, centred. Uniform ``2k`` gives try ``k``'s area, ``2k + 1`` its
    ratio, 20 and 21 the row and column.

    Args:
        height: image height.
        width: image width.
        scale: bounds of the window's area, as fractions of the image's.
        ratio: bounds of the window's aspect ratio (width / height).
        u: at least ``RANDOM_CROP_UNIFORMS`` uniforms in [0, 1).

    Returns:
        ``(i, j, h, w)``: top row, left column, height, width.
    """
    area = float(height) * float(width)
    scale_lo, scale_hi = float(scale[0]), float(scale[1])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(_TRIES):
        target = area * (scale_lo + (scale_hi - scale_lo) * float(u[2 * k]))
        aspect = math.exp(log_lo + (log_hi - log_lo) * float(u[2 * k + 1]))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            i = int(float(u[2 * _TRIES]) * (height - h + 1))
            j = int(float(u[2 * _TRIES + 1]) * (width - w + 1))
            return i, j, h, w
    # fallback: the whole image, clamped to the ratio range, centred
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def get_center_crop(height: int, width: int, ratio: float) -> tuple[int, int, int, int]:
    """Return FFCV's centre crop: the centred square of side ``int(ratio · min(H, W))``.

    This is not torchvision's ``CenterCrop`` (FFCV issue #341); with
    ``ratio = 224/256`` it approximates ``Resize(256)`` then ``CenterCrop(224)``.

    Returns:
        ``(i, j, h, w)``: top row, left column, height, width.
    """
    side = int(ratio * min(height, width))
    return (height - side) // 2, (width - side) // 2, side, side

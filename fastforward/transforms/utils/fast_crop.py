"""FFCV's ``fast_crop`` helpers, for FFCV operations that call them.

Plain Python on NumPy, written so that numba can compile them too: inside an
FFCV operation's generated function (``generate_code``) they are called from
compiled code (the ``numba`` extra registers them with numba; see
``fastforward.pipeline.compiler``). ``get_random_crop`` draws from
``np.random``, as FFCV's does: in compiled code that is numba's generator,
which the loader seeds before each call.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..crop import RANDOM_CROP_UNIFORMS


def crop_from_uniforms(height: int, width: int, scale: Any, ratio: Any,
                       u: np.ndarray) -> tuple[int, int, int, int]:
    """``transforms.crop.random_crops`` for one image, one scalar at a time (numba
    compiles it): the same window for the same ``RANDOM_CROP_UNIFORMS`` uniforms."""
    area = float(height) * float(width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * attempt])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * attempt + 1])
        w = np.rint(math.sqrt(target * aspect))  # half to even, as Python's round
        h = np.rint(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            i = math.floor(u[20] * (height - h + 1))
            j = math.floor(u[21] * (width - w + 1))
            return int(i), int(j), int(h), int(w)
    # none fits: the whole image, clamped to the ratio range, centred
    in_ratio = float(width) / float(height)
    low, high = min(ratio[0], ratio[1]), max(ratio[0], ratio[1])
    h, w = height, width
    if in_ratio < low:
        h = int(np.rint(width / low))
    elif in_ratio > high:
        w = int(np.rint(height * high))
    return (height - h) // 2, (width - w) // 2, h, w


def get_random_crop(height: int, width: int, scale: Any, ratio: Any
                    ) -> tuple[int, int, int, int]:
    """FFCV's ``get_random_crop``: torchvision's RandomResizedCrop window, from ``np.random``.

    Returns:
        ``(i, j, h, w)``: top row, left column, height, width.
    """
    return crop_from_uniforms(height, width, scale, ratio,
                              np.random.random(RANDOM_CROP_UNIFORMS))


def get_center_crop(height: int, width: int, ratio: float) -> tuple[int, int, int, int]:
    """FFCV's ``get_center_crop``: the centred square of side ``int(ratio · min(H, W))``.

    Returns:
        ``(i, j, h, w)``: top row, left column, height, width.
    """
    side = int(ratio * min(height, width))
    return (height - side) // 2, (width - side) // 2, side, side


def resize_crop(source: np.ndarray, start_row: int, end_row: int, start_col: int,
                end_col: int, destination: np.ndarray) -> None:
    """FFCV's ``resize_crop``: resize ``source[start_row:end_row, start_col:end_col]``
    into *destination* (H×W×3 uint8), as the crop decoders do (area averaging to
    shrink, bilinear to enlarge). Python only: not callable from compiled code."""
    from ..._ext.resize import crop_resize_into

    crop_resize_into(source, start_row, start_col, end_row - start_row, end_col - start_col,
                     destination)

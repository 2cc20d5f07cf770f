"""Crop samplers shared by ``RandomResizedCrop`` and the crop decoders.

Both return ``(i, j, h, w)``: the top row, the left column, the height and the
width of the window to keep, which always lies inside the image. The
vectorised forms (``random_crops``, ``center_crops``) take arrays of image
sizes and return one row per image. The random one consumes a row of
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


def check_random_crop(owner: str, scale: tuple[float, float], ratio: tuple[float, float]
                      ) -> None:
    """Refuse bounds that ``random_crops`` cannot draw from (*owner* names who got them)."""
    for what, (low, high) in (("scale", scale), ("ratio", ratio)):
        if not 0 < low <= high:
            raise ValueError(f"{owner}: {what} must be (low, high) with 0 < low <= high, "
                             f"got {(low, high)}")


def check_center_ratio(owner: str, ratio: float) -> None:
    """Refuse a centre crop's *ratio* outside (0, 1]: the square would not fit."""
    if not 0 < ratio <= 1:
        raise ValueError(f"{owner}: ratio must be in (0, 1] (the square's side over the "
                         f"image's shorter side), got {ratio}")


def random_crops(heights: np.ndarray | Sequence[int], widths: np.ndarray | Sequence[int],
                 scale: tuple[float, float], ratio: tuple[float, float],
                 u: np.ndarray) -> np.ndarray:
    """Pick a random window of each image, as torchvision's RandomResizedCrop.

    For image ``k`` (``heights[k] × widths[k]``), up to 10 tries draw an area
    ``A·U(scale)`` (``A = height·width``) and a log-uniform aspect ratio in
    *ratio*; the first window that fits is placed uniformly. If none fits,
    the whole image clamped to the ratio range is taken, centred. Uniform
    ``u[k, 2t]`` gives try ``t``'s area, ``u[k, 2t + 1]`` its ratio,
    ``u[k, 20]`` and ``u[k, 21]`` the row and column. Vectorised over images
    (the crop decoders call it once per range of a batch).

    Args:
        heights: image heights.
        widths: image widths.
        scale: bounds of the window's area, as fractions of the image's.
        ratio: bounds of the window's aspect ratio (width / height).
        u: ``(len(heights), RANDOM_CROP_UNIFORMS)`` uniforms in [0, 1).

    Returns:
        ``(n, 4)`` int64 rows ``(i, j, h, w)``: top row, left column, height, width.
    """
    height = np.asarray(heights, dtype=np.float64)
    width = np.asarray(widths, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64).reshape(len(height), -1)
    if u.shape[1] < RANDOM_CROP_UNIFORMS:
        raise ValueError(f"need {RANDOM_CROP_UNIFORMS} uniforms per image, got {u.shape[1]}")
    scale_lo, scale_hi = float(scale[0]), float(scale[1])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    fraction = scale_lo + (scale_hi - scale_lo) * u[:, 0 : 2 * _TRIES : 2]
    target = (height * width)[:, None] * fraction
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[:, 1 : 2 * _TRIES : 2])
    ws = np.round(np.sqrt(target * aspect))  # round half to even, as Python's round
    hs = np.round(np.sqrt(target / aspect))
    fits = (ws > 0) & (ws <= width[:, None]) & (hs > 0) & (hs <= height[:, None])
    rows = np.arange(len(height))
    first = fits.argmax(axis=1)
    h, w = hs[rows, first], ws[rows, first]
    i = np.floor(u[:, 2 * _TRIES] * (height - h + 1))
    j = np.floor(u[:, 2 * _TRIES + 1] * (width - w + 1))
    # fallback: the whole image, clamped to the ratio range, centred
    none = ~fits.any(axis=1)
    if none.any():
        fh, fw = height[none], width[none]
        in_ratio = fw / fh
        low, high = min(ratio), max(ratio)
        # at least a pixel: a 1-pixel-high image clamped to ratio 1/3 rounds to 0
        fall_w = np.maximum(1, np.where(in_ratio > high, np.round(fh * high), fw))
        fall_h = np.maximum(1, np.where(in_ratio < low, np.round(fw / low), fh))
        h[none], w[none] = fall_h, fall_w
        i[none] = (fh - fall_h) // 2
        j[none] = (fw - fall_w) // 2
    return np.stack([i, j, h, w], axis=1).astype(np.int64)


def center_crops(heights: np.ndarray | Sequence[int], widths: np.ndarray | Sequence[int],
                 ratio: float) -> np.ndarray:
    """``get_center_crop`` for many images: ``(n, 4)`` int64 rows ``(i, j, h, w)``."""
    height = np.asarray(heights, dtype=np.int64)
    width = np.asarray(widths, dtype=np.int64)
    shorter = np.minimum(height, width)
    # truncates, as int(); at least a pixel (a 1x1 image at ratio 0.875 gave 0)
    side = np.clip((float(ratio) * shorter).astype(np.int64), 1, np.maximum(shorter, 1))
    return np.stack([(height - side) // 2, (width - side) // 2, side, side], axis=1)


def get_random_crop(height: int, width: int, scale: tuple[float, float],
                    ratio: tuple[float, float], u: np.ndarray | Sequence[float] | None = None
                    ) -> tuple[int, int, int, int]:
    """``random_crops`` for one ``height × width`` image and one row of uniforms.

    Without *u* (FFCV's call, with four arguments) the uniforms come from the
    global ``np.random``, as FFCV's do.

    Returns:
        ``(i, j, h, w)``: top row, left column, height, width.
    """
    if u is None:
        u = np.random.random(RANDOM_CROP_UNIFORMS)
    i, j, h, w = random_crops([height], [width], scale, ratio,
                              np.asarray(u, dtype=np.float64)[None, :])[0].tolist()
    return i, j, h, w


def get_center_crop(height: int, width: int, ratio: float) -> tuple[int, int, int, int]:
    """Return FFCV's centre crop: the centred square of side ``int(ratio · min(H, W))``.

    This is not torchvision's ``CenterCrop`` (FFCV issue #341); with
    ``ratio = 224/256`` it approximates ``Resize(256)`` then ``CenterCrop(224)``;
    the side is at least 1 (and at most the shorter side).

    Returns:
        ``(i, j, h, w)``: top row, left column, height, width.
    """
    shorter = min(height, width)
    side = min(max(int(ratio * shorter), 1), max(shorter, 1))
    return (height - side) // 2, (width - side) // 2, side, side

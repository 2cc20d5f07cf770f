"""Plain NumPy references for the compiled kernels in fastforward._ext."""

from __future__ import annotations

import math

import numpy as np


def filter_matrix(n: int, m: int) -> np.ndarray:
    """The (m, n) matrix mapping n input pixels onto m outputs.

    Shrinking: area averaging (each output pixel averages the input interval
    it covers, weighting partial pixels by overlap). Enlarging: linear
    interpolation between half-pixel centres, edges clamped.
    """
    weights = np.zeros((m, n))
    scale = n / m
    for i in range(m):
        if scale >= 1:
            lo, hi = i * scale, (i + 1) * scale
            for j in range(math.floor(lo), min(math.ceil(hi), n)):
                weights[i, j] = max(0.0, min(j + 1, hi) - max(j, lo))
            weights[i] /= weights[i].sum()
        else:
            centre = min(max((i + 0.5) * scale - 0.5, 0.0), n - 1)
            j0 = math.floor(centre)
            frac = centre - j0
            weights[i, j0] += 1 - frac
            if frac > 0:
                weights[i, j0 + 1] += frac
    return weights


def crop_resize(src: np.ndarray, y0: int, x0: int, h: int, w: int,
                out_h: int, out_w: int, flip: bool = False) -> np.ndarray:
    """Reference for ``crop_resize_into``, in float64."""
    crop = src[y0 : y0 + h, x0 : x0 + w].astype(np.float64)
    rows = filter_matrix(h, out_h)
    cols = filter_matrix(w, out_w)
    out = np.einsum("oh,hwc,pw->opc", rows, crop, cols)
    if flip:
        out = out[:, ::-1]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def gather(src: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, width: int) -> np.ndarray:
    """Reference for ``gather_into``: each record in a zero-padded row."""
    out = np.zeros((len(offsets), width), np.uint8)
    for i, (offset, size) in enumerate(zip(offsets.tolist(), sizes.tolist(), strict=True)):
        out[i, :size] = src[offset : offset + size]
    return out

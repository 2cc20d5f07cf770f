"""Operations the benchmarks share with their comparators (NumPy only: the
DataLoader's environment loads this file by path, without fastforward)."""

from __future__ import annotations

import numpy as np


def python_op(image: np.ndarray) -> np.ndarray:
    """A per-sample Python augmentation of a few NumPy calls (about 50 µs for a
    192×192 image on one core): a random quarter of the image brightened or
    darkened. Draws from ``np.random`` (the loader seeds it per sample)."""
    out = image.copy()
    h, w = image.shape[0] // 2, image.shape[1] // 2
    y = np.random.randint(0, image.shape[0] - h + 1)
    x = np.random.randint(0, image.shape[1] - w + 1)
    patch = out[y : y + h, x : x + w].astype(np.float32) * np.float32(np.random.uniform(0.6, 1.4))
    out[y : y + h, x : x + w] = np.clip(patch, 0, 255).astype(np.uint8)
    return out

"""Many-channel and 16-bit test images made from the real photographs."""

from __future__ import annotations

import numpy as np


def bands(photos: list[np.ndarray], channels: int, dtype: type | np.dtype, height: int,
          width: int, seed: int = 0) -> np.ndarray:
    """An ``height × width × channels`` image of *dtype* (uint8 or uint16) whose planes
    are channels of the photographs, each from its own photograph and place (as the
    bands of a satellite tile are different pictures of one place). uint16 values use
    the whole range: one plane's values times 256 plus another's."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)

    def plane() -> np.ndarray:
        photo = photos[int(rng.integers(len(photos)))]
        y = int(rng.integers(photo.shape[0] - height + 1))
        x = int(rng.integers(photo.shape[1] - width + 1))
        return photo[y : y + height, x : x + width, int(rng.integers(3))].astype(np.uint16)

    planes = []
    for _ in range(channels):
        value = plane()
        if dtype == np.uint16:
            value = value * 256 + plane()
        planes.append(value.astype(dtype))
    return np.ascontiguousarray(np.stack(planes, axis=2))

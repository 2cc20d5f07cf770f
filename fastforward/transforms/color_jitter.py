"""Random brightness, contrast and saturation, as FFCV's (no hue).

Each applies to an image with probability ``p`` a factor ``f`` uniform in
``[max(0, 1 - magnitude), 1 + magnitude]``, blending the image with a
reference image ``r``: ``clip(f·x + (1 - f)·r, 0, 255)``, truncated to
uint8 as FFCV and torchvision do. The per-sample draws come from the
context: uniform 0 decides (``u < p``), uniform 1 gives the factor.

All arithmetic is FFCV's, in float64, so results are identical to FFCV's
(truncation makes float32 differ by one level on about 1% of values).
Brightness and contrast are a function of the pixel value alone, so they go
through a 256-entry table; saturation blends each pixel with its own gray
level.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import name, numpy_out, require_image, require_numpy, require_uint8

_LEVELS = np.arange(256, dtype=np.float64)


def _gray(image: np.ndarray) -> np.ndarray:
    """The ``(H, W)`` gray levels of an RGB image, truncated to integers as FFCV does."""
    # FFCV's (and torchvision's) weights, summed in FFCV's order
    gray = image[..., 0] * 0.2989
    gray += image[..., 1] * 0.587
    gray += image[..., 2] * 0.114
    return np.floor(gray, out=gray)


def _table(factor: float, reference: float) -> np.ndarray:
    """The uint8 table of ``clip(factor·v + (1 - factor)·reference)`` for v in 0..255."""
    return np.clip(factor * _LEVELS + (1.0 - factor) * reference, 0, 255).astype(np.uint8)


class _RandomBlend(Operation):
    releases_gil = True  # vectorised NumPy (or torch)
    sample_independent = True  # each sample from its own values and randomness

    channels: ClassVar[tuple[int, ...] | None] = None  # None: any number of channels

    def __init__(self, magnitude: float, p: float = 0.5) -> None:
        super().__init__()
        if magnitude < 0:
            raise ValueError(f"{name(self)}: magnitude must be >= 0, got {magnitude}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name(self)}: p must be in [0, 1], got {p}")
        self.magnitude = magnitude
        self.p = p

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        require_numpy(self, previous_state)
        require_uint8(self, previous_state)
        shape = require_image(self, previous_state, self.channels)
        return previous_state, AllocationQuery(shape, previous_state.dtype)

    def factors(self, context: BatchContext) -> tuple[np.ndarray, np.ndarray]:
        """Draw, per sample, whether to adjust it and the factor."""
        u = context.uniform(2)
        low, high = max(0.0, 1.0 - self.magnitude), 1.0 + self.magnitude
        return u[:, 0] < self.p, low + (high - low) * u[:, 1]

    def apply(self, batch: np.ndarray, destination: Any, context: BatchContext) -> np.ndarray:
        """Write each image, adjusted with probability ``p``, into *destination*."""
        out = numpy_out(destination, len(batch), batch.shape[1:], batch.dtype)
        applied, factors = self.factors(context)
        for k in range(len(batch)):
            if applied[k]:
                self.adjust(batch[k], float(factors[k]), out[k])
            else:
                out[k] = batch[k]
        return out

    def adjust(self, image: np.ndarray, factor: float, out: np.ndarray) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{name(self)}(magnitude={self.magnitude}, p={self.p})"


class RandomBrightness(_RandomBlend):
    """Scale each image's values by a random factor, with probability *p*.

    Args:
        magnitude: the factor is uniform in ``[max(0, 1 - magnitude), 1 + magnitude]``.
        p: the probability of adjusting each image.

    uint8 NumPy images ``(B, H, W, C)`` before ``ToTensor``; values are
    clipped to 0-255 and truncated. Writes into a buffer shaped like the input.
    """

    pixelwise = True  # each output pixel from its own input pixel
    keeps_zero = True  # zero in, zero out

    def adjust(self, image: np.ndarray, factor: float, out: np.ndarray) -> None:
        np.take(_table(factor, 0.0), image, out=out, mode="wrap")


class RandomContrast(_RandomBlend):
    """Blend each image with its mean gray level by a random factor, with probability *p*.

    Args:
        magnitude: the factor is uniform in ``[max(0, 1 - magnitude), 1 + magnitude]``.
        p: the probability of adjusting each image.

    uint8 RGB NumPy images ``(B, H, W, 3)`` before ``ToTensor``; the mean is
    that of the image's gray levels (``0.2989 R + 0.587 G + 0.114 B``,
    truncated); values are clipped to 0-255 and truncated. Writes into a
    buffer shaped like the input.
    """

    channels = (3,)

    def adjust(self, image: np.ndarray, factor: float, out: np.ndarray) -> None:
        np.take(_table(factor, float(_gray(image).mean())), image, out=out, mode="wrap")


class RandomSaturation(_RandomBlend):
    """Blend each image with its grayscale version by a random factor, with probability *p*.

    Args:
        magnitude: the factor is uniform in ``[max(0, 1 - magnitude), 1 + magnitude]``.
        p: the probability of adjusting each image.

    uint8 RGB NumPy images ``(B, H, W, 3)`` before ``ToTensor``; the gray
    level is ``0.2989 R + 0.587 G + 0.114 B`` truncated; values are clipped
    to 0-255 and truncated. Writes into a buffer shaped like the input.
    """

    channels = (3,)
    pixelwise = True  # each output pixel from its own input pixel's gray
    keeps_zero = True  # zero in, zero out

    def adjust(self, image: np.ndarray, factor: float, out: np.ndarray) -> None:
        gray = _gray(image)[..., None]
        gray *= 1.0 - factor
        blended = image * factor
        blended += gray
        np.clip(blended, 0, 255, out=blended)
        out[...] = blended  # float to uint8 truncates, as FFCV's astype

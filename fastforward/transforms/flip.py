"""Random horizontal and vertical flips."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import name, numpy_out, require_numpy, require_shape


def _pixels(image: np.ndarray) -> np.ndarray:
    """An ``(H, W, C)`` image as ``(H, W)`` opaque pixels, when its channels are contiguous.

    Reversing whole pixels copies twice as fast as reversing an axis whose
    items are 3-byte (or smaller) channel runs.
    """
    if image.ndim == 3 and image.strides[2] == image.itemsize:
        return image.view(np.dtype((np.void, image.shape[2] * image.itemsize)))[..., 0]
    return image


class _RandomFlip(Operation):
    axis: ClassVar[int]  # per-sample axis that is reversed

    def __init__(self, flip_prob: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"{name(self)}: flip_prob must be in [0, 1], got {flip_prob}")
        self.flip_prob = flip_prob

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        require_numpy(self, previous_state)
        shape = require_shape(self, previous_state, (2, 3), "images of shape (H, W[, C])")
        return previous_state, AllocationQuery(shape, previous_state.dtype)

    def apply(self, batch: np.ndarray, destination: Any, context: BatchContext) -> np.ndarray:
        """Write each image, flipped with probability ``flip_prob``, into *destination*."""
        out = numpy_out(destination, len(batch), batch.shape[1:], batch.dtype)
        flip = context.uniform(1)[:, 0] < self.flip_prob
        reverse = (slice(None),) * self.axis + (slice(None, None, -1),)
        for k in range(len(batch)):
            if flip[k]:
                _pixels(out[k])[...] = _pixels(batch[k])[reverse]
            else:
                out[k] = batch[k]
        return out

    def __repr__(self) -> str:
        return f"{name(self)}(flip_prob={self.flip_prob})"


class RandomHorizontalFlip(_RandomFlip):
    """Mirror each image left-right with probability *flip_prob*.

    Args:
        flip_prob: the probability of flipping each image.

    NumPy images ``(B, H, W, C)`` (or ``(B, H, W)``) of any dtype, before
    ``ToTensor``. The decision of sample ``k`` is ``uniform < flip_prob``,
    drawn from the context. Writes into a buffer shaped like the input.
    """

    axis = 1


class RandomVerticalFlip(_RandomFlip):
    """Mirror each image top-bottom with probability *flip_prob*.

    Args:
        flip_prob: the probability of flipping each image.

    NumPy images ``(B, H, W, C)`` (or ``(B, H, W)``) of any dtype, before
    ``ToTensor``. The decision of sample ``k`` is ``uniform < flip_prob``,
    drawn from the context. Writes into a buffer shaped like the input.
    """

    axis = 0

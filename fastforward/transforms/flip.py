"""Random horizontal and vertical flips."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import name, numpy_out, require_numpy, require_shape


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
            out[k] = batch[k][reverse] if flip[k] else batch[k]
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

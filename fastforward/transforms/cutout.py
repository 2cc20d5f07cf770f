"""Cutout (https://arxiv.org/abs/1708.04552)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import fill_value, name, numpy_out, require_image, require_numpy


class Cutout(Operation):
    """Fill a random ``crop_size × crop_size`` square of each image with *fill*.

    Args:
        crop_size: side of the square, in pixels; at most the image's
            smaller side.
        fill: the square's colour ((0, 0, 0) by default). Set it to the
            mean colour to get zeros after ``NormalizeImage``.

    The square lies fully inside the image, its corner uniform over the
    positions that allow it. NumPy images ``(B, H, W, C)`` before
    ``ToTensor``. Writes into a buffer shaped like the input (FFCV wrote over
    its input, which a branching pipeline may share).
    """

    def __init__(self, crop_size: int, fill: tuple[int, int, int] = (0, 0, 0)) -> None:
        super().__init__()
        if int(crop_size) != crop_size or crop_size < 0:
            raise ValueError(f"{name(self)}: crop_size must be a non-negative int, "
                             f"got {crop_size}")
        self.crop_size = int(crop_size)
        self.fill = fill

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        require_numpy(self, previous_state)
        h, w, c = require_image(self, previous_state)
        if self.crop_size > min(h, w):
            raise ValueError(f"{name(self)}: crop_size {self.crop_size} does not fit in "
                             f"{h}x{w} images")
        fill_value(self, self.fill, c, np.dtype(previous_state.dtype))
        return previous_state, AllocationQuery((h, w, c), previous_state.dtype)

    def apply(self, batch: np.ndarray, destination: Any, context: BatchContext) -> np.ndarray:
        """Write each image, with its square filled, into *destination*."""
        n, h, w, c = batch.shape
        size = self.crop_size
        out = numpy_out(destination, n, (h, w, c), batch.dtype)
        np.copyto(out, batch)
        fill = fill_value(self, self.fill, c, batch.dtype)
        corners = (context.uniform(2) * [h - size + 1, w - size + 1]).astype(np.int64)
        for k in range(n):
            y, x = int(corners[k, 0]), int(corners[k, 1])
            out[k, y : y + size, x : x + size] = fill
        return out

    def __repr__(self) -> str:
        return f"Cutout(crop_size={self.crop_size}, fill={self.fill})"

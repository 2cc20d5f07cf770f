"""Random translation."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import fill_array, fill_value, name, numpy_out, require_image, require_numpy


class RandomTranslate(Operation):
    """Shift each image by up to *padding* pixels in each direction.

    Args:
        padding: the largest shift, in pixels, along each axis.
        fill: the colour ((0, 0, 0) by default) of the area uncovered by the
            shift.

    As FFCV: each image is padded by *padding* on every side with *fill*
    and a random ``H × W`` window of the padded image is kept, its offsets
    uniform in ``[0, 2·padding]``. NumPy images ``(B, H, W, C)`` before
    ``ToTensor``. Writes straight into an ``(H, W, C)`` buffer (FFCV needed
    an ``(H+2p, W+2p, C)`` scratch and wrote back in place).
    """
    moves_pixels = True  # masks and boxes cannot follow it (see Operation.moves_pixels)
    releases_gil = True  # vectorised NumPy (or torch)
    sample_independent = True  # each sample from its own values and randomness


    def __init__(self, padding: int, fill: tuple[int, int, int] = (0, 0, 0)) -> None:
        super().__init__()
        if int(padding) != padding or padding < 0:
            raise ValueError(f"{name(self)}: padding must be a non-negative int, got {padding}")
        self.padding = int(padding)
        self.fill = fill_array(self, fill)  # an array, as FFCV keeps it

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        require_numpy(self, previous_state)
        h, w, c = require_image(self, previous_state)
        fill_value(self, self.fill, c, np.dtype(previous_state.dtype))
        return previous_state, AllocationQuery((h, w, c), previous_state.dtype)

    def apply(self, batch: np.ndarray, destination: Any, context: BatchContext) -> np.ndarray:
        """Write each image's shifted window into *destination*."""
        n, h, w, c = batch.shape
        out = numpy_out(destination, n, (h, w, c), batch.dtype)
        fill = fill_value(self, self.fill, c, batch.dtype)
        pad = self.padding
        # window offsets in the padded image, minus the padding: the shift
        shifts = (context.uniform(2) * (2 * pad + 1)).astype(np.int64) - pad
        for k in range(n):
            dy, dx = int(shifts[k, 0]), int(shifts[k, 1])
            if dy == 0 and dx == 0:
                out[k] = batch[k]
                continue
            # out[r, s] = image[r + dy, s + dx] where that pixel exists, else fill
            y0, y1 = min(h, max(0, -dy)), max(0, min(h, h - dy))
            x0, x1 = min(w, max(0, -dx)), max(0, min(w, w - dx))
            if y0 < y1 and x0 < x1:
                out[k, y0:y1, x0:x1] = batch[k, y0 + dy : y1 + dy, x0 + dx : x1 + dx]
            # only the uncovered border gets the fill
            out[k, :y0] = fill
            out[k, y1:] = fill
            out[k, y0:y1, :x0] = fill
            out[k, y0:y1, x1:] = fill
        return out

    def __repr__(self) -> str:
        return f"RandomTranslate(padding={self.padding}, fill={self.fill.tolist()})"

"""Random solarization."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import name, numpy_out, require_dtype, require_numpy, require_shape


class Solarization(Operation):
    """Invert the values at or above *threshold* (``v -> 255 - v``), with probability.

    Args:
        solarization_prob: the probability of solarizing each image.
        threshold: values ``>= threshold`` are inverted.

    NumPy images (any shape, integer or float values in 0-255) before
    ``ToTensor``; uint8 goes through a 256-entry table. Writes into a buffer
    shaped like the input.
    """
    releases_gil = True  # vectorised NumPy (or torch)
    pixelwise = True  # each output pixel from its own input pixel
    sample_independent = True  # each sample from its own values and randomness


    def __init__(self, solarization_prob: float = 0.5, threshold: float = 128) -> None:
        super().__init__()
        if not 0.0 <= solarization_prob <= 1.0:
            raise ValueError(f"{name(self)}: solarization_prob must be in [0, 1], "
                             f"got {solarization_prob}")
        self.solarization_prob = solarization_prob
        self.threshold = threshold
        self._make_table()

    def _make_table(self) -> None:
        """The uint8 images' table, for the threshold as it is now (each epoch's
        copy makes it anew: a threshold changed between epochs is used)."""
        levels = np.arange(256)
        self._table = np.where(levels >= self.threshold, 255 - levels, levels).astype(np.uint8)

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        self._make_table()
        require_numpy(self, previous_state)
        require_dtype(self, previous_state, "uif", "numeric images")
        shape = require_shape(self, previous_state, (2, 3), "images of shape (H, W[, C])")
        return previous_state, AllocationQuery(shape, previous_state.dtype)

    def apply(self, batch: np.ndarray, destination: Any, context: BatchContext) -> np.ndarray:
        """Write each image, solarized with its probability, into *destination*."""
        out = numpy_out(destination, len(batch), batch.shape[1:], batch.dtype)
        solarize = context.uniform(1)[:, 0] < self.solarization_prob
        for k in range(len(batch)):
            if not solarize[k]:
                out[k] = batch[k]
            elif batch.dtype == np.uint8:
                np.take(self._table, batch[k], out=out[k], mode="wrap")
            else:
                image = batch[k]
                np.copyto(out[k], np.where(image >= self.threshold, 255 - image, image),
                          casting="unsafe")
        return out

    def __repr__(self) -> str:
        return (f"Solarization(solarization_prob={self.solarization_prob}, "
                f"threshold={self.threshold})")

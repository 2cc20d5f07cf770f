"""Replace the labels of chosen samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import name, numpy_out, require_numpy, require_shape


class ReplaceLabel(Operation):
    """Give the samples of the listed dataset indices the label *new_label*.

    Args:
        indices: dataset indices of the samples to relabel.
        new_label: their new label.

    NumPy labels ``(B,)`` or ``(B, 1)`` before ``ToTensor``; writes into a
    buffer shaped like the input (FFCV wrote over its input).
    """
    releases_gil = True  # vectorised NumPy (or torch)
    sample_independent = True  # each sample from its own values and randomness


    def __init__(self, indices: Sequence[int], new_label: int) -> None:
        super().__init__()
        self.indices = np.unique(np.asarray(indices, dtype=np.int64))
        self.new_label = new_label

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        require_numpy(self, previous_state)
        shape = require_shape(self, previous_state, (0, 1), "labels of shape (B,) or (B, 1)")
        dtype = np.dtype(previous_state.dtype)
        if np.asarray(self.new_label).astype(dtype) != self.new_label:
            raise ValueError(f"{name(self)}: new_label {self.new_label!r} is not "
                             f"representable as {dtype}")
        return previous_state, AllocationQuery(shape, dtype)

    def apply(self, batch: np.ndarray, destination: Any, context: BatchContext) -> np.ndarray:
        """Copy the labels into *destination*, replacing the listed samples'."""
        n = len(batch)
        out = numpy_out(destination, n, batch.shape[1:], batch.dtype)
        np.copyto(out, batch)
        out[np.isin(np.asarray(context.indices[:n]), self.indices)] = self.new_label
        return out

    def __repr__(self) -> str:
        return f"ReplaceLabel(indices={len(self.indices)}, new_label={self.new_label})"

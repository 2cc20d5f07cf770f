"""Shape operations."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import name


class Squeeze(Operation):
    """Remove dimensions of size 1, as ``Tensor.squeeze`` (NumPy or torch).

    Args:
        *dims: dimensions of the batch to remove (1 is the first per-sample
            dimension; dimensions whose size is not 1 are kept, as torch
            does). With none, every per-sample dimension of size 1 goes; the
            batch dimension always stays, even for a batch of one (``Squeeze(0)``
            does nothing: FFCV's removed it from a batch of one only).

    Out of place and without a buffer: returns a view of the input (FFCV
    squeezed in place).
    """
    releases_gil = True  # vectorised NumPy (or torch)
    sample_independent = True  # each sample from its own values and randomness


    def __init__(self, *dims: int) -> None:
        super().__init__()
        for dim in dims:  # (a string failed at the first batch in a comparison's words)
            if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
                raise TypeError(f"Squeeze takes dimensions as integers, got {dim!r}")
        self.dims = tuple(int(dim) for dim in dims)

    def _axes(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The batch axes to remove for per-sample *shape*."""
        ndim = len(shape) + 1
        if not self.dims:
            return tuple(k + 1 for k, size in enumerate(shape) if size == 1)
        axes = []
        for dim in self.dims:
            if not -ndim <= dim < ndim:
                raise ValueError(f"{name(self)}: dimension {dim} is out of range for batches "
                                 f"of {ndim} dimensions")
            axis = dim % ndim
            if axis > 0 and shape[axis - 1] == 1:  # the batch dimension stays
                axes.append(axis)
        return tuple(sorted(set(axes)))

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, None]:
        if previous_state.shape is None:
            raise ValueError(f"{name(self)} needs a known sample shape")
        shape = tuple(previous_state.shape)
        axes = self._axes(shape)
        new_shape = tuple(s for k, s in enumerate(shape) if k + 1 not in axes)
        return replace(previous_state, shape=new_shape), None

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Return a view of *batch* without the size-1 dimensions."""
        axes = self._axes(tuple(batch.shape[1:]))
        if not axes:
            return batch
        if isinstance(batch, np.ndarray):
            return batch.squeeze(axis=axes)
        return batch.squeeze(axes)

    def __repr__(self) -> str:
        return f"Squeeze({', '.join(map(str, self.dims))})"

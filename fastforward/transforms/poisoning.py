"""Poison chosen samples by blending a mask into them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import name, numpy_out, require_dtype, require_image, require_numpy


class Poison(Operation):
    """Blend *mask* into the images of the listed dataset indices.

    Args:
        mask: an ``(H, W, C)`` image (or anything that broadcasts to the images).
        alpha: the mask's opacity: a number, an ``(H, W)`` map (as FFCV), or
            anything that broadcasts to ``(H, W, C)``.
        indices: dataset indices of the samples to poison.
        clamp: the range the result is clipped to.

    A poisoned image becomes ``clip(x·(1 - alpha) + mask·alpha, *clamp)``,
    computed in float32 and truncated to integer dtypes as FFCV does; the
    others are copied unchanged. NumPy images ``(B, H, W, C)`` before
    ``ToTensor``; writes into a buffer shaped like the input (FFCV wrote over
    its input).
    """
    releases_gil = True  # vectorised NumPy (or torch)
    sample_independent = True  # each sample from its own values and randomness


    def __init__(self, mask: np.ndarray, alpha: np.ndarray | float, indices: Sequence[int],
                 clamp: tuple[float, float] = (0, 255)) -> None:
        super().__init__()
        self.mask = np.asarray(mask)
        self.alpha = np.asarray(alpha)
        self.indices = np.unique(np.asarray(indices, dtype=np.int64))
        self.clamp = clamp
        self._blend_terms()

    def _blend_terms(self) -> None:
        """``1 - alpha`` and ``mask · alpha`` in float32, from the mask and alpha as
        they are now (each epoch's copy makes them anew: a mask or alpha changed
        between epochs is used, as FFCV's ``recompile=True`` does)."""
        self.mask, self.alpha = np.asarray(self.mask), np.asarray(self.alpha)
        alpha = self.alpha.astype(np.float32)
        if alpha.ndim == 2:  # FFCV's (H, W) opacity map
            alpha = alpha[..., None]
        self._keep = (1 - alpha).astype(np.float32)
        self._add = (self.mask.astype(np.float32) * alpha).astype(np.float32)

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        self._blend_terms()
        require_numpy(self, previous_state)
        require_dtype(self, previous_state, "uif", "numeric images")
        shape = require_image(self, previous_state)
        try:
            fits = np.broadcast_shapes(self._keep.shape, self._add.shape, shape) == shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"{name(self)}: mask {self.mask.shape} and alpha "
                             f"{self.alpha.shape} do not fit images of shape {shape}")
        return previous_state, AllocationQuery(shape, previous_state.dtype)

    def apply(self, batch: np.ndarray, destination: Any, context: BatchContext) -> np.ndarray:
        """Copy the batch into *destination*, poisoning the listed samples."""
        n = len(batch)
        out = numpy_out(destination, n, batch.shape[1:], batch.dtype)
        np.copyto(out, batch)
        for k in np.flatnonzero(np.isin(np.asarray(context.indices[:n]), self.indices)):
            blended = batch[k] * self._keep
            blended += self._add
            np.clip(blended, self.clamp[0], self.clamp[1], out=blended)
            np.copyto(out[k], blended, casting="unsafe")
        return out

    def __repr__(self) -> str:
        return f"Poison(mask={self.mask.shape}, indices={len(self.indices)}, clamp={self.clamp})"

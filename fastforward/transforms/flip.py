"""Random horizontal and vertical flips."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import (
    batch_image_dims,
    name,
    note_layout,
    numpy_out,
    require_shape,
    to_device_of,
    torch_dtype,
    torch_image_dims,
    torch_out,
)


def _pixels(image: np.ndarray) -> np.ndarray:
    """An ``(H, W, C)`` image as ``(H, W)`` opaque pixels, when its channels are contiguous.

    Reversing whole pixels copies twice as fast as reversing an axis whose
    items are 3-byte (or smaller) channel runs.
    """
    if image.ndim == 3 and image.strides[2] == image.itemsize:
        return image.view(np.dtype((np.void, image.shape[2] * image.itemsize)))[..., 0]
    return image


_SIGNED_VIEWS = {"torch.uint16": "int16", "torch.uint32": "int32", "torch.uint64": "int64"}
"""Unsigned torch dtypes without flips, and the signed ones of their size, whose
flips move the same bits."""


class _RandomFlip(Operation):
    moves_pixels = True  # masks and boxes cannot follow it (see Operation.moves_pixels)
    releases_gil = True  # vectorised NumPy (or torch)
    sample_independent = True  # each sample from its own values and randomness

    axis: ClassVar[int]  # per-sample axis that is reversed: 0 for H, 1 for W (in (H, W, C))

    def __init__(self, flip_prob: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"{name(self)}: flip_prob must be in [0, 1], got {flip_prob}")
        self.flip_prob = flip_prob

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        if previous_state.jit_mode:
            shape = require_shape(self, previous_state, (2, 3), "images of shape (H, W[, C])")
            return previous_state, AllocationQuery(shape, previous_state.dtype)
        shape = require_shape(self, previous_state, (2, 3), "image tensors of shape (H, W), "
                              "(H, W, C) or (C, H, W)")
        note_layout(self, shape, previous_state.channels_first)
        torch_image_dims(self, shape, previous_state.channels_first)
        dtype = torch_dtype(previous_state.dtype, self)
        return (replace(previous_state, dtype=dtype),
                AllocationQuery(shape, dtype, previous_state.device))

    def decisions(self, context: BatchContext) -> np.ndarray:
        """Whether each sample of the batch is flipped (a NumPy bool array)."""
        return context.uniform(1)[:, 0] < self.flip_prob

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Write each image, flipped with probability ``flip_prob``, into *destination*."""
        if not isinstance(batch, np.ndarray):
            return self._apply_torch(batch, destination, context)
        out = numpy_out(destination, len(batch), batch.shape[1:], batch.dtype)
        flip = self.decisions(context)
        reverse = (slice(None),) * self.axis + (slice(None, None, -1),)
        for k in range(len(batch)):
            if flip[k]:
                _pixels(out[k])[...] = _pixels(batch[k])[reverse]
            else:
                out[k] = batch[k]
        return out

    def _apply_torch(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        flip = self.decisions(context)
        # the reversed dimension of the batch: H or W after the batch one
        dim = 1 + batch_image_dims(self, batch)[:2][self.axis]
        out = torch_out(destination, batch, tuple(batch.shape[1:]), batch.dtype)
        signed = _SIGNED_VIEWS.get(str(batch.dtype))
        if signed is not None:  # torch has no flip for uint16: move the same bits as int16
            import torch

            self._flip_torch(batch.view(getattr(torch, signed)),
                             out.view(getattr(torch, signed)), flip, dim)
            return out
        self._flip_torch(batch, out, flip, dim)
        return out

    @staticmethod
    def _flip_torch(batch: Any, out: Any, flip: np.ndarray, dim: int) -> None:
        if flip.all():
            out.copy_(batch.flip(dim))
            return
        out.copy_(batch)
        if flip.any():
            chosen = to_device_of(np.flatnonzero(flip), batch)
            out.index_copy_(0, chosen, batch.index_select(0, chosen).flip(dim))

    def __repr__(self) -> str:
        return f"{name(self)}(flip_prob={self.flip_prob})"


class RandomHorizontalFlip(_RandomFlip):
    """Mirror each image left-right with probability *flip_prob*.

    Args:
        flip_prob: the probability of flipping each image.

    NumPy images ``(B, H, W, C)`` (or ``(B, H, W)``) of any dtype, or torch
    tensors on any device after ``ToTensor`` (``(B, H, W, C)``, ``(B, H, W)``)
    or ``ToTorchImage`` (``(B, C, H, W)``, told apart by C being 1 or 3, or
    else the one end of at most 16: many-channel images). The decision of
    sample ``k`` is ``uniform < flip_prob``, drawn from the context, the same
    for NumPy and torch. Writes into a buffer shaped like the input (on the
    batch's device, in its memory layout).
    """

    axis = 1


class RandomVerticalFlip(_RandomFlip):
    """Mirror each image top-bottom with probability *flip_prob*.

    Args:
        flip_prob: the probability of flipping each image.

    NumPy images ``(B, H, W, C)`` (or ``(B, H, W)``) of any dtype, or torch
    tensors on any device after ``ToTensor`` (``(B, H, W, C)``, ``(B, H, W)``)
    or ``ToTorchImage`` (``(B, C, H, W)``, told apart by C being 1 or 3, or
    else the one end of at most 16: many-channel images). The decision of
    sample ``k`` is ``uniform < flip_prob``, drawn from the context, the same
    for NumPy and torch. Writes into a buffer shaped like the input (on the
    batch's device, in its memory layout).
    """

    axis = 0

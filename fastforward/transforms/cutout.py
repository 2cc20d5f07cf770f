"""Cutout (https://arxiv.org/abs/1708.04552)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import (
    batch_image_dims,
    fill_array,
    fill_value,
    name,
    note_layout,
    numpy_dtype,
    numpy_out,
    require_image,
    require_shape,
    to_device_of,
    torch_dtype,
    torch_image_dims,
    torch_out,
)


class Cutout(Operation):
    """Fill a random ``crop_size × crop_size`` square of each image with *fill*.

    Args:
        crop_size: side of the square, in pixels; at most the image's
            smaller side.
        fill: the square's colour ((0, 0, 0) by default). Set it to the
            mean colour to get zeros after ``NormalizeImage``; on float
            tensors (after ``NormalizeImage`` or ``Convert``) it is used as
            given, in the tensor's units.

    The square lies fully inside the image, its corner uniform over the
    positions that allow it, drawn from the context: the same square for a
    sample whether its batch is NumPy or torch. NumPy images ``(B, H, W, C)``
    before ``ToTensor``, or torch tensors on any device after ``ToTensor``
    (``(B, H, W, C)``) or ``ToTorchImage`` (``(B, C, H, W)``, told apart by C
    being 1 or 3), of any dtype. Writes into a buffer shaped like the input,
    on the batch's device (FFCV wrote over its input, which a branching
    pipeline may share).
    """
    releases_gil = True  # vectorised NumPy (or torch)
    sample_independent = True  # each sample from its own values and randomness


    def __init__(self, crop_size: int, fill: tuple[int, int, int] = (0, 0, 0)) -> None:
        super().__init__()
        if int(crop_size) != crop_size or crop_size < 0:
            raise ValueError(f"{name(self)}: crop_size must be a non-negative int, "
                             f"got {crop_size}")
        self.crop_size = int(crop_size)
        self.fill = fill_array(self, fill)  # an array, as FFCV keeps it
        self._fills: dict[tuple[Any, Any, int, int], Any] = {}

    def _check_size(self, h: int, w: int) -> None:
        if self.crop_size > min(h, w):
            raise ValueError(f"{name(self)}: crop_size {self.crop_size} does not fit in "
                             f"{h}x{w} images")

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        # this epoch's copy's own tensors of the fill as it is now (the copy shared
        # the dict: a fill changed between epochs was not used on tensors)
        self._fills = {}
        if previous_state.jit_mode:
            h, w, c = require_image(self, previous_state)
            self._check_size(h, w)
            fill_value(self, self.fill, c, np.dtype(previous_state.dtype))
            return previous_state, AllocationQuery((h, w, c), previous_state.dtype)
        shape = require_shape(self, previous_state, (3,), "image tensors of shape (H, W, C) "
                              "or (C, H, W)")
        note_layout(self, shape, previous_state.channels_first)
        dh, dw, dc = torch_image_dims(self, shape, previous_state.channels_first)
        assert dc is not None
        self._check_size(shape[dh], shape[dw])
        dtype = torch_dtype(previous_state.dtype, self)
        self._torch_fill_values(shape[dc], dtype)  # raises if it does not fit
        return (replace(previous_state, dtype=dtype),
                AllocationQuery(shape, dtype, previous_state.device))

    def corners(self, context: BatchContext, h: int, w: int) -> np.ndarray:
        """``(B, 2)`` top-left corners ``(y, x)`` of the squares (NumPy int64)."""
        size = self.crop_size
        return (context.uniform(2) * [h - size + 1, w - size + 1]).astype(np.int64)

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Write each image, with its square filled, into *destination*."""
        if not isinstance(batch, np.ndarray):
            return self._apply_torch(batch, destination, context)
        n, h, w, c = batch.shape
        size = self.crop_size
        out = numpy_out(destination, n, (h, w, c), batch.dtype)
        np.copyto(out, batch)
        fill = fill_value(self, self.fill, c, batch.dtype)
        corners = self.corners(context, h, w)
        for k in range(n):
            y, x = int(corners[k, 0]), int(corners[k, 1])
            out[k, y : y + size, x : x + size] = fill
        return out

    def _torch_fill_values(self, channels: int, dtype: Any) -> np.ndarray:
        """The fill as a host array that converts exactly to *dtype*: the
        values of *dtype* for integers (checked), float64 for floats."""
        if dtype.is_floating_point or dtype.is_complex:
            return fill_value(self, self.fill, channels, np.dtype(np.float64))
        return fill_value(self, self.fill, channels, numpy_dtype(dtype, self))

    def _torch_fill(self, batch: Any, channel_dim: int) -> Any:
        """The fill as a tensor on the batch's device, broadcasting along *channel_dim*."""
        channels = batch.shape[channel_dim]
        key = (batch.device, batch.dtype, batch.dim(), channel_dim)
        if key not in self._fills:
            shape = [1] * batch.dim()
            shape[channel_dim] = channels
            values = self._torch_fill_values(channels, batch.dtype)
            self._fills[key] = to_device_of(values, batch, batch.dtype).reshape(shape)
        return self._fills[key]

    def _apply_torch(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        import torch

        dh, dw, dc = batch_image_dims(self, batch)
        assert dc is not None  # (H, W) samples were refused in declare_state_and_memory
        dh, dw, dc = dh + 1, dw + 1, dc + 1
        h, w = batch.shape[dh], batch.shape[dw]
        out = torch_out(destination, batch, tuple(batch.shape[1:]), batch.dtype)
        corners = to_device_of(self.corners(context, h, w), batch)  # (B, 2)
        y, x = corners[:, :1], corners[:, 1:]
        rows = torch.arange(h, device=batch.device)
        cols = torch.arange(w, device=batch.device)
        in_rows = (rows >= y) & (rows < y + self.crop_size)  # (B, H)
        in_cols = (cols >= x) & (cols < x + self.crop_size)  # (B, W)
        inside = in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
        inside = inside.unsqueeze(dc)  # a size-1 channel dimension where the batch has it
        torch.where(inside, self._torch_fill(batch, dc), batch, out=out)
        return out

    def __repr__(self) -> str:
        return f"Cutout(crop_size={self.crop_size}, fill={self.fill.tolist()})"

"""Image normalization and conversion to floating point."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import (
    layout_of,
    name,
    note_layout,
    numpy_dtype,
    numpy_out,
    require_shape,
    torch_dtype,
    torch_out,
)

PIXEL_TYPES = (np.dtype("u1"), np.dtype("u2"))


class NormalizeImage(Operation):
    """Turn uint8 or uint16 images into ``(x - mean) / std`` of dtype *type*.

    Args:
        mean: per-channel means, in the images' units (0-255 for uint8, 0-65535
            for uint16): one value per channel, any number of channels.
        std: per-channel standard deviations, in the same units.
        type: the output's NumPy floating dtype (``np.float16``,
            ``np.float32``…); on torch tensors its torch equivalent.

    On NumPy ``(B, H, W, C)`` batches, each channel goes through a lookup table
    (256 entries for uint8, 65536 for uint16, made on first use) computed in
    float64, so results are correctly rounded; the output is real float16
    (FFCV stored float16 as int16 bits that ``ToTorchImage`` viewed back). On
    torch tensors (CPU or CUDA), after
    ``ToTensor`` or ``ToTorchImage``, it computes in float32 (float64 for a
    float64 *type*) with torch and keeps the input's layout; the channel
    dimension is the last one for ``(B, H, W, C)`` and dimension 1 for
    ``(B, C, H, W)`` (dimension 1 when both have C entries). Writes into a
    buffer of *type* shaped like the input, on the batch's device.
    """
    releases_gil = True  # vectorised NumPy (or torch)
    pixelwise = True  # each output pixel from its own input pixel
    sample_independent = True  # each sample from its own values and randomness


    def __init__(self, mean: np.ndarray, std: np.ndarray, type: np.dtype) -> None:
        super().__init__()
        self.mean, self.std, self.type = mean, std, type
        # FFCV's attributes: *type* as given, the output's dtype (FFCV's is int16 for
        # float16, the bits it stored; this one's output is float16), and 'gpu' once
        # declared on tensors of a GPU
        self.original_dtype = type
        self.mode = "cpu"
        self._settle()

    def _settle(self) -> None:
        """Check mean, std and type as they are now, and make what derives from
        them: each epoch's copy does it anew, so that a mean or std changed between
        epochs is used (FFCV's lookup table kept its first values, even with
        ``recompile=True``)."""
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(self.std, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.std.shape or not self.mean.size:
            raise ValueError(f"{name(self)}: mean and std need one value per channel, got "
                             f"{self.mean.size} and {self.std.size}")
        if np.any(self.std == 0):
            raise ValueError(f"{name(self)}: std has a zero: {self.std.tolist()}")
        self.type = np.dtype(self.type)
        if self.type.kind != "f":
            raise TypeError(f"{name(self)}: type must be a floating dtype, got {self.type}")
        self.dtype = self.type
        # row v holds (v - mean) / std for every channel
        self.lookup_table = self._table(256)
        self._wide_table: np.ndarray | None = None  # the same for uint16, made on first use
        self._constants: dict[tuple[Any, Any, int, int], tuple[Any, Any]] = {}

    def _table(self, values: int) -> np.ndarray:
        """``(values, C)``: row ``v`` holds ``(v - mean) / std`` for every channel."""
        table = (np.arange(values, dtype=np.float64)[:, None] - self.mean) / self.std
        return table.astype(self.type)

    def table_for(self, dtype: np.dtype) -> np.ndarray:
        """The lookup table for images of *dtype* (uint8 or uint16)."""
        if np.dtype(dtype).itemsize == 1:
            return self.lookup_table
        if self._wide_table is None:
            self._wide_table = self._table(65536)
        return self._wide_table

    def pixel_affine(self) -> tuple[np.dtype, np.ndarray, np.ndarray] | None:
        """``(type, 1 / std, -mean / std)``, one value per channel, for float16 or
        float32 (a decoder fuses it only into images of that many channels)."""
        self._settle()  # (a fused copy is never declared: its settings as they are now)
        if self.type not in (np.dtype("float16"), np.dtype("float32")):
            return None
        return self.type, 1.0 / self.std, -self.mean / self.std

    def _channel_dim(self, shape: tuple[int, ...]) -> int:
        """The per-sample dimension holding the channels, or -1 if none fits: where
        the pipeline's state said (``State.channels_first``), else guessed."""
        channels = self.mean.size
        channels_first = layout_of(self, shape)
        if len(shape) == 3 and channels_first is not None:
            dim = 0 if channels_first else 2
            return dim if shape[dim] == channels else -1
        if len(shape) >= 2 and shape[0] == channels:
            return 0
        if shape and shape[-1] == channels:
            return len(shape) - 1
        return -1

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        self._settle()
        if numpy_dtype(previous_state.dtype, self) not in PIXEL_TYPES:
            raise TypeError(f"{name(self)} needs uint8 or uint16 images, but it got "
                            f"{previous_state.dtype}")
        channels = self.mean.size
        if previous_state.jit_mode:
            shape = require_shape(self, previous_state, (2, 3), "images of shape (H, W, C)")
            if shape[-1] != channels and not (len(shape) == 2 and channels == 1):
                raise ValueError(f"{name(self)}: mean and std have {channels} channels, the "
                                 f"images have shape {shape}")
            state = replace(previous_state, dtype=self.type)
            return state, AllocationQuery(shape, self.type)
        shape = require_shape(self, previous_state, (3,), "image tensors of shape (H, W, C) "
                              "or (C, H, W)")
        note_layout(self, shape, previous_state.channels_first)
        if str(previous_state.device) != "cpu":
            self.mode = "gpu"
        if self._channel_dim(shape) < 0:
            raise ValueError(f"{name(self)}: mean and std have {channels} channels, the "
                             f"images have shape {shape}")
        dtype = torch_dtype(self.type, self)
        return (replace(previous_state, dtype=dtype),
                AllocationQuery(shape, dtype, previous_state.device))

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Write the normalized images into *destination*."""
        if isinstance(batch, np.ndarray):
            return self._apply_numpy(batch, destination)
        return self._apply_torch(batch, destination)

    def _apply_numpy(self, batch: np.ndarray, destination: Any) -> np.ndarray:
        out = numpy_out(destination, len(batch), batch.shape[1:], self.type)
        table = self.table_for(batch.dtype)
        if batch.ndim == 3:  # (B, H, W): one channel
            np.take(table[:, 0], batch, out=out, mode="wrap")
            return out
        for c in range(self.mean.size):
            # the indices never exceed the table; "wrap" skips the bounds check
            np.take(table[:, c], batch[..., c], out=out[..., c], mode="wrap")
        return out

    def _apply_torch(self, batch: Any, destination: Any) -> Any:
        import torch

        dtype = torch_dtype(self.type, self)
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        dim = self._channel_dim(tuple(batch.shape[1:])) + 1
        mean, std = self._torch_constants(batch.device, compute, batch.dim(), dim)
        out = torch_out(destination, batch, tuple(batch.shape[1:]), dtype)
        values = batch.to(compute)
        values.sub_(mean).div_(std)
        out.copy_(values)
        return out

    def _torch_constants(self, device: Any, dtype: Any, ndim: int, dim: int
                         ) -> tuple[Any, Any]:
        """Mean and std as tensors on *device* that broadcast along dimension *dim*."""
        key = (device, dtype, ndim, dim)
        if key not in self._constants:
            import torch

            shape = [1] * ndim
            shape[dim] = self.mean.size
            self._constants[key] = (
                torch.tensor(self.mean, dtype=dtype, device=device).reshape(shape),
                torch.tensor(self.std, dtype=dtype, device=device).reshape(shape),
            )
        return self._constants[key]

    def __repr__(self) -> str:
        return (f"NormalizeImage(mean={self.mean.tolist()}, std={self.std.tolist()}, "
                f"type={self.type})")


def ch_dtype_from_numpy(dtype: Any) -> Any:
    """FFCV's helper: the torch dtype of a NumPy dtype (needs torch)."""
    import torch

    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype

"""Mixup for images and labels (https://arxiv.org/abs/1710.09412).

As FFCV: sample ``k`` of a batch is mixed with sample ``k - 1`` (the first
with the last), with a weight ``λ ~ Beta(alpha, alpha)`` per sample, or one
per batch with ``same_lambda``. ``ImageMixup`` and ``LabelMixup`` share the
random stream ``"mixup"``, so in one loader they draw the same λ for a
sample: λ of sample ``k`` comes from ``context.sample_rng(k)`` (keyed by
its dataset index), the batch's λ from ``context.batch_rng()``. Both take
NumPy batches (before ``ToTensor``) or torch tensors on any device (after
it) and give a sample the same partner and λ either way: λ is drawn on the
host and copied to the device once per batch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import (
    name,
    numpy_dtype,
    numpy_out,
    require_dtype,
    require_shape,
    require_torch,
    to_device_of,
    torch_dtype,
    torch_out,
)


def mixup_lambdas(context: BatchContext, count: int, alpha: float,
                  same_lambda: bool) -> np.ndarray:
    """Draw the ``(count,)`` mixing weights of a batch (both mixup operations call this)."""
    if same_lambda:
        return np.full(count, context.batch_rng().beta(alpha, alpha))
    return np.array([context.sample_rng(k).beta(alpha, alpha) for k in range(count)])


class _Mixup(Operation):
    releases_gil = True  # vectorised NumPy (or torch); mixes samples: not sample_independent

    random_stream: ClassVar[str | None] = "mixup"

    def __init__(self, alpha: float, same_lambda: bool) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"{name(self)}: alpha must be > 0, got {alpha}")
        self.alpha = alpha
        self.same_lambda = same_lambda

    def lambdas(self, context: BatchContext, count: int) -> np.ndarray:
        """Draw λ for each sample of the batch."""
        return mixup_lambdas(context, count, self.alpha, self.same_lambda)

    def __repr__(self) -> str:
        return f"{name(self)}(alpha={self.alpha}, same_lambda={self.same_lambda})"


class ImageMixup(_Mixup):
    """Blend each image with the previous one in the batch: ``λ·x[k] + (1 - λ)·x[k-1]``.

    Args:
        alpha: λ follows ``Beta(alpha, alpha)``.
        same_lambda: one λ for the whole batch instead of one per image.

    NumPy images (any shape and numeric dtype) before ``ToTensor``, or torch
    tensors (any layout, on any device) after it; integer images are rounded
    to the nearest value (FFCV truncated), floating ones are not. It computes
    in float32 (float64 for float64 and 32/64-bit integer images), in the
    same steps on NumPy and torch. Writes into a buffer shaped like the
    input (on the batch's device). Use with ``LabelMixup`` on the labels.
    """

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        shape = require_shape(self, previous_state, (1, 2, 3, 4), "images")
        if previous_state.jit_mode:
            require_dtype(self, previous_state, "uif", "numeric images")
            return previous_state, AllocationQuery(shape, previous_state.dtype)
        dtype = torch_dtype(previous_state.dtype, self)
        if not dtype.is_floating_point:
            require_dtype(self, previous_state, "ui", "numeric images")
        return (replace(previous_state, dtype=dtype),
                AllocationQuery(shape, dtype, previous_state.device))

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Write the mixed images into *destination*."""
        if not isinstance(batch, np.ndarray):
            return self._apply_torch(batch, destination, context)
        n = len(batch)
        out = numpy_out(destination, n, batch.shape[1:], batch.dtype)
        lam = self.lambdas(context, n)
        compute = np.result_type(batch.dtype, np.float32)
        mixed = np.empty(batch.shape[1:], dtype=compute)
        rounded = batch.dtype.kind in "ui"
        for k in range(n):
            current, previous = batch[k], batch[k - 1]
            # previous + λ·(current - previous) = λ·current + (1 - λ)·previous
            np.subtract(current, previous, out=mixed, dtype=compute)
            mixed *= compute.type(lam[k])
            mixed += previous
            if rounded:
                np.rint(mixed, out=mixed)
            np.copyto(out[k], mixed, casting="unsafe")
        return out

    def _apply_torch(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        import torch

        n = len(batch)
        out = torch_out(destination, batch, tuple(batch.shape[1:]), batch.dtype)
        if batch.dtype.is_floating_point:
            compute = torch.float64 if batch.dtype == torch.float64 else torch.float32
        else:  # as NumPy: float64 for 32/64-bit integers
            compute = torch_dtype(np.result_type(numpy_dtype(batch.dtype, self), np.float32),
                                  self)
        # λ cast to the compute type on the host, as the NumPy path does
        lam = to_device_of(self.lambdas(context, n), batch, compute)
        lam = lam.reshape((n,) + (1,) * (batch.dim() - 1))
        current = batch.to(compute)  # batch itself when it has the compute type
        previous = torch.roll(current, 1, 0)
        # previous + λ·(current - previous), one rounding per step as in NumPy
        mixed = torch.sub(current, previous).mul_(lam).add_(previous)
        if not batch.dtype.is_floating_point:
            mixed.round_()  # half to even, as np.rint
        out.copy_(mixed)
        return out


class LabelMixup(_Mixup):
    """Turn labels into ``[y[k], y[k-1], λ]`` rows matching ``ImageMixup``.

    Args:
        alpha: λ follows ``Beta(alpha, alpha)``; use ImageMixup's value.
        same_lambda: one λ for the whole batch; use ImageMixup's value.

    Integer NumPy labels ``(B,)`` or ``(B, 1)`` before ``ToTensor``, or such
    torch tensors (on any device) after it; writes float32 ``(B, 3)`` rows
    into its buffer (a torch one on the labels' device for tensors). ``MixupToOneHot`` turns them
    into soft targets; or compute ``λ·loss(y[k]) + (1 - λ)·loss(y[k-1])``.
    """

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        require_dtype(self, previous_state, "ui", "integer labels")
        shape = require_shape(self, previous_state, (0, 1), "labels of shape (B,) or (B, 1)")
        if shape not in ((), (1,)):
            raise ValueError(f"{name(self)} needs one label per sample, got shape {shape}")
        if previous_state.jit_mode:
            float32 = np.dtype(np.float32)
            return (replace(previous_state, shape=(3,), dtype=float32),
                    AllocationQuery((3,), float32))
        import torch

        return (replace(previous_state, shape=(3,), dtype=torch.float32),
                AllocationQuery((3,), torch.float32, previous_state.device))

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Write ``[y[k], y[k-1], λ]`` rows into *destination*."""
        n = len(batch)
        if not isinstance(batch, np.ndarray):
            import torch

            labels = batch.reshape(n)
            out = torch_out(destination, batch, (3,), torch.float32)
            out[:, 0] = labels
            out[:, 1] = torch.roll(labels, 1, 0)
            # float64 λ rounded to float32 on the host, as NumPy's assignment does
            out[:, 2] = to_device_of(self.lambdas(context, n), batch, torch.float32)
            return out
        labels = batch.reshape(n)
        out = numpy_out(destination, n, (3,), np.float32)
        out[:, 0] = labels
        out[:, 1] = np.roll(labels, 1)
        out[:, 2] = self.lambdas(context, n)
        return out


class MixupToOneHot(Operation):
    """Turn ``LabelMixup`` rows into soft one-hot targets of *num_classes*.

    Args:
        num_classes: the number of classes.

    Torch ``(B, 3)`` float tensors (after ``ToTensor``, on any device);
    writes ``(B, num_classes)`` into its buffer on that device: ``λ`` at
    ``y[k]``, ``1 - λ`` at ``y[k-1]`` (1 when they are the same class; FFCV
    gave ``1 - λ`` there).
    """
    releases_gil = True  # vectorised NumPy (or torch)
    sample_independent = True  # each sample from its own values and randomness


    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"{name(self)}: num_classes must be a positive int, "
                             f"got {num_classes}")
        self.num_classes = int(num_classes)

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        require_torch(self, previous_state)
        require_dtype(self, previous_state, "f", "LabelMixup's float rows")
        shape = require_shape(self, previous_state, (1,), "LabelMixup's (B, 3) rows")
        if shape != (3,):
            raise ValueError(f"{name(self)} needs LabelMixup's (B, 3) rows, got shape {shape}")
        return (replace(previous_state, shape=(self.num_classes,)),
                AllocationQuery((self.num_classes,), previous_state.dtype,
                                previous_state.device))

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Write the soft targets into *destination*."""
        import torch

        out = torch_out(destination, batch, (self.num_classes,), batch.dtype)
        out.zero_()
        rows = torch.arange(len(batch), device=batch.device)
        lam = batch[:, 2].to(out.dtype)
        out.index_put_((rows, batch[:, 0].long()), lam, accumulate=True)
        out.index_put_((rows, batch[:, 1].long()), 1 - lam, accumulate=True)
        return out

    def __repr__(self) -> str:
        return f"MixupToOneHot({self.num_classes})"

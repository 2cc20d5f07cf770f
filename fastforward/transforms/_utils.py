"""Checks and buffer helpers shared by the transforms (private).

Every check raises in ``declare_state_and_memory``, naming the operation and
what it received, so a misplaced transform fails when the pipeline is built,
not in the middle of an epoch. torch is imported only inside the functions
that need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..pipeline.state import State
from ..utils import install_hint


def name(op: Any) -> str:
    """The operation's class name, for messages."""
    return type(op).__name__


def is_torch_dtype(dtype: Any) -> bool:
    """True if *dtype* is a ``torch.dtype`` (checked without importing torch)."""
    return type(dtype).__module__ == "torch" and type(dtype).__name__ == "dtype"


def numpy_dtype(dtype: Any, op: Any) -> np.dtype:
    """*dtype* (NumPy or torch) as a NumPy dtype; TypeError if it has none."""
    if is_torch_dtype(dtype):
        from ..fields.ndarray import torch_to_numpy_dtype

        try:
            return torch_to_numpy_dtype(dtype)
        except ValueError:
            raise TypeError(f"{name(op)}: torch dtype {dtype} has no NumPy equivalent") from None
    try:
        return np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name(op)}: {dtype!r} is not a dtype") from None


def import_torch(op: Any) -> Any:
    """The torch module; an ImportError naming *op* and the install command when
    torch is missing (the core of fastforward runs without it)."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"{name(op)} needs torch, which is not installed: "
                          f"{install_hint('torch')}; or end the pipeline before ToTensor() to "
                          "get NumPy batches") from exc
    return torch


def torch_dtype(dtype: Any, op: Any) -> Any:
    """*dtype* (NumPy or torch) as a torch dtype; TypeError if it has none."""
    if is_torch_dtype(dtype):
        return dtype
    torch = import_torch(op)

    native = numpy_dtype(dtype, op)
    if not native.isnative:  # ('>f4' from a file: ToTensor swaps the bytes)
        native = native.newbyteorder("=")
    try:
        return torch.from_numpy(np.empty(0, dtype=native)).dtype
    except TypeError:
        raise TypeError(f"{name(op)}: NumPy dtype {np.dtype(dtype)} has no torch "
                        "equivalent") from None


def itemsize(dtype: Any) -> int:
    """Bytes per element of a NumPy or torch dtype."""
    return int(dtype.itemsize) if is_torch_dtype(dtype) else np.dtype(dtype).itemsize


def require_numpy(op: Any, state: State) -> None:
    """Raise TypeError unless batches are still NumPy arrays (before ``ToTensor``)."""
    if not state.jit_mode:
        raise TypeError(
            f"{name(op)} works on NumPy batches, but it got torch tensors ({state.dtype} on "
            f"{state.device}): place it before ToTensor()"
        )


def require_torch(op: Any, state: State) -> None:
    """Raise TypeError unless batches are torch tensors (after ``ToTensor``)."""
    if state.jit_mode:
        raise TypeError(
            f"{name(op)} works on torch tensors, but it got NumPy arrays ({state.dtype}): "
            "place ToTensor() before it"
        )


def require_shape(op: Any, state: State, ndims: Sequence[int], what: str) -> tuple[int, ...]:
    """Return the per-sample shape; ValueError unless it has one of *ndims* dimensions."""
    if state.shape is None or len(state.shape) not in ndims:
        raise ValueError(f"{name(op)} needs {what}, but it got samples of shape {state.shape}")
    return tuple(int(s) for s in state.shape)


def require_image(op: Any, state: State, channels: Sequence[int] | None = None
                  ) -> tuple[int, int, int]:
    """Return ``(H, W, C)``; ValueError unless samples are ``H × W × C`` images."""
    shape = require_shape(op, state, (3,), "images of shape (H, W, C)")
    if channels is not None and shape[2] not in channels:
        raise ValueError(f"{name(op)} needs images with {' or '.join(map(str, channels))} "
                         f"channels, but it got shape {shape}")
    return shape[0], shape[1], shape[2]


def require_dtype(op: Any, state: State, kinds: str, what: str) -> None:
    """Raise TypeError unless the (NumPy) state dtype's kind is in *kinds* (``'u'``, ``'f'``…)."""
    dtype = numpy_dtype(state.dtype, op)
    if dtype.kind not in kinds:
        raise TypeError(f"{name(op)} needs {what}, but it got {dtype}")


def require_uint8(op: Any, state: State) -> None:
    """Raise TypeError unless samples are uint8 (NumPy or torch)."""
    if numpy_dtype(state.dtype, op) != np.uint8:
        raise TypeError(f"{name(op)} needs uint8 images, but it got {state.dtype}")


def fill_array(op: Any, fill: Any) -> np.ndarray:
    """*fill* as the array FFCV keeps (``Cutout.fill``, ``RandomTranslate.fill``);
    TypeError, naming *op*, if it is not numbers."""
    try:
        return np.array(fill, dtype=np.float64 if fill is None else None)
    except (TypeError, ValueError):
        raise _not_numbers(op, fill) from None


def _not_numbers(op: Any, fill: Any) -> TypeError:
    return TypeError(f"{name(op)}: fill must be a number or one number per channel, "
                     f"got {fill!r}")


def fill_value(op: Any, fill: Any, channels: int, dtype: np.dtype) -> np.ndarray:
    """*fill* as a ``(C,)`` array of *dtype*; ValueError if it does not fit.

    A fraction is truncated into an integer dtype, as FFCV's assignment of its
    fill into uint8 images does (``fill=CIFAR_MEAN``'s 125.307 fills with 125);
    a value out of the dtype's range, which FFCV wraps (300 became 44), is
    refused."""
    if isinstance(fill, np.ndarray):
        fill = fill.tolist()  # named as the user wrote it
    try:
        values = np.asarray(fill, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise _not_numbers(op, fill) from None
    if values.size == 1:
        values = np.repeat(values, channels)
    if values.size != channels:
        raise ValueError(f"{name(op)}: fill {fill!r} has {values.size} values, the images "
                         f"have {channels} channels")
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        if not np.isfinite(values).all() or values.min() <= info.min - 1 \
                or values.max() >= info.max + 1:
            raise ValueError(f"{name(op)}: fill {fill!r} is not representable as {dtype}")
        return np.trunc(values).astype(dtype)
    return values.astype(dtype)


def numpy_out(destination: Any, count: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The first *count* rows of *destination*, or a new array if the loader gave none."""
    if destination is None:
        return np.empty((count, *shape), dtype=dtype)
    return destination[:count]


def torch_out(destination: Any, like: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """Rows of *destination* for batch *like*, in *like*'s memory layout.

    A channels-last ``(B, C, H, W)`` input gets a channels-last view of the
    (contiguous) buffer, so that copies into it are plain memcpy-like copies
    and the layout ``ToTorchImage`` chose survives the operation.
    """
    import torch

    count = like.shape[0]
    if destination is None:
        destination = torch.empty((count, *shape), dtype=dtype, device=like.device)
    out = destination[:count]
    if (like.dim() == 4 and out.dim() == 4 and not like.is_contiguous()
            and like.is_contiguous(memory_format=torch.channels_last)):
        n, c, h, w = out.shape
        out = out.reshape(n, h, w, c).permute(0, 3, 1, 2)
    return out



IMAGE_CHANNELS = (1, 3)
"""Channel counts that tell ``(C, H, W)`` from ``(H, W, C)`` in torch image tensors."""
MAX_CHANNELS = 16
"""Many-channel images (``MultiChannelImageField``) have at most this many."""


def note_layout(op: Any, shape: Sequence[int], channels_first: bool | None) -> None:
    """Remember, on *op*, where its samples of *shape* keep their channels, as its
    ``declare_state_and_memory`` was told (``State.channels_first``), for the
    torch path's ``layout_of``. One operation object in two pipelines that
    disagree for one shape is left to guess (None)."""
    layouts = op.__dict__.setdefault("_layouts", {})
    key = tuple(int(s) for s in shape)
    layouts[key] = channels_first if layouts.get(key, channels_first) == channels_first \
        else None


def layout_of(op: Any, shape: Sequence[int]) -> bool | None:
    """What ``note_layout`` remembered for samples of *shape* (None: guess)."""
    layouts: dict[tuple[int, ...], bool | None] = op.__dict__.get("_layouts", {})
    return layouts.get(tuple(int(s) for s in shape))


def batch_image_dims(op: Any, batch: Any) -> tuple[int, int, int | None]:
    """``torch_image_dims`` of a batch's samples, laid out as *op* was told for
    their shape (``note_layout``), else guessed: dimensions of a sample, not of
    the batch."""
    shape = tuple(int(s) for s in batch.shape[1:])
    return torch_image_dims(op, shape, layout_of(op, shape))


def torch_image_dims(op: Any, shape: Sequence[int], channels_first: bool | None = None
                     ) -> tuple[int, int, int | None]:
    """``(H dim, W dim, C dim or None)`` of a per-sample torch image *shape*.

    ``(H, W)`` has no channel dimension. A 3-dimensional shape is laid out as
    *channels_first* says where the pipeline's state knows it
    (``State.channels_first``: the image decoders' ``(H, W, C)``, or
    ``ToTorchImage``'s ``(C, H, W)``). Where it does not, the sizes decide:
    ``(C, H, W)`` when the first size is 1 or 3 (preferred when both ends
    fit), else ``(H, W, C)`` when the last is; else, for many-channel images,
    the one end of at most ``MAX_CHANNELS`` is C. ValueError otherwise.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return 0, 1, None
    if len(shape) == 3 and channels_first is not None:
        if shape[0 if channels_first else 2] <= MAX_CHANNELS:
            return (1, 2, 0) if channels_first else (0, 1, 2)
    elif len(shape) == 3:
        if shape[0] in IMAGE_CHANNELS:
            return 1, 2, 0
        if shape[2] in IMAGE_CHANNELS:
            return 0, 1, 2
        if shape[0] <= MAX_CHANNELS < shape[2]:
            return 1, 2, 0
        if shape[2] <= MAX_CHANNELS < shape[0]:
            return 0, 1, 2
    raise ValueError(f"{name(op)} needs image tensors of shape (H, W), (H, W, C) or (C, H, W) "
                     f"with C in {IMAGE_CHANNELS}, or C up to {MAX_CHANNELS} with H and W "
                     f"larger, but it got samples of shape {shape}")


def to_device_of(array: np.ndarray, like: Any, dtype: Any = None) -> Any:
    """Host *array* as a tensor (of *dtype*, cast on the host) on *like*'s device.

    One host-to-device copy, queued without waiting for the device (the
    source is staged by the copy itself, so *array* may be freed at once).
    """
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if dtype is not None:
        tensor = tensor.to(dtype)
    return tensor.to(like.device, non_blocking=True)

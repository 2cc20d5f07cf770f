"""General operations: NumPy to torch, device moves, image layout, dtypes.

``ToTensor`` ends the NumPy part of a pipeline; everything after it receives
torch tensors. torch is imported inside the methods, so importing this
module does not need it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import (
    import_torch,
    is_torch_dtype,
    itemsize,
    name,
    numpy_dtype,
    numpy_out,
    require_numpy,
    require_shape,
    require_torch,
    torch_dtype,
    torch_out,
)


def _from_numpy(array: np.ndarray, context: BatchContext) -> Any:
    import torch

    # torch.from_numpy refuses negative strides and another byte order ('>f4'), and
    # warns on read-only memory (a zero-copy view of the file): copy those (in
    # the native order), share everything else.
    if not array.flags.writeable or any(s < 0 for s in array.strides) or (
            not array.dtype.isnative):
        context.wait_for_copies()  # this reads the values: they must be there
        array = np.array(array, dtype=array.dtype.newbyteorder("="))
    return torch.from_numpy(array)


def _each(batch: Any, convert: Any) -> Any:
    """*convert* applied to every array of a tuple, list or dict (nested), keeping
    the container (a ragged field's padded dict or list of samples)."""
    if isinstance(batch, dict):
        return {key: _each(value, convert) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_each(value, convert) for value in batch)
    return convert(batch)


class ToTensor(Operation):
    """Turn a NumPy batch into a torch tensor sharing its memory (``torch.from_numpy``).

    Ends the NumPy stage: later operations receive tensors. A tuple of arrays
    becomes a tuple of tensors, a list a list, a dict a dict (``RaggedDecoder``'s
    batches); a ``BytesBatch`` (from ``BytesDecoder``) becomes FFCV's
    ``(B, max_size)`` uint8 tensor, its ``lengths`` kept as the tensor's
    ``lengths`` attribute (an int64 tensor; later operations that make new
    tensors, such as ``ToDevice``, do not carry it).
    No buffer: the tensor is a view of the previous operation's buffer (a
    read-only or negatively strided array is copied instead).
    """

    reads_input = False  # from_numpy shares the memory (a copy, when needed, waits first)
    passes_through = True  # the same values, in the same memory
    releases_gil = True
    pixelwise = True  # each output pixel from its own input pixel
    keeps_zero = True  # zero in, zero out
    sample_independent = True

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, None]:
        require_numpy(self, previous_state)
        dtype = torch_dtype(previous_state.dtype, self)  # (imports torch, or says to install it)
        # torch.device('cpu') from here on, as in FFCV (NumPy stages say "cpu": no torch)
        return replace(previous_state, jit_mode=False, dtype=dtype,
                       device=import_torch(self).device("cpu")), None

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Return ``torch.from_numpy(batch)`` (element-wise for a tuple, list or dict)."""
        if isinstance(batch, (tuple, list, dict)):
            return _each(batch, lambda b: _from_numpy(b, context))
        tensor = _from_numpy(batch, context)
        lengths = getattr(batch, "lengths", None)  # a BytesBatch's, kept on the tensor
        if lengths is not None and isinstance(batch, np.ndarray):
            tensor.lengths = _from_numpy(lengths, context)
        return tensor


def _device(device: Any) -> Any:
    import torch

    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):  # torch's own: every device type it knows, or its
        # overloads' signatures
        raise ValueError(f"ToDevice({device!r}): no torch device ('cpu', 'cuda', 'cuda:0', "
                         "a torch.device)") from None
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class ToDevice(Operation):
    """Copy a tensor batch to *device*.

    Args:
        device: target device (``"cuda:0"``, a ``torch.device``…).
        non_blocking: copy asynchronously where the source allows it
            (pinned host memory to a GPU).

    On the batch's own device it returns the tensor unchanged. Otherwise it
    copies into a new tensor on *device* (from torch's caching allocator, so a
    batch you hold is never overwritten), keeping a channels-last layout; a
    tuple, list or dict is copied element by element. In a loader, CUDA copies run on the
    loader's side stream from pinned slots; see ``fastforward.device``.
    """
    releases_gil = True  # a copy in torch
    pixelwise = True  # each output pixel from its own input pixel
    keeps_zero = True  # zero in, zero out


    def __init__(self, device: Any, non_blocking: bool = True) -> None:
        super().__init__()
        self.device = device
        self.non_blocking = non_blocking

    @property
    def passes_through(self) -> bool:  # type: ignore[override]
        """To the CPU: the tensor itself."""
        return str(self.device) == "cpu"

    @property
    def sample_independent(self) -> bool:  # type: ignore[override]
        """To the CPU: nothing happens. A copy to a GPU belongs to the loader's
        CUDA stage, in the loader's process: never split over workers."""
        return str(self.device) == "cpu"

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery | None]:
        require_torch(self, previous_state)
        target = _device(self.device)
        if target.type == "cuda":
            import torch

            if not torch.cuda.is_available():
                why = ("this torch is a CPU-only build" if torch.version.cuda is None
                       else "no GPU is visible (CUDA_VISIBLE_DEVICES, the driver)")
                raise RuntimeError(f"{name(self)}({self.device!r}): CUDA is not available: "
                                   f"{why}. To keep the batches on the CPU, use ToDevice('cpu') "
                                   "or leave ToDevice out")
        return replace(previous_state, device=target), None

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Copy *batch* to the device, or return it if it is already there."""
        if isinstance(batch, (tuple, list, dict)):
            return _each(batch, lambda item: self.apply(item, None, context))
        target = _device(self.device)
        if batch.device == target:
            return batch
        import torch

        out = torch.empty_like(batch, device=target)  # keeps channels_last strides
        out.copy_(batch, non_blocking=self.non_blocking)
        return out


class ToTorchImage(Operation):
    """Turn ``(B, H, W, C)`` image tensors into PyTorch's ``(B, C, H, W)``.

    Args:
        channels_last: return a permuted view, which is ``(B, C, H, W)`` in
            ``torch.channels_last`` memory format (no copy, no buffer). With
            False, copy into a contiguous buffer on the batch's device.
        convert_back_int16: reinterpret int16 input as float16
            (``Tensor.view``), for float16 stored as int16 bits as FFCV's CPU
            ``NormalizeImage`` does. fastforward's ``NormalizeImage`` gives
            real float16, so this only matters for custom operations.
    """
    releases_gil = True  # vectorised NumPy (or torch)
    pixelwise = True  # each output pixel from its own input pixel
    keeps_zero = True  # zero in, zero out
    sample_independent = True  # each sample from its own values and randomness


    def __init__(self, channels_last: bool = True, convert_back_int16: bool = True) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.convert_int16 = convert_back_int16  # FFCV's attribute names
        self.enable_int16conv = False  # True once declared on int16 input that it views

    @property
    def convert_back_int16(self) -> bool:
        """The constructor's argument (``convert_int16``, as FFCV names it)."""
        return self.convert_int16

    @convert_back_int16.setter
    def convert_back_int16(self, value: bool) -> None:
        self.convert_int16 = value

    @property
    def reads_input(self) -> bool:  # type: ignore[override]
        """A permuted view (``channels_last``) reads nothing; a contiguous copy does."""
        return not self.channels_last

    @property
    def passes_through(self) -> bool:  # type: ignore[override]
        """A permuted view (``channels_last``) keeps the values where they are."""
        return bool(self.channels_last)

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery | None]:
        require_torch(self, previous_state)
        if previous_state.channels_first:
            raise ValueError(f"{name(self)}: the images are (C, H, W) already (a second "
                             "ToTorchImage?): it would move their rows into the channels")
        h, w, c = require_shape(self, previous_state, (3,), "image tensors of shape (H, W, C)")
        import torch

        dtype = previous_state.dtype
        if dtype == torch.int16 and self.convert_int16:
            dtype = torch.float16
            self.enable_int16conv = True
        state = replace(previous_state, shape=(c, h, w), dtype=dtype, channels_first=True)
        if self.channels_last:
            return state, None
        return state, AllocationQuery((c, h, w), dtype, previous_state.device)

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Permute to ``(B, C, H, W)``; copy into *destination* unless channels_last."""
        import torch

        if self.convert_int16 and batch.dtype == torch.int16:
            batch = batch.view(torch.float16)
        image = batch.permute(0, 3, 1, 2)
        if self.channels_last:
            return image
        if destination is None:
            return image.contiguous()
        out = destination[: image.shape[0]]
        out.copy_(image)
        return out


NUMBER_KINDS = frozenset("biufc")  # the NumPy kinds torch has a dtype for
NON_NUMBERS = {"O": "Python objects", "U": "strings", "S": "bytes strings",
               "V": "raw bytes (void)"}


class Convert(Operation):
    """Convert a batch to *target_dtype*, NumPy or torch, into a new buffer.

    Args:
        target_dtype: a NumPy or torch dtype; it is translated to the kind of
            the batch (NumPy before ``ToTensor``, torch after).

    The result goes into this operation's buffer (on the batch's device),
    keeping a channels-last layout; FFCV allocated a new tensor per batch.
    """
    releases_gil = True  # vectorised NumPy (or torch)
    pixelwise = True  # each output pixel from its own input pixel
    keeps_zero = True  # zero in, zero out
    sample_independent = True  # each sample from its own values and randomness


    def __init__(self, target_dtype: Any) -> None:
        super().__init__()
        if not is_torch_dtype(target_dtype):
            kind = numpy_dtype(target_dtype, self).kind
            if kind not in NUMBER_KINDS:
                raise TypeError(f"Convert({target_dtype!r}): a batch of "
                                f"{NON_NUMBERS.get(kind, 'dates or durations')} is no batch a "
                                "later operation takes; convert to a bool, integer, float or "
                                "complex dtype")
        self.target_dtype = target_dtype

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery | None]:
        if previous_state.jit_mode:
            dtype = numpy_dtype(self.target_dtype, self)
            device = None
        else:
            dtype = torch_dtype(self.target_dtype, self)
            device = previous_state.device
        state = replace(previous_state, dtype=dtype)
        if previous_state.shape is None:
            return state, None
        return state, AllocationQuery(tuple(previous_state.shape), dtype, device)

    def pixel_affine(self) -> tuple[np.dtype, None, None] | None:
        """To float16 or float32: ``value * 1 + 0``, which a crop decoder can write."""
        try:
            target = numpy_dtype(self.target_dtype, self)
        except TypeError:
            return None
        if target in (np.dtype("float16"), np.dtype("float32")):
            return target, None, None
        return None

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Write ``batch`` cast to the target dtype into *destination*."""
        if isinstance(batch, np.ndarray):
            dtype = numpy_dtype(self.target_dtype, self)
            out = numpy_out(destination, len(batch), batch.shape[1:], dtype)
            np.copyto(out, batch, casting="unsafe")
            return out
        out = torch_out(destination, batch, tuple(batch.shape[1:]),
                        torch_dtype(self.target_dtype, self))
        out.copy_(batch)
        return out

    def __repr__(self) -> str:
        return f"Convert({self.target_dtype!r})"


class View(Operation):
    """Reinterpret a batch's memory as *target_dtype* (``ndarray.view`` / ``Tensor.view``).

    Args:
        target_dtype: a NumPy or torch dtype. With another item size, the last
            dimension shrinks or grows accordingly.

    No copy and no buffer: the result is a view of the input.
    """
    releases_gil = True  # vectorised NumPy (or torch)
    pixelwise = True  # each output pixel from its own input pixel
    keeps_zero = True  # zero in, zero out
    sample_independent = True  # each sample from its own values and randomness


    reads_input = False

    def __init__(self, target_dtype: Any) -> None:
        super().__init__()
        self.target_dtype = target_dtype

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, None]:
        if previous_state.jit_mode:
            dtype = numpy_dtype(self.target_dtype, self)
        else:
            dtype = torch_dtype(self.target_dtype, self)
        shape = previous_state.shape
        old, new = itemsize(previous_state.dtype), itemsize(dtype)
        if shape is not None and old != new:
            if not shape or (shape[-1] * old) % new:
                raise ValueError(f"{name(self)}: samples of shape {tuple(shape)} and "
                                 f"{previous_state.dtype} cannot be viewed as {dtype}")
            shape = (*shape[:-1], shape[-1] * old // new)
        return replace(previous_state, dtype=dtype, shape=shape), None

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Return a view of *batch* with the target dtype."""
        if isinstance(batch, np.ndarray):
            return batch.view(numpy_dtype(self.target_dtype, self))
        return batch.view(torch_dtype(self.target_dtype, self))

    def __repr__(self) -> str:
        return f"View({self.target_dtype!r})"


__all__ = ["Convert", "ToDevice", "ToTensor", "ToTorchImage", "View"]

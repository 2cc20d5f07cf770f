"""The CUDA stage: pinned host slots, a side stream, and one event per batch.

When a pipeline copies to a CUDA device (``ToDevice('cuda')``):

- The host buffers that a pipeline copies to the GPU are pinned (page-locked),
  once, when their slot is allocated; slots live as long as the loader, not an
  epoch. The other pipelines' host outputs (labels left on the CPU) stay
  ordinary memory: a copy the user makes of one (``labels.cuda(non_blocking=
  True)``) is staged before it returns, so refilling the slot later cannot
  reach it, where a page-locked buffer would be read whenever the copy runs.
- Everything a batch does after decoding (the host-to-device copies and every
  GPU transform after them) is issued on one dedicated stream per loader, so
  it overlaps the training step running on the consumer's stream.
- After a batch's work, an event is recorded on that stream. When ``next()``
  hands the batch over, the consumer's current stream waits on the event, so
  user code needs no synchronisation, and each CUDA output is
  ``record_stream``-ed onto the consumer's stream. Before a slot's pinned
  buffers are refilled, the event is synchronised on the host: an
  asynchronous copy still reading them can never see the next batch's bytes
  (FFCV #37 and #198 report corrupted batches from exactly that).
- Device tensors come from torch's caching allocator, new for each batch: a
  batch you hold keeps its memory, unchanged; memory you drop is reused by the
  allocator once the consumer's stream is done with it.

torch is imported inside functions only: ``import fastforward`` needs neither
torch nor a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def is_cuda(device: Any) -> bool:
    """Whether *device* (a string or ``torch.device``) names a CUDA device."""
    return str(device).startswith("cuda")


class DeviceStage:
    """The stream and events of one loader's CUDA work (see the module docstring)."""

    def __init__(self, device: Any) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"ToDevice({device!r}): CUDA is not available")
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)

    def context(self) -> Any:
        """Make the side stream current for the calling thread (a context manager)."""
        import torch

        return torch.cuda.stream(self.stream)

    def record(self) -> Any:
        """An event marking the end of the work issued so far on the side stream."""
        import torch

        event = torch.cuda.Event()
        event.record(self.stream)
        return event


class DeviceBatch:
    """A batch whose GPU work is still in flight, and the event that ends it."""

    __slots__ = ("event", "outputs")

    def __init__(self, outputs: tuple[Any, ...], event: Any) -> None:
        self.outputs = outputs
        self.event = event

    def hand_over(self) -> tuple[Any, ...]:
        """Order the consumer's stream after the batch's work; return the outputs."""
        import torch

        stream = torch.cuda.current_stream(self.event.device if hasattr(self.event, "device")
                                           else None)
        stream.wait_event(self.event)
        for tensor in _tensors(self.outputs):
            if tensor.is_cuda:
                tensor.record_stream(stream)
        return self.outputs


def _tensors(value: Any) -> Iterator[Any]:
    """Every tensor in an output: in tuples, lists and dicts (a ``RaggedDecoder``'s
    named columns), at any depth."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif hasattr(value, "is_cuda"):
        yield value


def pinned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A NumPy array in pinned (page-locked) host memory, for asynchronous copies."""
    import torch

    tensor = torch.empty(int(np.prod(shape)) * dtype.itemsize, dtype=torch.uint8,
                         pin_memory=True)
    return tensor.numpy().view(dtype).reshape(shape)


def pin_segment(segment: Any, nbytes: int) -> None:
    """Page-lock the first *nbytes* of a shared slot's memory (``cudaHostRegister``):
    the buffers the CUDA stage copies from, so that those copies are asynchronous,
    like copies from ``pinned_empty`` buffers.

    The registration ends when the segment's last view goes, before its map does.
    """
    import weakref

    import torch

    whole = segment.whole
    pointer = int(whole.ctypes.data)
    cudart = torch.cuda.cudart()
    status = cudart.cudaHostRegister(pointer, int(nbytes), 0)
    if int(status) != 0:
        raise RuntimeError(f"cudaHostRegister of {nbytes} bytes of a shared slot failed "
                           f"({status}): process workers need page-locked slots for the "
                           "CUDA stage (is the memlock limit too low? ulimit -l)")
    # unregistered on the same GPU, from whichever thread lets the segment go; not at
    # the interpreter's exit (its finalizers run newest first, before the loader's has
    # stopped the copies out of it; the process's end undoes it anyway)
    unregister = weakref.finalize(whole, _unregister, cudart, pointer,
                                  torch.cuda.current_device())
    unregister.atexit = False


def _unregister(cudart: Any, pointer: int, device: int) -> None:
    import torch

    with torch.cuda.device(device):
        cudart.cudaHostUnregister(pointer)

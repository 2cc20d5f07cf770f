"""What memory an operation asks the loader for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AllocationQuery:
    """A buffer of ``shape`` per sample: the loader allocates ``(batch_size, *shape)``
    of ``dtype`` (NumPy, or torch when ``device`` is given) in every ring slot."""

    shape: tuple[int, ...]
    dtype: Any
    device: Any = None


Allocation = AllocationQuery | Sequence[AllocationQuery]
"""What ``declare_state_and_memory`` may ask for (besides None)."""


def allocate_query(memory_allocation: AllocationQuery, batch_size: int,
                   batches_ahead: int) -> Any:
    """FFCV's helper: *batches_ahead* buffers of ``(batch_size, *shape)`` for a query.

    A NumPy dtype gives one ``(batches_ahead, batch_size, *shape)`` array; a
    torch dtype a list of tensors on the query's device. (The loader allocates
    its own buffers, in its ring; this is for code that calls FFCV's helper.)
    """
    shape = (batch_size, *memory_allocation.shape)
    dtype = memory_allocation.dtype
    if type(dtype).__module__.startswith("torch"):
        import torch

        return [torch.empty(shape, dtype=dtype, device=memory_allocation.device)
                for _ in range(batches_ahead)]
    return np.empty((batches_ahead, *shape), np.dtype(dtype))

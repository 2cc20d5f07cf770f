"""What memory an operation asks the loader for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AllocationQuery:
    """A buffer of ``shape`` per sample: the loader allocates ``(batch_size, *shape)``
    of ``dtype`` (NumPy, or torch when ``device`` is given) in every ring slot."""

    shape: tuple[int, ...]
    dtype: Any
    device: Any = None

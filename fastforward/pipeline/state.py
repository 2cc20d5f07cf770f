"""The state of a batch between two operations of a pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class State:
    """What an operation receives: per-sample ``shape`` and ``dtype``, and where.

    ``jit_mode`` keeps FFCV's name: True while batches are NumPy arrays on the
    CPU (before ``ToTensor``), False once they are torch tensors. Update a
    state with ``dataclasses.replace``.

    ``channels_first`` says where a 3-dimensional image sample keeps its
    channels, where an operation knows: False for ``(H, W, C)`` (what the image
    decoders make), True for ``(C, H, W)`` (after ``ToTorchImage``), None where
    nobody said. Torch operations that need the layout read it rather than
    guess it from the sizes (a 3×W×3 image is both). The compiler forgets it
    (None) after an operation that changes the shape without saying.
    """

    jit_mode: bool = True
    device: Any = "cpu"
    shape: tuple[int, ...] | None = None
    dtype: Any = np.dtype("u1")  # noqa: RUF009 - dtypes are immutable
    channels_first: bool | None = None

    def __post_init__(self) -> None:
        if self.jit_mode and str(self.device) != "cpu":
            raise ValueError(f"NumPy batches live on the CPU, not {self.device}")

from typing import Any

import numpy as np

from ._typing import BufferLike

OPS: tuple[str, ...]
PARAMS: int

def augment_into(
    src: BufferLike, out: np.ndarray, ops: BufferLike, params: BufferLike,
    bilinear: bool = False, fill: float | tuple[float, float, float] | np.ndarray | None = None,
    table: np.ndarray | None = None,
    affine: tuple[Any, Any] | None = None,
) -> int:
    """Apply ``ops[i, k]`` with ``params[i, k]`` (k in order) to image ``i`` of *src*,
    into image ``i`` of *out* (uint8, or float16/float32 through *table*)."""

def conversion_form(out_dtype: Any, table: np.ndarray, affine: tuple[Any, Any] | None) -> int:
    """0: the table, 1: ``v * scale + bias``, 2: ``(v - mean) / std`` (float32)."""

def vector_level() -> int:
    """0: portable code only; 1: AVX2 and F16C; 2: also AVX-512 VBMI."""

def use_portable(on: bool) -> None:
    """Run only the portable code (tests)."""

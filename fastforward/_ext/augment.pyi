import numpy as np

from ._typing import BufferLike

OPS: tuple[str, ...]
PARAMS: int

def augment_into(
    src: BufferLike, out: BufferLike, ops: BufferLike, params: BufferLike,
    bilinear: bool = False, fill: float | tuple[float, float, float] | np.ndarray | None = None,
) -> int:
    """Apply ``ops[i, k]`` with ``params[i, k]`` (k in order) to image ``i`` of *src*,
    into image ``i`` of *out*."""

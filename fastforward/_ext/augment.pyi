import numpy as np
from typing_extensions import Buffer

OPS: tuple[str, ...]
PARAMS: int

def augment_into(
    src: Buffer, out: Buffer, ops: Buffer, params: Buffer, bilinear: bool = False,
    fill: float | tuple[float, float, float] | np.ndarray | None = None,
) -> int:
    """Apply ``ops[i, k]`` with ``params[i, k]`` (k in order) to image ``i`` of *src*,
    into image ``i`` of *out*."""

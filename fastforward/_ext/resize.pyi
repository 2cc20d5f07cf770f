from collections.abc import Sequence

import numpy as np
from typing_extensions import Buffer

class Workspace:
    """Scratch memory for ``crop_resize_into``, kept between calls (one per thread)."""

    @property
    def nbytes(self) -> int: ...

def crop_resize_into(
    src: Buffer, y0: int, x0: int, h: int, w: int, out: np.ndarray, flip: bool = False,
    scale: Sequence[float] | None = None, bias: Sequence[float] | None = None,
    workspace: Workspace | None = None,
) -> int:
    """Resize the ``h x w`` window of *src* at ``(y0, x0)`` into *out*; mirror it if *flip*.

    *src*: ``H x W x C`` uint8 or uint16 (C from 1 to 16); *out*: its type, or
    float16/float32 (``value * scale[c] + bias[c]``)."""

def f16_soft_into(values: Buffer, out: Buffer) -> int:
    """The portable float→half conversion (used on CPUs without F16C), for its tests."""

def set_simd(enabled: bool) -> None:
    """Turn the explicit AVX2/F16C paths off (False) or back on, for tests."""

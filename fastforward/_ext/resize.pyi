from collections.abc import Callable, Sequence

import numpy as np
from typing_extensions import disjoint_base

from ._typing import BufferLike

@disjoint_base
class Workspace:
    """Scratch memory for ``crop_resize_into``, kept between calls (one per thread)."""

    @property
    def nbytes(self) -> int: ...

def crop_resize_into(
    src: BufferLike, y0: int, x0: int, h: int, w: int, out: np.ndarray, flip: bool = False,
    scale: Sequence[float] | np.ndarray | None = None,
    bias: Sequence[float] | np.ndarray | None = None, workspace: Workspace | None = None,
) -> int:
    """Resize the ``h x w`` window of *src* at ``(y0, x0)`` into *out*; mirror it if *flip*.

    *src*: ``H x W x C`` uint8 or uint16 (C from 1 to 16); *out*: its type, or
    float16/float32 (``value * scale[c] + bias[c]``)."""

def resize_span_into(
    src: BufferLike, span_h: float, span_w: float, out: np.ndarray,
    workspace: Workspace | None = None,
) -> int:
    """Resize the whole of *src* (``H x W x C`` uint8) into *out* (uint8), where its
    pixels stand for ``span_h x span_w`` of the image (its last row and column may
    stand for part of one)."""

def decode_crop_resize_range(
    decode_jpeg: Callable[..., np.ndarray], fastdct: bool, buffer: BufferLike | None,
    source: BufferLike, starts: BufferLike, sizes: BufferLike, raw: BufferLike,
    heights: BufferLike, widths: BufferLike, crops: BufferLike, flips: BufferLike,
    out: np.ndarray, scale: Sequence[float] | np.ndarray | None,
    bias: Sequence[float] | np.ndarray | None, workspace: Workspace,
    fail: Callable[[Exception, int], BaseException], progress: np.ndarray | None = None,
    samples: np.ndarray | None = None,
) -> int:
    """Decode (simplejpeg's *decode_jpeg*, into *buffer*), crop and resize samples
    ``0 .. n-1`` of a range into ``out[k]``; an exception at sample ``k`` is
    raised as ``fail(exception, k)``."""

def f16_soft_into(values: BufferLike, out: BufferLike) -> int:
    """The portable float→half conversion (used on CPUs without F16C), for its tests."""

def set_simd(enabled: bool) -> None:
    """Turn the explicit AVX2/F16C paths off (False) or back on, for tests."""

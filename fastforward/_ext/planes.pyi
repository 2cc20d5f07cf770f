from collections.abc import Sequence

import numpy as np
from typing_extensions import disjoint_base

from ._typing import BufferLike
from .resize import Workspace

ZSTD_VERSION: str

@disjoint_base
class ZstdDecoder:
    """A zstd decompression context, kept between calls (one per thread)."""

def set_simd(enabled: bool) -> None:
    """Turn the SSSE3 nearest-neighbour copy off (False) or back on, for tests."""

def decompress_into(decoder: ZstdDecoder, frame: BufferLike, out: BufferLike) -> int:
    """Decompress the zstd *frame* into *out*, which it must fill exactly."""

def read_sizes(source: BufferLike, starts: BufferLike, sizes: BufferLike, heights: BufferLike,
               widths: BufferLike) -> tuple[int, str] | None:
    """Fill *heights* and *widths* from the payloads' headers."""

def decode_nearest_range(
    decoder: ZstdDecoder, source: BufferLike, starts: BufferLike, sizes: BufferLike,
    compressed: bool, heights: BufferLike, widths: BufferLike, crops: BufferLike,
    out_sizes: BufferLike, flips: BufferLike, out: np.ndarray, fill: int, workspace: Workspace,
    progress: np.ndarray | None = None, samples: np.ndarray | None = None,
) -> tuple[int, str] | None:
    """Decode a range of masks, each cropped, resized by nearest neighbour and mirrored."""

def decode_resize_range(
    decoder: ZstdDecoder, source: BufferLike, starts: BufferLike, sizes: BufferLike,
    compressed: bool, item: int, heights: BufferLike, widths: BufferLike, crops: BufferLike,
    flips: BufferLike, out: np.ndarray, scale: Sequence[float] | np.ndarray | None,
    bias: Sequence[float] | np.ndarray | None, workspace: Workspace,
    values_workspace: Workspace, progress: np.ndarray | None = None,
    samples: np.ndarray | None = None,
) -> tuple[int, str] | None:
    """Decode a range of many-channel images, each cropped, resized, mirrored, converted."""

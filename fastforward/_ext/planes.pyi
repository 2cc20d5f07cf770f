import numpy as np
from typing_extensions import Buffer

from .resize import Workspace

ZSTD_VERSION: str

class ZstdDecoder:
    """A zstd decompression context, kept between calls (one per thread)."""

def set_simd(enabled: bool) -> None:
    """Turn the SSSE3 nearest-neighbour copy off (False) or back on, for tests."""

def decompress_into(decoder: ZstdDecoder, frame: Buffer, out: Buffer) -> int:
    """Decompress the zstd *frame* into *out*, which it must fill exactly."""

def read_sizes(source: Buffer, starts: np.ndarray, sizes: np.ndarray, heights: np.ndarray,
               widths: np.ndarray) -> tuple[int, str] | None:
    """Fill *heights* and *widths* from the payloads' headers."""

def decode_nearest_range(
    decoder: ZstdDecoder, source: Buffer, starts: np.ndarray, sizes: np.ndarray,
    compressed: bool, heights: np.ndarray, widths: np.ndarray, crops: np.ndarray,
    out_sizes: np.ndarray, flips: np.ndarray, out: np.ndarray, fill: int,
    workspace: Workspace,
) -> tuple[int, str] | None:
    """Decode a range of masks, each cropped, resized by nearest neighbour and mirrored."""

def decode_resize_range(
    decoder: ZstdDecoder, source: Buffer, starts: np.ndarray, sizes: np.ndarray,
    compressed: bool, item: int, heights: np.ndarray, widths: np.ndarray, crops: np.ndarray,
    flips: np.ndarray, out: np.ndarray, scale: object, bias: object, workspace: Workspace,
    values_workspace: Workspace,
) -> tuple[int, str] | None:
    """Decode a range of many-channel images, each cropped, resized, mirrored, converted."""

from collections.abc import Sequence

import numpy as np
from typing_extensions import disjoint_base

from ._typing import BufferLike
from .resize import Workspace

LIBJPEG_TURBO_VERSION: str

@disjoint_base
class JpegDecoder:
    """A libjpeg decompressor and its row buffer, kept from image to image."""
    @property
    def restart_row(self) -> int:
        """The iMCU row at which the last decode started (0: the top)."""
    @property
    def restart_mcus(self) -> int:
        """MCUs of each row the last decode entropy-decoded (0: all)."""
    @property
    def libjpeg_huffman(self) -> bool:
        """Whether libjpeg decodes the Huffman codes rather than fastforward's decoder."""
    @libjpeg_huffman.setter
    def libjpeg_huffman(self, value: bool) -> None: ...
    @property
    def own_huffman(self) -> bool:
        """Whether the last decode used fastforward's Huffman decoder."""

def decode_crop_resize_range(
    decoder: JpegDecoder, source: BufferLike, starts: BufferLike, sizes: BufferLike,
    raw: BufferLike, heights: BufferLike, widths: BufferLike, crops: BufferLike,
    flips: BufferLike, out: np.ndarray, scale: Sequence[float] | np.ndarray | None,
    bias: Sequence[float] | np.ndarray | None, workspace: Workspace, fast_idct: bool = True,
    min_scale: int = 8, restarts: bool = True, progress: np.ndarray | None = None,
    samples: np.ndarray | None = None,
) -> tuple[int, str] | None:
    """Decode, crop and resize samples ``0 .. n-1`` of a range into ``out[k]``."""

def decode_window(
    decoder: JpegDecoder, data: BufferLike, height: int, width: int, scale: int, y0: int, h: int,
    x0: int, w: int, fast_idct: bool = True, restarts: bool = True,
) -> np.ndarray:
    """Rows ``y0 .. y0+h`` and columns ``x0 .. x0+w`` of a JPEG at the DCT scale ``scale/8``."""

def encode_rgb(image: BufferLike, quality: int, subsampling: str = "420",
               restart_rows: int = 1) -> bytes:
    """*image* (``H x W x 3`` uint8 RGB) as baseline JPEG bytes, a restart marker every
    *restart_rows* MCU rows."""

def shrink_jpeg(decoder: JpegDecoder, data: BufferLike, height: int, width: int, scale: int,
                quality: int, restart_rows: int = 1,
                workspace: Workspace | None = None) -> bytes | None:
    """The JPEG *data* shrunk to ``height x width`` and encoded again (4:2:0) without
    leaving YCbCr; None for a JPEG it does not take or cannot decode."""

def decode_planes(decoder: JpegDecoder, data: BufferLike, scale: int = 8,
                  fast_idct: bool = False) -> list[np.ndarray] | None:
    """The components of a YCbCr or grayscale JPEG as ``shrink_jpeg`` reads them."""

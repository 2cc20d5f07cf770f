"""FFCV's ``ffcv.libffcv``: the helpers FFCV's C library gave its decoders.

fastforward has no such library; these do the same work with its own
kernels. ``memcpy`` is also callable from an FFCV operation's compiled code
(with the ``numba`` extra); ``read``, ``imdecode`` and ``resize_crop`` are
Python only. FFCV's ctypes handles (``lib``, ``ctypes_imdecode``,
``ctypes_memcopy``, ``ctypes_resize``) do not exist.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._compat import not_provided
from .transforms.utils.fast_crop import resize_crop

__all__ = ["imdecode", "memcpy", "read", "resize_crop"]


def memcpy(source: np.ndarray, dest: np.ndarray) -> None:
    """Copy the bytes of *source* to the start of *dest* (C-contiguous), as FFCV's ``memcpy``."""
    if not dest.flags.c_contiguous:
        raise ValueError("memcpy: the destination must be C-contiguous")
    src = source.reshape(-1).view(np.uint8)
    dst = dest.reshape(-1).view(np.uint8)
    dst[: src.size] = src


def read(fileno: int, destination: np.ndarray, offset: int) -> int:
    """Read ``destination.nbytes`` bytes of file *fileno* at *offset* into *destination*
    (``pread``); return the number of bytes read."""
    return os.preadv(fileno, [destination.data.cast("B")], offset)


def imdecode(source: np.ndarray, dst: np.ndarray, source_height: int, source_width: int,
             crop_height: Any = None, crop_width: Any = None, offset_x: int = 0,
             offset_y: int = 0, scale_factor_num: int = 1, scale_factor_denom: int = 1,
             enable_crop: bool = False, do_flip: bool = False) -> int:
    """Decode the JPEG in *source* into *dst* (H×W×3 uint8), as FFCV's ``imdecode``
    (libjpeg-turbo's fast IDCT: FFCV's pixels). Returns 0; a corrupt JPEG raises
    ``DecodeError``. ``enable_crop`` keeps the window at ``(offset_y, offset_x)``;
    ``do_flip`` mirrors it. DCT scaling (a scale factor other than 1) is not supported.
    """
    from .errors import DecodeError
    from .fields.rgb_image import require_simplejpeg

    if scale_factor_num != scale_factor_denom:
        raise NotImplementedError("imdecode: DCT scaling (scale_factor_num / "
                                  "scale_factor_denom other than 1) is not supported")
    try:
        image = require_simplejpeg().decode_jpeg(np.ascontiguousarray(source).tobytes(),
                                                 colorspace="RGB", fastdct=True)
    except ValueError as exc:
        raise DecodeError(f"corrupt JPEG payload: {exc}") from exc
    if image.shape[:2] != (source_height, source_width):
        raise DecodeError(f"the JPEG is {image.shape[0]}×{image.shape[1]}, not "
                          f"{source_height}×{source_width}")
    if enable_crop:
        image = image[offset_y : offset_y + crop_height, offset_x : offset_x + crop_width]
    if do_flip:
        image = image[:, ::-1]
    dst[: image.shape[0], : image.shape[1]] = image
    return 0


__getattr__ = not_provided(__name__, dict.fromkeys(
    ("lib", "ctypes_imdecode", "ctypes_memcopy", "ctypes_resize"),
    "FFCV's ctypes handles into its C library; fastforward has no such library: call "
    "fastforward.libffcv.imdecode, memcpy or resize_crop instead"))

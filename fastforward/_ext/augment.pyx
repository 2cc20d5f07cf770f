"""The augmentation policies' operations on a batch of uint8 RGB images.

``augment_into(src, out, ops, params)`` applies to image ``i`` of *src* the
operations ``ops[i, 0], ops[i, 1], …`` in turn (codes of ``OPS``; ``-1``
skips a position), with their parameters ``params[i, k, :]``, and writes the
result into image ``i`` of *out*. The whole batch is one call without the
GIL. The policies (``fastforward.transforms.auto_augment``) turn their
random decisions into these codes; the arithmetic of each operation is
torchvision v2's on uint8 tensors (see ``augment_kernels.h``).

Memory: reads *src*, writes every pixel of *out* once per operation; an image
that goes through two or more operations passes through one scratch image
(allocated per call, ``h * w * 3`` bytes) and *out* in turn. *src* and *out*
must not overlap.

Parameters per code (unused ones are ignored):

- ``COPY``: none. ``AFFINE``: the inverse affine matrix ``m0..m5`` mapping an
  output pixel's centred coordinates ``(x - (w-1)/2, y - (h-1)/2)`` to the
  source's (torchvision's ``_get_inverse_affine_matrix``).
- ``SHIFT``: ``dx, dy``, whole pixels (content moves right and down).
- ``ROT90``: quarter turns counter-clockwise, 1 to 3 (1 and 3: square images).
- ``BRIGHTNESS``, ``SATURATION``, ``CONTRAST``, ``SHARPNESS``: the factor (>= 0).
- ``POSTERIZE``: bits kept, 0 to 8. ``SOLARIZE``: the threshold.
- ``AUTOCONTRAST``, ``EQUALIZE``, ``INVERT``: none.
"""

cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t
from libc.stdlib cimport free, malloc

import numpy as np


cdef extern from "augment_kernels.h" nogil:
    ctypedef struct ff_aug_scratch:
        uint16_t* colsum
        int32_t* gray
        int32_t* offset
        float* weight
    void ff_aug_apply(int op, const double* p, const uint8_t* src, Py_ssize_t ss, uint8_t* dst,
                      Py_ssize_t ds, int h, int w, int bilinear, const float* fill,
                      ff_aug_scratch* scratch)
    void ff_aug_copy(const uint8_t* src, Py_ssize_t ss, uint8_t* dst, Py_ssize_t ds, int h,
                     int w)
    int FF_AUG_NONE
    int FF_AUG_COUNT
    int FF_AUG_SHIFT
    int FF_AUG_ROT90
    int FF_AUG_POSTERIZE
    int FF_AUG_BRIGHTNESS
    int FF_AUG_SATURATION
    int FF_AUG_CONTRAST
    int FF_AUG_SHARPNESS
    int FF_AUG_AFFINE


OPS = ("COPY", "AFFINE", "SHIFT", "ROT90", "BRIGHTNESS", "SATURATION", "CONTRAST", "SHARPNESS",
       "POSTERIZE", "SOLARIZE", "AUTOCONTRAST", "EQUALIZE", "INVERT")
"""Operation codes, in order: ``OPS.index(name)`` is the code (-1: none)."""

PARAMS = 6
"""Parameters per operation (``params.shape[2]``)."""


cdef int _check(const int32_t[:, ::1] ops, const double[:, :, ::1] params, Py_ssize_t h,
                Py_ssize_t w) except -1:
    """Raise ValueError for an unknown code or a parameter an operation cannot take."""
    cdef Py_ssize_t i, k, j
    cdef int op
    cdef double v
    for i in range(ops.shape[0]):
        for k in range(ops.shape[1]):
            op = ops[i, k]
            if op < FF_AUG_NONE or op >= FF_AUG_COUNT:
                raise ValueError(f"sample {i}, operation {k}: unknown operation code {op}")
            if op == FF_AUG_NONE:
                continue
            if op == FF_AUG_AFFINE:
                for j in range(params.shape[2]):
                    if not (-1e6 < params[i, k, j] < 1e6):
                        raise ValueError(f"sample {i}, operation {k}: AFFINE needs a finite "
                                         f"matrix, got {list(params[i, k, :])}")
            v = params[i, k, 0]
            if op == FF_AUG_SHIFT and not (v == <int>v and params[i, k, 1] == <int>params[i, k, 1]
                                           and abs(v) <= 1e6 and abs(params[i, k, 1]) <= 1e6):
                raise ValueError(f"sample {i}, operation {k}: SHIFT needs whole pixels, got "
                                 f"({v}, {params[i, k, 1]})")
            if op == FF_AUG_ROT90 and not (v == 1 or v == 2 or v == 3):
                raise ValueError(f"sample {i}, operation {k}: ROT90 needs 1, 2 or 3 quarter "
                                 f"turns, got {v}")
            if op == FF_AUG_ROT90 and v != 2 and h != w:
                raise ValueError(f"sample {i}, operation {k}: ROT90 by {int(v)} quarter turns "
                                 f"needs a square image, got {h}x{w}")
            if op == FF_AUG_POSTERIZE and not (0 <= v <= 8 and v == <int>v):
                raise ValueError(f"sample {i}, operation {k}: POSTERIZE keeps 0 to 8 bits, "
                                 f"got {v}")
            if (op == FF_AUG_BRIGHTNESS or op == FF_AUG_SATURATION or op == FF_AUG_CONTRAST
                    or op == FF_AUG_SHARPNESS) and not (0 <= v < 1e6):
                raise ValueError(f"sample {i}, operation {k}: {OPS[op]} needs a factor >= 0, "
                                 f"got {v}")
            if not (-1e30 < v < 1e30):
                raise ValueError(f"sample {i}, operation {k}: {OPS[op]} got {v}")
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
def augment_into(const uint8_t[:, :, :, :] src not None, uint8_t[:, :, :, :] out not None,
                 const int32_t[:, ::1] ops not None, const double[:, :, ::1] params not None,
                 bint bilinear=False, fill=None):
    """Apply ``ops[i, k]`` with ``params[i, k]`` (k in order) to image ``i`` of *src*,
    into image ``i`` of *out*.

    Args:
        src: ``(B, H, W, 3)`` uint8 images, channels contiguous.
        out: the same shape; written in full. Must not overlap *src*.
        ops: ``(B, K)`` int32 operation codes (``OPS``; -1: none).
        params: ``(B, K, PARAMS)`` float64 parameters (see the module docstring).
        bilinear: interpolation of ``AFFINE`` (nearest when False).
        fill: None (zeros outside the image, without torchvision's mask), or
            three values in 0..255 blended in where the source is outside.

    Returns:
        The number of images.

    Raises:
        ValueError: shapes that do not match, an unknown code, or a parameter
            its operation cannot take (naming the sample and the position).
    """
    cdef Py_ssize_t n = src.shape[0], h = src.shape[1], w = src.shape[2]
    cdef Py_ssize_t i, k, depth = ops.shape[1], steps, done
    cdef Py_ssize_t ss = src.strides[1], ds = out.strides[1], ts = w * 3
    cdef float fill_values[3]
    cdef const float* fill_ptr = NULL
    cdef ff_aug_scratch scratch
    cdef uint8_t* tmp = NULL
    cdef char* block = NULL
    cdef const uint8_t* a
    cdef uint8_t* b
    cdef Py_ssize_t sa, sb
    cdef const uint8_t* src_base
    cdef uint8_t* out_base
    if src.shape[3] != 3 or (out.shape[0], out.shape[1], out.shape[2], out.shape[3]) != (
            n, h, w, 3):
        raise ValueError(f"src and out must be (B, H, W, 3) alike, got "
                         f"{(n, h, w, src.shape[3])} and "
                         f"{(out.shape[0], out.shape[1], out.shape[2], out.shape[3])}")
    if (src.strides[2] != 3 or out.strides[2] != 3 or src.strides[3] != 1
            or out.strides[3] != 1):
        raise ValueError("src and out need contiguous pixels of 3 channels")
    if ops.shape[0] != n or params.shape[0] != n or params.shape[1] != depth or (
            params.shape[2] != PARAMS):
        raise ValueError(f"ops must be ({n}, K) and params ({n}, K, {PARAMS}), got "
                         f"{(ops.shape[0], ops.shape[1])} and "
                         f"{(params.shape[0], params.shape[1], params.shape[2])}")
    if n == 0:
        return 0
    if h <= 0 or w <= 0:
        raise ValueError(f"empty images: {h}x{w}")
    if h > 1 << 20 or w > 1 << 20:
        raise ValueError(f"images of {h}x{w} are too large")
    if fill is not None:
        values = np.asarray(fill, dtype=np.float64).reshape(-1)
        if values.size == 1:
            values = np.repeat(values, 3)
        if values.size != 3 or not np.all((values >= 0) & (values <= 255)):
            raise ValueError(f"fill must be one or three values in 0..255, got {fill!r}")
        for k in range(3):
            fill_values[k] = values[k]
        fill_ptr = fill_values
    _check(ops, params, h, w)
    src_base = <const uint8_t*>&src[0, 0, 0, 0]
    out_base = <uint8_t*>&out[0, 0, 0, 0]
    if (src_base < out_base + (n - 1) * out.strides[0] + (h - 1) * ds + w * 3
            and out_base < src_base + (n - 1) * src.strides[0] + (h - 1) * ss + w * 3):
        raise ValueError("src and out overlap")
    if ss < 0 or ds < 0 or src.strides[0] < 0 or out.strides[0] < 0:
        raise ValueError("src and out need rows and images in increasing memory order")
    if (h - 1) * max(ss, ds, ts) + w * 3 >= 1 << 31:
        raise ValueError(f"images of {h}x{w} (rows {ss} bytes apart) are too large: "
                         "offsets must fit in 31 bits")
    # one block: the scratch rows, then the scratch image (and slack for 4-byte reads)
    block = <char*>malloc(w * (4 * sizeof(float) + 3 * sizeof(int32_t) + 3 * sizeof(uint16_t))
                          + h * w * 3 + 64)
    if block == NULL:
        raise MemoryError(f"augment_into: no memory for a {h}x{w} scratch image")
    scratch.weight = <float*>block
    scratch.gray = <int32_t*>(scratch.weight + 4 * w)
    scratch.offset = scratch.gray + w
    scratch.colsum = <uint16_t*>(scratch.offset + 2 * w)
    tmp = <uint8_t*>(scratch.colsum + 3 * w)
    try:
        with nogil:
            for i in range(n):
                steps = 0
                for k in range(depth):
                    steps += ops[i, k] != FF_AUG_NONE
                a, sa = &src[i, 0, 0, 0], ss
                if steps == 0:
                    ff_aug_copy(a, sa, &out[i, 0, 0, 0], ds, <int>h, <int>w)
                    continue
                done = 0
                for k in range(depth):
                    if ops[i, k] == FF_AUG_NONE:
                        continue
                    # ping-pong between out and tmp so that the last step lands in out
                    if (steps - done) % 2 == 1:
                        b, sb = &out[i, 0, 0, 0], ds
                    else:
                        b, sb = tmp, ts
                    ff_aug_apply(ops[i, k], &params[i, k, 0], a, sa, b, sb, <int>h, <int>w,
                                 bilinear, fill_ptr, &scratch)
                    a, sa = b, sb
                    done += 1
    finally:
        free(block)
    return n

"""Crop, resize and flip an RGB image into a caller-owned buffer.

Compiled because it is the per-image inner loop of both the writer
(downscaling to ``max_resolution``) and the loader's crop decoders: a NumPy
version allocates several temporaries per image and holds the GIL.

Memory touched: reads the ``h x w`` window at ``(y0, x0)`` of ``src``, writes
every pixel of ``out``, and uses one malloc'd float scratch of
``(w + out_w) * channels`` plus the filter tables, freed before returning.

Filters, per axis, for an input length ``n`` and an output length ``m``:
- ``n >= m`` (shrinking): area averaging. Output pixel ``i`` covers the input
  interval ``[i*n/m, (i+1)*n/m)``; each input pixel weighs its overlap with
  it. This is OpenCV's INTER_AREA, which FFCV uses.
- ``n < m`` (enlarging): linear interpolation between the two nearest input
  pixel centres (half-pixel centres, edges clamped).
"""

from libc.math cimport floor
from libc.stdint cimport uint8_t, uint16_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import numpy as np


cdef extern from "resize_kernels.h" nogil:
    void ff_axpy_u8(float* acc, const uint8_t* src, float w, Py_ssize_t n)
    void ff_hpass_u8(const float* row, const int* start, int used,
                     const float* weight, int taps, Py_ssize_t ow, Py_ssize_t c,
                     bint flip, float* out)
    void ff_row_to_u8(const float* src, uint8_t* out, Py_ssize_t n)
    void ff_axpy_f32(float* acc, const float* src, float w, Py_ssize_t n)
    void ff_u8_to_f32(const uint8_t* src, float* out, Py_ssize_t n)
    void ff_row_to_f16(const float* src, uint16_t* out, Py_ssize_t n, Py_ssize_t c,
                       const float* mul, const float* add)
    void ff_row_to_f32(const float* src, float* out, Py_ssize_t n, Py_ssize_t c,
                       const float* mul, const float* add)


cdef enum:
    KIND_U8 = 0
    KIND_F16 = 1
    KIND_F32 = 2


cdef struct Filter:
    int* start      # first input index of each output pixel
    int* count      # number of taps of each output pixel (all equal once padded)
    float* weight   # taps, `taps` per output pixel
    int taps        # row stride of `weight`
    int used        # taps every output pixel uses after padding


cdef int _make_filter(Filter* f, int n, int m) except -1 nogil:
    """Fill ``f`` with the taps that map ``n`` input pixels onto ``m``."""
    cdef double scale = <double>n / m, lo, hi, centre, frac, total
    cdef int i, j, j0, j1
    f.start = NULL
    f.count = NULL
    f.weight = NULL
    f.taps = <int>scale + 2 if scale >= 1.0 else 2
    f.start = <int*>malloc(m * sizeof(int))
    f.count = <int*>malloc(m * sizeof(int))
    f.weight = <float*>malloc(m * f.taps * sizeof(float))
    if f.start == NULL or f.count == NULL or f.weight == NULL:
        with gil:
            raise MemoryError()
    for i in range(m):
        if scale >= 1.0:
            lo = i * scale
            hi = lo + scale
            j0 = <int>floor(lo)
            j1 = <int>floor(hi - 1e-9)  # last input pixel that overlaps
            if j1 >= n:
                j1 = n - 1
            f.start[i] = j0
            f.count[i] = j1 - j0 + 1
            total = 0.0
            for j in range(j0, j1 + 1):
                # overlap of [j, j+1) with [lo, hi)
                f.weight[i * f.taps + j - j0] = <float>(min(j + 1.0, hi) - max(<double>j, lo))
                total += f.weight[i * f.taps + j - j0]
            for j in range(f.count[i]):
                f.weight[i * f.taps + j] = <float>(f.weight[i * f.taps + j] / total)
        else:
            centre = (i + 0.5) * scale - 0.5
            if centre < 0:
                centre = 0
            j0 = <int>floor(centre)
            frac = centre - j0
            if j0 >= n - 1:
                j0 = n - 1
                frac = 0
            f.start[i] = j0
            f.count[i] = 2 if frac > 0 else 1
            f.weight[i * f.taps] = <float>(1.0 - frac)
            f.weight[i * f.taps + 1] = <float>frac
    _pad_filter(f, n, m)
    return 0


cdef void _pad_filter(Filter* f, int n, int m) noexcept nogil:
    """Give every output pixel the same number of taps (zero weights added, the
    window shifted left at the right edge) so the inner loops can be unrolled."""
    cdef int i, k, used = 1, shift
    for i in range(m):
        if f.count[i] > used:
            used = f.count[i]
    if used > n:
        used = n
    for i in range(m):
        shift = f.start[i] + used - n
        if shift > 0:
            # move the taps right by `shift`, starting `shift` pixels earlier
            for k in range(used - 1, -1, -1):
                f.weight[i * f.taps + k] = f.weight[i * f.taps + k - shift] if k >= shift else 0
            f.start[i] -= shift
        else:
            for k in range(f.count[i], used):
                f.weight[i * f.taps + k] = 0
        f.count[i] = used
    f.used = used


cdef void _free_filter(Filter* f) noexcept nogil:
    free(f.start)
    free(f.count)
    free(f.weight)


def crop_resize_into(const uint8_t[:, :, ::1] src not None,
                     Py_ssize_t y0, Py_ssize_t x0, Py_ssize_t h, Py_ssize_t w,
                     out not None, bint flip=False, scale=None, bias=None):
    """Resize the ``h x w`` window of *src* at ``(y0, x0)`` into *out*; mirror it if *flip*.

    *out* is ``uint8``, or ``float16``/``float32``, where each channel ``c``
    becomes ``value * scale[c] + bias[c]`` (normalisation fused in).
    """
    cdef uint8_t[:, :, ::1] out_u8
    cdef uint16_t[:, :, ::1] out_f16
    cdef float[:, :, ::1] out_f32
    cdef float mul[4]
    cdef float add[4]
    cdef int kind
    cdef char* base
    cdef Py_ssize_t c = src.shape[2], k, oh, ow, row_bytes
    dtype = out.dtype.str
    if dtype == "|u1":
        kind, out_u8 = KIND_U8, out
        base, oh, ow, row_bytes = <char*>&out_u8[0, 0, 0], out_u8.shape[0], out_u8.shape[1], out_u8.strides[0]
        if out_u8.shape[2] != c or out_u8.strides[1] != c:
            raise ValueError(f"out must have rows of {c}-channel pixels, got {out.shape}")
        if scale is not None or bias is not None:
            raise ValueError("scale and bias need a float16 or float32 out")
    elif dtype == "<f2":
        kind, out_f16 = KIND_F16, out.view(np.uint16)
        base, oh, ow, row_bytes = <char*>&out_f16[0, 0, 0], out_f16.shape[0], out_f16.shape[1], out_f16.strides[0]
        if out_f16.shape[2] != c or out_f16.strides[1] != 2 * c:
            raise ValueError(f"out must have rows of {c}-channel pixels, got {out.shape}")
    elif dtype == "<f4":
        kind, out_f32 = KIND_F32, out
        base, oh, ow, row_bytes = <char*>&out_f32[0, 0, 0], out_f32.shape[0], out_f32.shape[1], out_f32.strides[0]
        if out_f32.shape[2] != c or out_f32.strides[1] != 4 * c:
            raise ValueError(f"out must have rows of {c}-channel pixels, got {out.shape}")
    else:
        raise TypeError(f"out must be uint8, float16 or float32, got {out.dtype}")
    if c > 4:
        raise ValueError(f"at most 4 channels, got {c}")
    for k in range(c):
        mul[k] = 1.0 if scale is None else float(scale[k])
        add[k] = 0.0 if bias is None else float(bias[k])
    if h <= 0 or w <= 0 or oh <= 0 or ow <= 0:
        raise ValueError(f"empty crop or output: crop {h}x{w}, out {oh}x{ow}")
    if y0 < 0 or x0 < 0 or y0 + h > src.shape[0] or x0 + w > src.shape[1]:
        raise ValueError(
            f"crop {h}x{w} at ({y0}, {x0}) exceeds the {src.shape[0]}x{src.shape[1]} image")
    with nogil:
        _crop_resize(src, y0, x0, h, w, base, row_bytes, oh, ow, kind, flip, mul, add)
    return oh * ow


cdef inline void _emit(const float* row, char* out, Py_ssize_t n, Py_ssize_t c, int kind,
                       const float* mul, const float* add) noexcept nogil:
    if kind == KIND_U8:
        ff_row_to_u8(row, <uint8_t*>out, n)
    elif kind == KIND_F16:
        ff_row_to_f16(row, <uint16_t*>out, n, c, mul, add)
    else:
        ff_row_to_f32(row, <float*>out, n, c, mul, add)


cdef int _crop_resize(const uint8_t[:, :, ::1] src, Py_ssize_t y0, Py_ssize_t x0,
                      Py_ssize_t h, Py_ssize_t w, char* out, Py_ssize_t row_bytes,
                      Py_ssize_t oh, Py_ssize_t ow, int kind, bint flip,
                      const float* mul, const float* add) except -1 nogil:
    # The horizontal pass (a gather per output pixel) is the expensive one, so
    # it runs on whichever is fewer: the h input rows (enlarging: horizontal
    # first, then combine filtered rows) or the oh output rows (shrinking:
    # vertical first, along whole rows, then horizontal).
    cdef Py_ssize_t c = src.shape[2]
    cdef Py_ssize_t y, oy, k, in_stride = w * c, out_stride = ow * c
    cdef Filter fx, fy
    cdef float* tmp = NULL
    cdef float* outrow
    fx.start = NULL; fx.count = NULL; fx.weight = NULL
    fy.start = NULL; fy.count = NULL; fy.weight = NULL
    try:
        _make_filter(&fx, <int>w, <int>ow)
        _make_filter(&fy, <int>h, <int>oh)
        # + 4: slack for the 4-wide loads and stores of the horizontal pass
        if h < oh:
            tmp = <float*>malloc((in_stride + (h + 1) * out_stride + 4) * sizeof(float))
        else:
            tmp = <float*>malloc((in_stride + out_stride + 4) * sizeof(float))
        if tmp == NULL:
            with gil:
                raise MemoryError()
        if h < oh:
            # horizontal: each input row once -> h filtered rows of ow pixels
            for y in range(h):
                ff_u8_to_f32(&src[y0 + y, x0, 0], tmp, in_stride)
                ff_hpass_u8(tmp, fx.start, fx.used, fx.weight, fx.taps, ow, c, flip,
                            tmp + in_stride + (y + 1) * out_stride)
            outrow = tmp + in_stride  # row 0 of the block: the accumulator
            for oy in range(oh):
                memset(outrow, 0, out_stride * sizeof(float))
                for k in range(fy.count[oy]):
                    ff_axpy_f32(outrow, tmp + in_stride + (fy.start[oy] + k + 1) * out_stride,
                                fy.weight[oy * fy.taps + k], out_stride)
                _emit(outrow, out + oy * row_bytes, out_stride, c, kind, mul, add)
        else:
            outrow = tmp + in_stride  # one output row, as floats, before conversion
            for oy in range(oh):
                # vertical: the window's rows -> one float row of w pixels
                memset(tmp, 0, in_stride * sizeof(float))
                for k in range(fy.count[oy]):
                    ff_axpy_u8(tmp, &src[y0 + fy.start[oy] + k, x0, 0],
                               fy.weight[oy * fy.taps + k], in_stride)
                # horizontal: w float pixels -> ow output pixels
                ff_hpass_u8(tmp, fx.start, fx.used, fx.weight, fx.taps, ow, c, flip, outrow)
                _emit(outrow, out + oy * row_bytes, out_stride, c, kind, mul, add)
    finally:
        free(tmp)
        _free_filter(&fx)
        _free_filter(&fy)
    return 0


cdef extern from "resize_kernels.h" nogil:
    uint16_t ff_f32_to_f16_soft(float value)


def f16_soft_into(const float[::1] values not None, uint16_t[::1] out not None):
    """The portable float→half conversion (used on CPUs without F16C), for its tests."""
    cdef Py_ssize_t i
    if out.shape[0] < values.shape[0]:
        raise ValueError("out is too short")
    with nogil:
        for i in range(values.shape[0]):
            out[i] = ff_f32_to_f16_soft(values[i])
    return values.shape[0]

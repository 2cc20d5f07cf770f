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
from libc.stdint cimport uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset


cdef extern from "resize_kernels.h" nogil:
    void ff_axpy_u8(float* acc, const uint8_t* src, float w, Py_ssize_t n)
    void ff_hpass_u8(const float* row, const int* start, int used,
                     const float* weight, int taps, Py_ssize_t ow, Py_ssize_t c,
                     bint flip, float* out)
    void ff_row_to_u8(const float* src, uint8_t* out, Py_ssize_t n)


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
                     uint8_t[:, :, ::1] out not None, bint flip=False):
    """Resize the ``h x w`` window of *src* at ``(y0, x0)`` into *out*; mirror it if *flip*."""
    cdef Py_ssize_t c = src.shape[2], oh = out.shape[0], ow = out.shape[1]
    if out.shape[2] != c or c > 4:
        raise ValueError(f"out has {out.shape[2]} channels, src has {c} (at most 4)")
    if out.strides[1] != c:
        raise ValueError("out's rows must be contiguous")
    if h <= 0 or w <= 0 or oh <= 0 or ow <= 0:
        raise ValueError(f"empty crop or output: crop {h}x{w}, out {oh}x{ow}")
    if y0 < 0 or x0 < 0 or y0 + h > src.shape[0] or x0 + w > src.shape[1]:
        raise ValueError(
            f"crop {h}x{w} at ({y0}, {x0}) exceeds the {src.shape[0]}x{src.shape[1]} image")
    with nogil:
        _crop_resize(src, y0, x0, h, w, out, flip)
    return oh * ow


cdef int _crop_resize(const uint8_t[:, :, ::1] src, Py_ssize_t y0, Py_ssize_t x0,
                      Py_ssize_t h, Py_ssize_t w, uint8_t[:, :, ::1] out,
                      bint flip) except -1 nogil:
    # Vertical pass first: it runs along whole rows (vectorised by the
    # compiler) and, when shrinking, leaves fewer rows for the horizontal pass.
    cdef Py_ssize_t c = src.shape[2], oh = out.shape[0], ow = out.shape[1]
    cdef Py_ssize_t oy, k, in_stride = w * c
    cdef Filter fx, fy
    cdef float* tmp = NULL
    cdef float* outrow
    fx.start = NULL; fx.count = NULL; fx.weight = NULL
    fy.start = NULL; fy.count = NULL; fy.weight = NULL
    try:
        _make_filter(&fx, <int>w, <int>ow)
        _make_filter(&fy, <int>h, <int>oh)
        tmp = <float*>malloc((in_stride + ow * c) * sizeof(float))
        if tmp == NULL:
            with gil:
                raise MemoryError()
        outrow = tmp + in_stride  # one output row, as floats, before rounding
        for oy in range(oh):
            # vertical: the window's rows -> one float row of w pixels
            memset(tmp, 0, in_stride * sizeof(float))
            for k in range(fy.count[oy]):
                ff_axpy_u8(tmp, &src[y0 + fy.start[oy] + k, x0, 0],
                           fy.weight[oy * fy.taps + k], in_stride)
            # horizontal: w float pixels -> ow output pixels
            ff_hpass_u8(tmp, fx.start, fx.used, fx.weight, fx.taps, ow, c, flip, outrow)
            ff_row_to_u8(outrow, &out[oy, 0, 0], ow * c)
    finally:
        free(tmp)
        _free_filter(&fx)
        _free_filter(&fy)
    return 0

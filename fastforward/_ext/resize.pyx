"""Crop, resize and flip an image into a caller-owned buffer.

Images are H×W×C, C from 1 to 16, of uint8 or uint16 values (RGB photographs,
4-band satellite tiles, 16-bit medical slices).

Compiled because it is the per-image inner loop of both the writer
(downscaling to ``max_resolution``) and the loader's crop decoders: a NumPy
version allocates several temporaries per image and holds the GIL.

Memory touched: reads the ``h x w`` window at ``(y0, x0)`` of ``src`` (and,
enlarging, up to 16 bytes after a row of it that is not the source's last),
writes every pixel of ``out``, and uses the caller's ``Workspace``: a few float
rows plus the filter tables.

Filters, per axis, for an input length ``n`` and an output length ``m``:
- ``n >= m`` (shrinking): area averaging. Output pixel ``i`` covers the input
  interval ``[i*n/m, (i+1)*n/m)``; each input pixel weighs its overlap with
  it. This is OpenCV's INTER_AREA, which FFCV uses.
- ``n < m`` (enlarging): linear interpolation between the two nearest input
  pixel centres (half-pixel centres, edges clamped).

Arithmetic: float32, with one exception. When the window is enlarged
vertically (the crop decoders' usual case), the horizontal pass runs first; if
its filter has at most 4 taps (enlarging, or shrinking under 3x) it runs in
integers: its taps are rounded to whole numbers summing to 2^14, and each
filtered value is an exact integer sum. That pass reads the uint8 rows as they
are, two output pixels' taps per AVX2 multiply-add. Against exact arithmetic,
0.004-0.02% of output pixels of photographs are one level off (0.002-0.013%
with float taps). uint16 images always take the float path (their integer sums
would not fit a float exactly). Every output is rounded half up and clamped to
0..255 (0..65535 for uint16 images) before any float conversion, and every CPU
gives the same pixels (``set_simd`` tests that).
"""

cimport cython
from libc.math cimport floor
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

import numpy as np

from fastforward.errors import DecodeError


cdef extern from "resize_kernels.h" nogil:
    void ff_vsum_u8(const uint8_t** rows, const float* w, int used, Py_ssize_t n, float* out)
    void ff_vsum_u16(const uint16_t** rows, const float* w, int used, Py_ssize_t n, float* out)
    void ff_vsum_f32(const float** rows, const float* w, int used, Py_ssize_t n, float* out)
    bint ff_has_avx2()
    void ff_widen_taps(const float* weight, int taps, int used, Py_ssize_t ow, float* wide)
    void ff_hpass_any(const float* row, const int* start, int used, const float* weight,
                      const float* wide, int taps, Py_ssize_t ow, Py_ssize_t c, float* out)
    bint ff_vsum2_emit(const float* a, const float* b, float w0, float w1, Py_ssize_t n,
                       Py_ssize_t c, int kind, const float* mul, const float* add,
                       int32_t hi, void* out)
    void ff_hpass(const float* row, const int* start, int used, const float* weight, int taps,
                  Py_ssize_t ow, Py_ssize_t c, float* out)
    int FF_QONE
    int FF_QMAX_TAPS
    void ff_u8_to_f32_any(const uint8_t* src, float* out, Py_ssize_t n)
    void ff_u16_to_f32(const uint16_t* src, float* out, Py_ssize_t n)
    void ff_prefetch(const void* p, Py_ssize_t n)
    void ff_widen_qtaps(const int16_t* q, int taps, int used, Py_ssize_t ow, int16_t* qwide)
    void ff_hpass_q_any(const uint8_t* row, const int* start, int used, const int16_t* q,
                        const int16_t* qwide, int taps, Py_ssize_t ow, Py_ssize_t c, float* out)
    void ff_row_to_u8(const float* src, uint8_t* out, Py_ssize_t n)
    void ff_row_to_u16(const float* src, uint16_t* out, Py_ssize_t n)
    void ff_row_to_f16(const float* src, uint16_t* out, Py_ssize_t n, Py_ssize_t c,
                       const float* mul, const float* add, int32_t hi)
    void ff_row_to_f32(const float* src, float* out, Py_ssize_t n, Py_ssize_t c,
                       const float* mul, const float* add, int32_t hi)


cdef enum:
    MAX_TAPS_ROWS = 64  # row pointers on the stack; more taps go through a heap table


cdef struct Filter:
    int* start      # first input index of each output pixel
    int* count      # number of taps of each output pixel (all equal once padded)
    float* weight   # taps, `taps` per output pixel
    int16_t* q      # the same taps as whole numbers summing to FF_QONE (see _quantize)
    int taps        # row stride of `weight` and `q`
    int used        # taps every output pixel uses after padding


cdef inline int _taps(int n, int m) noexcept nogil:
    """The table's taps per output pixel: enough for the interval of any output
    pixel, also where the spans are exact (``_resize_span_into``: an input span
    of at most ``n``, an output span of at least ``m - 1/2``), and never more
    than the ``n`` input pixels (+ 2)."""
    cdef int taps
    if n < m:
        return 2
    taps = <int>(<double>n / (m - 0.5)) + 2
    return taps if taps < n + 2 else n + 2


cdef inline size_t _filter_bytes(int n, int m) noexcept nogil:
    return <size_t>m * (2 * sizeof(int) + _taps(n, m) * (sizeof(float) + sizeof(int16_t)))


@cython.cdivision(True)  # operands >= 0 (and divisors > 0): C's / and % agree
cdef char* _make_filter(Filter* f, int n, int m, char* memory, bint mirror, double span,
                        double out_span) noexcept nogil:
    """Fill ``f`` with the taps that map ``n`` input pixels onto ``m``, in the
    ``_filter_bytes(n, m)`` bytes at *memory*; return the first byte after them.
    With *mirror*, output pixel ``i`` gets the taps of ``m - 1 - i``.

    The input covers *span* of its ``n`` pixels and the output *out_span* of its
    ``m`` (``n`` and ``m`` but where a last pixel stands for part of one, as in a
    JPEG's chroma plane of an odd size): the scale is ``span / out_span``, and an
    output pixel's interval ends at *span* at most."""
    cdef double scale = span / out_span, lo, hi, centre, frac, total
    cdef int i, j, j0, j1, k, src
    f.taps = _taps(n, m)
    f.start = <int*>memory
    f.count = f.start + m
    f.weight = <float*>(f.count + m)
    f.q = <int16_t*>(f.weight + <size_t>m * f.taps)
    for i in range(m):
        if scale >= 1.0:
            lo = i * scale
            hi = lo + scale
            if hi > span:  # the last pixel of a partial span (with span == n: no change)
                hi = span
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
    if mirror:  # swap pixel i's taps with pixel m-1-i's
        for i in range(m // 2):
            src = m - 1 - i
            f.start[i], f.start[src] = f.start[src], f.start[i]
            for k in range(f.used):
                f.weight[i * f.taps + k], f.weight[src * f.taps + k] = (
                    f.weight[src * f.taps + k], f.weight[i * f.taps + k])
    _quantize(f, m)
    return memory + _filter_bytes(n, m)


@cython.cdivision(True)  # operands >= 0 (and divisors > 0): C's / and % agree
cdef void _quantize(Filter* f, int m) noexcept nogil:
    """Fill ``f.q``: each weight times FF_QONE, rounded, the largest tap of each
    output pixel taking what rounding lost, so every pixel's taps sum to
    FF_QONE exactly (a flat image stays flat). Used only for filters of at
    most FF_QMAX_TAPS taps, where none can go negative (see there)."""
    cdef int i, k, total, largest
    cdef int16_t* q
    for i in range(m):
        q = f.q + <size_t>i * f.taps
        total, largest = 0, 0
        for k in range(f.taps):
            q[k] = <int16_t>floor(f.weight[i * f.taps + k] * FF_QONE + 0.5) if k < f.used else 0
            total += q[k]
            if q[k] > q[largest]:
                largest = k
        q[largest] += FF_QONE - total


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


# never pickled (TypeError): Cython's generated pickling would read ``memory`` as a
# NUL-terminated string, which crashed on a fresh Workspace (NULL)
@cython.auto_pickle(False)
cdef class Workspace:
    """Scratch memory for ``crop_resize_into``, kept between calls.

    Give each thread its own (it is not locked) and pass it to every call: a
    fresh allocation per image costs page faults (the kernel zeroes every page
    it hands out), which measured more than the resize itself.
    """

    def __dealloc__(self):
        free(self.memory)

    @property
    def nbytes(self) -> int:
        """Bytes held now (grown to the largest request so far)."""
        return self.capacity

    cdef char* reserve(self, size_t nbytes) except NULL:
        cdef char* grown
        if nbytes > self.capacity:
            grown = <char*>realloc(self.memory, nbytes)
            if grown == NULL:
                raise MemoryError(f"crop_resize_into: no memory for {nbytes} bytes of scratch")
            self.memory, self.capacity = grown, nbytes
        return self.memory


cdef str _oversized(int64_t height, int64_t width):
    """Why a stored ``height x width`` image is refused as damage (a side past
    MAX_SIDE: sizes computed from it could wrap round, or be cut to int), or None."""
    if height > MAX_SIDE or width > MAX_SIDE:
        return f"stored {height}×{width}: a side past {MAX_SIDE} pixels"
    return None


cdef int _progress(Progress* p, progress, samples, Py_ssize_t n) except -1:
    """Point *p* at ``progress[1]``, the cell where a range kernel notes the dataset
    index (from *samples*, one per sample of the range) of the sample it starts, and
    -1 once past them (``BatchContext.progress``); nowhere when *progress* is None.
    The caller keeps both arrays alive while the kernel runs."""
    cdef int64_t[::1] cells
    cdef const int64_t[::1] ids
    p.cell, p.samples = NULL, NULL
    if progress is None:
        return 0
    if samples is None:
        raise ValueError("progress without samples: a range kernel notes their indices")
    cells = progress
    ids = samples
    if cells.shape[0] < 2:
        raise ValueError(f"progress holds {cells.shape[0]} cells, a range kernel writes the second")
    if ids.shape[0] != n:
        raise ValueError(f"samples holds {ids.shape[0]} indices, the range has {n} samples")
    p.cell = &cells[1]
    p.samples = &ids[0] if n else NULL
    return 0


cdef inline size_t _align(size_t n) noexcept nogil:
    return (n + 63) & ~(<size_t>63)


cdef inline size_t _wide_bytes(Py_ssize_t w, Py_ssize_t ow) noexcept nogil:
    """The float horizontal pass's SIMD table (ff_widen_taps), aligned."""
    return _align((ow + 1) // 2 * _taps(<int>w, <int>ow) * 8 * sizeof(float))


cdef inline size_t _qwide_bytes(Py_ssize_t w, Py_ssize_t ow) noexcept nogil:
    """The integer horizontal pass's SIMD table (ff_widen_qtaps, taps in pairs), aligned."""
    return _align((ow + 1) // 2 * ((_taps(<int>w, <int>ow) + 1) // 2) * 16 * sizeof(int16_t))


cdef size_t _scratch_bytes(Py_ssize_t h, Py_ssize_t w, Py_ssize_t oh, Py_ssize_t ow,
                           Py_ssize_t c) noexcept nogil:
    """Bytes `_crop_resize` needs: both filters, then float rows (see there)."""
    # an input row as floats, an output row, and when enlarging a ring of 2
    # filtered rows
    cdef size_t rows = w * c + ow * c + (2 * (ow * c + 4) if h < oh else 0)
    # both SIMD tables, and a copy of a (uint8) source row with 16 bytes of slack
    cdef size_t wide = _wide_bytes(w, ow) + _qwide_bytes(w, ow) + _align(w * c + 16)
    # + 4 floats: slack for the 4-wide loads and stores of the horizontal pass
    return (_align(_filter_bytes(<int>w, <int>ow)) + _align(_filter_bytes(<int>h, <int>oh))
            + wide + (rows + 4) * sizeof(float) + 64)


cdef int _target(Target* t, out, Py_ssize_t c, scale, bias, int source_item=1) except -1:
    """Check *out* (``(oh, ow, c)``, or ``(n, oh, ow, c)`` for a range of images)
    and describe it in *t*, for images of *source_item*-byte values (1: uint8,
    2: uint16): integer outputs have the images' type."""
    cdef uint8_t[:, :, :, ::1] raw
    cdef Py_ssize_t k, item
    dtype = out.dtype.str
    source = "uint8" if source_item == 1 else "uint16"
    if source_item != 1 and source_item != 2:
        raise ValueError(f"images hold 1- or 2-byte values, not {source_item}")
    if dtype == "|u1" and source_item == 1:
        t.kind = KIND_U8
    elif dtype == "<u2" and source_item == 2:
        t.kind = KIND_U16
    elif dtype == "<f2":
        t.kind = KIND_F16
    elif dtype == "<f4":
        t.kind = KIND_F32
    else:
        raise TypeError(f"out must be {source}, float16 or float32 for {source} images, got "
                        f"{out.dtype}")
    if (t.kind == KIND_U8 or t.kind == KIND_U16) and (scale is not None or bias is not None):
        raise ValueError("scale and bias need a float16 or float32 out")
    if not 1 <= c <= MAX_CHANNELS:
        raise ValueError(f"images have 1 to {MAX_CHANNELS} channels, got {c}")
    t.source_item = source_item
    item = out.dtype.itemsize
    batch = out if out.ndim == 4 else out[None]
    if batch.ndim != 4 or batch.shape[3] != c or batch.strides[2] != c * item or (
            batch.strides[3] != item and c > 1):
        raise ValueError(f"out must have rows of {c}-channel pixels, got {out.shape}")
    raw = batch.view(np.uint8)
    t.count, t.oh, t.ow, t.c = raw.shape[0], raw.shape[1], raw.shape[2], c
    t.image_bytes, t.row_bytes = raw.strides[0], raw.strides[1]
    t.base = <char*>&raw[0, 0, 0, 0] if raw.size else NULL
    if t.oh <= 0 or t.ow <= 0:
        raise ValueError(f"empty output: {t.oh}x{t.ow}")
    for name, values in (("scale", scale), ("bias", bias)):
        if values is not None and len(values) != c:
            raise ValueError(f"{name} has {len(values)} values, the images {c} channels")
    for k in range(c):
        t.mul[k] = 1.0 if scale is None else float(scale[k])
        t.add[k] = 0.0 if bias is None else float(bias[k])
    return 0


ctypedef fused pixel_t:
    uint8_t
    uint16_t


cdef int _resize_one(const pixel_t[:, :, ::1] src, Py_ssize_t y0, Py_ssize_t x0, Py_ssize_t h,
                     Py_ssize_t w, Target* t, Py_ssize_t k, bint flip,
                     Workspace workspace) except -1:
    """Resize the window of *src* into image *k* of *t* (checks the window first)."""
    cdef char* scratch
    if src.shape[2] != t.c:
        raise ValueError(f"out must have rows of {src.shape[2]}-channel pixels, "
                         f"got {t.c} channels")
    if h <= 0 or w <= 0:
        raise ValueError(f"empty crop or output: crop {h}x{w}, out {t.oh}x{t.ow}")
    if y0 < 0 or x0 < 0 or y0 + h > src.shape[0] or x0 + w > src.shape[1]:
        raise ValueError(
            f"crop {h}x{w} at ({y0}, {x0}) exceeds the {src.shape[0]}x{src.shape[1]} image")
    scratch = workspace.reserve(_scratch_bytes(h, w, t.oh, t.ow, t.c))
    if <int>sizeof(pixel_t) != t.source_item:
        raise TypeError(f"the target was made for {t.source_item}-byte values, the image has "
                        f"{sizeof(pixel_t)}-byte ones")
    with nogil:
        _resize_into(<const uint8_t*>&src[0, 0, 0], src.shape[0], src.shape[1], src.strides[0],
                     y0, x0, h, w, t, k, flip, scratch)
    return 0


cdef int _resize_span_into(const uint8_t* src, Py_ssize_t src_h, Py_ssize_t src_w,
                           Py_ssize_t src_stride, const double* spans, const Target* t,
                           char* scratch) except -1 nogil:
    """Resize the whole ``src_h x src_w`` image at *src* (rows *src_stride* bytes
    apart) into image 0 of *t*, where the image covers ``spans[0] x spans[1]`` of
    its pixels and the output ``spans[2] x spans[3]`` of its ``t.oh x t.ow`` (see
    ``_make_filter``): the writer's chroma planes. Otherwise as ``_resize_into``
    (not mirrored)."""
    return _crop_resize(src, src_h, src_w, src_stride, t.c, t.source_item, 0, 0, src_h, src_w,
                        t.base, t.row_bytes, t.oh, t.ow, t.kind, False, t.mul, t.add, scratch,
                        spans)


cdef int _resize_into(const uint8_t* src, Py_ssize_t src_h, Py_ssize_t src_w,
                      Py_ssize_t src_stride, Py_ssize_t y0, Py_ssize_t x0, Py_ssize_t h,
                      Py_ssize_t w, const Target* t, Py_ssize_t k, bint flip,
                      char* scratch) except -1 nogil:
    """Resize the ``h x w`` window at ``(y0, x0)`` of the ``src_h x src_w`` image at
    *src* (``t.c`` channels of ``t.source_item``-byte values, rows *src_stride*
    bytes apart) into image *k* of *t*.

    The caller has checked the window, and reserved ``_scratch_bytes`` of
    *scratch*. Reads up to 16 bytes past the end of a row of the window that
    is not the image's last (SIMD loads): a row buffer needs that slack.
    """
    return _crop_resize(src, src_h, src_w, src_stride, t.c, t.source_item, y0, x0, h, w,
                        t.base + k * t.image_bytes, t.row_bytes, t.oh, t.ow, t.kind, flip,
                        t.mul, t.add, scratch)


def crop_resize_into(const pixel_t[:, :, ::1] src not None,
                     Py_ssize_t y0, Py_ssize_t x0, Py_ssize_t h, Py_ssize_t w,
                     out not None, bint flip=False, scale=None, bias=None,
                     Workspace workspace=None):
    """Resize the ``h x w`` window of *src* at ``(y0, x0)`` into *out*; mirror it if *flip*.

    *src* is ``H x W x C`` (C from 1 to 16), uint8 or uint16. *out* has its
    type, or is ``float16``/``float32``, where each channel ``c`` becomes
    ``value * scale[c] + bias[c]`` (normalisation fused in). Pass a per-thread
    *workspace* when calling in a loop.
    """
    cdef Target t
    if out.ndim != 3:
        raise ValueError(f"out must have rows of {src.shape[2]}-channel pixels, got {out.shape}")
    _target(&t, out, src.shape[2], scale, bias, sizeof(pixel_t))
    _resize_one(src, y0, x0, h, w, &t, 0, flip, workspace or Workspace())
    return t.oh * t.ow


def resize_span_into(const uint8_t[:, :, ::1] src not None, double span_h, double span_w,
                     out not None, Workspace workspace=None):
    """Resize the whole of *src* (``H x W x C`` uint8) into *out* (uint8, C
    channels), where its pixels stand for ``span_h x span_w`` of the image:
    the last row and column may stand for part of one (a JPEG decoded at the
    DCT scale m/8 is ``ceil(H * m / 8)`` pixels high for ``H * m / 8``).
    Otherwise as ``crop_resize_into`` (area averaging, or linear enlarging)."""
    cdef Target t
    cdef double spans[4]
    cdef char* scratch
    if out.ndim != 3:
        raise ValueError(f"out must have rows of {src.shape[2]}-channel pixels, got {out.shape}")
    _target(&t, out, src.shape[2], None, None, 1)
    if t.kind != KIND_U8:
        raise TypeError(f"out must be uint8, got {out.dtype}")
    if not (src.shape[0] - 1 < span_h <= src.shape[0]
            and src.shape[1] - 1 < span_w <= src.shape[1]):
        raise ValueError(f"the {src.shape[0]}x{src.shape[1]} pixels stand for more than all but "
                         f"one of them, at most all: not {span_h}x{span_w}")
    spans[0], spans[1], spans[2], spans[3] = span_h, span_w, t.oh, t.ow
    if workspace is None:
        workspace = Workspace()
    scratch = workspace.reserve(_scratch_bytes(src.shape[0], src.shape[1], t.oh, t.ow, t.c))
    with nogil:
        _resize_span_into(&src[0, 0, 0], src.shape[0], src.shape[1], src.strides[0], spans, &t,
                          scratch)
    return t.oh * t.ow


def decode_crop_resize_range(decode_jpeg, bint fastdct, buffer, source,
                             const int64_t[::1] starts not None,
                             const int64_t[::1] sizes not None, const uint8_t[::1] raw not None,
                             const int64_t[::1] heights not None,
                             const int64_t[::1] widths not None,
                             const int64_t[:, ::1] crops not None,
                             const uint8_t[::1] flips not None, out not None, scale, bias,
                             Workspace workspace not None, fail not None, progress=None,
                             samples=None):
    """The crop decoders' loop over the samples of a range, compiled.

    For each sample ``k``: its payload is ``source[starts[k] : starts[k] + sizes[k]]``,
    raw pixels when ``raw[k]`` or else a JPEG, decoded into *buffer* by
    simplejpeg's ``decode_jpeg`` (which releases the GIL while it decodes; its
    ValueError becomes a DecodeError). The image must be ``heights[k] x widths[k]``; window ``crops[k]``
    (``i, j, h, w``) of it is resized into ``out[k]``, mirrored if ``flips[k]``.
    An exception at sample ``k`` is re-raised as ``fail(exception, k)``.
    *progress* and *samples* as in ``jpeg.decode_crop_resize_range``.
    """
    cdef Target t
    cdef Py_ssize_t n = starts.shape[0], k
    cdef int64_t need
    cdef const uint8_t[:, :, ::1] image
    cdef Progress watch
    if not (sizes.shape[0] == raw.shape[0] == heights.shape[0] == widths.shape[0] ==
            crops.shape[0] == flips.shape[0] == n) or crops.shape[1] != 4:
        raise ValueError("decode_crop_resize_range: per-sample arrays of different lengths")
    _progress(&watch, progress, samples, n)
    _target(&t, out, 3, scale, bias)
    if t.count < n:
        raise ValueError(f"out holds {t.count} images, the range has {n}")
    payloads = memoryview(source).cast("B")
    for k in range(n):
        _at(&watch, k)
        try:
            oversized = _oversized(heights[k], widths[k])  # need would wrap
            if oversized is not None:
                raise DecodeError(oversized)
            if raw[k]:
                need = heights[k] * widths[k] * 3
                if sizes[k] < need:
                    raise DecodeError(f"raw image payload of {sizes[k]} bytes is short of "
                                      f"{heights[k]}×{widths[k]}×3")
                pixels = np.frombuffer(payloads, np.uint8, need, starts[k])
                image = pixels.reshape(heights[k], widths[k], 3)
            else:
                try:
                    pixels = decode_jpeg(payloads[starts[k] : starts[k] + sizes[k]],
                                         colorspace="RGB", fastdct=fastdct, buffer=buffer)
                except ValueError as exc:
                    raise DecodeError(f"corrupt JPEG payload: {exc}") from None
                image = pixels
                if image.shape[0] != heights[k] or image.shape[1] != widths[k]:
                    raise DecodeError(f"JPEG is {image.shape[0]}×{image.shape[1]}, the "
                                      f"metadata says {heights[k]}×{widths[k]}")
            _resize_one(image, crops[k, 0], crops[k, 1], crops[k, 2], crops[k, 3], &t, k,
                        flips[k], workspace)
        except Exception as exc:
            raise fail(exc, k) from None
    _done(&watch)
    return n


cdef inline void _emit(const float* row, char* out, Py_ssize_t n, Py_ssize_t c, int kind,
                       const float* mul, const float* add, int32_t hi) noexcept nogil:
    if kind == KIND_U8:
        ff_row_to_u8(row, <uint8_t*>out, n)
    elif kind == KIND_F16:
        ff_row_to_f16(row, <uint16_t*>out, n, c, mul, add, hi)
    elif kind == KIND_F32:
        ff_row_to_f32(row, <float*>out, n, c, mul, add, hi)
    else:
        ff_row_to_u16(row, <uint16_t*>out, n)


@cython.cdivision(True)  # operands >= 0 (and divisors > 0): C's / and % agree
cdef int _crop_resize(const uint8_t* src, Py_ssize_t src_h, Py_ssize_t src_w,
                      Py_ssize_t src_stride, Py_ssize_t c, int item, Py_ssize_t y0, Py_ssize_t x0,
                      Py_ssize_t h, Py_ssize_t w, char* out, Py_ssize_t row_bytes,
                      Py_ssize_t oh, Py_ssize_t ow, int kind, bint flip,
                      const float* mul, const float* add, char* scratch,
                      const double* spans=NULL) except -1 nogil:
    # The horizontal pass (a gather per output pixel) is the expensive one, so
    # it runs on whichever is fewer: the h input rows (enlarging: horizontal
    # first, then combine filtered rows) or the oh output rows (shrinking:
    # vertical first, along whole rows, then horizontal). A flip is a mirrored
    # horizontal filter: the same work. *src* holds uint8 values (item 1) or
    # uint16 ones (item 2); *src_stride* is in bytes.
    cdef Py_ssize_t y, oy, k, in_stride = w * c, out_stride = ow * c
    # the ring's rows: 4 floats apart, for the 4-wide stores past a row's end
    cdef Py_ssize_t ring_stride = out_stride + 4
    cdef Filter fx, fy
    cdef const uint8_t* rows_u8[MAX_TAPS_ROWS]
    cdef const float* rows_f32[MAX_TAPS_ROWS]
    cdef const uint8_t** rows_u8_p = rows_u8
    cdef const uint8_t* window = src + y0 * src_stride + x0 * c * item
    cdef int32_t hi = 255 if item == 1 else 65535
    cdef float* tmp
    cdef float* outrow
    cdef float* hrows
    cdef float* wide
    cdef int16_t* qwide = NULL
    cdef uint8_t* rowcopy
    cdef const uint8_t* row
    cdef bint copy_every, integer
    cdef char* memory = scratch
    # *spans*: how much of the window and of the output their pixels cover (see
    # _make_filter); NULL: all of them
    memory = _make_filter(&fx, <int>w, <int>ow, memory, flip, spans[1] if spans else w,
                          spans[3] if spans else ow)
    memory = scratch + _align(memory - scratch)
    memory = _make_filter(&fy, <int>h, <int>oh, memory, False, spans[0] if spans else h,
                          spans[2] if spans else oh)
    memory = scratch + _align(memory - scratch)
    # the horizontal pass in integers (uint8 only: 16-bit sums pass a float's 2^24)
    integer = h < oh and fx.used <= FF_QMAX_TAPS and item == 1
    wide = NULL  # the SIMD tables of the horizontal pass, float or integer
    if c == 3 and ff_has_avx2():
        if integer:
            qwide = <int16_t*>(memory + _wide_bytes(w, ow))
            ff_widen_qtaps(fx.q, fx.taps, fx.used, ow, qwide)
        else:
            wide = <float*>memory
            ff_widen_taps(fx.weight, fx.taps, fx.used, ow, wide)
    memory += _wide_bytes(w, ow) + _qwide_bytes(w, ow)
    rowcopy = <uint8_t*>memory
    memory += _align(w * c + 16)
    tmp = <float*>memory
    if fy.used > MAX_TAPS_ROWS:  # shrinking more than 62×: a row table of its own
        rows_u8_p = <const uint8_t**>malloc(fy.used * sizeof(uint8_t*))
        if rows_u8_p == NULL:
            with gil:
                raise MemoryError()
    try:
        if h < oh:
            # Each output row combines two consecutive input rows (fy.used <= 2
            # when enlarging), and they only move down: the input rows are
            # filtered as they are first needed, into a ring of fy.used rows
            # that stays in the L1 cache. Each row is filtered once.
            outrow = tmp + in_stride
            hrows = outrow + out_stride
            # The SIMD form reads up to 16 bytes past a row's last pixel. In a
            # C-contiguous source, rows with a whole row after them have those
            # bytes; the last row (or every row, if rows are that short) is
            # copied first.
            copy_every = src_w * c < 16
            memset(rowcopy + in_stride, 0, 16)
            if integer:
                for k in range(oh * fy.taps):  # the vertical weights undo the FF_QONE
                    fy.weight[k] /= FF_QONE
            ff_prefetch(window, in_stride * item)
            if h > 1:
                ff_prefetch(window + src_stride, in_stride * item)
            y = 0  # the input rows above y are filtered
            for oy in range(oh):
                while y < fy.start[oy] + fy.used:
                    row = window + y * src_stride
                    if y + 2 < h:  # reading a row straight from the L2 cache is slow
                        ff_prefetch(row + 2 * src_stride, in_stride * item)
                    if integer:  # each value a sum of FF_QONE-weighted pixels
                        if qwide != NULL and (copy_every or y0 + y == src_h - 1):
                            memcpy(rowcopy, row, in_stride)
                            row = rowcopy
                        ff_hpass_q_any(row, fx.start, fx.used, fx.q, qwide, fx.taps, ow, c,
                                       hrows + (y % fy.used) * ring_stride)
                    else:  # float: the row as floats, then the taps
                        if item == 1:
                            ff_u8_to_f32_any(row, tmp, in_stride)
                        else:
                            ff_u16_to_f32(<const uint16_t*>row, tmp, in_stride)
                        ff_hpass_any(tmp, fx.start, fx.used, fx.weight, wide, fx.taps, ow, c,
                                     hrows + (y % fy.used) * ring_stride)
                    y += 1
                # vertical: combine the filtered rows
                for k in range(fy.used):
                    rows_f32[k] = hrows + ((fy.start[oy] + k) % fy.used) * ring_stride
                if fy.used == 2 and ff_vsum2_emit(
                        rows_f32[0], rows_f32[1], fy.weight[oy * fy.taps],
                        fy.weight[oy * fy.taps + 1], out_stride, c, kind, mul, add, hi,
                        out + oy * row_bytes):
                    continue
                ff_vsum_f32(rows_f32, fy.weight + oy * fy.taps, fy.used, out_stride, outrow)
                _emit(outrow, out + oy * row_bytes, out_stride, c, kind, mul, add, hi)
        else:
            outrow = tmp + in_stride  # one output row, as floats, before conversion
            for oy in range(oh):
                # vertical: the window's rows -> one float row of w pixels
                for k in range(fy.used):
                    rows_u8_p[k] = window + (fy.start[oy] + k) * src_stride
                if item == 1:
                    ff_vsum_u8(rows_u8_p, fy.weight + oy * fy.taps, fy.used, in_stride, tmp)
                else:
                    ff_vsum_u16(<const uint16_t**>rows_u8_p, fy.weight + oy * fy.taps, fy.used,
                                in_stride, tmp)
                # horizontal: w float pixels -> ow output pixels
                ff_hpass_any(tmp, fx.start, fx.used, fx.weight, wide, fx.taps, ow, c, outrow)
                _emit(outrow, out + oy * row_bytes, out_stride, c, kind, mul, add, hi)
    finally:
        if rows_u8_p != rows_u8:
            free(rows_u8_p)
    return 0


cdef extern from "resize_kernels.h" nogil:
    uint16_t ff_f32_to_f16_soft(float value)
    void ff_set_simd(int on)


def set_simd(bint enabled):
    """Turn the explicit AVX2/F16C paths off (False) or back on, for tests that
    check they give the portable code's pixels. Not thread-safe: call it while
    nothing is resizing."""
    ff_set_simd(enabled)


def f16_soft_into(const float[::1] values not None, uint16_t[::1] out not None):
    """The portable float→half conversion (used on CPUs without F16C), for its tests."""
    cdef Py_ssize_t i
    if out.shape[0] < values.shape[0]:
        raise ValueError("out is too short")
    with nogil:
        for i in range(values.shape[0]):
            out[i] = ff_f32_to_f16_soft(values[i])
    return values.shape[0]

"""Images and masks stored as arrays of values, raw or zstd-compressed: their
decoders' loops over a range of samples, compiled, without the GIL.

A payload (``MaskField``, ``MultiChannelImageField``) is::

    0    height, little-endian u4
    4    width, little-endian u4
    8    the H·W·C values (uint8, or little-endian uint16), C order: a zstd
         frame, or as they are

zstd frames are decoded by the zstd decompressor compiled into this module
(zstd 1.5.7, decompression only: ``vendor/zstd``) with one context per
``ZstdDecoder``, kept between calls. Python's codec makes a new context and new
buffers for every frame, which cost several times the decoding itself on
masks.

- ``decode_nearest_range``: masks (one channel), each cropped, resized by
  nearest neighbour and mirrored into a batch row (``MaskDecoder``);
- ``decode_resize_range``: images of 1 to 16 channels, each cropped, resized
  (area or linear, ``resize.pyx``'s pass), mirrored and converted into a batch
  row (the many-channel image decoders).

Both check every sample's payload while holding the GIL (bounds, header,
stored size), then decode the range without it, and return None or
``(k, message)`` for the first sample that failed (those before it are
written). Memory touched: the payloads, the rows of ``out``, and the caller's
``Workspace`` objects: decompressed values, resize scratch, column tables.
"""

cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t
from libc.string cimport memcpy, memset

from fastforward._ext.resize cimport (
    KIND_U8,
    KIND_U16,
    Progress,
    Target,
    Workspace,
    _at,
    _done,
    _outside,
    _oversized,
    _progress,
    _resize_into,
    _scratch_bytes,
    _target,
)

import numpy as np


cdef extern from "zstd.h" nogil:
    ctypedef struct ZSTD_DCtx:
        pass
    ZSTD_DCtx* ZSTD_createDCtx()
    size_t ZSTD_freeDCtx(ZSTD_DCtx* dctx)
    size_t ZSTD_decompressDCtx(ZSTD_DCtx* dctx, void* dst, size_t capacity, const void* src,
                               size_t size)
    unsigned long long ZSTD_getFrameContentSize(const void* src, size_t size)
    unsigned ZSTD_isError(size_t code)
    const char* ZSTD_getErrorName(size_t code)
    const char* ZSTD_versionString()
    unsigned long long ZSTD_CONTENTSIZE_UNKNOWN
    unsigned long long ZSTD_CONTENTSIZE_ERROR


cdef extern from "planes_kernels.h" nogil:
    void ff_planes_set_simd(int on)
    int ff_nearest_table(const int32_t* offsets, Py_ssize_t nbytes, int32_t* base,
                         uint8_t* shuffle)
    void ff_nearest_row(const uint8_t* row, const int32_t* offsets, const int32_t* base,
                        const uint8_t* shuffle, int block, Py_ssize_t nbytes,
                        Py_ssize_t readable, uint8_t* out)


ZSTD_VERSION = ZSTD_versionString().decode()
"""The version of the zstd decompressor compiled in."""

cdef enum:
    HEADER_BYTES = 8    # height and width, u4 each
    SLACK = 16          # bytes after decompressed values: the shuffle loads read up to 15 past
    OK = 0
    ZSTD_FAILED = 1     # the frame is damaged (zstd's error name in `code`)
    ZSTD_SIZE = 2       # it decompressed to another size than the header's


@cython.auto_pickle(False)  # a C decompression context: never pickled (TypeError)
cdef class ZstdDecoder:
    """A zstd decompression context, kept between calls (one per thread: not locked)."""

    cdef ZSTD_DCtx* ctx

    def __cinit__(self):
        self.ctx = ZSTD_createDCtx()
        if self.ctx == NULL:
            raise MemoryError("no memory for a zstd decompression context")

    def __dealloc__(self):
        if self.ctx != NULL:
            ZSTD_freeDCtx(self.ctx)


def set_simd(bint enabled):
    """Turn the SSSE3 form of the nearest-neighbour copy off (False) or back on, for
    tests that check it gives the portable loop's pixels. Not thread-safe."""
    ff_planes_set_simd(enabled)


def decompress_into(ZstdDecoder decoder not None, const uint8_t[::1] frame not None,
                    uint8_t[::1] out not None):
    """Decompress the zstd *frame* into *out*, which it must fill exactly (for tests and
    random access). Raises ValueError naming zstd's error otherwise."""
    cdef size_t got
    with nogil:
        got = ZSTD_decompressDCtx(decoder.ctx, &out[0] if out.shape[0] else NULL, out.shape[0],
                                  &frame[0] if frame.shape[0] else NULL, frame.shape[0])
    if ZSTD_isError(got):
        raise ValueError(f"corrupt zstd frame: {ZSTD_getErrorName(got).decode()}")
    if got != <size_t>out.shape[0]:
        raise ValueError(f"the zstd frame holds {got} bytes, not {out.shape[0]}")
    return got


cdef inline uint64_t _le32(const uint8_t* p) noexcept nogil:
    """The little-endian u4 at *p*."""
    return p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24)


cdef object _check_payload(const uint8_t[::1] source, uint64_t start, uint64_t size,
                           bint compressed, int64_t height, int64_t width, size_t need):
    """None, or why the payload at *start* is not a ``height x width`` image of *need*
    bytes of values (checked while holding the GIL, before the range is decoded)."""
    cdef uint64_t h, w
    cdef unsigned long long content
    if size < HEADER_BYTES or _outside(start, size, source.shape[0]):
        return (f"payload of {size} bytes at {start} is shorter than its header or "
                "outside the data")
    h = _le32(&source[start])
    w = _le32(&source[start + 4])
    if <int64_t>h != height or <int64_t>w != width:
        return f"stored {h}×{w}, expected {height}×{width}"
    if not compressed:
        if size - HEADER_BYTES != need:  # (more is damage too: rows read sheared)
            return (f"a {h}×{w} image needs {need} bytes of values, the payload holds "
                    f"{size - HEADER_BYTES}")
        return None
    content = ZSTD_getFrameContentSize(&source[start + HEADER_BYTES], size - HEADER_BYTES)
    if content == ZSTD_CONTENTSIZE_ERROR:
        return "corrupt payload: not a zstd frame"
    if content != ZSTD_CONTENTSIZE_UNKNOWN and content != need:
        return f"its zstd frame holds {content} bytes, a {h}×{w} image needs {need}"
    return None


def read_sizes(const uint8_t[::1] source not None, const uint64_t[::1] starts not None,
               const uint64_t[::1] sizes not None, int64_t[::1] heights not None,
               int64_t[::1] widths not None):
    """Fill *heights* and *widths* from the headers of the payloads at *starts* (of
    *sizes* bytes). Returns None, or ``(k, message)`` for the first bad payload
    (shorter than a header, outside *source*, or an empty image)."""
    cdef Py_ssize_t k, n = starts.shape[0]
    if not sizes.shape[0] == heights.shape[0] == widths.shape[0] == n:
        raise ValueError("read_sizes: arrays of different lengths")
    for k in range(n):
        if sizes[k] < HEADER_BYTES or _outside(starts[k], sizes[k], source.shape[0]):
            return k, (f"payload of {sizes[k]} bytes at {starts[k]} is shorter than its "
                       "header or outside the data")
        heights[k] = _le32(&source[starts[k]])
        widths[k] = _le32(&source[starts[k] + 4])
        if heights[k] < 1 or widths[k] < 1:
            return k, f"empty image ({heights[k]}×{widths[k]})"
        oversized = _oversized(heights[k], widths[k])
        if oversized is not None:
            return k, oversized
    return None


cdef int _values(ZSTD_DCtx* ctx, const uint8_t* payload, uint64_t size, bint compressed,
                 size_t need, int item, uint8_t* scratch, const uint8_t** values,
                 size_t* code) noexcept nogil:
    """Point *values* at the payload's *need* bytes of values: in place (raw, and
    aligned for *item*), else decompressed or copied into *scratch*."""
    cdef size_t got
    if not compressed:
        if item == 1 or (<size_t>(payload + HEADER_BYTES)) % item == 0:
            values[0] = payload + HEADER_BYTES
        else:  # an odd address: uint16 loads want their own alignment
            memcpy(scratch, payload + HEADER_BYTES, need)
            values[0] = scratch
        return OK
    got = ZSTD_decompressDCtx(ctx, scratch, need, payload + HEADER_BYTES, size - HEADER_BYTES)
    code[0] = got
    if ZSTD_isError(got):
        return ZSTD_FAILED
    if got != need:
        return ZSTD_SIZE
    values[0] = scratch
    return OK


cdef str _failure(int status, size_t code, size_t need):
    if status == ZSTD_FAILED:
        return f"corrupt payload: zstd: {ZSTD_getErrorName(code).decode()}"
    return f"its zstd frame holds {code} bytes, the image needs {need}"


@cython.cdivision(True)  # operands >= 0 (and divisors > 0): C's / and % agree
def decode_nearest_range(ZstdDecoder decoder not None, const uint8_t[::1] source not None,
                         const uint64_t[::1] starts not None, const uint64_t[::1] sizes not None,
                         bint compressed, const int64_t[::1] heights not None,
                         const int64_t[::1] widths not None, const int64_t[:, ::1] crops not None,
                         const int64_t[:, ::1] out_sizes not None,
                         const uint8_t[::1] flips not None, out not None, int fill,
                         Workspace workspace not None, progress=None, samples=None):
    """Decode masks ``0 .. n-1`` of a range into ``out[k]`` (``(n, H, W)`` uint8 or
    uint16, rows contiguous), by nearest neighbour.

    Mask ``k``'s payload is ``source[starts[k] : starts[k] + sizes[k]]`` and must
    be ``heights[k] x widths[k]``. Its window ``crops[k]`` (``y, x, h, w``) is
    resized into the top-left ``out_sizes[k]`` (``oh, ow``) of ``out[k]``,
    mirrored if ``flips[k]``, and *fill* written in the rest. Output pixel
    ``(oy, ox)`` takes the window's pixel ``(min(h - 1, (2 oy + 1) h // 2 oh),
    min(w - 1, (2 ox + 1) w // 2 ow))`` (``pixels.crop_nearest_into``'s rule;
    mirrored, column ``ox`` is the unmirrored ``ow - 1 - ox``). *progress* and
    *samples* as in ``jpeg.decode_crop_resize_range``.
    """
    cdef Py_ssize_t n = starts.shape[0], k, oy, ox, i, ob, sy, sx, last
    cdef Py_ssize_t H, W, item, row_bytes, image_bytes, y0, x0, h, w, oh, ow, nbytes
    cdef size_t need, most = 0, code = 0
    cdef int status = OK, block
    cdef uint8_t* base_out
    cdef uint8_t* scratch
    cdef uint8_t* image
    cdef int32_t* offsets
    cdef int32_t* bases
    cdef uint8_t* shuffle
    cdef const uint8_t* values
    cdef const uint8_t* row
    cdef const uint8_t* end
    cdef const uint8_t* data = &source[0] if source.shape[0] else NULL
    cdef uint8_t[:, :, ::1] raw
    cdef Progress watch
    if not (sizes.shape[0] == heights.shape[0] == widths.shape[0] == crops.shape[0] ==
            out_sizes.shape[0] == flips.shape[0] == n) or crops.shape[1] != 4 or \
            out_sizes.shape[1] != 2:
        raise ValueError("decode_nearest_range: per-sample arrays of different lengths")
    _progress(&watch, progress, samples, n)
    if out.ndim != 3 or out.dtype.str not in ("|u1", "<u2"):
        raise TypeError(f"out must be (n, H, W) uint8 or uint16, got {out.shape} {out.dtype}")
    if out.shape[0] < n:
        raise ValueError(f"out holds {out.shape[0]} masks, the range has {n}")
    item = out.dtype.itemsize
    if not 0 <= fill <= (255 if item == 1 else 65535):
        raise ValueError(f"fill {fill} does not fit {out.dtype}")
    if out.strides[2] != item or out.strides[1] != out.shape[2] * item:
        raise ValueError("out's rows must be contiguous")
    H, W = out.shape[1], out.shape[2]
    if n == 0:
        return None
    raw = out[:n].view(np.uint8)
    base_out = &raw[0, 0, 0]
    row_bytes, image_bytes = out.strides[1], out.strides[0]
    for k in range(n):
        y0, x0, h, w = crops[k, 0], crops[k, 1], crops[k, 2], crops[k, 3]
        oh, ow = out_sizes[k, 0], out_sizes[k, 1]
        if heights[k] < 1 or widths[k] < 1:
            return k, f"empty mask ({heights[k]}×{widths[k]})"
        oversized = _oversized(heights[k], widths[k])  # need would wrap
        if oversized is not None:
            return k, oversized
        if y0 < 0 or x0 < 0 or h < 1 or w < 1 or y0 + h > heights[k] or x0 + w > widths[k]:
            raise ValueError(f"crop {list(crops[k])} exceeds the {heights[k]}x{widths[k]} mask")
        if oh < 1 or ow < 1 or oh > H or ow > W:
            raise ValueError(f"output size {oh}x{ow} does not fit the {H}x{W} rows")
        need = <size_t>(heights[k] * widths[k] * item)
        failed = _check_payload(source, starts[k], sizes[k], compressed, heights[k], widths[k],
                                need)
        if failed is not None:
            return k, failed
        most = max(most, need)
    # decompressed values (and slack), then each output byte's source offset, then the
    # shuffle table (a base per 16 output bytes, 16 shuffle bytes each)
    scratch = <uint8_t*>workspace.reserve(most + SLACK + W * item * (4 + 4 + 16) + 64)
    offsets = <int32_t*>(scratch + ((most + SLACK + 63) & ~(<size_t>63)))
    bases = offsets + W * item
    shuffle = <uint8_t*>(bases + W * item)
    with nogil:
        for k in range(n):
            _at(&watch, k)
            need = <size_t>(heights[k] * widths[k] * item)
            status = _values(decoder.ctx, data + starts[k], sizes[k], compressed, need, item,
                             scratch, &values, &code)
            if status != OK:
                break
            # what the shuffle loads may read: the scratch and its slack, or the rest of
            # the source for values read in place
            end = scratch + need + SLACK if values == scratch else data + source.shape[0]
            y0, x0, h, w = crops[k, 0], crops[k, 1], crops[k, 2], crops[k, 3]
            oh, ow = out_sizes[k, 0], out_sizes[k, 1]
            image = base_out + k * image_bytes
            nbytes = ow * item
            for ox in range(ow):
                sx = (2 * ox + 1) * w // (2 * ow)
                if sx > w - 1:
                    sx = w - 1
                ob = (ow - 1 - ox if flips[k] else ox) * item
                for i in range(item):
                    offsets[ob + i] = <int32_t>((x0 + sx) * item + i)
            block = ff_nearest_table(offsets, nbytes, bases, shuffle)
            last = -1
            for oy in range(oh):
                sy = (2 * oy + 1) * h // (2 * oh)
                if sy > h - 1:
                    sy = h - 1
                if sy == last:  # the same source row as the row above
                    memcpy(image + oy * row_bytes, image + (oy - 1) * row_bytes, nbytes)
                else:
                    row = values + (y0 + sy) * widths[k] * item
                    ff_nearest_row(row, offsets, bases, shuffle, block, nbytes, end - row,
                                   image + oy * row_bytes)
                    last = sy
                if ow < W:
                    _fill(image + oy * row_bytes + nbytes, W - ow, item, fill)
            for oy in range(oh, H):
                _fill(image + oy * row_bytes, W, item, fill)
    if status != OK:
        return k, _failure(status, code, <size_t>(heights[k] * widths[k] * item))
    _done(&watch)
    return None


cdef inline void _fill(uint8_t* out, Py_ssize_t count, Py_ssize_t item, int value) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint16_t* wide
    if item == 1:
        memset(out, value, count)
        return
    wide = <uint16_t*>out
    for i in range(count):
        wide[i] = <uint16_t>value


def decode_resize_range(ZstdDecoder decoder not None, const uint8_t[::1] source not None,
                        const uint64_t[::1] starts not None, const uint64_t[::1] sizes not None,
                        bint compressed, int item, const int64_t[::1] heights not None,
                        const int64_t[::1] widths not None, const int64_t[:, ::1] crops not None,
                        const uint8_t[::1] flips not None, out not None, scale, bias,
                        Workspace workspace not None, Workspace values_workspace not None,
                        progress=None, samples=None):
    """Decode images ``0 .. n-1`` of a range into ``out[k]``: ``(n, oh, ow, c)`` of the
    images' type (*item*: 1 for uint8, 2 for uint16) or float16/float32 (each
    channel ``value * scale[c] + bias[c]``), as ``crop_resize_into`` does.

    Image ``k``'s payload is ``source[starts[k] : starts[k] + sizes[k]]`` and must
    be ``heights[k] x widths[k] x c``. Window ``crops[k]`` (``y, x, h, w``) is
    resized into ``out[k]``, mirrored if ``flips[k]``. A window that is the
    whole image, as large as the output, neither mirrored nor converted, is
    copied (or decompressed) straight into ``out[k]``. *progress* and *samples* as
    in ``jpeg.decode_crop_resize_range``.
    """
    cdef Target t
    cdef Py_ssize_t n = starts.shape[0], k, c, y
    cdef size_t need, most = 0, scratch_need = 0, code = 0
    cdef int status = OK
    cdef char* scratch
    cdef uint8_t* values_scratch
    cdef const uint8_t* values
    cdef const uint8_t* data = &source[0] if source.shape[0] else NULL
    cdef uint8_t* image
    cdef bint direct, contiguous
    cdef Progress watch
    if not (sizes.shape[0] == heights.shape[0] == widths.shape[0] == crops.shape[0] ==
            flips.shape[0] == n) or crops.shape[1] != 4:
        raise ValueError("decode_resize_range: per-sample arrays of different lengths")
    _progress(&watch, progress, samples, n)
    if out.ndim != 4:
        raise ValueError(f"out must be (n, oh, ow, c), got {out.shape}")
    c = out.shape[3]
    _target(&t, out, c, scale, bias, item)
    if t.count < n:
        raise ValueError(f"out holds {t.count} images, the range has {n}")
    contiguous = t.row_bytes == t.ow * c * item
    for k in range(n):
        if heights[k] < 1 or widths[k] < 1:
            return k, f"empty image ({heights[k]}×{widths[k]})"
        oversized = _oversized(heights[k], widths[k])  # need would wrap
        if oversized is not None:
            return k, oversized
        if (crops[k, 0] < 0 or crops[k, 1] < 0 or crops[k, 2] < 1 or crops[k, 3] < 1
                or crops[k, 0] + crops[k, 2] > heights[k]
                or crops[k, 1] + crops[k, 3] > widths[k]):
            raise ValueError(f"crop {list(crops[k])} exceeds the {heights[k]}x{widths[k]} image")
        need = <size_t>(heights[k] * widths[k] * c * item)
        failed = _check_payload(source, starts[k], sizes[k], compressed, heights[k], widths[k],
                                need)
        if failed is not None:
            return k, failed
        most = max(most, need)
        scratch_need = max(scratch_need, _scratch_bytes(crops[k, 2], crops[k, 3], t.oh, t.ow, c))
    if n == 0:
        return None
    scratch = workspace.reserve(scratch_need)
    values_scratch = <uint8_t*>values_workspace.reserve(most + SLACK)
    with nogil:
        for k in range(n):
            _at(&watch, k)
            need = <size_t>(heights[k] * widths[k] * c * item)
            image = <uint8_t*>(t.base + k * t.image_bytes)
            direct = (crops[k, 0] == 0 and crops[k, 1] == 0 and crops[k, 2] == heights[k]
                      and crops[k, 3] == widths[k] and t.oh == heights[k] and t.ow == widths[k]
                      and not flips[k] and (t.kind == KIND_U8 or t.kind == KIND_U16))
            if direct and compressed and contiguous:  # straight into the batch row
                status = _values(decoder.ctx, data + starts[k], sizes[k], True, need, item,
                                 image, &values, &code)
                if status != OK:
                    break
                continue
            status = _values(decoder.ctx, data + starts[k], sizes[k], compressed, need, item,
                             values_scratch, &values, &code)
            if status != OK:
                break
            if direct:
                for y in range(t.oh):
                    memcpy(image + y * t.row_bytes, values + y * t.ow * c * item,
                           t.ow * c * item)
                continue
            _resize_into(values, heights[k], widths[k], widths[k] * c * item, crops[k, 0],
                         crops[k, 1], crops[k, 2], crops[k, 3], &t, k, flips[k], scratch)
    if status != OK:
        return k, _failure(status, code, <size_t>(heights[k] * widths[k] * c * item))
    _done(&watch)
    return None

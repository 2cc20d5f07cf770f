"""Crop decoding: only the window of each JPEG that a crop needs, then the
resize pass, for a whole range of samples without the GIL.

Compiled because it is the crop decoders' per-sample loop: libjpeg-turbo's
own API (linked statically, see setup.py) decodes, and the resize pass of
``resize.pyx`` (through ``resize.pxd``) crops, resizes, flips and converts,
one sample after another in one ``nogil`` block. No Python object is touched
between samples; an error stops the range and comes back as the sample's
position and a message, which the caller raises as a ``DecodeError``.

Per JPEG (``jpeg_region.h``): read the header; choose the DCT scale M/8 (the
crop decoders keep 8/8: smaller scales measured slower and less exact, see
docs/performance.md); restrict decoding to the crop's columns
(``jpeg_crop_scanline``, widened to whole iMCU columns, and by one column on
each side so that the pixels are those of a whole-image decode), skip the rows
above it (``jpeg_skip_scanlines``: entropy-decoded, not reconstructed), decode
its rows and stop there (``jpeg_abort_decompress``). In a JPEG with a restart
marker at each MCU row (the writer's, ``encode_rgb``), decoding starts at the
marker above the crop instead, and each row stops just past the crop and skips
to the next row's marker (see ``jpeg_region.h``).

Memory touched: reads each sample's payload in *source*; writes each sample's
image of *out*; uses the ``JpegDecoder``'s row buffer (the largest window so
far, kept) and the ``Workspace``.
"""

cimport cython
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

import os

import numpy as np

from fastforward._ext.resize cimport (KIND_U8, Progress, Target, Workspace, _at, _done,
                                      _outside, _oversized, _progress, _resize_into,
                                      _resize_span_into, _scratch_bytes, _target)


cdef extern from "jpeg_region.h" nogil:
    ctypedef struct ff_jpeg:
        char* message
        uint8_t* pixels
        int image_height, image_width
        int x_offset, columns
        size_t stride
        int restart_row, restart_mcus
        int libjpeg_huffman
        int own_huffman
        int planes
        uint8_t* plane[3]
        int plane_height[3]
        int plane_width[3]
        double plane_span_height[3]
        double plane_span_width[3]
        size_t plane_stride[3]
    int FF_JPEG_OK, FF_JPEG_ERROR, FF_JPEG_SIZE, FF_JPEG_NOMEM, FF_JPEG_UNSUPPORTED
    int ff_jpeg_open(ff_jpeg* j)
    void ff_jpeg_close(ff_jpeg* j)
    int ff_jpeg_decode_window(ff_jpeg* j, const uint8_t* data, size_t size, int height,
                              int width, int scale, int fast_idct, int restarts, int y0,
                              int h, int x0, int w)
    int ff_jpeg_decode_planes(ff_jpeg* j, const uint8_t* data, size_t size, int scale,
                              int fast_idct)
    void ff_pad_plane(uint8_t* plane, size_t stride, int height, int width, int padded_height,
                      int padded_width)
    int ff_jpeg_compress(const uint8_t* const* planes, const size_t* strides, int raw,
                         int height, int width, int quality, int h_samp, int v_samp,
                         int restart_rows, unsigned char** out, unsigned long* out_size,
                         char* message)
    int ff_jpeg_encode(const uint8_t* pixels, int height, int width, size_t stride,
                       int quality, int h_samp, int v_samp, int restart_rows,
                       unsigned char** out, unsigned long* out_size, char* message)
    int LIBJPEG_TURBO_VERSION_NUMBER


LIBJPEG_TURBO_VERSION = (f"{LIBJPEG_TURBO_VERSION_NUMBER // 1000000}."
                         f"{LIBJPEG_TURBO_VERSION_NUMBER // 1000 % 1000}."
                         f"{LIBJPEG_TURBO_VERSION_NUMBER % 1000}")
"""The libjpeg-turbo linked into this module."""


@cython.auto_pickle(False)  # a libjpeg decompressor: never pickled (TypeError)
cdef class JpegDecoder:
    """A libjpeg decompressor and its row buffer, kept from image to image.

    Used by one thread at a time (not locked): the crop decoders keep one per
    scratch, lent to one range at a time.
    """

    cdef ff_jpeg* j

    def __cinit__(self):
        huffman = os.environ.get("FASTFORWARD_HUFFMAN", "fastforward").strip() or "fastforward"
        if huffman not in ("fastforward", "libjpeg"):
            raise ValueError(f"FASTFORWARD_HUFFMAN={huffman!r}: 'fastforward' (the default) "
                             "or 'libjpeg'")
        self.j = <ff_jpeg*>calloc(1, sizeof(ff_jpeg))
        if self.j == NULL:
            raise MemoryError("no memory for a JPEG decoder")
        self.j.libjpeg_huffman = huffman == "libjpeg"
        if ff_jpeg_open(self.j) != FF_JPEG_OK:
            message = self.j.message.decode("utf-8", "replace")
            ff_jpeg_close(self.j)
            free(self.j)
            self.j = NULL
            raise MemoryError(f"cannot create a JPEG decoder: {message}")

    def __dealloc__(self):
        if self.j != NULL:
            ff_jpeg_close(self.j)
            free(self.j)

    @property
    def restart_row(self):
        """The iMCU row at which the last decode started: 0 for the top, more where
        it started at the restart marker above its window (for tests)."""
        return self.j.restart_row

    @property
    def restart_mcus(self):
        """How many MCUs of each row the last decode entropy-decoded before skipping
        to the next row's restart marker: 0 for all of them (for tests)."""
        return self.j.restart_mcus

    @property
    def libjpeg_huffman(self):
        """Whether libjpeg decodes the Huffman codes (True), or fastforward's own
        decoder (False: the same coefficients, faster). False unless the
        environment says ``FASTFORWARD_HUFFMAN=libjpeg`` when the decoder is made;
        settable, for tests and benchmarks."""
        return bool(self.j.libjpeg_huffman)

    @libjpeg_huffman.setter
    def libjpeg_huffman(self, value):
        self.j.libjpeg_huffman = 1 if value else 0

    @property
    def own_huffman(self):
        """Whether the last decode entropy-decoded with fastforward's decoder (a
        sequential Huffman scan of every component), not libjpeg's (for tests)."""
        return bool(self.j.own_huffman)


cdef struct Plan:
    int scale               # M of the DCT scale M/8
    int y0, x0, h, w        # the crop, in the image scaled by M/8


cdef inline int _scaled(int64_t v, int m) noexcept nogil:
    """A coordinate of the full image in the image scaled by m/8 (rounded)."""
    return <int>((v * m + 4) >> 3)


cdef void _plan(Plan* p, int64_t height, int64_t width, const int64_t* crop, Py_ssize_t oh,
                Py_ssize_t ow, int min_scale) noexcept nogil:
    """The smallest scale M/8 (M in {1, 2, 4, 8}, M >= min_scale) at which the crop
    keeps at least ``oh x ow`` pixels (M = 8 when none does), and the crop at that
    scale. Only the scales whose IDCT libjpeg-turbo has in SIMD: the others
    (7/8, 6/8, ...) measured slower than decoding at full size."""
    cdef int m, y1, x1, sh, sw
    for m in range(min_scale, 9):
        if m != 1 and m != 2 and m != 4 and m != 8:
            continue
        # libjpeg's scaled size: ceil(side * m / 8)
        sh = <int>((height * m + 7) >> 3)
        sw = <int>((width * m + 7) >> 3)
        p.scale = m
        p.y0, p.x0 = _scaled(crop[0], m), _scaled(crop[1], m)
        y1, x1 = _scaled(crop[0] + crop[2], m), _scaled(crop[1] + crop[3], m)
        if m == 8:  # exact
            p.y0, p.x0, y1, x1 = <int>crop[0], <int>crop[1], <int>(crop[0] + crop[2]), \
                <int>(crop[1] + crop[3])
        y1, x1 = min(y1, sh), min(x1, sw)
        p.y0, p.x0 = min(p.y0, y1 - 1), min(p.x0, x1 - 1)
        p.h, p.w = y1 - p.y0, x1 - p.x0
        if p.h >= oh and p.w >= ow:
            return


def decode_crop_resize_range(JpegDecoder decoder not None, const uint8_t[::1] source not None,
                             const uint64_t[::1] starts not None,
                             const uint64_t[::1] sizes not None,
                             const uint8_t[::1] raw not None,
                             const int64_t[::1] heights not None,
                             const int64_t[::1] widths not None,
                             const int64_t[:, ::1] crops not None,
                             const uint8_t[::1] flips not None, out not None, scale, bias,
                             Workspace workspace not None, bint fast_idct=True,
                             int min_scale=8, bint restarts=True, progress=None,
                             samples=None):
    """Decode, crop and resize samples ``0 .. n-1`` of a range into ``out[k]``.

    Sample ``k``'s payload is ``source[starts[k] : starts[k] + sizes[k]]``: raw
    pixels when ``raw[k]``, else a JPEG, which must be ``heights[k] x
    widths[k]``. Window ``crops[k]`` (``i, j, h, w``) is resized into ``out[k]``,
    mirrored if ``flips[k]``; *scale* and *bias* as in ``crop_resize_into``.
    JPEGs are decoded at the DCT scale M/8: the smallest M in {1, 2, 4, 8}, at
    least *min_scale*, that keeps the crop at least as large as the output. The
    default (8) decodes at full size: the pixels of a whole-image decode.
    With *restarts*, a JPEG with a restart marker at each MCU row starts
    decoding at the marker above its window (the same pixels, fewer rows
    entropy-decoded).

    With *progress* (int64 cells, ``BatchContext.progress``), ``progress[1]``
    holds ``samples[k]`` (the range's dataset indices) while sample ``k`` is
    decoded, and -1 once the range is done: a worker process that crashes or
    stalls in here is reported with its sample.

    Returns None, or ``(k, message)`` for the first sample that failed (the
    samples before it are written; ``progress[1]`` stays at its index).
    """
    cdef Target t
    cdef Py_ssize_t n = starts.shape[0], k
    cdef Plan p
    cdef size_t need = 0
    cdef int code = FF_JPEG_OK
    cdef char* scratch
    cdef const uint8_t* base
    cdef ff_jpeg* j = decoder.j
    cdef Progress watch
    if not (sizes.shape[0] == raw.shape[0] == heights.shape[0] == widths.shape[0] ==
            crops.shape[0] == flips.shape[0] == n) or crops.shape[1] != 4:
        raise ValueError("decode_crop_resize_range: per-sample arrays of different lengths")
    _progress(&watch, progress, samples, n)
    if not 1 <= min_scale <= 8:
        raise ValueError(f"min_scale must be in 1..8, got {min_scale}")
    _target(&t, out, 3, scale, bias)
    if t.count < n:
        raise ValueError(f"out holds {t.count} images, the range has {n}")
    # check every sample while holding the GIL, and size the scratch for the largest
    for k in range(n):
        if _outside(starts[k], sizes[k], source.shape[0]) or sizes[k] == 0:
            return k, f"payload of {sizes[k]} bytes at {starts[k]} is outside the data"
        if heights[k] < 1 or widths[k] < 1:
            return k, f"empty image ({heights[k]}×{widths[k]})"
        oversized = _oversized(heights[k], widths[k])  # sizes would wrap, or be cut to int
        if oversized is not None:
            return k, oversized
        if (crops[k, 0] < 0 or crops[k, 1] < 0 or crops[k, 2] < 1 or crops[k, 3] < 1
                or crops[k, 0] + crops[k, 2] > heights[k]
                or crops[k, 1] + crops[k, 3] > widths[k]):
            raise ValueError(f"crop {list(crops[k])} exceeds the {heights[k]}x{widths[k]} image")
        if raw[k]:
            if sizes[k] < <uint64_t>(heights[k] * widths[k] * 3):
                return k, (f"raw image payload of {sizes[k]} bytes is short of "
                           f"{heights[k]}×{widths[k]}×3")
            p.h, p.w = <int>crops[k, 2], <int>crops[k, 3]
        else:
            _plan(&p, heights[k], widths[k], &crops[k, 0], t.oh, t.ow, min_scale)
        need = max(need, _scratch_bytes(p.h, p.w, t.oh, t.ow, 3))
    if n == 0:
        return None
    scratch = workspace.reserve(need)
    base = &source[0]
    with nogil:
        for k in range(n):
            _at(&watch, k)
            if raw[k]:
                _resize_into(base + starts[k], heights[k], widths[k], widths[k] * 3,
                             crops[k, 0], crops[k, 1], crops[k, 2], crops[k, 3], &t, k,
                             flips[k], scratch)
                continue
            _plan(&p, heights[k], widths[k], &crops[k, 0], t.oh, t.ow, min_scale)
            code = ff_jpeg_decode_window(j, base + starts[k], sizes[k], <int>heights[k],
                                         <int>widths[k], p.scale, fast_idct, restarts, p.y0,
                                         p.h, p.x0, p.w)
            if code != FF_JPEG_OK:
                break
            _resize_into(j.pixels, p.h, j.columns, j.stride, 0, p.x0 - j.x_offset, p.h, p.w,
                         &t, k, flips[k], scratch)
    if code == FF_JPEG_OK:
        _done(&watch)
        return None
    if code == FF_JPEG_NOMEM:
        error = MemoryError(f"no memory to decode sample {k}'s JPEG")
        error.sample = k  # the caller names it in its terms (file, sample, field)
        raise error
    if code == FF_JPEG_SIZE:
        return k, (f"JPEG is {j.image_height}×{j.image_width}, the metadata says "
                   f"{heights[k]}×{widths[k]}")
    return k, f"corrupt JPEG payload: {j.message.decode('utf-8', 'replace')}"


def decode_window(JpegDecoder decoder not None, const uint8_t[::1] data not None,
                  int height, int width, int scale, int y0, int h, int x0, int w,
                  bint fast_idct=True, bint restarts=True):
    """Rows ``y0 .. y0+h`` and columns ``x0 .. x0+w`` of a JPEG of ``height x width``
    pixels, decoded at the DCT scale ``scale/8`` exactly as the crop decoders do
    (for tests and measurements): an ``h x w x 3`` uint8 array. *restarts* as in
    ``decode_crop_resize_range``; ``decoder.restart_row`` says where it started.

    Raises ValueError with libjpeg's message when it cannot be decoded.
    """
    cdef int code
    cdef ff_jpeg* j = decoder.j
    if not 1 <= scale <= 16:
        raise ValueError(f"scale must be in 1..16, got {scale}")
    sh, sw = (height * scale + 7) // 8, (width * scale + 7) // 8
    if y0 < 0 or x0 < 0 or h < 1 or w < 1 or y0 + h > sh or x0 + w > sw:
        raise ValueError(f"window {h}x{w} at ({y0}, {x0}) exceeds the {sh}x{sw} scaled image")
    if data.shape[0] == 0:
        raise ValueError("empty JPEG")
    with nogil:
        code = ff_jpeg_decode_window(j, &data[0], data.shape[0], height, width, scale,
                                     fast_idct, restarts, y0, h, x0, w)
    if code == FF_JPEG_NOMEM:
        raise MemoryError("no memory to decode the JPEG")
    if code == FF_JPEG_SIZE:
        raise ValueError(f"JPEG is {j.image_height}×{j.image_width}, not {height}×{width}")
    if code != FF_JPEG_OK:
        raise ValueError(j.message.decode("utf-8", "replace"))
    rows = np.asarray(<uint8_t[:h * j.stride]>j.pixels).reshape(h, j.stride)
    offset = (x0 - j.x_offset) * 3
    return rows[:, offset : offset + 3 * w].reshape(h, w, 3).copy()


# the luma's (horizontal, vertical) sampling factors, chroma sampled 1x1: the
# writer stores 4:2:0; the others make test sources of every sampling
_SAMPLING = {"444": (1, 1), "422": (2, 1), "420": (2, 2), "440": (1, 2), "411": (4, 1),
             "441": (1, 4), "410": (4, 2)}


def encode_rgb(const uint8_t[:, :, ::1] image not None, int quality, str subsampling="420",
               int restart_rows=1):
    """*image* (``H x W x 3`` uint8 RGB) as baseline JPEG bytes with libjpeg's defaults
    (the bytes Pillow writes with ``restart_rows=0``), with a restart marker every
    *restart_rows* MCU rows: the crop decoders then start decoding at the marker
    above a crop, and with one a row, stop each row just past the crop, instead
    of entropy-decoding every row above it and every column right of it. The GIL
    is released while encoding.
    """
    cdef unsigned char* out = NULL
    cdef unsigned long size = 0
    cdef int code, h_samp, v_samp
    cdef char message[200]
    cdef int height = <int>image.shape[0], width = <int>image.shape[1]
    if subsampling not in _SAMPLING:
        raise ValueError(f"subsampling must be one of {sorted(_SAMPLING)}, got {subsampling!r}")
    h_samp, v_samp = _SAMPLING[subsampling]
    if image.shape[2] != 3:
        raise ValueError(f"encode_rgb needs H x W x 3 RGB pixels, got {image.shape[2]} channels")
    _check_encoding(height, width, quality, restart_rows)
    with nogil:
        code = ff_jpeg_encode(&image[0, 0, 0], height, width, <size_t>image.strides[0], quality,
                              h_samp, v_samp, restart_rows, &out, &size, message)
    return _encoded(code, message, out, size, height, width)


cdef int _check_encoding(int height, int width, int quality, int restart_rows) except -1:
    """Raise ValueError for what the encoder cannot take."""
    if height < 1 or width < 1 or height > 65500 or width > 65500:
        raise ValueError(f"cannot encode a {height}x{width} image as JPEG (1..65500 px a side)")
    if not 0 <= quality <= 100:  # libjpeg takes 0 as 1
        raise ValueError(f"quality must be in 0..100, got {quality}")
    if not 0 <= restart_rows <= 65535:
        raise ValueError(f"restart_rows must be in 0..65535, got {restart_rows}")
    return 0


cdef bytes _encoded(int code, const char* message, unsigned char* out, unsigned long size,
                    int height, int width):
    """The encoder's bytes (freed here), or its error raised."""
    if code == FF_JPEG_NOMEM:
        raise MemoryError(f"no memory to encode a {height}x{width} JPEG")
    if code != FF_JPEG_OK:
        reason = message.decode("utf-8", "replace")
        raise ValueError(f"cannot encode the image as JPEG: {reason}")
    try:
        return (<char*>out)[:size]
    finally:
        free(out)


def decode_planes(JpegDecoder decoder not None, const uint8_t[::1] data not None,
                  int scale=8, bint fast_idct=False):
    """The components of a YCbCr or grayscale JPEG decoded at the DCT scale
    ``scale/8`` as ``shrink_jpeg`` reads them: a list of 2-D uint8 arrays (Y, Cb,
    Cr, each at its own resolution, or below 8/8 at what libjpeg-turbo gives it:
    it scales subsampled chroma less; Y only for grayscale), or None for a JPEG
    it does not take. Raises ValueError with libjpeg's message for one it cannot
    decode (for tests and measurements).
    """
    cdef ff_jpeg* j = decoder.j
    cdef int code, c
    if not 1 <= scale <= 16:
        raise ValueError(f"scale must be in 1..16, got {scale}")
    if data.shape[0] == 0:
        raise ValueError("empty JPEG")
    with nogil:
        code = ff_jpeg_decode_planes(j, &data[0], data.shape[0], scale, fast_idct)
    if code == FF_JPEG_NOMEM:
        raise MemoryError("no memory to decode the JPEG")
    if code == FF_JPEG_UNSUPPORTED:
        return None
    if code != FF_JPEG_OK:
        raise ValueError(j.message.decode("utf-8", "replace"))
    planes = []
    for c in range(j.planes):
        rows = np.asarray(<uint8_t[:j.plane_height[c] * j.plane_stride[c]]>j.plane[c])
        planes.append(rows.reshape(j.plane_height[c], j.plane_stride[c])[:, :j.plane_width[c]]
                      .copy())
    return planes


def shrink_jpeg(JpegDecoder decoder not None, const uint8_t[::1] data not None, int height,
                int width, int scale, int quality, int restart_rows=1,
                Workspace workspace=None):
    """The JPEG *data* shrunk to ``height x width`` and encoded again (4:2:0,
    *quality*, a restart marker every *restart_rows* MCU rows) without leaving
    YCbCr: the writer's path from a source JPEG to the stored one.

    It decodes at the DCT scale ``scale/8`` each component without chroma
    upsampling or colour conversion (``decode_planes``), shrinks each plane by
    area averaging over the span of the image it stands for (the luma to
    ``height x width``, the chroma to half that each way; a plane's last sample
    stands for part of one where its side is odd, so chroma stays registered
    with luma) and hands the planes to the encoder as they are (no colour
    conversion, no chroma downsampling). Grayscale JPEGs get neutral chroma.
    The pixels stay close to decoding to RGB, shrinking and encoding that
    (``tests/test_ext_jpeg.py`` bounds the difference), at much less work.

    Returns None, having done nothing else, for a JPEG it does not take (RGB,
    CMYK or YCCK colour, chroma sampled other than 4:4:4, 4:2:2, 4:4:0 or
    4:2:0) and for one that libjpeg cannot decode or warns about: the caller
    decodes those to RGB, which says what is wrong with them.
    """
    cdef ff_jpeg* j = decoder.j
    cdef int code, c, planes, ph, pw
    cdef int oh[3]
    cdef int ow[3]
    cdef size_t strides[3]
    cdef const uint8_t* pointers[3]
    cdef uint8_t* buffer = NULL
    cdef unsigned char* out = NULL
    cdef unsigned long size = 0
    cdef char message[200]
    cdef size_t need = 0
    cdef char* scratch
    cdef Target t
    cdef double spans[4]
    if not 1 <= scale <= 16:
        raise ValueError(f"scale must be in 1..16, got {scale}")
    _check_encoding(height, width, quality, restart_rows)
    if data.shape[0] == 0:
        return None
    with nogil:
        code = ff_jpeg_decode_planes(j, &data[0], data.shape[0], scale, 0)
    if code == FF_JPEG_NOMEM:
        raise MemoryError("no memory to decode the JPEG")
    if code != FF_JPEG_OK:
        return None
    planes = j.planes
    if j.plane_height[0] < height or j.plane_width[0] < width:
        raise ValueError(f"the JPEG at scale {scale}/8 is {j.plane_height[0]}x"
                         f"{j.plane_width[0]}, smaller than {height}x{width}")
    # the stored planes: luma, then each chroma plane at half its size, every one
    # a whole number of 16x16 MCUs
    ph, pw = (height + 15) // 16 * 16, (width + 15) // 16 * 16
    oh[0], ow[0], strides[0] = height, width, pw
    for c in range(1, 3):
        oh[c], ow[c], strides[c] = (height + 1) // 2, (width + 1) // 2, pw // 2
    for c in range(planes):
        need = max(need, _scratch_bytes(j.plane_height[c], j.plane_width[c], oh[c], ow[c], 1))
    if workspace is None:
        workspace = Workspace()
    scratch = workspace.reserve(need)
    buffer = <uint8_t*>malloc(<size_t>ph * pw * 3 // 2)
    if buffer == NULL:
        raise MemoryError(f"no memory to encode a {height}x{width} JPEG")
    pointers[0], pointers[1] = buffer, buffer + <size_t>ph * pw
    pointers[2] = pointers[1] + <size_t>ph * pw // 4
    try:
        with nogil:
            for c in range(3):
                if c < planes:
                    t.kind, t.source_item, t.count, t.c = KIND_U8, 1, 1, 1
                    t.base = <char*>pointers[c]
                    t.oh, t.ow, t.row_bytes = oh[c], ow[c], strides[c]
                    t.image_bytes = strides[c] * (ph if c == 0 else ph // 2)
                    # the spans the planes stand for, not their rounded sizes: chroma
                    # stays registered with luma where a side is odd
                    spans[0], spans[1] = j.plane_span_height[c], j.plane_span_width[c]
                    spans[2] = height if c == 0 else height / 2.0
                    spans[3] = width if c == 0 else width / 2.0
                    _resize_span_into(j.plane[c], j.plane_height[c], j.plane_width[c],
                                      j.plane_stride[c], spans, &t, scratch)
                    ff_pad_plane(<uint8_t*>pointers[c], strides[c], oh[c], ow[c],
                                 ph if c == 0 else ph // 2, <int>strides[c])
                else:  # grayscale: neutral chroma
                    memset(<uint8_t*>pointers[c], 128, strides[c] * (ph // 2))
            code = ff_jpeg_compress(pointers, strides, 1, height, width, quality, 2, 2,
                                    restart_rows, &out, &size, message)
    finally:
        free(buffer)
    return _encoded(code, message, out, size, height, width)

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

A float16 or float32 *out* takes the operations that would follow the policy
(``Convert``, ``NormalizeImage``) as a table of the 256 values each level
becomes per channel: each image's last operation writes a second scratch image,
which goes through the table (or the arithmetic that gives the same values,
see ``augment_into``) into *out* while it is in cache.

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
    ctypedef struct ff_aug_sink:
        int kind
        int form
        float k0[3]
        float k1[3]
        const void* table
    void ff_aug_sink_check(ff_aug_sink* sink)
    int ff_aug_cpu()
    void ff_aug_set_portable(int on)
    void ff_aug_convert(const uint8_t* src, Py_ssize_t ss, char* dst, Py_ssize_t ds, int h,
                        int w, const ff_aug_sink* sink)
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


cdef int _sink(ff_aug_sink* sink, out, table, affine) except -1:
    """Fill *sink* for float *out* from *table* and the optional *affine* forms."""
    cdef Py_ssize_t v, c
    dtype = out.dtype
    if dtype == np.float16:
        sink.kind = 1
    elif dtype == np.float32:
        sink.kind = 2
    else:
        raise ValueError(f"out must be uint8, float16 or float32, got {dtype}")
    if table is None:
        raise ValueError(f"a {dtype} out needs the table of the values it takes")
    if not isinstance(table, np.ndarray) or table.dtype != dtype or table.shape != (256, 3) \
            or not table.flags.c_contiguous:
        raise ValueError(f"table must be a C-contiguous (256, 3) {dtype} array (the value of "
                         f"each uint8 level per channel), got "
                         f"{getattr(table, 'dtype', type(table).__name__)} "
                         f"{getattr(table, 'shape', '')}")
    sink.table = <const void*><size_t>table.ctypes.data
    sink.form = 0
    if affine is not None:
        scale, bias = affine
        scale = np.ones(3) if scale is None else np.asarray(scale, np.float64).reshape(-1)
        bias = np.zeros(3) if bias is None else np.asarray(bias, np.float64).reshape(-1)
        if scale.shape != (3,) or bias.shape != (3,):
            raise ValueError(f"affine must be (scale, bias) of 3 values each, got {affine!r}")
        # the conversions' own arithmetic: value * scale + bias (Convert, or a
        # crop decoder's), else (value - mean) / std (NormalizeImage on tensors)
        for form, k0, k1 in ((1, scale, bias), (2, -bias / scale, 1.0 / scale)):
            for c in range(3):
                sink.k0[c] = k0[c]
                sink.k1[c] = k1[c]
            sink.form = form
            ff_aug_sink_check(sink)
            if sink.form:
                break
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
def augment_into(const uint8_t[:, :, :, :] src not None, out not None,
                 const int32_t[:, ::1] ops not None, const double[:, :, ::1] params not None,
                 bint bilinear=False, fill=None, table=None, affine=None):
    """Apply ``ops[i, k]`` with ``params[i, k]`` (k in order) to image ``i`` of *src*,
    into image ``i`` of *out*.

    Args:
        src: ``(B, H, W, 3)`` uint8 images, channels contiguous.
        out: the same shape, uint8, or float16 or float32 with a *table*; written
            in full. Must not overlap *src*.
        ops: ``(B, K)`` int32 operation codes (``OPS``; -1: none).
        params: ``(B, K, PARAMS)`` float64 parameters (see the module docstring).
        bilinear: interpolation of ``AFFINE`` (nearest when False).
        fill: None (zeros outside the image, without torchvision's mask), or
            three values in 0..255 blended in where the source is outside.
        table: for a float *out*: a ``(256, 3)`` array of its dtype, row ``v``
            the values a uint8 level ``v`` of each channel becomes; each image's
            result goes through it (from a scratch image still in cache).
        affine: None, or ``(scale, bias)`` (3 values each, or None for 1 and
            0): where ``v * scale + bias`` or ``(v - mean) / std`` (``mean =
            -bias / scale``, ``std = 1 / scale``), computed in float32 (and
            rounded to nearest even for float16), gives every entry of *table*
            bit for bit on this CPU, the rows are computed that way, 8 values
            at a time, instead of looked up. The result is *table*'s either way.

    Returns:
        The number of images.

    Raises:
        ValueError: shapes that do not match, an unknown code, or a parameter
            its operation cannot take (naming the sample and the position).
    """
    cdef Py_ssize_t n = src.shape[0], h = src.shape[1], w = src.shape[2]
    cdef Py_ssize_t i, k, depth = ops.shape[1], steps, done
    cdef Py_ssize_t ss = src.strides[1], ds, ts = w * 3, item, out_image
    cdef float fill_values[3]
    cdef const float* fill_ptr = NULL
    cdef ff_aug_scratch scratch
    cdef ff_aug_sink sink
    cdef bint converts
    cdef uint8_t* tmp = NULL
    cdef uint8_t* fin = NULL
    cdef char* block = NULL
    cdef const uint8_t* a
    cdef uint8_t* b
    cdef Py_ssize_t sa, sb
    cdef const uint8_t* src_base
    cdef char* out_base
    cdef uint8_t[:, :, :, :] out8
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    converts = out.dtype != np.uint8
    if converts:
        _sink(&sink, out, table, affine)
    elif table is not None or affine is not None:
        raise ValueError("a uint8 out takes no table")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    item = out.dtype.itemsize
    if src.shape[3] != 3 or out.ndim != 4 or tuple(out.shape) != (n, h, w, 3):
        raise ValueError(f"src and out must be (B, H, W, 3) alike, got "
                         f"{(n, h, w, src.shape[3])} and {tuple(out.shape)}")
    if n and (src.strides[2] != 3 or out.strides[2] != 3 * item or src.strides[3] != 1
              or out.strides[3] != item):
        raise ValueError("src and out need contiguous pixels of 3 channels")
    ds, out_image = out.strides[1], out.strides[0]
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
    out_base = <char*><size_t>out.ctypes.data
    if (<const char*>src_base < out_base + (n - 1) * out_image + (h - 1) * ds + w * 3 * item
            and out_base < <const char*>src_base + (n - 1) * src.strides[0] + (h - 1) * ss
            + w * 3):
        raise ValueError("src and out overlap")
    if ss < 0 or ds < 0 or src.strides[0] < 0 or out_image < 0:
        raise ValueError("src and out need rows and images in increasing memory order")
    if (h - 1) * max(ss, ds, ts) + w * 3 * item >= 1 << 31:
        raise ValueError(f"images of {h}x{w} (rows {ss} bytes apart) are too large: "
                         "offsets must fit in 31 bits")
    if not converts:
        out8 = out
    # one block: the scratch rows, then the scratch image (and slack for 4-byte reads),
    # then, for a float out, the image its last operation writes before the table
    block = <char*>malloc(w * (4 * sizeof(float) + 3 * sizeof(int32_t) + 3 * sizeof(uint16_t))
                          + (2 if converts else 1) * (h * w * 3 + 64))
    if block == NULL:
        raise MemoryError(f"augment_into: no memory for a {h}x{w} scratch image")
    scratch.weight = <float*>block
    scratch.gray = <int32_t*>(scratch.weight + 4 * w)
    scratch.offset = scratch.gray + w
    scratch.colsum = <uint16_t*>(scratch.offset + 2 * w)
    tmp = <uint8_t*>(scratch.colsum + 3 * w)
    fin = tmp + h * w * 3 + 64
    try:
        with nogil:
            for i in range(n):
                steps = 0
                for k in range(depth):
                    steps += ops[i, k] != FF_AUG_NONE
                a, sa = &src[i, 0, 0, 0], ss
                if steps == 0:
                    if converts:
                        ff_aug_convert(a, sa, out_base + i * out_image, ds, <int>h, <int>w,
                                       &sink)
                    else:
                        ff_aug_copy(a, sa, &out8[i, 0, 0, 0], ds, <int>h, <int>w)
                    continue
                done = 0
                for k in range(depth):
                    if ops[i, k] == FF_AUG_NONE:
                        continue
                    # ping-pong between the last image (out, or fin before the
                    # table) and tmp so that the last step lands in the last
                    if (steps - done) % 2 == 0:
                        b, sb = tmp, ts
                    elif converts:
                        b, sb = fin, ts
                    else:
                        b, sb = &out8[i, 0, 0, 0], ds
                    ff_aug_apply(ops[i, k], &params[i, k, 0], a, sa, b, sb, <int>h, <int>w,
                                 bilinear, fill_ptr, &scratch)
                    a, sa = b, sb
                    done += 1
                if converts:
                    ff_aug_convert(fin, ts, out_base + i * out_image, ds, <int>h, <int>w,
                                   &sink)
    finally:
        free(block)
    return n


def conversion_form(out_dtype, table, affine):
    """How ``augment_into`` would write a float out of *out_dtype* with *table* and
    *affine* on this CPU: 0 through the table, 1 as ``v * scale + bias``, 2 as
    ``(v - mean) / std`` (for tests and benchmarks)."""
    cdef ff_aug_sink sink
    _sink(&sink, np.empty(0, out_dtype), table, affine)
    return sink.form


def vector_level():
    """The vector forms this CPU runs: 0 none (the portable code), 1 AVX2 and F16C
    (brightness, the conversion after a policy), 2 also AVX-512 VBMI (the 256-entry
    tables of Contrast, AutoContrast and Equalize)."""
    return ff_aug_cpu()


def use_portable(bint on):
    """Run only the portable code (True), or the vector forms where the CPU has
    them (False, the default): for tests, which check that both give the same
    pixels. Not thread-safe; not for use while the kernels run."""
    ff_aug_set_portable(on)

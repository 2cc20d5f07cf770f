"""Pixels moved without arithmetic: label images resized by nearest neighbour,
and images spread into a padded batch's rows.

``crop_nearest_into`` crops, resizes and flips a label image into a caller's
buffer. For masks (class or instance ids, uint8 or uint16), which must never be
interpolated: each output pixel takes the value of the source pixel under its
centre. Output pixel ``(oy, ox)`` of an ``oh x ow`` output reads the window's
pixel ``(min(h - 1, floor((oy + 0.5) * h / oh)), min(w - 1, floor((ox + 0.5) * w / ow)))``,
computed in integers (``(2 * ox + 1) * w // (2 * ow)``), and, mirrored,
output column ``ox`` is the unmirrored column ``ow - 1 - ox``. That is the
pixel-centre rule the boxes follow too (``fastforward.pipeline.geometry``):
a source pixel lands in the output pixels whose centres map inside it.

Memory touched: reads the ``h x w`` window of ``src`` at ``(y0, x0)``, writes
every pixel of ``out`` (whose rows may be longer than ``ow``: a view of a
padded buffer), and a table of ``ow`` column indices on the heap. The GIL is
released for the whole copy.
"""

from libc.stdint cimport uint8_t, uint16_t
from libc.stdlib cimport free, malloc
from libc.string cimport memmove, memset

ctypedef fused label_t:
    uint8_t
    uint16_t


def crop_nearest_into(const label_t[:, ::1] src not None, Py_ssize_t y0, Py_ssize_t x0,
                      Py_ssize_t h, Py_ssize_t w, label_t[:, :] out not None,
                      bint flip=False):
    """Resize the ``h x w`` window of *src* at ``(y0, x0)`` into *out* by nearest
    neighbour; mirror it left-right if *flip*. Returns the pixels written.

    *src* and *out* are 2-D arrays of the same dtype (uint8 or uint16) whose
    rows are contiguous (*src* C-contiguous); *out* may be a view of a larger
    buffer.
    """
    cdef Py_ssize_t oh = out.shape[0], ow = out.shape[1], oy, ox, sy, sx
    cdef Py_ssize_t* columns
    cdef const label_t* row
    cdef label_t* dst
    if oh <= 0 or ow <= 0:
        raise ValueError(f"empty output: {oh}x{ow}")
    if out.strides[1] != sizeof(label_t):
        raise ValueError("out's rows must be contiguous")
    if h <= 0 or w <= 0:
        raise ValueError(f"empty crop: {h}x{w}")
    if y0 < 0 or x0 < 0 or y0 + h > src.shape[0] or x0 + w > src.shape[1]:
        raise ValueError(
            f"crop {h}x{w} at ({y0}, {x0}) exceeds the {src.shape[0]}x{src.shape[1]} mask")
    columns = <Py_ssize_t*>malloc(ow * sizeof(Py_ssize_t))
    if columns == NULL:
        raise MemoryError()
    with nogil:
        for ox in range(ow):
            sx = (2 * ox + 1) * w // (2 * ow)
            if sx > w - 1:
                sx = w - 1
            columns[ow - 1 - ox if flip else ox] = x0 + sx
        for oy in range(oh):
            sy = (2 * oy + 1) * h // (2 * oh)
            if sy > h - 1:
                sy = h - 1
            row = &src[y0 + sy, 0]
            dst = &out[oy, 0]
            for ox in range(ow):
                dst[ox] = row[columns[ox]]
    free(columns)
    return oh * ow


def spread_rows(uint8_t[::1] memory not None, Py_ssize_t rows, Py_ssize_t row_nbytes,
                Py_ssize_t stride, Py_ssize_t total_rows):
    """Spread *rows* rows of *row_nbytes* bytes, packed at the start of *memory*, to
    one every *stride* bytes, in place, and zero the rest of *total_rows* rows.

    Turns an image written contiguously (``oh x ow x c``) into the top-left
    corner of a padded one (``total_rows x (stride / (c * itemsize)) x c``),
    padding zeroed: rows move from the last to the first, so none is
    overwritten before it has moved. Returns the bytes of *memory* written.
    """
    cdef Py_ssize_t r
    cdef uint8_t* base = &memory[0] if memory.shape[0] else NULL
    if rows < 0 or row_nbytes < 0 or stride < row_nbytes or total_rows < rows:
        raise ValueError(f"cannot spread {rows} rows of {row_nbytes} bytes to a stride of "
                         f"{stride} over {total_rows} rows")
    # (divided, not multiplied: a product past 2**63 wrapped and passed the check)
    if stride and total_rows > memory.shape[0] // stride:
        raise ValueError(f"{total_rows} rows of {stride} bytes overrun the {memory.shape[0]} "
                         "bytes given")
    with nogil:
        for r in range(rows - 1, -1, -1):
            if r:
                memmove(base + r * stride, base + r * row_nbytes, row_nbytes)
            memset(base + r * stride + row_nbytes, 0, stride - row_nbytes)
        if total_rows > rows:
            memset(base + rows * stride, 0, (total_rows - rows) * stride)
    return total_rows * stride

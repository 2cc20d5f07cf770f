# The resize pass, as other kernels reach it without Python: its target (a
# batch of output images), its scratch (Workspace) and the pass itself, on a
# window of any image in memory. ``jpeg.pyx`` runs it on the rows it decodes,
# ``planes.pyx`` on images stored as arrays (uint8 or uint16, 1 to 16 channels).

from libc.stdint cimport int64_t, uint8_t, uint64_t


cdef enum:
    MAX_CHANNELS = 16
    MAX_SIDE = 65535    # the writers' limit (fields.rgb_image.MAX_SIDE): past it, damage
    # what a Target's images are
    KIND_U8 = 0
    KIND_F16 = 1
    KIND_F32 = 2
    KIND_U16 = 3


cdef struct Target:
    # images of ``oh x ow x c`` pixels, ``image_bytes`` apart, rows ``row_bytes`` apart
    int kind            # KIND_U8, KIND_F16, KIND_F32 or KIND_U16
    int source_item     # bytes per value of the images resized into it: 1 (uint8) or 2 (uint16)
    char* base          # first byte of image 0 (NULL when there are none)
    Py_ssize_t count    # images
    Py_ssize_t oh, ow, c
    Py_ssize_t row_bytes, image_bytes
    float mul[16]       # float outputs: value * mul[c] + add[c]
    float add[16]


cdef class Workspace:
    cdef char* memory
    cdef size_t capacity
    cdef char* reserve(self, size_t nbytes) except NULL


cdef int _target(Target* t, out, Py_ssize_t c, scale, bias, int source_item=*) except -1

cdef size_t _scratch_bytes(Py_ssize_t h, Py_ssize_t w, Py_ssize_t oh, Py_ssize_t ow,
                           Py_ssize_t c) noexcept nogil

cdef int _resize_into(const uint8_t* src, Py_ssize_t src_h, Py_ssize_t src_w,
                      Py_ssize_t src_stride, Py_ssize_t y0, Py_ssize_t x0, Py_ssize_t h,
                      Py_ssize_t w, const Target* t, Py_ssize_t k, bint flip,
                      char* scratch) except -1 nogil

cdef int _resize_span_into(const uint8_t* src, Py_ssize_t src_h, Py_ssize_t src_w,
                           Py_ssize_t src_stride, const double* spans, const Target* t,
                           char* scratch) except -1 nogil


cdef struct Progress:
    # where a range kernel notes the sample it is at (a worker process's shared cell,
    # read by the loader when the worker crashes or stalls): NULL, nowhere
    int64_t* cell
    const int64_t* samples  # the range's dataset indices


cdef int _progress(Progress* p, progress, samples, Py_ssize_t n) except -1

cdef str _oversized(int64_t height, int64_t width)


cdef inline void _at(const Progress* p, Py_ssize_t k) noexcept nogil:
    """Note that the kernel starts the range's sample *k*."""
    if p.cell != NULL:
        p.cell[0] = p.samples[k]


cdef inline void _done(const Progress* p) noexcept nogil:
    """Note that the kernel is past the range's samples."""
    if p.cell != NULL:
        p.cell[0] = -1


cdef inline bint _outside(uint64_t start, uint64_t size, uint64_t length) noexcept nogil:
    """Whether *size* bytes at *start* reach past *length* (without a sum that wraps)."""
    return start > length or size > length - start

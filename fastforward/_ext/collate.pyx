"""Gather variable-length records into the rows of a batch buffer.

Compiled because it runs once per batch per array/bytes field, over every
sample, and a Python loop of slice copies holds the GIL for all of it.

Memory touched: reads ``sizes[i]`` bytes at ``offsets[i]`` of ``src`` (a
memory map of the file, or a batch's prefetched bytes), writes every byte of
``out``'s first ``n`` rows: the record, then zeros to the end of the row, so
no stale bytes of an earlier batch can show through.
"""

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memset


def gather_into(const uint8_t[::1] src not None, const uint64_t[::1] offsets not None,
                const uint64_t[::1] sizes not None, uint8_t[:, ::1] out not None):
    """Copy record ``i`` (``sizes[i]`` bytes at ``offsets[i]``) into row ``i`` of *out*, zero-padded."""
    cdef Py_ssize_t n = offsets.shape[0], width = out.shape[1], i
    cdef uint64_t end = <uint64_t>src.shape[0]
    if sizes.shape[0] != n:
        raise ValueError(f"{n} offsets but {sizes.shape[0]} sizes")
    if n > out.shape[0]:
        raise ValueError(f"out has {out.shape[0]} rows, need {n}")
    for i in range(n):  # validate while holding the GIL ...
        if sizes[i] > <uint64_t>width:
            raise ValueError(f"record {i} has {sizes[i]} bytes, the row holds {width}")
        if offsets[i] > end or sizes[i] > end - offsets[i]:
            raise IndexError(f"record {i} ends past the end of the source")
    with nogil:  # ... then copy without it
        for i in range(n):
            if sizes[i]:
                memcpy(&out[i, 0], &src[offsets[i]], sizes[i])
            if sizes[i] < <uint64_t>width:
                memset(&out[i, sizes[i]], 0, width - sizes[i])
    return n

from ._typing import BufferLike

MISSING: int
CROSSES: int
APART: int
EXPECT_ANY: int
EXPECT_BYTES: int

def first_rows_into(owners: BufferLike, out: BufferLike) -> None:
    """Set ``out[s]`` to the first row of sample *s* in *owners* (sorted by offset)."""

def locate_payloads(table_ptrs: BufferLike, table_sizes: BufferLike, table_owners: BufferLike,
                    first_rows: BufferLike, k: int, ptrs: BufferLike, shift: int,
                    first_page: int, sizes: BufferLike, pages: BufferLike, flags: BufferLike,
                    expected: BufferLike | None = None,
                    rows: BufferLike | None = None) -> tuple[int, int]:
    """Locate and check one field's payloads; returns ``(flagged, searched)``.
    *expected*: each payload's size where known (``EXPECT_BYTES``: nonempty;
    ``EXPECT_ANY``), which picks among a sample's rows sharing the pointer.
    *rows*: out, each payload's row in the table (-1: none)."""

def scan_table(ptrs: BufferLike, sizes: BufferLike, owners: BufferLike, lo: int, hi: int,
               num_samples: int, empty_from: int = -1) -> tuple[int, int, bool]:
    """``(outside, stranger, in_order)`` of the allocation table's rows as stored
    (an empty one may also lie in ``[empty_from, lo)`` and at *hi*)."""

def find_overlaps(ptrs: BufferLike, sizes: BufferLike) -> tuple[int, int, int]:
    """``(count, a, b)``: allocations (sorted by offset) overlapping an earlier one."""

from typing_extensions import Buffer

MISSING: int
CROSSES: int
APART: int

def first_rows_into(owners: Buffer, out: Buffer) -> None:
    """Set ``out[s]`` to the first row of sample *s* in *owners* (sorted by offset)."""

def locate_payloads(table_ptrs: Buffer, table_sizes: Buffer, table_owners: Buffer,
                    first_rows: Buffer, k: int, ptrs: Buffer, shift: int, first_page: int,
                    sizes: Buffer, pages: Buffer, flags: Buffer
                    ) -> tuple[int, int]:
    """Locate and check one field's payloads; returns ``(flagged, searched)``."""

def scan_table(ptrs: Buffer, sizes: Buffer, owners: Buffer, lo: int, hi: int,
               num_samples: int) -> tuple[int, int, bool]:
    """``(outside, stranger, in_order)`` of the allocation table's rows as stored."""

def find_overlaps(ptrs: Buffer, sizes: Buffer) -> tuple[int, int, int]:
    """``(count, a, b)``: allocations (sorted by offset) overlapping an earlier one."""

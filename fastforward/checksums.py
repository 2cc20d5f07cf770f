"""Checksums of a .beton file: how fastforward stores them and checks them.

FFCV's format has no checksum. fastforward's writer (``checksums=True``, the
default) adds a block of them where FFCV never looks: after the last data page,
before the allocation table::

    D            data pages, page_size each
    B = D + K·page_size
                 page sums: K × <u8, xxh3_64 of each data page, all page_size bytes
    B + 8K       footer (FooterType, 64 B)
    alloc ptr    allocation table, to the end of the file (as in FFCV)

With no data pages (only Int/Float fields) the block follows the metadata.
No allocation points into the block, so FFCV 1.0.2 (which reads the table
from ``alloc_table_ptr`` to the end of the file, and pages only where
allocations point) reads the file as before; fastforward finds the footer in
the 64 bytes before ``alloc_table_ptr``.

The footer holds the sums of the header and field descriptors (the header as
finally written), of the metadata table, of the allocation table and of the
page-sum array, then a sum of the footer itself. The padding between the
metadata and the first page is zeros, which ``Reader.verify`` checks. A flipped
bit anywhere in the file therefore changes a sum or a zero, or makes the
layout inconsistent.

xxh3_64 (the ``xxhash`` wheel) is used because it is the fastest of the
candidates measured on the project's machines (see ``docs/integrity.md``);
it releases the GIL while it hashes a large buffer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

MAGIC = b"FFWDSUMS"
VERSION = 1
ALGORITHM_XXH3_64 = 1
ALGORITHMS = {ALGORITHM_XXH3_64: "xxh3_64"}

FooterType = np.dtype([
    ("magic", "S8"),
    ("version", "<u4"),
    ("algorithm", "<u4"),
    ("num_pages", "<u8"),
    ("head", "<u8"),  # header (24 B, as finally written) + field descriptors
    ("metadata", "<u8"),  # the metadata table
    ("alloc_table", "<u8"),  # the allocation table
    ("pages", "<u8"),  # the page-sum array
    ("footer", "<u8"),  # the footer's bytes before this one
])
FOOTER_SIZE = FooterType.itemsize
PAGE_SUM_TYPE = np.dtype("<u8")


def digest(data: Any) -> int:
    """The xxh3_64 of a buffer (bytes, memoryview, contiguous array)."""
    return int(xxhash.xxh3_64_intdigest(data))


def _near_magic(raw: bytes) -> bool:
    """Whether *raw* is the magic with at most 3 bits flipped (a damaged footer, not
    a file without one: a random 8-byte string is that close with odds ~1e-15)."""
    flipped = int.from_bytes(raw, "little") ^ int.from_bytes(MAGIC, "little")
    return flipped.bit_count() <= 3


class BlockError(Exception):
    """The checksum block is present but damaged (the reader names the file)."""


@dataclass(frozen=True)
class Checksums:
    """A file's stored sums, as read from its checksum block.

    Attributes:
        block_start: file offset of the page-sum array (the end of the data pages).
        footer: the footer row (FooterType).
        page_sums: one <u8 per data page, in page order.
    """

    block_start: int
    footer: np.void
    page_sums: np.ndarray

    @property
    def num_pages(self) -> int:
        return int(self.footer["num_pages"])

    @property
    def algorithm(self) -> str:
        return ALGORITHMS[int(self.footer["algorithm"])]


def locate(read_at: Callable[[int, int], bytes], alloc_table_ptr: int) -> Checksums | None:
    """Find and check the checksum block that ends at *alloc_table_ptr*.

    Args:
        read_at: ``read_at(offset, nbytes)`` returns the file's bytes there.
        alloc_table_ptr: where the allocation table starts.

    Returns:
        The sums, or None when there is no block (a file written by FFCV or
        with ``checksums=False``).

    Raises:
        BlockError: a block is there, but damaged.
    """
    if alloc_table_ptr < FOOTER_SIZE:
        return None
    raw = read_at(alloc_table_ptr - FOOTER_SIZE, FOOTER_SIZE)
    if len(raw) != FOOTER_SIZE or not _near_magic(raw[:8]):
        return None
    footer = np.frombuffer(raw, FooterType)[0]
    if digest(raw[: FOOTER_SIZE - 8]) != int(footer["footer"]):
        raise BlockError("the checksum block's footer is damaged (its own sum does not match)")
    if int(footer["version"]) != VERSION or int(footer["algorithm"]) not in ALGORITHMS:
        raise BlockError(f"checksum block version {int(footer['version'])}, algorithm "
                         f"{int(footer['algorithm'])}: written by a newer fastforward?")
    num_pages = int(footer["num_pages"])
    block_start = alloc_table_ptr - FOOTER_SIZE - num_pages * PAGE_SUM_TYPE.itemsize
    if block_start < 0:
        raise BlockError(f"the checksum block declares {num_pages} pages, more than the "
                         "file can hold")
    sums = np.frombuffer(read_at(block_start, num_pages * PAGE_SUM_TYPE.itemsize), PAGE_SUM_TYPE)
    if digest(sums) != int(footer["pages"]):
        raise BlockError("the checksum block's page sums are damaged (their sum does not "
                         "match)")
    return Checksums(block_start, footer, sums)


def build_block(head: bytes, metadata: np.ndarray, alloc_table: np.ndarray,
                page_sums: list[int]) -> bytes:
    """The checksum block's bytes: page sums, then the footer.

    Args:
        head: the header as it will finally be written, then the field descriptors.
        metadata: the metadata table.
        alloc_table: the allocation table.
        page_sums: each data page's sum, in page order.
    """
    sums = np.asarray(page_sums, PAGE_SUM_TYPE)
    footer = np.zeros(1, FooterType)
    footer["magic"] = MAGIC
    footer["version"] = VERSION
    footer["algorithm"] = ALGORITHM_XXH3_64
    footer["num_pages"] = len(sums)
    footer["head"] = digest(head)
    footer["metadata"] = digest(np.ascontiguousarray(metadata))
    footer["alloc_table"] = digest(np.ascontiguousarray(alloc_table))
    footer["pages"] = digest(sums)
    footer["footer"] = digest(footer.tobytes()[: FOOTER_SIZE - 8])
    return sums.tobytes() + footer.tobytes()


def block_size(num_pages: int) -> int:
    """The bytes a checksum block of *num_pages* pages takes."""
    return num_pages * PAGE_SUM_TYPE.itemsize + FOOTER_SIZE


class PageHasher:
    """The running sum of the page being written (the writer feeds it every byte)."""

    def __init__(self) -> None:
        self._state = xxhash.xxh3_64()
        self.sums: list[int] = []

    def update(self, data: Any) -> None:
        self._state.update(data)

    def finish_page(self) -> None:
        self.sums.append(int(self._state.intdigest()))
        self._state.reset()


UNCHECKED, CHECKING, GOOD, BAD = 0, 1, 2, 3


class PageChecks:
    """Which data pages have been checked against their sums, in this process.

    Thread-safe: any thread may call ``ensure``; a page is hashed once, by the
    first thread that needs it, and the others wait for its verdict. Cheap when
    the pages are already checked (one vectorised look-up, no lock).
    """

    def __init__(self, sums: np.ndarray) -> None:
        self.sums = sums
        self.state = np.zeros(len(sums), np.uint8)
        self._cond = threading.Condition()

    def ensure(self, pages: np.ndarray, read_page: Callable[[int], Any]) -> np.ndarray:
        """Check the pages (indices from 0, the first data page) not yet checked.

        Args:
            pages: page indices, repeats allowed.
            read_page: ``read_page(k)`` returns page *k*'s bytes (a buffer).

        Returns:
            The pages among *pages* that failed their check (empty when all are good).
        """
        pages = np.asarray(pages, np.int64)
        if pages.size == 0 or bool((self.state[pages] == GOOD).all()):
            return pages[:0]
        pages = np.unique(pages)
        while True:
            with self._cond:
                state = self.state[pages]
                mine = pages[state == UNCHECKED]
                if mine.size == 0:
                    if not bool((state == CHECKING).any()):
                        return pages[state == BAD]
                    self._cond.wait()  # another thread is hashing some of them
                    continue
                self.state[mine] = CHECKING
            verdicts = np.full(len(mine), UNCHECKED, np.uint8)
            try:
                for j, page in enumerate(mine.tolist()):
                    good = digest(read_page(page)) == int(self.sums[page])
                    verdicts[j] = GOOD if good else BAD
            finally:  # after an exception, what was not hashed goes back unchecked
                with self._cond:
                    self.state[mine] = verdicts
                    self._cond.notify_all()

__all__ = ["FOOTER_SIZE", "MAGIC", "BlockError", "Checksums", "FooterType", "PageChecks",
           "PageHasher", "block_size", "build_block", "digest", "locate"]

# cython: language_level=3
"""The reader's per-sample checks of one field's payload pointers, in one pass.

``locate_payloads`` finds each sample's allocation in the allocation table
(sorted by offset; rows of one offset in table order) and checks its page:

- the allocation must start at the pointer and belong to the sample (FFCV may
  store a zero-length payload at the next one's offset: the owner decides);
- the payload (at least one byte) must end in the page it starts in;
- it must lie in the same page as the sample's earlier payloads.

Both writers put a sample's payloads back to back, in field order, so the
allocation of the *k*-th pointer field of sample *s* is usually row
``first_rows[s] + k``: that row is tried first (a load, no search), then a
binary search. The GIL is released; the NumPy reference is
``tests/reference.py``'s ``locate_payloads``.
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t

cdef enum:
    FLAG_MISSING = 1  # no allocation of this sample starts at the pointer
    FLAG_CROSSES = 2  # the payload ends in another page
    FLAG_APART = 4  # the payload lies in another page than the sample's others

MISSING = FLAG_MISSING
CROSSES = FLAG_CROSSES
APART = FLAG_APART

cdef uint64_t EXPECT_ANY_ = 0xFFFFFFFFFFFFFFFF
cdef uint64_t EXPECT_BYTES_ = 0xFFFFFFFFFFFFFFFE
EXPECT_ANY = EXPECT_ANY_  # a payload of any size
EXPECT_BYTES = EXPECT_BYTES_  # a payload of at least one byte


cdef inline Py_ssize_t _lower_bound(const uint64_t[::1] a, uint64_t x) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = a.shape[0], mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def first_rows_into(const uint64_t[::1] owners not None, int64_t[::1] out not None):
    """Set ``out[s]`` to the first row of sample *s* in *owners* (the table's
    ``sample_id`` column, sorted by offset); samples not found keep their value.
    Owners at or past ``len(out)`` are ignored."""
    cdef Py_ssize_t i, m = owners.shape[0], n = out.shape[0]
    cdef uint64_t owner
    with nogil:
        for i in range(m - 1, -1, -1):  # backwards: the first row wins
            owner = owners[i]
            if owner < <uint64_t>n and (i == 0 or owners[i - 1] != owner):
                out[owner] = i


cdef enum:
    RANK_SCAN = 4096  # rows counted to rank a sample's rows at a pointer, at most


cdef inline Py_ssize_t _own_row(const uint64_t[::1] table_ptrs,
                                const uint64_t[::1] table_owners, int64_t first,
                                int64_t k, uint64_t ptr, uint64_t s) noexcept nogil:
    """Sample *s*'s row at *ptr* (-1: none): its *k*-th row in the table where that
    is at *ptr*, else the first of its rows there. Its rows need not be next to each
    other (another sample's empty payload may share the offset). Ranking them counts
    the sample's rows from *first*, its first row, and past its first at *ptr*: each
    count stops after ``RANK_SCAN`` rows (a crafted table), taking the first at
    *ptr*, so that it adds at most that to the search for it."""
    cdef Py_ssize_t m = table_ptrs.shape[0], j, found = -1
    cdef Py_ssize_t r
    cdef int64_t rank = 0
    if first < 0:  # no row of its own
        return -1
    # its rows at ptr are at or past both the first row at ptr and its own first row
    j = _lower_bound(table_ptrs, ptr)
    if j < first:
        j = first
    while j < m and table_ptrs[j] == ptr:  # its first row at ptr
        if table_owners[j] == s:
            found = j
            break
        j += 1
    if found < 0 or found - first > RANK_SCAN:
        return found
    for r in range(first, found):  # its rows before: found's rank among them
        if table_owners[r] == s:
            rank += 1
    if rank >= k:  # found is its k-th, or its k-th lies before, at another offset
        return found
    r = found + 1
    while r < m and table_ptrs[r] == ptr and r - found <= RANK_SCAN:
        if table_owners[r] == s:
            rank += 1
            if rank == k:
                return r
        r += 1
    return found


cdef inline bint _all_owned(const uint64_t[::1] table_owners, Py_ssize_t first,
                            Py_ssize_t last, uint64_t s) noexcept nogil:
    """Whether rows *first* to *last* are all sample *s*'s (then *last* is its
    ``last - first``-th row)."""
    cdef Py_ssize_t r
    for r in range(first, last + 1):
        if table_owners[r] != s:
            return False
    return True


cdef inline bint _fits(uint64_t size, uint64_t want) noexcept nogil:
    if want == EXPECT_ANY_:
        return True
    if want == EXPECT_BYTES_:
        return size > 0
    return size == want


def locate_payloads(const uint64_t[::1] table_ptrs not None,
                    const uint64_t[::1] table_sizes not None,
                    const uint64_t[::1] table_owners not None,
                    const int64_t[::1] first_rows not None, int64_t k,
                    const uint64_t[::1] ptrs not None, int shift, int64_t first_page,
                    uint64_t[::1] sizes not None, int64_t[::1] pages not None,
                    uint8_t[::1] flags not None, const uint64_t[::1] expected=None,
                    int64_t[::1] rows=None):
    """Locate and check one field's payloads, sample by sample.

    Args:
        table_ptrs, table_sizes, table_owners: the allocation table sorted by offset.
        first_rows: each sample's first row there (-1: none).
        k: the field's position among the fields with payload pointers.
        ptrs: the field's pointer of each sample.
        shift: log2 of the page size.
        first_page: the page number of the first data page.
        sizes: out: each payload's size (0: none).
        pages: in/out: each sample's data page (from 0; -1: none seen yet).
        flags: out: ``MISSING | CROSSES | APART`` per sample.
        expected: each payload's size where the field knows it (``EXPECT_BYTES``:
            at least one byte; ``EXPECT_ANY``: unknown), or None. Where a sample
            has several allocations at the pointer (empty ones share the next
            one's offset) and the row found is not of that size, the first of
            them that is wins: a custom field's allocations, which are no
            pointer field's, put the guess on another field's row.
        rows: out, or None: each payload's row in the table (-1: none). Where
            a sample's rows share the pointer (FFCV gives an empty payload the
            next one's offset), the field's own is the one in its place among
            the sample's rows (its *k*-th, ``first_rows[s] + k`` where no other
            sample's row is between them), not the first.

    Returns:
        ``(flagged, searched)``: how many samples have a flag, and how many
        rows were not where ``first_rows`` put them.
    """
    cdef Py_ssize_t n = ptrs.shape[0], m = table_ptrs.shape[0], s, row, j
    cdef int64_t guess, page, last, flagged = 0, searched = 0
    cdef uint64_t ptr, size, end
    cdef uint8_t flag
    if not (first_rows.shape[0] == sizes.shape[0] == pages.shape[0]
            == flags.shape[0] == n) or not (table_sizes.shape[0] == table_owners.shape[0]
                                          == m) or (expected is not None
                                                    and expected.shape[0] != n) \
            or (rows is not None and rows.shape[0] != n):
        raise ValueError("locate_payloads: arrays of different lengths")
    cdef bint sized = expected is not None, keep = rows is not None
    with nogil:
        for s in range(n):
            ptr = ptrs[s]
            row = -1
            guess = first_rows[s] + k
            if first_rows[s] >= 0 and guess < m and table_ptrs[guess] == ptr \
                    and _all_owned(table_owners, first_rows[s], guess, <uint64_t>s):
                row = guess
            else:
                searched += 1
                row = _own_row(table_ptrs, table_owners, first_rows[s], k, ptr, <uint64_t>s)
            if sized and row >= 0 and not _fits(table_sizes[row], expected[s]):
                j = _lower_bound(table_ptrs, ptr)  # another of its rows at that offset
                while j < m and table_ptrs[j] == ptr:
                    if table_owners[j] == <uint64_t>s and _fits(table_sizes[j], expected[s]):
                        if j != row:
                            searched += 1
                        row = j
                        break
                    j += 1
            if keep:
                rows[s] = row
            if row < 0:
                sizes[s] = 0
                flags[s] = FLAG_MISSING
                flagged += 1
                continue
            size = table_sizes[row]
            sizes[s] = size
            if size == 0:  # nothing to read, wherever it points (FFCV may put an empty
                flags[s] = 0  # payload at the end of a full page: the next page's start)
                continue
            end = ptr + size - 1
            page = <int64_t>(ptr >> shift) - first_page
            last = <int64_t>(end >> shift) - first_page
            flag = 0
            if end < ptr or page != last:
                flag = FLAG_CROSSES
            elif pages[s] < 0:
                pages[s] = page
            elif pages[s] != page:
                flag = FLAG_APART
            flags[s] = flag
            flagged += flag != 0
    return flagged, searched


def scan_table(const uint64_t[:] ptrs not None, const uint64_t[:] sizes not None,
               const uint64_t[:] owners not None, uint64_t lo, uint64_t hi,
               uint64_t num_samples, int64_t empty_from=-1):
    """Check the allocation table's rows as stored, in one pass.

    Returns:
        ``(outside, stranger, in_order)``: the first row with bytes not all
        within ``[lo, hi)``, or empty and not within ``[empty_from, hi]``
        (*empty_from* -1: *lo*) (-1: none), the first row naming a sample at or past
        *num_samples* (-1: none), and whether the rows are sorted by offset.
    """
    cdef Py_ssize_t i, m = ptrs.shape[0]
    cdef Py_ssize_t outside = -1, stranger = -1
    cdef bint in_order = True, bad
    cdef uint64_t ptr, end
    cdef uint64_t empty_lo = lo if empty_from < 0 else <uint64_t>empty_from
    if not sizes.shape[0] == owners.shape[0] == m:
        raise ValueError("scan_table: columns of different lengths")
    with nogil:
        for i in range(m):
            ptr = ptrs[i]
            end = ptr + sizes[i]
            if outside < 0:
                if sizes[i] == 0:  # no bytes, but FFCV points its first empty one, where
                    # no page exists yet, a page before the data (0 in a small file)
                    bad = ptr < empty_lo or ptr > hi
                else:
                    bad = ptr < lo or end > hi or end < ptr
                if bad:
                    outside = i
            if stranger < 0 and owners[i] >= num_samples:
                stranger = i
            if i and ptr < ptrs[i - 1]:
                in_order = False
    return outside, stranger, in_order


def find_overlaps(const uint64_t[::1] ptrs not None, const uint64_t[::1] sizes not None):
    """Count the allocations (sorted by offset) that start before an earlier one
    ends; empty ones never overlap (FFCV may put one at the next one's offset).

    Returns:
        ``(count, a, b)``: the first overlapping pair's rows (-1, -1: none).
    """
    cdef Py_ssize_t i, m = ptrs.shape[0], last = -1, a = -1, b = -1
    cdef int64_t count = 0
    cdef uint64_t end = 0
    if sizes.shape[0] != m:
        raise ValueError("find_overlaps: columns of different lengths")
    with nogil:
        for i in range(m):
            if sizes[i] == 0:
                continue
            if last >= 0 and ptrs[i] < end:
                count += 1
                if a < 0:
                    a, b = last, i
            if last < 0 or ptrs[i] + sizes[i] > end:
                end = ptrs[i] + sizes[i]
                last = i
    return count, a, b

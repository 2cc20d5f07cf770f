"""fastforward._ext.layout against the NumPy references in tests/reference.py."""

from __future__ import annotations

import numpy as np
import pytest
import reference

from fastforward._ext.layout import (
    EXPECT_ANY,
    EXPECT_BYTES,
    find_overlaps,
    first_rows_into,
    locate_payloads,
    scan_table,
)

SHIFT = 12  # 4 KiB pages keep the tables small


def table(seed: int, n: int, fields: int, shuffled_ties: bool = False
          ) -> tuple[np.ndarray, ...]:
    """A table as a writer makes it (each sample's payloads back to back, in field
    order, in one page), sorted by offset, and the pointers of each field. With
    *shuffled_ties*, rows at one offset come in any order (FFCV's workers append to
    the table in turn): a sample's rows there may be apart, another sample's empty
    payload between them."""
    rng = np.random.default_rng(seed)
    ptrs, sizes, owners = [], [], []
    pointer = np.zeros((fields, n), np.uint64)
    cursor = 1 << SHIFT
    for s in rng.permutation(n):  # pages in another order than the samples (FFCV)
        need = rng.integers(0, 300, fields)
        need[rng.random(fields) < 0.25] = 0  # empty payloads, sharing the next one's offset
        # FFCV fills a page to its last byte: an empty payload after it points at
        # the next page's first byte
        if (cursor % (1 << SHIFT)) + int(need.sum()) > 1 << SHIFT:
            cursor = (cursor >> SHIFT) + 1 << SHIFT
        for k in range(fields):
            ptrs.append(cursor)
            sizes.append(int(need[k]))
            owners.append(int(s))
            pointer[k, s] = cursor
            cursor += int(need[k])  # FFCV: an empty payload at the next one's offset
    order = np.argsort(np.asarray(ptrs, np.uint64), kind="stable")
    if shuffled_ties:
        order = np.lexsort((rng.random(len(ptrs)), np.asarray(ptrs, np.uint64)))
    return (np.asarray(ptrs, np.uint64)[order], np.asarray(sizes, np.uint64)[order],
            np.asarray(owners, np.uint64)[order], pointer)


def damage(pointer: np.ndarray, sizes: np.ndarray, seed: int) -> None:
    """Pointers moved, into other samples' payloads or nowhere; sizes grown."""
    rng = np.random.default_rng(seed)
    fields, n = pointer.shape
    for _ in range(max(1, n // 10)):
        k, s = int(rng.integers(fields)), int(rng.integers(n))
        pointer[k, s] = pointer[int(rng.integers(fields)), int(rng.integers(n))] + np.uint64(
            rng.integers(0, 2))
    sizes[rng.integers(0, len(sizes), max(1, n // 20))] += np.uint64(1 << SHIFT)


@pytest.mark.parametrize("ties", [False, True], ids=["in-order", "shuffled-ties"])
@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "damaged"])
@pytest.mark.parametrize(("n", "fields"), [(1, 1), (40, 1), (200, 3), (7, 5), (300, 6)],
                         ids=lambda v: str(v))
def test_locate_payloads_matches_reference(n: int, fields: int, damaged: bool,
                                           ties: bool) -> None:
    """With shuffled ties, a sample's rows at one offset may have another sample's
    between them: the field's own is still its k-th (the first of them was taken)."""
    ptrs, sizes, owners, pointer = table(n * 31 + fields, n, fields, ties)
    if damaged:
        damage(pointer, sizes, n)
    first = np.full(n, -1, np.int64)
    first_rows_into(owners, first)
    pages = np.full(n, -1, np.int64)
    expected_pages = pages.copy()
    searched_total = 0
    for k in range(fields):
        want_sizes, expected_pages, want_flags, want_rows = reference.locate_payloads(
            ptrs, sizes, owners, k, pointer[k], SHIFT, 1, expected_pages)
        got_sizes = np.empty(n, np.uint64)
        flags = np.empty(n, np.uint8)
        rows = np.empty(n, np.int64)
        flagged, searched = locate_payloads(ptrs, sizes, owners, first, k,
                                            np.ascontiguousarray(pointer[k]), SHIFT, 1,
                                            got_sizes, pages, flags, None, rows)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(got_sizes, want_sizes)
        np.testing.assert_array_equal(flags, want_flags)
        np.testing.assert_array_equal(pages, expected_pages)
        assert flagged == np.count_nonzero(want_flags)
        searched_total += searched
    if not damaged:
        assert not np.any(flags)


def test_an_empty_payload_at_a_full_pages_end_belongs_to_no_page() -> None:
    """FFCV 1.0.2 writes a sample that fills its page, then an empty payload whose
    pointer is the next page's first byte: that sample's payloads do not span two
    pages (the file was refused)."""
    page = 1 << SHIFT
    ptrs = np.array([page, 2 * page], np.uint64)
    sizes = np.array([page, 0], np.uint64)
    owners = np.zeros(2, np.uint64)
    first = np.full(1, -1, np.int64)
    first_rows_into(owners, first)
    pages = np.full(1, -1, np.int64)
    for k in range(2):
        flags = np.empty(1, np.uint8)
        got_sizes = np.empty(1, np.uint64)
        locate_payloads(ptrs, sizes, owners, first, k, ptrs[k : k + 1].copy(), SHIFT, 1,
                        got_sizes, pages, flags)
        assert flags.tolist() == [0]
        assert got_sizes.tolist() == [sizes[k]]
    assert pages.tolist() == [0]


def test_first_rows_matches_a_search_per_sample() -> None:
    """``first_rows_into`` against ``np.flatnonzero`` per sample: runs of a sample's
    rows, samples apart and interleaved, owners past ``out`` (ignored), samples
    with no row (their value kept)."""
    rng = np.random.default_rng(7)
    for case in range(300):
        n = int(rng.integers(1, 30))
        runs = rng.integers(0, n + 3, int(rng.integers(0, 40)))  # n.. : past out
        owners = np.repeat(runs, rng.integers(1, 4, len(runs))).astype(np.uint64)
        if case % 2:
            owners = rng.permutation(owners)
        before = rng.integers(-5, 5, n)
        out = before.copy()
        first_rows_into(owners, out)
        expected = before.copy()
        for s in range(n):
            rows = np.flatnonzero(owners == s)
            if len(rows):
                expected[s] = rows[0]
        np.testing.assert_array_equal(out, expected)


def test_locate_payloads_guesses_without_searching() -> None:
    # no empty payloads (FFCV's would share an offset): every row is where guessed
    ptrs, sizes, owners, pointer = table(5, 100, 3)
    keep = sizes > 0
    assert not keep.all()
    sizes[~keep] = 1  # now no two allocations share an offset
    ptrs, owners = ptrs.copy(), owners.copy()
    starts = np.cumsum(np.concatenate(([0], sizes[:-1].astype(np.int64))))
    ptrs[:] = (1 << SHIFT) * 50 + starts  # one big page, back to back
    for k in range(3):
        pointer[k] = 0
    for row, (s, p) in enumerate(zip(owners.tolist(), ptrs.tolist(), strict=True)):
        k = row - int(np.flatnonzero(owners == s)[0])
        pointer[k, s] = p
    first = np.full(100, -1, np.int64)
    first_rows_into(owners, first)
    pages = np.full(100, -1, np.int64)
    for k in range(3):
        flagged, searched = locate_payloads(
            ptrs, sizes, owners, first, k, np.ascontiguousarray(pointer[k]), 30, 0,
            np.empty(100, np.uint64), pages, np.empty(100, np.uint8))
        assert (flagged, searched) == (0, 0)


def test_first_rows_into() -> None:
    owners = np.array([3, 3, 0, 5, 0, 1, 9], np.uint64)
    out = np.full(7, -1, np.int64)
    first_rows_into(owners, out)
    assert out.tolist() == [2, 5, -1, 0, -1, 3, -1]  # 9 is past the end: ignored


@pytest.mark.parametrize("seed", range(6))
def test_scan_table_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(0, 50))
    ptrs = rng.integers(0, 1000, m).astype(np.uint64)
    if seed % 2:
        ptrs.sort()
    sizes = rng.integers(0, 100, m).astype(np.uint64)
    if m and seed == 3:
        sizes[m // 2] = np.uint64((1 << 64) - 5)  # wraps around
    owners = rng.integers(0, 12, m).astype(np.uint64)
    table = np.zeros(m, [("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
    table["ptr"], table["size"], table["sample_id"] = ptrs, sizes, owners
    got = scan_table(table["ptr"], table["size"], table["sample_id"], 50, 1050, 10)
    assert got == reference.scan_table(ptrs, sizes, owners, 50, 1050, 10)
    got = scan_table(table["ptr"], table["size"], table["sample_id"], 50, 1050, 10, 20)
    assert got == reference.scan_table(ptrs, sizes, owners, 50, 1050, 10, 20)


@pytest.mark.parametrize("seed", range(8))
def test_find_overlaps_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(0, 40))
    sizes = rng.integers(0, 20, m).astype(np.uint64)
    ptrs = np.cumsum(sizes).astype(np.uint64) - sizes  # back to back
    if m > 3 and seed % 2:
        sizes[rng.integers(0, m, 2)] += np.uint64(rng.integers(1, 60))
    got = find_overlaps(ptrs, sizes)
    want = reference.find_overlaps(ptrs, sizes)
    assert got == want
    if m > 3 and not seed % 2:
        assert got == (0, -1, -1)


@pytest.mark.parametrize(("want", "size"), [(None, 0), (EXPECT_ANY, 0), (EXPECT_BYTES, 3),
                                            (3, 3), (0, 0), (5, 0)])
def test_expected_sizes_pick_among_a_samples_rows_at_one_offset(want: int | None,
                                                               size: int) -> None:
    """An empty custom payload, then a pointer field's 3 bytes at the same offset
    (FFCV's layout): the guess (row first_rows + 0) is the custom field's; the
    size the field expects picks its own (none that fits: the row found)."""
    page = 1 << SHIFT
    ptrs = np.array([page, page], np.uint64)
    sizes = np.array([0, 3], np.uint64)
    owners = np.zeros(2, np.uint64)
    first = np.full(1, -1, np.int64)
    first_rows_into(owners, first)
    got, pages, flags = np.empty(1, np.uint64), np.full(1, -1, np.int64), np.empty(1, np.uint8)
    expected = None if want is None else np.array([want], np.uint64)
    locate_payloads(ptrs, sizes, owners, first, 0, ptrs[:1].copy(), SHIFT, 1, got, pages,
                    flags, expected)
    assert got.tolist() == [size]
    assert flags.tolist() == [0]
    assert pages.tolist() == [0 if size else -1]

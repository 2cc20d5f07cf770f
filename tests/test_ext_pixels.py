"""fastforward._ext.pixels against its NumPy references (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
from reference import crop_nearest

from fastforward._ext.pixels import crop_nearest_into, spread_rows

CASES = [  # (src h, w), window (y0, x0, h, w), output (oh, ow)
    ((40, 50), (0, 0, 40, 50), (40, 50)),  # identity
    ((40, 50), (3, 7, 20, 30), (64, 96)),  # enlarging
    ((97, 131), (5, 9, 80, 111), (17, 23)),  # shrinking by odd factors
    ((30, 30), (0, 0, 30, 30), (1, 1)),  # to a single pixel
    ((1, 1), (0, 0, 1, 1), (5, 7)),  # from a single pixel
    ((64, 48), (10, 0, 33, 48), (33, 47)),  # one column fewer
]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
@pytest.mark.parametrize("flip", [False, True], ids=["plain", "flip"])
@pytest.mark.parametrize(("shape", "window", "out"), CASES,
                         ids=[f"{s[0]}x{s[1]}-{o[0]}x{o[1]}" for s, _, o in CASES])
def test_crop_nearest_matches_reference(shape, window, out, flip, dtype) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(sum(shape) + sum(out))
    src = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    got = np.full(out, 7, dtype)
    assert crop_nearest_into(src, *window, got, flip) == out[0] * out[1]
    np.testing.assert_array_equal(got, crop_nearest(src, *window, *out, flip))


def test_crop_nearest_writes_into_a_view_of_a_padded_buffer() -> None:
    src = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)
    padded = np.full((20, 20), 9, np.uint16)
    crop_nearest_into(src, 2, 1, 8, 6, padded[:16, :11], True)
    np.testing.assert_array_equal(padded[:16, :11], crop_nearest(src, 2, 1, 8, 6, 16, 11, True))
    assert (padded[16:] == 9).all()
    assert (padded[:, 11:] == 9).all()


@pytest.mark.parametrize(("window", "message"), [
    ((0, 0, 0, 5), "empty crop"),
    ((5, 0, 8, 5), "exceeds"),
    ((0, -1, 3, 3), "exceeds"),
])
def test_crop_nearest_refuses_bad_windows(window, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        crop_nearest_into(np.zeros((10, 10), np.uint8), *window, np.zeros((4, 4), np.uint8))


def test_crop_nearest_refuses_mixed_dtypes() -> None:
    with pytest.raises((TypeError, ValueError)):
        crop_nearest_into(np.zeros((4, 4), np.uint8), 0, 0, 4, 4, np.zeros((4, 4), np.uint16))


@pytest.mark.parametrize(("rows", "row_nbytes", "stride", "total"), [
    (5, 12, 30, 8), (1, 3, 3, 1), (7, 21, 21, 7), (3, 6, 9, 3), (0, 4, 8, 2)])
def test_spread_rows_matches_reference(rows: int, row_nbytes: int, stride: int,
                                       total: int) -> None:
    rng = np.random.default_rng(rows * 100 + stride)
    packed = rng.integers(1, 255, rows * row_nbytes, dtype=np.uint8)
    memory = rng.integers(1, 255, total * stride + 5, dtype=np.uint8)  # stale bytes everywhere
    memory[: packed.size] = packed
    tail = memory[total * stride :].copy()
    spread_rows(memory, rows, row_nbytes, stride, total)
    want = np.zeros((total, stride), np.uint8)
    want[:rows, :row_nbytes] = packed.reshape(rows, row_nbytes)
    np.testing.assert_array_equal(memory[: total * stride].reshape(total, stride), want)
    np.testing.assert_array_equal(memory[total * stride :], tail)  # nothing past the rows


@pytest.mark.parametrize(("rows", "row_nbytes", "stride", "total"), [
    (0, 0, 2**62, 2), (8, 1, 2**61 + 1, 8), (1, 1, 2, 2**62 + 1)])
def test_spread_rows_refuses_an_overrun_whose_size_overflows(rows: int, row_nbytes: int,
                                                              stride: int, total: int) -> None:
    """total_rows * stride past 2**63 wrapped: a crash, or a partial write said to be
    whole."""
    memory = np.full(64, 7, np.uint8)
    with pytest.raises(ValueError, match="overrun the 64 bytes given"):
        spread_rows(memory, rows, row_nbytes, stride, total)
    assert (memory == 7).all()
    assert spread_rows(np.zeros(0, np.uint8), 0, 0, 0, 5) == 0


def test_spread_rows_refuses_an_overrun() -> None:
    with pytest.raises(ValueError, match="overrun"):
        spread_rows(np.zeros(10, np.uint8), 2, 3, 5, 3)
    with pytest.raises(ValueError, match="cannot spread"):
        spread_rows(np.zeros(100, np.uint8), 2, 6, 5, 3)

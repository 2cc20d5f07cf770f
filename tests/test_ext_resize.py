"""crop_resize_into against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from reference import crop_resize

from fastforward._ext.resize import crop_resize_into

CASES = {
    "identity": ((0, 0, 40, 60), (40, 60)),
    "halve": ((0, 0, 40, 60), (20, 30)),
    "area-non-integer": ((3, 5, 37, 51), (16, 23)),
    "shrink-a-lot": ((0, 0, 40, 60), (3, 2)),
    "enlarge": ((10, 10, 9, 13), (31, 40)),
    "enlarge-one-axis": ((0, 0, 20, 60), (45, 30)),
    "one-pixel": ((7, 9, 1, 1), (5, 4)),
    "to-one-pixel": ((0, 0, 40, 60), (1, 1)),
    "corner": ((30, 50, 10, 10), (7, 7)),
}


@pytest.fixture(scope="module")
def source(photos: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(photos[1][100:140, 200:260])


@pytest.mark.parametrize("flip", [False, True], ids=["noflip", "flip"])
@pytest.mark.parametrize(("crop", "size"), CASES.values(), ids=CASES.keys())
def test_matches_reference(source: np.ndarray, crop: tuple[int, int, int, int],
                           size: tuple[int, int], flip: bool) -> None:
    out = np.full((*size, 3), 77, np.uint8)
    crop_resize_into(source, *crop, out, flip)
    expected = crop_resize(source, *crop, *size, flip=flip)
    # float32 against float64: at most one level off where a value sits on .5
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert np.mean(out != expected) < 0.01


def test_identity_is_exact(source: np.ndarray) -> None:
    out = np.empty_like(source)
    crop_resize_into(source, 0, 0, *source.shape[:2], out)
    np.testing.assert_array_equal(out, source)


def test_flip_is_exact_mirror(source: np.ndarray) -> None:
    out = np.empty_like(source)
    crop_resize_into(source, 0, 0, *source.shape[:2], out, True)
    np.testing.assert_array_equal(out, source[:, ::-1])


def test_constant_image_stays_constant() -> None:
    src = np.full((33, 47, 3), (12, 200, 255), np.uint8)
    out = np.empty((10, 13, 3), np.uint8)
    crop_resize_into(src, 0, 0, 33, 47, out)
    assert (out == (12, 200, 255)).all()


@pytest.mark.parametrize("channels", [1, 4])
def test_other_channel_counts(channels: int) -> None:
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (21, 34, channels), dtype=np.uint8)
    out = np.empty((8, 9, channels), np.uint8)
    crop_resize_into(src, 1, 2, 19, 30, out)
    assert np.abs(out.astype(int) - crop_resize(src, 1, 2, 19, 30, 8, 9)).max() <= 1


def test_writes_into_a_strided_batch_slot(source: np.ndarray) -> None:
    batch = np.zeros((3, 12, 15, 3), np.uint8)
    crop_resize_into(source, 0, 0, 40, 60, batch[1])
    assert batch[0].max() == 0
    assert batch[2].max() == 0
    assert np.abs(batch[1].astype(int) - crop_resize(source, 0, 0, 40, 60, 12, 15)).max() <= 1


@pytest.mark.parametrize(
    ("crop", "message"),
    [((0, 0, 41, 60), "exceeds"), ((-1, 0, 10, 10), "exceeds"), ((0, 0, 0, 10), "empty")],
    ids=["too-tall", "negative", "empty"],
)
def test_rejects_bad_windows(source: np.ndarray, crop: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        crop_resize_into(source, *crop, np.empty((4, 4, 3), np.uint8))


def test_rejects_channel_mismatch(source: np.ndarray) -> None:
    with pytest.raises(ValueError, match="channels"):
        crop_resize_into(source, 0, 0, 10, 10, np.empty((4, 4, 1), np.uint8))

"""crop_resize_into on many-channel (1 to 16) and 16-bit images, against the NumPy references.

Every output is checked exactly against ``reference.crop_resize_exact`` (the
kernel's own steps in NumPy: the integer path for uint8 where the kernel takes
it, float32 otherwise) and within one level of the float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from bands import bands
from reference import crop_resize, crop_resize_exact, crop_resize_float32, round_pixels

from fastforward._ext.resize import Workspace, crop_resize_into, set_simd

CASES = {
    "identity": ((0, 0, 40, 60), (40, 60)),
    "halve": ((0, 0, 40, 60), (20, 30)),
    "area-non-integer": ((3, 5, 37, 51), (16, 23)),
    "shrink-a-lot": ((0, 0, 40, 60), (3, 2)),
    "enlarge": ((10, 10, 9, 13), (31, 40)),
    "enlarge-rows-shrink-columns": ((0, 0, 9, 60), (30, 11)),
    "enlarge-one-axis": ((0, 0, 20, 60), (45, 30)),
    "one-pixel": ((7, 9, 1, 1), (5, 4)),
    "corner": ((30, 50, 10, 10), (7, 7)),
}
CHANNELS = [1, 3, 4, 7, 16]  # 7: pixel by pixel; 16: the 48-value patterns
DTYPES = {"uint8": np.uint8, "uint16": np.uint16}


@pytest.fixture(scope="module", params=CHANNELS, ids=[f"c{c}" for c in CHANNELS])
def channels(request: pytest.FixtureRequest) -> int:
    return request.param


@pytest.fixture(scope="module", params=DTYPES.values(), ids=DTYPES.keys())
def source(request: pytest.FixtureRequest, photos: list[np.ndarray],
           channels: int) -> np.ndarray:
    return bands(photos, channels, request.param, 40, 60, seed=channels)


@pytest.mark.parametrize("flip", [False, True], ids=["noflip", "flip"])
@pytest.mark.parametrize(("crop", "size"), CASES.values(), ids=CASES.keys())
def test_matches_the_references(source: np.ndarray, crop: tuple[int, int, int, int],
                                size: tuple[int, int], flip: bool) -> None:
    out = np.full((*size, source.shape[2]), 77, source.dtype)
    crop_resize_into(source, *crop, out, flip)
    np.testing.assert_array_equal(out, crop_resize_exact(source, *crop, *size, flip=flip))
    # float32 against float64: at most one level off where a value sits on .5
    assert np.abs(out.astype(np.int64) - crop_resize(source, *crop, *size, flip=flip)).max() <= 1


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize(("crop", "size"), [CASES["enlarge"], CASES["area-non-integer"]],
                         ids=["enlarge", "shrink"])
def test_float_outputs_with_fused_normalisation(source: np.ndarray, dtype: type,
                                                crop: tuple[int, ...],
                                                size: tuple[int, int]) -> None:
    c = source.shape[2]
    top = float(np.iinfo(source.dtype).max)
    mean = np.linspace(0.3, 0.6, c) * top
    std = np.linspace(0.2, 0.3, c) * top
    scale, bias = 1 / std, -mean / std
    out = np.empty((*size, c), dtype)
    crop_resize_into(source, *crop, out, True, scale=scale, bias=bias)
    pixels = crop_resize_exact(source, *crop, *size, flip=True).astype(np.float32)
    expected = (pixels * scale.astype(np.float32) + bias.astype(np.float32)).astype(dtype)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_float_output_without_normalisation(source: np.ndarray, dtype: type) -> None:
    out = np.empty((23, 31, source.shape[2]), dtype)
    crop_resize_into(source, 2, 3, 17, 29, out)
    expected = crop_resize_exact(source, 2, 3, 17, 29, 23, 31).astype(dtype)
    np.testing.assert_array_equal(out, expected)


SIMD_CASES = ("halve", "shrink-a-lot", "enlarge", "enlarge-rows-shrink-columns")


@pytest.mark.parametrize("dtype", ["same", np.float16, np.float32])
@pytest.mark.parametrize(("crop", "size"), [CASES[k] for k in SIMD_CASES], ids=SIMD_CASES)
def test_simd_paths_give_the_portable_pixels(source: np.ndarray, crop: tuple[int, ...],
                                             size: tuple[int, int], dtype: object) -> None:
    out_dtype = source.dtype if dtype == "same" else dtype
    c = source.shape[2]
    scale = None if dtype == "same" else np.linspace(0.01, 0.02, c)
    bias = None if dtype == "same" else np.linspace(-1.0, 1.0, c)
    outs = []
    for simd in (True, False):
        set_simd(simd)
        try:
            out = np.empty((*size, c), out_dtype)
            crop_resize_into(source, *crop, out, True, scale=scale, bias=bias)
        finally:
            set_simd(True)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_sixteen_bit_values_use_the_whole_range(photos: list[np.ndarray]) -> None:
    # values above 255 are neither clamped nor wrapped, and 65535 stays 65535
    src = bands(photos, 4, np.uint16, 40, 60, seed=3)
    src[:10, :10] = 65535
    out = np.empty((80, 120, 4), np.uint16)
    crop_resize_into(src, 0, 0, 40, 60, out)
    assert out.max() == 65535
    assert (out > 255).mean() > 0.9
    np.testing.assert_array_equal(out, crop_resize_exact(src, 0, 0, 40, 60, 80, 120))


def test_the_float_reference_is_the_uint8_float_path(photos: list[np.ndarray]) -> None:
    # the exact float32 reference also describes uint8 images on the float path
    # (shrinking), which the existing uint8 tests check only to within one level
    src = bands(photos, 3, np.uint8, 40, 60, seed=5)
    out = np.empty((16, 23, 3), np.uint8)
    crop_resize_into(src, 3, 5, 37, 51, out)
    np.testing.assert_array_equal(
        out, round_pixels(crop_resize_float32(src, 3, 5, 37, 51, 16, 23), np.uint8))


def test_writes_into_a_strided_batch_slot(photos: list[np.ndarray]) -> None:
    src = bands(photos, 6, np.uint16, 40, 60, seed=6)
    batch = np.zeros((3, 12, 15, 6), np.uint16)
    crop_resize_into(src, 0, 0, 40, 60, batch[1])
    np.testing.assert_array_equal(batch[1], crop_resize_exact(src, 0, 0, 40, 60, 12, 15))
    assert not batch[0].any()
    assert not batch[2].any()


def test_workspace_reused_across_types_and_channels(photos: list[np.ndarray]) -> None:
    workspace = Workspace()
    for channels, dtype in ((16, np.uint16), (3, np.uint8), (1, np.uint16), (7, np.uint8)):
        src = bands(photos, channels, dtype, 40, 60, seed=channels)
        out = np.empty((31, 40, channels), dtype)
        crop_resize_into(src, 10, 10, 9, 13, out, True, workspace=workspace)
        np.testing.assert_array_equal(out, crop_resize_exact(src, 10, 10, 9, 13, 31, 40, True))


@pytest.mark.parametrize(("channels", "src_dtype", "out_dtype", "error", "message"), [
    (17, np.uint8, np.uint8, ValueError, "1 to 16 channels"),
    (4, np.uint16, np.uint8, TypeError, "out must be uint16, float16 or float32"),
    (4, np.uint8, np.uint16, TypeError, "out must be uint8, float16 or float32"),
    (4, np.uint16, np.int16, TypeError, "out must be uint16"),
])
def test_rejects_what_it_cannot_write(channels: int, src_dtype: type, out_dtype: type,
                                      error: type, message: str) -> None:
    src = np.zeros((8, 8, channels), src_dtype)
    with pytest.raises(error, match=message):
        crop_resize_into(src, 0, 0, 8, 8, np.zeros((4, 4, channels), out_dtype))


def test_rejects_normalisation_of_another_channel_count() -> None:
    src = np.zeros((8, 8, 4), np.uint16)
    with pytest.raises(ValueError, match="scale has 3 values, the images 4 channels"):
        crop_resize_into(src, 0, 0, 8, 8, np.zeros((4, 4, 4), np.float32), scale=[1, 1, 1])


def test_rejects_a_source_of_another_type() -> None:
    with pytest.raises((TypeError, ValueError)):
        crop_resize_into(np.zeros((8, 8, 3), np.int16), 0, 0, 8, 8, np.zeros((4, 4, 3), np.int16))

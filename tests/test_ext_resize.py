"""crop_resize_into against the NumPy reference."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from reference import crop_resize

from fastforward._ext.resize import Workspace, crop_resize_into, resize_span_into

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


@pytest.mark.parametrize(("span", "size"), [
    ((39.25, 59.5), (20, 30)),    # a JPEG of 314×476 decoded at 1/8: 40×60 pixels
    ((39.125, 60.0), (7, 11)),
    ((40.0, 60.0), (16, 23)),     # the whole: as crop_resize_into
    ((39.5, 59.75), (50, 70)),    # enlarging
])
def test_resize_span_matches_reference(source: np.ndarray, span: tuple[float, float],
                                       size: tuple[int, int]) -> None:
    out = np.full((*size, 3), 77, np.uint8)
    assert resize_span_into(source, *span, out) == size[0] * size[1]
    expected = crop_resize(source, 0, 0, 40, 60, *size, spans=(*span, *size))
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert np.mean(out != expected) < 0.01
    if span == (40.0, 60.0):
        whole = np.empty_like(out)
        crop_resize_into(source, 0, 0, 40, 60, whole)
        np.testing.assert_array_equal(out, whole)


@pytest.mark.parametrize("span", [(39.0, 60.0), (40.5, 60.0), (40.0, 0.0)])
def test_resize_span_refuses_a_span_its_pixels_cannot_stand_for(source: np.ndarray,
                                                                span: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="stand for more than all but one of them"):
        resize_span_into(source, *span, np.empty((10, 10, 3), np.uint8))
    with pytest.raises(TypeError, match="out must be uint8"):
        resize_span_into(source, 40, 60, np.empty((10, 10, 3), np.float32))


def test_workspace_is_reused_and_grown(source: np.ndarray) -> None:
    from fastforward._ext.resize import Workspace

    workspace = Workspace()
    assert workspace.nbytes == 0
    small, large = np.empty((5, 7, 3), np.uint8), np.empty((90, 120, 3), np.uint8)
    crop_resize_into(source, 0, 0, 40, 60, small, workspace=workspace)
    first = workspace.nbytes
    crop_resize_into(source, 0, 0, 40, 60, large, workspace=workspace)
    assert workspace.nbytes > first
    # the same pixels as without a workspace, after the workspace held other data
    for crop, size in CASES.values():
        for flip in (False, True):
            out, fresh = np.empty((*size, 3), np.uint8), np.empty((*size, 3), np.uint8)
            crop_resize_into(source, *crop, out, flip, workspace=workspace)
            crop_resize_into(source, *crop, fresh, flip)
            np.testing.assert_array_equal(out, fresh)


def test_shrinking_with_more_taps_than_the_row_table_on_the_stack() -> None:
    # 300 rows onto 2: 150+ taps per output row (the stack table holds 64)
    src = np.random.default_rng(1).integers(0, 256, (300, 50, 3), dtype=np.uint8)
    out = np.empty((2, 5, 3), np.uint8)
    crop_resize_into(src, 0, 0, 300, 50, out)
    assert np.abs(out.astype(int) - crop_resize(src, 0, 0, 300, 50, 2, 5)).max() <= 1


def test_identity_is_exact(source: np.ndarray) -> None:
    out = np.empty_like(source)
    crop_resize_into(source, 0, 0, *source.shape[:2], out)
    np.testing.assert_array_equal(out, source)


def test_flip_is_exact_mirror(source: np.ndarray) -> None:
    out = np.empty_like(source)
    crop_resize_into(source, 0, 0, *source.shape[:2], out, True)
    np.testing.assert_array_equal(out, source[:, ::-1])


@pytest.mark.parametrize("size", [(10, 13), (50, 61), (50, 13)],
                         ids=["shrink", "enlarge", "enlarge-rows-shrink-columns"])
def test_constant_image_stays_constant(size: tuple[int, int]) -> None:
    src = np.full((33, 47, 3), (12, 200, 255), np.uint8)
    out = np.empty((*size, 3), np.uint8)
    crop_resize_into(src, 0, 0, 33, 47, out, True)
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
    with pytest.raises(ValueError, match="3-channel pixels"):
        crop_resize_into(source, 0, 0, 10, 10, np.empty((4, 4, 1), np.uint8))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("flip", [False, True], ids=["noflip", "flip"])
def test_float_outputs_with_fused_normalisation(source: np.ndarray, dtype: type,
                                                flip: bool) -> None:
    mean, std = np.array([123.7, 116.3, 103.5]), np.array([58.4, 57.1, 57.4])
    out = np.full((17, 23, 3), np.nan, dtype)
    crop_resize_into(source, 2, 3, 35, 50, out, flip, scale=1 / std, bias=-mean / std)
    # what the separate steps give: the uint8 output, then (x - mean) / std
    pixels = np.empty((17, 23, 3), np.uint8)
    crop_resize_into(source, 2, 3, 35, 50, pixels, flip)
    expected = ((pixels.astype(np.float64) - mean) / std).astype(dtype)
    np.testing.assert_allclose(out.astype(np.float64), expected.astype(np.float64),
                               rtol=1e-3 if dtype == np.float16 else 1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_float_output_without_normalisation(source: np.ndarray, dtype: type) -> None:
    out = np.empty((40, 60, 3), dtype)
    crop_resize_into(source, 0, 0, 40, 60, out)
    np.testing.assert_array_equal(out, source.astype(dtype))
    resized, pixels = np.empty((17, 24, 3), dtype), np.empty((17, 24, 3), np.uint8)
    crop_resize_into(source, 1, 2, 30, 41, resized, True)
    crop_resize_into(source, 1, 2, 30, 41, pixels, True)
    np.testing.assert_array_equal(resized, pixels.astype(dtype))


def test_scale_needs_a_float_output(source: np.ndarray) -> None:
    with pytest.raises(ValueError, match="float16 or float32"):
        crop_resize_into(source, 0, 0, 4, 4, np.empty((2, 2, 3), np.uint8), scale=[1, 1, 1])


@pytest.mark.parametrize("values", [
    np.linspace(-70000, 70000, 20001, dtype=np.float32),
    np.array([0.0, -0.0, 1e-8, 5.96e-8, 6.1e-5, 6.5e-5, 65504, 65519, 65520, 1 + 2**-11,
              1 + 3 * 2**-11, 2049, 2051, np.inf, -np.inf], np.float32),
    np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 300,
], ids=["range", "edges", "normal"])
def test_portable_half_conversion_matches_numpy(values: np.ndarray) -> None:
    from fastforward._ext.resize import f16_soft_into

    out = np.empty(len(values), np.uint16)
    f16_soft_into(values, out)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(out, values.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize(("dtype", "normalise"), [
    (np.uint8, False), (np.float16, False), (np.float16, True), (np.float32, False),
    (np.float32, True),
], ids=["uint8", "float16", "float16-normalised", "float32", "float32-normalised"])
def test_simd_paths_give_the_portable_pixels(photos: list[np.ndarray], dtype: type,
                                             normalise: bool) -> None:
    from fastforward._ext.resize import set_simd

    scale, bias = (np.array([0.017, 0.018, 0.0175]), np.array([-2.1, -2.0, -1.8])) if normalise \
        else (None, None)
    rng = np.random.default_rng(3)
    image = np.ascontiguousarray(photos[0][:300, :400])
    cases = []
    for _ in range(60):  # enlarging, shrinking and mixed windows, odd sizes, flips
        h, w = int(rng.integers(1, 300)), int(rng.integers(1, 400))
        y0, x0 = int(rng.integers(0, 301 - h)), int(rng.integers(0, 401 - w))
        size = (int(rng.integers(1, 260)), int(rng.integers(1, 260)))
        cases.append(((y0, x0, h, w), size, bool(rng.integers(2))))
    fast = [np.empty((*size, 3), dtype) for _, size, _ in cases]
    portable = [np.empty((*size, 3), dtype) for _, size, _ in cases]
    for (crop, _, flip), out in zip(cases, fast, strict=True):
        crop_resize_into(image, *crop, out, flip, scale, bias)
    set_simd(False)
    try:
        for (crop, _, flip), out in zip(cases, portable, strict=True):
            crop_resize_into(image, *crop, out, flip, scale, bias)
    finally:
        set_simd(True)
    for a, b in zip(fast, portable, strict=True):
        np.testing.assert_array_equal(a, b)


ENLARGING = {  # windows enlarged vertically: the integer horizontal pass
    "enlarge": ((10, 10, 9, 13), (31, 40)),
    "enlarge-one-axis": ((0, 0, 20, 60), (45, 30)),
    "one-pixel": ((7, 9, 1, 1), (5, 4)),
    "one-row": ((5, 0, 1, 60), (3, 25)),
    "right-edge": ((21, 47, 19, 13), (40, 41)),
    "odd-width": ((0, 1, 30, 33), (31, 37)),
}


@pytest.mark.parametrize("simd", [True, False], ids=["simd", "portable"])
@pytest.mark.parametrize("flip", [False, True], ids=["noflip", "flip"])
@pytest.mark.parametrize(("crop", "size"), ENLARGING.values(), ids=ENLARGING.keys())
def test_enlarging_matches_the_exact_reference(source: np.ndarray, crop: tuple[int, ...],
                                               size: tuple[int, int], flip: bool,
                                               simd: bool) -> None:
    from reference import crop_resize_enlarging

    from fastforward._ext.resize import set_simd

    out = np.full((*size, 3), 77, np.uint8)
    set_simd(simd)
    try:
        crop_resize_into(source, *crop, out, flip)
    finally:
        set_simd(True)
    np.testing.assert_array_equal(out, crop_resize_enlarging(source, *crop, *size, flip=flip))


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_enlarging_other_channel_counts_exactly(channels: int) -> None:
    from reference import crop_resize_enlarging

    src = np.random.default_rng(channels).integers(0, 256, (21, 34, channels), dtype=np.uint8)
    out = np.empty((30, 41, channels), np.uint8)
    crop_resize_into(src, 1, 2, 19, 30, out, True)
    np.testing.assert_array_equal(out, crop_resize_enlarging(src, 1, 2, 19, 30, 30, 41, True))


def test_enlarging_many_random_windows_exactly(photos: list[np.ndarray]) -> None:
    from reference import crop_resize_enlarging, kernel_taps

    rng = np.random.default_rng(7)
    image = np.ascontiguousarray(photos[2][:192, :256])
    integer = 0
    for _ in range(60):  # RandomResizedCrop-like windows of a 192x256 image onto 64x64
        h, w = int(rng.integers(1, 64)), int(rng.integers(1, 256))
        y0, x0 = int(rng.integers(0, 193 - h)), int(rng.integers(0, 257 - w))
        flip = bool(rng.integers(2))
        out = np.empty((64, 64, 3), np.uint8)
        crop_resize_into(image, y0, x0, h, w, out, flip)
        if kernel_taps(w, 64)[1].shape[1] > 4:  # the float pass: within a level
            expected = crop_resize(image, y0, x0, h, w, 64, 64, flip=flip)
            assert np.abs(out.astype(int) - expected).max() <= 1
            continue
        integer += 1
        np.testing.assert_array_equal(
            out, crop_resize_enlarging(image, y0, x0, h, w, 64, 64, flip),
            err_msg=f"window {(y0, x0, h, w)}, flip {flip}")
    assert integer > 30  # most windows took the integer pass


def test_enlarging_a_source_narrower_than_the_simd_reads() -> None:
    from reference import crop_resize_enlarging

    # rows of 12 bytes: each 16-byte read would run into the next row or past the end
    src = np.random.default_rng(4).integers(0, 256, (40, 4, 3), dtype=np.uint8)
    out = np.empty((50, 9, 3), np.uint8)
    crop_resize_into(src, 3, 1, 37, 3, out, True)
    np.testing.assert_array_equal(out, crop_resize_enlarging(src, 3, 1, 37, 3, 50, 9, True))


@pytest.mark.parametrize("ratio", [2, 7, 200, 987])
def test_enlarging_rows_while_shrinking_columns_a_lot(ratio: int) -> None:
    # 2: the integer pass (2 taps); the others have more than 4 taps: the float
    # pass, whose taps cannot go negative (integer taps could, past ~200)
    from fastforward._ext.resize import set_simd

    width = ratio * 8
    dark = np.full((2, width, 3), 255, np.uint8)
    dark[:, ::ratio] = 0  # one dark column per output pixel
    for src in (dark, 255 - dark):
        results = []
        for simd in (True, False):
            set_simd(simd)
            try:
                for dtype in (np.uint8, np.float16, np.float32):
                    out = np.full((3, 8, 3), 77, dtype)
                    crop_resize_into(src, 0, 0, 2, width, out, True)
                    results.append(out.astype(np.float64))
            finally:
                set_simd(True)
        expected = crop_resize(src, 0, 0, 2, width, 3, 8, flip=True).astype(np.float64)
        for out in results:
            assert np.abs(out - expected).max() <= 1
            assert out.min() >= 0
            assert out.max() <= 255
        for fast, portable in zip(results[:3], results[3:], strict=True):
            np.testing.assert_array_equal(fast, portable)  # SIMD and portable agree


@pytest.mark.skipif(sys.platform != "linux", reason="mprotect through ctypes: Linux")
def test_enlarging_reads_nothing_past_the_source(tmp_path: Path) -> None:
    # A source whose last byte ends a page, with an unreadable page after it:
    # a read past the source crashes the child process.
    import subprocess

    code = """
import ctypes, mmap
import numpy as np
from fastforward._ext.resize import crop_resize_into
page = mmap.PAGESIZE
memory = mmap.mmap(-1, 2 * page)
address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
assert libc.mprotect(ctypes.c_void_p(address + page), page, 0) == 0  # PROT_NONE
for width in (1, 2, 5, 7, 40):  # rows under 16 bytes: every row is copied
    for h, w in ((1, width), (2, max(width - 1, 1))):
        size = 9 * width * 3
        src = np.frombuffer(memory, np.uint8, size, page - size).reshape(9, width, 3)
        src[:] = np.arange(size, dtype=np.uint8).reshape(src.shape)
        out = np.empty((12, 2 * width + 1, 3), np.uint8)
        crop_resize_into(src, 9 - h, width - w, h, w, out, False)
        crop_resize_into(src, 9 - h, width - w, h, w, out, True)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)  # the installed package, not the tree
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_workspace_is_not_pickled(source: np.ndarray) -> None:
    # Cython's generated pickling read its C pointer as a string: a crash
    used = Workspace()
    crop_resize_into(source, 0, 0, 40, 60, np.zeros((20, 30, 3), np.uint8), workspace=used)
    assert used.nbytes > 0
    for workspace in (Workspace(), used):
        with pytest.raises(TypeError, match="cannot pickle"):
            pickle.dumps(workspace)


def test_the_simplejpeg_range_kernel(photos: list[np.ndarray]) -> None:
    """The crop decoders' loop where the build has no libjpeg-turbo: mixed JPEG and
    raw samples are simplejpeg's decode + ``crop_resize_into``; it notes each sample
    in *progress* (-1 after the range, the failing one's after a failure), calls
    *fail* with the failing position, and refuses sides past 65,535 before sizing
    anything from them."""
    simplejpeg = pytest.importorskip("simplejpeg")
    from fastforward._ext.resize import decode_crop_resize_range

    images = [np.ascontiguousarray(p[:48 + 8 * k, :40 + 4 * k]) for k, p in enumerate(photos[:3])]
    payloads = [simplejpeg.encode_jpeg(images[0], 90), images[1].tobytes(),
                simplejpeg.encode_jpeg(images[2], 90)]
    sizes = np.array([len(p) for p in payloads], np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    source = np.frombuffer(b"".join(payloads), np.uint8)
    raw = np.array([0, 1, 0], np.uint8)
    heights = np.array([i.shape[0] for i in images], np.int64)
    widths = np.array([i.shape[1] for i in images], np.int64)
    crops = np.array([[3, 2, 30, 25], [0, 0, 56, 44], [10, 5, 20, 33]], np.int64)
    flips = np.array([1, 0, 1], np.uint8)
    progress, samples = np.array([3, 99], np.int64), np.array([8, 2, 31], np.int64)
    failures: list[tuple[BaseException, int]] = []

    def fail(exc: BaseException, k: int) -> BaseException:
        failures.append((exc, k))
        return RuntimeError(f"sample {k}")

    def run(heights: np.ndarray, out: np.ndarray, source: np.ndarray = source) -> int:
        return decode_crop_resize_range(
            simplejpeg.decode_jpeg, True, np.empty(64 * 64 * 3, np.uint8), source, starts,
            sizes, raw, heights, widths, crops, flips, out, None, None, Workspace(), fail,
            progress=progress, samples=samples)

    out = np.zeros((3, 16, 12, 3), np.uint8)
    assert run(heights, out) == 3
    assert progress.tolist() == [3, -1]
    for k, payload in enumerate(payloads):
        image = images[k] if raw[k] else simplejpeg.decode_jpeg(payload, fastdct=True)
        expected = np.empty((16, 12, 3), np.uint8)
        crop_resize_into(image, *crops[k], expected, bool(flips[k]))
        np.testing.assert_array_equal(out[k], expected, err_msg=f"sample {k}")
    broken = source.copy()
    broken[starts[2] : starts[2] + 12] = 0  # no JPEG header
    with pytest.raises(RuntimeError, match="sample 2"):
        run(heights, out, broken)
    assert failures[-1][1] == 2
    assert "corrupt JPEG payload" in str(failures[-1][0])
    assert progress.tolist() == [3, 31]
    with pytest.raises(RuntimeError, match="sample 1"):
        run(np.array([heights[0], 2**32, heights[2]], np.int64), out)
    assert "a side past 65535 pixels" in str(failures[-1][0])

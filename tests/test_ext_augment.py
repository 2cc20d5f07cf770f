"""augment_into against the NumPy references of torchvision's operations (exact)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import reference as ref

from fastforward._ext.augment import OPS, PARAMS, augment_into

SHAPES = {"square": (48, 48), "wide-odd": (37, 53), "tall-even": (64, 30), "3x3": (3, 3),
          "one-row": (1, 7), "two-columns": (9, 2), "one-pixel": (1, 1)}
FILLS = {"no-fill": None, "fill-0": (0.0, 0.0, 0.0), "fill-rgb": (128.0, 64.5, 200.0)}


@pytest.fixture(scope="module")
def crops(photos: list[np.ndarray]) -> dict[str, np.ndarray]:
    """One crop of a real photograph per shape."""
    rng = np.random.default_rng(18)
    out = {}
    for key, (h, w) in SHAPES.items():
        photo = photos[int(rng.integers(len(photos)))]
        y, x = int(rng.integers(photo.shape[0] - h)), int(rng.integers(photo.shape[1] - w))
        out[key] = np.ascontiguousarray(photo[y : y + h, x : x + w])
    return out


def run(image: np.ndarray, op: str, params: tuple[float, ...] = (), bilinear: bool = False,
        fill: tuple[float, float, float] | None = None) -> np.ndarray:
    """One image through one operation."""
    p = np.zeros((1, 1, PARAMS))
    p[0, 0, : len(params)] = params
    out = np.full((1, *image.shape), 77, np.uint8)
    assert augment_into(image[None], out, np.array([[OPS.index(op)]], np.int32), p,
                        bilinear, fill) == 1
    return out[0]


FACTORS = [0.0, 0.01, 0.5, 0.967, 1.0, 1.033, 1.3, 1.99]
COLOR: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "BRIGHTNESS": ref.tv_brightness, "SATURATION": ref.tv_saturation,
    "CONTRAST": ref.tv_contrast, "SHARPNESS": ref.tv_sharpness,
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("op", COLOR)
def test_factor_operations(crops: dict[str, np.ndarray], op: str, factor: float,
                           shape: str) -> None:
    image = crops[shape]
    np.testing.assert_array_equal(run(image, op, (factor,)), COLOR[op](image, factor))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", range(9))
def test_posterize(crops: dict[str, np.ndarray], bits: int, shape: str) -> None:
    image = crops[shape]
    expected = image if bits == 8 else ref.tv_posterize(image, bits)
    np.testing.assert_array_equal(run(image, "POSTERIZE", (bits,)), expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("threshold", [0.0, 8.5, 127.5, 128.0, 238.00000167, 255.0, 255.5])
def test_solarize(crops: dict[str, np.ndarray], threshold: float, shape: str) -> None:
    image = crops[shape]
    np.testing.assert_array_equal(run(image, "SOLARIZE", (threshold,)),
                                  ref.tv_solarize(image, threshold))


PLAIN = {"AUTOCONTRAST": ref.tv_autocontrast, "EQUALIZE": ref.tv_equalize,
         "INVERT": ref.tv_invert, "COPY": np.copy}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", PLAIN)
def test_plain_operations(crops: dict[str, np.ndarray], op: str, shape: str) -> None:
    image = crops[shape]
    np.testing.assert_array_equal(run(image, op), PLAIN[op](image))


@pytest.mark.parametrize("op", ["AUTOCONTRAST", "EQUALIZE"])
def test_flat_and_two_level_channels(op: str) -> None:
    """A constant channel is left as it is; equalize's step of 0 too (PIL's rule)."""
    image = np.zeros((20, 30, 3), np.uint8)
    image[..., 0] = 90  # flat
    image[:, :15, 1] = 10  # two levels
    image[:, 15:, 1] = 200
    image[..., 2] = np.arange(30, dtype=np.uint8) * 8  # a ramp
    image[0, 0, 2] = 255
    np.testing.assert_array_equal(run(image, op), PLAIN[op](image))
    assert np.all(run(image, op)[..., 0] == 90)


def test_contrast_mean_over_many_pixels(photos: list[np.ndarray]) -> None:
    """A 256×256 image: the gray sum still fits float32 exactly."""
    image = np.ascontiguousarray(photos[0][:256, :256])
    np.testing.assert_array_equal(run(image, "CONTRAST", (1.5,)), ref.tv_contrast(image, 1.5))


@pytest.mark.parametrize("red", range(0, 256, 32), ids=lambda r: f"red-{r}-{r + 31}")
def test_saturation_gray_weights_exhaustively(red: int) -> None:
    """Every (r, g, b): the kernel's gray level is the reference's (saturation 0 gives it);
    32 values of red at a time, to keep the test's memory small."""
    levels = np.arange(256, dtype=np.uint8)
    r, g, b = np.meshgrid(levels[red : red + 32], levels, levels, indexing="ij")
    image = np.stack([r.ravel(), g.ravel(), b.ravel()], axis=-1).reshape(2048, 1024, 3)
    gray = run(image, "SATURATION", (0.0,))
    expected = ref.tv_gray(image).astype(np.uint8)
    np.testing.assert_array_equal(gray, np.repeat(expected[..., None], 3, axis=2))


ANGLES = [4.5, -30.0, 45.0, 90.0, 133.7, 270.0]
SHEARS = [-0.99, -0.3, 0.033, 0.264, 0.99]
SHIFTS = [(3, 0), (-5, 0), (0, 7), (0, -32), (100, 0), (-2, 1)]


@pytest.mark.parametrize("fill", FILLS.values(), ids=FILLS.keys())
@pytest.mark.parametrize("bilinear", [False, True], ids=["nearest", "bilinear"])
@pytest.mark.parametrize("shape", SHAPES)
def test_affine(crops: dict[str, np.ndarray], shape: str, bilinear: bool,
                fill: tuple[float, float, float] | None) -> None:
    image = crops[shape]
    h, w = image.shape[:2]
    matrices = [ref.tv_inverse_affine((0.0, 0.0), -angle, (0.0, 0.0), (0.0, 0.0))
                for angle in ANGLES]
    matrices += [ref.tv_inverse_affine((-w * 0.5, -h * 0.5), 0.0, (0.0, 0.0), (s, 0.0))
                 for s in (-44.7, 1.9, 30.0)]
    matrices += [ref.tv_inverse_affine((-w * 0.5, -h * 0.5), 0.0, (0.0, 0.0), (0.0, s))
                 for s in (-20.0, 44.7)]
    for matrix in matrices:
        np.testing.assert_array_equal(run(image, "AFFINE", tuple(matrix), bilinear, fill),
                                      ref.tv_affine(image, matrix, bilinear, fill),
                                      err_msg=str(matrix))


@pytest.mark.parametrize("fill", FILLS.values(), ids=FILLS.keys())
@pytest.mark.parametrize("bilinear", [False, True], ids=["nearest", "bilinear"])
@pytest.mark.parametrize("shape", SHAPES)
def test_shift_is_the_affine_translation(crops: dict[str, np.ndarray], shape: str,
                                         bilinear: bool,
                                         fill: tuple[float, float, float] | None) -> None:
    image = crops[shape]
    for dx, dy in SHIFTS:
        expected = ref.tv_translate(image, dx, dy, bilinear, fill)
        np.testing.assert_array_equal(run(image, "SHIFT", (dx, dy), bilinear, fill), expected)
        matrix = ref.tv_inverse_affine((0.0, 0.0), 0.0, (float(dx), float(dy)), (0.0, 0.0))
        np.testing.assert_array_equal(run(image, "AFFINE", tuple(matrix), bilinear, fill),
                                      expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_rot90(crops: dict[str, np.ndarray], shape: str) -> None:
    image = crops[shape]
    for k in (1, 2, 3) if image.shape[0] == image.shape[1] else (2,):
        np.testing.assert_array_equal(run(image, "ROT90", (k,)), np.rot90(image, k))


def test_quarter_turn_by_matrix_is_the_fast_path(crops: dict[str, np.ndarray]) -> None:
    """torchvision's rot90 fast path and its affine path agree on square images."""
    image = crops["square"]
    for angle, k in ((90.0, 1), (270.0, 3), (180.0, 2)):
        matrix = ref.tv_inverse_affine((0.0, 0.0), -angle, (0.0, 0.0), (0.0, 0.0))
        for bilinear in (False, True):
            np.testing.assert_array_equal(run(image, "AFFINE", tuple(matrix), bilinear),
                                          np.rot90(image, k))


def test_a_batch_of_chains(photos: list[np.ndarray]) -> None:
    """Per sample, several operations in turn (skipped positions included), as the
    references applied one after the other; a batch slot with a row stride of its own."""
    rng = np.random.default_rng(5)
    h, w = 40, 36
    n, depth = 24, 3
    batch = np.stack([np.ascontiguousarray(photos[i % len(photos)][i : i + h, i : i + w])
                      for i in range(n)])
    steps: list[tuple[str, tuple[float, ...], Callable[[np.ndarray], np.ndarray]]] = [
        ("BRIGHTNESS", (1.3,), lambda x: ref.tv_brightness(x, 1.3)),
        ("SATURATION", (0.4,), lambda x: ref.tv_saturation(x, 0.4)),
        ("CONTRAST", (1.7,), lambda x: ref.tv_contrast(x, 1.7)),
        ("SHARPNESS", (0.2,), lambda x: ref.tv_sharpness(x, 0.2)),
        ("POSTERIZE", (3,), lambda x: ref.tv_posterize(x, 3)),
        ("SOLARIZE", (100.0,), lambda x: ref.tv_solarize(x, 100.0)),
        ("AUTOCONTRAST", (), ref.tv_autocontrast),
        ("EQUALIZE", (), ref.tv_equalize),
        ("INVERT", (), ref.tv_invert),
        ("SHIFT", (4, -3), lambda x: ref.tv_translate(x, 4, -3, True, (9.0, 9.0, 9.0))),
        ("AFFINE", tuple(ref.tv_inverse_affine((0.0, 0.0), -20.0, (0.0, 0.0), (0.0, 0.0))),
         lambda x: ref.tv_affine(x, ref.tv_inverse_affine((0.0, 0.0), -20.0, (0.0, 0.0),
                                                          (0.0, 0.0)), True, (9.0, 9.0, 9.0))),
        ("ROT90", (2,), lambda x: np.rot90(x, 2)),
        ("NONE", (), lambda x: x),
    ]
    choice = rng.integers(len(steps), size=(n, depth))
    ops = np.array([[OPS.index(steps[c][0]) if steps[c][0] != "NONE" else -1 for c in row]
                    for row in choice], np.int32)
    params = np.zeros((n, depth, PARAMS))
    for i in range(n):
        for k in range(depth):
            values = steps[choice[i, k]][1]
            params[i, k, : len(values)] = values
    slot = np.full((n, h, w + 5, 3), 77, np.uint8)  # rows of a wider buffer
    out = slot[:, :, :w]
    augment_into(batch, out, ops, params, True, (9.0, 9.0, 9.0))
    for i in range(n):
        expected = batch[i]
        for k in range(depth):
            expected = np.ascontiguousarray(steps[choice[i, k]][2](expected))
        np.testing.assert_array_equal(out[i], expected, err_msg=f"sample {i}: {choice[i]}")
    assert np.all(slot[:, :, w:] == 77), "wrote outside the images"


def test_every_code_is_tested() -> None:
    assert set(OPS) == {"COPY", "AFFINE", "SHIFT", "ROT90", *COLOR, "POSTERIZE", "SOLARIZE",
                        "AUTOCONTRAST", "EQUALIZE", "INVERT"}


def test_empty_batch() -> None:
    empty = np.empty((0, 8, 8, 3), np.uint8)
    assert augment_into(empty, empty.copy(), np.empty((0, 2), np.int32),
                        np.empty((0, 2, PARAMS))) == 0


def bad(op: str, *params: float) -> tuple[np.ndarray, np.ndarray]:
    p = np.zeros((2, 1, PARAMS))
    p[1, 0, : len(params)] = params
    ops = np.array([[-1], [OPS.index(op) if op in OPS else int(op)]], np.int32)
    return ops, p


ERRORS = {
    "unknown-code": (bad("13"), "unknown operation code 13"),
    "below-none": (bad("-2"), "unknown operation code -2"),
    "posterize-9": (bad("POSTERIZE", 9), "POSTERIZE keeps 0 to 8 bits"),
    "posterize-fraction": (bad("POSTERIZE", 2.5), "POSTERIZE keeps 0 to 8 bits"),
    "rot90-0": (bad("ROT90", 0), "ROT90 needs 1, 2 or 3"),
    "rot90-not-square": (bad("ROT90", 1), "needs a square image"),
    "negative-factor": (bad("CONTRAST", -0.5), "CONTRAST needs a factor >= 0"),
    "nan-factor": (bad("BRIGHTNESS", float("nan")), "BRIGHTNESS needs a factor >= 0"),
    "shift-fraction": (bad("SHIFT", 1.5, 0), "SHIFT needs whole pixels"),
    "affine-inf": (bad("AFFINE", 1, 0, float("inf"), 0, 1, 0), "AFFINE needs a finite matrix"),
    "solarize-nan": (bad("SOLARIZE", float("nan")), "SOLARIZE got nan"),
}


@pytest.mark.parametrize(("args", "message"), ERRORS.values(), ids=ERRORS.keys())
def test_rejects_bad_operations(args: tuple[np.ndarray, np.ndarray], message: str) -> None:
    ops, params = args
    src = np.zeros((2, 6, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=message) as info:
        augment_into(src, np.zeros_like(src), ops, params)
    assert "sample 1, operation 0" in str(info.value)


def test_rejects_mismatched_shapes() -> None:
    src = np.zeros((2, 6, 8, 3), np.uint8)
    ops, params = np.zeros((2, 1), np.int32), np.zeros((2, 1, PARAMS))
    with pytest.raises(ValueError, match="alike"):
        augment_into(src, np.zeros((2, 6, 9, 3), np.uint8), ops, params)
    with pytest.raises(ValueError, match="ops must be"):
        augment_into(src, np.zeros_like(src), ops[:1], params)
    with pytest.raises(ValueError, match="alike"):
        augment_into(np.zeros((2, 6, 8, 4), np.uint8), np.zeros((2, 6, 8, 4), np.uint8), ops,
                     params)
    with pytest.raises(ValueError, match="fill"):
        augment_into(src, np.zeros_like(src), ops, params, fill=(1, 2))
    with pytest.raises(ValueError, match="fill"):
        augment_into(src, np.zeros_like(src), ops, params, fill=300)


def test_rejects_overlap() -> None:
    src = np.zeros((2, 6, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="overlap"):
        augment_into(src, src, np.zeros((2, 1), np.int32), np.zeros((2, 1, PARAMS)))

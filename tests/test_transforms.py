"""fastforward.transforms against plain NumPy references, on real photographs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference
from harness import allocate, apply_checked, state_of
from reference import crop_resize

import fastforward.transforms as T
from fastforward._ext.resize import crop_resize_into
from fastforward.pipeline import BatchContext, Operation, State
from fastforward.transforms.crop import (
    RANDOM_CROP_UNIFORMS,
    center_crops,
    get_center_crop,
    get_random_crop,
    random_crops,
)

H, W, B = 36, 48, 20


# ---------------------------------------------------------------------------
# helpers


def context(indices: Any = None, epoch: int = 0, seed: int = 1, stream: int = 3) -> BatchContext:
    indices = np.arange(B) if indices is None else np.asarray(indices)
    return BatchContext(indices=indices, epoch=epoch, seed=seed, stream=stream)


def run(op: Operation, batch: Any, ctx: BatchContext | None = None,
        slots: int | None = None) -> tuple[Any, State]:
    """Apply *op* as the loader does (see ``harness.apply_checked``)."""
    return apply_checked(op, batch, ctx or context(np.arange(len(batch))), slots)


@pytest.fixture(scope="module")
def batch(images: list[np.ndarray]) -> np.ndarray:
    """The 20 photographs resized to a common 36 × 48."""
    out = np.empty((len(images), H, W, 3), np.uint8)
    for k, image in enumerate(images):
        crop_resize_into(image, 0, 0, image.shape[0], image.shape[1], out[k])
    return out


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return (np.arange(B, dtype=np.int64) * 7 % 10).reshape(B, 1)


def torch_or_skip() -> Any:
    return pytest.importorskip("torch", reason="torch is an optional extra")


# ---------------------------------------------------------------------------
# the package


def test_all_is_sorted_strings_and_documented() -> None:
    assert T.__all__ == sorted(T.__all__)
    for name in T.__all__:
        obj = getattr(T, name)
        assert issubclass(obj, Operation), name
        assert obj.__doc__, name
        assert obj.apply.__doc__, name


def test_mixups_share_a_stream() -> None:
    assert T.ImageMixup.random_stream == T.LabelMixup.random_stream == "mixup"


def test_numpy_pipeline_needs_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch fails\n"
        "import numpy as np\n"
        "import fastforward.transforms as T\n"
        "from fastforward.pipeline import BatchContext, State\n"
        "x = np.zeros((4, 8, 8, 3), np.uint8)\n"
        "ctx = BatchContext(np.arange(4), 0, 1)\n"
        "state = State(shape=(8, 8, 3))\n"
        "for op in [T.RandomHorizontalFlip(), T.Cutout(2),\n"
        "           T.NormalizeImage(np.zeros(3), np.ones(3), np.float16)]:\n"
        "    state, query = op.declare_state_and_memory(state)\n"
        "    x = op.apply(x, np.empty((4, *query.shape), query.dtype), ctx)\n"
        "assert x.dtype == np.float16, x.dtype\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)



def test_to_tensor_without_torch_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual torch tail in an installation without torch: an ImportError naming the
    operation and the install command, not a bare ``No module named 'torch'``."""
    monkeypatch.setitem(sys.modules, "torch", None)  # any import of torch fails
    with pytest.raises(ImportError, match=r"ToTensor needs torch.*pip install torch \(a CPU-only "
                                          r"build: .*whl/cpu\), or pip install '\.\[torch\]'"):
        T.ToTensor().declare_state_and_memory(State(shape=(8, 8, 3), dtype=np.dtype("u1")))

# ---------------------------------------------------------------------------
# crop samplers

CROP_SETTINGS = {
    "imagenet": ((0.08, 1.0), (3 / 4, 4 / 3)),
    "large": ((0.35, 1.0), (3 / 4, 4 / 3)),
    "wide-ratio": ((0.08, 1.0), (0.2, 5.0)),
    "never-fits": ((1.5, 2.0), (3 / 4, 4 / 3)),
}


@pytest.mark.parametrize(("scale", "ratio"), CROP_SETTINGS.values(), ids=CROP_SETTINGS.keys())
@pytest.mark.parametrize("size", [(17, 17), (36, 48), (480, 20), (20, 480), (375, 500)],
                         ids=str)
def test_random_crop_matches_reference(size: tuple[int, int], scale: tuple[float, float],
                                       ratio: tuple[float, float]) -> None:
    height, width = size
    u = np.random.default_rng(height * 1000 + width).random((200, RANDOM_CROP_UNIFORMS))
    for row in u:
        crop = get_random_crop(height, width, scale, ratio, row)
        assert crop == reference.random_crop(height, width, scale, ratio, row)
        i, j, h, w = crop
        assert i >= 0
        assert i + h <= height
        assert h > 0
        assert j >= 0
        assert j + w <= width
        assert w > 0
        assert all(type(v) is int for v in crop)


@pytest.mark.parametrize(("scale", "ratio"), CROP_SETTINGS.values(), ids=CROP_SETTINGS.keys())
def test_random_crops_of_mixed_sizes_match_the_reference(scale: tuple[float, float],
                                                        ratio: tuple[float, float]) -> None:
    rng = np.random.default_rng(5)
    heights, widths = rng.integers(1, 600, 300), rng.integers(1, 600, 300)
    u = rng.random((300, RANDOM_CROP_UNIFORMS))
    u[:40, 0:20:2] = 0.9999  # some rows where no try fits (with scale above 1)
    crops = random_crops(heights, widths, scale, ratio, u)
    assert crops.dtype == np.int64
    assert crops.shape == (300, 4)
    for k in range(300):
        expected = reference.random_crop(int(heights[k]), int(widths[k]), scale, ratio, u[k])
        assert tuple(crops[k].tolist()) == expected


def test_center_crops_match_the_single_image_form() -> None:
    rng = np.random.default_rng(6)
    heights, widths = rng.integers(1, 700, 200), rng.integers(1, 700, 200)
    for ratio in (224 / 256, 0.5, 1.0):
        crops = center_crops(heights, widths, ratio)
        for k in range(200):
            assert tuple(crops[k].tolist()) == get_center_crop(int(heights[k]), int(widths[k]),
                                                               ratio)


@pytest.mark.parametrize(("size", "expected"), [
    ((100, 100), (0, 0, 100, 100)),  # ratio 1 is allowed: the whole image
    ((20, 200), (0, 86, 20, 27)),  # too wide: clamp to 4/3, centred
    ((200, 20), (86, 0, 27, 20)),  # too tall: clamp to 3/4, centred
], ids=["square", "wide", "tall"])
def test_random_crop_fallback(size: tuple[int, int], expected: tuple[int, ...]) -> None:
    u = np.full(RANDOM_CROP_UNIFORMS, 0.5)
    assert get_random_crop(*size, (1.5, 2.0), (3 / 4, 4 / 3), u) == expected


def test_random_crop_reads_the_uniforms_it_declares() -> None:
    # a crop that fits on the last try reads exactly RANDOM_CROP_UNIFORMS values
    u = np.zeros(RANDOM_CROP_UNIFORMS)
    u[0:18:2] = 0.999  # tries 0-8: area 1.5·A, never fits
    u[18] = 0.0  # try 9: area 0.5·A fits
    u[20], u[21] = 0.999, 0.0
    i, j, h, w = get_random_crop(100, 100, (0.5, 1.5), (0.5, 2.0), u)
    assert (i + h, j) == (100, 0)  # u[20] -> bottom, u[21] -> left
    assert abs(h * w - 5000) < 200


@pytest.mark.parametrize(("args", "expected"), [
    ((300, 400, 0.875), (19, 69, 262, 262)),
    ((256, 256, 224 / 256), (16, 16, 224, 224)),
    ((500, 375, 1.0), (62, 0, 375, 375)),
])
def test_center_crop(args: tuple[int, int, float], expected: tuple[int, ...]) -> None:
    assert get_center_crop(*args) == expected


@pytest.mark.parametrize(("size", "ratio", "scale"), [
    ((1, 1), (5, 5), (0.08, 1)), ((1, 9), (0.1, 0.1), (0.08, 1)), ((9, 1), (5, 5), (0.5, 1)),
    ((2, 40), (3 / 4, 4 / 3), (0.001, 0.001)),
])
def test_every_crop_keeps_a_pixel_at_least(size: tuple[int, int], ratio: tuple[float, float],
                                           scale: tuple[float, float]) -> None:
    """The fallback clamped a 1-pixel-high image to ratio 1/3 with a height of
    0, and the centre crop of a 1x1 image at 0.875 had a side of 0: the kernel
    then refused the window with a bare ValueError at the first batch."""
    rng = np.random.default_rng(0)
    crops = random_crops(np.full(50, size[0]), np.full(50, size[1]), scale, ratio,
                         rng.random((50, RANDOM_CROP_UNIFORMS)))
    i, j, h, w = crops.T
    assert (h >= 1).all()
    assert (w >= 1).all()
    assert ((i >= 0) & (j >= 0) & (i + h <= size[0]) & (j + w <= size[1])).all()
    for ratio_ in (0.875, 0.01, 1.0):
        top, left, side, _ = get_center_crop(*size, ratio_)
        assert side >= 1
        assert side <= min(size)
        assert center_crops([size[0]], [size[1]], ratio_)[0].tolist() == [top, left, side, side]


@pytest.mark.parametrize("kwargs", [{"ratio": (0, 1)}, {"ratio": (4 / 3, 3 / 4)},
                                    {"scale": (0, 0)}, {"scale": (0.5, 0.1)}])
def test_random_crop_decoder_refuses_bounds_it_cannot_draw(kwargs: dict) -> None:
    """As RandomResizedCrop does: ratio=(0, 1) failed at the first batch with
    math.log's 'math domain error', naming nothing; reversed bounds were taken."""
    from fastforward.fields.decoders import RandomResizedCropRGBImageDecoder

    with pytest.raises(ValueError, match=r"RandomResizedCropRGBImageDecoder: (ratio|scale) must"):
        RandomResizedCropRGBImageDecoder((8, 8), **kwargs)
    with pytest.raises(ValueError, match=r"RandomResizedCrop: (ratio|scale) must"):
        T.RandomResizedCrop(**{"scale": (0.08, 1), "ratio": (3 / 4, 4 / 3), **kwargs}, size=8)


@pytest.mark.parametrize("ratio", [0, -1, 1.2])
def test_center_crop_decoder_refuses_a_ratio_outside_0_1(ratio: float) -> None:
    from fastforward.fields.decoders import CenterCropRGBImageDecoder

    with pytest.raises(ValueError, match=r"CenterCropRGBImageDecoder: ratio must be in \(0, 1\]"):
        CenterCropRGBImageDecoder((8, 8), ratio)


# ---------------------------------------------------------------------------
# flips


FLIPS = {"horizontal": (T.RandomHorizontalFlip, 2), "vertical": (T.RandomVerticalFlip, 1)}


@pytest.mark.parametrize(("cls", "axis"), FLIPS.values(), ids=FLIPS.keys())
def test_flip_flips_the_drawn_samples(batch: np.ndarray, cls: type, axis: int) -> None:
    ctx = context()
    out, _ = run(cls(0.5), batch, ctx)
    chosen = ctx.uniform(1)[:, 0] < 0.5
    assert 0 < chosen.sum() < B
    flipped = np.flip(batch, axis=axis)
    np.testing.assert_array_equal(out[chosen], flipped[chosen])
    np.testing.assert_array_equal(out[~chosen], batch[~chosen])


@pytest.mark.parametrize(("cls", "axis"), FLIPS.values(), ids=FLIPS.keys())
@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_flip_probability_bounds(batch: np.ndarray, cls: type, axis: int, prob: float) -> None:
    out, _ = run(cls(prob), batch)
    np.testing.assert_array_equal(out, np.flip(batch, axis=axis) if prob else batch)


@pytest.mark.parametrize("cls", [T.RandomHorizontalFlip, T.RandomVerticalFlip])
def test_flip_twice_is_identity(batch: np.ndarray, cls: type) -> None:
    once, _ = run(cls(0.5), batch, context())
    twice, _ = run(cls(0.5), once, context())
    np.testing.assert_array_equal(twice, batch)
    assert not np.array_equal(once, batch)


# ---------------------------------------------------------------------------
# translate and cutout


@pytest.mark.parametrize("padding", [4, 60])
def test_translate_is_a_window_of_the_padded_image(batch: np.ndarray, padding: int) -> None:
    fill = (10, 20, 30)
    out, _ = run(T.RandomTranslate(padding, fill), batch)
    padded = np.empty((B, H + 2 * padding, W + 2 * padding, 3), np.uint8)
    padded[:] = fill
    padded[:, padding : padding + H, padding : padding + W] = batch
    offsets = set()
    for k in range(B):
        found = [(y, x) for y in range(2 * padding + 1) for x in range(2 * padding + 1)
                 if np.array_equal(padded[k, y : y + H, x : x + W], out[k])]
        assert found, f"sample {k} is no window of its padded image"
        offsets.add(found[0])
    if padding < H // 2:  # with larger shifts, many windows are all fill
        assert len(offsets) > B // 2
    else:
        assert any((out[k] == fill).all() for k in range(B))


def test_translate_zero_padding_is_identity(batch: np.ndarray) -> None:
    out, _ = run(T.RandomTranslate(0), batch)
    np.testing.assert_array_equal(out, batch)


def test_cutout_fills_one_square_inside_the_image(batch: np.ndarray) -> None:
    size, fill = 11, (255, 0, 255)  # magenta: absent from the photographs
    out, _ = run(T.Cutout(size, fill), batch)
    corners = set()
    for k in range(B):
        square = np.all(out[k] == fill, axis=-1)
        assert square.sum() == size * size
        rows, cols = np.flatnonzero(square.any(1)), np.flatnonzero(square.any(0))
        assert len(rows) == len(cols) == size
        y, x = rows[0], cols[0]
        assert y >= 0
        assert y + size <= H
        assert x >= 0
        assert x + size <= W
        assert square[y : y + size, x : x + size].all()
        np.testing.assert_array_equal(out[k][~square], batch[k][~square])
        corners.add((y, x))
    assert len(corners) > B // 2


def test_cutout_of_the_whole_image(batch: np.ndarray) -> None:
    out, _ = run(T.Cutout(H, (1, 2, 3)), batch[:, :, :H])
    assert (out == [1, 2, 3]).all()


def test_a_fractional_fill_is_truncated_as_ffcv_does(batch: np.ndarray) -> None:
    """FFCV assigns its fill into uint8 images (``fill=CIFAR_MEAN`` as floats fills
    with 125, 122, 113); fastforward refused it."""
    mean = (125.307, 122.961, 113.8575)
    out, _ = run(T.Cutout(H, mean), batch[:, :, :H])
    assert (out == [125, 122, 113]).all()
    out, _ = run(T.RandomTranslate(W, fill=mean), batch)
    assert (out == [125, 122, 113]).all(axis=-1).any()
    for refused in ((1, 2, 256), (1, 2, -1), (1, 2, float("nan"))):
        with pytest.raises(ValueError, match="is not representable as uint8"):
            run(T.Cutout(4, refused), batch)


@pytest.mark.parametrize("op", [T.Cutout, T.RandomTranslate])
def test_a_fill_that_is_not_numbers_is_refused_naming_the_operation(op: Any) -> None:
    message = rf"{op.__name__}: fill must be a number or one number per channel, got"
    with pytest.raises(TypeError, match=message + r" \(\(1, 2\), 3\)"):
        op(4, ((1, 2), 3))  # when built, as FFCV's np.array(fill) refuses it
    words = op(4, "white")
    with pytest.raises(TypeError, match=message + " 'white'"):  # when declared
        words.declare_state_and_memory(State(shape=(8, 8, 3), dtype=np.dtype(np.uint8)))
    fill = op(4, [1, 2, 3]).fill  # an array, as FFCV keeps it
    assert isinstance(fill, np.ndarray)
    assert fill.tolist() == [1, 2, 3]


# ---------------------------------------------------------------------------
# random resized crop


def test_random_resized_crop_matches_reference(batch: np.ndarray) -> None:
    scale, ratio, size = (0.08, 1.0), (3 / 4, 4 / 3), 24
    ctx = context()
    out, state = run(T.RandomResizedCrop(scale, ratio, size), batch, ctx)
    assert state.shape == (size, size, 3)
    u = ctx.uniform(RANDOM_CROP_UNIFORMS)
    crops = set()
    for k in range(B):
        crop = reference.random_crop(H, W, scale, ratio, u[k])
        kernel = np.empty((size, size, 3), np.uint8)
        crop_resize_into(batch[k], *crop, kernel)
        np.testing.assert_array_equal(out[k], kernel)
        # the kernel computes in float32: values on .5 may round the other way
        expected = crop_resize(batch[k], *crop, size, size)
        assert np.abs(out[k].astype(int) - expected).max() <= 1
        assert np.mean(out[k] != expected) < 0.05
        crops.add(crop)
    assert len(crops) == B


# ---------------------------------------------------------------------------
# colour


COLOR = {
    "brightness": (T.RandomBrightness, reference.brightness),
    "contrast": (T.RandomContrast, reference.contrast),
    "saturation": (T.RandomSaturation, reference.saturation),
}


@pytest.mark.parametrize(("cls", "ref"), COLOR.values(), ids=COLOR.keys())
@pytest.mark.parametrize("p", [0.5, 1.0])
def test_color_matches_ffcv_formula(batch: np.ndarray, cls: type, ref: Callable, p: float
                                    ) -> None:
    magnitude = 0.8
    ctx = context()
    out, _ = run(cls(magnitude, p), batch, ctx)
    u = ctx.uniform(2)
    applied = u[:, 0] < p
    low, high = max(0.0, 1 - magnitude), 1 + magnitude
    factors = low + (high - low) * u[:, 1]
    assert applied.any()
    assert (applied.all() if p == 1 else not applied.all())
    for k in range(B):
        if not applied[k]:
            np.testing.assert_array_equal(out[k], batch[k])
            continue
        np.testing.assert_array_equal(out[k], ref(batch[k], factors[k]))
    assert not np.array_equal(out, batch)


@pytest.mark.parametrize("cls", [T.RandomBrightness, T.RandomContrast, T.RandomSaturation])
def test_color_zero_magnitude_is_identity(batch: np.ndarray, cls: type) -> None:
    out, _ = run(cls(0.0, 1.0), batch)
    np.testing.assert_array_equal(out, batch)


def test_saturation_zero_gives_gray(batch: np.ndarray) -> None:
    out, _ = run(T.RandomSaturation(1.0, 1.0), batch, context())
    factors = context().uniform(2)[:, 1] * 2
    k = int(np.argmin(factors))  # the least saturated sample is nearly gray
    spread = out[k].max(axis=-1).astype(int) - out[k].min(axis=-1)
    original = batch[k].max(axis=-1).astype(int) - batch[k].min(axis=-1)
    assert spread.mean() <= factors[k] * original.mean() + 1


@pytest.mark.parametrize("p", [0.5, 1.0])
def test_solarization(batch: np.ndarray, p: float) -> None:
    ctx = context()
    out, _ = run(T.Solarization(p, threshold=100), batch, ctx)
    chosen = ctx.uniform(1)[:, 0] < p
    expected = np.where(batch >= 100, 255 - batch, batch)
    np.testing.assert_array_equal(out[chosen], expected[chosen])
    np.testing.assert_array_equal(out[~chosen], batch[~chosen])
    assert chosen.any()
    assert (chosen.all() or p < 1)


def test_solarization_of_floats() -> None:
    x = np.array([[[0.0, 99.5, 100.0, 255.0]]], np.float32)
    out, _ = run(T.Solarization(1.0, 100), x)
    np.testing.assert_array_equal(out, [[[0.0, 99.5, 155.0, 0.0]]])


# ---------------------------------------------------------------------------
# normalize


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_normalize_numpy(batch: np.ndarray, dtype: type) -> None:
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    out, state = run(T.NormalizeImage(mean, std, dtype), batch)
    assert out.dtype == dtype
    assert state.dtype == dtype
    exact = (batch.astype(np.float64) - mean) / std
    # a table built in float64, then rounded once: the correctly rounded value
    np.testing.assert_array_equal(out, exact.astype(dtype))


def test_normalize_grayscale(batch: np.ndarray) -> None:
    gray = np.ascontiguousarray(batch[..., 1])
    out, _ = run(T.NormalizeImage([100.0], [50.0], np.float32), gray)
    np.testing.assert_allclose(out, (gray - 100.0) / 50.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_normalize_torch(batch: np.ndarray, dtype: type, layout: str) -> None:
    torch = torch_or_skip()
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    x = torch.from_numpy(batch)
    if layout == "NCHW":
        x = x.permute(0, 3, 1, 2)  # what ToTorchImage gives: channels_last memory
    out, _ = run(T.NormalizeImage(mean, std, dtype), x)
    exact = (batch.astype(np.float64) - mean) / std
    result = out.float().numpy()
    if layout == "NCHW":
        assert out.is_contiguous(memory_format=torch.channels_last)
        result = result.transpose(0, 2, 3, 1)
    tolerance = 1e-3 if dtype == np.float16 else 1e-6
    np.testing.assert_allclose(result, exact, rtol=tolerance, atol=tolerance)


# ---------------------------------------------------------------------------
# mixup


@pytest.mark.parametrize("same_lambda", [False, True])
def test_mixup_images_and_labels_agree(batch: np.ndarray, labels: np.ndarray,
                                       same_lambda: bool) -> None:
    ctx = context()
    images, _ = run(T.ImageMixup(0.4, same_lambda), batch, ctx)
    mixed, state = run(T.LabelMixup(0.4, same_lambda), labels, ctx)
    assert state.shape == (3,)
    assert mixed.dtype == np.float32
    lam = mixed[:, 2].astype(np.float64)
    assert ((lam >= 0) & (lam <= 1)).all()
    assert (len(set(lam)) == 1) == same_lambda
    np.testing.assert_array_equal(mixed[:, 0], labels[:, 0])
    np.testing.assert_array_equal(mixed[:, 1], np.roll(labels[:, 0], 1))
    for k in range(B):
        lam_k = float(np.float32(lam[k])) if not same_lambda else lam[0]
        expected = lam_k * batch[k].astype(np.float64) + (1 - lam_k) * batch[k - 1]
        diff = np.abs(images[k] - np.round(expected))
        assert diff.max() <= 1
        assert np.mean(diff > 0) < 0.01


def test_mixup_lambda_follows_the_sample(labels: np.ndarray) -> None:
    perm = np.random.default_rng(0).permutation(B)
    plain, _ = run(T.LabelMixup(1.0, False), labels, context())
    permuted, _ = run(T.LabelMixup(1.0, False), labels[perm], context(perm))
    np.testing.assert_array_equal(permuted[:, 2], plain[perm, 2])


def test_label_mixup_accepts_flat_labels(labels: np.ndarray) -> None:
    flat, _ = run(T.LabelMixup(0.2, False), labels[:, 0].astype(np.int32))
    column, _ = run(T.LabelMixup(0.2, False), labels)
    np.testing.assert_array_equal(flat, column)


def test_mixup_to_one_hot(labels: np.ndarray) -> None:
    torch = torch_or_skip()
    rows = np.array([[3, 5, 0.25], [2, 2, 0.7], [0, 9, 1.0]], np.float32)
    out, state = run(T.MixupToOneHot(10), torch.from_numpy(rows))
    assert state.shape == (10,)
    expected = np.zeros((3, 10), np.float32)
    expected[0, 3], expected[0, 5] = 0.25, 0.75
    expected[1, 2] = 1.0
    expected[2, 0] = 1.0
    np.testing.assert_allclose(out.numpy(), expected)


# ---------------------------------------------------------------------------
# poisoning and labels


@pytest.mark.parametrize("alpha_kind", ["scalar", "map"])
def test_poison_blends_listed_samples(batch: np.ndarray, alpha_kind: str) -> None:
    mask = batch[7][::-1].copy()
    alpha = 0.3 if alpha_kind == "scalar" else np.linspace(0, 1, H * W).reshape(H, W)
    chosen = [1, 5, 100]  # 100 is not in the batch
    ctx = context(np.arange(B) + 0)
    out, _ = run(T.Poison(mask, alpha, chosen, clamp=(20, 230)), batch, ctx)
    a = np.asarray(alpha, np.float64)
    a = a[..., None] if a.ndim == 2 else a
    for k in range(B):
        if k in chosen:
            expected = np.clip(batch[k] * (1 - a) + mask * a, 20, 230).astype(np.uint8)
            assert np.abs(out[k].astype(int) - expected).max() <= 1
        else:
            np.testing.assert_array_equal(out[k], batch[k])


def test_replace_label(labels: np.ndarray) -> None:
    indices = np.arange(B) + 50
    out, _ = run(T.ReplaceLabel([52, 60, 3], 99), labels, context(indices))
    expected = labels.copy()
    expected[[2, 10]] = 99
    np.testing.assert_array_equal(out, expected)


# ---------------------------------------------------------------------------
# reproducibility

RANDOM_OPS: dict[str, Callable[[], Operation]] = {
    "hflip": lambda: T.RandomHorizontalFlip(),
    "vflip": lambda: T.RandomVerticalFlip(),
    "translate": lambda: T.RandomTranslate(4),
    "cutout": lambda: T.Cutout(8),
    "rrc": lambda: T.RandomResizedCrop((0.08, 1.0), (3 / 4, 4 / 3), 24),
    "brightness": lambda: T.RandomBrightness(0.5),
    "contrast": lambda: T.RandomContrast(0.5),
    "saturation": lambda: T.RandomSaturation(0.5),
    "solarization": lambda: T.Solarization(),
    "mixup": lambda: T.ImageMixup(0.5, False),
}


@pytest.mark.parametrize("make", RANDOM_OPS.values(), ids=RANDOM_OPS.keys())
def test_same_key_same_output_other_epoch_other_output(batch: np.ndarray,
                                                       make: Callable[[], Operation]) -> None:
    first, _ = run(make(), batch, context(epoch=3))
    again, _ = run(make(), batch, context(epoch=3))
    other, _ = run(make(), batch, context(epoch=4))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("make", [v for k, v in RANDOM_OPS.items() if k != "mixup"],
                         ids=[k for k in RANDOM_OPS if k != "mixup"])
def test_a_sample_gets_its_augmentation_at_any_position(batch: np.ndarray,
                                                        make: Callable[[], Operation]) -> None:
    indices = np.arange(B) + 1000
    perm = np.random.default_rng(5).permutation(B)
    plain, _ = run(make(), batch, context(indices))
    moved, _ = run(make(), batch[perm], context(indices[perm]))
    np.testing.assert_array_equal(moved, plain[perm])
    # and alone, in a smaller last batch written into a larger buffer
    alone, _ = run(make(), batch[perm[:3]], context(indices[perm[:3]]), slots=B)
    np.testing.assert_array_equal(alone, plain[perm[:3]])


def test_output_is_written_into_the_destination(batch: np.ndarray) -> None:
    op = T.Cutout(4)
    _, query = op.declare_state_and_memory(state_of(batch))
    destination = allocate(query, 32)
    out = op.apply(batch[:5], destination, context(np.arange(5)))
    assert len(out) == 5
    assert np.shares_memory(out, destination)


# ---------------------------------------------------------------------------
# errors at declaration

NUMPY_IMAGES = State(shape=(H, W, 3))
TORCH_STATE = State(jit_mode=False, shape=(H, W, 3))  # dtype left as NumPy: checked later
ERRORS: dict[str, tuple[Operation, State, type]] = {
    "flip-on-labels": (T.RandomVerticalFlip(), State(shape=(1,), dtype=np.dtype("i8")),
                       ValueError),
    "normalize-floats": (T.NormalizeImage([0, 0, 0], [1, 1, 1], np.float16),
                         State(shape=(H, W, 3), dtype=np.dtype("f4")), TypeError),
    "normalize-channels": (T.NormalizeImage([0, 0, 0], [1, 1, 1], np.float16),
                           State(shape=(H, W, 4)), ValueError),
    "cutout-too-big": (T.Cutout(H + 1), NUMPY_IMAGES, ValueError),
    "translate-fill": (T.RandomTranslate(2, fill=(1, 2)), NUMPY_IMAGES, ValueError),
    "translate-fill-range": (T.RandomTranslate(2, fill=(1, 2, 300)), NUMPY_IMAGES, ValueError),
    "rrc-floats": (T.RandomResizedCrop((0.5, 1), (1, 1), 8),
                   State(shape=(H, W, 3), dtype=np.dtype("f4")), TypeError),
    "contrast-gray": (T.RandomContrast(0.5), State(shape=(H, W, 1)), ValueError),
    "brightness-flat": (T.RandomBrightness(0.5), State(shape=(H * W * 3,)), ValueError),
    "label-mixup-floats": (T.LabelMixup(0.2, False), State(shape=(1,), dtype=np.dtype("f4")),
                           TypeError),
    "label-mixup-images": (T.LabelMixup(0.2, False), NUMPY_IMAGES, ValueError),
    "poison-mask": (T.Poison(np.zeros((5, 5, 3)), 0.5, [0]), NUMPY_IMAGES, ValueError),
    "replace-label-torch": (T.ReplaceLabel([0], 1), TORCH_STATE, TypeError),
    "totensor-twice": (T.ToTensor(), TORCH_STATE, TypeError),
    "todevice-numpy": (T.ToDevice("cpu"), NUMPY_IMAGES, TypeError),
    "torchimage-numpy": (T.ToTorchImage(), NUMPY_IMAGES, TypeError),
    "module-numpy": (T.ModuleWrapper(abs), NUMPY_IMAGES, TypeError),
    "onehot-numpy": (T.MixupToOneHot(10), State(shape=(3,), dtype=np.dtype("f4")), TypeError),
    "squeeze-range": (T.Squeeze(3), State(shape=(1,)), ValueError),
    "view-itemsize": (T.View(np.float32), State(shape=(3,)), ValueError),
    # (it permuted again: (B, 48, 3, 36) images, without a word)
    "torchimage-twice": (T.ToTorchImage(), State(jit_mode=False, shape=(3, H, W),
                                                 channels_first=True), ValueError),
}


@pytest.mark.parametrize(("op", "state", "error"), ERRORS.values(), ids=ERRORS.keys())
def test_declare_rejects_bad_input(op: Operation, state: State, error: type) -> None:
    with pytest.raises(error, match=type(op).__name__):
        op.declare_state_and_memory(state)


@pytest.mark.parametrize("make", [
    lambda: T.RandomHorizontalFlip(1.5),
    lambda: T.Cutout(-1),
    lambda: T.RandomTranslate(-2),
    lambda: T.ImageMixup(0.0, False),
    lambda: T.NormalizeImage([0, 0], [1, 0], np.float32),
    lambda: T.NormalizeImage([0], [1], np.int16),
    lambda: T.RandomResizedCrop((0.5, 0.1), (3 / 4, 4 / 3), 8),
    lambda: T.RandomBrightness(-1),
    lambda: T.MixupToOneHot(0),
    lambda: T.ModuleWrapper(5),
    lambda: T.Squeeze("a"),
    lambda: T.Squeeze(True),
    lambda: T.Convert(object),
    lambda: T.Convert("x"),
    lambda: T.Convert(np.str_),
    lambda: T.Convert("S4"),
    lambda: T.Convert(np.void),
    lambda: T.Convert("datetime64[s]"),
], ids=["flip-prob", "cutout", "translate", "mixup-alpha", "normalize-std", "normalize-type",
        "rrc-scale", "brightness", "onehot", "module-not-callable", "squeeze-str",
        "squeeze-bool", "convert-object", "convert-no-dtype", "convert-str", "convert-bytes",
        "convert-void", "convert-datetime"])
def test_constructor_rejects_bad_arguments(make: Callable[[], Operation]) -> None:
    """Where they are made: ModuleWrapper(5) and Squeeze('a') failed at the first batch,
    Convert(object) at ToTensor's, Convert(np.str_) (a zero-size string dtype) later still."""
    with pytest.raises((ValueError, TypeError)):
        make()


def test_to_device_of_no_device_says_what_a_device_is() -> None:
    """torch's message listed its twenty device types, or its overloads' signatures."""
    torch = torch_or_skip()
    state = State(jit_mode=False, shape=(H, W, 3), dtype=torch.uint8)
    for device in ("cudx:0", 5.5):
        with pytest.raises(ValueError, match=rf"ToDevice\({device!r}\): no torch device "
                                             r"\('cpu', 'cuda', 'cuda:0', a torch.device\)"):
            T.ToDevice(device).declare_state_and_memory(state)


# ---------------------------------------------------------------------------
# shapes and dtypes (NumPy)


def test_convert_numpy(batch: np.ndarray) -> None:
    out, state = run(T.Convert(np.float32), batch)
    np.testing.assert_array_equal(out, batch.astype(np.float32))
    assert state.dtype == np.float32
    assert state.jit_mode


def test_view_numpy() -> None:
    x = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    out, state = run(T.View(np.int16), x)
    assert np.shares_memory(out, x)
    assert state.dtype == np.int16
    out, state = run(T.View(np.uint8), x)
    assert state.shape == (3, 8)


def test_squeeze_numpy(labels: np.ndarray) -> None:
    out, state = run(T.Squeeze(), labels)
    assert state.shape == ()
    assert out.shape == (B,)
    assert np.shares_memory(out, labels)
    out, state = run(T.Squeeze(-1), labels[:1])  # a batch of one keeps its batch dimension
    assert out.shape == (1,)
    out, state = run(T.Squeeze(1), np.zeros((4, 2, 1)))  # size 2: kept, as torch does
    assert state.shape == (2, 1)


@pytest.mark.parametrize("rows", [B, 1])
def test_squeeze_0_does_nothing(labels: np.ndarray, rows: int) -> None:
    """FFCV code's Squeeze(0) (a no-op there but for a batch of one) was refused."""
    out, state = run(T.Squeeze(0), labels[:rows])
    assert out.shape == (rows, 1)
    assert state.shape == (1,)
    out, state = run(T.Squeeze(0, -1), labels[:rows])
    assert out.shape == (rows,)


# ---------------------------------------------------------------------------
# torch


def test_to_tensor_shares_memory(batch: np.ndarray) -> None:
    torch = torch_or_skip()
    out, state = run(T.ToTensor(), batch)
    assert isinstance(out, torch.Tensor)
    assert state.dtype == torch.uint8
    assert not state.jit_mode
    assert out.data_ptr() == batch.ctypes.data
    lengths = np.arange(B)
    data, lens = T.ToTensor().apply((batch, lengths), None, context())
    assert data.data_ptr() == batch.ctypes.data
    assert lens.tolist() == lengths.tolist()


def test_to_tensor_keeps_a_bytes_batchs_lengths() -> None:
    torch = torch_or_skip()
    from fastforward.fields.bytes import BytesBatch

    rows = np.zeros((3, 5), np.uint8)
    batch = rows.view(BytesBatch)
    batch.lengths = np.array([5, 0, 2])
    out = T.ToTensor().apply(batch, None, context())
    assert type(out) is torch.Tensor
    assert out.shape == (3, 5)
    assert out.data_ptr() == rows.ctypes.data
    assert out.lengths.tolist() == [5, 0, 2]


def test_to_tensor_copies_read_only_arrays(batch: np.ndarray) -> None:
    torch_or_skip()
    frozen = batch.copy()
    frozen.flags.writeable = False
    out = T.ToTensor().apply(frozen, None, context())
    np.testing.assert_array_equal(out.numpy(), batch)


def test_to_device_cpu_is_a_no_op(batch: np.ndarray) -> None:
    torch = torch_or_skip()
    x = torch.from_numpy(batch)
    out, state = run(T.ToDevice("cpu"), x)
    assert out is x
    assert state.device == torch.device("cpu")
    assert T.ToDevice(torch.device("cpu")).declare_state_and_memory(state_of(x))[1] is None


def test_to_device_cuda_without_a_gpu_says_why_and_what_to_do(batch: np.ndarray) -> None:
    torch = torch_or_skip()
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    why = "a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
    with pytest.raises(RuntimeError, match=rf"CUDA is not available: .*{why}.*ToDevice\('cpu'\)"):
        T.ToDevice("cuda").declare_state_and_memory(state_of(torch.from_numpy(batch)))


@pytest.mark.cuda
def test_to_device_cuda(batch: np.ndarray) -> None:
    torch = torch_or_skip()
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    x = torch.from_numpy(batch).permute(0, 3, 1, 2)
    out, _state = run(T.ToDevice("cuda"), x)
    torch.cuda.synchronize()
    assert out.is_cuda
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out.cpu(), x)


def test_to_torch_image(batch: np.ndarray) -> None:
    torch = torch_or_skip()
    x = torch.from_numpy(batch)
    out, state = run(T.ToTorchImage(), x)
    assert state.shape == (3, H, W)
    assert out.data_ptr() == x.data_ptr()
    assert out.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(out.numpy(), batch.transpose(0, 3, 1, 2))
    out, _ = run(T.ToTorchImage(channels_last=False), x)
    assert out.is_contiguous()
    assert out.data_ptr() != x.data_ptr()
    np.testing.assert_array_equal(out.numpy(), batch.transpose(0, 3, 1, 2))


def test_to_torch_image_int16_as_float16() -> None:
    torch = torch_or_skip()
    half = np.linspace(-2, 2, 2 * 4 * 4 * 3).astype(np.float16).reshape(2, 4, 4, 3)
    out, state = run(T.ToTorchImage(), torch.from_numpy(half.view(np.int16)))
    assert out.dtype == state.dtype == torch.float16
    np.testing.assert_array_equal(out.numpy(), half.transpose(0, 3, 1, 2))


def test_convert_and_view_torch(batch: np.ndarray) -> None:
    torch = torch_or_skip()
    x = torch.from_numpy(batch).permute(0, 3, 1, 2)
    out, state = run(T.Convert(np.float16), x)  # a NumPy dtype, translated
    assert out.dtype == state.dtype == torch.float16
    assert out.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(out.float().numpy(), batch.transpose(0, 3, 1, 2))
    flat = torch.from_numpy(batch.reshape(B, -1).astype(np.float16))
    viewed, state = run(T.View(torch.int16), flat)
    assert viewed.data_ptr() == flat.data_ptr()
    assert state.dtype == torch.int16


def test_squeeze_torch(labels: np.ndarray) -> None:
    torch = torch_or_skip()
    out, state = run(T.Squeeze(), torch.from_numpy(labels))
    assert out.shape == (B,)
    assert state.shape == ()


def test_module_wrapper(batch: np.ndarray) -> None:
    torch = torch_or_skip()
    conv = torch.nn.Conv2d(3, 2, 3)
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    out = T.ModuleWrapper(conv).apply(x, None, context())
    assert out.shape == (B, 2, H - 2, W - 2)
    assert not out.requires_grad
    with torch.no_grad():
        assert torch.equal(out, conv(x))


def test_torch_pipeline_end_to_end(batch: np.ndarray, labels: np.ndarray) -> None:
    torch = torch_or_skip()
    ops = [T.RandomHorizontalFlip(), T.ToTensor(), T.ToDevice("cpu"), T.ToTorchImage(),
           T.NormalizeImage(np.full(3, 127.5), np.full(3, 127.5), np.float16)]
    x, state = batch, state_of(batch)
    for op in ops:
        state, query = op.declare_state_and_memory(state)
        x = op.apply(x, allocate(query, B), context())
    assert x.shape == (B, 3, H, W)
    assert x.dtype == torch.float16 == state.dtype
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert float(x.min()) >= -1
    assert float(x.max()) <= 1

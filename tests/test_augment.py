"""TrivialAugmentWide, RandAugment and AutoAugment: draws, magnitudes, results.

The expected images come from the references of torchvision's operations
(``reference.tv_*``), applied as torchvision's ``_apply_image_or_video_transform``
applies them, with the decisions each policy reports in its plan; the
comparison with torchvision itself is in ``test_augment_torchvision.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference as ref
from conftest import photo_crops_file
from harness import apply_checked, state_of

import fastforward.transforms as T
from fastforward._ext.resize import crop_resize_into
from fastforward.pipeline import BatchContext, State
from fastforward.pipeline.random import stream_id
from fastforward.transforms.auto_augment import (
    AUTO_AUGMENT,
    AUTO_AUGMENT_POLICIES,
    RAND_AUGMENT,
    TRIVIAL_AUGMENT_WIDE,
    AutoAugmentPolicy,
    linspace32,
    posterize_bits,
)

H, W, B = 40, 40, 48


@pytest.fixture(scope="module")
def batch(photos: list[np.ndarray]) -> np.ndarray:
    """48 square crops of the photographs, resized to 40 × 40."""
    rng = np.random.default_rng(3)
    out = np.empty((B, H, W, 3), np.uint8)
    for k in range(B):
        photo = photos[k % len(photos)]
        side = int(rng.integers(60, min(photo.shape[:2])))
        y, x = int(rng.integers(photo.shape[0] - side)), int(rng.integers(photo.shape[1] - side))
        crop_resize_into(photo, y, x, side, side, out[k])
    return out


@pytest.fixture(scope="module")
def wide_batch(batch: np.ndarray) -> np.ndarray:
    """Not square: 40 × 31 (quarter turns go through the affine path)."""
    return np.ascontiguousarray(batch[:, :, 4:35])


def context(n: int = B, epoch: int = 0, seed: int = 11, offset: int = 500) -> BatchContext:
    return BatchContext(indices=np.arange(n) + offset, epoch=epoch, seed=seed, stream=7)


Fill = tuple[float, float, float] | None


def tv_apply(image: np.ndarray, name: str, magnitude: float, bilinear: bool,
             fill: Fill) -> np.ndarray:
    """torchvision's ``_apply_image_or_video_transform``, on the references."""
    if name == "Identity":
        return image
    if name in ("ShearX", "ShearY"):
        return ref.tv_shear(image, magnitude, name[-1].lower(), bilinear, fill)
    if name == "TranslateX":
        return ref.tv_translate(image, int(magnitude), 0, bilinear, fill)
    if name == "TranslateY":
        return ref.tv_translate(image, 0, int(magnitude), bilinear, fill)
    if name == "Rotate":
        return ref.tv_rotate(image, magnitude, bilinear, fill)
    factor = {"Brightness": ref.tv_brightness, "Color": ref.tv_saturation,
              "Contrast": ref.tv_contrast, "Sharpness": ref.tv_sharpness}
    if name in factor:
        return factor[name](image, 1.0 + magnitude)
    if name == "Posterize":
        bits = int(magnitude)
        return image if bits >= 8 else ref.tv_posterize(image, bits)
    if name == "Solarize":
        return ref.tv_solarize(image, 255 * magnitude)
    plain = {"AutoContrast": ref.tv_autocontrast, "Equalize": ref.tv_equalize,
             "Invert": ref.tv_invert}
    return plain[name](image)


def expected(op: Any, images: np.ndarray, ctx: BatchContext) -> np.ndarray:
    """Each image through the reference operations its plan names, in order."""
    plan = op.plan(ctx, images.shape[1], images.shape[2])
    fill = None if op._fill is None else tuple(float(v) for v in op._fill)
    out = images.copy()
    for i in range(len(images)):
        image = images[i]
        for index, magnitude in zip(plan.operations[i], plan.magnitudes[i], strict=True):
            if index >= 0:
                image = np.ascontiguousarray(tv_apply(image, plan.names[index], float(magnitude),
                                                      op.interpolation == "bilinear", fill))
        out[i] = image
    return out


POLICIES: dict[str, Callable[[], Any]] = {
    "trivial": lambda: T.TrivialAugmentWide(),
    "trivial-bilinear-fill": lambda: T.TrivialAugmentWide(interpolation="bilinear",
                                                          fill=(20, 200, 90)),
    "trivial-11-bins": lambda: T.TrivialAugmentWide(num_magnitude_bins=11),
    "rand": lambda: T.RandAugment(),
    "rand-3-ops-bin-30-bilinear": lambda: T.RandAugment(3, 30, interpolation="bilinear"),
    "rand-0-ops": lambda: T.RandAugment(0),
    "auto-imagenet": lambda: T.AutoAugment(),
    "auto-cifar10-fill": lambda: T.AutoAugment(AutoAugmentPolicy.CIFAR10, fill=128),
    "auto-svhn-bilinear": lambda: T.AutoAugment("svhn", interpolation="bilinear"),
}


@pytest.mark.parametrize("make", POLICIES.values(), ids=POLICIES.keys())
def test_policy_gives_the_reference_operations(batch: np.ndarray, wide_batch: np.ndarray,
                                               make: Callable[[], Any]) -> None:
    op = make()
    for images in (batch, wide_batch):
        for epoch in range(3):
            ctx = context(epoch=epoch)
            out, _ = apply_checked(op, images, ctx)
            np.testing.assert_array_equal(out, expected(op, images, ctx))


def test_rotations_of_every_bin_on_square_and_other_images(batch: np.ndarray,
                                                           wide_batch: np.ndarray) -> None:
    """Rotate at each of TrivialAugmentWide's 31 bins, both signs (quarter and half
    turns included: 90 and 135 degrees are bins)."""
    op = T.TrivialAugmentWide()
    names = list(TRIVIAL_AUGMENT_WIDE)
    for images in (batch[:1], wide_batch[:1]):
        for magnitude in linspace32(0.0, 135.0, 31):
            for sign in (1, -1):
                plan = T.auto_augment.Plan(names, np.array([[names.index("Rotate")]]),
                                           np.array([[sign * magnitude]]))
                ops, params = plan.kernel(*images.shape[1:3])
                out = np.empty_like(images)
                T.auto_augment.augment_into(images, out, ops, params)
                np.testing.assert_array_equal(
                    out[0], ref.tv_rotate(images[0], sign * magnitude, False, None),
                    err_msg=f"{sign * magnitude} degrees")
    assert op.plan(context(), H, W).kernel(H, W)[0].dtype == np.int32


# ---------------------------------------------------------------------------
# draws


def test_trivial_augment_draws_uniformly() -> None:
    op = T.TrivialAugmentWide()
    ctx = BatchContext(indices=np.arange(28000), epoch=1, seed=2, stream=9)
    plan = op.plan(ctx, 64, 64)
    operations = plan.operations[:, 0]
    counts = np.bincount(operations, minlength=14)
    assert counts.sum() == 28000
    assert np.all(np.abs(counts - 2000) < 5 * math.sqrt(2000))
    shear = operations == plan.names.index("ShearX")
    values = np.abs(plan.magnitudes[shear, 0])
    bins = np.searchsorted(linspace32(0.0, 0.99, 31), values)
    assert np.all(np.abs(np.bincount(bins, minlength=31) - shear.sum() / 31) < 5 * math.sqrt(
        shear.sum() / 31))
    negative = np.mean(plan.magnitudes[shear, 0] < 0)
    assert 0.45 < negative < 0.55
    unsigned = operations == plan.names.index("Solarize")
    assert np.all(plan.magnitudes[unsigned, 0] >= 0)
    assert np.all(plan.magnitudes[operations == plan.names.index("Identity"), 0] == 0)


def test_rand_augment_draws_each_step_and_one_magnitude() -> None:
    op = T.RandAugment(num_ops=3, magnitude=5)
    plan = op.plan(BatchContext(indices=np.arange(14000), epoch=0, seed=4, stream=1), 224, 160)
    assert plan.operations.shape == (14000, 3)
    for step in range(3):
        counts = np.bincount(plan.operations[:, step], minlength=14)
        assert np.all(np.abs(counts - 1000) < 5 * math.sqrt(1000))
    assert not np.array_equal(plan.operations[:, 0], plan.operations[:, 1])
    translate = plan.operations == plan.names.index("TranslateX")
    # bin 5 of linspace(0, 150/331 * width) with width 160
    assert set(np.abs(plan.magnitudes[translate]).tolist()) == {
        float(linspace32(0.0, 150.0 / 331.0 * 160, 31)[5])}
    assert set(np.abs(plan.magnitudes[plan.operations == plan.names.index("TranslateY")])
               .tolist()) == {float(linspace32(0.0, 150.0 / 331.0 * 224, 31)[5])}


def test_auto_augment_draws_sub_policies_and_their_probabilities() -> None:
    op = T.AutoAugment()
    n = 25000
    plan = op.plan(BatchContext(indices=np.arange(n), epoch=0, seed=8, stream=2), 64, 64)
    u = BatchContext(indices=np.arange(n), epoch=0, seed=8, stream=2).uniform(5)
    chosen = np.minimum((u[:, 0] * 25).astype(int), 24)
    counts = np.bincount(chosen, minlength=25)
    assert np.all(np.abs(counts - 1000) < 5 * math.sqrt(1000))
    policies = AUTO_AUGMENT_POLICIES[AutoAugmentPolicy.IMAGENET]
    for p, sub_policy in enumerate(policies):
        rows = chosen == p
        for k, (name, probability, _) in enumerate(sub_policy):
            applied = plan.operations[rows, k] >= 0
            assert np.all(plan.operations[rows, k][applied] == plan.names.index(name))
            rate = applied.mean()
            assert abs(rate - probability) < 5 * math.sqrt(probability * (1 - probability)
                                                              / rows.sum()) + 1e-9, (p, k)


def test_auto_augment_magnitudes_are_the_policy_bins() -> None:
    plan = T.AutoAugment().plan(BatchContext(indices=np.arange(5000), epoch=0, seed=1,
                                             stream=2), 64, 64)
    rotate = plan.operations == plan.names.index("Rotate")
    assert set(np.abs(plan.magnitudes[rotate]).tolist()) == {
        float(linspace32(0.0, 30.0, 10)[b]) for b in (3, 8, 9)}
    posterize = plan.operations == plan.names.index("Posterize")
    assert set(plan.magnitudes[posterize].tolist()) == {
        float(posterize_bits(8, 10, 4)[b]) for b in (5, 6, 7, 8)}


def test_same_key_same_output_other_epoch_other_output(batch: np.ndarray) -> None:
    op = T.RandAugment()
    first, _ = apply_checked(op, batch, context(epoch=3))
    again, _ = apply_checked(T.RandAugment(), batch, context(epoch=3))
    other, _ = apply_checked(op, batch, context(epoch=4))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("make", POLICIES.values(), ids=POLICIES.keys())
def test_a_sample_gets_its_augmentation_at_any_position(batch: np.ndarray,
                                                        make: Callable[[], Any]) -> None:
    """Per sample: any order, any sub-range of the batch (as a loader splitting the
    batch over threads calls it), the same pixels."""
    indices = np.arange(B) + 1000
    perm = np.random.default_rng(5).permutation(B)
    plain, _ = apply_checked(make(), batch, BatchContext(indices, 2, 9, 4))
    moved, _ = apply_checked(make(), batch[perm], BatchContext(indices[perm], 2, 9, 4))
    np.testing.assert_array_equal(moved, plain[perm])
    op = make()
    out = np.full_like(batch, 77)
    for lo, hi in ((0, 7), (7, 30), (30, B)):
        op.apply(batch[lo:hi], out[lo:hi], BatchContext(indices[lo:hi], 2, 9, 4))
    np.testing.assert_array_equal(out, plain)


def test_declares_sample_independence_and_gil_release() -> None:
    for cls in (T.TrivialAugmentWide, T.RandAugment, T.AutoAugment):
        assert cls.sample_independent is True
        assert cls.releases_gil is True
        assert cls.moves_pixels is True


def test_refused_where_masks_follow_the_image(tmp_path: Path) -> None:
    """Masks would not move with the policy's shears and rotations."""
    from fastforward.fields import MaskField, RGBImageField
    from fastforward.fields.decoders import CenterCropRGBImageDecoder, MaskDecoder
    from fastforward.loader import Loader
    from fastforward.scenes import make_scenes
    from fastforward.writer import DatasetWriter

    path = tmp_path / "scenes.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"), "mask": MaskField()},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(s.image, s.mask) for s in make_scenes(4, seed=1, size=(40, 40))])
    image = [CenterCropRGBImageDecoder((32, 32), 1.0), T.TrivialAugmentWide()]
    with pytest.raises(ValueError, match="moves the image's pixels after its decoder"):
        Loader(path, 4, pipelines={"image": image, "mask": [MaskDecoder(follows="image")]})
    Loader(path, 4, pipelines={"image": image, "mask": None}).close()  # not followed: fine


@pytest.mark.parametrize("view", ["fortran", "rows-reversed", "columns-reversed", "every-other"])
def test_input_that_is_not_contiguous(batch: np.ndarray, view: str) -> None:
    """Views the kernel cannot walk (channels apart, rows or pixels backwards) are
    copied first; a view with rows further apart is read as it is. Same results."""
    op = T.TrivialAugmentWide()
    views = {"fortran": lambda b: np.asfortranarray(b), "rows-reversed": lambda b: b[:, ::-1],
             "columns-reversed": lambda b: b[:, :, ::-1],
             "every-other": lambda b: np.repeat(b, 2, axis=1)[:, ::2]}
    strided = views[view](batch)
    out, _ = apply_checked(op, strided, context())
    reference_out, _ = apply_checked(op, np.ascontiguousarray(strided), context())
    np.testing.assert_array_equal(out, reference_out)


# ---------------------------------------------------------------------------
# magnitudes


@pytest.mark.parametrize(("start", "end", "steps"), [
    (0.0, 0.99, 31), (0.0, 0.9, 31), (0.0, 32.0, 31), (0.0, 135.0, 31), (1.0, 0.0, 31),
    (0.0, 0.3, 10), (0.0, 30.0, 10), (1.0, 0.0, 10), (0.0, 150.0 / 331.0 * 192, 31),
    (0.0, 150.0 / 331.0 * 224, 10), (0.0, 0.99, 7), (0.5, 0.25, 2), (2.0, 3.0, 1),
])
def test_linspace32_is_torch_linspace(start: float, end: float, steps: int) -> None:
    torch = pytest.importorskip("torch", reason="compared with torch.linspace")
    ours = linspace32(start, end, steps)
    theirs = torch.linspace(start, end, steps).double().numpy()
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX512" or (capability == "AVX2" and steps < 16):
        np.testing.assert_array_equal(ours, theirs)  # one by one, each a fused multiply-add
    else:  # AVX2's 8-wide loop, or a build without FMA, may round a few differently
        np.testing.assert_array_max_ulp(ours.astype(np.float32), theirs.astype(np.float32), 1)


@pytest.mark.parametrize("divisor", [4, 6])
@pytest.mark.parametrize("steps", [2, 3, 10, 31, 50, 101])
def test_posterize_bits_are_torchs(steps: int, divisor: int) -> None:
    torch = pytest.importorskip("torch", reason="compared with torch's expression")
    theirs = (8 - (torch.arange(steps) / ((steps - 1) / divisor))).round().int().numpy()
    np.testing.assert_array_equal(posterize_bits(8, steps, divisor), theirs)


def test_tables_have_torchvisions_operations_in_order() -> None:
    assert list(TRIVIAL_AUGMENT_WIDE) == [
        "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
        "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize"]
    assert list(RAND_AUGMENT) == list(TRIVIAL_AUGMENT_WIDE)
    assert list(AUTO_AUGMENT) == [*list(RAND_AUGMENT)[1:], "Invert"]
    for policies in AUTO_AUGMENT_POLICIES.values():
        assert len(policies) == 25
        for sub_policy in policies:
            for name, probability, bin_index in sub_policy:
                assert name in AUTO_AUGMENT
                assert 0 <= probability <= 1
                assert bin_index is None or 0 <= bin_index < 10


# ---------------------------------------------------------------------------
# torch


def to_torch(batch: np.ndarray, layout: str) -> Any:
    import torch

    tensor = torch.from_numpy(batch)
    if layout == "chw":
        return tensor.permute(0, 3, 1, 2)  # ToTorchImage's channels-last view
    if layout == "chw-contiguous":
        return tensor.permute(0, 3, 1, 2).contiguous()
    return tensor


def to_numpy(tensor: Any, layout: str) -> np.ndarray:
    return (tensor if layout == "hwc" else tensor.permute(0, 2, 3, 1)).contiguous().numpy()


@pytest.mark.parametrize("layout", ["hwc", "chw", "chw-contiguous"])
@pytest.mark.parametrize("make", POLICIES.values(), ids=POLICIES.keys())
def test_torch_path_gives_the_same_pixels(batch: np.ndarray, wide_batch: np.ndarray,
                                          make: Callable[[], Any], layout: str) -> None:
    pytest.importorskip("torch", reason="torch is an optional extra")
    op = make()
    for images in (batch, wide_batch):
        ctx = context(epoch=5)
        tensor = to_torch(images, layout)
        out, state = apply_checked(op, tensor, ctx)
        np.testing.assert_array_equal(to_numpy(out, layout), apply_checked(op, images, ctx)[0])
        assert state.shape == tuple(tensor.shape[1:])
        if layout == "chw":
            import torch

            assert out.is_contiguous(memory_format=torch.channels_last)


def test_torch_path_covers_every_operation(batch: np.ndarray) -> None:
    """All 13 kernel codes through the torch path, with and without fill and both
    interpolations, against the compiled path (kernel codes given directly)."""
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    from fastforward._ext.augment import OPS, PARAMS, augment_into
    from fastforward.transforms._augment_torch import apply_kernel_ops

    rng = np.random.default_rng(0)
    n = len(batch)
    codes = np.array([[k % len(OPS), (k * 5 + 3) % len(OPS) if k % 3 else -1] for k in range(n)],
                     np.int32)
    params = np.zeros((n, 2, PARAMS))
    for i in range(n):
        for k in range(2):
            name = OPS[codes[i, k]] if codes[i, k] >= 0 else None
            if name == "AFFINE":
                params[i, k] = ref.tv_inverse_affine((0.0, 0.0), float(rng.uniform(-40, 40)),
                                                     (0.0, 0.0), (float(rng.uniform(-20, 20)),
                                                                  0.0))
            elif name == "SHIFT":
                params[i, k, :2] = rng.integers(-12, 12, 2)
            elif name == "ROT90":
                params[i, k, 0] = rng.integers(1, 4)
            elif name in ("BRIGHTNESS", "SATURATION", "CONTRAST", "SHARPNESS"):
                params[i, k, 0] = rng.uniform(0, 2)
            elif name == "POSTERIZE":
                params[i, k, 0] = rng.integers(0, 9)
            elif name == "SOLARIZE":
                params[i, k, 0] = rng.uniform(0, 256)
    for bilinear in (False, True):
        for fill in (None, np.array([3.0, 128.5, 250.0])):
            want = np.empty_like(batch)
            augment_into(batch, want, codes, params, bilinear, fill)
            got = apply_kernel_ops(torch.from_numpy(batch).permute(0, 3, 1, 2), codes, params,
                                   bilinear, fill)
            np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), want)


# ---------------------------------------------------------------------------
# checks


def test_repr_names_the_arguments() -> None:
    assert repr(T.RandAugment(2, 9)) == ("RandAugment(num_ops=2, magnitude=9, "
                                         "num_magnitude_bins=31, interpolation='nearest', "
                                         "fill=None)")
    assert repr(T.AutoAugment(fill=0)) == ("AutoAugment(policy='imagenet', "
                                           "interpolation='nearest', fill=0)")
    assert "num_magnitude_bins=31" in repr(T.TrivialAugmentWide())


class _Mode:
    """torchvision's InterpolationMode, as far as the policies look at it."""

    def __init__(self, value: str) -> None:
        self.value = value


def test_accepts_torchvisions_interpolation_and_policy_values() -> None:
    assert T.TrivialAugmentWide(interpolation=_Mode("bilinear")).interpolation == "bilinear"
    assert T.RandAugment(interpolation=2).interpolation == "bilinear"  # PIL's BILINEAR
    assert T.AutoAugment(_Mode("svhn")).policy is AutoAugmentPolicy.SVHN


ERRORS = {
    "bins-1": (lambda: T.TrivialAugmentWide(num_magnitude_bins=1), ValueError, "at least|>= 2"),
    "bins-float": (lambda: T.TrivialAugmentWide(num_magnitude_bins=3.5), ValueError, ">= 2"),
    "magnitude-too-big": (lambda: T.RandAugment(2, 31), ValueError, "0...30"),
    "magnitude-negative": (lambda: T.RandAugment(2, -1), ValueError, "magnitude"),
    "num-ops-negative": (lambda: T.RandAugment(-1), ValueError, "num_ops"),
    "num-ops-bool": (lambda: T.RandAugment(True), ValueError, "num_ops"),
    "policy": (lambda: T.AutoAugment("imagenette"), ValueError, "policy must be one of"),
    "interpolation": (lambda: T.TrivialAugmentWide(interpolation="bicubic"), ValueError,
                      "interpolation must be"),
    "fill-range": (lambda: T.TrivialAugmentWide(fill=300), ValueError, "0..255"),
    "fill-two": (lambda: T.RandAugment(fill=(1, 2)), ValueError, "one or three"),
    "fill-dict": (lambda: T.AutoAugment(fill={"image": 0}), TypeError, "dict"),
    "fill-text": (lambda: T.AutoAugment(fill="white"), TypeError, "fill must be"),
}


@pytest.mark.parametrize(("make", "error", "message"), ERRORS.values(), ids=ERRORS.keys())
def test_constructor_rejects_bad_arguments(make: Callable[[], Any], error: type,
                                           message: str) -> None:
    with pytest.raises(error, match=message):
        make()


STATES = {
    "float": (State(shape=(8, 8, 3), dtype=np.dtype(np.float32)), TypeError, "uint8"),
    "gray": (State(shape=(8, 8, 1), dtype=np.dtype(np.uint8)), ValueError, "3 channels"),
    "flat": (State(shape=(8, 8), dtype=np.dtype(np.uint8)), ValueError, "images of shape"),
}


@pytest.mark.parametrize(("state", "error", "message"), STATES.values(), ids=STATES.keys())
def test_declare_rejects_bad_input(state: State, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        T.TrivialAugmentWide().declare_state_and_memory(state)


def test_declare_rejects_bad_torch_input() -> None:
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    op = T.RandAugment()
    with pytest.raises(TypeError, match="uint8"):
        op.declare_state_and_memory(state_of(torch.zeros((2, 3, 8, 8), dtype=torch.float32)))
    with pytest.raises(ValueError, match="RGB"):
        op.declare_state_and_memory(state_of(torch.zeros((2, 1, 8, 8), dtype=torch.uint8)))
    state, query = op.declare_state_and_memory(state_of(torch.zeros((2, 3, 8, 9),
                                                                    dtype=torch.uint8)))
    assert query.shape == (3, 8, 9)
    assert query.dtype == torch.uint8
    assert state.shape == (3, 8, 9)


# ---------------------------------------------------------------------------
# in a loader


@pytest.fixture(scope="module")
def small_beton(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    return photo_crops_file(tmp_path_factory.mktemp("augment") / "small.beton", photos,
                            count=40, height=120, width=150, seed=1)


def load(path: Path, ops: list[Any], workers: int, epoch: int = 0,
         worker_type: str = "auto") -> list[np.ndarray]:
    from fastforward.loader import Loader, OrderOption

    loader = Loader(path, batch_size=16, num_workers=workers, order=OrderOption.SEQUENTIAL,
                    seed=21, drop_last=False, pipelines={"image": ops, "label": None},
                    worker_type=worker_type)
    with loader:
        loader.next_epoch = epoch
        return [batch.clone() if hasattr(batch, "clone") else batch.copy()
                for (batch,) in loader]


@pytest.mark.parametrize("make", [POLICIES["trivial"], POLICIES["rand"], POLICIES["auto-imagenet"]],
                         ids=["trivial", "rand", "auto"])
def test_in_a_loader_after_a_crop_decoder(small_beton: Path, make: Callable[[], Any]) -> None:
    """The pipeline's draws are the loader's: the policy applied by hand to the same
    crops, with the stream of its position, gives the loader's batches, whatever
    num_workers is, on threads or in worker processes."""
    from fastforward.fields.decoders import RandomResizedCropRGBImageDecoder

    def crops() -> list[Any]:
        return [RandomResizedCropRGBImageDecoder((48, 48)), T.RandomHorizontalFlip()]

    plain = load(small_beton, crops(), 1, epoch=1)
    one = load(small_beton, [*crops(), make()], 1, epoch=1)
    two = load(small_beton, [*crops(), make()], 2, epoch=1)
    processes = load(small_beton, [*crops(), make()], 2, epoch=1, worker_type="process")
    op = make()
    for k, batch in enumerate(plain):
        ctx = BatchContext(np.arange(len(batch)) + 16 * k, 1, 21, stream_id("image/2"))
        np.testing.assert_array_equal(one[k], op.apply(batch, None, ctx))
        np.testing.assert_array_equal(two[k], one[k])
        np.testing.assert_array_equal(processes[k], one[k])


def test_before_the_usual_torch_tail(small_beton: Path) -> None:
    """A policy, then ToTensor + ToTorchImage + Convert(float16): the loader's batch is
    the NumPy pipeline's, converted (stage 1 ends before ToTensor: the torch tail
    runs on the whole batch, channels-last)."""
    torch = pytest.importorskip("torch", reason="a torch pipeline")
    from fastforward.fields.decoders import RandomResizedCropRGBImageDecoder

    def crops() -> list[Any]:
        return [RandomResizedCropRGBImageDecoder((24, 24)), T.TrivialAugmentWide()]

    plain = load(small_beton, crops(), 1)
    converted = load(small_beton, [*crops(), T.ToTensor(), T.ToTorchImage(),
                                   T.Convert(torch.float16)], 1)
    for numpy_batch, batch in zip(plain, converted, strict=True):
        expected = torch.from_numpy(numpy_batch).permute(0, 3, 1, 2).to(torch.float16)
        assert torch.equal(torch.as_tensor(batch), expected)


@pytest.mark.parametrize("name", ["train_trivialaugment", "train_randaugment",
                                  "train_autoaugment"])
def test_benchmark_pipelines(small_beton: Path, name: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """``fastforward bench --pipeline`` with each policy (their pipelines end in torch)."""
    pytest.importorskip("torch", reason="the benchmark pipelines end in torch tensors")
    from fastforward.benchmark import POLICIES, loader_pipelines
    from fastforward.cli import main
    from fastforward.reader import Reader

    ops = loader_pipelines(Reader(small_beton), "image", name)["image"]
    assert type(ops[2]).__name__ == POLICIES[name]
    assert [type(op).__name__ for op in ops[3:]] == ["ToTensor", "ToTorchImage", "Convert"]
    assert main(["bench", str(small_beton), "--workers", "1", "--batch-size", "8",
                 "--pipeline", name]) == 0
    assert name in capsys.readouterr().out

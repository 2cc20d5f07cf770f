"""The augmentation policies with the conversion after them fused in.

On NumPy batches a policy takes over the ``Convert`` or ``NormalizeImage``
that follows it (across ``ToTensor``, ``ToTorchImage()``): its kernel writes
the floats. The loader's batches must be exactly those of the same pipeline
run unfused (``Unfused*`` below refuse every fusion).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import photo_crops_file

import fastforward.transforms as T
from fastforward._ext.augment import PARAMS, augment_into, conversion_form
from fastforward._ext.resize import crop_resize_into
from fastforward.pipeline import BatchContext, PipelineSpec
from fastforward.pipeline.plan import compile_plan
from fastforward.transforms.auto_augment import conversion_table

MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255


class UnfusedTrivialAugmentWide(T.TrivialAugmentWide):
    def fuse(self, transforms: Any, rng_streams: Any, previous_state: Any = None) -> list[int]:
        return []


class UnfusedRandAugment(T.RandAugment):
    def fuse(self, transforms: Any, rng_streams: Any, previous_state: Any = None) -> list[int]:
        return []


class UnfusedAutoAugment(T.AutoAugment):
    def fuse(self, transforms: Any, rng_streams: Any, previous_state: Any = None) -> list[int]:
        return []


POLICIES: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "trivial": (lambda: T.TrivialAugmentWide(), lambda: UnfusedTrivialAugmentWide()),
    "trivial-bilinear-fill": (
        lambda: T.TrivialAugmentWide(interpolation="bilinear", fill=(20, 200, 90)),
        lambda: UnfusedTrivialAugmentWide(interpolation="bilinear", fill=(20, 200, 90))),
    "rand": (lambda: T.RandAugment(2, 9), lambda: UnfusedRandAugment(2, 9)),
    "rand-0-ops": (lambda: T.RandAugment(0), lambda: UnfusedRandAugment(0)),
    "auto": (lambda: T.AutoAugment(), lambda: UnfusedAutoAugment()),
}


def tails(dtype: str) -> dict[str, Callable[[], list[Any]]]:
    """The operations after the policy, by name: each ends in a conversion to *dtype*."""
    torch = pytest.importorskip("torch", reason="the usual tails end in torch tensors")
    to_torch = {"float16": torch.float16, "float32": torch.float32}[dtype]
    return {
        "convert": lambda: [T.ToTensor(), T.ToTorchImage(), T.Convert(to_torch)],
        "convert-numpy": lambda: [T.Convert(np.dtype(dtype)), T.ToTensor()],
        "normalize": lambda: [T.ToTensor(), T.ToTorchImage(),
                              T.NormalizeImage(MEAN, STD, np.dtype(dtype))],
        "normalize-numpy": lambda: [T.NormalizeImage(MEAN, STD, np.dtype(dtype)),
                                    T.ToTensor(), T.ToTorchImage()],
    }


# ---------------------------------------------------------------------------
# the kernel


@pytest.fixture(scope="module")
def crops(photos: list[np.ndarray]) -> np.ndarray:
    """24 crops of the photographs, 29 × 37 (rows of 111 values: not whole blocks of 24)."""
    rng = np.random.default_rng(5)
    out = np.empty((24, 29, 37, 3), np.uint8)
    for k in range(len(out)):
        photo = photos[k % len(photos)]
        side = int(rng.integers(60, min(photo.shape[:2])))
        y, x = int(rng.integers(photo.shape[0] - side)), int(rng.integers(photo.shape[1] - side))
        crop_resize_into(photo, y, x, side, side, out[k])
    return out


def policy_ops(images: np.ndarray, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """RandAugment(3, 17)'s codes and parameters for *images* (every kind of
    operation, some images with none)."""
    n, h, w, _ = images.shape
    context = BatchContext(np.arange(n), 0, seed, 9)
    return T.RandAugment(3, 17).plan(context, h, w).kernel(h, w)


def bits(array: np.ndarray) -> np.ndarray:
    return array.view(np.uint16 if array.dtype == np.float16 else np.uint32)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("table_kind", ["identity", "normalize-torch", "normalize-numpy",
                                        "irregular"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "table-only"])
def test_float_out_is_the_table_of_the_uint8_result(crops: np.ndarray, dtype: Any,
                                                    table_kind: str, affine: bool) -> None:
    """A float out holds table[v, c] for each value v of the uint8 result, bit for bit,
    whichever way the kernel computes it (the table, or float32 arithmetic that it
    checked gives the table); into a strided slot, as the loader's are."""
    levels = np.arange(256, dtype=np.float64)[:, None]
    scale, bias = 1 / STD, -MEAN / STD
    if table_kind == "identity":
        table = np.repeat(levels, 3, 1).astype(dtype)
        scale = bias = None
    elif table_kind == "normalize-torch":  # float32 (v - mean) / std, then dtype
        table = ((levels.astype(np.float32) - MEAN.astype(np.float32))
                 / STD.astype(np.float32)).astype(dtype)
    elif table_kind == "normalize-numpy":  # NormalizeImage's float64 table
        table = ((levels - MEAN) / STD).astype(dtype)
    else:  # no arithmetic gives it: the table must be used
        table = ((levels - MEAN) / STD).astype(dtype)
        table[77, 1] = -table[77, 1]
    table = np.ascontiguousarray(table)
    ops, params = policy_ops(crops)
    expected_u8 = np.empty_like(crops)
    augment_into(crops, expected_u8, ops, params)
    slot = np.zeros((len(crops) + 2, 29, 40, 3), dtype)
    out = slot[1:-1, :, 2:39]
    assert augment_into(crops, out, ops, params, table=table,
                        affine=(scale, bias) if affine else None) == len(crops)
    np.testing.assert_array_equal(bits(out), bits(table[expected_u8, np.arange(3)]))
    assert not slot[0].any()
    assert not slot[-1].any()
    assert not slot[:, :, :2].any()
    assert not slot[:, :, 39:].any()
    form = conversion_form(dtype, table, (scale, bias) if affine else None)
    if not affine or table_kind == "irregular":
        assert form == 0
    elif table_kind == "identity":
        assert form in (0, 1)  # 0 only on CPUs without AVX2 and F16C


def test_the_arithmetic_forms_are_chosen_where_they_give_the_table() -> None:
    """Convert's table is v * 1 + 0; torch's NormalizeImage in float32 is (v - mean)
    / std (or v * scale + bias where that rounds alike): the fast paths are used
    for them on a CPU with AVX2 and F16C."""
    from fastforward._ext.augment import conversion_form as form

    levels = np.arange(256, dtype=np.float64)[:, None]
    identity = np.ascontiguousarray(np.repeat(levels, 3, 1).astype(np.float32))
    if form(np.float32, identity, (None, None)) == 0:
        pytest.skip("this CPU lacks AVX2 or F16C: the table is always used")
    assert form(np.float16, identity.astype(np.float16), (None, None)) == 1
    torch_like = np.ascontiguousarray((levels.astype(np.float32) - MEAN.astype(np.float32))
                                       / STD.astype(np.float32))
    assert form(np.float32, torch_like, (1 / STD, -MEAN / STD)) in (1, 2)


def test_float_out_refusals(crops: np.ndarray) -> None:
    ops, params = policy_ops(crops)
    table = np.ascontiguousarray(np.repeat(np.arange(256.0)[:, None], 3, 1).astype(np.float16))
    out = np.empty(crops.shape, np.float16)
    with pytest.raises(ValueError, match="needs the table"):
        augment_into(crops, out, ops, params)
    with pytest.raises(ValueError, match=r"\(256, 3\) float16"):
        augment_into(crops, out, ops, params, table=table.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(256, 3\) float16"):
        augment_into(crops, out, ops, params, table=table[:255])
    with pytest.raises(ValueError, match="uint8 out takes no table"):
        augment_into(crops, np.empty_like(crops), ops, params, table=table)
    with pytest.raises(ValueError, match="uint8, float16 or float32"):
        augment_into(crops, np.empty(crops.shape, np.float64), ops, params, table=table)
    with pytest.raises(ValueError, match="affine must be"):
        augment_into(crops, out, ops, params, table=table, affine=(np.ones(4), None))
    with pytest.raises(ValueError, match="overlap"):
        augment_into(out.reshape(-1).view(np.uint8)[: crops.size].reshape(crops.shape), out,
                     ops, params, table=table)


def test_conversion_table_is_the_operations_own() -> None:
    """The table holds what the operations make of every level: NumPy's
    NormalizeImage (correctly rounded from float64) and torch's (float32 steps)."""
    torch = pytest.importorskip("torch")
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, 3)
    normalize = T.NormalizeImage(MEAN, STD, np.float16)
    numpy_table = conversion_table([normalize], np.dtype(np.float16))
    np.testing.assert_array_equal(numpy_table, normalize.lookup_table)
    torch_table = conversion_table([T.ToTensor(), T.ToTorchImage(), normalize],
                                   np.dtype(np.float16))
    expected = normalize.apply(torch.from_numpy(levels).permute(0, 3, 1, 2), None,
                               BatchContext(np.zeros(1, np.int64), 0, 0))
    np.testing.assert_array_equal(torch_table,
                                  expected.permute(0, 2, 3, 1).numpy().reshape(256, 3))
    wide = T.NormalizeImage(MEAN, STD, np.float32)  # in float32 the two paths round apart
    assert not np.array_equal(conversion_table([wide], np.dtype(np.float32)),
                              conversion_table([T.ToTensor(), wide], np.dtype(np.float32)))
    convert = conversion_table([T.Convert(torch.float32)], np.dtype(np.float32))
    np.testing.assert_array_equal(convert, np.repeat(np.arange(256.0)[:, None], 3, 1))


# ---------------------------------------------------------------------------
# in the planner and the loader


@pytest.fixture(scope="module")
def small_beton(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    return photo_crops_file(tmp_path_factory.mktemp("fused") / "small.beton", photos,
                            count=36, height=100, width=130, seed=2)


def crop_ops() -> list[Any]:
    from fastforward.fields.decoders import RandomResizedCropRGBImageDecoder

    return [RandomResizedCropRGBImageDecoder((36, 44)), T.RandomHorizontalFlip()]


def plan_of(path: Path, ops: list[Any]) -> Any:
    from fastforward.reader import Reader

    reader = Reader(path)
    return compile_plan(reader, {"image": PipelineSpec("image", ops[0], ops[1:])})


def load(path: Path, ops: list[Any], workers: int, worker_type: str = "thread") -> list[Any]:
    from fastforward.loader import Loader, OrderOption

    loader = Loader(path, batch_size=10, num_workers=workers, order=OrderOption.RANDOM,
                    seed=8, drop_last=False, pipelines={"image": ops, "label": None},
                    worker_type=worker_type)
    with loader:
        loader.next_epoch = 2
        return [batch.clone() if hasattr(batch, "clone") else batch.copy()
                for (batch,) in loader]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("tail", ["convert", "convert-numpy", "normalize", "normalize-numpy"])
def test_fused_batches_are_the_unfused_ones(small_beton: Path, policy: str, dtype: str,
                                            tail: str) -> None:
    """The policy writes the conversion's floats itself (the plan has no conversion
    step, stage 1 ends in a float buffer), and the batches are those of the same
    pipeline unfused, bit for bit, on 1 or 2 threads and in worker processes."""
    torch = pytest.importorskip("torch")
    fused, unfused = POLICIES[policy]
    make_tail = tails(dtype)[tail]
    plan = plan_of(small_beton, [*crop_ops(), fused(), *make_tail()])
    pipeline = plan.pipelines[0]
    assert [type(s.op).__name__ for s in pipeline.steps if not s.op.passes_through] == [
        type(fused()).__name__]
    assert pipeline.split == 1
    assert plan.layout[pipeline.range_out].dtype == np.dtype(dtype)
    unfused_plan = plan_of(small_beton, [*crop_ops(), unfused(), *make_tail()])
    assert {type(s.op).__name__ for s in unfused_plan.pipelines[0].steps} & {
        "Convert", "NormalizeImage"}

    expected = load(small_beton, [*crop_ops(), unfused(), *make_tail()], 1)
    runs = {"1 thread": load(small_beton, [*crop_ops(), fused(), *make_tail()], 1),
            "2 threads": load(small_beton, [*crop_ops(), fused(), *make_tail()], 2)}
    if policy in ("trivial", "rand"):  # processes take a while to start: two policies
        runs["2 processes"] = load(small_beton, [*crop_ops(), fused(), *make_tail()], 2,
                                   "process")
    for name, batches in runs.items():
        assert len(batches) == len(expected)
        for got, want in zip(batches, expected, strict=True):
            assert got.dtype == want.dtype == getattr(torch, dtype), name
            assert got.shape == want.shape, name
            assert torch.equal(got.contiguous().view(torch.int16 if dtype == "float16"
                                                     else torch.int32),
                               want.contiguous().view(torch.int16 if dtype == "float16"
                                                      else torch.int32)), name


def test_no_fusion_on_tensors_nor_where_a_branch_reads(small_beton: Path) -> None:
    """A policy on torch tensors (its torch path) converts nothing itself; nor does
    one whose output a branch reads. One instance used by two pipelines fuses in each."""
    torch = pytest.importorskip("torch")
    from fastforward.fields.decoders import RandomResizedCropRGBImageDecoder
    from fastforward.reader import Reader

    on_tensors = plan_of(small_beton, [*crop_ops(), T.ToTensor(), T.TrivialAugmentWide(),
                                       T.Convert(torch.float16)])
    assert [type(s.op).__name__ for s in on_tensors.pipelines[0].steps] == [
        "ToTensor", "TrivialAugmentWide", "Convert"]

    reader = Reader(small_beton)
    policy = T.TrivialAugmentWide()
    branched = compile_plan(reader, {
        "image": PipelineSpec("image", RandomResizedCropRGBImageDecoder((36, 44)),
                              [policy, T.ToTensor(), T.Convert(torch.float16)]),
        "raw": PipelineSpec(policy, transforms=[T.ToTensor()]),
    })
    assert [type(s.op).__name__ for s in branched.pipelines[0].steps] == [
        "TrivialAugmentWide", "ToTensor", "Convert"]

    shared = T.RandAugment()
    twice = compile_plan(reader, {
        "image": PipelineSpec("image", RandomResizedCropRGBImageDecoder((36, 44)),
                              [shared, T.Convert(np.float16)]),
        "label": PipelineSpec("image", RandomResizedCropRGBImageDecoder((36, 44)),
                              [shared, T.Convert(np.float32)]),
    })
    # one instance in two pipelines: each has a copy of its own, fused for its own
    # conversion (one copy fused for both wrote the last one's dtype in both)
    assert [p.name for p in twice.pipelines] == ["image", "label"]
    for pipeline, dtype in zip(twice.pipelines, (np.float16, np.float32), strict=True):
        (step,) = pipeline.steps
        assert type(step.op).__name__ == "RandAugment"
        assert step.op.fused_output[0].dtype == dtype
    assert shared.fused_output is None


def test_the_users_policy_is_left_unfused(small_beton: Path) -> None:
    """The planner fuses its own copy: the object the user gave still writes uint8."""
    policy = T.TrivialAugmentWide()
    plan_of(small_beton, [*crop_ops(), policy, T.Convert(np.float16)])
    assert policy.fused_output is None
    images = np.zeros((2, 8, 8, 3), np.uint8)
    assert policy.apply(images, None, BatchContext(np.arange(2), 0, 0)).dtype == np.uint8


def test_convert_to_a_numpy_float_type_is_a_pixel_affine() -> None:
    """``Convert(np.float16)`` (a NumPy type, not only torch's dtype or a string)
    tells the fusers that it converts."""
    assert T.Convert(np.float16).pixel_affine() == (np.dtype(np.float16), None, None)
    assert T.Convert("float32").pixel_affine() == (np.dtype(np.float32), None, None)
    assert T.Convert(np.int16).pixel_affine() is None


def test_fused_kernel_matches_on_full_size_images(photos: list[np.ndarray]) -> None:
    """192 × 192 crops, as the benchmarks use: rows of whole 24-value blocks."""
    images = np.empty((6, 192, 192, 3), np.uint8)
    for k in range(len(images)):
        crop_resize_into(photos[k % len(photos)], 0, 0, 300, 300, images[k])
    ops, params = policy_ops(images, seed=11)
    assert params.shape[2] == PARAMS
    expected = np.empty_like(images)
    augment_into(images, expected, ops, params)
    table = np.ascontiguousarray(np.repeat(np.arange(256.0)[:, None], 3, 1).astype(np.float16))
    out = np.empty(images.shape, np.float16)
    augment_into(images, out, ops, params, table=table, affine=(None, None))
    np.testing.assert_array_equal(out, expected.astype(np.float16))


@pytest.fixture
def portable() -> Any:
    """Run the kernels' portable code inside the block (the vector forms after it)."""
    from fastforward._ext import augment

    class Switch:
        def __enter__(self) -> None:
            augment.use_portable(True)

        def __exit__(self, *exc: object) -> None:
            augment.use_portable(False)

    yield Switch()
    augment.use_portable(False)


@pytest.mark.parametrize("size", [(29, 37), (40, 40), (192, 192), (3, 3), (1, 7)])
def test_vector_forms_give_the_portable_pixels(photos: list[np.ndarray], portable: Any,
                                               size: tuple[int, int]) -> None:
    """Brightness (AVX2), the tables of Contrast, AutoContrast and Equalize (AVX-512
    VBMI) and the conversion after a policy (AVX2, F16C) give the portable code's
    values, at every magnitude, on rows that are and are not whole vectors."""
    from fastforward._ext.augment import vector_level

    h, w = size
    images = np.empty((28, h, w, 3), np.uint8)
    for k in range(len(images)):
        photo = photos[k % len(photos)]
        crop_resize_into(photo, (3 * k) % 100, (5 * k) % 100, 150, 180, images[k])
    levels = np.arange(256, dtype=np.float64)[:, None]
    torch_like = np.ascontiguousarray(((levels.astype(np.float32) - MEAN.astype(np.float32))
                                       / STD.astype(np.float32)).astype(np.float16))
    for magnitude in (0, 5, 17, 30):
        context = BatchContext(np.arange(len(images)) + 100 * magnitude, 0, 4, 9)
        ops, params = T.RandAugment(2, magnitude).plan(context, h, w).kernel(h, w)
        results = []
        for switch in (None, portable):
            u8 = np.empty_like(images)
            f16 = np.empty(images.shape, np.float16)
            if switch is None:
                augment_into(images, u8, ops, params)
                augment_into(images, f16, ops, params, table=torch_like,
                             affine=(1 / STD, -MEAN / STD))
            else:
                with switch:
                    assert vector_level() == 0
                    augment_into(images, u8, ops, params)
                    augment_into(images, f16, ops, params, table=torch_like,
                                 affine=(1 / STD, -MEAN / STD))
            results.append((u8, f16))
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(bits(results[0][1]), bits(results[1][1]))

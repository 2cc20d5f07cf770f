"""``Augment``: other libraries' augmentations per sample, reproducible whatever the
workers, run in worker processes when left to ``worker_type='auto'``."""

from __future__ import annotations

import functools
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastforward.fields import IntField, RGBImageField
from fastforward.fields.decoders import CenterCropRGBImageDecoder
from fastforward.loader import Loader, OrderOption
from fastforward.pipeline import BatchContext, Operation
from fastforward.pipeline.random import seeded_globals
from fastforward.transforms import Augment
from fastforward.transforms.adaptor import guess_input, own_generators
from fastforward.writer import DatasetWriter


@pytest.fixture(scope="module")
def photos_file(tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray]) -> Path:
    path = tmp_path_factory.mktemp("adaptor") / "photos.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", max_resolution=64),
                         "label": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset(
        [(images[i % len(images)], i) for i in range(24)])
    return path


def noisy_crop(image: np.ndarray) -> np.ndarray:
    """A NumPy augmentation drawing from the global generator: a random 24×24
    window, plus noise."""
    y, x = np.random.randint(0, 9, size=2)
    window = image[y : y + 24, x : x + 24].astype(np.int16)
    return np.clip(window + np.random.randint(-20, 21, window.shape), 0, 255).astype(np.uint8)


def _varied_sizes(image: np.ndarray) -> np.ndarray:
    """A crop of a size drawn per image (a blank image gives the whole one)."""
    if not image.any():
        return image
    side = np.random.randint(8, 24)
    return image[:side, :side]


def batches(path: Path, transform: object, workers: int, worker_type: str,
            **kw: object) -> np.ndarray:
    with Loader(path, 8, num_workers=workers, worker_type=worker_type, seed=9,
                order=OrderOption.RANDOM,
                pipelines={"image": [CenterCropRGBImageDecoder((32, 32), 1.0),
                                     Augment(transform, **kw)],  # type: ignore[arg-type]
                           "label": None}) as loader:
        assert loader.workers.kind == ("process" if worker_type == "auto" else worker_type)
        return np.concatenate([np.concatenate([b for (b,) in loader]) for _ in range(2)])


def assert_reproducible(path: Path, transform: object, **kw: object) -> np.ndarray:
    """The same batches from one worker process and from two, which seed the
    global generators per sample (threads leave them to the user's code)."""
    reference = batches(path, transform, 1, "process", **kw)
    np.testing.assert_array_equal(batches(path, transform, 2, "auto", **kw), reference)
    first, second = reference[:24], reference[24:]
    assert not np.array_equal(first, second)  # epochs differ
    return reference


def test_a_numpy_callable_is_reproducible_through_the_global_generator(photos_file: Path
                                                                       ) -> None:
    out = assert_reproducible(photos_file, noisy_crop)
    assert out.shape == (48, 24, 24, 3)
    assert out.dtype == np.uint8


def test_the_output_shape_can_be_given(photos_file: Path) -> None:
    out = batches(photos_file, noisy_crop, 1, "thread", output_shape=(24, 24, 3),
                  output_dtype=np.uint8)
    assert out.shape == (48, 24, 24, 3)
    with pytest.raises(ValueError, match=r"returned an image of shape \(24, 24, 3\), not "
                       r"\(20, 20, 3\) \(output_shape\): a batch holds images of one size"):
        batches(photos_file, noisy_crop, 1, "thread", output_shape=(20, 20, 3),
                output_dtype=np.uint8)
    # a transform of varied sizes: the size it gave a blank image at Loader() is said
    with pytest.raises(ValueError, match=r"\(its result on a blank image when the loader "
                       r"was made\): .* end the transform with a fixed-size crop or resize"):
        batches(photos_file, _varied_sizes, 1, "thread")
    with pytest.raises(ValueError, match="together"):
        Augment(noisy_crop, output_shape=(2, 2, 3))
    pytest.importorskip("torch")
    from fastforward.transforms import ToTensor

    after_to_tensor = {"image": [CenterCropRGBImageDecoder((32, 32), 1.0), ToTensor(),
                                 Augment(noisy_crop)], "label": None}
    with pytest.raises(TypeError, match="before ToTensor"):
        Loader(photos_file, 8, pipelines=after_to_tensor)


def test_albumentations(photos_file: Path) -> None:
    albumentations = pytest.importorskip("albumentations")
    transform = albumentations.Compose([
        albumentations.HorizontalFlip(p=0.5),
        albumentations.RandomBrightnessContrast(p=1.0),
        albumentations.RandomCrop(24, 24),
    ])
    assert guess_input(transform) == "albumentations"
    out = assert_reproducible(photos_file, transform)
    assert out.shape == (48, 24, 24, 3)


def test_torchvision_v2(photos_file: Path) -> None:
    pytest.importorskip("torchvision")
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomResizedCrop(24, antialias=True), v2.TrivialAugmentWide()])
    assert guess_input(transform) == "tensor"
    out = assert_reproducible(photos_file, transform)
    assert out.shape == (48, 24, 24, 3)
    assert out.dtype == np.uint8


def test_users_own_v2_transforms_are_guessed_torchvisions(photos_file: Path) -> None:
    """A subclass of ``v2.Transform`` or ``v2.Compose`` written in the user's module,
    and ``nn.Sequential`` of v2 transforms, get a C×H×W tensor: they were guessed
    ``'numpy'``, and v2 passes an array through untouched (no augmentation, no error)."""
    pytest.importorskip("torchvision")
    import torch
    from torchvision.transforms import v2

    class Invert(v2.Transform):
        def transform(self, inpt, params):  # type: ignore[no-untyped-def]
            return 255 - inpt

    class Flips(v2.Compose):
        def __init__(self) -> None:
            super().__init__([v2.RandomHorizontalFlip(p=1.0), v2.RandomVerticalFlip(p=1.0)])

    sequential = torch.nn.Sequential(v2.RandomHorizontalFlip(p=1.0),
                                     v2.RandomVerticalFlip(p=1.0))
    for transform in (Invert(), Flips(), sequential):
        assert guess_input(transform) == "tensor"
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    op = Augment(Invert())
    assert op.input == "tensor"
    flipped = Augment(sequential)
    context = BatchContext(np.arange(1), 0, 0, 0, 0)
    np.testing.assert_array_equal(op.apply_sample(image, np.empty_like(image), context, 0),
                                  255 - image)
    np.testing.assert_array_equal(
        flipped.apply_sample(image, np.empty_like(image), context, 0), image[::-1, ::-1])


def _fake(module: str, base: type = object) -> type:
    """A class that says *module* defined it: guess_input without the libraries."""
    cls = type("T", (base,), {"__call__": lambda self, x: x})
    cls.__module__ = module
    return cls


def test_guess_input_reads_the_class_hierarchy_and_containers() -> None:
    v2_base = _fake("torchvision.transforms.v2._transform")
    v1_base = _fake("torchvision.transforms.transforms")
    album = _fake("albumentations.core.transforms_interface")
    users = _fake("my_training_code", v2_base)
    assert guess_input(v2_base()) == "tensor"
    assert guess_input(users()) == "tensor"  # a user's subclass
    assert guess_input(_fake("my_training_code", v1_base)()) == "pil"
    assert guess_input(_fake("timm.data.transforms")()) == "pil"
    assert guess_input(_fake("my_code", album)()) == "albumentations"
    assert guess_input(_fake("torchvisionx.other")()) == "numpy"  # a prefix, not a module
    assert guess_input(lambda x: x) == "numpy"
    container = _fake("my_code")()
    container.transforms = [users(), v2_base()]  # a Compose-like object of v2 parts
    assert guess_input(container) == "tensor"
    container.transforms = [users(), v1_base()]  # parts disagree: no guess
    assert guess_input(container) == "numpy"


V2_FLIP = _fake("torchvision.transforms.v2._geometry")()  # named by a function below


def _calls_a_global_v2(image: np.ndarray) -> np.ndarray:
    return V2_FLIP(image)


def test_a_function_calling_v2_transforms_on_numpy_images_is_warned_about() -> None:
    """torchvision's v2 flips, ColorJitter and Normalize return a NumPy array
    unchanged: a function of the user's wrapping them, guessed 'numpy' as any
    callable is, augmented nothing, without a word."""
    import warnings

    v2_flip = _fake("torchvision.transforms.v2._geometry")()
    v1_flip = _fake("torchvision.transforms.transforms")()

    def wrapper(image: np.ndarray) -> np.ndarray:
        return v2_flip(image)

    class Holder:
        def __init__(self) -> None:
            self.steps = {"flip": [v2_flip]}

        def __call__(self, image: np.ndarray) -> np.ndarray:
            return image

    class Calls:  # names the global in its own __call__
        def __call__(self, image: np.ndarray) -> np.ndarray:
            return V2_FLIP(image)

    def in_a_comprehension(image: np.ndarray) -> np.ndarray:
        return next(V2_FLIP(each) for each in (image,))  # (a code object of its own)

    for transform in (wrapper, lambda image: v2_flip(image), _calls_a_global_v2,
                      functools.partial(wrapper), Holder(), Calls(), in_a_comprehension):
        with pytest.warns(UserWarning, match="input='tensor'.*input='numpy' if it converts"):
            assert Augment(transform).input == "numpy"
    # torchvision's recipe starts with v2.ToImage(), which takes NumPy arrays
    to_image = _fake("torchvision.transforms.v2._type_conversion")()
    to_image._transformed_types = (np.ndarray,)
    recipe = _fake("torchvision.transforms.v2._container")()
    recipe.transforms = [to_image, v2_flip]

    class Weird:  # a __getattr__ that answers anything, __dict__ included
        __slots__ = ()

        def __getattr__(self, name: str) -> int:
            return 0

    weird = Weird()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Augment(wrapper, input="numpy")  # said: it converts them itself
        Augment(wrapper, input="tensor")
        Augment(lambda image: v1_flip(image))  # v1 refuses NumPy arrays loudly
        Augment(lambda image: image[::-1])
        Augment(v2_flip)  # guessed 'tensor'
        Augment(lambda image: recipe(image))
        Augment(lambda image: weird.x + image)  # looked into without an error
    assert own_generators(lambda image: weird.x + image) == []


def test_timm_imagenet_training_transform(photos_file: Path) -> None:
    timm_data = pytest.importorskip("timm.data")
    import torch

    from fastforward.transforms import ToTensor, ToTorchImage

    transform = timm_data.create_transform(24, is_training=True,
                                           auto_augment="rand-m9-mstd0.5-inc1")
    assert guess_input(transform) == "pil"
    out = assert_reproducible(photos_file, transform)
    assert out.shape == (48, 24, 24, 3)
    assert out.dtype == np.float32  # normalised, as timm's transform ends
    with Loader(photos_file, 8, seed=9, pipelines={
            "image": [CenterCropRGBImageDecoder((32, 32), 1.0), Augment(transform),
                      ToTensor(), ToTorchImage()], "label": None}) as loader:
        (images,) = next(iter(loader))
    assert images.shape == (8, 3, 24, 24)
    assert images.dtype == torch.float32


class DrawsFromTheGlobals(Operation):
    """A per-sample Python operation (keeps the GIL) that draws from the global
    generators: what it returns is the draws."""

    per_sample = True

    def apply_sample(self, sample: Any, destination: Any, context: BatchContext,
                     position: int) -> np.ndarray:
        torch = sys.modules.get("torch")
        return np.array([np.random.random(), random.random(),
                         float(torch.rand(1)) if torch is not None else 0.0])


def draws_of_one_sample(seed: int, epoch: int, index: int, stream: int) -> np.ndarray:
    with seeded_globals(seed, epoch, index, stream):
        return DrawsFromTheGlobals().apply_sample(None, None, None, 0)  # type: ignore[arg-type]


def test_a_batch_seeds_each_sample_as_seeded_globals_does_and_leaves_the_globals_alone(
) -> None:
    torch = pytest.importorskip("torch")
    op = DrawsFromTheGlobals()
    indices = np.array([5, 0, 17, 5, 9000])
    context = BatchContext(indices=indices, epoch=3, seed=11, stream=42)
    np.random.seed(1)
    random.seed(2)
    torch.manual_seed(3)
    out = op.apply(np.zeros((len(indices), 1)), None, context)
    # each sample's draws are its key's, wherever it sits in the batch
    expected = np.stack([draws_of_one_sample(11, 3, int(i), 42) for i in indices])
    np.testing.assert_array_equal(out, expected)
    # and the same as every earlier build's (np.random, random, torch), so that
    # augmentations written against the global generators keep their results
    np.testing.assert_allclose(out[[0, 1, 2, 4]], [
        [0.5183353279943467, 0.45862305773326606, 0.6938446164131165],
        [0.26245809749955773, 0.4565554724195533, 0.18927252292633057],
        [0.29310175777864744, 0.12503997238297648, 0.03405022621154785],
        [0.6118291400331892, 0.2003869161017039, 0.6282603144645691]], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(out[0], out[3])  # the same sample twice, the same draws
    assert len({tuple(row) for row in out}) == 4
    # the caller's generators go on as if the batch had not happened
    after = (np.random.random(), random.random(), float(torch.rand(1)))
    np.random.seed(1)
    random.seed(2)
    torch.manual_seed(3)
    assert after == (np.random.random(), random.random(), float(torch.rand(1)))


def test_the_globals_are_restored_when_a_sample_fails() -> None:
    class FailsAtTheThird(DrawsFromTheGlobals):
        def apply_sample(self, sample: Any, destination: Any, context: BatchContext,
                         position: int) -> np.ndarray:
            if position == 2:
                raise ValueError("no")
            return super().apply_sample(sample, destination, context, position)

    torch = pytest.importorskip("torch")
    np.random.seed(7)
    random.seed(8)
    torch.manual_seed(9)
    with pytest.raises(ValueError, match="sample 12"):
        FailsAtTheThird().apply(np.zeros((4, 1)), None,
                                BatchContext(indices=np.arange(10, 14), epoch=0, seed=1))
    after = (np.random.random(), random.random(), float(torch.rand(1)))
    np.random.seed(7)
    random.seed(8)
    torch.manual_seed(9)
    assert after == (np.random.random(), random.random(), float(torch.rand(1)))


def test_a_tensor_result_lands_in_the_slot_as_an_array_would(
        photos_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    from fastforward.transforms import adaptor

    plain = batches(photos_file, lambda image: image[:, ::-1].copy(), 1, "thread")
    # a tensor of the slot's dtype and shape is copied straight in: never through
    # a NumPy copy of its own (threads: the operation runs in this process)
    as_image = adaptor._as_image
    seen: list[str] = []

    def spy(value: Any) -> np.ndarray:
        seen.append(type(value).__name__)
        return as_image(value)

    given = {"output_shape": (32, 32, 3), "output_dtype": np.uint8}  # no trial call
    with monkeypatch.context() as patched:
        patched.setattr(adaptor, "_as_image", spy)
        as_tensor = batches(photos_file, lambda t: t.flip(-1), 1, "thread", input="tensor",
                            **given)
        np.testing.assert_array_equal(as_tensor, plain)
        # not contiguous: a transposed result
        transposed = batches(photos_file, lambda t: t.transpose(1, 2).contiguous()
                             .transpose(1, 2).flip(-1), 1, "thread", input="tensor", **given)
        np.testing.assert_array_equal(transposed, plain)
        assert seen == []
    # a result with a gradient, or another dtype than the slot's, goes NumPy's way
    with_grad = batches(photos_file, lambda t: t.flip(-1).float().requires_grad_(), 1,
                        "thread", input="tensor")
    np.testing.assert_array_equal(with_grad, plain.astype(np.float32))
    # a slot dtype torch cannot wrap (big-endian) is filled by NumPy, not refused
    big = batches(photos_file, lambda t: t.flip(-1).float(), 1, "thread", input="tensor",
                  output_shape=(32, 32, 3), output_dtype=">f4")
    np.testing.assert_array_equal(big, plain.astype(np.float32))
    # another dtype: converted as NumPy converts (float32 results into a float32 slot)
    halves = batches(photos_file, lambda t: t.float() / 2, 1, "thread", input="tensor")
    assert halves.dtype == np.float32
    np.testing.assert_array_equal(halves, plain[:, :, ::-1].astype(np.float32) / 2)
    # a result of another dtype than the one declared is refused, not cast
    with pytest.raises(TypeError, match="returned float32 images, not uint8: give "
                                        "output_shape and output_dtype"):
        batches(photos_file, lambda t: t.float(), 1, "thread", input="tensor",
                output_shape=(32, 32, 3), output_dtype=np.uint8)
    # integers into floats mixed two scales in one batch, silently (a transform giving
    # uint8 for some images and floats in [0, 1] for others: v2.RandomChoice of
    # ToDtype(scale=True) and Identity); refused now, as narrower integers are
    with pytest.raises(TypeError, match=r"returned uint8 images, not float32 \(integer "
                                        r"images among float ones mix two scales"):
        batches(photos_file, lambda t: t, 1, "thread", input="tensor",
                output_shape=(32, 32, 3), output_dtype=np.float32)
    with pytest.raises(TypeError, match=r"returned int64 images, not int32 \(int32 cannot "
                                        "hold every int64 value"):
        batches(photos_file, lambda t: t.long() << 31, 1, "thread", input="tensor",
                output_shape=(32, 32, 3), output_dtype=np.int32)
    # what keeps every value goes in: bool into uint8, uint8 into int16, float64
    # into float32 (precision only)
    as_bool = batches(photos_file, lambda t: t > 127, 1, "thread", input="tensor",
                      output_shape=(32, 32, 3), output_dtype=np.uint8)
    np.testing.assert_array_equal(as_bool, plain[:, :, ::-1] > 127)
    wide = batches(photos_file, lambda t: t.flip(-1), 1, "thread", input="tensor",
                   output_shape=(32, 32, 3), output_dtype=np.int16)
    np.testing.assert_array_equal(wide, plain)
    doubles = batches(photos_file, lambda t: t.flip(-1).double() / 3, 1, "thread",
                      input="tensor", output_shape=(32, 32, 3), output_dtype=np.float32)
    np.testing.assert_array_equal(doubles, (plain.astype(np.float64) / 3).astype(np.float32))
    # and one of another shape is named
    with pytest.raises(ValueError, match=r"returned an image of shape \(32, 16, 3\)"):
        batches(photos_file, lambda t: t[:, :, :16], 1, "thread", input="tensor",
                output_shape=(32, 32, 3), output_dtype=np.uint8)


def test_a_tensor_returned_hwc_is_refused_not_scrambled(photos_file: Path) -> None:
    """A function returning ``torch.from_numpy(image)`` (H×W×C) had its tensor taken
    as C×H×W: 32×32×3 became 32×3×32 images, passed on to ToTorchImage."""
    torch = pytest.importorskip("torch")

    def as_tensor(image: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(image[::-1]))

    with pytest.raises(TypeError, match=r"as_tensor returned a tensor of shape \(32, 32, 3\), "
                       r"H×W×C it seems .* return .permute\(2, 0, 1\) of it"):
        batches(photos_file, as_tensor, 1, "thread")  # the trial run, at Loader()
    with pytest.raises(TypeError, match="H×W×C it seems"):
        batches(photos_file, as_tensor, 1, "thread", output_shape=(32, 32, 3),
                output_dtype=np.uint8)
    # its C×H×W form is what a tensor should be
    out = batches(photos_file, lambda image: as_tensor(image).permute(2, 0, 1), 1, "thread")
    plain = batches(photos_file, lambda image: image, 1, "thread")
    np.testing.assert_array_equal(out, plain[:, ::-1])


def with_its_label(image: np.ndarray) -> tuple[np.ndarray, int]:
    return image, 0


def batch_of_one(image: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)


def scaled_up(image: np.ndarray) -> np.ndarray:
    """float16 on the blank trial image, float32 far past float16's range on others."""
    if not image.any():
        return np.zeros(image.shape, np.float16)
    return image.astype(np.float32) * 1000


def test_floats_past_the_batch_dtypes_range_are_refused(photos_file: Path) -> None:
    """A float32 result cast into a float16 batch became inf, with only NumPy's
    RuntimeWarning (99% of a batch)."""
    with pytest.raises(ValueError, match=r"scaled_up returned float32 values beyond what "
                                         r"float16 holds \(±65504\): they would be inf"):
        batches(photos_file, scaled_up, 1, "thread")
    got = batches(photos_file, lambda image: image.astype(np.float32), 1, "thread",
                  output_shape=(32, 32, 3), output_dtype=np.float16)
    assert got.dtype == np.float16  # (in range: rounded, as documented)
    assert np.isfinite(got).all()


def test_a_result_that_is_no_image_names_the_transform(photos_file: Path) -> None:
    """A transform returning ``(image, target)`` was refused as "the transform
    returned a tuple", naming neither it nor what to do."""
    with pytest.raises(TypeError, match=r"with_its_label returned a tuple, not an image "
                       r"\(a NumPy array, a tensor or a PIL image\): Augment hands it one "
                       r"image and takes one image back; wrap it"):
        batches(photos_file, with_its_label, 1, "thread")  # the trial run, at Loader()
    with pytest.raises(TypeError, match="with_its_label returned a tuple") as info:
        batches(photos_file, with_its_label, 1, "thread", output_shape=(32, 32, 3),
                output_dtype=np.uint8)
    assert "photos.beton" in str(info.value)  # (and the sample and field, as any error)
    with pytest.raises(ValueError, match=r"partial\(expand_dims\) returned an image of shape "
                       r"\(32, 32, 3, 1\): one image is H×W×C"):
        batches(photos_file, functools.partial(np.expand_dims, axis=-1), 1, "thread")
    with pytest.raises(TypeError, match=r"Augment: str returned a str, not an image \([^)]*\)\n"):
        batches(photos_file, str, 1, "thread")
    # a batch of one, as a model takes it, was kept: batches of B×1×C×H×W
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"batch_of_one returned an image of shape \(1, 3, 32, "
                       r"32\): one image is C×H×W \(or H×W\); drop any batch axis"):
        batches(photos_file, batch_of_one, 1, "thread")


def test_torch_imported_during_a_batch_is_restored_too(tmp_path: Path) -> None:
    """An operation that imports torch in the middle of a batch: torch's
    generator is saved when first seeded and restored at the batch's end."""
    pytest.importorskip("torch")
    import subprocess
    import textwrap

    code = textwrap.dedent("""
        import sys
        import numpy as np
        from fastforward.pipeline import BatchContext, Operation
        assert "torch" not in sys.modules
        kept = {}

        class ImportsTorch(Operation):
            per_sample = True

            def apply_sample(self, sample, destination, context, position):
                import torch
                draw = float(torch.rand(1))
                if position == 0:
                    kept["state"] = torch.random.get_rng_state()
                return np.array([draw])

        out = ImportsTorch().apply(np.zeros((3, 1)), None,
                                   BatchContext(indices=np.arange(3), epoch=0, seed=1))
        import torch
        assert bool((torch.random.get_rng_state() == kept["state"]).all())
        assert len(set(out[1:, 0])) == 2  # samples 1 and 2 seeded, each its own
        print("ok")
    """)
    # run from elsewhere than the checkout: the installed package, not the source tree
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


class OwnGenerator:
    """Shaped like an albumentations transform: a generator of its own, seeded
    through ``set_random_seed`` before each image, then drawn from (and the GIL
    let go in between, as OpenCV's calls do)."""

    def set_random_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(0.0005)
        out = image.copy()
        out[...] = int(self.rng.integers(0, 256))
        return {"image": out}


OwnGenerator.__module__ = "albumentations.stand_in"


def test_a_transform_with_its_own_generator_is_reproducible_on_threads(photos_file: Path
                                                                       ) -> None:
    """On threads the global generators are left alone, but an operation that
    keeps the GIL still runs one sample at a time per process: seeding a
    transform's own generator and drawing from it are never interleaved with
    another thread's (they were, for a while: 229 of 256 samples differed)."""
    kw = {"input": None, "output_shape": (32, 32, 3), "output_dtype": np.uint8}
    assert Augment(OwnGenerator(), **kw).input == "albumentations"
    first = batches(photos_file, OwnGenerator(), 1, "thread", **kw)
    for _ in range(2):
        np.testing.assert_array_equal(batches(photos_file, OwnGenerator(), 4, "thread", **kw),
                                      first)


class HoldsGenerators:
    """A transform drawing from generators of its own (the usual way to write one, and
    an albumentations Compose wrapped in a class): each image is filled with one
    draw of each, kept apart in the channels."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng()
        self.parts = [random.Random(), {"legacy": np.random.RandomState()}]
        self.noise = functools.partial(_noise, np.random.default_rng(7))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = np.empty((4, 4, 3), np.uint8)
        out[..., 0] = self.rng.integers(0, 256)
        out[..., 1] = self.parts[0].randrange(256) ^ int(self.parts[1]["legacy"].randint(256))
        out[..., 2] = self.noise()
        return out


def _noise(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 256))


@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_a_transforms_own_generators_are_seeded_per_sample(photos_file: Path,
                                                           worker_type: str) -> None:
    """Each epoch got a fresh copy of the user's transform, its generators as they
    were: every epoch drew the same numbers, and every worker process the same as
    the others. They are seeded per sample from (seed, epoch, sample) now, on
    threads too: epochs differ, and the batches are the same whatever the
    workers."""
    transform = HoldsGenerators()
    before = transform.rng.bit_generator.state
    out = batches(photos_file, transform, 1, worker_type)
    first, second = out[:24], out[24:]
    for channel in range(3):
        assert not np.array_equal(first[..., channel], second[..., channel])  # epochs differ
        assert len(np.unique(first[:, 0, 0, channel])) > 12  # samples differ
    np.testing.assert_array_equal(batches(photos_file, transform, 2, worker_type), out)
    np.testing.assert_array_equal(batches(photos_file, HoldsGenerators(), 2, "auto"), out)
    assert transform.rng.bit_generator.state == before  # the loader's copy was seeded


def test_own_generators_are_found_where_a_transform_keeps_them() -> None:
    torch = pytest.importorskip("torch")
    gen, legacy, rand, cpu = (np.random.default_rng(), np.random.RandomState(),
                              random.Random(), torch.Generator())
    counter = [0]

    def closure(image: np.ndarray) -> np.ndarray:
        counter[0] += int(gen.integers(2))
        return image

    def defaults(image: np.ndarray, rng: random.Random = rand) -> np.ndarray:
        return image

    class Module(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = torch.nn.Sequential(torch.nn.Identity())
            self.inner.generator = cpu
            self.weights = torch.zeros(3)

    found = own_generators([closure, defaults, functools.partial(print, legacy), Module(),
                            random, np.random, [np.random.mtrand._rand, random._inst,
                                                torch.default_generator]])
    assert sorted(map(id, found)) == sorted(map(id, [gen, rand, legacy, cpu]))
    assert own_generators(noisy_crop) == []  # the global generator: seeded as a global


def to_gray(image: np.ndarray) -> np.ndarray:
    return image.mean(axis=2).astype(np.uint8)


def test_a_grayscale_result_of_an_rgb_image_keeps_its_channel_axis(photos_file: Path
                                                                  ) -> None:
    """A transform returning H×W for an H×W×3 image (torchvision v1's Grayscale,
    albumentations' ToGray(num_output_channels=1)) was declared H×W, and
    ToTorchImage refused it; stored H×W×1 now, as any one-channel image."""
    out = batches(photos_file, to_gray, 1, "thread")
    assert out.shape == (48, 32, 32, 1)
    pytest.importorskip("torch")
    from fastforward.transforms import ToTensor, ToTorchImage

    with Loader(photos_file, 8, pipelines={
            "image": [CenterCropRGBImageDecoder((32, 32), 1.0), Augment(to_gray), ToTensor(),
                      ToTorchImage()], "label": None}) as loader:
        assert tuple(next(iter(loader))[0].shape) == (8, 1, 32, 32)


def refuses_blank_images(image: np.ndarray) -> np.ndarray:
    if image.max() == 0:
        raise ValueError("image is empty")
    return image


def exits(image: np.ndarray) -> np.ndarray:
    raise SystemExit(3)


def test_the_trial_run_on_a_blank_image_says_what_it_was(photos_file: Path) -> None:
    """A transform failing on the blank image Loader() runs it on (to learn its output)
    said 'image is empty', naming neither the trial nor output_shape, which skips
    it; a SystemExit there ended the script without a word."""
    def loader(transform: Any) -> Loader:
        return Loader(photos_file, 8, pipelines={
            "image": [CenterCropRGBImageDecoder((32, 32), 1.0), Augment(transform)],
            "label": None})

    with pytest.raises(ValueError, match="image is empty") as info:
        loader(refuses_blank_images)
    assert ("running refuses_blank_images once on a blank (all zero) (32, 32, 3) image, to "
            "learn the shape and dtype it returns, failed: give Augment(..., output_shape="
            "..., output_dtype=...) to skip this") in info.value.__notes__
    with pytest.raises(RuntimeError, match=r"running exits once .* \(SystemExit: 3\)"):
        loader(exits)
    kw = {"output_shape": (32, 32, 3), "output_dtype": np.uint8}
    with Loader(photos_file, 8, pipelines={
            "image": [CenterCropRGBImageDecoder((32, 32), 1.0),
                      Augment(refuses_blank_images, **kw)], "label": None}) as given:
        assert next(iter(given))[0].shape == (8, 32, 32, 3)


def zero_the_top_in_place(image: np.ndarray) -> np.ndarray:
    image[:8] = 0
    return image


def test_an_in_place_transform_leaves_a_branch_alone(photos_file: Path) -> None:
    """The transform was handed the batch's row itself: one that works in place
    (RandomErasing(inplace=True)) changed what a branch of the pipeline read."""
    from fastforward.pipeline import PipelineSpec

    decoder = CenterCropRGBImageDecoder((32, 32), 1.0)
    with Loader(photos_file, 8, num_workers=1, worker_type="thread",
                pipelines={"image": PipelineSpec("image", decoder,
                                                 [Augment(zero_the_top_in_place)]),
                           "original": PipelineSpec(decoder, None, []),
                           "label": None}) as loader:
        for zeroed, original in loader:
            assert not zeroed[:, :8].any()
            assert original[:, :8].any()
            np.testing.assert_array_equal(zeroed[:, 8:], original[:, 8:])


class Mirrored(Operation):
    """A view with negative strides (a flip written as a slice)."""

    releases_gil = True
    sample_independent = True

    def apply(self, batch: np.ndarray, destination: Any, context: BatchContext) -> np.ndarray:
        return batch[:, :, ::-1]


def test_a_tensor_transform_takes_a_view_of_negative_strides(photos_file: Path) -> None:
    pytest.importorskip("torch")
    plain = batches(photos_file, lambda image: image.copy(), 1, "thread")
    with Loader(photos_file, 8, num_workers=1, worker_type="thread", seed=9,
                order=OrderOption.RANDOM,
                pipelines={"image": [CenterCropRGBImageDecoder((32, 32), 1.0), Mirrored(),
                                     Augment(lambda t: t.flip(-1), input="tensor")],
                           "label": None}) as loader:
        got = np.concatenate([np.concatenate([b for (b,) in loader]) for _ in range(2)])
    np.testing.assert_array_equal(got, plain)


def test_a_one_channel_image_reaches_a_pil_transform(tmp_path: Path,
                                                     images: list[np.ndarray]) -> None:
    """Pillow cannot make an image of an H×W×1 array: it was refused."""
    from PIL import ImageOps

    from fastforward.fields import MultiChannelImageField
    from fastforward.fields.decoders import CenterCropMultiChannelImageDecoder

    path = tmp_path / "gray.beton"
    grays = [np.ascontiguousarray(image[:40, :40, 1:2]) for image in images[:8]]
    DatasetWriter(path, {"image": MultiChannelImageField(1)}, num_workers=1,
                  progress=False).from_indexed_dataset([(gray,) for gray in grays])
    with Loader(path, 8, num_workers=1, worker_type="thread", pipelines={
            "image": [CenterCropMultiChannelImageDecoder((40, 40), 1.0),
                      Augment(ImageOps.mirror, input="pil")]}) as loader:
        (got,) = next(iter(loader))
    assert got.shape == (8, 40, 40, 1)
    np.testing.assert_array_equal(got, np.stack(grays)[:, :, ::-1])


def test_a_loader_seeds_its_own_copy_of_an_albumentations_transform(photos_file: Path
                                                                     ) -> None:
    """Making a Loader seeded the user's own Compose (its trial call): two fresh
    transforms then drew the same numbers."""
    albumentations = pytest.importorskip("albumentations")

    def draws(transform: Any) -> list[float]:
        return [float(transform(image=np.full((8, 8, 3), 128, np.uint8))["image"].mean())
                for _ in range(3)]

    mine = albumentations.Compose([albumentations.RandomBrightnessContrast(p=1.0)])
    mine.set_random_seed(123)
    expected = draws(albumentations.Compose(
        [albumentations.RandomBrightnessContrast(p=1.0)], seed=123))
    with Loader(photos_file, 8, num_workers=1, worker_type="thread",
                pipelines={"image": [CenterCropRGBImageDecoder((32, 32), 1.0),
                                     Augment(mine)], "label": None}) as loader:
        next(iter(loader))
    assert draws(mine) == expected

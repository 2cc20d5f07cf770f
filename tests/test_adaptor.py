"""``Augment``: other libraries' augmentations per sample, reproducible whatever the
workers, run in worker processes when left to ``worker_type='auto'``."""

from __future__ import annotations

import random
import sys
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
from fastforward.transforms.adaptor import guess_input
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
    reference = batches(path, transform, 1, "thread", **kw)
    np.testing.assert_array_equal(batches(path, transform, 2, "thread", **kw), reference)
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
    with pytest.raises(ValueError, match="returned an image of shape"):
        batches(photos_file, noisy_crop, 1, "thread", output_shape=(20, 20, 3),
                output_dtype=np.uint8)
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

    np.random.seed(7)
    state = np.random.get_state()[1].copy()
    with pytest.raises(ValueError, match="sample 12"):
        FailsAtTheThird().apply(np.zeros((4, 1)), None,
                                BatchContext(indices=np.arange(10, 14), epoch=0, seed=1))
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_a_tensor_result_lands_in_the_slot_as_an_array_would(photos_file: Path) -> None:
    pytest.importorskip("torch")
    plain = batches(photos_file, lambda image: image[:, ::-1].copy(), 1, "thread")
    as_tensor = batches(photos_file, lambda t: t.flip(-1), 1, "thread", input="tensor")
    np.testing.assert_array_equal(as_tensor, plain)
    # another dtype: converted as NumPy converts (float32 results into a float32 slot)
    halves = batches(photos_file, lambda t: t.float() / 2, 1, "thread", input="tensor")
    assert halves.dtype == np.float32
    np.testing.assert_array_equal(halves, plain[:, :, ::-1].astype(np.float32) / 2)
    # a result of another dtype than the one declared is refused, not cast
    with pytest.raises(TypeError, match="Cannot cast"):
        batches(photos_file, lambda t: t.float(), 1, "thread", input="tensor",
                output_shape=(32, 32, 3), output_dtype=np.uint8)
    # and one of another shape is named
    with pytest.raises(ValueError, match=r"returned an image of shape \(32, 16, 3\)"):
        batches(photos_file, lambda t: t[:, :, :16], 1, "thread", input="tensor",
                output_shape=(32, 32, 3), output_dtype=np.uint8)

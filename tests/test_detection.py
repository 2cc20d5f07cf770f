"""Masks and boxes that follow their image through the loader (issue 16).

Scenes with shapes drawn at known places (``fastforward.scenes``), stored raw
so that every pixel is known: after a RandomResizedCrop, CenterCrop or
shorter-side decoder, flipped or not, on threads or processes, each mask
pixel and each box must land exactly where the image's pixels went.

Decoders and operations are defined at module level: process workers
unpickle them.
"""

from __future__ import annotations

import importlib.util
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from reference import crop_nearest, crop_resize, shorter_side_size

from fastforward.errors import DecodeError
from fastforward.fields import IntField, MaskField, RaggedField, RGBImageField
from fastforward.fields.decoders import (
    CenterCropRGBImageDecoder,
    ImageSizeDecoder,
    IntDecoder,
    MaskDecoder,
    RaggedDecoder,
    RandomResizedCropRGBImageDecoder,
    ShorterSideRGBImageDecoder,
    SimpleRGBImageDecoder,
)
from fastforward.fields.resized_image import shorter_side_sizes
from fastforward.loader import Loader, OrderOption
from fastforward.pipeline import AllocationQuery, Operation, PipelineSpec, State
from fastforward.pipeline.decoder import Decoder
from fastforward.pipeline.geometry import GEOMETRY, map_boxes
from fastforward.reader import Reader
from fastforward.scenes import COLOURS, make_scenes
from fastforward.transforms import (
    NormalizeImage,
    RandomBrightness,
    RandomHorizontalFlip,
    RandomVerticalFlip,
    Solarization,
    ToTensor,
    ToTorchImage,
)
from fastforward.writer import DatasetWriter

OBJECTS = {"boxes": (np.float32, (4,)), "labels": np.int64, "ids": np.int32}
MIN_VISIBILITY = 0.3


class GeometryRows(Decoder):
    """A test follower: hands out the geometry rows of the image it follows."""

    def __init__(self) -> None:
        super().__init__()
        self.follows = "image"

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        return State(shape=(), dtype=GEOMETRY), AllocationQuery((), GEOMETRY)

    def decode_range(self, lo, hi, destination, context):  # type: ignore[no-untyped-def]
        destination[lo:hi] = context.geometry["image"][lo:hi]


@pytest.fixture(scope="module")
def scenes() -> list:
    return make_scenes(32, seed=5, size=(72, 96), objects=(2, 6), min_side=0.15, max_side=0.6)


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory: pytest.TempPathFactory, scenes: list) -> Path:
    path = tmp_path_factory.mktemp("detection") / "scenes.beton"
    samples = []
    for i, s in enumerate(scenes):
        # each box's instance number (make_scene lists the visible objects in order)
        ids = np.unique(s.instances[s.instances > 0]).astype(np.int32)
        samples.append((s.image, s.mask, s.instances,
                        {"boxes": s.boxes, "labels": s.labels, "ids": ids}, i))
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"), "mask": MaskField(),
                         "instances": MaskField(np.uint16),
                         "objects": RaggedField(columns=OBJECTS), "index": IntField()},
                  num_workers=1, progress=False).from_indexed_dataset(samples)
    return path


DECODERS = {
    "random_resized_crop": lambda: RandomResizedCropRGBImageDecoder((40, 56), scale=(0.2, 1)),
    "random_resized_crop_enlarging": lambda: RandomResizedCropRGBImageDecoder((160, 160)),
    "center_crop": lambda: CenterCropRGBImageDecoder((48, 48), ratio=0.8),
    "shorter_side": lambda: ShorterSideRGBImageDecoder((48, 64, 100), max_size=120),
}
WORKERS = [(1, "thread"), (2, "thread"), (2, "process")]


def load(path: Path, decoder: Decoder, flip: bool, workers: int, kind: str,
         batch_size: int = 8) -> list[tuple]:
    image = [decoder, RandomHorizontalFlip()] if flip else [decoder]
    with Loader(path, batch_size, num_workers=workers, worker_type=kind, seed=11,
                order=OrderOption.RANDOM, drop_last=False, pipelines={
                    "image": image,
                    "mask": [MaskDecoder(follows="image", fill=255)],
                    "instances": [MaskDecoder(follows="image")],
                    "objects": [RaggedDecoder(follows="image", boxes="boxes",
                                              min_visibility=MIN_VISIBILITY)],
                    "index": [IntDecoder()],
                    "geometry": PipelineSpec("index", GeometryRows()),
                    "sizes": PipelineSpec("image", ImageSizeDecoder(follows="image")),
                }) as loader:
        return [tuple({k: v.copy() for k, v in o.items()} if isinstance(o, dict) else o.copy()
                      for o in batch) for batch in loader]


def eroded(mask: np.ndarray, reach: int) -> np.ndarray:
    """Where *mask* holds for every pixel within *reach* (a square), inside the image."""
    height, width = mask.shape
    padded = np.pad(mask, reach, constant_values=False)
    out = np.ones_like(mask)
    for dy in range(2 * reach + 1):
        for dx in range(2 * reach + 1):
            out &= padded[dy : dy + height, dx : dx + width]
    return out


def exact_box(box: np.ndarray, g: np.void) -> tuple[list[Fraction], Fraction]:
    """A source box through the geometry row *g*, in exact fractions: clipped, and
    the fraction of its area left."""
    x0, y0, x1, y1 = (Fraction(float(v)) for v in box)
    sx = Fraction(int(g["out_width"]), int(g["crop_width"]))
    sy = Fraction(int(g["out_height"]), int(g["crop_height"]))
    ow, oh = int(g["out_width"]), int(g["out_height"])
    a0, a1 = (x0 - int(g["x"])) * sx, (x1 - int(g["x"])) * sx
    b0, b1 = (y0 - int(g["y"])) * sy, (y1 - int(g["y"])) * sy
    if g["flip"]:
        a0, a1 = ow - a1, ow - a0
    area = (a1 - a0) * (b1 - b0)
    c = [min(max(a0, 0), ow), min(max(b0, 0), oh), min(max(a1, 0), ow), min(max(b1, 0), oh)]
    inside = max(c[2] - c[0], 0) * max(c[3] - c[1], 0)
    return c, inside / area if area else Fraction(0)


def pixel_span(lo: Fraction, hi: Fraction, flipped: bool) -> tuple[int, int]:
    """The output pixels whose centres a mapped interval covers: ``[lo, hi)`` before
    mirroring (a source pixel's right edge is open), ``(lo, hi]`` after it."""
    if flipped:
        return math.floor(lo + Fraction(1, 2)), math.floor(hi + Fraction(1, 2))
    return math.ceil(lo - Fraction(1, 2)), math.ceil(hi - Fraction(1, 2))


@pytest.mark.parametrize(("workers", "kind"), WORKERS, ids=[f"{k}-{w}" for w, k in WORKERS])
@pytest.mark.parametrize("flip", [False, True], ids=["plain", "flip"])
@pytest.mark.parametrize("name", DECODERS)
def test_masks_and_boxes_land_where_the_image_pixels_went(scene_file: Path, scenes: list,
                                                          name: str, flip: bool, workers: int,
                                                          kind: str) -> None:
    batches = load(scene_file, DECODERS[name](), flip, workers, kind)
    seen = flips = 0
    for images, masks, instances, objects, index, rows, sizes in batches:
        index = index.ravel()
        for j in range(len(index)):
            scene, g = scenes[int(index[j])], rows[j]
            seen += 1
            flips += int(g["flip"])
            y, x, h, w = (int(g[k]) for k in ("y", "x", "crop_height", "crop_width"))
            oh, ow = int(g["out_height"]), int(g["out_width"])
            assert (int(g["height"]), int(g["width"])) == scene.mask.shape
            assert sizes[j].tolist() == [oh, ow]
            # the image: the window resized (within the kernel's one level), padding zero
            want = crop_resize(scene.image, y, x, h, w, oh, ow, bool(g["flip"]))
            assert np.abs(images[j, :oh, :ow].astype(int) - want).max() <= 1
            assert not images[j, oh:].any()
            assert not images[j, :oh, ow:].any()
            # the masks: the same window, nearest neighbour, exactly; padding is the fill
            np.testing.assert_array_equal(
                masks[j, :oh, :ow], crop_nearest(scene.mask, y, x, h, w, oh, ow, bool(g["flip"])))
            assert (masks[j, oh:] == 255).all()
            assert (masks[j, :oh, ow:] == 255).all()
            np.testing.assert_array_equal(
                instances[j, :oh, :ow],
                crop_nearest(scene.instances, y, x, h, w, oh, ow, bool(g["flip"])))
            # where a shape covers a pixel's whole neighbourhood, the image shows its colour
            reach = math.ceil(max(h / oh, w / ow, oh / h, ow / w)) + 1  # the filters' reach
            label = masks[j, :oh, :ow]
            for k in np.unique(label[label > 0]):
                solid = eroded(label == k, reach)
                assert (images[j, :oh, :ow][solid] == COLOURS[k]).all()
            # the boxes: each kept one is its object's box mapped (exactly, in float32),
            # its class id beside it, and its mask pixels are those the box's edges cover
            n = int(objects["lengths"][j])
            kept = objects["ids"][j, :n].tolist()
            assert not objects["boxes"][j, n:].any()
            assert not objects["labels"][j, n:].any()
            for row, number in enumerate(kept):
                source = int(np.flatnonzero(
                    np.unique(scene.instances[scene.instances > 0]) == number)[0])
                assert objects["labels"][j, row] == scene.labels[source]
                box, visible = exact_box(scene.boxes[source], g)
                assert visible >= MIN_VISIBILITY
                np.testing.assert_allclose(objects["boxes"][j, row], [float(v) for v in box],
                                           atol=1e-4)
                cols = pixel_span(box[0], box[2], bool(g["flip"]))
                rows_ = pixel_span(box[1], box[3], False)
                ys, xs = np.nonzero(instances[j, :oh, :ow] == number)
                if not ys.size:
                    assert cols[0] >= cols[1] or rows_[0] >= rows_[1] or (h > oh or w > ow)
                    continue
                assert cols[0] <= xs.min()
                assert xs.max() < cols[1]
                assert rows_[0] <= ys.min()
                assert ys.max() < rows_[1]
                x0, y0, x1, y1 = (int(v) for v in scene.boxes[source])
                full = (scene.instances[y0:y1, x0:x1] == number).all()
                # equality when the object fills its box, or when every pixel of a box the
                # crop does not cut is sampled (enlarging)
                if full or (oh >= h and ow >= w and visible == 1):
                    assert (xs.min(), xs.max() + 1) == cols
                    assert (ys.min(), ys.max() + 1) == rows_
            # and every object left out was hidden past the minimum visibility
            numbers = np.unique(scene.instances[scene.instances > 0]).tolist()
            for source, number in enumerate(numbers):
                if number not in kept:
                    _, visible = exact_box(scene.boxes[source], g)
                    assert visible < MIN_VISIBILITY or visible == 0
    assert seen == len(scenes)
    if flip:
        assert 0 < flips < seen


@pytest.mark.parametrize("name", DECODERS)
def test_one_decision_per_sample_whatever_the_workers(scene_file: Path, name: str) -> None:
    runs = [load(scene_file, DECODERS[name](), True, w, k, batch_size=16) for w, k in WORKERS]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            for x, y in zip(a, b, strict=True):
                if isinstance(x, dict):
                    for key in x:
                        np.testing.assert_array_equal(x[key], y[key])
                else:
                    np.testing.assert_array_equal(x, y)


def test_boxes_dropped_take_their_class_ids_with_them(tmp_path: Path) -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[0, 0, 10, 100], [40, 40, 60, 60], [90, 0, 100, 100], [45, 0, 55, 100]],
                     np.float32)
    path = tmp_path / "drop.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"),
                         "objects": RaggedField(columns={"boxes": (np.float32, 4),
                                                         "labels": np.int64})},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(image, {"boxes": boxes, "labels": [1, 2, 3, 4]})])
    # the centre 50×50 window: the left and right strips are out, the others half or all in
    with Loader(path, 1, pipelines={
            "image": [CenterCropRGBImageDecoder((50, 50), ratio=0.5)],
            "objects": [RaggedDecoder(follows="image", boxes="boxes", min_visibility=0.6)],
    }) as loader:
        (_, objects), = list(loader)
    assert objects["lengths"].tolist() == [1]
    assert objects["labels"][0].tolist() == [2, 0, 0, 0]
    np.testing.assert_allclose(objects["boxes"][0, 0], [15, 15, 35, 35])
    with Loader(path, 1, pipelines={
            "image": [CenterCropRGBImageDecoder((50, 50), ratio=0.5)],
            "objects": [RaggedDecoder(follows="image", boxes="boxes", as_list=True)],
    }) as loader:
        (_, objects), = list(loader)
    assert objects[0]["labels"].tolist() == [2, 4]  # any part left: kept
    np.testing.assert_allclose(objects[0]["boxes"], [[15, 15, 35, 35], [20, 0, 30, 50]])


def test_a_box_exactly_at_min_visibility_is_kept_at_every_output_size() -> None:
    """The fraction left was measured in output pixels: a box with exactly 0.2 of its
    area inside came out 0.19999999999999998 at some sizes and was dropped (14% of
    boxes sitting on a threshold of 0.1-0.9 in a sweep)."""
    rng = np.random.default_rng(0)
    for _ in range(2000):
        h, w = int(rng.integers(4, 200)), int(rng.integers(4, 200))
        ch, cw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        oh, ow = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        rows = np.zeros(1, GEOMETRY)
        rows[0] = (h, w, y, x, ch, cw, oh, ow, rng.integers(2))
        # a box of integer edges straddling the window's left edge: a known fraction inside
        bw, bh = int(rng.integers(2, 40)), int(rng.integers(1, ch + 1))
        inside = int(rng.integers(1, min(bw, cw + 1)))
        x0 = x + inside - bw
        box = np.array([[[x0, y, x0 + bw, y + bh]]], np.float64)
        _, visible = map_boxes(rows, box)
        assert visible[0, 0] == inside / bw, (rows, box)  # 2 / 10 == 0.2: at the threshold


@pytest.mark.parametrize(("box", "box_format"), [
    ([10, 10, np.nan, 20], "xyxy"), ([10, 10, np.inf, 20], "xyxy"),
    ([30, 10, 20, 20], "xyxy"), ([10, 30, 20, 20], "xyxy"), ([10, 10, -5, 5], "xywh"),
    ([np.nan, 10, 5, 5], "cxcywh")],
    ids=["nan", "inf", "x1<x0", "y1<y0", "w<0", "nan centre"])
def test_a_box_that_is_not_a_box_is_refused(tmp_path: Path, box: list[float],
                                            box_format: str) -> None:
    """A NaN or inverted box was dropped as if out of view, without a word."""
    image = np.zeros((40, 40, 3), np.uint8)
    path = tmp_path / "bad-box.beton"
    good = np.array([[5, 5, 10, 10]], np.float32)
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"),
                         "objects": RaggedField(columns={"boxes": (np.float32, 4),
                                                         "labels": np.int64})},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(image, {"boxes": good, "labels": [1]}),
         (image, {"boxes": np.array([good[0], box], np.float32), "labels": [1, 2]})])
    pipelines = {"image": [CenterCropRGBImageDecoder((20, 20), ratio=1.0)],
                 "objects": [RaggedDecoder(follows="image", boxes="boxes",
                                           box_format=box_format)]}
    with Loader(path, 2, drop_last=False, pipelines=pipelines) as loader, \
            pytest.raises(DecodeError, match=rf"{path}: sample 1, field 'objects'.*box 1 of "
                                             r"column 'boxes' is \[.*not a box"):
        list(loader)
    # as stored, without follows: what was written comes back
    with Loader(path, 2, drop_last=False, pipelines={
            "image": [CenterCropRGBImageDecoder((20, 20), ratio=1.0)],
            "objects": [RaggedDecoder()]}) as loader:
        (_, objects), = list(loader)
    np.testing.assert_array_equal(objects["boxes"][1, 1], np.float32(box))


def test_keypoints_and_points_follow(tmp_path: Path) -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    keypoints = np.array([[[10.5, 5.5, 2], [59.5, 39.5, 2], [30, 20, 1]]], np.float32)
    polygon = np.array([[[0, 0], [60, 0], [60, 40]]], np.float32)
    path = tmp_path / "kp.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"),
                         "people": RaggedField(columns={"keypoints": (np.float32, (3, 3)),
                                                        "outline": (np.float32, (3, 2))})},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(image, {"keypoints": keypoints, "outline": polygon})])
    with Loader(path, 1, pipelines={
            "image": [CenterCropRGBImageDecoder((20, 20), ratio=1.0), RandomHorizontalFlip(1.0)],
            "people": [RaggedDecoder(follows="image", keypoints="keypoints", points="outline",
                                     keypoint_flip=[1, 0, 2])],
    }) as loader:
        (_, people), = list(loader)
    # window: x 10..50, y 0..40, scale 1/2, mirrored; keypoints 0 and 1 swap
    got = people["keypoints"][0, 0]
    np.testing.assert_allclose(got[1], [20 - 0.25, 2.75, 2])  # was (10.5, 5.5)
    np.testing.assert_allclose(got[0], [20 - 24.75, 19.75, 0])  # (59.5, 39.5): outside
    np.testing.assert_allclose(got[2], [10, 10, 1])
    np.testing.assert_allclose(people["outline"][0, 0], [[25, 0], [-5, 0], [-5, 20]])


def test_normalized_boxes_are_fractions_of_the_image(tmp_path: Path) -> None:
    path = tmp_path / "n.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw", max_resolution=50),
                         "boxes": RaggedField(np.float32, 4)}, num_workers=1,
                  progress=False).from_indexed_dataset(
        [(np.zeros((100, 200, 3), np.uint8), np.array([[0.5, 0.5, 1.0, 1.0]], np.float32))])
    with Loader(path, 1, pipelines={
            "image": [ShorterSideRGBImageDecoder(50)],
            "boxes": [RaggedDecoder(follows="image", boxes="values", normalized=True)],
    }) as loader:
        (images, (boxes, lengths)), = list(loader)
    assert images.shape == (1, 50, 100, 3)
    np.testing.assert_allclose(boxes[0, 0], [50, 25, 100, 50])
    assert lengths.tolist() == [1]


@pytest.mark.parametrize(("height", "width"), [(375, 500), (500, 375), (33, 1000), (480, 480),
                                               (1, 7), (999, 1001)])
@pytest.mark.parametrize(("size", "max_size"), [(800, 1333), (512, None), (100, 101)])
def test_shorter_side_sizes_are_torchvisions(height: int, width: int, size: int,
                                             max_size: int | None) -> None:
    got = shorter_side_sizes(np.array([height]), np.array([width]), size, max_size)
    assert tuple(got[0]) == shorter_side_size(height, width, size, max_size)


def test_shorter_side_batches_are_padded_to_the_largest_image(scene_file: Path,
                                                              scenes: list) -> None:
    decoder = ShorterSideRGBImageDecoder(64, max_size=100)
    with Loader(scene_file, 32, pipelines={"image": [decoder], "index": [IntDecoder()],
                                           "mask": None, "instances": None,
                                           "objects": None}) as loader:
        (images, index), = list(loader)
    sizes = np.array([shorter_side_size(*scenes[i].mask.shape, 64, 100) for i in index.ravel()])
    assert images.shape == (32, sizes[:, 0].max(), sizes[:, 1].max(), 3)
    plan_decoder = loader.pipelines[0].decoder
    assert plan_decoder.padded_size() == images.shape[1:3]


PADDED_PIPELINES = {
    "normalised, not fused": lambda: [ToTensor(), ToTorchImage(channels_last=False),
                                      NormalizeImage(MEAN, STD, np.float32)],
    "brightness, then normalised": lambda: [RandomBrightness(0.4, p=1.0), ToTensor(),
                                            ToTorchImage(), NormalizeImage(MEAN, STD,
                                                                           np.float32)],
    "flipped, solarized, normalised on NumPy": lambda: [
        RandomHorizontalFlip(), Solarization(0.0), NormalizeImage(MEAN, STD, np.float32)],
}
MEAN, STD = np.array([124.0, 116.0, 104.0]), np.array([58.0, 57.0, 57.0])


@pytest.mark.parametrize("kind", ["thread", "process"])
@pytest.mark.parametrize("case", list(PADDED_PIPELINES))
def test_a_padded_batch_is_zero_around_each_image_after_its_operations(
        scene_file: Path, case: str, kind: str) -> None:
    """The padding around a ShorterSide batch's images is zero whatever follows the
    decoder (torchvision's ImageList, as documented): it was zero only where the
    normalisation was fused into the decoder, else (0 - mean) / std."""
    if not case.endswith("on NumPy"):  # ToTensor
        pytest.importorskip("torch", reason="torch is an optional extra")
    ops = PADDED_PIPELINES[case]()

    def load(extra: list) -> tuple[np.ndarray, np.ndarray]:
        with Loader(scene_file, 16, num_workers=2, worker_type=kind, seed=3,
                    order=OrderOption.RANDOM, pipelines={
                        "image": [ShorterSideRGBImageDecoder((40, 64), max_size=100), *extra],
                        "sizes": PipelineSpec("image", ImageSizeDecoder(follows="image")),
                        "mask": None, "instances": None, "objects": None,
                        "index": None}) as loader:
            images, sizes = next(iter(loader))
        images = np.asarray(images)
        return (np.moveaxis(images, 1, -1) if images.shape[1] == 3 else images), sizes

    images, sizes = load(ops)
    plain, plain_sizes = load(ops[:1] if case.startswith("flipped") else [])
    np.testing.assert_array_equal(sizes, plain_sizes)
    for image, reference, (height, width) in zip(images, plain, sizes.tolist(), strict=True):
        assert not image[height:].any()
        assert not image[:, width:].any()
        if case != "brightness, then normalised":  # (its factors are drawn)
            np.testing.assert_allclose(image[:height, :width],
                                       (reference[:height, :width] - MEAN) / STD, atol=1e-5)
        assert image[:height, :width].any()


def test_a_pipeline_that_keeps_zeros_zero_clears_no_padding(scene_file: Path) -> None:
    """The documented pipeline (flip and normalisation fused into the decoder, then
    ToTensor and ToTorchImage, which keep zeros zero) paid for clearing padding that
    was zero already (+15-20% an epoch)."""
    with Loader(scene_file, 4, pipelines={
            "image": [ShorterSideRGBImageDecoder(40), RandomBrightness(0.4)],
            "mask": None, "instances": None, "objects": None, "index": None}) as loader:
        (image,) = loader.pipelines
        assert [type(step.op).__name__ for step in image.steps] == ["RandomBrightness"]
        assert image.padding_dims is None
    pytest.importorskip("torch", reason="torch is an optional extra")
    with Loader(scene_file, 4, pipelines={
            "image": [ShorterSideRGBImageDecoder(40), RandomHorizontalFlip(), ToTensor(),
                      ToTorchImage(), NormalizeImage(MEAN, STD, np.float32)],
            "mask": None, "instances": None, "objects": None, "index": None}) as loader:
        (image,) = loader.pipelines
        assert [type(step.op).__name__ for step in image.steps] == ["ToTensor", "ToTorchImage"]
        assert image.padding_dims is None


@pytest.mark.parametrize("op", ["RandomContrast", "Cutout", "TrivialAugmentWide", "flip later"])
def test_what_would_take_the_padding_for_the_image_is_refused(scene_file: Path,
                                                              op: str) -> None:
    """A contrast's mean, a cutout's place, a policy's histogram over a padded
    image took the padding for part of it (a flat image's contrast changed it)."""
    import fastforward.transforms as T

    after = {"RandomContrast": [T.RandomContrast(0.5, p=1.0)], "Cutout": [T.Cutout(8)],
             "TrivialAugmentWide": [T.TrivialAugmentWide()],
             "flip later": [ToTensor(), RandomHorizontalFlip()]}[op]
    name = type(after[-1]).__name__
    with pytest.raises(ValueError, match=rf"pipeline 'image'.*: {name} after "
                                         r"ShorterSideRGBImageDecoder, whose images fill only "
                                         r"part of the padded batch"):
        Loader(scene_file, 4, pipelines={"image": [ShorterSideRGBImageDecoder(40), *after],
                                         "mask": None, "instances": None, "objects": None,
                                         "index": None})


def test_multi_scale_draws_a_size_per_sample(scene_file: Path) -> None:
    sizes = []
    for epoch_seed in (1, 2):
        with Loader(scene_file, 32, seed=epoch_seed, pipelines={
                "image": [ShorterSideRGBImageDecoder((40, 50, 60), max_size=200)],
                "sizes": PipelineSpec("image", ImageSizeDecoder(follows="image")),
                "mask": None, "instances": None, "objects": None, "index": None}) as loader:
            (_, got), = list(loader)
        sizes.append(got.min(axis=1))
    assert set(np.concatenate(sizes).tolist()) == {40, 50, 60}
    assert not np.array_equal(sizes[0], sizes[1])


def test_image_sizes_of_the_source(scene_file: Path, scenes: list) -> None:
    with Loader(scene_file, 32, pipelines={
            "image": [CenterCropRGBImageDecoder((20, 20), 1.0)],
            "sizes": PipelineSpec("image", ImageSizeDecoder(follows="image", source=True)),
            "index": [IntDecoder()], "mask": None, "instances": None, "objects": None}) as loader:
        (_, index, sizes), = list(loader)
    assert sizes.tolist() == [list(scenes[i].mask.shape) for i in index.ravel()]


def test_ragged_batches_padded_and_as_lists(tmp_path: Path) -> None:
    tokens = [np.arange(n, dtype=np.int32) + 10 * n for n in (5, 0, 3, 7, 1, 2)]
    path = tmp_path / "tokens.beton"
    DatasetWriter(path, {"tokens": RaggedField(np.int32)}, num_workers=1,
                  progress=False).from_indexed_dataset([(t,) for t in tokens])
    with Loader(path, 3, pipelines={"tokens": [RaggedDecoder()]}) as loader:
        batches = [(v.copy(), n.copy()) for (v, n), in loader]
    assert [b[0].shape for b in batches] == [(3, 7), (3, 7)]  # the longest sample of the file
    for k, (values, lengths) in enumerate(batches):
        for j in range(3):
            want = tokens[3 * k + j]
            assert lengths[j] == len(want)
            np.testing.assert_array_equal(values[j, : len(want)], want)
            assert not values[j, len(want):].any()  # zeros, not the earlier batch's values
    with Loader(path, 3, pipelines={"tokens": [RaggedDecoder(as_list=True)]}) as loader:
        lists = [[t.copy() for t in batch] for batch, in loader]
    assert [len(t) for batch in lists for t in batch] == [5, 0, 3, 7, 1, 2]
    for got, want in zip((t for batch in lists for t in batch), tokens, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.torch
@pytest.mark.parametrize("as_list", [False, True], ids=["padded", "list"])
def test_to_tensor_keeps_the_ragged_batch_shape(scene_file: Path, as_list: bool) -> None:
    torch = pytest.importorskip("torch")
    with Loader(scene_file, 4, pipelines={
            "image": [CenterCropRGBImageDecoder((20, 20), 1.0), ToTensor()],
            "objects": [RaggedDecoder(as_list=as_list), ToTensor()],
            "mask": None, "instances": None, "index": None}) as loader:
        _, objects = next(iter(loader))
    if as_list:
        assert isinstance(objects, list)
        assert len(objects) == 4
        assert all(isinstance(o["boxes"], torch.Tensor) and o["boxes"].shape[1] == 4
                   for o in objects)
        assert all(o["labels"].dtype == torch.int64 for o in objects)
    else:
        assert set(objects) == {"boxes", "labels", "ids", "lengths"}
        assert all(isinstance(v, torch.Tensor) for v in objects.values())


@pytest.mark.parametrize("after", ["numpy", "torch"])
def test_an_unfused_flip_of_a_followed_image_is_refused(scene_file: Path, after: str) -> None:
    image = [CenterCropRGBImageDecoder((20, 20), 1.0), RandomVerticalFlip()]
    if after == "torch":
        pytest.importorskip("torch", reason="a flip of torch tensors")
        image = [CenterCropRGBImageDecoder((20, 20), 1.0), ToTensor(), RandomHorizontalFlip()]
    others = {"instances": None, "objects": None, "index": None}
    with pytest.raises(ValueError, match="moves the image's pixels after its decoder"):
        Loader(scene_file, 4, pipelines={"image": image, **others,
                                         "mask": [MaskDecoder(follows="image")]})
    # not followed: any order goes
    Loader(scene_file, 4, pipelines={"image": image, "mask": None, **others}).close()


@pytest.mark.parametrize("flip", [RandomHorizontalFlip, RandomVerticalFlip])
def test_a_flip_of_a_following_mask_is_refused(scene_file: Path, flip: type) -> None:
    """A flip in the mask's own pipeline was accepted and drew its own coin: about
    half the masks came out mirrored where their images were not."""
    others = {"instances": None, "objects": None, "index": None}
    image = [CenterCropRGBImageDecoder((20, 20), 1.0), RandomHorizontalFlip()]
    with pytest.raises(ValueError, match=f"{flip.__name__} would move 'mask' on its own draw, "
                                         "but 'mask' follows 'image'"):
        Loader(scene_file, 4, pipelines={"image": image, **others,
                                         "mask": [MaskDecoder(follows="image"), flip()]})
    # a mask that follows nothing may be flipped on its own
    Loader(scene_file, 4, pipelines={"image": image, **others,
                                     "mask": [MaskDecoder(size=(20, 20)), flip()]}).close()


def crop_to_16(image: np.ndarray) -> np.ndarray:
    """Another library's crop, as a plain callable (module level: it pickles)."""
    return np.ascontiguousarray(image[:16, :16])


def test_a_resizing_augment_of_a_followed_image_is_refused(scene_file: Path) -> None:
    """An ``Augment`` that crops was accepted: masks stayed 20x20 beside 16x16 images."""
    from fastforward.transforms import Augment

    others = {"instances": None, "objects": None, "index": None}
    image = [CenterCropRGBImageDecoder((20, 20), 1.0), Augment(crop_to_16, input="numpy")]
    with pytest.raises(ValueError, match=r"Augment turns the image's 20x20 into \(16, 16, 3\)"):
        Loader(scene_file, 4, pipelines={"image": image, **others,
                                         "mask": [MaskDecoder(follows="image")]})
    Loader(scene_file, 4, pipelines={"image": image, "mask": None, **others}).close()
    # what keeps the size passes, in either layout
    kept = [CenterCropRGBImageDecoder((20, 20), 1.0), Augment(np.ascontiguousarray,
                                                              input="numpy")]
    if importlib.util.find_spec("torch") is not None:
        from fastforward.transforms import ToTorchImage

        kept += [ToTensor(), ToTorchImage()]
    Loader(scene_file, 4, pipelines={"image": kept, **others,
                                     "mask": [MaskDecoder(follows="image")]}).close()


def test_multi_scale_pads_to_the_largest_output_of_any_size(tmp_path: Path) -> None:
    """Under max_size, torchvision's rounding down gives a 20x27 image 42x56 at size
    42 and 41x56 at 55: the batch was sized for 55 alone, and a sample drawing 42
    failed with 'cannot reshape array of size 6888 into shape (1,42,56,3)'."""
    assert shorter_side_sizes(np.array([20]), np.array([27]), 42, 56).tolist() == [[42, 56]]
    assert shorter_side_sizes(np.array([20]), np.array([27]), 55, 56).tolist() == [[41, 56]]
    path = tmp_path / "small.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"), "index": IntField()},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(np.full((20, 27, 3), 200, np.uint8), i) for i in range(16)])
    decoder = ShorterSideRGBImageDecoder((42, 55), max_size=56)
    with Loader(path, 16, seed=0, pipelines={
            "image": [decoder], "index": None,
            "sizes": PipelineSpec("image", ImageSizeDecoder(follows="image"))}) as loader:
        (images, sizes), = list(loader)
    assert images.shape == (16, 42, 56, 3)
    assert {tuple(s) for s in sizes.tolist()} == {(42, 56), (41, 56)}
    for image, (height, width) in zip(images, sizes.tolist(), strict=True):
        assert (image[:height, :width] == 200).all()
        assert not image[height:].any()


def test_the_padded_size_is_worked_out_once_per_file(scene_file: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """It was worked out again at every epoch's start (a second or more on a file of a
    million images), and must not travel with the plan to worker processes."""
    import pickle

    import fastforward.fields.resized_image as resized_image

    calls = []
    real = resized_image.shorter_side_sizes

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(resized_image, "shorter_side_sizes", counted)
    decoder = ShorterSideRGBImageDecoder((40, 60), max_size=100)
    with Loader(scene_file, 16, pipelines={"image": [decoder], "mask": None,
                                           "instances": None, "objects": None,
                                           "index": None}) as loader:
        for _ in range(3):
            for _ in loader:
                pass
        plan_decoder = loader.pipelines[0].decoder
        assert "_padded" not in pickle.loads(pickle.dumps(plan_decoder)).__dict__
    padded = [size for size in calls if not isinstance(size, np.ndarray)]
    assert sorted(padded) == [40, 60]  # one pass over the stored shapes per size, once


@pytest.mark.parametrize("objects", ["default", "padded", "as_list", "follows"])
def test_filter_on_boxes_sees_each_samples_boxes(scene_file: Path, scenes: list,
                                                  objects: str) -> None:
    """filter iterated a padded batch's dict (its column names) or tuple as if they were
    samples, and with a pipeline that follows the image it dropped the image's
    pipeline and failed."""
    pipelines = {"image": [RandomResizedCropRGBImageDecoder((24, 24)), RandomHorizontalFlip()],
                 "mask": [MaskDecoder(follows="image")], "instances": None, "index": None}
    pipelines["objects"] = {
        "default": None, "padded": [RaggedDecoder()], "as_list": [RaggedDecoder(as_list=True)],
        "follows": [RaggedDecoder(follows="image", boxes="boxes")]}[objects]
    if objects == "default":
        del pipelines["objects"]
        pytest.importorskip("torch", reason="the default pipeline ends in ToTensor()")
    seen: list[int] = []

    def crowded(sample: dict) -> bool:
        assert set(sample) == {"boxes", "labels", "ids"}
        seen.append(len(sample["labels"]))
        return len(sample["labels"]) >= 4

    with Loader(scene_file, 5, pipelines=pipelines) as loader:
        kept = loader.filter("objects", crowded)
    expected = [len(s.labels) for s in scenes]
    assert seen == expected  # each sample's boxes as stored, cut to their number
    assert kept.indices.tolist() == [i for i, n in enumerate(expected) if n >= 4]
    kept.close()


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_filter_on_a_mask_that_follows_the_image(tmp_path: Path, kind: str) -> None:
    """The pass decoded a followed mask with MaskDecoder() alone, which needs follows= or
    size=: filter on a mask always failed. Now each mask is read as stored (masks of
    several sizes here)."""
    rng = np.random.default_rng(3)
    samples = []
    for i in range(9):
        h, w = int(rng.integers(5, 30)), int(rng.integers(5, 30))
        mask = rng.integers(0, 2, (h, w)).astype(np.uint8)
        if i % 3 == 0:
            mask[h // 4 : 3 * h // 4 + 1, w // 4 : 3 * w // 4 + 1] = 7
        samples.append((rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mask))
    path = tmp_path / "masks.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"),
                         "mask": MaskField(follows="image")},
                  num_workers=1, progress=False).from_indexed_dataset(samples)
    shapes: list[tuple[int, ...]] = []

    def has_seven(mask: np.ndarray) -> bool:
        shapes.append(mask.shape)
        return bool((mask == 7).any())

    with Loader(path, 4, num_workers=2, worker_type=kind, indices=list(range(1, 9)),
                drop_last=False, pipelines={"image": [CenterCropRGBImageDecoder((8, 8), 1.0)],
                                            "mask": [MaskDecoder(follows="image")]}) as loader:
        kept = loader.filter("mask", has_seven)
    assert shapes == [m.shape for _, m in samples[1:]]
    assert kept.indices.tolist() == [3, 6]
    with kept:
        (_, masks), = list(kept)  # the kept samples, their masks cropped with the images
    assert masks.shape == (2, 8, 8)
    assert (masks == 7).any(axis=(1, 2)).all()


def test_filter_on_a_followed_field_checks_checksums_when_asked(scene_file: Path,
                                                              tmp_path: Path) -> None:
    """The pass over a followed field read each sample with the loader's Reader, which
    checks no page: Loader(verify_checksums=True).filter saw a damaged box."""
    import shutil

    from fastforward.errors import FormatError

    copy = tmp_path / "copy.beton"
    shutil.copyfile(scene_file, copy)
    reader = Reader(copy)
    ptr = int(reader.metadata[2][f"f{reader.field_names.index('objects')}"]["ptr"])
    reader.close()
    with open(copy, "r+b") as f:
        f.seek(ptr + 1)
        byte = f.read(1)[0]
        f.seek(ptr + 1)
        f.write(bytes([byte ^ 0x40]))
    pipelines = {"image": [CenterCropRGBImageDecoder((24, 24), 1.0)],
                 "objects": [RaggedDecoder(follows="image", boxes="boxes")],
                 "mask": None, "instances": None, "index": None}
    with Loader(copy, 4, pipelines=pipelines, verify_checksums=True) as loader, \
            pytest.raises(FormatError, match="checksum"):
        loader.filter("objects", lambda sample: True)
    with Loader(copy, 4, pipelines=pipelines) as loader:  # not asked: not checked
        assert len(loader.filter("objects", lambda sample: True).indices) == 32


def test_reader_read_field_reads_one_field_as_read_does(scene_file: Path) -> None:
    reader = Reader(scene_file)
    for index in (0, 5, -1):
        whole = reader.read(index)
        for k, name in enumerate(reader.field_names):
            one = reader.read_field(index, name)
            if isinstance(one, dict):
                assert one.keys() == whole[k].keys()
                for column in one:
                    np.testing.assert_array_equal(one[column], whole[k][column])
            else:
                np.testing.assert_array_equal(one, whole[k])
    with pytest.raises(KeyError, match="no field 'nope'"):
        reader.read_field(0, "nope")
    with pytest.raises(IndexError, match="sample 32 out of range"):
        reader.read_field(32, "mask")


def test_filter_of_a_single_column_ragged_field(tmp_path: Path) -> None:
    path = tmp_path / "r.beton"
    DatasetWriter(path, {"v": RaggedField(np.int32)}, num_workers=1,
                  progress=False).from_indexed_dataset([(np.arange(n, dtype=np.int32),)
                                                        for n in (0, 3, 1, 5, 2)])
    with Loader(path, 2, pipelines={"v": [RaggedDecoder()]}) as loader:
        kept = loader.filter("v", lambda values: values.sum() >= 3)
    assert kept.indices.tolist() == [1, 3]
    kept.close()


def test_a_mask_field_without_a_pipeline_says_what_it_needs(scene_file: Path) -> None:
    pytest.importorskip("torch", reason="a field without a pipeline ends in ToTensor()")
    with pytest.raises(ValueError, match=r"pipeline 'mask'.*MaskDecoder.follows="):
        Loader(scene_file, 4, pipelines={"image": [CenterCropRGBImageDecoder((20, 20), 1.0)],
                                         "instances": None, "objects": None, "index": None})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"boxes": "boxes"}, "name it with follows="),
    ({"follows": "image"}, "needs the columns to move"),
    ({"follows": "image", "boxes": "nope"}, "'nope' is not a column"),
    ({"follows": "image", "boxes": "labels"}, "coordinates must be floats"),
    ({"follows": "image", "box_format": "yxyx", "boxes": "boxes"}, "box_format"),
])
def test_ragged_decoder_arguments_are_checked(scene_file: Path, kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((ValueError, TypeError), match=message):
        Loader(scene_file, 4, pipelines={"image": [CenterCropRGBImageDecoder((20, 20), 1.0)],
                                         "objects": [RaggedDecoder(**kwargs)],
                                         "mask": None, "instances": None, "index": None})


def test_followers_need_a_decoder_that_decides_geometry(scene_file: Path) -> None:
    with pytest.raises(ValueError, match="decides no geometry to follow"):
        Loader(scene_file, 4, pipelines={"image": [SimpleRGBImageDecoder()], "instances": None,
                                         "mask": [MaskDecoder(follows="image")],
                                         "objects": None, "index": None})


def test_a_mask_the_wrong_size_names_file_sample_and_field(tmp_path: Path) -> None:
    path = tmp_path / "wrong.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"), "mask": MaskField()},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.uint8)),
         (np.zeros((20, 20, 3), np.uint8), np.zeros((10, 20), np.uint8))])
    loader = Loader(path, 2, pipelines={"image": [CenterCropRGBImageDecoder((8, 8), 1.0)],
                                        "mask": [MaskDecoder(follows="image")]})
    with loader, pytest.raises(DecodeError, match=r"sample 1, field 'mask': mask is 10×20, "
                                                  r"its image in 'image' is 20×20") as info:
        list(loader)
    assert str(path) in str(info.value)


def test_masks_of_one_size_without_an_image(scene_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "fixed.beton"
    masks = [np.full((6, 9), k, np.uint8) for k in range(4)]
    DatasetWriter(path, {"mask": MaskField()}, num_workers=1,
                  progress=False).from_indexed_dataset([(m,) for m in masks])
    with Loader(path, 4, pipelines={"mask": [MaskDecoder(size=(6, 9))]}) as loader:
        (got,), = list(loader)
    np.testing.assert_array_equal(got, np.stack(masks))


class Unsplit(RandomResizedCropRGBImageDecoder):
    """Finds no batch worth splitting (as a decoder of raw pixels may): on threads its
    pipeline's stage 1 then runs in the batch stage, on the whole batch."""

    def split_batch(self, context):  # type: ignore[no-untyped-def]
        return False


class MaskPlusOne(Operation):
    """A per-sample Python operation on a mask: it runs in ranges (stage 1)."""

    per_sample = True
    releases_gil = False

    def declare_state_and_memory(self, previous_state):  # type: ignore[no-untyped-def]
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        np.add(sample, 1, out=destination)
        return destination


@pytest.mark.parametrize(("workers", "kind"), WORKERS)
def test_a_follower_whose_leader_is_not_split_still_runs_its_range_steps(
        scene_file: Path, workers: int, kind: str) -> None:
    """A mask pipeline with a per-range operation follows an image whose decoder split
    no batch: the mask's stage 1 cannot run in ranges before the image's geometry
    exists, so it runs whole in the batch stage (it read a stage 1 buffer that nothing
    had written)."""
    def run(extra: list) -> list[np.ndarray]:
        with Loader(scene_file, 8, num_workers=workers, worker_type=kind, seed=3,
                    order=OrderOption.RANDOM, pipelines={
                        "image": [Unsplit((40, 56), scale=(0.2, 1))],
                        "mask": [MaskDecoder(follows="image"), *extra],
                        "instances": None, "objects": None, "index": [IntDecoder()]}) as loader:
            return [mask.copy() for _, mask, _ in loader]

    plain, plus = run([]), run([MaskPlusOne()])
    assert len(plain) == len(plus) == 4
    for a, b in zip(plain, plus, strict=True):
        np.testing.assert_array_equal(b, a + 1)


class WholeBatch(RandomResizedCropRGBImageDecoder):
    """Decodes whole batches (``parallel = False``, as the nvJPEG decoders do): its
    pipeline never runs in ranges, nor do the pipelines that follow it."""

    parallel = False


@pytest.mark.parametrize(("workers", "kind"), WORKERS)
def test_a_follower_of_a_decoder_of_whole_batches(scene_file: Path, workers: int,
                                                  kind: str) -> None:
    """The mask follows an image decoded in the batch stage, so it is decoded there
    too: with process workers, the loader's own process fetches its payloads (it
    fetched only the image's: KeyError in the mask's decoder)."""
    def run(decoder: Decoder) -> list[tuple[np.ndarray, ...]]:
        with Loader(scene_file, 8, num_workers=workers, worker_type=kind, seed=3,
                    order=OrderOption.RANDOM, pipelines={
                        "image": [decoder], "mask": [MaskDecoder(follows="image")],
                        "instances": None, "objects": None, "index": [IntDecoder()]}) as loader:
            return [tuple(o.copy() for o in batch) for batch in loader]

    whole = run(WholeBatch((40, 56), scale=(0.2, 1)))
    ranged = run(RandomResizedCropRGBImageDecoder((40, 56), scale=(0.2, 1)))
    assert len(whole) == len(ranged) == 4
    for a, b in zip(whole, ranged, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)

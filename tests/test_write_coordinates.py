"""Coordinates that follow their image's shrinking at write time
(``RaggedField(follows=...)``): where ``max_resolution`` or
``min_resolution`` shrinks an image, its boxes, keypoints and points are
scaled by the same factors, so that they stay in pixels of the stored image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import simplejpeg

from fastforward.errors import EncodeError
from fastforward.fields import (
    IntField,
    MaskField,
    MultiChannelImageField,
    RaggedField,
    RGBImageField,
)
from fastforward.fields.decoders import CenterCropRGBImageDecoder, RaggedDecoder
from fastforward.fields.rgb_image import IMAGE_MODES, dct_span
from fastforward.loader import Loader
from fastforward.reader import Reader
from fastforward.writer import DatasetWriter

OBJECTS = {"boxes": (np.float32, (4,)), "labels": np.int64}


def objects(**kwargs: object) -> RaggedField:
    return RaggedField(columns=OBJECTS, follows="image", boxes="boxes", **kwargs)


def write(path: Path, fields: dict, samples: list, workers: int = 1, **kwargs: object) -> Path:
    DatasetWriter(path, fields, num_workers=workers, progress=False,
                  **kwargs).from_indexed_dataset(samples)
    return path


def test_boxes_land_on_the_pixels_they_framed(tmp_path: Path) -> None:
    """A white rectangle framed by its box: after a shrink by 1/3, the scaled box
    frames the rectangle's pixels in the stored image."""
    image = np.zeros((240, 360, 3), np.uint8)
    image[60:180, 90:270] = 255
    box = np.array([[90, 60, 270, 180]], np.float32)
    path = write(tmp_path / "r.beton",
                 {"image": RGBImageField(write_mode="raw", max_resolution=120),
                  "objects": objects()}, [(image, {"boxes": box, "labels": [3]})])
    stored, got = Reader(path).read(0)
    assert stored.shape == (80, 120, 3)
    np.testing.assert_array_equal(got["boxes"], [[30, 20, 90, 60]])
    x0, y0, x1, y1 = got["boxes"][0].astype(int)
    inside = np.zeros(stored.shape[:2], bool)
    inside[y0:y1, x0:x1] = True
    assert (stored[inside] == 255).all()
    assert (stored[~inside] == 0).all()
    assert got["labels"].tolist() == [3]


@pytest.mark.parametrize(("height", "width", "limits"), [
    (250, 370, {"max_resolution": 100}),   # 67×100: x and y by different factors
    (333, 500, {"max_resolution": 200}),
    (480, 640, {"min_resolution": 100}),
    (50, 60, {"max_resolution": 100}),     # not shrunk: stored as given
])
def test_each_axis_scales_by_its_own_factor(tmp_path: Path, height: int, width: int,
                                            limits: dict) -> None:
    rng = np.random.default_rng(height)
    boxes = (rng.random((5, 4)) * [width, height, width, height]).astype(np.float32)
    keypoints = (rng.random((5, 2, 3)) * [width, height, 2]).astype(np.float32)
    outline = (rng.random((5, 4, 2)) * [width, height]).astype(np.float32)
    field = RaggedField(columns={"boxes": (np.float32, (4,)), "keypoints": (np.float32, (2, 3)),
                                 "outline": (np.float64, (4, 2))},
                        follows="image", boxes="boxes", keypoints="keypoints",
                        points="outline")
    path = write(tmp_path / "s.beton",
                 {"image": RGBImageField(write_mode="raw", **limits), "people": field},
                 [(np.zeros((height, width, 3), np.uint8),
                   {"boxes": boxes, "keypoints": keypoints, "outline": outline})])
    stored, got = Reader(path).read(0)
    sx, sy = stored.shape[1] / width, stored.shape[0] / height
    if stored.shape[:2] == (height, width):
        np.testing.assert_array_equal(got["boxes"], boxes)  # untouched, bit for bit
    np.testing.assert_allclose(got["boxes"], boxes * [sx, sy, sx, sy], rtol=1e-6)
    np.testing.assert_allclose(got["keypoints"], keypoints * [sx, sy, 1], rtol=1e-6)
    np.testing.assert_array_equal(got["keypoints"][..., 2], keypoints[..., 2])
    np.testing.assert_allclose(got["outline"], outline * [sx, sy], rtol=1e-12)
    assert got["outline"].dtype == np.float64


def test_a_source_jpeg_scales_by_its_own_size(tmp_path: Path, photos: list) -> None:
    """A JPEG given as bytes is shrunk from the size its header gives (the
    writer decodes it at a reduced scale, or transcodes it without pixels)."""
    photo = np.ascontiguousarray(photos[0][:300, :400])
    data = simplejpeg.encode_jpeg(photo, quality=92, colorsubsampling="420")
    box = np.array([[40, 30, 400, 300]], np.float32)
    for mode in ("jpg", "raw"):
        path = write(tmp_path / f"{mode}.beton",
                     {"image": RGBImageField(write_mode=mode, max_resolution=100),
                      "objects": objects()}, [(data, {"boxes": box, "labels": [1]})])
        stored, got = Reader(path).read(0)
        assert stored.shape == (75, 100, 3)
        np.testing.assert_allclose(got["boxes"], [[10, 7.5, 100, 75]])


def edges(stored: np.ndarray) -> tuple[float, float]:
    """Where a white band's left and right edges lie in *stored*, in its pixels."""
    profile = stored[..., 0].astype(float).mean(0) / 255
    mass = profile.sum()
    centre = (profile * (np.arange(len(profile)) + 0.5)).sum() / mass
    return centre - mass / 2, centre + mass / 2


@pytest.mark.parametrize(("width", "band", "limit"), [
    (370, (124, 363), 100),    # decoded at 5/8: 232 pixels for 231.25
    (1120, (0, 1119), 314),
    (615, (200, 611), 264),
])
def test_a_jpeg_shrunk_through_rgb_lands_where_its_box_does(width: int, band: tuple,
                                                            limit: int) -> None:
    """The RGB path decodes a JPEG at a reduced DCT scale: ceil(W * m / 8) pixels for
    W * m / 8, whose last column stands for part of one. Squeezing all of them onto
    the stored width stretched the image (0.2-0.48 stored pixels at the far edge)
    away from the boxes scaled with it."""
    image = np.zeros((64, width, 3), np.uint8)
    image[:, band[0] : band[1]] = 255
    data = simplejpeg.encode_jpeg(image, quality=100, colorsubsampling="444")
    stored = RGBImageField(write_mode="raw", max_resolution=limit)._prepare(data)
    scale = stored.shape[1] / width
    left, right = edges(stored)
    assert abs(left - band[0] * scale) < 0.1
    assert abs(right - band[1] * scale) < 0.1


def test_the_span_of_a_reduced_dct_scale() -> None:
    assert dct_span((250, 370), (157, 232)) == (156.25, 231.25)  # 5/8
    assert dct_span((250, 370), (32, 47)) == (31.25, 46.25)  # 1/8
    assert dct_span((7, 7), (7, 7)) is None  # 7/8 and 8/8 alike


@pytest.mark.parametrize("leader", ["mask", "planes"])
def test_masks_and_many_channel_images_lead_too(tmp_path: Path, leader: str) -> None:
    fields = {"mask": MaskField(max_resolution=30),
              "planes": MultiChannelImageField(4, max_resolution=30),
              "objects": RaggedField(columns=OBJECTS, follows=leader, boxes="boxes")}
    whole = {"mask": [0, 0, 90, 60], "planes": [0, 0, 60, 45]}[leader]  # the whole image
    sample = (np.zeros((60, 90), np.uint8), np.zeros((45, 60, 4), np.uint8),
              {"boxes": np.array([whole], np.float32), "labels": [0]})
    path = write(tmp_path / "m.beton", fields, [sample])
    mask, planes, got = Reader(path).read(0)
    assert mask.shape == (20, 30)
    assert planes.shape == (22, 30, 4)
    stored = {"mask": mask, "planes": planes}[leader]
    np.testing.assert_allclose(got["boxes"][0], [0, 0, stored.shape[1], stored.shape[0]])


def test_a_follower_may_come_before_its_image(tmp_path: Path, photos: list) -> None:
    """The writer encodes the image first; the file keeps the fields' order, on
    as many workers as asked, and the dataset's arrays are not scaled in place."""
    rng = np.random.default_rng(5)
    samples = []
    for i in range(12):
        h, w = int(rng.integers(120, 300)), int(rng.integers(120, 300))
        boxes = np.array([[0, 0, w, h], [w / 4, h / 4, w / 2, h / 2]], np.float32)
        samples.append(({"boxes": boxes, "labels": [i, i]}, i,
                        np.ascontiguousarray(photos[i % len(photos)][:h, :w])))
    originals = [s[0]["boxes"].copy() for s in samples]
    path = write(tmp_path / "o.beton",
                 {"objects": objects(), "index": IntField(),
                  "image": RGBImageField(max_resolution=64)}, samples, workers=2)
    reader = Reader(path)
    assert list(reader.field_names) == ["objects", "index", "image"]
    for i, ((before, _, source), original) in enumerate(zip(samples, originals, strict=True)):
        got, index, stored = reader.read(i)
        assert index == i
        np.testing.assert_array_equal(before["boxes"], original)
        h, w = stored.shape[:2]
        np.testing.assert_allclose(got["boxes"][0], [0, 0, w, h], rtol=1e-6)
        sx, sy = w / source.shape[1], h / source.shape[0]
        np.testing.assert_allclose(got["boxes"][1], original[1] * [sx, sy, sx, sy], rtol=1e-6)


def test_the_loader_moves_boxes_scaled_at_write(tmp_path: Path) -> None:
    image = np.zeros((200, 400, 3), np.uint8)
    path = write(tmp_path / "l.beton",
                 {"image": RGBImageField(write_mode="raw", max_resolution=100),
                  "objects": objects()},
                 [(image, {"boxes": np.array([[100, 50, 300, 150]], np.float32),
                           "labels": [7]})])
    with Loader(path, 1, pipelines={
            "image": [CenterCropRGBImageDecoder((50, 50), ratio=1.0)],
            "objects": [RaggedDecoder(follows="image", boxes="boxes")]}) as loader:
        ((images, got),) = list(loader)
    assert images.shape == (1, 50, 50, 3)
    # stored 50×100: the box is x 25..75, y 12.5..37.5; the centre crop is x 25..75
    np.testing.assert_allclose(got["boxes"][0, 0], [0, 12.5, 50, 37.5])


def test_skipped_images_take_their_boxes_with_them(tmp_path: Path) -> None:
    good = np.zeros((40, 40, 3), np.uint8)
    box = {"boxes": np.array([[0, 0, 40, 40]], np.float32), "labels": [1]}
    writer = DatasetWriter(tmp_path / "k.beton",
                           {"objects": objects(),
                            "image": RGBImageField(write_mode="raw", max_resolution=20)},
                           num_workers=1, progress=False, skip_errors=[EncodeError])
    writer.from_indexed_dataset([(box, good), (box, np.zeros((4, 4, 3), np.float32)),
                                 (box, good)])
    assert [s.index for s in writer.skipped] == [1]
    assert writer.skipped[0].field == "image"
    reader = Reader(tmp_path / "k.beton")
    assert len(reader) == 2
    for i in range(2):
        np.testing.assert_allclose(reader.read(i)[0]["boxes"], [[0, 0, 20, 20]])


@pytest.mark.parametrize(("fields", "error", "message"), [
    ({"objects": RaggedField(columns=OBJECTS, follows="picture", boxes="boxes")}, ValueError,
     r"field 'objects' follows 'picture', which is not another field of the dataset \(fields: "
     r"\['image'\]\)"),
    ({"objects": RaggedField(columns=OBJECTS, follows="objects", boxes="boxes")}, ValueError,
     "not another field"),
    ({"objects": RaggedField(columns=OBJECTS, follows="label", boxes="boxes"),
      "label": IntField()}, TypeError,
     r"'label' \(IntField\): only an image field can be followed"),
])
def test_the_writer_checks_what_is_followed(tmp_path: Path, fields: dict, error: type,
                                            message: str) -> None:
    with pytest.raises(error, match=message):
        DatasetWriter(tmp_path / "x.beton", {"image": RGBImageField(), **fields})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"boxes": "boxes"}, ValueError, "name its field with follows="),
    ({"follows": "image"}, ValueError, "needs the columns to scale"),
    ({"follows": "image", "boxes": "nope"}, ValueError, "'nope' is not a column"),
    ({"follows": "image", "boxes": "labels"}, TypeError, "coordinates must be floats"),
    ({"follows": "image", "points": "boxes"}, ValueError, r"rows of shape \(4,\); points need"),
    ({"follows": "image", "keypoints": "boxes"}, ValueError, "keypoints need"),
    ({"follows": 3, "boxes": "boxes"}, TypeError, "follows names a field"),
])
def test_ragged_field_arguments_are_checked(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        RaggedField(columns=OBJECTS, **kwargs)


class Unrecorded(RGBImageField):
    """A custom image field whose encode never records its size."""

    def encode(self, destination, field, malloc):  # type: ignore[no-untyped-def]
        destination["mode"] = IMAGE_MODES["raw"]
        destination["height"], destination["width"] = field.shape[:2]
        destination["data_ptr"], buffer = malloc(field.nbytes)
        buffer[:] = field.reshape(-1)


def test_a_leader_that_records_no_size_is_named(tmp_path: Path) -> None:
    """It was 'recorded no image size for this sample' on every sample (an
    EncodeError, so skip_errors skipped the whole dataset without a word)."""
    writer = DatasetWriter(tmp_path / "u.beton", {"image": Unrecorded(), "objects": objects()},
                           num_workers=1, progress=False, skip_errors=[EncodeError])
    box = {"boxes": np.zeros((1, 4), np.float32), "labels": [0]}
    with pytest.raises(TypeError, match=r"field 'image' is followed, but its Unrecorded.encode "
                                        "recorded no image size"):
        writer.from_indexed_dataset([(np.zeros((8, 8, 3), np.uint8), box)])
    assert not list(tmp_path.iterdir())


def test_outside_a_writer_there_is_no_size_to_follow() -> None:
    field = objects()
    with pytest.raises(EncodeError, match="follows field 'image', which recorded no image size"):
        field.payload({"boxes": np.zeros((1, 4), np.float32), "labels": [0]})


def test_following_is_the_writers_not_the_files(tmp_path: Path) -> None:
    path = write(tmp_path / "f.beton",
                 {"image": RGBImageField(write_mode="raw"), "objects": objects()},
                 [(np.zeros((8, 8, 3), np.uint8), {"boxes": np.zeros((0, 4)), "labels": []})])
    assert "follows='image'" in repr(objects())
    field = Reader(path).handlers["objects"]
    assert field.follows is None
    assert "follows" not in repr(field)
    assert field.arguments() == RaggedField(columns=OBJECTS).arguments()


@pytest.mark.parametrize(("box", "box_format", "message"), [
    ([np.nan, 0, 4, 4], None, r"box 1 is \[nan, 0.0, 4.0, 4.0\]: not a box \(a coordinate is "
                              r"not finite\)"),
    ([0, 0, np.inf, 1], "xywh", r"box 1 is \[0.0, 0.0, inf, 1.0\] \(xywh\): not a box"),
    ([9, 9, 1, 1], "xyxy", r"box 1 is \[9.0, 9.0, 1.0, 1.0\] \(xyxy\): not a box \(a "
                           "coordinate is not finite, or a far edge is before its near one"),
    ([1, 1, -2, 3], "cxcywh", r"box 1 is \[1.0, 1.0, -2.0, 3.0\] \(cxcywh\): not a box"),
])
def test_the_writer_refuses_a_box_that_is_not_one(tmp_path: Path, box: list,
                                                  box_format: str | None, message: str) -> None:
    """It was stored, and failed (a DecodeError) only when a loader following the
    image reached the sample; without following, the NaN came through."""
    boxes = np.array([[0, 0, 2, 2], box], np.float32)
    good = (np.zeros((8, 8, 3), np.uint8), {"boxes": boxes[:1], "labels": [0]})
    bad = (np.zeros((8, 8, 3), np.uint8), {"boxes": boxes, "labels": [0, 1]})
    with pytest.raises(EncodeError, match=r"x\.beton: sample 1, field 'objects': column "
                                          r"'boxes': " + message):
        write(tmp_path / "x.beton", {"image": RGBImageField(write_mode="raw"),
                                     "objects": objects(box_format=box_format)}, [good, bad])
    assert not list(tmp_path.iterdir())


def test_a_far_edge_first_is_a_box_in_another_format(tmp_path: Path) -> None:
    """Without box_format the writer cannot tell (10, 10, 5, 5) in xywh from an
    inverted xyxy box: it keeps it."""
    box = {"boxes": np.array([[10, 10, 5, 5]], np.float32), "labels": [0]}
    path = write(tmp_path / "w.beton", {"image": RGBImageField(write_mode="raw"),
                                        "objects": objects(box_format="xywh")},
                 [(np.zeros((20, 20, 3), np.uint8), box)])
    np.testing.assert_array_equal(Reader(path).read(0)[1]["boxes"], [[10, 10, 5, 5]])
    with pytest.raises(ValueError, match="box_format must be one of"):
        objects(box_format="yxyx")
    with pytest.raises(ValueError, match="box_format= is the layout of the boxes= column"):
        RaggedField(columns=OBJECTS, follows="image", keypoints=None, points="boxes",
                    box_format="xyxy")


def test_a_mask_that_follows_its_image_is_stored_at_its_size(tmp_path: Path) -> None:
    """MaskField(follows=...): no max_resolution to keep in step with the image's;
    boxes may follow the mask, written before or after it."""
    mask = np.arange(60 * 90, dtype=np.uint16).reshape(60, 90)
    fields = {"objects": RaggedField(columns=OBJECTS, follows="mask", boxes="boxes"),
              "mask": MaskField(np.uint16, follows="image"),
              "image": RGBImageField(write_mode="raw", max_resolution=30)}
    path = write(tmp_path / "m.beton", fields,
                 [({"boxes": np.array([[0, 0, 90, 60]], np.float32), "labels": [0]}, mask,
                   np.zeros((60, 90, 3), np.uint8))])
    got, stored_mask, image = Reader(path).read(0)
    assert image.shape == (20, 30, 3)
    assert stored_mask.shape == (20, 30)
    # nearest neighbour: output pixel (y, x) takes the source pixel under its centre
    np.testing.assert_array_equal(stored_mask, mask[1::3, 1::3])
    np.testing.assert_allclose(got["boxes"][0], [0, 0, 30, 20])


def test_a_mask_not_the_size_of_its_image_is_refused(tmp_path: Path) -> None:
    """Forgetting MaskField(max_resolution=...) wrote a file whose masks were
    refused only by a loader that followed the image."""
    sample = (np.zeros((60, 90, 3), np.uint8), np.zeros((60, 91), np.uint8))
    with pytest.raises(EncodeError, match=r"m\.beton: sample 0, field 'mask': mask of 60×91, "
                                          r"but its image \(field 'image'\) is 60×90"):
        write(tmp_path / "m.beton", {"image": RGBImageField(write_mode="raw"),
                                     "mask": MaskField(follows="image")}, [sample])
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="give follows= or max_resolution="):
        MaskField(follows="image", max_resolution=30)


def test_fields_that_follow_in_a_circle_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fields follow each other in a circle: a -> b -> a"):
        DatasetWriter(tmp_path / "c.beton", {"a": MaskField(follows="b"),
                                             "b": MaskField(follows="a")})
    assert not list(tmp_path.iterdir())

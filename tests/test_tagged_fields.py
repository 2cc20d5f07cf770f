"""fastforward's own field types (``fields.tagged``): RaggedField and MaskField,
stored with FFCV's custom type id, recognised without custom_fields, and laid
out so that FFCV opens them as BytesField."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from fastforward.errors import DecodeError, EncodeError, FormatError
from fastforward.fields import BytesField, IntField, MaskField, RaggedField
from fastforward.fields.bytes import BYTES_METADATA
from fastforward.fields.mask import MASK_HEADER, require_zstd
from fastforward.fields.tagged import MARKER, parse_arguments
from fastforward.reader import Reader
from fastforward.types import CUSTOM_TYPE_ID, FieldDescType, HeaderType
from fastforward.writer import DatasetWriter

OBJECTS = {"boxes": (np.float32, (4,)), "labels": np.int64}


def write(path: Path, fields: dict, samples: list, checksums: bool = True) -> Path:
    DatasetWriter(path, fields, num_workers=1, progress=False,
                  checksums=checksums).from_indexed_dataset(samples)
    return path


@pytest.fixture(scope="module")
def masks(photos: list[np.ndarray]) -> list[np.ndarray]:
    """Class-id masks of real photographs: their smoothed grey levels quantised into
    6 ids (regions with the photograph's edges, as a segmentation has)."""
    out = []
    kernel = np.ones(9) / 9
    for photo in photos[:6]:
        grey = photo[:120, :160].mean(axis=2)
        grey = np.apply_along_axis(np.convolve, 0, grey, kernel, "same")
        grey = np.apply_along_axis(np.convolve, 1, grey, kernel, "same")
        out.append(np.digitize(grey, np.quantile(grey, [0.2, 0.4, 0.6, 0.8, 0.95])).astype(
            np.uint8))
    return out


def test_tagged_fields_use_the_custom_type_id_and_bytes_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "t.beton", {"objects": RaggedField(columns=OBJECTS),
                                        "mask": MaskField(), "label": IntField()},
                 [({"boxes": np.zeros((1, 4), np.float32), "labels": [1]},
                   np.zeros((4, 4), np.uint8), 0)])
    header = np.fromfile(path, HeaderType, 1)[0]
    descriptors = np.fromfile(path, FieldDescType, int(header["num_fields"]),
                              offset=HeaderType.itemsize)
    assert descriptors["type_id"].tolist() == [CUSTOM_TYPE_ID, CUSTOM_TYPE_ID, 1]
    assert bytes(descriptors[0]["arguments"][: len(MARKER)]) == MARKER
    reader = Reader(path)  # no custom_fields needed
    assert reader.metadata.dtype["f0"] == BYTES_METADATA
    assert reader.metadata.dtype["f1"] == BYTES_METADATA
    assert isinstance(reader.handlers["objects"], RaggedField)
    assert reader.handlers["objects"].names == ["boxes", "labels"]
    assert isinstance(reader.handlers["mask"], MaskField)


def test_a_tagged_field_reads_as_raw_bytes_with_bytesfield(tmp_path: Path) -> None:
    """What FFCV does with custom_handlers={name: BytesField}: the payload as stored."""
    boxes = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
    path = write(tmp_path / "t.beton", {"objects": RaggedField(columns=OBJECTS)},
                 [({"boxes": boxes, "labels": np.array([3, 4])},)])
    (raw,) = Reader(path, {"objects": BytesField}).read(0)
    assert raw.tobytes() == boxes.tobytes() + np.array([3, 4], "<i8").tobytes()


def test_an_unknown_tagged_type_is_named(tmp_path: Path) -> None:
    # no checksums: they would refuse the changed descriptor first
    path = write(tmp_path / "t.beton", {"tokens": RaggedField(np.int32)}, [([1, 2],)],
                 checksums=False)
    data = bytearray(path.read_bytes())
    start = HeaderType.itemsize + 1 + 16 + len(MARKER) + 2
    at = data.index(b'"RaggedField"', start)
    data[at : at + 13] = b'"FutureField"'
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="'tokens' is a fastforward field of type 'FutureField'"):
        Reader(path)


@pytest.mark.parametrize("field", [
    RaggedField(np.int32), RaggedField(np.float32, (17, 3)), RaggedField(columns=OBJECTS),
    MaskField(), MaskField(np.uint16, compression=None, max_resolution=64)],
    ids=["tokens", "keypoints", "objects", "mask", "mask16-raw"])
def test_tagged_arguments_round_trip(field) -> None:  # type: ignore[no-untyped-def]
    again = type(field).from_binary(field.to_binary())
    assert again.arguments() == field.arguments()
    assert parse_arguments(field.to_binary())["type"] == type(field).__name__


def test_ragged_samples_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = []
    for n in [0, 1, 5, 2, 0, 9]:
        samples.append((rng.integers(0, 1000, n).astype(np.int32),
                        {"boxes": rng.uniform(0, 100, (n, 4)).astype(np.float32),
                         "labels": rng.integers(0, 80, n)},
                        rng.uniform(0, 1, (n, 17, 3)).astype(np.float32)))
    path = write(tmp_path / "r.beton", {"tokens": RaggedField(np.int32),
                                        "objects": RaggedField(columns=OBJECTS),
                                        "keypoints": RaggedField(np.float32, (17, 3))}, samples)
    reader = Reader(path)
    for i, (tokens, objects, keypoints) in enumerate(samples):
        got_tokens, got_objects, got_keypoints = reader.read(i)
        np.testing.assert_array_equal(got_tokens, tokens)
        assert got_tokens.dtype == np.int32
        assert got_keypoints.shape == (len(tokens), 17, 3)
        np.testing.assert_array_equal(got_keypoints, keypoints)
        np.testing.assert_array_equal(got_objects["boxes"], objects["boxes"])
        np.testing.assert_array_equal(got_objects["labels"], objects["labels"])
    assert reader.verify(decode=True) == []


@pytest.mark.parametrize(("value", "message"), [
    ({"boxes": np.zeros((2, 4)), "labels": [1]}, "column 'labels' has 1 rows, 'boxes' has 2"),
    ({"boxes": np.zeros((2, 3)), "labels": [1, 2]}, r"rows of shape \(4,\)"),
    ({"boxes": np.zeros((1, 4))}, "expected columns"),
    ({"boxes": np.zeros((1, 4)), "labels": [1.5]}, "cannot be stored as int64 without loss"),
    ({"boxes": np.full((1, 4), 1e300), "labels": [1]}, r"1e\+300 is out of float32's range"),
    ({"boxes": np.array([[0, 0, 2**24 + 1, 5]]), "labels": [1]},
     r"int64 values cannot be stored as float32 without loss \(16777217 would be 16777216.0\)"),
    ("text", "expected a mapping"),
], ids=["lengths", "shape", "missing", "lossy", "float-range", "int-in-float", "type"])
def test_ragged_refuses_bad_samples_naming_them(tmp_path: Path, value, message) -> None:  # type: ignore[no-untyped-def]
    good = {"boxes": np.zeros((1, 4), np.float32), "labels": [1]}
    with pytest.raises(EncodeError, match=message) as info:
        write(tmp_path / "bad.beton", {"objects": RaggedField(columns=OBJECTS)},
              [(good,), (value,)])
    assert "sample 1" in str(info.value)
    assert "'objects'" in str(info.value)
    assert not (tmp_path / "bad.beton").exists()


@pytest.mark.parametrize(("dtype", "value", "message"), [
    (np.float64, np.array([2**53 + 1]), r"int64 values cannot be stored as float64 without loss "
                                        r"\(9007199254740993 would be 9007199254740992.0\)"),
    (np.int64, np.array([2.0**63]), "float64 values cannot be stored as int64 without loss"),
    (np.uint8, np.array([300]), "int64 values cannot be stored as uint8 without loss"),
    (np.int32, np.array([np.nan]), "float64 values cannot be stored as int32 without loss"),
], ids=["int64-in-float64", "float-past-int64", "int-past-uint8", "nan-in-int"])
def test_ragged_refuses_what_its_column_cannot_hold_on_any_platform(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype, value, message
) -> None:  # type: ignore[no-untyped-def]
    """Checked by casting back to the value's own dtype: np.longdouble, compared
    in before, is float64 on some platforms (Windows, macOS on arm64: as here
    with the patch, in this process) and let 2**53 + 1 through as float64."""
    from fastforward.fields.ragged import _cast

    with pytest.raises(EncodeError, match=message):
        write(tmp_path / "bad.beton", {"v": RaggedField(columns={"v": dtype})},
              [({"v": value},)])
    assert not (tmp_path / "bad.beton").exists()
    write(tmp_path / "good.beton", {"v": RaggedField(columns={"v": dtype})},
          [({"v": np.array([1, 2])},)])
    monkeypatch.setattr(np, "longdouble", np.float64)
    with pytest.raises(EncodeError, match=message):
        _cast("v", value, np.dtype(dtype))


@pytest.mark.parametrize(("args", "error"), [
    ({}, TypeError), ({"dtype": np.int32, "columns": OBJECTS}, TypeError),
    ({"columns": {"lengths": np.int32}}, ValueError), ({"dtype": object}, TypeError),
    ({"dtype": np.float32, "shape": (0,)}, ValueError)])
def test_ragged_field_arguments_are_checked(args, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        RaggedField(**args)


def test_longdouble_columns_are_refused_by_the_writer_and_read_where_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """np.longdouble was stored as '<f16', whose bytes mean other values on another
    platform. The writer refuses it when made; a file stored before still opens."""
    import fastforward.fields.ragged as ragged

    for field in (RaggedField(np.longdouble), RaggedField(columns={"x": np.float32,
                                                                   "y": np.longdouble})):
        with pytest.raises(TypeError, match=r"l\.beton: field 'f': column '(values|y)': "
                                            r"float128 \(np\.longdouble\) .* store float64"):
            DatasetWriter(tmp_path / "l.beton", {"f": field})
    assert not (tmp_path / "l.beton").exists()

    values = np.array([1 / 3, 2**-70], np.longdouble)
    with monkeypatch.context() as patch:
        patch.setattr(ragged, "check_portable", lambda columns: None)
        path = write(tmp_path / "old.beton", {"f": RaggedField(np.longdouble)}, [(values,)])
    got = Reader(path).read(0)[0]
    assert got.dtype == np.longdouble
    np.testing.assert_array_equal(got, values)


def test_masks_round_trip_losslessly(tmp_path: Path, masks: list[np.ndarray]) -> None:
    instance = (np.arange(90 * 70, dtype=np.uint16).reshape(90, 70) * 7) % 60000
    path = write(tmp_path / "m.beton", {"mask": MaskField(), "raw": MaskField(compression=None),
                                        "instances": MaskField(np.uint16)},
                 [(m, m, instance) for m in masks])
    reader = Reader(path)
    for i, mask in enumerate(masks):
        got, raw, inst = reader.read(i)
        np.testing.assert_array_equal(got, mask)
        np.testing.assert_array_equal(raw, mask)
        np.testing.assert_array_equal(inst, instance)
        assert inst.dtype == np.uint16
    # compressed: well under the raw ids
    sizes = reader.metadata["f0"]["size"]
    assert (sizes < reader.metadata["f1"]["size"] / 3).all()


def test_a_mask_payload_is_header_then_a_zstd_frame(tmp_path: Path,
                                                    masks: list[np.ndarray]) -> None:
    path = write(tmp_path / "m.beton", {"mask": MaskField()}, [(masks[0],)])
    (raw,) = Reader(path, {"mask": BytesField}).read(0)
    header = np.frombuffer(raw, MASK_HEADER, 1)[0]
    assert (int(header["height"]), int(header["width"])) == masks[0].shape
    ids = require_zstd().decompress(raw[MASK_HEADER.itemsize :].tobytes())
    np.testing.assert_array_equal(np.frombuffer(ids, np.uint8).reshape(masks[0].shape), masks[0])


def test_masks_accept_png_bytes_and_pil_images(tmp_path: Path, masks: list[np.ndarray]) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(masks[0]).save(buffer, format="PNG")
    path = write(tmp_path / "m.beton", {"mask": MaskField()},
                 [(buffer.getvalue(),), (Image.fromarray(masks[1]),), (masks[2][:, :, None],)])
    reader = Reader(path)
    for i in range(3):
        np.testing.assert_array_equal(reader.read(i)[0], masks[i])


def test_masks_shrink_as_their_images_do(tmp_path: Path) -> None:
    from fastforward.fields import RGBImageField

    image = np.zeros((300, 200, 3), np.uint8)
    mask = np.zeros((300, 200), np.uint8)
    mask[:, 100:] = 1
    path = write(tmp_path / "m.beton", {"image": RGBImageField(max_resolution=64),
                                        "mask": MaskField(max_resolution=64)}, [(image, mask)])
    got_image, got_mask = Reader(path).read(0)
    assert got_mask.shape == got_image.shape[:2] == (64, 42)
    assert set(np.unique(got_mask[:, :21])) == {0}
    assert set(np.unique(got_mask[:, 21:])) == {1}


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"max_resolution": 0}, ValueError, r"max_resolution must be in \[1, 65535\], got 0"),
    ({"max_resolution": -5}, ValueError, r"max_resolution must be in \[1, 65535\], got -5"),
    ({"max_resolution": 0.5}, ValueError, r"max_resolution must be in \[1, 65535\]"),
    ({"min_resolution": 0}, ValueError, r"min_resolution must be in \[1, 65535\], got 0"),
    ({"max_resolution": True}, TypeError, "max_resolution must be a number of pixels, got True"),
    ({"max_resolution": "64"}, TypeError, "max_resolution must be a number of pixels, got '64'"),
])
def test_mask_resolutions_are_checked(kwargs: dict, error: type, message: str) -> None:
    """They were taken as they came: every mask was stored 1×1."""
    with pytest.raises(error, match=message):
        MaskField(**kwargs)


def test_a_one_bit_or_palette_mask_keeps_its_ids(tmp_path: Path) -> None:
    """A mask's palette indices and 1-bit values are its ids (a PASCAL VOC mask is a
    palette PNG), unlike a many-channel image's."""
    from PIL import Image

    ids = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = Image.fromarray(ids, mode="L").convert("P")
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    palette.putdata(ids.ravel().tolist())
    bits = Image.fromarray(ids > 0).convert("1")
    path = write(tmp_path / "m.beton", {"mask": MaskField()}, [(palette,), (bits,)])
    reader = Reader(path)
    np.testing.assert_array_equal(reader.read(0)[0], ids)
    np.testing.assert_array_equal(reader.read(1)[0], (ids > 0).astype(np.uint8))


@pytest.mark.parametrize(("value", "message"), [
    (np.full((4, 4), 300), "do not fit the field's uint8"),
    (np.zeros((4, 4, 3), np.uint8), "expected a 2-D mask"),
    (np.zeros((4, 4), np.float32), "expected integer ids"),
    ("mask", "expected a 2-D array"),
])
def test_masks_refuse_bad_samples(tmp_path: Path, value, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EncodeError, match=message) as info:
        write(tmp_path / "bad.beton", {"mask": MaskField()}, [(value,)])
    assert "sample 0" in str(info.value)


def test_a_corrupt_mask_payload_is_a_decode_error(tmp_path: Path,
                                                  masks: list[np.ndarray]) -> None:
    path = write(tmp_path / "m.beton", {"mask": MaskField()}, [(masks[0],)])
    reader = Reader(path)
    ptr = int(reader.metadata["f0"]["ptr"][0])
    reader.close()
    data = bytearray(path.read_bytes())
    data[ptr + MASK_HEADER.itemsize + 4 : ptr + MASK_HEADER.itemsize + 12] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(DecodeError, match="mask"):
        Reader(path).read(0)


@pytest.mark.parametrize("size", [1 << 36, 8])  # sample 3 holds 16 bytes
def test_a_ragged_size_its_allocation_does_not_hold_is_refused(tmp_path: Path,
                                                               size: int) -> None:
    """A RaggedField's metadata size was never compared with its allocation: 2**36
    made the RaggedDecoder ask for a 128 GiB batch, and verify() said OK; a smaller
    wrong size cut the sample short silently."""
    from fastforward.types import metadata_offset

    path = tmp_path / "r.beton"
    DatasetWriter(path, {"label": IntField(), "tok": RaggedField(np.int32)}, num_workers=1,
                  progress=False, checksums=False).from_indexed_dataset(
        [(i, np.arange(i + 1, dtype=np.int32)) for i in range(6)])
    with Reader(path) as reader:
        row = reader.metadata_type
        offset = metadata_offset(2) + 3 * row.itemsize + row.fields["f1"][1] + 8
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.uint64(size).tobytes())
    with pytest.raises(FormatError, match=rf"sample 3, field 'tok': metadata says {size} "
                                          r"bytes, the allocation holds 16"):
        Reader(path)


@pytest.mark.parametrize(("shape", "message"), [
    ([1 << 32, 1 << 32], "a row of 73786976294838206464 bytes"),
    ([1 << 31, 4], "a row of 34359738368 bytes"),
])
def test_a_ragged_row_shape_past_the_limit_is_refused(shape: list[int], message: str) -> None:
    """np.prod in int64 wrapped [2**32, 2**32] round to rows of 0 bytes: the file
    opened, then reading it divided by zero."""
    with pytest.raises(ValueError, match=message):
        RaggedField(np.int32, tuple(shape))

"""MultiChannelImageField and its decoders: 1 to 16 channels of uint8 or uint16,
stored raw or as zstd, decoded whole or cropped, resized, mirrored and
normalised, against the NumPy references; masks follow them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bands import bands
from harness import apply_checked
from reference import crop_nearest, crop_resize_exact

from fastforward.errors import DecodeError, EncodeError
from fastforward.fields import (
    BytesField,
    IntField,
    MaskField,
    MultiChannelImageField,
    RGBImageField,
)
from fastforward.fields.bytes import BYTES_METADATA
from fastforward.fields.decoders import (
    CenterCropMultiChannelImageDecoder,
    CenterCropRGBImageDecoder,
    IntDecoder,
    MaskDecoder,
    RandomResizedCropMultiChannelImageDecoder,
    RandomResizedCropRGBImageDecoder,
    SimpleMultiChannelImageDecoder,
)
from fastforward.fields.planes import PLANES_HEADER, require_zstd
from fastforward.fields.tagged import parse_arguments
from fastforward.loader import Loader, OrderOption
from fastforward.pipeline import AllocationQuery, BatchContext, Operation, PipelineSpec, State
from fastforward.pipeline.geometry import GEOMETRY
from fastforward.reader import Reader
from fastforward.transforms import (
    Convert,
    NormalizeImage,
    RandomHorizontalFlip,
    RandomVerticalFlip,
)
from fastforward.types import CUSTOM_TYPE_ID, FieldDescType, HeaderType
from fastforward.writer import DatasetWriter

SIZES = [(50, 70), (41, 33), (64, 64), (37, 90), (80, 45), (29, 29)]


def write(path: Path, fields: dict, samples: list) -> Path:
    DatasetWriter(path, fields, num_workers=1, progress=False).from_indexed_dataset(samples)
    return path


def tiles(photos: list[np.ndarray], channels: int, dtype: type,
          sizes: list[tuple[int, int]] = SIZES) -> list[np.ndarray]:
    return [bands(photos, channels, dtype, h, w, seed=k) for k, (h, w) in enumerate(sizes)]


class GeometryProbe(Operation):
    """Hands each batch's geometry rows of the output it follows on, as ``(B, 9)``
    int64 in ``GEOMETRY``'s order (for tests: the window, size and flip each image got)."""

    def __init__(self, follows: str) -> None:
        super().__init__()
        self.follows = follows

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        shape, dtype = (len(GEOMETRY.names),), np.dtype("<i8")
        return State(jit_mode=True, shape=shape, dtype=dtype), AllocationQuery(shape, dtype)

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        rows = context.geometry[self.follows]
        out = destination[: len(rows)]
        for k, name in enumerate(GEOMETRY.names):
            out[:, k] = rows[name]
        return out


def windows_of(geometry: np.ndarray) -> list[tuple[tuple[int, int, int, int], bool]]:
    names = list(GEOMETRY.names)
    return [((int(g[names.index("y")]), int(g[names.index("x")]),
              int(g[names.index("crop_height")]), int(g[names.index("crop_width")])),
             bool(g[names.index("flip")])) for g in geometry]


# -- the field ------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "zstd"], ids=["raw", "zstd"])
@pytest.mark.parametrize(("channels", "dtype"), [(1, np.uint16), (4, np.uint16), (4, np.uint8),
                                                 (16, np.uint8), (11, np.uint16)])
def test_images_round_trip_exactly(tmp_path: Path, photos: list[np.ndarray], channels: int,
                                   dtype: type, compression: str | None) -> None:
    images = tiles(photos, channels, dtype)
    path = write(tmp_path / "m.beton", {"image": MultiChannelImageField(
        channels, dtype, compression=compression)}, [(i,) for i in images])
    reader = Reader(path)  # recognised without custom_fields
    assert isinstance(reader.handlers["image"], MultiChannelImageField)
    for k, image in enumerate(images):
        (got,) = reader.read(k)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, image)


def test_one_channel_images_may_be_two_dimensional(tmp_path: Path,
                                                   photos: list[np.ndarray]) -> None:
    slices = [t[:, :, 0] for t in tiles(photos, 1, np.uint16)]  # 16-bit medical slices
    path = write(tmp_path / "s.beton", {"slice": MultiChannelImageField(1, np.uint16)},
                 [(s,) for s in slices])
    np.testing.assert_array_equal(Reader(path).read(2)[0], slices[2][:, :, None])


def test_sixteen_bit_png_files_are_read(tmp_path: Path, photos: list[np.ndarray]) -> None:
    import io

    from PIL import Image

    image = tiles(photos, 1, np.uint16)[0][:, :, 0]
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    path = write(tmp_path / "p.beton", {"slice": MultiChannelImageField(1, np.uint16)},
                 [(png.getvalue(),)])
    np.testing.assert_array_equal(Reader(path).read(0)[0][:, :, 0], image)


def test_a_file_pillow_cannot_read_is_named_without_pillows_buffer(tmp_path: Path) -> None:
    """Pillow's message named the in-memory file (<_io.BytesIO object at 0x...>)."""
    pytest.importorskip("PIL")
    with pytest.raises(EncodeError, match=r"p\.beton: sample 0, field 'slice': cannot "
                                          r"identify image file \(9 bytes: not an image, or "
                                          r"in a format Pillow cannot read\)$") as caught:
        write(tmp_path / "p.beton", {"slice": MultiChannelImageField(1)}, [(b"not a png",)])
    assert "BytesIO" not in str(caught.value)


def png_of_16_bits(values: np.ndarray) -> bytes:
    """A PNG of 16-bit values (H×W×C, C of 1-4), which Pillow cannot write past gray."""
    import struct
    import zlib

    height, width = values.shape[:2]
    channels = values.shape[2] if values.ndim == 3 else 1
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = values.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)  # filter 0 on each row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_sixteen_bit_colour_png_files_are_refused(tmp_path: Path, photos: list[np.ndarray],
                                                  channels: int) -> None:
    """Pillow reads them as 8 bits, each value's high byte: stored as such, silently."""
    pytest.importorskip("PIL")
    values = tiles(photos, channels, np.uint16)[0]
    with pytest.raises(EncodeError, match=r"sample 0, field 'image': image file of 16-bit "
                                          r"values \((RGBA?|LA);16B\), which Pillow reads as "
                                          r"8-bit RGBA?"):
        write(tmp_path / "p.beton", {"image": MultiChannelImageField(channels, np.uint16)},
              [(png_of_16_bits(values),)])
    gray = png_of_16_bits(values[:, :, 0])  # Pillow keeps a gray one's 16 bits
    path = write(tmp_path / "g.beton", {"image": MultiChannelImageField(1, np.uint16)},
                 [(gray,)])
    np.testing.assert_array_equal(Reader(path).read(0)[0][:, :, 0], values[:, :, 0])
    rgb = png_of_16_bits(tiles(photos, 3, np.uint16)[0])  # nor does RGBImageField take it
    with pytest.raises(DecodeError, match=r"sample 0, field 'image': image file of 16-bit "
                                          r"values \(RGB;16B\).*RGBImageField stores 8-bit RGB"):
        write(tmp_path / "r.beton", {"image": RGBImageField(write_mode="raw")}, [(rgb,)])


def test_an_opened_sixteen_bit_colour_png_is_refused_as_its_bytes_are(
        tmp_path: Path, photos: list[np.ndarray]) -> None:
    """The same PNG handed over opened (Image.open, not loaded) was stored as its high
    bytes, silently: 0x12FF as 18 in a uint16 field."""
    pytest.importorskip("PIL")
    values = tiles(photos, 3, np.uint16)[0]
    (tmp_path / "rgb.png").write_bytes(png_of_16_bits(values))
    (tmp_path / "gray.png").write_bytes(png_of_16_bits(values[:, :, 0]))
    with pytest.raises(EncodeError, match=r"sample 0, field 'image': a PIL image of 16-bit "
                                          r"values \(RGB;16B\), which Pillow reads as 8-bit "
                                          r"RGB, keeping the high byte: store its values as an "
                                          r"array"):
        write(tmp_path / "p.beton", {"image": MultiChannelImageField(3, np.uint16)},
              OpenedImages([tmp_path / "rgb.png"]))
    path = write(tmp_path / "g.beton", {"image": MultiChannelImageField(1, np.uint16)},
                 OpenedImages([tmp_path / "gray.png"]))  # 16 bits kept: I;16B
    np.testing.assert_array_equal(Reader(path).read(0)[0][:, :, 0], values[:, :, 0])


class OpenedImages:
    """A dataset of image files, each sample ``(Image.open(file),)`` as read in the
    writer's worker, its pixels not yet read (with *closed*, its file closed too)."""

    def __init__(self, files: list[Path], closed: bool = False) -> None:
        self.files, self.closed = files, closed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any]:
        from PIL import Image

        if not self.closed:
            return (Image.open(self.files[i]),)
        with Image.open(self.files[i]) as image:
            return (image,)  # its file closed on the way out


@pytest.mark.parametrize("field", ["mask", "multichannel"])
def test_a_pil_image_whose_file_was_closed_is_refused_saying_so(tmp_path: Path,
                                                                field: str) -> None:
    """MaskField and MultiChannelImageField raised Pillow's bare AssertionError (an
    empty message), where RGBImageField says what happened and what to do."""
    Image = pytest.importorskip("PIL.Image")
    png = tmp_path / "m.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(png)
    handler = MaskField() if field == "mask" else MultiChannelImageField(1)
    with pytest.raises(EncodeError, match=r"sample 0, field 'x': a PIL image whose file was "
                                          r"closed before its pixels were read .* call "
                                          r"image.load\(\) before the file closes"):
        write(tmp_path / "c.beton", {"x": handler}, OpenedImages([png], closed=True))


def test_a_bmp_of_16_bits_a_pixel_is_read(tmp_path: Path) -> None:
    """RGB565 ('BGR;16': 16 bits a pixel, not a value) loses nothing in Pillow: it was
    refused as a 16-bit image."""
    import io

    Image = pytest.importorskip("PIL.Image")
    import struct

    width, height = 4, 2
    pixels = [0xF800, 0x07E0, 0x001F, 0xFFFF] * 2  # red, green, blue, white; 5-6-5
    rows = b"".join(struct.pack("<4H", *pixels[r * 4:(r + 1) * 4]) for r in range(height))
    masks = struct.pack("<3I", 0xF800, 0x07E0, 0x001F)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 16, 3, len(rows), 2835, 2835,
                       0, 0) + masks
    offset = 14 + len(info)
    bmp = b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + rows
    expected = np.asarray(Image.open(io.BytesIO(bmp)).convert("RGB"))
    assert expected[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]
    path = write(tmp_path / "b.beton", {"image": MultiChannelImageField(3, np.uint8)},
                 [(bmp,)])
    np.testing.assert_array_equal(Reader(path).read(0)[0], expected)
    path = write(tmp_path / "r.beton", {"image": RGBImageField(write_mode="raw")}, [(bmp,)])
    np.testing.assert_array_equal(Reader(path).read(0)[0], expected)


def test_max_resolution_shrinks_by_area(tmp_path: Path, photos: list[np.ndarray]) -> None:
    image = bands(photos, 5, np.uint16, 120, 90, seed=1)
    path = write(tmp_path / "r.beton", {"image": MultiChannelImageField(
        5, np.uint16, compression="zstd", max_resolution=40)}, [(image,)])
    np.testing.assert_array_equal(Reader(path).read(0)[0],
                                  crop_resize_exact(image, 0, 0, 120, 90, 40, 30))


def test_the_field_is_tagged_and_reads_as_bytes(tmp_path: Path, photos: list[np.ndarray]) -> None:
    images = tiles(photos, 4, np.uint16)[:2]
    field = MultiChannelImageField(4, np.uint16, compression="zstd")
    path = write(tmp_path / "t.beton", {"image": field, "label": IntField()},
                 [(i, k) for k, i in enumerate(images)])
    header = np.fromfile(path, HeaderType, 1)[0]
    descriptors = np.fromfile(path, FieldDescType, int(header["num_fields"]),
                              offset=HeaderType.itemsize)
    assert descriptors["type_id"].tolist() == [CUSTOM_TYPE_ID, 1]
    assert parse_arguments(descriptors[0]["arguments"])["type"] == "MultiChannelImageField"
    reader = Reader(path, {"image": BytesField})  # what FFCV 1.0.2 does
    assert reader.metadata.dtype["f0"] == BYTES_METADATA
    raw = reader.read(1)[0]
    height, width = np.frombuffer(raw[: PLANES_HEADER.itemsize].tobytes(), "<u4")
    values = require_zstd().decompress(raw[PLANES_HEADER.itemsize :].tobytes())
    np.testing.assert_array_equal(
        np.frombuffer(values, "<u2").reshape(height, width, 4), images[1])


@pytest.mark.parametrize("field", [
    MultiChannelImageField(4), MultiChannelImageField(16, np.uint16, "zstd", 9, 512),
    MultiChannelImageField(1, np.uint8, None, 3, None, 100)], ids=["4", "16-zstd", "1-min"])
def test_arguments_round_trip(field: MultiChannelImageField) -> None:
    again = MultiChannelImageField.from_binary(field.to_binary())
    assert again.arguments() == field.arguments()


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"channels": 0}, ValueError, r"channels must be in \[1, 16\]"),
    ({"channels": 17}, ValueError, r"channels must be in \[1, 16\]"),
    ({"channels": 3, "dtype": np.int16}, TypeError, "uint8 or uint16"),
    ({"channels": 3, "dtype": np.float32}, TypeError, "uint8 or uint16"),
    ({"channels": 3, "compression": "png"}, ValueError, "compression must be one of"),
    ({"channels": 1, "max_resolution": True}, TypeError, "max_resolution must be a number"),
    ({"channels": 1, "min_resolution": 0}, ValueError, r"min_resolution must be in \[1, "),
])
def test_bad_arguments_are_refused(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        MultiChannelImageField(**kwargs)


@pytest.mark.parametrize(("value", "message"), [
    (np.zeros((8, 8, 3), np.uint8), r"expected an H×W×4 image, got shape \(8, 8, 3\)"),
    (np.zeros((8, 8, 4), np.float32), "expected integer values"),
    (np.full((8, 8, 4), 300, np.int32), "values 300..300 do not fit the field's uint8"),
    (np.zeros((0, 8, 4), np.uint8), "empty image"),
    ("not an image", "expected an H×W×C array"),
    (np.zeros((8, 8, 4), bool), "expected integer values, got bool"),
])
def test_bad_values_name_the_sample(tmp_path: Path, value: Any, message: str) -> None:
    with pytest.raises(EncodeError, match=message) as info:
        write(tmp_path / "bad.beton", {"image": MultiChannelImageField(4)}, [(value,)])
    assert "sample 0" in str(info.value)


def test_one_bit_and_palette_images_are_stored_as_their_pixels(tmp_path: Path) -> None:
    """As RGBImageField stores them: a 1-bit image's white is 255 and a palette
    image's pixels are its colours. Their arrays' values (True, the indices) were
    stored, from PIL images and from the files' bytes alike."""
    import io

    from PIL import Image

    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    colours = np.array([[10, 20, 30], [200, 100, 0], [255, 255, 255]], np.uint8)
    gray = np.array([[10, 10, 10], [200, 200, 200], [255, 255, 255]], np.uint8)

    def palette_image(table: np.ndarray) -> Image.Image:
        image = Image.new("P", (3, 2))
        image.putpalette(table.ravel().tolist() + [0] * (768 - table.size))
        image.putdata(indices.ravel().tolist())
        return image

    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    bits = Image.fromarray(indices > 0).convert("1")
    rgb, one = palette_image(colours), palette_image(gray)
    # a colour palette whose pixels are gray, and one with transparency: still RGB for
    # three channels (they were taken as one channel, or four)
    clear = palette_image(colours)
    clear.info["transparency"] = 0
    path = write(tmp_path / "modes.beton", {"rgb": MultiChannelImageField(3),
                                            "one": MultiChannelImageField(1),
                                            "four": MultiChannelImageField(4)},
                 [(rgb, one, rgb), (png(rgb), png(one), png(clear)), (rgb, bits, clear),
                  (rgb, png(bits), png(rgb)), (palette_image(gray), one, rgb),
                  (png(clear), one, rgb)])
    reader = Reader(path)
    for i in range(6):
        got_rgb, got_one, got_four = reader.read(i)
        np.testing.assert_array_equal(got_rgb, (gray if i == 4 else colours)[indices])
        expected = (indices > 0)[:, :, None] * 255 if i in (2, 3) else gray[indices][:, :, :1]
        np.testing.assert_array_equal(got_one, expected)
        np.testing.assert_array_equal(got_four[:, :, :3], colours[indices])
        alpha = np.where(indices == 0, 0, 255) if i in (1, 2) else np.full((2, 3), 255)
        np.testing.assert_array_equal(got_four[:, :, 3], alpha)
    with pytest.raises(EncodeError, match=r"a palette image of colours for a 1-channel "
                                          r"field: convert it"):
        write(tmp_path / "colour.beton", {"one": MultiChannelImageField(1)}, [(rgb,)])
    la = Image.fromarray(np.dstack([gray[indices][:, :, 0], np.full((2, 3), 128, np.uint8)]),
                         "LA").convert("La")
    path = write(tmp_path / "la.beton", {"two": MultiChannelImageField(2)}, [(la,)])
    np.testing.assert_allclose(Reader(path).read(0)[0][:, :, 0], gray[indices][:, :, 0],
                               atol=2)  # unpremultiplied (its values were halved)


# -- the decoders ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tile_file(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    """Six 4-band uint16 tiles of different sizes (zstd), and their index."""
    images = tiles(photos, 4, np.uint16)
    return write(tmp_path_factory.mktemp("multichannel") / "tiles.beton",
                 {"image": MultiChannelImageField(4, np.uint16, compression="zstd"),
                  "index": IntField()}, [(i, k) for k, i in enumerate(images)])


@pytest.mark.parametrize("compression", [None, "zstd"], ids=["raw", "zstd"])
def test_simple_decoder_gives_the_stored_images(tmp_path: Path, photos: list[np.ndarray],
                                                compression: str | None) -> None:
    images = tiles(photos, 6, np.uint16, [(30, 40)] * 5)
    path = write(tmp_path / "s.beton", {"image": MultiChannelImageField(
        6, np.uint16, compression=compression)}, [(i,) for i in images])
    assert MultiChannelImageField(6).get_decoder_class() is SimpleMultiChannelImageDecoder
    with Loader(path, 2, order=OrderOption.SEQUENTIAL, drop_last=False,
                pipelines={"image": [SimpleMultiChannelImageDecoder()]}) as loader:
        batches = [b[0] for b in loader]
    got = np.concatenate(batches)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, np.stack(images))


def test_simple_decoder_refuses_another_size(tile_file: Path) -> None:
    loader = Loader(tile_file, 3, pipelines={"image": [SimpleMultiChannelImageDecoder()],
                                             "index": None})
    with loader, pytest.raises(DecodeError, match=r"sample 1, field 'image': image is 41×33, "
                                                  r"the field's first is 50×70") as info:
        list(loader)
    assert str(tile_file) in str(info.value)


def with_geometry(pipelines: dict) -> dict:
    """*pipelines* plus the sample indices and the geometry the image got."""
    return {**pipelines, "index": [IntDecoder()],
            "geometry": PipelineSpec("index", IntDecoder(), [GeometryProbe("image")])}


@pytest.mark.parametrize("workers", [(1, "thread"), (3, "thread"), (2, "process")],
                         ids=["1-thread", "3-threads", "2-processes"])
@pytest.mark.parametrize("normalise", [False, True], ids=["uint16", "normalised"])
def test_crop_decoder_matches_the_reference(tile_file: Path, photos: list[np.ndarray],
                                            normalise: bool, workers: tuple[int, str]) -> None:
    images = tiles(photos, 4, np.uint16)
    mean, std = np.array([1e4, 2e4, 3e4, 4e4]), np.array([9e3, 8e3, 7e3, 6e3])
    after = [NormalizeImage(mean, std, np.float32)] if normalise else []
    pipelines = with_geometry({"image": [RandomResizedCropMultiChannelImageDecoder((32, 48)),
                                         RandomHorizontalFlip(), *after]})
    with Loader(tile_file, 4, order=OrderOption.RANDOM, seed=3, num_workers=workers[0],
                worker_type=workers[1], drop_last=False, pipelines=pipelines) as loader:
        batches = [tuple(np.array(part) for part in batch) for batch in loader]
    flips = 0
    for out, index, geometry in batches:
        index = index.reshape(-1)
        assert out.dtype == (np.float32 if normalise else np.uint16)
        for k, (crop, flip) in enumerate(windows_of(geometry)):
            flips += flip
            want = crop_resize_exact(images[int(index[k])], *crop, 32, 48, flip)
            if normalise:
                scale, bias = (1 / std).astype(np.float32), (-mean / std).astype(np.float32)
                want = want.astype(np.float32) * scale + bias
            np.testing.assert_array_equal(out[k], want)
    assert 0 < flips < len(images)  # some mirrored, some not


@pytest.mark.parametrize("decoders", [
    (lambda: RandomResizedCropRGBImageDecoder((40, 30)),
     lambda: RandomResizedCropMultiChannelImageDecoder((40, 30))),
    (lambda: CenterCropRGBImageDecoder((24, 24), 0.875),
     lambda: CenterCropMultiChannelImageDecoder((24, 24), 0.875))], ids=["random", "center"])
def test_three_uint8_channels_decode_as_rgb(tmp_path: Path, photos: list[np.ndarray],
                                            decoders: tuple) -> None:
    # the same crops, flips and pixels as the RGB decoders, from the same seed
    images = tiles(photos, 3, np.uint8)
    rgb = write(tmp_path / "rgb.beton", {"image": RGBImageField()}, [(i,) for i in images])
    planes = write(tmp_path / "planes.beton", {"image": MultiChannelImageField(3)},
                   [(i,) for i in images])
    mean, std = np.array([120.0, 110.0, 100.0]), np.array([60.0, 50.0, 40.0])
    outs = []
    for path, make in zip((rgb, planes), decoders, strict=True):
        pipeline = [make(), RandomHorizontalFlip(), NormalizeImage(mean, std, np.float16)]
        with Loader(path, 4, order=OrderOption.RANDOM, seed=8,
                    pipelines={"image": pipeline}) as loader:
            outs.append(np.concatenate([b[0] for e in range(2) for b in loader]))
    assert outs[0].dtype == outs[1].dtype == np.float16
    np.testing.assert_array_equal(outs[0], outs[1])


def test_a_normalisation_of_other_channels_is_not_fused(tile_file: Path) -> None:
    # three means for four channels: NormalizeImage itself says what is wrong
    pipelines = {"image": [CenterCropMultiChannelImageDecoder((16, 16), 1.0),
                           NormalizeImage([1, 2, 3], [1, 1, 1], np.float32)], "index": None}
    with pytest.raises(ValueError, match="mean and std have 3 channels"):
        Loader(tile_file, 2, pipelines=pipelines)


def test_conversion_is_fused(tile_file: Path, photos: list[np.ndarray]) -> None:
    images = tiles(photos, 4, np.uint16)
    pipelines = {"image": [CenterCropMultiChannelImageDecoder((20, 20), 1.0),
                           Convert(np.float32)], "index": None}
    with Loader(tile_file, 6, order=OrderOption.SEQUENTIAL, pipelines=pipelines) as loader:
        (out,) = next(iter(loader))
    assert out.dtype == np.float32
    for k, image in enumerate(images):
        side = min(image.shape[:2])
        y, x = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        np.testing.assert_array_equal(
            out[k], crop_resize_exact(image, y, x, side, side, 20, 20).astype(np.float32))


def test_masks_follow_a_many_channel_image(tmp_path: Path, photos: list[np.ndarray]) -> None:
    images = tiles(photos, 4, np.uint16)
    masks = [(i[:, :, 0] // 8192).astype(np.uint8) for i in images]  # land cover classes
    path = write(tmp_path / "seg.beton", {
        "image": MultiChannelImageField(4, np.uint16, compression="zstd"), "mask": MaskField(),
        "index": IntField()}, [(i, m, k) for k, (i, m) in enumerate(zip(images, masks,
                                                                        strict=True))])
    pipelines = with_geometry({"image": [RandomResizedCropMultiChannelImageDecoder((24, 36)),
                                         RandomHorizontalFlip()],
                               "mask": [MaskDecoder(follows="image")]})
    seen = 0
    with Loader(path, 3, order=OrderOption.RANDOM, seed=1, pipelines=pipelines) as loader:
        for _, mask, index, geometry in loader:
            for k, (crop, flip) in enumerate(windows_of(geometry)):
                seen += 1
                np.testing.assert_array_equal(
                    mask[k], crop_nearest(masks[int(index[k, 0])], *crop, 24, 36, flip))
    assert seen == len(images)


# -- the transforms on many channels and 16 bits --------------------------------------


def batch_of_tiles(photos: list[np.ndarray], channels: int, dtype: type) -> np.ndarray:
    return np.stack([bands(photos, channels, dtype, 28, 34, seed=k) for k in range(6)])


def flip_context() -> BatchContext:
    return BatchContext(indices=np.arange(6) + 40, epoch=1, seed=5, stream=2)


@pytest.mark.parametrize(("channels", "dtype"), [(16, np.uint16), (5, np.uint8), (4, np.uint16)])
@pytest.mark.parametrize("flip", [RandomHorizontalFlip, RandomVerticalFlip])
def test_numpy_flips_of_many_channels(photos: list[np.ndarray], channels: int, dtype: type,
                                      flip: type) -> None:
    batch = batch_of_tiles(photos, channels, dtype)
    op = flip(0.5)
    out, _ = apply_checked(op, batch, flip_context())
    decisions = op.decisions(flip_context())
    assert 0 < decisions.sum() < len(batch)
    axis = 1 if flip is RandomHorizontalFlip else 0
    for k in range(len(batch)):
        want = np.flip(batch[k], axis) if decisions[k] else batch[k]
        np.testing.assert_array_equal(out[k], want)


@pytest.mark.parametrize("layout", ["hwc", "chw"])
@pytest.mark.parametrize(("channels", "dtype"), [(4, np.uint16), (7, np.uint8), (16, np.uint16)])
@pytest.mark.parametrize("flip", [RandomHorizontalFlip, RandomVerticalFlip])
def test_torch_flips_of_many_channels(photos: list[np.ndarray], channels: int, dtype: type,
                                      flip: type, layout: str) -> None:
    # torch has no flip for uint16: the same bits are moved as int16
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    batch = batch_of_tiles(photos, channels, dtype)
    tensor = torch.from_numpy(batch)
    if layout == "chw":
        tensor = tensor.permute(0, 3, 1, 2)
    out, _ = apply_checked(flip(0.5), tensor, flip_context())
    if layout == "chw":
        out = out.permute(0, 2, 3, 1)
    want, _ = apply_checked(flip(0.5), batch, flip_context())
    np.testing.assert_array_equal(out.numpy(), want)


def test_torch_flips_refuse_shapes_whose_channels_are_unclear() -> None:
    pytest.importorskip("torch", reason="torch is an optional extra")
    import torch

    for shape in ((8, 9, 5), (20, 30, 17)):  # both ends could be C; neither can
        with pytest.raises(ValueError, match="C up to 16"):
            RandomHorizontalFlip().declare_state_and_memory(
                State(jit_mode=False, shape=shape, dtype=torch.uint8))


@pytest.mark.parametrize("out_type", [np.float16, np.float32])
@pytest.mark.parametrize(("channels", "dtype"), [(5, np.uint16), (7, np.uint8), (1, np.uint16)])
def test_numpy_normalisation_of_many_channels(photos: list[np.ndarray], channels: int,
                                              dtype: type, out_type: type) -> None:
    batch = batch_of_tiles(photos, channels, dtype)
    top = np.iinfo(dtype).max
    mean, std = np.linspace(0.2, 0.7, channels) * top, np.linspace(0.1, 0.3, channels) * top
    out, _ = apply_checked(NormalizeImage(mean, std, out_type), batch, flip_context())
    # correctly rounded: computed in float64, rounded once
    np.testing.assert_array_equal(out, ((batch - mean) / std).astype(out_type))


@pytest.mark.parametrize("layout", ["hwc", "chw"])
@pytest.mark.parametrize(("channels", "dtype"), [(4, np.uint16), (9, np.uint8)])
def test_torch_normalisation_of_many_channels(photos: list[np.ndarray], channels: int,
                                              dtype: type, layout: str) -> None:
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    batch = batch_of_tiles(photos, channels, dtype)
    top = np.iinfo(dtype).max
    mean, std = np.linspace(0.2, 0.7, channels) * top, np.linspace(0.1, 0.3, channels) * top
    tensor = torch.from_numpy(batch)
    if layout == "chw":
        tensor = tensor.permute(0, 3, 1, 2)
    out, _ = apply_checked(NormalizeImage(mean, std, np.float32), tensor, flip_context())
    if layout == "chw":
        out = out.permute(0, 2, 3, 1)
    # torch computes in float32: (x - mean) / std, each step rounded
    want = (batch.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)
    np.testing.assert_array_equal(out.numpy(), want)


def test_normalisation_refuses_other_integer_types() -> None:
    with pytest.raises(TypeError, match="needs uint8 or uint16 images, but it got int16"):
        NormalizeImage([0, 0], [1, 1], np.float32).declare_state_and_memory(
            State(shape=(4, 4, 2), dtype=np.dtype(np.int16)))


def _overwrite_first_header(path: Path, field: int, sample: int, height: int,
                            width: int) -> None:
    """Write *height* × *width* into the payload header of *sample*'s *field*."""
    with Reader(path) as reader:
        ptr = int(reader.metadata[f"f{field}"]["ptr"][sample])
    with open(path, "r+b") as f:
        f.seek(ptr)
        f.write(np.array([(height, width)], PLANES_HEADER).tobytes())


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_a_first_header_its_payload_does_not_back_sizes_no_batch(
        tmp_path: Path, compression: str | None) -> None:
    """SimpleMultiChannelImageDecoder sized its batch from sample 0's header alone:
    60000×60000 in a 512-byte payload asked for 322 GiB (a MemoryError naming
    nothing)."""
    path = write(tmp_path / "m.beton",
                 {"img": MultiChannelImageField(16, np.uint16, compression=compression)},
                 [(np.full((4, 4, 16), i, np.uint16),) for i in range(3)])
    _overwrite_first_header(path, 0, 0, 60000, 60000)
    with pytest.raises(DecodeError, match=r"sample 0, field 'img': stored 60000×60000, which "
                                          r"its payload of 512 bytes"):
        Loader(path, 3, pipelines={"img": [SimpleMultiChannelImageDecoder()]})


def test_a_stored_side_past_the_writers_limit_is_refused(tmp_path: Path) -> None:
    """2**30 × 2**29 × 16 × 2 bytes wrapped round to 0 in the payload check, which then
    passed, and the crop decoder asked for 63 GB of scratch."""
    path = write(tmp_path / "m.beton", {"img": MultiChannelImageField(16, np.uint16)},
                 [(np.full((4, 4, 16), i, np.uint16),) for i in range(3)])
    _overwrite_first_header(path, 0, 1, 1 << 30, 1 << 29)
    with Loader(path, 3, drop_last=False, pipelines={
            "img": [CenterCropMultiChannelImageDecoder((2, 2), 1.0)]}) as loader, \
            pytest.raises(DecodeError, match=r"sample 1, field 'img': stored "
                                             r"1073741824×536870912: a side past 65535"):
        list(loader)


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_a_raw_payload_longer_than_its_header_says_is_refused_by_every_decoder(
        tmp_path: Path, worker_type: str) -> None:
    """A raw (uncompressed) payload whose header says 24×23 but holds 24×24 pixels:
    Reader.read and the simple decoder refused it, the crop decoders cut 24×23 out
    of it and returned its rows sheared."""
    images = [np.arange(24 * 24 * 4, dtype=np.uint16).reshape(24, 24, 4) + i for i in range(4)]
    path = write(tmp_path / "m.beton",
                 {"img": MultiChannelImageField(4, np.uint16, compression=None)},
                 [(image,) for image in images])
    _overwrite_first_header(path, 0, 0, 24, 23)
    with pytest.raises(DecodeError, match=r"sample 0, field 'img': .*needs 4416 bytes of "
                                          r"values, the payload holds 4608"):
        Reader(path).read(0)
    for decoder in (SimpleMultiChannelImageDecoder(),  # (sized from sample 0: at Loader())
                    CenterCropMultiChannelImageDecoder((24, 23), 1.0),
                    RandomResizedCropMultiChannelImageDecoder((16, 16))):
        with pytest.raises(DecodeError, match=r"sample 0, field 'img': .*(24×23, which its "
                           r"payload of 4608 bytes|a 24×23 image needs 4416 bytes of values, "
                           r"the payload holds 4608)"), \
                Loader(path, 4, num_workers=2, worker_type=worker_type,
                       pipelines={"img": [decoder]}) as loader:
            list(loader)

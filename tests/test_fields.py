"""Fields: image conversion, resizing and write modes; arguments round trip."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastforward.errors import EncodeError
from fastforward.fields import NDArrayField, RGBImageField
from fastforward.fields.rgb_image import target_size
from fastforward.reader import Reader
from fastforward.writer import DatasetWriter


def store(tmp_path: Path, field: RGBImageField, images: Any) -> Reader:
    path = tmp_path / "img.beton"
    DatasetWriter(path, {"image": field}, num_workers=1, progress=False) \
        .from_indexed_dataset(images)
    return Reader(path)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def test_raw_is_exact(tmp_path: Path, images: list[np.ndarray]) -> None:
    reader = store(tmp_path, RGBImageField(), images)
    for i, image in enumerate(images):
        np.testing.assert_array_equal(reader.read(i)[0], image)
    assert set(reader.metadata["f0"]["mode"].tolist()) == {1}


def test_the_writers_jpegs_have_a_restart_marker_per_mcu_row(tmp_path: Path,
                                                            images: list[np.ndarray]) -> None:
    """Where libjpeg-turbo is linked in, so that the crop decoders can start at the
    marker above a crop; without it (simplejpeg encodes) there are none."""
    from fastforward.benchmark import stored_jpegs
    from fastforward.fields import rgb_image

    reader = store(tmp_path, RGBImageField(write_mode="jpg", jpeg_quality=90), images)
    for data, image in zip(stored_jpegs(reader, "image"), images, strict=True):
        if rgb_image._region is None:
            assert b"\xff\xdd" not in data
            continue
        dri = data.index(b"\xff\xdd")
        assert int.from_bytes(data[dri + 4 : dri + 6], "big") == -(-image.shape[1] // 16)
        markers = -(-image.shape[0] // 16) - 1  # RST0 ... RST7, RST0 ...
        assert data.count(b"\xff\xd0") == (markers + 7) // 8
    # FFCV's helper encodes as the writer does
    data = rgb_image.encode_jpeg(images[0], 90).tobytes()
    assert (b"\xff\xdd" in data) == (rgb_image._region is not None)
    # and without markers when asked: the same pixels
    (tmp_path / "plain").mkdir()
    plain = store(tmp_path / "plain", RGBImageField(write_mode="jpg", restart_markers=False),
                  images)
    for k, data in enumerate(stored_jpegs(plain, "image")):
        assert b"\xff\xdd" not in data
        np.testing.assert_array_equal(plain.read(k)[0], reader.read(k)[0])


def test_jpeg_quality(tmp_path: Path, images: list[np.ndarray]) -> None:
    reader = store(tmp_path, RGBImageField(write_mode="jpg", jpeg_quality=90), images)
    for i, image in enumerate(images):
        assert psnr(reader.read(i)[0], image) > 28
    assert set(reader.metadata["f0"]["mode"].tolist()) == {0}


def test_jpeg_is_420_subsampled(tmp_path: Path, images: list[np.ndarray]) -> None:
    import simplejpeg

    reader = store(tmp_path, RGBImageField(write_mode="jpg"), images[:3])
    data = reader.payload(int(reader.metadata[0]["f0"]["data_ptr"]))
    assert simplejpeg.decode_jpeg_header(data)[3] == "420"


@pytest.mark.parametrize(
    ("shape", "limits", "expected"),
    [((375, 500), (256, None), (192, 256)), ((500, 375), (256, None), (256, 192)),
     ((100, 80), (256, None), (100, 80)), ((3, 1000), (100, None), (1, 100)),
     ((375, 500), (None, 200), (200, 266)), ((100, 80), (None, 200), (100, 80))],
)
def test_target_size(shape: tuple[int, int], limits: tuple, expected: tuple[int, int]) -> None:
    assert target_size(*shape, *limits) == expected


def test_max_resolution_shrinks_by_area(tmp_path: Path, images: list[np.ndarray]) -> None:
    reader = store(tmp_path, RGBImageField(max_resolution=40), images)
    for i, image in enumerate(images):
        stored = reader.read(i)[0]
        assert stored.shape[:2] == target_size(*image.shape[:2], 40, None)
        # area averaging keeps the mean colour
        assert np.abs(stored.mean(axis=(0, 1)) - image.mean(axis=(0, 1))).max() < 2


def test_min_resolution(tmp_path: Path, images: list[np.ndarray]) -> None:
    reader = store(tmp_path, RGBImageField(min_resolution=30), images)
    for i, image in enumerate(images):
        assert reader.read(i)[0].shape[:2] == target_size(*image.shape[:2], None, 30)


def test_max_and_min_resolution_exclusive() -> None:
    with pytest.raises(ValueError, match="not both"):
        RGBImageField(max_resolution=10, min_resolution=10)


@pytest.mark.parametrize("kwargs", [{"write_mode": "png"}, {"jpeg_quality": 101},
                                    {"compress_probability": 2.0}, {"max_resolution": 0}])
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each message is checked by its own name
        RGBImageField(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"),
                         [({"jpeg_quality": 90.7}, "jpeg_quality must be a whole number"),
                          ({"max_resolution": True}, "max_resolution must be a number of pixels"),
                          ({"min_resolution": "256"}, "min_resolution must be a number of pixels")])
def test_number_arguments(kwargs: dict, message: str) -> None:
    """A fractional quality, a bool or a string is refused (``int()`` cut 90.7 to 90
    silently); a whole float quality is taken, and a fractional resolution, as FFCV's
    resizer takes it."""
    with pytest.raises(TypeError, match=rf"^{message}, got "):
        RGBImageField(**kwargs)
    field = RGBImageField(max_resolution=1.14 * 224, jpeg_quality=90.0)
    assert (field.max_resolution, field.jpeg_quality) == (1.14 * 224, 90)
    assert type(field.jpeg_quality) is int


def test_smart_threshold(tmp_path: Path) -> None:
    small = np.full((10, 10, 3), 9, np.uint8)  # 300 bytes
    large = np.full((40, 40, 3), 9, np.uint8)  # 4800 bytes
    reader = store(tmp_path, RGBImageField(write_mode="smart", smart_threshold=1000),
                   [small, large])
    assert reader.metadata["f0"]["mode"].tolist() == [1, 0]
    reader = store(tmp_path, RGBImageField(write_mode="smart"), [small, large])
    assert reader.metadata["f0"]["mode"].tolist() == [1, 1]  # no threshold: all raw


@pytest.mark.parametrize("layout", ["HxW", "HxWx1"])
def test_grayscale_becomes_rgb(tmp_path: Path, images: list[np.ndarray], layout: str) -> None:
    gray = images[0][:, :, 1].copy()
    value = gray if layout == "HxW" else gray[:, :, None]
    stored = store(tmp_path, RGBImageField(), [value]).read(0)[0]
    assert stored.shape == (*gray.shape, 3)
    for channel in range(3):
        np.testing.assert_array_equal(stored[:, :, channel], gray)


def test_rgba_drops_alpha(tmp_path: Path, images: list[np.ndarray]) -> None:
    rgba = np.dstack([images[0], np.full(images[0].shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(store(tmp_path, RGBImageField(), [rgba]).read(0)[0], images[0])


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "LA", "1", "YCbCr", "HSV"])
def test_pil_images(tmp_path: Path, images: list[np.ndarray], mode: str) -> None:
    from PIL import Image

    pil = Image.fromarray(images[2]).convert(mode)
    stored = store(tmp_path, RGBImageField(), [pil]).read(0)[0]
    np.testing.assert_array_equal(stored, np.asarray(pil.convert("RGB")))


@pytest.mark.parametrize(("mode", "straight"), [("La", "LA"), ("RGBa", "RGBA")])
def test_pil_images_with_premultiplied_alpha(tmp_path: Path, images: list[np.ndarray],
                                             mode: str, straight: str) -> None:
    """Opaque, premultiplied is straight alpha: the pixels are stored as they are
    (Pillow converts La to RGB only through LA: it raised Pillow's ValueError)."""
    from PIL import Image

    rgb = Image.fromarray(images[2]).convert(straight[:-1]).convert("RGB")
    opaque = Image.fromarray(images[2]).convert(straight)
    opaque.putalpha(255)
    stored = store(tmp_path, RGBImageField(), [opaque.convert(mode)]).read(0)[0]
    np.testing.assert_array_equal(stored, np.asarray(rgb))


def test_a_pil_image_whose_file_was_closed_is_named(tmp_path: Path,
                                                    images: list[np.ndarray]) -> None:
    """Returned from inside ``with Image.open(...)``: Pillow's bare AssertionError was all."""
    from PIL import Image

    Image.fromarray(images[2]).save(tmp_path / "a.jpg")
    with pytest.raises(EncodeError, match=r"sample 0, field 'image': a PIL image whose file "
                                          r"was closed .*image\.load\(\)"):
        store(tmp_path, RGBImageField(), OpenedInWith(tmp_path / "a.jpg"))
    assert not (tmp_path / "img.beton").exists()


class OpenedInWith:
    """A dataset returning its image from inside ``with Image.open(...)``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[object]:
        from PIL import Image

        with Image.open(self.path) as image:
            return (image,)


def sixteen_bit(image: np.ndarray) -> np.ndarray:
    """The image's luma as a 0-65535 ramp: Pillow's convert("RGB") clips it to 255."""
    return (image[:, :, 0].astype(np.uint32) * 257).astype(np.uint16)


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_pil_images_of_more_than_8_bits_are_refused(tmp_path: Path, images: list[np.ndarray],
                                                    mode: str) -> None:
    """Pillow clips 16- and 32-bit images to 255 and truncates float ones: storing
    them so gave white (or black) images; each is refused, naming the sample."""
    from PIL import Image

    ramp = sixteen_bit(images[2])
    pil = Image.fromarray(ramp) if mode == "I;16" else Image.fromarray(
        ramp.astype(np.int32) if mode == "I" else ramp.astype(np.float32) / 65535)
    assert pil.mode == mode
    with pytest.raises(ValueError, match=rf"sample 1, field 'image': a PIL image in mode "
                                         rf"'{mode}'.*8-bit"):
        store(tmp_path, RGBImageField(), [images[0], pil])
    assert not (tmp_path / "img.beton").exists()


def test_16_bit_png_files_are_refused_and_skippable(tmp_path: Path,
                                                    images: list[np.ndarray]) -> None:
    """The bytes of a 16-bit PNG: a DecodeError (the file is what is wrong), so a
    writer skipping DecodeErrors (``fastforward convert --skip-bad``) leaves it out."""
    from PIL import Image

    from fastforward.errors import DecodeError

    buffer = io.BytesIO()
    Image.fromarray(sixteen_bit(images[2])).save(buffer, format="PNG")
    writer = DatasetWriter(tmp_path / "s.beton", {"image": RGBImageField()}, num_workers=1,
                           progress=False, skip_errors=(DecodeError,))
    writer.from_indexed_dataset([(images[0],), (buffer.getvalue(),)])
    assert [(s.index, s.field) for s in writer.skipped] == [(1, "image")]
    assert "mode 'I;16'" in writer.skipped[0].error
    assert Reader(tmp_path / "s.beton").num_samples == 1


def test_non_contiguous_array(tmp_path: Path, images: list[np.ndarray]) -> None:
    view = images[0][::2, ::-1]
    np.testing.assert_array_equal(store(tmp_path, RGBImageField(), [view]).read(0)[0], view)


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.zeros((8, 8, 3), np.float32), r"uint8 pixels, got float32 \(shape \(8, 8, 3\)\): "
                                        r"floats in \[0, 1\] are \(image \* 255\)"),
     (np.zeros((8, 8, 3), np.uint16), "got uint16 .*: scale it to 8 bits yourself"),
     (np.zeros((8, 8, 2), np.uint8), "shape"),
     (np.zeros((2, 8, 8, 3), np.uint8), "shape"), (np.zeros((0, 8, 3), np.uint8), "empty"),
     ("not an image", "str"), (b"\x89PNX not an image", "cannot identify image file")],
    ids=["float", "uint16", "two-channels", "4d", "empty", "string", "garbage-bytes"],
)
def test_refused_inputs_name_sample_and_field(tmp_path: Path, value: object, message: str,
                                              images: list[np.ndarray]) -> None:
    data = [(images[0], 0), (images[1], 1), (value, 2)]
    path = tmp_path / "bad.beton"
    with pytest.raises(ValueError, match=message) as info:
        DatasetWriter(path, {"image": RGBImageField(), "label": __import__(
            "fastforward.fields", fromlist=["IntField"]).IntField()}, num_workers=1,
            progress=False).from_indexed_dataset(data)
    assert "sample 2" in str(info.value)
    assert "'image'" in str(info.value)


class TruncatedJpegs:
    """A dataset of the halves of JPEG files opened with Pillow (not yet decoded)."""

    def __init__(self, blobs: list[bytes]) -> None:
        self.blobs = blobs

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int) -> tuple[Any]:
        from PIL import Image

        return (Image.open(io.BytesIO(self.blobs[i][: len(self.blobs[i]) // 2])),)


def test_a_pil_image_of_a_damaged_file_is_a_decode_error(tmp_path: Path,
                                                          jpeg_folder: Path) -> None:
    """Pillow's OSError ("image file is truncated") was raised as it was: not a
    DecodeError, so skip_errors=(DecodeError,) did not leave the sample out."""
    from fastforward.errors import DecodeError

    blobs = [f.read_bytes() for f in sorted(jpeg_folder.glob("*/*.jpg"))[:2]]
    writer = DatasetWriter(tmp_path / "t.beton", {"image": RGBImageField()}, num_workers=1,
                           progress=False, skip_errors=(DecodeError,))
    writer.from_indexed_dataset(TruncatedJpegs(blobs))
    assert [(s.index, s.field) for s in writer.skipped] == [(0, "image"), (1, "image")]
    assert "cannot decode the PIL image's file: image file is truncated" in (
        writer.skipped[0].error)
    pytest.importorskip("torch")
    import torch

    with pytest.raises(EncodeError, match=r"got Tensor \(a C×H×W uint8 tensor is "
                                          r"tensor.permute\(1, 2, 0\).numpy\(\)"):
        store(tmp_path, RGBImageField(), [torch.zeros((3, 8, 8), dtype=torch.uint8)])


def test_encoded_jpeg_input_is_shrunk(tmp_path: Path, jpeg_folder: Path) -> None:
    import simplejpeg

    files = sorted(jpeg_folder.glob("*/*.jpg"))[:5]
    blobs = [f.read_bytes() for f in files]
    # raw, so that only the DCT-domain scaling differs from decode-then-shrink
    reader = store(tmp_path, RGBImageField(write_mode="raw", max_resolution=128), blobs)
    for i, blob in enumerate(blobs):
        original = simplejpeg.decode_jpeg(blob)
        stored = reader.read(i)[0]
        assert stored.shape[:2] == target_size(*original.shape[:2], 128, None)
        reference = np.empty_like(stored)
        from fastforward._ext.resize import crop_resize_into

        crop_resize_into(original, 0, 0, *original.shape[:2], reference)
        assert psnr(stored, reference) > 30


@pytest.mark.parametrize("mode", ["jpg", "smart", "raw", "proportion"])
def test_jpeg_sources_are_stored_without_leaving_ycbcr(tmp_path: Path, jpeg_folder: Path,
                                                       mode: str) -> None:
    """Where libjpeg-turbo is linked in, a JPEG source stored as JPEG is exactly
    ``shrink_jpeg``'s bytes (no RGB in between); pixels stored raw, and the random
    'proportion' mode (its draw stays where it was), take the RGB path."""
    import simplejpeg

    from fastforward._ext.resize import crop_resize_into
    from fastforward.benchmark import stored_jpegs
    from fastforward.fields import rgb_image

    if rgb_image._region is None:
        pytest.skip("built without libjpeg-turbo")
    blobs = [f.read_bytes() for f in sorted(jpeg_folder.glob("*/*.jpg"))[:5]]
    field = RGBImageField(write_mode=mode, max_resolution=160, smart_threshold=1000,
                          compress_probability=1.0)
    reader = store(tmp_path, field, blobs)
    stored_bytes = list(stored_jpegs(reader, "image")) if mode != "raw" else []
    decoder = rgb_image._region.JpegDecoder()
    for i, blob in enumerate(blobs):
        original = simplejpeg.decode_jpeg(blob)
        stored = reader.read(i)[0]
        height, width = target_size(*original.shape[:2], 160, None)
        assert stored.shape[:2] == (height, width)
        reference = np.empty_like(stored)
        crop_resize_into(original, 0, 0, *original.shape[:2], reference)
        assert psnr(stored, reference) > 30
        if mode in ("jpg", "smart"):  # sources of ~500 px: decoded at full size
            assert stored_bytes[i] == rgb_image._region.shrink_jpeg(decoder, blob, height,
                                                                    width, 8, 90, 1)
        elif mode == "proportion":
            rgb = rgb_image.encode_jpeg(field._prepare(blob), 90).tobytes()
            assert stored_bytes[i] == rgb
    assert set(reader.metadata["f0"]["mode"].tolist()) == {1 if mode == "raw" else 0}


@pytest.mark.parametrize(("source", "stored", "scale"), [
    ((431, 575), (192, 256), 8), ((600, 800), (192, 256), 8), ((768, 1024), (192, 256), 4),
    ((1536, 2048), (192, 256), 2), ((3072, 4096), (192, 256), 1), ((3072, 4096), (2, 3000), 8),
    ((10, 10), (10, 10), 8), ((800, 15), (256, 5), 8), ((15, 800), (1, 32), 8),
    ((800, 16), (50, 1), 1)])
def test_source_scale_keeps_twice_the_stored_size(source: tuple[int, int],
                                                  stored: tuple[int, int], scale: int) -> None:
    from fastforward.fields.rgb_image import source_scale

    assert source_scale(*source, *stored) == scale


@pytest.mark.parametrize("mode", ["raw", "jpg"])
@pytest.mark.parametrize("subsampling", ["444", "422", "420"])
def test_a_jpeg_narrower_than_a_block_is_stored_as_its_pixels(tmp_path: Path, mode: str,
                                                              subsampling: str) -> None:
    """A source 3 pixels wide is one partly padded block: decoded at a reduced
    DCT scale, the padding weighed in every pixel (colours off by up to 60)."""
    import simplejpeg

    stripes = np.zeros((100, 3, 3), np.uint8)
    for column in range(3):
        stripes[:, column, column] = 255
    data = simplejpeg.encode_jpeg(stripes, 100, colorsubsampling=subsampling)
    from fastforward.fields.rgb_image import resize_area

    expected = resize_area(simplejpeg.decode_jpeg(data), 10, 1).astype(int)  # about 85 each
    stored = store(tmp_path, RGBImageField(write_mode=mode, max_resolution=10),
                   [data]).read(0)[0].astype(int)
    assert stored.shape == (10, 1, 3)
    # (a 1-pixel-wide JPEG, stored at quality 90 with 4:2:0 chroma, loses up to
    # 13 levels of blue; the reduced scale was 54-72 levels off)
    assert np.abs(stored - expected).max() <= (1 if mode == "raw" else 16)


@pytest.mark.parametrize("subsampling", ["411", "422", "420", "444"])
def test_a_shrunk_jpeg_keeps_its_colours_whatever_its_chroma_sampling(
        tmp_path: Path, photos: list[np.ndarray], subsampling: str) -> None:
    """A 4:1:1 JPEG decoded at a reduced DCT scale (twice the stored size) lost its
    colour detail: 8-pixel red and blue stripes shrunk 4× came out 121 levels off,
    photographs at 34-45 dB against a whole decode shrunk (4:2:0's 44-53)."""
    import simplejpeg

    from fastforward.fields.rgb_image import resize_area

    x = np.arange(256)
    stripes = np.zeros((128, 256, 3), np.uint8)
    stripes[:, (x + 4) // 8 % 2 == 0] = (220, 20, 20)
    stripes[:, (x + 4) // 8 % 2 == 1] = (20, 20, 220)
    sources = [simplejpeg.encode_jpeg(np.ascontiguousarray(image), 95,
                                      colorsubsampling=subsampling)
               for image in [stripes, *photos[:3]]]
    reader = store(tmp_path, RGBImageField(write_mode="raw", max_resolution=64), sources)
    for i, data in enumerate(sources):
        stored = reader.read(i)[0].astype(float)
        whole = resize_area(simplejpeg.decode_jpeg(data), *stored.shape[:2]).astype(float)
        if i == 0:  # (4:2:0 and 4:2:2 at half the width: 15 levels at the stripes' edges)
            assert np.abs(stored - whole).max() <= 15
        else:
            assert 10 * np.log10(255 ** 2 / max(((stored - whole) ** 2).mean(), 1e-9)) > 40


def test_proportion_draws_once_per_sample_whatever_the_input(tmp_path: Path,
                                                             jpeg_folder: Path) -> None:
    """Mode 'proportion' draws whether to compress once per sample, in order: the
    same seed compresses the same samples given JPEG bytes or their pixels."""
    import simplejpeg

    blobs = [f.read_bytes() for f in sorted(jpeg_folder.glob("*/*.jpg"))[:24]]
    modes = []
    for kind, items in (("bytes", blobs),
                        ("pixels", [simplejpeg.decode_jpeg(b) for b in blobs])):
        (tmp_path / kind).mkdir()
        reader = store(tmp_path / kind, RGBImageField(write_mode="proportion",
                                                      max_resolution=64), items)
        modes.append(reader.metadata["f0"]["mode"].tolist())
    assert modes[0] == modes[1]
    assert 0 < modes[0].count(0) < len(blobs)  # some compressed, some not


class _JpegViews:
    """One JPEG's bytes as a bytearray, a memoryview, and a non-contiguous memoryview
    (made in the worker: memoryviews do not pickle)."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> object:
        if index == 0:
            return bytearray(self.blob)
        if index == 1:
            return memoryview(self.blob)
        spread = np.zeros(2 * len(self.blob), np.uint8)
        spread[::2] = np.frombuffer(self.blob, np.uint8)
        return memoryview(spread)[::2]


def test_jpeg_bytes_in_any_buffer_are_taken(tmp_path: Path, jpeg_folder: Path) -> None:
    """Contiguous buffers take the YCbCr path, a strided one the RGB path."""
    import simplejpeg

    blob = sorted(jpeg_folder.glob("*/*.jpg"))[0].read_bytes()
    reader = store(tmp_path, RGBImageField(write_mode="jpg", max_resolution=128),
                   _JpegViews(blob))
    first = reader.read(0)[0]
    assert first.shape[:2] == target_size(*simplejpeg.decode_jpeg(blob).shape[:2], 128, None)
    np.testing.assert_array_equal(reader.read(1)[0], first)
    assert psnr(reader.read(2)[0], first) > 30


def test_jpeg_sources_it_does_not_take_go_through_rgb(tmp_path: Path,
                                                     images: list[np.ndarray]) -> None:
    """A CMYK JPEG is decoded to RGB (as simplejpeg converts it), shrunk and encoded."""
    import simplejpeg
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(images[0]).convert("CMYK").save(buffer, format="JPEG", quality=95)
    stored = store(tmp_path, RGBImageField(write_mode="jpg", jpeg_quality=95),
                   [buffer.getvalue()]).read(0)[0]
    assert psnr(stored, simplejpeg.decode_jpeg(buffer.getvalue())) > 30


def test_encoded_png_input(tmp_path: Path, images: list[np.ndarray]) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(images[4]).save(buffer, format="PNG")
    stored = store(tmp_path, RGBImageField(), [buffer.getvalue()]).read(0)[0]
    np.testing.assert_array_equal(stored, images[4])


def test_a_large_png_is_read_without_pillows_warning(monkeypatch: pytest.MonkeyPatch,
                                                     images: list[np.ndarray]) -> None:
    """Pillow warns past half its limit (DecompressionBombWarning: two lines of Python
    on the program's stderr, the conversion going on); fastforward's limit is
    Pillow's error, as for JPEGs, and says nothing below it."""
    import warnings

    from PIL import Image

    from fastforward.fields.rgb_image import decode_image_file

    buffer = io.BytesIO()
    Image.fromarray(images[4]).save(buffer, format="PNG")
    pixels = images[4].shape[0] * images[4].shape[1]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels * 2 // 3)  # warns, no error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(decode_image_file(buffer.getvalue()), images[4])


def test_ndarray_arguments_round_trip() -> None:
    for dtype, shape in [("<f4", (3, 4)), (">i2", (7,)), ("u1", (1, 2, 3, 4)), ("<c16", (2,))]:
        field = NDArrayField(np.dtype(dtype), shape)
        back = NDArrayField.from_binary(field.to_binary())
        assert back.dtype == np.dtype(dtype)
        assert back.shape == shape


def test_torch_tensor_field() -> None:
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    from fastforward.fields import TorchTensorField

    field = TorchTensorField(torch.int32, (2, 3))
    assert field.dtype == np.dtype("int32")
    back = NDArrayField.from_binary(field.to_binary())
    assert back.dtype == np.dtype("<i4")
    assert back.shape == (2, 3)


def lossless_jpeg(pixels: np.ndarray, adobe_rgb: bool = True) -> bytes:
    """*pixels* (H×W×C, C 1 or 3, uint8) as a lossless JPEG (SOF3, predictor 1: the
    pixel to the left, the one above in the first column), each component sampled
    1×1; with *adobe_rgb*, an Adobe segment says its components are R, G and B."""
    import struct

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload

    h, w, c = pixels.shape
    head = b"\xff\xd8"
    if adobe_rgb and c == 3:
        head += segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x00")
    head += segment(0xC3, struct.pack(">BHHB", 8, h, w, c)
                    + b"".join(bytes([k + 1, 0x11, 0]) for k in range(c)))
    # a Huffman table coding the difference categories 0 to 8 in 4 bits each
    head += segment(0xC4, b"\x00" + bytes([0, 0, 0, 9] + [0] * 12) + bytes(range(9)))
    head += segment(0xDA, bytes([c]) + b"".join(bytes([k + 1, 0]) for k in range(c))
                    + b"\x01\x00\x00")
    x = pixels.astype(np.int64)
    predicted = np.empty_like(x)
    predicted[:, 1:] = x[:, :-1]
    predicted[1:, 0] = x[:-1, 0]
    predicted[0, 0] = 128
    bits = []
    for d in (x - predicted).reshape(-1).tolist():
        size = abs(d).bit_length()
        bits.append(format(size, "04b"))
        if size:
            bits.append(format(d if d > 0 else d + (1 << size) - 1, f"0{size}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i : i + 8], 2)
        data += bytes([byte, 0]) if byte == 0xFF else bytes([byte])
    return head + bytes(data) + b"\xff\xd9"


@pytest.mark.parametrize("kind", ["rgb", "ycbcr", "gray"])
def test_a_lossless_jpeg_is_decoded_whole_not_at_a_dct_scale(
        tmp_path: Path, photos: list[np.ndarray], kind: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A lossless JPEG has no DCT: libjpeg-turbo decodes it whole whatever scale is
    asked, and simplejpeg's scaled decode wrote it past the scaled image's buffer
    (a worker killed by SIGSEGV, or "double free or corruption"). A lossless
    grayscale one, which TurboJPEG does not convert to RGB, is read through Pillow."""
    import simplejpeg
    from PIL import Image

    from fastforward.fields import rgb_image

    pixels = np.ascontiguousarray(photos[0][:96, :80])
    if kind == "gray":
        pixels = pixels[:, :, :1].copy()
    data = lossless_jpeg(pixels, adobe_rgb=kind == "rgb")
    whole = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if kind != "ycbcr":  # (a YCbCr one's values are taken as YCbCr)
        np.testing.assert_array_equal(whole, np.repeat(pixels, 3 // pixels.shape[2], axis=2))
    assert rgb_image.jpeg_frame(data) == 0xC3

    asked = []

    class Spy:  # simplejpeg, refusing the scaled decode that overran its buffer
        def __getattr__(self, name: str) -> Any:
            return getattr(simplejpeg, name)

        def decode_jpeg(self, *args: Any, **kwargs: Any) -> np.ndarray:
            asked.append((kwargs.get("min_height", 0), kwargs.get("min_width", 0)))
            assert asked[-1] == (0, 0), "a lossless JPEG was decoded at a DCT scale"
            return simplejpeg.decode_jpeg(*args, **kwargs)

    field = RGBImageField(write_mode="jpg", max_resolution=24)
    with monkeypatch.context() as patch:
        patch.setattr(rgb_image, "require_simplejpeg", Spy)
        prepared = field._prepare(data)
    assert asked  # simplejpeg was asked (a whole decode; Pillow's for the grayscale one)
    assert prepared.shape == (24, 20, 3)
    np.testing.assert_array_equal(prepared, rgb_image.resize_area(whole, 24, 20))

    stored = store(tmp_path, RGBImageField(write_mode="jpg", max_resolution=24,
                                           jpeg_quality=95), [data]).read(0)[0]
    assert psnr(stored, prepared) > 30


@pytest.mark.parametrize("sampling", ["441", "410"])
def test_jpegs_of_samplings_turbojpeg_cannot_name_are_read_through_pillow(
        tmp_path: Path, images: list[np.ndarray], sampling: str) -> None:
    """simplejpeg raised a bare KeyError for 4:4:1 (luma sampled 1×4, as `jpegtran
    -rotate 90` makes of a 4:1:1 file), which `skip_errors` did not skip, and refused
    4:1:0 ("Could not determine subsampling level"); libjpeg, through Pillow, reads
    both, and they are stored as a PNG would be. The reader's checks of a stored
    JPEG say what is wrong with such a header instead of raising the KeyError."""
    from PIL import Image

    from fastforward.errors import DecodeError
    from fastforward.fields.rgb_image import check_jpeg_size
    from fastforward.reader import _check_jpeg

    encode_rgb = pytest.importorskip("fastforward._ext.jpeg").encode_rgb  # (libjpeg-turbo)
    data = encode_rgb(images[1], 95, sampling)
    assert data[data.index(b"\xff\xc0") + 11] == {"441": 0x14, "410": 0x42}[sampling]
    whole = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert psnr(whole, images[1]) > 30  # a sound JPEG
    height, width = whole.shape[:2]
    reader = store(tmp_path, RGBImageField(write_mode="jpg", max_resolution=64),
                   [data, whole])
    stored = reader.read(0)[0]
    assert stored.shape == (*target_size(height, width, 64, None), 3)
    np.testing.assert_array_equal(stored, reader.read(1)[0])  # as Pillow's pixels are
    with pytest.raises(DecodeError, match="corrupt JPEG payload"):
        check_jpeg_size(data, height, width)
    assert _check_jpeg(data, height, width).startswith("bad JPEG header")

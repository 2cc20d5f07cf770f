"""RGB images: a 13-byte row (mode, width, height, data_ptr) and the pixels
as a JPEG stream or raw H·W·3 bytes.

Inputs are uint8 H×W×3 arrays, PIL images, or the bytes of an encoded image
file (JPEG through simplejpeg; other formats through Pillow). Grayscale and
RGBA inputs are converted to RGB (alpha is dropped); anything else is refused.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from .._ext.resize import (
    Workspace,
    crop_resize_into,
    decode_crop_resize_range,
    resize_span_into,
)
from ..errors import DecodeError, EncodeError, annotate
from ..pipeline import geometry, random
from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.compiler import hook_function, seed_numba
from ..pipeline.decoder import Decoder
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ..transforms.crop import (
    RANDOM_CROP_UNIFORMS,
    center_crops,
    check_center_ratio,
    check_random_crop,
    get_random_crop,
    random_crops,
)
from ..transforms.crop import get_center_crop as _center_crop
from ..utils import size_pair, whole_number
from .base import Field, Malloc, PayloadReader, empty_arguments, record_size, sample_rng
from .planes import MAX_SIDE, check_resolutions, pil_pixels, read_with_pillow

try:
    import simplejpeg
except ImportError:  # pragma: no cover - a declared dependency
    simplejpeg = None

try:  # built where libjpeg-turbo was available at build time (see setup.py)
    _region: Any = importlib.import_module("fastforward._ext.jpeg")
except ModuleNotFoundError as _exc:  # built without it: whole images through simplejpeg
    if _exc.name != "fastforward._ext.jpeg":
        raise
    _region = None

CROP_DECODING = (f"region (libjpeg-turbo {_region.LIBJPEG_TURBO_VERSION})" if _region is not None
                 else "whole image (simplejpeg)")
"""How the crop decoders decode JPEGs in this build: only the crop's region with the
libjpeg-turbo linked in at build time, or the whole image with simplejpeg."""

IMAGE_MODES = {"jpg": 0, "raw": 1}
RGB_METADATA = np.dtype(
    [("mode", "u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")]
)
JPEG_MAX_SIDE = 65500  # libjpeg's limit
MAX_DECODED_PIXELS: int | None = 178_956_970
"""The most pixels the writer decodes a source JPEG to (after any DCT scaling):
a larger one is a ``DecodeError`` (``--skip-bad`` skips it), as Pillow refuses
an image of more than ``2 * Image.MAX_IMAGE_PIXELS`` (this number) as a
decompression bomb. A 631-byte JPEG whose header claims 30000×30000 took 10 s
and 2.7 GB before it failed, and at 60000×60000 a worker ran out of memory.
None: no limit."""
WRITE_MODES = ("raw", "jpg", "smart", "proportion")


def require_simplejpeg() -> Any:
    """Return the simplejpeg module, or say how to get it."""
    if simplejpeg is None:
        raise ImportError("JPEG coding needs simplejpeg: pip install simplejpeg")
    return simplejpeg


def get_center_crop(height: int, width: int, *args: Any) -> tuple[int, int, int, int]:
    """FFCV's centre crop, ``(i, j, h, w)``: FFCV's ``fields.rgb_image`` takes
    ``(height, width, _, ratio)`` (the third argument unused), its
    ``transforms.utils.fast_crop`` ``(height, width, ratio)``; both are taken here."""
    if len(args) not in (1, 2):
        raise TypeError("get_center_crop(height, width, ratio) or FFCV's "
                        f"get_center_crop(height, width, _, ratio), got {2 + len(args)} arguments")
    return _center_crop(height, width, args[-1])


PIL_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX",
                       "CMYK", "YCbCr", "HSV"})
"""Pillow modes of 8 bits or fewer per channel, which ``convert("RGB")`` maps faithfully
(alpha dropped)."""


TO_8_BITS = "scale it to 8 bits yourself, or store it as it is with MultiChannelImageField"
"""What to do with an image of more than 8 bits a value, which RGBImageField refuses."""


def _rgb_pixels(image: Any) -> np.ndarray:
    """A PIL image of one of ``PIL_MODES`` as RGB pixels."""
    if image.mode == "La":  # Pillow converts it only through LA (unpremultiplied)
        image = image.convert("LA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def to_rgb_array(image: Any) -> np.ndarray:
    """Return *image* as a C-contiguous uint8 H×W×3 array.

    Accepts uint8 arrays (H×W, H×W×1, H×W×3, H×W×4) and PIL images of
    8-bit modes (``PIL_MODES``). Raises EncodeError for anything else: Pillow
    would clip a 16- or 32-bit image to 255 and truncate a float one.
    """
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
        if image.mode not in PIL_MODES:
            raise EncodeError(
                f"a PIL image in mode {image.mode!r} ({image.size[1]}×{image.size[0]}): "
                "RGBImageField stores 8-bit RGB, and converting this mode would clip or "
                f"truncate its values; {TO_8_BITS}")
        image = pil_pixels(image, _rgb_pixels)
    if not isinstance(image, np.ndarray):
        hint = ""
        if hasattr(image, "permute") and hasattr(image, "numpy"):  # a torch tensor
            hint = (" (a C×H×W uint8 tensor is tensor.permute(1, 2, 0).numpy(), as FFCV "
                    "takes no tensors either)")
        raise EncodeError(
            f"expected a uint8 H×W×3 array, a PIL image or encoded image bytes, "
            f"got {type(image).__name__}{hint}"
        )
    if image.dtype != np.uint8:
        hint = ""
        if image.dtype.kind == "f":
            hint = ": floats in [0, 1] are (image * 255).round().astype(np.uint8)"
        elif image.dtype.kind in "iu":
            hint = f": {TO_8_BITS}"
        raise EncodeError(
            f"expected uint8 pixels, got {image.dtype} (shape {image.shape}){hint}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    elif image.ndim != 3 or image.shape[2] != 3:
        raise EncodeError(f"expected an H×W×3 image, got shape {image.shape}")
    if min(image.shape[:2]) < 1:
        raise EncodeError(f"empty image of shape {image.shape}")
    return np.ascontiguousarray(image)


def scaled_side(side: int, m: int) -> int:
    """Pixels libjpeg decodes a side of *side* to at the DCT scale m/8."""
    return (side * m + 7) // 8


def decodes_within_limit(height: int, width: int, m: int = 8) -> bool:
    """Whether a JPEG of height × width decodes at the DCT scale m/8 to at most
    ``MAX_DECODED_PIXELS``."""
    limit = MAX_DECODED_PIXELS
    return limit is None or scaled_side(height, m) * scaled_side(width, m) <= limit


def check_decoded_pixels(height: int, width: int, m: int = 8) -> None:
    """Refuse to decode a JPEG of height × width at the DCT scale m/8 to more than
    ``MAX_DECODED_PIXELS``."""
    limit = MAX_DECODED_PIXELS
    pixels = scaled_side(height, m) * scaled_side(width, m)
    if limit is not None and pixels > limit:
        at = "" if m == 8 else f" at the scale {m}/8"
        raise DecodeError(
            f"a JPEG of {height}×{width} would decode to {pixels:,} pixels{at}, more than "
            f"fastforward.fields.rgb_image.MAX_DECODED_PIXELS ({limit:,}, Pillow's limit): "
            "a decompression bomb? Set max_resolution (it decodes at a reduced scale), or "
            "raise the limit (None for none)")


def _why(reason: str) -> str:
    """What libjpeg's *reason* for refusing a JPEG means, where it says too little."""
    if "extraneous bytes before marker 0xd9" in reason:
        # Pillow, and with it FFCV's writer and torchvision, decode such files silently
        return (" (bytes left over after the image's data, before its end: damaged data "
                "that decoded to wrong rows, or bytes appended to a whole image; either "
                "way refused, so that no damaged image is stored: leave such files out "
                "with `fastforward convert --skip-bad` or "
                "DatasetWriter(skip_errors=(DecodeError,)))")
    return ""


UNCONVERTED = "Unsupported color conversion request"
"""libjpeg's message where TurboJPEG asks for a colour conversion it lacks for a
sound JPEG (RGB from a lossless grayscale one), which Pillow reads."""


def decode_image_file(data: bytes, min_height: int = 0, min_width: int = 0,
                      pillow: bool = False) -> np.ndarray:
    """Decode the bytes of an image file to RGB.

    JPEGs go through simplejpeg, unless *pillow* (a JPEG whose chroma sampling
    simplejpeg cannot name: ``unnamed_sampling``). Given a minimum size, it
    decodes at the smallest DCT scale (m/8) that keeps the image at least that
    large, with fast chroma upsampling: both are much faster, and the image is
    shrunk further anyway. Other formats need Pillow. Raises DecodeError for an
    empty file and for bytes that no decoder can read.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    if data[:2] == b"\xff\xd8" and not pillow:
        sj = require_simplejpeg()
        shrinking = min_height > 0 or min_width > 0
        try:
            return sj.decode_jpeg(data, colorspace="RGB", min_height=min_height,
                                  min_width=min_width, fastupsample=shrinking)
        except ValueError as exc:
            if UNCONVERTED not in str(exc):
                raise DecodeError(f"cannot decode JPEG: {exc}{_why(str(exc))}") from exc
            # a JPEG TurboJPEG does not convert to RGB (a lossless grayscale one):
            # read through Pillow, which decodes it with libjpeg and converts itself
    return read_with_pillow(data, "image", to_rgb_array, DecodeError,  # --skip-bad skips them
                            f"RGBImageField stores 8-bit RGB; {TO_8_BITS}")


def target_size(
    height: int, width: int, max_resolution: int | None, min_resolution: int | None
) -> tuple[int, int]:
    """The stored (height, width): shrink so the longer side is at most
    *max_resolution* (or the shorter side at most *min_resolution*); never enlarge."""
    if max_resolution is not None and max(height, width) > max_resolution:
        ratio = max_resolution / max(height, width)
    elif min_resolution is not None and min(height, width) > min_resolution:
        ratio = min_resolution / min(height, width)
    else:
        return height, width
    return max(1, math.floor(height * ratio)), max(1, math.floor(width * ratio))


SCALED_DECODE_MIN_SIDE = 16
"""A source JPEG with a side shorter than this (one MCU of 4:2:0 or 4:2:2 chroma)
is decoded at full scale by the writer: that side is one partly padded block,
whose padding (the encoder's copies of the last column or row) a reduced DCT
scale averages into every pixel (a 3-pixel-wide source's colours were off by up
to 60 levels). Such images decode in microseconds anyway."""

SCALED_DECODE_SAMPLINGS = frozenset({"444", "422", "420", "440", "Gray"})
"""The chroma samplings (as simplejpeg's header names them) of the source JPEGs
that the writer decodes at a reduced DCT scale; others (4:1:1) are decoded
whole: libjpeg-turbo scales 4:1:1 chroma down with the luma, and 8-pixel colour
stripes shrunk 4× lost their colours (121 levels off)."""


SCALED_DECODE_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC9, 0xCA})
"""The JPEG frames (SOFn markers) the writer decodes at a reduced DCT scale:
baseline, extended and progressive, Huffman or arithmetic coded. Not lossless
ones (SOF3, 7, 11, 15), which have no DCT: libjpeg-turbo decodes them whole
whatever scale is asked, and simplejpeg's scaled decode wrote the whole image
into the scaled one's buffer (a crash, or corrupted memory)."""


def jpeg_frame(data: bytes) -> int | None:
    """The SOFn marker (0xC0 ... 0xCF) of the JPEG *data*, or None where its
    segments before the first scan hold none or cannot be followed."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            pos += 2
            continue
        if marker == 0xDA:  # the first scan: no frame before it
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        pos += 2 + (data[pos + 2] << 8 | data[pos + 3])
    return None


def jpeg_header(data: Any, error: str) -> tuple[int, int, str, str]:
    """simplejpeg's ``(height, width, colorspace, sampling)`` of *data*; a
    DecodeError beginning with *error* for one it cannot read (a ValueError, or
    the KeyError it raises for a sampling TurboJPEG has no name for: 4:4:1)."""
    try:
        height, width, colorspace, sampling = require_simplejpeg().decode_jpeg_header(data)
    except (ValueError, KeyError) as exc:
        reason = (f"a chroma sampling it does not read (TurboJPEG's {exc})"
                  if isinstance(exc, KeyError) else exc)
        raise DecodeError(f"{error}: {reason}") from exc
    return height, width, colorspace, sampling


def unnamed_sampling(exc: DecodeError) -> bool:
    """Whether ``jpeg_header`` refused a JPEG only for a chroma sampling that
    TurboJPEG has no name for (4:4:1, 4:1:0, chroma finer than luma): libjpeg
    decodes those, and Pillow, through it, reads them."""
    return isinstance(exc.__cause__, KeyError) or (
        "Could not determine subsampling level" in str(exc))


def source_scale(height: int, width: int, stored_height: int, stored_width: int) -> int:
    """M of the DCT scale M/8 at which the writer's YCbCr path decodes a source
    JPEG of height × width: the smallest that keeps it at least twice the stored
    size each way (as the RGB path), among those whose IDCT libjpeg-turbo has in
    SIMD (1, 2, 4; 8 when none does, and for a side under ``SCALED_DECODE_MIN_SIDE``)."""
    if min(height, width) < SCALED_DECODE_MIN_SIDE:
        return 8
    return next((m for m in (1, 2, 4) if (height * m + 7) // 8 >= 2 * stored_height
                 and (width * m + 7) // 8 >= 2 * stored_width), 8)


def resize_area(image: np.ndarray, height: int, width: int,
                span: tuple[float, float] | None = None) -> np.ndarray:
    """Resize an H×W×C image (uint8 or uint16, 1 to 16 channels) by area
    averaging (OpenCV's INTER_AREA). *span* (uint8 only): the (height, width)
    its pixels stand for, where its last row and column stand for part of one
    (``dct_span``)."""
    if span is None and image.shape[:2] == (height, width):
        return image
    out = np.empty((height, width, image.shape[2]), image.dtype)
    if span is not None:
        resize_span_into(image, span[0], span[1], out)
    else:
        crop_resize_into(image, 0, 0, image.shape[0], image.shape[1], out)
    return out


def dct_span(source: tuple[int, int], decoded: tuple[int, int]) -> tuple[float, float] | None:
    """What the *decoded* pixels of a JPEG of *source* (height, width) decoded at
    the DCT scale m/8 stand for: ``(H * m / 8, W * m / 8)``, its last row and
    column part of a pixel (libjpeg makes ``ceil(H * m / 8)`` rows). None where
    more than one scale gives that size (an image a few pixels wide)."""
    scales = [m for m in range(1, 9)
              if all(-(-side * m // 8) == got for side, got in zip(source, decoded, strict=True))]
    if len(scales) != 1:
        return None
    return source[0] * scales[0] / 8, source[1] * scales[0] / 8


class RGBImageField(Field):
    """An RGB image per sample (type id 2), stored raw or as JPEG.

    Args:
        write_mode: ``'raw'`` (pixels), ``'jpg'`` (JPEG), ``'smart'`` (JPEG
            when the raw image is larger than ``smart_threshold`` bytes) or
            ``'proportion'`` (JPEG with probability ``compress_probability``,
            drawn per sample from the writer's seed).
        max_resolution: shrink so the longer side is at most this.
        min_resolution: shrink so the shorter side is at most this (not with
            ``max_resolution``).
        smart_threshold: raw size in bytes above which ``'smart'`` compresses.
        jpeg_quality: JPEG quality, 0-100 (4:2:0 chroma subsampling, as FFCV).
        compress_probability: for ``'proportion'``.
        restart_markers: put a JPEG restart marker at each MCU row (16 pixel
            rows), where libjpeg-turbo is linked in: the crop decoders then
            start decoding at the marker above a crop and stop each row just
            past it (pipeline (b): 7-34% faster), while whole-image decoding
            of these files (``SimpleRGBImageDecoder``, FFCV, other readers)
            is about 5-10% slower and the files 0.25% larger. Any JPEG decoder
            reads them. Not stored in the file.
    """

    TYPE_ID = 2
    RECORDS_SIZE = True

    def __init__(
        self,
        write_mode: str = "raw",
        max_resolution: int | None = None,
        smart_threshold: int | None = None,
        jpeg_quality: int = 90,
        compress_probability: float = 0.5,
        min_resolution: int | None = None,
        restart_markers: bool = True,
    ) -> None:
        if write_mode not in WRITE_MODES:
            raise ValueError(f"write_mode must be one of {WRITE_MODES}, got {write_mode!r}")
        check_resolutions(max_resolution, min_resolution)
        jpeg_quality = whole_number(jpeg_quality, "jpeg_quality")
        if not 0 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [0, 100], got {jpeg_quality}")
        if not 0 <= compress_probability <= 1:
            raise ValueError(f"compress_probability must be in [0, 1], got {compress_probability}")
        self.write_mode = write_mode
        self.max_resolution = max_resolution
        self.min_resolution = min_resolution
        self.smart_threshold = smart_threshold
        self.jpeg_quality = jpeg_quality
        self.compress_probability = compress_probability
        self.restart_markers = bool(restart_markers)

    @property
    def proportion(self) -> float:
        """``compress_probability``, under FFCV's attribute name."""
        return self.compress_probability

    @proportion.setter
    def proportion(self, value: float) -> None:
        self.compress_probability = value

    @property
    def metadata_type(self) -> np.dtype:
        return RGB_METADATA

    @staticmethod
    def from_binary(binary: np.ndarray) -> Field:
        return RGBImageField()

    def to_binary(self) -> np.ndarray:
        return empty_arguments()

    def _prepare(self, image: Any) -> np.ndarray:
        """The pixels to store: converted to RGB and shrunk to the size limits."""
        # the (height, width) given (the pixels may come smaller), and to store
        source = target = None
        span = None  # what the pixels of a JPEG decoded at a reduced scale stand for
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
            min_height = min_width = 0
            jpeg, pillow = data[:2] == b"\xff\xd8", False
            if jpeg:
                try:
                    height, width, _, sampling = jpeg_header(data, "cannot read JPEG header")
                except DecodeError as exc:
                    if not unnamed_sampling(exc):
                        raise
                    jpeg, pillow = False, True  # read whole through Pillow, as a PNG is
            if jpeg:
                source = (height, width)
                # the size follows from the original, whatever scale it is decoded at
                target = target_size(source[0], source[1], self.max_resolution,
                                     self.min_resolution)
                if (target != source and min(source) >= SCALED_DECODE_MIN_SIDE
                        and sampling in SCALED_DECODE_SAMPLINGS
                        and jpeg_frame(data) in SCALED_DECODE_FRAMES):
                    # DCT-domain scaling down to twice the target, area averaging
                    # for the rest: fast, and as sharp as area averaging alone
                    min_height, min_width = 2 * target[0], 2 * target[1]
                # at simplejpeg's scale: the smallest m/8 that keeps the minimum size
                check_decoded_pixels(source[0], source[1], next(
                    (m for m in range(1, 8) if scaled_side(source[0], m) >= min_height
                     and scaled_side(source[1], m) >= min_width), 8) if min_height else 8)
            image = decode_image_file(data, min_height, min_width, pillow)
            if source is not None and image.shape[:2] != source:  # a reduced DCT scale
                span = dct_span(source, image.shape[:2])
                if span is None:  # which scale is not known from the sizes: decode it whole
                    check_decoded_pixels(source[0], source[1])
                    image = decode_image_file(data)
        image = to_rgb_array(image)
        if source is None or target is None:
            source = image.shape[:2]
            target = target_size(source[0], source[1], self.max_resolution,
                                 self.min_resolution)
        if max(target) > MAX_SIDE:
            raise EncodeError(
                f"image of {target[0]}×{target[1]} exceeds the format's {MAX_SIDE} px limit; "
                "set max_resolution"
            )
        record_size(source, target)
        return resize_area(image, *target, span=span)

    def _compress(self, nbytes: int) -> bool:
        """Whether to store an image of *nbytes* raw bytes as JPEG (draws from the
        sample's generator in mode 'proportion': call once per sample)."""
        if self.write_mode == "jpg":
            return True
        if self.write_mode == "smart":
            return self.smart_threshold is not None and nbytes > self.smart_threshold
        if self.write_mode == "proportion":
            return bool(sample_rng().random() < self.compress_probability)
        return False

    def _transcode(self, field: Any) -> tuple[int, int, bytes] | None:
        """A source JPEG stored as JPEG without leaving YCbCr (``shrink_jpeg``: 6%
        fewer instructions than decoding to RGB, shrinking and encoding that):
        its stored (height, width) and bytes. None where that path does not
        apply (no libjpeg-turbo in this build, pixels stored raw, the random
        'proportion' mode, another input, a JPEG it does not take): the caller
        takes the RGB path, which reports what is wrong with the input."""
        if (_region is None or self.write_mode not in ("jpg", "smart")
                or not isinstance(field, (bytes, bytearray, memoryview))):
            return None
        data = memoryview(field)
        if not data.c_contiguous:  # the RGB path copies it
            return None
        data = data.cast("B")
        if bytes(data[:2]) != b"\xff\xd8":
            return None
        try:
            h, w, _, _ = jpeg_header(data, "")
        except DecodeError:
            return None
        height, width = target_size(h, w, self.max_resolution, self.min_resolution)
        if max(height, width) > JPEG_MAX_SIDE or not self._compress(height * width * 3):
            return None
        scale = source_scale(h, w, height, width)
        if not decodes_within_limit(h, w, scale):
            return None  # the RGB path decodes at finer scales (5/8 …), and refuses it there
        with _WRITER_SCRATCH.lend() as scratch:
            payload = _region.shrink_jpeg(scratch.jpeg, data, height, width, scale,
                                          self.jpeg_quality, 1 if self.restart_markers else 0,
                                          scratch.workspace)
        if payload is None:
            return None
        record_size((h, w), (height, width))
        return height, width, payload

    def encode(self, destination: np.ndarray, field: Any, malloc: Malloc) -> None:
        transcoded = self._transcode(field)
        if transcoded is not None:
            height, width, data = transcoded
            payload = np.frombuffer(data, np.uint8)
            destination["mode"] = IMAGE_MODES["jpg"]
        else:
            image = self._prepare(field)
            height, width = image.shape[:2]
            if self._compress(image.nbytes):
                payload = encode_jpeg(image, self.jpeg_quality, self.restart_markers)
                destination["mode"] = IMAGE_MODES["jpg"]
            else:
                payload = image.reshape(-1)
                destination["mode"] = IMAGE_MODES["raw"]
        destination["height"], destination["width"] = height, width
        destination["data_ptr"], buffer = malloc(payload.size)
        buffer[:] = payload

    def get_decoder_class(self) -> type:
        return SimpleRGBImageDecoder

    def read(self, row: np.void, read_payload: PayloadReader, fastdct: bool = True) -> np.ndarray:
        data = read_payload(int(row["data_ptr"]))
        return decode_stored_image(data, int(row["mode"]), int(row["height"]), int(row["width"]),
                                   fastdct=fastdct)

    def payload_pointers(self, column: np.ndarray) -> np.ndarray:
        return column["data_ptr"]


def decode_stored_image(
    data: memoryview, mode: int, height: int, width: int, fastdct: bool = True,
    buffer: np.ndarray | None = None,
) -> np.ndarray:
    """Decode one stored image payload to an H×W×3 uint8 array.

    ``fastdct=True`` reproduces FFCV's pixels exactly (libjpeg-turbo's fast
    integer IDCT). The result is an array of its own, unless a scratch
    *buffer* (at least H·W·3 bytes) is given: then a JPEG is decoded into it
    and raw pixels come back as a view of *data*, both valid until the next use.
    """
    if mode == IMAGE_MODES["raw"]:
        if len(data) < height * width * 3:
            raise DecodeError(
                f"raw image payload of {len(data)} bytes is short of {height}×{width}×3"
            )
        pixels = np.frombuffer(data, np.uint8, height * width * 3).reshape(height, width, 3)
        return pixels if buffer is not None else pixels.copy()
    if mode != IMAGE_MODES["jpg"]:
        raise DecodeError(f"unknown image mode {mode}")
    if buffer is None:  # (a decoder's scratch was sized from the checked header)
        check_jpeg_size(data, height, width)  # before a damaged header's 65535² is decoded
    sj = require_simplejpeg()
    try:
        image = sj.decode_jpeg(data, colorspace="RGB", fastdct=fastdct, buffer=buffer)
    except ValueError as exc:
        raise DecodeError(f"corrupt JPEG payload: {exc}") from exc
    if image.shape[:2] != (height, width):
        raise DecodeError(
            f"JPEG is {image.shape[0]}×{image.shape[1]}, the metadata says {height}×{width}"
        )
    return image


def check_jpeg_size(data: Any, height: int, width: int) -> None:
    """Raise DecodeError unless the JPEG *data*'s header says ``height × width``."""
    h, w, _, _ = jpeg_header(data, "corrupt JPEG payload")
    if (h, w) != (height, width):
        raise DecodeError(f"JPEG is {h}×{w}, the metadata says {height}×{width}")


# -- decoders ---------------------------------------------------------------------


class _Scratch:
    """A decode buffer (grown to the largest image), a resize workspace and, in
    builds with region decoding, a libjpeg decoder (made on first use)."""

    def __init__(self) -> None:
        self.buffer = np.empty(0, np.uint8)
        self.workspace = Workspace()
        self._jpeg: Any = None

    @property
    def jpeg(self) -> Any:
        """This scratch's ``JpegDecoder`` (region decoding builds only)."""
        if self._jpeg is None:
            self._jpeg = _region.JpegDecoder()
        return self._jpeg

    def get(self, nbytes: int) -> np.ndarray:
        if self.buffer.size < nbytes:
            self.buffer = np.empty(nbytes, np.uint8)
        return self.buffer


class _ScratchPool:
    """Scratch lent to one range at a time, and kept for the next.

    Owned by the decoder, not by a thread: the loader's threads change every
    epoch, and scratch made anew would be faulted in anew.
    """

    def __init__(self) -> None:
        self._free: list[_Scratch] = []
        self._lock = threading.Lock()
        # a crop decoder's FFCV hook, resolved and compiled once per loader and
        # process (``ResizedCropRGBImageDecoder._crop_hook``)
        self.crop_hook: tuple[Any, bool] | None = None
        self.crop_hook_known = False
        self.crop_hook_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {}  # scratch is per process: a copy starts empty

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def __deepcopy__(self, memo: dict[int, Any]) -> _ScratchPool:
        return _ScratchPool()

    @contextmanager
    def lend(self) -> Iterator[_Scratch]:
        with self._lock:
            scratch = self._free.pop() if self._free else _Scratch()
        try:
            yield scratch
        finally:
            with self._lock:
                self._free.append(scratch)


_WRITER_SCRATCH = _ScratchPool()
"""The writer's scratch for ``RGBImageField._transcode`` (each writer worker's own)."""


class _ImageDecoder(Decoder):
    parallel = True

    @classmethod
    def field_types(cls) -> tuple[type, ...]:
        return (RGBImageField,)

    def __init__(self, fastdct: bool = True) -> None:
        super().__init__()
        # libjpeg-turbo's fast IDCT: FFCV's exact pixels, and faster
        self.fastdct = fastdct
        self._scratch = _ScratchPool()

    def runtime_copy(self, previous: Decoder | None = None) -> Decoder:
        clone = super().runtime_copy(previous)
        # scratch is kept from epoch to epoch (made anew it would be faulted in anew),
        # but never shared with the user's object or another loader
        pool = getattr(previous, "_scratch", None)
        clone._scratch = pool if isinstance(pool, _ScratchPool) else _ScratchPool()  # type: ignore[attr-defined]
        return clone

    def _modes_and_sizes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        meta = self.metadata
        return meta["mode"], meta["height"].astype(np.int64), meta["width"].astype(np.int64)

    def _image(self, context: BatchContext, position: int, scratch: _Scratch) -> np.ndarray:
        """Sample *position*'s full image: decoded into *scratch*, or a view of
        the stored raw pixels."""
        row = self.metadata[int(context.indices[position])]
        source, offsets, sizes = context.data.field(self.field_index)
        return self._decode(memoryview(source), int(offsets[position]), int(sizes[position]),
                            int(row["mode"]), int(row["height"]), int(row["width"]), scratch)

    def _decode(self, source: memoryview, start: int, size: int, mode: int, height: int,
                width: int, scratch: _Scratch) -> np.ndarray:
        data = source[start : start + size]
        if mode == IMAGE_MODES["jpg"] and height * width * 3 > scratch.buffer.size:
            check_jpeg_size(data, height, width)
        return decode_stored_image(data, mode, height, width, self.fastdct,
                                   scratch.get(height * width * 3))

    def _jpeg_buffer(self, scratch: _Scratch, context: BatchContext, lo: int,
                     source: Any, offsets: np.ndarray, sizes: np.ndarray,
                     need: np.ndarray) -> np.ndarray:
        """Scratch for the JPEGs of positions ``lo…``, whose metadata says they need
        *need* bytes each (0 for raw ones). It grows only to a size the JPEGs' own
        headers confirm: a damaged height or width in the metadata never sizes a
        buffer (the file's checks cannot read every JPEG when it is opened)."""
        largest = int(need.max()) if need.size else 0
        if largest > scratch.buffer.size:
            payloads = memoryview(source).cast("B")
            for k in np.flatnonzero(need > scratch.buffer.size).tolist():
                start = int(offsets[k])
                rows = self.metadata[int(context.indices[lo + k])]
                try:
                    check_jpeg_size(payloads[start : start + int(sizes[k])],
                                    int(rows["height"]), int(rows["width"]))
                except DecodeError as exc:
                    raise self.fail(exc, context, lo + k) from exc.__cause__
        return scratch.get(largest)


class SimpleRGBImageDecoder(_ImageDecoder):
    """Decode images that all have the same size: ``(B, H, W, 3)`` uint8.

    Raises TypeError when the field's images differ in size: crop them with
    ``RandomResizedCropRGBImageDecoder`` or ``CenterCropRGBImageDecoder``.
    """

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        _, heights, widths = self._modes_and_sizes()
        if heights.size and (heights.min() != heights.max() or widths.min() != widths.max()):
            raise TypeError(
                f"{self.fname}: field {self.field_name!r} holds images of different sizes "
                f"(heights {heights.min()}-{heights.max()}, widths {widths.min()}-"
                f"{widths.max()}); SimpleRGBImageDecoder needs one size: use "
                "RandomResizedCropRGBImageDecoder or CenterCropRGBImageDecoder"
            )
        shape = (int(heights[0]), int(widths[0]), 3) if heights.size else (1, 1, 3)
        return State(jit_mode=True, shape=shape, dtype=np.dtype("u1"),
                     channels_first=False), AllocationQuery(
            shape, np.dtype("u1"))

    _raw_field: tuple[Any, bool] | None = None

    def runtime_copy(self, previous: Decoder | None = None) -> Decoder:
        clone = super().runtime_copy(previous)
        clone.__dict__.pop("_raw_field", None)
        return clone

    def _all_raw(self, indices: np.ndarray) -> bool:
        """Whether the samples at *indices* are all stored raw (at once when the
        whole field is: known once per metadata, not looked up per batch)."""
        meta = self.metadata
        cached = self._raw_field
        if cached is None or cached[0] is not meta:
            cached = self._raw_field = (meta, bool((meta["mode"] == IMAGE_MODES["raw"]).all()))
        return cached[1] or bool((meta["mode"][indices] == IMAGE_MODES["raw"]).all())

    def split_batch(self, context: BatchContext) -> bool:
        # raw pixels only: one compiled gather, cheaper than handing out ranges
        return not self._all_raw(context.indices)

    def decode_range(self, lo: int, hi: int, destination: np.ndarray,
                     context: BatchContext) -> None:
        if self._all_raw(context.indices[lo:hi]):
            # raw pixels of one size: one memcpy per sample, in one compiled call
            source, offsets, sizes = context.data.field(self.field_index)
            rows = destination[lo:hi].reshape(hi - lo, -1)
            short = np.flatnonzero(sizes[lo:hi] < rows.shape[1])
            if short.size:
                exc = DecodeError(f"raw image payload of {int(sizes[lo + short[0]])} bytes is "
                                  f"short of {destination.shape[1:]}")
                raise self.fail(exc, context, lo + int(short[0]))
            context.gather_into(source, offsets[lo:hi], np.minimum(sizes[lo:hi], rows.shape[1]),
                                rows)
            return
        with self._scratch.lend() as scratch:
            for position in range(lo, hi):
                context.note_sample(position)
                try:
                    destination[position] = self._image(context, position, scratch)
                except Exception as exc:
                    raise self.fail(exc, context, position) from exc.__cause__
        context.note_no_sample()


class ResizedCropRGBImageDecoder(_ImageDecoder):
    """Base of the decoders that crop each image and resize the crop to ``output_size``.

    ``output_size`` (height, width) may be changed between epochs (progressive
    resizing): the loader re-reads it when an epoch starts. Each sample's crop,
    size and flip are its geometry, which masks and boxes can follow
    (``fastforward.pipeline.geometry``).
    """

    publishes_geometry = True

    def __init__(self, output_size: tuple[int, int], fastdct: bool = True) -> None:
        super().__init__(fastdct)
        self.output_size = output_size
        # (dtype, scale, bias) when the planner fused a conversion into this decoder
        self.fused_output: tuple[np.dtype, Any, Any] | None = None
        # (flip probability, random stream) of a RandomHorizontalFlip fused into it
        self.fused_flip: tuple[float, int] | None = None

    def fuse(self, transforms: Sequence[Operation], rng_streams: Sequence[int],
             previous_state: State | None = None) -> list[int]:
        """Mirror while resizing (a ``RandomHorizontalFlip`` right after the decoder,
        with its own random stream: the same decisions), and write float16/float32,
        normalised or not, when the pipeline goes on with operations that pass the
        values through (``ToTensor``, ``ToTorchImage()``, ``ToDevice('cpu')``) and
        then ``Convert`` or ``NormalizeImage``: one pass instead of three. A fused
        normalisation may differ from the separate one in the last bit.
        """
        from ..transforms import RandomHorizontalFlip

        self.fused_flip = self.fused_output = None
        taken: list[int] = []
        position = 0
        if transforms and type(transforms[0]) is RandomHorizontalFlip:
            self.fused_flip = (float(transforms[0].flip_prob), rng_streams[0])
            taken.append(0)
            position = 1
        for k in range(position, len(transforms)):
            op = transforms[k]
            if op.passes_through:
                continue
            affine = op.pixel_affine()
            if affine is not None and (affine[1] is None or len(affine[1]) == self.channels):
                self.fused_output = affine
                taken.append(k)
            break
        return taken

    @property
    def channels(self) -> int:
        """The channels of the images it writes: a normalisation is fused only with
        one value per channel."""
        return 3

    def flips(self, context: BatchContext, lo: int, hi: int) -> np.ndarray:
        """Whether samples ``lo:hi`` are mirrored (a fused flip's decisions), as uint8."""
        if self.fused_flip is None:
            return np.zeros(hi - lo, np.uint8)
        probability, stream = self.fused_flip
        u = random.uniform(context.seed, context.epoch, context.indices[lo:hi], stream, 1)
        return (u[:, 0] < probability).astype(np.uint8)

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        height, width = size_pair(self.output_size)
        shape = (height, width, 3)
        dtype = np.dtype("u1") if self.fused_output is None else self.fused_output[0]
        return (State(jit_mode=True, shape=shape, dtype=dtype, channels_first=False),
                AllocationQuery(shape, dtype))

    def crop(self, height: int, width: int, u: np.ndarray | None) -> tuple[int, int, int, int]:
        """The ``(i, j, h, w)`` window of a ``height × width`` image to keep."""
        raise NotImplementedError(
            f"{type(self).__name__} says no crop: a subclass of ResizedCropRGBImageDecoder "
            "defines crops() (vectorised) or crop(), or FFCV's get_crop_generator")

    def _crop_hook(self) -> tuple[Any, bool] | None:
        """FFCV's hook: ``(function, compiled)`` for a subclass (written for FFCV)
        whose ``get_crop_generator`` property gives ``f(height, width, scale, ratio)
        -> (i, j, h, w)``, asked for and compiled once per loader and process (as
        FFCV does when it generates the pipeline's code); None for fastforward's
        own classes and their ``crops()``."""
        pool = self._scratch
        with pool.crop_hook_lock:
            if not pool.crop_hook_known:
                for cls in type(self).__mro__:
                    if cls.__module__.split(".", 1)[0] == "fastforward":
                        break
                    if "get_crop_generator" in vars(cls):
                        pool.crop_hook = hook_function(
                            self.get_crop_generator)  # type: ignore[attr-defined]
                        break
                pool.crop_hook_known = True
            return pool.crop_hook

    def _generated_crops(self, hook: tuple[Any, bool], heights: np.ndarray,
                         widths: np.ndarray, context: BatchContext, lo: int) -> np.ndarray:
        """The crops of *hook* (``_crop_hook``), called per sample as FFCV calls it,
        with ``(self.scale, self.ratio)``, its ``np.random`` seeded from
        ``(seed, epoch, sample, stream)``: numba's where it is compiled, the global
        generators (``random.globals_session``: where they are the loader's) where not."""
        function, compiled = hook
        scale, ratio = (np.array(v) if isinstance(v, tuple) else v
                        for v in (getattr(self, "scale", None), getattr(self, "ratio", None)))
        count = len(heights)
        seeds = random.global_seeds(context.seed, context.epoch,
                                    context.indices[lo:lo + count], context.stream)
        rows = np.empty((count, 4), np.int64)
        # a compiled function draws from numba's per-thread generator: the global
        # ones (their lock, their saved states) are only a Python function's
        with contextlib.nullcontext(seed_numba) if compiled else random.globals_session() \
                as reseed:
            for k in range(count):
                reseed(seeds[k])
                try:
                    rows[k] = function(np.uint32(heights[k]), np.uint32(widths[k]), scale, ratio)
                except Exception as exc:
                    raise self.fail(annotate(exc, f"{type(self).__name__}.get_crop_generator"),
                                    context, lo + k) from exc.__cause__
        return rows

    def crops(self, heights: np.ndarray, widths: np.ndarray, u: np.ndarray | None) -> np.ndarray:
        """``crop`` for many images: ``(n, 4)`` int64 rows (override it vectorised)."""
        rows = [self.crop(int(h), int(w), None if u is None else u[k])
                for k, (h, w) in enumerate(zip(heights, widths, strict=True))]
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), 4)

    def uniforms(self, context: BatchContext) -> np.ndarray | None:
        """Per-sample random numbers for ``crop`` (None: the crop is not random)."""
        return None

    def decode_range(self, lo: int, hi: int, destination: np.ndarray,
                     context: BatchContext) -> None:
        u = self.uniforms(context)
        flips = self.flips(context, lo, hi)
        scale = bias = None
        if self.fused_output is not None:
            _, scale, bias = self.fused_output
        rows = self.metadata[context.indices[lo:hi]]
        modes = rows["mode"]
        unknown = np.flatnonzero((modes != IMAGE_MODES["jpg"]) & (modes != IMAGE_MODES["raw"]))
        if unknown.size:
            position = lo + int(unknown[0])
            raise self.fail(DecodeError(f"unknown image mode {int(modes[unknown[0]])}"),
                            context, position)
        heights, widths = rows["height"].astype(np.int64), rows["width"].astype(np.int64)
        hook = self._crop_hook()
        if hook is not None:
            crops = self._generated_crops(hook, heights, widths, context, lo)
            chose = "get_crop_generator"
        else:
            crops = np.ascontiguousarray(
                self.crops(heights, widths, None if u is None else u[lo:hi]), dtype=np.int64)
            chose = "crops()"
        i, j, h, w = crops.T
        outside = np.flatnonzero((i < 0) | (j < 0) | (h < 1) | (w < 1) | (i + h > heights)
                                 | (j + w > widths))
        if outside.size:  # a subclass's crops() (the built-in ones always fit)
            k = int(outside[0])
            raise self.fail(ValueError(f"{type(self).__name__}.{chose} gave the window "
                                       f"{crops[k].tolist()} (top, left, height, width), "
                                       f"outside the {heights[k]}x{widths[k]} image"),
                            context, lo + k)
        if context.geometry_out is not None:  # masks or boxes follow this image
            geometry.fill(context.geometry_out[lo:hi], heights, widths, crops,
                          destination.shape[1], destination.shape[2], flips)
        source, offsets, sizes = context.data.field(self.field_index)
        raw = (modes == IMAGE_MODES["raw"]).view(np.uint8)
        if _region is not None:
            # decode only each crop's region, crop and resize: the whole range without the GIL
            with self._scratch.lend() as scratch:
                try:
                    failed = _region.decode_crop_resize_range(
                        scratch.jpeg, source, np.ascontiguousarray(offsets[lo:hi], np.uint64),
                        np.ascontiguousarray(sizes[lo:hi], np.uint64), raw, heights, widths,
                        crops, flips, destination[lo:hi], scale, bias, scratch.workspace,
                        self.fastdct, progress=context.progress,
                        samples=context.samples(lo, hi))
                except MemoryError as exc:  # libjpeg's allocation, for sample exc.sample
                    at = getattr(exc, "sample", None)
                    if at is None:
                        raise
                    stored = f"{int(heights[at])}×{int(widths[at])}"
                    raise self.fail(MemoryError(f"no memory to decode its JPEG ({stored})"),
                                    context, lo + at) from None
            if failed is not None:
                k, message = failed
                raise self.fail(DecodeError(message), context, lo + k)
            return
        with self._scratch.lend() as scratch:
            jpeg = modes == IMAGE_MODES["jpg"]
            buffer = self._jpeg_buffer(scratch, context, lo, source, offsets[lo:hi],
                                       sizes[lo:hi], np.where(jpeg, heights * widths * 3, 0))
            decode_crop_resize_range(
                require_simplejpeg().decode_jpeg, self.fastdct, buffer, source,
                offsets[lo:hi].astype(np.int64), sizes[lo:hi].astype(np.int64),
                raw, heights, widths, crops, flips,
                destination[lo:hi], scale, bias, scratch.workspace,
                lambda exc, k: self.fail(exc, context, lo + k), progress=context.progress,
                samples=context.samples(lo, hi))


class RandomResizedCropRGBImageDecoder(ResizedCropRGBImageDecoder):
    """Decode, take a random crop (torchvision's sampler) and resize it: ``(B, h, w, 3)``.

    The crop of each sample is a function of ``(seed, epoch, sample index)``.
    """

    def __init__(self, output_size: tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), fastdct: bool = True) -> None:
        super().__init__(output_size, fastdct)
        check_random_crop(type(self).__name__, scale, ratio)
        self.scale = scale
        self.ratio = ratio

    def uniforms(self, context: BatchContext) -> np.ndarray:
        return context.uniform(RANDOM_CROP_UNIFORMS)

    def crop(self, height: int, width: int, u: np.ndarray | None) -> tuple[int, int, int, int]:
        assert u is not None
        return get_random_crop(height, width, self.scale, self.ratio, u)

    def crops(self, heights: np.ndarray, widths: np.ndarray, u: np.ndarray | None) -> np.ndarray:
        assert u is not None
        return random_crops(heights, widths, self.scale, self.ratio, u)


class CenterCropRGBImageDecoder(ResizedCropRGBImageDecoder):
    """Decode, take the centred square of side ``ratio · min(H, W)``, resize: ``(B, h, w, 3)``."""

    def __init__(self, output_size: tuple[int, int], ratio: float, fastdct: bool = True) -> None:
        super().__init__(output_size, fastdct)
        check_center_ratio(type(self).__name__, ratio)
        self.ratio = ratio
        self.scale = None  # FFCV's attribute: a centre crop has no scale range

    def crop(self, height: int, width: int, u: np.ndarray | None) -> tuple[int, int, int, int]:
        return get_center_crop(height, width, self.ratio)

    def crops(self, heights: np.ndarray, widths: np.ndarray, u: np.ndarray | None) -> np.ndarray:
        return center_crops(heights, widths, self.ratio)


def encode_jpeg(numpy_image: np.ndarray, quality: int,
                restart_markers: bool = True) -> np.ndarray:
    """FFCV's helper: an H×W×3 uint8 RGB image as JPEG bytes (a uint8 array), encoded
    as the writer does: baseline, 4:2:0, and, where libjpeg-turbo is linked in,
    libjpeg's encoder with (*restart_markers*) a restart marker at each MCU row
    (16 pixel rows), so that the crop decoders start decoding at the marker above
    a crop (see docs/performance.md). Any JPEG decoder reads these files; without
    libjpeg-turbo, simplejpeg encodes (no markers)."""
    image = np.ascontiguousarray(to_rgb_array(numpy_image))
    if _region is not None:
        data = _region.encode_rgb(image, int(quality), "420", 1 if restart_markers else 0)
    else:
        data = require_simplejpeg().encode_jpeg(image, quality=int(quality), colorspace="RGB",
                                                colorsubsampling="420")
    return np.frombuffer(data, np.uint8)


def resizer(image: np.ndarray, target_resolution: int | None) -> np.ndarray:
    """FFCV's helper: *image* shrunk (area averaging) so that its longer side is at
    most *target_resolution*; never enlarged (None: unchanged)."""
    height, width = target_size(image.shape[0], image.shape[1], target_resolution, None)
    return resize_area(image, height, width)

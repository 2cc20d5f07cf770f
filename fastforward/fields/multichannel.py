"""Images of 1 to 16 channels of uint8 or uint16 values: 4-band satellite tiles,
16-bit medical slices, RGB plus depth or infrared.

``MultiChannelImageField`` stores each image losslessly, raw or as a zstd frame
(a tagged field, ``fastforward.fields.tagged``; the payload is
``fastforward.fields.planes``': height, width, then the H·W·C values), shrunk
by area averaging to ``max_resolution`` as ``RGBImageField`` shrinks. Its
decoders give ``(B, H, W, C)`` batches of the field's type:

- ``SimpleMultiChannelImageDecoder``: images that all have one size, as stored;
- ``RandomResizedCropMultiChannelImageDecoder`` and
  ``CenterCropMultiChannelImageDecoder``: the RGB crop decoders' crops (the
  same draws from the same seed), resized by area averaging or linear
  interpolation, a ``RandomHorizontalFlip`` right after them mirrored while
  resizing, and a ``Convert`` or ``NormalizeImage`` written straight into
  float16/float32 (``Decoder.fuse``). They publish their geometry: masks and
  boxes follow them as they follow the RGB crop decoders.

Every range of samples is decoded in one compiled call without the GIL
(``fastforward._ext.planes``).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from .._ext.planes import decode_resize_range, read_sizes
from ..errors import DecodeError, EncodeError
from ..pipeline import geometry
from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.decoder import Decoder
from ..pipeline.operation import BatchContext
from ..pipeline.state import State
from ..utils import size_pair
from .base import record_size
from .planes import (
    MAX_SIDE,
    PLANES_DTYPES,
    PLANES_HEADER,
    ScratchPool,
    as_array,
    check_storage,
    fit_integers,
    pack,
    ranges,
    require_zstd,
    stored_dtype,
    unpack,
)
from .rgb_image import (
    CenterCropRGBImageDecoder,
    RandomResizedCropRGBImageDecoder,
    resize_area,
    target_size,
)
from .tagged import TaggedField

CHANNEL_DTYPES = PLANES_DTYPES
MAX_CHANNELS = 16


PALETTE_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
"""What a palette image becomes for a field of so many channels."""


def image_values(image: Any, channels: int) -> np.ndarray:
    """The pixel values of a PIL image for a field of *channels* channels: a 1-bit
    image's are 0 and 255 (its array's are False and True); a palette image's are
    its colours, not its indices: RGB for 3 channels (its transparency dropped, as
    ``RGBImageField`` drops it), RGBA for 4, and for 1 or 2 its gray levels (with
    its alpha for 2) where its colours are gray, refused where they are not (a
    premultiplied ``La`` or ``RGBa`` image is unpremultiplied, as ``RGBImageField``
    does)."""
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("La", "RGBa"):
        image = image.convert(image.mode.upper())
    elif image.mode in ("P", "PA"):
        target = PALETTE_MODES.get(channels, "RGB")
        if target in ("L", "LA"):
            colours = np.asarray(image.convert("RGB"))
            if not (colours == colours[:, :, :1]).all():
                raise EncodeError(f"a palette image of colours for a {channels}-channel "
                                  "field: convert it to the values you want first "
                                  "(image.convert('L') for its luminance)")
        image = image.convert(target)
    return np.asarray(image)


def to_channels_array(value: Any, channels: int, dtype: np.dtype) -> np.ndarray:
    """*value* as a C-contiguous ``H × W × channels`` array of *dtype*.

    Accepts arrays (``H × W`` when *channels* is 1), PIL images and the bytes
    of an image file (16-bit PNG or TIFF and the like, through Pillow), as
    ``image_values`` reads them for *channels*. Integer values that do not fit *dtype* are
    refused, and so are other kinds (bool among them).
    """
    value = as_array(value, "image", "an H×W×C array",
                     functools.partial(image_values, channels=channels))
    if value.dtype == bool:  # (as RGBImageField: no image's pixels; a 1-bit image's are)
        raise EncodeError("expected integer values, got bool (a 1-bit image's pixels are "
                          "0 and 255: value.astype(np.uint8) * 255)")
    if value.ndim == 2 and channels == 1:
        value = value[:, :, None]
    if value.ndim != 3 or value.shape[2] != channels:
        raise EncodeError(f"expected an H×W×{channels} image, got shape {value.shape}")
    if min(value.shape[:2]) < 1:
        raise EncodeError(f"empty image of shape {value.shape}")
    return fit_integers(value, dtype, "values")


class MultiChannelImageField(TaggedField):
    """An image of 1 to 16 channels per sample, uint8 or uint16, stored losslessly.

    Args:
        channels: the channels of every image (1 to 16).
        dtype: ``np.uint8`` or ``np.uint16``.
        compression: None (default: the values as they are, decoded for free)
            or ``'zstd'`` (smaller files; decompressed while loading, without
            the GIL).
        compression_level: zstd's level (1-22).
        max_resolution: shrink (area averaging) so the longer side is at most this.
        min_resolution: shrink so the shorter side is at most this (not with
            ``max_resolution``).

    Values are arrays ``H × W × channels`` (``H × W`` for one channel) of
    integers that fit *dtype*, PIL images, or the bytes of image files Pillow
    reads. FFCV 1.0.2 opens the field as a ``BytesField`` (see
    ``docs/detection-and-segmentation.md``).
    """

    RECORDS_SIZE = True

    def __init__(self, channels: int, dtype: Any = np.uint8, compression: str | None = None,
                 compression_level: int = 3, max_resolution: int | None = None,
                 min_resolution: int | None = None) -> None:
        if not 1 <= int(channels) <= MAX_CHANNELS:
            raise ValueError(f"channels must be in [1, {MAX_CHANNELS}], got {channels}")
        self.dtype = stored_dtype(dtype, "images")
        check_storage(compression, compression_level, max_resolution, min_resolution)
        self.channels = int(channels)
        self.compression = compression
        self.compression_level = int(compression_level)
        self.max_resolution = max_resolution
        self.min_resolution = min_resolution

    def __repr__(self) -> str:
        return (f"MultiChannelImageField({self.channels}, {self.dtype}, "
                f"compression={self.compression!r})")

    def arguments(self) -> dict[str, Any]:
        return {"channels": self.channels, "dtype": self.dtype.str,
                "compression": self.compression, "compression_level": self.compression_level,
                "max_resolution": self.max_resolution, "min_resolution": self.min_resolution}

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> MultiChannelImageField:
        return cls(int(arguments["channels"]), np.dtype(arguments["dtype"]),
                   arguments["compression"], int(arguments.get("compression_level", 3)),
                   arguments.get("max_resolution"), arguments.get("min_resolution"))

    def payload(self, value: Any) -> np.ndarray:
        image = to_channels_array(value, self.channels, self.dtype)
        source = image.shape[:2]
        height, width = target_size(source[0], source[1], self.max_resolution,
                                    self.min_resolution)
        if max(height, width) > MAX_SIDE:
            raise EncodeError(f"image of {height}×{width} exceeds {MAX_SIDE} px; set "
                              "max_resolution")
        record_size(source, (height, width))
        return pack(resize_area(image, height, width), self.compression,
                    self.compression_level)

    def unpack(self, data: Any) -> np.ndarray:
        """The ``H × W × C`` values of one payload (read-only, maybe a view of *data*)."""
        return unpack(data, self.dtype, self.channels, self.compression, "image")

    def decode(self, data: memoryview) -> np.ndarray:
        return self.unpack(data).copy()

    def get_decoder_class(self) -> type:
        return SimpleMultiChannelImageDecoder


class _Planes:
    """What the many-channel decoders share: the field, the scratch pool, and one
    range's payloads and stored sizes."""

    field: Any
    field_index: int
    _planes: ScratchPool

    @classmethod
    def field_types(cls) -> tuple[type, ...]:
        return (MultiChannelImageField,)

    def _field(self) -> MultiChannelImageField:
        if not isinstance(self.field, MultiChannelImageField):
            raise TypeError(f"{type(self).__name__} decodes a MultiChannelImageField, not a "
                            f"{type(self.field).__name__}")
        return self.field

    def _range(self, context: BatchContext, lo: int, hi: int
               ) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The range's source, starts, sizes and stored heights and widths."""
        source, starts, sizes = ranges(context, self.field_index, lo, hi)
        heights, widths = np.empty(hi - lo, np.int64), np.empty(hi - lo, np.int64)
        failed = read_sizes(source, starts, sizes, heights, widths)
        if failed is not None:
            raise self.fail(DecodeError(failed[1]), context, lo + failed[0])  # type: ignore[attr-defined]
        return source, starts, sizes, heights, widths

    def _decode_planes(self, context: BatchContext, lo: int,
                       parts: tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                       crops: np.ndarray, flips: np.ndarray, out: np.ndarray, scale: Any,
                       bias: Any) -> None:
        field = self._field()
        source, starts, sizes, heights, widths = parts
        with self._planes.lend() as scratch:
            failed = decode_resize_range(scratch.zstd, source, starts, sizes,
                                         field.compression == "zstd", field.dtype.itemsize,
                                         heights, widths, crops, flips, out, scale, bias,
                                         scratch.workspace, scratch.values,
                                         progress=context.progress,
                                         samples=context.samples(lo, lo + len(starts)))
        if failed is not None:
            raise self.fail(DecodeError(failed[1]), context, lo + failed[0])  # type: ignore[attr-defined]


def _keep_pool(clone: Decoder, previous: Decoder | None) -> Decoder:
    """*clone* with *previous*'s scratch pool (kept from epoch to epoch), or a new one."""
    pool = getattr(previous, "_planes", None)
    clone._planes = pool if isinstance(pool, ScratchPool) else ScratchPool()  # type: ignore[attr-defined]
    return clone


class SimpleMultiChannelImageDecoder(_Planes, Decoder):
    """Decode images that all have one size: ``(B, H, W, C)`` of the field's type.

    The size is the first sample's (read from its header when the loader is
    built: the metadata of a tagged field holds no sizes); an image of another
    size is a ``DecodeError`` naming the file, the sample and the field. Use a
    crop decoder for images of different sizes.
    """

    parallel = True  # one compiled call per range, without the GIL

    def __init__(self) -> None:
        super().__init__()
        self._planes = ScratchPool()

    def runtime_copy(self, previous: Decoder | None = None) -> Decoder:
        return _keep_pool(super().runtime_copy(previous), previous)

    def _first_size(self) -> tuple[int, int]:
        """The first sample's stored height and width (1×1 for an empty field)."""
        if not len(self.metadata):
            return 1, 1
        ptr = int(self.metadata["ptr"][0])
        frame_head = 18  # a zstd frame's header, where it says its content size
        if self.reader is not None:  # the file it opened: the name may name another by now
            header = os.pread(self.reader.fileno(), PLANES_HEADER.itemsize + frame_head, ptr)
        else:  # bound without the reader (a five-argument bind)
            with open(self.fname, "rb") as f:
                header = os.pread(f.fileno(), PLANES_HEADER.itemsize + frame_head, ptr)
        stored: int | None = int(self.metadata["size"][0]) - PLANES_HEADER.itemsize
        if len(header) < PLANES_HEADER.itemsize or stored is None or stored < 0:
            raise DecodeError(f"{self.fname}: sample 0, field {self.field_name!r}: payload "
                              "shorter than its header")
        row = np.frombuffer(header[: PLANES_HEADER.itemsize], PLANES_HEADER)[0]
        height, width = int(row["height"]), int(row["width"])
        field = self._field()
        need = height * width * field.channels * field.dtype.itemsize
        if field.compression is not None:  # what the frame says it holds (None: unsaid)
            stored = _frame_content_size(header[PLANES_HEADER.itemsize :][:stored])
        # the batch is sized from this header: the payload must back it
        if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE) or (
                stored is not None and stored != need):
            raise DecodeError(f"{self.fname}: sample 0, field {self.field_name!r}: stored "
                              f"{height}×{width}, which its payload of {stored} bytes of "
                              "values does not hold")
        return height, width

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        field = self._field()
        shape = (*self._first_size(), field.channels)
        return (State(jit_mode=True, shape=shape, dtype=field.dtype, channels_first=False),
                AllocationQuery(shape, field.dtype))

    def decode_range(self, lo: int, hi: int, destination: np.ndarray,
                     context: BatchContext) -> None:
        parts = self._range(context, lo, hi)
        heights, widths = parts[3], parts[4]
        height, width = destination.shape[1:3]
        wrong = np.flatnonzero((heights != height) | (widths != width))
        if wrong.size:
            k = int(wrong[0])
            raise self.fail(DecodeError(
                f"image is {heights[k]}×{widths[k]}, the field's first is {height}×{width}: "
                "SimpleMultiChannelImageDecoder needs one size (crop with "
                "RandomResizedCropMultiChannelImageDecoder or "
                "CenterCropMultiChannelImageDecoder)"), context, lo + k)
        crops = np.zeros((hi - lo, 4), np.int64)
        crops[:, 2], crops[:, 3] = height, width
        self._decode_planes(context, lo, parts, crops, np.zeros(hi - lo, np.uint8),
                            destination[lo:hi], None, None)


def _frame_content_size(head: bytes) -> int | None:
    """The content size a zstd frame's header states (None: not stated, or damaged:
    decoding says which)."""
    try:
        size = require_zstd().get_frame_info(head).decompressed_size
    except Exception:  # zstd.ZstdError: not a frame header
        return None
    return None if size is None else int(size)


class _MultiChannelCrop(_Planes):
    """The many-channel forms of the RGB crop decoders (mixed in before them): their
    crops, flips and fusions, on the field's channels and values."""

    output_size: tuple[int, int]
    fused_output: tuple[np.dtype, Any, Any] | None
    fused_flip: tuple[float, int] | None

    def runtime_copy(self, previous: Decoder | None = None) -> Decoder:
        return _keep_pool(super().runtime_copy(previous), previous)  # type: ignore[misc]

    @property
    def channels(self) -> int:
        """The field's channels: the RGB decoders' fusions (a flip right after; a
        conversion, or a normalisation with one value per channel) apply to them."""
        return self._field().channels

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        field = self._field()
        height, width = size_pair(self.output_size)
        shape = (height, width, field.channels)
        dtype = field.dtype if self.fused_output is None else self.fused_output[0]
        return (State(jit_mode=True, shape=shape, dtype=dtype, channels_first=False),
                AllocationQuery(shape, dtype))

    def decode_range(self, lo: int, hi: int, destination: np.ndarray,
                     context: BatchContext) -> None:
        u = self.uniforms(context)  # type: ignore[attr-defined]
        flips = self.flips(context, lo, hi)  # type: ignore[attr-defined]
        parts = self._range(context, lo, hi)
        heights, widths = parts[3], parts[4]
        crops = np.ascontiguousarray(self.crops(heights, widths,  # type: ignore[attr-defined]
                                                None if u is None else u[lo:hi]), np.int64)
        if context.geometry_out is not None:  # masks or boxes follow this image
            geometry.fill(context.geometry_out[lo:hi], heights, widths, crops,
                          destination.shape[1], destination.shape[2], flips)
        scale = bias = None
        if self.fused_output is not None:
            _, scale, bias = self.fused_output
        self._decode_planes(context, lo, parts, crops, np.ascontiguousarray(flips, np.uint8),
                            destination[lo:hi], scale, bias)


class RandomResizedCropMultiChannelImageDecoder(_MultiChannelCrop,
                                                RandomResizedCropRGBImageDecoder):
    """Take a random crop (torchvision's sampler, as ``RandomResizedCropRGBImageDecoder``)
    of each many-channel image and resize it: ``(B, h, w, C)``.

    Args:
        output_size: ``(h, w)``.
        scale, ratio: the crop's area fraction and aspect-ratio ranges.
    """

    def __init__(self, output_size: tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        super().__init__(output_size, scale, ratio)
        self._planes = ScratchPool()

    def __repr__(self) -> str:
        return (f"RandomResizedCropMultiChannelImageDecoder({self.output_size}, "
                f"scale={self.scale}, ratio={self.ratio})")


class CenterCropMultiChannelImageDecoder(_MultiChannelCrop, CenterCropRGBImageDecoder):
    """Take the centred square of side ``ratio · min(H, W)`` of each many-channel image
    and resize it: ``(B, h, w, C)`` (as ``CenterCropRGBImageDecoder``)."""

    def __init__(self, output_size: tuple[int, int], ratio: float) -> None:
        super().__init__(output_size, ratio)
        self._planes = ScratchPool()

    def __repr__(self) -> str:
        return f"CenterCropMultiChannelImageDecoder({self.output_size}, ratio={self.ratio})"

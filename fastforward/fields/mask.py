"""Masks: one class or instance id per pixel (uint8 or uint16), stored losslessly.

Payload (a tagged field, ``fastforward.fields.tagged``; FFCV 1.0.2 opens it as
a ``BytesField`` and gets these bytes)::

    0    height, little-endian u4
    4    width, little-endian u4
    8    the H·W ids, C order, little-endian: a zstd frame (``compression='zstd'``,
         the default) or as they are (``compression=None``)

zstd because masks compress very well and it decodes fast: on segmentations of
scikit-image's photographs (500×375) it stored them in 4-9 KB where PNG took
6-10 KB, and decoded them in tens of µs where PNG (Pillow) took about 1 ms
(``python bench/mask_codecs.py``). Writing compresses with the standard
library's codec from Python 3.14 (``compression.zstd``) and ``backports.zstd``
before it; ``MaskDecoder`` decompresses with the zstd compiled into
``fastforward._ext.planes`` (the layout is ``fastforward.fields.planes``').

``MaskDecoder`` crops, resizes (nearest neighbour: ids are never blended) and
mirrors each mask exactly as its image's decoder did (``follows=``), a whole
range of samples in one compiled call without the GIL.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._ext.pixels import crop_nearest_into
from .._ext.planes import decode_nearest_range, read_sizes
from ..errors import DecodeError, EncodeError
from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.decoder import Decoder
from ..pipeline.operation import BatchContext
from ..pipeline.state import State
from .base import followed_size, record_size
from .planes import (
    COMPRESSIONS,
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
from .rgb_image import target_size
from .tagged import TaggedField

MASK_HEADER = PLANES_HEADER
MASK_DTYPES = PLANES_DTYPES

__all__ = ["COMPRESSIONS", "MASK_DTYPES", "MASK_HEADER", "MaskDecoder", "MaskField",
           "require_zstd", "resize_nearest", "to_mask_array"]


def to_mask_array(value: Any, dtype: np.dtype) -> np.ndarray:
    """*value* as a C-contiguous H×W array of *dtype*.

    Accepts 2-D arrays (and H×W×1), PIL images (modes ``L``, ``P``, ``1``,
    ``I;16``, ``I``) and the bytes of an image file (PNG and the like, through
    Pillow). Ids that do not fit *dtype* are refused.
    """
    value = as_array(value, "mask image", "a 2-D array of ids")
    if value.ndim == 3 and value.shape[2] == 1:
        value = value[:, :, 0]
    if value.ndim != 2:
        raise EncodeError(f"expected a 2-D mask (H×W), got shape {value.shape}")
    if min(value.shape) < 1:
        raise EncodeError(f"empty mask of shape {value.shape}")
    return fit_integers(value, dtype, "ids")


def resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """*mask* resized to ``height × width`` by nearest neighbour (pixel centres)."""
    if mask.shape == (height, width):
        return mask
    out = np.empty((height, width), mask.dtype)
    crop_nearest_into(mask, 0, 0, mask.shape[0], mask.shape[1], out)
    return out


class MaskField(TaggedField):
    """A mask per sample: class or instance ids, one per pixel, stored losslessly.

    Args:
        dtype: ``np.uint8`` (up to 255 ids) or ``np.uint16``.
        compression: ``'zstd'`` (default) or None (raw ids).
        compression_level: zstd's level (1-22; 3, zstd's default, is fast to write).
        max_resolution, min_resolution: shrink (nearest neighbour) as
            ``RGBImageField`` with the same arguments shrinks its image, so
            that a mask stays the size of its image.
        follows: instead of *max_resolution* and *min_resolution*, the name
            of the image field this mask belongs to: each mask must then be
            the size of its image as given (the writer refuses one that is
            not, naming the sample), and is stored at that image's stored
            size. Like ``RaggedField``'s, it is the writer's: not stored in
            the file.
    """

    RECORDS_SIZE = True

    def __init__(self, dtype: Any = np.uint8, compression: str | None = "zstd",
                 compression_level: int = 3, max_resolution: int | None = None,
                 min_resolution: int | None = None, *, follows: str | None = None) -> None:
        self.dtype = stored_dtype(dtype, "masks")
        check_storage(compression, compression_level, max_resolution, min_resolution)
        if follows is not None:
            if not isinstance(follows, str) or not follows:
                raise TypeError(f"follows names a field, got {follows!r}")
            if max_resolution is not None or min_resolution is not None:
                raise ValueError("MaskField(follows=...) is stored at its image's size: give "
                                 "follows= or max_resolution=/min_resolution=, not both")
        self.follows = follows
        self.compression = compression
        self.compression_level = int(compression_level)
        self.max_resolution = max_resolution
        self.min_resolution = min_resolution

    def __repr__(self) -> str:
        return f"MaskField({self.dtype}, compression={self.compression!r})"

    def arguments(self) -> dict[str, Any]:
        return {"dtype": self.dtype.str, "compression": self.compression,
                "compression_level": self.compression_level,
                "max_resolution": self.max_resolution, "min_resolution": self.min_resolution}

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> MaskField:
        return cls(np.dtype(arguments["dtype"]), arguments["compression"],
                   int(arguments.get("compression_level", 3)),
                   arguments.get("max_resolution"), arguments.get("min_resolution"))

    def payload(self, value: Any) -> np.ndarray:
        mask = to_mask_array(value, self.dtype)
        if self.follows is not None:
            height, width = self._image_size(mask.shape)
        else:
            height, width = target_size(mask.shape[0], mask.shape[1], self.max_resolution,
                                        self.min_resolution)
        if max(height, width) > MAX_SIDE:
            raise EncodeError(f"mask of {height}×{width} exceeds {MAX_SIDE} px; set "
                              "max_resolution")
        record_size(mask.shape, (height, width))
        return pack(resize_nearest(mask, height, width), self.compression,
                    self.compression_level)

    def _image_size(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """The stored size of the image this mask follows, which must have had
        the mask's size as given."""
        given_h, given_w, stored_h, stored_w = followed_size(self.follows, "the mask",
                                                            "MaskField")
        if (shape[0], shape[1]) != (given_h, given_w):
            raise EncodeError(f"mask of {shape[0]}×{shape[1]}, but its image (field "
                              f"{self.follows!r}) is {given_h}×{given_w}: a mask that follows "
                              "an image has its size")
        return stored_h, stored_w

    def unpack(self, data: Any) -> np.ndarray:
        """The H×W ids of one payload (a read-only array of its own, or a view of *data*)."""
        return unpack(data, self.dtype, None, self.compression, "mask")

    def decode(self, data: memoryview) -> np.ndarray:
        return self.unpack(data).copy()

    def get_decoder_class(self) -> type:
        return MaskDecoder


class MaskDecoder(Decoder):
    """Decode a ``MaskField``: ``(B, H, W)`` ids, moved as the image they follow.

    Args:
        follows: the output (pipeline name) of the image this mask belongs to.
            Each mask is cropped, resized by nearest neighbour and mirrored
            with the very window, size and flip that image's decoder chose for
            the sample (``fastforward.pipeline.geometry``); ``(H, W)`` is that
            decoder's output size. The mask must be the size of its stored
            image (``MaskField`` shrinks with the image's ``max_resolution``).
        size: without *follows*: ``(H, W)``, the size every mask has. With
            neither (the default decoder of a field given no pipeline), the
            loader asks for one of them.
        fill: the id written where the image is padded (the variable-size
            decoder's padding; never with crops).

    Output pixel ``(y, x)`` takes the id of the source pixel under its centre,
    the rule under which a box's edges map exactly onto the mask's (see
    ``fastforward._ext.pixels``).
    """

    parallel = True  # one compiled call per range, without the GIL: ranges on every worker

    @classmethod
    def field_types(cls) -> tuple[type, ...]:
        return (MaskField,)

    def __init__(self, follows: str | None = None, size: tuple[int, int] | None = None,
                 fill: int = 0) -> None:
        super().__init__()
        if follows is not None and size is not None:
            raise ValueError("MaskDecoder takes follows= (the image whose geometry it "
                             "follows) or size= (every mask's height and width), not both")
        self.follows = follows
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.fill = int(fill)
        self._scratch = ScratchPool()

    def runtime_copy(self, previous: Decoder | None = None) -> Decoder:
        clone = super().runtime_copy(previous)
        # scratch is kept from epoch to epoch, never shared with another loader
        pool = getattr(previous, "_scratch", None)
        clone._scratch = pool if isinstance(pool, ScratchPool) else ScratchPool()  # type: ignore[attr-defined]
        return clone

    def __repr__(self) -> str:
        return (f"MaskDecoder(follows={self.follows!r})" if self.follows
                else f"MaskDecoder(size={self.size})")

    def _field(self) -> MaskField:
        if not isinstance(self.field, MaskField):
            raise TypeError(f"MaskDecoder decodes a MaskField, not a {type(self.field).__name__}")
        return self.field

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        field = self._field()
        if self.follows is not None:
            leader = self.leader_state
            if leader is None or leader.shape is None or len(leader.shape) != 3:
                raise ValueError(f"MaskDecoder follows {self.follows!r}, whose decoder gives "
                                 f"no image shape ({leader})")
            shape = (int(leader.shape[0]), int(leader.shape[1]))
        elif self.size is not None:
            shape = self.size
        else:
            raise ValueError(f"field {self.field_name!r} holds masks: give it a pipeline with "
                             "MaskDecoder(follows=<the image output>) or MaskDecoder(size=(H, "
                             "W)), or None to leave it out")
        if min(shape) < 1:
            raise ValueError(f"mask size must be positive, got {shape}")
        info = np.iinfo(field.dtype)
        if not info.min <= self.fill <= info.max:
            raise ValueError(f"fill {self.fill} does not fit the masks' {field.dtype}")
        return (State(jit_mode=True, shape=shape, dtype=field.dtype),
                AllocationQuery(shape, field.dtype))

    def decode_range(self, lo: int, hi: int, destination: np.ndarray,
                     context: BatchContext) -> None:
        field = self._field()
        source, starts, sizes = ranges(context, self.field_index, lo, hi)
        n = hi - lo
        heights, widths = np.empty(n, np.int64), np.empty(n, np.int64)
        failed = read_sizes(source, starts, sizes, heights, widths)
        if failed is not None:
            raise self.fail(DecodeError(failed[1]), context, lo + failed[0])
        if self.follows is None:
            height, width = destination.shape[1:]
            wrong = np.flatnonzero((heights != height) | (widths != width))
            if wrong.size:
                k = int(wrong[0])
                raise self.fail(DecodeError(
                    f"mask is {heights[k]}×{widths[k]}, the decoder's size is "
                    f"{height}×{width}"), context, lo + k)
            crops = np.zeros((n, 4), np.int64)
            crops[:, 2], crops[:, 3] = height, width
            out_sizes = crops[:, 2:].copy()
            flips = np.zeros(n, np.uint8)
        else:
            rows = context.geometry[self.follows][lo:hi]
            wrong = np.flatnonzero((heights != rows["height"]) | (widths != rows["width"]))
            if wrong.size:
                k = int(wrong[0])
                raise self.fail(DecodeError(
                    f"mask is {heights[k]}×{widths[k]}, its image in {self.follows!r} is "
                    f"{int(rows['height'][k])}×{int(rows['width'][k])} (store masks at their "
                    "image's size: MaskField(max_resolution=...) as the image field's)"),
                    context, lo + k)
            crops = np.stack([rows["y"], rows["x"], rows["crop_height"], rows["crop_width"]],
                             axis=1).astype(np.int64)
            out_sizes = np.stack([rows["out_height"], rows["out_width"]],
                                 axis=1).astype(np.int64)
            flips = np.ascontiguousarray(rows["flip"], np.uint8)
        with self._scratch.lend() as scratch:
            failed = decode_nearest_range(
                scratch.zstd, source, starts, sizes, field.compression == "zstd", heights,
                widths, crops, out_sizes, flips, destination[lo:hi], self.fill,
                scratch.values, progress=context.progress, samples=context.samples(lo, hi))
        if failed is not None:
            raise self.fail(DecodeError(failed[1]), context, lo + failed[0])

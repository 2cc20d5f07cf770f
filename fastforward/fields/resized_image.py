"""Variable-size images out, for detection: the shorter side resized, nothing cropped.

``ShorterSideRGBImageDecoder(size, max_size)`` resizes each whole image so that
its shorter side is ``size`` (or its longer side ``max_size``, if that is
smaller), as torchvision's ``Resize(size, max_size=...)`` does, through the crop
decoders' compiled path (decode, resize, flip, convert in one pass). A batch
is one padded array, ``(B, H, W, 3)``, ``H`` and ``W`` the largest any image of
the field can get, each image at its top left and zeros elsewhere (as
torchvision's ``ImageList`` pads); ``ImageSizeDecoder`` gives each image's
size, and masks and boxes follow it as they follow a crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._ext.pixels import spread_rows
from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.decoder import Decoder
from ..pipeline.operation import BatchContext
from ..pipeline.state import State
from .rgb_image import ResizedCropRGBImageDecoder


def shorter_side_sizes(heights: np.ndarray, widths: np.ndarray, size: int | np.ndarray,
                       max_size: int | None) -> np.ndarray:
    """``(n, 2)`` output ``(height, width)`` of images resized so that the shorter
    side is *size* (per image, or one for all), unless the longer side would then
    pass *max_size*: then the longer side is *max_size*. Integer arithmetic as
    torchvision's ``Resize(size, max_size=...)`` (the longer side truncated)."""
    heights = np.asarray(heights, np.int64)
    widths = np.asarray(widths, np.int64)
    size = np.broadcast_to(np.asarray(size, np.int64), heights.shape)
    portrait = widths <= heights
    short = np.where(portrait, widths, heights)
    long = np.where(portrait, heights, widths)
    new_short = size.copy()
    # int(size * long / short) in float64, as torchvision computes it
    new_long = (size * long.astype(np.float64) / short).astype(np.int64)
    if max_size is not None:
        over = new_long > max_size
        new_short = np.where(over, (max_size * new_short.astype(np.float64) / np.where(
            over, new_long, 1)).astype(np.int64), new_short)
        new_long = np.where(over, max_size, new_long)
    new_short = np.maximum(new_short, 1)
    return np.stack([np.where(portrait, new_long, new_short),
                     np.where(portrait, new_short, new_long)], axis=1)


def padded_shorter_side_size(heights: np.ndarray, widths: np.ndarray,
                             sizes: Sequence[int] | np.ndarray,
                             max_size: int | None) -> tuple[int, int]:
    """The largest ``(height, width)`` that images of these stored sizes take under
    ``shorter_side_sizes`` with any of *sizes*: a padded batch's ((1, 1) for none).
    Every size counts, not only the largest: under *max_size* a smaller shorter
    side can give a longer side (torchvision's rounding down); each distinct stored
    shape once."""
    if not len(heights):
        return 1, 1
    packed = np.unique(np.asarray(heights, np.int64) << 32 | np.asarray(widths, np.int64))
    shapes_h, shapes_w = packed >> 32, packed & 0xFFFFFFFF
    out = np.concatenate([shorter_side_sizes(shapes_h, shapes_w, int(size), max_size)
                          for size in np.unique(np.asarray(sizes, np.int64))])
    return int(out[:, 0].max()), int(out[:, 1].max())


class ShorterSideRGBImageDecoder(ResizedCropRGBImageDecoder):
    """Decode each whole image and resize it: shorter side *size*, longer at most *max_size*.

    Args:
        size: the shorter side, or a sequence of them: each sample then draws
            one (multi-scale training), from ``(seed, epoch, sample index)``.
        max_size: the most the longer side may be (torchvision's ``max_size``);
            None for no limit. Must be larger than every *size*.

    Output: ``(B, H, W, 3)`` uint8 (or float16/float32 when a ``Convert`` or
    ``NormalizeImage`` is fused in, as for the crop decoders), where ``H`` and
    ``W`` are the largest height and width any image of the field can take:
    each image sits at the top left of its row, the rest zero. A
    ``RandomHorizontalFlip`` right after it mirrors each image within its own
    width. Its geometry (``fastforward.pipeline.geometry``: the whole image
    as the window, each image's own output size) is what ``MaskDecoder``,
    ``RaggedDecoder`` and ``ImageSizeDecoder`` follow.
    """

    pads = True  # each image at the top left of its row, zeros around it

    def __init__(self, size: int | Sequence[int], max_size: int | None = None,
                 fastdct: bool = True) -> None:
        sizes = (size,) if isinstance(size, (int, np.integer)) else tuple(size)
        if not sizes or any(int(s) < 1 for s in sizes):
            raise ValueError(f"size must be a positive int or a sequence of them, got {size!r}")
        if max_size is not None and int(max_size) <= max(int(s) for s in sizes):
            raise ValueError(f"max_size ({max_size}) must be larger than size ({size})")
        super().__init__((1, 1), fastdct)
        self.size = size
        self.max_size = max_size

    def __repr__(self) -> str:
        return f"ShorterSideRGBImageDecoder(size={self.size!r}, max_size={self.max_size!r})"

    # padded_size()'s cache: bound to the reader, never pickled; a loader's next
    # epoch keeps it (runtime_copy), the reader's identity says it still holds (a
    # loader's file does not change under it: checked at each epoch's start)
    _BINDING = (*ResizedCropRGBImageDecoder._BINDING, "_padded")

    def runtime_copy(self, previous: Decoder | None = None) -> Decoder:
        clone = super().runtime_copy(previous)
        clone._padded = getattr(previous, "_padded", None)  # type: ignore[attr-defined]
        return clone

    def _sizes(self) -> np.ndarray:
        return np.asarray([self.size] if isinstance(self.size, (int, np.integer))
                          else list(self.size), np.int64)

    def padded_size(self) -> tuple[int, int]:
        """The batch's height and width: the largest any image of the field can take."""
        key = (self.field_index, tuple(self._sizes().tolist()), self.max_size)
        cached = self._padded
        if cached is not None and cached[0] is self.reader and cached[1] == key:
            return cached[2]  # once per loader and sizes, not every epoch
        _, heights, widths = self._modes_and_sizes()
        padded = padded_shorter_side_size(heights, widths, self._sizes(), self.max_size)
        self._padded = (self.reader, key, padded)
        return padded

    _padded: tuple[Any, Any, tuple[int, int]] | None = None  # (reader, field and sizes, padded)

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        self.output_size = self.padded_size()
        return super().declare_state_and_memory(previous_state)

    def output_sizes(self, context: BatchContext, heights: np.ndarray, widths: np.ndarray,
                     lo: int, hi: int) -> np.ndarray:
        """``(hi - lo, 2)`` output sizes of samples ``lo:hi`` (each one's drawn size)."""
        sizes = self._sizes()
        if len(sizes) == 1:
            chosen: int | np.ndarray = int(sizes[0])
        else:
            u = context.uniform(1)[lo:hi, 0]
            chosen = sizes[np.minimum((u * len(sizes)).astype(np.int64), len(sizes) - 1)]
        return shorter_side_sizes(heights, widths, chosen, self.max_size)

    def content_sizes(self, context: BatchContext) -> np.ndarray:
        """``(B, 2)`` each image's ``(height, width)`` in its padded row."""
        rows = self.metadata[context.indices]
        return self.output_sizes(context, rows["height"].astype(np.int64),
                                 rows["width"].astype(np.int64), 0, len(context.indices))

    def crops(self, heights: np.ndarray, widths: np.ndarray, u: np.ndarray | None) -> np.ndarray:
        """The whole image: nothing is cropped."""
        zeros = np.zeros(len(heights), np.int64)
        return np.stack([zeros, zeros, heights, widths], axis=1).astype(np.int64)

    def decode_range(self, lo: int, hi: int, destination: np.ndarray,
                     context: BatchContext) -> None:
        rows = self.metadata[context.indices[lo:hi]]
        out = self.output_sizes(context, rows["height"].astype(np.int64),
                                rows["width"].astype(np.int64), lo, hi)
        height, width, channels = destination.shape[1:]
        item = destination.dtype.itemsize
        geometry_out = context.geometry_out
        for k in range(lo, hi):
            oh, ow = (int(v) for v in out[k - lo])
            if oh > height or ow > width:  # a subclass sizing past padded_size()
                raise self.fail(ValueError(f"output {oh}x{ow} is larger than the padded "
                                           f"batch's {height}x{width}"), context, k)
            # the crop decoders' path for this one sample, into the first oh·ow pixels of
            # its row (the kernel writes whole C-contiguous images), its geometry recording
            # that size; then its rows spread to the padded width, the padding zeroed
            memory = destination[k].reshape(-1)
            packed = memory[: oh * ow * channels].reshape(1, oh, ow, channels)
            one = BatchContext(context.indices[k : k + 1], context.epoch, context.seed,
                               context.stream, context.batch_index,
                               context.data.rows(k, k + 1), copies=None,
                               geometry_out=None if geometry_out is None
                               else geometry_out[k : k + 1], progress=context.progress)
            super().decode_range(0, 1, packed, one)
            spread_rows(memory.view(np.uint8), oh, ow * channels * item,
                        width * channels * item, height)


class ImageSizeDecoder(Decoder):
    """Each image's size in the batch of the output it follows: ``(B, 2)`` int64.

    Args:
        follows: the output (pipeline name) of the image.
        source: False: ``(height, width)`` of the image's pixels in that
            output (the content of a padded ``ShorterSideRGBImageDecoder``
            batch, torchvision's ``ImageList.image_sizes``). True: the stored
            image's size (to map predictions back to it).

    Used as another output of the image's field, e.g.
    ``"sizes": PipelineSpec("image", ImageSizeDecoder(follows="image"))``.
    """

    def __init__(self, follows: str, source: bool = False) -> None:
        super().__init__()
        self.follows = follows
        self.source = bool(source)

    def __repr__(self) -> str:
        return f"ImageSizeDecoder(follows={self.follows!r}, source={self.source})"

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        return (State(jit_mode=True, shape=(2,), dtype=np.dtype("<i8")),
                AllocationQuery((2,), np.dtype("<i8")))

    def decode_range(self, lo: int, hi: int, destination: np.ndarray,
                     context: BatchContext) -> None:
        assert self.follows is not None  # given to __init__
        rows = context.geometry[self.follows][lo:hi]
        keys = ("height", "width") if self.source else ("out_height", "out_width")
        destination[lo:hi, 0] = rows[keys[0]]
        destination[lo:hi, 1] = rows[keys[1]]

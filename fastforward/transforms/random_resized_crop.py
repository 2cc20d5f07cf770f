"""Random resized crop of already decoded images."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .._ext.resize import Workspace, crop_resize_into
from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import name, numpy_out, require_image, require_numpy, require_uint8
from .crop import RANDOM_CROP_UNIFORMS, check_random_crop, random_crops


class RandomResizedCrop(Operation):
    """Crop a random window of each image and resize it to ``size × size``.

    Args:
        scale: bounds of the window's area, as fractions of the image's.
        ratio: bounds of the window's aspect ratio (width / height).
        size: side of the output (an ``(height, width)`` pair also works).

    The window comes from torchvision's sampler (``crop.get_random_crop``),
    with the context's uniforms; the resize is area averaging when shrinking
    and bilinear when enlarging (``crop_resize_into``). uint8 NumPy images
    ``(B, H, W, C)``, C <= 4, before ``ToTensor``; writes into a
    ``(size, size, C)`` buffer. Prefer ``RandomResizedCropRGBImageDecoder``,
    which crops before resizing the full image.
    """
    moves_pixels = True  # masks and boxes cannot follow it (see Operation.moves_pixels)
    releases_gil = True  # vectorised NumPy (or torch)
    sample_independent = True  # each sample from its own values and randomness


    def __init__(self, scale: tuple[float, float], ratio: tuple[float, float],
                 size: int | tuple[int, int]) -> None:
        super().__init__()
        check_random_crop(name(self), scale, ratio)
        self.scale = scale
        self.ratio = ratio
        self.size = size

    def _output_size(self) -> tuple[int, int]:
        size: Any = self.size  # an int (any NumPy integer too), or a (height, width) pair
        h, w = (size, size) if np.ndim(size) == 0 else size
        if int(h) < 1 or int(w) < 1:
            raise ValueError(f"{name(self)}: size must be positive, got {size}")
        return int(h), int(w)

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        require_numpy(self, previous_state)
        require_uint8(self, previous_state)
        _, _, c = require_image(self, previous_state, (1, 2, 3, 4))
        shape = (*self._output_size(), c)
        return replace(previous_state, shape=shape), AllocationQuery(shape, previous_state.dtype)

    def apply(self, batch: np.ndarray, destination: Any, context: BatchContext) -> np.ndarray:
        """Write each image's resized random crop into *destination*."""
        n, height, width, c = batch.shape
        out = numpy_out(destination, n, (*self._output_size(), c), batch.dtype)
        crops = random_crops(np.full(n, height), np.full(n, width), self.scale, self.ratio,
                             context.uniform(RANDOM_CROP_UNIFORMS)).tolist()
        workspace = Workspace()  # one scratch for the whole batch
        for k, (i, j, h, w) in enumerate(crops):
            crop_resize_into(np.ascontiguousarray(batch[k]), i, j, h, w, out[k],
                             workspace=workspace)
        return out

    def __repr__(self) -> str:
        return f"RandomResizedCrop(scale={self.scale}, ratio={self.ratio}, size={self.size})"

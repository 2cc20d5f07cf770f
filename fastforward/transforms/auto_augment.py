"""TrivialAugmentWide, RandAugment and AutoAugment: torchvision's policies, compiled.

Each policy draws, per sample, which operations to apply and how strongly,
with torchvision v2's operations, magnitudes, bins and probabilities
(``torchvision.transforms.v2._auto_augment``), then applies them to the
whole batch in one call without the GIL (``fastforward._ext.augment``). The
draws come from the context, so they depend only on ``(seed, epoch, sample
index)``, never on the batch a sample lands in or on ``num_workers``;
torchvision's own transforms draw once per call (per batch, on batched
tensors).

The arithmetic of every operation is torchvision v2's on uint8 tensors
(``torchvision.transforms.v2.functional``), as torch computes it on a CPU;
``docs/augmentation-policies.md`` states the tolerances, tested against
torchvision 0.29.1. On torch tensors (after ``ToTensor``, on any device)
the same decisions are applied with batched torch operations
(``_augment_torch``).

The magnitudes are torchvision's ``torch.linspace`` tables in float32,
computed here without torch (``linspace32``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np

from .._ext.augment import OPS, PARAMS, augment_into
from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import (
    batch_image_dims,
    name,
    note_layout,
    numpy_out,
    require_image,
    require_shape,
    require_uint8,
    torch_dtype,
    torch_image_dims,
    torch_out,
)

NONE = -1
COPY, AFFINE, SHIFT, ROT90, BRIGHTNESS, SATURATION, CONTRAST, SHARPNESS, POSTERIZE, SOLARIZE, \
    AUTOCONTRAST, EQUALIZE, INVERT = range(len(OPS))


class AutoAugmentPolicy(StrEnum):
    """AutoAugment's learned policies (torchvision's ``AutoAugmentPolicy`` values)."""

    IMAGENET = "imagenet"
    CIFAR10 = "cifar10"
    SVHN = "svhn"


# ---------------------------------------------------------------------------
# magnitudes


def linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` (float32), as float64 values.

    As torch computes it on a CPU, element by element: ``start + step * i``
    for the first half, ``end - step * (steps - 1 - i)`` for the rest, each
    a fused multiply-add in float32, with ``step = (end - start) / (steps -
    1)`` in float32 (torch's AVX-512 kernels, and its AVX2 ones below 16
    steps). Where torch runs its AVX2 vector loop (16 steps or more), or a
    build without FMA, a few of its values may differ in the last bit.
    """
    a, b = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([a], dtype=np.float64)
    step = np.float64(np.float32((b - a) / np.float32(steps - 1)))
    i = np.arange(steps, dtype=np.float64)
    low = (np.float64(a) + step * i).astype(np.float32)
    high = (np.float64(b) - step * (steps - 1 - i)).astype(np.float32)
    return np.where(i < steps // 2, low, high).astype(np.float64)


def posterize_bits(top: int, steps: int, divisor: int) -> np.ndarray:
    """``(top - torch.arange(steps) / ((steps - 1) / divisor)).round().int()``:
    float32 true division, rounded half to even."""
    k = np.arange(steps, dtype=np.float32)
    return np.rint(np.float32(top) - k / np.float32((steps - 1) / divisor)).astype(np.float64)


Magnitudes = Callable[[int, int, int], "np.ndarray | None"]
"""(bins, height, width) -> the magnitude of each bin, or None (no magnitude)."""


def _linear(start: float, end: float) -> Magnitudes:
    return lambda bins, h, w: linspace32(start, end, bins)


def _no_magnitude(bins: int, h: int, w: int) -> None:
    return None


# name -> (magnitudes, signed), in torchvision's order (draws index into it)
TRIVIAL_AUGMENT_WIDE: dict[str, tuple[Magnitudes, bool]] = {
    "Identity": (_no_magnitude, False),
    "ShearX": (_linear(0.0, 0.99), True),
    "ShearY": (_linear(0.0, 0.99), True),
    "TranslateX": (_linear(0.0, 32.0), True),
    "TranslateY": (_linear(0.0, 32.0), True),
    "Rotate": (_linear(0.0, 135.0), True),
    "Brightness": (_linear(0.0, 0.99), True),
    "Color": (_linear(0.0, 0.99), True),
    "Contrast": (_linear(0.0, 0.99), True),
    "Sharpness": (_linear(0.0, 0.99), True),
    "Posterize": (lambda bins, h, w: posterize_bits(8, bins, 6), False),
    "Solarize": (_linear(1.0, 0.0), False),
    "AutoContrast": (_no_magnitude, False),
    "Equalize": (_no_magnitude, False),
}
"""TrivialAugmentWide's operations: (magnitude table, whether its sign is drawn)."""

RAND_AUGMENT: dict[str, tuple[Magnitudes, bool]] = {
    "Identity": (_no_magnitude, False),
    "ShearX": (_linear(0.0, 0.3), True),
    "ShearY": (_linear(0.0, 0.3), True),
    "TranslateX": (lambda bins, h, w: linspace32(0.0, 150.0 / 331.0 * w, bins), True),
    "TranslateY": (lambda bins, h, w: linspace32(0.0, 150.0 / 331.0 * h, bins), True),
    "Rotate": (_linear(0.0, 30.0), True),
    "Brightness": (_linear(0.0, 0.9), True),
    "Color": (_linear(0.0, 0.9), True),
    "Contrast": (_linear(0.0, 0.9), True),
    "Sharpness": (_linear(0.0, 0.9), True),
    "Posterize": (lambda bins, h, w: posterize_bits(8, bins, 4), False),
    "Solarize": (_linear(1.0, 0.0), False),
    "AutoContrast": (_no_magnitude, False),
    "Equalize": (_no_magnitude, False),
}
"""RandAugment's operations: (magnitude table, whether its sign is drawn)."""

AUTO_AUGMENT: dict[str, tuple[Magnitudes, bool]] = {
    **{k: v for k, v in RAND_AUGMENT.items() if k != "Identity"},
    "Invert": (_no_magnitude, False),
}
"""AutoAugment's operations (10 bins): (magnitude table, whether its sign is drawn)."""

SubPolicy = tuple[tuple[str, float, int | None], tuple[str, float, int | None]]

AUTO_AUGMENT_POLICIES: dict[AutoAugmentPolicy, list[SubPolicy]] = {
    AutoAugmentPolicy.IMAGENET: [
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ],
    AutoAugmentPolicy.CIFAR10: [
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ],
    AutoAugmentPolicy.SVHN: [
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)),
        (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
        (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
        (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
        (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
        (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
        (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
        (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ],
}
"""AutoAugment's sub-policies: two (operation, probability, magnitude bin) each."""


# ---------------------------------------------------------------------------
# from (operation, magnitude) to the kernel's codes


def inverse_affine(center: Sequence[float], angle: float, translate: Sequence[float],
                   shear: Sequence[float]) -> tuple[float, ...]:
    """torchvision's inverse affine matrix (scale 1), in centred pixel coordinates.

    Args:
        center: the centre, relative to the image's centre (torchvision's ``center_f``).
        angle: degrees, counter-clockwise as ``affine`` takes it.
        translate: ``(tx, ty)`` pixels.
        shear: ``(sx, sy)`` degrees.
    """
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    cos_sy = math.cos(sy)
    tan_sx = math.tan(sx)
    a = math.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + math.sin(rot))
    c = math.sin(rot - sy) / cos_sy
    d = math.cos(rot) - c * tan_sx
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += cx - m[0] * (cx + tx) - m[1] * (cy + ty)
    m[5] += cy - m[3] * (cx + tx) - m[4] * (cy + ty)
    return tuple(m)


@functools.lru_cache(maxsize=4096)
def kernel_op(operation: str, magnitude: float, height: int, width: int
              ) -> tuple[int, tuple[float, ...]]:
    """The kernel's code and parameters for torchvision's *operation* at a signed
    *magnitude* on ``height × width`` images (``_apply_image_or_video_transform``)."""
    if operation == "Identity":
        return NONE, ()
    if operation in ("ShearX", "ShearY"):
        # torchvision shears by atan(magnitude) degrees about the top-left corner
        degrees = math.degrees(math.atan(magnitude))
        shear = (degrees, 0.0) if operation == "ShearX" else (0.0, degrees)
        return AFFINE, inverse_affine((-width * 0.5, -height * 0.5), 0.0, (0.0, 0.0), shear)
    if operation == "TranslateX":
        return SHIFT, (float(int(magnitude)), 0.0)
    if operation == "TranslateY":
        return SHIFT, (0.0, float(int(magnitude)))
    if operation == "Rotate":
        angle = magnitude % 360
        if angle == 0:
            return NONE, ()
        if angle == 180:
            return ROT90, (2.0,)
        if height == width and angle in (90, 270):
            return ROT90, (1.0 if angle == 90 else 3.0,)
        return AFFINE, inverse_affine((0.0, 0.0), -angle, (0.0, 0.0), (0.0, 0.0))
    factors = {"Brightness": BRIGHTNESS, "Color": SATURATION, "Contrast": CONTRAST,
               "Sharpness": SHARPNESS}
    if operation in factors:
        return factors[operation], (1.0 + magnitude,)
    if operation == "Posterize":
        return POSTERIZE, (float(int(magnitude)),)
    if operation == "Solarize":
        return SOLARIZE, (255 * magnitude,)
    plain = {"AutoContrast": AUTOCONTRAST, "Equalize": EQUALIZE, "Invert": INVERT}
    if operation in plain:
        return plain[operation], ()
    raise ValueError(f"unknown operation {operation!r}")


class Plan:
    """A batch's decisions: per sample, the operations in order and their magnitudes.

    Attributes:
        names: the policy's operation names (``operations`` index into it).
        operations: ``(B, K)`` int64 indices into *names*, -1 where nothing is applied.
        magnitudes: ``(B, K)`` float64 signed magnitudes (0 for those without one).
    """

    def __init__(self, names: Sequence[str], operations: np.ndarray,
                 magnitudes: np.ndarray) -> None:
        self.names = tuple(names)
        self.operations = operations
        self.magnitudes = magnitudes

    def kernel(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ops, params)`` for ``augment_into``: ``(B, K)`` int32 codes and
        ``(B, K, PARAMS)`` float64 parameters."""
        n, depth = self.operations.shape
        ops = np.full((n, depth), NONE, dtype=np.int32)
        params = np.zeros((n, depth, PARAMS), dtype=np.float64)
        for index in np.unique(self.operations).tolist():
            if index < 0:
                continue
            chosen = self.operations == index
            magnitudes, inverse = np.unique(self.magnitudes[chosen], return_inverse=True)
            codes = np.empty(len(magnitudes), dtype=np.int32)
            values = np.zeros((len(magnitudes), PARAMS))
            for u, magnitude in enumerate(magnitudes.tolist()):
                codes[u], given = kernel_op(self.names[index], magnitude, height, width)
                values[u, : len(given)] = given
            ops[chosen] = codes[inverse.reshape(-1)]
            params[chosen] = values[inverse.reshape(-1)]
        return ops, params


def _interpolation(value: Any) -> str:
    """'nearest' or 'bilinear' from a string, torchvision's InterpolationMode or PIL's code."""
    mode = getattr(value, "value", value)
    mode = {0: "nearest", 2: "bilinear"}.get(mode, mode) if isinstance(mode, int) else mode
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"interpolation must be 'nearest' or 'bilinear' (or torchvision's "
                         f"InterpolationMode.NEAREST/BILINEAR), got {value!r}")
    return str(mode)


def _fill(op: Any, fill: Any) -> np.ndarray | None:
    """None, or the fill as three float64 values in 0..255."""
    if fill is None:
        return None
    if isinstance(fill, dict):
        raise TypeError(f"{name(op)}: fill must be None, a number or three numbers (a dict of "
                        "fills per input type is torchvision's, for inputs fastforward does "
                        "not have)")
    try:
        values = np.asarray(fill, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"{name(op)}: fill must be None, a number or three numbers, got "
                        f"{fill!r}") from None
    if values.size == 1:
        values = np.repeat(values, 3)
    if values.size != 3 or not np.all((values >= 0) & (values <= 255)):
        raise ValueError(f"{name(op)}: fill must be one or three values in 0..255, got {fill!r}")
    return values


class _Policy(Operation):
    """The shared machinery: checks, buffers, the kernel call and the torch path."""

    sample_independent: ClassVar[bool] = True
    """Each output sample depends only on the same input sample and its own draws."""

    releases_gil: ClassVar[bool] = True
    """The NumPy path is one call without the GIL."""

    moves_pixels: ClassVar[bool] = True
    """Shears, translations and rotations move pixels: masks and boxes that follow
    the image would not move with them, so the planner refuses the policy there."""

    depth: int  # operations per sample, at most

    def __init__(self, interpolation: Any = "nearest", fill: Any = None) -> None:
        super().__init__()
        self.interpolation = _interpolation(interpolation)
        self.fill = fill
        self._fill = _fill(self, fill)
        self._magnitudes: dict[tuple[str, int, int, int], np.ndarray | None] = {}
        # a conversion the planner let it take over (fuse): (table, (scale, bias))
        self.fused_output: tuple[np.ndarray, tuple[Any, Any]] | None = None

    def fuse(self, transforms: Sequence[Operation], rng_streams: Sequence[int],
             previous_state: State | None = None) -> list[int]:
        """On NumPy batches, take over the conversion to float16 or float32 that
        follows, across operations that pass the values through (``ToTensor``,
        ``ToTorchImage()``, ``ToDevice('cpu')``): ``Convert``, or
        ``NormalizeImage`` with one value per channel. The kernel then writes
        each augmented image's floats straight into this operation's buffer
        (in the same per-range call, from an image still in cache) instead of
        uint8 that the batch stage converts in another pass.

        The values are those operations' own: they are run once, here, on every
        uint8 level of each channel, and the kernel writes that table's entries
        (or computes them, where float32 arithmetic gives the same bits).
        """
        self.fused_output = None
        if previous_state is None or not previous_state.jit_mode:
            return []  # on tensors (possibly on a GPU): the torch path, unfused
        for k, op in enumerate(transforms):
            if op.passes_through:
                continue
            affine = op.pixel_affine()
            if affine is None or (affine[1] is not None and len(affine[1]) != 3):
                return []
            table = conversion_table(transforms[: k + 1], np.dtype(affine[0]))
            self.fused_output = (table, (affine[1], affine[2]))
            return [k]
        return []

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        self._fill = _fill(self, self.fill)  # as it is now: changed between epochs, used
        require_uint8(self, previous_state)
        if previous_state.jit_mode:
            h, w, c = require_image(self, previous_state, (3,))
            if self.fused_output is not None:
                dtype = self.fused_output[0].dtype
                return replace(previous_state, dtype=dtype), AllocationQuery((h, w, c), dtype)
            return previous_state, AllocationQuery((h, w, c), np.dtype(np.uint8))
        shape = require_shape(self, previous_state, (3,), "image tensors of shape (H, W, 3) "
                              "or (3, H, W)")
        note_layout(self, shape, previous_state.channels_first)
        dims = torch_image_dims(self, shape, previous_state.channels_first)
        if dims[2] is None or shape[dims[2]] != 3:
            raise ValueError(f"{name(self)} needs RGB images (3 channels), but it got samples "
                             f"of shape {shape}")
        dtype = torch_dtype(previous_state.dtype, self)
        return (replace(previous_state, dtype=dtype),
                AllocationQuery(shape, dtype, previous_state.device))

    space: ClassVar[dict[str, tuple[Magnitudes, bool]]]

    def plan(self, context: BatchContext, height: int, width: int) -> Plan:
        """The batch's decisions (one row per sample of *context*)."""
        raise NotImplementedError

    def magnitudes(self, operation: str, bins: int, height: int, width: int
                   ) -> np.ndarray | None:
        """*operation*'s magnitude table (kept per image size: each batch asks)."""
        key = (operation, bins, height, width)
        if key not in self._magnitudes:
            self._magnitudes[key] = self.space[operation][0](bins, height, width)
        return self._magnitudes[key]

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Write each image, augmented with its own draws, into *destination*."""
        if not isinstance(batch, np.ndarray):
            return self._apply_torch(batch, destination, context)
        n, h, w, c = batch.shape
        fused = self.fused_output
        out = numpy_out(destination, n, (h, w, c), batch.dtype if fused is None
                        else fused[0].dtype)
        ops, params = self.plan(context, h, w).kernel(h, w)
        strides = batch.strides
        if strides[3] != 1 or strides[2] != 3 or strides[1] <= 0 or strides[0] < 0:
            batch = np.ascontiguousarray(batch)  # the kernel takes pixels and rows in order
        if fused is None:
            augment_into(batch, out, ops, params, self.interpolation == "bilinear", self._fill)
        else:
            augment_into(batch, out, ops, params, self.interpolation == "bilinear", self._fill,
                         fused[0], fused[1])
        return out

    def _apply_torch(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        from ._augment_torch import apply_kernel_ops

        dh, dw, dc = (1 + d for d in batch_image_dims(self, batch))  # type: ignore[operator]
        h, w = int(batch.shape[dh]), int(batch.shape[dw])
        images = batch if dc == 1 else batch.permute(0, 3, 1, 2)  # (B, 3, H, W)
        ops, params = self.plan(context, h, w).kernel(h, w)
        result = apply_kernel_ops(images, ops, params, self.interpolation == "bilinear",
                                  self._fill)
        out = torch_out(destination, batch, tuple(batch.shape[1:]), batch.dtype)
        out.copy_(result if dc == 1 else result.permute(0, 2, 3, 1))
        return out

    def _fill_repr(self) -> str:
        return f"interpolation={self.interpolation!r}, fill={self.fill!r}"


def conversion_table(transforms: Sequence[Operation], dtype: np.dtype) -> np.ndarray:
    """``(256, 3)``: row ``v`` holds what *transforms* (operations that pass the
    values through, then one that converts each value of each channel, such as
    ``Convert`` or ``NormalizeImage``) make of a uint8 RGB pixel ``(v, v, v)``.

    They run on a 16×16 image holding every level, as they would on the batch
    (on NumPy, or on torch tensors after ``ToTensor``), so the table is their
    arithmetic exactly."""
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    value: Any = np.ascontiguousarray(np.broadcast_to(levels, (1, 16, 16, 3)))
    context = BatchContext(np.zeros(1, np.int64), 0, 0)
    for op in transforms:
        value = op.apply(value, None, context)
    if not isinstance(value, np.ndarray):
        value = value.cpu()
        if tuple(value.shape) == (1, 3, 16, 16):  # ToTorchImage's (B, C, H, W)
            value = value.permute(0, 2, 3, 1)
        value = value.numpy()
    if value.shape != (1, 16, 16, 3) or value.dtype != dtype:
        raise ValueError(f"{', '.join(map(repr, transforms))} turned uint8 images of shape "
                         f"(16, 16, 3) into {value.dtype} of shape {value.shape[1:]}, not "
                         f"{dtype} of the same shape")
    return np.ascontiguousarray(value.reshape(256, 3))


def _draw_bins(u: np.ndarray, count: int) -> np.ndarray:
    """Indices in ``range(count)`` from uniforms in [0, 1)."""
    return np.minimum((u * count).astype(np.int64), count - 1)


class TrivialAugmentWide(_Policy):
    """TrivialAugment Wide (https://arxiv.org/abs/2103.10158), as torchvision's.

    Args:
        num_magnitude_bins: the number of magnitudes per operation (at least 2).
        interpolation: ``'nearest'`` (default) or ``'bilinear'`` (torchvision's
            ``InterpolationMode`` is accepted), for shears and rotations.
        fill: None (default: zeros, as torchvision's ``fill=None``), or a
            number or three numbers in 0..255 for the area outside the image
            (blended through torchvision's mask, as with its explicit fill).

    Per sample, one of 14 operations (Identity, ShearX, ShearY, TranslateX,
    TranslateY, Rotate, Brightness, Color, Contrast, Sharpness, Posterize,
    Solarize, AutoContrast, Equalize), uniformly, at a uniform magnitude bin,
    negated with probability 1/2 where the operation is signed. Draws:
    uniforms 0 (operation), 1 (bin), 2 (sign), from the context.

    uint8 RGB images: NumPy ``(B, H, W, 3)`` before ``ToTensor`` (compiled, no
    GIL), or torch tensors on any device after it (``(B, H, W, 3)``, or
    ``(B, 3, H, W)`` after ``ToTorchImage``; batched torch operations with the
    same decisions). Writes into a buffer shaped like the input.
    """

    depth = 1
    space = TRIVIAL_AUGMENT_WIDE

    def __init__(self, num_magnitude_bins: int = 31, interpolation: Any = "nearest",
                 fill: Any = None) -> None:
        super().__init__(interpolation, fill)
        if int(num_magnitude_bins) != num_magnitude_bins or num_magnitude_bins < 2:
            raise ValueError(f"{name(self)}: num_magnitude_bins must be an int >= 2, got "
                             f"{num_magnitude_bins}")
        self.num_magnitude_bins = int(num_magnitude_bins)

    def plan(self, context: BatchContext, height: int, width: int) -> Plan:
        names = list(self.space)
        u = context.uniform(3)
        operations = _draw_bins(u[:, 0], len(names))
        bins = _draw_bins(u[:, 1], self.num_magnitude_bins)
        magnitudes = np.zeros(len(u))
        for index, op_name in enumerate(names):
            chosen = operations == index
            signed = self.space[op_name][1]
            values = self.magnitudes(op_name, self.num_magnitude_bins, height, width)
            if values is None or not chosen.any():
                continue
            magnitudes[chosen] = values[bins[chosen]]
            if signed:
                magnitudes[chosen & (u[:, 2] < 0.5)] *= -1
        return Plan(names, operations[:, None], magnitudes[:, None])

    def __repr__(self) -> str:
        return (f"TrivialAugmentWide(num_magnitude_bins={self.num_magnitude_bins}, "
                f"{self._fill_repr()})")


class RandAugment(_Policy):
    """RandAugment (https://arxiv.org/abs/1909.13719), as torchvision's.

    Args:
        num_ops: operations applied in turn to each image.
        magnitude: the magnitude bin of every operation, in ``range(num_magnitude_bins)``.
        num_magnitude_bins: the number of magnitudes per operation (at least 2).
        interpolation: ``'nearest'`` (default) or ``'bilinear'``.
        fill: None (zeros), or a number or three numbers in 0..255.

    Per sample and per step, one of 14 operations (those of
    ``TrivialAugmentWide``, with RandAugment's ranges), uniformly, negated
    with probability 1/2 where signed. Draws: uniforms ``2k`` (operation) and
    ``2k + 1`` (sign) for step ``k``. Inputs and outputs as
    ``TrivialAugmentWide``'s.
    """

    space = RAND_AUGMENT

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31,
                 interpolation: Any = "nearest", fill: Any = None) -> None:
        super().__init__(interpolation, fill)
        if isinstance(num_ops, bool) or int(num_ops) != num_ops or num_ops < 0:
            raise ValueError(f"{name(self)}: num_ops must be a non-negative int, got {num_ops}")
        if int(num_magnitude_bins) != num_magnitude_bins or num_magnitude_bins < 2:
            raise ValueError(f"{name(self)}: num_magnitude_bins must be an int >= 2, got "
                             f"{num_magnitude_bins}")
        if int(magnitude) != magnitude or not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"{name(self)}: magnitude must be an int in 0..."
                             f"{int(num_magnitude_bins) - 1}, got {magnitude}")
        self.num_ops = int(num_ops)
        self.magnitude = int(magnitude)
        self.num_magnitude_bins = int(num_magnitude_bins)
        self.depth = self.num_ops

    def plan(self, context: BatchContext, height: int, width: int) -> Plan:
        names = list(self.space)
        n = len(context.indices)
        u = context.uniform(2 * self.num_ops) if self.num_ops else np.zeros((n, 0))
        operations = _draw_bins(u[:, 0::2], len(names))
        magnitudes = np.zeros(operations.shape)
        for index, op_name in enumerate(names):
            signed = self.space[op_name][1]
            values = self.magnitudes(op_name, self.num_magnitude_bins, height, width)
            if values is None:
                continue
            chosen = operations == index
            magnitudes[chosen] = values[self.magnitude]
            if signed:
                magnitudes[chosen & (u[:, 1::2] < 0.5)] *= -1
        return Plan(names, operations, magnitudes)

    def __repr__(self) -> str:
        return (f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"num_magnitude_bins={self.num_magnitude_bins}, {self._fill_repr()})")


class AutoAugment(_Policy):
    """AutoAugment (https://arxiv.org/abs/1805.09501) with a learned policy, as torchvision's.

    Args:
        policy: ``AutoAugmentPolicy.IMAGENET`` (default), ``CIFAR10`` or
            ``SVHN`` (or torchvision's ``AutoAugmentPolicy``, or its value).
        interpolation: ``'nearest'`` (default) or ``'bilinear'``.
        fill: None (zeros), or a number or three numbers in 0..255.

    Per sample, one of the policy's 25 sub-policies, uniformly; each of its
    two operations applies with its probability, at its magnitude bin (of
    10), negated with probability 1/2 where signed. Draws: uniform 0
    (sub-policy), 1 and 3 (whether each operation applies: ``u < p``), 2 and
    4 (signs). Inputs and outputs as ``TrivialAugmentWide``'s.
    """

    depth = 2
    space = AUTO_AUGMENT

    def __init__(self, policy: Any = AutoAugmentPolicy.IMAGENET, interpolation: Any = "nearest",
                 fill: Any = None) -> None:
        super().__init__(interpolation, fill)
        self.policy = policy
        self._choose_policy()

    def _choose_policy(self) -> None:
        """Check the policy as it is now and take its sub-policies (each epoch's copy
        does it anew: a policy changed between epochs is used)."""
        try:
            self.policy = AutoAugmentPolicy(getattr(self.policy, "value", self.policy))
        except ValueError:
            raise ValueError(f"{name(self)}: policy must be one of "
                             f"{[p.value for p in AutoAugmentPolicy]}, got "
                             f"{self.policy!r}") from None
        self._policies = AUTO_AUGMENT_POLICIES[self.policy]

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, AllocationQuery]:
        self._choose_policy()
        return super().declare_state_and_memory(previous_state)

    def plan(self, context: BatchContext, height: int, width: int) -> Plan:
        names = list(self.space)
        u = context.uniform(5)
        chosen = _draw_bins(u[:, 0], len(self._policies))
        operations = np.full((len(u), 2), -1, dtype=np.int64)
        magnitudes = np.zeros((len(u), 2))
        for p, sub_policy in enumerate(self._policies):
            rows = chosen == p
            if not rows.any():
                continue
            for k, (op_name, probability, bin_index) in enumerate(sub_policy):
                applied = rows & (u[:, 1 + 2 * k] < probability)
                operations[applied, k] = names.index(op_name)
                signed = self.space[op_name][1]
                values = self.magnitudes(op_name, 10, height, width)
                if values is None or bin_index is None:
                    continue
                magnitudes[applied, k] = values[bin_index]
                if signed:
                    magnitudes[applied & (u[:, 2 + 2 * k] < 0.5), k] *= -1
        return Plan(names, operations, magnitudes)

    def __repr__(self) -> str:
        return f"AutoAugment(policy={self.policy.value!r}, {self._fill_repr()})"

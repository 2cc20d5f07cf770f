"""Plain NumPy references for the compiled kernels in fastforward._ext."""

from __future__ import annotations

import itertools
import math

import numpy as np


def filter_matrix(n: int, m: int, span: float | None = None,
                  out_span: float | None = None) -> np.ndarray:
    """The (m, n) matrix mapping n input pixels onto m outputs.

    Shrinking: area averaging (each output pixel averages the input interval
    it covers, weighting partial pixels by overlap). Enlarging: linear
    interpolation between half-pixel centres, edges clamped. Where the input
    covers only *span* of its pixels and the output *out_span* of its (a JPEG
    chroma plane of an odd size), the scale is their ratio and no interval
    reaches past *span*.
    """
    span = n if span is None else span
    weights = np.zeros((m, n))
    scale = span / (m if out_span is None else out_span)
    for i in range(m):
        if scale >= 1:
            lo, hi = i * scale, min((i + 1) * scale, span)
            for j in range(math.floor(lo), min(math.ceil(hi), n)):
                weights[i, j] = max(0.0, min(j + 1, hi) - max(j, lo))
            weights[i] /= weights[i].sum()
        else:
            centre = min(max((i + 0.5) * scale - 0.5, 0.0), n - 1)
            j0 = math.floor(centre)
            frac = centre - j0
            weights[i, j0] += 1 - frac
            if frac > 0:
                weights[i, j0 + 1] += frac
    return weights


def crop_resize(src: np.ndarray, y0: int, x0: int, h: int, w: int,
                out_h: int, out_w: int, flip: bool = False,
                spans: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Reference for ``crop_resize_into``, in float64: uint8 or uint16 ``(H, W, C)``
    in, the same type out (rounded half up, clamped to the type's range). *spans*:
    how much of the crop and of the output their pixels cover (height, width,
    out height, out width), as ``_resize_span_into`` takes them."""
    crop = src[y0 : y0 + h, x0 : x0 + w].astype(np.float64)
    sh, sw, soh, sow = spans or (h, w, out_h, out_w)
    rows = filter_matrix(h, out_h, sh, soh)
    cols = filter_matrix(w, out_w, sw, sow)
    out = np.einsum("oh,hwc,pw->opc", rows, crop, cols, optimize=True)
    if flip:
        out = out[:, ::-1]
    return np.clip(np.floor(out + 0.5), 0, np.iinfo(src.dtype).max).astype(src.dtype)


QONE = 1 << 14  # the whole-number taps of the enlarging path sum to this


def kernel_taps(n: int, m: int, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The C kernel's taps mapping n input pixels onto m, as it builds them.

    Returns ``(start, weights)``: output pixel ``i`` is
    ``sum_k weights[i, k] * pixel[start[i] + k]``, ``weights`` float32. The
    steps and the float32 roundings are the kernel's (``_make_filter``,
    ``_pad_filter``), so that ``crop_resize_enlarging`` can match it exactly.
    """
    scale = n / m
    taps = int(scale) + 2 if n >= m else 2
    start = np.zeros(m, np.int64)
    count = np.zeros(m, np.int64)
    weights = np.zeros((m, taps), np.float32)
    for i in range(m):
        if scale >= 1:
            lo = i * scale
            hi = lo + scale
            j0, j1 = math.floor(lo), min(math.floor(hi - 1e-9), n - 1)
            overlap = [np.float32(min(j + 1.0, hi) - max(float(j), lo)) for j in range(j0, j1 + 1)]
            total = 0.0
            for value in overlap:  # summed in order, in double, as the kernel does
                total += float(value)
            weights[i, : len(overlap)] = [np.float32(float(v) / total) for v in overlap]
            start[i], count[i] = j0, len(overlap)
        else:
            centre = max((i + 0.5) * scale - 0.5, 0.0)
            j0 = math.floor(centre)
            frac = centre - j0
            if j0 >= n - 1:
                j0, frac = n - 1, 0.0
            start[i], count[i] = j0, 2 if frac > 0 else 1
            weights[i, :2] = np.float32(1.0 - frac), np.float32(frac)
    used = min(int(count.max()), n)
    for i in range(m):  # every pixel gets `used` taps, shifted left at the right edge
        shift = int(start[i]) + used - n
        if shift > 0:
            weights[i, shift:used] = weights[i, : used - shift].copy()
            weights[i, :shift] = 0
            start[i] -= shift
        else:
            weights[i, int(count[i]) :] = 0
    weights = weights[:, :used]
    if flip:
        start, weights = start[::-1].copy(), weights[::-1].copy()
    return start, weights


def quantize(weights: np.ndarray) -> np.ndarray:
    """Each row of taps as whole numbers summing to QONE: rounded, the largest
    (first of equals) taking what the rounding lost."""
    q = np.floor(weights.astype(np.float64) * QONE + 0.5).astype(np.int64)
    rows = np.arange(len(q))
    q[rows, np.argmax(q, axis=1)] += QONE - q.sum(axis=1)
    return q


def crop_resize_enlarging(src: np.ndarray, y0: int, x0: int, h: int, w: int,
                          out_h: int, out_w: int, flip: bool = False) -> np.ndarray:
    """Exact reference for ``crop_resize_into`` when the window is enlarged
    vertically (``h < out_h``) and the horizontal filter has at most 4 taps
    (``w < 3 * out_w``, about): the horizontal pass in whole numbers (taps from
    ``quantize``), the vertical one in float32 with its weights divided by QONE,
    then rounded half up. Returns uint8 ``(out_h, out_w, channels)``."""
    assert h < out_h
    crop = src[y0 : y0 + h, x0 : x0 + w].astype(np.int64)
    xs, xw = kernel_taps(w, out_w, flip)
    assert xw.shape[1] <= 4, "wider horizontal filters stay float in the kernel"
    q = quantize(xw)
    cols = xs[:, None] + np.arange(q.shape[1])[None, :]
    rows = np.einsum("yokc,ok->yoc", crop[:, cols], q).astype(np.float32)  # exact sums
    ys, yw = kernel_taps(h, out_h)
    yw = yw / np.float32(QONE)
    out = yw[:, 0, None, None] * rows[ys]
    for k in range(1, yw.shape[1]):
        out = out + yw[:, k, None, None] * rows[ys + k]
    return np.clip(np.floor(out + np.float32(0.5)), 0, 255).astype(np.uint8)


def crop_resize_float32(src: np.ndarray, y0: int, x0: int, h: int, w: int,
                        out_h: int, out_w: int, flip: bool = False) -> np.ndarray:
    """Exact reference for ``crop_resize_into``'s float path (every uint16 image; uint8
    ones unless ``crop_resize_enlarging`` applies), before rounding: ``(out_h, out_w,
    channels)`` float32.

    The kernel's steps in its order, each a float32 operation as the kernel
    does it: when the window is enlarged vertically (``h < out_h``) each row is
    filtered horizontally, then pairs of rows combined; otherwise the rows are
    combined first (``w0·a + w1·b``, ``+ w2·c``, then ``+= wk·r``), then filtered
    horizontally (``acc = w0·p0``, then ``acc += wk·pk``)."""
    crop = src[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    xs, xw = kernel_taps(w, out_w, flip)
    ys, yw = kernel_taps(h, out_h)

    def horizontal(rows: np.ndarray) -> np.ndarray:  # (n, w, c) -> (n, out_w, c)
        acc = xw[:, 0, None] * rows[:, xs]
        for k in range(1, xw.shape[1]):
            acc = acc + xw[:, k, None] * rows[:, xs + k]
        return acc

    def vertical(rows: np.ndarray) -> np.ndarray:  # (h, n, c) -> (out_h, n, c)
        weight = yw[:, :, None, None]
        acc = weight[:, 0] * rows[ys]
        if yw.shape[1] > 1:
            acc = acc + weight[:, 1] * rows[ys + 1]
        if yw.shape[1] > 2:
            acc = acc + weight[:, 2] * rows[ys + 2]
        for k in range(3, yw.shape[1]):
            acc = acc + weight[:, k] * rows[ys + k]
        return acc

    if h < out_h:
        return vertical(horizontal(crop))
    return horizontal(vertical(crop))


def round_pixels(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The kernel's rounding of float32 values to pixels of *dtype*: ``v + 0.5`` in
    float32, truncated, clamped to the type's range."""
    rounded = np.floor(values.astype(np.float32) + np.float32(0.5))
    return np.clip(rounded, 0, np.iinfo(dtype).max).astype(dtype)


def crop_resize_exact(src: np.ndarray, y0: int, x0: int, h: int, w: int,
                      out_h: int, out_w: int, flip: bool = False) -> np.ndarray:
    """``crop_resize_into``'s pixels exactly, of the source's type: the integer path
    (``crop_resize_enlarging``) where the kernel takes it (uint8, enlarged
    vertically, at most 4 horizontal taps), the float one otherwise."""
    if src.dtype == np.uint8 and h < out_h and kernel_taps(w, out_w)[1].shape[1] <= 4:
        return crop_resize_enlarging(src, y0, x0, h, w, out_h, out_w, flip)
    return round_pixels(crop_resize_float32(src, y0, x0, h, w, out_h, out_w, flip), src.dtype)


def gather(src: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, width: int) -> np.ndarray:
    """Reference for ``gather_into``: each record in a zero-padded row."""
    out = np.zeros((len(offsets), width), np.uint8)
    for i, (offset, size) in enumerate(zip(offsets.tolist(), sizes.tolist(), strict=True)):
        out[i, :size] = src[offset : offset + size]
    return out


# ---------------------------------------------------------------------------
# References for fastforward.transforms


def random_crop(height: int, width: int, scale: tuple[float, float],
                ratio: tuple[float, float], u: np.ndarray) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, all 10 tries at once, on given uniforms.

    Uniforms 0, 2, …, 18 give the tries' areas, 1, 3, …, 19 their log-ratios,
    20 and 21 the row and the column.
    """
    u = np.asarray(u, dtype=np.float64)
    target = height * width * (scale[0] + (scale[1] - scale[0]) * u[0:20:2])
    log_ratio = np.log(np.asarray(ratio, dtype=np.float64))
    aspect = np.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1:20:2])
    ws = np.round(np.sqrt(target * aspect)).astype(int)
    hs = np.round(np.sqrt(target / aspect)).astype(int)
    fits = np.flatnonzero((ws > 0) & (ws <= width) & (hs > 0) & (hs <= height))
    if fits.size:
        h, w = int(hs[fits[0]]), int(ws[fits[0]])
        return (int(np.floor(u[20] * (height - h + 1))), int(np.floor(u[21] * (width - w + 1))),
                h, w)
    h, w = height, width
    if width / height < min(ratio):
        h = int(np.round(width / min(ratio)))
    elif width / height > max(ratio):
        w = int(np.round(height * max(ratio)))
    return (height - h) // 2, (width - w) // 2, h, w


def _blend_uint8(image: np.ndarray, other: np.ndarray | float, factor: float) -> np.ndarray:
    """FFCV's ``blend``: ``clip(f·image + (1 - f)·other)`` in float64, truncated to uint8."""
    return np.clip(factor * image.astype(np.float64) + (1 - factor) * other, 0, 255).astype(
        np.uint8)


def gray_levels(image: np.ndarray) -> np.ndarray:
    """FFCV's gray image: ``0.2989 R + 0.587 G + 0.114 B`` truncated to uint8, in float64."""
    r, g, b = (image[..., c].astype(np.float64) for c in range(3))
    return (0.2989 * r + 0.587 * g + 0.114 * b).astype(np.uint8)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """FFCV's RandomBrightness on one image with a given factor."""
    return _blend_uint8(image, 0.0, factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """FFCV's RandomContrast on one image with a given factor."""
    return _blend_uint8(image, gray_levels(image).mean(), factor)


def saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """FFCV's RandomSaturation on one image with a given factor."""
    return _blend_uint8(image, gray_levels(image)[..., None].astype(np.float64), factor)


# ---------------------------------------------------------------------------
# References for fastforward._ext.augment: torchvision v2's operations on uint8
# images (torchvision.transforms.v2.functional), as torch computes them on a
# CPU: float32 steps, with torch's fused multiply-adds (``add_(x, alpha=k)``)
# done in float64 and rounded once (exact: see augment_kernels.h).


def _fma32(a: np.ndarray | float, b: np.ndarray | float, c: np.ndarray | float) -> np.ndarray:
    """float32 ``a * b + c`` rounded once."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64)
            + np.asarray(c, np.float64)).astype(np.float32)


def _clamp_u8(values: np.ndarray) -> np.ndarray:
    """torch's ``clamp_(0, 255).to(uint8)``: clamp, then truncate."""
    return np.clip(values, 0, 255).astype(np.uint8)


def tv_gray(image: np.ndarray) -> np.ndarray:
    """torchvision's floored gray levels: ``r*0.2989``, then ``+ g*0.587`` and
    ``+ b*0.114`` as fused multiply-adds, in float32."""
    x = image.astype(np.float64)
    gray = (x[..., 0] * np.float64(np.float32(0.2989))).astype(np.float32)
    gray = _fma32(x[..., 1], np.float32(0.587), gray)
    gray = _fma32(x[..., 2], np.float32(0.114), gray)
    return np.floor(gray)


def tv_blend(image: np.ndarray, other: np.ndarray | float, ratio: float) -> np.ndarray:
    """torchvision's ``_blend``: ``image * ratio`` (float32), then ``+ other * (1 - ratio)``
    fused, clamped, truncated."""
    return _clamp_u8(_fma32(other, np.float32(1.0 - ratio),
                            image.astype(np.float32) * np.float32(ratio)))


def tv_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """``adjust_brightness``."""
    return _clamp_u8(image.astype(np.float32) * np.float32(factor))


def tv_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """``adjust_saturation``."""
    return tv_blend(image, tv_gray(image)[..., None], factor)


def tv_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """``adjust_contrast``: blended with the float32 mean of the gray levels."""
    gray = tv_gray(image)
    mean = np.float32(gray.astype(np.float64).sum()) / np.float32(gray.size)
    return tv_blend(image, mean, factor)


def tv_sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """``adjust_sharpness``: the 3×3 smoothing (1s around a 5, over 13, rounded) blended
    in by ``fma(blur - v, 1 - factor, v)``; the one-pixel border untouched."""
    h, w = image.shape[:2]
    if h <= 2 or w <= 2:
        return image.copy()
    x = image.astype(np.int64)
    total = 4 * x[1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            total = total + x[dy : h - 2 + dy, dx : w - 2 + dx]
    blur = np.rint(total / 13.0)  # never a tie: 13 is odd
    inner = x[1:-1, 1:-1]
    out = image.copy()
    out[1:-1, 1:-1] = _clamp_u8(_fma32(blur - inner, np.float32(1.0 - factor), inner))
    return out


def tv_posterize(image: np.ndarray, bits: int) -> np.ndarray:
    """``posterize``: the top *bits* bits."""
    return image & np.uint8((0xFF << (8 - bits)) & 0xFF)


def tv_solarize(image: np.ndarray, threshold: float) -> np.ndarray:
    """``solarize``: values ``>= threshold`` (compared in float32) inverted."""
    return np.where(image.astype(np.float32) >= np.float32(threshold), 255 - image, image)


def tv_autocontrast(image: np.ndarray) -> np.ndarray:
    """``autocontrast``, per channel, in float32."""
    out = image.copy()
    for c in range(image.shape[2]):
        channel = image[..., c]
        low, high = np.float32(channel.min()), np.float32(channel.max())
        if low != high:
            inverse = (high - low) * np.float32(1.0 / 255)
            out[..., c] = _clamp_u8((channel.astype(np.float32) - low) / inverse)
    return out


def tv_equalize(image: np.ndarray) -> np.ndarray:
    """``equalize``, per channel (torchvision v2's integer LUT, after PIL's)."""
    out = image.copy()
    for c in range(image.shape[2]):
        channel = image[..., c]
        hist = np.bincount(channel.ravel(), minlength=256)
        cumulative = np.cumsum(hist)
        step = (channel.size - hist[np.argmax(cumulative)]) // 255
        if step:
            lut = np.clip((cumulative[:-1] + step // 2) // step, 0, 255)
            out[..., c] = np.concatenate([[0], lut]).astype(np.uint8)[channel]
    return out


def tv_invert(image: np.ndarray) -> np.ndarray:
    """``invert``."""
    return 255 - image


def tv_inverse_affine(center: tuple[float, float], angle: float,
                      translate: tuple[float, float], shear: tuple[float, float]) -> list[float]:
    """torchvision's ``_get_inverse_affine_matrix`` (scale 1)."""
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += cx - m[0] * (cx + tx) - m[1] * (cy + ty)
    m[5] += cy - m[3] * (cx + tx) - m[4] * (cy + ty)
    return m


def tv_affine(image: np.ndarray, matrix: list[float], bilinear: bool,
              fill: tuple[float, float, float] | None) -> np.ndarray:
    """The grid transform of torchvision's ``affine``/``rotate`` with the inverse *matrix*,
    in float32 as torch computes it on a CPU: the matrix's rows divided by w/2 and
    h/2, the grid ``(X*a + Y*b) + c``, grid_sample's ``fma(g + 1, w/2, -0.5)``; its
    nearest neighbour (half to even) or bilinear weights (from ``1 - frac``, summed
    by fused multiply-adds), zeros outside; with a *fill*, torchvision's mask blends
    it in. Rounded half to even."""
    h, w = image.shape[:2]
    f32 = np.float32
    m = np.asarray(matrix, np.float32)
    half_w, half_h = f32(0.5 * w), f32(0.5 * h)
    ax, bx, cx = m[0] / half_w, m[1] / half_w, m[2] / half_w
    ay, by, cy = m[3] / half_h, m[4] / half_h, m[5] / half_h
    X, Y = np.meshgrid(np.arange(w, dtype=np.float32) + f32((1 - w) * 0.5),
                       np.arange(h, dtype=np.float32) + f32((1 - h) * 0.5))
    ix = _fma32((X * ax + Y * bx) + cx + f32(1), half_w, f32(-0.5))
    iy = _fma32((X * ay + Y * by) + cy + f32(1), half_h, f32(-0.5))
    src = image.astype(np.float32)

    def tap(yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
        values = src[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
        return np.where(inside[..., None], values, f32(0)), inside.astype(np.float32)

    f = None if fill is None else np.asarray(fill, np.float32)
    if not bilinear:
        values, inside = tap(np.rint(iy).astype(np.int64), np.rint(ix).astype(np.int64))
        out = values if f is None else np.where(inside[..., None] < 0.5, f, values)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    x0, y0 = np.floor(ix), np.floor(iy)
    dx, dy = ix - x0, iy - y0
    ex, sy = f32(1) - dx, f32(1) - dy
    weights = [sy * ex, sy * dx, dy * ex, dy * dx]
    X0, Y0 = x0.astype(np.int64), y0.astype(np.int64)
    taps = [tap(Y0, X0), tap(Y0, X0 + 1), tap(Y0 + 1, X0), tap(Y0 + 1, X0 + 1)]
    out = taps[0][0] * weights[0][..., None]  # then fused multiply-adds, as torch's loop
    for (values, _), wt in zip(taps[1:], weights[1:], strict=True):
        out = _fma32(values, wt[..., None], out)
    if f is not None:
        mask = sum(inside * wt for (_, inside), wt in zip(taps, weights, strict=True))
        out = (out - f) * mask[..., None] + f
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def tv_rotate(image: np.ndarray, angle: float, bilinear: bool,
              fill: tuple[float, float, float] | None) -> np.ndarray:
    """``rotate`` (about the centre, not expanded), with its fast paths for quarter turns."""
    angle = angle % 360
    h, w = image.shape[:2]
    if angle == 0:
        return image.copy()
    if angle == 180 or (h == w and angle in (90, 270)):
        return np.rot90(image, int(angle) // 90).copy()
    return tv_affine(image, tv_inverse_affine((0.0, 0.0), -angle, (0.0, 0.0), (0.0, 0.0)),
                     bilinear, fill)


def tv_shear(image: np.ndarray, magnitude: float, axis: str, bilinear: bool,
             fill: tuple[float, float, float] | None) -> np.ndarray:
    """The policies' ShearX/ShearY: ``affine`` with ``degrees(atan(magnitude))`` of shear
    about the top-left corner."""
    h, w = image.shape[:2]
    degrees = math.degrees(math.atan(magnitude))
    shear = (degrees, 0.0) if axis == "x" else (0.0, degrees)
    return tv_affine(image, tv_inverse_affine((-w * 0.5, -h * 0.5), 0.0, (0.0, 0.0), shear),
                     bilinear, fill)


def tv_translate(image: np.ndarray, dx: int, dy: int, bilinear: bool,
                 fill: tuple[float, float, float] | None) -> np.ndarray:
    """The policies' TranslateX/TranslateY: ``affine`` by whole pixels."""
    return tv_affine(image, tv_inverse_affine((0.0, 0.0), 0.0, (float(dx), float(dy)),
                                              (0.0, 0.0)), bilinear, fill)


def crop_nearest(src: np.ndarray, y0: int, x0: int, h: int, w: int, out_h: int, out_w: int,
                 flip: bool = False) -> np.ndarray:
    """Reference for ``crop_nearest_into``: each output pixel takes the source pixel
    under its centre (computed in exact fractions)."""
    from fractions import Fraction

    rows = [y0 + min(h - 1, math.floor(Fraction(2 * i + 1, 2) * h / out_h)) for i in range(out_h)]
    cols = [x0 + min(w - 1, math.floor(Fraction(2 * j + 1, 2) * w / out_w)) for j in range(out_w)]
    out = src[np.ix_(rows, cols)]
    return out[:, ::-1] if flip else out


def map_box(box: tuple[float, float, float, float], y: int, x: int, crop_h: int, crop_w: int,
            out_h: int, out_w: int, flip: bool) -> tuple[list[float], float]:
    """Reference for one corner box through a crop, resize and flip: the clipped
    box and the fraction of its area left (plain Python floats)."""
    x0, y0, x1, y1 = box
    sx, sy = out_w / crop_w, out_h / crop_h
    nx0, nx1 = (x0 - x) * sx, (x1 - x) * sx
    ny0, ny1 = (y0 - y) * sy, (y1 - y) * sy
    if flip:
        nx0, nx1 = out_w - nx1, out_w - nx0
    area = (nx1 - nx0) * (ny1 - ny0)
    cx0, cx1 = min(max(nx0, 0), out_w), min(max(nx1, 0), out_w)
    cy0, cy1 = min(max(ny0, 0), out_h), min(max(ny1, 0), out_h)
    inside = max(cx1 - cx0, 0) * max(cy1 - cy0, 0)
    return [cx0, cy0, cx1, cy1], (inside / area if area > 0 else 0.0)


def shorter_side_size(height: int, width: int, size: int, max_size: int | None) -> tuple[int, int]:
    """torchvision's ``Resize(size, max_size)`` output ``(height, width)``, transcribed
    from ``torchvision.transforms.v2.functional._geometry._compute_resized_output_size``."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_h, new_w

# -- fastforward._ext.layout ----------------------------------------------------------------------


def locate_payloads(table_ptrs: np.ndarray, table_sizes: np.ndarray, table_owners: np.ndarray,
                    k: int, ptrs: np.ndarray, shift: int, first_page: int, pages: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reference for ``locate_payloads`` (no guessing: a search per sample). Field *k*'s
    row of sample *s* is its *k*-th row (in offset order) where that is at the
    pointer (FFCV gives an empty payload the next one's offset: both are there),
    else the first of its rows at the pointer.

    Returns ``(sizes, pages, flags, rows)``; *pages* is updated as the kernel updates it.
    """
    n = len(ptrs)
    sizes = np.zeros(n, np.uint64)
    flags = np.zeros(n, np.uint8)
    found = np.full(n, -1, np.int64)
    pages = pages.copy()
    for s in range(n):
        ptr = int(ptrs[s])
        mine = [j for j in range(len(table_ptrs)) if int(table_owners[j]) == s]
        at = [j for j in mine if int(table_ptrs[j]) == ptr]
        if not at:
            flags[s] = 1
            continue
        row = mine[k] if k < len(mine) and mine[k] in at else at[0]
        found[s] = row
        size = int(table_sizes[row])
        sizes[s] = size
        if size == 0:  # nothing to read: neither a page nor a flag
            continue
        page = (ptr >> shift) - first_page
        if ((ptr + size - 1) >> shift) - first_page != page:
            flags[s] = 2
        elif pages[s] < 0:
            pages[s] = page
        elif pages[s] != page:
            flags[s] = 4
    return sizes, pages, flags, found


def scan_table(ptrs: np.ndarray, sizes: np.ndarray, owners: np.ndarray, lo: int, hi: int,
               num_samples: int, empty_from: int = -1) -> tuple[int, int, bool]:
    """Reference for ``scan_table``: an empty allocation may lie in ``[empty_from, hi]``."""
    empty_lo = lo if empty_from < 0 else empty_from
    ends = [int(p) + int(z) for p, z in zip(ptrs, sizes, strict=True)]
    outside = [i for i, (p, e) in enumerate(zip(ptrs, ends, strict=True))
               if (not empty_lo <= int(p) <= hi if int(sizes[i]) == 0
                   else int(p) < lo or e > hi or e >= 1 << 64)]
    stranger = [i for i, o in enumerate(owners) if int(o) >= num_samples]
    in_order = all(int(a) <= int(b) for a, b in itertools.pairwise(ptrs))
    return (outside[0] if outside else -1), (stranger[0] if stranger else -1), in_order


def find_overlaps(ptrs: np.ndarray, sizes: np.ndarray) -> tuple[int, int, int]:
    """Reference for ``find_overlaps``: non-empty allocations starting before the
    furthest end of the earlier ones."""
    full = [i for i in range(len(ptrs)) if int(sizes[i]) > 0]
    count, pair, end, last = 0, (-1, -1), 0, -1
    for i in full:
        if last >= 0 and int(ptrs[i]) < end:
            count += 1
            if pair == (-1, -1):
                pair = (last, i)
        if last < 0 or int(ptrs[i]) + int(sizes[i]) > end:
            end, last = int(ptrs[i]) + int(sizes[i]), i
    return count, *pair

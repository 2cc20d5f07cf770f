"""The policies' operations on torch tensors, batched, with per-sample parameters.

The same codes and parameters as ``fastforward._ext.augment`` and the same
arithmetic, step for step, so that a batch gives the CPU kernel's exact
pixels on any device: every float32 step is one torch operation (correctly
rounded, never fused with the next); where the kernel computes a fused
multiply-add in double, so does this (float64 tensors). Sums are integers
(no convolution: cuDNN may round them through TF32), interpolation gathers
the neighbours itself (``grid_sample`` on a GPU may fuse its arithmetic).

torchvision's own v2 operations take one set of parameters per call; here
each sample has its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._ext.augment import OPS

_NONE = -1
(COPY, AFFINE, SHIFT, ROT90, BRIGHTNESS, SATURATION, CONTRAST, SHARPNESS, POSTERIZE, SOLARIZE,
 AUTOCONTRAST, EQUALIZE, INVERT) = range(len(OPS))

# torchvision's gray weights as the float32 values torch multiplies by, in double
_GRAY = tuple(float(np.float32(w)) for w in (0.2989, 0.587, 0.114))


# Copies of per-batch parameters to the GPU are non_blocking: from pageable memory,
# CUDA returns once the bytes are staged (so the NumPy temporaries may go), and
# the loader's stream is not drained before each of them.


def _column(values: np.ndarray, like: Any, dtype: Any) -> Any:
    """Per-sample *values* as an ``(n, 1, 1, 1)`` tensor of *dtype* on *like*'s device
    (converted on the host, as the kernel converts: double to float rounds to nearest)."""
    import torch

    host = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
    return host.to(dtype).reshape(-1, 1, 1, 1).to(like.device, non_blocking=True)


def _to_u8(values: Any) -> Any:
    """clamp to 0..255, then truncate (the kernel's ``ff_aug_u8``)."""
    import torch

    return values.clamp_(0, 255).to(torch.uint8)


def _gray(x: Any) -> Any:
    """``(n, 1, H, W)`` float32 floored gray levels, as ``ff_aug_gray``."""
    r, g, b = (x[:, c : c + 1].double() for c in range(3))
    gray = (r * _GRAY[0]).float()
    gray = (g * _GRAY[1] + gray.double()).float()
    gray = (b * _GRAY[2] + gray.double()).float()
    return gray.floor_()


def _fill_value(fill: np.ndarray | None, like: Any) -> Any:
    """The value outside the image, ``(1, 3, 1)`` uint8: 0, or the fill rounded half to even."""
    import torch

    values = np.zeros(3) if fill is None else np.rint(np.float32(fill)).clip(0, 255)
    return torch.from_numpy(values.astype(np.uint8)).reshape(1, 3, 1).to(like.device,
                                                                          non_blocking=True)


def _fma(a: Any, b: Any, c: Any) -> Any:
    """float32 ``a * b + c`` rounded once (the kernel's ``ff_aug_fma``), in float64."""
    import torch

    b = b.double() if isinstance(b, torch.Tensor) else b
    c = c.double() if isinstance(c, torch.Tensor) else c
    return (a.double() * b + c).float()


def _sample_positions(p: np.ndarray, h: int, w: int, like: Any) -> tuple[Any, Any]:
    """``(n, H*W)`` float32 source positions (ix, iy) of every output pixel, as the
    kernel (and torch's affine grid and grid_sample) compute them, step by step."""
    import torch

    dev = like.device
    half_w, half_h = np.float32(0.5 * w), np.float32(0.5 * h)
    m = np.asarray(p[:, :6], dtype=np.float32)
    rows = np.stack([m[:, 0] / half_w, m[:, 1] / half_w, m[:, 2] / half_w,
                     m[:, 3] / half_h, m[:, 4] / half_h, m[:, 5] / half_h], axis=1)
    on = torch.from_numpy(np.ascontiguousarray(rows)).to(dev, non_blocking=True)
    col = [c[:, None] for c in on.unbind(1)]
    X = (torch.arange(w, dtype=torch.float32, device=dev) + float((1 - w) * 0.5)).repeat(h)
    Y = (torch.arange(h, dtype=torch.float32, device=dev)
         + float((1 - h) * 0.5)).repeat_interleave(w)
    gx = ((X * col[0] + Y * col[1]) + col[2]) + 1.0
    gy = ((X * col[3] + Y * col[4]) + col[5]) + 1.0
    return _fma(gx, float(half_w), -0.5), _fma(gy, float(half_h), -0.5)


def _taps(flat: Any, yy: Any, xx: Any, h: int, w: int) -> tuple[Any, Any]:
    """The pixels at integer positions ``(n, H*W)`` of ``flat`` ``(n, 3, H*W)`` (0
    outside) and whether each is inside."""
    import torch

    inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
    index = torch.where(inside, yy * w + xx, torch.zeros_like(xx))
    values = torch.gather(flat, 2, index[:, None, :].expand(-1, 3, -1))
    return values * inside[:, None, :].to(values.dtype), inside


def _affine(x: Any, p: np.ndarray, bilinear: bool, fill: np.ndarray | None) -> Any:
    import torch

    n, _, h, w = x.shape
    flat = x.reshape(n, 3, h * w)
    ix, iy = _sample_positions(p, h, w, x)
    if not bilinear:
        ix, iy = ix.clamp(-1.0, float(w)), iy.clamp(-1.0, float(h))  # nothing moves in
        xx, yy = torch.round(ix).long(), torch.round(iy).long()  # half to even
        values, inside = _taps(flat, yy, xx, h, w)
        out = torch.where(inside[:, None, :], values, _fill_value(fill, x))
        return out.reshape(n, 3, h, w)
    ix, iy = ix.clamp(-2.0, w + 1.0), iy.clamp(-2.0, h + 1.0)  # as the kernel: nothing moves in
    x0, y0 = torch.floor(ix), torch.floor(iy)
    dx, dy = ix - x0, iy - y0
    ex, sy = 1.0 - dx, 1.0 - dy
    weights = [sy * ex, sy * dx, dy * ex, dy * dx]
    X0, Y0 = x0.long(), y0.long()
    corners = [(Y0, X0), (Y0, X0 + 1), (Y0 + 1, X0), (Y0 + 1, X0 + 1)]
    total, mask = None, None
    for (yy, xx), weight in zip(corners, weights, strict=True):
        values, inside = _taps(flat, yy, xx, h, w)
        if total is None:
            total = values.float() * weight[:, None, :]
        else:  # fused, as torch's compiled grid_sample sums
            total = _fma(values.float(), weight[:, None, :], total)
        if fill is not None:
            part = inside.float() * weight
            mask = part if mask is None else mask + part
    assert total is not None  # the loop ran over the four corners
    if fill is not None:
        assert mask is not None
        f = torch.from_numpy(np.float32(fill)).reshape(1, 3, 1).to(x.device,
                                                                   non_blocking=True)
        total = (total - f) * mask[:, None, :] + f
    return _to_u8(torch.round(total)).reshape(n, 3, h, w)


def _shift(x: Any, p: np.ndarray, bilinear: bool, fill: np.ndarray | None) -> Any:
    # whole-pixel positions: the nearest neighbour is the kernel's copy, in either mode
    matrices = np.zeros((len(p), 6))
    matrices[:, 0] = matrices[:, 4] = 1.0
    matrices[:, 2], matrices[:, 5] = -p[:, 0], -p[:, 1]
    return _affine(x, matrices, False, fill)


def _rot90(x: Any, p: np.ndarray, bilinear: bool, fill: np.ndarray | None) -> Any:
    import torch

    out = torch.empty_like(x)
    for k in (1, 2, 3):
        rows = np.flatnonzero(p[:, 0] == k)
        if len(rows):
            index = torch.from_numpy(rows).to(x.device, non_blocking=True)
            out.index_copy_(0, index, torch.rot90(x.index_select(0, index), k, dims=(2, 3)))
    return out


def _brightness(x: Any, p: np.ndarray, bilinear: bool, fill: np.ndarray | None) -> Any:
    import torch

    return _to_u8(x.float() * _column(p[:, 0], x, torch.float32))


def _blend_fused(x: Any, other: Any, factor: np.ndarray) -> Any:
    """clamp(fma(other, (float)(1 - factor), x * (float)factor)), the fma in double."""
    import torch

    f = _column(factor, x, torch.float32)
    alpha = _column(1.0 - factor, x, torch.float32).double()
    return _to_u8((other.double() * alpha + (x.float() * f).double()).float())


def _saturation(x: Any, p: np.ndarray, bilinear: bool, fill: np.ndarray | None) -> Any:
    return _blend_fused(x, _gray(x), p[:, 0])


def _contrast(x: Any, p: np.ndarray, bilinear: bool, fill: np.ndarray | None) -> Any:
    import torch

    n, _, h, w = x.shape
    total = _gray(x).to(torch.int64).sum(dim=(1, 2, 3)).float()
    # divided by a tensor on the same device: CUDA's division by a CPU scalar multiplies
    # by its reciprocal, a bit off the CPU's quotient (a pixel off after the blend)
    mean = (total / torch.full_like(total, float(h * w))).reshape(n, 1, 1, 1)
    return _blend_fused(x, mean, p[:, 0])


def _sharpness(x: Any, p: np.ndarray, bilinear: bool, fill: np.ndarray | None) -> Any:
    import torch

    h, w = x.shape[2:]
    if h <= 2 or w <= 2:
        return x.clone()
    v = x.to(torch.int32)
    s = 4 * v[:, :, 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            s = s + v[:, :, dy : h - 2 + dy, dx : w - 2 + dx]
    blur = torch.div(2 * s + 13, 26, rounding_mode="floor")
    inner = v[:, :, 1:-1, 1:-1]
    alpha = _column(1.0 - p[:, 0], x, torch.float32).double()
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = _to_u8(((blur - inner).double() * alpha + inner.double()).float())
    return out


def _posterize(x: Any, p: np.ndarray, bilinear: bool, fill: np.ndarray | None) -> Any:
    import torch

    bits = p[:, 0].astype(np.int64)
    masks = np.where(bits >= 8, 0xFF, ((1 << bits) - 1) << (8 - np.minimum(bits, 8))) & 0xFF
    mask = torch.from_numpy(masks.astype(np.uint8)).reshape(-1, 1, 1, 1).to(
        x.device, non_blocking=True)
    return x & mask


def _solarize(x: Any, p: np.ndarray, bilinear: bool, fill: np.ndarray | None) -> Any:
    import torch

    threshold = _column(p[:, 0], x, torch.float32)
    return torch.where(x.float() >= threshold, 255 - x, x)


def _autocontrast(x: Any, p: np.ndarray, bilinear: bool, fill: np.ndarray | None) -> Any:
    import torch

    low = x.amin(dim=(2, 3), keepdim=True).float()
    high = x.amax(dim=(2, 3), keepdim=True).float()
    flat = high == low
    inv = (high - low) * torch.tensor(float(np.float32(1.0 / 255)), dtype=torch.float32)
    scaled = _to_u8((x.float() - low) / torch.where(flat, torch.ones_like(inv), inv))
    return torch.where(flat, x, scaled)


def _equalize(x: Any, p: np.ndarray, bilinear: bool, fill: np.ndarray | None) -> Any:
    import torch

    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w).long()
    hist = torch.zeros((n, c, 256), dtype=torch.int64, device=x.device)
    hist.scatter_add_(2, flat, torch.ones_like(flat))
    cum = hist.cumsum(dim=2)
    last = 255 - torch.flip(hist > 0, dims=(2,)).int().argmax(dim=2, keepdim=True)
    step = torch.div(h * w - hist.gather(2, last), 255, rounding_mode="floor")  # (n, c, 1)
    safe = step.clamp(min=1)
    lut = torch.div(cum[:, :, :-1] + torch.div(safe, 2, rounding_mode="floor"), safe,
                    rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([torch.zeros_like(lut[:, :, :1]), lut], dim=2).to(torch.uint8)
    equalized = lut.gather(2, flat).reshape(n, c, h, w)
    return torch.where((step > 0)[..., None], equalized, x)


def _invert(x: Any, p: np.ndarray, bilinear: bool, fill: np.ndarray | None) -> Any:
    return 255 - x


def _copy(x: Any, p: np.ndarray, bilinear: bool, fill: np.ndarray | None) -> Any:
    return x.clone()


_OPERATIONS = {COPY: _copy, AFFINE: _affine, SHIFT: _shift, ROT90: _rot90,
               BRIGHTNESS: _brightness, SATURATION: _saturation, CONTRAST: _contrast,
               SHARPNESS: _sharpness, POSTERIZE: _posterize, SOLARIZE: _solarize,
               AUTOCONTRAST: _autocontrast, EQUALIZE: _equalize, INVERT: _invert}


def apply_kernel_ops(images: Any, ops: np.ndarray, params: np.ndarray, bilinear: bool,
                     fill: np.ndarray | None) -> Any:
    """``augment_into``'s result for torch images ``(B, 3, H, W)`` uint8 on any device.

    Args:
        images: the batch (any strides); not modified.
        ops: ``(B, K)`` operation codes (``fastforward._ext.augment.OPS``, -1: none).
        params: ``(B, K, 6)`` their parameters.
        bilinear: interpolation of ``AFFINE``.
        fill: None or three values in 0..255.

    Returns:
        A new contiguous ``(B, 3, H, W)`` uint8 tensor on the images' device.
    """
    import torch

    current = images.contiguous()
    if current.data_ptr() == images.data_ptr():
        current = current.clone()
    for k in range(ops.shape[1]):
        codes = ops[:, k]
        for code in np.unique(codes).tolist():
            if code == _NONE:
                continue
            rows = np.flatnonzero(codes == code)
            index = torch.from_numpy(rows).to(images.device, non_blocking=True)
            result = _OPERATIONS[code](current.index_select(0, index), params[rows, k],
                                       bilinear, fill)
            current.index_copy_(0, index, result)
    return current

"""A sample's geometry: where its image decoder cropped, how it resized and flipped.

A decoder that decides per-sample geometry (the crop decoders; they set
``Decoder.publishes_geometry``) writes one ``GEOMETRY`` row per sample when
another part of the loader follows it: a mask decoder, a box or keypoint
operation, anything whose ``follows`` names the image's pipeline. The row is
decided once, by the image decoder, in whichever worker decodes the sample,
and kept in the batch's slot (``"<pipeline>/geometry"``); followers read it
from ``context.geometry[<pipeline>]``, rows aligned with their own samples.
So masks and boxes land exactly where the image's pixels went, whatever the
number or kind of workers.

The mapping from source pixels to output pixels, for a row ``g``: a source
point ``(y, x)`` (pixel centres at ``+0.5``) goes to

    oy = (y - g.y) * g.out_height / g.crop_height
    ox = (x - g.x) * g.out_width / g.crop_width,   then ox = g.out_width - ox if g.flip

(``map_points`` does it for arrays of points.)
"""

from __future__ import annotations

import numpy as np

GEOMETRY = np.dtype([
    ("height", "<i4"), ("width", "<i4"),  # the stored image
    ("y", "<i4"), ("x", "<i4"), ("crop_height", "<i4"), ("crop_width", "<i4"),  # its window
    ("out_height", "<i4"), ("out_width", "<i4"),  # what the window became
    ("flip", "u1"),  # mirrored left-right after resizing
])
"""One sample's geometry (see the module docstring)."""


def map_points(geometry: np.ndarray, ys: np.ndarray, xs: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (float, in pixels, edges at integers) to output coordinates,
    for one sample's *geometry* row."""
    g = geometry
    oy = (np.asarray(ys, np.float64) - g["y"]) * int(g["out_height"]) / int(g["crop_height"])
    ox = (np.asarray(xs, np.float64) - g["x"]) * int(g["out_width"]) / int(g["crop_width"])
    if g["flip"]:
        ox = g["out_width"] - ox
    return oy, ox


def fill(rows: np.ndarray, heights: np.ndarray, widths: np.ndarray, crops: np.ndarray,
         out_height: int | np.ndarray, out_width: int | np.ndarray, flips: np.ndarray) -> None:
    """Write the geometry of a range of samples into *rows* (a ``GEOMETRY`` array)."""
    rows["height"], rows["width"] = heights, widths
    rows["y"], rows["x"] = crops[:, 0], crops[:, 1]
    rows["crop_height"], rows["crop_width"] = crops[:, 2], crops[:, 3]
    rows["out_height"], rows["out_width"] = out_height, out_width
    rows["flip"] = flips


BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
"""Box layouts: corners ``(x0, y0, x1, y1)``, COCO's ``(x0, y0, width, height)``,
or centre and size ``(cx, cy, width, height)``."""


def _per_sample(rows: np.ndarray, extra_dims: int) -> dict[str, np.ndarray]:
    """Each sample's mapping as float64 arrays broadcastable over *extra_dims*
    trailing dimensions."""
    shape = (-1,) + (1,) * extra_dims
    return {
        "y": rows["y"].astype(np.float64).reshape(shape),
        "x": rows["x"].astype(np.float64).reshape(shape),
        "ch": rows["crop_height"].astype(np.float64).reshape(shape),
        "cw": rows["crop_width"].astype(np.float64).reshape(shape),
        "oh": rows["out_height"].astype(np.float64).reshape(shape),
        "ow": rows["out_width"].astype(np.float64).reshape(shape),
        "flip": rows["flip"].astype(bool).reshape(shape),
        "height": rows["height"].astype(np.float64).reshape(shape),
        "width": rows["width"].astype(np.float64).reshape(shape),
    }


def to_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    """*boxes* (``(..., 4)``) in *box_format* as corners, float64."""
    b = np.asarray(boxes, np.float64)
    if box_format == "xyxy":
        return b.copy()
    if box_format == "xywh":
        return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)
    if box_format == "cxcywh":
        return np.concatenate([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], axis=-1)
    raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")


def from_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    """Corner boxes (``(..., 4)``) in *box_format*."""
    if box_format == "xyxy":
        return boxes
    size = boxes[..., 2:] - boxes[..., :2]
    if box_format == "xywh":
        return np.concatenate([boxes[..., :2], size], axis=-1)
    if box_format == "cxcywh":
        return np.concatenate([boxes[..., :2] + size / 2, size], axis=-1)
    raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")


def not_boxes(boxes: np.ndarray, box_format: str | None) -> np.ndarray:
    """Which rows of *boxes* (``(..., 4)``) are not boxes: a coordinate NaN or
    infinite, or, where *box_format* is given, a far edge before its near one
    (a negative width or height). Boolean, ``boxes.shape[:-1]``."""
    b = np.asarray(boxes, np.float64)
    bad = np.logical_not(np.isfinite(b).all(axis=-1, keepdims=False)).reshape(b.shape[:-1])
    if box_format is not None:
        xyxy = to_xyxy(b, box_format)
        with np.errstate(invalid="ignore"):
            bad |= ~((xyxy[..., 2] >= xyxy[..., 0]) & (xyxy[..., 3] >= xyxy[..., 1]))
    return bad


def map_boxes(rows: np.ndarray, boxes: np.ndarray, box_format: str = "xyxy",
              normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the source images to boxes of the output images, clipped to them.

    Args:
        rows: ``(n,)`` ``GEOMETRY`` rows, one per sample.
        boxes: ``(n, m, 4)`` boxes of each sample, in source pixels (edges at
            integers: a box covering pixel columns 3 and 4 is ``x0=3, x1=5``),
            or in fractions of the source's width and height with *normalized*.
        box_format: one of ``BOX_FORMATS``, for *boxes* and the result.

    Returns:
        ``(mapped, visible)``: the boxes in output pixels (float64, mirrored
        with the image, clipped to the output), and the fraction of each
        box's area that is left inside the output (0 for a box of no area).
    """
    g = _per_sample(rows, 1)
    b = to_xyxy(boxes, box_format)
    if normalized:
        b *= np.stack([g["width"], g["height"], g["width"], g["height"]], axis=-1)
    # times the output's size, then divided by the window's, not times their ratio:
    # a whole-pixel edge on the window's edge lands exactly on the output's (times
    # the ratio, 313 of 5,000 landed an ulp off it, and mirrored, 3.6e-15 from 0)
    x0 = (b[..., 0] - g["x"]) * g["ow"] / g["cw"]
    x1 = (b[..., 2] - g["x"]) * g["ow"] / g["cw"]
    y0 = (b[..., 1] - g["y"]) * g["oh"] / g["ch"]
    y1 = (b[..., 3] - g["y"]) * g["oh"] / g["ch"]
    # The fraction left inside is measured in source pixels, against the window
    # (whole pixels), not in output pixels: scaled there, a box with exactly
    # min_visibility of its area inside came out an ulp under it (0.19999999999999998
    # for 0.2) and was dropped. Before the mirror, which changes neither.
    shape = x0.shape[:1] + (1,) * (x0.ndim - 1)
    wx0, wy0 = g["x"], g["y"]
    wx1 = wx0 + rows["crop_width"].astype(np.float64).reshape(shape)
    wy1 = wy0 + rows["crop_height"].astype(np.float64).reshape(shape)
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    inside = (np.maximum(np.minimum(b[..., 2], wx1) - np.maximum(b[..., 0], wx0), 0)
              * np.maximum(np.minimum(b[..., 3], wy1) - np.maximum(b[..., 1], wy0), 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        visible = np.where(area > 0, np.minimum(inside / np.where(area > 0, area, 1), 1.0), 0.0)
    cx0, cx1 = np.clip(x0, 0, g["ow"]), np.clip(x1, 0, g["ow"])
    cy0, cy1 = np.clip(y0, 0, g["oh"]), np.clip(y1, 0, g["oh"])
    cx0, cx1 = np.where(g["flip"], g["ow"] - cx1, cx0), np.where(g["flip"], g["ow"] - cx0, cx1)
    mapped = np.stack([cx0, cy0, cx1, cy1], axis=-1)
    return from_xyxy(mapped, box_format), visible


def map_xy(rows: np.ndarray, points: np.ndarray, normalized: bool = False) -> np.ndarray:
    """Points ``(n, ..., D)`` whose first two values are ``x, y`` (source pixels,
    pixel centres at ``+0.5``; fractions with *normalized*) to output pixels,
    mirrored with the image; other values are kept. Float64."""
    p = np.array(points, np.float64)
    g = _per_sample(rows, p.ndim - 2)
    x, y = p[..., 0], p[..., 1]
    if normalized:
        x, y = x * g["width"], y * g["height"]
    x = (x - g["x"]) * g["ow"] / g["cw"]
    p[..., 0] = np.where(g["flip"], g["ow"] - x, x)
    p[..., 1] = (y - g["y"]) * g["oh"] / g["ch"]
    return p


def map_keypoints(rows: np.ndarray, keypoints: np.ndarray, normalized: bool = False,
                  flip_index: np.ndarray | None = None) -> np.ndarray:
    """Keypoints ``(n, m, K, D)`` (``x, y``, then a visibility when D ≥ 3) to output
    pixels: mapped as ``map_xy``, a keypoint outside the output marked not
    visible (its visibility set to 0; its coordinates kept), and, for mirrored
    samples, reordered by *flip_index* (``K`` indices: left and right swapped).

    The output is the closed rectangle ``0 <= x <= width, 0 <= y <= height``:
    a keypoint on its border (an integer coordinate where the crop's edge
    lies) is inside, on either side, so mirroring never changes whether it is
    visible. A NaN coordinate is outside."""
    p = map_xy(rows, keypoints, normalized)
    if p.shape[-1] >= 3:
        g = _per_sample(rows, p.ndim - 2)
        x, y = p[..., 0], p[..., 1]
        inside = (x >= 0) & (y >= 0) & (x <= g["ow"]) & (y <= g["oh"])  # False for NaN
        p[..., 2] = np.where(inside, p[..., 2], 0)
    if flip_index is not None:
        flipped = rows["flip"].astype(bool)
        p[flipped] = p[flipped][:, :, np.asarray(flip_index)]
    return p

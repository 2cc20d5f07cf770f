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
    oy = (np.asarray(ys, np.float64) - g["y"]) * (g["out_height"] / g["crop_height"])
    ox = (np.asarray(xs, np.float64) - g["x"]) * (g["out_width"] / g["crop_width"])
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

"""Detection and segmentation data made offline: shapes drawn onto photographs.

Each scene is a window of one of scikit-image's photographs (as in
``fastforward.demo``) with a few filled shapes drawn on it, each in its class's
colour. What was drawn is known exactly: the class of every pixel (``mask``),
which object each pixel belongs to (``instances``), and every object's box
(the tight box of its visible pixels, edges at integers) and class id. Used
by the examples, the tests, the benchmarks and the documentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fields.rgb_image import resize_area

CLASSES = ("background", "rectangle", "ellipse", "triangle")
"""Class names by id (0 is the background)."""

COLOURS = np.array([[0, 0, 0], [230, 40, 40], [40, 200, 60], [50, 90, 240]], np.uint8)
"""Each class's fill colour."""


@dataclass
class Scene:
    """One image and what is in it."""

    image: np.ndarray  # H×W×3 uint8
    mask: np.ndarray  # H×W uint8 class ids
    instances: np.ndarray  # H×W uint16: 0, or the object's number from 1
    boxes: np.ndarray  # (N, 4) float32, x0 y0 x1 y1 in pixels, edges at integers
    labels: np.ndarray  # (N,) int64 class ids (1..3)

    def objects(self) -> dict[str, np.ndarray]:
        """The objects as a ``RaggedField(columns={'boxes', 'labels'})`` sample."""
        return {"boxes": self.boxes, "labels": self.labels}


def shape_mask(kind: int, height: int, width: int, box: tuple[int, int, int, int],
               rng: np.random.Generator) -> np.ndarray:
    """An H×W boolean mask of a shape of class *kind* inside *box* (y0, x0, y1, x1),
    tested at pixel centres."""
    y0, x0, y1, x1 = box
    ys = np.arange(height)[:, None] + 0.5
    xs = np.arange(width)[None, :] + 0.5
    inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    if kind == 1:
        return inside
    if kind == 2:
        cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
        return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    # a triangle with its base along the box's bottom and its apex on the top edge
    apex = x0 + rng.uniform(0.2, 0.8) * (x1 - x0)
    t = (ys - y0) / (y1 - y0)
    left = apex + (x0 - apex) * t
    right = apex + (x1 - apex) * t
    return inside & (xs >= left) & (xs <= right)


def make_scene(photos: list[np.ndarray], rng: np.random.Generator,
               size: tuple[int, int] = (240, 320), objects: tuple[int, int] = (1, 5),
               min_side: float = 0.12, max_side: float = 0.5) -> Scene:
    """A scene about *size* (height, width): a photograph's window with 1..4 shapes.

    Each shape's box sides are drawn between *min_side* and *max_side* of the
    image's; later shapes may hide parts of earlier ones (an object hidden
    entirely is left out).
    """
    height, width = size
    photo = photos[int(rng.integers(len(photos)))]
    scale = rng.uniform(0.6, 1.0) * min(photo.shape[0] / height, photo.shape[1] / width)
    wh, ww = max(1, int(height * scale)), max(1, int(width * scale))
    y = int(rng.integers(photo.shape[0] - wh + 1))
    x = int(rng.integers(photo.shape[1] - ww + 1))
    image = resize_area(np.ascontiguousarray(photo[y : y + wh, x : x + ww]), height, width).copy()
    mask = np.zeros((height, width), np.uint8)
    instances = np.zeros((height, width), np.uint16)
    kinds = []
    for number in range(1, int(rng.integers(objects[0], objects[1])) + 1):
        kind = int(rng.integers(1, len(CLASSES)))
        bh = max(4, int(rng.uniform(min_side, max_side) * height))
        bw = max(4, int(rng.uniform(min_side, max_side) * width))
        by, bx = int(rng.integers(0, height - bh + 1)), int(rng.integers(0, width - bw + 1))
        drawn = shape_mask(kind, height, width, (by, bx, by + bh, bx + bw), rng)
        image[drawn] = COLOURS[kind]
        mask[drawn] = kind
        instances[drawn] = number
        kinds.append(kind)
    boxes, labels = [], []
    for number, kind in enumerate(kinds, 1):
        ys, xs = np.nonzero(instances == number)
        if ys.size:
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(kind)
    return Scene(image, mask, instances, np.asarray(boxes, np.float32).reshape(-1, 4),
                 np.asarray(labels, np.int64))


def make_scenes(count: int, seed: int = 0, size: tuple[int, int] = (240, 320),
                **kwargs: object) -> list[Scene]:
    """*count* scenes, deterministic in *seed* (sizes jittered by ±20%, a quarter
    of them portrait)."""
    from .demo import load_photos

    photos = load_photos()
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(count):
        height, width = size
        if rng.random() < 0.25:
            height, width = width, height
        jitter = rng.uniform(0.8, 1.2)
        scenes.append(make_scene(photos, rng, (max(32, int(height * jitter)),
                                               max(32, int(width * jitter))), **kwargs))  # type: ignore[arg-type]
    return scenes

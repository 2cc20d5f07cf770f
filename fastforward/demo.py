"""A realistic image corpus made offline from photographs that ship inside
scikit-image (no download): varied crops and scales of real photos, saved as
JPEGs of about 500×375 at quality 89-97, in an ImageFolder layout.

Used by ``fastforward demo``, the tests and the benchmarks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .fields.rgb_image import require_simplejpeg, resize_area, to_rgb_array
from .utils import install_hint

# (loader name in skimage.data, or a file in its data folder)
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "retina",
    "hubble_deep_field",
    "immunohistochemistry",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "color.png",
)


def load_photos() -> list[np.ndarray]:
    """The source photographs, as RGB uint8 arrays."""
    try:
        import skimage.data
        from skimage import io
    except ImportError as exc:
        raise ImportError(
            "the demo corpus is made from scikit-image's sample photos: "
            f"{install_hint('demo')}"
        ) from exc
    photos = []
    folder = Path(skimage.data.__file__).parent
    for name in PHOTOS:
        image = io.imread(folder / name) if name.endswith(".png") else getattr(skimage.data, name)()
        photos.append(to_rgb_array(np.asarray(image)))
    return photos


def make_image(photos: list[np.ndarray], rng: np.random.Generator,
               size: tuple[int, int] = (375, 500)) -> tuple[np.ndarray, int]:
    """One image about *size* (height, width): a random window of a random
    photo, rescaled. Returns the pixels and the photo's index (its class)."""
    label = int(rng.integers(len(photos)))
    photo = photos[label]
    height, width = size
    if rng.random() < 0.25:  # some portrait images, as in ImageNet
        height, width = width, height
    jitter = rng.uniform(0.8, 1.2)
    height, width = max(32, int(height * jitter)), max(32, int(width * jitter))
    # a window of the photo with the output's aspect ratio, at a random scale
    scale = rng.uniform(0.7, 1.0) * min(photo.shape[0] / height, photo.shape[1] / width)
    wh, ww = max(1, int(height * scale)), max(1, int(width * scale))
    y = int(rng.integers(photo.shape[0] - wh + 1))
    x = int(rng.integers(photo.shape[1] - ww + 1))
    window = np.ascontiguousarray(photo[y : y + wh, x : x + ww])
    if rng.random() < 0.5:
        window = np.ascontiguousarray(window[:, ::-1])
    image = resize_area(window, height, width).astype(np.int16)
    # sensor-like noise: real photographs carry it, and it sets their JPEG size
    image += rng.normal(0, rng.uniform(6, 12), image.shape).astype(np.int16)
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_corpus(root: str | os.PathLike[str], count: int, seed: int = 0,
                size: tuple[int, int] = (375, 500),
                quality: tuple[int, int] = (89, 97)) -> Path:
    """Write *count* JPEGs under ``root/<class>/<n>.jpg``; return *root*.

    Deterministic in *seed*. Qualities are drawn from the *quality* range,
    with 4:2:0 chroma subsampling, as most photographs are stored.
    """
    sj = require_simplejpeg()
    root = Path(root)
    photos = load_photos()
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        image, label = make_image(photos, rng, size)
        q = int(rng.integers(quality[0], quality[1] + 1))
        data = sj.encode_jpeg(image, quality=q, colorspace="RGB", colorsubsampling="420")
        folder = root / _class_name(PHOTOS[label])  # (a class no image was drawn from
        folder.mkdir(exist_ok=True)                   # has no folder: no empty class)
        (folder / f"{n:06d}.jpg").write_bytes(data)
    return root


def _class_name(photo: str) -> str:
    return photo.split(".")[0]

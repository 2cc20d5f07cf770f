"""Mask codecs on real-looking masks: stored bytes and decode µs per mask.

Masks: segmentations of scikit-image's photographs (Felzenszwalb's regions,
their ids folded into 21 classes, uint8, and as instance ids, uint16; SLIC
superpixels folded likewise) at 375×500, and the class masks of
``fastforward.scenes`` (shapes drawn on photographs). Codecs: PNG (Pillow,
levels 6 and 1), zstd through ``compression.zstd`` / ``backports.zstd`` (what
``MaskField`` uses) and through ``zstandard``, lz4 (block, fast and high
compression); those not installed are skipped. Decode times are the best of
three passes, on one thread.

    python bench/mask_codecs.py
"""

from __future__ import annotations

import importlib.util
import io
import time

import numpy as np


def masks() -> dict[str, list[np.ndarray]]:
    from skimage.segmentation import felzenszwalb, slic

    from fastforward.demo import load_photos
    from fastforward.scenes import make_scenes

    out: dict[str, list[np.ndarray]] = {"felzenszwalb u8": [], "felzenszwalb u16": [],
                                        "slic u8": []}
    for photo in load_photos():
        photo = photo[:375, :500]
        regions = felzenszwalb(photo, scale=200, sigma=0.8, min_size=200)
        out["felzenszwalb u8"].append((regions % 21).astype(np.uint8))
        out["felzenszwalb u16"].append(regions.astype(np.uint16))
        out["slic u8"].append((slic(photo, n_segments=30, start_label=0) % 21).astype(np.uint8))
    out["scenes u8"] = [s.mask for s in make_scenes(10, seed=0, size=(375, 500))]
    return out


def codecs() -> dict[str, tuple]:
    from fastforward.fields.mask import require_zstd

    zstd = require_zstd()
    found: dict[str, tuple] = {
        "zstd-3 (MaskField)": (lambda b: zstd.compress(b, level=3), zstd.decompress),
        "zstd-9": (lambda b: zstd.compress(b, level=9), zstd.decompress),
    }
    if importlib.util.find_spec("zstandard"):
        import zstandard

        d = zstandard.ZstdDecompressor()
        found["zstandard-3"] = (zstandard.ZstdCompressor(level=3).compress, d.decompress)
    if importlib.util.find_spec("lz4"):
        import lz4.block

        found["lz4"] = (lz4.block.compress, lz4.block.decompress)
        found["lz4-hc9"] = (lambda b: lz4.block.compress(b, mode="high_compression",
                                                         compression=9), lz4.block.decompress)
    if importlib.util.find_spec("PIL"):
        from PIL import Image

        for level in (6, 1):
            def encode(b: bytes, shape: tuple, dtype: np.dtype, level: int = level) -> bytes:
                buffer = io.BytesIO()
                Image.fromarray(np.frombuffer(b, dtype).reshape(shape)).save(
                    buffer, format="PNG", compress_level=level)
                return buffer.getvalue()

            found[f"png-{level}"] = (encode, lambda b: np.asarray(Image.open(io.BytesIO(b))))
    return found


def best_us(fn, repeat: int = 20) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best * 1e6


def main() -> None:
    print(f"{'masks':<18} {'codec':<20} {'bytes/mask':>10} {'ratio':>6} {'decode µs':>10}")
    for kind, arrays in masks().items():
        raw = sum(m.nbytes for m in arrays)
        for name, (encode, decode) in codecs().items():
            png = name.startswith("png")
            blobs = [encode(m.tobytes(), m.shape, m.dtype) if png else encode(m.tobytes())
                     for m in arrays]
            for blob, mask in zip(blobs, arrays, strict=True):
                back = np.asarray(decode(blob)) if png else np.frombuffer(decode(blob),
                                                                           mask.dtype)
                assert np.array_equal(back.reshape(mask.shape), mask), (kind, name)
            size = sum(len(b) for b in blobs) / len(blobs)
            us = float(np.mean([best_us(lambda b=b, d=decode: d(b)) for b in blobs]))
            print(f"{kind:<18} {name:<20} {size:>10,.0f} {raw / len(arrays) / size:>6.1f} "
                  f"{us:>10.1f}")


if __name__ == "__main__":
    main()

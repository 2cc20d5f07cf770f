"""The crop decoders with region decoding against the fallback (whole images through
simplejpeg), beside the decode limit, in one run, in turn (not a test):

    python bench/region_vs_whole.py FILE.beton [ROUNDS]

For pipelines (a) center_crop and (b) train, each round takes the decode limit
(simplejpeg, accurate IDCT, every core), fastforward with region decoding and
fastforward with the fallback path, in that order; it prints each figure and
its ratio to the same round's limit. The fallback is chosen by clearing
``fastforward.fields.rgb_image._region`` in this process (a measurement aid:
builds choose it at build time, see setup.py).
"""

from __future__ import annotations

import sys

import fastforward.fields.rgb_image as rgb_image
from fastforward.benchmark import decode_limit, loader_throughput, stored_jpegs
from fastforward.reader import Reader


def main(path: str, rounds: int) -> None:
    region = rgb_image._region
    if region is None:
        raise SystemExit("this build has no region decoding (see setup.py)")
    blobs = stored_jpegs(Reader(path), "image")
    figures: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(rounds):
            for pipeline in ("center_crop", "train"):
                figures.setdefault((pipeline, "limit"), []).append(
                    decode_limit(blobs, repeat=2).rate)
                for mode in ("region", "whole"):
                    rgb_image._region = region if mode == "region" else None
                    figures.setdefault((pipeline, mode), []).append(
                        loader_throughput(path, pipeline, epochs=3).rate)
                rgb_image._region = region
    finally:
        rgb_image._region = region
    for (pipeline, mode), rates in sorted(figures.items()):
        limits = figures[(pipeline, "limit")]
        print(f"{pipeline:12} {mode:7} " + " ".join(f"{r:7.0f}" for r in rates)
              + "   ÷ limit: " + " ".join(f"{r / lim:.2f}" for r, lim in zip(rates, limits,
                                                                        strict=True)))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)

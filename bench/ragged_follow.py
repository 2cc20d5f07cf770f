"""What boxes and keypoints that follow the image cost per epoch (not a test; a table):

    python bench/ragged_follow.py [--samples 2048] [--largest 9 300 5000] [--rounds 3]

A file of *samples* 32×32 raw images, each with 0-9 objects (a box, a label
and 17 keypoints), except one sample with *largest* objects; an epoch in batches of
64 on 2 thread workers, RandomResizedCrop to 16×16, the objects as they are
(``RaggedDecoder()``) and following the crop (``follows="image"``, boxes and
keypoints). Best of *rounds* epochs after one warm-up, each size's file written to a
temporary folder. Batches are padded to the longest sample of the file, so the
largest sample sets every batch's width; what following the crop costs beyond that
should depend on the objects each batch holds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from fastforward.fields import RaggedField, RGBImageField
from fastforward.fields.decoders import RaggedDecoder, RandomResizedCropRGBImageDecoder
from fastforward.loader import Loader, OrderOption
from fastforward.writer import DatasetWriter

COLUMNS = {"boxes": (np.float32, (4,)), "labels": np.int64, "kps": (np.float32, (17, 3))}


def objects(count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    near = rng.uniform(0, 20, (count, 2)).astype(np.float32)
    boxes = np.concatenate([near, near + rng.uniform(2, 12, (count, 2))], axis=1)
    kps = rng.uniform(0, 32, (count, 17, 3)).astype(np.float32)
    kps[..., 2] = 1
    return {"boxes": boxes.astype(np.float32), "labels": np.arange(count), "kps": kps}


def write(path: Path, samples: int, largest: int) -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((32, 32, 3), np.uint8)
    data = [(image, objects(largest if i == 0 else int(rng.integers(0, 10)), rng))
            for i in range(samples)]
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"),
                         "objects": RaggedField(columns=COLUMNS, follows="image",
                                                boxes="boxes", keypoints="kps")},
                  num_workers=1, progress=False).from_indexed_dataset(data)


def epoch_seconds(path: Path, follows: bool, rounds: int) -> float:
    decoder = (RaggedDecoder(follows="image", boxes="boxes", keypoints="kps") if follows
               else RaggedDecoder())
    with Loader(path, 64, num_workers=2, worker_type="thread", order=OrderOption.RANDOM,
                seed=0, pipelines={"image": [RandomResizedCropRGBImageDecoder((16, 16))],
                                   "objects": [decoder]}) as loader:
        best = float("inf")
        for _ in range(rounds + 1):
            start = time.perf_counter()
            for _ in loader:
                pass
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--largest", type=int, nargs="+", default=[9, 300, 5000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'largest':>8} {'plain s':>8} {'follows s':>10}")
    with tempfile.TemporaryDirectory() as folder:
        for largest in args.largest:
            path = Path(folder) / f"o{largest}.beton"
            write(path, args.samples, largest)
            plain = epoch_seconds(path, False, args.rounds)
            follows = epoch_seconds(path, True, args.rounds)
            print(f"{largest:>8} {plain:>8.3f} {follows:>10.3f}")


if __name__ == "__main__":
    main()

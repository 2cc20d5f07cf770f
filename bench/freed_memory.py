"""Whether the memory a loader frees goes back to the system (not a test; prints a table):

    python bench/freed_memory.py [--images 1000] [--epochs 30] [--rounds 3]

A file of ``--images`` photographs stored raw (``RGBImageField``'s default
``write_mode``: about 150 KB a sample at 256 px, so that each batch's read is
large) is written to a temporary folder from the demo corpus. Then, each in a
fresh process, with thread workers, batch 64, RANDOM order, a crop to 192 px:

- ``os_cache=False`` for ``--epochs`` epochs: the resident memory above the
  process's before the loader, after the first epoch, after the last one and
  after ``close()``; then images/s over 4 more epochs;
- ``os_cache=True``, the program keeping its last 5 batches, for 10 epochs:
  after the first epoch, the last, once the kept batches are dropped (their
  slots are freed) and after ``close()`` (the file's pages, mapped, count
  while the loader is open).

Each twice: as fastforward allocates (read buffers reused from private maps,
slots in maps of their own), and with every read buffer and slot from
``np.empty`` (the C heap), as before 2026-12-05. The rounds alternate the two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import collections, gc, json, sys, time
import numpy as np
from fastforward.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
from fastforward.loader import Loader, OrderOption

path, how, scenario, epochs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if how == "heap":
    import fastforward.ring as ring
    from fastforward.memory_managers.process_cache import ReadBuffers

    ReadBuffers.take = lambda self, nbytes: np.empty(nbytes, np.uint8)
    ring.private_empty = np.empty


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


start = rss()
loader = Loader(path, 64, num_workers=2, order=OrderOption.RANDOM, seed=0,
                os_cache=scenario == "kept", worker_type="thread",
                pipelines={"image": [RandomResizedCropRGBImageDecoder((192, 192))],
                           "label": [IntDecoder()]})
kept = collections.deque(maxlen=5 if scenario == "kept" else 0)
out = {}
for epoch in range(epochs):
    for batch in loader:
        kept.append(batch)
    del batch
    gc.collect()
    if epoch == 0:
        out["first epoch"] = rss() - start
out["last epoch"] = rss() - start
if scenario == "kept":
    kept.clear()
    gc.collect()
    out["kept dropped"] = rss() - start
else:
    began, count = time.perf_counter(), 0
    for _ in range(4):
        for _, labels in loader:
            count += len(labels)
    out["images/s"] = count / (time.perf_counter() - began)
loader.close()
gc.collect()
out["closed"] = rss() - start
print(json.dumps(out))
"""


def make_file(folder: Path, images: int) -> Path:
    from fastforward.datasets import ImageFolder
    from fastforward.demo import make_corpus
    from fastforward.fields import IntField, RGBImageField
    from fastforward.writer import DatasetWriter

    corpus = make_corpus(folder / "images", images, seed=0)
    path = folder / "raw.beton"
    DatasetWriter(path, {"image": RGBImageField(max_resolution=256), "label": IntField()},
                  num_workers=2, progress=False).from_indexed_dataset(ImageFolder(corpus))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_file(Path(tmp), args.images)
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for scenario, epochs in (("os_cache=False", args.epochs), ("kept", 10)):
                for how in ("maps", "heap"):
                    done = subprocess.run(
                        [sys.executable, "-c", CHILD, str(path), how, scenario, str(epochs)],
                        check=True, capture_output=True, text=True)
                    results.setdefault((scenario, how), []).append(
                        json.loads(done.stdout.strip().splitlines()[-1]))
    for (scenario, how), runs in results.items():
        cells = []
        for key in runs[0]:
            values = [run[key] for run in runs]
            unit = "" if key == "images/s" else " MB"
            cells.append(f"{key} {min(values):,.0f}-{max(values):,.0f}{unit}")
        print(f"{scenario:15} {how:5} " + "; ".join(cells))
    for scenario in ("os_cache=False",):
        maps = [run["images/s"] for run in results[(scenario, "maps")]]
        heap = [run["images/s"] for run in results[(scenario, "heap")]]
        ratios = [m / h for m, h in zip(maps, heap, strict=True)]
        print(f"{scenario}: maps ÷ heap, images/s, round by round: "
              + ", ".join(f"{r:.2f}" for r in ratios)
              + f" (median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()

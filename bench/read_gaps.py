"""Which bytes an ``os_cache=False`` batch reads: the gaps its reads bridge.

    python bench/read_gaps.py /tmp/gaps --rounds 3

Writes two files into the folder (once): 200,000 samples of 100 bytes, and 4,000 of
3-60 kB. Each round runs one epoch per order with ``process_cache.read_starts`` (a gap
bridged where it is at most 4 KiB, or at most 64 KiB and no larger than the payload
after it) and with the rule before it (every gap under 64 KiB bridged), alternating
which goes first, and prints samples/s, the most bytes the manager held at once and the
bytes read per epoch, with the ratio of the two rates within each round.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fastforward.fields import BytesField, IntField
from fastforward.fields.decoders import BytesDecoder
from fastforward.loader import Loader, OrderOption
from fastforward.memory_managers import process_cache
from fastforward.writer import DatasetWriter

CURRENT = process_cache.read_starts


def before(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The rule before: a new read where the gap to the furthest end is over ``GAP``."""
    new = np.ones(len(starts), bool)
    new[1:] = starts[1:] > np.maximum.accumulate(ends)[:-1] + process_cache.GAP
    return new


def make(folder: Path) -> dict[str, tuple[Path, int]]:
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"100 B": np.full(200_000, 100),
             "3-60 kB": np.random.default_rng(0).integers(3_000, 60_000, 4_000)}
    files = {}
    for (name, size), batch in zip(sizes.items(), (256, 64), strict=True):
        path = folder / f"gaps-{size.min()}-{size.max()}.beton"
        if not path.exists():
            DatasetWriter(path, {"blob": BytesField(), "label": IntField()}, num_workers=1,
                          progress=False).from_indexed_dataset(
                [(np.full(int(n), i % 251, np.uint8), i) for i, n in enumerate(size)])
        files[name] = (path, batch)
    return files


def epoch(path: Path, batch: int, order: OrderOption) -> tuple[float, int, int]:
    """Samples/s, the most bytes held at once, and the bytes read, for one epoch."""
    read = [0]
    pread = process_cache.ProcessCacheManager._pread_into

    def counted(self: process_cache.ProcessCacheManager, out: np.ndarray, offset: int) -> None:
        read[0] += out.nbytes
        pread(self, out, offset)

    process_cache.ProcessCacheManager._pread_into = counted  # type: ignore[method-assign]
    try:
        with Loader(path, batch, num_workers=2, os_cache=False, order=order, seed=0,
                    worker_type="thread", pipelines={"blob": [BytesDecoder()], "label": None}
                    ) as loader:
            start, samples = time.perf_counter(), 0
            for (blobs,) in loader:
                samples += len(blobs)
            rate = samples / (time.perf_counter() - start)
            return rate, loader.memory_manager.peak_bytes, read[0]
    finally:
        process_cache.ProcessCacheManager._pread_into = pread  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--orders", nargs="+", default=["RANDOM", "QUASI_RANDOM", "SEQUENTIAL"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    files = make(args.folder)
    results: dict[tuple[str, str, str], list[tuple[float, int, int]]] = {}
    for round_ in range(args.rounds):
        for name, (path, batch) in files.items():
            for order in args.orders:
                pair = [("before", before), ("now", CURRENT)]
                for rule, starts in pair if round_ % 2 == 0 else pair[::-1]:
                    process_cache.read_starts = starts
                    try:
                        results.setdefault((name, order, rule), []).append(
                            epoch(path, batch, OrderOption[order]))
                    finally:
                        process_cache.read_starts = CURRENT
    for name, (path, batch) in files.items():
        print(f"{name} samples, batch {batch}, a {path.stat().st_size / 1e6:.0f} MB file, "
              f"{args.rounds} rounds")
        for order in args.orders:
            for rule in ("before", "now"):
                rate, peak, read = np.array(results[(name, order, rule)]).T
                print(f"  {order:13s} {rule:7s} {rate.min():9,.0f}-{rate.max():9,.0f} samples/s"
                      f"  held at most {peak.max() / 1e6:6.2f} MB  read {read.max() / 1e6:8.1f}"
                      " MB an epoch")
            ratio = (np.array(results[(name, order, "now")])[:, 0]
                     / np.array(results[(name, order, "before")])[:, 0])
            print(f"  {order:13s} now/before within a round: {ratio.min():.2f}-{ratio.max():.2f}"
                  f" (median {np.median(ratio):.2f})")


if __name__ == "__main__":
    main()

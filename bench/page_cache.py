"""What an ``os_cache=False`` epoch leaves in the page cache, and what dropping it costs.

    python bench/page_cache.py /tmp/blobs.beton --make 136         # an I/O-bound loop
    python bench/page_cache.py train.beton --pipeline center_crop  # decoding JPEGs

Each round drops the file from the page cache, runs one ``os_cache=False`` epoch per
order with this fastforward's ``ProcessCacheManager`` and with its behaviour before issue
12 (each read's exact range dropped, the kernel's default readahead, nothing dropped at
the start), alternating which goes first, and measures the fraction of the file left
cached (``mincore``) and the throughput. It prints the ranges over rounds and the ratio
of the two throughputs within each round. Linux only.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from fastforward.benchmark import cached_fraction, drop_from_page_cache, loader_throughput
from fastforward.loader import Loader, OrderOption
from fastforward.memory_managers import process_cache

CURRENT = (process_cache.ProcessCacheManager.__init__,
           process_cache.ProcessCacheManager._pread_into)


def _before_init(self: process_cache.ProcessCacheManager, reader: object,
                 verify_checksums: bool = False) -> None:
    process_cache.MemoryManager.__init__(self, reader, verify_checksums)
    self._fd = os.open(reader.fname, os.O_RDONLY)
    self._lock = process_cache.threading.Lock()
    self.live_bytes = 0
    self.peak_bytes = 0


def _before_pread(self: process_cache.ProcessCacheManager, out: np.ndarray,
                  offset: int) -> None:
    view = memoryview(out)
    done = 0
    while done < len(view):
        done += os.preadv(self._fd, [view[done:]], offset + done)
    os.posix_fadvise(self._fd, offset, len(view), os.POSIX_FADV_DONTNEED)


BEFORE = (_before_init, _before_pread)


def make_blobs(path: Path, mib: int) -> None:
    from fastforward.fields import BytesField, IntField
    from fastforward.writer import DatasetWriter

    rng = np.random.default_rng(0)
    sizes = rng.integers(3_000, 60_000, mib * (1 << 20) // 31_500)

    class Blobs:
        def __len__(self) -> int:
            return len(sizes)

        def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
            return i % 10, np.full(int(sizes[i]), i % 251, np.uint8)

    DatasetWriter(path, {"label": IntField(), "blob": BytesField()}, num_workers=2,
                  progress=False).from_indexed_dataset(Blobs(), chunksize=200)


def bytes_throughput(path: Path, order: OrderOption) -> float:
    from fastforward.fields.decoders import BytesDecoder, IntDecoder

    loader = Loader(path, 64, num_workers=2, os_cache=False, order=order, seed=0,
                    pipelines={"label": [IntDecoder()], "blob": [BytesDecoder()]})
    with loader:
        start, samples = time.perf_counter(), 0
        for labels, _ in loader:
            samples += len(labels)
        return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--make", type=int, metavar="MIB",
                        help="first write a file of about MIB MiB of 3-60 kB byte payloads")
    parser.add_argument("--pipeline", default="bytes",
                        help="'bytes' (BytesDecoder, nothing decoded) or a benchmark pipeline")
    parser.add_argument("--orders", nargs="+", default=["SEQUENTIAL", "RANDOM", "QUASI_RANDOM"])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    if args.make and not args.file.exists():
        make_blobs(args.file, args.make)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round_ in range(args.rounds):
        for order in args.orders:
            pair = [("before", BEFORE), ("now", CURRENT)]
            for name, (init, pread) in pair if round_ % 2 == 0 else pair[::-1]:
                process_cache.ProcessCacheManager.__init__ = init
                process_cache.ProcessCacheManager._pread_into = pread
                drop_from_page_cache(args.file)
                if args.pipeline == "bytes":
                    rate = bytes_throughput(args.file, OrderOption[order])
                else:
                    m = loader_throughput(args.file, args.pipeline, order=OrderOption[order],
                                          os_cache=False)
                    rate = m.images / m.seconds
                results.setdefault((order, name), []).append((rate, cached_fraction(args.file)))
        process_cache.ProcessCacheManager.__init__, process_cache.ProcessCacheManager._pread_into \
            = CURRENT
    print(f"{args.file} ({args.file.stat().st_size >> 20} MiB), {args.pipeline}, "
          f"{args.rounds} rounds")
    for order in args.orders:
        for name in ("before", "now"):
            rate, left = np.array(results[(order, name)]).T
            print(f"{order:13s} {name:7s} {rate.min():9,.0f}-{rate.max():9,.0f}/s (median "
                  f"{np.median(rate):9,.0f})  left cached {left.min():.1%}-{left.max():.1%}")
        ratio = (np.array(results[(order, "now")])[:, 0]
                 / np.array(results[(order, "before")])[:, 0])
        print(f"{order:13s} now/before within a round: {ratio.min():.2f}-{ratio.max():.2f} "
              f"(median {np.median(ratio):.2f})")


if __name__ == "__main__":
    main()

"""The writer with many workers whose dataset waits (not a test; prints seconds):

    python bench/writer_workers.py [--workers 16] [--samples 3200] [--nbytes 262144]
                                   [--sleep 0.05] [--chunksize 100]

Each sample takes *sleep* seconds to read (standing in for a slow disk or a
decode, so that more workers than cores are worth having) and is *nbytes* bytes
(a ``BytesField``) and its index. With the workers all busy, the time is about
samples × sleep ÷ workers; a writer that leaves workers idle takes longer.
Workers are forked. Run it beside another checkout with ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from fastforward.fields import BytesField, IntField
from fastforward.writer import DatasetWriter


class Slow:
    def __init__(self, count: int, nbytes: int, sleep: float) -> None:
        self.count, self.nbytes, self.sleep = count, nbytes, sleep

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        time.sleep(self.sleep)
        return np.full(self.nbytes, i % 251, np.uint8), i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--samples", type=int, default=3200)
    parser.add_argument("--nbytes", type=int, default=256 << 10)
    parser.add_argument("--sleep", type=float, default=0.05)
    parser.add_argument("--chunksize", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        DatasetWriter(f"{folder}/w.beton", {"b": BytesField(), "i": IntField()},
                      num_workers=args.workers, progress=False, start_method="fork",
                      ).from_indexed_dataset(Slow(args.samples, args.nbytes, args.sleep),
                                             chunksize=args.chunksize)
        seconds = time.perf_counter() - start
    ideal = args.samples * args.sleep / args.workers
    print(f"{seconds:.1f} s ({ideal:.1f} s with every worker always busy)")


if __name__ == "__main__":
    main()

"""The writer's peak memory for large samples (not a test; prints a table):

    python bench/writer_memory.py [--samples 300] [--side 1152] [--workers 2]
                                  [--chunksize 100 10] [--mode raw] [--small 0 3000]
                                  [--shards N]

Each run is a fresh Python process that writes *small* RGB images of 16 × 16
pixels, then *samples* RGB images of *side* × *side* pixels (4 MB each at
1152), made on demand, with ``RGBImageField(write_mode=mode)`` to a temporary
folder (small images first: a writer that judges sizes by what it has seen
meets larger ones late), then reports its own
peak resident memory and the largest of its workers' (``ru_maxrss``), less
the peak of the same process before the write (Python, NumPy, the dataset).
What is left is what the write costs: the encoded chunks in flight.

With ``--shards N``, the same images (no small ones) are first written to N
WebDataset shards in the temporary folder (the raw pixels, one ``.bin`` a
sample), and the child writes them with ``from_webdataset``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, resource, sys
import numpy as np
from fastforward.fields import RGBImageField
from fastforward.writer import DatasetWriter


class Images:
    def __init__(self, small, count, side):
        self.small, self.count, self.side = small, small + count, side

    def __len__(self):
        return self.count

    def __getitem__(self, i):  # made on demand: the dataset costs nothing to hold
        side = 16 if i < self.small else self.side
        image = np.empty((side, side, 3), np.uint8)
        image[...] = i % 251
        return (image,)


def pixels(dataset):  # the WebDataset pipeline
    for sample in dataset:
        side = int(sample["side"])
        yield (np.frombuffer(sample["bin"], np.uint8).reshape(side, side, 3),)


if __name__ == "__main__":
    samples, side, workers, chunksize, mode, small, out, *shards = sys.argv[1:]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    writer = DatasetWriter(out, {"image": RGBImageField(write_mode=mode,
                                                        max_resolution=int(side))},
                           num_workers=int(workers), progress=False, start_method="fork")
    if shards:
        writer.from_webdataset(shards, pixels)
    else:
        writer.from_indexed_dataset(Images(int(small), int(samples), int(side)),
                                    chunksize=int(chunksize))
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"before_mb": before / 1024, "parent_mb": (parent - before) / 1024,
                      "worker_mb": (child - before) / 1024,
                      "file_mb": os.path.getsize(out) / 2**20}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--side", type=int, default=1152)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunksize", type=int, nargs="+", default=[100, 10])
    parser.add_argument("--mode", default="raw")
    parser.add_argument("--small", type=int, nargs="+", default=[0, 3000])
    parser.add_argument("--shards", type=int, default=0,
                        help="write the images to this many WebDataset shards first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        shards = make_shards(folder, args) if args.shards else []
        if shards:
            print(f"{args.samples} images of {args.side}x{args.side} in {len(shards)} "
                  f"WebDataset shards, write_mode={args.mode}, {args.workers} workers")
            cases = [(0, 0)]
        else:
            print(f"{args.samples} images of {args.side}x{args.side} after the small ones, "
                  f"write_mode={args.mode}, {args.workers} workers")
            cases = [(small, chunksize) for small in args.small for chunksize in args.chunksize]
        print(f"{'small':>6} {'chunksize':>9} {'parent MB':>10} {'worker MB':>10} {'file MB':>8}")
        for small, chunksize in cases:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(args.samples), str(args.side),
                 str(args.workers), str(chunksize), args.mode, str(small),
                 f"{folder}/w.beton", *shards],
                check=True, capture_output=True, text=True, cwd=folder).stdout
            found = json.loads(out.strip().splitlines()[-1])
            print(f"{small:>6} {chunksize or '-':>9} {found['parent_mb']:>10.0f} "
                  f"{found['worker_mb']:>10.0f} {found['file_mb']:>8.0f}")


def make_shards(folder: str, args: argparse.Namespace) -> list[str]:
    """The images of the indexed runs, in *args.shards* WebDataset shards."""
    import numpy as np
    import webdataset

    shards = []
    per_shard = -(-args.samples // args.shards)
    for s in range(args.shards):
        shards.append(f"{folder}/shard-{s}.tar")
        with webdataset.TarWriter(shards[-1]) as sink:
            for i in range(s * per_shard, min((s + 1) * per_shard, args.samples)):
                image = np.full((args.side, args.side, 3), i % 251, np.uint8)
                sink.write({"__key__": f"{i:06d}", "bin": image.tobytes(),
                            "side": str(args.side).encode()})
    return shards


if __name__ == "__main__":
    main()

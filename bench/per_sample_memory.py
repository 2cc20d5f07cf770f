"""What a loader's processes keep per sample of the file (not a test; prints a table):

    python bench/per_sample_memory.py [--samples 10000 1000000] [--workers 2]

For each size, a file of that many samples (an ``IntField`` label and a 4-float
``NDArrayField``, so that each sample has a payload) is written to a temporary
folder; a loader with process workers runs a per-sample Python operation on
the arrays (so the workers decode) for one epoch in RANDOM order, batch 256;
then the anonymous memory of the loader's process (its heap and private maps)
and the private memory (USS) of each worker are read from
``/proc/PID/smaps_rollup``, with each one's share of the shared memory
it has touched (``Pss_Shmem``: the slots, and the pages of the tables it read),
beside the size of the tables' segment (``Reader.share_tables``: in memory once,
whoever maps it). The difference between two sizes, divided by the difference
in samples, is what each keeps per sample.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, sys
import numpy as np
from fastforward.fields.decoders import IntDecoder, NDArrayDecoder
from fastforward.loader import Loader, OrderOption
from fastforward.pipeline import AllocationQuery, Operation


class Scale(Operation):
    per_sample = True  # keeps the GIL: 'auto' runs it on the workers

    def declare_state_and_memory(self, previous_state):
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)

    def apply_sample(self, sample, destination, context, index):
        np.multiply(sample, 2, out=destination)
        return destination


def memory(pid):
    found = {"uss": 0, "shmem": 0, "anon": 0}
    with open(f"/proc/{pid}/smaps_rollup") as smaps:
        for line in smaps:
            name, value = line.split(":", 1)
            if name in ("Private_Clean", "Private_Dirty"):
                found["uss"] += int(value.split()[0]) * 1024
            elif name == "Pss_Shmem":
                found["shmem"] += int(value.split()[0]) * 1024
            elif name == "Pss_Anon":
                found["anon"] += int(value.split()[0]) * 1024
    return found


if __name__ == "__main__":
    path, workers = sys.argv[1], int(sys.argv[2])
    loader = Loader(path, 256, num_workers=workers, worker_type="process",
                    order=OrderOption.RANDOM, seed=0,
                    pipelines={"label": [IntDecoder()], "x": [NDArrayDecoder(), Scale()]})
    for _ in loader:
        pass
    tables = loader.reader.share_tables()[1].nbytes  # the segment, whoever maps it
    print(json.dumps({"loader": memory(os.getpid()), "tables": tables,
                      "workers": [memory(pid) for pid in loader.workers.pids]}))
    loader.close()
"""

WRITE = r"""
import sys
import numpy as np
from fastforward.fields import IntField, NDArrayField
from fastforward.writer import DatasetWriter


class Samples:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i, np.full(4, i, np.float32)


if __name__ == "__main__":
    path, n = sys.argv[1], int(sys.argv[2])
    DatasetWriter(path, {"label": IntField(), "x": NDArrayField(np.dtype("float32"), (4,))},
                  num_workers=-1, progress=False).from_indexed_dataset(
        Samples(n), chunksize=max(100, n // 100))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, nargs=2, default=[10_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        # scripts, not -c: worker processes import the main module (its operation)
        write, child = Path(tmp) / "write.py", Path(tmp) / "child.py"
        write.write_text(WRITE)
        child.write_text(CHILD)
        for n in args.samples:
            path = str(Path(tmp) / f"{n}.beton")
            subprocess.run([sys.executable, str(write), path, str(n)], check=True)
            out = subprocess.run([sys.executable, str(child), path, str(args.workers)],
                                 capture_output=True, text=True, check=True)
            figures[n] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.workers} worker processes, one epoch, batch 256; MB (10^6 bytes)")
    print(f"  {'samples':>10} {'loader anon':>11} {'loader shared':>14} "
          f"{'worker USS':>11} {'worker shared':>14} {'tables':>7}")
    for n, f in figures.items():
        workers = f["workers"]
        print(f"  {n:>10,} {f['loader']['anon'] / 1e6:>11.0f} {f['loader']['shmem'] / 1e6:>14.0f} "
              f"{max(w['uss'] for w in workers) / 1e6:>11.0f} "
              f"{max(w['shmem'] for w in workers) / 1e6:>14.1f} {f['tables'] / 1e6:>7.0f}")
    small, large = (figures[n] for n in args.samples)
    extra = args.samples[1] - args.samples[0]
    # its heap and anonymous maps: USS also counts the pages of shared memory that
    # only this process has touched (of the slots, of the tables)
    loader = (large["loader"]["anon"] - small["loader"]["anon"]) / extra
    worker = max(b["uss"] - a["uss"] for a, b in zip(small["workers"], large["workers"],
                                                      strict=True)) / extra
    tables = (large["tables"] - small["tables"]) / extra
    print(f"  per sample: the shared tables {tables:.0f} bytes (once, whoever maps them), "
          f"the loader's process {loader:.0f} bytes of its own besides, each worker "
          f"{worker:.1f}")


if __name__ == "__main__":
    main()

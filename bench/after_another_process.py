"""What a measurement taken right after another process's exit costs, and what
the warm-up epoch of ``bench/`` takes back (not a test):

    python bench/after_another_process.py FILE.beton FOLDER256 TV_PYTHON [ROUNDS]

FOLDER256 is the same JPEGs as an ImageFolder (``bench/``'s ``folder256``) and
TV_PYTHON an interpreter with torch 2.14.1 and torchvision 0.29.1. Each round,
for fastforward's ``train_trivialaugment`` pipeline without and then with one
warm-up epoch (``loader_throughput(warmup_epochs=...)``), runs the DataLoader
baseline in its own process, then fastforward twice: right after it, and
again. It prints images/s and the kernel (system) time of each fastforward
measurement, then the decode limit taken the same way.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import throughput

from fastforward.benchmark import decode_limit, loader_throughput, stored_jpegs
from fastforward.reader import Reader


def timed(measure) -> str:  # type: ignore[no-untyped-def]
    """*measure*'s images/s and the kernel time this process spent on it."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    rate = measure().rate
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime - before
    return f"{rate:8,.0f} images/s, {kernel:.2f} s in the kernel"


def main(path: str, folder: str, tv_python: str, rounds: int) -> None:
    def dataloader() -> None:
        throughput("dataloader", Path(folder), "train_trivialaugment", 2, tv_python)

    loader_throughput(path, "train", epochs=1)  # imports, first compilation
    for warmup in (0, 1):
        def fastforward(warmup: int = warmup) -> object:
            return loader_throughput(path, "train_trivialaugment", epochs=3 - warmup,
                                     warmup_epochs=warmup)

        for _ in range(rounds):
            dataloader()
            print(f"warm-up epochs {warmup}: after the DataLoader {timed(fastforward)}; "
                  f"next {timed(fastforward)}", flush=True)
    blobs = stored_jpegs(Reader(path), "image")
    for _ in range(rounds):
        dataloader()
        print(f"decode limit: after the DataLoader {timed(lambda: decode_limit(blobs, repeat=2))}"
              f"; next {timed(lambda: decode_limit(blobs, repeat=2))}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) == 5 else 2)

"""What the integrity features cost: the checks on opening, the checksum algorithm,
and the loader's page checks. Prints one table per measurement.

    python bench/integrity.py hashes [--mib 256] [--rounds 5]
    python bench/integrity.py open-checks [--samples 1000000] [--rounds 5]
    python bench/integrity.py loader [--images 2000] [--rounds 3]
    python bench/integrity.py write [--images 2000] [--rounds 3]

``hashes`` times xxh3_64 (the ``xxhash`` wheel, what fastforward uses) and,
when installed, CRC32C from the ``crc32c`` and ``google-crc32c`` wheels and
zlib's CRC-32, side by side on one buffer, each round in turn: GB/s, best of
each round. ``open-checks`` writes a file of IntField + BytesField samples
and times ``Reader(...)`` and, inside it, the payload checks (re-run on the
open reader). ``loader`` times epochs of a JPEG pipeline and of a bytes-only
one, each with and without ``verify_checksums``, side by side, first epoch and
later ones. Timings on a shared machine are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def hashes(mib: int, rounds: int) -> None:
    import xxhash

    candidates: dict[str, Callable[[Any], Any]] = {
        "xxh3_64 (xxhash)": xxhash.xxh3_64_intdigest,
        "zlib.crc32": zlib.crc32,
    }
    try:
        import crc32c

        candidates["crc32c (crc32c)"] = crc32c.crc32c
    except ImportError:
        print("crc32c not installed: pip install crc32c")
    try:
        import google_crc32c

        candidates["crc32c (google-crc32c)"] = google_crc32c.value
    except ImportError:
        print("google-crc32c not installed: pip install google-crc32c")
    data = np.random.default_rng(0).integers(0, 256, mib << 20, dtype=np.uint8)
    speeds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            best = min(_timed(fn, data) for _ in range(3))
            speeds[name].append(data.nbytes / best / 1e9)
    print(f"{'algorithm':26s} GB/s per round (best of 3 each), {mib} MiB buffer")
    for name, values in speeds.items():
        print(f"{name:26s} median {statistics.median(values):6.2f}, range "
              f"{min(values):.2f}-{max(values):.2f}")


def _timed(fn: Callable[[Any], Any], data: Any) -> float:
    start = time.perf_counter()
    fn(data)
    return time.perf_counter() - start


def open_checks(samples: int, rounds: int) -> None:
    from fastforward.fields import BytesField, IntField
    from fastforward.reader import Reader
    from fastforward.writer import DatasetWriter

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "million.beton"
        rng = np.random.default_rng(0)
        blobs = [rng.integers(0, 256, int(n), dtype=np.uint8)
                 for n in rng.integers(1, 33, samples)]
        start = time.perf_counter()
        DatasetWriter(path, {"label": IntField(), "blob": BytesField()}, num_workers=2,
                      progress=False).from_indexed_dataset(
                          [(i, b) for i, b in enumerate(blobs)], chunksize=10_000)
        print(f"wrote {samples} samples ({path.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - start:.1f} s")
        from fastforward._ext.layout import find_overlaps, scan_table
        from fastforward.checksums import digest

        opens, checks, tables, sums, before = [], [], [], [], []
        for _ in range(rounds):
            start = time.perf_counter()
            reader = Reader(path)
            opens.append(time.perf_counter() - start)
            start = time.perf_counter()
            reader._index_payloads()  # the payload checks, as the constructor runs them
            checks.append(time.perf_counter() - start)
            start = time.perf_counter()
            table = reader.alloc_table
            scan_table(table["ptr"], table["size"], table["sample_id"], reader.data_start,
                       reader.data_end, reader.num_samples)
            find_overlaps(reader._ptrs, reader._sizes)
            tables.append(time.perf_counter() - start)
            start = time.perf_counter()
            digest(reader.metadata)
            digest(reader.alloc_table)
            sums.append(time.perf_counter() - start)
            # what every Loader computed on opening before these checks: each sample's
            # payload size, vectorised with NumPy (MemoryManager.__init__)
            start = time.perf_counter()
            reader.payload_sizes(reader.metadata["f1"]["ptr"],
                                 np.arange(reader.num_samples, dtype=np.uint64))
            before.append(time.perf_counter() - start)
            reader.close()
        per_million = 1e6 / samples * 1e3
        for name, values in (("Reader() in all", opens), ("payload checks", checks),
                             ("table checks", tables), ("metadata + table sums", sums),
                             ("(before: payload_sizes)", before)):
            print(f"{name:22s} median {statistics.median(values) * per_million:6.1f} ms per "
                  f"million samples (range {min(values) * per_million:.1f}-"
                  f"{max(values) * per_million:.1f})")


def loader(images: int, rounds: int) -> None:
    from fastforward.datasets import ImageFolder
    from fastforward.demo import make_corpus
    from fastforward.fields import BytesField, IntField, RGBImageField
    from fastforward.fields.decoders import (
        BytesDecoder,
        IntDecoder,
        RandomResizedCropRGBImageDecoder,
    )
    from fastforward.writer import DatasetWriter

    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(Path(tmp) / "images", images, seed=0)
        jpegs = Path(tmp) / "jpegs.beton"
        DatasetWriter(jpegs, {"image": RGBImageField(write_mode="jpg", max_resolution=256),
                              "label": IntField()}, num_workers=2,
                      progress=False).from_indexed_dataset(ImageFolder(corpus))
        blobs = Path(tmp) / "blobs.beton"
        rng = np.random.default_rng(0)
        DatasetWriter(blobs, {"blob": BytesField(), "label": IntField()}, num_workers=2,
                      progress=False).from_indexed_dataset(
                          [(rng.integers(0, 256, 60_000, dtype=np.uint8), i)
                           for i in range(images)])
        cases = {
            "JPEG 224 crop": (jpegs, {"image": [RandomResizedCropRGBImageDecoder((224, 224))],
                                      "label": [IntDecoder()]}),
            "bytes (60 kB)": (blobs, {"blob": [BytesDecoder()], "label": [IntDecoder()]}),
        }
        for name, (path, pipelines) in cases.items():
            path.read_bytes()  # in the page cache for every variant
            size = path.stat().st_size / 2**20
            for os_cache in (True, False):
                results: dict[bool, list[list[float]]] = {False: [], True: []}
                for _ in range(rounds):
                    for verify in (False, True):
                        results[verify].append(_epochs(path, pipelines, os_cache, verify))
                first = [c[0] / p[0] for p, c in zip(results[False], results[True], strict=True)]
                later = [statistics.median(c[1:]) / statistics.median(p[1:])
                         for p, c in zip(results[False], results[True], strict=True)]
                plain = statistics.median(r[0] for r in results[False])
                print(f"{name} ({size:.0f} MiB), os_cache={os_cache}: epoch {plain:.2f} s "
                      f"without; with verify_checksums: first epoch ×"
                      f"{statistics.median(first):.3f} ({min(first):.3f}-{max(first):.3f}), "
                      f"later epochs ×{statistics.median(later):.3f} "
                      f"({min(later):.3f}-{max(later):.3f})")


def write(images: int, rounds: int) -> None:
    """The writer's cost of checksums: its pages are hashed as they are written (in
    both modes: it is cheap), so time the hashing of the file's pages against the
    whole write, and the write with and without checksums side by side."""
    from fastforward.checksums import digest
    from fastforward.datasets import ImageFolder
    from fastforward.demo import make_corpus
    from fastforward.fields import IntField, RGBImageField
    from fastforward.reader import Reader
    from fastforward.writer import DatasetWriter

    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(Path(tmp) / "images", images, seed=0)
        times: dict[bool, list[float]] = {True: [], False: []}
        hashing = []
        for _ in range(rounds):
            for checksums in (False, True):
                path = Path(tmp) / f"{checksums}.beton"
                start = time.perf_counter()
                DatasetWriter(path, {"image": RGBImageField(write_mode="jpg",
                                                            max_resolution=256),
                                     "label": IntField()}, num_workers=2, progress=False,
                              checksums=checksums).from_indexed_dataset(ImageFolder(corpus))
                times[checksums].append(time.perf_counter() - start)
            with Reader(path) as reader:
                view = memoryview(reader.buffer)
                start = time.perf_counter()
                for k in range(reader.checksums.num_pages):
                    digest(view[slice(*reader.page_range(k))])
                hashing.append(time.perf_counter() - start)
                del view
        size = path.stat().st_size / 2**20
        ratios = [t / f for t, f in zip(times[True], times[False], strict=True)]
        print(f"{images} JPEGs, {size:.0f} MiB: write {statistics.median(times[False]):.1f} s "
              f"without checksums, ×{statistics.median(ratios):.3f} with "
              f"({min(ratios):.3f}-{max(ratios):.3f}); hashing the pages alone "
              f"{statistics.median(hashing) * 1e3:.1f} ms "
              f"({statistics.median(hashing) / statistics.median(times[True]) * 100:.2f}% "
              "of the write)")


def _epochs(path: Path, pipelines: dict[str, Any], os_cache: bool, verify: bool) -> list[float]:
    from fastforward.loader import Loader, OrderOption

    times = []
    with Loader(path, 64, num_workers=2, os_cache=os_cache, order=OrderOption.RANDOM, seed=0,
                pipelines=pipelines, verify_checksums=verify) as loader:
        for _ in range(3):
            start = time.perf_counter()
            for _batch in loader:
                pass
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["hashes", "open-checks", "loader", "write"])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.what == "hashes":
        hashes(args.mib, args.rounds)
    elif args.what == "open-checks":
        open_checks(args.samples, args.rounds)
    elif args.what == "write":
        write(args.images, args.rounds)
    else:
        loader(args.images, args.rounds)


if __name__ == "__main__":
    main()

"""Check that FFCV 1.0.2 reads a file fastforward wrote with checksums as it reads one
without them: every value, through FFCV's Reader and its Loader in every order.

The checksum block lies between the last data page and the allocation table
(``fastforward.checksums``). FFCV reads the table from ``alloc_table_ptr`` to
the end of the file, and pages only where allocations point, so it should
never see the block; this script checks that with FFCV itself.

Usage (FFCV in a virtual environment of its own, see ``bench/baselines.py``)::

    python bench/ffcv_checksums.py --ffcv-python /tmp/ffcv/bin/python [--samples 600]

It writes a multi-field file with checksums (and, for comparison, the same
file without), runs ``ffcv_side`` under the FFCV interpreter, and compares
each sample's values with what fastforward's ``Reader`` reads. Without
``--ffcv-python``, or when that interpreter cannot ``import ffcv``, it says
so and exits 0 (skipped). The FFCV side imports nothing of fastforward.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

SHAPE = (24, 40)  # every image the same size: FFCV's SimpleRGBImageDecoder needs one


def write_file(path: Path, samples: int, checksums: bool) -> None:
    """Int (the index), Float, Bytes, NDArray, JSON and images (JPEG and raw mixed),
    over several 2 MiB pages."""
    from fastforward.demo import load_photos
    from fastforward.fields import (
        BytesField,
        FloatField,
        IntField,
        JSONField,
        NDArrayField,
        RGBImageField,
    )
    from fastforward.writer import DatasetWriter

    photos = load_photos()
    rng = np.random.default_rng(0)
    data = []
    for i in range(samples):
        photo = photos[i % len(photos)]
        y, x = int(rng.integers(photo.shape[0] - SHAPE[0])), int(rng.integers(
            photo.shape[1] - SHAPE[1]))
        image = np.ascontiguousarray(photo[y : y + SHAPE[0], x : x + SHAPE[1]])
        blob = rng.integers(0, 256, int(rng.integers(1, 12_000)), dtype=np.uint8)
        data.append((i, float(rng.standard_normal()), blob,
                     rng.standard_normal((3, 5)).astype("<f4"),
                     {"i": i, "tag": "x" * (i % 7)}, image))
    fields = {"index": IntField(), "score": FloatField(), "blob": BytesField(),
              "array": NDArrayField(np.dtype("<f4"), (3, 5)), "meta": JSONField(),
              "image": RGBImageField(write_mode="proportion", compress_probability=0.5)}
    DatasetWriter(path, fields, page_size=1 << 21, num_workers=2, progress=False,
                  checksums=checksums).from_indexed_dataset(data)


def expected_values(path: Path) -> list[dict[str, Any]]:
    """Each sample's values, as fastforward's Reader reads them (checksums checked)."""
    from fastforward.reader import Reader

    with Reader(path, verify_checksums=True) as reader:
        assert not reader.verify(), f"{path} is damaged"
        return [_plain(reader.read(i)) for i in range(reader.num_samples)]


def _plain(values: tuple) -> dict[str, Any]:
    index, score, blob, array, meta, image = values
    return {"index": int(index), "score": float(score), "blob": bytes(blob).hex(),
            "array": np.asarray(array).tobytes().hex(), "meta": meta,
            "image": _digest(np.asarray(image))}


def _digest(image: np.ndarray) -> str:
    import hashlib

    return f"{image.shape}:{hashlib.sha256(image.tobytes()).hexdigest()}"


# -- under FFCV's interpreter ---------------------------------------------------------------------

def ffcv_side(path: str) -> dict[str, Any]:
    """Read *path* with FFCV: its Reader, then its Loader in each order and cache mode."""
    import hashlib

    from ffcv.fields.decoders import (
        BytesDecoder,
        FloatDecoder,
        IntDecoder,
        NDArrayDecoder,
        SimpleRGBImageDecoder,
    )
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader

    reader = Reader(path)
    out: dict[str, Any] = {"num_samples": int(reader.num_samples),
                           "alloc_rows": len(reader.alloc_table),
                           "alloc_max_sample": int(reader.alloc_table["sample_id"].max()),
                           "loaders": {}}
    for order in ("SEQUENTIAL", "RANDOM", "QUASI_RANDOM"):
        for os_cache in (True, False):
            pipelines = {"index": [IntDecoder()], "score": [FloatDecoder()],
                         "blob": [BytesDecoder()], "array": [NDArrayDecoder()],
                         "meta": [BytesDecoder()], "image": [SimpleRGBImageDecoder()]}
            loader = Loader(path, batch_size=16, num_workers=2, order=getattr(OrderOption, order),
                            os_cache=os_cache, drop_last=False, seed=3, pipelines=pipelines)
            seen: dict[int, Any] = {}
            for index, score, blob, array, meta, image in loader:
                for k in range(len(index)):
                    i = int(index[k, 0])
                    img = np.asarray(image[k])
                    seen[i] = {
                        "score": float(score[k, 0]),
                        "blob": bytes(np.asarray(blob[k])).hex(),
                        "array": np.asarray(array[k]).tobytes().hex(),
                        "meta": bytes(np.asarray(meta[k])).split(b"\0", 1)[0].decode(),
                        "image": f"{img.shape}:{hashlib.sha256(img.tobytes()).hexdigest()}",
                    }
            out["loaders"][f"{order}/os_cache={os_cache}"] = {str(i): v for i, v in seen.items()}
    return out


# -- comparison -----------------------------------------------------------------------------------

def compare(expected: list[dict[str, Any]], got: dict[str, Any]) -> list[str]:
    """The differences between fastforward's values and FFCV's (empty: none)."""
    errors = []
    if got["num_samples"] != len(expected):
        errors.append(f"FFCV's Reader: {got['num_samples']} samples, expected {len(expected)}")
    for name, seen in got["loaders"].items():
        if sorted(int(i) for i in seen) != list(range(len(expected))):
            errors.append(f"{name}: visited {len(seen)} distinct samples of {len(expected)}")
        for key, values in seen.items():
            want = expected[int(key)]
            blob = bytes.fromhex(values["blob"])
            checks = {
                "score": values["score"] == want["score"],
                # FFCV copies each sample's bytes into its row and leaves the rest of
                # the row as it was (an earlier batch's bytes): compare the sample's own
                "blob": blob[: len(want["blob"]) // 2].hex() == want["blob"],
                "array": values["array"] == want["array"],
                "meta": json.loads(values["meta"]) == want["meta"],
                "image": values["image"] == want["image"],
            }
            errors += [f"{name}: sample {key}: {field} differs" for field, ok in checks.items()
                       if not ok]
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ffcv-python", default=None, metavar="PYTHON",
                        help="an interpreter whose environment has ffcv==1.0.2")
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--ffcv-side", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ffcv_side:
        print(json.dumps(ffcv_side(args.ffcv_side)))
        return 0
    if args.ffcv_python is None:
        print("skipped: no --ffcv-python given")
        return 0
    probe = subprocess.run([args.ffcv_python, "-c", "import ffcv.loader"],
                           capture_output=True, text=True, check=False)
    if probe.returncode:
        print(f"skipped: {args.ffcv_python} cannot import ffcv:\n{probe.stderr.strip()}")
        return 0
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for checksums in (True, False):
            path = Path(tmp) / f"checksums-{checksums}.beton"
            write_file(path, args.samples, checksums)
            expected = expected_values(path)
            run = subprocess.run([args.ffcv_python, __file__, "--ffcv-side", str(path)],
                                 capture_output=True, text=True, check=False)
            if run.returncode:
                print(f"checksums={checksums}: FFCV failed:\n{run.stderr[-3000:]}")
                failures += 1
                continue
            got = json.loads(run.stdout.strip().splitlines()[-1])
            errors = compare(expected, got)
            loaders = ", ".join(got["loaders"])
            if errors:
                failures += 1
                print(f"checksums={checksums}: {len(errors)} difference(s), e.g.")
                print("\n".join(f"  {e}" for e in errors[:10]))
            else:
                print(f"checksums={checksums}: {path.stat().st_size} bytes, "
                      f"{got['num_samples']} samples, {got['alloc_rows']} allocation rows: "
                      f"FFCV's Reader and Loader ({loaders}) read every value as "
                      "fastforward does")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

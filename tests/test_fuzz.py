"""A seeded fuzz test: damaged files never crash, hang or blow up memory, and never
give wrong values where fastforward can know better.

A small file of every built-in field (IntField, FloatField, RGBImageField JPEG
and raw, BytesField, NDArrayField, JSONField) is written with and without
checksums, then mutated: bit flips, bytes, u16/u64 values and random runs in
the header, the field descriptors, the metadata, the padding, the payloads,
the checksum block and the allocation table; truncations and extensions.
Each case opens the file with ``Reader`` and reads every sample, then runs a
``Loader`` epoch (NumPy pipelines, no torch). Every case must end in one of:

- a ``FastForwardError`` whose message names the file;
- output equal to the original's. With checksums (read with
  ``verify_checksums=True``) that is every value: labels, floats, bytes,
  JSON, array bytes, image shapes and pixels, the loader's batches. Without
  checksums, only what the format lets fastforward check: each sample's image
  shape, bytes and JSON lengths, array shapes (a changed label, float, array
  byte or JPEG byte is undetectable there: that is what the checksums are for).
  A file without checksums whose IntField became a FloatField (type ids 1 and
  0 differ by one bit; both live in the metadata alone) is counted apart, as
  "types changed": nothing but a checksum can tell.

The cases run in a worker process with an address-space limit (``RLIMIT_AS``)
and a per-case watchdog (``faulthandler.dump_traceback_later(exit=True)``);
a worker that dies (a crash, a signal, the watchdog) fails its case, and
another worker takes the remaining ones. The worker's peak RSS must stay
under ``PEAK_RSS``.

``FASTFORWARD_FUZZ_CASES=N`` runs N cases (default 300, about 20 s here);
``FASTFORWARD_FUZZ_SEED`` changes the seed. Run it alone as a script for a
summary: ``python tests/test_fuzz.py --cases 5000``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CASES = int(os.environ.get("FASTFORWARD_FUZZ_CASES", "300"))
SEED = int(os.environ.get("FASTFORWARD_FUZZ_SEED", "12"))
CASE_TIMEOUT = 60  # seconds per case before the watchdog ends the worker
SABOTAGE_TIMEOUT = 3  # the watchdog of the case made to hang (the harness's own test)
ADDRESS_SPACE = 8 << 30  # the worker's RLIMIT_AS: an 8 TiB allocation must fail, not be tried
PEAK_RSS = 1 << 30  # the worker's peak resident memory, over all its cases
PAGE = 1 << 21
ORIGINAL_TYPES = ["IntField", "FloatField", "RGBImageField", "BytesField", "NDArrayField",
                  "JSONField"]
ALLOWED = {"refused", "same", "types changed"}


# -- the file -------------------------------------------------------------------------------------


def write_original(path: Path, checksums: bool) -> None:
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
    rng = np.random.default_rng(3)
    data = []
    for i in range(24):
        photo = photos[i % len(photos)]
        h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        data.append((i * 7 - 30, float(rng.standard_normal()),
                     np.ascontiguousarray(photo[:h, :w]),
                     rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8),
                     rng.standard_normal((2, 3)).astype("<f4"), {"i": i, "s": "x" * (i % 5)}))
    fields = {"label": IntField(), "score": FloatField(),
              "image": RGBImageField(write_mode="proportion", compress_probability=0.5),
              "blob": BytesField(), "array": NDArrayField(np.dtype("<f4"), (2, 3)),
              "meta": JSONField()}
    DatasetWriter(path, fields, page_size=PAGE, num_workers=1, progress=False,
                  checksums=checksums).from_indexed_dataset(data)


def regions(path: Path) -> dict[str, tuple[int, int]]:
    from fastforward.reader import Reader

    with Reader(path) as reader:
        meta = 24 + 1041 * reader.num_fields
        found = {"header": (0, 24), "descriptors": (24, meta),
                 "metadata": (meta, reader.metadata_end),
                 "padding": (reader.metadata_end, reader.data_start),
                 "alloc table": (reader.alloc_table_ptr, path.stat().st_size)}
        if reader.checksums is not None:
            found["checksum block"] = (reader.checksums.block_start, reader.alloc_table_ptr)
        found["payloads"] = (int(reader.alloc_table["ptr"].min()),
                             int((reader.alloc_table["ptr"] + reader.alloc_table["size"]).max()))
        return found


# -- mutations ------------------------------------------------------------------------------------


def mutate(data: bytes, where: dict[str, tuple[int, int]], rng: np.random.Generator
           ) -> tuple[bytes, str]:
    """One random mutation of *data*; returns the new bytes and a description."""
    kind = rng.choice(["flip", "flip", "byte", "u16", "u64", "u64", "run", "truncate",
                       "extend"])
    if kind == "truncate":
        points = [0, 23, 24, where["metadata"][0] + 5, where["metadata"][1], where["payloads"][0],
                  where["payloads"][1] - 1, where["alloc table"][0], len(data) - 24,
                  len(data) - 1, int(rng.integers(len(data)))]
        size = int(rng.choice(points))
        return data[:size], f"truncate to {size}"
    if kind == "extend":
        extra = rng.integers(0, 256, int(rng.choice([1, 7, 24, 48])), dtype=np.uint8).tobytes()
        return data + extra, f"append {len(extra)} bytes"
    region = str(rng.choice(sorted(where)))
    start, end = where[region]
    if end <= start:
        return data, f"{region}: empty region"
    buf = bytearray(data)
    offset = int(rng.integers(start, end))
    if kind == "flip":
        bit = int(rng.integers(8))
        buf[offset] ^= 1 << bit
        return bytes(buf), f"{region}: flip bit {bit} of byte {offset}"
    if kind == "byte":
        value = int(rng.integers(256))
        buf[offset] = value
        return bytes(buf), f"{region}: byte {offset} = {value}"
    if kind == "run":
        n = int(rng.integers(1, 65))
        buf[offset : offset + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        return bytes(buf[: len(data)]), f"{region}: {n} random bytes at {offset}"
    width = 2 if kind == "u16" else 8
    old = int.from_bytes(buf[offset : offset + width].ljust(width, b"\0"), "little")
    top = (1 << (8 * width)) - 1
    choices = [0, 1, top, top >> 1, old + 1, old - 1, old * 2, old // 2, 1 << int(
        rng.integers(8 * width)), int(rng.integers(1 << 62))]
    value = int(rng.choice(np.array(choices, dtype=object))) & top
    buf[offset : offset + width] = value.to_bytes(width, "little")
    return bytes(buf[: len(data)]), f"{region}: {kind} at {offset} = {value}"


# -- reading --------------------------------------------------------------------------------------


def read_all(path: Path, checksums: bool) -> dict[str, Any]:
    """Everything fastforward gives for *path*: Reader.read of every sample, one epoch."""
    from fastforward.fields import RGBImageField
    from fastforward.fields.decoders import CenterCropRGBImageDecoder
    from fastforward.loader import Loader
    from fastforward.reader import Reader

    with Reader(path, verify_checksums=checksums) as reader:
        handlers = reader.handlers
        samples = [reader.read(i) for i in range(reader.num_samples)]
    # each field's decoder as a user would pick it for the type the file declares
    pipelines = {name: [CenterCropRGBImageDecoder((8, 8), 1.0)
                        if isinstance(handler, RGBImageField) else
                        handler.get_decoder_class()()]
                 for name, handler in handlers.items()}
    with Loader(path, 5, num_workers=2, pipelines=pipelines, drop_last=False,
                verify_checksums=checksums, batches_ahead=2) as loader:
        batches = [tuple(_copy(x) for x in batch) for batch in loader]
    return {"samples": samples, "batches": batches,
            "types": [type(h).__name__ for h in handlers.values()]}


def _copy(x: Any) -> Any:
    return tuple(np.array(v) for v in x) if isinstance(x, tuple) else np.array(x)


def structure(values: dict[str, Any]) -> list[Any]:
    """What the checks guarantee without checksums: shapes and lengths."""
    out: list[Any] = [values["types"]]
    for label, score, image, blob, array, meta in values["samples"]:
        out.append((np.shape(label), image.shape, len(blob), array.shape, type(meta).__name__,
                    type(score).__name__))
    for batch in values["batches"]:
        out.append(tuple(b.shape if not isinstance(b, tuple) else (b[0].shape[0], b[1].tolist())
                         for b in batch))
    return out


def everything(values: dict[str, Any]) -> list[Any]:
    out: list[Any] = [values["types"]]
    for label, score, image, blob, array, meta in values["samples"]:
        out.append((label, score, image.shape, image.tobytes(), blob.tobytes(), array.dtype.str,
                    array.tobytes(), json.dumps(meta, sort_keys=True)))
    for batch in values["batches"]:
        out.append(tuple(b.tobytes() if not isinstance(b, tuple) else
                         (b[0].tobytes(), b[1].tobytes()) for b in batch))
    return out


def run_case(original: bytes, where: dict[str, tuple[int, int]], checksums: bool,
             expected: list[Any], seed: int, path: Path) -> tuple[str, str]:
    """Mutate, read, judge: ``(outcome, description)``; outcome is 'refused' or 'same',
    anything else is a failure."""
    from fastforward.errors import FastForwardError

    data, what = mutate(original, where, np.random.default_rng(seed))
    path.write_bytes(data)
    try:
        got = read_all(path, checksums)
    except FastForwardError as exc:
        if not str(exc).startswith(f"{path}: ") and str(path) not in str(exc):
            return f"FAIL: the error does not name the file: {exc!r}", what
        return "refused", what
    except Exception as exc:
        return f"FAIL: {type(exc).__name__}: {exc}"[:2000], what
    compare = everything if checksums else structure
    if compare(got) != expected:
        if not checksums and got["types"] != ORIGINAL_TYPES:
            # an IntField's type id flipped to FloatField's (both stored in the metadata
            # alone): only a checksum can tell
            return "types changed", what
        return "FAIL: output differs from the original's, and nothing said so", what
    return "same", what


def worker(spec_path: str) -> None:
    """Run the cases of a spec file, one result line each (see ``run``)."""
    import faulthandler
    import resource

    spec = json.loads(Path(spec_path).read_text())
    resource.setrlimit(resource.RLIMIT_AS, (spec["address_space"], spec["address_space"]))
    work = Path(spec["work"])
    originals = {}
    for variant in ("checksums", "plain"):
        path = Path(spec[variant])
        checksums = variant == "checksums"
        values = read_all(path, checksums)
        originals[variant] = (path.read_bytes(), regions(path), checksums,
                              (everything if checksums else structure)(values))
    for case in spec["cases"]:
        variant, seed = case
        _say({"start": case})
        sabotaged = case == spec.get("sabotage", [None])[0]  # the harness's own test
        # only the sabotaged case gets the short watchdog: another one, merely slow
        # on a busy machine, must not be taken for a hang
        faulthandler.dump_traceback_later(SABOTAGE_TIMEOUT if sabotaged else spec["timeout"],
                                          exit=True)
        original, where, checksums, expected = originals[variant]
        if sabotaged:
            _sabotage(spec["sabotage"][1])
        outcome, what = run_case(original, where, checksums, expected, seed,
                                 work / f"case-{variant}.beton")
        faulthandler.cancel_dump_traceback_later()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        _say({"case": case, "outcome": outcome, "what": what, "peak_rss": rss})


def _sabotage(how: str) -> None:
    import signal
    import time

    if how == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif how == "hang":
        time.sleep(3600)
    elif how == "memory":
        np.empty(ADDRESS_SPACE, np.uint8)  # past RLIMIT_AS: MemoryError, never attempted


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def run(cases: int, seed: int, work: Path, timeout: float = CASE_TIMEOUT,
        sabotage: tuple[int, str] | None = None) -> list[dict[str, Any]]:
    """Run *cases* cases (half with checksums) in worker processes; one dict per case.

    *sabotage* ``(k, how)`` makes case *k* crash, hang or exhaust memory (to test
    the harness; its watchdog is ``SABOTAGE_TIMEOUT``)."""
    files = {}
    for variant in ("checksums", "plain"):
        files[variant] = str(work / f"{variant}.beton")
        write_original(Path(files[variant]), variant == "checksums")
    todo = [["checksums" if k % 2 == 0 else "plain", seed * 1_000_003 + k] for k in range(cases)]
    todo_all = [list(case) for case in todo]
    results: list[dict[str, Any]] = []
    while todo:
        spec: dict[str, Any] = {**files, "work": str(work), "cases": todo, "timeout": timeout,
                                "address_space": ADDRESS_SPACE}
        if sabotage is not None:
            spec["sabotage"] = [[*todo_all[sabotage[0]]], sabotage[1]]
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        started = None
        with open(work / "stderr.txt", "w+") as err, subprocess.Popen(
                [sys.executable, __file__, "--worker", str(spec_path)],
                stdout=subprocess.PIPE, stderr=err, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                message = json.loads(line)
                if "start" in message:
                    started = message["start"]
                else:
                    results.append(message)
                    todo.remove(message["case"])
                    started = None
            proc.wait()
            err.seek(0)
            stderr = err.read()
        if started is not None:  # the worker died in this case: a crash, a signal, a hang
            results.append({"case": started, "what": "(see the worker's stderr)",
                            "outcome": f"FAIL: worker died (exit {proc.returncode}): "
                                       f"{stderr[-3000:]}", "peak_rss": 0})
            todo.remove(started)
        elif proc.returncode:
            raise RuntimeError(f"fuzz worker failed before its cases: {stderr[-3000:]}")
    return results


def summary(results: list[dict[str, Any]]) -> str:
    counts = collections.Counter((r["case"][0], r["outcome"].split(":")[0]) for r in results)
    lines = [f"{len(results)} cases; peak RSS of a worker "
             f"{max(r['peak_rss'] for r in results) / 2**20:.0f} MiB"]
    lines += [f"  {variant:9s} {outcome:8s} {n}" for (variant, outcome), n in sorted(
        counts.items())]
    return "\n".join(lines)


def test_fuzz(tmp_path: Path) -> None:
    results = run(CASES, SEED, tmp_path)
    failures = [r for r in results if r["outcome"] not in ALLOWED]
    print(summary(results))  # noqa: T201 - shown with -s
    assert not failures, "\n".join(f"{r['case']} {r['what']}: {r['outcome']}"
                                   for r in failures[:10])
    assert max(r["peak_rss"] for r in results) < PEAK_RSS
    # the mutations reach both outcomes in both variants (the test exercises something)
    outcomes = {(r["case"][0], r["outcome"]) for r in results}
    assert {("checksums", "refused"), ("plain", "refused"), ("plain", "same")} <= outcomes


@pytest.mark.parametrize("how", ["crash", "hang", "memory"])
def test_harness_fails_a_case_that_crashes_hangs_or_exhausts_memory(tmp_path: Path,
                                                                     how: str) -> None:
    results = run(4, SEED, tmp_path, sabotage=(1, how))
    outcomes = [r["outcome"] for r in sorted(results, key=lambda r: r["case"][1])]
    assert len(outcomes) == 4
    assert outcomes[1].startswith("FAIL: worker died")
    assert how != "memory" or "MemoryError" in outcomes[1]
    assert how != "hang" or "Timeout" in outcomes[1]
    assert all(o in ALLOWED for k, o in enumerate(outcomes) if k != 1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", default=None)
    parser.add_argument("--cases", type=int, default=CASES)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            found = run(args.cases, args.seed, Path(tmp))
        print(summary(found))  # noqa: T201
        for r in found:
            if r["outcome"] not in ALLOWED:
                print(r["case"], r["what"], r["outcome"])  # noqa: T201

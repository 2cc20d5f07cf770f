"""Process workers: how long the first batch takes with each start method, and
what each worker costs in memory (not a test; prints a table).

    python bench/worker_startup.py FILE.beton [--workers 2] [--repeat 3] [--imports torch]

Each measurement runs in a fresh interpreter (a fork server, once started,
serves the rest of a process's life), in turn: ``fork``, ``forkserver`` (the
default), ``spawn``. It runs ``python -c``, whose main module the workers need
not import; ``--imports MODULE`` (repeatable) runs it as a script instead, in a
temporary folder, that imports MODULE at its top level (``torch``, say), as a
training script does: workers started by ``spawn`` import it again, those from
the fork server find it there. For each, the time from ``Loader(...)`` to the first batch
of the ``python_op`` pipeline (RandomResizedCrop(192) + flip + a per-sample
NumPy operation), then the time to a second loader's first batch in the same
process, and each worker's proportional set size (PSS: its private memory
plus its share of shared pages) and unique set size (USS) after two epochs,
beside the size of the shared slots.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
from fastforward.benchmark import loader_pipelines
from fastforward.loader import Loader, OrderOption
from fastforward.reader import Reader

path, method, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])

def memory(pid):
    pss = uss = 0
    with open(f"/proc/{pid}/smaps_rollup") as smaps:
        for line in smaps:
            name, value = line.split(":", 1)
            if name == "Pss":
                pss = int(value.split()[0]) * 1024
            elif name in ("Private_Clean", "Private_Dirty"):
                uss += int(value.split()[0]) * 1024
    return pss, uss

if __name__ == "__main__":
    reader = Reader(path)
    pipelines = loader_pipelines(reader, "image", "python_op")
    figures = {}
    for name in ("first", "second"):
        start = time.perf_counter()
        loader = Loader(path, 128, num_workers=workers, worker_type="process",
                        start_method=method, order=OrderOption.RANDOM, seed=0,
                        pipelines=pipelines)
        next(iter(loader))
        figures[name] = time.perf_counter() - start
        if name == "second":
            for _ in range(2):
                for _ in loader:
                    pass
            figures["workers"] = [memory(pid) for pid in loader.workers.pids]
            figures["slots"] = sum(s.nbytes for s in loader._slots._free)
        loader.close()
    print(json.dumps(figures))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--imports", action="append", default=[], metavar="MODULE",
                        help="run a script that imports MODULE at its top level")
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {m: [] for m in ("fork", "forkserver", "spawn")}
    with tempfile.TemporaryDirectory() as folder:
        # in a neutral directory: run from the source folder, "-c" would import its
        # uncompiled sources rather than the installed package
        program = ["-c", CHILD]
        if args.imports:
            script = os.path.join(folder, "startup.py")
            with open(script, "w") as out:
                out.write("".join(f"import {name}\n" for name in args.imports) + CHILD)
            program = [script]
        for _ in range(args.repeat):
            for method in rows:
                out = subprocess.run([sys.executable, *program, os.path.abspath(args.file),
                                      method, str(args.workers)], capture_output=True,
                                     text=True, check=False, cwd=folder)
                if out.returncode:
                    sys.exit(f"the {method} run failed:\n{out.stderr.strip()}")
                rows[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
    imports = f", a script importing {', '.join(args.imports)}" if args.imports else ""
    print(f"{args.file}: python_op, {args.workers} worker processes, {args.repeat} runs"
          f"{imports}")
    print(f"  {'start method':<12} {'first batch (s)':>16} {'second loader (s)':>18} "
          f"{'worker PSS (MB)':>16} {'worker USS (MB)':>16} {'slots (MB)':>11}")
    for method, runs in rows.items():
        def span(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
            low, high = min(values) * scale, max(values) * scale
            return f"{low:.{digits}f}-{high:.{digits}f}"
        pss = [p for r in runs for p, _ in r["workers"]]
        uss = [u for r in runs for _, u in r["workers"]]
        print(f"  {method:<12} {span([r['first'] for r in runs]):>16} "
              f"{span([r['second'] for r in runs]):>18} {span(pss, 1e-6, 0):>16} "
              f"{span(uss, 1e-6, 0):>16} {runs[0]['slots'] / 1e6:>11.0f}")


if __name__ == "__main__":
    main()

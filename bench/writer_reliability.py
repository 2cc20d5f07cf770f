"""The writer's start-up cost per start method, and how fast its workers go
when the parent is killed. Run from outside the source tree:

    python bench/writer_reliability.py startup [--samples 100000] [--repeat 3]
    python bench/writer_reliability.py kill [--repeat 5]

``startup``: seconds from creating the worker pool until every worker has
answered a first task, for 2 and 16 workers: fork; the fork server the first
time (it starts, importing fastforward); the fork server once running; and
the automatic choice in a process with a thread that survives a fork (a trial
fork, then the fork server). The job is an encoder and an ImageFolder-like
dataset of ``--samples`` (path, label) pairs, pickled for the fork server.

``kill``: a write with 2 workers killed mid-write by SIGKILL or SIGTERM; how
long until every process below it is gone, and what stays in the folder.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

STARTUP = """
    import faulthandler
    import sys
    import time
    from pathlib import Path

    from fastforward.fields import IntField, RGBImageField
    from fastforward.types import get_metadata_type
    from fastforward.writer import _Encoder, _IndexedSource, _Pool


    class Folder:  # as ImageFolder holds them
        def __init__(self, n):
            self.samples = [(Path(f"/data/train/n{i % 1000:08d}/{i:08d}.JPEG"), i % 1000)
                            for i in range(n)]

        def __len__(self):
            return len(self.samples)

        def __getitem__(self, i):
            return self.samples[i][1]


    if __name__ == "__main__":
        method, workers, samples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        fields = [RGBImageField(write_mode="jpg"), IntField()]
        encoder = _Encoder("x.beton", ["image", "label"], fields, get_metadata_type(fields),
                           8 << 20, 0)
        job = (encoder, _IndexedSource(Folder(samples), "x.beton"))
        requested = None if method == "auto-with-thread" else method
        if method == "auto-with-thread":
            faulthandler.dump_traceback_later(3600)  # a native thread a fork does not stop
        times = []
        for _ in range(2):  # the first start of a fork server starts the server
            start = time.perf_counter()
            pool = _Pool(workers, job, requested)
            # every worker answers an empty task: 2 per worker are sent at first
            list(pool.run([(0, [])] * (2 * workers)))
            times.append(time.perf_counter() - start)
            chosen = pool.method
            pool.close()
        print(chosen, *(f"{t:.3f}" for t in times))
"""


def startup(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "startup.py"
        script.write_text(textwrap.dedent(STARTUP))
        print(f"{'method':<18} {'workers':>7}  first start (s), second start (s) per run; "
              f"job: {args.samples} samples")
        for workers in (2, 16):
            for method in ("fork", "forkserver", "auto-with-thread"):
                runs = []
                for _ in range(args.repeat):
                    done = subprocess.run(
                        [sys.executable, str(script), method, str(workers), str(args.samples)],
                        capture_output=True, text=True, cwd=tmp, check=True)
                    runs.append(done.stdout.split())
                chosen = runs[0][0]
                firsts = [float(r[1]) for r in runs]
                seconds = [float(r[2]) for r in runs]
                print(f"{method:<18} {workers:>7}  first {min(firsts):.3f}-{max(firsts):.3f}, "
                      f"second {min(seconds):.3f}-{max(seconds):.3f} ({chosen})", flush=True)


KILLED = """
    import os
    import sys
    import time

    import numpy as np

    import fastforward.writer as w
    from fastforward.fields import BytesField
    from fastforward.writer import DatasetWriter

    target, pids, method, variant = sys.argv[1:5]


    class Big:
        def __len__(self):
            return 4000

        def __getitem__(self, i):
            if i % 8 == 0:
                with open(pids, "a") as f:
                    f.write(f"{os.getpid()}\\n")
            time.sleep(0.005)
            return np.full(100_000, i % 251, np.uint8)


    if __name__ == "__main__":
        if variant == "pipe-only":
            w._die_with_parent = lambda parent_pid: None
        elif variant == "pdeathsig-only":
            real = w._worker_main
            w._worker_main = lambda conn, job, inherited, pid: real(conn, job, ([], []), pid)
        DatasetWriter(target, {"x": BytesField()}, num_workers=2, progress=False,
                      start_method=None if method == "auto" else method
                      ).from_indexed_dataset(Big(), chunksize=8)
"""


def _stat(pid: int) -> tuple[int, str, int] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(pid: int) -> dict[int, int]:
    parents: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parents.setdefault(st[0], []).append(int(entry))
            starts[int(entry)] = st[2]
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found[child] = starts[child]
            todo.append(child)
    return found


def _alive(procs: dict[int, int]) -> list[int]:
    return [pid for pid, start in procs.items()
            if (st := _stat(pid)) is not None and st[2] == start and st[1] != "Z"]


def kill_once(tmp: Path, how: str, method: str, variant: str) -> tuple[float, int, list[str]]:
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    pids = tmp / "pids"
    pids.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(tmp / "killed.py"), str(out / "data.beton"), str(pids), method,
         variant], cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    while len(set(pids.read_text().split()) if pids.exists() else ()) < 2:
        time.sleep(0.02)
    time.sleep(0.3)
    below = _descendants(proc.pid)
    killed = time.monotonic()
    if how == "SIGTERM-group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(getattr(signal, how))
    proc.wait()
    while _alive(below) and time.monotonic() - killed < 30:
        time.sleep(0.002)
    gone = time.monotonic() - killed
    left = sorted(os.listdir(out))
    for name in left:
        os.unlink(out / name)
    return gone, len(below), left


def kill(args: argparse.Namespace) -> None:
    cases = [("SIGKILL", "auto", ""), ("SIGKILL", "fork", "pipe-only"),
             ("SIGKILL", "fork", "pdeathsig-only"), ("SIGKILL", "forkserver", ""),
             ("SIGTERM", "auto", ""), ("SIGTERM-group", "auto", ""),
             ("SIGTERM", "forkserver", "")]
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "killed.py").write_text(textwrap.dedent(KILLED))
        for how, method, variant in cases:
            runs = [kill_once(tmp, how, method, variant) for _ in range(args.repeat)]
            gone = [r[0] * 1000 for r in runs]
            left = {", ".join(r[2]) or "nothing" for r in runs}
            label = f"{how} {method}" + (f" ({variant})" if variant else "")
            print(f"{label:<34} {runs[0][1]} processes below it, all gone "
                  f"{min(gone):.0f}-{max(gone):.0f} ms after; left: {' | '.join(left)}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("startup")
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    p.set_defaults(run=startup)
    p = sub.add_parser("kill")
    p.add_argument("--repeat", type=int, default=5)
    p.set_defaults(run=kill)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()

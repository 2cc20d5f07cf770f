"""The writer when things go wrong: killed parents, concurrent writers, full
disks, files left by earlier crashes, datasets that raise, skipped samples,
and how worker processes start."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fastforward.writer as writer_module
from fastforward.cli import describe_error
from fastforward.errors import DecodeError, EncodeError, FastForwardError
from fastforward.fields import BytesField, Field, IntField, RGBImageField
from fastforward.fields.base import empty_arguments
from fastforward.reader import Reader
from fastforward.types import MIN_PAGE_SIZE, data_offset, metadata_offset
from fastforward.writer import DatasetWriter, TargetLockedError, WorkerError

LINUX = sys.platform.startswith("linux")
linux_only = pytest.mark.skipif(not LINUX, reason="/proc, O_TMPFILE and PR_SET_PDEATHSIG")
# Python 3.12+ warns about a fork in a process with threads (pytest's
# faulthandler watchdog is one): these tests ask for fork on purpose
forking_with_threads = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning")


def write(path: Path, fields: dict, dataset: Any, **kw: Any) -> Reader:
    writer_kw = {k: kw.pop(k) for k in ("page_size", "num_workers", "seed", "skip_errors",
                                        "start_method") if k in kw}
    writer_kw.setdefault("num_workers", 2)
    DatasetWriter(path, fields, progress=False, **writer_kw).from_indexed_dataset(dataset, **kw)
    return Reader(path)


def run_script(tmp_path: Path, body: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """Start a Python script (outside the source tree, so that the installed
    package is imported)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, **popen)


# -- killing the writer's process ------------------------------------------------------------

KILLED_WRITER = """
    import os
    import sys
    import time

    import numpy as np

    import fastforward.writer as w
    from fastforward.fields import BytesField
    from fastforward.writer import DatasetWriter

    target, pids, method, variant = sys.argv[1:5]


    class Big:
        # 100 kB samples, a chunk of 8 (800 kB) more than a socket buffer holds:
        # a worker whose parent is gone blocks sending it unless it sees the pipe close
        def __len__(self):
            return 4000

        def __getitem__(self, i):
            if i % 8 == 0:
                with open(pids, "a") as f:
                    f.write(f"{os.getpid()}\\n")
            time.sleep(0.005)
            return np.full(100_000, i % 251, np.uint8)


    if __name__ == "__main__":
        if variant == "no-pdeathsig":  # only the closed pipe ends tell the workers
            w._die_with_parent = lambda parent_pid: None
        elif variant == "keep-inherited":  # only PR_SET_PDEATHSIG tells them
            real = w._worker_main

            def keep_inherited(conn, job, inherited, parent_pid):
                real(conn, job, ([], []), parent_pid)

            w._worker_main = keep_inherited
        elif variant == "no-tmpfile":  # a hidden .part file, as on other systems
            w._open_unnamed = lambda dir_fd: None
        DatasetWriter(target, {"x": BytesField()}, num_workers=2, progress=False,
                      start_method=None if method == "auto" else method
                      ).from_indexed_dataset(Big(), chunksize=8)
"""


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of *pid*, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """Every process below *pid*: ``{pid: start time}``."""
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


def alive(procs: dict[int, int]) -> list[int]:
    """Those of *procs* still running (a zombie has ended; a reused pid is not it)."""
    living = []
    for pid, start in procs.items():
        st = _stat(pid)
        if st is not None and st[2] == start and st[1] != "Z":
            living.append(pid)
    return living


def kill_mid_write(tmp_path: Path, how: str, method: str = "auto", variant: str = "",
                   ) -> tuple[subprocess.Popen[str], str, dict[int, int], float, Path]:
    """Start a write with 2 workers, kill it mid-write *how*; return the process,
    its stderr, its descendants as they were, how long they took to go, and the
    output folder. Its temporary folder (``TMPDIR``) is ``tmp_path / "tmp"``."""
    out = tmp_path / "out"
    out.mkdir()
    pids = tmp_path / "pids"
    (tmp_path / "tmp").mkdir()
    proc = run_script(tmp_path, KILLED_WRITER, str(out / "data.beton"), str(pids), method,
                      variant, start_new_session=True,
                      env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    try:
        # chunks in flight: both workers started, and a few chunks past their first
        # (counted, not waited for: a slow machine may take seconds to get there)
        deadline = time.monotonic() + 60
        while True:
            started = pids.read_text().split() if pids.exists() else []
            if len(set(started)) >= 2 and len(started) >= 6:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.02)
        below = descendants(proc.pid)
        assert len(below) >= 2
        killed = time.monotonic()
        if how == "SIGTERM-group":  # as `timeout` and batch systems send it
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(getattr(signal, how))
        proc.wait(timeout=30)
        # gone within a second or so; 30 s spares a busy machine
        while alive(below) and time.monotonic() - killed < 30:
            time.sleep(0.01)
        gone = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate()
    return proc, stderr, below, gone, out


@linux_only
@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "method", "variant"),
    [("SIGKILL", "auto", ""), ("SIGKILL", "forkserver", ""),
     ("SIGKILL", "fork", "no-pdeathsig"), ("SIGKILL", "fork", "keep-inherited")],
    ids=["fork", "forkserver", "fork-pipe-guard-only", "fork-pdeathsig-only"])
def test_sigkill_of_the_parent_leaves_no_process_and_no_file(
        tmp_path: Path, how: str, method: str, variant: str) -> None:
    proc, _, below, gone, out = kill_mid_write(tmp_path, how, method, variant)
    assert proc.returncode == -signal.SIGKILL
    assert alive(below) == [], f"still running {gone:.1f} s after the kill"
    # no target, no .part, no temporary name: only the lock file, which stays
    # (unlocked) and which the next write takes over and removes
    assert sorted(os.listdir(out)) == [".data.beton.lock"]
    # nor multiprocessing's folder for the fork server's socket (pymp-*), which the
    # killed process could not remove: the fork server does, as it exits
    assert os.listdir(tmp_path / "tmp") == []
    reader = write(out / "data.beton", {"i": IntField()}, list(range(10)))
    assert reader.metadata["f0"].tolist() == list(range(10))
    assert os.listdir(out) == ["data.beton"]


@linux_only
@pytest.mark.slow
@pytest.mark.parametrize(("how", "method", "variant"),
                         [("SIGTERM", "auto", ""), ("SIGTERM", "forkserver", ""),
                          ("SIGTERM-group", "auto", ""), ("SIGTERM-group", "forkserver", ""),
                          ("SIGHUP", "auto", ""), ("SIGHUP", "auto", "no-tmpfile")],
                         ids=["fork", "forkserver", "process-group", "forkserver-group",
                              "sighup", "sighup-part-file"])
def test_sigterm_stops_the_write_cleanly(tmp_path: Path, how: str, method: str,
                                         variant: str) -> None:
    """And SIGHUP (a closed terminal), which left the lock file and a .part."""
    proc, stderr, below, gone, out = kill_mid_write(tmp_path, how, method, variant)
    # Terminated: a SystemExit, so no traceback; 128 + the signal's number
    assert proc.returncode == (129 if how == "SIGHUP" else 143), stderr
    assert "Traceback" not in stderr
    assert alive(below) == [], f"still running {gone:.1f} s after the SIGTERM"
    assert os.listdir(out) == []  # nothing at all: not even the lock file
    assert os.listdir(tmp_path / "tmp") == []


def test_sigterm_handler_is_restored(tmp_path: Path) -> None:
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    write(tmp_path / "a.beton", {"i": IntField()}, list(range(5)))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def test_a_sigterm_handler_of_the_callers_is_left_alone(tmp_path: Path) -> None:
    proc = run_script(tmp_path, """
        import os
        import signal

        from fastforward.fields import IntField
        from fastforward.writer import DatasetWriter

        got = []


        class SignalsItself:
            def __len__(self):
                return 50

            def __getitem__(self, i):
                return i


        def mine(signum, frame):
            got.append(signum)


        if __name__ == "__main__":
            signal.signal(signal.SIGTERM, mine)
            writer = DatasetWriter("out.beton", {"i": IntField()}, num_workers=1,
                                   progress=False)
            real = writer._write_tail

            def tail(*args):  # a SIGTERM in the middle of the write
                os.kill(os.getpid(), signal.SIGTERM)
                return real(*args)

            writer._write_tail = tail
            writer.from_indexed_dataset(SignalsItself())
            assert got == [signal.SIGTERM], got
            assert signal.getsignal(signal.SIGTERM) is mine
            print(sorted(os.listdir(".")))
    """)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "out.beton" in stdout


@linux_only
def test_a_sigterm_once_the_file_is_named_is_delivered_after(tmp_path: Path) -> None:
    proc = run_script(tmp_path, """
        import os
        import signal

        from fastforward.fields import IntField
        from fastforward.writer import DatasetWriter, _Output

        real = _Output.publish


        def publish(self, naming):
            real(self, naming)
            os.kill(os.getpid(), signal.SIGTERM)  # just after the file got its name


        if __name__ == "__main__":
            _Output.publish = publish
            DatasetWriter("out.beton", {"i": IntField()}, num_workers=1, progress=False
                          ).from_indexed_dataset(list(range(10)))
            print("not reached: the SIGTERM's default action ends the process")
    """)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM
    assert "not reached" not in stdout
    assert Reader(tmp_path / "out.beton").metadata["f0"].tolist() == list(range(10))
    assert sorted(os.listdir(tmp_path)) == ["out.beton", "script.py"]  # nor the lock file


# -- the output file and its lock ---------------------------------------------------------------


class Slow:
    """Integers, slowly; `seen` (a file) gets the output folder's listing mid-write."""

    def __init__(self, n: int, folder: Path | None = None, seen: Path | None = None,
                 delay: float = 0.0) -> None:
        self.n, self.folder, self.seen, self.delay = n, folder, seen, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if self.seen is not None and self.folder is not None and i == self.n // 2:
            self.seen.write_text("\n".join(sorted(os.listdir(self.folder))))
        time.sleep(self.delay)
        return i


@linux_only
def test_the_file_being_written_has_no_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write(out / "a.beton", {"i": IntField()}, Slow(40, out, tmp_path / "seen"), chunksize=4)
    assert (tmp_path / "seen").read_text().split() == [".a.beton.lock"]
    assert os.listdir(out) == ["a.beton"]


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "part-file"])
def test_permissions_follow_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      unnamed: bool) -> None:
    if not unnamed:
        monkeypatch.setattr(writer_module, "_open_unnamed", lambda dir_fd: None)
    old = os.umask(0o027)
    try:
        write(tmp_path / "a.beton", {"i": IntField()}, list(range(5)))
    finally:
        os.umask(old)
    assert (tmp_path / "a.beton").stat().st_mode & 0o777 == 0o640


def test_without_unnamed_files_a_part_file_is_used_and_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "_open_unnamed", lambda dir_fd: None)
    out = tmp_path / "out"
    out.mkdir()
    seen = tmp_path / "seen"
    write(out / "a.beton", {"i": IntField()}, Slow(40, out, seen), chunksize=4)
    lock, part = sorted(seen.read_text().split(), key=lambda name: name.endswith(".part"))
    assert lock == ".a.beton.lock"
    assert writer_module._is_part_of(part, "a.beton")
    assert os.listdir(out) == ["a.beton"]
    with pytest.raises(EncodeError):
        write(out / "a.beton", {"i": IntField()}, ["not an int"])
    assert os.listdir(out) == ["a.beton"]


def test_stale_part_files_of_the_target_are_removed(tmp_path: Path) -> None:
    stale = [".a.beton.0123abcd.part", ".a.beton.tmp_x9z1.part"]  # ours; mkstemp's before
    kept = [".a.beton.notes.part", ".b.beton.0123abcd.part", "a.beton.0123abcd.part",
            ".a.beton.0123abcd.partial"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x" * 100)
    write(tmp_path / "a.beton", {"i": IntField()}, list(range(5)))
    assert sorted(os.listdir(tmp_path)) == sorted([*kept, "a.beton"])


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "part-file"])
@pytest.mark.parametrize("length", [240, 241, 249, 250, 255])
def test_any_name_the_directory_allows_can_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, length: int, unnamed: bool) -> None:
    """The hidden names beside the target (``.<name>.lock``, ``.<name>.<8>.part``)
    are 6 and 15 bytes longer than its name: a name of 241-255 bytes (NAME_MAX is
    255) was refused, for 241-249 only once the whole file had been written."""
    if not unnamed:
        monkeypatch.setattr(writer_module, "_open_unnamed", lambda dir_fd: None)
    out = tmp_path / "out"
    out.mkdir()
    name = "é" + "x" * (length - len("é".encode()) - len(".beton")) + ".beton"
    assert len(name.encode()) == length
    seen = tmp_path / "seen"
    write(out / name, {"i": IntField()}, Slow(40, out, seen), chunksize=4)
    assert os.listdir(out) == [name]
    hidden = seen.read_text().split()
    assert all(len(h.encode()) <= 255 for h in hidden)
    assert len(hidden) == (1 if unnamed else 2)
    if length > 240:  # as much of the name as fits, and a hash of it
        assert all(h.startswith(".éxxx") and "~" in h for h in hidden)
    # a stale .part of that name goes at the next write
    part = next((h for h in hidden if h.endswith(".part")), None)
    if part is not None:
        (out / part).write_bytes(b"x")
        write(out / name, {"i": IntField()}, list(range(3)))
        assert os.listdir(out) == [name]


class ReadsCounted:
    """Three samples, each read leaving a file in *folder*: the writer reads them
    in worker processes, where a list of the test's would not see the reads."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> tuple[int]:
        (self.folder / f"read-{i}").touch()
        return (i,)

    def reads(self) -> int:
        return len(list(self.folder.glob("read-*")))


def test_a_name_the_directory_cannot_hold_is_refused_before_encoding(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    dataset = ReadsCounted(tmp_path_factory.mktemp("reads"))
    target = tmp_path / ("x" * 250 + ".beton")
    with pytest.raises(OSError, match="256 bytes, where this directory allows at most 255"
                       ) as info:
        DatasetWriter(target, {"i": IntField()}, num_workers=1,
                      progress=False).from_indexed_dataset(dataset)
    assert info.value.errno == errno.ENAMETOOLONG
    assert info.value.filename == str(target)
    assert dataset.reads() == 0
    assert os.listdir(tmp_path) == []
    write(tmp_path / "ok.beton", {"i": IntField()}, dataset)  # the count sees reads
    assert dataset.reads() == 3


def test_a_second_writer_of_the_same_target_is_refused(tmp_path: Path) -> None:
    proc = run_script(tmp_path, """
        import os
        import sys
        import time

        from fastforward.fields import IntField
        from fastforward.writer import DatasetWriter


        class Held:
            # the write goes on until the test lets it (60 s: a hang guard), not for
            # a time that a slow machine could outlast before the second writer tries
            def __init__(self, go):
                self.go, self.until = go, time.monotonic() + 60

            def __len__(self):
                return 400

            def __getitem__(self, i):
                while not os.path.exists(self.go) and time.monotonic() < self.until:
                    time.sleep(0.01)
                return i


        if __name__ == "__main__":
            print("started", flush=True)
            DatasetWriter(sys.argv[1], {"i": IntField()}, num_workers=1, progress=False
                          ).from_indexed_dataset(Held(sys.argv[2]), chunksize=10)
    """, str(tmp_path / "t.beton"), str(tmp_path / "go"))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    lock = tmp_path / ".t.beton.lock"
    deadline = time.monotonic() + 30
    while not (lock.exists() and lock.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        with pytest.raises(TargetLockedError) as info:
            write(tmp_path / "t.beton", {"i": IntField()}, [7, 8, 9])
    finally:
        (tmp_path / "go").touch()  # the first writer finishes
    assert str(info.value) == (
        f"{tmp_path / 't.beton'}: another writer (pid {proc.pid}) is writing this file: it "
        f"holds the lock {lock}. Wait for it to finish, or write to another file")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert Reader(tmp_path / "t.beton").metadata["f0"].tolist() == list(range(400))
    (tmp_path / "go").unlink()
    assert sorted(os.listdir(tmp_path)) == ["script.py", "t.beton"]


def test_two_writers_in_one_process_are_refused_too(tmp_path: Path) -> None:
    lock = writer_module._TargetLock(str(tmp_path / "t.beton"),
                                     os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))
    try:
        lock.acquire()
        with pytest.raises(TargetLockedError, match=f"pid {os.getpid()}"):
            write(tmp_path / "t.beton", {"i": IntField()}, [1])
    finally:
        lock.release()
        os.close(lock.dir_fd)
    write(tmp_path / "t.beton", {"i": IntField()}, [1])
    assert os.listdir(tmp_path) == ["t.beton"]


def test_a_lock_file_removed_while_waiting_is_not_trusted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the holder removes the file between our open() and our flock(): the lock
    # we then get is on a file no one else can find; take the new one instead
    import fcntl

    real_flock = fcntl.flock
    calls = []

    def flock(fd: int, operation: int) -> None:
        calls.append(os.fstat(fd).st_ino)
        if len(calls) == 1:
            os.unlink(tmp_path / ".t.beton.lock")
        real_flock(fd, operation)

    monkeypatch.setattr(writer_module.fcntl, "flock", flock)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    lock = writer_module._TargetLock(str(tmp_path / "t.beton"), dir_fd)
    try:
        lock.acquire()
        assert len(calls) == 2
        assert os.fstat(lock.fd).st_ino == os.stat(tmp_path / ".t.beton.lock").st_ino
    finally:
        lock.release()
        os.close(dir_fd)


# -- a full disk ------------------------------------------------------------------------------


class FullDisk:
    """A file that takes *room* bytes, then fails as a full disk does."""

    def __init__(self, file: Any, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if size > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= size
        return self.file.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def test_a_full_disk_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_init = writer_module._Output.__init__

    def init(self: Any, target: str, dir_fd: int) -> None:
        real_init(self, target, dir_fd)
        self.file = FullDisk(self.file, 5 << 20)

    monkeypatch.setattr(writer_module._Output, "__init__", init)
    target = tmp_path / "full.beton"
    with pytest.raises(OSError, match="the disk is full") as info:
        write(target, {"x": BytesField()}, [np.full(1 << 20, i, np.uint8) for i in range(12)],
              page_size=2 << 20)
    exc = info.value
    assert exc.errno == errno.ENOSPC
    assert exc.filename == str(target)
    line = describe_error(exc)  # as the command line prints it
    assert line.startswith(f"{target}: No space left on device (the disk is full), writing it "
                           "after ")
    written = int(line.split("after ")[1].split(" bytes")[0].replace(",", ""))
    assert 4 << 20 < written <= 5 << 20
    assert os.listdir(tmp_path) == []


@linux_only
def test_a_file_size_limit_names_the_file(tmp_path: Path) -> None:
    # RLIMIT_FSIZE with SIGXFSZ ignored: the kernel's EFBIG, a real write error
    proc = run_script(tmp_path, """
        import resource
        import signal
        import sys

        import numpy as np

        from fastforward.fields import BytesField
        from fastforward.writer import DatasetWriter

        if __name__ == "__main__":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))
            try:
                DatasetWriter(sys.argv[1], {"x": BytesField()}, page_size=2 << 20,
                              num_workers=2, progress=False).from_indexed_dataset(
                    [np.full(1 << 20, i, np.uint8) for i in range(8)])
            except OSError as exc:
                print(exc.errno, exc.filename, exc.strerror, sep="\\n")
    """, str(tmp_path / "out" / "big.beton"))
    (tmp_path / "out").mkdir()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    code, filename, strerror = stdout.splitlines()
    assert int(code) == errno.EFBIG
    assert filename == str(tmp_path / "out" / "big.beton")
    assert "largest file size" in strerror
    assert "bytes" in strerror
    assert os.listdir(tmp_path / "out") == []


# -- exceptions from the dataset ----------------------------------------------------------------


class CustomMessage(Exception):
    def __str__(self) -> str:
        return "a message of its own"


class TwoArguments(Exception):
    """Pickles, but cannot be rebuilt from its args: the worker sends it as it is."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")


class HoldsALock(Exception):
    """Cannot be pickled at all (the worker sends its text as a FastForwardError)."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


class Raising:
    """Sample 7 raises the exception made by *make*."""

    def __init__(self, make: Any) -> None:
        self.make = make

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> int:
        if i == 7:
            raise self.make()
        return i


def make_os_error() -> OSError:
    return FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/7.jpg")


@pytest.mark.parametrize(("make", "kind"), [
    (lambda: KeyError("missing label"), KeyError),
    (lambda: KeyError(7), KeyError),
    (make_os_error, FileNotFoundError),
    (ValueError, ValueError),
    (CustomMessage, CustomMessage),
    (lambda: TwoArguments(3, "bad"), TwoArguments),
    (HoldsALock, FastForwardError),
], ids=["one-string", "not-a-string", "os-error", "no-arguments", "own-str", "composed",
        "unpicklable"])
@forking_with_threads
def test_dataset_exceptions_name_the_file_and_sample(tmp_path: Path, make: Any,
                                                     kind: type) -> None:
    target = tmp_path / "k.beton"
    dataset = Raising(make)
    with pytest.raises(kind) as info:  # forked: the dataset's lambdas need no pickling
        write(target, {"i": IntField()}, dataset, start_method="fork")
    line = describe_error(info.value)  # what the command line prints
    assert f"{target}: sample 7 (dataset index 7)" in line, line
    assert "\n" not in line
    assert os.listdir(tmp_path) == []


class RaisingField(IntField):
    """An IntField whose encode raises, at sample 7, the exception made by *make*."""

    def __init__(self, make: Any) -> None:
        self.make = make

    def encode(self, destination: Any, field: Any, malloc: Any) -> None:
        if field == 7:
            raise self.make()
        super().encode(destination, field, malloc)


@pytest.mark.parametrize(("make", "kind", "message"), [
    (lambda: StopIteration(), RuntimeError, "reading it from the dataset: the dataset raised "
                                            "StopIteration"),
    (lambda: StopIteration("spent"), RuntimeError, "the dataset raised StopIteration: spent"),
    (lambda: SystemExit(3), RuntimeError, "reading it from the dataset: the dataset called "
                                          "sys.exit(3)"),
    (lambda: KeyboardInterrupt(), KeyboardInterrupt, "reading it from the dataset"),
], ids=["stop-iteration", "stop-iteration-with-text", "sys-exit", "keyboard-interrupt"])
@pytest.mark.parametrize("where", ["dataset", "field"])
@forking_with_threads
def test_base_exceptions_from_user_code_name_the_file_and_sample(
        tmp_path: Path, make: Any, kind: type, message: str, where: str) -> None:
    """A StopIteration became a bare "generator raised StopIteration" (a generator
    passed it on), and a SystemExit ended the caller's program silently with its
    status; a KeyboardInterrupt still stops the write, with its location."""
    target = tmp_path / "k.beton"
    if where == "dataset":
        dataset, field = Raising(make), IntField()
    else:
        dataset, field = list(range(10)), RaisingField(make)
        message = message.replace("reading it from the dataset", "field 'i'").replace(
            "the dataset", "the field's encode")
    with pytest.raises(kind) as info:
        write(target, {"i": field}, dataset, start_method="fork")
    line = describe_error(info.value)
    assert f"{target}: sample 7" in line, line
    assert message in line
    assert "\n" not in line
    assert os.listdir(tmp_path) == []


# -- skipping samples ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpegs(jpeg_folder: Path) -> list[bytes]:
    return [f.read_bytes() for f in sorted(jpeg_folder.glob("*/*.jpg"))[:12]]


def broken(jpeg: bytes) -> bytes:
    """A JPEG whose header reads fine but whose data does not decode."""
    return jpeg[: len(jpeg) // 2]


BAD = {2: b"", 5: b"\x89PNG not really", 9: None}  # None: a broken JPEG


def with_bad(jpegs: list[bytes]) -> list[tuple[bytes, bytes, int]]:
    samples = []
    for i, jpeg in enumerate(jpegs):
        image = jpeg if i not in BAD else (BAD[i] if BAD[i] is not None else broken(jpeg))
        samples.append((f"tag{i}".encode(), image, i))
    return samples


SKIP_FIELDS = {"tag": BytesField(), "image": RGBImageField(write_mode="jpg",
                                                           max_resolution=64),
               "label": IntField()}


@pytest.mark.parametrize("workers", [1, 3])
def test_skipped_samples_leave_the_file_as_if_they_were_absent(
        tmp_path: Path, jpegs: list[bytes], workers: int) -> None:
    samples = with_bad(jpegs)
    writer = DatasetWriter(tmp_path / "skip.beton", SKIP_FIELDS, num_workers=workers,
                           progress=False, skip_errors=(DecodeError,))
    writer.from_indexed_dataset(samples, chunksize=2)
    assert [(s.index, s.source, s.field) for s in writer.skipped] == [
        (2, 2, "image"), (5, 5, "image"), (9, 9, "image")]
    assert "empty file" in writer.skipped[0].error
    assert "cannot identify image file" in writer.skipped[1].error
    assert writer.skipped[2].error.startswith("DecodeError: cannot decode JPEG")
    good = [s for i, s in enumerate(samples) if i not in BAD]
    DatasetWriter(tmp_path / "clean.beton", SKIP_FIELDS, num_workers=1, progress=False
                  ).from_indexed_dataset(good)
    # the tag, written before the image failed, is gone with it
    assert (tmp_path / "skip.beton").read_bytes() == (tmp_path / "clean.beton").read_bytes()
    reader = Reader(tmp_path / "skip.beton")
    assert reader.num_samples == len(jpegs) - len(BAD)
    assert reader.metadata["f2"].tolist() == [i for i in range(len(jpegs)) if i not in BAD]
    assert reader.verify() == []


@pytest.mark.parametrize("write_mode", ["jpg", "raw"])
def test_a_source_with_bytes_left_over_is_refused_in_every_mode(
        tmp_path: Path, jpegs: list[bytes], write_mode: str) -> None:
    """Damaged data that decodes to every row and leaves bytes over before the
    end-of-image marker: refused as the RGB path refuses it, also where the writer
    stores a JPEG without leaving YCbCr (it was stored, with garbage rows)."""
    bad = jpegs[1][:-2] + bytes(range(1, 40)) + jpegs[1][-2:]
    fields = {"image": RGBImageField(write_mode=write_mode, max_resolution=64)}
    with pytest.raises(DecodeError, match=r"sample 1, field 'image': cannot decode JPEG: "
                                          r"Corrupt JPEG data: \d+ extraneous bytes before "
                                          r"marker 0xd9 \(bytes left over after the image's "
                                          r"data.*or bytes appended to a whole image.*"
                                          r"--skip-bad"):
        write(tmp_path / "s.beton", fields, [(jpegs[0],), (bad,)], num_workers=1)
    assert not (tmp_path / "s.beton").exists()


def test_without_skip_errors_the_first_bad_sample_stops_the_write(
        tmp_path: Path, jpegs: list[bytes]) -> None:
    with pytest.raises(DecodeError, match="sample 2, field 'image': empty file"):
        write(tmp_path / "s.beton", SKIP_FIELDS, with_bad(jpegs), num_workers=1)
    assert os.listdir(tmp_path) == []


@forking_with_threads
def test_samples_the_dataset_cannot_read_are_skipped_too(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "r.beton", {"i": IntField()}, num_workers=2,
                           progress=False, skip_errors=(KeyError,), start_method="fork")
    writer.from_indexed_dataset(Raising(lambda: KeyError("no label")), chunksize=3)
    assert writer.skipped == [writer_module.SkippedSample(7, 7, None, "KeyError: 'no label'")]
    assert Reader(tmp_path / "r.beton").metadata["f0"].tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9]


def test_only_the_listed_errors_are_skipped(tmp_path: Path, jpegs: list[bytes]) -> None:
    samples = with_bad(jpegs)
    samples[4] = (b"x", np.zeros((4, 4, 3), np.float32), 4)  # an EncodeError, not a DecodeError
    with pytest.raises(EncodeError, match="sample 4, field 'image'"):
        write(tmp_path / "s.beton", SKIP_FIELDS, samples, num_workers=1,
              skip_errors=(DecodeError,))
    with pytest.raises(TypeError, match="skip_errors"):
        DatasetWriter(tmp_path / "s.beton", SKIP_FIELDS, skip_errors=(KeyboardInterrupt,))
    # it said "'bool' object is not iterable"
    with pytest.raises(TypeError, match=r"skip_errors takes exception types \(a class or a "
                                        r"sequence of them\), got True"):
        DatasetWriter(tmp_path / "s.beton", SKIP_FIELDS, skip_errors=True)  # type: ignore[arg-type]
    # one class, as `except` takes it
    assert DatasetWriter(tmp_path / "s.beton", SKIP_FIELDS,
                         skip_errors=DecodeError).skip_errors == (DecodeError,)


class WideRow(Field):
    """A custom field with a 1 KiB metadata row (``v`` and padding): 2 MiB of rows
    at about 2,000 samples. A negative value is refused (an ``EncodeError``)."""

    metadata_type = np.dtype([("v", "<i8"), ("pad", "u1", (1016,))])

    @staticmethod
    def from_binary(binary: np.ndarray) -> WideRow:
        return WideRow()

    def to_binary(self) -> np.ndarray:
        return empty_arguments()

    def encode(self, destination, value, malloc) -> None:  # type: ignore[no-untyped-def]
        if value < 0:
            raise EncodeError(f"negative: {value}")
        destination["v"] = value

    def read(self, row, read_payload):  # type: ignore[no-untyped-def]
        return int(row["v"])


@pytest.mark.parametrize("checksums", [True, False])
def test_skipped_rows_that_would_have_crossed_a_page_leave_ffcvs_layout(
        tmp_path: Path, checksums: bool) -> None:
    """The data pages were placed after room for every sample's row: when the
    skipped samples' rows crossed a page boundary, the file had an empty page
    more than FFCV's layout, and with checksums fastforward's own Reader refused
    it ("the checksum block starts at …, not after the last of its page(s)")."""
    fields = {"w": WideRow(), "b": BytesField()}
    row = DatasetWriter(tmp_path / "x.beton", fields).row_type
    over = (MIN_PAGE_SIZE - metadata_offset(2)) // row.itemsize + 1  # rows past one page
    samples = [(-1 if i % 50 == 7 else i, np.full(1 + i % 5, i % 251, np.uint8))
               for i in range(over + 30)]
    kept = [s for s in samples if s[0] >= 0]
    assert data_offset(2, len(samples), row, MIN_PAGE_SIZE) == 2 * MIN_PAGE_SIZE
    assert data_offset(2, len(kept), row, MIN_PAGE_SIZE) == MIN_PAGE_SIZE  # the case
    writer = DatasetWriter(tmp_path / "skip.beton", fields, page_size=MIN_PAGE_SIZE,
                           num_workers=2, progress=False, checksums=checksums,
                           skip_errors=(EncodeError,))
    writer.from_indexed_dataset(samples, chunksize=300)
    assert len(writer.skipped) == len(samples) - len(kept)
    DatasetWriter(tmp_path / "clean.beton", fields, page_size=MIN_PAGE_SIZE, num_workers=1,
                  progress=False, checksums=checksums).from_indexed_dataset(kept)
    assert (tmp_path / "skip.beton").read_bytes() == (tmp_path / "clean.beton").read_bytes()
    with Reader(tmp_path / "skip.beton", custom_handlers={"w": WideRow}) as reader:
        assert reader.verify() == []
        for i in (0, len(kept) // 2, len(kept) - 1):
            value, payload = reader.read(i)
            assert value == kept[i][0]
            np.testing.assert_array_equal(payload, kept[i][1])


def test_every_sample_skipped_gives_an_empty_file(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "e.beton", {"image": RGBImageField()}, num_workers=2,
                           progress=False, skip_errors=(DecodeError,))
    writer.from_indexed_dataset([b""] * 5, chunksize=2)
    assert len(writer.skipped) == 5
    reader = Reader(tmp_path / "e.beton")
    assert reader.num_samples == 0
    assert reader.verify() == []


# -- how workers start --------------------------------------------------------------------------


START_METHOD = """
    import faulthandler
    import sys
    import threading

    import numpy as np

    from fastforward.writer import _Pool, _os_threads


    class Source:
        def expand(self, payload):
            return []

        def describe(self, source):
            return None


    if __name__ == "__main__":
        case = sys.argv[1]
        if case == "python-thread":
            stop = threading.Event()
            threading.Thread(target=stop.wait, daemon=True).start()
        elif case == "native-thread":  # a thread that a fork does not stop
            faulthandler.dump_traceback_later(600)
        elif case == "openblas":  # its threads stop for a fork (pthread_atfork)
            np.ones((300, 300)) @ np.ones((300, 300))
        before = _os_threads()
        pool = _Pool(2, (None, Source()))
        print(before, pool.method)
        pool.close()
"""


@linux_only
@pytest.mark.parametrize(("case", "method"), [
    ("alone", "fork"), ("openblas", "fork"), ("python-thread", "forkserver"),
    ("native-thread", "forkserver")])
def test_workers_are_forked_only_from_a_single_thread(tmp_path: Path, case: str,
                                                      method: str) -> None:
    proc = run_script(tmp_path, START_METHOD, case)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    before, chosen = stdout.split()
    assert chosen == method
    if case == "openblas" and int(before) == 1:
        pytest.skip("OpenBLAS started no thread on this machine (one CPU)")


@pytest.mark.parametrize("method", ["fork", "forkserver"])
@forking_with_threads
def test_the_file_does_not_depend_on_how_workers_start(tmp_path: Path, method: str,
                                                       images: list[np.ndarray]) -> None:
    fields = {"image": RGBImageField(write_mode="proportion"), "label": IntField()}
    data = [(img, i) for i, img in enumerate(images)]
    write(tmp_path / "one.beton", fields, data, num_workers=1, start_method="fork",
          chunksize=3)
    write(tmp_path / "m.beton", fields, data, num_workers=3, start_method=method, chunksize=3)
    assert (tmp_path / "one.beton").read_bytes() == (tmp_path / "m.beton").read_bytes()


@contextlib.contextmanager
def a_thread_running() -> Iterator[None]:
    """A Python thread waiting, so that the writer does not fork its workers."""
    stop = threading.Event()
    waiting = threading.Thread(target=stop.wait, daemon=True)
    waiting.start()
    try:
        yield
    finally:
        stop.set()
        waiting.join()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_an_unpicklable_dataset_under_the_fork_server_is_explained(tmp_path: Path) -> None:
    """Why the workers are not forked: asked for, or chosen with threads running (it
    said "this process runs 1 threads" where forkserver or spawn was asked for)."""
    target = tmp_path / "u.beton"
    with pytest.raises(TypeError) as info:
        write(target, {"i": IntField()}, Raising(lambda: ValueError()),
              start_method="forkserver")
    message = str(info.value)
    assert message.startswith(f"{target}: the writer's workers start with forkserver "
                              "here (as asked), so the dataset and fields must be picklable")
    assert "start_method='fork'" in message
    assert os.listdir(tmp_path) == []
    with a_thread_running(), pytest.raises(TypeError, match=(
            r"start with forkserver here \(this process runs \d+ threads, and forking a "
            r"process with threads may deadlock\), so the dataset")):
        write(target, {"i": IntField()}, Raising(lambda: ValueError()))
    assert os.listdir(tmp_path) == []


def test_a_large_dataset_copied_into_every_worker_is_warned_of(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process with a thread (torch's pool, a progress bar's monitor) falls back on
    the fork server, which gave each worker its own copy of an in-memory dataset
    without a word (a review: 600 MB of arrays, 2.7 GB at the peak with 2 workers);
    forked workers share its pages. Said now, with the size, past LARGE_JOB_BYTES."""
    data = [(i,) for i in range(40)]
    monkeypatch.setattr(writer_module, "LARGE_JOB_BYTES", 100)
    with pytest.warns(RuntimeWarning, match=r"the writer's workers start with forkserver "
                                            r"here \(as asked\), so each worker \(\d\) "
                                            r"gets its own copy of the dataset and fields "
                                            r"\(0 MiB pickled.*start_method='fork'"):
        write(tmp_path / "w.beton", {"i": IntField()}, data, start_method="forkserver")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write(tmp_path / "f.beton", {"i": IntField()}, data, start_method="fork")
    # not asked: a Python thread running makes the writer choose the fork server
    # itself ("as asked", it said)
    with a_thread_running(), pytest.warns(RuntimeWarning, match=(
            r"start with forkserver here \(this process runs \d+ threads, and forking a "
            r"process with threads may deadlock\)")):
        write(tmp_path / "t.beton", {"i": IntField()}, data)
    monkeypatch.setattr(writer_module, "LARGE_JOB_BYTES", 256 << 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write(tmp_path / "s.beton", {"i": IntField()}, data, start_method="forkserver")


def fail_to_load() -> None:
    raise RuntimeError("this dataset cannot be rebuilt here")


class LoadsNowhere:
    """Pickles, but fails to unpickle (in the worker)."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> int:
        return i

    def __reduce__(self) -> Any:
        return fail_to_load, ()


def test_a_dataset_a_worker_cannot_load_is_explained(tmp_path: Path) -> None:
    target = tmp_path / "l.beton"
    pickle.dumps(LoadsNowhere())
    with pytest.raises(WorkerError) as info:
        write(target, {"i": IntField()}, LoadsNowhere(), start_method="forkserver")
    message = str(info.value)
    assert message.startswith(f"{target}: a writer worker (forkserver start) could not load")
    assert "this dataset cannot be rebuilt here" in message
    assert os.listdir(tmp_path) == []


@forking_with_threads
def test_fork_can_be_asked_for_with_threads_running(tmp_path: Path) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        values = [i * 3 for i in range(50)]

        class Local:  # not picklable: only a fork can take it
            def __len__(self) -> int:
                return len(values)

            def __getitem__(self, i: int) -> int:
                return values[i]

        reader = write(tmp_path / "f.beton", {"i": IntField()}, Local(), start_method="fork")
        assert reader.metadata["f0"].tolist() == values
        with pytest.raises(ValueError, match="start_method"):
            DatasetWriter(tmp_path / "x.beton", {"i": IntField()}, start_method="vfork")
    finally:
        stop.set()
        thread.join()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
def test_chunks_larger_than_a_socket_buffer_do_not_deadlock(tmp_path: Path,
                                                            workers: int) -> None:
    # A chunk of 60,000 indices pickles to about 300 KB, more than a socket
    # holds: the parent sending the next chunk and a worker sending its result
    # (larger still) each waited on the other for ever.
    values = [(i * 7) % 1000 for i in range(150_000)]
    reader = write(tmp_path / "big.beton", {"i": IntField()}, values, num_workers=workers,
                   chunksize=60_000)
    assert reader.metadata["f0"].tolist() == values


# -- arguments refused before any sample is encoded ------------------------------------------


def test_a_boolean_mask_or_float_indices_are_refused(tmp_path: Path) -> None:
    values = [(10 * i,) for i in range(6)]
    target = tmp_path / "m.beton"
    with pytest.raises(TypeError, match=r"m\.beton: indices must be integers.*flatnonzero"):
        write(target, {"i": IntField()}, values, indices=[True, False, True, False, False, True])
    with pytest.raises(TypeError, match=r"indices must be integers, got float64"):
        write(target, {"i": IntField()}, values, indices=[0.9, 2.7, 4.5])
    with pytest.raises(ValueError, match="one-dimensional"):
        write(target, {"i": IntField()}, values, indices=[[0, 1]])
    # dataset[-1] would be the last sample: written silently as sample 0
    for negative in ([-1], np.array([2, -6]), [1.0, -2.0]):
        with pytest.raises(ValueError, match=r"m\.beton: indices must be at least 0, got -"):
            write(target, {"i": IntField()}, values, indices=negative)
    assert not target.exists()
    with pytest.raises(IndexError, match="out of range"):
        write(target, {"i": IntField()}, values, indices=np.array([2**63], np.uint64))
    reader = write(target, {"i": IntField()}, values, indices=np.array([5, 0], np.uint8))
    assert reader.metadata["f0"].tolist() == [50, 0]
    # integers in other clothes: NumPy makes [np.uint64(1), 2] float64, and objects
    for given in ([np.uint64(1), 2], np.array([1, 2], dtype=object), np.array([1.0, 2.0])):
        reader = write(target, {"i": IntField()}, values, indices=given)
        assert reader.metadata["f0"].tolist() == [10, 20]
    assert write(tmp_path / "e.beton", {"i": IntField()}, values, indices=[]).num_samples == 0


@pytest.mark.parametrize(("seed", "error"), [(-1, ValueError), (1.5, TypeError),
                                             ("3", TypeError), (True, TypeError)])
def test_a_seed_that_no_generator_takes_is_refused_up_front(tmp_path: Path, seed: Any,
                                                           error: type) -> None:
    with pytest.raises(error, match="seed must be"):
        DatasetWriter(tmp_path / "s.beton", {"i": IntField()}, seed=seed)
    writer = DatasetWriter(tmp_path / "s.beton", {"i": IntField()}, progress=False)
    with pytest.raises(error, match="seed must be"):
        writer.from_indexed_dataset([(1,), (2,)], shuffle_indices=True, seed=seed)
    assert DatasetWriter(tmp_path / "s.beton", {"i": IntField()}, seed=np.int64(3)).seed == 3


def test_a_directory_as_the_target_is_refused_before_encoding(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    dataset = ReadsCounted(tmp_path_factory.mktemp("reads"))
    (tmp_path / "d.beton").mkdir()
    for target in (tmp_path / "d.beton", f"{tmp_path / 'x.beton'}/"):
        with pytest.raises(IsADirectoryError) as info:
            DatasetWriter(target, {"i": IntField()}, num_workers=1,
                          progress=False).from_indexed_dataset(dataset)
        assert info.value.filename == str(target)
    assert dataset.reads() == 0
    assert sorted(os.listdir(tmp_path)) == ["d.beton"]


def test_a_lock_that_cannot_be_created_names_the_target(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def read_only(path: Any, *args: Any, **kw: Any) -> int:
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(writer_module.os, "open", read_only)
    target = tmp_path / "r.beton"
    with pytest.raises(OSError, match="Read-only file system") as info:
        write(target, {"i": IntField()}, [(1,)], num_workers=1)
    assert info.value.errno == errno.EROFS
    assert info.value.filename == str(target)
    assert ".r.beton.lock" in str(info.value)
    assert describe_error(info.value).startswith(f"{target}: Read-only file system")


def test_one_field_whose_value_is_a_list_is_explained(tmp_path: Path) -> None:
    from fastforward.fields import JSONField

    # as FFCV's writer pairs values and fields (zip): the first value, the rest left out
    with pytest.warns(UserWarning, match=r"sample 0 holds 2 values for the 1 fields \['meta'\]"
                                         r".*\(value,\)"):
        reader = write(tmp_path / "j.beton", {"meta": JSONField()}, [[1, 2], [3, 4]],
                       num_workers=1)
    assert [reader.read(i)[0] for i in range(2)] == [1, 3]
    reader = write(tmp_path / "j.beton", {"meta": JSONField()}, [([1, 2],), ([3],)],
                   num_workers=1)
    assert [reader.read(i)[0] for i in range(2)] == [[1, 2], [3]]


SCRIPT_WITHOUT_A_MAIN_GUARD = """
    import threading
    from fastforward.fields import IntField
    from fastforward.writer import DatasetWriter

    print("top level", flush=True)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)  # another thread: the fork server starts workers
    thread.start()

    class Data:
        def __getitem__(self, i):
            return (i,)

        def __len__(self):
            return 40

    try:
        DatasetWriter("out.beton", {"y": IntField()}, num_workers=2,
                      progress=False).from_indexed_dataset(Data())
    finally:
        stop.set()
"""


@linux_only
def test_a_script_run_again_by_a_worker_is_refused_and_explained(tmp_path: Path) -> None:
    # FFCV's examples have no __main__ guard; a worker from the fork server imports
    # the main module, which wrote the file again from inside the worker
    proc = run_script(tmp_path, SCRIPT_WITHOUT_A_MAIN_GUARD)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert stdout.count("top level") >= 2  # run again in a worker...
    assert "DatasetWriter() called in fastforward's worker process fastforward-writer-" in stderr
    assert "WorkerError" in stderr  # ...and said
    assert "import your main module" in stderr
    assert sorted(os.listdir(tmp_path)) == ["script.py"]


def test_a_loader_or_writer_made_in_a_worker_process_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    import fastforward.utils as utils
    from fastforward.loader import Loader

    monkeypatch.setattr(multiprocessing.current_process(), "name", "fastforward-worker-3")
    with pytest.raises(RuntimeError, match=r"Loader\(\) called in fastforward's worker"):
        Loader(tmp_path / "none.beton", 8)
    with pytest.raises(RuntimeError, match=r"__name__ == \"__main__\""):
        DatasetWriter(tmp_path / "x.beton", {"i": IntField()})
    # once the worker has started its work, what it runs (a dataset that opens a
    # loader, say) is let be
    monkeypatch.setattr(utils, "_WORKER_STARTED", True)
    DatasetWriter(tmp_path / "x.beton", {"i": IntField()})


class LoaderThreadsSeedGlobals:
    """Each sample: 1 if a thread of this process (as a loader's thread would be,
    in a loader the dataset opens) may seed the global generators, else 0."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[int]:
        from fastforward.pipeline.random import globals_are_ours

        answer: list[bool] = []
        thread = threading.Thread(target=lambda: answer.append(globals_are_ours()))
        thread.start()
        thread.join()
        return (int(answer[0]),)


def test_a_loader_opened_by_a_dataset_in_a_writer_worker_leaves_its_generators_alone(
        tmp_path: Path) -> None:
    """A writer's worker is not a loader's: a loader that its dataset opens runs on
    threads, and would seed and restore np.random, random and torch's generator
    under the dataset's feet (they are the loader's to seed only in a loader's
    own worker processes)."""
    target = tmp_path / "g.beton"
    DatasetWriter(target, {"y": IntField()}, num_workers=2,
                  progress=False).from_indexed_dataset(LoaderThreadsSeedGlobals())
    assert [int(Reader(target).read(i)[0]) for i in range(4)] == [0, 0, 0, 0]


class RaisesAt:
    """A dataset of *n* samples whose sample *bad* raises ValueError."""

    def __init__(self, bad: int, n: int = 64) -> None:
        self.bad, self.n = bad, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int]:
        if i == self.bad:
            raise ValueError(f"bad sample {i}")
        return (i,)


def test_a_failed_write_lets_go_of_its_workers_descriptors(tmp_path: Path) -> None:
    """The error's traceback kept the pool's frame, and through it the worker
    processes' sentinels (4 descriptors with 2 workers), until a garbage collection:
    without one (gc disabled, as some training scripts do), every failed write
    added 4."""
    import gc

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    fields = {"a": IntField()}
    with pytest.raises(ValueError, match="bad sample"):  # the fork server, if it is used
        write(tmp_path / "w.beton", fields, RaisesAt(40))
    before = len(os.listdir("/proc/self/fd"))
    gc.disable()
    try:
        for _ in range(3):
            with pytest.raises(ValueError, match="bad sample"):
                write(tmp_path / "w.beton", fields, RaisesAt(40))
        assert len(os.listdir("/proc/self/fd")) <= before
    finally:
        gc.enable()
    assert not list(tmp_path.iterdir())


# -- from a review of the writer under hostile conditions (2026-12-05) --------------------------


@linux_only
def test_a_ctrl_c_during_the_clean_up_waits_for_its_end(tmp_path: Path) -> None:
    """A second Ctrl-C while the clean-up killed the workers stopped it half way: a
    worker was left, and the interpreter's exit waited on it for ever. The clean-up
    now finishes, then the Ctrl-C is a KeyboardInterrupt."""
    proc = run_script(tmp_path, """
        import multiprocessing
        import os
        import signal
        import sys
        import time

        sys.path.insert(0, sys.argv[1])
        from test_writer_reliability import RaisesAt

        from fastforward.fields import IntField
        from fastforward.writer import DatasetWriter

        real_kill = multiprocessing.process.BaseProcess.kill
        sent = []


        def kill(self):
            if not sent:  # Ctrl-C between killing the first worker and the others
                sent.append(1)
                os.kill(os.getpid(), signal.SIGINT)
            real_kill(self)


        if __name__ == "__main__":
            multiprocessing.process.BaseProcess.kill = kill
            try:
                DatasetWriter("out.beton", {"i": IntField()}, num_workers=3, progress=False,
                              start_method="fork").from_indexed_dataset(
                    RaisesAt(2500, 3000), chunksize=10)
            except KeyboardInterrupt as exc:
                print("interrupted after", repr(exc.__context__))
                kept = exc  # as IPython or pdb keep it: its traceback holds the pipes
            time.sleep(0.5)
            print("alive", [p.name for p in multiprocessing.active_children()])
    """, str(Path(__file__).parent), start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # the hang this is about: the process and its workers
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr
    assert "interrupted after ValueError('out.beton: sample 2500" in stdout, stdout
    assert "alive []" in stdout
    assert sorted(os.listdir(tmp_path)) == ["script.py"]  # nor the lock file


def folder_with_a_bad_image(root: Path, jpeg_folder: Path, good: int) -> Path:
    """``root/src``: one class of *good* real JPEGs and an empty ``bad.jpg``."""
    src = root / "src"
    (src / "a").mkdir(parents=True)
    for k, image in enumerate(sorted(jpeg_folder.rglob("*.jpg"))[:good]):
        (src / "a" / f"{k}.jpg").write_bytes(image.read_bytes())
    (src / "a" / "bad.jpg").write_bytes(b"")
    return src


@linux_only
def test_a_ctrl_c_while_the_file_is_named_comes_after_its_list(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jpeg_folder: Path) -> None:
    """Ctrl-C while the new file got its name left it without its list of skipped
    images (only SIGTERM and SIGHUP waited): it now waits for both names."""
    from fastforward.cli import main

    src = folder_with_a_bad_image(tmp_path, jpeg_folder, 6)
    out = tmp_path / "out.beton"
    real_replace = os.replace
    sent: list[int] = []

    def replace(*args: Any, **kwargs: Any) -> None:
        if not sent:  # just before the .beton gets its name
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
        real_replace(*args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    assert main(["convert", str(src), str(out), "--skip-bad", "--no-progress",
                 "--num-workers", "1"]) == 130
    assert sent
    assert Reader(out).num_samples == 6
    listed = (tmp_path / "out.beton.skipped.txt").read_text()
    assert listed.startswith(f"{src / 'a' / 'bad.jpg'}\t")


def test_a_list_that_cannot_be_written_leaves_the_old_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jpeg_folder: Path) -> None:
    """A short list was written only when flushed, after the new file had its name: a
    full disk then left the new file without its list. It is on the disk first."""
    from fastforward.cli import main

    src = folder_with_a_bad_image(tmp_path, jpeg_folder, 4)
    out = tmp_path / "out.beton"
    out.write_bytes(b"OLD")
    real_sync = writer_module._Output.sync

    def sync(self: Any) -> None:
        if self.target.endswith(".skipped.txt"):
            raise self._failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "writing")
        real_sync(self)

    monkeypatch.setattr(writer_module._Output, "sync", sync)
    assert main(["convert", str(src), str(out), "--skip-bad", "--no-progress",
                 "--num-workers", "1"]) == 1
    assert out.read_bytes() == b"OLD"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.beton", "src"]


def test_a_lock_whose_pid_cannot_be_written_is_still_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a full disk, writing the pid into the lock file failed outside the lock's
    error handling: the error named no file and the lock file stayed."""
    def full(fd: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "ftruncate", full)
    reader = write(tmp_path / "x.beton", {"i": IntField()}, list(range(10)), num_workers=1)
    assert reader.metadata["f0"].tolist() == list(range(10))
    assert sorted(os.listdir(tmp_path)) == ["x.beton"]


@linux_only
def test_dot_dot_after_a_link_is_resolved_as_the_kernel_does(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """``lnk/../x.beton``, lnk leading to data/sub, is data/x.beton for open(); the
    writer made it ./x.beton (os.path.abspath drops ``lnk/..`` before following lnk)."""
    from fastforward.writer import written_through_links

    (tmp_path / "work").mkdir()
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "work" / "lnk").symlink_to("../data/sub")
    (tmp_path / "data" / "x.beton").write_bytes(b"OLD")
    monkeypatch.chdir(tmp_path / "work")
    assert written_through_links("lnk/../x.beton") == str(tmp_path / "data" / "x.beton")
    assert written_through_links("nosub/../y.beton").endswith("work/nosub/../y.beton")
    write(Path("lnk/../x.beton"), {"i": IntField()}, list(range(5)), num_workers=1)
    assert Reader(tmp_path / "data" / "x.beton").num_samples == 5
    assert sorted(os.listdir(tmp_path / "work")) == ["lnk"]
    with pytest.raises(FileNotFoundError):  # as open() would: no such folder
        write(Path("nosub/../y.beton"), {"i": IntField()}, list(range(5)), num_workers=1)
    assert sorted(os.listdir(tmp_path / "work")) == ["lnk"]


def test_a_closed_stderr_does_not_fail_the_write(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``2>&-`` (sys.stderr None): the progress bar failed the write."""
    monkeypatch.setattr(sys, "stderr", None)
    DatasetWriter(tmp_path / "x.beton", {"i": IntField()}, num_workers=1,
                  progress=True).from_indexed_dataset(list(range(5)))
    assert Reader(tmp_path / "x.beton").num_samples == 5
    assert Reader(tmp_path / "x.beton").verify(decode=True, progress=True) == []


SIGNALS_DURING_CLEAN_UP = """
    import os
    import signal
    import sys

    from fastforward.writer import _signals_stop_the_write

    case = sys.argv[1]
    try:
        with _signals_stop_the_write("t.beton") as guard:
            if case == "term after ctrl-c":
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                except KeyboardInterrupt:
                    guard.disarm()  # the clean-up
                    os.kill(os.getpid(), signal.SIGTERM)
                    os.kill(os.getpid(), signal.SIGINT)  # the same kind again: ignored
                    print("cleaned up", flush=True)
                    raise
            else:  # both while the file is being named
                guard.disarm()
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGTERM)
                print("named", flush=True)
    except KeyboardInterrupt:
        print("not reached: the SIGTERM ends the process")
"""


@linux_only
@pytest.mark.parametrize("case", ["term after ctrl-c", "both while naming"])
def test_a_sigterm_during_a_stopping_write_is_not_lost(tmp_path: Path, case: str) -> None:
    """A SIGTERM during the clean-up a Ctrl-C started was dropped (any second signal
    was), and of two signals held back while the file was named only the first was
    delivered (a KeyboardInterrupt, the SIGTERM never)."""
    proc = run_script(tmp_path, SIGNALS_DURING_CLEAN_UP, case)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, (stdout, stderr)
    assert ("cleaned up" if case == "term after ctrl-c" else "named") in stdout
    assert "not reached" not in stdout


def test_a_ctrl_c_held_back_is_a_keyboard_interrupt_after() -> None:
    from fastforward.writer import _signals_stop_the_write

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("handlers are set from the main thread only")
    steps = []
    with pytest.raises(KeyboardInterrupt), _signals_stop_the_write("t.beton") as guard:  # noqa: PT012
        guard.disarm()
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("named")
    assert steps == ["named"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@linux_only
def test_the_skipped_list_goes_beside_the_file_through_a_link(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jpeg_folder: Path) -> None:
    """The list's folder was found with os.path.abspath (lnk/.. made the current
    folder), the file's as the kernel finds it: the list went elsewhere, and a
    conversion that skipped nothing removed another file's list."""
    from fastforward.cli import main

    src = folder_with_a_bad_image(tmp_path, jpeg_folder, 3)
    (tmp_path / "work").mkdir()
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "work" / "lnk").symlink_to("../data/sub")
    (tmp_path / "work" / "x.beton.skipped.txt").write_text("another file's list\n")
    monkeypatch.chdir(tmp_path / "work")
    args = ["--skip-bad", "--no-progress", "--num-workers", "1"]
    assert main(["convert", str(src), "lnk/../x.beton", *args]) == 0
    assert Reader(tmp_path / "data" / "x.beton").num_samples == 3
    assert (tmp_path / "data" / "x.beton.skipped.txt").read_text().startswith(str(src))
    (src / "a" / "bad.jpg").unlink()
    assert main(["convert", str(src), "lnk/../x.beton", *args]) == 0
    assert not (tmp_path / "data" / "x.beton.skipped.txt").exists()  # nothing skipped now
    assert (tmp_path / "work" / "x.beton.skipped.txt").read_text() == "another file's list\n"


def test_an_absolute_target_needs_no_current_folder(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolving the target's folder asked for the current folder even for an absolute
    path (a bare FileNotFoundError naming no file where the current folder was gone)."""
    from fastforward.writer import written_through_links

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert written_through_links(tmp_path / "abs.beton") == str(tmp_path / "abs.beton")

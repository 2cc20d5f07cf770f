"""Small helpers shared by the writer, the reader and the command line."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import json
import mmap
import operator
import os
import stat
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from ._compat import not_provided

T = TypeVar("T")


def is_power_of_2(n: int) -> bool:
    """Whether *n* is a positive power of two."""
    return n > 0 and n & (n - 1) == 0


def align_to_page(ptr: int, page_size: int) -> int:
    """Round *ptr* up to the next multiple of *page_size*."""
    return -(-ptr // page_size) * page_size


def decode_null_terminated_string(raw: np.ndarray) -> str:
    """Decode ASCII bytes up to the first NUL (field names in the descriptors)."""
    data = bytes(raw)
    return data.split(b"\0", 1)[0].decode("ascii", errors="replace")


def sample_numbers(values: Any, where: str) -> np.ndarray:
    """*values* (sample numbers) as a one-dimensional int64 array, refusing what
    would silently become other samples: booleans (a mask, or True in a list),
    strings, fractions, more dimensions, integers past int64. The range is left
    to the caller. *where* begins each message: ``"FILE: indices"``,
    ``"FILE: Order.sample_order(3)"``."""
    given = np.asarray(values)
    if isinstance(values, (str, bytes)) or (given.ndim == 0 and given.dtype.kind == "O"):
        # a string ("012": one value of its own), a set, a generator, a dict
        raise TypeError(f"{where} must be a sequence of integers (a list, range or array), "
                        f"got {type(values).__name__}")
    if given.dtype.kind != "b" and isinstance(values, (list, tuple)) and any(
            isinstance(v, (bool, np.bool_)) for v in values):
        raise TypeError(f"{where} must be integers, got a boolean among them")
    if given.ndim != 1:
        if given.ndim == 0 or given.size:
            raise ValueError(f"{where} must be one-dimensional, got shape {given.shape}")
        given = given.reshape(0)
    if given.dtype.kind == "b":
        raise TypeError(f"{where} must be integers, got a boolean mask; "
                        "pass np.flatnonzero(mask) for the samples it selects")
    if given.dtype.kind in "iu":
        if given.dtype.kind == "u" and given.size and given.max() > np.iinfo(np.int64).max:
            raise IndexError(f"{where}: sample {int(given.max())} is out of range")
        return given.astype(np.int64)  # a copy: the caller keeps it, the user may not
    if given.size == 0:
        return np.zeros(0, np.int64)
    def whole(v: Any) -> bool:
        return (isinstance(v, int) and not isinstance(v, bool)) or (
            isinstance(v, float) and v.is_integer())

    items = given.tolist()
    if given.dtype.kind in "fO" and all(whole(v) for v in items):
        # floats, objects (Python ints past int64, mixed kinds): integers exactly
        past = next((int(v) for v in items if not -2**63 <= v < 2**63), None)
        if past is not None:
            raise IndexError(f"{where}: sample {past} is out of range")
        return np.array([int(v) for v in items], np.int64)
    wrong = next((v for v in items if not whole(v)), None)
    raise TypeError(f"{where} must be integers, got {given.dtype}"
                    + (f" ({wrong!r})" if wrong is not None else ""))


def whole_number(value: Any, name: str) -> int:
    """*value*, an argument called *name*, as an int: an integer or a float of a whole
    value (``256.0``). A fraction (``90.7``), a bool or a string is a TypeError naming
    the argument, where ``int()`` would have cut or converted it silently."""
    if isinstance(value, (bool, np.bool_)) or not (
            isinstance(value, (int, np.integer))
            or (isinstance(value, (float, np.floating)) and float(value).is_integer())):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _whole(value: Any, name: str) -> int:
    """``whole_number``, taking what has ``__index__`` too (a 0-d integer tensor)."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            return int(operator.index(value))
        except TypeError:
            pass
    return whole_number(value, name)


def size_pair(value: Any, name: str = "output_size") -> tuple[int, int]:
    """*value*, an argument called *name*, as a ``(height, width)`` pair of whole
    numbers of at least 1. A single number, a string (``"16"`` was read as
    ``(1, 6)``), another count of values or a fraction is refused, naming it."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{name} must be a (height, width) pair, got {value!r}")
    height, width = (_whole(v, name) for v in value)
    if height < 1 or width < 1:
        raise ValueError(f"{name} must be positive, got {value}")
    return height, width


def same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether *a* and *b* view the same elements (same start, shape, strides, dtype)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype)


def chunks(seq: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Yield consecutive slices of *seq* of at most *size* items."""
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def kind_of_file(mode: int) -> str:
    """What a file that is not a regular file is, from its ``st_mode``: "a named
    pipe", "a character device", "a block device", "a socket", "a directory"."""
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "of another kind"


def holds_only(path: str | os.PathLike[str], signature: bytes) -> bool:
    """Whether the file at *path* may be replaced by one that starts with *signature*:
    there is none, it is empty, or it starts so (a PNG over a PNG, a .beton over a
    .beton; a mistyped name must not replace a dataset or a script). One it cannot
    read passes: replacing it fails later, naming it."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(signature))
    except OSError:
        return True
    return head in (b"", signature)


def default_workers() -> int:
    """The number of CPUs this process may run on (portable, unlike sched_getaffinity)."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def format_bytes(count: float) -> str:
    """A byte count for people: ``512 B``, ``8 MiB``, ``1.3 GiB``.

    Args:
        count: bytes.

    Returns:
        The count with a binary unit.
    """
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B" or value.is_integer():
        return f"{value:.0f} {unit}"
    return f"{value:.1f} {unit}"


def usable_memory() -> tuple[int, str] | None:
    """The memory this process may use, in bytes, and what sets it: the machine's
    (``SC_PHYS_PAGES``), or its control group's limit where that is lower (cgroup
    v2 ``memory.max``, v1 ``memory.limit_in_bytes``); None where neither is known."""
    found: tuple[int, str] | None = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        found = (os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine's")
    for limit in _cgroup_limits():
        if found is None or limit < found[0]:
            found = (limit, "this process's control group's limit of")
    return found


def _cgroup_limits() -> Iterator[int]:
    """The memory limits of this process's control groups (v2 and v1), where set."""
    try:
        with open("/proc/self/cgroup") as groups:
            lines = groups.read().splitlines()
    except OSError:
        return
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:  # (not a line of the format: nothing to learn)
            continue
        _, controllers, path = fields
        if controllers == "":
            name = f"/sys/fs/cgroup{path}/memory.max"
        elif "memory" in controllers.split(","):
            name = f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
        else:
            continue
        with contextlib.suppress(OSError, ValueError):
            with open(name) as limit:
                text = limit.read().strip()
            if text != "max" and int(text) < 1 << 60:  # (v1's "none" is about 2**63)
                yield int(text)


FORK_SERVER_MAIN = "fastforward._forkserver_main"
"""The module that imports the main module in the fork server, in place of
``"__main__"`` in its preload list (``_forkserver_main`` says why)."""
_FORK_SERVER_LOCK = threading.Lock()


def forkserver_preload(ctx: Any, modules: Sequence[str]) -> None:
    """Add *modules* to what multiprocessing's fork server imports before it forks
    anyone (the union with what is listed already: the writer and the loader
    share one server), and start the server if it is not running. Has no effect
    on a server that runs: its workers then import what they need themselves.

    ``"__main__"`` is replaced by ``FORK_SERVER_MAIN``, last in the list, which
    imports the main module (CPython's server, told to, did not until a fix of
    2025) and freezes the collector; the server is started here, with what that
    module needs in its environment (``_forkserver_main.ENVIRONMENT``, only for
    the server's start).
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    with _FORK_SERVER_LOCK:
        preload = list(getattr(server, "_preload_modules", None) or ["__main__"])
        wanted = [*preload, *(name for name in modules if name not in preload)]
        main = "__main__" in wanted or FORK_SERVER_MAIN in wanted
        wanted = [name for name in wanted if name not in ("__main__", FORK_SERVER_MAIN)]
        if main:
            wanted.append(FORK_SERVER_MAIN)  # last: it freezes what all the others made
        if wanted != preload:
            ctx.set_forkserver_preload(wanted)
        if main and server is not None and _fork_server_stopped(server):
            _start_fork_server(server)


def _fork_server_stopped(server: Any) -> bool:
    """Whether multiprocessing's fork server is yet to start, or has ended (not
    reaped: ``WNOWAIT``, multiprocessing does that as it starts another)."""
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return True
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except (AttributeError, OSError):  # no waitid here; not this process's child
        return False


def _start_fork_server(server: Any) -> None:
    """Start the fork server with what ``FORK_SERVER_MAIN`` needs in its environment
    (set only for the start, and popped by the server: not its children's)."""
    from multiprocessing import spawn

    from ._forkserver_main import ENVIRONMENT

    try:
        data = spawn.get_preparation_data("fastforward-fork-server")
    except RuntimeError:  # in a child still importing its main module: no start here
        return
    keys = ("init_main_from_path", "init_main_from_name", "sys_path", "sys_argv")
    wanted = {key: data[key] for key in keys if key in data}
    if not any(key.startswith("init_main") for key in wanted):
        wanted = {}  # nothing to import: only the collector's freeze
    value = json.dumps(wanted, default=str)  # a Path in sys.path
    if len(value) > 100_000:  # one variable of the environment holds up to 128 KiB
        value = json.dumps({key: v for key, v in wanted.items() if key != "sys_argv"},
                           default=str)
    if len(value) > 100_000:
        value = "{}"
    before = os.environ.get(ENVIRONMENT)
    os.environ[ENVIRONMENT] = value
    try:
        with contextlib.suppress(Exception):  # the workers' start tries again, and says why
            server.ensure_running()
    finally:
        if before is None:
            os.environ.pop(ENVIRONMENT, None)
        else:
            os.environ[ENVIRONMENT] = before


s_print_lock = threading.Lock()
"""The lock ``s_print`` holds (FFCV's)."""


WORKER_NAMES = ("fastforward-writer-", "fastforward-worker-")
"""How the writer's and the loader's worker processes are named."""
_WORKER_STARTED = False
_SEEDS_GLOBALS = False
IMPORTING_MAIN_IN_FORK_SERVER = False
"""True while the fork server imports the main module (``_forkserver_main``)."""


def worker_started(*, seeds_globals: bool = False) -> None:
    """Called first thing by a worker process's main function: from then on,
    what runs is the work it is sent (a dataset may open a loader), and no
    training loop of the user's runs in the process (``in_a_worker``).

    *seeds_globals*: a loader's worker, whose ranges seed ``np.random``,
    ``random`` and torch's generator per sample from any of its threads
    (``seeds_globals()``). Not a writer's: a dataset it runs may open a loader
    on threads, which must leave the dataset's generators alone.
    """
    global _WORKER_STARTED, _SEEDS_GLOBALS
    _WORKER_STARTED = True
    _SEEDS_GLOBALS = seeds_globals


def in_a_worker() -> bool:
    """Whether this process is a fastforward worker at work (``worker_started``)."""
    return _WORKER_STARTED


def seeds_globals() -> bool:
    """Whether this process is a loader's worker at work, where the global
    generators are the ranges' to seed (``worker_started(seeds_globals=True)``)."""
    return _SEEDS_GLOBALS


def refuse_in_a_worker(what: str) -> None:
    """Raise if this process is one of fastforward's workers, or the fork server
    importing the main module: *what* was then called by a script's top level
    that the process ran again.

    A worker started by multiprocessing's fork server (or spawn) imports the
    main module first, to load what it is sent; a script without an
    ``if __name__ == "__main__":`` guard then runs again inside it, and the
    loader or writer it makes there would load or write for real (a file
    rewritten from the worker, data drawn anew). Refused instead, saying so;
    the worker dies with this traceback and its parent reports the death.
    Once the worker has started its work (``worker_started``), what runs is
    the work it was sent, and is let be. In the fork server the error is caught
    (``_forkserver_main``): the server runs on, and each worker then imports the
    script itself and fails here.
    """
    import multiprocessing

    if IMPORTING_MAIN_IN_FORK_SERVER:  # the import fails, and the workers import it again
        raise RuntimeError(
            f"{what} called in multiprocessing's fork server (pid {os.getpid()}) as it "
            "imported your main module, and so ran your script's top level again. "
            "Put the script's top level under `if __name__ == \"__main__\":`"
        )
    name = multiprocessing.current_process().name
    if name.startswith(WORKER_NAMES) and not in_a_worker():
        raise RuntimeError(
            f"{what} called in fastforward's worker process {name} (pid {os.getpid()}): "
            "it started from multiprocessing's fork server, which imports your main "
            "module to load what it is sent, and so ran your script's top level again. "
            "Put the script's top level under `if __name__ == \"__main__\":`"
        )


def main_module_hint(method: str, instead: str) -> str:
    """Why workers started by *method* (``forkserver``, ``spawn``) may fail before
    they start, and what to do (*instead*: the argument that avoids it).

    They import the main module from its file: a script read from standard input
    (``python - < script.py``; its ``__file__`` is ``<stdin>``) has none to import,
    and a script without an ``if __name__ == "__main__":`` guard runs again.
    """
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if isinstance(path, str) and not os.path.isfile(path):
        return (f"workers started by {method} import your main module from its file, and "
                f"it has none ({path}): run the script from a file, or pass {instead}")
    return (f"workers started by {method} import your main module: keep a script's "
            f"top-level code under `if __name__ == \"__main__\":`, or pass {instead}")


def s_print(*args: object, **kwargs: Any) -> None:
    """``print`` under a lock, so that threads' lines do not interleave (FFCV's helper)."""
    with s_print_lock:
        print(*args, **kwargs)  # noqa: T201 - this helper's purpose


__getattr__ = not_provided(__name__, {
    "cast_int_to_byte_ptr": "a numba intrinsic FFCV's compiled decoders used to pass pointers "
                            "to its C library; fastforward has none: slice the arrays "
                            "(memory_read returns the payload's bytes as an array)"})


EXTRAS = {"torch": "torch", "numba": "numba", "demo": "scikit-image", "pillow": "pillow",
          "webdataset": "webdataset", "plot": "matplotlib"}
"""fastforward's optional extras and the package each brings (pyproject.toml's
``[project.optional-dependencies]``, which a test holds this to)."""

CPU_TORCH = "--index-url https://download.pytorch.org/whl/cpu"
"""pip's option for PyTorch's CPU-only builds (a bare ``torch`` is a CUDA build of
several GB on Linux)."""


def install_hint(extra: str) -> str:
    """How to install what *extra* brings, by the package's own name: the extra is
    fastforward's in its source folder (``pip install '.[plot]'``), and
    ``fastforward[...]`` from PyPI would be another project of that name."""
    package = EXTRAS[extra]
    hint = f"pip install {package}"
    if extra == "torch":
        hint += f" (a CPU-only build: pip install torch {CPU_TORCH})"
    return f"{hint}, or pip install '.[{extra}]' in fastforward's source folder"


TORCHVISION_HINT = ("pip install torch torchvision at versions that go together (PyTorch's "
                    f"table; CPU-only builds: {CPU_TORCH}), as a bare "
                    "`pip install torchvision` may replace your torch with a CUDA build")
"""How to install torchvision without replacing the torch already installed."""


def anonymous_shared_fd(nbytes: int, name: str) -> int:
    """A descriptor of *nbytes* of shared memory with no name anywhere (*name*
    shows in ``/proc/PID/maps``): it vanishes with its last descriptor and map,
    whatever ends the processes that hold it."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    else:  # unlinked at once
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix=f"{name}-", dir=directory)
        os.unlink(path)
    try:
        os.ftruncate(fd, nbytes)
    except BaseException:
        os.close(fd)
        raise
    return fd


MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux


def private_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array, as ``np.empty``, in a private anonymous map of its own
    (zero-filled pages, made as they are first touched), unmapped once no view of
    it is left.

    For large buffers that live long and die on other threads than the one that
    made them (batch slots): from the C heap, glibc keeps what other threads free
    in its per-thread arenas, so memory a loader let go of stayed with the process.
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if count * dtype.itemsize == 0 or dtype.hasobject:
        return np.empty(shape, dtype)
    return np.frombuffer(private_map(count * dtype.itemsize), dtype, count).reshape(shape)


def private_map(nbytes: int) -> mmap.mmap:
    """*nbytes* of private anonymous memory (``MAP_PRIVATE``: Python's default for
    ``mmap.mmap(-1, n)`` is ``MAP_SHARED``, whose pages a forked child shares
    with its parent, each writing into the other's batches, and whose maps
    never merge: a program keeping 65,000 batches ran out of maps)."""
    flags = getattr(mmap, "MAP_PRIVATE", None)
    if flags is None:  # pragma: no cover - not POSIX: the platform's private memory
        return mmap.mmap(-1, nbytes)
    return mmap.mmap(-1, nbytes, flags=flags)


def map_shared(fd: int, nbytes: int, populate: bool = False,
               writable: bool = True) -> np.ndarray:
    """*nbytes* of the shared memory *fd*, mapped (``MAP_SHARED``; with *populate*,
    every page at once where the platform can) as a uint8 array, read-write or
    read-only; unmapped once no view of it is left, and never at interpreter
    exit (as Python's ``mmap``: threads and kept batches may still read it).

    The map keeps no descriptor of its own: Python's ``mmap`` keeps a duplicate
    of *fd* for its life (before 3.13's ``trackfd=False``), so each batch a
    user kept of a loader with worker processes cost a descriptor, and at
    1,024 (a common limit) the loader failed.
    """
    flags = mmap.MAP_SHARED | (MAP_POPULATE if populate else 0)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    if sys.version_info >= (3, 13):
        return np.frombuffer(mmap.mmap(fd, nbytes, flags=flags, prot=prot, trackfd=False),
                             np.uint8)
    libc = _libc()
    if libc is None:  # pragma: no cover - no C library to call: one descriptor per map
        return np.frombuffer(mmap.mmap(fd, nbytes, flags=flags, prot=prot), np.uint8)
    address = libc.mmap(None, nbytes, prot, flags, fd, 0)
    if address is None or address == ctypes.c_void_p(-1).value:  # MAP_FAILED
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    memory = (ctypes.c_ubyte * nbytes).from_address(address)
    # unmapped when collected, never by the exit hook, which runs the newest finalizers
    # first: it unmapped slots that the loader's threads (ended by an older finalizer)
    # and the program's kept batches still read (a segmentation fault at exit)
    unmap = weakref.finalize(memory, libc.munmap, ctypes.c_void_p(address),
                             ctypes.c_size_t(nbytes))
    unmap.atexit = False
    array = np.frombuffer(memoryview(memory), np.uint8)
    if not writable:
        array.flags.writeable = False
    return array


@functools.cache
def _libc() -> Any:
    """The C library's mmap and munmap, through ctypes (None where there is none)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def _forget_the_parents_fork_server() -> None:
    """In a child made by ``os.fork``: multiprocessing's fork server is the
    parent's, which the child cannot use (its next process start waits on a
    process that is not its child: ``ChildProcessError``, so a forked child
    could not make a loader or writer with workers). The child forgets it, and
    starts a server of its own when it needs one; the copy of the descriptor
    that keeps the parent's server alive is closed."""
    global _FORK_SERVER_LOCK
    _FORK_SERVER_LOCK = threading.Lock()  # another thread of the parent's may have held it
    module = sys.modules.get("multiprocessing.forkserver")
    server = getattr(module, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:
        with contextlib.suppress(OSError):
            os.close(alive)
    for name in ("_forkserver_address", "_forkserver_alive_fd", "_forkserver_pid",
                 "_inherited_fds", "_forkserver_authkey"):
        if hasattr(server, name):
            setattr(server, name, None)
    server._lock = threading.Lock()  # another thread of the parent's may have held it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_the_parents_fork_server)


def _fork_server_outlives_its_parent() -> None:
    """At the exit of multiprocessing's fork server, once the process that started
    it is gone: remove that process's multiprocessing folder (``pymp-*`` under the
    temporary folder, holding the server's socket), which the process removes at
    its own exit but cannot after a SIGKILL (an OOM kill). Registered with
    ``atexit`` wherever this module is imported: the loader and the writer have
    the fork server import it before it forks anyone. Anywhere but in a fork
    server (which knows its own socket's address and no server pid), or while
    the parent lives, this does nothing; nor in a process forked from one (a
    worker, or a process a worker forks, which may exit while the parent lives):
    only in the process that imported this module, and that no multiprocessing
    parent started (a worker that imported this module itself, its server alive:
    Python 3.13's forked workers run their exit functions)."""
    import multiprocessing

    module = sys.modules.get("multiprocessing.forkserver")
    server = getattr(module, "_forkserver", None)
    address = getattr(server, "_forkserver_address", None)
    if (os.getpid() != _IMPORTED_IN or not isinstance(address, str)
            or not address.startswith(os.sep)
            or getattr(server, "_forkserver_pid", None) is not None
            or multiprocessing.parent_process() is not None
            or not _orphaned()):
        return
    folder = os.path.dirname(address)
    if os.path.basename(folder).startswith("pymp-"):  # multiprocessing's own
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def _orphaned(wait: float = 2.0) -> bool:
    """Whether the process that started this one is gone, waiting up to *wait*
    seconds for the kernel to say so. A fork server ends when its pipe from the
    parent reads end of file: the parent is exiting, but the kernel closes a dying
    process's files before it hands its children to another parent, and the
    server could get here first and see the parent still its parent (a folder
    stayed after 1 in 3 SIGTERMs to the process group)."""
    deadline = time.monotonic() + wait
    while os.getppid() == _PARENT:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


_IMPORTED_IN, _PARENT = os.getpid(), os.getppid()
atexit.register(_fork_server_outlives_its_parent)

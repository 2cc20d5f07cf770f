"""Imported by multiprocessing's fork server, last of what it preloads: imports the
main module of the process that started the server, once, so that the workers
forked from it do not each import it again, then freezes the garbage collector.

CPython's fork server is told to preload ``"__main__"``, but from 3.4 until its
fix of September 2025 (gh-126631) it never did: it looks for a ``main_path``
that ``spawn.get_preparation_data()`` does not give (its key is
``init_main_from_path``), and a module run with ``python -m`` it does not
handle at all; where it does, an error in the script ends the server. Each
worker then ran the user's script again, and what it imports (torchvision,
scipy: seconds). ``utils.forkserver_preload`` puts this module in the preload
list in place of ``"__main__"`` and hands it, in the environment, only while
the server starts, what it needs: the path or the module name, ``sys.path``
and ``sys.argv`` (what ``spawn.prepare`` sets in a child before it imports the
main module). Children forked from the server find the main module there:
``spawn._fixup_main_from_path`` returns when ``__main__.__file__`` is the path
it was given, ``_fixup_main_from_name`` when the module's name is.

Whatever the main module's import raises is caught (``SystemExit`` included) and
the server runs on without it: the workers then import it themselves, and fail
as they did before. A script without an ``if __name__ == "__main__":`` guard
that makes a ``Loader`` or ``DatasetWriter`` at its top level is refused here as
in a worker (``utils.refuse_in_a_worker``), instead of loading or writing from
the server. Other work at a script's top level runs in the server too, once,
before it forks anyone: what starts threads, CUDA or processes belongs under
the guard (it ran in every worker before).

``gc.freeze()`` then moves every object the server holds (the main module's,
numpy's, torch's) to the collector's permanent generation, so that collections
in the workers never touch them: a collection writes to each object it examines,
which copies the page it lies on, and a worker's private memory grew by what it
had inherited (after a full collection in each worker, a script importing torch
and scipy.signal: 65 MB of private memory per worker, 15 MB frozen).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import signal
import sys
from typing import Any

ENVIRONMENT = "_FASTFORWARD_FORK_SERVER"
"""The variable ``utils.forkserver_preload`` sets while the server starts: JSON,
the keys of ``spawn.get_preparation_data()`` that this module uses (``{}`` where
there is no main module to import: ``python -c``, a notebook)."""


def _import_main(data: dict[str, Any]) -> None:
    """Import the main module as ``spawn.prepare`` does in a child; never raises."""
    from multiprocessing import process, spawn, util

    from . import utils

    if "sys_path" in data:
        sys.path = list(data["sys_path"])
    if "sys_argv" in data:
        sys.argv = list(data["sys_argv"])
    if hasattr(util, "_close_stdin"):
        util._close_stdin()  # the server does it after its preloads; a child has none
    current = process.current_process()
    current._inheriting = True  # type: ignore[attr-defined]  # as CPython's server does
    utils.IMPORTING_MAIN_IN_FORK_SERVER = True
    try:
        if "init_main_from_name" in data:
            if hasattr(spawn, "_fixup_main_from_name"):
                spawn._fixup_main_from_name(data["init_main_from_name"])
        elif "init_main_from_path" in data:
            spawn.import_main_path(data["init_main_from_path"])
    except BaseException:  # SystemExit too: the workers import it again, and say why
        pass
    finally:
        utils.IMPORTING_MAIN_IN_FORK_SERVER = False
        with contextlib.suppress(AttributeError):
            del current._inheriting  # type: ignore[attr-defined]


def _flush() -> None:
    """Flush what the main module printed: the workers would print it again."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()


def _prepare() -> None:
    """In a fork server that fastforward started (the variable is set), and only
    there: imported anywhere else, this module does nothing."""
    raw = os.environ.pop(ENVIRONMENT, None)  # not the workers', nor their children's
    if raw is None:
        return
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    _outlive_group_signals()
    _survive_cut_starts()
    if isinstance(data, dict):
        _import_main(data)
    gc.freeze()
    _flush()


GROUP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                      if hasattr(signal, name))
"""What `timeout`, a batch system or a closed terminal send to a whole process group."""


def _outlive_group_signals() -> None:
    """Ignore ``GROUP_SIGNALS`` in the server, and give each process it forks their
    default actions back (a worker, or another library's process from the same
    server, is stopped by them as before).

    Sent to the process group, they reached the server as they reached its
    parent, and killed it at once: its exit clean-up (``utils.
    _fork_server_outlives_its_parent``, which removes the parent's ``pymp-*``
    folder when the parent could not) never ran, and a folder stayed in the
    temporary folder for each such run. Ignoring them, the server ends with its
    parent, as it does after any death of the parent (end of file on its pipe),
    and cleans up."""
    for signum in GROUP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    os.register_at_fork(after_in_child=_default_actions)


def _default_actions() -> None:
    for signum in GROUP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


def _survive_cut_starts() -> None:
    """Take a process start that was cut short for what it is, in the server and
    in the child it forked, without a traceback.

    Ctrl-C in ``Popen._launch`` (multiprocessing's start of a worker), between
    its connection to the server and its last write, leaves the server or the
    child with end of file where the start's data should be: before the
    descriptors, the server's ``reduction.recvfds`` raised ``EOFError``, which
    its loop lets through (it only ignores ``ECONNABORTED``), and the server
    ended, printing a traceback under the user's ``KeyboardInterrupt``; the next
    loader then waited for a new server, which imports torch and the main module
    again (``workers._start_process``). After them, the child read no process
    object, and printed its own. Now the server takes the first for the aborted
    connection it is and serves on, and such a child exits with code 1 without a
    word (nobody waits for it): only an ``EOFError`` of pickle's own, raised in
    ``spawn._main`` itself (what the process's target raises, ``_bootstrap``
    reports; what code run by the unpickling raises goes on as before). The
    processes the server forks get ``recvfds`` back as it was."""
    from multiprocessing import reduction, spawn

    receive, main = reduction.recvfds, spawn._main

    def recvfds(sock: Any, size: int) -> Any:
        try:
            return receive(sock, size)
        except EOFError:
            raise ConnectionAbortedError(
                errno.ECONNABORTED, "a process start was cut short") from None

    def started(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except EOFError as exc:
            last = exc.__traceback__
            while last is not None and last.tb_next is not None:
                last = last.tb_next
            if last is not None and last.tb_frame.f_code is main.__code__:
                return 1  # pickle (C) ran out of input in _main itself: no process object
            raise  # raised by code the unpickling ran: the child reports it, as before

    reduction.recvfds = recvfds
    spawn._main = started
    os.register_at_fork(after_in_child=lambda: setattr(reduction, "recvfds", receive))


_prepare()

"""Exceptions. Each also subclasses the built-in that fits, so callers may
catch either (``except ValueError`` keeps working for FFCV code)."""

from __future__ import annotations

import functools
from typing import Any


class FastForwardError(Exception):
    """Base class of every error fastforward raises on purpose."""


class FormatError(FastForwardError, ValueError):
    """A file is not a valid .beton v2 file, or is damaged."""


class DecodeError(FastForwardError, ValueError):
    """A stored payload cannot be decoded (for example corrupt JPEG bytes)."""


class EncodeError(FastForwardError, ValueError):
    """A sample cannot be written by its field (wrong type, shape or size)."""


class Terminated(SystemExit):
    """SIGTERM (or SIGHUP) arrived while fastforward was writing a file: the
    write stopped cleanly, as on Ctrl-C, and left no file.

    A ``SystemExit`` with status 143 (128 + SIGTERM, what a shell reports for
    a process SIGTERM killed; 129 for SIGHUP): ``except Exception`` lets it
    through, and an uncaught one ends the program quietly with that status.
    """

    def __init__(self, message: str, status: int = 143) -> None:
        super().__init__(status)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        return type(self), (self.message, self.code if isinstance(self.code, int) else 143)


class NotProvidedError(FastForwardError, ImportError):
    """FFCV code imports a name fastforward does not have; the message names the replacement."""


def annotate(exc: BaseException, where: str) -> BaseException:
    """Prefix *exc*'s message with *where* (file, sample, field), keeping its type.

    The message is rewritten when the exception carries a single string
    argument that its message shows (nearly every built-in error); otherwise
    (no arguments, several, not a string, or a ``__str__`` of its own)
    *where* is added as a note, which tracebacks print and the command line
    shows. Returns *exc* for ``raise annotate(...)``.
    """
    if len(exc.args) == 1 and isinstance(exc.args[0], str):
        message = exc.args[0]
        if message.startswith(where):
            return exc
        head = where.split(": ", 1)[0] + ": "  # the file, said once
        if ": " in where and message.startswith(head):
            message = message[len(head):]
        original = exc.args
        exc.args = (f"{where}: {message}",)
        try:
            shown = where in str(exc)
        except Exception:
            shown = False
        if shown:
            return exc
        exc.args = original
    if not any(where in note for note in getattr(exc, "__notes__", ())):
        exc.add_note(where)
    return exc


class WorkerError(FastForwardError, RuntimeError):
    """A worker process (the writer's or the loader's) died without reporting an
    exception: killed, out of memory, or crashed in native code."""


class BatchTimeout(FastForwardError, TimeoutError):
    """``next()`` waited ``Loader(timeout=...)`` seconds for a batch: the loader's
    own timeout (an operation's ``TimeoutError`` reaches ``next()`` as itself)."""


def exception_text(exc: BaseException) -> str:
    """``Type: message`` of *exc*, whatever its ``__str__`` does."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # a __str__ that fails
        return f"{type(exc).__name__} (its message could not be shown)"


def portable(exc: BaseException, where: str) -> BaseException:
    """*exc*, ready to cross a process boundary, its traceback (formatted here, in
    the process it was raised in) added as a note naming *where*.

    Itself, pickled as faithfully as it can be (``_pickles_whole``), whenever it
    pickles at all and comes back as its own type; else a ``FastForwardError``
    with its type and text, after the locations ``annotate`` added as notes.
    """
    import traceback

    text = "".join(traceback.format_exception(exc))
    notes = [note for note in getattr(exc, "__notes__", ()) if "\n" not in note]
    exc.add_note(f"in {where}:\n{text}")
    if _pickles_whole(exc):
        return exc
    fallback = FastForwardError("; ".join([*notes, exception_text(exc)]))
    fallback.add_note(f"in {where}:\n{text}")
    return fallback


def _pickles_whole(exc: BaseException) -> bool:
    """Make *exc* pickle as faithfully as it can; whether it pickles at all and
    comes back as its own type.

    Pickling rebuilds an exception by calling its class with its ``args`` (or as
    its own ``__reduce__`` says), so a class whose ``__init__`` composes the
    message (``CustomError(code)``) would come back garbled, and one whose
    ``__reduce__`` passes its own fields (``json.JSONDecodeError``) without its
    location and notes. Where that round trip does not give back its type, text
    and notes, it is pickled as it is instead (``args`` and attributes, its
    ``__init__`` not run again: ``_reduce_as_is``), which may still differ in an
    object's address shown in its text. The exceptions of a group are made so
    first: the group pickles them with itself.
    """
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            _pickles_whole(inner)
    default = _round_trip(exc)
    if default is not None and _same(default, exc):
        return True
    try:
        exc.__reduce_ex__ = functools.partial(_reduce_as_is, exc)  # type: ignore[method-assign]
    except Exception:  # an exception that refuses attributes
        return default is not None and type(default) is type(exc)
    as_is = _round_trip(exc)
    if as_is is not None and type(as_is) is type(exc):
        return True
    del exc.__reduce_ex__
    return default is not None and type(default) is type(exc)


def _round_trip(exc: BaseException) -> BaseException | None:
    """*exc* pickled and unpickled here; None where either fails."""
    import pickle

    try:
        back = pickle.loads(pickle.dumps(exc))
    except Exception:  # RecursionError included
        return None
    return back if isinstance(back, BaseException) else None


def _same(back: BaseException, exc: BaseException) -> bool:
    """Whether *back* is *exc* as pickling should give it: type, text and notes."""
    return (type(back) is type(exc) and exception_text(back) == exception_text(exc)
            and getattr(back, "__notes__", None) == getattr(exc, "__notes__", None))


def _reduce_as_is(exc: BaseException, protocol: int) -> tuple[Any, ...]:
    """Pickle *exc* as it is: its class and ``args``, rebuilt by ``_rebuilt``
    without running its ``__init__``, then its attributes (``__notes__`` among
    them) as its state, which may refer back to it."""
    state = {k: v for k, v in vars(exc).items() if k != "__reduce_ex__"}
    return _rebuilt, (type(exc), exc.args), state


def _rebuilt(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """An exception of *cls* with *args*, its ``__init__`` not run (``_reduce_as_is``;
    pickle then sets its attributes)."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    return exc


def listed(indices: Any) -> str:
    """A batch's samples for a message: ``"5"``, ``"5, 9"``, ``"5, …, 2"`` (first and last)."""
    values = [int(v) for v in indices[:1]] + [int(v) for v in indices[1:][-1:]]
    text = ", ".join(map(str, values))
    return text.replace(", ", ", …, ") if len(indices) > 2 else (text or "none")

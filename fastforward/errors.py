"""Exceptions. Each also subclasses the built-in that fits, so callers may
catch either (``except ValueError`` keeps working for FFCV code)."""

from __future__ import annotations

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
    """SIGTERM arrived while fastforward was writing a file: the write stopped
    cleanly, as on Ctrl-C, and left no file.

    A ``SystemExit`` with status 143 (128 + SIGTERM, what a shell reports for
    a process SIGTERM killed): ``except Exception`` lets it through, and an
    uncaught one ends the program quietly with that status.
    """

    def __init__(self, message: str) -> None:
        super().__init__(143)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return type(self), (self.message,)


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


def exception_text(exc: BaseException) -> str:
    """``Type: message`` of *exc*, whatever its ``__str__`` does."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # a __str__ that fails
        return f"{type(exc).__name__} (its message could not be shown)"


def portable(exc: BaseException, where: str) -> BaseException:
    """*exc*, ready to cross a process boundary: itself if it survives pickling,
    else a ``FastForwardError`` with its type and text, after the locations
    ``annotate`` added as notes; its traceback (formatted here, in the process
    it was raised in) is added as a note naming *where*."""
    import pickle
    import traceback

    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        located = [note for note in getattr(exc, "__notes__", ()) if "\n" not in note]
        exc = FastForwardError("; ".join([*located, exception_text(exc)]))
    exc.add_note(f"in {where}:\n{text}")
    return exc


def listed(indices: Any) -> str:
    """A batch's samples for a message: ``"5"``, ``"5, 9"``, ``"5, …, 2"`` (first and last)."""
    values = [int(v) for v in indices[:1]] + [int(v) for v in indices[1:][-1:]]
    text = ", ".join(map(str, values))
    return text.replace(", ", ", …, ") if len(indices) > 2 else (text or "none")

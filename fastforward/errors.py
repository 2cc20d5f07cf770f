"""Exceptions. Each also subclasses the built-in that fits, so callers may
catch either (``except ValueError`` keeps working for FFCV code)."""

from __future__ import annotations


class FastForwardError(Exception):
    """Base class of every error fastforward raises on purpose."""


class FormatError(FastForwardError, ValueError):
    """A file is not a valid .beton v2 file, or is damaged."""


class DecodeError(FastForwardError, ValueError):
    """A stored payload cannot be decoded (for example corrupt JPEG bytes)."""


class EncodeError(FastForwardError, ValueError):
    """A sample cannot be written by its field (wrong type, shape or size)."""


def annotate(exc: BaseException, where: str) -> BaseException:
    """Prefix *exc*'s message with *where* (file, sample, field), keeping its type.

    The message is rewritten when the exception carries a single string
    argument (nearly every built-in error); otherwise *where* is added as a
    note, which tracebacks print. Returns *exc* for ``raise annotate(...)``.
    """
    if len(exc.args) == 1 and isinstance(exc.args[0], str) and not exc.args[0].startswith(where):
        message = exc.args[0]
        head = where.split(": ", 1)[0] + ": "  # the file, said once
        if ": " in where and message.startswith(head):
            message = message[len(head):]
        exc.args = (f"{where}: {message}",)
    elif not any(where in note for note in getattr(exc, "__notes__", ())):
        exc.add_note(where)
    return exc


class WorkerError(FastForwardError, RuntimeError):
    """A worker process (the writer's or the loader's) died without reporting an
    exception: killed, out of memory, or crashed in native code."""


def portable(exc: BaseException, where: str) -> BaseException:
    """*exc*, ready to cross a process boundary: itself if it survives pickling,
    else a ``FastForwardError`` with its type and text; its traceback (formatted
    here, in the process it was raised in) is added as a note naming *where*."""
    import pickle
    import traceback

    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = FastForwardError(f"{type(exc).__name__}: {exc}")
    exc.add_note(f"in {where}:\n{text}")
    return exc

"""The ``fastforward`` program (and ``python -m fastforward``).

The command line itself is :mod:`fastforward.cli`; importing it (NumPy, the
writer, the reader) takes about 0.3 s. A Ctrl-C in that time is reported as
``cli.main`` reports one later: one line, exit status 130, no traceback. (It
does not always arrive as a KeyboardInterrupt: NumPy turns one that lands inside
its C extension's own imports into an ImportError, hence the handler that notes it.)
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


def main() -> int:
    """Import the command line and run it; Ctrl-C while importing exits with 130."""
    interrupted = False

    def on_ctrl_c(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:  # (not where SIGINT is ignored)
        signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        from .cli import main as run
    except BaseException:
        if not interrupted:
            raise
    finally:
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)
    if interrupted:  # raised as whatever the import made of it, or absorbed by it
        print("fastforward: error: interrupted", file=sys.stderr)
        return 130
    return run()


if __name__ == "__main__":
    raise SystemExit(main())

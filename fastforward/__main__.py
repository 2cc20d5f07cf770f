"""The ``fastforward`` program (and ``python -m fastforward``).

The command line itself is :mod:`fastforward.cli`; importing it (NumPy, the
writer, the reader) takes about 0.3 s. A Ctrl-C in that time is reported as
``cli.main`` reports one later: one line, exit status 130, no traceback.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Import the command line and run it; Ctrl-C while importing exits with 130."""
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("fastforward: error: interrupted", file=sys.stderr)
        return 130
    return run()


if __name__ == "__main__":
    raise SystemExit(main())

"""Compiled kernels. Private: users reach them only through Python wrappers.

Importing this package checks that the kernels were built for this Python,
so that a source checkout that was never built (``import fastforward`` from
the repository's root shadows an installed copy) fails with what to do,
rather than with ``No module named 'fastforward._ext.collate'``.
"""

import os as _os
import sys as _sys
from importlib.machinery import EXTENSION_SUFFIXES as _SUFFIXES

# built only where libjpeg-turbo was available at build time (see setup.py)
_OPTIONAL = {"jpeg"}


def _missing_kernels() -> list[str]:
    """The kernels whose sources (``<name>.pyx``, shipped beside them) are
    here but whose compiled module for this Python is not (optional ones aside)."""
    here = _os.path.dirname(__file__)
    kernels = sorted(f[: -len(".pyx")] for f in _os.listdir(here)
                     if f.endswith(".pyx") and f[: -len(".pyx")] not in _OPTIONAL)
    return [name for name in kernels
            if not any(_os.path.exists(_os.path.join(here, name + s)) for s in _SUFFIXES)]


def _explain(missing: list[str]) -> str:
    here = _os.path.dirname(__file__)
    package = _os.path.dirname(here)
    others = sorted(f for f in _os.listdir(here) if f.endswith((".so", ".pyd")))
    found = (f" (found {', '.join(others)}: built for another Python, not Python "
             f"{_sys.version_info.major}.{_sys.version_info.minor})") if others else ""
    return (
        f"fastforward's compiled kernels ({', '.join(missing)}) are missing from {here}"
        f"{found}. This is a source tree whose kernels were never built for this Python. "
        "Build them in place with `pip install -e . --no-build-isolation` (needs "
        "setuptools>=70.1 and Cython>=3.1 installed), or, after `pip install .`, run "
        f"Python from another directory than {_os.path.dirname(package)}, so that the "
        "installed package is imported instead of this source tree"
    )


_missing = _missing_kernels()
if _missing:
    raise ImportError(_explain(_missing), name=__name__, path=__file__)

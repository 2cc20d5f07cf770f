"""fastforward: fast data loading for training vision models, on FFCV's .beton files.

Layers, bottom up: ``types`` (the byte layout) <- ``fields`` (what a column
stores, and its decoders) <- ``writer`` / ``reader`` (files) <- ``pipeline``,
``transforms``, ``traversal_order``, ``memory_managers``, ``ring``,
``scheduler`` <- ``loader``. Compiled kernels live in the private ``_ext``.

``Loader`` and ``DatasetWriter`` are imported on first use (about 0.3 s), so
that the command line starts, and answers Ctrl-C, before the loader is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _ext  # noqa: F401  (checks that the kernels are built, from file names: fast)
from ._version import __version__

if TYPE_CHECKING:
    from .loader import Loader
    from .writer import DatasetWriter

__all__ = ["DatasetWriter", "Loader", "__version__"]

_LAZY = {"Loader": ".loader", "DatasetWriter": ".writer"}


def __getattr__(name: str) -> Any:
    """``fastforward.Loader`` and ``fastforward.DatasetWriter``, imported when first asked
    for, and the subpackages and modules (``fastforward.fields``, ``.transforms``, …),
    which importing the loader made attributes of the package, as FFCV's are."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":  # a module that is there failed to import
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value

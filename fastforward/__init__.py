"""fastforward: fast data loading for training vision models, on FFCV's .beton files.

Layers, bottom up: ``types`` (the byte layout) <- ``fields`` (what a column
stores) <- ``writer`` / ``reader`` (files) <- the command line (``cli``).
Compiled kernels live in the private ``_ext`` package.
"""

from ._version import __version__
from .writer import DatasetWriter

__all__ = ["DatasetWriter", "__version__"]

"""fastforward: fast data loading for training vision models, on FFCV's .beton files.

Layers, bottom up: ``types`` (the byte layout) <- ``fields`` (what a column
stores, and its decoders) <- ``writer`` / ``reader`` (files) <- ``pipeline``,
``transforms``, ``traversal_order``, ``memory_managers``, ``ring``,
``scheduler`` <- ``loader``. Compiled kernels live in the private ``_ext``.
"""

from ._version import __version__
from .loader import Loader
from .writer import DatasetWriter

__all__ = ["DatasetWriter", "Loader", "__version__"]

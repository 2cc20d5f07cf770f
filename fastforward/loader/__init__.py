"""The loader: ``Loader`` and ``OrderOption``, as in ``ffcv.loader``."""

from .loader import EpochIterator, Loader, OrderOption

__all__ = ["EpochIterator", "Loader", "OrderOption"]

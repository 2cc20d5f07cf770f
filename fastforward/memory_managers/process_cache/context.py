"""FFCV's ``process_cache.context``: ``ProcessCacheContext``."""

from . import ProcessCacheContext

__all__ = ["ProcessCacheContext"]

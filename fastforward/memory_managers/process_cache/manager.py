"""FFCV's ``process_cache.manager``: ``ProcessCacheManager``."""

from . import ProcessCacheManager

__all__ = ["ProcessCacheManager"]

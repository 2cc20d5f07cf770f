"""Memory managers: where batches' payload bytes come from (``Loader(os_cache=...)``)."""

from .base import BatchData, MemoryContext, MemoryManager
from .os_cache import OSCacheManager
from .process_cache import ProcessCacheManager

__all__ = ["BatchData", "MemoryContext", "MemoryManager", "OSCacheManager",
           "ProcessCacheManager"]

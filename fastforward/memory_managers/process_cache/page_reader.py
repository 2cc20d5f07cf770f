"""FFCV's ``process_cache.page_reader``: its page-reading threads, which fastforward has not."""

from ..._compat import module_not_provided

raise module_not_provided(
    __name__, "FFCV read whole pages on 12 PageReader threads; fastforward's "
    "ProcessCacheManager reads each batch's byte ranges with pread (see its docstring)")

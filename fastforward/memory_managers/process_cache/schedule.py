"""FFCV's ``process_cache.schedule``: its page schedule, which fastforward has not."""

from ..._compat import module_not_provided

raise module_not_provided(
    __name__, "FFCV computed which pages to keep for a whole epoch (and needed the whole "
    "dataset in RAM for RANDOM); fastforward's ProcessCacheManager reads each batch's bytes "
    "just ahead of use, at most batches_ahead + 1 batches at once")

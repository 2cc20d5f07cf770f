"""FFCV's ``ffcv.loader.epoch_iterator``: ``EpochIterator`` (defined in ``loader``)."""

from .._compat import not_provided
from .loader import EpochIterator

__all__ = ["EpochIterator"]

__getattr__ = not_provided(__name__, {
    "select_buffer": "FFCV's iterator picked a batch's buffers by slot; fastforward's ring "
                     "(fastforward.ring.SlotPool) hands them to the pipelines itself",
    "IS_CUDA": "use torch.cuda.is_available()",
    "QUASIRANDOM_ERROR_MSG": "fastforward's QUASI_RANDOM has no such restriction (it works "
                            "with os_cache=True and distributed=True)",
})

"""FFCV's ``memory_managers.common``: the type of an epoch's batches."""

from collections.abc import Sequence

BATCHES_TYPE = Sequence[Sequence[int]]
"""An epoch's batches, each a sequence of sample indices (what ``schedule_epoch`` takes)."""

"""FFCV's ``ffcv.transforms.utils``: the crop helpers of ``fast_crop``."""

from . import fast_crop

__all__ = ["fast_crop"]

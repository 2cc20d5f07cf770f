"""The field types of a .beton file, with FFCV's names and arguments."""

from .base import Field
from .basics import FloatField, IntField
from .bytes import BytesField
from .json import JSONField
from .mask import MaskField
from .multichannel import MultiChannelImageField
from .ndarray import NDArrayField, TorchTensorField
from .ragged import RaggedField
from .rgb_image import RGBImageField

__all__ = [
    "BytesField",
    "Field",
    "FloatField",
    "IntField",
    "JSONField",
    "MaskField",
    "MultiChannelImageField",
    "NDArrayField",
    "RGBImageField",
    "RaggedField",
    "TorchTensorField",
]

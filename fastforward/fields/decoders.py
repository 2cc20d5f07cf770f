"""Every decoder, importable from one place (as ``ffcv.fields.decoders``)."""

from .basics import FloatDecoder, IntDecoder
from .bytes import BytesDecoder
from .mask import MaskDecoder
from .multichannel import (
    CenterCropMultiChannelImageDecoder,
    RandomResizedCropMultiChannelImageDecoder,
    SimpleMultiChannelImageDecoder,
)
from .ndarray import NDArrayDecoder
from .ragged import RaggedDecoder
from .resized_image import ImageSizeDecoder, ShorterSideRGBImageDecoder
from .rgb_image import (
    CenterCropRGBImageDecoder,
    RandomResizedCropRGBImageDecoder,
    ResizedCropRGBImageDecoder,
    SimpleRGBImageDecoder,
)

__all__ = [
    "BytesDecoder",
    "CenterCropMultiChannelImageDecoder",
    "CenterCropRGBImageDecoder",
    "FloatDecoder",
    "ImageSizeDecoder",
    "IntDecoder",
    "MaskDecoder",
    "NDArrayDecoder",
    "RaggedDecoder",
    "RandomResizedCropMultiChannelImageDecoder",
    "RandomResizedCropRGBImageDecoder",
    "ResizedCropRGBImageDecoder",
    "ShorterSideRGBImageDecoder",
    "SimpleMultiChannelImageDecoder",
    "SimpleRGBImageDecoder",
]

"""Batch transforms, with FFCV's names, arguments and defaults.

Before ``ToTensor`` batches are NumPy arrays (images ``(B, H, W, C)``); after
it, torch tensors. Every transform writes its result into the buffer it
declares (or returns a view) and never modifies its input, which another
pipeline branch may share. Random transforms draw from the loader's context,
so an augmentation depends only on ``(seed, epoch, sample index)``.
torch is imported only when a transform that needs it runs.
"""

from .adaptor import Augment
from .auto_augment import AutoAugment, RandAugment, TrivialAugmentWide
from .auto_augment import AutoAugmentPolicy as AutoAugmentPolicy  # not an operation
from .color_jitter import RandomBrightness, RandomContrast, RandomSaturation
from .common import Squeeze
from .cutout import Cutout
from .flip import RandomHorizontalFlip, RandomVerticalFlip
from .mixup import ImageMixup, LabelMixup, MixupToOneHot
from .module import ModuleWrapper
from .normalize import NormalizeImage
from .ops import Convert, ToDevice, ToTensor, ToTorchImage, View
from .poisoning import Poison
from .random_resized_crop import RandomResizedCrop
from .replace_label import ReplaceLabel
from .solarization import Solarization
from .translate import RandomTranslate

__all__ = [
    "Augment",
    "AutoAugment",
    "Convert",
    "Cutout",
    "ImageMixup",
    "LabelMixup",
    "MixupToOneHot",
    "ModuleWrapper",
    "NormalizeImage",
    "Poison",
    "RandAugment",
    "RandomBrightness",
    "RandomContrast",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "RandomSaturation",
    "RandomTranslate",
    "RandomVerticalFlip",
    "ReplaceLabel",
    "Solarization",
    "Squeeze",
    "ToDevice",
    "ToTensor",
    "ToTorchImage",
    "TrivialAugmentWide",
    "View",
]

"""Run another library's augmentation on each image: torchvision (``transforms.v2``
or v1), timm's ``create_transform(...)``, albumentations, or any callable.

``Augment(transform)`` is a per-sample operation for the NumPy part of a
pipeline (after a decoder, before ``ToTensor``). Each image reaches the
transform in the layout its library expects, and what comes back is stored as
an H×W×C NumPy image again, like every fastforward image operation, so
``ToTensor()`` and ``ToTorchImage()`` follow as usual:

======================  =========================================  ==========================
library                 the transform receives                      it may return
======================  =========================================  ==========================
torchvision v2          a C×H×W uint8 tensor                         tensor, tv_tensor
torchvision v1, timm    a PIL image (timm's ``create_transform``     PIL image or C×H×W tensor
                        expects one; a one-channel image as ``L``)
albumentations          ``image=`` an H×W×C uint8 array              ``{"image": array}``
anything else           the H×W×C NumPy array                        array, C×H×W tensor or
                                                                     PIL image
======================  =========================================  ==========================

Each transform gets a copy of the image (the batch's rows are not its to change:
a branch of the pipeline may read them too), and each loader a copy of the
transform (``copy.deepcopy``, where it copies), so that seeding it does not
touch your object. A returned tensor is C×H×W (or H×W), torch's layout (what
albumentations' ``ToTensorV2`` gives); a one-channel image may come back
without its channel axis.

Randomness: it keeps the GIL, so the loader runs it in worker processes
(``worker_type='auto'``), and there, before each sample, ``np.random``,
``random`` and torch's default generator are seeded from ``(seed, epoch,
sample, stream)`` (albumentations' own generators too, through
``set_random_seed``, wherever it runs): the same seed gives the same
augmentations whatever the number of worker processes. On threads the global
generators are the user's training loop's, and are left alone
(``fastforward.pipeline.random.globals_are_ours``).
"""

from __future__ import annotations

import contextlib
import copy
import sys
from typing import Any

import numpy as np

from ..pipeline import random
from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import name, require_numpy

INPUTS = ("tensor", "pil", "albumentations", "numpy")


LIBRARIES = (("albumentations", "albumentations"), ("torchvision.transforms.v2", "tensor"),
             ("torchvision.transforms", "pil"), ("timm", "pil"))
"""Module prefixes of the libraries whose input ``guess_input`` knows, first match wins."""


def guess_input(transform: Any) -> str:
    """The input a transform's library expects (see the module docstring): from the
    first class in its type's hierarchy that one of ``LIBRARIES`` defines (a user's
    subclass of ``v2.Transform``, ``v2.Compose`` or albumentations'
    ``ImageOnlyTransform`` is that library's), else, for a container of transforms
    (``torch.nn.Sequential``, a ``Compose``-like object with ``.transforms``),
    from its parts when they agree; else ``'numpy'``."""
    found = _library(transform)
    if found is not None:
        return found
    parts = getattr(transform, "transforms", None)
    if parts is None and callable(getattr(transform, "children", None)):
        try:
            parts = list(transform.children())  # torch.nn.Sequential and other modules
        except Exception:  # not torch's children(): nothing to learn from it
            parts = None
    if isinstance(parts, (list, tuple)):
        guesses = {kind for part in parts
                   if callable(part) and (kind := _library(part)) is not None}
        if len(guesses) == 1:
            return guesses.pop()
    return "numpy"


def _library(transform: Any) -> str | None:
    for cls in type(transform).__mro__:
        module = getattr(cls, "__module__", "") or ""
        for prefix, kind in LIBRARIES:
            if module == prefix or module.startswith(prefix + "."):
                return kind
    return None


class Augment(Operation):
    """Apply *transform* (another library's augmentation) to each image.

    Args:
        transform: a torchvision transform (v2 or v1), timm's
            ``create_transform(...)`` result, an albumentations transform or
            ``Compose``, or any callable taking one image.
        input: how to hand it the image: ``'tensor'`` (C×H×W uint8 torch),
            ``'pil'``, ``'albumentations'`` (``image=`` keyword) or
            ``'numpy'`` (H×W×C uint8); None guesses from the library that
            defines the transform's class or a base class of it (or, for
            ``nn.Sequential`` and ``Compose``-like containers, its parts'):
            ``guess_input``. Give it for a callable of your own that wraps
            another library's transforms.
        output_shape: the H×W×C (or H×W) shape it returns, and
        output_dtype: its dtype; when both are None they are found by
            running the transform once on a blank image. Every image must
            come back this size (end with a fixed-size crop or resize).

    Batches are NumPy ``(B, H, W, C)`` in and out (before ``ToTensor``).
    """

    per_sample = True
    sample_independent = True

    def __init__(self, transform: Any, input: str | None = None,
                 output_shape: tuple[int, ...] | None = None,
                 output_dtype: Any = None) -> None:
        super().__init__()
        if not callable(transform):
            raise TypeError(f"Augment: {transform!r} is not callable")
        self.transform = transform
        self.input = input or guess_input(transform)
        if self.input not in INPUTS:
            raise ValueError(f"Augment: input must be one of {INPUTS}, got {self.input!r}")
        if (output_shape is None) != (output_dtype is None):
            raise ValueError("Augment: give output_shape and output_dtype together")
        self.output_shape = None if output_shape is None else tuple(int(d) for d in output_shape)
        self.output_dtype = None if output_dtype is None else np.dtype(output_dtype)

    def __copy__(self) -> Augment:
        """The loader's copy: its own transform (seeding an albumentations
        ``Compose`` changes it), where the transform can be deep-copied."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        with contextlib.suppress(Exception):  # (a lock, an open file): shared, as given
            clone.transform = copy.deepcopy(self.transform)
        return clone

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        require_numpy(self, previous_state)
        if previous_state.shape is None or len(previous_state.shape) not in (2, 3):
            raise TypeError(f"{name(self)} needs images of shape (H, W[, C]), got "
                            f"{previous_state.shape}")
        shape, dtype = self.output_shape, self.output_dtype
        if shape is None or dtype is None:
            blank = np.zeros(previous_state.shape, previous_state.dtype)
            with random.seeded_globals(0, 0, 0, 0):
                out = self._call(blank, 0)
            shape, dtype = out.shape, out.dtype
        return (State(jit_mode=True, shape=tuple(shape), dtype=np.dtype(dtype)),
                AllocationQuery(tuple(shape), np.dtype(dtype)))

    def apply_sample(self, sample: np.ndarray, destination: np.ndarray, context: BatchContext,
                     position: int) -> np.ndarray:
        """Transform one image into *destination*."""
        seed = 0
        if self.input == "albumentations":  # only its own generators need a seed of their own
            seed = int(random.random_bits(context.seed, context.epoch, context.indices[
                position:position + 1], context.stream, 1)[0, 0] >> 33)
        value = self._transform(sample, seed)
        if _copy_tensor(value, destination):
            return destination
        out = _as_image(value)
        if (*out.shape, 1) == destination.shape:  # a one-channel image, its axis dropped
            out = out[..., None]
        if out.shape != destination.shape:
            raise ValueError(f"{_describe(self.transform)} returned an image of shape "
                             f"{out.shape}, not {destination.shape}: give output_shape, or end "
                             "the transform with a fixed-size crop or resize")
        try:
            np.copyto(destination, out, casting="same_kind")
        except TypeError:
            raise TypeError(f"{_describe(self.transform)} returned {out.dtype} images, not "
                            f"{destination.dtype}: give output_shape and output_dtype") from None
        return destination

    def _call(self, image: np.ndarray, seed: int) -> np.ndarray:
        out = _as_image(self._transform(image, seed))
        if out.ndim == 2 and image.ndim == 3 and image.shape[2] == 1:
            out = out[..., None]  # one channel in, one out: its axis kept
        return out

    def _transform(self, image: np.ndarray, seed: int) -> Any:
        """What the transform returns for *image*, as it returns it."""
        transform = self.transform
        if self.input == "pil":
            from PIL import Image

            if image.ndim == 3 and image.shape[2] == 1:  # one channel: mode L (or I;16)
                image = image[:, :, 0]
            return transform(Image.fromarray(image))  # (a copy)
        image = np.array(image)  # its own copy (contiguous: torch takes no negative strides)
        if self.input == "albumentations":
            if hasattr(transform, "set_random_seed"):  # albumentations' own generators
                transform.set_random_seed(seed)
            return transform(image=image)["image"]
        if self.input == "tensor":
            return transform(_chw(image))
        return transform(image)

    def __repr__(self) -> str:
        return f"Augment({self.transform!r}, input={self.input!r})"


def _as_image(value: Any) -> np.ndarray:
    """What a transform returned, as an H×W×C (or H×W) NumPy image."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "permute"):  # a torch tensor (tv_tensors too)
        tensor = value.detach().cpu()
        if tensor.ndim == 3:
            tensor = tensor.permute(1, 2, 0)  # C×H×W -> H×W×C
        return tensor.contiguous().numpy()
    if hasattr(value, "mode") and hasattr(value, "size"):  # a PIL image
        return np.asarray(value)
    raise TypeError(f"the transform returned a {type(value).__name__}, not an image")


def _chw(image: np.ndarray) -> Any:
    """An H×W×C (or H×W) array as a C×H×W (or H×W) torch tensor: a view, no copy."""
    import torch

    tensor = torch.from_numpy(image)
    return tensor.permute(2, 0, 1) if image.ndim == 3 else tensor


def _copy_tensor(value: Any, destination: np.ndarray) -> bool:
    """Copy a C×H×W (or H×W) CPU tensor of *destination*'s dtype and shape straight
    into it (one copy, not two through ``_as_image``); False for anything else."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(value, torch.Tensor) or value.requires_grad:
        return False
    if value.device.type != "cpu" or value.ndim != destination.ndim or value.ndim not in (2, 3):
        return False
    try:  # a dtype torch cannot wrap (non-native byte order, …): NumPy's path
        view = _chw(destination)
    except (TypeError, ValueError):
        return False
    if value.dtype != view.dtype or value.shape != view.shape:
        return False
    view.copy_(value)
    return True


def _describe(transform: Any) -> str:
    return type(transform).__name__

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
sample, stream)``: the same seed gives the same augmentations whatever the
number of worker processes. On threads the global generators are the user's
training loop's, and are left alone (``fastforward.pipeline.random.globals_are_ours``).
The generators the transform holds itself are seeded from the same key before
each sample, wherever it runs (``own_generators``: NumPy ``Generator`` and
``RandomState`` objects, ``random.Random`` ones, torch ``Generator`` objects on
the CPU, albumentations transforms through ``set_random_seed``, found in its
attributes, containers, closures and ``functools.partial`` arguments): each
loader copies the transform for every epoch, so a generator of its own left as
it was would give every epoch, and every worker, the same draws.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import random as random_module
import sys
import types
import warnings
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
            another library's transforms (one that holds or names
            torchvision v2 transforms, and is guessed ``'numpy'``, is warned
            about: v2 transforms return NumPy arrays unchanged).
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
        if input is None and self.input == "numpy" and _reaches_v2(transform):
            # v2 transforms return what they do not know (a NumPy array) unchanged
            warnings.warn(
                f"Augment: {_describe(transform)} calls torchvision.transforms.v2 "
                "transforms, and will be given H×W×C NumPy images (input='numpy', as "
                "for any callable of your own), which many v2 transforms (flips, "
                "ColorJitter, Normalize) return unchanged without a word: give "
                "input='tensor' (C×H×W uint8 tensors), or "
                "input='numpy' if it converts the images itself", UserWarning, stacklevel=2)
        if self.input not in INPUTS:
            raise ValueError(f"Augment: input must be one of {INPUTS}, got {self.input!r}")
        if (output_shape is None) != (output_dtype is None):
            raise ValueError("Augment: give output_shape and output_dtype together")
        self.output_shape = None if output_shape is None else tuple(int(d) for d in output_shape)
        self.output_dtype = None if output_dtype is None else np.dtype(output_dtype)
        self._generators: list[Any] | None = None  # own_generators(transform), once used

    def __copy__(self) -> Augment:
        """The loader's copy: its own transform (seeding its generators changes
        it), where the transform can be deep-copied."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._generators = None  # (found in its own transform, when first used)
        with contextlib.suppress(Exception):  # (a lock, an open file): shared, as given
            clone.transform = copy.deepcopy(self.transform)
        return clone

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_generators"] = None  # found again where it is unpickled
        return state

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        require_numpy(self, previous_state)
        if previous_state.shape is None or len(previous_state.shape) not in (2, 3):
            raise TypeError(f"{name(self)} needs images of shape (H, W[, C]), got "
                            f"{previous_state.shape}")
        shape, dtype = self.output_shape, self.output_dtype
        if shape is None or dtype is None:
            blank = np.zeros(previous_state.shape, previous_state.dtype)
            try:
                with random.seeded_globals(0, 0, 0, 0):
                    out = self._call(blank, 0)
            except BaseException as exc:  # (a KeyboardInterrupt is no trial's failure)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                why = (f"running {_describe(self.transform)} once on a blank (all zero) "
                       f"{previous_state.shape} image, to learn the shape and dtype it "
                       "returns, failed: give Augment(..., output_shape=..., "
                       "output_dtype=...) to skip this")
                if isinstance(exc, (StopIteration, SystemExit)):  # as itself it would end
                    raise RuntimeError(f"{why} ({type(exc).__name__}: {exc})") from exc
                exc.add_note(why)
                raise
            shape, dtype = out.shape, out.dtype
        return (State(jit_mode=True, shape=tuple(shape), dtype=np.dtype(dtype)),
                AllocationQuery(tuple(shape), np.dtype(dtype)))

    def apply_sample(self, sample: np.ndarray, destination: np.ndarray, context: BatchContext,
                     position: int) -> np.ndarray:
        """Transform one image into *destination*."""
        seed = int(random.random_bits(context.seed, context.epoch, context.indices[
            position:position + 1], context.stream, 1)[0, 0])
        value = self._transform(sample, seed)
        if _copy_tensor(value, destination):
            return destination
        out = _as_image(value, self.transform)
        if (*out.shape, 1) == destination.shape:  # a one-channel image, its axis dropped
            out = out[..., None]
        if out.shape != destination.shape:
            where = ("output_shape" if self.output_shape is not None
                     else "its result on a blank image when the loader was made")
            raise ValueError(f"{_describe(self.transform)} returned an image of shape "
                             f"{out.shape}, not {destination.shape} ({where}): a batch holds "
                             "images of one size, so end the transform with a fixed-size "
                             "crop or resize (v2.RandomResizedCrop(224), A.Resize(224, 224)), "
                             "or give the output_shape it always returns")
        if not _castable(out.dtype, destination.dtype):
            raise TypeError(f"{_describe(self.transform)} returned {out.dtype} images, not "
                            f"{destination.dtype}{_cast_hint(out.dtype, destination.dtype)}")
        narrowed = out.dtype != destination.dtype and out.dtype.kind == "f"
        with np.errstate(over="ignore" if narrowed else "warn"):
            np.copyto(destination, out, casting="unsafe")  # (checked just above)
        if narrowed and not np.isfinite(destination).all() and (
                np.isfinite(out) & ~np.isfinite(destination)).any():
            largest = float(np.finfo(destination.dtype).max)
            raise ValueError(f"{_describe(self.transform)} returned {out.dtype} values beyond "
                             f"what {destination.dtype} holds (±{largest:g}): they would be "
                             f"inf in the batch; make the transform return {destination.dtype} "
                             "values in its range (normalise first), or give output_dtype")
        return destination

    def _call(self, image: np.ndarray, seed: int) -> np.ndarray:
        out = _as_image(self._transform(image, seed), self.transform)
        if out.ndim == 2 and image.ndim == 3:
            # one channel out of an H×W×C image (grayscale), its axis dropped: kept,
            # so that ToTorchImage gives B×1×H×W
            out = out[..., None]
        return out

    def _transform(self, image: np.ndarray, seed: int) -> Any:
        """What the transform returns for *image*, as it returns it, its own
        generators seeded from *seed* (64 bits) first."""
        transform = self.transform
        generators = getattr(self, "_generators", None)
        if generators is None:
            generators = self._generators = own_generators(transform)
        if generators:
            _seed_generators(generators, seed)
        if self.input == "pil":
            from PIL import Image

            given = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
            value = transform(Image.fromarray(given))  # (one channel: mode L or I;16)
        elif self.input == "albumentations":
            value = transform(image=np.array(image))["image"]  # (its own copy)
        elif self.input == "tensor":
            value = transform(_chw(np.array(image)))  # (torch takes no negative strides)
        else:
            value = transform(np.array(image))
        _refuse_hwc_tensor(value, image, transform)
        return value

    def __repr__(self) -> str:
        return f"Augment({self.transform!r}, input={self.input!r})"


OWN_GENERATORS_LIMIT = 10_000
"""The most objects ``own_generators`` looks through in one transform."""


def own_generators(transform: Any) -> list[Any]:
    """The random generators *transform* holds, which ``Augment`` seeds per sample:
    NumPy ``Generator`` and ``RandomState`` objects, ``random.Random`` ones (not the
    module's own), torch ``Generator`` objects on the CPU, and albumentations
    transforms (anything whose class albumentations defines and that has
    ``set_random_seed``: it seeds its own, and is not looked into); not the global
    generators, reached through an attribute (``np.random``'s, ``random``'s,
    ``torch.default_generator``), which are seeded as globals. Found through
    instances' attributes, lists, tuples, sets and dicts, ``functools.partial``
    objects, bound methods and functions' closures and defaults; not through
    modules or classes (a module's generator is shared with its other users)."""
    torch = sys.modules.get("torch")
    found: list[Any] = []

    def generator(obj: Any) -> bool:
        # the global generators (reached through an attribute) are seeded as globals,
        # where they are the loader's to seed
        if isinstance(obj, (np.random.Generator, np.random.RandomState)):
            if obj is not getattr(np.random.mtrand, "_rand", None):
                found.append(obj)
        elif isinstance(obj, random_module.Random):
            if obj is not getattr(random_module, "_inst", None):
                found.append(obj)
        elif torch is not None and isinstance(obj, torch.Generator):
            if obj.device.type == "cpu" and obj is not torch.default_generator:
                found.append(obj)
        elif torch is not None and isinstance(obj, torch.Tensor):
            pass
        elif callable(getattr(obj, "set_random_seed", None)) and type(
                obj).__module__.startswith("albumentations"):
            found.append(obj)
        else:
            return False
        return True  # not looked into

    _walk(transform, generator)
    found.reverse()  # (the order they were met in, depth first from the last attribute)
    return found


def _walk(transform: Any, stop: Any, names: bool = False) -> None:
    """Call *stop(obj)* on each object *transform* holds, and look into those for
    which it returns False (``own_generators``' search, at most
    ``OWN_GENERATORS_LIMIT`` objects taken, whatever they are). With *names*, the
    globals that a function's code names (its nested functions' and
    comprehensions' too) are looked into, and a callable object's ``__call__``
    (a module-level transform that a function calls)."""
    seen: set[int] = set()
    stack = [transform]
    taken = 0
    while stack and taken < OWN_GENERATORS_LIMIT:
        obj = stack.pop()
        taken += 1
        if id(obj) in seen or obj is None or isinstance(
                obj, (str, bytes, bytearray, int, float, complex, np.ndarray, np.generic,
                      type, types.ModuleType)):
            continue
        seen.add(id(obj))
        if stop(obj):
            continue
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, functools.partial):
            stack.extend((obj.func, *obj.args, *obj.keywords.values()))
        elif isinstance(obj, types.MethodType):
            stack.extend((obj.__self__, obj.__func__))
        elif isinstance(obj, types.FunctionType):
            stack.extend(cell.cell_contents for cell in obj.__closure__ or ()
                         if _filled(cell))
            stack.extend(obj.__defaults__ or ())
            stack.extend((obj.__kwdefaults__ or {}).values())
            if names:
                stack.extend(obj.__globals__[name] for name in _names(obj.__code__)
                             if name in obj.__globals__)
        else:
            attributes = getattr(obj, "__dict__", None)
            if isinstance(attributes, dict):  # (a __getattr__ may answer anything)
                stack.extend(attributes.values())
            call = vars(type(obj)).get("__call__") if names else None
            if isinstance(call, types.FunctionType):  # (the class's own, not inherited)
                stack.append(call)


def _names(code: types.CodeType) -> set[str]:
    """The global names *code* and the code objects it holds (nested functions,
    lambdas, comprehensions before Python 3.12 inlined them) refer to."""
    found = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            found |= _names(constant)
    return found


def _reaches_v2(transform: Any) -> bool:
    """Whether *transform* holds or names torchvision v2 transforms (``_walk``),
    none of which takes a NumPy array (``v2.ToImage`` does: a function that starts
    with it converts the images itself). Never an error: it only decides a
    warning."""
    found: list[Any] = []

    def v2(obj: Any) -> bool:
        if _library(obj) == "tensor":
            found.append(obj)
        return False  # (looked into: a Compose's parts)

    try:
        _walk(transform, v2, names=True)
        return bool(found) and not any(
            isinstance(kind, type) and issubclass(np.ndarray, kind)
            for part in found for kind in getattr(part, "_transformed_types", ()))
    except Exception:  # a strange object on the way: no warning
        return False


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # an empty cell (a variable assigned later)
        return False
    return True


def _seed_generators(generators: list[Any], seed: int) -> None:
    """Seed each of *generators* (``own_generators``) from the sample's *seed*, each
    from its own 64 bits of it."""
    torch = sys.modules.get("torch")
    bits = np.random.SeedSequence(seed).generate_state(len(generators), np.uint64)
    for generator, value in zip(generators, bits.tolist(), strict=True):
        if isinstance(generator, np.random.Generator):
            bit_generator = generator.bit_generator
            bit_generator.state = type(bit_generator)(value).state
        elif isinstance(generator, np.random.RandomState):
            generator.seed(value >> 32)
        elif isinstance(generator, random_module.Random):
            generator.seed(value)
        elif torch is not None and isinstance(generator, torch.Generator):
            generator.manual_seed(value >> 1)
        else:  # albumentations
            generator.set_random_seed(value >> 33)


def _as_image(value: Any, transform: Any) -> np.ndarray:
    """What *transform* returned, as an H×W×C (or H×W) NumPy image."""
    if isinstance(value, np.ndarray) or (hasattr(value, "detach") and hasattr(value, "permute")):
        if value.ndim not in (2, 3):  # a batch of one (unsqueeze(0)) would be a batch's sample
            layout = "H×W×C" if isinstance(value, np.ndarray) else "C×H×W"
            raise ValueError(
                f"{_describe(transform)} returned an image of shape {tuple(value.shape)}: "
                f"one image is {layout} (or H×W); drop any batch axis (.squeeze(0))")
        if isinstance(value, np.ndarray):
            return value
        tensor = value.detach().cpu()  # a torch tensor (tv_tensors too)
        if tensor.ndim == 3:
            tensor = tensor.permute(1, 2, 0)  # C×H×W -> H×W×C
        return tensor.contiguous().numpy()
    if hasattr(value, "mode") and hasattr(value, "size"):  # a PIL image
        return np.asarray(value)
    hint = ""
    if isinstance(value, (tuple, list, dict)):  # (image, target), albumentations' dict…
        hint = (": Augment hands it one image and takes one image back; wrap it in a "
                "function that returns the image alone")
    raise TypeError(f"{_describe(transform)} returned a {type(value).__name__}, not an "
                    f"image (a NumPy array, a tensor or a PIL image){hint}")


def _refuse_hwc_tensor(value: Any, image: np.ndarray, transform: Any) -> None:
    """A tensor returned H×W×C (``torch.from_numpy`` of an image) would be taken as
    C×H×W, torch's layout, and its axes scrambled: refused, naming the layout."""
    shape = getattr(value, "shape", None)
    if (image.ndim != 3 or isinstance(value, np.ndarray) or not hasattr(value, "permute")
            or shape is None or len(shape) != 3):
        return
    channels = image.shape[2]
    if shape[2] == channels and shape[0] != channels:
        raise TypeError(
            f"{_describe(transform)} returned a tensor of shape {tuple(shape)}, H×W×C it "
            f"seems (the image has {channels} channels): a tensor is taken as C×H×W, "
            "torch's layout; return .permute(2, 0, 1) of it, or a NumPy array")


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


def _castable(given: np.dtype, wanted: np.dtype) -> bool:
    """Whether an image of dtype *given* may go into a batch of *wanted*: the same
    dtype, a cast that keeps every value (bool or uint8 into a wider integer), or
    floats into narrower floats; never integers into floats (a transform that gives
    uint8 for some images and floats in [0, 1] for others mixed the two scales in
    one batch) nor integers into narrower ones (uint16 into uint8 wrapped round)."""
    if given == wanted or (given.kind == "f" and wanted.kind == "f"):
        return True
    if given.kind in "iu" and wanted.kind in "fc":
        return False
    return bool(np.can_cast(given, wanted, "safe"))


def _cast_hint(given: np.dtype, wanted: np.dtype) -> str:
    """What to do about an image of dtype *given* in a batch of *wanted*."""
    if given.kind in "iu" and wanted.kind in "fc":
        return (" (integer images among float ones mix two scales, 0-255 and 0-1): make "
                "the transform return one dtype for every image (end it with "
                "v2.ToDtype(torch.float32, scale=True), or A.ToFloat()), or give "
                "output_shape and output_dtype it always returns")
    if given.kind in "iu" and wanted.kind in "iu":
        return (f" ({wanted} cannot hold every {given} value): make the transform return "
                f"{wanted} for every image, or give output_shape and output_dtype it "
                "always returns")
    return ": give output_shape and output_dtype it always returns"


def _describe(transform: Any) -> str:
    """A function or a class by its name (a ``functools.partial`` by its function's),
    anything else by its class's."""
    if isinstance(transform, functools.partial):
        return f"partial({_describe(transform.func)})"
    name = getattr(transform, "__qualname__", None)  # (functions, classes, NumPy's functions)
    if isinstance(name, str):
        return name
    return type(transform).__name__

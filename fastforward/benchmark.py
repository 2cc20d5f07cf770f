"""Throughput measurements shared by ``fastforward demo``, ``fastforward bench`` and ``bench/``.

Everything is measured side by side on the same file: the decode limit
(simplejpeg decoding the stored JPEGs on every core, threads), and the
loader with a named pipeline. Figures are images per second; what matters
is their ratios, since the machines this runs on are shared and noisy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ._bench_ops import python_op
from .errors import DecodeError
from .fields import RGBImageField
from .fields.rgb_image import IMAGE_MODES, require_simplejpeg
from .pipeline import AllocationQuery, Operation, State
from .reader import Reader
from .utils import TORCHVISION_HINT, default_workers, install_hint


@dataclass(frozen=True)
class Measurement:
    """One throughput figure."""

    name: str
    images: int
    seconds: float
    rounds: tuple[float, ...] = field(default=(), compare=False)
    """Images/s of each round, in order, where ``side_by_side`` took several: the
    rounds of two figures of one call were taken in turn, and pair up."""

    @property
    def rate(self) -> float:
        """Images per second."""
        return self.images / self.seconds if self.seconds > 0 else 0.0


def side_by_side(measures: dict[str, Callable[[], Measurement]],
                 rounds: int = 1) -> dict[str, Measurement]:
    """Run each measurement once per round, in turn, and keep each one's median.

    On a shared machine the speed drifts from minute to minute; figures taken
    in alternation, several times, give ratios that hold still. Each round
    starts one measurement further on (round 1 with the second, ...), so that
    no figure is always taken first, or always right after the same one.
    """
    taken: dict[str, list[Measurement]] = {name: [] for name in measures}
    names = list(measures)
    for round_ in range(max(1, rounds)):
        start = round_ % len(names) if names else 0
        for name in names[start:] + names[:start]:
            taken[name].append(measures[name]())
    return {name: replace(sorted(runs, key=lambda m: m.rate)[len(runs) // 2],
                          rounds=tuple(m.rate for m in runs))
            for name, runs in taken.items()}


def paired_ratios(ours: Measurement, other: Measurement) -> list[float]:
    """*ours* ÷ *other*, round by round, where both come from one ``side_by_side``
    call with several rounds (each round's two figures taken minutes apart at
    most, so they share the machine's load); else an empty list."""
    if len(ours.rounds) < 2 or len(ours.rounds) != len(other.rounds):
        return []
    return [a / b for a, b in zip(ours.rounds, other.rounds, strict=True) if b > 0]


def image_field(reader: Reader) -> str:
    """The name of the file's first RGBImageField."""
    for name, handler in reader.handlers.items():
        if isinstance(handler, RGBImageField):
            return name
    raise ValueError(f"{reader.fname} has no RGBImageField")


def stored_image_count(reader: Reader, field: str, mode: str) -> int:
    """How many images of *field* are stored as *mode* (``'jpg'`` or ``'raw'``)."""
    column = reader.metadata[f"f{reader.field_names.index(field)}"]
    return int(np.count_nonzero(column["mode"] == IMAGE_MODES[mode]))


def stored_jpegs(reader: Reader, field: str, limit: int | None = None) -> list[bytes]:
    """The JPEG payloads of *field*, as stored (at most *limit*), each decoded once
    first (a damaged one is a ``DecodeError`` naming the file, sample and field,
    not an error of the timing loop naming nothing)."""
    sj = require_simplejpeg()
    index = reader.field_names.index(field)
    column = reader.metadata[f"f{index}"]
    samples = np.flatnonzero(column["mode"] == IMAGE_MODES["jpg"])[:limit]
    blobs = []
    for sample in samples.tolist():
        blob = bytes(reader.payload(int(column[sample]["data_ptr"]), sample))
        try:
            sj.decode_jpeg(blob, fastdct=True)
        except Exception as exc:  # simplejpeg's ValueError
            raise DecodeError(f"{reader.fname}: sample {sample}, field {field!r}: cannot "
                              f"decode its JPEG: {exc}") from None
        blobs.append(blob)
    return blobs


def decode_limit(blobs: list[bytes], threads: int | None = None, fastdct: bool = False,
                 repeat: int = 1, reuse_buffers: bool = False) -> Measurement:
    """simplejpeg decoding *blobs* on *threads* threads (default: every core).

    The accurate IDCT by default (the "decode limit"); ``fastdct=True`` is the
    variant the crop decoders (and FFCV's) use. Each decode returns a new array,
    as a loader's would be copied into its batch; with *reuse_buffers* each
    thread decodes into one buffer of its own instead (no allocation, no page
    faults: the strictest ceiling of whole-image decoding).
    """
    sj = require_simplejpeg()
    threads = threads or default_workers()
    chunks = [blobs[i::threads] for i in range(threads)]
    largest = max((int(np.prod(sj.decode_jpeg_header(b)[:2])) * 3 for b in blobs),
                  default=1) if reuse_buffers else 0  # headers read only for the buffers

    def work(chunk: list[bytes]) -> None:
        buffer = np.empty(largest, np.uint8) if reuse_buffers else None
        for _ in range(repeat):
            for blob in chunk:
                sj.decode_jpeg(blob, fastdct=fastdct, buffer=buffer)

    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(work, chunks))
        seconds = time.perf_counter() - start
    name = ("decode limit (simplejpeg" + (", fastdct" if fastdct else "")
            + (", reused buffers" if reuse_buffers else "") + f", {threads} threads)")
    return Measurement(name, len(blobs) * repeat, seconds)


PIPELINES = {
    "center_crop": "CenterCrop(224); uint8",
    "train": "RandomResizedCrop(192) + flip + float16 (needs torch)",
    "train_numpy": "the same up to the flip",
    "train_trivialaugment": "train with TrivialAugmentWide() after the flip",
    "train_randaugment": "train with RandAugment(2, 9) after the flip",
    "train_autoaugment": "train with AutoAugment() (ImageNet policy) after the flip",
    "simple": "images as stored",
    "python_op": "RandomResizedCrop(192) + flip + a per-sample NumPy operation of about 50 µs",
    "tv_trivialaugment": "RandomResizedCrop(192) + flip + torchvision's TrivialAugmentWide per "
                         "sample (needs torchvision)",
}
"""The benchmark pipelines, by name (``loader_pipelines``), with one line each."""

POLICIES = {"train_trivialaugment": "TrivialAugmentWide", "train_randaugment": "RandAugment",
            "train_autoaugment": "AutoAugment"}
"""The pipelines with an augmentation policy, and its class in ``fastforward.transforms``."""


def loader_pipelines(reader: Reader, field: str, name: str) -> dict[str, Any]:
    """The ``pipelines`` of a named benchmark pipeline, reading *field* only.

    - ``center_crop``: CenterCrop(224, ratio 224/256), uint8 (pipeline a);
    - ``train``: RandomResizedCrop(192) + RandomHorizontalFlip + ToTensor +
      ToTorchImage + Convert(float16) (pipeline b; needs torch);
    - ``train_numpy``: the same up to the flip, as NumPy (no torch needed);
    - ``train_trivialaugment``, ``train_randaugment``, ``train_autoaugment``:
      ``train`` with ``TrivialAugmentWide()``, ``RandAugment(2, 9)`` or
      ``AutoAugment()`` after the flip (on the uint8 images, before ToTensor);
    - ``simple``: the stored images as they are (small raw images, pipeline c);
    - ``python_op``: RandomResizedCrop(192) + flip + ``PythonOp`` (a per-sample
      NumPy operation of about 50 µs that keeps the GIL: process workers);
    - ``tv_trivialaugment``: RandomResizedCrop(192) + flip + torchvision's
      ``TrivialAugmentWide`` per sample, through ``Augment`` (needs torchvision).
    """
    from . import transforms
    from .fields.decoders import (
        CenterCropRGBImageDecoder,
        RandomResizedCropRGBImageDecoder,
        SimpleRGBImageDecoder,
    )
    from .transforms import Convert, RandomHorizontalFlip, ToTensor, ToTorchImage

    if name == "center_crop":
        ops: list[Any] = [CenterCropRGBImageDecoder((224, 224), 224 / 256)]
    elif name == "train_numpy":
        ops = [RandomResizedCropRGBImageDecoder((192, 192)), RandomHorizontalFlip()]
    elif name == "train" or name in POLICIES:
        try:
            import torch
        except ImportError as exc:
            raise ImportError(f"the {name} pipeline ends in torch tensors: "
                              f"{install_hint('torch')}; or use train_numpy") from exc

        policy = [] if name == "train" else [getattr(transforms, POLICIES[name])()]
        ops = [RandomResizedCropRGBImageDecoder((192, 192)), RandomHorizontalFlip(), *policy,
               ToTensor(), ToTorchImage(), Convert(torch.float16)]
    elif name == "simple":
        ops = [SimpleRGBImageDecoder()]
    elif name == "python_op":
        ops = [RandomResizedCropRGBImageDecoder((192, 192)), RandomHorizontalFlip(), PythonOp()]
    elif name == "tv_trivialaugment":
        try:
            from torchvision.transforms import v2
        except ImportError as exc:
            raise ImportError("the tv_trivialaugment pipeline runs torchvision's "
                              f"TrivialAugmentWide: {TORCHVISION_HINT}") from exc
        from .transforms import Augment

        ops = [RandomResizedCropRGBImageDecoder((192, 192)), RandomHorizontalFlip(),
               Augment(v2.TrivialAugmentWide())]
    else:
        raise ValueError(f"unknown benchmark pipeline {name!r}")
    return {n: (ops if n == field else None) for n in reader.field_names}


class PythonOp(Operation):
    """``fastforward._bench_ops.python_op`` on each image (a Python operation)."""

    per_sample = True

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        assert previous_state.shape is not None  # after an image decoder
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)

    def apply_sample(self, sample: np.ndarray, destination: np.ndarray, context: Any,
                     position: int) -> np.ndarray:
        destination[...] = python_op(sample)
        return destination


def drop_from_page_cache(fname: str | os.PathLike[str]) -> None:
    """Ask the kernel to forget *fname*'s cached pages (Linux; clean pages of a
    file nothing maps, which a file between two loaders is)."""
    if not hasattr(os, "posix_fadvise"):
        raise OSError("posix_fadvise is not available on this system")
    fd = os.open(fname, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_fraction(fname: str | os.PathLike[str]) -> float:
    """The fraction of *fname*'s pages in the page cache now (``mincore``; Linux)."""
    import ctypes
    import mmap

    size = os.path.getsize(fname)
    if size == 0:
        return 1.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    pages = -(-size // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(fname, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {fname} failed")
        try:
            if libc.mincore(ctypes.c_void_p(address), size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {fname} failed")
        finally:
            libc.munmap(ctypes.c_void_p(address), size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec) / pages


def warmup_batches(total: int, ring_slots: int) -> int:
    """Batches left out of a throughput figure: one per ring slot, at most a third.

    A slot's memory is faulted in (the kernel zeroes each page) by the first
    batch written into it; a training run pays that once, in its first
    seconds, so steady-state figures leave those batches out. The latency of
    the first batch is measured on its own (``first_batch_seconds``).
    """
    return max(1, min(ring_slots, total // 3))


def steady_state(batches: Any, skip: int = 1) -> tuple[tuple[int, float], tuple[int, float]]:
    """Images and seconds of one epoch at steady state, and of its start.

    The epoch's first *skip* batches (at least one) are its start: the
    threads starting, the first batch's latency, and whatever a loader does
    once per epoch. Steady state is the rest, timed from the arrival of the
    last batch of the start to the arrival of the last batch. Every loader in
    ``bench/`` is measured this way, so that an epoch's start-up, whatever it
    costs each loader, weighs on none of the figures. Returns
    ``((steady images, steady seconds), (start images, start seconds))``.
    """
    began = time.perf_counter()
    images, seen, start = 0, 0, None
    start_images = 0
    for batch in batches:
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        seen += 1
        if seen <= max(1, skip):
            start_images += len(first)
            start = time.perf_counter()
            continue
        images += len(first)
    end = time.perf_counter()
    if start is None:
        return (0, 0.0), (0, end - began)
    return (images, end - start), (start_images, start - began)


#: Batches an epoch needs after its first for a steady-state figure. Fewer, and
#: the batches prepared ahead while the consumer took the first one (3 by
#: default, ``batches_ahead``) are most of what is timed: a 600-image file in
#: batches of 256 once gave 272,849 images/s, one gap of a millisecond between
#: two batches that were both ready. Such epochs are timed whole, start-up
#: included, and the figure's name says so.
STEADY_MIN_BATCHES = 5


def loader_throughput(fname: str | os.PathLike[str], pipeline: str, num_workers: int = -1,
                      batch_size: int = 256, epochs: int = 1, order: Any = None,
                      os_cache: bool = True, warmup_epochs: int = 0,
                      **loader_kwargs: Any) -> Measurement:
    """Images/s of ``Loader`` over *epochs* epochs of *fname* with a named pipeline,
    at steady state: each epoch's first batch (the first epoch's first
    ``warmup_batches``) left out, see ``steady_state``. Epochs of fewer than
    ``STEADY_MIN_BATCHES`` + 1 batches are timed whole, with their start-up
    (the figure's name ends "with start-up"); a file that makes no batch at
    all is a ``ValueError``.

    With *warmup_epochs*, that many whole epochs run first and are not counted,
    as ``bench/``'s FFCV baseline runs one (its JIT compilation): the ring's
    slots are then all faulted in before the clock starts, however short the
    epoch (``warmup_batches`` leaves out at most a third of an epoch; on this
    project's virtual machine a fresh ring cost 1.45-1.59 s of kernel time
    right after another process had freed its memory, 0.07-0.19 s otherwise:
    ``bench/after_another_process.py``). Not for cold-cache figures: the
    warm-up reads the file.
    """
    from .loader import Loader, OrderOption

    reader = Reader(fname, custom_handlers=loader_kwargs.get("custom_fields"))
    field = image_field(reader)
    if reader.num_samples == 0:
        raise ValueError(f"{fname} holds no samples")
    loader = Loader(fname, batch_size=batch_size, num_workers=num_workers,
                    order=order or OrderOption.RANDOM, seed=0, os_cache=os_cache,
                    pipelines=loader_pipelines(reader, field, pipeline), **loader_kwargs)
    if len(loader) == 0:
        raise ValueError(f"{fname}: {reader.num_samples} samples make no batch of {batch_size} "
                         "(the last, partial batch is dropped): use a smaller batch size")
    with loader:
        for _ in range(warmup_epochs):
            for _ in loader:
                pass
        # the first epoch's first batches fault the ring's slots in (see warmup_batches)
        skip = warmup_batches(len(loader), loader.ring_slots) if warmup_epochs == 0 else 1
        steady, whole = [0, 0.0], [0, 0.0]
        for epoch in range(epochs):
            counted, start = steady_state(loader, skip if epoch == 0 else 1)
            steady[0], steady[1] = steady[0] + counted[0], steady[1] + counted[1]
            whole[0] += counted[0] + start[0]
            whole[1] += counted[1] + start[1]
    kind = loader.workers.kind + ("" if loader.num_workers == 1 else
                                  "es" if loader.workers.kind == "process" else "s")
    name = f"fastforward {pipeline} ({loader.num_workers} {kind})"
    if len(loader) - 1 < STEADY_MIN_BATCHES or steady[0] == 0:  # no steady state to take
        return Measurement(f"{name}, with start-up", int(whole[0]), whole[1])
    return Measurement(name, int(steady[0]), steady[1])


def first_batch_seconds(fname: str | os.PathLike[str], pipeline: str,
                        batch_size: int = 256) -> float:
    """Seconds from creating a Loader to holding its first batch."""
    from .loader import Loader, OrderOption

    start = time.perf_counter()
    reader = Reader(fname)
    loader = Loader(fname, batch_size=batch_size, order=OrderOption.RANDOM, seed=0,
                    pipelines=loader_pipelines(reader, image_field(reader), pipeline))
    with loader:
        next(iter(loader))
        return time.perf_counter() - start


def table(rows: list[Measurement], reference: Measurement | None = None,
          write: Callable[[str], None] = print) -> None:
    """Print images/s, and each as a ratio of *reference*."""
    width = max(len(r.name) for r in rows)
    for row in rows:
        ratio = f"   {row.rate / reference.rate:5.2f}× of {reference.name.split(' (')[0]}" \
            if reference is not None and reference.rate > 0 and row is not reference else ""
        write(f"  {row.name:<{width}}  {row.rate:>9,.0f} images/s{ratio}")

"""``Operation``: one step of a pipeline, in plain Python (no numba).

An operation declares what it turns its input into
(``declare_state_and_memory``) and then transforms whole batches
(``apply``) or, with ``per_sample = True``, one sample at a time
(``apply_sample``). Batches are NumPy arrays before ``ToTensor`` and torch
tensors after it. Randomness comes from the context, keyed by
``(seed, epoch, sample index)``, so results do not depend on ``num_workers``.

Example, a custom operation that zeroes one corner of every image::

    class PickACorner(Operation):
        def declare_state_and_memory(self, previous_state):
            return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)

        def apply(self, images, destination, context):
            destination[:] = images
            corner = context.uniform(1)[:, 0] < 0.5
            destination[corner, :8, :8] = 0
            return destination
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .._ext.collate import gather_into
from ..errors import annotate
from ..utils import same_memory
from . import random
from .allocation_query import AllocationQuery
from .state import State

Allocation = AllocationQuery | Sequence[AllocationQuery] | None


@dataclass
class BatchContext:
    """What an operation knows about the batch it transforms.

    Attributes:
        indices: the dataset indices of the batch's samples, in order.
        epoch: the epoch (as ``Loader`` counts them, from 0).
        seed: the loader's seed.
        stream: this operation's random stream (stable per pipeline position).
        batch_index: the batch's position in the epoch.
    """

    indices: np.ndarray
    epoch: int
    seed: int
    stream: int = 0
    batch_index: int = 0
    data: Any = field(default=None, repr=False)  # the batch's payloads (decoders read them)
    copies: Any = field(default=None, repr=False)  # the loader's copy thread, when allowed
    geometry: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """Per followed pipeline, its samples' ``pipeline.geometry.GEOMETRY`` rows."""
    geometry_out: np.ndarray | None = field(default=None, repr=False)
    """Where a decoder that publishes geometry writes its samples' rows (None: nobody
    follows it)."""
    progress: np.ndarray | None = field(default=None, repr=False)
    """On a worker process, the shared cells where a per-sample operation or a
    decoder notes the sample it starts (``progress[1]``, through ``note_sample``,
    or in a compiled range kernel): a worker that crashes or stalls is then
    reported with its sample. None elsewhere."""

    def gather_into(self, source: np.ndarray, offsets: np.ndarray, sizes: np.ndarray,
                    rows: np.ndarray) -> None:
        """Copy record ``i`` of *source* into row ``i`` of *rows* (``collate.gather_into``).

        Where the loader allows it (no operation of the pipeline reads the rows:
        see ``Operation.reads_input``), the copy runs on the loader's copy
        threads and this returns at once: the rows are not ready yet. A decoder
        that reads or changes them afterwards calls ``wait_for_copies()`` first.
        The loader waits for the copies before handing the batch over.
        """
        if self.copies is None:
            gather_into(source, offsets, sizes, rows)
        else:
            self.copies.gather_into(source, offsets, sizes, rows)

    def wait_for_copies(self) -> None:
        """Return once every copy into this batch (``gather_into``) has finished."""
        if self.copies is not None:
            self.copies.wait()

    def note_sample(self, position: int) -> None:
        """Note in ``progress`` that the sample at *position* starts (nothing where
        there are no cells: off worker processes)."""
        if self.progress is not None:
            self.progress[1] = self.indices[position]

    def note_no_sample(self) -> None:
        """Note in ``progress`` that what runs now is at no one sample."""
        if self.progress is not None:
            self.progress[1] = -1

    def samples(self, lo: int, hi: int) -> np.ndarray:
        """The dataset indices of positions ``lo:hi`` as one block of int64: what a
        compiled range kernel, given ``progress``, notes there sample by sample."""
        return np.ascontiguousarray(self.indices[lo:hi], np.int64)

    def uniform(self, count: int) -> np.ndarray:
        """``(len(indices), count)`` uniform floats in [0, 1), one row per sample."""
        return random.uniform(self.seed, self.epoch, self.indices, self.stream, count)

    def sample_rng(self, position: int) -> np.random.Generator:
        """A generator for the sample at *position* in the batch."""
        return random.generator(self.seed, self.epoch, int(self.indices[position]), self.stream)

    def batch_rng(self) -> np.random.Generator:
        """A generator for draws shared by the whole batch (keyed by its first sample)."""
        first = int(self.indices[0]) if len(self.indices) else 0
        return random.generator(self.seed, self.epoch, first, self.stream ^ 0x5A5A5A5A)

    def with_stream(self, stream: int) -> BatchContext:
        """The same batch, another random stream."""
        return BatchContext(self.indices, self.epoch, self.seed, stream, self.batch_index,
                            self.data, copies=self.copies, geometry=self.geometry,
                            geometry_out=self.geometry_out, progress=self.progress)


class Operation:
    """Base class of every pipeline step; subclass it for custom operations.

    Override ``declare_state_and_memory`` when the output differs from the
    input (shape, dtype, device) or needs a buffer, and either ``apply``
    (whole batch) or ``apply_sample`` with ``per_sample = True``.
    """

    per_sample: ClassVar[bool] = False
    """True: the loader calls ``apply_sample`` once per sample (with ``np.random``,
    ``random`` and torch's default generator seeded for that sample, unless the
    operation ``releases_gil``, where the generators are the pipeline's: in a
    worker process, or called from the main thread; see
    ``random.globals_are_ours``)."""

    reads_input: bool = True
    """False for operations that only relabel their input (a view, a new shape or
    dtype). When no operation of a pipeline reads its input, the loader copies
    the decoder's raw rows on its copy threads (``BatchContext.gather_into``)
    and waits for them only when it hands the batch over. One that reads the
    values after all, now and then, calls ``context.wait_for_copies()`` first."""

    random_stream: ClassVar[str | None] = None
    """Operations that must draw the same numbers (ImageMixup and LabelMixup)
    share a named stream; others get one per pipeline position."""

    releases_gil: ClassVar[bool] = False
    """True when ``apply`` spends its time without the GIL (compiled kernels,
    vectorised NumPy): threads then run it in parallel. Operations written in
    Python keep the GIL, so the loader runs a pipeline holding one in worker
    processes (``Loader(worker_type='auto')``). Every built-in sets it."""

    sample_independent: ClassVar[bool] = False
    """True when each output sample depends only on the same input sample and
    its own randomness (``context.uniform``, ``context.sample_rng``): the loader
    may then run the operation on any range of a batch, in any worker, with the
    same result. Per-sample operations (``per_sample = True``) are by
    definition; batch operations that mix samples (mixup) are not."""

    follows: str | None = None
    """The output (pipeline name) whose per-sample geometry this operation follows:
    set it (``op.follows = "image"``) for masks, boxes or keypoints that must
    move with that pipeline's image; the loader then hands the image decoder's
    geometry rows over in ``context.geometry[follows]``."""

    moves_pixels: ClassVar[bool] = False
    """True for operations that move an image's pixels (flips, crops, translations):
    the planner refuses one in an image pipeline that masks or boxes follow,
    unless its decoder took it over (a flip right after a crop decoder), since
    the geometry they follow is the decoder's."""

    pixelwise: ClassVar[bool] = False
    """True for operations each of whose output pixels comes from the same input
    pixel alone (conversions, normalisation, brightness, saturation): the only
    ones the planner lets run on a padded batch (``ShorterSideRGBImageDecoder``),
    whose padding the loader sets back to zero after them. One that reads the
    whole image (a contrast's mean, a histogram) or places things in it (a
    cutout, a flip after ``ToTensor``) would take the padding for the image."""

    keeps_zero: ClassVar[bool] = False
    """True for ``pixelwise`` operations that leave a zero pixel zero (conversions,
    brightness, saturation): after a padding decoder, a pipeline of only these
    needs no clearing of its padding (``runner.clear_padding``)."""

    passes_through: ClassVar[bool] = False
    """True for operations that hand on their input's values in the same memory
    order (``ToTensor``, ``ToTorchImage(channels_last=True)``): a decoder may
    fuse a later conversion across them."""

    def fuse(self, transforms: Sequence[Operation], rng_streams: Sequence[int],
             previous_state: State | None = None) -> list[int]:
        """Take over some of the operations that follow this one.

        Called by the loader's planner on its own copy of the operation, before
        ``declare_state_and_memory``, with the operations after it up to the
        first one another pipeline branches from, each one's random stream, and
        *previous_state*, the state of the batches this operation receives
        (None for a decoder, which receives none). Returns the positions (in
        *transforms*) of the operations it now performs itself; the planner
        skips them and declares this operation's output as theirs. It must
        give the same results as running them. The default takes none; a
        crop decoder mirrors and converts (``Decoder.fuse``), an augmentation
        policy converts (``TrivialAugmentWide`` and the others).
        """
        return []

    def pixel_affine(self) -> tuple[np.dtype, np.ndarray | None, np.ndarray | None] | None:
        """``(dtype, scale, bias)`` when this operation turns uint8 images into
        ``value * scale + bias`` of a float *dtype* per channel (None: it does not),
        so that a crop decoder can write that directly."""
        return None

    def __init__(self) -> None:
        self.metadata: Any = None
        self.memory_read: Any = None

    def accept_field(self, field: Any) -> None:
        """Called with the field a decoder reads (FFCV's hook)."""
        self.field = field

    def accept_globals(self, metadata: Any, memory_read: Any) -> None:
        """Called with the field's metadata column and the payload reader (FFCV's hook)."""
        self.metadata = metadata
        self.memory_read = memory_read

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, Allocation]:
        """Return the state after this operation and the buffer it needs, if any."""
        return previous_state, None

    def declare_shared_memory(self, previous_state: State) -> AllocationQuery | None:
        """FFCV's hook for an operation compiled with numba (``generate_code``): a
        per-batch buffer that ``generate_code_for_shared_state``'s function fills
        and the generated function receives last. None: no such buffer."""
        return None

    def generate_code_for_shared_state(self) -> Callable[..., Any] | None:
        """FFCV's hook: the function that fills ``declare_shared_memory``'s buffer."""
        return None

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Transform a batch; *destination* is this operation's buffer (or None)."""
        if not self.per_sample:
            raise NotImplementedError(f"{type(self).__name__} implements neither apply nor "
                                      "apply_sample (with per_sample = True)")
        if self.releases_gil:
            results = self._apply_samples(batch, destination, context, None)
        else:
            # np.random, random and torch's generator seeded from (seed, epoch,
            # sample, stream) before each sample: code using them is reproducible too
            seeds = random.global_seeds(context.seed, context.epoch, context.indices[:len(batch)],
                                        context.stream)
            with random.globals_session() as reseed:
                results = self._apply_samples(batch, destination, context,
                                              lambda position: reseed(seeds[position]))
        if destination is not None:
            return destination
        if not results:
            return batch
        _same_shapes(self, results, context)
        if hasattr(results[0], "shape") and not isinstance(results[0], np.ndarray):
            import torch

            return torch.stack(results)
        return np.stack(results)

    def _apply_samples(self, batch: Any, destination: Any, context: BatchContext,
                       before: Callable[[int], None] | None) -> list[Any]:
        results = []
        for position in range(len(batch)):
            out = None if destination is None else destination[position]
            context.note_sample(position)
            try:
                if before is not None:
                    before(position)
                result = self.apply_sample(batch[position], out, context, position)
                if out is not None:
                    _keep_sample(self, result, out)
                results.append(result)
            except BaseException as exc:  # SystemExit too: it reaches next(), located
                raise annotate(exc, f"sample {int(context.indices[position])}") from exc.__cause__
        context.note_no_sample()  # past the samples: what runs next is at none of them
        return results

    def apply_sample(self, sample: Any, destination: Any, context: BatchContext,
                     position: int) -> Any:
        """Transform one sample (the one at *position* in the batch); return it.

        With a buffer (``declare_state_and_memory``'s query), *destination* is this
        sample's row of it: write the result there, or return a new array of its
        shape and dtype, which is copied there."""
        raise NotImplementedError(f"{type(self).__name__}.apply_sample")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _keep_sample(operation: Operation, result: Any, out: Any) -> None:
    """Leave ``apply_sample``'s *result* in *out*, its row of the operation's buffer:
    nothing to do when it wrote there (returned *out*, a view of the same elements,
    or None); a checked copy when it returned another array (``out = f(x); return
    out`` rebinds the name: the sample was lost, the batch kept the buffer's old
    values). A function, not a method: a subclass's own names stay its own."""
    if result is None or result is out:
        return
    where = f"{type(operation).__name__}.apply_sample"
    if isinstance(out, np.ndarray):
        if not isinstance(result, np.ndarray):
            raise TypeError(f"{where} returned a {type(result).__name__}; its buffer "
                            "(declare_state_and_memory) holds NumPy arrays")
        if same_memory(result, out):
            return
    elif not (hasattr(result, "shape") and hasattr(result, "copy_")):  # torch's buffers
        raise TypeError(f"{where} returned a {type(result).__name__}; its buffer "
                        f"(declare_state_and_memory) holds {type(out).__name__}s")
    if tuple(result.shape) != tuple(out.shape) or result.dtype != out.dtype:
        raise ValueError(f"{where} returned a sample of {result.dtype} {tuple(result.shape)}, "
                         f"its buffer (declare_state_and_memory) is {out.dtype} "
                         f"{tuple(out.shape)}")
    if isinstance(out, np.ndarray):
        np.copyto(out, result)  # NumPy copies overlapping views correctly
    else:
        if result.untyped_storage().data_ptr() == out.untyped_storage().data_ptr():
            result = result.clone()  # torch refuses to copy between overlapping views
        out.copy_(result)


def _same_shapes(operation: Operation, results: list[Any], context: BatchContext) -> None:
    """Refuse per-sample results (no buffer) that cannot be stacked into a batch,
    naming the first sample whose shape differs from the first's (``np.stack`` said
    only "all input arrays must have the same shape")."""
    first = getattr(results[0], "shape", None)
    if first is None:  # numbers: np.stack makes them a batch
        return
    for position, result in enumerate(results):
        shape = getattr(result, "shape", None)
        if shape is None or tuple(shape) != tuple(first):
            what = f"a {type(result).__name__}" if shape is None else f"shape {tuple(shape)}"
            raise ValueError(
                f"{type(operation).__name__}.apply_sample returned {what} for sample "
                f"{int(context.indices[position])}, and shape {tuple(first)} for sample "
                f"{int(context.indices[0])}: a batch's samples must have one shape (end the "
                "operation with a fixed-size crop or resize, or declare a buffer)")

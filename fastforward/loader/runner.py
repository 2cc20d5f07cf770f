"""Running a ``Plan`` on one batch: stage 1 per range, stage 2 per batch.

Stage 1 (``run_stage1``) runs on a worker, thread or process, for the samples
``lo:hi`` of a batch: each ranged pipeline's decoder, then its range steps,
writing straight into the batch's slot. Stage 2 (``run_stage2``) runs in the
loader's process, on the batch's thread, over the whole batch: the decoders
that did not run in ranges, then every remaining step. Both take their
randomness from ``(seed, epoch, sample index, stream)`` only, so a batch is
the same whoever computes which range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import annotate, listed
from ..pipeline.operation import BatchContext
from ..pipeline.plan import PipelinePlan, Plan, Step
from ..utils import same_memory


@dataclass
class BatchJob:
    """What every worker of a batch needs to know about it (small: it is sent to
    worker processes once per range)."""

    epoch: int
    seed: int
    index: int  # the batch's position in the epoch
    indices: np.ndarray  # its samples, in order
    ranged: tuple[int, ...]  # positions (in the plan) of the pipelines whose stage 1 runs

    def where(self, fname: str) -> str:
        """``file: batch k (samples a, …, z)`` for error messages: its first and last
        samples (in a shuffled order, not a span)."""
        return f"{fname}: batch {self.index} (samples {listed(self.indices)})"


def ranged_pipelines(plan: Plan, job: BatchJob | None, always: bool) -> tuple[int, ...]:
    """The pipelines whose stage 1 runs in ranges for *job*: every ranged one with
    *always* (process workers; the same for every batch, *job* unused), else those
    with range steps or whose decoder finds the batch worth splitting
    (``Decoder.split_batch``). Never a follower whose leader is not among them."""
    chosen: list[int] = []
    names: set[str] = set()
    for position, pipeline in enumerate(plan.pipelines):
        if not pipeline.ranged or not names.issuperset(pipeline.follows):
            continue  # a follower's stage 1 needs its leader's geometry, written in stage 1
        if not (always or pipeline.split):
            assert pipeline.decoder is not None
            assert job is not None
            context = BatchContext(job.indices, job.epoch, job.seed, pipeline.decoder_stream,
                                   job.index)
            if not pipeline.decoder.split_batch(context):
                continue
        chosen.append(position)
        names.add(pipeline.name)
    return tuple(chosen)


def geometry(pipeline: PipelinePlan, buffers: Any, lo: int, hi: int, context: BatchContext
             ) -> None:
    """Give *context* the rows ``lo:hi`` of the geometry the pipeline follows, and of
    the geometry its decoder publishes (when someone follows it)."""
    if pipeline.follows:
        context.geometry = {leader: buffers.get(key)[lo:hi]
                            for leader, key in pipeline.follows.items()}
    if pipeline.geometry_key is not None:
        context.geometry_out = buffers.get(pipeline.geometry_key)[lo:hi]


def rows(buffer: Any, lo: int, hi: int) -> Any:
    """Rows ``lo:hi`` of a buffer or a tuple of buffers."""
    if isinstance(buffer, tuple):
        return tuple(b[lo:hi] for b in buffer)
    return buffer[lo:hi]


def batch_view(buffer: Any, n: int, as_torch: bool, query: Any, lo: int = 0) -> Any:
    """The first *n* rows (from *lo*) of a slot buffer as the operation gets them:
    NumPy, or a torch tensor sharing its memory; a device buffer is new memory."""
    if isinstance(buffer, tuple):
        return tuple(batch_view(b, n, as_torch, q, lo) for b, q in zip(buffer, query,
                                                                      strict=True))
    if buffer is None:  # a device buffer: new for every batch, from torch's caching allocator
        import torch

        return torch.empty((n, *query.shape), dtype=query.dtype, device=query.device)
    view = buffer[lo : lo + n]
    if as_torch and isinstance(view, np.ndarray):
        import torch

        # a fresh tensor per batch: it holds the buffer, so the pool sees it as held
        tensor = torch.from_numpy(view)
        if isinstance(query.dtype, torch.dtype) and tensor.dtype != query.dtype:
            tensor = tensor.view(query.dtype)  # bfloat16 lives in a uint16 buffer
        return tensor
    return view


def apply_step(plan: Plan, pipeline: PipelinePlan, step: Step, value: Any, buffer: Any,
               context: BatchContext, job: BatchJob) -> Any:
    """``step.op.apply``, its error naming the file, the batch, the pipeline and the op.

    An array or tensor it returns must hold a row per sample it was given: a
    batch whose fields hold different numbers of samples would pair the wrong
    ones, without a word."""
    try:
        result = step.op.apply(value, buffer, context)
    except BaseException as exc:  # SystemExit and the like too: they reach next() as well
        raise annotate(exc, f"{job.where(plan.fname)}, pipeline {pipeline.name!r}, "
                            f"{type(step.op).__name__}") from exc.__cause__
    shape = getattr(result, "shape", None)
    count = len(context.indices)
    if isinstance(shape, tuple) and (not shape or shape[0] != count):
        got = ("a 0-d array" if not shape else
               f"{shape[0]} row{'' if shape[0] == 1 else 's'} (shape {tuple(shape)})")
        raise ValueError(f"{job.where(plan.fname)}, pipeline {pipeline.name!r}, "
                         f"{type(step.op).__name__} returned {got} for {count} samples: an "
                         "operation returns one row per sample it is given")
    return result


def decode(plan: Plan, pipeline: PipelinePlan, job: BatchJob, count: int, destination: Any,
           context: BatchContext) -> None:
    """``decoder.decode_range(0, count, ...)``: an error it raises that does not name
    the file already (the built-in decoders name the sample and the field) names the
    file, the batch, the pipeline and the decoder, as an operation's does."""
    decoder = pipeline.decoder
    assert decoder is not None
    try:
        decoder.decode_range(0, count, destination, context)
    except BaseException as exc:
        try:
            said = [str(exc), *getattr(exc, "__notes__", ())]
        except Exception:  # a __str__ of its own that fails
            said = []
        if any(text.startswith(f"{plan.fname}: ") for text in said):
            raise
        raise annotate(exc, f"{job.where(plan.fname)}, pipeline {pipeline.name!r}, "
                            f"{type(decoder).__name__}") from exc.__cause__


def run_stage1(plan: Plan, job: BatchJob, data: Any, buffers: Any, lo: int, hi: int,
               copies: Any = None, progress: np.ndarray | None = None) -> None:
    """Stage 1 for the batch's samples ``lo:hi``, whose payloads *data* holds.

    *buffers* is the batch's slot (``get(key)``), in this process's memory;
    *copies* the loader's copy threads, where it may use them; *progress* a worker
    process's cells for the sample it is at (``BatchContext.progress``).
    """
    indices = job.indices[lo:hi]
    count = hi - lo
    for position in job.ranged:
        pipeline = plan.pipelines[position]
        decoder = pipeline.decoder
        assert decoder is not None
        context = BatchContext(indices, job.epoch, job.seed, pipeline.decoder_stream,
                               job.index, data,
                               copies=copies if pipeline.defer_copies else None,
                               progress=progress)
        geometry(pipeline, buffers, lo, hi, context)
        destination = rows(buffers.get(pipeline.decoder_key), lo, hi)
        decode(plan, pipeline, job, count, destination, context)
        if not pipeline.split:
            continue
        value = decoder.output(destination, count)
        for step in pipeline.steps[: pipeline.split]:
            buffer = None if step.key is None else batch_view(
                buffers.get(step.key), count, step.as_torch, step.query, lo)
            value = apply_step(plan, pipeline, step, value, buffer,
                               context.with_stream(step.rng_stream), job)
            del buffer
        place(value, buffers.get(pipeline.range_out)[lo:hi],
              f"{job.where(plan.fname)}, pipeline {pipeline.name!r}, "
              f"{type(pipeline.steps[pipeline.split - 1].op).__name__}")


def place(value: Any, out: np.ndarray, where: str) -> None:
    """Leave stage 1's result in *out* (rows of a slot buffer): nothing to do when
    the last operation wrote it there, a copy otherwise (NumPy copies correctly
    between overlapping views, such as a transposed view of the same buffer)."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{where} returned a {type(value).__name__}, not a NumPy array")
    if same_memory(value, out):
        return
    if value.shape != out.shape or value.dtype != out.dtype:
        raise ValueError(f"{where} returned {value.dtype} samples of shape "
                         f"{value.shape[1:]}, it declared {out.dtype} {out.shape[1:]}")
    np.copyto(out, value)


def clear_padding(value: Any, sizes: np.ndarray, dims: tuple[int, int]) -> None:
    """Set each sample's padding in *value* (NumPy or torch, any device) back to
    zero, in place: past ``sizes[k]`` (height, width) along the per-sample
    dimensions *dims*. The decoder padded with zeros, and the operations after it
    (``pixelwise``) made something else of them (a normalisation's ``-mean / std``
    where it was not fused into the decoder); the batch is as torchvision's
    ``ImageList`` pads: zeros."""
    ndim = len(value.shape) - 1
    for k, (height, width) in enumerate(sizes.tolist()):
        for dim, end in zip(dims, (height, width), strict=True):
            if end < value.shape[dim + 1]:
                index = [slice(None)] * ndim
                index[dim] = slice(end, None)
                value[k][tuple(index)] = 0


def run_stage2(plan: Plan, job: BatchJob, data: Any, slot: Any,
               copies: Any = None) -> tuple[Any, ...]:
    """Stage 2 over the whole batch, after stage 1: the batch's outputs, in order."""
    n = len(job.indices)
    context = BatchContext(job.indices, job.epoch, job.seed, 0, job.index, data, copies=copies)
    results: dict[int, Any] = {}
    outputs: dict[str, Any] = {}
    for position, pipeline in enumerate(plan.pipelines):
        decoder = pipeline.decoder
        # a pipeline not run in ranges for this batch (a follower whose leader was not,
        # on threads) runs its stage 1 steps here, on the whole batch
        split = pipeline.split if position in job.ranged else 0
        pipeline_context = context
        if pipeline.follows or pipeline.geometry_key is not None:
            pipeline_context = context.with_stream(0)
            geometry(pipeline, slot, 0, n, pipeline_context)
        if decoder is not None:
            destination = slot.get(pipeline.decoder_key)
            if destination is None:  # a GPU decoder: new device memory for every batch
                destination = batch_view(None, n, True, pipeline.decoder_query)
            if position not in job.ranged:
                own = pipeline_context.with_stream(pipeline.decoder_stream)
                own.copies = copies if pipeline.defer_copies else None
                decode(plan, pipeline, job, n, destination, own)
            if split:
                value = slot.get(pipeline.range_out)[:n]  # stage 1 ends on NumPy batches
                # what a branch reads: the last range step's result, or the decoder's rows
                results[id(pipeline.steps[split - 1].op)] = value
                if pipeline.decoder_read:
                    results[id(decoder)] = decoder.output(destination, n)
            else:
                value = results[id(decoder)] = decoder.output(destination, n)
            del destination
        else:
            value = results[id(pipeline.source_op)]
        for step in pipeline.steps[split:]:
            buffer = None if step.key is None else batch_view(slot.get(step.key), n,
                                                              step.as_torch, step.query)
            value = apply_step(plan, pipeline, step, value, buffer,
                               pipeline_context.with_stream(step.rng_stream), job)
            results[id(step.op)] = value
            del buffer
        if pipeline.padding_dims is not None:
            assert decoder is not None
            clear_padding(value, decoder.content_sizes(
                pipeline_context.with_stream(pipeline.decoder_stream)), pipeline.padding_dims)
        outputs[pipeline.name] = value
    return tuple(outputs[name] for name in plan.outputs)

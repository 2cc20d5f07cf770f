"""``Decoder``: the first operation of a pipeline, which reads a field's samples.

A decoder fills rows of its buffer from the batch's payloads
(``context.data``) and metadata. With ``parallel = True`` the loader splits a
batch into ranges decoded concurrently on its worker threads (the kernels
release the GIL), so ``decode_range`` must only write its own rows.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ..errors import annotate
from .operation import BatchContext, Operation
from .state import State


class Decoder(Operation):
    """Base class of decoders. Subclasses implement ``declare_state_and_memory``
    and ``decode_range``."""

    parallel: ClassVar[bool] = False
    range_safe: ClassVar[bool] = False
    """For a decoder that is not ``parallel`` (one vectorised copy per batch): True
    when ``decode_range`` writes each row the same whatever range it is called on,
    and the decoder pickles, so that a Python operation after it may run per
    range, in the worker processes (``BasicDecoder``, ``NDArrayDecoder``).
    FFCV-style compiled decoders and others keep their whole batch."""
    releases_gil = True  # the built-in decoders' loops are compiled or vectorised
    publishes_geometry: ClassVar[bool] = False
    """True for decoders that decide each sample's geometry (crop, resize, flip)
    and write it to ``context.geometry_out`` when given one (see
    ``fastforward.pipeline.geometry``)."""

    transform_elsewhere: ClassVar[bool] = False
    """True for a class that is a decoder first in a pipeline and a transform after
    it (``NumbaOperation``: FFCV's operations); a loader refuses any other decoder
    past a pipeline's first place."""

    pads: ClassVar[bool] = False
    """True for decoders whose samples fill only part of their row of the batch,
    zeros around them (``ShorterSideRGBImageDecoder``): they give each sample's
    content size (``content_sizes``), and only ``pixelwise`` operations may follow."""

    def content_sizes(self, context: BatchContext) -> np.ndarray:
        """``(B, 2)`` int64 ``(height, width)`` of each sample's content in its padded
        row (*context*: the batch's, on the decoder's random stream). Only for
        decoders that ``pads``."""
        raise NotImplementedError(f"{type(self).__name__} does not pad its samples")

    leader_state: State | None = None
    """For a decoder that ``follows`` another output: that output's decoder's
    state (its samples' shape and dtype), set by the planner before
    ``declare_state_and_memory`` (a mask is as large as its image)."""

    _BINDING: ClassVar[tuple[str, ...]] = ("field", "field_name", "field_index", "fname",
                                           "metadata", "memory_read", "reader")
    """Attributes ``bind`` sets: not configuration, so never copied or pickled."""

    def __init__(self) -> None:
        super().__init__()
        self.field: Any = None
        self.field_name: str = ""
        self.field_index: int = -1
        self.fname: str = ""
        self.reader: Any = None

    def runtime_copy(self, previous: Decoder | None = None) -> Decoder:
        """A copy of this decoder for one loader, unbound: its configuration
        (``output_size``…) as the user's object has it now, none of its runtime
        state. *previous* is the copy the loader made last epoch, whose caches
        (scratch memory) a subclass may take over."""
        clone = copy.copy(self)
        for name in self._BINDING:
            clone.__dict__.pop(name, None)
        Decoder.__init__(clone)
        return clone

    def __getstate__(self) -> dict[str, Any]:
        """Configuration only: the binding (metadata, field) is made again where
        the decoder is unpickled (a worker process binds it to its own reader)."""
        state = dict(self.__dict__)
        for name in self._BINDING:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        Decoder.__init__(self)
        self.__dict__.update(state)

    def fuse(self, transforms: Sequence[Operation], rng_streams: Sequence[int],
             previous_state: State | None = None) -> list[int]:
        """Take over some of the operations that follow this decoder.

        Called by the loader's planner on its own copy of the decoder, with the
        operations of the pipeline up to the first one another pipeline
        branches from, and each one's random stream (*previous_state* is None:
        a decoder receives no batches). Returns the positions (in
        *transforms*) of the operations the decoder now performs itself; the
        planner skips them. It must give the same results as running them.
        The default takes none.
        """
        return []

    def bind(self, field: Any, name: str, index: int, metadata: np.ndarray,
             fname: str, reader: Any = None) -> None:
        """Attach the decoder to one field of one file (the loader calls this;
        *reader* is the file's open ``Reader``, for decoders that read payloads
        the batch was not given: FFCV-style ones of fields that declare no
        ``payload_pointers``)."""
        if self.field_name and (self.field_name, self.fname) != (name, fname):
            raise ValueError(
                f"one {type(self).__name__} instance is used for fields {self.field_name!r} "
                f"and {name!r}: create one decoder per field"
            )
        self.accept_field(field)
        self.accept_globals(metadata, None)
        self.field_name, self.field_index, self.fname = name, index, fname
        self.reader = reader

    def bind_to(self, field: Any, name: str, index: int, metadata: np.ndarray,
                fname: str, reader: Any) -> None:
        """``bind`` as the loader calls it: a subclass that overrides ``bind``
        with the signature it had before *reader* was added (five arguments)
        is called that way, and given the reader afterwards."""
        method = type(self).bind
        if method is Decoder.bind or _takes_reader(method):
            self.bind(field, name, index, metadata, fname, reader)
        else:
            self.bind(field, name, index, metadata, fname)
            self.reader = reader

    @classmethod
    def field_types(cls) -> tuple[type, ...]:
        """The field classes this decoder reads, () for any: a loader refuses it on
        another of fastforward's or FFCV's fields (a custom field is not checked)."""
        return ()

    def split_batch(self, context: BatchContext) -> bool:
        """Whether this batch is worth splitting across the worker threads
        (``parallel`` by default; a batch that is one memcpy is not)."""
        return self.parallel

    def decode_range(self, lo: int, hi: int, destination: Any, context: BatchContext) -> None:
        """Decode the samples at batch positions ``lo:hi`` into ``destination[lo:hi]``."""
        raise NotImplementedError(f"{type(self).__name__}.decode_range")

    def output(self, destination: Any, count: int) -> Any:
        """The batch this decoder hands to the next operation."""
        if isinstance(destination, tuple):
            return tuple(d[:count] for d in destination)
        return destination[:count]

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Decode a whole batch on the calling thread."""
        self.decode_range(0, len(context.indices), destination, context)
        return self.output(destination, len(context.indices))

    def where(self, context: BatchContext, position: int) -> str:
        """``file: sample N, field 'name'`` for error messages."""
        return (f"{self.fname}: sample {int(context.indices[position])}, "
                f"field {self.field_name!r}")

    def fail(self, exc: BaseException, context: BatchContext, position: int) -> BaseException:
        """*exc*, its message prefixed with the sample and the field."""
        return annotate(exc, self.where(context, position))


def _takes_reader(method: Any) -> bool:
    """Whether an override of ``Decoder.bind`` accepts the *reader* argument."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # no signature to read: call it as the loader does
        return True
    positional = [p for p in parameters
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (len(positional) >= 7  # self, field, name, index, metadata, fname, reader
            or any(p.kind is p.VAR_POSITIONAL for p in parameters))

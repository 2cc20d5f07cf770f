"""Variable-length byte strings: a (ptr, size) row and the bytes in a page."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import EncodeError
from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.decoder import Decoder
from ..pipeline.operation import BatchContext
from ..pipeline.state import State
from .base import Field, Malloc, PayloadReader, empty_arguments

BYTES_METADATA = np.dtype([("ptr", "<u8"), ("size", "<u8")])


def as_byte_array(value: Any) -> np.ndarray:
    """*value* (a 1-D array or any bytes-like object) as a uint8 array.

    A 1-D array of another real dtype is cast to uint8, as FFCV does, but
    only when the cast is exact (every value an integer in 0..255, as in
    ``np.zeros(2)``); a lossy cast is refused.
    """
    if isinstance(value, np.generic) and not isinstance(value, (bytes, np.void)):
        # (np.bytes_ is bytes; np.void, opaque data as h5py gives it, is its bytes)
        # a NumPy scalar's buffer is its memory (8 bytes for np.int64(5)): refused as
        # the 0-d array it is
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise EncodeError(f"expected a 1-D array of bytes, got {value.dtype} array of "
                              f"shape {value.shape}")
        if value.dtype == np.uint8:
            return value
        if value.dtype.kind not in "biuf":
            raise EncodeError(f"expected a 1-D uint8 array, got {value.dtype}")
        with np.errstate(invalid="ignore"):  # NaN and inf: refused below
            cast = value.astype(np.uint8)  # wraps or truncates where it is not exact
            inexact = np.flatnonzero(cast != value)
        if inexact.size:
            first = int(inexact[0])
            raise EncodeError(f"{value.dtype} array cannot be stored as bytes without loss: "
                              f"element {first} is {value[first].item()!r}, not an integer in "
                              f"0..255")
        return cast
    try:
        return np.frombuffer(memoryview(value).cast("B"), dtype=np.uint8)
    except TypeError as exc:
        raise EncodeError(
            f"expected a 1-D uint8 array or bytes, got {type(value).__name__}"
        ) from exc


class BytesField(Field):
    """Arbitrary bytes per sample (type id 3): a uint8 array, ``bytes`` or any buffer."""

    TYPE_ID = 3

    @property
    def metadata_type(self) -> np.dtype:
        return BYTES_METADATA

    @staticmethod
    def from_binary(binary: np.ndarray) -> Field:
        return BytesField()

    def to_binary(self) -> np.ndarray:
        return empty_arguments()

    def encode(self, destination: np.ndarray, field: Any, malloc: Malloc) -> None:
        data = as_byte_array(field)
        destination["ptr"], buffer = malloc(data.size)
        destination["size"] = data.size
        buffer[:] = data

    def get_decoder_class(self) -> type:
        return BytesDecoder

    def read(self, row: np.void, read_payload: PayloadReader) -> np.ndarray:
        return np.frombuffer(read_payload(int(row["ptr"])), np.uint8)[: int(row["size"])].copy()

    def payload_pointers(self, column: np.ndarray) -> np.ndarray:
        return column["ptr"]


class BytesBatch(np.ndarray):
    """A batch of byte strings: FFCV's ``(B, max_size)`` uint8 array, plus ``lengths``.

    It is the array FFCV's ``BytesDecoder`` returns (index it, take its shape,
    pass it to ``JSONField.unpack`` or ``ToTensor``), with each row zero-padded
    past its sample's length instead of holding stale bytes, and the lengths
    beside it: ``batch.lengths`` is a ``(B,)`` int64 array, and
    ``batch.samples()`` the rows cut to their lengths. Indexing gives plain
    arrays; ``copy()`` copies the lengths too. Like every batch, it is a view
    of the loader's buffers, which are not reused while it (or ``lengths``) is
    alive.
    """

    lengths: np.ndarray | None

    def __array_finalize__(self, obj: Any) -> None:
        # an array derived from the batch (a view, a result) does not know the
        # lengths of its rows; copy() keeps them
        self.lengths = None

    def __getitem__(self, key: Any) -> Any:
        return self.view(np.ndarray)[key]

    def copy(self, order: Any = "C") -> BytesBatch:
        """A copy of the batch and of its lengths (the loader's buffers are not held)."""
        result = super().copy(order)
        result.lengths = None if self.lengths is None else self.lengths.copy()
        return result

    def __reduce__(self) -> tuple[Any, ...]:
        reduced = super().__reduce__()
        assert isinstance(reduced, tuple)  # an ndarray's is (rebuild, args, state)
        rebuild, args, state = reduced[:3]
        return rebuild, args, (state, self.lengths)

    def __setstate__(self, state: tuple[Any, Any]) -> None:  # type: ignore[override]  # __reduce__'s
        array_state, self.lengths = state
        super().__setstate__(array_state)

    def samples(self) -> list[np.ndarray]:
        """Each sample's bytes, without the padding (views of the batch)."""
        if self.lengths is None:
            raise ValueError("this array does not carry its samples' lengths (only the batch "
                             "BytesDecoder returns, or a copy of it, does)")
        data = self.view(np.ndarray)
        return [data[i, : int(n)] for i, n in enumerate(self.lengths)]


class BytesDecoder(Decoder):
    """Decode a BytesField (or JSONField): a ``BytesBatch``, FFCV's ``(B, max_size)`` array.

    ``max_size`` is the largest sample of the field; each row holds its
    sample's bytes, then zeros (never bytes of an earlier batch). The batch's
    ``lengths`` attribute holds each sample's length (``(B,)`` int64), which
    FFCV did not give.
    """

    @classmethod
    def field_types(cls) -> tuple[type, ...]:
        from .tagged import TaggedField  # (it imports this module)

        # a mask's, ragged array's or many-channel image's stored bytes, as they are
        return (BytesField, TaggedField)

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, tuple[AllocationQuery, AllocationQuery]]:
        sizes = self.metadata["size"]
        width = int(sizes.max()) if sizes.size else 0
        state = State(jit_mode=True, shape=(width,), dtype=np.dtype("u1"))
        return state, (AllocationQuery((width,), np.dtype("u1")),
                       AllocationQuery((), np.dtype("<i8")))

    def decode_range(self, lo: int, hi: int, destination: tuple[np.ndarray, np.ndarray],
                     context: BatchContext) -> None:
        data, lengths = destination
        source, offsets, sizes = context.data.field(self.field_index)
        context.gather_into(source, offsets[lo:hi], sizes[lo:hi], data[lo:hi])
        lengths[lo:hi] = self.metadata["size"][context.indices[lo:hi]]

    def output(self, destination: tuple[np.ndarray, np.ndarray], count: int) -> BytesBatch:
        """The data rows as a ``BytesBatch`` holding the lengths (both views of the slot)."""
        data, lengths = destination
        batch = data[:count].view(BytesBatch)
        batch.lengths = lengths[:count]
        return batch

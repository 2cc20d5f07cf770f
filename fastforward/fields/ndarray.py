"""Fixed-shape arrays: an 8-byte pointer in the metadata, C-order bytes in a page.

The descriptor's arguments (``NDArrayArgsType``, packed) hold the shape as 32
little-endian u8 (trailing zeros unused), then the length and text of
``json.dumps(dtype.descr)``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..errors import EncodeError, FormatError
from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.decoder import Decoder
from ..pipeline.operation import BatchContext
from ..pipeline.state import State
from ..utils import install_hint
from .base import ARG_TYPE, Field, Malloc, PayloadReader

MAX_DIMS = 32
MAX_ELEMENT_SIZE = 1 << 32  # a payload lies in one page, and pages are below 4 GiB
NDArrayArgsType = np.dtype(
    [("shape", "<u8", MAX_DIMS), ("type_length", "<u8"), ("type_data", "u1", 1024 - 264)]
)


class NDArrayField(Field):
    """An array of fixed ``dtype`` and ``shape`` per sample (type id 4)."""

    TYPE_ID = 4

    def __init__(self, dtype: Any, shape: tuple[int, ...]) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)
        if self.dtype.fields is not None or self.dtype.subdtype is not None:
            raise ValueError(f"only simple dtypes can be stored, got {self.dtype}")
        if self.dtype.hasobject or self.dtype.itemsize == 0:  # references, or no size
            raise ValueError(f"only fixed-size values can be stored, got {self.dtype} "
                             "(Python objects: use JSONField or BytesField)")
        # a zero before the last dimension holds no values, as FFCV writes and reads it;
        # the shape is stored padded with zeros, so a last one would be lost: (3, 0) as (3,)
        if not 1 <= len(self.shape) <= MAX_DIMS or min(self.shape) < 0 or self.shape[-1] == 0:
            raise ValueError(f"shape must have 1 to {MAX_DIMS} dims, none negative and the "
                             f"last not 0, got {self.shape}")
        # exact (math.prod): np.prod would wrap a damaged file's huge shape around
        self.element_size = self.dtype.itemsize * math.prod(self.shape)

    @property
    def metadata_type(self) -> np.dtype:
        return np.dtype("<u8")

    @staticmethod
    def from_binary(binary: np.ndarray) -> Field:
        args = np.frombuffer(np.asarray(binary).tobytes(), NDArrayArgsType)[0]
        length = int(args["type_length"])
        if length > args["type_data"].size:
            raise FormatError(f"NDArray dtype text of {length} bytes overruns its arguments")
        try:
            descr = json.loads(args["type_data"][:length].tobytes().decode("ascii"))
            dtype = np.dtype([tuple(d) for d in descr])["f0"]
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise FormatError(f"unreadable NDArray dtype in the field arguments: {exc}") from exc
        shape = [int(d) for d in args["shape"]]
        while shape and shape[-1] == 0:
            shape.pop()
        if not shape:
            raise FormatError(f"invalid NDArray shape {args['shape'].tolist()}")
        try:
            field = NDArrayField(dtype, tuple(shape))
        except ValueError as exc:  # a structured dtype
            raise FormatError(f"invalid NDArray field arguments: {exc}") from None
        if field.element_size >= MAX_ELEMENT_SIZE:
            raise FormatError(f"NDArray of shape {tuple(shape)} and dtype {dtype} needs "
                              f"{field.element_size} bytes per sample, more than a page holds")
        return field

    def to_binary(self) -> np.ndarray:
        args = np.zeros(1, NDArrayArgsType)[0]
        args["shape"][: len(self.shape)] = self.shape
        text = json.dumps(self.dtype.descr).encode("ascii")
        args["type_length"] = len(text)
        args["type_data"][: len(text)] = np.frombuffer(text, np.uint8)
        return np.frombuffer(args.tobytes(), ARG_TYPE)[0]

    def encode(self, destination: np.ndarray, field: Any, malloc: Malloc) -> None:
        array = self._check(field)
        destination[0], buffer = malloc(self.element_size)
        buffer[:] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)

    def _check(self, value: Any) -> np.ndarray:
        if isinstance(value, np.generic):  # a NumPy scalar, as FFCV takes it
            value = np.asarray(value)
        if not isinstance(value, np.ndarray):
            raise EncodeError(f"expected a NumPy array, got {type(value).__name__}")
        # FFCV reinterprets a same-itemsize dtype silently (its #110): refuse it.
        if value.dtype != self.dtype:
            # a name where it says the byte order ('int32', native), else '>i4'
            hint = self.dtype.name if self.dtype.isnative else self.dtype.str
            raise EncodeError(f"expected dtype {self.dtype}, got {value.dtype} (convert it "
                              f"with .astype({hint!r}) if the values fit)")
        # As FFCV: any shape with the declared number of elements, in C order
        # (a value of shape () for shape (1,), (1, 3) for (3,)).
        if value.shape != self.shape:
            count = int(np.prod(self.shape))
            if value.size != count:
                raise EncodeError(f"expected shape {self.shape} (or another shape of {count} "
                                  f"elements), got {value.shape}")
            value = value.reshape(self.shape)
        return value

    def get_decoder_class(self) -> type:
        return NDArrayDecoder

    def read(self, row: np.void, read_payload: PayloadReader) -> np.ndarray:
        data = read_payload(int(row))[: self.element_size]
        return np.frombuffer(data, self.dtype).reshape(self.shape).copy()

    def payload_pointers(self, column: np.ndarray) -> np.ndarray:
        return column


class NDArrayDecoder(Decoder):
    """Decode an NDArrayField (or TorchTensorField): a ``(B, *shape)`` array of its dtype."""

    range_safe = True

    @classmethod
    def field_types(cls) -> tuple[type, ...]:
        return (NDArrayField,)

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        field = self.field
        return (State(jit_mode=True, shape=field.shape, dtype=field.dtype),
                AllocationQuery(field.shape, field.dtype))

    def decode_range(self, lo: int, hi: int, destination: np.ndarray,
                     context: BatchContext) -> None:
        source, offsets, sizes = context.data.field(self.field_index)
        rows = destination[lo:hi].reshape(hi - lo, -1).view(np.uint8)
        context.gather_into(source, offsets[lo:hi], sizes[lo:hi], rows)


def torch_to_numpy_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype that stores a torch dtype (bfloat16 has none)."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            f"TorchTensorField needs torch: {install_hint('torch')}"
        ) from exc
    try:
        return np.dtype(torch.empty((), dtype=dtype).numpy().dtype)
    except (TypeError, RuntimeError) as exc:
        raise ValueError(f"{dtype} has no NumPy equivalent and cannot be stored") from exc


class TorchTensorField(NDArrayField):
    """A torch tensor of fixed dtype and shape per sample (type id 6).

    Stored as its NumPy equivalent and read back as an ``NDArrayField``, as in
    FFCV.
    """

    TYPE_ID = 6

    def __init__(self, dtype: Any, shape: tuple[int, ...]) -> None:
        self.torch_dtype = dtype
        super().__init__(torch_to_numpy_dtype(dtype), shape)

    def encode(self, destination: np.ndarray, field: Any, malloc: Malloc) -> None:
        if hasattr(field, "detach") and hasattr(field, "numpy"):
            if field.dtype != self.torch_dtype:
                raise EncodeError(f"expected a {self.torch_dtype} tensor, got {field.dtype}")
            field = field.detach().cpu().numpy()
        super().encode(destination, field, malloc)

"""Scalar fields: one float or int per sample, stored in the metadata only."""

from __future__ import annotations

import contextlib
import math
import operator
from typing import Any

import numpy as np

from ..errors import EncodeError
from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.decoder import Decoder
from ..pipeline.operation import BatchContext
from ..pipeline.state import State
from .base import Field, Malloc, PayloadReader, empty_arguments


class BasicDecoder(Decoder):
    """Decode a scalar column of the metadata table into a ``(B, 1)`` array of ``dtype``.

    FFCV's base of ``IntDecoder`` and ``FloatDecoder``: subclass it with a
    ``dtype`` class attribute to decode a custom field whose metadata is one
    fixed-size value per sample.
    """

    dtype: np.dtype
    range_safe = True

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        state = State(jit_mode=True, shape=(1,), dtype=self.dtype)
        return state, AllocationQuery((1,), self.dtype)

    def decode_range(self, lo: int, hi: int, destination: np.ndarray,
                     context: BatchContext) -> None:
        destination[lo:hi, 0] = self.metadata[context.indices[lo:hi]]


class IntDecoder(BasicDecoder):
    """Decode an IntField: a ``(B, 1)`` int64 array."""

    dtype = np.dtype("<i8")

    @classmethod
    def field_types(cls) -> tuple[type, ...]:
        return (IntField,)


class FloatDecoder(BasicDecoder):
    """Decode a FloatField: a ``(B, 1)`` float64 array."""

    dtype = np.dtype("<f8")

    @classmethod
    def field_types(cls) -> tuple[type, ...]:
        return (FloatField, IntField)  # integers as floats, as FFCV's


def _is_complex(value: Any) -> bool:
    """Whether *value* is a complex number (Python, NumPy or torch), asked without
    converting it (a tensor that requires grad cannot become an array)."""
    if isinstance(value, (complex, np.complexfloating)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype.kind == "c"
    is_complex = getattr(value, "is_complex", None)
    return bool(is_complex()) if callable(is_complex) and type(value).__module__.startswith(
        "torch") else False


def _finite(value: Any) -> bool:
    """Whether *value*, which float() made infinite, is finite: a NumPy long double
    or a ``Decimal`` beyond float64's range becomes inf without an OverflowError."""
    if isinstance(value, (np.generic, np.ndarray)):
        return bool(np.all(np.isfinite(value)))
    is_finite = getattr(value, "is_finite", None)  # Decimal
    return bool(is_finite()) if callable(is_finite) else False


class FloatField(Field):
    """A float64 per sample (type id 0)."""

    TYPE_ID = 0

    @property
    def metadata_type(self) -> np.dtype:
        return np.dtype("<f8")

    @staticmethod
    def from_binary(binary: np.ndarray) -> Field:
        return FloatField()

    def to_binary(self) -> np.ndarray:
        return empty_arguments()

    def encode(self, destination: np.ndarray, field: Any, malloc: Malloc) -> None:
        # float() parses text ('3.5', b'1_000', ' nan '): a number read from a file
        # and never converted is a bug in the dataset, refused as IntField refuses it
        if isinstance(field, np.ndarray) and field.ndim > 0 and field.size == 1:
            field = field.reshape(())  # np.array([y]), as FFCV (and IntField) take it
        if isinstance(field, np.ndarray) and field.dtype.kind == "O" and field.ndim == 0:
            field = field.item()  # what a 0-d object array holds
        if isinstance(field, (str, bytes, bytearray)) or (
                isinstance(field, np.ndarray) and field.dtype.kind in "SU"):  # text in an array
            raise EncodeError(f"expected a real number, got {type(field).__name__} "
                              f"{field!r:.40}: convert it with float() if you mean it")
        if _is_complex(field):  # float() of a NumPy complex keeps its real part
            raise EncodeError(f"expected a real number, got {type(field).__name__} "
                              f"{field!r:.40}: take .real or abs() if you mean it")
        try:
            value = float(field)
        except (TypeError, ValueError) as exc:
            raise EncodeError(f"expected a real number, got {type(field).__name__}") from exc
        except OverflowError:  # an int beyond float64's range (10**400)
            value = None
        if value is None or (math.isinf(value) and _finite(field)):
            shown = repr(field)
            shown = shown if len(shown) <= 40 else f"{shown[:40]}..."
            raise EncodeError(f"{type(field).__name__} {shown} is beyond float64's "
                              "range") from None
        destination[0] = value

    def get_decoder_class(self) -> type:
        return FloatDecoder

    def read(self, row: np.void, read_payload: PayloadReader) -> float:
        return float(row)


class IntField(Field):
    """An int64 per sample (type id 1)."""

    TYPE_ID = 1

    @property
    def metadata_type(self) -> np.dtype:
        return np.dtype("<i8")

    @staticmethod
    def from_binary(binary: np.ndarray) -> Field:
        return IntField()

    def to_binary(self) -> np.ndarray:
        return empty_arguments()

    def encode(self, destination: np.ndarray, field: Any, malloc: Malloc) -> None:
        value = _whole_number(field)
        if not -(1 << 63) <= value < 1 << 63:
            raise EncodeError(f"{value} does not fit in int64")
        destination[0] = value

    def get_decoder_class(self) -> type:
        return IntDecoder

    def read(self, row: np.void, read_payload: PayloadReader) -> int:
        return int(row)


def _whole_number(field: Any) -> int:
    """*field* as an int: an integer, a float of a whole value (``2.0``), or one
    element of an array or tensor (``np.array([4])``), as FFCV stores them. A
    fraction is refused where FFCV would cut it (``2.7`` stored as 2)."""
    with contextlib.suppress(TypeError):
        return operator.index(field)
    value = field
    if not isinstance(value, (float, np.floating)):
        try:
            array = np.asarray(value)
        except Exception:
            array = None
        if array is not None and array.size == 1 and array.dtype.kind in "biuf":
            value = array.reshape(()).item()
            with contextlib.suppress(TypeError):
                return operator.index(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise EncodeError(f"expected an integer, got {type(field).__name__} {field!r:.40}")
        if value == np.trunc(value):  # in its own precision (a longdouble's fraction too)
            return int(value)
        raise EncodeError(f"expected an integer, got {type(field).__name__} {field!r:.40}, "
                          f"not a whole number (FFCV would store {int(value)}, dropping the "
                          "fraction: round it as you mean it)")
    raise EncodeError(f"expected an integer, got {type(field).__name__} {field!r:.40}")

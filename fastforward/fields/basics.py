"""Scalar fields: one float or int per sample, stored in the metadata only."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from ..errors import EncodeError
from .base import Field, Malloc, PayloadReader, empty_arguments


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
        try:
            destination[0] = float(field)
        except (TypeError, ValueError) as exc:
            raise EncodeError(f"expected a real number, got {type(field).__name__}") from exc

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
        try:
            value = operator.index(field)
        except TypeError as exc:
            raise EncodeError(
                f"expected an integer, got {type(field).__name__} {field!r:.40}"
            ) from exc
        if not -(1 << 63) <= value < 1 << 63:
            raise EncodeError(f"{value} does not fit in int64")
        destination[0] = value

    def read(self, row: np.void, read_payload: PayloadReader) -> int:
        return int(row)

"""JSON values, stored as UTF-8 text with a trailing NUL, as FFCV does."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..errors import DecodeError, EncodeError
from .base import Field, Malloc, PayloadReader
from .bytes import BytesField

ENCODING = "utf8"
"""The text encoding of stored JSON (FFCV's constant)."""
SEPARATOR = "\0"
"""The byte that ends each stored JSON text (FFCV's constant)."""


def _to_builtin(obj: Any) -> Any:
    # NumPy scalars and arrays are what datasets hand over most often; FFCV
    # fails on them with a TypeError from json.dumps.
    if isinstance(obj, np.generic):
        value = obj.item()
        if isinstance(value, np.generic):  # a long double's item() is itself: json would
            raise TypeError(f"{type(obj).__name__} has no Python equivalent: convert it "
                            "with float() or complex() if you mean it")  # ask for ever
        return value
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class JSONField(BytesField):
    """Any JSON-serialisable object per sample (type id 5)."""

    TYPE_ID = 5

    @staticmethod
    def from_binary(binary: np.ndarray) -> Field:
        return JSONField()

    def encode(self, destination: np.ndarray, field: Any, malloc: Malloc) -> None:
        try:
            text = json.dumps(field, default=_to_builtin)
        except (TypeError, ValueError) as exc:
            raise EncodeError(f"cannot serialise to JSON: {exc}") from exc
        super().encode(destination, (text + SEPARATOR).encode(ENCODING), malloc)

    def read(self, row: np.void, read_payload: PayloadReader) -> Any:
        return JSONField.unpack_one(super().read(row, read_payload))

    @staticmethod
    def unpack_one(data: np.ndarray) -> Any:
        """Decode one sample's stored bytes (up to the first NUL).

        Raises:
            DecodeError: the bytes are not UTF-8 JSON (a ``ValueError``, as
                ``json.loads`` raises).
        """
        raw = data.tobytes()
        try:
            return json.loads(raw.split(b"\0", 1)[0].decode("utf-8"))
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise DecodeError(f"stored JSON cannot be decoded: {exc}") from exc

    @staticmethod
    def unpack(batch: Any) -> Any:
        """Decode JSON samples as ``BytesDecoder`` returns them.

        *batch* is a ``BytesBatch`` (or any ``(B, max_size)`` uint8 array or
        tensor, read up to each row's first NUL), the ``(data, lengths)`` pair
        that earlier fastforward versions returned, or one sample's bytes (a
        1-D array: its one value is returned, as in FFCV).
        """
        if isinstance(batch, tuple):
            data, lengths = batch
        else:
            data, lengths = batch, getattr(batch, "lengths", None)
        data = np.asarray(data)
        if data.ndim == 1:
            return JSONField.unpack_one(data)
        if lengths is None:
            return [JSONField.unpack_one(row) for row in data]
        lengths = np.asarray(lengths).reshape(-1)
        return [JSONField.unpack_one(row[:n]) for row, n in zip(data, lengths, strict=True)]

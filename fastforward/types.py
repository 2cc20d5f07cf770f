"""The .beton v2 layout, byte for byte, as FFCV 1.0.2 writes it.

::

    0            header (HeaderType, 24 B)
    24           num_fields field descriptors (FieldDescType, 1041 B each)
    M            metadata table: num_samples rows of get_metadata_type(handlers)
    ...          zero padding to the next multiple of page_size
    D            data pages, page_size each, at page-aligned file offsets
    alloc ptr    allocation table (ALLOC_TABLE_TYPE rows) to the end of the file

All integers are little-endian. Pointers are absolute file offsets. Every
sample's payloads lie in one page. This module is the only one that knows
these offsets; the reader and the writer use its helpers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import FormatError, annotate
from .fields import (
    BytesField,
    Field,
    FloatField,
    IntField,
    JSONField,
    NDArrayField,
    RGBImageField,
    TorchTensorField,
)
from .fields.tagged import tagged_class, tagged_types
from .utils import decode_null_terminated_string

CURRENT_VERSION = 2
MIN_PAGE_SIZE = 1 << 21
MAX_PAGE_SIZE = 1 << 32  # exclusive
CUSTOM_TYPE_ID = 255
FIELD_NAME_BYTES = 16

HeaderType = np.dtype(
    [
        ("version", "<u2"),
        ("num_fields", "<u2"),
        ("page_size", "<u4"),
        ("num_samples", "<u8"),
        ("alloc_table_ptr", "<u8"),
    ],
    align=True,
)
FieldDescType = np.dtype(
    [("type_id", "<u1"), ("name", ("<u1", FIELD_NAME_BYTES)), ("arguments", ("<u1", 1024))],
    align=True,
)
ALLOC_TABLE_TYPE = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])

TYPE_ID_HANDLER: dict[int, type[Field]] = {
    0: FloatField,
    1: IntField,
    2: RGBImageField,
    3: BytesField,
    4: NDArrayField,
    5: JSONField,
    6: NDArrayField,  # TorchTensorField is read back as a plain NDArrayField, as in FFCV
}
BUILTIN_TYPE_IDS: dict[type[Field], int] = {
    FloatField: 0,
    IntField: 1,
    RGBImageField: 2,
    BytesField: 3,
    NDArrayField: 4,
    JSONField: 5,
    TorchTensorField: 6,
}


def type_id_of(field: Field) -> int:
    """The descriptor type id: a built-in's own only for exactly that class."""
    return BUILTIN_TYPE_IDS.get(type(field), CUSTOM_TYPE_ID)


def is_own_field(field: Field) -> bool:
    """Whether *field* is exactly one of fastforward's or FFCV's field classes
    (built-in or tagged), not a custom field, whose layout only its class knows."""
    return type(field) in BUILTIN_TYPE_IDS or type(field) in tagged_types().values()


def get_metadata_type(handlers: Sequence[Field]) -> np.dtype:
    """The metadata row dtype: columns ``f0…`` under NumPy's aligned-struct rules."""
    return np.dtype([("", h.metadata_type) for h in handlers], align=True)


def field_names(field_descriptors: np.ndarray) -> list[str]:
    """The fields' names, as the descriptors hold them (null-terminated ASCII)."""
    return [decode_null_terminated_string(d["name"]) for d in field_descriptors]


def get_handlers(
    field_descriptors: np.ndarray,
    names: Sequence[str] | None = None,
    custom_handlers: Mapping[str, type[Field]] | None = None,
) -> list[Field]:
    """Build one Field per descriptor; *custom_handlers* override by name.

    *names* default to the descriptors' own. Called as FFCV's
    ``get_handlers(descriptors)``, with neither, a custom field's entry is None,
    as in FFCV.

    A custom field (type id 255) that is one of fastforward's own tagged types
    (``fastforward.fields.tagged``) needs no custom handler. Raises KeyError
    naming the field when a type id has no handler.
    """
    as_ffcv = names is None and custom_handlers is None
    custom_handlers = dict(custom_handlers or {})
    if names is None:
        names = field_names(field_descriptors)
    handlers: list[Field] = []
    for desc, name in zip(field_descriptors, names, strict=True):
        type_id = int(desc["type_id"])
        cls = custom_handlers.get(name, TYPE_ID_HANDLER.get(type_id))
        if cls is None and type_id == CUSTOM_TYPE_ID:
            cls = tagged_class(desc["arguments"])
            if cls is None and as_ffcv:  # FFCV's TYPE_ID_HANDLER[255] is None
                handlers.append(None)  # type: ignore[arg-type]  # (FFCV's contract)
                continue
        if cls is None:
            raise KeyError(name, type_id)
        try:
            handlers.append(cls.from_binary(desc["arguments"]))
        except FormatError as exc:  # (the caller adds the file)
            raise annotate(exc, f"field {name!r}") from exc.__cause__
    return handlers


def metadata_offset(num_fields: int) -> int:
    """Where the metadata table starts."""
    return HeaderType.itemsize + FieldDescType.itemsize * num_fields


def data_offset(num_fields: int, num_samples: int, row: np.dtype, page_size: int) -> int:
    """Where the first data page starts: after the metadata, page-aligned."""
    end = metadata_offset(num_fields) + num_samples * row.itemsize
    return -(-end // page_size) * page_size


def validate_page_size(page_size: int) -> None:
    """Raise ValueError unless *page_size* is a power of two in [2 MiB, 4 GiB)."""
    if not (MIN_PAGE_SIZE <= page_size < MAX_PAGE_SIZE and page_size & (page_size - 1) == 0):
        raise ValueError(
            f"page_size must be a power of two, at least {MIN_PAGE_SIZE} and below "
            f"{MAX_PAGE_SIZE}, got {page_size}"
        )

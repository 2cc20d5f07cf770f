"""Read a .beton v2 file: header, field descriptors, metadata, allocation table.

``Reader`` checks the layout when it opens a file and raises ``FormatError``
(a ``ValueError``) naming the file and the problem, rather than returning
garbage. Payloads are read through a read-only memory map, opened on first
use. ``verify()`` checks every pointer, size and stored image.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import FormatError, annotate
from .fields import Field, NDArrayField, RGBImageField
from .fields.bytes import BytesField
from .fields.rgb_image import IMAGE_MODES, require_simplejpeg
from .fields.tagged import describe_unknown, tagged_class
from .types import (
    ALLOC_TABLE_TYPE,
    CURRENT_VERSION,
    CUSTOM_TYPE_ID,
    TYPE_ID_HANDLER,
    FieldDescType,
    HeaderType,
    data_offset,
    get_handlers,
    get_metadata_type,
    metadata_offset,
    validate_page_size,
)
from .utils import decode_null_terminated_string


@dataclass(frozen=True)
class Problem:
    """One defect found by ``Reader.verify``."""

    sample: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.sample is not None:
            where.append(f"sample {self.sample}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where) or 'file'}: {self.message}"


class Reader:
    """The structure of a .beton file, as FFCV's ``Reader`` exposes it.

    Attributes: ``header``, ``num_samples``, ``page_size``, ``num_fields``,
    ``field_names``, ``handlers`` (name -> Field), ``metadata_type``,
    ``metadata`` (structured array, one row per sample, columns ``f0…``),
    ``alloc_table`` (rows ``sample_id, ptr, size``, as stored).

    Args:
        fname: the file.
        custom_handlers: ``{field_name: FieldClass}`` for custom fields
            (type id 255) or to override a built-in.

    Raises:
        FormatError: the file is not a complete, consistent .beton v2 file.
    """

    def __init__(self, fname: str | os.PathLike[str],
                 custom_handlers: Mapping[str, type[Field]] | None = None) -> None:
        self.fname = os.fspath(fname)
        self.custom_handlers = dict(custom_handlers or {})
        self._mmap: mmap.mmap | None = None
        self._file_size = os.path.getsize(self.fname)
        self._read_header()
        self._read_fields()
        self._read_metadata()
        self._read_alloc_table()

    # -- opening --------------------------------------------------------------

    def _error(self, message: str) -> FormatError:
        return FormatError(f"{self.fname}: {message}")

    def _read_header(self) -> None:
        if self._file_size < HeaderType.itemsize:
            raise self._error(
                f"truncated: {self._file_size} bytes, shorter than the "
                f"{HeaderType.itemsize}-byte header"
            )
        self.header = np.fromfile(self.fname, dtype=HeaderType, count=1)[0]
        version = int(self.header["version"])
        if version != CURRENT_VERSION:
            raise self._error(
                f"format version {version}, expected {CURRENT_VERSION} (not a .beton v2 file?)"
            )
        self.num_samples = int(self.header["num_samples"])
        self.page_size = int(self.header["page_size"])
        self.num_fields = int(self.header["num_fields"])
        try:
            validate_page_size(self.page_size)
        except ValueError as exc:
            raise self._error(f"invalid header: {exc}") from None
        if self.num_fields == 0:
            raise self._error("invalid header: the file declares no fields")

    def _read_fields(self) -> None:
        end = metadata_offset(self.num_fields)
        if end > self._file_size:
            raise self._error(
                f"truncated: {self.num_fields} field descriptors need {end} bytes, "
                f"the file has {self._file_size}"
            )
        self.field_descriptors = np.fromfile(
            self.fname, dtype=FieldDescType, count=self.num_fields, offset=HeaderType.itemsize
        )
        self.field_names = [
            decode_null_terminated_string(d["name"]) for d in self.field_descriptors
        ]
        for desc, name in zip(self.field_descriptors, self.field_names, strict=True):
            type_id = int(desc["type_id"])
            if name in self.custom_handlers:
                continue
            if type_id == CUSTOM_TYPE_ID:
                if tagged_class(desc["arguments"]) is not None:
                    continue  # one of fastforward's own field types
                unknown = describe_unknown(desc["arguments"])
                if unknown is not None:
                    raise self._error(f"field {name!r} is {unknown}")
                raise self._error(
                    f"field {name!r} is a custom field (type id 255): pass its class as "
                    f"custom_handlers={{{name!r}: YourField}} (custom_fields= for a Loader)"
                )
            if type_id not in TYPE_ID_HANDLER:
                raise self._error(f"field {name!r} has unknown type id {type_id}")
        try:
            handlers = get_handlers(self.field_descriptors, self.field_names, self.custom_handlers)
        except FormatError as exc:
            raise annotate(exc, self.fname) from None
        self.handlers: dict[str, Field] = dict(zip(self.field_names, handlers, strict=True))
        self._handler_list = handlers
        self.metadata_type = get_metadata_type(handlers)

    def _read_metadata(self) -> None:
        start = metadata_offset(self.num_fields)
        end = start + self.num_samples * self.metadata_type.itemsize
        self.alloc_table_ptr = int(self.header["alloc_table_ptr"])
        if self.alloc_table_ptr == 0:
            raise self._error(
                "incomplete: alloc_table_ptr is 0, so the writer never finished this file"
            )
        if self.alloc_table_ptr > self._file_size:
            raise self._error(
                f"alloc_table_ptr {self.alloc_table_ptr} points past the end of the file "
                f"({self._file_size} bytes): truncated?"
            )
        if end > self.alloc_table_ptr:
            raise self._error(
                f"{self.num_samples} metadata rows of {self.metadata_type.itemsize} bytes end at "
                f"{end}, past the allocation table at {self.alloc_table_ptr}"
            )
        self.metadata = np.fromfile(
            self.fname, dtype=self.metadata_type, count=self.num_samples, offset=start
        )
        self.data_start = data_offset(
            self.num_fields, self.num_samples, self.metadata_type, self.page_size
        )

    def _read_alloc_table(self) -> None:
        nbytes = self._file_size - self.alloc_table_ptr
        if nbytes % ALLOC_TABLE_TYPE.itemsize:
            raise self._error(
                f"truncated: the allocation table's {nbytes} bytes are not a whole number "
                f"of {ALLOC_TABLE_TYPE.itemsize}-byte rows"
            )
        self.alloc_table = np.fromfile(
            self.fname, dtype=ALLOC_TABLE_TYPE, offset=self.alloc_table_ptr
        )
        table = self.alloc_table
        if table.size:
            ends = table["ptr"] + table["size"]
            bad = np.flatnonzero(
                (table["ptr"] < self.data_start) | (ends > self.alloc_table_ptr)
                | (ends < table["ptr"])
            )
            if bad.size:
                row = table[bad[0]]
                raise self._error(
                    f"allocation of sample {int(row['sample_id'])} at {int(row['ptr'])} "
                    f"({int(row['size'])} bytes) lies outside the data pages "
                    f"[{self.data_start}, {self.alloc_table_ptr})"
                )
            bad = np.flatnonzero(table["sample_id"] >= self.num_samples)
            if bad.size:
                raise self._error(
                    f"allocation table names sample {int(table['sample_id'][bad[0]])}, "
                    f"but the file has {self.num_samples}"
                )
        order = np.argsort(table["ptr"], kind="stable")
        self._ptrs = np.ascontiguousarray(table["ptr"][order])
        self._sizes = np.ascontiguousarray(table["size"][order])
        self._owners = np.ascontiguousarray(table["sample_id"][order])

    # -- payloads -------------------------------------------------------------

    @property
    def buffer(self) -> mmap.mmap:
        """A read-only map of the whole file, opened on first use."""
        if self._mmap is None:
            with open(self.fname, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mmap

    def payload_size(self, ptr: int, sample: int | None = None) -> int:
        """The size of the allocation at *ptr* (of *sample*, where two share it)."""
        lo = int(np.searchsorted(self._ptrs, ptr, side="left"))
        hi = int(np.searchsorted(self._ptrs, ptr, side="right"))
        if lo == hi:
            where = f"sample {sample}: " if sample is not None else ""
            raise self._error(f"{where}no allocation starts at offset {ptr}")
        if sample is None:
            return int(self._sizes[lo])
        # FFCV may store a zero-length payload at the next one's offset: pick the
        # sample's own allocation, and refuse a pointer into another sample's
        for i in range(lo, hi):
            if int(self._owners[i]) == sample:
                return int(self._sizes[i])
        raise self._error(f"sample {sample}: the payload at offset {ptr} belongs to sample "
                          f"{int(self._owners[lo])}")

    def payload_sizes(self, ptrs: np.ndarray, samples: np.ndarray) -> np.ndarray:
        """Vectorised ``payload_size``: the size of each ``(ptr, sample)`` allocation.

        Returns int64 sizes, -1 where no allocation of that sample starts at
        that offset.
        """
        ptrs = np.asarray(ptrs, np.uint64)
        samples = np.asarray(samples, np.uint64)
        result = np.full(len(ptrs), -1, np.int64)
        if self._ptrs.size == 0 or ptrs.size == 0:
            return result
        # rows are sorted by offset; FFCV may store two allocations at one offset, so
        # an offset's rows are [lo, hi) and the owner must match too
        lo = np.searchsorted(self._ptrs, ptrs, side="left")
        hi = np.searchsorted(self._ptrs, ptrs, side="right")
        first = np.minimum(lo, len(self._ptrs) - 1)
        found = (hi > lo) & (self._owners[first] == samples)
        result[found] = self._sizes[first[found]]
        for k in np.flatnonzero(~found & (hi - lo > 1)):  # rare: a shared offset
            rows = np.arange(lo[k], hi[k])
            match = rows[self._owners[rows] == samples[k]]
            if match.size:
                result[k] = self._sizes[match[0]]
        return result

    def payload(self, ptr: int, sample: int | None = None) -> memoryview:
        """The bytes of the payload at file offset *ptr* (no copy)."""
        size = self.payload_size(ptr, sample)
        return memoryview(self.buffer)[ptr : ptr + size]

    def read(self, index: int) -> tuple[Any, ...]:
        """Decode sample *index*: a tuple with one Python/NumPy value per field.

        Images come back as H×W×3 uint8 arrays, decoded as FFCV decodes them
        (libjpeg-turbo's fast IDCT).
        """
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"{self.fname}: sample {index} out of range [0, {self.num_samples})")
        index %= self.num_samples
        row = self.metadata[index]
        values = []
        for i, (name, handler) in enumerate(self.handlers.items()):
            try:
                values.append(handler.read(row[f"f{i}"], lambda p: self.payload(p, index)))
            except Exception as exc:
                raise annotate(exc, f"{self.fname}: sample {index}, field {name!r}") from None
        return tuple(values)

    def __len__(self) -> int:
        return self.num_samples

    # -- verification ---------------------------------------------------------

    def verify(self, decode: bool = False, progress: bool = False) -> list[Problem]:
        """Check every payload pointer, size and stored image; return the problems.

        Args:
            decode: also decode every sample not already found broken.
            progress: show a progress bar on stderr while decoding.
        """
        problems = self._verify_layout()
        if decode:
            broken = {p.sample for p in problems}
            problems += self._decode_all(broken, progress)
        return problems

    def _decode_all(self, skip: set[int | None], progress: bool) -> list[Problem]:
        from tqdm import tqdm

        problems = []
        for index in tqdm(range(self.num_samples), disable=not progress, unit="samples",
                          desc="decoding"):
            if index in skip:
                continue
            row = self.metadata[index]
            for i, (name, handler) in enumerate(self.handlers.items()):
                try:
                    handler.read(row[f"f{i}"], lambda p, s=index: self.payload(p, s))
                except Exception as exc:
                    problems.append(Problem(index, name, f"cannot decode: {exc}"))
        return problems

    def _verify_layout(self) -> list[Problem]:
        problems: list[Problem] = []
        samples_pages: dict[int, int] = {}
        page_shift = self.page_size.bit_length() - 1
        for i, (name, handler) in enumerate(self.handlers.items()):
            column = self.metadata[f"f{i}"]
            pointers = handler.payload_pointers(column)
            if pointers is None:
                continue
            for sample, ptr in enumerate(pointers.tolist()):
                try:
                    size = self.payload_size(ptr, sample)
                except FormatError as exc:
                    problems.append(Problem(sample, name, str(exc).split(": ", 2)[-1]))
                    continue
                page = ptr >> page_shift
                if ((ptr + max(size, 1) - 1) >> page_shift) != page:
                    problems.append(Problem(sample, name, f"payload at {ptr} crosses a page"))
                if samples_pages.setdefault(sample, page) != page:
                    problems.append(Problem(sample, name, "payloads of one sample span two pages"))
                message = self._check_payload(handler, column[sample], ptr, size)
                if message:
                    problems.append(Problem(sample, name, message))
        return problems

    def _check_payload(self, handler: Field, row: Any, ptr: int, size: int) -> str | None:
        if isinstance(handler, RGBImageField):
            mode, height, width = int(row["mode"]), int(row["height"]), int(row["width"])
            if height == 0 or width == 0:
                return f"empty image ({height}×{width})"
            if mode == IMAGE_MODES["raw"]:
                if size != height * width * 3:
                    need = height * width * 3
                    return f"raw image of {height}×{width} needs {need} bytes, has {size}"
            elif mode == IMAGE_MODES["jpg"]:
                data = self.buffer[ptr : ptr + size]
                try:
                    h, w, _, _ = require_simplejpeg().decode_jpeg_header(data)
                except ValueError as exc:
                    return f"bad JPEG header: {exc}"
                if (h, w) != (height, width):
                    return f"JPEG is {h}×{w}, the metadata says {height}×{width}"
                if data[-2:] != b"\xff\xd9":
                    return "JPEG stream lacks its end-of-image marker (truncated?)"
            else:
                return f"unknown image mode {mode}"
        elif isinstance(handler, NDArrayField):
            if size != handler.element_size:
                return f"array payload of {size} bytes, expected {handler.element_size}"
        elif isinstance(handler, BytesField) and int(row["size"]) != size:
            return f"metadata says {int(row['size'])} bytes, the allocation holds {size}"
        return None

    # -- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        """Release the memory map (idempotent)."""
        if self._mmap is not None:
            # views still alive keep the map open; it closes when they go
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}: {type(h).__name__}" for n, h in self.handlers.items())
        return f"Reader({self.fname!r}, {self.num_samples} samples, {{{fields}}})"


__all__ = ["Problem", "Reader"]

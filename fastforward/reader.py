"""Read a .beton v2 file: header, field descriptors, metadata, allocation table.

``Reader`` checks the layout, and every payload's pointer and size, when it
opens a file, and raises ``FormatError`` (a ``ValueError``) naming the file,
the sample and the field, rather than returning garbage or sizing a buffer
from a damaged number. Payloads are read through a read-only memory map,
opened on first use. ``verify()`` also reads every stored JPEG's header and,
where the file has them, checks every checksum (``fastforward.checksums``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import mmap
import operator
import os
import stat
import sys
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._ext.layout import (
    APART,
    CROSSES,
    EXPECT_ANY,
    EXPECT_BYTES,
    MISSING,
    find_overlaps,
    first_rows_into,
    locate_payloads,
    scan_table,
)
from .checksums import BlockError, Checksums, PageChecks, digest
from .checksums import locate as locate_checksums
from .errors import DecodeError, FormatError, annotate
from .fields import Field, JSONField, NDArrayField, RGBImageField, TorchTensorField
from .fields.bytes import BYTES_METADATA, BytesField
from .fields.rgb_image import IMAGE_MODES, jpeg_header
from .fields.tagged import TaggedField, describe_unknown, tagged_class
from .types import (
    ALLOC_TABLE_TYPE,
    CURRENT_VERSION,
    CUSTOM_TYPE_ID,
    TYPE_ID_HANDLER,
    FieldDescType,
    HeaderType,
    data_offset,
    field_names,
    get_handlers,
    get_metadata_type,
    is_own_field,
    metadata_offset,
    validate_page_size,
)
from .utils import anonymous_shared_fd, kind_of_file, map_shared


@dataclass(frozen=True)
class Problem:
    """One defect found by ``Reader.verify``."""

    sample: int | None
    field: str | None
    message: str
    samples: tuple[int, ...] = ()  # those a damaged page holds (its ``sample`` is None)

    def __str__(self) -> str:
        where = []
        if self.sample is not None:
            where.append(f"sample {self.sample}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message



# a reader's arrays with a row per sample or per allocation, besides each
# field's payload offsets and sizes (``Reader.share_tables``)
_TABLES = ("metadata", "alloc_table", "_ptrs", "_sizes", "_owners", "sample_pages")


@dataclass(frozen=True)
class SharedTables:
    """Where ``Reader.share_tables`` put each table in its segment."""

    nbytes: int
    # (attribute, key in it or None, dtype, rows, offset in the segment)
    entries: list[tuple[str, int | None, np.dtype[Any], int, int]]
    scalars: dict[str, int]  # the reader's values that go with the tables

    def views(self, segment: np.ndarray) -> list[tuple[str, int | None, np.ndarray]]:
        """Each table, a read-only view of *segment* (uint8, the whole of it)."""
        return [(name, key, segment[offset : offset + rows * np.dtype(dtype).itemsize]
                 .view(dtype)) for name, key, dtype, rows, offset in self.entries]


def _map_shared(fd: int, layout: SharedTables, fname: str) -> np.ndarray:
    """A read-only map of the tables ``share_tables`` put in the segment *fd*
    (keeping no descriptor), which is closed whatever happens."""
    try:
        size = os.fstat(fd).st_size
        if size < layout.nbytes:
            raise FormatError(f"{fname}: the shared tables hold {size} bytes, not "
                              f"{layout.nbytes}")
        return map_shared(fd, layout.nbytes, writable=False)
    finally:
        os.close(fd)


def _refuse_what_is_no_file(mode: int, fname: str) -> None:
    """A folder, a named pipe, a device or a socket is not a .beton file: say so
    (a folder's reads would not say which; a pipe would block the open)."""
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "a folder, not a .beton file", fname)
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, f"{kind_of_file(mode)}, not a .beton file", fname)

class Reader:
    """The structure of a .beton file, as FFCV's ``Reader`` exposes it.

    Attributes: ``header``, ``num_samples``, ``page_size``, ``num_fields``,
    ``field_names``, ``handlers`` (name -> Field), ``metadata_type``,
    ``metadata`` (structured array, one row per sample, columns ``f0…``),
    ``alloc_table`` (rows ``sample_id, ptr, size``, as stored), ``checksums``
    (the stored sums, None for a file without them, such as FFCV's).

    Opening a file checks, once and vectorised over the samples, everything
    that makes each payload safe to decode: every pointer names an allocation
    of its own sample, inside one page; the metadata's sizes agree with the
    allocations (``BytesField``/``JSONField`` sizes, an ``NDArrayField``'s
    element size, a raw image's ``height × width × 3``); images have known
    modes and non-zero sides; a sample's payloads share a page. Custom fields
    are checked only as far as their ``payload_pointers`` go. A file with
    checksums also has its header, field descriptors, metadata and allocation
    table checked against their sums; its pages are checked on demand
    (``verify_checksums``, ``check_pages``, ``verify``).

    Args:
        fname: the file.
        custom_handlers: ``{field_name: FieldClass}`` for custom fields
            (type id 255) or to override a built-in.
        validate: False opens a damaged file anyway (only what is needed to
            parse it is required) so that ``verify()`` can list every problem;
            such a reader must not feed a loader.
        verify_checksums: ``read()`` checks the page of each sample it reads
            against its sum, once per page.
        fd: an open, readable descriptor of the file, read in place of opening
            *fname* (which then only names the file in messages); the reader
            takes it over and closes it. A loader's worker processes read the
            loader's own descriptor so: the file it opened, whatever the name
            names now.
        tables: ``share_tables()`` of a reader of the same file (its
            descriptor, sent over, and where each table lies): its per-sample
            tables are mapped instead of read, checked and built again. The
            reader takes the descriptor over and closes it. A loader's worker
            processes open the file so: one copy of the tables serves them all.

    While it is open, every read goes through the descriptor opened here, never
    through the name again: a file renamed over the name, or the name removed,
    leaves this reader reading the file it opened.

    Raises:
        FormatError: the file is not a complete, consistent .beton v2 file.
    """

    def __init__(self, fname: str | os.PathLike[str],
                 custom_handlers: Mapping[str, type[Field]] | None = None, *,
                 validate: bool = True, verify_checksums: bool = False,
                 fd: int | None = None, tables: tuple[int, SharedTables] | None = None
                 ) -> None:
        self.fname = os.fspath(fname)
        try:
            shared = None if tables is None else (_map_shared(*tables, self.fname), tables[1])
        except BaseException:
            if fd is not None:  # taken over: closed whatever happens
                os.close(fd)
            raise
        self.custom_handlers = dict(custom_handlers or {})
        self.validate = bool(validate)
        self.verify_checksums = bool(verify_checksums)
        self._mmap: mmap.mmap | None = None
        if fd is None:
            # opening a named pipe waits for a writer: refuse what is no file first
            _refuse_what_is_no_file(os.stat(self.fname).st_mode, self.fname)
            fd = os.open(self.fname, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        self._fd = fd
        self._fd_closer = weakref.finalize(self, os.close, self._fd)
        try:
            st = os.fstat(self._fd)
            _refuse_what_is_no_file(st.st_mode, self.fname)
            self._file_size = st.st_size
            self._identity = _identity(st)
            self._open_problems: list[Problem] = []
            self._read_header()
            self._read_checksums()
            self._check_header()
            self._read_fields()
            self._tables: tuple[int, SharedTables] | None = None  # share_tables()'s
            if shared is None:
                self._read_metadata()
                self._read_alloc_table()
                self._index_payloads()
            else:
                self._map_tables(*shared)
        except FormatError as exc:
            self._fd_closer()
            # without validate, what the checksums found first is the diagnosis (a
            # header that fails its checksum, then a version that makes no sense):
            # the whole file's problems noted so far, before the one that stops it
            noted = [str(p) for p in getattr(self, "_open_problems", ()) if p.sample is None]
            prefix = f"{self.fname}: "
            if noted and str(exc).startswith(prefix):
                raise FormatError(f"{prefix}{'; '.join(noted[:3])}; then: "
                                  f"{str(exc)[len(prefix):]}") from None
            raise
        except BaseException:
            self._fd_closer()
            raise
        self._page_checks = (None if self.checksums is None
                             else PageChecks(self.checksums.page_sums))

    # -- opening --------------------------------------------------------------

    def _error(self, message: str) -> FormatError:
        return FormatError(f"{self.fname}: {message}")

    def _damage(self, message: str, sample: int | None = None, field: str | None = None,
                count: int = 1) -> None:
        """Refuse the file (``validate``), or note the problem for ``verify()``."""
        problem = Problem(sample, field, message)
        if self.validate:
            more = (f" ({count - 1} more problem(s): `fastforward verify` lists them)"
                    if count > 1 else "")
            raise self._error(f"{problem}{more}")
        self._open_problems.append(problem)

    def _read_at(self, offset: int, nbytes: int) -> bytes:
        return os.pread(self._fd, nbytes, offset)

    def _read_array(self, dtype: np.dtype[Any], count: int, offset: int) -> np.ndarray:
        """*count* items of *dtype* at *offset*, read through the descriptor (the name
        may name another file by now). Its size was checked against the file's."""
        out = np.empty(count, dtype)
        view = out.view(np.uint8).data
        done = 0
        while done < len(view):
            n = _pread_into(self._fd, view[done:], offset + done)
            if n == 0:
                raise self._error(f"truncated while being opened: unexpected end of file "
                                  f"at {offset + done}")
            done += n
        return out

    def _nonzero_bytes(self, start: int, end: int) -> tuple[int, int]:
        """How many bytes of ``[start, end)`` are not zero, and the first one's offset
        (-1 for none). Read with ``pread``, not through the map: the writer leaves
        this padding a hole, and on a full tmpfs, reading a hole through a map needs
        a page of memory for each page read (a SIGBUS when there is none; ``read``
        gives zeros without)."""
        count, first, offset = 0, -1, start
        while offset < end:
            chunk = np.frombuffer(self._read_at(offset, min(1 << 20, end - offset)), np.uint8)
            if not chunk.size:
                break  # past the end: the file's size is checked when it opens
            nonzero = np.flatnonzero(chunk)
            if nonzero.size and first < 0:
                first = offset + int(nonzero[0])
            count += int(nonzero.size)
            offset += chunk.size
        return count, first

    def _read_header(self) -> None:
        if self._file_size == 0:
            raise self._error("empty file (0 bytes), not a .beton file")
        if self._file_size < HeaderType.itemsize:
            raise self._error(
                f"truncated: {self._file_size} bytes, shorter than the "
                f"{HeaderType.itemsize}-byte header"
            )
        self.header = np.frombuffer(self._read_at(0, HeaderType.itemsize), HeaderType)[0].copy()
        self.num_samples = int(self.header["num_samples"])
        self.page_size = int(self.header["page_size"])
        self.num_fields = int(self.header["num_fields"])
        self.alloc_table_ptr = int(self.header["alloc_table_ptr"])

    def _check_header(self) -> None:
        version = int(self.header["version"])
        if version != CURRENT_VERSION:
            hint = ("an older .beton format: write it again with FFCV 1.0 or fastforward"
                    if 0 < version < CURRENT_VERSION else
                    f"not a .beton v2 file? its first bytes are {self._read_at(0, 8)!r}")
            raise self._error(f"format version {version}, expected {CURRENT_VERSION} ({hint})")
        try:
            validate_page_size(self.page_size)
        except ValueError as exc:
            raise self._error(f"invalid header: {exc}") from None
        if self.num_fields == 0:
            raise self._error("invalid header: the file declares no fields")

    def _read_checksums(self) -> None:
        """Find the checksum block (before the header is trusted: a damaged header
        is then reported as such) and check the header and descriptors' sum."""
        self.checksums: Checksums | None = None
        self.checksums_damaged = False
        """Whether the file has a checksum block too damaged to check anything by."""
        if 0 < self.alloc_table_ptr <= self._file_size:
            try:
                self.checksums = locate_checksums(self._read_at, self.alloc_table_ptr)
            except BlockError as exc:
                self._damage(str(exc))
                self.checksums_damaged = True
        self.header_damaged = False
        """Whether the header (or a field descriptor) does not match its checksum:
        ``verify()`` then checks nothing else, since the header says where it lies."""
        if self.checksums is not None:
            head = self._read_at(0, metadata_offset(self.num_fields))
            if digest(head) != int(self.checksums.footer["head"]):
                self._damage("the header or the field descriptors are damaged (their "
                             "checksum does not match)")
                self.header_damaged = True
                self._header_problems = len(self._open_problems)

    def _read_fields(self) -> None:
        end = metadata_offset(self.num_fields)
        if end > self._file_size:
            raise self._error(
                f"truncated: {self.num_fields} field descriptors need {end} bytes, "
                f"the file has {self._file_size}"
            )
        self.field_descriptors = self._read_array(FieldDescType, self.num_fields,
                                                  HeaderType.itemsize)
        self.field_names = field_names(self.field_descriptors)
        if len(set(self.field_names)) != len(self.field_names):
            twice = sorted({n for n in self.field_names if self.field_names.count(n) > 1})
            raise self._error(f"two field descriptors have the name {twice[0]!r} (names longer "
                              "than 16 bytes cut by FFCV's writer, or damage)")
        check_field_classes(self.fname, self.custom_handlers, "custom_handlers")
        for desc, name in zip(self.field_descriptors, self.field_names, strict=True):
            type_id = int(desc["type_id"])
            if name in self.custom_handlers:
                continue
            if type_id == CUSTOM_TYPE_ID:
                try:
                    if tagged_class(desc["arguments"]) is not None:
                        continue  # one of fastforward's own field types
                except FormatError as exc:  # fastforward's marker, damaged arguments
                    raise self._error(f"field {name!r}: {exc}") from None
                unknown = describe_unknown(desc["arguments"])
                if unknown is not None:
                    raise self._error(f"field {name!r} is {unknown}")
                raise self._error(
                    f"field {name!r} is a custom field (type id 255): pass its class as "
                    f"custom_handlers={{{name!r}: YourField}} (custom_fields= for a Loader, "
                    "--custom-field NAME=MODULE:CLASS on the command line)"
                )
            if type_id not in TYPE_ID_HANDLER:
                raise self._error(f"field {name!r} has unknown type id {type_id}")
        try:
            handlers = get_handlers(self.field_descriptors, self.field_names, self.custom_handlers)
        except FormatError as exc:
            raise annotate(exc, self.fname) from exc.__cause__
        self.handlers: dict[str, Field] = dict(zip(self.field_names, handlers, strict=True))
        self._handler_list = handlers
        self.metadata_type = get_metadata_type(handlers)

    def _read_metadata(self) -> None:
        start = metadata_offset(self.num_fields)
        end = start + self.num_samples * self.metadata_type.itemsize
        if self.alloc_table_ptr == 0:
            raise self._error(
                "incomplete: alloc_table_ptr is 0, so the writer never finished this file"
            )
        if self.alloc_table_ptr > self._file_size:
            raise self._error(
                f"alloc_table_ptr {self.alloc_table_ptr} (in the header) points past the end "
                f"of the file ({self._file_size} bytes): truncated?"
            )
        if end > self.alloc_table_ptr:
            raise self._error(
                f"{self.num_samples} metadata rows of {self.metadata_type.itemsize} bytes end at "
                f"{end}, past the allocation table at {self.alloc_table_ptr} (the header's "
                f"alloc_table_ptr): the header is damaged{self._custom_class_hint()}"
            )
        self.metadata = self._read_array(self.metadata_type, self.num_samples, start)
        if self.checksums is not None and digest(self.metadata) != int(
                self.checksums.footer["metadata"]):
            self._damage("the metadata table is damaged (its checksum does not match)"
                         + self._custom_class_hint())
        self.metadata_end = end
        self.data_start = data_offset(
            self.num_fields, self.num_samples, self.metadata_type, self.page_size
        )
        # where the data pages end: the checksum block, or the allocation table
        self.data_end = self.alloc_table_ptr
        sums = self.checksums
        if sums is not None:
            pages_end = self.data_start + sums.num_pages * self.page_size
            expected = pages_end if sums.num_pages else end
            if sums.block_start != expected:
                self._damage(f"the checksum block starts at {sums.block_start}, not after "
                             f"the last of its {sums.num_pages} page(s) at {expected}")
                self.checksums, self.checksums_damaged = None, True
            else:
                self.data_end = sums.block_start
        elif not self.checksums_damaged and not (self.alloc_table_ptr == end or (
                self.alloc_table_ptr >= self.data_start
                and (self.alloc_table_ptr - self.data_start) % self.page_size == 0)):
            # FFCV and fastforward write whole pages, then the table (or a checksum
            # block first): bytes past the last whole page are a block whose marker is
            # damaged, which would otherwise turn every checksum off in silence
            extra = (self.alloc_table_ptr - self.data_start) % self.page_size \
                if self.alloc_table_ptr >= self.data_start else self.alloc_table_ptr - end
            self._damage(f"{extra} bytes between the data pages and the allocation table "
                         "(alloc_table_ptr): a checksum block whose marker is damaged, or a "
                         "damaged header")

    def _custom_class_hint(self) -> str:
        """Where custom field classes were given: that one may be the wrong class
        (its metadata then has another size or layout than the file's)."""
        given = [name for name in self.field_names if name in self.custom_handlers]
        if not given:
            return ""
        classes = ", ".join(f"{name!r}: {self.custom_handlers[name].__qualname__}"
                            for name in given)
        return (f", or a custom field class given ({classes}) is not the one the file was "
                "written with (its metadata would have another size or layout)")

    def _read_alloc_table(self) -> None:
        nbytes = self._file_size - self.alloc_table_ptr
        if nbytes % ALLOC_TABLE_TYPE.itemsize:
            raise self._error(
                f"the allocation table at alloc_table_ptr {self.alloc_table_ptr} (from the "
                f"header) has {nbytes} bytes, not a whole number of "
                f"{ALLOC_TABLE_TYPE.itemsize}-byte rows: truncated, bytes appended to it "
                "(the table runs to the file's end), or the header is damaged"
            )
        self.alloc_table = self._read_array(
            ALLOC_TABLE_TYPE, nbytes // ALLOC_TABLE_TYPE.itemsize, self.alloc_table_ptr)
        if self.checksums is not None and digest(self.alloc_table) != int(
                self.checksums.footer["alloc_table"]):
            self._damage("the allocation table is damaged (its checksum does not match)")
        table = self.alloc_table
        # an empty allocation may also lie a page before the data, where FFCV points
        # one made before its first page
        outside, stranger, in_order = scan_table(
            table["ptr"], table["size"], table["sample_id"], self.data_start, self.data_end,
            self.num_samples, max(0, self.data_start - self.page_size))
        if outside >= 0:
            row = table[outside]
            raise self._error(
                f"allocation of sample {int(row['sample_id'])} at {int(row['ptr'])} "
                f"({int(row['size'])} bytes) lies outside the data pages "
                f"[{self.data_start}, {self.data_end})"
            )
        if stranger >= 0:
            raise self._error(
                f"allocation table names sample {int(table['sample_id'][stranger])}, "
                f"but the header says the file has {self.num_samples} samples"
                f"{f' (0 to {self.num_samples - 1})' if self.num_samples else ''}: the "
                "header or the table is damaged"
            )
        if in_order:  # fastforward writes the table in order
            self._ptrs = np.ascontiguousarray(table["ptr"])
            self._sizes = np.ascontiguousarray(table["size"])
            self._owners = np.ascontiguousarray(table["sample_id"])
        else:
            order = np.argsort(table["ptr"], kind="stable")
            self._ptrs = np.ascontiguousarray(table["ptr"][order])
            self._sizes = np.ascontiguousarray(table["size"][order])
            self._owners = np.ascontiguousarray(table["sample_id"][order])
        # two payloads may not overlap (FFCV may put an empty one at the next one's offset)
        count, a, b = find_overlaps(self._ptrs, self._sizes)
        if count:
            self._damage(f"the allocations of samples {int(self._owners[a])} (at "
                         f"{int(self._ptrs[a])}, {int(self._sizes[a])} bytes) and "
                         f"{int(self._owners[b])} (at {int(self._ptrs[b])}) overlap",
                         count=count)

    def _index_payloads(self) -> None:
        """Each field's payload offsets and sizes, and each sample's page; refuse
        (or, without ``validate``, note) every payload that is not well-formed."""
        self.payload_offsets: dict[int, np.ndarray] = {}
        self.payload_nbytes: dict[int, np.ndarray] = {}
        n = self.num_samples
        shift = self.page_size.bit_length() - 1
        first_page = self.data_start >> shift
        self.sample_pages = np.full(n, -1, np.int64)  # data page index (from 0), -1: none
        found: list[tuple[np.ndarray, str, Callable[[int], str]]] = []
        pointer_columns: list[np.ndarray] = []
        row_columns: list[np.ndarray] = []  # each payload's row in the table (-1: none)
        first_rows = np.full(n, -1, np.int64)
        first_rows_into(self._owners, first_rows)
        searched = 0  # pointers not where the table's order puts them
        k = 0  # the pointer field's position among those with pointers
        # a custom field's allocations are no pointer field's: row first_rows + k may
        # be another field's, and where an empty one shares the next one's offset,
        # the offset alone does not say whose (FFCV writes an empty custom payload,
        # a YOLO sample without boxes, before the next field's): the sizes do
        by_size = not self._own_fields_only() and not self._sizes.all()
        for i, (name, handler) in enumerate(self.handlers.items()):
            pointers = handler.payload_pointers(self.metadata[f"f{i}"])
            if pointers is None:
                continue
            ptrs = np.ascontiguousarray(pointers, dtype=np.uint64)
            size = np.empty(n, np.uint64)
            flags = np.empty(n, np.uint8)
            rows = np.empty(n, np.int64)
            expected = self._expected_sizes(handler, self.metadata[f"f{i}"]) if by_size \
                else None
            flagged, missed = locate_payloads(
                self._ptrs, self._sizes, self._owners, first_rows, k, ptrs, shift, first_page,
                size, self.sample_pages, flags, expected, rows)
            k += 1
            searched += missed
            pointer_columns.append(ptrs)
            row_columns.append(rows)
            if flagged:
                def missing(s: int, p: np.ndarray = ptrs) -> str:
                    return self._missing_message(int(p[s]), s)

                def crossing(s: int, p: np.ndarray = ptrs, z: np.ndarray = size) -> str:
                    return f"payload at {int(p[s])} ({int(z[s])} bytes) crosses a page boundary"

                found += [
                    (flags == MISSING, name, missing),
                    (flags == CROSSES, name, crossing),
                    (flags == APART, name, lambda s: "payloads of one sample span two pages"),
                ]
            found += self._field_checks(handler, name, self.metadata[f"f{i}"], size,
                                        flags != MISSING if flagged else None)
            self.payload_offsets[i] = ptrs
            self.payload_nbytes[i] = size
        bad = [(mask, name, message) for mask, name, message in found if mask.any()]
        if bad and self.validate:  # the first damaged sample, and how many problems in all
            first = min(bad, key=lambda b: int(np.argmax(b[0])))
            sample = int(np.argmax(first[0]))
            total = sum(int(np.count_nonzero(b[0])) for b in bad)
            self._damage(first[2](sample), sample, first[1], count=total)
        for mask, name, message in bad:
            for sample in np.flatnonzero(mask).tolist():
                self._open_problems.append(Problem(sample, name, message(sample)))
        self._check_allocations_used(row_columns, searched > 0)

    def _check_allocations_used(self, row_columns: list[np.ndarray], searched: bool) -> None:
        """Every allocation is one payload's: none unused (a field dropped, a type
        changed), none named twice. Only where every field is one of fastforward's
        own, FFCV's or tagged (a custom field's pointers may be hidden from
        ``payload_pointers``). *row_columns*: each pointer field's rows, as located."""
        if not self._own_fields_only() or not self._ptrs.size:
            return
        if not searched and len(row_columns) * self.num_samples == len(self._ptrs):
            # every row where guessed: first_rows[s] + k differs for every (s, k), so the
            # rows are distinct, and as many as the table's
            return
        rows = np.concatenate(row_columns) if row_columns else np.zeros(0, np.int64)
        counts = np.bincount(rows[rows >= 0], minlength=len(self._ptrs))
        for bad, what in ((counts == 0, "is no field's payload"),
                          (counts > 1, "is the payload of two fields")):
            rows = np.flatnonzero(bad)
            if rows.size:
                k = int(rows[0])
                self._damage(f"the allocation of sample {int(self._owners[k])} at "
                             f"{int(self._ptrs[k])} ({int(self._sizes[k])} bytes) {what}",
                             count=int(rows.size))

    def _own_fields_only(self) -> bool:
        """Whether every field is one of fastforward's own, FFCV's or tagged: none is
        a custom field, whose allocations ``payload_pointers`` may not show."""
        return all(is_own_field(h) for h in self._handler_list)

    def _missing_message(self, ptr: int, sample: int) -> str:
        try:
            self.payload_size(ptr, sample)
        except FormatError as exc:
            return str(exc).split(": ", 2)[-1]
        return f"no allocation starts at offset {ptr}"  # pragma: no cover - sizes said so

    @staticmethod
    def _expected_sizes(handler: Field, column: np.ndarray) -> np.ndarray | None:
        """The size of each of a built-in field's payloads, where its metadata says
        it (``EXPECT_BYTES`` for a JPEG: at least a byte; ``EXPECT_ANY``: unknown);
        None for a field whose metadata says nothing of it."""
        kind = type(handler)
        if kind in (BytesField, JSONField) or (isinstance(handler, TaggedField) and
                                               handler.metadata_type == BYTES_METADATA):
            return np.ascontiguousarray(column["size"], np.uint64)
        if kind in (NDArrayField, TorchTensorField):
            return np.full(len(column), handler.element_size,  # type: ignore[attr-defined]
                           np.uint64)
        if kind is RGBImageField:
            mode = column["mode"]
            raw = column["height"].astype(np.uint64) * column["width"].astype(np.uint64) * 3
            return np.where(mode == IMAGE_MODES["raw"], raw,
                            np.where(mode == IMAGE_MODES["jpg"], np.uint64(EXPECT_BYTES),
                                     np.uint64(EXPECT_ANY))).astype(np.uint64)
        return None

    def _field_checks(self, handler: Field, name: str, column: np.ndarray, size: np.ndarray,
                      has: np.ndarray | None) -> list[tuple[np.ndarray, str, Callable[[int], str]]]:
        """The built-in fields' rules: the metadata agrees with the allocation (*has*:
        which samples have one; None: all)."""
        kind = type(handler)
        if kind in (BytesField, JSONField) or (isinstance(handler, TaggedField) and
                                               handler.metadata_type == BYTES_METADATA):
            # (fastforward's own fields too: a RaggedDecoder sizes its batch by them)
            stated = column["size"]
            return [(_where(has, stated != size), name, lambda s: (
                f"metadata says {int(stated[s])} bytes, the allocation holds {int(size[s])}"))]
        if kind in (NDArrayField, TorchTensorField):
            expected = handler.element_size  # type: ignore[attr-defined]
            return [(_where(has, size != np.uint64(expected)), name, lambda s: (
                f"array payload of {int(size[s])} bytes, expected {expected}"))]
        if kind is RGBImageField:
            mode = column["mode"]
            height = column["height"].astype(np.uint64)
            width = column["width"].astype(np.uint64)
            unknown = (mode != IMAGE_MODES["jpg"]) & (mode != IMAGE_MODES["raw"])
            empty = ~unknown & ((height == 0) | (width == 0))
            raw = _where(has, ~unknown & ~empty & (mode == IMAGE_MODES["raw"]))
            short = raw & (height * width * np.uint64(3) != size)
            return [
                (unknown, name, lambda s: f"unknown image mode {int(mode[s])}"),
                (empty, name, lambda s: f"empty image ({int(height[s])}×{int(width[s])})"),
                (short, name, lambda s: (
                    f"raw image of {int(height[s])}×{int(width[s])} needs "
                    f"{int(height[s] * width[s] * 3)} bytes, has {int(size[s])}")),
            ]
        return []  # a custom field: only its pointers can be checked

    # -- tables shared between processes -------------------------------------

    def _table_arrays(self) -> list[tuple[str, int | None, np.ndarray]]:
        """The arrays with a row per sample or per allocation: ``(attribute,
        key in it or None, array)``."""
        arrays: list[tuple[str, int | None, np.ndarray]] = [
            (name, None, getattr(self, name)) for name in _TABLES]
        arrays += [("payload_offsets", i, a) for i, a in self.payload_offsets.items()]
        arrays += [("payload_nbytes", i, a) for i, a in self.payload_nbytes.items()]
        return arrays

    def _adopt(self, arrays: list[tuple[str, int | None, np.ndarray]]) -> None:
        # the dicts are changed in place: a memory manager holds them
        self.payload_offsets = getattr(self, "payload_offsets", {})
        self.payload_nbytes = getattr(self, "payload_nbytes", {})
        for name, key, array in arrays:
            if key is None:
                setattr(self, name, array)
            else:
                getattr(self, name)[key] = array

    def share_tables(self) -> tuple[int, SharedTables]:
        """This reader's per-sample tables (metadata, allocation table, payload
        offsets and sizes, each sample's page: about 90 bytes a sample) in an
        anonymous shared-memory segment: its descriptor, and where each table
        lies, for ``Reader(..., fd=..., tables=...)`` in another process (send
        the descriptor with ``multiprocessing.reduction.send_handle``).

        From the first call on, this reader's own tables are read-only views of
        the segment, so that one copy serves this process and every one it
        shares them with; the descriptor stays open while the reader is.
        """
        if self._tables is not None:
            return self._tables
        arrays = self._table_arrays()
        entries: list[tuple[str, int | None, np.dtype[Any], int, int]] = []
        end = 0
        for name, key, array in arrays:
            offset = -(-end // 64) * 64
            entries.append((name, key, array.dtype, len(array), offset))
            end = offset + array.nbytes
        layout = SharedTables(max(end, 1), entries, {
            "metadata_end": self.metadata_end, "data_start": self.data_start,
            "data_end": self.data_end})
        fd = anonymous_shared_fd(layout.nbytes, "fastforward-tables")
        try:
            # written through the descriptor (half the time of writing through a
            # map, which faults each page in), then mapped read-only here too
            for (_, _, array), (_, _, _, _, offset) in zip(arrays, entries, strict=True):
                data = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
                done = 0
                while done < len(data):
                    done += os.pwrite(fd, data[done:], offset + done)
            views = layout.views(map_shared(fd, layout.nbytes, writable=False))
        except BaseException:
            os.close(fd)
            raise
        self._adopt(views)
        self._tables_closer = weakref.finalize(self, os.close, fd)
        self._tables = (fd, layout)
        return self._tables

    def _map_tables(self, segment: np.ndarray, layout: SharedTables) -> None:
        """Adopt the tables another reader of this file shared (``share_tables``)."""
        views = layout.views(segment)
        metadata = next(view for name, _, view in views if name == "metadata")
        if metadata.dtype != self.metadata_type or len(metadata) != self.num_samples:
            raise self._error("the shared tables are another file's")
        self._adopt(views)
        for name, value in layout.scalars.items():
            setattr(self, name, value)

    # -- payloads -------------------------------------------------------------

    @property
    def buffer(self) -> mmap.mmap:
        """A read-only map of the whole file, opened on first use."""
        if self._mmap is None:
            if not self._fd_closer.alive:  # never the name again: another file may have it
                raise ValueError(f"{self.fname}: the reader is closed")
            self._mmap = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
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
        row = self._own_row(ptr, sample, lo, hi)
        if row >= 0:
            return int(self._sizes[row])
        raise self._error(f"sample {sample}: the payload at offset {ptr} belongs to sample "
                          f"{int(self._owners[lo])}")

    def _own_row(self, ptr: int, sample: int, lo: int, hi: int) -> int:
        """Which of the rows ``[lo, hi)`` (those at offset *ptr*) is *sample*'s payload
        there; -1 where none is its.

        FFCV may store a zero-length payload at the next one's offset, so a sample may
        have several rows there: the fields whose payload is at *ptr* take theirs
        (found when the file was opened), and a custom field, which asks by offset,
        gets the first that none took (with none left, the last field's).
        """
        own = [i for i in range(lo, hi) if int(self._owners[i]) == sample]
        for i, offsets in self.payload_offsets.items():
            if len(own) > 1 and int(offsets[sample]) == ptr:
                claimed = int(self.payload_nbytes[i][sample])
                taken = next((j for j in own if int(self._sizes[j]) == claimed), None)
                if taken is not None:
                    own.remove(taken)
        return own[0] if own else -1

    def payload_sizes(self, ptrs: np.ndarray, samples: np.ndarray) -> np.ndarray:
        """Vectorised ``payload_size``: the size of each ``(ptr, sample)`` allocation.

        Returns int64 sizes, -1 where no allocation of that sample starts at
        that offset.
        """
        rows = self._payload_rows(ptrs, samples)
        sizes = np.full(len(rows), -1, np.int64)
        sizes[rows >= 0] = self._sizes[rows[rows >= 0]]
        return sizes

    def _payload_rows(self, ptrs: np.ndarray, samples: np.ndarray) -> np.ndarray:
        """Which allocation (a row of the table sorted by offset) each ``(ptr, sample)``
        is: int64, -1 where none of that sample starts at that offset."""
        ptrs = np.asarray(ptrs, np.uint64)
        samples = np.asarray(samples, np.uint64)
        result = np.full(len(ptrs), -1, np.int64)
        if self._ptrs.size == 0 or ptrs.size == 0:
            return result
        # rows are sorted by offset; FFCV may store two allocations at one offset, so
        # an offset's rows are [lo, hi) and the owner must match too
        lo = np.searchsorted(self._ptrs, ptrs, side="left")
        first = np.minimum(lo, len(self._ptrs) - 1)
        at = self._ptrs[first] == ptrs
        found = at & (self._owners[first] == samples)
        result[found] = first[found]
        # rare: a shared offset, where the sample's row may be a later one there
        nxt = np.minimum(first + 1, len(self._ptrs) - 1)
        for k in np.flatnonzero(at & (nxt > first) & (self._ptrs[nxt] == ptrs)):
            hi = int(np.searchsorted(self._ptrs, ptrs[k], side="right"))
            result[k] = self._own_row(int(ptrs[k]), int(samples[k]), int(lo[k]), hi)
        return result

    def payload(self, ptr: int, sample: int | None = None) -> memoryview:
        """The bytes of the payload at file offset *ptr* (no copy)."""
        size = self.payload_size(ptr, sample)
        return memoryview(self.buffer)[ptr : ptr + size]

    def _payload_reader(self, field: int, sample: int) -> Callable[[int], memoryview]:
        """``read_payload`` for field number *field* of *sample*: its own payload as
        found when the file was opened (FFCV gives an empty payload the next one's
        offset, so two of a sample's allocations may share one: the field's is the
        one in its place among the sample's), any other offset through the table."""
        own = self.payload_offsets.get(field)
        if own is None or self.payload_sizes(own[sample : sample + 1],
                                             np.array([sample], np.uint64))[0] < 0:
            return functools.partial(self.payload, sample=sample)  # which says what is wrong
        ptr, size = int(own[sample]), int(self.payload_nbytes[field][sample])
        buffer = memoryview(self.buffer)

        def read_payload(p: int) -> memoryview:
            if int(p) == ptr:
                return buffer[ptr : ptr + size]
            return self.payload(p, sample)

        return read_payload

    def read(self, index: int) -> tuple[Any, ...]:
        """Decode sample *index*: a tuple with one Python/NumPy value per field.

        Images come back as H×W×3 uint8 arrays, decoded as FFCV decodes them
        (libjpeg-turbo's fast IDCT). With ``verify_checksums``, the sample's
        page is checked against its sum first (once per page).
        """
        index = self._sample_index(index)
        return tuple(self._read_field(index, i, name)
                     for i, name in enumerate(self.handlers))

    def read_field(self, index: int, name: str) -> Any:
        """Decode field *name* of sample *index* alone, as ``read`` decodes it (a
        mask as its stored H×W ids, a ragged field's rows as a dict of columns)."""
        if name not in self.handlers:
            raise KeyError(f"{self.fname}: no field {name!r} (fields: {self.field_names})")
        index = self._sample_index(index)
        return self._read_field(index, self.field_names.index(name), name)

    def _sample_index(self, index: int) -> int:
        """*index* in ``[0, num_samples)`` (negative counts from the end), its page
        checked with ``verify_checksums``. A bool (True read sample 1), a fraction or
        a string is refused, naming the file."""
        try:
            if isinstance(index, bool):
                raise TypeError
            index = operator.index(index)
        except TypeError:
            raise TypeError(f"{self.fname}: a sample's index is an integer, got "
                            f"{type(index).__name__} {index!r}") from None
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"{self.fname}: sample {index} out of range [0, {self.num_samples})")
        index %= self.num_samples
        if self.verify_checksums:
            self.check_pages(self.sample_pages[index : index + 1])
        return index

    def _read_field(self, index: int, i: int, name: str) -> Any:
        try:
            return self.handlers[name].read(self.metadata[index][f"f{i}"],
                                            self._payload_reader(i, index))
        except Exception as exc:
            raise annotate(exc, f"{self.fname}: sample {index}, field {name!r}") \
                from exc.__cause__

    def __len__(self) -> int:
        return self.num_samples

    # -- checksums ------------------------------------------------------------

    def page_range(self, page: int) -> tuple[int, int]:
        """The file offsets ``[start, end)`` of data page *page* (counted from 0)."""
        start = self.data_start + page * self.page_size
        return start, start + self.page_size

    def check_pages(self, pages: np.ndarray,
                    read_page: Callable[[int], Any] | None = None) -> None:
        """Check data pages against their sums, each once per reader (thread-safe).

        Does nothing for a file without checksums. Pages already checked cost a
        vectorised look-up.

        Args:
            pages: data page indices (``sample_pages`` values; -1 entries are skipped).
            read_page: how to get page *k*'s bytes; default: from the memory map.

        Raises:
            FormatError: a page does not match its sum; names the file, the page
                and its samples.
        """
        if self._page_checks is None:
            return
        pages = np.asarray(pages, np.int64)
        pages = pages[pages >= 0]
        if read_page is None:
            view = memoryview(self.buffer)

            def read_page(k: int) -> memoryview:
                start, end = self.page_range(k)
                return view[start:end]

        bad = self._page_checks.ensure(pages, read_page)
        if bad.size:
            raise self._error(self._page_message(int(bad[0])))

    def _page_owners(self, page: int) -> np.ndarray:
        """The samples with a payload in *page*, in order."""
        start, end = self.page_range(page)
        return np.unique(self._owners[(self._ptrs >= start) & (self._ptrs < end)])

    def _page_message(self, page: int, owners: np.ndarray | None = None) -> str:
        start, end = self.page_range(page)
        owners = self._page_owners(page) if owners is None else owners
        listed = ", ".join(str(s) for s in owners[:8].tolist())
        if owners.size > 8:
            listed += f", … ({owners.size} samples)"
        return (f"page {page} (bytes {start}-{end - 1}) does not match its checksum: "
                f"the data of samples {listed or '(none)'} is damaged")

    # -- verification ---------------------------------------------------------

    def verify(self, decode: bool = False, progress: bool = False) -> list[Problem]:
        """Check every payload pointer, size and stored image, and every checksum;
        return the problems.

        The checks of ``Reader(...)`` are repeated here as a list (open with
        ``validate=False`` to see them all). ``checksums`` tells whether the file
        has sums at all: a file without them (FFCV's) cannot have damaged
        payload bytes found, except by decoding.

        Args:
            decode: also decode every sample not already found broken.
            progress: show a progress bar on stderr while decoding.
        """
        if self.header_damaged:
            # every other check reads where things lie from the header (the sample
            # count, the tables' places): what they would find says nothing more
            return [*self._open_problems[: self._header_problems],
                    Problem(None, None, "nothing else was checked: the header says where "
                                        "everything else lies")]
        problems = list(self._open_problems)
        problems += self._verify_images()
        problems += self._verify_checksums()
        if decode:
            broken = {p.sample for p in problems}
            problems += self._decode_all(broken, progress)
        return problems

    def _decode_all(self, skip: set[int | None], progress: bool) -> list[Problem]:
        from tqdm import tqdm

        problems = []
        for index in tqdm(range(self.num_samples), disable=not progress or sys.stderr is None,
                          unit="samples", desc="decoding"):
            if index in skip:
                continue
            row = self.metadata[index]
            for i, (name, handler) in enumerate(self.handlers.items()):
                try:
                    handler.read(row[f"f{i}"], self._payload_reader(i, index))
                except Exception as exc:
                    problems.append(Problem(index, name, f"cannot decode: {exc}"))
        return problems

    def _verify_images(self) -> list[Problem]:
        """Every stored JPEG's header against its metadata (this reads every JPEG)."""
        problems: list[Problem] = []
        broken = {p.sample for p in self._open_problems}
        for i, (name, handler) in enumerate(self.handlers.items()):
            if type(handler) is not RGBImageField or i not in self.payload_offsets:
                continue
            column = self.metadata[f"f{i}"]
            offsets, sizes = self.payload_offsets[i], self.payload_nbytes[i]
            for sample in np.flatnonzero(column["mode"] == IMAGE_MODES["jpg"]).tolist():
                if sample in broken:
                    continue
                start = int(offsets[sample])
                data = self.buffer[start : start + int(sizes[sample])]
                message = _check_jpeg(data, int(column["height"][sample]),
                                      int(column["width"][sample]))
                if message:
                    problems.append(Problem(sample, name, message))
        return problems

    def _verify_checksums(self) -> list[Problem]:
        sums = self.checksums
        if sums is None:
            return []
        problems = []
        if sums.num_pages:  # the padding after the metadata is zeros
            count, first = self._nonzero_bytes(self.metadata_end, self.data_start)
            if count:
                problems.append(Problem(None, None, (
                    f"the padding after the metadata has {count} non-zero byte(s), "
                    f"the first at offset {first}")))
        pages = memoryview(self.buffer)
        for page in range(sums.num_pages):
            start, end = self.page_range(page)
            if digest(pages[start:end]) != int(sums.page_sums[page]):
                owners = self._page_owners(page)
                problems.append(Problem(None, None, self._page_message(page, owners),
                                        tuple(owners.tolist())))
        return problems

    @functools.cached_property
    def samples_digest(self) -> str:
        """A digest of the samples' table and allocation table (xxh3 64 of each,
        hex): the same for the same samples written the same way (whatever the
        writer's worker count), another for other metadata values (labels, image
        sizes) or payload sizes, and another for the same samples on another page
        size (the pointers move). The payloads' bytes are not read (that would
        read the whole file): two files that differ only there (arrays of other
        values, JPEGs of the same lengths) share it. ``Loader.state_dict`` keeps
        it, so that a state is not resumed over a file of other samples: its
        order depends on nothing else."""
        return (f"{digest(np.ascontiguousarray(self.metadata).view(np.uint8)):016x}"
                f"{digest(np.ascontiguousarray(self.alloc_table).view(np.uint8)):016x}")

    # -- the file on disk -------------------------------------------------------

    def check_unchanged(self) -> None:
        """Raise FormatError if the file was truncated, extended or rewritten in place
        since it was opened.

        A loader calls it at the start of each epoch: a memory map of a file
        truncated under it kills the process with SIGBUS on the next read of a
        lost page, which no Python code can catch. A file *replaced* (a new file
        renamed over the name, as ``DatasetWriter`` does) is harmless: this
        reader goes on reading the file it opened.
        """
        if not self._fd_closer.alive:
            return
        now = _identity(os.fstat(self._fd))
        if now != self._identity:
            size, mtime = self._identity[0], self._identity[1]
            raise self._error(
                f"the file changed since it was opened ({size} bytes, modified "
                f"{_when(mtime)}; now {now[0]} bytes, modified {_when(now[1])}): a file "
                "being read must not be written in place (write a new file and rename it "
                "over the old one); open it again to read the new contents")

    # -- lifetime ---------------------------------------------------------------

    def fileno(self) -> int:
        """The descriptor of the file this reader opened: the file it reads, whatever
        its name names now (a file renamed over it, or none). Raises ValueError
        once the reader is closed."""
        if not self._fd_closer.alive:
            raise ValueError(f"{self.fname}: the reader is closed")
        return self._fd

    def close(self) -> None:
        """Release the memory map and the file (idempotent)."""
        if self._mmap is not None:
            # views still alive keep the map open; it closes when they go
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None
        self._fd_closer()
        if self._tables is not None:  # the shared tables' descriptor (their map stays)
            self._tables_closer()
            self._tables = None

    @property
    def file_name(self) -> str:
        """The file's path: FFCV's name for ``fname``."""
        return self.fname

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}: {type(h).__name__}" for n, h in self.handlers.items())
        return f"Reader({self.fname!r}, {self.num_samples} samples, {{{fields}}})"


def check_field_classes(fname: str, given: Mapping[str, Any], argument: str) -> None:
    """Refuse a value of *given* (``custom_fields`` of a Loader, ``custom_handlers``
    of a Reader) that is not a Field class, naming the file, the *argument* and the
    field, before it fails inside the reader."""
    for name, value in given.items():
        if not (isinstance(value, type) and issubclass(value, Field)):
            raise TypeError(f"{fname}: {argument}[{name!r}] must be a Field class (a "
                            f"subclass of fastforward.fields.Field), got {value!r}")


def _where(has: np.ndarray | None, bad: np.ndarray) -> np.ndarray:
    return bad if has is None else has & bad


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read into *view* from *offset*; how many bytes came (0: the end of the file)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, min(len(view), 1 << 30), offset)  # a platform without preadv
    view[: len(data)] = data
    return len(data)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def _when(mtime_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime_ns / 1e9))


def _check_jpeg(data: Any, height: int, width: int) -> str | None:
    """What is wrong with a stored JPEG's header, or None."""
    try:
        h, w, _, _ = jpeg_header(data, "bad JPEG header")
    except DecodeError as exc:
        return str(exc)
    if (h, w) != (height, width):
        return f"JPEG is {h}×{w}, the metadata says {height}×{width}"
    if data[-2:] != b"\xff\xd9":
        return "JPEG stream lacks its end-of-image marker (truncated?)"
    return None


__all__ = ["Problem", "Reader"]

"""Files fastforward writes follow FFCV 1.0.2's layout rules byte for byte.

These checks read the bytes with struct and NumPy, independently of
fastforward's own reader and of fastforward.types.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from fastforward import types
from fastforward.fields import (
    BytesField,
    FloatField,
    IntField,
    JSONField,
    NDArrayField,
    RGBImageField,
)
from fastforward.writer import DatasetWriter

PAGE = 1 << 21
# FFCV's own definitions, restated (ffcv/types.py and the field classes)
FFCV_HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
                        ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")], align=True)
FFCV_ALLOC = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
FFCV_RGB = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
FFCV_BYTES = np.dtype([("ptr", "<u8"), ("size", "<u8")])


@pytest.mark.parametrize(
    ("fields", "offsets", "itemsize"),
    [
        ([RGBImageField(), IntField()], [0, 16], 24),
        ([IntField(), RGBImageField()], [0, 8], 24),
        ([RGBImageField(), RGBImageField(), FloatField()], [0, 13, 32], 40),
        ([IntField(), FloatField(), BytesField(), NDArrayField("<f4", (2,)), JSONField(),
          RGBImageField()], [0, 8, 16, 32, 40, 56], 72),
        ([RGBImageField()], [0], 13),
    ],
    ids=["rgb-int", "int-rgb", "rgb-rgb-float", "all", "rgb"],
)
def test_metadata_row_layout(fields: list, offsets: list[int], itemsize: int) -> None:
    row = types.get_metadata_type(fields)
    assert [row.fields[name][1] for name in row.names] == offsets
    assert row.itemsize == itemsize


def test_fixed_sizes() -> None:
    assert types.HeaderType == FFCV_HEADER
    assert types.HeaderType.itemsize == 24
    assert types.FieldDescType.itemsize == 1041
    assert types.ALLOC_TABLE_TYPE == FFCV_ALLOC


class Mixed:
    """Samples of every built-in field, with sizes that force several pages."""

    def __init__(self, n: int, images: list[np.ndarray]) -> None:
        self.n, self.images = n, images

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple:
        rng = np.random.default_rng(i)
        blob = rng.integers(0, 256, int(rng.integers(0, 300_000)), dtype=np.uint8)
        return (i - 5, i * 0.5, blob, rng.standard_normal((2, 3)).astype("<f4"),
                {"i": i, "tags": ["x"] * (i % 3)}, self.images[i % len(self.images)])


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray]) -> Path:
    path = tmp_path_factory.mktemp("layout") / "mixed.beton"
    fields = {"label": IntField(), "weight": FloatField(), "blob": BytesField(),
              "array": NDArrayField(np.dtype("<f4"), (2, 3)), "meta": JSONField(),
              "image": RGBImageField(write_mode="proportion", max_resolution=64)}
    # FFCV's layout exactly (test_checksums.py checks the block checksums=True adds)
    DatasetWriter(path, fields, page_size=PAGE, num_workers=2, progress=False,
                  checksums=False).from_indexed_dataset(Mixed(40, images), chunksize=7)
    return path


def test_header_and_descriptors(written: Path) -> None:
    data = written.read_bytes()
    version, num_fields, page_size, num_samples, alloc_ptr = struct.unpack_from("<HHIQQ", data)
    assert (version, num_fields, page_size, num_samples) == (2, 6, PAGE, 40)
    names, type_ids = [], []
    for i in range(num_fields):
        desc = data[24 + 1041 * i : 24 + 1041 * (i + 1)]
        type_ids.append(desc[0])
        names.append(desc[1:17].split(b"\0")[0].decode())
        if desc[0] != 4:
            assert desc[17:] == bytes(1024)  # no arguments but for arrays
    assert type_ids == [1, 0, 3, 4, 5, 2]
    assert names == ["label", "weight", "blob", "array", "meta", "image"]
    args = data[24 + 1041 * 3 + 17 : 24 + 1041 * 4]
    assert struct.unpack_from("<QQQ", args) == (2, 3, 0)
    (length,) = struct.unpack_from("<Q", args, 256)
    assert json.loads(args[264 : 264 + length]) == [["", "<f4"]]
    assert alloc_ptr > 0


def test_pages_and_allocation_table(written: Path) -> None:
    data = written.read_bytes()
    _, num_fields, page, n, alloc_ptr = struct.unpack_from("<HHIQQ", data)
    row = np.dtype([("", np.dtype("<i8")), ("", np.dtype("<f8")), ("", FFCV_BYTES),
                    ("", np.dtype("<u8")), ("", FFCV_BYTES), ("", FFCV_RGB)], align=True)
    meta_start = 24 + 1041 * num_fields
    meta_end = meta_start + n * row.itemsize
    first_page = -(-meta_end // page) * page
    assert data[meta_end:first_page] == bytes(first_page - meta_end)  # zero padding
    assert (alloc_ptr - first_page) % page == 0  # whole pages
    assert (len(data) - alloc_ptr) % 24 == 0
    table = np.frombuffer(data, FFCV_ALLOC, offset=alloc_ptr)
    assert len(table) == 40 * 4  # one row per payload: blob, array, meta, image
    assert table["ptr"].min() >= first_page
    assert (table["ptr"] + table["size"]).max() <= alloc_ptr
    pages = table["ptr"] // page
    for sample in range(n):
        assert len(set(pages[table["sample_id"] == sample].tolist())) == 1  # one page each
    assert len(set(pages.tolist())) > 2
    assert len(np.unique(table["ptr"])) == len(table)  # no two payloads share an offset
    metadata = np.frombuffer(data, row, count=n, offset=meta_start)
    assert metadata["f0"].tolist() == [i - 5 for i in range(n)]
    # every pointer in the metadata is an allocation of its own sample
    owner = dict(zip(table["ptr"].tolist(), table["sample_id"].tolist(), strict=True))
    for column in (metadata["f2"]["ptr"], metadata["f3"], metadata["f4"]["ptr"],
                   metadata["f5"]["data_ptr"]):
        assert [owner[int(p)] for p in column] == list(range(n))
    size = dict(zip(table["ptr"].tolist(), table["size"].tolist(), strict=True))
    assert [size[int(p)] for p in metadata["f2"]["ptr"]] == metadata["f2"]["size"].tolist()


def test_json_payload_is_nul_terminated(written: Path) -> None:
    data = written.read_bytes()
    from fastforward.reader import Reader

    reader = Reader(written)
    meta = reader.metadata[3]["f4"]
    raw = data[int(meta["ptr"]) : int(meta["ptr"]) + int(meta["size"])]
    assert raw.endswith(b"\0")
    assert json.loads(raw[:-1]) == {"i": 3, "tags": []}


def test_no_payload_fields_have_no_pages(tmp_path: Path) -> None:
    path = tmp_path / "scalars.beton"
    DatasetWriter(path, {"a": IntField(), "b": FloatField()}, progress=False, num_workers=1,
                  checksums=False).from_indexed_dataset([(i, float(i)) for i in range(100)])
    data = path.read_bytes()
    assert len(data) == 24 + 2 * 1041 + 100 * 16  # as FFCV writes it
    assert struct.unpack_from("<Q", data, 16)[0] == len(data)


def test_the_data_of_metadata_ending_on_a_page_boundary_starts_there() -> None:
    """The data starts at the first page boundary at or after the metadata's end,
    not one page further where that end falls on a boundary."""
    row, page = np.dtype("u1"), 1 << 21
    samples = page - types.metadata_offset(1)  # one-byte rows: the metadata ends at `page`
    assert types.data_offset(1, samples, row, page) == page
    assert types.data_offset(1, samples + 1, row, page) == 2 * page

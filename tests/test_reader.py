"""Reader: damaged or foreign files raise FormatError naming the file and the defect."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture_dir

from fastforward.errors import FormatError
from fastforward.fields import IntField, NDArrayField
from fastforward.reader import Reader
from fastforward.writer import DatasetWriter


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.beton"
    shutil.copy(fixture_dir() / "basic.beton", path)
    path.chmod(0o644)
    return path


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def expect_error(path: Path, match: str) -> FormatError:
    with pytest.raises(FormatError, match=match) as info:
        Reader(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    return info.value


def test_reads_good_file(good: Path) -> None:
    assert Reader(good).num_samples == 60


@pytest.mark.parametrize("size", [0, 10, 100, 3000, 4194304 + 5], ids=lambda s: f"{s}B")
def test_truncated(good: Path, size: int) -> None:
    with open(good, "r+b") as f:
        f.truncate(size)
    expect_error(good, "truncated|past the end")


def test_writer_died(good: Path) -> None:
    patch(good, 16, struct.pack("<Q", 0))
    expect_error(good, "never finished")


@pytest.mark.parametrize("version", [0, 1, 3, 0xFFFF])
def test_wrong_version(good: Path, version: int) -> None:
    patch(good, 0, struct.pack("<H", version))
    expect_error(good, f"version {version}")


def test_alloc_pointer_past_end(good: Path) -> None:
    patch(good, 16, struct.pack("<Q", 1 << 40))
    expect_error(good, "past the end")


def test_alloc_pointer_inside_metadata(good: Path) -> None:
    patch(good, 16, struct.pack("<Q", 100))
    expect_error(good, "metadata rows")


def test_allocation_past_the_data(good: Path) -> None:
    table = struct.unpack_from("<Q", good.read_bytes(), 16)[0]
    patch(good, table + 16, struct.pack("<Q", 1 << 30))  # first row's size
    expect_error(good, "outside the data pages")


def test_allocation_of_unknown_sample(good: Path) -> None:
    table = struct.unpack_from("<Q", good.read_bytes(), 16)[0]
    patch(good, table, struct.pack("<Q", 10_000))
    expect_error(good, "names sample 10000")


def test_bad_page_size(good: Path) -> None:
    patch(good, 4, struct.pack("<I", 12345))
    expect_error(good, "page_size")


def test_unknown_type_id(good: Path) -> None:
    patch(good, 24 + 1041, bytes([77]))  # second field
    expect_error(good, "'label' has unknown type id 77")


def test_custom_field_without_handler(good: Path) -> None:
    patch(good, 24 + 1041, bytes([255]))
    err = expect_error(good, "custom field")
    assert "custom_handlers" in str(err)


def test_custom_field_with_handler(good: Path) -> None:
    patch(good, 24 + 1041, bytes([255]))
    reader = Reader(good, custom_handlers={"label": IntField})
    assert reader.read(0)[1] == 0


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.beton"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    expect_error(path, "version|truncated|page_size")


def test_bad_ndarray_arguments(tmp_path: Path) -> None:
    path = tmp_path / "arr.beton"
    DatasetWriter(path, {"a": NDArrayField("<f4", (3,))}, num_workers=1, progress=False,
                  checksums=False).from_indexed_dataset([np.zeros(3, "<f4")])
    patch(path, 24 + 17 + 256, struct.pack("<Q", 5000))  # dtype text length
    expect_error(path, "dtype")


def test_corrupt_jpeg_reported_by_verify_and_read(good: Path) -> None:
    reader = Reader(good)
    ptr = int(reader.metadata[5]["f0"]["data_ptr"])
    reader.close()
    patch(good, ptr, bytes(16))
    reader = Reader(good)
    problems = reader.verify()
    assert [(p.sample, p.field) for p in problems] == [(5, "image")]
    with pytest.raises(ValueError, match=r"sample 5, field 'image'"):
        reader.read(5)


def test_read_out_of_range(good: Path) -> None:
    with pytest.raises(IndexError, match="sample 60"):
        Reader(good).read(60)


def test_pointer_into_another_sample_is_refused(good: Path) -> None:
    reader = Reader(good)
    ptr0 = int(reader.metadata[0]["f0"]["data_ptr"])
    offset = 24 + 3 * 1041 + reader.metadata_type.itemsize * 1  # sample 1's row
    reader.close()
    patch(good, offset + reader.metadata_type.fields["f0"][1] + 5, struct.pack("<Q", ptr0))
    error = expect_error(good, "sample 1, field 'image': the payload at offset")
    assert "belongs to sample 0" in str(error)
    reader = Reader(good, validate=False)
    assert [(p.sample, p.field) for p in reader.verify()] == [(1, "image")]
    with pytest.raises(FormatError, match="belongs to sample 0"):
        reader.read(1)


def test_payload_sizes_match_payload_size(good: Path) -> None:
    reader = Reader(good)
    ptrs = reader.metadata["f0"]["data_ptr"].astype(np.uint64)
    samples = np.arange(reader.num_samples, dtype=np.uint64)
    sizes = reader.payload_sizes(ptrs, samples)
    assert sizes.tolist() == [reader.payload_size(int(p), int(s))
                              for p, s in zip(ptrs, samples, strict=True)]
    # another sample's offset, or an offset where no allocation starts: -1
    assert reader.payload_sizes(ptrs[:1], samples[1:2]).tolist() == [-1]
    assert reader.payload_sizes(ptrs[:1] + np.uint64(1), samples[:1]).tolist() == [-1]


def test_payload_sizes_with_two_allocations_at_one_offset(good: Path) -> None:
    # FFCV may give two samples' (empty) payloads the same offset: the owner decides
    reader = Reader(good)
    reader._ptrs = np.array([100, 200, 200, 200, 300], np.uint64)
    reader._owners = np.array([0, 4, 2, 3, 1], np.uint64)
    reader._sizes = np.array([10, 0, 7, 0, 30], np.uint64)
    got = reader.payload_sizes(np.array([200, 200, 200, 300, 200, 50, 400], np.uint64),
                               np.array([2, 3, 4, 1, 9, 0, 0], np.uint64))
    assert got.tolist() == [7, 0, 0, 30, -1, -1, -1]

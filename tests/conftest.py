"""Shared fixtures: real photographs (scikit-image's sample data, shipped in
its wheel) re-encoded and cropped to varied sizes; nothing is downloaded."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "ffcv-v2"
LOCAL_FIXTURES = Path(__file__).resolve().parent / "data" / "ffcv-v2"


def fixture_dir() -> Path:
    """FFCV-written golden files: the committed copy, or ../shared beside the checkout."""
    for candidate in (LOCAL_FIXTURES, FIXTURES):
        if (candidate / "basic.beton").exists():
            return candidate
    raise FileNotFoundError(f"no FFCV fixtures in {LOCAL_FIXTURES} or {FIXTURES}")


@pytest.fixture(scope="session", autouse=True)
def children_keep_their_temporary_files_here() -> Iterator[Path]:
    """The processes that tests kill (SIGKILL, SIGTERM) cannot remove what Python's
    multiprocessing made for them (a pymp-* folder holding the fork server's
    socket; fastforward's fork servers remove it, others do not): their TMPDIR is
    a folder of this session's own, removed at its end.
    Short, under the system's temporary folder: a socket's path has 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fastforward-tests-"))
    patch = pytest.MonkeyPatch()
    patch.setenv("TMPDIR", str(path))
    try:
        yield path
    finally:
        patch.undo()
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """The source photographs as RGB uint8 arrays."""
    from fastforward.demo import load_photos

    return load_photos()


@pytest.fixture(scope="session")
def images(photos: list[np.ndarray]) -> list[np.ndarray]:
    """Twenty real images of varied sizes (odd ones included), C-contiguous."""
    rng = np.random.default_rng(1234)
    out = []
    for i in range(20):
        photo = photos[i % len(photos)]
        h = int(rng.integers(17, min(photo.shape[0], 300)))
        w = int(rng.integers(17, min(photo.shape[1], 300)))
        y = int(rng.integers(photo.shape[0] - h + 1))
        x = int(rng.integers(photo.shape[1] - w + 1))
        out.append(np.ascontiguousarray(photo[y : y + h, x : x + w]))
    return out


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder of 40 realistic JPEGs (about 500×375, quality 89-97)."""
    from fastforward.demo import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus") / "images", 40, seed=7)


@pytest.fixture
def cpu_count() -> int:
    return os.cpu_count() or 1


def photo_crops_file(path: Path, photos: list[np.ndarray], count: int, height: int, width: int,
                     seed: int) -> Path:
    """Write *count* crops of height × width from the photographs, at random places
    (``seed``), labelled 0, 1, 2, 0, ..., as JPEGs in a .beton at *path*."""
    from fastforward.fields import IntField, RGBImageField
    from fastforward.writer import DatasetWriter

    rng = np.random.default_rng(seed)
    samples = []
    for k in range(count):
        photo = photos[k % len(photos)]
        y = int(rng.integers(photo.shape[0] - height))
        x = int(rng.integers(photo.shape[1] - width))
        samples.append((np.ascontiguousarray(photo[y : y + height, x : x + width]), k % 3))
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg"), "label": IntField()},
                  num_workers=1, progress=False).from_indexed_dataset(samples)
    return path


def strip_checksums(src: Path, dst: Path) -> Path:
    """Copy *src* without its checksum block: FFCV's layout, as ``checksums=False``
    writes it."""
    import struct

    from fastforward.reader import Reader

    with Reader(src) as reader:
        sums = reader.checksums
        assert sums is not None, f"{src} has no checksums"
        start, end = sums.block_start, reader.alloc_table_ptr
    data = bytearray(src.read_bytes())
    del data[start:end]
    struct.pack_into("<Q", data, 16, start)
    dst.write_bytes(bytes(data))
    return dst


def move_payload(path: Path, sample: int, field: int, to: int, data: bytes | None = None) -> None:
    """Move field *field*'s payload of *sample* to offset *to* in a file written
    without checksums: its pointer in the metadata and its row of the allocation
    table; *data*, where given, is written there (the payload's bytes). Makes the
    layouts FFCV writes (an empty payload at the next one's offset) from
    fastforward's files, which give an empty payload a byte of its own."""
    import struct

    from fastforward.reader import Reader

    with Reader(path) as reader:
        column = reader.metadata_type[f"f{field}"]
        sub = "data_ptr" if "data_ptr" in column.names else "ptr"
        where = (24 + 1041 * reader.num_fields + sample * reader.metadata_type.itemsize
                 + reader.metadata_type.fields[f"f{field}"][1] + column.fields[sub][1])
        old = int(reader.metadata[sample][f"f{field}"][sub])
        rows = reader.alloc_table
        (row,) = np.flatnonzero((rows["sample_id"] == sample) & (rows["ptr"] == old))
        table = int(reader.header["alloc_table_ptr"]) + int(row) * rows.dtype.itemsize
        pointer = table + rows.dtype.fields["ptr"][1]
    with open(path, "r+b") as f:
        for offset, value in ((where, struct.pack("<Q", to)), (pointer, struct.pack("<Q", to)),
                              (to, data or b"")):
            f.seek(offset)
            f.write(value)

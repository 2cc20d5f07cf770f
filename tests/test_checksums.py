"""Checksums: the block the writer adds, what verify and the loader find with it."""

from __future__ import annotations

import os
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture_dir, strip_checksums

from fastforward.checksums import FOOTER_SIZE, PageChecks, block_size, digest
from fastforward.errors import FormatError
from fastforward.fields import (
    BytesField,
    FloatField,
    IntField,
    JSONField,
    NDArrayField,
    RGBImageField,
)
from fastforward.fields.decoders import BytesDecoder, IntDecoder, NDArrayDecoder
from fastforward.loader import Loader, OrderOption
from fastforward.reader import Reader
from fastforward.writer import DatasetWriter

PAGE = 1 << 21


def write(path: Path, images: list[np.ndarray], checksums: bool = True, n: int = 60) -> Path:
    """Every built-in field, over 3 pages of 2 MiB (blobs of up to 150 kB)."""
    rng = np.random.default_rng(5)
    data = [(i, i / 4, rng.integers(0, 256, int(rng.integers(0, 150_000)), dtype=np.uint8),
             rng.standard_normal((2, 3)).astype("<f4"), {"i": i},
             images[i % len(images)]) for i in range(n)]
    fields = {"label": IntField(), "score": FloatField(), "blob": BytesField(),
              "array": NDArrayField(np.dtype("<f4"), (2, 3)), "meta": JSONField(),
              "image": RGBImageField(write_mode="proportion", max_resolution=48)}
    DatasetWriter(path, fields, page_size=PAGE, num_workers=1, progress=False,
                  checksums=checksums).from_indexed_dataset(data)
    return path


@pytest.fixture(scope="module")
def summed(tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray]) -> Path:
    return write(tmp_path_factory.mktemp("sums") / "summed.beton", images)


@pytest.fixture
def copy(summed: Path, tmp_path: Path) -> Path:
    path = tmp_path / "copy.beton"
    shutil.copyfile(summed, path)
    return path


def flip(path: Path, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


# -- the layout ---------------------------------------------------------------------------------


def test_block_is_the_only_difference_from_ffcv_layout(summed: Path, images: list[np.ndarray],
                                                       tmp_path: Path) -> None:
    plain = write(tmp_path / "plain.beton", images, checksums=False)
    with Reader(summed) as reader:
        sums = reader.checksums
        assert sums is not None
        assert sums.algorithm == "xxh3_64"
        start, end, pages = sums.block_start, reader.alloc_table_ptr, sums.num_pages
        assert pages == 3
        assert start == reader.data_start + pages * PAGE  # right after the last page
    assert end - start == block_size(pages) == 8 * pages + FOOTER_SIZE
    with_sums, without = summed.read_bytes(), plain.read_bytes()
    assert struct.unpack_from("<Q", without, 16)[0] == start
    assert with_sums[24:start] == without[24:start]
    assert with_sums[end:] == without[start:]
    assert with_sums[:16] == without[:16]
    assert strip_checksums(summed, tmp_path / "stripped.beton").read_bytes() == without
    with Reader(plain) as reader:
        assert reader.checksums is None
        assert reader.verify() == []


def test_page_sums_are_the_pages_hashes(summed: Path) -> None:
    with Reader(summed) as reader:
        data = summed.read_bytes()
        assert reader.checksums is not None
        for k, stored in enumerate(reader.checksums.page_sums.tolist()):
            start, end = reader.page_range(k)
            assert stored == digest(data[start:end])
        footer = reader.checksums.footer
        assert int(footer["metadata"]) == digest(reader.metadata.tobytes())
        assert int(footer["alloc_table"]) == digest(reader.alloc_table.tobytes())
        assert int(footer["head"]) == digest(data[: 24 + 1041 * 6])


def test_scalar_only_file_has_a_block_after_the_metadata(tmp_path: Path) -> None:
    path = tmp_path / "scalars.beton"
    DatasetWriter(path, {"a": IntField(), "b": FloatField()}, progress=False,
                  num_workers=1).from_indexed_dataset([(i, i / 2) for i in range(100)])
    size = 24 + 2 * 1041 + 100 * 16
    assert path.stat().st_size == size + FOOTER_SIZE  # no pages, no allocations
    with Reader(path) as reader:
        assert reader.checksums is not None
        assert reader.checksums.num_pages == 0
        assert reader.verify() == []
    flip(path, size - 3)  # a label
    with pytest.raises(FormatError, match="metadata table is damaged"):
        Reader(path)


@pytest.mark.parametrize("pages", ["with pages", "without"])
def test_a_block_whose_marker_is_damaged_is_damage_not_no_block(
        copy: Path, tmp_path: Path, pages: str) -> None:
    """Zeroing the footer's 8 magic bytes turned the checksums off in silence: the
    file read as one without a block (as FFCV writes), and a flipped payload byte
    went through verify_checksums=True and `fastforward verify`."""
    path = copy
    if pages == "without":
        path = tmp_path / "scalars.beton"
        DatasetWriter(path, {"a": IntField()}, progress=False, num_workers=1
                      ).from_indexed_dataset([(i,) for i in range(10)])
    with Reader(path) as reader:
        footer = reader.alloc_table_ptr - FOOTER_SIZE
    with open(path, "r+b") as f:
        f.seek(footer)
        f.write(bytes(8))
    with pytest.raises(FormatError, match=r"bytes between the data pages and the allocation "
                                          r"table \(alloc_table_ptr\): a checksum block whose "
                                          r"marker is damaged"):
        Reader(path)
    with Reader(path, validate=False) as reader:
        assert any("marker is damaged" in str(problem) for problem in reader.verify())


def test_a_damaged_block_is_reported_once_and_not_as_no_block(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A flipped bit in the footer was reported, then again as stray bytes before the
    allocation table, and `verify` said the file had no checksums (written by FFCV)."""
    from fastforward.cli import main

    path = tmp_path / "scalars.beton"
    DatasetWriter(path, {"a": IntField()}, progress=False, num_workers=1
                  ).from_indexed_dataset([(i,) for i in range(10)])
    with Reader(path) as reader:
        at = reader.alloc_table_ptr - 64
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 1]))
    with Reader(path, validate=False) as reader:
        problems = [str(p) for p in reader.verify()]
        assert reader.checksums is None
        assert reader.checksums_damaged
    assert problems == ["the checksum block's footer is damaged (its own sum does not match)"]
    assert main(["verify", str(path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "checksum block cannot be used (above), so nothing was checked by it" in out
    assert "none in this file" not in out


def test_checksums_false_writes_none(tmp_path: Path, images: list[np.ndarray]) -> None:
    with Reader(write(tmp_path / "plain.beton", images, checksums=False, n=5)) as reader:
        assert reader.checksums is None


@pytest.mark.parametrize("name", ["basic", "all_fields"])
def test_ffcv_files_have_none_and_load_with_verify_checksums(name: str) -> None:
    path = fixture_dir() / f"{name}.beton"
    with Reader(path) as reader:
        assert reader.checksums is None
        assert reader.verify() == []
    with Reader(path) as reader:  # every field but the image, decoded to NumPy (no torch)
        pipelines = {name: None if name == "image" else [handler.get_decoder_class()()]
                     for name, handler in reader.handlers.items()}
    loader = Loader(path, 7, pipelines=pipelines, verify_checksums=True, drop_last=False)
    assert sum(len(batch[0]) for batch in loader) == Reader(path).num_samples


# -- a flipped bit anywhere is reported, with where it is ---------------------------------------


def regions(path: Path) -> dict[str, tuple[int, int, str]]:
    """name -> (start, end, what the report says)."""
    with Reader(path) as reader:
        sums = reader.checksums
        assert sums is not None
        meta = 24 + 1041 * reader.num_fields
        found = {
            "header": (0, 24, "header"),
            "descriptors": (24, meta, "field descriptors"),
            "metadata": (meta, reader.metadata_end, "metadata table"),
            "padding": (reader.metadata_end, reader.data_start, "padding"),
            "page sums": (sums.block_start, reader.alloc_table_ptr - FOOTER_SIZE,
                          "checksum block"),
            "footer": (reader.alloc_table_ptr - FOOTER_SIZE, reader.alloc_table_ptr,
                       "checksum block"),
            "allocation table": (reader.alloc_table_ptr, path.stat().st_size,
                                 "allocation table"),
        }
        for k in range(sums.num_pages):
            start, end = reader.page_range(k)
            found[f"page {k}"] = (start, end, f"page {k} (bytes {start}-{end - 1})")
        return found


def report(path: Path) -> str:
    """What fastforward says about *path*: the error on opening, or verify's problems."""
    try:
        reader = Reader(path)
    except FormatError as exc:
        return str(exc) if str(exc).startswith(f"{path}: ") else f"(no file name) {exc}"
    with reader:
        return "\n".join(str(p) for p in reader.verify())


@pytest.mark.parametrize("region", ["header", "descriptors", "metadata", "padding", "page 0",
                                    "page 1", "page 2", "page sums", "footer",
                                    "allocation table"])
def test_every_flipped_bit_is_reported_with_where(summed: Path, tmp_path: Path,
                                                  region: str) -> None:
    start, end, where = regions(summed)[region]
    rng = np.random.default_rng(zlib.crc32(region.encode()))
    # the first and last byte of the region, and random ones, each bit position once
    # (the header: every bit of every byte)
    offsets = [start, end - 1, *rng.integers(start, end, 6).tolist()]
    if region == "header":
        offsets = [o for o in range(24) for _ in range(8)]
    for k, offset in enumerate(offsets):
        path = tmp_path / f"{k}.beton"
        shutil.copyfile(summed, path)
        flip(path, offset, bit=k % 8)
        said = report(path)
        assert where in said, f"bit {k % 8} of byte {offset} ({region}): {said!r}"
        path.unlink()


# -- the loader ---------------------------------------------------------------------------------


def array_loader(path: Path, os_cache: bool, **kw: object) -> Loader:
    pipelines = {"label": [IntDecoder()], "array": [NDArrayDecoder()], "blob": [BytesDecoder()],
                 "score": None, "meta": None, "image": None}
    return Loader(path, 8, num_workers=2, os_cache=os_cache, pipelines=pipelines,
                  drop_last=False, **kw)


@pytest.mark.parametrize("os_cache", [True, False], ids=["os_cache", "process_cache"])
def test_loader_verify_checksums_finds_a_damaged_array(summed: Path, copy: Path,
                                                       os_cache: bool) -> None:
    with Reader(copy) as reader:
        victim = 29
        ptr = int(reader.metadata["f3"][victim])
        page = int(reader.sample_pages[victim])
    flip(copy, ptr + 2, bit=6)  # one float's exponent: silently different without checksums
    without = {int(i): a.copy() for labels, _, arrays in array_loader(copy, os_cache)
               for i, a in zip(labels[:, 0], arrays, strict=True)}
    original = Reader(summed).read(victim)[3]
    assert without[victim].tobytes() != original.tobytes()  # nothing else can tell
    with pytest.raises(FormatError, match=rf"page {page} \(bytes \d+-\d+\) does not match") \
            as info:
        for _ in array_loader(copy, os_cache, verify_checksums=True, order=OrderOption.RANDOM,
                              seed=1):
            pass
    message = str(info.value)
    assert message.startswith(f"{copy}: ")
    assert f"{victim}" in message.split("samples", 1)[1]


@pytest.mark.parametrize("os_cache", [True, False], ids=["os_cache", "process_cache"])
def test_loader_verify_checksums_gives_the_same_batches(summed: Path, os_cache: bool) -> None:
    def epoch(loader: Loader) -> list[bytes]:
        return [labels.tobytes() + data.tobytes() + data.lengths.tobytes() + arrays.tobytes()
                for labels, data, arrays in loader]

    plain = array_loader(summed, os_cache, order=OrderOption.RANDOM, seed=4)
    checked = array_loader(summed, os_cache, order=OrderOption.RANDOM, seed=4,
                           verify_checksums=True)
    assert epoch(checked) == epoch(plain)
    assert (checked.reader._page_checks.state == 2).all()  # every page checked, and good
    assert epoch(checked) == epoch(plain)  # a later epoch: nothing hashed again


def test_pages_are_checked_once_whatever_the_threads(summed: Path) -> None:
    with Reader(summed) as reader:
        sums = reader.checksums
        assert sums is not None
        checks = PageChecks(sums.page_sums)
        reads: list[int] = []
        lock = threading.Lock()

        def read_page(k: int) -> memoryview:
            with lock:
                reads.append(k)
            start, end = reader.page_range(k)
            return memoryview(reader.buffer)[start:end]

        barrier = threading.Barrier(8)

        def run() -> None:
            barrier.wait()
            for _ in range(20):
                assert checks.ensure(np.array([0, 1, 2, 1]), read_page).size == 0

        threads = [threading.Thread(target=run) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(reads) == [0, 1, 2]


def test_a_failed_page_read_leaves_it_unchecked(summed: Path) -> None:
    with Reader(summed) as reader:
        assert reader.checksums is not None
        checks = PageChecks(reader.checksums.page_sums)

        def broken(k: int) -> bytes:
            raise OSError("disk gone")

        with pytest.raises(OSError, match="disk gone"):
            checks.ensure(np.array([0, 1]), broken)
        assert checks.state.tolist() == [0, 0, 0]
        view = memoryview(reader.buffer)
        assert checks.ensure(np.array([1]), lambda k: view[slice(*reader.page_range(k))]) \
            .size == 0
        assert checks.state.tolist() == [0, 2, 0]


def test_reader_verify_checksums_read(copy: Path) -> None:
    with Reader(copy) as reader:
        ptr = int(reader.metadata["f2"]["ptr"][3])
        page = int(reader.sample_pages[3])
        others = np.flatnonzero(reader.sample_pages != page)
    flip(copy, ptr)
    Reader(copy).read(3)  # unchecked: the damaged bytes come back
    reader = Reader(copy, verify_checksums=True)
    reader.read(int(others[0]))  # another page is fine
    with pytest.raises(FormatError, match=rf"page {page} .* samples .*\b3\b"):
        reader.read(3)


# -- the file changing under a loader ------------------------------------------------------------


def test_truncated_file_is_refused_at_the_next_epoch(copy: Path) -> None:
    loader = array_loader(copy, True)
    for _ in loader:
        pass
    with open(copy, "r+b") as f:
        f.truncate(os.path.getsize(copy) // 2)
    with pytest.raises(FormatError, match=r"changed since it was opened .* now") as info:
        iter(loader)
    assert str(copy) in str(info.value)
    loader.close()


def test_rewritten_in_place_is_refused(copy: Path) -> None:
    loader = array_loader(copy, True)
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(FormatError, match="changed since it was opened"):
        iter(loader)
    loader.close()


def test_replaced_file_is_harmless(copy: Path, tmp_path: Path) -> None:
    loader = array_loader(copy, True)
    first = [np.asarray(b[0]).copy() for b in loader]
    (tmp_path / "other").write_bytes(b"not a beton")
    os.replace(tmp_path / "other", copy)  # the loader goes on reading the file it opened
    again = [np.asarray(b[0]).copy() for b in loader]
    assert all((a == b).all() for a, b in zip(first, again, strict=True))
    loader.close()


def test_truncated_mid_epoch_without_the_map_is_an_os_error(copy: Path) -> None:
    loader = array_loader(copy, False)  # os_cache=False: pread, no memory map
    iterator = iter(loader)
    next(iterator)
    with open(copy, "r+b") as f:
        f.truncate(PAGE)  # every data page gone
    with pytest.raises(OSError, match=rf"{copy}: unexpected end of file"):
        for _ in iterator:
            pass
    loader.close()


@pytest.mark.parametrize("os_cache", [True, False], ids=["os_cache", "process_cache"])
def test_process_workers_check_pages_too(summed: Path, copy: Path, os_cache: bool) -> None:
    # the worker processes read their ranges themselves; the loader's own fetch of
    # each batch checks its pages before the batch is handed to them
    with Reader(copy) as reader:
        victim = 41
        ptr = int(reader.metadata["f3"][victim])
        page = int(reader.sample_pages[victim])
    flip(copy, ptr + 1)

    def epoch(path: Path, verify: bool) -> list[bytes]:
        with array_loader(path, os_cache, worker_type="process",
                          verify_checksums=verify) as loader:
            assert loader.workers.kind == "process"
            return [labels.tobytes() + arrays.tobytes() for labels, _, arrays in loader]

    assert epoch(summed, True) == epoch(summed, False)
    with pytest.raises(FormatError, match=rf"{copy}: page {page} "):
        epoch(copy, True)


def test_verify_stops_at_a_damaged_header(copy: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    """A sample count raised in the header (7 to 200): verify said the metadata table
    was damaged (its bytes were intact) and listed two problems for every sample
    the file never had, then '200 samples checked'. Everything else is found
    through the header: it says the header is damaged, and stops."""
    from fastforward.cli import main

    with open(copy, "r+b") as file:
        file.seek(8)  # num_samples
        file.write(np.uint64(200).tobytes())
    reader = Reader(copy, validate=False)
    assert reader.header_damaged
    assert [str(p) for p in reader.verify(decode=True)] == [
        "the header or the field descriptors are damaged (their checksum does not match)",
        "nothing else was checked: the header says where everything else lies"]
    assert main(["verify", str(copy)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"{copy}: FAILED: the header is damaged (it says 200 samples, which may be wrong)")


def test_verify_gives_the_checksums_diagnosis_before_what_follows_from_it(
        copy: Path) -> None:
    """Without validate (``fastforward verify``), a flipped bit in the header's version
    was reported as 'format version 6' and the checksum's verdict was lost; `info`
    said the header was damaged."""
    flip(copy, 0, 2)  # the version: 2 -> 6
    with pytest.raises(FormatError, match=r"the header or the field descriptors are damaged "
                                          r"\(their checksum does not match\); then: format "
                                          r"version 6"):
        Reader(copy, validate=False)
    with pytest.raises(FormatError, match=r"damaged \(their checksum does not match\)$"):
        Reader(copy)

"""The ``fastforward`` command line, run in-process through ``main`` (and once as a program)."""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import move_payload, strip_checksums

from fastforward._version import __version__
from fastforward.cli import main, parse_size
from fastforward.errors import FormatError
from fastforward.reader import Reader

pytest.importorskip("skimage")

NUM_IMAGES = 24
FAST = ["--num-workers", "2", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ImageFolder of demo JPEGs (about 500×375)."""
    from fastforward.demo import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus") / "imgs", NUM_IMAGES, seed=0)


@pytest.fixture(scope="module")
def beton(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus converted with the default options (JPEG, max resolution 256)."""
    out = tmp_path_factory.mktemp("beton") / "out.beton"
    assert main(["convert", str(corpus), str(out), *FAST]) == 0
    return out


def run_info(capsys: pytest.CaptureFixture[str], path: Path) -> dict[str, Any]:
    """``info --json`` of *path*, parsed."""
    capsys.readouterr()
    assert main(["info", "--json", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def assert_one_line_error(capsys: pytest.CaptureFixture[str], status: int, expected: int,
                          *fragments: str) -> str:
    """Check that a command failed with *expected* status and one ``error:`` line."""
    err = capsys.readouterr().err
    assert status == expected, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastforward: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def image_field(info: dict[str, Any]) -> dict[str, Any]:
    """The ``image`` field's entry of an ``info --json`` result."""
    (field,) = (f for f in info["fields"] if f["name"] == "image")
    return field


# -- convert and info ---------------------------------------------------------------------------


def test_convert_prints_a_summary(corpus: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.beton"
    assert main(["convert", str(corpus), str(out), *FAST]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"wrote {NUM_IMAGES} samples to {out} in ")
    assert "images/s" in lines[0]
    assert "MiB" in lines[0]


def test_convert_notes_class_folders_without_images(corpus: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """An empty (or hidden, such as .ipynb_checkpoints) class folder took a label
    that no sample has, without a word."""
    folder = tmp_path / "imgs"
    shutil.copytree(corpus, folder)
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / "zz_empty").mkdir()
    assert main(["convert", str(folder), str(tmp_path / "x.beton"), *FAST]) == 0
    lines = capsys.readouterr().out.splitlines()
    classes = sorted(p.name for p in folder.iterdir())
    assert lines[1] == (
        f"note: 2 class folder(s) hold no image, so their labels appear in no sample: "
        f"{classes.index('.ipynb_checkpoints')} ('.ipynb_checkpoints'), "
        f"{classes.index('zz_empty')} ('zz_empty') (torchvision's ImageFolder numbers "
        "classes the same way, and refuses such folders unless allow_empty=True)")


def test_convert_notes_classes_whose_every_image_was_skipped(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A class folder whose only images --skip-bad left out took a label that no
    sample has, and only folders empty from the start were noted."""
    folder = tmp_path / "imgs"
    shutil.copytree(corpus, folder)
    (folder / "zz_bad").mkdir()
    (folder / "zz_bad" / "cut.jpg").write_bytes(b"\xff\xd8 and nothing else")
    assert main(["convert", str(folder), str(tmp_path / "x.beton"), "--skip-bad", *FAST]) == 0
    label = sorted(p.name for p in folder.iterdir()).index("zz_bad")
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"note: every image of 1 class folder(s) was skipped, so their labels appear in no "
        f"sample: {label} ('zz_bad')")


def test_info_json(beton: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = run_info(capsys, beton)
    assert info["num_samples"] == NUM_IMAGES
    assert info["page_size"] == 8 << 20
    assert info["file_size"] == beton.stat().st_size
    assert info["num_pages"] == 1
    assert [(f["name"], f["class"]) for f in info["fields"]] == [
        ("image", "RGBImageField"), ("label", "IntField"),
    ]
    image = image_field(info)
    assert image["modes"] == {"jpg": NUM_IMAGES, "raw": 0}
    assert image["max_side"] == 256  # every source image is larger
    assert max(image["width"]["max"], image["height"]["max"]) <= 256
    assert 0 < image["width"]["mean"] <= image["width"]["max"]
    assert image["pixels"]["max"] <= 256 * 256
    with Reader(beton) as reader:
        sizes = [reader.payload_size(int(row["f0"]["data_ptr"]), i)
                 for i, row in enumerate(reader.metadata)]
    assert image["mean_jpeg_bytes"] == pytest.approx(np.mean(sizes))


def test_info_sizes_each_fields_own_jpegs_where_an_empty_payload_shares_their_offset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """FFCV gives an empty payload the next one's offset: ``info`` took the empty
    one's size (0) for the JPEG there, and its mean JPEG size was too small."""
    from fastforward.fields import BytesField, RGBImageField
    from fastforward.writer import DatasetWriter

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 32, 3), np.uint8) for _ in range(3)]
    path = tmp_path / "shared.beton"
    DatasetWriter(path, {"note": BytesField(), "image": RGBImageField(write_mode="jpg")},
                  num_workers=1, progress=False, checksums=False).from_indexed_dataset(
                      [(np.zeros(0, np.uint8), image) for image in images])
    with Reader(path) as reader:
        sizes = reader.payload_nbytes[1].tolist()
        jpegs = [reader.payload(int(reader.metadata[s]["f1"]["data_ptr"]), s).tobytes()
                 for s in range(3)]
        pixels = [reader.read(s)[1] for s in range(3)]
        notes = [int(reader.metadata[s]["f0"]["ptr"]) for s in range(3)]
    for s in range(3):
        move_payload(path, s, 1, notes[s], jpegs[s])
    with Reader(path) as reader:
        for s in range(3):
            np.testing.assert_array_equal(reader.read(s)[1], pixels[s])
        assert [int(reader.metadata[s]["f1"]["data_ptr"]) for s in range(3)] == notes
    image = image_field(run_info(capsys, path))
    assert image["mean_jpeg_bytes"] == pytest.approx(np.mean(sizes))


def test_info_text(beton: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(beton)]) == 0
    out = capsys.readouterr().out
    assert f"samples:       {NUM_IMAGES}" in out
    assert "page size:     8 MiB" in out
    assert "image: RGBImageField" in out
    assert "label: IntField" in out
    assert f"modes:       jpg {NUM_IMAGES}, raw 0" in out
    assert "resolution:  mean " in out
    # a "max W×H" paired the widest image's width with the tallest one's height
    assert "max" not in next(line for line in out.splitlines() if "resolution:" in line)
    assert "JPEG size:   mean " in out


def test_convert_raw_with_options(corpus: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "raw.beton"
    argv = ["convert", str(corpus), str(out), "--write-mode", "raw", "--max-resolution", "32",
            "--page-size", "2MiB", "--chunksize", "5", "--shuffle", "--seed", "3", *FAST]
    assert main(argv) == 0
    info = run_info(capsys, out)
    image = image_field(info)
    assert info["page_size"] == 2 << 20
    assert image["modes"] == {"jpg": 0, "raw": NUM_IMAGES}
    assert image["max_side"] == 32
    assert image["mean_jpeg_bytes"] is None
    with Reader(out) as reader:
        first = reader.read(0)[0]
    assert first.dtype == np.uint8
    assert max(first.shape[:2]) == 32


def test_convert_without_a_size_limit(corpus: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "full.beton"
    assert main(["convert", str(corpus), str(out), "--max-resolution", "0", *FAST]) == 0
    assert image_field(run_info(capsys, out))["max_side"] > 256


def test_convert_with_and_without_restart_markers(corpus: Path, beton: Path,
                                                  tmp_path: Path) -> None:
    from fastforward.benchmark import stored_jpegs
    from fastforward.fields import rgb_image

    out = tmp_path / "plain.beton"
    assert main(["convert", str(corpus), str(out), "--no-restart-markers", *FAST]) == 0
    assert not any(b"\xff\xdd" in data for data in stored_jpegs(Reader(out), "image"))
    marked = [b"\xff\xdd" in data for data in stored_jpegs(Reader(beton), "image")]
    assert all(marked) if rgb_image._region is not None else not any(marked)


# -- verify --------------------------------------------------------------------------------------


def test_verify_good_file(beton: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(beton), "--decode", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "no problems" in out


@pytest.fixture(scope="module")
def plain(beton: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``beton`` without its checksums (FFCV's layout)."""
    return strip_checksums(beton, tmp_path_factory.mktemp("plain") / "plain.beton")


def test_verify_says_whether_there_are_checksums(beton: Path, plain: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(beton), "--no-progress"]) == 0
    assert "checksums: xxh3_64, header, metadata, allocation table and" in capsys.readouterr().out
    assert main(["verify", str(plain), "--no-progress"]) == 0
    assert "checksums: none in this file" in capsys.readouterr().out


@pytest.mark.parametrize("decode", [False, True])
def test_verify_corrupt_jpeg(plain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             decode: bool) -> None:
    bad = tmp_path / "bad.beton"
    shutil.copyfile(plain, bad)
    sample = 17
    with Reader(bad) as reader:
        ptr = int(reader.metadata[sample]["f0"]["data_ptr"])
    with open(bad, "r+b") as f:
        f.seek(ptr)
        f.write(bytes(4))
    argv = ["verify", str(bad), "--no-progress"] + (["--decode"] if decode else [])
    assert main(argv) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"sample {sample}, field 'image': bad JPEG header")
    assert len(lines) == 3  # one problem (not decoded twice), checksums, the summary
    assert "1 problem(s) in 1 sample(s)" in lines[-1]


def test_verify_reports_the_damaged_page(beton: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.beton"
    shutil.copyfile(beton, bad)
    sample = 17
    with Reader(bad) as reader:
        ptr = int(reader.metadata[sample]["f0"]["data_ptr"])
        page = int(reader.sample_pages[sample])
    with open(bad, "r+b") as f:
        f.seek(ptr)
        f.write(bytes(4))
    assert main(["verify", str(bad), "--no-progress"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"page {page} (bytes ")
    assert "does not match its checksum" in lines[0]
    assert lines[1].startswith(f"sample {sample}, field 'image': bad JPEG header")
    # the page's samples count too (it said "2 problem(s) in 1 sample(s)" only by luck,
    # and "in 0 sample(s)" for a page whose damage no other check saw)
    with Reader(beton) as reader:
        owners = {int(s) for s in np.flatnonzero(reader.sample_pages == page)}
    assert lines[-1].endswith(f": 2 problem(s) in {len(owners)} sample(s)")


def test_verify_counts_the_samples_of_a_damaged_page(beton: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    """Damage inside a JPEG's entropy data, which no header check sees: the page's
    checksum is the one problem, and its samples are counted."""
    bad = tmp_path / "bad.beton"
    shutil.copyfile(beton, bad)
    with Reader(bad) as reader:
        ptr = int(reader.metadata[5]["f0"]["data_ptr"])
        size = int(reader.payload_nbytes[0][5])
        page = int(reader.sample_pages[5])
        owners = np.flatnonzero(reader.sample_pages == page)
    with open(bad, "r+b") as f:
        f.seek(ptr + size // 2)
        byte = f.read(1)
        f.seek(ptr + size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    assert main(["verify", str(bad), "--no-progress"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"page {page} (bytes ")
    assert lines[-1].endswith(f": 1 problem(s) in {owners.size} sample(s)")


def test_verify_decode_reports_a_broken_jpeg_body(plain: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.beton"
    shutil.copyfile(plain, bad)
    sample = 3
    with Reader(bad) as reader:
        ptr = int(reader.metadata[sample]["f0"]["data_ptr"])
        size = reader.payload_size(ptr, sample)
    with open(bad, "r+b") as f:  # keep the header and the end marker, wreck the scan
        f.seek(ptr + size // 2)
        f.write(b"\xff" * 64)
    assert main(["verify", str(bad), "--no-progress"]) == 0  # the structure is intact
    capsys.readouterr()
    assert main(["verify", str(bad), "--decode", "--no-progress"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"sample {sample}, field 'image': cannot decode: ")
    assert str(bad) not in lines[0]  # the reader's location prefix is not repeated


# -- demo ----------------------------------------------------------------------------------------


def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--dir", str(tmp_path / "demo"), "--count", "12", *FAST]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "made 12 demo images" in out
    assert "wrote 12 samples" in out
    loaded = next(line for line in out.splitlines() if "fastforward train_numpy" in line)
    assert "with start-up" not in loaded  # batches small enough to time at steady state
    assert float(re.search(r"([\d,.]+) images/s", loaded)[1].replace(",", "")) > 0
    assert "image: RGBImageField" in out
    assert (tmp_path / "demo" / "demo.beton").is_file()
    assert main(argv) == 0  # a second run reuses the images
    assert "reusing the 12 demo images" in capsys.readouterr().out
    status = main([*argv[:3], "--count", "13", *FAST])
    assert_one_line_error(capsys, status, 1, "holds 12 images, not 13")


def test_a_demo_interrupted_while_it_makes_its_images_runs_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while the images were made left a folder of part of them, which the
    next run refused ('holds 119 images, not 300: remove it')."""
    import fastforward.demo

    made = fastforward.demo.make_corpus

    def interrupted(root: Path, count: int, seed: int = 0) -> Path:
        made(root, count // 2, seed)
        raise KeyboardInterrupt

    argv = ["demo", "--dir", str(tmp_path / "demo"), "--count", "12", *FAST]
    monkeypatch.setattr(fastforward.demo, "make_corpus", interrupted)
    assert main(argv) == 130
    assert not (tmp_path / "demo" / "images").exists()
    monkeypatch.setattr(fastforward.demo, "make_corpus", made)
    capsys.readouterr()
    assert main(argv) == 0
    assert "made 12 demo images" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["demo.beton", "images"]


# -- errors --------------------------------------------------------------------------------------


def test_an_empty_name_is_no_file(capsys: pytest.CaptureFixture[str]) -> None:
    """It said ': No such file or directory'."""
    for command in ("info", "verify", "bench", "preview"):
        assert_one_line_error(capsys, main([command, ""]), 1, "an empty name is no file")


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("info", "verify"):
        status = main([command, str(tmp_path / "nope.beton")])
        assert_one_line_error(capsys, status, 1, "nope.beton", "No such file")


def test_not_a_beton_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "random.beton"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    for command in ("info", "verify"):
        status = main([command, str(path)])
        assert_one_line_error(capsys, status, 1, str(path), "format version")
    # a text file: what it begins with, not only the number its first bytes make
    path.write_bytes(b"hello, this is no dataset" * 100)
    with pytest.raises(FormatError, match=r"format version 25960, expected 2 \(not a \.beton "
                                          r"v2 file\? its first bytes are b'hello, t'\)"):
        Reader(path)


def test_convert_empty_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    status = main(["convert", str(tmp_path / "empty"), str(tmp_path / "x.beton"), *FAST])
    assert_one_line_error(capsys, status, 1, "no class sub-folders")
    assert not (tmp_path / "x.beton").exists()


def test_convert_missing_source_or_output_directory(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "x.beton"), *FAST])
    assert_one_line_error(capsys, status, 1, "nowhere")
    status = main(["convert", str(corpus), str(tmp_path / "no" / "x.beton"), *FAST])
    assert_one_line_error(capsys, status, 1, "no such directory")


def test_convert_to_names_that_are_no_file(corpus: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """An empty name was ': names a directory (it ends with a slash)'; a file used as
    a directory was 'no such directory'."""
    status = main(["convert", str(corpus), "", *FAST])
    assert_one_line_error(capsys, status, 1, "an empty name is no file to write")
    (tmp_path / "a.beton").write_bytes(b"")
    status = main(["convert", str(corpus), str(tmp_path / "a.beton" / "x.beton"), *FAST])
    assert_one_line_error(capsys, status, 1, f"{tmp_path / 'a.beton'}: not a directory")
    status = main(["demo", "--dir", ""])
    assert_one_line_error(capsys, status, 2, "--dir: an empty name")
    image = sorted(corpus.glob("*/*.jpg"))[2]  # it was replaced by the .beton, exit 0
    before = image.read_bytes()
    status = main(["convert", str(corpus), str(image), *FAST])
    assert_one_line_error(capsys, status, 1, f"{image}: is one of the images being converted")
    assert image.read_bytes() == before
    # an image reached through a link of another name (a folder of links is common)
    folder = tmp_path / "links"
    shutil.copytree(corpus, folder)
    elsewhere = tmp_path / "real.jpg"
    shutil.copy(image, elsewhere)
    (folder / image.parent.name / "linked.jpg").symlink_to(elsewhere)
    status = main(["convert", str(folder), str(elsewhere), *FAST])
    assert_one_line_error(capsys, status, 1, f"{elsewhere}: is one of the images being "
                                             f"converted ({folder / image.parent.name}"
                                             "/linked.jpg)")
    assert elsewhere.read_bytes() == before


def test_convert_replaces_a_dataset_not_another_file(
        corpus: Path, beton: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Any regular file at OUT was replaced without a word (a mistyped OUT naming a
    script); an earlier .beton, or an empty file, still is."""
    script = tmp_path / "train.py"
    script.write_text("print(1)\n")
    status = main(["convert", str(corpus), str(script), *FAST])
    assert_one_line_error(capsys, status, 1, f"{script}: exists and is not a .beton file")
    assert script.read_text() == "print(1)\n"
    for name in ("old.beton", "empty"):
        out = tmp_path / name
        if name == "old.beton":
            shutil.copy(beton, out)
        else:
            out.write_bytes(b"")
        assert main(["convert", str(corpus), str(out), *FAST]) == 0
        assert Reader(out).num_samples == NUM_IMAGES


def test_convert_writes_any_name_the_directory_allows(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 251-byte target was refused ('<name>.beton.skipped.txt: File name too long'),
    with or without --skip-bad: the list's name is shortened where it must be."""
    from fastforward.cli import skipped_list_path

    folder = tmp_path / "imgs"
    shutil.copytree(corpus, folder)
    victim = sorted(folder.glob("*/*.jpg"))[3]
    victim.write_bytes(b"")
    out = tmp_path / ("x" * 245 + ".beton")
    assert main(["convert", str(folder), str(out), *FAST, "--skip-bad"]) == 0
    listed = skipped_list_path(out)
    assert len(os.fsencode(listed.name)) <= 255
    assert listed.name.endswith(".skipped.txt")
    assert "~" in listed.name
    assert str(victim) in listed.read_text()
    assert str(listed) in capsys.readouterr().out
    victim.unlink()
    assert main(["convert", str(folder), str(out), *FAST]) == 0  # a clean run removes it
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["imgs", out.name])
    assert skipped_list_path(tmp_path / "t.beton").name == "t.beton.skipped.txt"


def test_convert_to_a_named_pipe_is_refused_before_any_work(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It was replaced by a regular file (and /dev/null so too, as root)."""
    pipe = tmp_path / "pipe.beton"
    os.mkfifo(pipe)
    status = main(["convert", str(corpus), str(pipe), *FAST])
    assert_one_line_error(capsys, status, 1, "a named pipe, not a file to write", str(pipe))
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--page-size", "3M"], "--page-size"),
        (["--page-size", "lots"], "invalid size"),
        (["--jpeg-quality", "101"], "jpeg_quality"),
        (["--max-resolution", "-1"], "max_resolution"),
        (["--write-mode", "png"], "invalid choice"),
        (["--write-mode", "smart"], "--smart-threshold"),
        (["--chunksize", "0"], "--chunksize"),
        (["--num-workers", "-5"], "must be -1 or 0 (one per CPU), or 1 to"),  # was one per CPU
        (["--num-workers", "100000"], "per CPU), got 100000"),
        # options that would change nothing were taken without a word
        (["--write-mode", "raw", "--jpeg-quality", "50"],
         "--jpeg-quality applies to the JPEGs written, and --write-mode raw writes none"),
        (["--write-mode", "raw", "--no-restart-markers"], "--no-restart-markers applies to"),
        (["--seed", "3"], "--seed applies to --shuffle and --write-mode proportion, and this "
                          "conversion uses neither"),
    ],
)
def test_convert_bad_arguments(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               args: list[str], fragment: str) -> None:
    status = main(["convert", str(corpus), str(tmp_path / "x.beton"), *args, *FAST])
    assert_one_line_error(capsys, status, 2, fragment)


@pytest.mark.parametrize("argv", [[], ["bogus"], ["info"], ["info", "a", "b"], ["--nope"]])
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(capsys, main(argv), 2)


def test_interrupt(beton: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("fastforward.cli.print_info", interrupted)
    assert_one_line_error(capsys, main(["info", str(beton)]), 130, "interrupted")


def test_ctrl_c_during_convert_names_the_file(corpus: Path, beton: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """It said 'interrupted' alone, where SIGTERM names the file and says that no
    file was written; an earlier file of that name is left as it was."""
    from fastforward.writer import DatasetWriter

    out = tmp_path / "old.beton"
    shutil.copy(beton, out)
    before = out.read_bytes()

    def interrupted(self: object, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DatasetWriter, "from_indexed_dataset", interrupted)
        status = main(["convert", str(corpus), str(out), *FAST])
    assert_one_line_error(capsys, status, 130,
                          f"{out}: interrupted (Ctrl-C); no file was written")
    assert out.read_bytes() == before


def test_missing_optional_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    def no_skimage(*args: object, **kwargs: object) -> None:
        raise ImportError("the demo needs scikit-image: pip install scikit-image")

    monkeypatch.setattr("fastforward.demo.make_corpus", no_skimage)
    status = main(["demo", "--dir", str(tmp_path), *FAST])
    assert_one_line_error(capsys, status, 1, "pip install")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastforward {__version__}"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--write-mode" in out
    assert "RGBImageField's own default is raw" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8388608", 8 << 20), ("8M", 8 << 20), ("2MiB", 2 << 20), ("16MB", 16 << 20),
     ("4k", 4096), ("1Gi", 1 << 30), ("512B", 512)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


# -- as a program --------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["info", "verify", "convert"])
def test_a_full_disk_under_stdout_is_named(beton: Path, corpus: Path, tmp_path: Path,
                                           command: str) -> None:
    """'[Errno 28] No space left on device' named nothing; after convert it named
    the file just written, as if writing it had failed."""
    out = tmp_path / "new.beton"
    argv = ([command, str(beton)] if command != "convert"
            else [command, str(corpus), str(out), *FAST])
    with open("/dev/full", "w") as full:  # (run outside the source tree, as installed)
        done = subprocess.run([sys.executable, "-m", "fastforward", *argv], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False,
                              cwd=tmp_path)
    assert done.returncode == 1
    want = "fastforward: error: standard output: No space left on device"
    if command == "convert":
        want += f" (printing the summary: {out} was written)"
        assert Reader(out).num_samples == NUM_IMAGES
    assert done.stderr == want + "\n"


@pytest.mark.parametrize("cut", ["closed pipe", "Ctrl-C"])
def test_convert_ends_well_when_its_summary_is_cut_short(corpus: Path, tmp_path: Path,
                                                          cut: str) -> None:
    """``convert ... | head -1``: the file was written, but a pipe closed before the
    summary made the exit status 1; Ctrl-C then said "no file was written"."""
    out = tmp_path / "new.beton"
    code = ("import builtins, sys\n"
            "from fastforward.cli import main\n"
            "def cut(*args, **kwargs):\n"
            f"    raise {'BrokenPipeError' if cut == 'closed pipe' else 'KeyboardInterrupt'}\n"
            "import fastforward.cli as cli; cli._print = cut\n"
            "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", code, "convert", str(corpus), str(out), *FAST],
                          capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path)
    assert Reader(out).num_samples == NUM_IMAGES
    if cut == "closed pipe":
        assert (done.returncode, done.stderr) == (0, "")
    else:
        assert done.returncode == 130
        assert done.stderr == (f"fastforward: error: {out}: interrupted (Ctrl-C) while "
                               "printing the summary; the file was written\n")


def test_usage_errors_name_the_commands_help(beton: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown option of a command named the program's --help (argparse reports it
    from the top-level parser), and a command's own refusals named none."""
    assert main(["info", str(beton), "--bogus"]) == 2
    assert capsys.readouterr().err == ("fastforward: error: unrecognized arguments: --bogus "
                                       "(see fastforward info --help)\n")
    assert main(["convert", "--seed", "3", "src", "out.beton"]) == 2
    assert capsys.readouterr().err.endswith("(see fastforward convert --help)\n")
    assert main([]) == 2
    assert capsys.readouterr().err.endswith("(see fastforward --help)\n")


def test_as_a_program(beton: Path, tmp_path: Path) -> None:
    """The installed console script, run outside the source tree."""
    script = Path(sys.executable).parent / "fastforward"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "fastforward"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], capture_output=True, text=True, check=False,
                              cwd=tmp_path)

    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"fastforward {__version__}"
    done = run("verify", str(beton))
    assert done.returncode == 0, done.stderr
    done = run("info", str(tmp_path / "missing.beton"))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"fastforward: error: {tmp_path / 'missing.beton'}: No such file or directory"
    ]


def test_ctrl_c_while_the_program_starts_is_one_line(tmp_path: Path) -> None:
    """Ctrl-C while the command line is imported (about 0.3 s) is reported as later
    ones. Python's own start (``site``, on a loaded machine tens of ms) and the package's
    few lines before the entry point still print Python's traceback: never one from
    importing the command line."""
    script = Path(sys.executable).parent / "fastforward"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "fastforward"]
    statuses = []
    for delay in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5):
        process = subprocess.Popen([*command, "info", "missing.beton"], cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert f"fastforward{os.sep}cli.py" not in stderr, stderr
        statuses.append(process.returncode)
        if "Traceback" in stderr:  # before the entry point
            assert "fastforward.cli" not in stderr, stderr
            continue
        if process.returncode == 130:
            assert stderr.splitlines() == ["fastforward: error: interrupted"]
        else:  # before Python's own handler, or after the program's end
            assert process.returncode in (-signal.SIGINT, 1), stderr
    assert 130 in statuses, statuses


def test_ctrl_c_that_an_import_turns_into_an_import_error_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """NumPy turns a KeyboardInterrupt inside its C extension's imports into an
    ImportError ("PyCapsule_Import could not import module 'datetime'", seen in CI):
    that was a traceback too."""
    import importlib.abc

    from fastforward.__main__ import main as program

    class Interrupting(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: object, target: object = None) -> None:
            if name == "fastforward.cli":
                try:
                    signal.raise_signal(signal.SIGINT)  # Ctrl-C, as the import runs
                except KeyboardInterrupt as exc:
                    raise ImportError("PyCapsule_Import could not import module") from exc

    monkeypatch.delitem(sys.modules, "fastforward.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    assert program() == 130
    assert capsys.readouterr().err == "fastforward: error: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_convert_names_the_broken_image_file(corpus: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "imgs"
    shutil.copytree(corpus, broken)
    victim = sorted(broken.glob("*/*.jpg"))[5]
    victim.write_bytes(b"\xff\xd8 not really a JPEG")
    status = main(["convert", str(broken), str(tmp_path / "out.beton"), *FAST])
    assert_one_line_error(capsys, status, 1, "sample 5", str(victim), "'image'")
    assert not (tmp_path / "out.beton").exists()


def test_bench_prints_a_table(beton: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(beton), "--workers", "1", "2", "--batch-size", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "decode limit" in lines[1]
    rows = [line.split() for line in lines[2:4]]
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(float(row[2].replace(",", "")) > 0 for row in rows)
    # what the limit is of, said (a bench of the whole file against its first JPEGs)
    assert lines[4] == (f"decode limit: simplejpeg decoding whole images (accurate IDCT; the "
                        f"crop decoders use the fast one) of the file's first {NUM_IMAGES} "
                        "JPEGs, once, on as many threads as workers")


def test_bench_says_when_epochs_are_too_short_to_time_at_steady_state(
        beton: Path, capsys: pytest.CaptureFixture[str]) -> None:
    steady = NUM_IMAGES // 6  # six batches per epoch
    assert main(["bench", str(beton), "--workers", "1", "--batch-size", str(steady)]) == 0
    out = capsys.readouterr().out
    assert "note:" not in out
    assert "each without its first batch" in out.splitlines()[0]
    big = NUM_IMAGES // 2  # two batches per epoch
    assert main(["bench", str(beton), "--workers", "1", "--batch-size", str(big)]) == 0
    out = capsys.readouterr().out
    assert f"too few batches of {big} per epoch" in out
    assert "start-up included" in out
    # the heading said "each without its first batch", the note that they were whole
    assert out.splitlines()[0].endswith("epoch(s), whole, start-up included")


def test_bench_of_a_file_smaller_than_a_batch(beton: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["bench", str(beton), "--workers", "1", "--batch-size", str(NUM_IMAGES + 1)])
    assert_one_line_error(capsys, status, 1, str(beton), "make no batch of")


def test_bench_plot(beton: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is an optional extra")
    out = tmp_path / "plot.png"
    assert main(["bench", str(beton), "--workers", "1", "--batch-size", "8",
                 "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- bad images ----------------------------------------------------------------------------------


def folder_with_bad_images(corpus: Path, tmp_path: Path) -> tuple[Path, dict[Path, str]]:
    """A copy of the corpus with an empty file, a non-image .png and a JPEG
    whose header is intact but whose data is not (a header check passes it)."""
    folder = tmp_path / "imgs"
    shutil.copytree(corpus, folder)
    files = sorted(folder.glob("*/*.jpg"))
    empty, not_png, cut = files[3], files[10].with_suffix(".png"), files[17]
    empty.write_bytes(b"")
    files[10].rename(not_png)
    not_png.write_bytes(b"\x89PNG\r\n\x1a\n but nothing after it")
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return folder, {empty: "empty file", not_png: "cannot identify image file",
                    cut: "cannot decode JPEG"}


def test_convert_skip_bad(corpus: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    from fastforward.datasets import ImageFolder

    folder, bad = folder_with_bad_images(corpus, tmp_path)
    out = tmp_path / "out.beton"
    assert main(["convert", str(folder), str(out), "--skip-bad", *FAST]) == 0
    lines = capsys.readouterr().out.splitlines()
    kept = NUM_IMAGES - len(bad)
    assert lines[0].startswith(f"wrote {kept} samples to {out}")
    listed = tmp_path / "out.beton.skipped.txt"
    assert lines[1] == (f"skipped 3 image(s) that cannot be read or decoded (listed in "
                        f"{listed}):")
    order = sorted(bad)  # ImageFolder's order: by class, then path
    for line, path in zip(lines[2:], order, strict=True):
        assert line.startswith(f"  {path}: {bad[path]}")
    rows = [line.split("\t") for line in listed.read_text().splitlines()]
    assert [Path(path) for path, _ in rows] == order
    assert all(bad[Path(path)] in why for path, why in rows)
    # the file holds the other images, each with its own label
    samples = ImageFolder(folder).samples
    labels = [label for path, label in samples if path not in bad]
    with Reader(out) as reader:
        assert reader.num_samples == kept
        assert reader.metadata["f1"].tolist() == labels
        assert reader.verify(decode=True) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "out.beton",
                                                          "out.beton.skipped.txt"]
    # the same conversion of the folder without them gives the same bytes
    for path in bad:
        path.unlink()
    assert main(["convert", str(folder), str(tmp_path / "clean.beton"), *FAST]) == 0
    assert (tmp_path / "clean.beton").read_bytes() == out.read_bytes()
    # nothing skipped: an earlier list of that name goes
    assert main(["convert", str(folder), str(out), "--skip-bad", *FAST]) == 0
    assert "skipped" not in capsys.readouterr().out
    assert not listed.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="file names of any bytes")
def test_skipped_names_of_any_bytes_are_listed_as_they_are(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad image named b"bad\\xff.jpg" (not UTF-8) failed the whole conversion at its
    end (the list's text.encode()); a tab or newline in a name broke the list's
    one-line-per-image format."""
    folder = tmp_path / "imgs"
    shutil.copytree(corpus, folder)
    cls = sorted(folder.iterdir())[0]
    names = [os.fsdecode(b"bad\xff.jpg"), "tab\there.jpg", "new\nline.jpg", "back\\slash.jpg"]
    for name in names:
        (cls / name).write_bytes(b"")
    out = tmp_path / "out.beton"
    assert main(["convert", str(folder), str(out), "--skip-bad", *FAST]) == 0
    captured = capsys.readouterr().out
    assert captured.startswith(f"wrote {NUM_IMAGES} samples to {out}")
    data = (tmp_path / "out.beton.skipped.txt").read_bytes()
    lines = data.split(b"\n")[:-1]
    assert len(lines) == 4  # one line each, whatever the name holds
    paths = sorted(line.split(b"\t")[0] for line in lines)
    base = os.fsencode(cls)
    assert paths == sorted([base + b"/bad\xff.jpg", base + b"/tab\\there.jpg",
                            base + b"/new\\nline.jpg", base + b"/back\\\\slash.jpg"])


def test_a_name_the_terminal_cannot_print_is_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The summary, printed after the file was written, failed on a name stdout's
    encoding cannot hold (exit 1 for a written file)."""
    import io

    from fastforward.cli import _print

    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    _print("wrote 3 samples to caf\u00e9/" + os.fsdecode(b"x\xff.beton"))
    out.flush()
    assert out.buffer.getvalue() == b"wrote 3 samples to caf\\xe9/x\\udcff.beton\n"


def test_the_skipped_list_is_published_with_the_file(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The list was written after the file was named (a list that could not be
    written failed the command with a new file in place), and a list from an
    earlier --skip-bad run outlived a later conversion that skipped nothing."""
    import fastforward.writer as writer_module

    folder, bad = folder_with_bad_images(corpus, tmp_path)
    out, listed = tmp_path / "out.beton", tmp_path / "out.beton.skipped.txt"
    real = writer_module._Output.write

    def list_fails(self: Any, data: Any) -> None:
        if self.target == str(listed):
            raise self._failed(OSError(errno.ENOSPC, "No space left on device"), "writing")
        real(self, data)

    monkeypatch.setattr(writer_module._Output, "write", list_fails)
    status = main(["convert", str(folder), str(out), "--skip-bad", *FAST])
    assert_one_line_error(capsys, status, 1, str(listed), "the disk is full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]
    monkeypatch.undo()
    assert main(["convert", str(folder), str(out), "--skip-bad", *FAST]) == 0
    assert len(listed.read_text().splitlines()) == len(bad)
    for path in bad:
        path.unlink()
    capsys.readouterr()
    assert main(["convert", str(folder), str(out), *FAST]) == 0  # without --skip-bad
    assert len(capsys.readouterr().out.splitlines()) == 1  # no images skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "out.beton"]
    # a file of the list's name beside no .beton is no list of ours: kept, and
    # refused before any image is read (it was removed without a word)
    out.unlink()
    listed.write_text("my notes\n")
    status = main(["convert", str(folder), str(out), *FAST])
    assert_one_line_error(capsys, status, 1, str(listed), "exists beside no out.beton")
    assert listed.read_text() == "my notes\n"
    assert not out.exists()
    listed.unlink()
    # a folder in the list's place is refused before any image is read
    listed.mkdir()
    status = main(["convert", str(folder), str(out), "--skip-bad", *FAST])
    assert_one_line_error(capsys, status, 1, str(listed), "is a directory")


def folder_with_unreadable_images(corpus: Path, tmp_path: Path) -> tuple[Path, dict[Path, str]]:
    """A copy of the corpus with a named pipe and a dangling link named as images."""
    folder = tmp_path / "imgs"
    shutil.copytree(corpus, folder)
    files = sorted(folder.glob("*/*.jpg"))
    fifo, dangling = files[4].with_name("fifo.jpg"), files[12].with_name("dangling.jpg")
    os.mkfifo(fifo)
    dangling.symlink_to(tmp_path / "nowhere.jpg")
    return folder, {fifo: "not a regular file (a named pipe)",
                    dangling: "No such file or directory"}


def test_convert_skip_bad_with_every_image_bad_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every image bad: a file of 0 samples was written, and the exit status was 0."""
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "1.jpg").write_bytes(b"x\n")
    (tmp_path / "imgs" / "a" / "2.jpg").write_bytes(b"")
    out = tmp_path / "z.beton"
    status = main(["convert", str(tmp_path / "imgs"), str(out), "--skip-bad", *FAST])
    assert_one_line_error(capsys, status, 1, "none of its 2 images could be read", "1.jpg",
                          "nothing was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


@pytest.mark.timeout(120)  # a named pipe was opened and read: it waited for ever
def test_convert_skip_bad_skips_images_that_cannot_be_read(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--skip-bad skipped only what could not be decoded: a dangling link stopped the
    conversion (FileNotFoundError from the dataset), and a named pipe blocked it."""
    folder, bad = folder_with_unreadable_images(corpus, tmp_path)
    out = tmp_path / "out.beton"
    assert main(["convert", str(folder), str(out), "--skip-bad", *FAST]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote {NUM_IMAGES} samples to {out}")
    assert lines[1].startswith("skipped 2 image(s) that cannot be read or decoded")
    rows = [line.split("\t") for line in (tmp_path / "out.beton.skipped.txt").read_text()
            .splitlines()]
    assert [Path(path) for path, _ in rows] == sorted(bad)
    assert all(bad[Path(path)] in why for path, why in rows)
    with Reader(out) as reader:
        assert reader.num_samples == NUM_IMAGES


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["fifo", "dangling"])
def test_convert_names_an_image_that_cannot_be_read(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    folder, bad = folder_with_unreadable_images(corpus, tmp_path)
    victim = next(path for path in bad if path.name.startswith(kind))
    for other in bad:
        if other != victim:
            other.unlink()
    status = main(["convert", str(folder), str(tmp_path / "out.beton"), *FAST])
    assert_one_line_error(capsys, status, 1, str(victim), bad[victim])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


def test_convert_stops_at_a_bad_image_without_skip_bad(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, bad = folder_with_bad_images(corpus, tmp_path)
    status = main(["convert", str(folder), str(tmp_path / "out.beton"), "--num-workers", "1",
                   "--no-progress"])
    first = sorted(bad)[0]
    assert_one_line_error(capsys, status, 1, str(first), "empty file", "'image'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty file"),
    (b"GIF89a, or so it says", "cannot identify image file"),
    (None, "cannot decode image file ({size} bytes): image file is truncated"),
    ("bomb", "image file too large to decode: Image size (10000000000 pixels) exceeds"),
], ids=["empty", "unidentified", "truncated-png", "decompression-bomb"])
def test_convert_names_an_undecodable_file(corpus: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           content: bytes | str | None, message: str) -> None:
    """A PNG whose header claims 100,000² pixels (Pillow's DecompressionBombError,
    not an OSError) was an 'unexpected' error, and --skip-bad stopped at it."""
    import io
    import struct
    import zlib

    from PIL import Image

    folder = tmp_path / "imgs"
    shutil.copytree(corpus, folder)
    jpeg = sorted(folder.glob("*/*.jpg"))[5]
    victim = jpeg.with_suffix(".png")
    png = io.BytesIO()
    Image.open(jpeg).save(png, "PNG")
    if content is None:  # a real PNG, cut in half
        content = png.getvalue()[: len(png.getvalue()) // 2]
    elif content == "bomb":  # its header's size changed, its checksum made right
        bomb = bytearray(png.getvalue())
        struct.pack_into(">II", bomb, 16, 100_000, 100_000)
        struct.pack_into(">I", bomb, 29, zlib.crc32(bytes(bomb[12:29])))
        content = bytes(bomb)
    assert isinstance(content, bytes)
    jpeg.rename(victim)
    victim.write_bytes(content)
    status = main(["convert", str(folder), str(tmp_path / "out.beton"), *FAST])
    line = assert_one_line_error(capsys, status, 1, str(victim),
                                 message.format(size=len(content)), "'image'")
    assert "BytesIO" not in line
    assert "0x" not in line
    assert "unexpected" not in line
    # a DecodeError, so --skip-bad skips it
    assert main(["convert", str(folder), str(tmp_path / "out.beton"), *FAST, "--skip-bad"]) == 0
    assert str(victim) in (tmp_path / "out.beton.skipped.txt").read_text()


def test_sigterm_during_convert(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    from fastforward.errors import Terminated

    def terminated(*args: object, **kwargs: object) -> None:
        raise Terminated(f"{tmp_path / 'x.beton'}: stopped by SIGTERM during the write; "
                         "no file was written")

    monkeypatch.setattr("fastforward.writer.DatasetWriter.from_indexed_dataset", terminated)
    status = main(["convert", str(corpus), str(tmp_path / "x.beton"), *FAST])
    assert_one_line_error(capsys, status, 143, "stopped by SIGTERM")


def test_image_folder_follows_links_as_torchvision_does(tmp_path: Path) -> None:
    """A class's sub-folder reached through a symbolic link is taken (torchvision's
    ``ImageFolder`` walks with ``followlinks=True``); a link to a folder the walk is
    inside is not followed again (it would never end)."""
    from fastforward.datasets import ImageFolder

    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere" / "more"
    (root / "cat").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    for path in (root / "cat" / "a.jpg", elsewhere / "b.jpg"):
        path.write_bytes(b"\xff\xd8 not decoded here")
    (root / "cat" / "more").symlink_to(elsewhere)
    (elsewhere / "loop").symlink_to(root)  # back up: root/cat/more/loop/cat/more/...
    (root / "cat" / "here").symlink_to(root / "cat")
    samples = ImageFolder(root).samples
    assert [(p.relative_to(root).as_posix(), label) for p, label in samples] == [
        ("cat/a.jpg", 0), ("cat/more/b.jpg", 0)]


def test_an_unreadable_folder_or_a_dangling_class_link_is_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """os.walk skips a folder it cannot list, and a class link to nothing is no
    folder: their images were left out of the conversion without a word (rc 0,
    not in the --skip-bad list, and verify said OK)."""
    from fastforward.datasets import ImageFolder

    root = tmp_path / "root"
    (root / "cat" / "sub").mkdir(parents=True)
    for path in (root / "cat" / "a.jpg", root / "cat" / "sub" / "b.jpg"):
        path.write_bytes(b"\xff\xd8 not decoded here")
    scandir = os.scandir

    def refuse_sub(path: Any) -> Any:  # as chmod 000 would (the tests may run as root)
        if os.fspath(path).endswith("sub"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return scandir(path)

    with monkeypatch.context() as patch:
        patch.setattr(os, "scandir", refuse_sub)
        with pytest.raises(PermissionError, match=r"cannot list this folder \(Permission denied"):
            ImageFolder(root)
        status = main(["convert", str(root), str(tmp_path / "x.beton"), "--skip-bad", *FAST])
        assert_one_line_error(capsys, status, 1, f"{root / 'cat' / 'sub'}: cannot list")
    assert len(ImageFolder(root).samples) == 2
    (root / "labels.txt").symlink_to(tmp_path / "gone.txt")  # a file's link: ignored, as files
    assert len(ImageFolder(root).samples) == 2
    (root / "dog").symlink_to(tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="dog: a symbolic link to nothing"):
        ImageFolder(root)
    assert not list(tmp_path.glob("*.beton"))


# -- paths, options that do not apply, custom fields ---------------------------------------------


def test_convert_refuses_an_empty_source_and_a_file_as_source(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``convert "" out`` converted the current directory (Path("") is "."), and a
    file as SRC was reported as 'no such directory'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat").mkdir()  # the current directory would be an ImageFolder
    (tmp_path / "cat" / "x.jpg").write_bytes(b"\xff\xd8 never read")
    status = main(["convert", "", str(tmp_path / "x.beton"), *FAST])
    assert_one_line_error(capsys, status, 1, "empty path")
    status = main(["convert", str(tmp_path / "cat" / "x.jpg"), str(tmp_path / "y.beton"), *FAST])
    assert_one_line_error(capsys, status, 1, "x.jpg: not a directory")
    assert not list(tmp_path.glob("*.beton"))
    # OUT with a trailing slash wrote a file of that name without the slash
    status = main(["convert", str(tmp_path), f"{tmp_path / 'outx'}/", *FAST])
    assert_one_line_error(capsys, status, 1, f"{tmp_path / 'outx'}/",
                          "names a directory (it ends with a slash)")
    assert not (tmp_path / "outx").exists()


def test_demo_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("")
    status = main(["demo", "--dir", str(tmp_path / "f"), "--count", "2", *FAST])
    assert_one_line_error(capsys, status, 1, f"{tmp_path / 'f'}: not a directory", "--dir")


@pytest.mark.parametrize(("args", "mode"), [
    (["--smart-threshold", "100"], "smart"),
    (["--compress-probability", "0.3"], "proportion"),
    (["--write-mode", "raw", "--compress-probability", "0.3"], "proportion"),
])
def test_an_option_of_another_write_mode_is_a_usage_error(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        mode: str) -> None:
    """They were silently ignored."""
    status = main(["convert", str(corpus), str(tmp_path / "x.beton"), *args, *FAST])
    assert_one_line_error(capsys, status, 2, f"applies to --write-mode {mode} only")


@pytest.mark.parametrize(("probability", "jpegs"), [("0", 0), ("1", NUM_IMAGES)])
def test_compress_probability_still_applies_to_proportion(
        corpus: Path, tmp_path: Path, probability: str, jpegs: int) -> None:
    out = tmp_path / "p.beton"
    assert main(["convert", str(corpus), str(out), "--write-mode", "proportion",
                 "--compress-probability", probability, *FAST]) == 0
    with Reader(out) as reader:
        assert np.count_nonzero(reader.metadata["f0"]["mode"] == 0) == jpegs  # 0: JPEG


def test_info_names_a_torch_tensor_field(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Type id 6 was described as an NDArrayField (the class it is read back as)."""
    torch = pytest.importorskip("torch")
    from fastforward.fields import TorchTensorField
    from fastforward.writer import DatasetWriter

    path = tmp_path / "t.beton"
    DatasetWriter(path, {"t": TorchTensorField(torch.float32, (3,))}, num_workers=1,
                  progress=False).from_indexed_dataset([(torch.ones(3),)] * 2)
    (field,) = run_info(capsys, path)["fields"]
    assert (field["class"], field["read_as"], field["type_id"]) == (
        "TorchTensorField", "NDArrayField", 6)
    assert main(["info", str(path)]) == 0
    assert ("t: TorchTensorField (read as NDArrayField) (dtype float32, shape (3,))"
            in capsys.readouterr().out)


CUSTOM_FIELD_MODULE = '''
import numpy as np
from fastforward.fields import NDArrayField


class CodeField(NDArrayField):
    def __init__(self):
        super().__init__(np.dtype("u1"), (4,))

    @staticmethod
    def from_binary(binary):
        return CodeField()


class PlainCode(NDArrayField):
    """Its from_binary is NDArrayField's: the reader builds an NDArrayField."""


NOT_A_FIELD = 3
'''


@pytest.fixture
def custom_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file with a custom field (type id 255), ``code``, whose class is
    ``ff_custom_field_module:CodeField``, beside a JPEG image field."""
    (tmp_path / "ff_custom_field_module.py").write_text(CUSTOM_FIELD_MODULE)
    (tmp_path / "ff_broken_field_module.py").write_text('raise RuntimeError("needs a GPU")\n')
    (tmp_path / "ff_bad_syntax_module.py").write_text("def (:\n")
    (tmp_path / "ff_exiting_module.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from ff_custom_field_module import CodeField  # type: ignore[import-not-found]

    from fastforward.fields import RGBImageField
    from fastforward.writer import DatasetWriter

    rng = np.random.default_rng(0)
    path = tmp_path / "custom.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg"), "code": CodeField()},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(rng.integers(0, 256, (24, 32, 3), np.uint8), np.full(4, i, np.uint8))
         for i in range(8)])
    return path


def test_custom_fields_on_the_command_line(custom_file: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """info, verify, bench and preview refused a file with a custom field, whose
    class the command line had no way to give."""
    status = main(["info", str(custom_file)])
    assert_one_line_error(capsys, status, 1, "custom field", "--custom-field NAME=MODULE:CLASS")
    given = ["--custom-field", "code=ff_custom_field_module:CodeField"]
    assert main(["info", "--json", str(custom_file), *given]) == 0
    fields = json.loads(capsys.readouterr().out)["fields"]
    assert [(f["name"], f["class"], f["type_id"]) for f in fields] == [
        ("image", "RGBImageField", 2), ("code", "CodeField", 255)]
    assert main(["info", str(custom_file), "--custom-field",
                 "code=ff_custom_field_module:PlainCode"]) == 0
    assert "  code: PlainCode (dtype uint8, shape (4,))" in capsys.readouterr().out
    assert main(["verify", "--decode", "--no-progress", str(custom_file), *given]) == 0
    assert "OK, 8 samples checked and decoded" in capsys.readouterr().out
    assert main(["bench", str(custom_file), "--workers", "1", "--batch-size", "2",
                 *given]) == 0
    if importlib.util.find_spec("matplotlib") is not None:
        assert main(["preview", str(custom_file), "-o", str(tmp_path / "p.png"),
                     "--size", "16", *given]) == 0


def test_a_custom_field_module_in_the_current_directory(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The console script's path holds its own folder, not the current directory (as
    ``python -m`` does): a module beside the user was 'No module named ...'."""
    from fastforward.cli import custom_field_arg

    here = tmp_path / "project"
    (here / "ff_fields_here").mkdir(parents=True)
    (here / "ff_fields_here" / "__init__.py").write_text(CUSTOM_FIELD_MODULE)
    monkeypatch.chdir(here)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(here))])
    monkeypatch.delitem(sys.modules, "ff_fields_here", raising=False)
    name, cls = custom_field_arg("code=ff_fields_here:CodeField")
    assert (name, cls.__name__, cls.__module__) == ("code", "CodeField", "ff_fields_here")
    assert sys.path[-1] == str(here)  # kept, last: worker processes import it again
    sys.modules.pop("ff_fields_here")
    with pytest.raises(argparse.ArgumentTypeError, match="No module named 'ff_not_here'"):
        custom_field_arg("code=ff_not_here:CodeField")
    assert sys.path.count(str(here)) == 1


@pytest.mark.parametrize(("value", "fragment"), [
    ("code", "expected NAME=MODULE:CLASS"),
    ("code=ff_custom_field_module", "expected NAME=MODULE:CLASS"),
    ("code=no_such_module_here:X", "cannot import no_such_module_here"),
    ("code=ff_custom_field_module:Nope", "ff_custom_field_module has no Nope"),
    ("code=ff_custom_field_module:NOT_A_FIELD", "is not a Field class"),
    ("code=ff_broken_field_module:X", "cannot import ff_broken_field_module: needs a GPU"),
    ("code=ff_bad_syntax_module:X", "cannot import ff_bad_syntax_module: invalid syntax"),
    # it exited 0 without a word, as if --help had been asked for
    ("code=ff_exiting_module:X", "cannot import ff_exiting_module: importing it called "
                                 "sys.exit(0)"),
])
def test_a_bad_custom_field_is_a_usage_error(custom_file: Path, value: str, fragment: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["info", str(custom_file), "--custom-field", value])
    assert_one_line_error(capsys, status, 2, "--custom-field", fragment)


def test_a_wrong_custom_field_class_is_named_beside_damage(
        custom_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong class read the metadata with another layout, and was reported as
    damage alone ('the metadata table is damaged'): the file was fine."""
    status = main(["info", str(custom_file), "--custom-field",
                   "code=fastforward.fields:BytesField"])
    assert_one_line_error(capsys, status, 1, "the metadata table is damaged",
                          "or a custom field class given ('code': BytesField) is not the one")
    assert main(["verify", str(custom_file), "--custom-field",
                 "code=fastforward.fields:BytesField"]) == 1
    assert "('code': BytesField) is not the one" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["info", "verify", "bench", "preview"])
def test_a_custom_field_the_file_lacks_is_a_usage_error(
        custom_file: Path, tmp_path: Path, command: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in the name was silently ignored."""
    extra = {"bench": ["--workers", "1", "--batch-size", "2"],
             "preview": ["-o", str(tmp_path / "p.png")]}.get(command, [])
    status = main([command, str(custom_file), *extra, "--custom-field",
                   "code=ff_custom_field_module:CodeField", "--custom-field",
                   "cdoe=ff_custom_field_module:CodeField"])
    assert_one_line_error(capsys, status, 2, "--custom-field", "has no field 'cdoe' (its "
                          "fields: 'image', 'code')")
    assert not (tmp_path / "p.png").exists()


def test_a_custom_field_given_twice_is_a_usage_error(custom_file: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    given = ["--custom-field", "code=ff_custom_field_module:CodeField"]
    status = main(["verify", str(custom_file), *given, *given])
    assert_one_line_error(capsys, status, 2, "field 'code' given twice")


def test_bench_of_a_file_without_samples(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """It advised a smaller batch size, after printing the table's header."""
    from fastforward.fields import IntField, RGBImageField
    from fastforward.writer import DatasetWriter

    path = tmp_path / "empty.beton"
    DatasetWriter(path, {"image": RGBImageField(), "label": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset([])
    status = main(["bench", str(path), "--workers", "1", "--batch-size", "1"])
    assert_one_line_error(capsys, status, 1, f"{path} holds no samples")
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(("pipeline", "missing"),
                         [("tv_trivialaugment", "torchvision"), ("train", "torch")])
def test_bench_of_a_pipeline_whose_library_is_missing(
        beton: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        pipeline: str, missing: str) -> None:
    """It printed the table's header, then failed."""
    monkeypatch.setitem(sys.modules, missing, None)  # import torch(vision): ImportError
    status = main(["bench", str(beton), "--workers", "1", "--pipeline", pipeline])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert f"the {pipeline} pipeline" in captured.err
    assert "pip install" in captured.err


def test_bench_bounds_the_worker_counts(beton: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fastforward.cli import MAX_BENCH_WORKERS_PER_CPU
    from fastforward.utils import default_workers

    too_many = MAX_BENCH_WORKERS_PER_CPU * default_workers() + 1
    status = main(["bench", str(beton), "--workers", "1", str(too_many)])
    assert_one_line_error(capsys, status, 2, f"--workers: at most {MAX_BENCH_WORKERS_PER_CPU} "
                          f"per CPU", f"got {too_many}")


def test_bench_plot_is_written_where_it_says(beton: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """matplotlib added '.png' to a name without a suffix, and the message named the
    path it had not written; a missing directory was found after the measurements."""
    pytest.importorskip("matplotlib", reason="matplotlib is an optional extra")
    out = tmp_path / "plot"
    assert main(["bench", str(beton), "--workers", "1", "--batch-size", "8",
                 "--plot", str(out)]) == 0
    assert f"plot saved to {out}\n" in capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot"]
    status = main(["bench", str(beton), "--workers", "1", "--batch-size", "8",
                   "--plot", str(tmp_path / "no" / "p.png")])
    assert_one_line_error(capsys, status, 1, f"{tmp_path / 'no'}: no such directory")
    assert capsys.readouterr().out == ""  # refused before measuring anything
    before = beton.read_bytes()  # --plot the file measured wrote the PNG over it
    status = main(["bench", str(beton), "--workers", "1", "--batch-size", "8",
                   "--plot", str(beton)])
    assert_one_line_error(capsys, status, 1, f"{beton}: is the file being read")
    assert beton.read_bytes() == before
    script = tmp_path / "keep.py"  # a mistyped --plot turned it into a PNG
    script.write_text("print(1)\n")
    status = main(["bench", str(beton), "--workers", "1", "--batch-size", "8",
                   "--plot", str(script)])
    assert_one_line_error(capsys, status, 1, f"{script}: exists and is not a PNG")
    assert script.read_text() == "print(1)\n"


def test_bench_simple_needs_one_size_of_image(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """It printed the table's header, then 'unexpected TypeError'."""
    from fastforward.fields import RGBImageField
    from fastforward.writer import DatasetWriter

    path = tmp_path / "sizes.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw")}, num_workers=1,
                  progress=False).from_indexed_dataset(
        [(np.zeros((8 + i % 2, 8, 3), np.uint8),) for i in range(8)])
    status = main(["bench", str(path), "--pipeline", "simple", "--workers", "1",
                   "--batch-size", "2"])
    line = assert_one_line_error(capsys, status, 1, "holds images of 2 sizes",
                                 "choose another --pipeline")
    assert "unexpected" not in line


@pytest.mark.parametrize("smart_threshold", [5_000, None], ids=["mixed", "all-raw"])
def test_bench_says_when_images_are_stored_raw(corpus: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               smart_threshold: int | None) -> None:
    """A file with images stored raw ('smart' or 'proportion' write modes) was
    compared with the decode limit of its JPEGs alone, without a word: a raw
    image costs a copy, so the ratio looked better than any loader's of JPEGs."""
    import simplejpeg

    from fastforward.fields import RGBImageField
    from fastforward.writer import DatasetWriter

    photos = [simplejpeg.decode_jpeg(path.read_bytes())
              for path in sorted(corpus.glob("*/*.jpg"))[:16]]
    # every other one small (3 kB raw), the others 48 kB: JPEG above 5 kB
    images = [(photo[:32, :32] if i % 2 else photo[:128, :128],)
              for i, photo in enumerate(photos)]
    path = tmp_path / "mixed.beton"
    mode = "smart" if smart_threshold else "raw"
    DatasetWriter(path, {"image": RGBImageField(write_mode=mode,
                                                smart_threshold=smart_threshold)},
                  num_workers=1, progress=False).from_indexed_dataset(images)
    assert main(["bench", str(path), "--workers", "1", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    raw = 8 if smart_threshold else 16
    assert f"note: {raw} of the 16 images of field 'image' are stored raw" in out
    assert ("the ratio is not of like with like" if smart_threshold
            else "there is no decode limit") in out


def test_bench_names_a_damaged_jpeg(beton: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A corrupt JPEG failed the decode limit's timing loop with libjpeg's message
    alone ('Corrupt JPEG data: found marker 0xd5 instead of RST0')."""
    damaged = tmp_path / "damaged.beton"
    shutil.copy(beton, damaged)
    with Reader(damaged) as reader:
        ptrs = reader.metadata["f0"]["data_ptr"][[3]]
        ptr, size = int(ptrs[0]), int(reader.payload_sizes(ptrs, np.array([3]))[0])
    with open(damaged, "r+b") as f:  # a wrong restart marker in the entropy-coded data
        f.seek(ptr + size // 2)
        f.write(b"\xff\xd5" * 4)
    status = main(["bench", str(damaged), "--workers", "1", "--batch-size", "8"])
    assert_one_line_error(capsys, status, 1, f"{damaged}: sample 3, field 'image': cannot "
                          "decode its JPEG")

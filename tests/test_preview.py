"""``fastforward preview``: a PNG grid of decoded samples with masks and boxes drawn."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from fastforward.cli import main
from fastforward.fields import IntField, MaskField, RaggedField, RGBImageField
from fastforward.reader import Reader
from fastforward.scenes import make_scene, make_scenes
from fastforward.writer import DatasetWriter

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("preview") / "scenes.beton"
    scenes = make_scenes(6, seed=2, size=(60, 80))
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg"), "mask": MaskField(),
                         "objects": RaggedField(columns={"boxes": (np.float32, 4),
                                                         "labels": np.int64}),
                         "label": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset(
        [(s.image, s.mask, s.objects(), i) for i, s in enumerate(scenes)])
    return path


@pytest.mark.parametrize("decoder", ["center_crop", "random_resized_crop", "shorter_side"])
def test_preview_draws_a_grid(scene_file: Path, tmp_path: Path, decoder: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    out = tmp_path / "grid.png"
    assert main(["preview", str(scene_file), "-o", str(out), "--decoder", decoder,
                 "--size", "64", "--flip", "--samples", "6", "--columns", "3"]) == 0
    assert "6 samples" in capsys.readouterr().out
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[1] > pixels.shape[0]  # three columns, two rows
    # the shapes' mask overlay and box outlines are drawn: many distinct colours
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
    assert not list(tmp_path.glob(".*.part"))


def test_preview_says_how_many_it_drew(scene_file: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """More samples asked than the file holds: it draws and says the 6 there are."""
    assert main(["preview", str(scene_file), "-o", str(tmp_path / "g.png"), "--samples",
                 "1000", "--size", "32"]) == 0
    assert capsys.readouterr().out.startswith(f"6 samples of {scene_file}")


def test_preview_pipelines_follow_the_image(scene_file: Path) -> None:
    from fastforward.fields.decoders import MaskDecoder, RaggedDecoder
    from fastforward.preview import preview_pipelines

    with Reader(scene_file) as reader:
        image, pipelines = preview_pipelines(reader, decoder="random_resized_crop")
    assert image == "image"
    (mask,) = pipelines["mask"]
    (objects,) = pipelines["objects"]
    assert isinstance(mask, MaskDecoder)
    assert mask.follows == "image"
    assert isinstance(objects, RaggedDecoder)
    assert (objects.follows, objects.boxes) == ("image", "boxes")


def test_preview_of_a_file_without_images_says_so(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "labels.beton"
    DatasetWriter(path, {"label": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset([0, 1])
    assert main(["preview", str(path), "-o", str(tmp_path / "x.png")]) == 1
    assert "has no RGBImageField" in capsys.readouterr().err


def test_preview_has_no_more_columns_than_samples(scene_file: Path, tmp_path: Path) -> None:
    """--columns 200 with 2 samples drew a 60,000-pixel-wide, blank figure (and
    --columns 100000 ran for minutes)."""
    from PIL import Image

    narrow, wide = tmp_path / "narrow.png", tmp_path / "wide.png"
    for out, columns in ((narrow, "2"), (wide, "200")):
        assert main(["preview", str(scene_file), "-o", str(out), "--decoder", "center_crop",
                     "--size", "32", "--samples", "2", "--columns", columns]) == 0
    with Image.open(narrow) as a, Image.open(wide) as b:
        assert a.size == b.size


@pytest.mark.parametrize("option", ["--seed", "--epoch"])
def test_a_negative_seed_or_epoch_is_a_usage_error(scene_file: Path, tmp_path: Path,
                                                   option: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """-1 passed the parser and failed after decoding with NumPy's 'expected
    non-negative integer', naming neither option (exit status 1, not 2)."""
    assert main(["preview", str(scene_file), "-o", str(tmp_path / "x.png"), "--shuffle",
                 option, "-1"]) == 2
    assert f"argument {option}: must be in [0, 2**63), got -1" in capsys.readouterr().err


def test_what_would_not_fit_in_memory_is_refused(scene_file: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--size 20000 took 24 GB and was killed by the OOM killer, printing nothing."""
    import fastforward.preview as preview

    out = tmp_path / "x.png"
    assert main(["preview", str(scene_file), "-o", str(out), "--size", "2049"]) == 2
    assert "argument --size: must be at most 2048, got 2049" in capsys.readouterr().err
    monkeypatch.setattr(preview, "MAX_PREVIEW_SAMPLES", 5)  # the file holds 6
    assert main(["preview", str(scene_file), "-o", str(out), "--samples", "6"]) == 1
    assert "6 samples asked, a preview draws at most 5" in capsys.readouterr().err
    assert main(["preview", str(scene_file), "-o", str(out), "--samples", "60"]) == 1
    assert "60 samples asked, a preview draws at most 5" in capsys.readouterr().err  # not 6
    assert not out.exists()


def test_the_simple_decoder_refuses_too_many_stored_pixels(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """As stored, the images' size is the file's: --size bounds nothing."""
    import fastforward.preview as preview

    path = tmp_path / "big.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg")}, num_workers=1,
                  progress=False).from_indexed_dataset([(np.zeros((40, 50, 3), np.uint8),)] * 3)
    monkeypatch.setattr(preview, "MAX_PREVIEW_SIZE", 18)  # 18x18x16 pixels: 2 images pass
    with Reader(path) as reader:
        preview.preview_pipelines(reader, None, "simple", 16, False, [0])
        with pytest.raises(ValueError, match=r"3 images of 40x50 as stored are too many"):
            preview.preview_pipelines(reader, None, "simple", 16, False, [0, 1, 2])


def test_every_decoder_refuses_too_many_pixels(scene_file: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """256 samples at --size 2048 (each limit passed on its own) with shorter_side
    (a batch padded to the largest any image of the field takes) would take about
    18 GB: the pixels decoded are bounded whatever the decoder."""
    import fastforward.preview as preview

    monkeypatch.setattr(preview, "MAX_PREVIEW_SIZE", 16)  # 16 images of 16x16 in all
    with Reader(scene_file) as reader:  # 60x80 scenes
        for decoder in ("center_crop", "random_resized_crop"):
            preview.preview_pipelines(reader, None, decoder, 16, False, range(6))
            with pytest.raises(ValueError, match=rf"6 images of 40x40 \({decoder} 40\) "
                                                 r"are too many pixels to draw \(at most 4,096"):
                preview.preview_pipelines(reader, None, decoder, 40, False, range(6))
        preview.preview_pipelines(reader, None, "center_crop", 40, False)  # (no samples: no
        preview.preview_pipelines(reader, None, "shorter_side", 20, False, range(6))  # bound)
        with pytest.raises(ValueError, match=r"6 images of 24x32 \(shorter_side 24\)"):
            preview.preview_pipelines(reader, None, "shorter_side", 24, False, range(6))
    # portrait and landscape images: the batch is padded to the largest of both sides
    path = tmp_path / "both.beton"
    images = [np.zeros((20, 10, 3), np.uint8)] * 2 + [np.zeros((10, 20, 3), np.uint8)] * 2
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw")}, num_workers=1,
                  progress=False).from_indexed_dataset([(image,) for image in images])
    with Reader(path) as reader, pytest.raises(ValueError, match=r"4 images of 40x40 "
                                                               r"\(shorter_side 20\)"):
        preview.preview_pipelines(reader, None, "shorter_side", 20, False, range(4))  # (20x40
        # or 40x20 each: 3,200 pixels, under the bound, were it not for the padding)


def test_the_simple_decoder_needs_one_size_among_the_samples_drawn(
        tmp_path: Path) -> None:
    """It refused a file of several sizes even where the samples drawn were of one."""
    from fastforward.preview import preview_pipelines

    path = tmp_path / "two.beton"
    images = [np.zeros((20, 30, 3), np.uint8)] * 2 + [np.zeros((10, 30, 3), np.uint8)]
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw")}, num_workers=1,
                  progress=False).from_indexed_dataset([(image,) for image in images])
    with Reader(path) as reader:
        preview_pipelines(reader, None, "simple", 16, False, [0, 1])
        with pytest.raises(ValueError, match="the 3 samples drawn of field 'image' hold "
                                             "images of 2 sizes"):
            preview_pipelines(reader, None, "simple", 16, False, [0, 1, 2])


@pytest.mark.parametrize("option", ["--seed", "--epoch"])
def test_a_seed_or_epoch_that_changes_nothing_is_refused(
        scene_file: Path, tmp_path: Path, option: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """They were taken, and the same PNG drawn, where nothing in the preview is random."""
    out = tmp_path / "x.png"
    assert main(["preview", str(scene_file), "-o", str(out), option, "2"]) == 2
    assert ("--seed and --epoch apply to --shuffle, --flip and --decoder random_resized_crop, "
            "and this preview uses none") in capsys.readouterr().err
    assert not out.exists()
    for extra in (["--flip"], ["--shuffle"], ["--decoder", "random_resized_crop"]):
        assert main(["preview", str(scene_file), "-o", str(out), option, "2", *extra]) == 0


@pytest.fixture(scope="module")
def one_size_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Scenes of one size with a mask and boxes, for the simple decoder."""
    from fastforward.demo import load_photos

    path = tmp_path_factory.mktemp("preview") / "one-size.beton"
    rng, photos = np.random.default_rng(3), load_photos()
    scenes = [make_scene(photos, rng, (48, 64)) for _ in range(4)]
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"), "mask": MaskField(),
                         "objects": RaggedField(columns={"boxes": (np.float32, 4),
                                                         "labels": np.int64})},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(s.image, s.mask, s.objects()) for s in scenes])
    return path


def test_the_simple_decoder_draws_masks_and_boxes_as_stored(
        one_size_scenes: Path, tmp_path: Path) -> None:
    """--decoder simple left the masks and boxes out, which the help says are drawn."""
    from fastforward.fields.decoders import MaskDecoder, RaggedDecoder
    from fastforward.preview import preview_pipelines

    with Reader(one_size_scenes) as reader:
        _, pipelines = preview_pipelines(reader, decoder="simple")
    (mask,), (objects,) = pipelines["mask"], pipelines["objects"]
    assert isinstance(mask, MaskDecoder)
    assert mask.size == (48, 64)
    assert isinstance(objects, RaggedDecoder)
    assert objects.follows is None
    plain, drawn = tmp_path / "plain.png", tmp_path / "drawn.png"
    assert main(["preview", str(one_size_scenes), "-o", str(drawn), "--decoder", "simple"]) == 0
    with Reader(one_size_scenes) as reader:  # the same file without its masks and boxes
        images = [reader.read(i)[0] for i in range(reader.num_samples)]
    bare = tmp_path / "bare.beton"
    DatasetWriter(bare, {"image": RGBImageField(write_mode="raw")}, num_workers=1,
                  progress=False).from_indexed_dataset([(image,) for image in images])
    assert main(["preview", str(bare), "-o", str(plain), "--decoder", "simple"]) == 0
    from PIL import Image

    with Image.open(plain) as a, Image.open(drawn) as b:
        a_pixels, b_pixels = np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))
    assert a_pixels.shape == b_pixels.shape
    assert np.count_nonzero((a_pixels != b_pixels).any(axis=2)) > 1000


@pytest.mark.parametrize(("case", "fragment"), [
    ("sizes", "hold images of 6 sizes; the simple decoder shows one size only: choose "
              "another --decoder"),
    ("flip", "cannot follow a flip after the simple decoder"),
])
def test_the_simple_decoder_refuses_what_it_cannot_show(
        scene_file: Path, one_size_scenes: Path, tmp_path: Path, case: str, fragment: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Images of several sizes were reported as 'unexpected TypeError'; a flip
    after it would leave the masks and boxes where they were."""
    out = tmp_path / "x.png"
    path = scene_file if case == "sizes" else one_size_scenes
    argv = ["preview", str(path), "-o", str(out), "--decoder", "simple"]
    assert main(argv + (["--flip"] if case == "flip" else [])) == 1
    err = capsys.readouterr().err
    assert fragment in err
    assert "unexpected" not in err
    assert not out.exists()


def test_the_simple_decoder_leaves_out_masks_of_another_size(tmp_path: Path) -> None:
    """Masks stored at half the image's size were given the image's size, and the
    preview failed ('mask is 24×32, the decoder's size is 48×64')."""
    from fastforward.preview import preview_pipelines

    rng = np.random.default_rng(0)
    path = tmp_path / "half.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"), "mask": MaskField(),
                         "same": MaskField()}, num_workers=1, progress=False
                  ).from_indexed_dataset(
        [(rng.integers(0, 256, (48, 64, 3), np.uint8), rng.integers(0, 3, (24, 32), np.uint8),
          rng.integers(0, 3, (48, 64), np.uint8)) for _ in range(4)])
    with Reader(path) as reader:
        _, pipelines = preview_pipelines(reader, decoder="simple", samples=[0, 3])
    assert pipelines["mask"] is None
    assert pipelines["same"] is not None
    assert main(["preview", str(path), "-o", str(tmp_path / "p.png"), "--decoder",
                 "simple"]) == 0


@pytest.mark.parametrize("where", ["missing directory", "a directory", "the input",
                                   "a link to the input", "a trailing slash", "a link loop",
                                   "a named pipe", "another dataset", "a script"])
def test_preview_checks_its_output_before_decoding(
        scene_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A missing directory was found after decoding, and the error named the
    hidden '.<name>.part' file rather than the one asked for; ``-o`` the input
    file wrote the PNG over the dataset; ``-o pv/`` wrote a file ``pv``; a link
    in a loop was replaced by the PNG."""
    import fastforward.loader

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded before the output was checked")

    monkeypatch.setattr(fastforward.loader, "Loader", no_loading)
    (tmp_path / "link.beton").symlink_to(scene_file)
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    os.mkfifo(tmp_path / "pipe.png")  # the rename would have replaced it
    # a mistyped -o replaced them with the PNG
    shutil.copyfile(scene_file, tmp_path / "other.beton")
    (tmp_path / "train.py").write_text("print('train')\n")
    before = scene_file.read_bytes()
    out, fragment = {
        "missing directory": (tmp_path / "no" / "x.png", f"{tmp_path / 'no'}: no such directory"),
        "a directory": (tmp_path, f"{tmp_path}: is a directory"),
        "the input": (scene_file, f"{scene_file}: is the file being read"),
        "a link to the input": (tmp_path / "link.beton", "link.beton: is the file being read"),
        "a trailing slash": (f"{tmp_path / 'pv'}/",
                             f"{tmp_path / 'pv'}/: names a directory (it ends with a slash)"),
        "a link loop": (tmp_path / "loop1", "loop1: Too many levels of symbolic links"),
        "a named pipe": (tmp_path / "pipe.png", "a named pipe, not a file to write"),
        "another dataset": (tmp_path / "other.beton",
                            f"{tmp_path / 'other.beton'}: exists and is not a PNG"),
        "a script": (tmp_path / "train.py", f"{tmp_path / 'train.py'}: exists and is not a PNG"),
    }[where]
    assert main(["preview", str(scene_file), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert fragment in err
    assert ".part" not in err
    assert scene_file.read_bytes() == before
    assert not (tmp_path / "pv").exists()
    assert (tmp_path / "loop1").is_symlink()
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe.png").st_mode)
    assert (tmp_path / "other.beton").read_bytes() == before
    assert (tmp_path / "train.py").read_text() == "print('train')\n"


def test_preview_replaces_a_png(scene_file: Path, tmp_path: Path) -> None:
    """An earlier preview (a PNG, or an empty file) is replaced, whatever its name."""
    for name in ("grid.png", "grid", "empty.out"):
        (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n old" if name != "empty.out" else b"")
        assert main(["preview", str(scene_file), "-o", str(tmp_path / name), "--size", "16",
                     "--samples", "1"]) == 0
        assert (tmp_path / name).stat().st_size > 100


def test_preview_writes_through_a_link(scene_file: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The PNG replaced the link itself (``convert`` writes through, as ``open``)."""
    (tmp_path / "pngs").mkdir()
    link = tmp_path / "grid.png"
    link.symlink_to(tmp_path / "pngs" / "grid.png")
    assert main(["preview", str(scene_file), "-o", str(link), "--size", "16",
                 "--samples", "1"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"drawn in {link}")  # as given
    assert link.is_symlink()
    assert (tmp_path / "pngs" / "grid.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "part-file"])
def test_a_failed_save_names_the_file_asked_for(scene_file: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str],
                                                unnamed: bool) -> None:
    import errno

    import fastforward.writer

    if not unnamed:
        monkeypatch.setattr(fastforward.writer, "_open_unnamed", lambda dir_fd: None)

    def full_disk(fd: int) -> None:  # the PNG's bytes were written, the flush fails
        assert any(p.name.endswith(".part") for p in tmp_path.iterdir()) is not unnamed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fastforward.writer.os, "fsync", full_disk)
    out = tmp_path / "x.png"
    assert main(["preview", str(scene_file), "-o", str(out), "--size", "16",
                 "--samples", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{out}: No space left on device (the disk is full)" in err
    assert "no partial file is left behind" in err
    assert ".part" not in err
    assert list(tmp_path.iterdir()) == []  # neither the PNG nor its partial left


def test_preview_writes_any_name_the_directory_allows(scene_file: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A 252-byte name failed after drawing everything: its partial file's name
    ('.<name>.part') was too long; two previews of one target shared that name. A
    .jpg name got PNG bytes."""
    out = tmp_path / ("p" * 248 + ".png")
    assert main(["preview", str(scene_file), "-o", str(out), "--size", "16",
                 "--samples", "1"]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # as open() makes it
    out.chmod(0o640)  # a PNG replaced keeps its permissions
    assert main(["preview", str(scene_file), "-o", str(out), "--size", "16",
                 "--samples", "1"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    capsys.readouterr()
    assert main(["preview", str(scene_file), "-o", str(tmp_path / "x.jpg")]) == 1
    assert "x.jpg: the image written is a PNG: name it .png" in capsys.readouterr().err
    assert not (tmp_path / "x.jpg").exists()


def test_the_title_names_the_size_only_where_the_decoder_gives_one(
        one_size_scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--decoder simple draws images as stored, yet the title and the command's
    line said "simple 256"."""
    pytest.importorskip("matplotlib")
    from fastforward import preview

    titles: list[str] = []
    monkeypatch.setattr(preview, "save_png", lambda figure, out, dpi: titles.append(
        figure.get_suptitle()))
    out = str(tmp_path / "p.png")
    assert main(["preview", str(one_size_scenes), "-o", out, "--decoder", "simple"]) == 0
    assert main(["preview", str(one_size_scenes), "-o", out, "--size", "32"]) == 0
    assert titles[0] == "one-size.beton: simple, as stored"
    assert titles[1] == "one-size.beton: center_crop 32"
    printed = capsys.readouterr().out.splitlines()
    assert "(simple, as stored) drawn in" in printed[0]
    assert "(center_crop 32) drawn in" in printed[1]

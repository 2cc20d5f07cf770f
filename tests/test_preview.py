"""``fastforward preview``: a PNG grid of decoded samples with masks and boxes drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastforward.cli import main
from fastforward.fields import IntField, MaskField, RaggedField, RGBImageField
from fastforward.reader import Reader
from fastforward.scenes import make_scenes
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

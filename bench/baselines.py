"""The comparators, run on the same data as fastforward.

- ``dataloader``: PyTorch's DataLoader over an ImageFolder of the
  JPEGs the .beton holds, with torchvision's ImageFolder and transforms when
  torchvision is installed, otherwise a plain PIL dataset with the same
  operations (labelled "PIL Dataset"); the pipelines with an augmentation
  policy (``POLICIES``) need torchvision.
- ``ffcv``: FFCV 1.0.2 on the same .beton, when ``import ffcv``
  works (it needs ``pkg-config libturbojpeg0-dev libopencv-dev`` from Debian,
  then ``pip install torch==2.13.0 ffcv==1.0.2 numba opencv-python pillow``).

``throughput(kind, ...)`` runs one in a subprocess, under this interpreter or
another one (a virtual environment of its own: torchvision 0.29.1 needs torch
2.14.1, FFCV its own build): ``python baselines.py {dataloader,ffcv} PATH
PIPELINE WORKERS`` prints the figure as JSON. The FFCV and torchvision modes
import nothing of fastforward.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

Figure = tuple[str, int, float]
"""(name, images, seconds)"""


def export_image_folder(beton: Path, out: Path) -> Path:
    """Write the JPEGs stored in *beton* as ``out/<label>/<index>.jpg``."""
    from fastforward.reader import Reader

    reader = Reader(beton)
    for index in range(reader.num_samples):
        row = reader.metadata[index]
        folder = out / f"{int(row['f1']):03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:06d}.jpg").write_bytes(bytes(reader.payload(int(row["f0"]["data_ptr"]),
                                                                       index)))
    return out


class PILImageFolder:
    """ImageFolder with PIL and the benchmark's transforms, without torchvision."""

    def __init__(self, root: Path, pipeline: str) -> None:
        self.files = sorted(root.glob("*/*.jpg"))
        self.labels = [int(f.parent.name) for f in self.files]
        self.pipeline = pipeline
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        import torch
        from PIL import Image

        from fastforward.transforms.crop import get_center_crop, get_random_crop

        with Image.open(self.files[index]) as img:
            img = img.convert("RGB")
            width, height = img.size
            if self.pipeline == "center_crop":
                i, j, h, w = get_center_crop(height, width, 224 / 256)
                img = img.resize((224, 224), Image.BILINEAR, box=(j, i, j + w, i + h))
            else:
                i, j, h, w = get_random_crop(height, width, (0.08, 1.0), (3 / 4, 4 / 3),
                                             self.rng.random(22))
                img = img.resize((192, 192), Image.BILINEAR, box=(j, i, j + w, i + h))
                if self.rng.random() < 0.5:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
            pixels = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        return pixels, self.labels[index]


POLICIES = {"train_trivialaugment": ("TrivialAugmentWide", ()),
            "train_randaugment": ("RandAugment", (2, 9)),
            "train_autoaugment": ("AutoAugment", ())}
"""The pipelines that end in an augmentation policy: torchvision's class and arguments."""


def torchvision_dataset(root: Path, pipeline: str) -> Any:
    import torchvision
    from torchvision.transforms import v2

    if pipeline == "center_crop":
        ops = [v2.PILToTensor(), v2.Resize(256), v2.CenterCrop(224)]
    else:
        ops = [v2.PILToTensor(), v2.RandomResizedCrop(192), v2.RandomHorizontalFlip()]
    if pipeline in POLICIES:  # on the uint8 tensor, per sample, as fastforward's
        policy, args = POLICIES[pipeline]
        ops.append(getattr(v2, policy)(*args))
    return torchvision.datasets.ImageFolder(str(root), transform=v2.Compose(ops))


def _dataloader(root: Path, pipeline: str, workers: int, batch_size: int = 256) -> Figure:
    """Images/s of torch's DataLoader over the ImageFolder *root* (after a warm-up batch)."""
    import torch

    try:
        dataset = torchvision_dataset(root, pipeline)
        import torchvision

        label = f"DataLoader + torchvision {torchvision.__version__.split('+')[0]}"
    except ImportError:
        if pipeline in POLICIES:
            raise  # torchvision's policy is the comparator: nothing stands in for it
        dataset = PILImageFolder(root, pipeline)
        label = "DataLoader + PIL Dataset"
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         num_workers=workers, drop_last=False,
                                         persistent_workers=False)
    images, start = 0, None
    for batch, _ in loader:
        if pipeline.startswith("train"):
            batch = batch.to(torch.float16)
        if start is None:
            start = time.perf_counter()
            continue
        images += len(batch)
    seconds = time.perf_counter() - start if start is not None else 0.0
    return f"{label} ({workers} workers)", images, seconds


def _ffcv(beton: Path, pipeline: str, workers: int, batch_size: int = 256) -> Figure:
    """Images/s of FFCV 1.0.2 on the same .beton (ImportError when it is not installed)."""
    import ffcv  # noqa: F401 - raises ImportError where FFCV is missing
    import torch
    from ffcv.fields.decoders import (
        CenterCropRGBImageDecoder,
        RandomResizedCropRGBImageDecoder,
        SimpleRGBImageDecoder,
    )
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Convert, RandomHorizontalFlip, ToTensor, ToTorchImage

    if pipeline == "center_crop":
        image: list[Any] = [CenterCropRGBImageDecoder((224, 224), 224 / 256)]
    elif pipeline == "simple":
        image = [SimpleRGBImageDecoder()]
    else:
        image = [RandomResizedCropRGBImageDecoder((192, 192)), RandomHorizontalFlip(),
                 ToTensor(), ToTorchImage(), Convert(torch.float16)]
    # the images only, as fastforward's figure (a field set to None is not read)
    loader = Loader(str(beton), batch_size=batch_size, num_workers=workers,
                    order=OrderOption.RANDOM, pipelines={"image": image, "label": None})
    for _ in loader:  # a whole epoch of warm-up: it pays for the JIT compilation
        pass
    images, start = 0, time.perf_counter()
    for _ in range(2):
        for batch, *_ in loader:
            images += len(batch)
    return f"FFCV 1.0.2 ({workers} threads)", images, time.perf_counter() - start


class _PILFolder:
    """``(PIL image, label)`` for every ``<label>/<name>.jpg`` under a folder."""

    def __init__(self, root: Path) -> None:
        self.files = sorted(root.glob("*/*.jpg"))
        classes = sorted({f.parent.name for f in self.files})
        self.labels = [classes.index(f.parent.name) for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        with Image.open(self.files[index]) as img:
            return img.convert("RGB"), self.labels[index]


def _ffcv_writer(root: Path, _: str, workers: int) -> Figure:
    """Images/s of FFCV 1.0.2's DatasetWriter converting the ImageFolder *root*
    (max_resolution=256, jpeg_quality=90)."""
    import tempfile

    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    dataset = _PILFolder(root)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        DatasetWriter(str(Path(tmp) / "ffcv.beton"), {
            "image": RGBImageField(write_mode="jpg", max_resolution=256, jpeg_quality=90),
            "label": IntField()}, num_workers=workers).from_indexed_dataset(dataset)
        seconds = time.perf_counter() - start
    return f"FFCV 1.0.2 DatasetWriter ({workers} workers)", len(dataset), seconds


BASELINES = {"dataloader": _dataloader, "ffcv": _ffcv, "ffcv_writer": _ffcv_writer}


def throughput(kind: str, path: Path, pipeline: str, workers: int,
               python: str | None = None) -> Any:
    """The *kind* baseline's figure as a ``Measurement``, measured in a process of
    its own under the interpreter *python* (default: this one), so that its
    threads, JIT caches and teardown stay out of this one."""
    from fastforward.benchmark import Measurement

    python = python or sys.executable
    done = subprocess.run([python, str(Path(__file__).resolve()), kind, str(path), pipeline,
                           str(workers)], capture_output=True, text=True, timeout=3600,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {kind} baseline under {python} failed "
                           f"(exit {done.returncode}):\n{done.stderr[-4000:]}")
    name, images, seconds = json.loads(done.stdout.strip().splitlines()[-1])
    return Measurement(name, int(images), float(seconds))


@functools.cache
def importable(module: str, python: str | None) -> bool:
    """Whether *module* can be imported under *python* (default: this interpreter);
    asked once per run (each answer starts an interpreter)."""
    return subprocess.run([python or sys.executable, "-c", f"import {module}"],
                          capture_output=True, check=False).returncode == 0


if __name__ == "__main__":
    kind, path, pipeline, workers = sys.argv[1:5]
    print(json.dumps(BASELINES[kind](Path(path), pipeline, int(workers))))

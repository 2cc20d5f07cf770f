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


STEADY_MIN_BATCHES = 5
"""Batches an epoch needs after its first for a steady-state figure, as
``fastforward.benchmark.STEADY_MIN_BATCHES`` (this module imports nothing of
fastforward): with fewer, the batches the workers prepared while the first one
was made are most of what is timed."""

WITH_START_UP = ", with start-up"
"""What a figure's name ends with where its epochs were timed whole."""


def steady_epoch(batches: Any, skip: int = 1) -> tuple[int, float, bool]:
    """Images and seconds of one epoch after its first *skip* batches: with one,
    the same rule as ``fastforward.benchmark.steady_state``, so that no loader's
    per-epoch start-up weighs on its figure; and whether the epoch was timed
    whole, start-up included instead (fewer than ``STEADY_MIN_BATCHES`` batches
    after those, as fastforward's figures are then).

    A loader whose workers each make a whole batch (the DataLoader) skips one per
    worker: they all start at once, so when the first batch arrives the others'
    are nearly ready, and timing from it alone counted them as made in no time."""
    began = time.perf_counter()
    images, skipped_images, start, seen = 0, 0, None, 0
    for batch in batches:
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        seen += 1
        if seen <= skip:
            skipped_images += len(first)
            if seen == skip:
                start = time.perf_counter()
            continue
        images += len(first)
    end = time.perf_counter()
    if seen - skip < STEADY_MIN_BATCHES or start is None:  # no steady state to take
        return skipped_images + images, end - began, True
    return images, end - start, False


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
            if self.pipeline == "tv_trivialaugment":
                raise ImportError("the tv_trivialaugment baseline needs torchvision")
            array = np.asarray(img)
            if self.pipeline == "python_op":
                array = _bench_ops().python_op(array)
            pixels = torch.from_numpy(array.copy()).permute(2, 0, 1)
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
    if pipeline == "python_op":
        ops.append(v2.Lambda(_tensor_python_op))
    elif pipeline == "tv_trivialaugment":
        ops.append(v2.TrivialAugmentWide())
    elif pipeline in POLICIES:  # on the uint8 tensor, per sample, as fastforward's
        policy, args = POLICIES[pipeline]
        ops.append(getattr(v2, policy)(*args))
    return torchvision.datasets.ImageFolder(str(root), transform=v2.Compose(ops))


@functools.cache
def _bench_ops() -> Any:
    """fastforward/_bench_ops.py, loaded by path (fastforward may not be installed here)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "fastforward" / "_bench_ops.py"
    spec = importlib.util.spec_from_file_location("fastforward_bench_ops", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tensor_python_op(image: Any) -> Any:
    """The benchmark's Python operation on a C×H×W uint8 tensor (HWC NumPy inside)."""
    import torch

    out = _bench_ops().python_op(image.permute(1, 2, 0).numpy())
    return torch.from_numpy(out).permute(2, 0, 1)


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
    def batches() -> Any:
        for batch, labels in loader:
            yield (batch.to(torch.float16) if pipeline.startswith("train") else batch), labels

    images, seconds, whole = steady_epoch(batches(), skip=max(1, workers))
    return f"{label} ({workers} workers){WITH_START_UP if whole else ''}", images, seconds


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
    images, seconds, whole = 0, 0.0, False
    for _ in range(2):  # each epoch at steady state, as fastforward's
        counted, taken, timed_whole = steady_epoch(loader)
        images, seconds, whole = images + counted, seconds + taken, whole or timed_whole
    return f"FFCV 1.0.2 ({workers} threads){WITH_START_UP if whole else ''}", images, seconds


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


SCENE_MEAN = [0.485, 0.456, 0.406]
SCENE_STD = [0.229, 0.224, 0.225]


class SceneFolder:
    """The scenes exported by ``export_scenes``: ``images/N.jpg``, ``masks/N.png`` (or
    ``masks/N.npy``) and ``objects.json``, as torchvision's ``tv_tensors``."""

    def __init__(self, root: Path, task: str, mask_format: str = "png") -> None:
        self.root, self.task, self.mask_format = root, task, mask_format
        self.objects = json.loads((root / "objects.json").read_text())
        self.transform = self._transform()

    def _transform(self) -> Any:
        import torch
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        convert = [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                   v2.Normalize(SCENE_MEAN, SCENE_STD)]
        if self.task == "segmentation":
            return v2.Compose([v2.RandomResizedCrop(256), v2.RandomHorizontalFlip(), *convert])
        return v2.Compose([v2.Resize(320, max_size=512), v2.RandomHorizontalFlip(), *convert])

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> Any:
        import torch
        from torchvision import tv_tensors
        from torchvision.io import decode_jpeg, read_file

        image = tv_tensors.Image(decode_jpeg(read_file(str(self.root / "images" /
                                                           f"{index:06d}.jpg"))))
        if self.task == "segmentation":
            if self.mask_format == "png":
                from PIL import Image

                with Image.open(self.root / "masks" / f"{index:06d}.png") as img:
                    ids = np.asarray(img)
            else:
                ids = np.load(self.root / "masks" / f"{index:06d}.npy")
            return self.transform(image, tv_tensors.Mask(torch.from_numpy(ids.copy())))
        boxes, labels = self.objects[index]
        target = {"boxes": tv_tensors.BoundingBoxes(
            torch.tensor(boxes, dtype=torch.float32).view(-1, 4), format="XYXY",
            canvas_size=tuple(image.shape[-2:])),
            "labels": torch.tensor(labels, dtype=torch.int64)}
        return self.transform(image, target)


def _pad_collate(samples: list) -> Any:
    """Detection batches as torchvision's ImageList: images padded to the batch's
    largest, their sizes, and the list of targets."""
    import torch

    height = max(image.shape[1] for image, _ in samples)
    width = max(image.shape[2] for image, _ in samples)
    images = torch.zeros(len(samples), 3, height, width)
    for k, (image, _) in enumerate(samples):
        images[k, :, : image.shape[1], : image.shape[2]] = image
    sizes = torch.tensor([tuple(image.shape[1:]) for image, _ in samples])
    return images, sizes, [target for _, target in samples]


def _dataloader_scenes(root: Path, pipeline: str, workers: int) -> Figure:
    """Images/s of torch's DataLoader with torchvision's transforms.v2 on the exported
    scenes: ``segmentation`` (RandomResizedCrop(256) + flip on image and
    ``tv_tensors.Mask``, normalise; masks read as PNG, or ``.npy`` with
    ``segmentation_npy``) or ``detection`` (Resize(320, max_size=512) + flip on image
    and ``tv_tensors.BoundingBoxes``, normalise, padded batch)."""
    import torch
    import torchvision

    task = "detection" if pipeline == "detection" else "segmentation"
    dataset = SceneFolder(root, task, "npy" if pipeline.endswith("npy") else "png")
    batch_size = 32 if task == "detection" else 64
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=False,
        collate_fn=_pad_collate if task == "detection" else None, persistent_workers=True)
    images, start = 0, None
    for _ in range(2):
        for batch in loader:
            if start is None:
                start = time.perf_counter()
                continue
            images += len(batch[0])
    seconds = time.perf_counter() - start if start is not None else 0.0
    version = torchvision.__version__.split("+")[0]
    masks = {"segmentation": ", PNG masks", "segmentation_npy": ", .npy masks"}.get(pipeline, "")
    return f"DataLoader + transforms.v2 {version} ({workers} workers{masks})", images, seconds


BASELINES = {"dataloader": _dataloader, "ffcv": _ffcv, "ffcv_writer": _ffcv_writer,
             "dataloader_scenes": _dataloader_scenes}


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

"""FFCV's Quick Start, with ``ffcv`` renamed ``fastforward``.

Writes a small ImageFolder-style dataset (real photographs that ship inside
scikit-image, nothing downloaded) to a .beton file, then loads it for a few
epochs as a training loop would. Runs on the CPU; pass ``--device cuda`` on a
machine with a GPU.

    python examples/quickstart.py [--images 512] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fastforward.datasets import ImageFolder
from fastforward.fields import IntField, RGBImageField
from fastforward.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
from fastforward.loader import Loader, OrderOption
from fastforward.transforms import (
    NormalizeImage,
    RandomHorizontalFlip,
    Squeeze,
    ToDevice,
    ToTensor,
    ToTorchImage,
)
from fastforward.writer import DatasetWriter

MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        from fastforward.demo import make_corpus

        folder = make_corpus(Path(tmp) / "images", args.images, seed=0)
        path = str(Path(tmp) / "train.beton")

        # 1. Convert once.
        writer = DatasetWriter(path, {
            "image": RGBImageField(write_mode="jpg", max_resolution=256, jpeg_quality=90),
            "label": IntField(),
        }, num_workers=2)
        writer.from_indexed_dataset(ImageFolder(folder))

        # 2. Load fast.
        loader = Loader(path, batch_size=64, num_workers=2, order=OrderOption.QUASI_RANDOM,
                        seed=0, pipelines={
                            "image": [RandomResizedCropRGBImageDecoder((160, 160)),
                                      RandomHorizontalFlip(), ToTensor(), ToDevice(device),
                                      ToTorchImage(), NormalizeImage(MEAN, STD, np.float16)],
                            "label": [IntDecoder(), ToTensor(), Squeeze(), ToDevice(device)],
                        })

        # 3. Train.
        for epoch in range(args.epochs):
            start, seen = time.perf_counter(), 0
            for images, labels in loader:
                assert images.shape[1:] == (3, 160, 160)
                assert images.device.type == device.type
                assert labels.shape == (len(images),)
                seen += len(images)
            rate = seen / (time.perf_counter() - start)
            print(f"epoch {epoch}: {seen} images, {rate:,.0f} images/s, "
                  f"batch {tuple(images.shape)} {images.dtype}")
        loader.close()


if __name__ == "__main__":
    main()

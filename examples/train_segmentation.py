"""Train a small segmentation network on shapes drawn onto photographs, on the CPU.

The dataset is made offline (``fastforward.scenes``): windows of the
photographs that ship inside scikit-image, with rectangles, ellipses and
triangles drawn on them, so every pixel's class is known exactly. It is
written to .beton files (the image as JPEG, the mask as a ``MaskField``), then
loaded with RandomResizedCrop + flip on the image, the mask following the very
same crop and flip (nearest neighbour). The last line is the validation mIoU.

    python examples/train_segmentation.py              # about 3 minutes on 2 cores
    python examples/train_segmentation.py --smoke      # well under a minute (CI)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastforward.fields import MaskField, RGBImageField
from fastforward.fields.decoders import (
    CenterCropRGBImageDecoder,
    MaskDecoder,
    RandomResizedCropRGBImageDecoder,
)
from fastforward.loader import Loader, OrderOption
from fastforward.scenes import CLASSES, make_scenes
from fastforward.transforms import (
    Convert,
    NormalizeImage,
    RandomHorizontalFlip,
    ToTensor,
    ToTorchImage,
)
from fastforward.writer import DatasetWriter

MEAN = np.array([120.0, 115.0, 105.0])
STD = np.array([65.0, 62.0, 66.0])


def write_split(path: Path, count: int, seed: int, size: tuple[int, int]) -> None:
    """*count* scenes: a JPEG image and its class-id mask per sample."""
    scenes = make_scenes(count, seed=seed, size=size, objects=(1, 4), min_side=0.2)
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", jpeg_quality=90),
                         "mask": MaskField()}, num_workers=2, seed=seed,
                  progress=False).from_indexed_dataset([(s.image, s.mask) for s in scenes])


def loader(path: Path, batch_size: int, train: bool, side: int) -> Loader:
    if train:
        image = [RandomResizedCropRGBImageDecoder((side, side), scale=(0.3, 1.0)),
                 RandomHorizontalFlip()]
    else:
        image = [CenterCropRGBImageDecoder((side, side), ratio=1.0)]
    image += [ToTensor(), ToTorchImage(), NormalizeImage(MEAN, STD, np.float32)]
    return Loader(path, batch_size=batch_size, num_workers=2, seed=0, drop_last=train,
                  order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
                  pipelines={"image": image,  # the mask: the image's crop, size and flip
                             "mask": [MaskDecoder(follows="image"), ToTensor(),
                                      Convert(torch.int64)]})


def network(classes: int, width: int = 24) -> nn.Module:
    """A small encoder-decoder: two stride-2 stages down, two up."""
    def conv(a: int, b: int, stride: int = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(a, b, 3, stride, 1, bias=False), nn.BatchNorm2d(b),
                             nn.ReLU())

    return nn.Sequential(
        conv(3, width), conv(width, 2 * width, 2), conv(2 * width, 2 * width),
        conv(2 * width, 4 * width, 2), conv(4 * width, 4 * width),
        nn.Upsample(scale_factor=2, mode="bilinear"), conv(4 * width, 2 * width),
        nn.Upsample(scale_factor=2, mode="bilinear"), conv(2 * width, width),
        nn.Conv2d(width, classes, 1))


def mean_iou(model: nn.Module, data: Loader, classes: int) -> float:
    """The validation mIoU over every class (background included)."""
    model.eval()
    intersection, union = np.zeros(classes), np.zeros(classes)
    with torch.no_grad():
        for images, masks in data:
            predicted = model(images.contiguous()).argmax(1)
            for c in range(classes):
                p, t = predicted == c, masks == c
                intersection[c] += int((p & t).sum())
                union[c] += int((p | t).sum())
    return float(np.mean(intersection / np.maximum(union, 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="under a minute, for CI")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    train_count, val_count = (256, 64) if args.smoke else (3000, 500)
    size, side = ((72, 96), 64) if args.smoke else ((120, 160), 96)
    epochs = args.epochs or (5 if args.smoke else 12)
    torch.manual_seed(0)
    if args.smoke:  # a small model on a small machine: one thread, the loader's two beside it
        torch.set_num_threads(1)
    classes = len(CLASSES)
    with tempfile.TemporaryDirectory() as tmp:
        write_split(Path(tmp) / "train.beton", train_count, seed=1, size=size)
        write_split(Path(tmp) / "val.beton", val_count, seed=2, size=size)
        train = loader(Path(tmp) / "train.beton", 32, True, side)
        val = loader(Path(tmp) / "val.beton", 64, False, side)
        model = network(classes, 16 if args.smoke else 24)
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-3, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 6e-3,
                                                       total_steps=epochs * len(train))
        criterion = nn.CrossEntropyLoss()
        losses = []
        for epoch in range(epochs):
            model.train()
            start, seen, loss_sum = time.perf_counter(), 0, 0.0
            for images, masks in train:
                images = images.contiguous()  # NCHW: CPU batch norm is slow channels-last
                optimizer.zero_grad(set_to_none=True)
                loss = criterion(model(images), masks)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.item() * len(masks)
                seen += len(masks)
            losses.append(loss_sum / seen)
            print(f"epoch {epoch}: loss {losses[-1]:.3f}, "
                  f"{seen / (time.perf_counter() - start):,.0f} images/s")
        miou = mean_iou(model, val, classes)
        train.close()
        val.close()
        if losses[-1] > 0.6 * losses[0]:
            raise SystemExit(f"the loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}")
        print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; validation mIoU {miou:.3f} "
              f"over {classes} classes")


if __name__ == "__main__":
    main()

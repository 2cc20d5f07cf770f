"""On a GPU machine: a ResNet-50 training step (channels_last, AMP, synthetic
weights) fed by fastforward's standard pipeline, against PyTorch's DataLoader.

Reports images/s and the fraction of the step time the GPU waits for data
(the time ``next()`` blocks, over the whole loop). Target on one H100 with 16
cores: data-wait under 5% at 176 px.

    python bench/gpu_train_step.py --images 20000 --res 176 [--workers 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255


def make_file(folder: Path, count: int) -> Path:
    from fastforward.datasets import ImageFolder
    from fastforward.demo import make_corpus
    from fastforward.fields import IntField, RGBImageField
    from fastforward.writer import DatasetWriter

    path = folder / "train.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", max_resolution=256),
                         "label": IntField()}, progress=False).from_indexed_dataset(
        ImageFolder(make_corpus(folder / "images", count, seed=0)))
    return path


def fastforward_loader(path: Path, res: int, batch: int, workers: int) -> object:
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

    return Loader(path, batch_size=batch, num_workers=workers, order=OrderOption.QUASI_RANDOM,
                  seed=0, pipelines={
                      "image": [RandomResizedCropRGBImageDecoder((res, res)),
                                RandomHorizontalFlip(), ToTensor(), ToDevice("cuda"),
                                ToTorchImage(), NormalizeImage(MEAN, STD, np.float16)],
                      "label": [IntDecoder(), ToTensor(), Squeeze(), ToDevice("cuda")]})


def train(loader: object, epochs: int, label: str) -> list[tuple[float, float]]:
    """Train for *epochs*; print and return each epoch's images/s and the fraction
    of its time spent waiting in ``next()``."""
    import torchvision

    model = torchvision.models.resnet50(num_classes=10).cuda().to(
        memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler()
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    figures = []
    for epoch in range(epochs):
        waited, images_seen = 0.0, 0
        torch.cuda.synchronize()
        start = time.perf_counter()
        iterator = iter(loader)
        while True:
            t = time.perf_counter()
            try:
                images, labels = next(iterator)
            except StopIteration:
                break
            if not images.is_cuda:  # the DataLoader's batches
                images = images.cuda(non_blocking=True).to(memory_format=torch.channels_last)
                labels = labels.cuda(non_blocking=True)
                images = ((images.half() - torch.tensor(MEAN, device="cuda").view(1, 3, 1, 1))
                          / torch.tensor(STD, device="cuda").view(1, 3, 1, 1)).half()
            waited += time.perf_counter() - t
            with torch.autocast("cuda"):
                loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            images_seen += len(labels)
        torch.cuda.synchronize()
        total = time.perf_counter() - start
        print(f"{label} epoch {epoch}: {images_seen / total:,.0f} images/s, "
              f"waiting for data {waited / total:.1%} of the time", flush=True)
        figures.append((images_seen / total, waited / total))
    return figures


def dataloader(folder: Path, res: int, batch: int, workers: int) -> object:
    """PyTorch's DataLoader over the ImageFolder *folder*: PIL decoding,
    RandomResizedCrop and flip in torchvision, pinned batches."""
    import torchvision
    from torchvision.transforms import v2

    dataset = torchvision.datasets.ImageFolder(str(folder), transform=v2.Compose([
        v2.PILToTensor(), v2.RandomResizedCrop(res), v2.RandomHorizontalFlip()]))
    workers = workers if workers > 0 else torch.multiprocessing.cpu_count()
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True,
                                       num_workers=workers, pin_memory=True, drop_last=True,
                                       persistent_workers=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--res", type=int, default=176)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dataloader", action="store_true", help="also run the DataLoader")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_file(Path(tmp), args.images)
        train(fastforward_loader(path, args.res, args.batch, args.workers), args.epochs,
              "fastforward")
        if args.dataloader:
            train(dataloader(Path(tmp) / "images", args.res, args.batch, args.workers),
                  args.epochs, "DataLoader")


if __name__ == "__main__":
    main()

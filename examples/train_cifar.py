"""Train a small ResNet on a CIFAR-like dataset made offline, on the CPU.

The dataset: 32×32 crops of the ten photographs that ship inside
scikit-image, one class per photograph (nothing is downloaded). It is
written to .beton files once, then loaded with fastforward's Loader:
RANDOM order, flips, translations and normalisation, reproducible by seed.

    python examples/train_cifar.py              # about 2 minutes on 2 cores
    python examples/train_cifar.py --smoke      # seconds (CI)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastforward.demo import PHOTOS, load_photos, make_image
from fastforward.fields import IntField, RGBImageField
from fastforward.fields.decoders import IntDecoder, SimpleRGBImageDecoder
from fastforward.loader import Loader, OrderOption
from fastforward.transforms import (
    NormalizeImage,
    RandomHorizontalFlip,
    RandomTranslate,
    Squeeze,
    ToTensor,
    ToTorchImage,
)
from fastforward.writer import DatasetWriter

MEAN = np.array([125.3, 123.0, 113.9])
STD = np.array([63.0, 62.1, 66.7])


def write_split(path: Path, count: int, seed: int) -> None:
    """*count* 32×32 crops of the photographs, labelled by photograph."""
    photos, rng = load_photos(), np.random.default_rng(seed)
    samples = [make_image(photos, rng, (32, 32)) for _ in range(count)]
    samples = [(np.ascontiguousarray(image[:32, :32]), label) for image, label in samples]
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                  num_workers=2, seed=seed).from_indexed_dataset(samples)


def loader(path: Path, batch_size: int, train: bool) -> Loader:
    image = [SimpleRGBImageDecoder()]
    if train:
        image += [RandomHorizontalFlip(), RandomTranslate(padding=2)]
    image += [ToTensor(), ToTorchImage(), NormalizeImage(MEAN, STD, np.float32)]
    return Loader(path, batch_size=batch_size, num_workers=2, seed=0, drop_last=train,
                  order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
                  pipelines={"image": image, "label": [IntDecoder(), ToTensor(), Squeeze()]})


class Block(nn.Module):
    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.skip = (nn.Sequential() if stride == 1 and channels_in == channels else
                     nn.Sequential(nn.Conv2d(channels_in, channels, 1, stride, bias=False),
                                   nn.BatchNorm2d(channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


def resnet(classes: int, width: int = 16) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        Block(width, width, 1), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, classes))


def evaluate(model: nn.Module, data: Loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in data:
            correct += int((model(images).argmax(1) == labels).sum())
            total += len(labels)
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    train_count, test_count = (2048, 512) if args.smoke else (10_000, 2_000)
    epochs = args.epochs or (3 if args.smoke else 8)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_split(Path(tmp) / "train.beton", train_count, seed=1)
        write_split(Path(tmp) / "test.beton", test_count, seed=2)
        train, test = (loader(Path(tmp) / "train.beton", 128, True),
                       loader(Path(tmp) / "test.beton", 256, False))
        model = resnet(len(PHOTOS)).to(memory_format=torch.channels_last)
        steps = epochs * len(train)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9,
                                    weight_decay=5e-4, nesterov=True)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.2, total_steps=steps)
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        for epoch in range(epochs):
            model.train()
            start, seen, loss_sum = time.perf_counter(), 0, 0.0
            for images, labels in train:
                optimizer.zero_grad(set_to_none=True)
                loss = criterion(model(images), labels)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.item() * len(labels)
                seen += len(labels)
            accuracy = evaluate(model, test)
            print(f"epoch {epoch}: loss {loss_sum / seen:.3f}, test accuracy {accuracy:.1%}, "
                  f"{seen / (time.perf_counter() - start):,.0f} images/s")
        chance = 1 / len(PHOTOS)
        print(f"final test accuracy {accuracy:.1%} (chance {chance:.0%})")
        if accuracy < 2 * chance:
            raise SystemExit("the model did not learn: accuracy is near chance")
        train.close()
        test.close()


if __name__ == "__main__":
    main()

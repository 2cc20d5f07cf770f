"""Train a small CenterNet-style detector on shapes drawn onto photographs, on the CPU.

The dataset is made offline (``fastforward.scenes``): windows of the
photographs that ship inside scikit-image with rectangles, ellipses and
triangles drawn on them, so every box and class is known exactly. Each
sample's objects are one ``RaggedField`` row per object (box and class id
side by side). The loader resizes each image's shorter side (a size drawn per
sample, multi-scale), mirrors half of them, and pads the batch; the boxes
follow the very same resize and flip. The last line is the validation
mAP@0.5 (and box recall at IoU 0.5).

    python examples/train_detection.py              # about 3 minutes on 2 cores
    python examples/train_detection.py --smoke      # well under a minute (CI)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastforward.fields import RaggedField, RGBImageField
from fastforward.fields.decoders import RaggedDecoder, ShorterSideRGBImageDecoder
from fastforward.loader import Loader, OrderOption
from fastforward.scenes import CLASSES, make_scenes
from fastforward.transforms import NormalizeImage, RandomHorizontalFlip, ToTensor, ToTorchImage
from fastforward.writer import DatasetWriter

MEAN = np.array([120.0, 115.0, 105.0])
STD = np.array([65.0, 62.0, 66.0])
STRIDE = 4  # the heatmap's cell, in input pixels
OBJECTS = {"boxes": (np.float32, (4,)), "labels": np.int64}


def write_split(path: Path, count: int, seed: int, size: tuple[int, int]) -> None:
    """*count* scenes: a JPEG image and its objects (boxes and class ids) per sample."""
    scenes = make_scenes(count, seed=seed, size=size, objects=(1, 4), min_side=0.2)
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", jpeg_quality=90),
                         "objects": RaggedField(columns=OBJECTS)}, num_workers=2, seed=seed,
                  progress=False).from_indexed_dataset([(s.image, s.objects()) for s in scenes])


def loader(path: Path, batch_size: int, train: bool, side: int) -> Loader:
    if train:  # multi-scale: each sample's shorter side drawn from three
        image = [ShorterSideRGBImageDecoder((side - 8, side, side + 8), max_size=side * 3 // 2),
                 RandomHorizontalFlip()]
    else:
        image = [ShorterSideRGBImageDecoder(side, max_size=side * 3 // 2)]
    image += [ToTensor(), ToTorchImage(), NormalizeImage(MEAN, STD, np.float32)]
    return Loader(path, batch_size=batch_size, num_workers=2, seed=0, drop_last=train,
                  order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
                  pipelines={"image": image,  # boxes: the image's resize and flip
                             "objects": [RaggedDecoder(follows="image", boxes="boxes",
                                                       min_visibility=0.3), ToTensor()]})


def conv(a: int, b: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(a, b, 3, stride, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU())


class CenterNet(nn.Module):
    """A class heatmap, each object's size and its centre's offset, at stride 4."""

    def __init__(self, classes: int, width: int = 24) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(3, width, 2), conv(width, 2 * width, 2),
                                  conv(2 * width, 2 * width), conv(2 * width, 2 * width),
                                  conv(2 * width, 2 * width))
        self.heat = nn.Conv2d(2 * width, classes, 1)
        self.box = nn.Conv2d(2 * width, 4, 1)  # log width, log height, centre offset x, y
        nn.init.constant_(self.heat.bias, -2.2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(images)
        return self.heat(features), self.box(features)


def targets(objects: dict, shape: tuple[int, int], classes: int) -> tuple[torch.Tensor, ...]:
    """Gaussian class heatmaps, and each object's cell, size and offset."""
    batch = len(objects["lengths"])
    height, width = shape
    heat = torch.zeros(batch, classes, height, width)
    ys, xs = torch.arange(height).view(-1, 1) + 0.5, torch.arange(width).view(1, -1) + 0.5
    cells, regression = [], []
    for b in range(batch):
        n = int(objects["lengths"][b])
        for box, label in zip(objects["boxes"][b, :n], objects["labels"][b, :n], strict=True):
            x0, y0, x1, y1 = (float(v) / STRIDE for v in box)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            sigma = max(0.6, min(x1 - x0, y1 - y0) / 5)
            g = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
            heat[b, label - 1] = torch.maximum(heat[b, label - 1], g)
            i, j = min(int(cy), height - 1), min(int(cx), width - 1)
            heat[b, label - 1, i, j] = 1.0
            cells.append((b, i, j))
            regression.append((np.log(max(x1 - x0, 1e-3)), np.log(max(y1 - y0, 1e-3)),
                               cx - j, cy - i))
    return heat, torch.tensor(cells, dtype=torch.long).view(-1, 3), torch.tensor(
        regression, dtype=torch.float32).view(-1, 4)


def loss_of(model: nn.Module, images: torch.Tensor, objects: dict, classes: int) -> torch.Tensor:
    heat, box = model(images)
    want, cells, regression = targets(objects, tuple(heat.shape[2:]), classes)
    p = torch.sigmoid(heat).clamp(1e-4, 1 - 1e-4)
    positive = want == 1
    focal = torch.where(positive, (1 - p) ** 2 * torch.log(p),
                        (1 - want) ** 4 * p**2 * torch.log(1 - p))
    count = max(int(positive.sum()), 1)
    got = box[cells[:, 0], :, cells[:, 1], cells[:, 2]]
    return -focal.sum() / count + nn.functional.l1_loss(got, regression, reduction="sum") / count


def detect(model: nn.Module, images: torch.Tensor, top: int = 20) -> list[tuple]:
    """Per image: (boxes in pixels, class ids, scores) of the heatmaps' peaks."""
    heat, box = model(images)
    p = torch.sigmoid(heat)
    peaks = p * (p == nn.functional.max_pool2d(p, 3, 1, 1))
    out = []
    for b in range(len(images)):
        scores, flat = peaks[b].flatten().topk(top)
        c, rest = flat // (p.shape[2] * p.shape[3]), flat % (p.shape[2] * p.shape[3])
        i, j = rest // p.shape[3], rest % p.shape[3]
        w, h, ox, oy = box[b, :, i, j]
        cx, cy = (j + ox) * STRIDE, (i + oy) * STRIDE
        w, h = torch.exp(w) * STRIDE, torch.exp(h) * STRIDE
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        out.append((boxes, c + 1, scores))
    return out


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt, rb = torch.maximum(a[:, None, :2], b[None, :, :2]), torch.minimum(a[:, None, 2:],
                                                                          b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp(min=1e-9)


def evaluate(model: nn.Module, data: Loader, classes: int) -> tuple[float, float]:
    """mAP@0.5 (all-point interpolation, per class, then averaged) and recall@0.5 of
    the detections scoring at least 0.3."""
    model.eval()
    found: dict[int, list[tuple[float, bool]]] = {c: [] for c in range(1, classes + 1)}
    truths = dict.fromkeys(range(1, classes + 1), 0)
    recalled = total = 0
    with torch.no_grad():
        for images, objects in data:
            for b, (boxes, labels, scores) in enumerate(detect(model, images.contiguous())):
                n = int(objects["lengths"][b])
                gt, gl = objects["boxes"][b, :n], objects["labels"][b, :n]
                total += n
                confident = scores >= 0.3
                if n and confident.any():
                    hits = (iou(gt, boxes[confident]) >= 0.5) & (
                        gl[:, None] == labels[confident][None, :])
                    recalled += int(hits.any(1).sum())
                for c in range(1, classes + 1):
                    truth = gt[gl == c]
                    truths[c] += len(truth)
                    mine = labels == c
                    order = scores[mine].argsort(descending=True)
                    taken = torch.zeros(len(truth), dtype=torch.bool)
                    overlaps = iou(boxes[mine][order], truth) if len(truth) else None
                    for k, score in enumerate(scores[mine][order].tolist()):
                        hit = False
                        if overlaps is not None:
                            best = overlaps[k].masked_fill(taken, -1).argmax()
                            if overlaps[k, best] >= 0.5:
                                taken[best], hit = True, True
                        found[c].append((score, hit))
    aps = []
    for c in range(1, classes + 1):
        if not truths[c]:
            continue
        ranked = sorted(found[c], key=lambda t: -t[0])
        hits = np.cumsum([h for _, h in ranked])
        precision = hits / np.arange(1, len(ranked) + 1)
        recall = hits / truths[c]
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        steps = np.diff(np.concatenate([[0.0], recall]))
        aps.append(float((envelope * steps).sum()))
    return float(np.mean(aps)), recalled / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="under a minute, for CI")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    train_count, val_count = (256, 64) if args.smoke else (3000, 500)
    size, side = ((60, 80), 56) if args.smoke else ((120, 160), 112)
    epochs = args.epochs or (10 if args.smoke else 24)
    torch.manual_seed(0)
    if args.smoke:  # a small model on a small machine: one thread, the loader's two beside it
        torch.set_num_threads(1)
    classes = len(CLASSES) - 1  # the background has no box
    with tempfile.TemporaryDirectory() as tmp:
        write_split(Path(tmp) / "train.beton", train_count, seed=1, size=size)
        write_split(Path(tmp) / "val.beton", val_count, seed=2, size=size)
        train = loader(Path(tmp) / "train.beton", 32, True, side)
        val = loader(Path(tmp) / "val.beton", 64, False, side)
        model = CenterNet(classes, 24 if args.smoke else 32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 5e-3,
                                                       total_steps=epochs * len(train))
        losses = []
        for epoch in range(epochs):
            model.train()
            start, seen, loss_sum = time.perf_counter(), 0, 0.0
            for images, objects in train:
                images = images.contiguous()  # NCHW: CPU batch norm is slow channels-last
                optimizer.zero_grad(set_to_none=True)
                loss = loss_of(model, images, objects, classes)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.item() * len(images)
                seen += len(images)
            losses.append(loss_sum / seen)
            print(f"epoch {epoch}: loss {losses[-1]:.3f}, "
                  f"{seen / (time.perf_counter() - start):,.0f} images/s")
        average_precision, recall = evaluate(model, val, classes)
        train.close()
        val.close()
        if losses[-1] > 0.6 * losses[0]:
            raise SystemExit(f"the loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}")
        print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; validation mAP@0.5 "
              f"{average_precision:.3f}, recall@0.5 {recall:.3f}")


if __name__ == "__main__":
    main()

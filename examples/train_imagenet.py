"""The FFCV ImageNet recipe on fastforward, for torchrun.

DDP, channels_last, progressive resizing through the decoder's ``output_size``,
label smoothing, test-time centre crop, distributed evaluation that counts
every validation sample once, and checkpoints that resume mid-epoch: with
``--checkpoint``, one after each epoch, every ``--checkpoint-every`` steps, and
one when the job is told to stop (SIGTERM, as a preempting scheduler sends it, on
any rank: the ranks agree at the next step, save and exit with status 143).

    torchrun --nproc_per_node=8 examples/train_imagenet.py \\
        --train /data/train.beton --val /data/val.beton --arch resnet50 --epochs 88 \\
        --checkpoint /ckpt/run.pt --checkpoint-every 1000
    torchrun --nproc_per_node=2 examples/train_imagenet.py --smoke     # CPU, the demo corpus
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fastforward.fields.decoders import (
    CenterCropRGBImageDecoder,
    IntDecoder,
    RandomResizedCropRGBImageDecoder,
)
from fastforward.loader import Loader, OrderOption
from fastforward.transforms import (
    NormalizeImage,
    RandomHorizontalFlip,
    Squeeze,
    ToDevice,
    ToTensor,
    ToTorchImage,
)

MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255


def resolution(epoch: int, args: argparse.Namespace) -> int:
    """Progressive resizing: min_res to max_res between start_ramp and end_ramp, multiple of 32."""
    span = max(args.end_ramp - args.start_ramp, 1)
    fraction = min(max((epoch - args.start_ramp) / span, 0.0), 1.0)
    res = args.min_res + fraction * (args.max_res - args.min_res)
    return round(res / 32) * 32


def loaders(args: argparse.Namespace, device: torch.device) -> tuple[Loader, Loader, object]:
    decoder = RandomResizedCropRGBImageDecoder((args.min_res, args.min_res))
    normalize = NormalizeImage(MEAN, STD, np.float16 if device.type == "cuda" else np.float32)
    train = Loader(args.train, batch_size=args.batch_size, num_workers=args.workers,
                   order=OrderOption.QUASI_RANDOM, distributed=True, seed=args.seed,
                   os_cache=True, drop_last=True, pipelines={
                       "image": [decoder, RandomHorizontalFlip(), ToTensor(), ToDevice(device),
                                 ToTorchImage(), normalize],
                       "label": [IntDecoder(), ToTensor(), Squeeze(), ToDevice(device)]})
    val = Loader(args.val, batch_size=args.batch_size, num_workers=args.workers,
                 order=OrderOption.SEQUENTIAL, distributed=True, seed=args.seed,
                 drop_last=False, even_batches=False, pipelines={
                     "image": [CenterCropRGBImageDecoder((args.val_res, args.val_res), 224 / 256),
                               ToTensor(), ToDevice(device), ToTorchImage(), normalize],
                     "label": [IntDecoder(), ToTensor(), Squeeze(), ToDevice(device)]})
    return train, val, decoder


def model_for(arch: str, classes: int) -> nn.Module:
    if arch == "tiny":  # for --smoke on a CPU
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))
    import torchvision  # the full recipe uses torchvision's ResNets

    return getattr(torchvision.models, arch)(num_classes=classes)


def evaluate(model: nn.Module, val: Loader, device: torch.device) -> float:
    """Top-1 accuracy over every validation sample exactly once, summed over ranks."""
    model.eval()
    totals = torch.zeros(2, device=device)
    with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
        for images, labels in val:
            totals[0] += (model(images).argmax(1) == labels).sum()
            totals[1] += len(labels)
    dist.all_reduce(totals)
    return float(totals[0] / totals[1])


def smoke_data(folder: Path) -> tuple[str, str]:
    """Convert the demo corpus (made offline) into train and val files."""
    from fastforward.datasets import ImageFolder
    from fastforward.demo import make_corpus
    from fastforward.fields import IntField, RGBImageField
    from fastforward.writer import DatasetWriter

    dataset = ImageFolder(make_corpus(folder / "images", 384, seed=0))
    fields = {"image": RGBImageField(write_mode="jpg", max_resolution=160), "label": IntField()}
    order = np.random.default_rng(0).permutation(len(dataset))
    for name, part in (("train", order[:320]), ("val", order[320:])):
        DatasetWriter(folder / f"{name}.beton", dict(fields), num_workers=2,
                      progress=False).from_indexed_dataset(dataset, indices=part.tolist())
    return str(folder / "train.beton"), str(folder / "val.beton")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train"), parser.add_argument("--val")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=512, help="per process")
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--lr", type=float, default=1.7, help="for 8×512 images per step")
    parser.add_argument("--min-res", type=int, default=160)
    parser.add_argument("--max-res", type=int, default=192)
    parser.add_argument("--start-ramp", type=int, default=11)
    parser.add_argument("--end-ramp", type=int, default=13)
    parser.add_argument("--val-res", type=int, default=256)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None,
                        help="save here after each epoch and on SIGTERM; resume from it")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="also save every this many steps (0: not mid-epoch)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, demo data, CPU")
    args = parser.parse_args()

    on_cuda = torch.cuda.is_available() and not args.smoke
    dist.init_process_group("nccl" if on_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if on_cuda else "cpu")
    if on_cuda:
        torch.cuda.set_device(device)
    tmp = None
    if args.smoke:
        args.arch, args.classes, args.epochs, args.batch_size = "tiny", 10, 3, 32
        args.min_res, args.max_res, args.start_ramp, args.end_ramp = 64, 96, 1, 2
        args.val_res, args.lr, args.workers = 96, 0.1, 1
        tmp = tempfile.TemporaryDirectory()
        if rank == 0:
            smoke_data(Path(tmp.name))
        paths = [str(Path(tmp.name) / "train.beton"), str(Path(tmp.name) / "val.beton")]
        dist.broadcast_object_list(paths)  # rank 0's folder
        args.train, args.val = paths
        torch.set_num_threads(1)

    train, val, decoder = loaders(args, device)
    model = model_for(args.arch, args.classes).to(device, memory_format=torch.channels_last)
    model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if on_cuda else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-5)
    steps = args.epochs * len(train)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps,
                                                   pct_start=0.25)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    scaler = torch.amp.GradScaler(enabled=on_cuda)
    start_epoch = 0
    stop_asked = [False]  # set by SIGTERM; the ranks agree on it at each step
    if args.checkpoint:  # (without one, SIGTERM stops the job at once, as it would)
        signal.signal(signal.SIGTERM, lambda *_: stop_asked.__setitem__(0, True))

    def save() -> None:
        if rank == 0 and args.checkpoint:  # every rank's loader state is the same
            partial = f"{args.checkpoint}.part"
            torch.save({"model": model.module.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                        "loader": train.state_dict()}, partial)
            os.replace(partial, args.checkpoint)  # a checkpoint is whole or absent
        dist.barrier()

    if args.checkpoint and Path(args.checkpoint).exists():
        state = torch.load(args.checkpoint, map_location=device, weights_only=False)
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        per_epoch = len(train)
        train.load_state_dict(state["loader"])  # mid-epoch, on any number of processes
        start_epoch = state["loader"]["epoch"]
        # the schedule goes on from the loader's position, in this run's steps: on
        # another number of processes an epoch has another number of them (and
        # --epochs may have changed), so the saved step count and total are not kept
        done = start_epoch * per_epoch + per_epoch - len(train)  # len: what is left
        fresh = schedule.state_dict()
        schedule.load_state_dict({**state["schedule"], "last_epoch": done,
                                  "total_steps": fresh["total_steps"],
                                  "_schedule_phases": fresh["_schedule_phases"]})

    stopping = False
    for epoch in range(start_epoch, args.epochs):
        res = resolution(epoch, args)
        decoder.output_size = (res, res)  # progressive resizing: takes effect this epoch
        model.train()
        start, seen = time.perf_counter(), 0
        for images, labels in train:
            with torch.autocast(device.type, enabled=on_cuda):
                loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            seen += len(labels)
            if args.checkpoint:  # a stop asked of any rank stops them all, after one step
                flag = torch.tensor([float(stop_asked[0])], device=device)
                dist.all_reduce(flag)
                stopping = bool(flag.item())
            if stopping or (args.checkpoint_every
                            and schedule.last_epoch % args.checkpoint_every == 0):
                save()  # mid-epoch: the loader's state says which batches are done
            if stopping:
                break
        if stopping:
            if rank == 0:
                print(f"stopped in epoch {epoch} after step {schedule.last_epoch}"
                      + (f"; {args.checkpoint} resumes here" if args.checkpoint else ""),
                      flush=True)
            break
        accuracy = evaluate(model, val, device)
        if rank == 0:
            rate = seen * world / (time.perf_counter() - start)
            print(f"epoch {epoch}: res {res}, loss {loss.item():.3f}, top-1 {accuracy:.1%}, "
                  f"{rate:,.0f} images/s over {world} processes", flush=True)
        save()  # the epoch's last batch handed out: the state is the next epoch's start
    train.close()
    val.close()
    dist.barrier()
    dist.destroy_process_group()
    if tmp is not None:
        tmp.cleanup()
    if stopping:  # not finished: the status says so (to torchrun, to a scheduler)
        sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    main()

"""On a GPU machine: every check that needs one, in one run (not a test).

    python bench/gpu_check.py --out DIR [--images 6000] [--workers 1 2 4 8 16]

1. **Corpus.** ``--images`` photographs of about 500×375 (``make_corpus``, in one
   process per core), written at 256 px, quality 90; the stored JPEGs exported
   as an ImageFolder for the DataLoader.
2. **The CUDA tests:** ``pytest -m cuda`` (``tests/test_cuda.py`` and the CUDA
   cases of the transform tests).
3. **The CUDA stage.** Pipeline (b) ending on the GPU (``ToDevice('cuda')``,
   ``ToTorchImage``, ``NormalizeImage`` to float16 there) against (b) ending on
   the CPU, on every core, threads and processes: the copies and GPU work run
   on the side stream, so the loader should lose nothing by them.
4. **Scaling.** ``python_op`` and ``tv_trivialaugment`` on each worker count of
   ``--workers`` in processes, (b) on threads, the decode limit on one thread
   and on every core, PyTorch's DataLoader on every core with the same
   transforms; then ``bench/core_scaling.py``: how the machine itself scales
   from one busy process to one per core, outside any loader.
5. **A training step.** ResNet-50 at 176 px (channels_last, AMP) fed by
   fastforward and by the DataLoader (over the same stored 256 px JPEGs):
   images/s and the fraction of the time ``next()`` blocks.

Each step's failure is printed with its traceback and the next step runs. The
figures go to ``DIR/gpu_check.json`` (saved after each step) and the whole output to the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

RESULTS: dict[str, Any] = {}
MIN_IMAGES = 2560  # ten batches of 256 per epoch


SAVED: list[Path] = []  # where RESULTS go after each step (a run cut short keeps its figures)


def step(name: str, run: Callable[[], Any]) -> None:
    """Run one step, print its time, keep its result (or its failure) and save them all."""
    print(f"\n=== {name}", flush=True)
    start = time.perf_counter()
    try:
        RESULTS[name] = run()
    except BaseException as exc:  # every step's failure is a finding
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc()
        RESULTS[name] = {"failed": f"{type(exc).__name__}: {exc}"}
    print(f"=== {name}: {time.perf_counter() - start:.1f} s", flush=True)
    save()


def save() -> None:
    for path in SAVED:
        partial = path.with_name(path.name + ".part")
        partial.write_text(json.dumps(RESULTS, indent=1, default=str))
        partial.replace(path)


def environment() -> dict[str, Any]:
    import numpy as np

    import fastforward
    from fastforward.fields import rgb_image

    found: dict[str, Any] = {"python": sys.version.split()[0], "numpy": np.__version__,
                             "fastforward": fastforward.__version__,
                             "cores": os.cpu_count(),
                             "crop decoding": rgb_image.CROP_DECODING}
    try:
        import torch

        found["torch"] = torch.__version__
        found["cuda"] = torch.cuda.is_available()
        if found["cuda"]:
            found["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        found["torch"] = None
    try:
        import torchvision

        found["torchvision"] = torchvision.__version__
    except ImportError:
        found["torchvision"] = None
    print(json.dumps(found, indent=1))
    return found


def _shard(args: tuple[str, int, int]) -> None:
    from fastforward.demo import make_corpus

    root, count, seed = args
    make_corpus(root, count, seed=seed)


def corpus(work: Path, images: int, cores: int) -> dict[str, Any]:
    """Photographs in ``work/images`` (one ``make_corpus`` shard per process, merged),
    ``work/train.beton``, and its stored JPEGs in ``work/folder256``."""
    import multiprocessing

    from baselines import export_image_folder

    from fastforward.datasets import ImageFolder
    from fastforward.fields import IntField, RGBImageField
    from fastforward.writer import DatasetWriter

    start = time.perf_counter()
    shards = [(str(work / "shards" / str(k)), images // cores + (k < images % cores), k)
              for k in range(cores)]
    with multiprocessing.get_context("forkserver").Pool(cores) as pool:
        pool.map(_shard, shards)
    root = work / "images"
    for folder, _, k in shards:
        for jpeg in Path(folder).glob("*/*.jpg"):
            (root / jpeg.parent.name).mkdir(parents=True, exist_ok=True)
            jpeg.rename(root / jpeg.parent.name / f"{k:02d}_{jpeg.name}")
    made = time.perf_counter() - start
    start = time.perf_counter()
    DatasetWriter(work / "train.beton", {
        "image": RGBImageField(write_mode="jpg", max_resolution=256, jpeg_quality=90),
        "label": IntField()}, num_workers=cores, progress=False).from_indexed_dataset(
        ImageFolder(root))
    written = time.perf_counter() - start
    export_image_folder(work / "train.beton", work / "folder256")
    return {"images": images, "make_corpus s": made, "writer images/s": images / written}


def cuda_tests(out: Path) -> dict[str, Any]:
    """``pytest -m cuda`` on the CUDA tests, importing fastforward as this process
    does (``-P``: not the source tree's uncompiled package from the current folder)."""
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        raise RuntimeError("the CUDA tests need pytest: pip install '.[test]'")
    done = subprocess.run([sys.executable, "-P", "-m", "pytest", "-m", "cuda", "-q", "-rA",
                           "-p", "no:cacheprovider", "--basetemp", str(out / "pt"),
                           "tests/test_cuda.py", "tests/test_transforms_torch.py",
                           "tests/test_transforms.py"],
                          capture_output=True, text=True, check=False, timeout=200)
    print(done.stdout[-12000:], done.stderr[-3000:], flush=True)
    (out / "cuda_tests.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"pytest -m cuda failed (exit {done.returncode}; "
                           f"{out / 'cuda_tests.log'})")
    return {"exit": done.returncode, "summary": done.stdout.strip().splitlines()[-1:]}


def b_pipelines(device: str) -> dict[str, Any]:
    """Pipeline (b), ending on *device* (float16, channels-last on the GPU)."""
    import numpy as np
    import torch

    from fastforward.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
    from fastforward.transforms import (
        Convert,
        NormalizeImage,
        RandomHorizontalFlip,
        Squeeze,
        ToDevice,
        ToTensor,
        ToTorchImage,
    )

    tail = ([ToDevice(device, non_blocking=True), ToTorchImage(),
             NormalizeImage(np.array([123.7, 116.3, 103.5]), np.array([58.4, 57.1, 57.4]),
                            np.float16)]
            if device != "cpu" else [ToTorchImage(), Convert(torch.float16)])
    return {"image": [RandomResizedCropRGBImageDecoder((192, 192)), RandomHorizontalFlip(),
                      ToTensor(), *tail],
            "label": [IntDecoder(), ToTensor(), Squeeze(),
                      *([ToDevice(device, non_blocking=True)] if device != "cpu" else [])]}


def stage_throughput(beton: Path, device: str, worker_type: str, cores: int,
                     epochs: int = 3) -> dict[str, Any]:
    """Images/s of (b) ending on *device*, at steady state, the first epoch left out;
    on the GPU the clock stops once the last batch's work has finished."""
    import torch

    from fastforward.benchmark import steady_state
    from fastforward.loader import Loader, OrderOption

    loader = Loader(beton, batch_size=256, num_workers=cores, order=OrderOption.RANDOM, seed=0,
                    worker_type=worker_type, pipelines=b_pipelines(device))
    with loader:
        for _ in loader:
            pass
        images, seconds = 0, 0.0
        for _ in range(epochs - 1):
            (counted, took), _start = steady_state(loader, 1)
            if device != "cpu":
                began = time.perf_counter()
                torch.cuda.synchronize()
                took += time.perf_counter() - began
            images, seconds = images + counted, seconds + took
    return {"images/s": images / seconds, "workers": loader.workers.kind}


def cuda_stage(beton: Path, cores: int) -> dict[str, Any]:
    import torch

    figures: dict[str, Any] = {}
    for worker_type in ("thread", "process"):
        for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
            figures[f"(b) to {device}, {worker_type} workers"] = f = stage_throughput(
                beton, device, worker_type, cores)
            print(f"(b) ending on {device}, {cores} {worker_type} workers: "
                  f"{f['images/s']:,.0f} images/s", flush=True)
    return figures


def scaling(beton: Path, folder256: Path, counts: list[int], cores: int) -> dict[str, Any]:
    from baselines import importable, throughput

    from fastforward.benchmark import decode_limit, loader_throughput, stored_jpegs
    from fastforward.reader import Reader

    figures: dict[str, Any] = {}

    def keep(key: str, m: Any) -> None:
        figures[key] = m.rate
        print(f"{key:48s} {m.rate:10,.0f} images/s   ({m.name})", flush=True)

    blobs = stored_jpegs(Reader(beton), "image", 2000)
    keep("decode limit, 1 thread", decode_limit(blobs, 1))
    keep(f"decode limit, {cores} threads", decode_limit(blobs, cores))
    pipelines = [("python_op", "process"), ("tv_trivialaugment", "process"), ("train", "thread")]
    for pipeline, worker_type in pipelines:
        if pipeline == "tv_trivialaugment" and not importable("torchvision", None):
            print("tv_trivialaugment left out: no torchvision")
            continue
        for n in counts:
            keep(f"{pipeline}, {n} {worker_type}(es)", loader_throughput(
                beton, pipeline, num_workers=n, worker_type=worker_type, epochs=2,
                warmup_epochs=1))
        one = figures[f"{pipeline}, {counts[0]} {worker_type}(es)"]
        for n in counts[1:]:
            print(f"  {pipeline}: {n} ÷ {counts[0]} workers = "
                  f"{figures[f'{pipeline}, {n} {worker_type}(es)'] / one:.2f}")
        if pipeline != "train" and importable("torchvision", None):
            keep(f"{pipeline}, DataLoader {cores} workers",
                 throughput("dataloader", folder256, pipeline, cores))
            ratio = (figures[f"{pipeline}, {counts[-1]} process(es)"]
                     / figures[f"{pipeline}, DataLoader {cores} workers"])
            print(f"  {pipeline}: fastforward at {counts[-1]} ÷ DataLoader at {cores} workers"
                  f" = {ratio:.2f}")
    done = subprocess.run([sys.executable, str(BENCH / "core_scaling.py"), "--calls", "1500",
                           "--repeat", "1"], capture_output=True, text=True, check=False,
                          timeout=300)
    print(done.stdout, done.stderr[-2000:], flush=True)
    figures["core_scaling"] = done.stdout.strip().splitlines()
    return figures


def training(beton: Path, images: Path, cores: int, epochs: int) -> dict[str, Any]:
    from gpu_train_step import dataloader, fastforward_loader, train

    figures = {"fastforward": train(fastforward_loader(beton, 176, 256, cores), epochs,
                                    "fastforward")}
    figures["DataLoader"] = train(dataloader(images, 176, 256, cores), epochs, "DataLoader")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where gpu_check.json goes")
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["tests", "stage", "scaling", "training"])
    args = parser.parse_args()
    if args.images < MIN_IMAGES:
        parser.error(f"--images must be at least {MIN_IMAGES}: steady-state figures need "
                     "epochs of several batches of 256")
    args.out.mkdir(parents=True, exist_ok=True)
    SAVED.append(args.out / "gpu_check.json")
    cores = os.cpu_count() or 1
    began = time.perf_counter()
    step("environment", environment)
    cuda = bool(RESULTS["environment"].get("cuda"))
    if not cuda:
        print("no CUDA GPU: the CUDA tests skip, the CUDA stage runs on the CPU only, and "
              "the training step is left out", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        step("corpus", lambda: corpus(work, args.images, cores))
        beton = work / "train.beton"
        if "tests" not in args.skip:
            step("cuda tests", lambda: cuda_tests(args.out))
        if "stage" not in args.skip:
            step("cuda stage", lambda: cuda_stage(beton, cores))
        if "scaling" not in args.skip:
            step("scaling", lambda: scaling(beton, work / "folder256", args.workers, cores))
        if "training" not in args.skip and cuda:
            step("training", lambda: training(beton, work / "folder256", cores,
                                              args.train_epochs))
    RESULTS["seconds"] = time.perf_counter() - began
    save()
    print(f"\nall steps: {RESULTS['seconds']:.0f} s; {args.out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()

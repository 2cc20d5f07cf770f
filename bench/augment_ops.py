"""The augmentation policies' cost per image, by policy and by operation.

Thread CPU time on one core (so other processes on a shared machine weigh
less), the best of ``--repeat`` passes over batches of 256 random 192×192
crops of scikit-image's photographs: each policy's whole ``apply`` (its draws
and the kernel), then each kernel operation on the images a TrivialAugmentWide
plan gives it; each policy with the conversion to float16 fused in (as the
planner fuses ``Convert``), the kernel's conversion alone (its arithmetic and
its table), and torch's uint8 to float16 conversion of a batch for scale.

    python bench/augment_ops.py [--repeat 5] [--batches 4] [--size 192]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import numpy as np

from fastforward._ext.augment import OPS, PARAMS, augment_into
from fastforward._ext.resize import crop_resize_into
from fastforward.demo import load_photos
from fastforward.pipeline import BatchContext, State
from fastforward.transforms import AutoAugment, Convert, RandAugment, TrivialAugmentWide


def crops(count: int, size: int, seed: int) -> np.ndarray:
    """*count* random crops of the photographs, resized to size × size."""
    photos = load_photos()
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.uint8)
    for k in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(size // 2, min(photo.shape[:2])))
        y, x = int(rng.integers(photo.shape[0] - side)), int(rng.integers(photo.shape[1] - side))
        crop_resize_into(photo, y, x, side, side, out[k])
    return out


def best(fn: Callable[[], object], repeat: int) -> float:
    """The least thread CPU time of *repeat* calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--size", type=int, default=192)
    args = parser.parse_args()
    batches = [crops(256, args.size, seed) for seed in range(args.batches)]
    out = np.empty_like(batches[0])
    print(f"µs per {args.size}×{args.size} image, one core (thread CPU time, best of "
          f"{args.repeat})")
    policies = {"TrivialAugmentWide()": TrivialAugmentWide(),
                "TrivialAugmentWide(bilinear)": TrivialAugmentWide(interpolation="bilinear"),
                "RandAugment(2, 9)": RandAugment(),
                "AutoAugment()": AutoAugment()}
    half_out = np.empty(batches[0].shape, np.float16)
    state = State(jit_mode=True, shape=batches[0].shape[1:], dtype=np.dtype(np.uint8))
    for name, op in policies.items():
        per_batch = [best(lambda b=b, k=k, op=op: op.apply(b, out, BatchContext(
            np.arange(256) + 256 * k, 0, 1, 5)), args.repeat) for k, b in enumerate(batches)]
        print(f"  {name:30s} {np.mean(per_batch) / 256 * 1e6:7.1f}")
        fused = copy.copy(op)  # as the planner fuses its own copy
        assert fused.fuse([Convert(np.float16)], [0], state) == [0]
        per_batch = [best(lambda b=b, k=k, op=fused: op.apply(b, half_out, BatchContext(
            np.arange(256) + 256 * k, 0, 1, 5)), args.repeat) for k, b in enumerate(batches)]
        print(f"  {'  + float16, fused':30s} {np.mean(per_batch) / 256 * 1e6:7.1f}")
    ops, params = TrivialAugmentWide().plan(BatchContext(np.arange(256), 0, 1, 5), args.size,
                                            args.size).kernel(args.size, args.size)
    for code in np.unique(ops[:, 0]).tolist():
        rows = np.flatnonzero(ops[:, 0] == code)
        sub = np.ascontiguousarray(batches[0][rows])
        dst = np.empty_like(sub)
        for bilinear in (False, True) if OPS[code] == "AFFINE" else (False,):
            seconds = best(lambda s=sub, d=dst, r=rows, bl=bilinear: augment_into(
                s, d, ops[r], params[r], bl), args.repeat)
            label = (OPS[code] if code >= 0 else "none (copy)") + (
                " bilinear" if bilinear else "")
            print(f"    {label:28s} {seconds / len(rows) * 1e6:7.1f}  ({len(rows)} images)")
    none = np.full((256, 1), -1, np.int32)
    no_params = np.zeros((256, 1, PARAMS))
    levels = np.ascontiguousarray(np.repeat(np.arange(256.0)[:, None], 3, 1).astype(np.float16))
    for label, affine in (("arithmetic", (None, None)), ("table", None)):
        seconds = best(lambda a=affine: augment_into(batches[0], half_out, none, no_params,
                                                     table=levels, affine=a), args.repeat)
        print(f"  {'fused conversion, ' + label:30s} {seconds / 256 * 1e6:7.1f}")
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
    source = torch.from_numpy(batches[0]).permute(0, 3, 1, 2)
    half = torch.empty((256, args.size, args.size, 3), dtype=torch.float16).permute(0, 3, 1, 2)
    seconds = best(lambda: half.copy_(source), args.repeat)
    print(f"  {'torch uint8 -> float16':30s} {seconds / 256 * 1e6:7.1f}")


if __name__ == "__main__":
    main()

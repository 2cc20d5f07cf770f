"""How this machine scales from one busy process to one per core, outside any
loader (not a test):

    python bench/core_scaling.py [--calls 3000] [--repeat 2]

Runs the benchmark's Python operation (``fastforward._bench_ops.python_op`` on
a 192×192 image), a simplejpeg decode of a 256 px photograph and, where
torchvision is installed, its ``TrivialAugmentWide`` on a 192×192 uint8 tensor
(torch on one thread, the same seeded sequence of operations in every
process) in 1 process, then in as many processes as there are cores, each
process timing its own calls in CPU time. Where the CPU time per call grows with the number of
processes, the cores share something (a host's other work, a hyperthread's
sibling, memory bandwidth), and no loader scales by the number of cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time


def calls(kind: str, count: int) -> float:
    """Microseconds of CPU time per call of *kind*, over *count* calls."""
    import numpy as np

    from fastforward._bench_ops import python_op
    from fastforward.demo import load_photos

    photo = np.ascontiguousarray(load_photos()[0][:192, :192])
    if kind == "python_op":
        def one() -> object:
            return python_op(photo)
    elif kind == "tv_trivialaugment":
        import torch
        from torchvision.transforms import v2

        torch.set_num_threads(1)  # as in a loader's worker process
        tensor = torch.from_numpy(photo).permute(2, 0, 1)
        policy = v2.TrivialAugmentWide()
        torch.manual_seed(0)  # the same operations, whichever process

        def one() -> object:
            return policy(tensor)
    else:
        import simplejpeg

        blob = simplejpeg.encode_jpeg(np.ascontiguousarray(load_photos()[0][:256, :256]),
                                      quality=90, colorsubsampling="420")

        def one() -> object:
            return simplejpeg.decode_jpeg(blob)
    one()
    start = time.process_time()
    for _ in range(count):
        one()
    return (time.process_time() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    context = multiprocessing.get_context("fork")
    kinds = ["python_op", "decode"]
    try:
        import torchvision  # noqa: F401
        kinds.append("tv_trivialaugment")
    except ImportError:
        print("tv_trivialaugment left out: torchvision is not installed")
    for kind in kinds:
        for _ in range(args.repeat):
            for processes in (1, cores):
                with context.Pool(processes) as pool:
                    each = pool.starmap(calls, [(kind, args.calls)] * processes)
                print(f"{kind:17s} {processes} process(es): µs of CPU per call "
                      + ", ".join(f"{v:.1f}" for v in each), flush=True)


if __name__ == "__main__":
    main()

"""Real torch.distributed processes (gloo, spawned): every order, 2 and 3 ranks;
the seed broadcast from rank 0 when none is given."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is an optional extra")

from test_distributed import assert_pages_shared_only_at_cuts  # noqa: E402

from fastforward.fields import BytesField, IntField  # noqa: E402 - after the skip
from fastforward.fields.decoders import IntDecoder  # noqa: E402
from fastforward.loader import Loader, OrderOption  # noqa: E402
from fastforward.reader import Reader  # noqa: E402
from fastforward.traversal_order.quasi_random import sample_pages  # noqa: E402
from fastforward.writer import DatasetWriter  # noqa: E402

ORDERS = ["SEQUENTIAL", "RANDOM", "QUASI_RANDOM"]


def run_rank(rank: int, world: int, path: str, out: str, rendezvous: str) -> None:
    """One rank: two epochs of every order, written to ``out/<rank>.json``."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world)
    try:
        result = {}
        for order in ORDERS:
            loader = Loader(path, 10, distributed=True, seed=3, drop_last=False,
                            order=OrderOption[order], num_workers=1,
                            pipelines={"index": [IntDecoder()], "blob": None})
            result[order] = [[int(i) for (b,) in loader for i in b.ravel()] for _ in range(2)]
            result[order + "/len"] = len(loader)
        # a collective, as DDP would run one per batch: equal batch counts never hang
        counts = torch.tensor([len(result["QUASI_RANDOM"][0])])
        dist.all_reduce(counts)
        result["total"] = int(counts.item())
        Path(out, f"{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def paged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gloo") / "paged.beton"
    DatasetWriter(path, {"index": IntField(), "blob": BytesField()}, page_size=1 << 21,
                  num_workers=2, progress=False).from_indexed_dataset(
        [(i, np.full(20_000, i % 256, np.uint8)) for i in range(503)])
    return path


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_gloo_ranks(paged: Path, tmp_path: Path, world: int) -> None:
    import torch.multiprocessing as mp

    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(run_rank, args=(world, str(paged), str(out), str(tmp_path / "rendezvous")),
             nprocs=world, join=True)
    results = [json.loads((out / f"{r}.json").read_text()) for r in range(world)]
    pages = sample_pages(Reader(paged))
    for order in ORDERS:
        for epoch in range(2):
            per_rank = [r[order][epoch] for r in results]
            assert len({len(ids) for ids in per_rank}) == 1, order  # equal lengths
            assert set(np.concatenate(per_rank).tolist()) == set(range(503)), order
        assert len({r[order + "/len"] for r in results}) == 1
        if order != "SEQUENTIAL":
            assert results[0][order][0] != results[0][order][1]  # epochs differ
    # QUASI_RANDOM: page sets that overlap only at the cuts
    assert_pages_shared_only_at_cuts([set(pages[r["QUASI_RANDOM"][0]].tolist())
                                      for r in results])
    assert results[0]["total"] == world * len(results[0]["QUASI_RANDOM"][0])
    # deterministic: the same orders as ranks simulated in this process
    import fastforward.loader.loader as loader_module

    original = loader_module._distributed_context
    try:
        loader_module._distributed_context = lambda: (1, world)
        again = Loader(paged, 10, distributed=True, seed=3, drop_last=False,
                       order=OrderOption.QUASI_RANDOM,
                       pipelines={"index": [IntDecoder()], "blob": None})
        assert [int(i) for (b,) in again for i in b.ravel()] == results[1]["QUASI_RANDOM"][0]
    finally:
        loader_module._distributed_context = original


def run_rank_without_seed(rank: int, world: int, path: str, out: str, rendezvous: str) -> None:
    """One rank of FFCV's ImageNet recipe: ``distributed=True`` and no seed."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world)
    try:
        result = {}
        for order in ORDERS:
            loader = Loader(path, 10, distributed=True, drop_last=False,
                            order=OrderOption[order], num_workers=1,
                            pipelines={"index": [IntDecoder()], "blob": None})
            result[order] = [int(i) for (b,) in loader for i in b.ravel()]
            result[order + "/seed"] = loader.seed
        Path(out, f"{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gloo_seed_from_rank_0(paged: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(run_rank_without_seed, args=(2, str(paged), str(out), str(tmp_path / "rdv")),
             nprocs=2, join=True)
    first, second = (json.loads((out / f"{r}.json").read_text()) for r in range(2))
    for order in ("RANDOM", "QUASI_RANDOM"):
        assert first[order + "/seed"] == second[order + "/seed"], order
        # one plan: a disjoint split of every sample (503 is odd: one is repeated as padding)
        assert set(first[order]) | set(second[order]) == set(range(503)), order
        assert len(set(first[order]) & set(second[order])) <= 1, order
        assert first[order] != sorted(first[order]), order
    assert set(first["SEQUENTIAL"]) | set(second["SEQUENTIAL"]) == set(range(503))


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
@pytest.mark.skipif(not (EXAMPLES / "train_imagenet.py").exists(), reason="no examples/")
def test_imagenet_example_resumes_on_another_number_of_processes(tmp_path: Path) -> None:
    """A checkpoint of 2 processes resumed on 1: an epoch has twice the steps
    there, and the learning-rate schedule goes on from the loader's position (it
    kept the first run's total and stepped past it: a ValueError)."""
    import subprocess
    import sys

    sys.path.insert(0, str(EXAMPLES))
    try:
        from train_imagenet import smoke_data
    finally:
        sys.path.remove(str(EXAMPLES))
    train, val = smoke_data(tmp_path)
    checkpoint = tmp_path / "run.pt"

    def run(processes: int, epochs: int) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
             str(EXAMPLES / "train_imagenet.py"), "--train", train, "--val", val,
             "--arch", "tiny", "--classes", "10", "--batch-size", "32", "--workers", "1",
             "--min-res", "64", "--max-res", "64", "--val-res", "64", "--lr", "0.1",
             "--epochs", str(epochs), "--checkpoint", str(checkpoint)],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    assert "epoch 0:" in run(2, 1)
    first = torch.load(checkpoint, weights_only=False)
    assert first["schedule"]["last_epoch"] == 5  # 320 images, 2 × 32 per step
    assert "epoch 1:" in run(1, 2)
    schedule = torch.load(checkpoint, weights_only=False)["schedule"]
    # one epoch of 10 steps from the checkpoint's position, then one more: the end
    assert schedule["last_epoch"] == schedule["total_steps"] == 20

"""Workers: threads and processes give the same batches, and every guarantee of
the thread path holds with process workers (held batches, errors, dead
workers, clean stops, nothing left in /dev/shm), plus what any operation may
raise reaching ``next()``.

Operations are defined at module level: process workers unpickle them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import ctypes
import errno
import functools
import gc
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastforward.errors import DecodeError, WorkerError
from fastforward.fields import (
    IntField,
    MaskField,
    MultiChannelImageField,
    NDArrayField,
    RGBImageField,
)
from fastforward.fields.decoders import (
    CenterCropMultiChannelImageDecoder,
    CenterCropRGBImageDecoder,
    IntDecoder,
    MaskDecoder,
    NDArrayDecoder,
    RandomResizedCropRGBImageDecoder,
    SimpleMultiChannelImageDecoder,
    SimpleRGBImageDecoder,
)
from fastforward.loader import Loader, OrderOption
from fastforward.pipeline import AllocationQuery, Operation, State
from fastforward.pipeline.decoder import Decoder
from fastforward.reader import Reader
from fastforward.scheduler import STUCK_SECONDS
from fastforward.transforms import RandomHorizontalFlip
from fastforward.writer import DatasetWriter


@pytest.fixture(scope="module")
def photos_file(tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray]) -> Path:
    """48 real photographs of varied sizes, JPEG, with their index as label."""
    path = tmp_path_factory.mktemp("workers") / "photos.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", max_resolution=96),
                         "label": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset(
        [(images[i % len(images)], i) for i in range(48)])
    return path


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("workers") / "labels.beton"
    DatasetWriter(path, {"label": IntField()}, num_workers=1,
                  progress=False).from_indexed_dataset(list(range(200)))
    return path


SHARED_MEMORY_NAMES = ("fastforward", "mp-", "sem.mp-")
"""What this process could leave in /dev/shm: its own segments (never named,
but a fallback would be) and multiprocessing's semaphores. Other processes'
files on a shared machine are theirs: torch's, and the psm_* of Python's
SharedMemory, which fastforward never uses and FFCV's writer does."""


def shm_entries() -> set[str]:
    if not os.path.isdir("/dev/shm"):
        return set()
    return {name for name in os.listdir("/dev/shm") if name.startswith(SHARED_MEMORY_NAMES)}


def held_by_others(names: set[str]) -> set[str]:
    """Those of *names* that a process other than this one and its descendants has
    mapped (a semaphore of another program's multiprocessing on a shared machine,
    made while a test ran): theirs, not left behind by the test."""
    parents: dict[int, int] = {}
    maps: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                parents[int(entry)] = int(stat.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/maps") as mapped:
                maps[int(entry)] = mapped.read()
        except (OSError, ValueError, IndexError):
            continue

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = parents.get(pid, 1)
        return False

    inodes: dict[int, str] = {}
    for name in names:
        with contextlib.suppress(OSError):
            inodes[os.stat(f"/dev/shm/{name}").st_ino] = name
    held = set()
    for pid, text in maps.items():  # (glibc maps a semaphore under a temporary name:
        if ours(pid):  # the inode tells it)
            continue
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 6 and fields[5].startswith("/dev/shm/") \
                    and int(fields[4]) in inodes:
                held.add(inodes[int(fields[4])])
    return held


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    before = shm_entries()
    yield
    gc.collect()
    left = shm_entries() - before
    assert not left or not left - held_by_others(left), "something was left in /dev/shm"


# -- operations ----------------------------------------------------------------------


class Jitter(Operation):
    """A Python operation per sample that keeps the GIL, drawing from its context."""

    per_sample = True

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        mine = int(context.sample_rng(position).integers(0, 80))
        destination[:] = sample // 2 + np.uint8(mine + self.shift())
        return destination

    def shift(self) -> int:
        return 0


class GlobalJitter(Jitter):
    """Jitter that draws from the global generators (np.random, random, torch's) too."""

    def shift(self) -> int:
        torch = sys.modules.get("torch")
        extra = int(torch.randint(0, 20, (1,))) if torch is not None else 0
        return np.random.randint(0, 20) + random.randint(0, 20) + extra


class Returns(Operation):
    """Per sample, returns a new array and asks for no buffer (stage 1 copies it)."""

    per_sample = True

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        return 255 - sample


class RaiseAt(Operation):
    """Raises *error* when it meets sample *index* (per sample, in any worker)."""

    per_sample = True

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__()
        self.index = index
        self.error = error

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        if int(context.indices[position]) == self.index:
            raise self.error
        return sample


class RaiseFromAt(RaiseAt):
    """Raises *error* from a KeyError (``raise ... from ...``) at sample *index*."""

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        try:
            return super().apply_sample(sample, destination, context, position)
        except type(self.error) as exc:
            try:
                {}["the_missing_key"]
            except KeyError as cause:
                raise exc from cause


class AtBatch(Operation):
    """A batch operation (run in the loader's process, in stage 2) that passes its
    batches on, and calls ``reached()`` at batch *at*."""

    releases_gil = True

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def reached(self) -> None:
        raise NotImplementedError

    def apply(self, batch, destination, context):  # type: ignore[no-untyped-def]
        if context.batch_index == self.at:
            self.reached()
        return batch


class RaiseInBatch(AtBatch):
    """Raises *error* at batch *at*."""

    def __init__(self, at: int, error: BaseException) -> None:
        super().__init__(at)
        self.error = error

    def reached(self) -> None:
        raise self.error


class AtSample(Operation):
    """A per-sample operation that passes its samples on, and calls ``reached()``
    at sample *index*."""

    per_sample = True

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def reached(self) -> None:
        raise NotImplementedError

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        if int(context.indices[position]) == self.index:
            self.reached()
        return sample


class KillAt(AtSample):
    """Kills its own process at sample *index*: SIGKILL (as the OOM killer would),
    or ``os._exit(exit_code)``."""

    def __init__(self, index: int, exit_code: int | None = None) -> None:
        super().__init__(index)
        self.exit_code = exit_code

    def reached(self) -> None:
        if self.exit_code is not None:
            os._exit(self.exit_code)
        os.kill(os.getpid(), signal.SIGKILL)


def train_loader(path: Path, workers: int, worker_type: str, extra: list | None = None,
                 batch_size: int = 8, **kw) -> Loader:
    kw.setdefault("order", OrderOption.RANDOM)
    kw.setdefault("seed", 5)
    return Loader(path, batch_size, num_workers=workers, worker_type=worker_type,
                  pipelines={"image": [RandomResizedCropRGBImageDecoder((32, 32)),
                                       RandomHorizontalFlip(),
                                       *(extra if extra is not None else [Jitter()])],
                             "label": [IntDecoder()]}, **kw)


def epochs(loader: Loader, count: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each epoch's images and labels, concatenated."""
    out = []
    with loader:
        for _ in range(count):
            batches = [(images.copy(), labels.copy()) for images, labels in loader]
            out.append((np.concatenate([i for i, _ in batches]),
                        np.concatenate([b for _, b in batches])))
    return out


# -- the same batches --------------------------------------------------------------


@pytest.mark.parametrize("extra", ["jitter", "returns", "global"])
def test_threads_and_processes_give_the_same_batches(photos_file: Path, extra: str) -> None:
    """The same batches whatever the workers; for an operation drawing from the
    global generators, whatever the number of worker processes (they seed them
    per sample; threads leave them to the user's code: see below)."""
    ops = {"jitter": [Jitter()], "returns": [Returns()], "global": [GlobalJitter()]}[extra]
    kinds = [(3, "thread"), (1, "process"), (2, "process")]
    if extra == "global":
        kinds = [(1, "process"), (2, "process"), (3, "process")]
    first, *others = kinds
    reference = epochs(train_loader(photos_file, *first, ops))
    for workers, kind in others:
        loader = train_loader(photos_file, workers, kind, ops)
        assert loader.workers.kind == kind
        got = epochs(loader)
        for (images, labels), (want_images, want_labels) in zip(got, reference, strict=True):
            np.testing.assert_array_equal(labels, want_labels)
            np.testing.assert_array_equal(images, want_images)
    assert not np.array_equal(reference[0][0], reference[1][0])  # epochs differ


class Buffered(Operation):
    """Per sample, with a buffer of its input's shape: *how* it returns its result."""

    per_sample = True

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        if self.how == "rebinds":  # a new array: the name rebound, the buffer untouched
            destination = 255 - sample
            return destination
        if self.how == "flipped_view":  # written, then a view of the buffer returned
            destination[:] = 255 - sample[:, ::-1]
            return destination[:, ::-1]
        if self.how == "wrong_shape":
            return (255 - sample)[:-1]
        destination[:] = 255 - sample  # "writes"
        return destination


@pytest.mark.parametrize("worker_type", ["thread", "process"])
@pytest.mark.parametrize("how", ["rebinds", "flipped_view"])
def test_a_per_sample_result_returned_beside_its_buffer_is_kept(
        photos_file: Path, worker_type: str, how: str) -> None:
    """An ``apply_sample`` that returns another array than its buffer row: the
    result is copied there (the batch held the buffer's old values, silently)."""
    want = epochs(train_loader(photos_file, 2, worker_type, [Buffered("writes")]), 1)
    got = epochs(train_loader(photos_file, 2, worker_type, [Buffered(how)]), 1)
    np.testing.assert_array_equal(got[0][1], want[0][1])
    np.testing.assert_array_equal(got[0][0], want[0][0])
    assert want[0][0].std() > 10  # images, not a buffer's zeros


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_a_per_sample_result_of_another_shape_than_its_buffer_is_refused(
        photos_file: Path, worker_type: str) -> None:
    loader = train_loader(photos_file, 2, worker_type, [Buffered("wrong_shape")])
    with loader, pytest.raises(ValueError, match=r"Buffered\.apply_sample returned a sample "
                                                 r"of uint8 \(31, 32, 3\), its buffer "
                                                 r"\(declare_state_and_memory\) is uint8 "
                                                 r"\(32, 32, 3\)") as caught:
        next(iter(loader))
    assert "sample " in "".join(getattr(caught.value, "__notes__", [])) + str(caught.value)


class Shrinks(Operation):
    """Per sample, no buffer: sample 9 comes out a row shorter than the others."""

    per_sample = True

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        return sample[:-1] if int(context.indices[position]) == 9 else sample


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_per_sample_results_of_different_shapes_name_the_sample(photos_file: Path,
                                                                 worker_type: str) -> None:
    """np.stack said only "all input arrays must have the same shape"."""
    loader = Loader(photos_file, 48, num_workers=2, worker_type=worker_type,
                    order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [CenterCropRGBImageDecoder((16, 16), 1.0), Shrinks()],
                               "label": [IntDecoder()]})
    with loader, pytest.raises(ValueError, match=r"Shrinks\.apply_sample returned shape "
                                                 r"\(15, 16, 3\) for sample 9, and shape "
                                                 r"\(16, 16, 3\) for sample \d+: a batch's "
                                                 r"samples must have one shape"):
        next(iter(loader))


class NumpyNoise(Jitter):
    """Jitter that draws from ``np.random`` too (and from no other global generator)."""

    def shift(self) -> int:
        return int(np.random.randint(0, 40))


def test_threads_leave_the_users_global_generators_alone(photos_file: Path) -> None:
    """On threads, an operation runs beside the training loop, which draws from
    the same global generators (dropout on the CPU draws from torch's): the
    loader neither seeds them per sample there nor restores them at a batch's
    end. It did both: the loop's draws came from the samples' seeds, then
    replayed (all 200 draws of a loop differed from its seed's sequence)."""
    try:
        import torch
    except ImportError:
        torch = None

    def draws(count: int) -> list[tuple[float, float]]:
        return [(random.random(), float(torch.rand(1)) if torch is not None else 0.0)
                for _ in range(count)]

    def seed() -> None:
        random.seed(12)
        if torch is not None:
            torch.manual_seed(13)

    seed()
    got: list[tuple[float, float]] = []
    with train_loader(photos_file, 2, "thread", extra=[NumpyNoise()]) as loader:
        for _ in range(2):
            for _batch in loader:
                got += draws(20)
    seed()
    assert got == draws(len(got))


def test_auto_chooses_processes_only_for_operations_that_keep_the_gil(photos_file: Path
                                                                      ) -> None:
    with train_loader(photos_file, 2, "auto") as python:
        assert python.workers.kind == "process"
        assert [p.split for p in python.pipelines] == [1, 0]  # Jitter runs per range
    with train_loader(photos_file, 2, "auto", extra=[RandomHorizontalFlip()]) as builtin:
        assert builtin.workers.kind == "thread"
    with pytest.raises(ValueError, match="worker_type"):
        train_loader(photos_file, 2, "fibers")


def test_process_workers_stay_across_epochs(photos_file: Path) -> None:
    with train_loader(photos_file, 2, "process") as loader:
        for _ in loader:
            pass
        pids = loader.workers.pids
        for _ in loader:
            pass
        assert loader.workers.pids == pids
        assert loader.workers.method_used == "forkserver"
    deadline = time.monotonic() + 10  # gone within seconds, however busy the machine
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie is not alive
            return stat.read().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped since os.kill (read() can
        return False  # fail with ESRCH when it is reaped between open and read)


def test_held_batches_are_never_overwritten_by_worker_processes(photos_file: Path) -> None:
    reference = [images for images, _ in epochs(train_loader(photos_file, 1, "thread"), 3)]
    with train_loader(photos_file, 2, "process") as loader:
        held = []
        for _ in range(3):  # 3 epochs of 6 batches, every one held: 3 times the slots
            held += [image for image, _ in loader]
        assert len(held) == 3 * loader.ring_slots
        np.testing.assert_array_equal(np.concatenate(held), np.concatenate(reference))
        copies = [h.copy() for h in held]
        for _ in loader:  # a fourth epoch, while every batch is still held
            pass
        for h, c in zip(held, copies, strict=True):
            np.testing.assert_array_equal(h, c)


def test_a_batch_size_past_the_samples_sizes_no_slot_past_them(photos_file: Path) -> None:
    """Shared slots are filled in when made: batch_size=20,000 on a 50-sample file
    committed 469 MB of shared memory for batches of 50."""
    def loader(worker_type: str) -> Loader:
        return Loader(photos_file, 20_000, num_workers=2, worker_type=worker_type, seed=5,
                      order=OrderOption.RANDOM, drop_last=False,
                      pipelines={"image": [RandomResizedCropRGBImageDecoder((32, 32)), Jitter()],
                                 "label": [IntDecoder()]})

    with loader("thread") as threads:
        (want, labels), = [(i.copy(), b.copy()) for i, b in threads]
    with loader("process") as processes:
        (got, got_labels), = list(processes)
        assert processes._slots.batch_size == 48  # rows per slot: the samples, not 20,000
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_labels, labels)


def test_os_cache_false_with_process_workers(photos_file: Path) -> None:
    reference = epochs(train_loader(photos_file, 1, "thread"))
    got = epochs(train_loader(photos_file, 2, "process", os_cache=False))
    for (a, _), (b, _) in zip(got, reference, strict=True):
        np.testing.assert_array_equal(a, b)


def test_resume_and_filter_with_process_workers(photos_file: Path) -> None:
    whole = epochs(train_loader(photos_file, 2, "process"), 1)[0][0]
    first = train_loader(photos_file, 2, "process")
    iterator = iter(first)
    done = [next(iterator)[0].copy() for _ in range(2)]
    state = first.state_dict()
    first.close()
    with train_loader(photos_file, 1, "process") as resumed:
        resumed.load_state_dict(state)
        rest = [image for image, _ in resumed]
    np.testing.assert_array_equal(np.concatenate(done + rest), whole)
    with train_loader(photos_file, 2, "process") as loader:
        even = loader.filter("label", lambda label: int(label[0]) % 2 == 0)
    with even:
        labels = np.concatenate([label for _, label in even]).ravel()
        assert even.workers.kind == "process"
    assert sorted(labels.tolist()) == list(range(0, 48, 2))


def test_an_operation_that_cannot_pickle_is_refused_at_once(photos_file: Path) -> None:
    class Local(Operation):  # defined in a function: no worker can import it
        per_sample = True

        def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
            return sample

    with pytest.raises(TypeError, match=r"per-range stage\) to pickle, and the 'image' pipeline's "
                                        r"Local "
                                        r"does not \((AttributeError|PicklingError): .*"
                                        r"worker_type='thread'"):
        train_loader(photos_file, 2, "process", extra=[Local()])
    with train_loader(photos_file, 2, "thread", extra=[Local()]) as loader:
        assert next(iter(loader))[0].shape == (8, 32, 32, 3)


class HoldsALock(Operation):
    """A batch operation holding a lock: it cannot cross a process boundary."""

    releases_gil = True

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def apply(self, batch, destination, context):  # type: ignore[no-untyped-def]
        return batch


class HoldsALockInRanges(HoldsALock):
    """HoldsALock that may run on any range of a batch: in stage 1, on the workers."""

    sample_independent = True


def test_an_operation_that_cannot_pickle_is_named_with_its_pipeline(photos_file: Path) -> None:
    """The error named neither the operation nor its pipeline, only pickle's words,
    nor why 'auto' chose processes."""
    with pytest.raises(TypeError, match=r"^" + re.escape(
            f"{photos_file}: process workers need the decoders and operations they run "
            "(each pipeline's per-range stage) to pickle (worker_type='auto' chose them for "
            "image: Jitter, which keeps the GIL), and the 'image' pipeline's "
            "HoldsALockInRanges does not (TypeError: cannot pickle '_thread.lock' object)")
            + r".*a lock, an open file, a generator"):
        Loader(photos_file, 8, num_workers=2,
               pipelines={"image": [RandomResizedCropRGBImageDecoder((32, 32)), Jitter(),
                                    HoldsALockInRanges()],
                          "label": [IntDecoder()]})


@pytest.mark.parametrize("where", ["label", "image", "branch"])
def test_operations_of_the_loaders_process_need_not_pickle(photos_file: Path, where: str
                                                           ) -> None:
    """Only stage 1 crosses to the workers: an operation that runs on whole batches
    in the loader's process (after a label's decoder, after a batch operation of the
    image's, in a branch) may hold what does not pickle (it was refused, and an
    operation holding a CUDA tensor would have started CUDA in every worker)."""
    extra = {"image": [Jitter(), HoldsALock()], "label": [Jitter()], "branch": [Jitter()]}
    labels: list = [IntDecoder(), HoldsALock()] if where == "label" else [IntDecoder()]
    pipelines: dict = {"image": [RandomResizedCropRGBImageDecoder((32, 32)),
                                 RandomHorizontalFlip(), *extra[where]],
                       "label": labels}
    if where == "branch":
        from fastforward.pipeline import PipelineSpec

        pipelines["again"] = PipelineSpec(source=pipelines["image"][-1],
                                          transforms=[HoldsALock()])
    batches, _ = processes_as_threads(photos_file, pipelines)
    assert len(batches) == 6


def processes_as_threads(path: Path, pipelines: dict) -> tuple[list[tuple[np.ndarray, ...]],
                                                                list[int]]:
    """The batches of a loader for which 'auto' chooses process workers, checked
    equal to those of threads, and each pipeline's split (stage 1's steps)."""
    got = {}
    for kind in ("auto", "thread"):
        with Loader(path, 8, num_workers=2, worker_type=kind, order=OrderOption.RANDOM,
                    seed=5, pipelines=pipelines) as loader:
            assert loader.workers.kind == ("process" if kind == "auto" else "thread")
            splits = [p.split for p in loader.pipelines]
            got[kind] = [_copied(batch) for batch in loader]
    for batch, want in zip(got["auto"], got["thread"], strict=True):
        for output, expected in zip(batch, want, strict=True):
            np.testing.assert_array_equal(output, expected)
    return got["auto"], splits


def test_a_torch_module_after_to_tensor_stays_in_the_loaders_process(photos_file: Path
                                                                      ) -> None:
    """A ``torch.nn.Module`` after ``ToTensor`` (a GPU augmentation, its buffers on
    the device) was pickled for every worker, and rebuilt there: a CUDA tensor
    would have started CUDA in each. It stays in the loader's process now, and
    what it holds need not pickle."""
    torch = pytest.importorskip("torch")
    from fastforward.transforms import ToTensor

    class Brighter(torch.nn.Module):  # local: not even its class could be pickled
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("offset", torch.tensor(3, dtype=torch.uint8))
            self.lock = threading.Lock()

        def forward(self, images):  # type: ignore[no-untyped-def]
            return images + self.offset

    _, splits = processes_as_threads(photos_file, {
        "image": [RandomResizedCropRGBImageDecoder((32, 32)), Jitter(), ToTensor(), Brighter()],
        "label": [IntDecoder()]})
    assert splits == [1, 0]


# -- failures ------------------------------------------------------------------------


def test_an_error_in_a_worker_process_reaches_next_with_its_traceback(photos_file: Path
                                                                      ) -> None:
    reference = epochs(train_loader(photos_file, 1, "thread"), 1)[0][0]
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    victim = int(order[27])  # in the fourth batch of 8
    with train_loader(photos_file, 2, "process",
                      extra=[Jitter(), RaiseAt(victim, ValueError("bad pixel"))]) as loader:
        iterator = iter(loader)
        got = [next(iterator)[0].copy() for _ in range(3)]
        with pytest.raises(ValueError, match="bad pixel") as info:
            next(iterator)
    np.testing.assert_array_equal(np.concatenate(got), reference[:24])
    message = str(info.value)
    assert str(photos_file) in message
    assert "batch 3" in message
    assert "pipeline 'image'" in message
    assert "RaiseAt" in message
    assert f"sample {victim}" in message
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "fastforward worker process" in notes
    assert "apply_sample" in notes


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_an_errors_cause_reaches_next(photos_file: Path, worker_type: str) -> None:
    """``raise X from Y`` in an operation lost Y on its way (``from None`` where the
    loader added the location): its traceback showed no cause."""
    import traceback

    with train_loader(photos_file, 2, worker_type,
                      extra=[RaiseFromAt(3, ValueError("could not augment"))]) as loader, \
            pytest.raises(ValueError, match=r"sample 3.*could not augment") as info:
        for _ in loader:
            pass
    told = "".join(traceback.format_exception(info.value))
    assert "the_missing_key" in told  # the cause, and where it came from
    if worker_type == "thread":
        assert isinstance(info.value.__cause__, KeyError)
        assert "direct cause" in told


@pytest.fixture
def descriptors_past_select() -> Iterator[None]:
    """The descriptors the test opens next are numbered past 1023, where
    ``select.select`` refuses them (a training process may well hold that many)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1400
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"at most {hard} open files here")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("descriptors_past_select")
def test_a_killed_worker_among_many_open_files_is_still_a_worker_error(
        photos_file: Path) -> None:
    """The workers' pidfds were polled with select(), which raises for descriptors
    past 1023: the reader thread died burying a killed worker (the epoch hung),
    and close() raised."""
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    loader = train_loader(photos_file, 2, "process", extra=[KillAt(int(order[20]))])
    with pytest.raises(WorkerError, match=r"killed by signal 9 \(SIGKILL\)"):
        for _ in loader:
            pass
    assert all(w.pidfd is None or w.pidfd > 1023 for w in loader.workers._workers)
    loader.close()


def test_a_killed_worker_is_a_worker_error_not_a_hang(photos_file: Path) -> None:
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    with train_loader(photos_file, 2, "process", extra=[KillAt(int(order[20]))]) as loader:
        start = time.monotonic()
        with pytest.raises(WorkerError, match=r"killed by signal 9 \(SIGKILL\)") as info:
            for _ in loader:
                pass
        assert time.monotonic() - start < 30
        assert "batch 2 (samples" in str(info.value)
        # and the sample a per-sample operation was at (order[20], batch 2's fifth)
        assert re.search(rf"rows \d+:\d+, at sample {order[20]}\b", str(info.value))
        assert "faulthandler" not in str(info.value)  # SIGKILL leaves no report
        assert len(loader.workers.pids) == 1  # the dead one is gone
        # the next epoch replaces the dead worker (and meets the same sample again)
        with pytest.raises(WorkerError):
            for _ in loader:
                pass
        assert loader.workers.started == 3


class CrashAt(AtSample):
    """Reads address 0 at sample *index*: a segmentation fault, as a crash in a
    library's native code would be. Crashes from ``apply_sample`` itself, the
    frame the test finds under the crash in faulthandler's report."""

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        if int(context.indices[position]) == self.index:
            crash_in_native_code()
        return sample


class CrashInBatch(Operation):
    """Reads address 0 when its batch holds sample *index* (an operation on the
    whole batch: it is at no one sample)."""

    sample_independent = True  # run in ranges, on the workers

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def apply(self, batch, destination, context):  # type: ignore[no-untyped-def]
        if self.index in context.indices:
            crash_in_native_code()
        return batch


def crash_in_native_code() -> None:
    ctypes.string_at(0)


class ForkCrashAndDieAt(AtSample):
    """At sample *index*, forks a child that crashes (SIGSEGV), waits for it, then
    SIGKILLs its own process."""

    def reached(self) -> None:
        child = os.fork()
        if child == 0:
            os.close(2)  # (its report goes to stderr: keep the test's output clean)
            crash_in_native_code()
        os.waitpid(child, 0)
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_that_crashes_says_where(photos_file: Path) -> None:
    """A worker killed by a fatal signal (SIGSEGV in native code) is a WorkerError
    naming the sample its per-sample operation was at, with the Python stack
    ``faulthandler`` wrote as it crashed; the next epoch starts a new worker."""
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    with train_loader(photos_file, 2, "process", extra=[CrashAt(int(order[20]))]) as loader:
        with pytest.raises(WorkerError) as info:
            for _ in loader:
                pass
        text = str(info.value)
        # (the batch that fails may be one queued behind the crash: "…, before running …")
        assert re.search(r"killed by signal 11 \(SIGSEGV\): a crash in native code\) while "
                         rf"running .*: batch 2 \(samples [^)]*\), rows \d+:\d+, at sample "
                         rf"{order[20]}(, before running .*?)?\. faulthandler's report as it "
                         r"crashed:\n    Fatal Python "
                         r"error: Segmentation fault", text)
        assert re.search(r'File ".*test_workers\.py", line \d+ in crash_in_native_code\n'
                         r'\s+File ".*test_workers\.py", line \d+ in apply_sample', text)
        assert "Extension modules" not in text
        with pytest.raises(WorkerError, match="SIGSEGV"):  # a new worker, the same crash
            for _ in loader:
                pass
        assert loader.workers.started == 3
    # a crash after the per-sample operation's samples names none of them
    with train_loader(photos_file, 2, "process",
                      extra=[CrashAt(-1), CrashInBatch(int(order[20]))]) as loader, \
            pytest.raises(WorkerError, match=r"SIGSEGV.*rows \d+:\d+(, before .*?)?\. "
                                             r"faulthandler's report") as info:
        for _ in loader:
            pass
    assert "at sample" not in str(info.value)
    assert re.search(r"line \d+ in crash_in_native_code\n\s+File .*, line \d+ in apply\n",
                     str(info.value))


def test_a_crash_in_a_process_a_worker_forked_is_not_the_workers(photos_file: Path) -> None:
    """A child an operation forks inherited the worker's crash file: its crash was
    reported as the worker's, which then died of SIGKILL."""
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    with train_loader(photos_file, 2, "process",
                      extra=[ForkCrashAndDieAt(int(order[20]))]) as loader, \
            pytest.raises(WorkerError, match=r"killed by signal 9 \(SIGKILL\)") as info:
        for _ in loader:
            pass
    assert "faulthandler" not in str(info.value)


@pytest.fixture(scope="module")
def large_photos_file(tmp_path_factory: pytest.TempPathFactory,
                      photos: list[np.ndarray]) -> Path:
    """8 photographs of 1024x1024 (tiled), JPEG: each takes milliseconds to decode."""
    path = tmp_path_factory.mktemp("workers") / "large.beton"
    tiles = [np.ascontiguousarray(np.tile(p[:256, :256], (4, 4, 1))) for p in photos]
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg"), "label": IntField()},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(tiles[i % len(tiles)], i) for i in range(8)])
    return path


class MissedTheSample(RuntimeError):
    """The watching thread did not run while the decoder was at its sample."""


class KillWhileDecoding:
    """Mixed in before a decoder: in the range that holds sample *index*, a second
    thread SIGKILLs the worker process as soon as the decoder notes (in the worker's
    progress cells) that it decodes that sample, as a crash inside the compiled kernel
    would end it. If the range ends first (a machine so busy that the thread was not
    scheduled while the sample was decoded, or a decoder that never notes it), the
    range raises ``MissedTheSample`` instead."""

    def __init__(self, index: int, *args: Any) -> None:
        super().__init__(*args)
        self.index = index

    def decode_range(self, lo, hi, destination, context):  # type: ignore[no-untyped-def]
        if context.progress is None or self.index not in context.indices[lo:hi]:
            return super().decode_range(lo, hi, destination, context)  # type: ignore[misc]
        cells, done = context.progress, threading.Event()

        def kill_at_the_sample() -> None:
            while not done.is_set():
                if cells[1] == self.index:
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0)

        watcher = threading.Thread(target=kill_at_the_sample, daemon=True)
        watcher.start()
        super().decode_range(lo, hi, destination, context)  # type: ignore[misc]
        done.set()
        watcher.join()
        raise MissedTheSample(f"sample {self.index} was decoded, and the process lives")


class KillWhileCropping(KillWhileDecoding, CenterCropRGBImageDecoder):
    pass


class KillWhileDecodingWhole(KillWhileDecoding, SimpleRGBImageDecoder):
    pass


@pytest.mark.parametrize("decoder", ["crop", "crop without libjpeg-turbo", "whole"])
def test_a_worker_dying_in_a_decoder_names_the_sample(large_photos_file: Path, decoder: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that dies while a decoder decodes (a crash in libjpeg, an OOM kill)
    is reported with the sample the decoder was at: the crop decoders' compiled range
    kernels (libjpeg-turbo's, and simplejpeg's where the build has no libjpeg-turbo)
    and the whole-image decoder's loop note each sample as they start it."""
    start_method = None
    if decoder == "crop without libjpeg-turbo":
        from fastforward.fields import rgb_image

        monkeypatch.setattr(rgb_image, "_region", None)
        start_method = "fork"  # (the workers inherit the patch)
    missed = 0
    while True:
        op = (KillWhileDecodingWhole(5) if decoder == "whole"
              else KillWhileCropping(5, (64, 64), 1.0))
        try:
            with Loader(large_photos_file, 4, num_workers=2, worker_type="process",
                        start_method=start_method,
                        pipelines={"image": [op], "label": [IntDecoder()]}) as loader, \
                    pytest.raises(WorkerError, match=r"killed by signal 9 \(SIGKILL\)") as info:
                for _ in loader:
                    pass
            break
        except MissedTheSample:
            # the watcher was not scheduled in time (a loaded machine): again, a few times;
            # a decoder that never notes the sample is missed every time
            missed += 1
            assert missed < 5, "the decoder never noted sample 5 in the worker's progress cell"
    assert re.search(r"batch 1 \(samples 4, …, 7\), rows \d+:\d+, at sample 5\b",
                     str(info.value)), str(info.value)


class CellOnFailure:
    """Mixed in before a decoder: its ``DecodeError`` is re-raised as a RuntimeError
    saying what the worker's progress cell held then (the sample its kernel noted
    last: the failing one)."""

    def decode_range(self, lo, hi, destination, context):  # type: ignore[no-untyped-def]
        try:
            super().decode_range(lo, hi, destination, context)  # type: ignore[misc]
        except DecodeError as exc:
            cell = None if context.progress is None else int(context.progress[1])
            raise RuntimeError(f"progress cell at {cell}") from exc


class MaskCell(CellOnFailure, MaskDecoder):
    pass


class BandsCell(CellOnFailure, SimpleMultiChannelImageDecoder):
    pass


class BandsCropCell(CellOnFailure, CenterCropMultiChannelImageDecoder):
    pass


@pytest.fixture(scope="module")
def planes_file(tmp_path_factory: pytest.TempPathFactory, photos: list[np.ndarray]) -> Path:
    """8 masks and 4-channel images (zstd), sample 5's zstd blocks of both damaged."""
    path = tmp_path_factory.mktemp("workers") / "planes.beton"
    DatasetWriter(path, {"mask": MaskField(),
                         "bands": MultiChannelImageField(4, np.uint8, compression="zstd")},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(np.ascontiguousarray(photos[i % len(photos)][:40, :48, 0] // 64),
          np.ascontiguousarray(photos[i % len(photos)][:40, :48, [0, 1, 2, 0]]))
         for i in range(8)])
    with Reader(path) as reader:
        starts = [int(reader.metadata[f"f{f}"]["ptr"][5]) for f in range(2)]
    with open(path, "r+b") as f:
        for start in starts:  # past the payload's 8-byte header, a zstd frame
            f.seek(start + 8)
            head = f.read(18)
            single, flags = head[4] >> 5 & 1, head[4]
            skip = 5 + (1 - single) + (0, 1, 2, 4)[flags & 3] + (single, 2, 4, 8)[flags >> 6]
            f.seek(start + 8 + skip)
            f.write(b"\xff\xff\xff")  # its first block's header: a reserved block type
    return path


@pytest.mark.parametrize("decoder", ["mask", "bands", "bands crop"])
def test_the_plane_decoders_note_the_sample_they_decode(planes_file: Path,
                                                       decoder: str) -> None:
    """The mask and many-channel decoders hand the worker's progress cells to their
    kernels: after a payload that does not decode, the cell holds its sample."""
    op = {"mask": lambda: MaskCell(size=(40, 48)), "bands": BandsCell,
          "bands crop": lambda: BandsCropCell((16, 16), 1.0)}[decoder]()
    field = "mask" if decoder == "mask" else "bands"
    with Loader(planes_file, 4, num_workers=2, worker_type="process",
                order=OrderOption.SEQUENTIAL,
                pipelines={field: [op], ("bands" if field == "mask" else "mask"): None}
                ) as loader, pytest.raises(RuntimeError, match=r"progress cell at 5$"):
        for _ in loader:
            pass


def run_script(tmp_path: Path, name: str, source: str) -> subprocess.CompletedProcess:
    """Run *source* (dedented) as the script *name* in *tmp_path*, able to import
    this file's helpers (``from test_workers import train_loader``)."""
    script = tmp_path / name
    script.write_text(f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                      + textwrap.dedent(source))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


def test_a_forked_child_makes_a_loader_of_its_own(tmp_path: Path, photos_file: Path) -> None:
    """After a process loader has run, a child made by os.fork creates and runs a
    loader of its own, as docs/workers.md tells it to: it inherited the parent's
    fork server, which it cannot use (ChildProcessError)."""
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork")
    result = run_script(tmp_path, "forks.py", f"""
        import os
        from pathlib import Path
        from test_workers import train_loader

        if __name__ == "__main__":
            with train_loader(Path({str(photos_file)!r}), 2, "process") as parent:
                mine = [labels.tolist() for _, labels in parent]
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        with train_loader(Path({str(photos_file)!r}), 2, "process") as child:
                            code = 0 if [l.tolist() for _, l in child] == mine else 2
                    finally:
                        os._exit(code)
                print("child exit code", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
                assert [labels.tolist() for _, labels in parent]  # the parent's still runs
    """)
    assert result.returncode == 0, result.stderr
    assert "child exit code 0" in result.stdout, result.stderr


def test_a_start_cut_short_leaves_the_fork_server_serving(
        tmp_path: Path, photos_file: Path) -> None:
    """A start that Ctrl-C cuts between connecting to the fork server and sending
    it the descriptors made CPython's server exit with a traceback of EOFError
    (and the next epoch raised ConnectionRefusedError until a new server, which
    imports torch again, took over); one cut after them made the child the
    server forked print one. The server serves on, the cut child exits with code
    1, and neither says a word (``_forkserver_main._survive_cut_starts``)."""
    pytest.importorskip("torch", reason="the server preloads torch, as users' do")
    result = run_script(tmp_path, "server.py", f"""
        import os, socket
        import torch  # preloaded by the fork server with this main module
        from pathlib import Path
        import multiprocessing.forkserver as forkserver
        from test_workers import train_loader

        if __name__ == "__main__":
            with train_loader(Path({str(photos_file)!r}), 2, "process") as first:
                expected = [labels.tolist() for _, labels in first]
            server = forkserver._forkserver._forkserver_pid
            with socket.socket(socket.AF_UNIX) as interrupted:  # before the descriptors
                interrupted.connect(forkserver._forkserver._forkserver_address)
            status, data = forkserver._forkserver.connect_to_new_process([])
            os.close(data)  # after them: no process object
            pid = forkserver.read_signed(status)
            print("cut child", pid > 0, "exit code", forkserver.read_signed(status))
            os.close(status)
            with train_loader(Path({str(photos_file)!r}), 2, "process") as second:
                assert [labels.tolist() for _, labels in second] == expected
            print("same server", forkserver._forkserver._forkserver_pid == server)
    """)
    assert result.returncode == 0, result.stderr
    assert "cut child True exit code 1" in result.stdout, result.stderr
    assert "same server True" in result.stdout, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "EOFError" not in result.stderr, result.stderr


def test_a_real_eof_error_in_a_forked_childs_start_is_still_reported(
        tmp_path: Path, photos_file: Path) -> None:
    """``_survive_cut_starts`` quiets only pickle's own end of input: an EOFError
    that unpickling a process's arguments raises (another library's process from
    the same fork server) still prints its traceback and exits 1."""
    result = run_script(tmp_path, "eof.py", f"""
        import multiprocessing as mp
        from pathlib import Path
        from test_workers import train_loader

        def refuse():
            raise EOFError("the argument's own end of file")

        class Loads:
            def __reduce__(self):
                return refuse, ()

        def target(value):
            pass

        if __name__ == "__main__":
            with train_loader(Path({str(photos_file)!r}), 2, "process") as loader:
                next(iter(loader))  # the fork server runs, with _forkserver_main
            child = mp.get_context("forkserver").Process(target=target, args=(Loads(),))
            child.start()
            child.join()
            print("exit code", child.exitcode)
    """)
    assert result.returncode == 0, result.stderr
    assert "exit code 1" in result.stdout
    assert "EOFError: the argument's own end of file" in result.stderr


COUNTS_ITS_IMPORTS = """
    import gc, multiprocessing, os
    from pathlib import Path
    from fastforward.pipeline import Operation
    from test_workers import train_loader

    LOG = {log!r}
    with open(LOG, "a") as log:  # each import of this module, by whichever process
        log.write(f"import {{__name__}} {{multiprocessing.current_process().name}} "
                  f"{{os.getpid()}}\\n")

    class Notes(Operation):
        \"\"\"Notes, once per worker, whether the objects it inherited are frozen.\"\"\"

        per_sample = True
        noted = False

        def apply_sample(self, sample, destination, context, position):
            if not Notes.noted:
                Notes.noted = True
                with open(LOG, "a") as log:
                    log.write(f"worker {{multiprocessing.current_process().name}} "
                              f"{{gc.get_freeze_count()}} "
                              f"{{'_FASTFORWARD_FORK_SERVER' in os.environ}}\\n")
            return sample

    if __name__ == "__main__":
        import multiprocessing.forkserver
        if {write!r}:
            from fastforward.fields import IntField
            from fastforward.writer import DatasetWriter
            DatasetWriter(Path(LOG).with_name("labels.beton"), {{"label": IntField()}},
                          num_workers=2, start_method="forkserver",
                          progress=False).from_indexed_dataset(list(range(100)))
        for _ in range(2):  # the second loader's workers come from the same server
            with train_loader(Path({photos!r}), 2, "process", extra=[Notes()]) as loader:
                next(iter(loader))
        print("parent", os.getpid())
        print("server", multiprocessing.forkserver._forkserver._forkserver_pid)
        print("environment", "_FASTFORWARD_FORK_SERVER" in os.environ)
"""


@pytest.mark.parametrize("how", ["script", "module", "writer first"])
def test_the_fork_server_imports_the_main_module_and_no_worker_does(
        tmp_path: Path, photos_file: Path, how: str) -> None:
    """The main module is imported by its process, once by the fork server, and
    by no worker, the writer's or the loader's (CPython's server, told to preload
    "__main__", never did before 3.13.8: each worker ran the script again, and
    what it imports, seconds with torchvision); run as a script or with
    ``python -m``. The server froze what it holds (``gc.freeze``), so that
    collections in the workers do not copy its pages, and its environment
    variable is gone from the workers and from the loader's process."""
    log = tmp_path / "imports.txt"
    source = (f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              + textwrap.dedent(COUNTS_ITS_IMPORTS.format(
                  log=str(log), photos=str(photos_file), write=how == "writer first")))
    if how == "module":
        (tmp_path / "package").mkdir()
        (tmp_path / "package" / "__init__.py").write_text("")
        (tmp_path / "package" / "counts.py").write_text(source)
        command = [sys.executable, "-m", "package.counts"]
    else:
        (tmp_path / "counts.py").write_text(source)
        command = [sys.executable, str(tmp_path / "counts.py")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pids = dict(re.findall(r"^(parent|server) (\d+)$", result.stdout, re.M))
    assert "environment False" in result.stdout
    lines = log.read_text().splitlines()
    imports = [line.split()[1:] for line in lines if line.startswith("import ")]
    assert imports == [["__main__", "MainProcess", pids["parent"]],
                       ["__mp_main__", "MainProcess", pids["server"]]], lines
    workers = [line.split() for line in lines if line.startswith("worker ")]
    assert len(workers) == 4, lines  # two loaders' two workers each
    for _, name, frozen, variable in workers:
        assert name.startswith("fastforward-worker-")
        assert int(frozen) > 0, lines
        assert variable == "False", lines


def test_an_unguarded_script_fails_in_the_workers_as_before(tmp_path: Path,
                                                              photos_file: Path) -> None:
    """The fork server's import of a script without a `__main__` guard fails (its
    Loader() is refused there as in a worker) and is let go: the server runs on,
    and each worker imports the script itself and fails, saying why."""
    log = tmp_path / "imports.txt"
    result = run_script(tmp_path, "unguarded.py", f"""
        import multiprocessing, os
        from pathlib import Path
        from test_workers import train_loader
        with open({str(log)!r}, "a") as log:
            log.write(f"{{__name__}} {{multiprocessing.current_process().name}}\\n")
        loader = train_loader(Path({str(photos_file)!r}), 2, "process")
        next(iter(loader))
    """)
    assert result.returncode != 0
    assert "WorkerError" in result.stderr
    assert "failed to start" in result.stderr
    assert 'if __name__ == "__main__":' in result.stderr
    assert "Loader() called in fastforward's worker process" in result.stderr
    assert "fork server (pid" not in result.stderr  # the server's failure is silent
    lines = log.read_text().splitlines()
    assert lines[:2] == ["__main__ MainProcess", "__mp_main__ MainProcess"], lines
    assert lines[2:], lines
    assert all(line.startswith("__mp_main__ fastforward-worker-") for line in lines[2:]), lines


def test_a_worker_that_cannot_start_says_why(tmp_path: Path, photos_file: Path) -> None:
    result = run_script(tmp_path, "unguarded.py", f"""
        from test_workers import train_loader
        from pathlib import Path
        loader = train_loader(Path({str(photos_file)!r}), 2, "process")
        next(iter(loader))  # no __main__ guard: the workers re-run this script
    """)
    assert result.returncode != 0
    assert "failed to start" in result.stderr
    assert 'if __name__ == "__main__":' in result.stderr


def test_an_operation_defined_under_the_main_guard_is_named_as_the_cause(
        tmp_path: Path, photos_file: Path) -> None:
    """Its class does not exist where the workers import the main module: the error
    says so (it was a bare AttributeError, the explanation in a note at its end)."""
    result = run_script(tmp_path, "guarded.py", f"""
        from test_workers import train_loader
        from pathlib import Path
        from fastforward.errors import WorkerError
        from fastforward.pipeline import Operation
        if __name__ == "__main__":
            class Local(Operation):
                per_sample = True

                def apply_sample(self, sample, destination, context, position):
                    return sample

            with train_loader(Path({str(photos_file)!r}), 2, "process",
                              extra=[Local()]) as loader:
                try:
                    next(iter(loader))
                except WorkerError as exc:
                    print("raised:", exc)
    """)
    assert result.returncode == 0, result.stderr
    assert "could not rebuild the loader's pipelines (AttributeError: Can't get " \
           "attribute 'Local'" in result.stdout
    assert 'defined inside `if __name__ == "__main__":`' in result.stdout
    assert "pass worker_type='thread'" in result.stdout


def test_a_script_read_from_standard_input_is_told_to_run_from_a_file(
        tmp_path: Path, photos_file: Path) -> None:
    """``python - < script.py``: the workers cannot import a main module that has no
    file (multiprocessing runs '<stdin>' again from its path); the guard the hint
    asked for was there already."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_workers import train_loader
        from pathlib import Path
        if __name__ == "__main__":
            next(iter(train_loader(Path({str(photos_file)!r}), 2, "process")))
    """)
    result = subprocess.run([sys.executable, "-"], input=script, capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    assert "failed to start" in result.stderr
    assert "it has none (<stdin>): run the script from a file" in result.stderr


class LabelsOnlyHere(IntField):
    """An IntField that cannot be rebuilt in a worker process: an OSError there."""

    @staticmethod
    def from_binary(binary: np.ndarray) -> IntField:
        from fastforward.utils import in_a_worker

        if in_a_worker():
            raise PermissionError("labels are not to be read here")
        return LabelsOnlyHere()


def test_a_worker_that_cannot_open_the_file_says_why(photos_file: Path) -> None:
    """An OSError as a worker opens the file is the worker's error, raised as itself
    (it was taken for the worker's socket failing: "failed to start (exit code 0);
    its error is printed above", with nothing printed)."""
    with train_loader(photos_file, 2, "process", custom_fields={"label": LabelsOnlyHere}
                      ) as loader, pytest.raises(PermissionError, match="not to be read here"):
        next(iter(loader))


def test_a_worker_that_cannot_be_handed_the_file_says_so(
        photos_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastforward.loader import workers

    def refuse(*args: object) -> None:
        raise OSError("no room for a descriptor")

    monkeypatch.setattr(workers, "send_handle", refuse)
    with train_loader(photos_file, 2, "process") as loader, pytest.raises(
            WorkerError, match=r"failed to start .*could not hand it the file: .*no room"):
        next(iter(loader))


def test_a_worker_killed_while_it_starts_is_started_again_next_epoch(
        photos_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OOM killer can take a worker as it imports and opens the file: a
    WorkerError saying so, and the next epoch starts it again (the pool was closed
    for good, and the error blamed a missing __main__ guard)."""
    from fastforward.loader import workers

    handed = workers.send_handle
    killed: list[int] = []

    def killed_first(conn: Any, handle: int, pid: int) -> None:
        if not killed:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.005)
        handed(conn, handle, pid)

    monkeypatch.setattr(workers, "send_handle", killed_first)
    with train_loader(photos_file, 2, "process") as loader:
        with pytest.raises(WorkerError, match=r"worker process 0 \(pid \d+\) was killed by "
                                              r"signal 9 \(SIGKILL\): out of memory, or "
                                              r"killed while it started; the next epoch "
                                              r"starts it again$"):
            next(iter(loader))
        assert len(killed) == 1
        batches = [labels.tolist() for _, labels in loader]  # started again
    with train_loader(photos_file, 1, "thread") as reference:
        assert batches == [labels.tolist() for _, labels in reference]


KILL_SCRIPT = """
import os, sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_workers import train_loader, Jitter

if __name__ == "__main__":
    loader = train_loader(Path({path!r}), 2, "process")
    for _ in loader:
        pass
    print(" ".join(map(str, loader.workers.pids)), flush=True)
    running = False
    while True:
        for _ in loader:
            if not running:  # an epoch under way: its next batches are on the workers
                print("running", flush=True)
                running = True
            time.sleep(0.01)
"""


@pytest.mark.parametrize(("how", "group"), [
    (signal.SIGKILL, False), (signal.SIGTERM, False), (signal.SIGINT, False),
    (signal.SIGTERM, True), (signal.SIGHUP, True)],
    ids=["SIGKILL", "SIGTERM", "Ctrl-C", "SIGTERM-to-the-group", "SIGHUP-to-the-group"])
def test_workers_die_with_the_loader_process(tmp_path: Path, photos_file: Path,
                                             how: signal.Signals, group: bool) -> None:
    """Sent to the process group (`timeout`, a batch system, a closed terminal),
    SIGTERM and SIGHUP killed the fork server with the loader's process, before
    it removed the process's pymp-* folder, which stayed."""
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent),
                                         path=str(photos_file)))
    before = shm_entries()
    temporary = tmp_path / "tmp"  # its TMPDIR
    temporary.mkdir()
    # a new session: a signal to this process only, as the OOM killer sends it
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                               env={**os.environ, "TMPDIR": str(temporary)},
                               # not the source tree, which would shadow the installed package
                               # in the fork server (on its path: the working folder, first)
                               cwd=tmp_path)
    try:
        assert process.stdout is not None
        pids = [int(p) for p in process.stdout.readline().split()]
        assert len(pids) == 2, process.stderr.read() if process.stderr else ""
        # killed mid-epoch, not after a fixed delay a slow machine may not have used
        assert process.stdout.readline().strip() == "running", (
            process.stderr.read() if process.stderr else "")
        if group:  # the script, its workers and the fork server: the session's group
            os.killpg(process.pid, how)
        else:
            process.send_signal(how)
        process.wait(timeout=30)
        deadline = time.monotonic() + 30  # gone within seconds, however busy the machine
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in pids), "a worker outlived its loader"
        # nor is multiprocessing's folder for the fork server's socket (pymp-*) left,
        # which a killed process cannot remove: the fork server does as it exits
        while any(temporary.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(temporary.iterdir()) == []
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)  # closes the pipes
    assert shm_entries() <= before


def test_the_fork_server_imports_the_main_module_last_and_starts_with_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``forkserver_preload`` keeps the union of what the writer and the loader ask
    for, with the module that imports the main module last, in place of
    "__main__", and starts the server with what that module needs in the
    environment, for the start only; a running server is left alone, and a list
    without "__main__" gets no such module."""
    from multiprocessing import forkserver, spawn
    from types import SimpleNamespace

    from fastforward import utils
    from fastforward._forkserver_main import ENVIRONMENT

    starts: list[dict[str, Any]] = []

    def server(preload: list[str]) -> Any:
        server = forkserver.ForkServer()
        server.set_forkserver_preload(preload)

        def ensure_running() -> None:
            starts.append(json.loads(os.environ[ENVIRONMENT]))
            server._forkserver_pid = os.getpid()  # type: ignore[attr-defined]  # "running"

        monkeypatch.setattr(server, "ensure_running", ensure_running)
        monkeypatch.setattr(forkserver, "_forkserver", server)
        return SimpleNamespace(set_forkserver_preload=server.set_forkserver_preload)

    ctx = server(["__main__"])
    utils.forkserver_preload(ctx, ["fastforward.writer"])
    assert forkserver._forkserver._preload_modules == [  # type: ignore[attr-defined]
        "fastforward.writer", "fastforward._forkserver_main"]
    assert len(starts) == 1
    assert starts[0]["sys_path"] == spawn.get_preparation_data("x")["sys_path"]
    assert "init_main_from_name" in starts[0] or "init_main_from_path" in starts[0]
    assert ENVIRONMENT not in os.environ
    utils.forkserver_preload(ctx, ["__main__", "fastforward.loader.workers"])
    assert forkserver._forkserver._preload_modules == [  # type: ignore[attr-defined]
        "fastforward.writer", "fastforward.loader.workers", "fastforward._forkserver_main"]
    assert len(starts) == 1  # it runs

    utils.forkserver_preload(server(["mine"]), ["fastforward.writer"])
    assert forkserver._forkserver._preload_modules == [  # type: ignore[attr-defined]
        "mine", "fastforward.writer"]
    assert len(starts) == 1


@pytest.mark.parametrize("case", ["fork server, parent gone", "parent alive",
                                  "a process forked from the fork server", "not a fork server",
                                  "a worker that imported fastforward itself"])
def test_only_a_fork_server_whose_parent_is_gone_removes_its_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """What a fork server does at its exit (``utils._fork_server_outlives_its_parent``),
    here with its state set by hand: the parent's ``pymp-*`` folder goes only where
    this process is the fork server (it knows its socket and no server pid), imported
    the module itself (a worker, or a process a worker forks, may exit while the
    parent lives) and has lost the parent that started it."""
    from multiprocessing import forkserver

    from fastforward import utils

    folder = tmp_path / "pymp-test"
    folder.mkdir()
    socket_path = folder / "listener-test"
    socket_path.write_bytes(b"")
    server = forkserver._forkserver
    monkeypatch.setattr(server, "_forkserver_address",
                        None if case == "not a fork server" else str(socket_path))
    monkeypatch.setattr(server, "_forkserver_pid", None)
    monkeypatch.setattr(utils, "_IMPORTED_IN", os.getpid() + (
        1 if case == "a process forked from the fork server" else 0))
    monkeypatch.setattr(utils, "_PARENT", os.getppid() + (0 if case == "parent alive" else 1))
    if case == "a worker that imported fastforward itself":  # its parent, the server, alive:
        # (Python 3.13's workers run their exit functions) it waited 2 s for the parent
        # to go, at each worker's exit
        import multiprocessing

        monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
        monkeypatch.setattr(utils, "_orphaned", lambda wait=2.0: pytest.fail("waited"))
    else:
        monkeypatch.setattr(utils, "_orphaned", functools.partial(utils._orphaned, wait=0.05))
    utils._fork_server_outlives_its_parent()
    assert folder.exists() == (case != "fork server, parent gone")


def test_a_fork_server_waits_for_the_kernel_to_take_its_parent_away(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's pipe reads end of file once the dying parent's files are closed,
    which is before the kernel gives the server another parent: seeing its parent
    still there, it left the folder (1 SIGTERM to the process group in 3)."""
    from fastforward import utils

    parents = iter([utils._PARENT] * 5)
    monkeypatch.setattr(os, "getppid", lambda: next(parents, 1))  # taken away at last
    assert utils._orphaned(wait=5.0)
    monkeypatch.setattr(os, "getppid", lambda: utils._PARENT)  # a parent that lives on
    began = time.monotonic()
    assert not utils._orphaned(wait=0.1)
    assert time.monotonic() - began >= 0.1


# -- anything an operation raises reaches next() ------------------------------------


ERRORS = [StopIteration("stray next()"), concurrent.futures.CancelledError("cancelled"),
          asyncio.CancelledError("asyncio cancelled"), GeneratorExit("gone"),
          KeyboardInterrupt("interrupted"), SystemExit(3), ValueError("plain")]


class Custom(BaseException):
    """A BaseException of the user's own."""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("error", [*ERRORS, Custom("mine")], ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("where", ["batch", "range-thread"])
def test_any_exception_reaches_next_after_the_batches_before_it(
        labels_file: Path, photos_file: Path, error: BaseException, where: str) -> None:
    if where == "batch":
        loader = Loader(labels_file, 10, num_workers=2, pipelines={
            "label": [IntDecoder(), RaiseInBatch(3, error)]})
        expected_batches = 3
    else:
        order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
        loader = train_loader(photos_file, 2, "thread",
                              extra=[RaiseAt(int(order[27]), error)])
        expected_batches = 3
    got: list = []
    wrapped = isinstance(error, (StopIteration, SystemExit))  # they would end the loop, or
    expected = RuntimeError if wrapped else type(error)      # the program, without a word
    with loader, pytest.raises(expected) as info:
        got.extend(loader)
    assert len(got) == expected_batches
    if isinstance(error, StopIteration):
        assert isinstance(info.value.__cause__, StopIteration)
        assert "StopIteration" in str(info.value)
    if isinstance(error, SystemExit):
        assert isinstance(info.value.__cause__, SystemExit)
        assert str(info.value).endswith(": an operation called sys.exit(3)")  # located
    assert not [t for t in _threads() if t.startswith("fastforward")]


@pytest.mark.parametrize("error", [StopIteration("stray"), KeyboardInterrupt("ki"),
                                   asyncio.CancelledError("c"), SystemExit(4)],
                         ids=lambda e: type(e).__name__)
def test_any_exception_in_a_worker_process_reaches_next(photos_file: Path,
                                                        error: BaseException) -> None:
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    wrapped = isinstance(error, (StopIteration, SystemExit))
    expected = RuntimeError if wrapped else type(error)
    got: list = []
    with train_loader(photos_file, 2, "process",
                      extra=[RaiseAt(int(order[27]), error)]) as loader, \
            pytest.raises(expected) as info:
        got.extend(loader)
    assert len(got) == 3
    raised = info.value.__cause__ if wrapped else info.value
    told = "\n".join([str(info.value), *getattr(raised, "__notes__", ()),
                      *getattr(info.value, "__notes__", ())])
    assert f"sample {int(order[27])}" in told  # located, whatever it is
    assert "RaiseAt" in told
    if isinstance(error, SystemExit):  # sys.exit(4) in a worker: the program goes on
        assert isinstance(raised, SystemExit)
        assert raised.code == 4
        assert str(info.value).endswith("RaiseAt: sample "
                                        f"{int(order[27])}: an operation called sys.exit(4)")


def _threads() -> list[str]:
    import threading

    deadline = time.monotonic() + 30  # close() joins them: this only spares a busy machine
    while time.monotonic() < deadline:
        names = [t.name for t in threading.enumerate()]
        if not any(n.startswith("fastforward") for n in names):
            return names
        time.sleep(0.01)
    return [t.name for t in threading.enumerate()]


# -- decoders and operations belong to the user: each loader copies them ----------------


def test_one_decoder_instance_serves_several_loaders(photos_file: Path) -> None:
    decoder = RandomResizedCropRGBImageDecoder((24, 24))
    flip = RandomHorizontalFlip()
    make = lambda: Loader(photos_file, 8, seed=1, order=OrderOption.RANDOM,  # noqa: E731
                          pipelines={"image": [decoder, flip], "label": None})
    first, second = make(), make()
    with first, second:
        a = np.concatenate([i for (i,) in first])
        b = np.concatenate([i for (i,) in second])
        np.testing.assert_array_equal(a, b)
        assert decoder.metadata is None
        assert decoder.field_name == ""
        decoder.output_size = (16, 16)  # progressive resizing reaches both, next epoch
        assert next(iter(first))[0].shape == (8, 16, 16, 3)
        assert next(iter(second))[0].shape == (8, 16, 16, 3)


def test_decoders_deep_copy_and_pickle(photos_file: Path) -> None:
    decoder = RandomResizedCropRGBImageDecoder((24, 24), scale=(0.5, 1.0))
    with Loader(photos_file, 8, pipelines={"image": [decoder], "label": None}) as loader:
        bound = loader.pipelines[0].decoder
        next(iter(loader))  # scratch allocated, metadata bound
        for clone in (copy.deepcopy(bound), pickle.loads(pickle.dumps(bound)),
                      copy.deepcopy(decoder), pickle.loads(pickle.dumps(decoder))):
            assert clone.output_size == (24, 24)
            assert clone.scale == (0.5, 1.0)
            assert clone.metadata is None  # the binding is the loader's, not copied
    simple = SimpleRGBImageDecoder()
    assert pickle.loads(pickle.dumps(simple)).fastdct is True


def test_stats_say_how_long_the_loop_waited(labels_file: Path) -> None:
    with Loader(labels_file, 10, num_workers=1, pipelines={"label": [IntDecoder()]}) as loader:
        start = time.perf_counter()
        for _ in loader:
            time.sleep(0.002)
        epoch = time.perf_counter() - start
        stats = loader.stats()
        assert stats.batches == 20
        assert stats.first_batch_seconds is not None
        # timed within the epoch: a bound that holds however slow the machine is
        assert 0 < stats.first_batch_seconds < epoch
        assert stats.consumer_wait_seconds >= 0
        assert stats.producer_wait_seconds > 0
        for _ in loader:
            pass
        assert loader.stats().batches == 40


def test_distributed_ranks_with_process_workers(photos_file: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import fastforward.loader.loader as loader_module

    labels = []
    for rank in range(2):  # ranks simulated in one process, as in test_distributed.py
        monkeypatch.setattr(loader_module, "_distributed_context", lambda r=rank: (r, 2))
        (images, got), = epochs(train_loader(photos_file, 2, "process", distributed=True,
                                             drop_last=False), 1)
        (want_images, want), = epochs(train_loader(photos_file, 1, "thread", distributed=True,
                                                   drop_last=False), 1)
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(got, want)
        labels.append(set(got.ravel().tolist()))
    assert not labels[0] & labels[1]
    assert labels[0] | labels[1] == set(range(48))


class Marker(Operation):
    """Follows the image's geometry: writes each sample's mapped centre of the source."""

    per_sample = True
    follows = "image"

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        return State(shape=(2,), dtype=np.dtype("f8")), AllocationQuery((2,), np.dtype("f8"))

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        from fastforward.pipeline.geometry import map_points

        g = context.geometry["image"][position]
        oy, ox = map_points(g, g["height"] / 2, g["width"] / 2)
        destination[:] = (oy, ox)
        return destination


@pytest.mark.parametrize(("workers", "kind"), [(1, "thread"), (2, "thread"), (2, "process")])
def test_followers_see_the_geometry_the_image_decoder_decided(photos_file: Path, workers: int,
                                                              kind: str) -> None:
    from fastforward.pipeline import PipelineSpec

    decoder = RandomResizedCropRGBImageDecoder((32, 32))
    with Loader(photos_file, 8, num_workers=workers, worker_type=kind, seed=4,
                order=OrderOption.RANDOM, pipelines={
                    "image": [decoder, RandomHorizontalFlip()],
                    "label": [IntDecoder()],
                    "centre": PipelineSpec("label", IntDecoder(), [Marker()])}) as loader:
        assert loader.pipelines[-1].follows == {"image": "image/geometry"}
        out = [tuple(o.copy() for o in batch) for batch in loader]
    reference = Loader(photos_file, 8, seed=4, order=OrderOption.RANDOM, pipelines={
        "image": [RandomResizedCropRGBImageDecoder((32, 32)), RandomHorizontalFlip()],
        "label": None})
    plan_decoder = reference.pipelines[0].decoder
    from fastforward.pipeline import BatchContext

    for k, (_, labels, centres) in enumerate(out):
        indices = np.asarray(reference._batches(0, [])[k])
        np.testing.assert_array_equal(labels.ravel(), indices)
        context = BatchContext(indices, 0, 4, reference.pipelines[0].decoder_stream)
        rows = plan_decoder.metadata[indices]
        crops = plan_decoder.crops(rows["height"].astype(np.int64),
                                   rows["width"].astype(np.int64),
                                   plan_decoder.uniforms(context))
        flips = plan_decoder.flips(context, 0, len(indices))
        for j in range(len(indices)):
            y, x, h, w = crops[j]
            oy = (rows["height"][j] / 2 - y) * 32 / h
            ox = (rows["width"][j] / 2 - x) * 32 / w
            if flips[j]:
                ox = 32 - ox
            np.testing.assert_allclose(centres[j], (oy, ox))
    reference.close()


class Transposed(Operation):
    """Returns its buffer transposed (square images): the same memory, other strides."""

    per_sample = False
    sample_independent = True

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)

    def apply(self, batch, destination, context):  # type: ignore[no-untyped-def]
        destination[:] = batch
        return destination.transpose(0, 2, 1, 3)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_result_that_is_another_view_of_its_buffer_survives_stage_1(
        photos_file: Path, kind: str) -> None:
    loader = train_loader(photos_file, 2, kind, extra=[Transposed()])
    assert loader.pipelines[0].split == 1  # Transposed runs per range (the flip is fused)
    got = epochs(loader, 1)[0][0]
    plain = epochs(train_loader(photos_file, 1, "thread", extra=[]), 1)[0][0]
    np.testing.assert_array_equal(got, plain.transpose(0, 2, 1, 3))


def test_torch_operations_run_on_the_whole_batch(photos_file: Path) -> None:
    torch = pytest.importorskip("torch")
    from fastforward.transforms import Cutout, ToTensor, ToTorchImage

    ops = [ToTensor(), ToTorchImage(), Cutout(8)]
    with train_loader(photos_file, 2, "thread", extra=ops) as loader:
        assert loader.pipelines[0].split == 0  # nothing after ToTensor runs per range
        (images, _) = next(iter(loader))
        assert images.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MAP_POPULATE is Linux's")
def test_a_worker_maps_a_slot_whole_so_writing_it_takes_no_page_faults() -> None:
    """A worker writes a different part of each slot from batch to batch: were its
    mapping faulted in page by page, batches long after the warm-up would pay."""
    import resource

    from fastforward.loader.workers import _MappedSlot
    from fastforward.ring import Segment

    pages = 2048
    segment = Segment(pages * 4096)
    segment.whole[::4096] = 1  # the loader's process has the pages (as after a warm-up)
    shape = (pages, 4096)
    mapped = _MappedSlot(os.dup(segment.fd), segment.nbytes, {"x": [(0, shape, np.uint8)]})
    buffer = mapped.get("x")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer[:, 0] = 7  # one byte of every page
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < pages // 8, f"{faults} page faults writing {pages} pages"
    assert (segment.whole[::4096] == 7).all()  # the same memory


# -- faults the process workers must survive -------------------------------------------


class StuckAt(Operation):
    """At sample *index* in epoch *epoch*, writes its process's id to *marker* and
    never returns (an operation stuck in a loop, or a worker stopped), or returns
    after *seconds*."""

    per_sample = True

    def __init__(self, index: int, marker: str, epoch: int = 0,
                 seconds: float = 3600) -> None:
        super().__init__()
        self.index = index
        self.marker = marker
        self.epoch = epoch
        self.seconds = seconds

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        if int(context.indices[position]) == self.index and context.epoch == self.epoch:
            partial = Path(f"{self.marker}.{os.getpid()}")
            partial.write_text(str(os.getpid()))
            partial.rename(self.marker)  # whole when it appears
            time.sleep(self.seconds)
        return sample


class WaitAt(Operation):
    """At sample *index*, waits until the file *go* exists (a slow operation the
    test lets go of)."""

    per_sample = True

    def __init__(self, index: int, go: str) -> None:
        super().__init__()
        self.index = index
        self.go = go

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        if int(context.indices[position]) == self.index:
            while not os.path.exists(self.go):
                time.sleep(0.01)
        return sample


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_a_timeout_turns_a_stuck_batch_into_an_error(tmp_path: Path, photos_file: Path,
                                                     worker_type: str) -> None:
    """Loader(timeout=...): a batch that does not come in time is a TimeoutError
    naming the file, epoch and batch; the epoch stays open (a slow batch still
    comes), and leaving it kills process workers stuck in it."""
    expected = epochs(train_loader(photos_file, 1, "thread"), 1)[0][1]
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    go = tmp_path / "go"
    slow = WaitAt(int(order[8 * 2 + 3]), str(go))  # in batch 2
    with train_loader(photos_file, 2, worker_type, extra=[slow], timeout=0.5) as loader:
        iterator = iter(loader)
        labels: list[np.ndarray] = []
        late: list[tuple[float, str]] = []
        while True:  # the slow batch comes after all, and the rest after it
            started = time.perf_counter()
            try:
                labels.append(next(iterator)[1].copy())
            except TimeoutError as exc:
                late.append((time.perf_counter() - started, str(exc)))
                go.touch()  # the slow operation goes on
            except StopIteration:
                break
    # the batch of the slow sample (on threads, Python operations run one at a
    # time, under the global generators' lock: it may hold up batch 0 or 1 instead;
    # a slow start may too)
    assert len(late) == 1
    assert re.match(rf"{re.escape(str(photos_file))}: epoch 0, batch [012]: no batch came "
                    r"in 0\.5 s \(Loader\(timeout=0\.5\)\)", late[0][1])
    assert late[0][0] < 1.4
    np.testing.assert_array_equal(np.concatenate(labels), expected)
    if worker_type == "thread":
        return
    stuck = StuckAt(int(order[8 * 2 + 3]), str(tmp_path / "stuck"))  # never returns
    # (the range of another batch may be queued behind the stuck one, on the same
    # worker: even batch 0 may not come)
    loader = train_loader(photos_file, 2, worker_type, extra=[stuck], timeout=1)
    iterator = iter(loader)  # (the workers start)
    pids = loader.workers.pids
    assert len(pids) == 2
    marker = Path(stuck.marker)
    deadline = time.monotonic() + 60
    while not marker.exists():  # the timeout counts from next(): a slow start (a busy
        assert time.monotonic() < deadline  # machine) timed batch 0 out before
        time.sleep(0.01)  # batch 2's range had begun, and the message could not name it
    with pytest.raises(TimeoutError, match=r"batch [012]: .*worker processes") as info:
        for _ in iterator:
            pass
    # it says which worker runs which range, at which sample, and for how long:
    # batch 2's stuck one (the batch that timed out may be another, queued behind it)
    rows = rf"batch 2 \(samples [^)]*\), rows \d+:\d+, at sample {stuck.index} for \d+\.\d s"
    assert re.search(rf"worker processes \d+, \d+: .*pid \d+ has run {rows}", str(info.value))
    assert str(info.value).count(str(photos_file)) == 1
    started = time.perf_counter()
    loader.close()  # the worker stuck in batch 2 is killed after the grace period
    assert time.perf_counter() - started < 10
    assert not [pid for pid in pids if _alive(pid)]


def test_a_timeout_names_the_thread_holding_the_global_generators(tmp_path: Path,
                                                                  photos_file: Path) -> None:
    """On threads, per-sample operations that keep the GIL take turns (the global
    generators' lock): one stuck in another loader held a healthy loader up, whose
    BatchTimeout blamed an operation of its own. It names the thread holding the lock."""
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    go = tmp_path / "go"
    stuck = train_loader(photos_file, 2, "thread", extra=[WaitAt(int(order[3]), str(go))],
                         timeout=0.5)
    healthy = train_loader(photos_file, 2, "thread", timeout=0.5)
    with stuck, healthy:
        waiting = iter(stuck)
        with pytest.raises(TimeoutError):
            next(waiting)
        held_up = iter(healthy)
        with pytest.raises(TimeoutError, match=r"; thread fastforward-\S+ has held the global "
                                               r"generators' lock for \d+\.\d s \(per-sample "
                                               r"Python operations run one at a time"):
            next(held_up)
        go.touch()
        assert next(waiting)[0].shape == (8, 32, 32, 3)
        assert len(list(held_up)) == 6  # (the epoch stays open)


@pytest.mark.parametrize("timeout", [0, -1, True, float("nan")])
def test_a_timeout_is_a_positive_number_of_seconds(photos_file: Path, timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout must be a number of seconds above 0"):
        train_loader(photos_file, 1, "thread", timeout=timeout)


@pytest.mark.parametrize("timeout", [None, 30, float("inf"), 1e12])
def test_an_operations_own_timeout_error_is_not_the_loaders(photos_file: Path,
                                                            timeout: float | None) -> None:
    """A TimeoutError an operation raised (a remote service's) was taken for the
    loader's own: 'no batch came in time', the epoch ended behind it. An infinite
    or huge timeout overflowed the wait (OverflowError), ending the epoch."""
    from fastforward.errors import BatchTimeout

    with train_loader(photos_file, 1, "thread", timeout=timeout,
                      extra=[RaiseAt(20, TimeoutError("the label service timed out"))]) as loader:
        assert loader.timeout == (None if timeout in (None, float("inf")) else timeout)
        with pytest.raises(TimeoutError, match=r"sample 20.*the label service timed out") as info:
            for _ in loader:
                pass
    assert not isinstance(info.value, BatchTimeout)


def test_a_timeout_bounds_the_wait_for_another_threads_next(photos_file: Path) -> None:
    """Threads sharing an iterator wait for each other's next(): within the timeout."""
    from fastforward.errors import BatchTimeout

    with train_loader(photos_file, 1, "thread", timeout=0.3) as loader:
        iterator = iter(loader)
        next(iterator)
        iterator._handing.acquire()  # another thread's next(), stuck
        try:
            started = time.perf_counter()
            with pytest.raises(BatchTimeout, match=r"batch 1: another thread's next\(\) "
                                                   r"held the epoch in 0\.3 s"):
                next(iterator)
            assert time.perf_counter() - started < 1
        finally:
            iterator._handing.release()
        assert len(list(iterator)) == len(loader) - 1  # nothing lost


def test_two_threads_start_epochs_of_one_loader_at_once(photos_file: Path) -> None:
    """Each started a pool of its own (one left running past close()), a worker one
    started could miss the other's plan (a bare KeyError), and both could read the
    same epoch number (both ran epoch 0)."""
    expected = epochs(train_loader(photos_file, 1, "thread"), 2)
    for _ in range(3):
        loader = train_loader(photos_file, 2, "process")
        barrier = threading.Barrier(2)
        got: dict[int, Any] = {}

        def run(k: int, loader: Loader = loader, barrier: threading.Barrier = barrier,
                got: dict[int, Any] = got) -> None:
            barrier.wait()
            try:
                got[k] = np.concatenate([labels.copy() for _, labels in loader])
            except BaseException as exc:  # reported below
                got[k] = exc

        threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        pids = loader.workers.pids
        started = loader.workers.started
        loader.close()
        assert started == 2
        assert not [pid for pid in pids if _alive(pid)]
        for value in got.values():
            assert not isinstance(value, BaseException), value
        # the two epochs, 0 and 1, in whichever thread opened each
        assert sorted(v.tolist() for v in got.values()) == sorted(
            e[1].tolist() for e in expected)


def test_a_second_close_waits_for_the_first(tmp_path: Path, photos_file: Path) -> None:
    """close() from two threads: the second returned at once, while the first still
    waited out a stuck worker's grace, its workers still running."""
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    marker = tmp_path / "stuck"
    loader = train_loader(photos_file, 2, "process",
                          extra=[StuckAt(int(order[8 * 2 + 3]), str(marker))])
    iterator = iter(loader)
    wait_for(marker)
    pids = loader.workers.pids
    first = threading.Thread(target=loader.close)
    first.start()
    time.sleep(0.2)
    loader.close()  # the second, while the first waits out the grace period
    assert not [pid for pid in pids if _alive(pid)]
    first.join(timeout=60)
    assert not first.is_alive()
    del iterator


@pytest.mark.parametrize("where", ["before the workers start", "as they are handed the file"])
def test_a_close_while_the_first_epoch_starts(photos_file: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              where: str) -> None:
    """close() from another thread while iter() started the workers (1-1.7 s from
    the fork server): the loop got the reader's own 'the reader is closed'
    (ValueError) or the pool's complaint, not that the loader was closed."""
    loader = train_loader(photos_file, 2, "process")
    workers = loader.workers
    method = "_ensure_started" if where == "before the workers start" else "_hand_file"
    real = getattr(workers, method)

    def closed_meanwhile(*args: object) -> None:
        closer = threading.Thread(target=loader.close)
        closer.start()
        closer.join(timeout=60)
        real(*args)

    monkeypatch.setattr(workers, method, closed_meanwhile)
    with pytest.raises(RuntimeError, match=r"the loader is closed \(it was closed while "
                                           r"this epoch was starting\)"):
        iter(loader)
    assert workers.pids == []


class RebuiltOnlyElsewhere(Exception):
    """Pickles and unpickles in a worker, but cannot be made in the process whose
    pid is in $FASTFORWARD_TEST_PARENT (the loader's)."""

    def __new__(cls, *args):  # type: ignore[no-untyped-def]
        if os.environ.get("FASTFORWARD_TEST_PARENT") == str(os.getpid()):
            raise RuntimeError("cannot be rebuilt in this process")
        return super().__new__(cls, *args)


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_an_epoch_ended_early_kills_a_worker_stuck_in_an_operation(tmp_path: Path,
                                                                    photos_file: Path) -> None:
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    marker = tmp_path / "stuck"
    expected = epochs(train_loader(photos_file, 1, "thread"), 2)[1]
    with train_loader(photos_file, 2, "process",
                      extra=[Jitter(), StuckAt(int(order[8 * 2 + 3]), str(marker))]) as loader:
        # batches 0-2 start at once: a range of batch 2 sticks in one worker (and
        # whatever that worker was sent after it, of any batch, waits behind it)
        iterator = iter(loader)
        wait_for(marker)
        stuck = int(marker.read_text())
        assert stuck in loader.workers.pids
        start = time.monotonic()
        iterator.close()  # as leaving the loop does: waits the grace period, kills it
        assert time.monotonic() - start < 30
        assert stuck not in loader.workers.pids
        assert not _alive(stuck)
        # the next epoch replaces it, and is the epoch it should be
        images, labels = (np.concatenate(parts) for parts in
                          zip(*[(i.copy(), b.copy()) for i, b in loader], strict=True))
        np.testing.assert_array_equal(labels, expected[1])
        np.testing.assert_array_equal(images, expected[0])
        assert loader.workers.started == 3
    assert not [t for t in _threads() if t.startswith("fastforward")]


STUCK_SCRIPT = """
import os, sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_workers import train_loader, Jitter, StuckAt

if __name__ == "__main__":
    loader = train_loader(Path({path!r}), 2, "process",
                          extra=[Jitter(), StuckAt({index}, {marker!r})])
    print(os.getpid(), flush=True)
    for _ in loader:
        pass
"""


def _pids_of_workers(parent: int) -> set[int]:
    """The worker processes a loader in process *parent* started: the children of
    its fork server, which is the parent's child."""
    children: dict[int, set[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), set()).add(int(entry))
    return {worker for server in children.get(parent, ()) for worker in children.get(server, ())}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["Ctrl-C", "SIGKILL"])
def test_a_worker_stuck_in_an_operation_stops_the_loader_process_from_nothing(
        tmp_path: Path, photos_file: Path, how: signal.Signals) -> None:
    """Ctrl-C while next() waits on a stuck worker ends the program (after the grace
    period), and a SIGKILLed loader's workers go at once even while they are busy:
    their watchdog waits on the loader's process, not on their parent (the fork
    server)."""
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    marker = tmp_path / "stuck"
    script = tmp_path / "run.py"
    script.write_text(STUCK_SCRIPT.format(tests=str(Path(__file__).parent),
                                          path=str(photos_file), index=int(order[0]),
                                          marker=str(marker)))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert process.stdout is not None
        pid = int(process.stdout.readline())
        wait_for(marker)
        workers = {p for p in _pids_of_workers(pid) if _alive(p)}
        assert len(workers) == 2
        start = time.monotonic()
        process.send_signal(how)
        _, stderr = process.communicate(timeout=60)
        assert time.monotonic() - start < 30
        if how == signal.SIGINT:
            assert "KeyboardInterrupt" in stderr
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in workers), "a worker outlived its loader"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


EXIT_SCRIPT = """
import os, sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_workers import train_loader, Jitter, StuckAt

if __name__ == "__main__":
    loader = train_loader(Path({path!r}), 2, {kind!r},
                          extra=[Jitter(), StuckAt({index}, {marker!r})])
    it = iter(loader)  # step-based training: the iterator is alive when the script ends
    next(it)
    while not os.path.exists({marker!r}):
        time.sleep(0.01)
    print("done", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_stuck_worker_does_not_hold_up_the_exit_of_a_script_that_ends(
        tmp_path: Path, photos_file: Path, kind: str) -> None:
    """A script ends with an epoch's iterator alive and a later batch's range stuck
    in a worker: the batch thread waiting on that range was joined by the
    interpreter at exit before the loader's finalizer (which kills the stuck worker)
    could run, and the program never ended. On threads, the stuck thread itself (a
    ThreadPoolExecutor's) was joined, and the finalizer waited for it."""
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    marker = tmp_path / "stuck"
    script = tmp_path / "run.py"
    # batch 3, not 2: batches 0-2 start at once, and a range of batch 0 sent to the
    # worker after the stuck one would wait behind it (seen on CI, 2 runs in 6 on
    # Python 3.12); batch 3 starts only once batch 0 is done (batches_ahead=3)
    script.write_text(EXIT_SCRIPT.format(tests=str(Path(__file__).parent),
                                         path=str(photos_file), index=int(order[8 * 3 + 3]),
                                         marker=str(marker), kind=kind))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "done"
        workers = {p for p in _pids_of_workers(process.pid) if _alive(p)}
        assert len(workers) == (2 if kind == "process" else 0)
        start = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        assert time.monotonic() - start < 30, stderr
        assert process.returncode == 0, stderr
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in workers), "a worker outlived its loader"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


def test_an_epoch_ended_early_leaves_a_thread_stuck_in_an_operation_running(
        tmp_path: Path, photos_file: Path) -> None:
    """Threads cannot be stopped: leaving an epoch with one stuck in an operation
    waited for it for ever (after a BatchTimeout too, and Ctrl-C could not end the
    program). The epoch now gives up on it after 2 s; the stuck batch keeps its
    slot, and the loader's next epoch is the epoch it should be."""
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    expected = epochs(train_loader(photos_file, 1, "thread"), 2)[1]
    go = tmp_path / "go"
    with train_loader(photos_file, 2, "thread",
                      extra=[Jitter(), WaitAt(int(order[8 * 2 + 3]), str(go))],
                      timeout=0.5) as loader:
        iterator = iter(loader)
        with pytest.raises(TimeoutError):
            for _ in iterator:
                pass
        start = time.monotonic()
        iterator.close()  # as leaving the loop does
        # it waits STUCK_SECONDS for the stuck batch, then gives up on it (it waited
        # for ever: the upper bound only keeps a hang from hanging the suite)
        assert STUCK_SECONDS - 0.5 < time.monotonic() - start < 20
        assert iterator._engine.left_running
        go.touch()  # (the stuck operation holds the global generators' lock: let it go)
        images, labels = (np.concatenate(parts) for parts in
                          zip(*[(i.copy(), b.copy()) for i, b in loader], strict=True))
        np.testing.assert_array_equal(labels, expected[1])
        np.testing.assert_array_equal(images, expected[0])
    assert not [t for t in _threads() if t.startswith("fastforward")]


class StuckBatch(AtBatch):
    """At batch *at*, touches *marker* and waits until ``<marker>.go`` exists (an
    operation stuck in the loader's process, until the test lets it go)."""

    def __init__(self, at: int, marker: str) -> None:
        super().__init__(at)
        self.marker = marker

    def reached(self) -> None:
        Path(self.marker).touch()
        while not Path(f"{self.marker}.go").exists():
            time.sleep(0.01)


def test_an_epoch_ended_early_leaves_a_stuck_operation_of_the_loaders_process(
        tmp_path: Path, photos_file: Path) -> None:
    """With process workers, an operation stuck in the loader's own process (stage 2):
    the epoch killed the workers every 2 s for ever, waiting for a batch no worker
    held. It now gives up on it after 2 s."""
    marker = tmp_path / "stuck"
    loader = Loader(photos_file, 8, num_workers=2, worker_type="process",
                    pipelines={"image": [RandomResizedCropRGBImageDecoder((32, 32)), Jitter(),
                                         StuckBatch(1, str(marker))],
                               "label": [IntDecoder()]})
    with loader:
        iterator = iter(loader)
        next(iterator)
        wait_for(marker)
        start = time.monotonic()
        iterator.close()
        assert time.monotonic() - start < 20
        assert iterator._engine.left_running
        assert len(loader.workers.pids) == 2  # its workers ran nothing of it: kept
        Path(f"{marker}.go").touch()
    assert not [t for t in _threads() if t.startswith("fastforward")]


def test_a_worker_that_ends_its_process_is_named_so(photos_file: Path) -> None:
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    with train_loader(photos_file, 2, "process",
                      extra=[KillAt(int(order[20]), exit_code=3)]) as loader, \
            pytest.raises(WorkerError, match=r"exit code 3: an operation ended the process"):
        for _ in loader:
            pass


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux 5.3+)")
def test_a_worker_whose_socket_closed_is_given_a_moment_to_end() -> None:
    """A message sent to a worker whose socket had closed as it exited (exit code 3:
    ``test_a_worker_that_ends_its_process_is_named_so``) made the loader kill it
    and say "killed by the loader: a message to it failed" (seen once in CI, under
    load). ``_ends_by_itself`` gives it a second: killed only if it still runs then,
    or at once where the message failed in the loader's own process."""
    from types import SimpleNamespace

    from fastforward.loader.workers import _ends_by_itself

    for seconds, send_error, ends in ((0.2, None, True), (5, None, False),
                                      (0.2, "in the loader's process: Too many open files",
                                       False)):
        child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
        pidfd = os.pidfd_open(child.pid)
        try:
            worker = SimpleNamespace(pidfd=pidfd, send_error=send_error)
            started = time.monotonic()
            assert _ends_by_itself(worker, 1.0) is ends  # type: ignore[arg-type]
            took = time.monotonic() - started
            if send_error:  # no wait
                assert took < 0.5
            else:  # until it ends, or the second is over
                assert took < 3 if ends else 0.9 < took < 3
        finally:
            os.close(pidfd)
            child.kill()
            child.wait()


def test_kept_batches_cost_no_descriptors(photos_file: Path) -> None:
    """Each shared slot was mapped with Python's mmap, which keeps a duplicate of
    its descriptor: every batch a user kept held one, and at the common limit of
    1,024 the loader failed (blaming a worker)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    with train_loader(photos_file, 2, "process", batch_size=2) as loader:
        next(iter(loader))  # the workers and the ring exist
        before = descriptors()
        kept = [batch for _ in range(2) for batch in loader]  # 48 batches, none let go
        assert len(kept) == 48
        assert descriptors() - before < 8  # the ring's slots, not one per batch kept
        assert len({id(images) for images, _ in kept}) == 48


def test_a_closed_loader_holds_no_descriptors(photos_file: Path) -> None:
    """A closed loader kept (in a list of per-split loaders) held 6 descriptors with
    two workers (pidfds, multiprocessing's sentinels): about 170 closed loaders
    reached the common limit of 1,024."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    with train_loader(photos_file, 2, "process") as warm:  # the fork server started
        next(iter(warm))
    before = descriptors()
    kept = []
    for _ in range(3):
        loader = train_loader(photos_file, 2, "process")
        next(iter(loader))
        loader.close()
        kept.append(loader)
    assert descriptors() - before <= 1  # (the tables' map is not a descriptor)
    assert kept[0].workers.pids == []
    gc.collect()  # and no worker's crash file stays mapped
    assert "fastforward-worker" not in Path("/proc/self/maps").read_text()


def test_a_failed_start_holds_no_descriptors(photos_file: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started, then stopped because the start failed, kept their pidfds and
    sentinels while the exception (whose traceback refers to them) lived."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    from fastforward.loader import workers

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    def not_ready(self: Any, worker: Any, method: str) -> None:
        raise RuntimeError("not ready")

    with train_loader(photos_file, 2, "process") as warm:  # the fork server started
        next(iter(warm))
    monkeypatch.setattr(workers.ProcessWorkers, "_await_ready", not_ready)
    before = descriptors()
    failures = []
    for _ in range(3):
        loader = train_loader(photos_file, 2, "process")
        with pytest.raises(RuntimeError, match="not ready") as info:
            next(iter(loader))
        failures.append(info.value)  # kept, with their tracebacks
        loader.close()
    assert descriptors() - before <= 1


def test_a_slot_a_worker_cannot_map_fails_its_ranges_with_the_cause(
        photos_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker under an address-space limit (ulimit -v) could not map a new slot:
    it exited, and the loader said 'an operation ended the process'."""
    from fastforward.loader import workers

    loader_pid = os.getpid()
    real = workers.map_shared

    def limited(fd: int, nbytes: int, populate: bool = False) -> Any:
        if os.getpid() != loader_pid:  # in the (forked) workers only
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return real(fd, nbytes, populate)

    monkeypatch.setattr(workers, "map_shared", limited)
    with train_loader(photos_file, 2, "process", start_method="fork") as loader, \
            pytest.raises(OSError, match="Cannot allocate memory") as info:
        next(iter(loader))
    assert any("mapping a batch's slot" in note for note in info.value.__notes__)


def test_a_worker_that_fails_outside_a_range_says_how(
        photos_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastforward.loader import workers

    real = workers._serve

    def failing(conn: Any, message: tuple, *args: Any) -> None:
        if message[0] == "segment":
            raise RuntimeError("no way to take this slot")
        real(conn, message, *args)

    monkeypatch.setattr(workers, "_serve", failing)
    with train_loader(photos_file, 2, "process", start_method="fork") as loader, \
            pytest.raises(WorkerError, match=r"died \(it failed: RuntimeError: no way to take "
                                             r"this slot"):
        next(iter(loader))


def test_kept_batches_are_readable_at_exit(tmp_path: Path, photos_file: Path) -> None:
    """The exit hook runs the newest finalizers first: the shared slots were unmapped
    before anything else ran at exit, while the program's kept batches (read by an
    atexit handler) and the loader's threads still used them: a segmentation fault."""
    source = f"""
        import atexit
        kept = []
        atexit.register(lambda: print("at exit", int(kept[0][1].sum()), flush=True))
        from pathlib import Path
        from test_workers import train_loader

        if __name__ == "__main__":
            loader = train_loader(Path({str(photos_file)!r}), 2, "process")
            for batch in loader:  # left mid-epoch, its threads running
                kept.append(batch)
                if len(kept) == 2:
                    break
            print("in main", int(kept[0][1].sum()), flush=True)
            iterator = iter(loader)
            next(iterator)
    """
    for _ in range(2):
        result = run_script(tmp_path, "kept.py", source)
        assert result.returncode == 0, (result.returncode, result.stderr)
        lines = result.stdout.split("\n")
        assert lines[0].split()[-1] == lines[1].split()[-1], result.stdout


def test_a_forked_child_is_not_stopped_by_a_lock_held_at_the_fork(photos_file: Path) -> None:
    """iter() holds a lock while it opens an epoch: a child forked meanwhile waited
    for it for ever, never reaching 'create a new Loader here'."""
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork")
    with train_loader(photos_file, 2, "process") as loader:
        with loader._opening:  # as another thread opening an epoch holds it
            pid = os.fork()
            if pid == 0:  # the child
                code = 3
                try:
                    iter(loader)
                except RuntimeError as exc:
                    code = 0 if "create a new Loader here" in str(exc) else 4
                finally:
                    os._exit(code)
            deadline = time.monotonic() + 30
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            if done[0] == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the forked child waited for the lock")
        assert os.waitstatus_to_exitcode(done[1]) == 0


def test_workers_map_the_loaders_tables(photos_file: Path) -> None:
    """Each worker maps the loader's per-sample tables (one shared copy, about
    90 bytes a sample) instead of reading and building its own."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")

    def tables_mapped(pid: int) -> int:
        with open(f"/proc/{pid}/maps") as maps:
            return sum("fastforward-tables" in line for line in maps)

    with train_loader(photos_file, 2, "process") as loader:
        assert not loader.reader.metadata.flags.writeable
        for pipeline in loader.pipelines:  # bound to the shared tables, not the first ones
            metadata = getattr(pipeline.decoder, "metadata", None)
            if metadata is not None:
                assert np.shares_memory(metadata, loader.reader.metadata)
        images = np.concatenate([batch[0].copy() for batch in loader])
        mapped = [tables_mapped(pid) for pid in loader.workers.pids]
    assert mapped == [1, 1]
    assert np.array_equal(images, epochs(train_loader(photos_file, 1, "thread"), 1)[0][0])


def test_dropped_slots_are_unmapped_by_every_worker(photos_file: Path) -> None:
    """With batches smaller than the pool, some workers get no range of a batch: they
    must still hear that the loader let go of a slot, or they keep it mapped."""

    def slots_mapped(pid: int) -> int:
        with open(f"/proc/{pid}/maps") as maps:
            return sum("fastforward-slot" in line for line in maps)

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    loader = Loader(photos_file, 2, num_workers=4, worker_type="process", seed=1,
                    order=OrderOption.RANDOM,
                    pipelines={"image": [RandomResizedCropRGBImageDecoder((32, 32)), Jitter()],
                               "label": [IntDecoder()]})
    with loader:
        counts = []
        for _ in range(4):
            held: list = []
            for batch in loader:  # keeps the last 6 batches: the loader makes new slots
                held = [*held, batch][-6:]
            del held, batch
            gc.collect()
            next(iter(loader))  # one range: tells its worker what was dropped
            counts.append(max(slots_mapped(pid) for pid in loader.workers.pids))
        mine = slots_mapped(os.getpid())
    # each worker maps at most what the loader's process still maps (before the
    # fix, 11-14 of them after 4 epochs, growing each epoch, against 8 here)
    assert max(counts) <= mine, (counts, mine)


def test_an_error_that_cannot_be_rebuilt_in_the_loader_process_still_reaches_next(
        photos_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    error = RebuiltOnlyElsewhere("only elsewhere")  # made here before the refusal starts
    monkeypatch.setenv("FASTFORWARD_TEST_PARENT", str(os.getpid()))
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    with train_loader(photos_file, 2, "process",
                      extra=[RaiseAt(int(order[20]), error)]) as loader:
        with pytest.raises(Exception, match="only elsewhere") as info:
            for _ in loader:
                pass
        assert "could not be rebuilt in the loader's process" in str(info.value)
        assert "cannot be rebuilt in this process" in str(info.value)
        assert f"sample {int(order[20])}" in str(info.value)
        # the workers still answer: the next epoch meets the same error, not a hang
        with pytest.raises(Exception, match="only elsewhere"):
            for _ in loader:
                pass


def test_a_worker_killed_between_epochs_is_replaced_before_the_next(photos_file: Path) -> None:
    expected = epochs(train_loader(photos_file, 1, "thread"), 2)
    with train_loader(photos_file, 2, "process") as loader:
        first = [(i.copy(), b.copy()) for i, b in loader]
        victim = loader.workers.pids[0]
        os.kill(victim, signal.SIGKILL)  # the next epoch starts at once: it may be
        # dying, dead, or gone, and not yet seen by the loader's reader thread
        second = [(i.copy(), b.copy()) for i, b in loader]
        assert victim not in loader.workers.pids
    for got, want in zip((first, second), expected, strict=True):
        np.testing.assert_array_equal(np.concatenate([b for _, b in got]), want[1])
        np.testing.assert_array_equal(np.concatenate([i for i, _ in got]), want[0])


# -- the file the loader opened ------------------------------------------------------


def write_flat(path: Path, value: int, count: int = 24) -> None:
    """*count* raw 12×16 images, sample i all ``value + i``, labelled i: a file
    told from another written with another *value* by its pixels alone."""
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(np.full((12, 16, 3), value + i, np.uint8), i) for i in range(count)])


def flat_loader(path: Path, worker_type: str, **kw) -> Loader:
    """Images decoded in the workers (a Python operation after the decoder)."""
    return Loader(path, 8, num_workers=2, worker_type=worker_type, order=OrderOption.RANDOM,
                  seed=3, pipelines={"image": [SimpleRGBImageDecoder(), Jitter()],
                                     "label": [IntDecoder()]}, **kw)


def change_file(path: Path, how: str) -> None:
    """Replace *path* by a new file renamed over it (``DatasetWriter`` writes so), or
    remove it."""
    if how == "replaced":
        write_flat(path, 100)
        with Reader(path) as reader:
            assert reader.read(0)[0].min() == 100
    else:
        path.unlink()


@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
@pytest.mark.parametrize("how", ["replaced", "removed"])
def test_workers_read_the_file_the_loader_opened_not_its_name(
        tmp_path: Path, how: str, start_method: str) -> None:
    """A file replaced by a rename over its name, or removed, after ``Loader()``:
    worker processes read the file the loader opened, as threads do (they used to
    open the name: the new file's pixels, or no file at all)."""
    path = tmp_path / "data.beton"
    write_flat(path, 10)
    want = epochs(flat_loader(path, "thread"))
    threads = flat_loader(path, "thread")
    processes = flat_loader(path, "process", start_method=start_method)
    change_file(path, how)
    got = epochs(processes)
    assert processes.workers.method_used == start_method
    for (images, labels), (thread_images, thread_labels), (want_images, want_labels) in zip(
            got, epochs(threads), want, strict=True):
        np.testing.assert_array_equal(thread_labels, want_labels)
        np.testing.assert_array_equal(thread_images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(images, want_images)


@pytest.mark.parametrize("how", ["replaced", "removed"])
@pytest.mark.parametrize("os_cache", [True, False], ids=["os_cache", "pread"])
def test_a_worker_replaced_after_the_file_changed_reads_the_file_the_loader_opened(
        tmp_path: Path, how: str, os_cache: bool) -> None:
    """The file replaced (or removed) mid-training, then a worker killed: the one
    started in its place at the next epoch reads the loader's file too, not the new
    one (a batch used to mix rows of the two files), as threads do."""
    path = tmp_path / "data.beton"
    write_flat(path, 10)
    want = epochs(flat_loader(path, "thread", os_cache=os_cache), 3)
    got = {}
    for kind in ("thread", "process"):
        write_flat(path, 10)
        with flat_loader(path, kind, os_cache=os_cache) as loader:
            first = [(i.copy(), b.copy()) for i, b in loader]
            change_file(path, how)
            if kind == "process":
                victim = loader.workers.pids[0]
                os.kill(victim, signal.SIGKILL)
            second = [(i.copy(), b.copy()) for i, b in loader]
            third = [(i.copy(), b.copy()) for i, b in loader]
            if kind == "process":
                assert victim not in loader.workers.pids
                assert loader.workers.started == 3
        got[kind] = [(np.concatenate([i for i, _ in e]), np.concatenate([b for _, b in e]))
                     for e in (first, second, third)]
    for kind, epochs_got in got.items():
        for (images, labels), (want_images, want_labels) in zip(epochs_got, want,
                                                                 strict=True):
            np.testing.assert_array_equal(labels, want_labels, err_msg=kind)
            np.testing.assert_array_equal(images, want_images, err_msg=kind)


def test_two_epochs_of_one_loader_at_once_with_process_workers(photos_file: Path) -> None:
    expected = epochs(train_loader(photos_file, 1, "thread"), 2)
    with train_loader(photos_file, 2, "process") as loader:
        one, two = iter(loader), iter(loader)
        got: tuple[list, list] = ([], [])
        for a, b in zip(one, two, strict=True):
            got[0].append(a[1].copy())
            got[1].append(b[1].copy())
    for mine, want in zip(got, expected, strict=True):
        np.testing.assert_array_equal(np.concatenate(mine), want[1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_loader_in_a_forked_child_says_so_and_leaves_the_parents_workers(
        photos_file: Path) -> None:
    import warnings

    with train_loader(photos_file, 2, "process") as loader:
        expected = [b.copy() for _, b in loader]
        read, write = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            try:
                try:
                    iter(loader)
                    message = "no error"
                except RuntimeError as exc:
                    message = str(exc)
                loader.close()
            finally:
                os.write(write, message.encode()[:4000])
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            message = pipe.read().decode()
        os.waitpid(child, 0)
        assert "forked child" in message
        assert "create a new Loader" in message
        # the child's close() let go of its copies only: the workers still serve us
        assert sum(len(b) for _, b in loader) == sum(len(b) for b in expected)


FORK_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_workers import train_loader

if __name__ == "__main__":
    loader = train_loader(Path({path!r}), 2, "process")
    expected = sum(len(labels) for _, labels in loader)
    iterator = iter(loader)
    got = len(next(iterator)[1])  # an epoch under way in this process
    child = os.fork()
    if child == 0:
        loader.close()  # the child's copies only: no grace wait, no kill, no message
        sys.exit(0)  # a normal exit: multiprocessing's exit hook runs in the child
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    got += sum(len(labels) for _, labels in iterator)
    assert got == expected, (got, expected)
    assert sum(len(labels) for _, labels in loader) == expected
    print("ok", flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_forked_child_that_closes_the_loader_and_exits_leaves_the_parents_epoch(
        tmp_path: Path, photos_file: Path) -> None:
    script = tmp_path / "fork.py"
    script.write_text(FORK_SCRIPT.format(tests=str(Path(__file__).parent),
                                         path=str(photos_file)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_an_epoch_ended_early_kills_a_worker_stopped_before_its_range(photos_file: Path) -> None:
    """A worker stopped while idle (SIGSTOP) never says it started the range it was
    sent: it is stuck all the same, and killed."""
    with train_loader(photos_file, 2, "process") as loader:
        for _ in loader:
            pass
        stopped = loader.workers.pids[0]
        os.kill(stopped, signal.SIGSTOP)
        try:
            iterator = iter(loader)
            deadline = time.monotonic() + 60
            while not loader.workers._workers[0].pending:  # a range was sent to it
                assert time.monotonic() < deadline
                time.sleep(0.01)
            start = time.monotonic()
            iterator.close()
            assert time.monotonic() - start < 30
            assert stopped not in loader.workers.pids
            assert sum(len(labels) for _, labels in loader) == 48  # replaced
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGKILL)


class PidOf(Operation):
    """Writes, per sample, the process that ran it; where *folder* holds a file named
    after that process, first sleeps *delay* seconds (a worker made slow)."""

    per_sample = True

    def __init__(self, folder: str, delay: float) -> None:
        super().__init__()
        self.folder = folder
        self.delay = delay

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        return State(shape=(1,), dtype=np.dtype("i8")), AllocationQuery((1,), np.dtype("i8"))

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        if os.path.exists(os.path.join(self.folder, str(os.getpid()))):
            time.sleep(self.delay)
        destination[0] = os.getpid()
        return destination


def test_a_slow_worker_process_takes_fewer_ranges(tmp_path: Path, images: list[np.ndarray]
                                                  ) -> None:
    """Ranges go to the worker that would finish them first: one made slow runs few
    of them (16-32 of 192 samples), where a range of every batch each would leave
    each batch waiting for it (96 of 192)."""
    path = tmp_path / "small.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", max_resolution=32)},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(images[i % len(images)],) for i in range(192)])
    marks = tmp_path / "slow"
    marks.mkdir()
    with Loader(path, 32, num_workers=2, worker_type="process", seed=0,
                order=OrderOption.RANDOM, pipelines={"image": [
                    RandomResizedCropRGBImageDecoder((16, 16)), PidOf(str(marks), 0.01)]}
                ) as loader:
        for _ in loader:
            pass
        slow, fast = loader.workers.pids
        (marks / str(slow)).touch()
        ran = np.concatenate([pids.ravel().copy() for (pids,) in loader])
    counts = {pid: int((ran == pid).sum()) for pid in (slow, fast)}
    assert counts[slow] + counts[fast] == len(ran) == 192
    assert counts[fast] >= 2 * counts[slow], counts


class LabelNoise(Operation):
    """Per sample, on a label: ``label * 1000`` plus a draw from its context, and
    the process that ran it."""

    per_sample = True

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        return State(shape=(2,), dtype=np.dtype("i8")), AllocationQuery((2,), np.dtype("i8"))

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        destination[0] = int(sample[0]) * 1000 + int(
            context.sample_rng(position).integers(0, 1000))
        destination[1] = os.getpid()
        return destination


def test_a_python_operation_after_a_label_decoder_runs_in_the_worker_processes(
        labels_file: Path) -> None:
    """A decoder that is one copy per batch (labels) joins stage 1 when a Python
    operation follows it: the operation runs per range in the worker processes
    (it ran in the loader's process), with the same draws as on threads."""
    def run(kind: str) -> tuple[np.ndarray, list[int]]:
        with Loader(labels_file, 16, num_workers=2, worker_type=kind, seed=3,
                    order=OrderOption.RANDOM,
                    pipelines={"label": [IntDecoder(), LabelNoise()]}) as loader:
            assert loader.workers.kind == kind
            assert loader.pipelines[0].split == 1
            out = np.concatenate([b.copy() for (b,) in loader])
            return out, loader.workers.pids if kind == "process" else []

    threads, _ = run("thread")
    processes, pids = run("process")
    np.testing.assert_array_equal(processes[:, 0], threads[:, 0])
    assert set(threads[:, 1]) == {os.getpid()}
    assert len(pids) == 2
    assert set(processes[:, 1]) == set(pids)
    with Loader(labels_file, 16, num_workers=2, pipelines={
            "label": [IntDecoder(), LabelNoise()]}) as auto:  # a label's alone: threads,
        assert auto.workers.kind == "thread"  # as before (processes would ask it to pickle)
        assert auto.pipelines[0].split == 1
    with Loader(labels_file, 16, num_workers=2, pipelines={"label": [IntDecoder()]}) as plain:
        assert plain.workers.kind == "thread"
        assert plain.pipelines[0].split == 0


class WholeBatchLabels(Decoder):
    """A decoder that is one call per batch and does not say its rows are the same
    whatever the range (``range_safe`` is False, as for FFCV-style ones)."""

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        return (State(jit_mode=True, shape=(1,), dtype=np.dtype("i8")),
                AllocationQuery((1,), np.dtype("i8")))

    def decode_range(self, lo, hi, destination, context):  # type: ignore[no-untyped-def]
        destination[lo:hi, 0] = self.metadata[context.indices[lo:hi]]


def test_only_range_safe_decoders_join_stage_1_for_python_operations(labels_file: Path
                                                                      ) -> None:
    for decoder, split in [(IntDecoder(), 1), (WholeBatchLabels(), 0)]:
        with Loader(labels_file, 16, num_workers=2, worker_type="process", pipelines={
                "label": [decoder, LabelNoise()]}) as loader:
            assert loader.pipelines[0].split == split
            labels = np.concatenate([b[:, 0].copy() // 1000 for (b,) in loader])
            np.testing.assert_array_equal(labels, np.arange(len(labels)))


WIDE = (1 << 16,)


class AsSigned(Operation):
    """Relabels uint8 rows as int8, a view: reads nothing (``reads_input`` False)."""

    reads_input = False
    sample_independent = True

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        return State(jit_mode=True, shape=WIDE, dtype=np.dtype("i1")), None

    def apply(self, batch, destination, context):  # type: ignore[no-untyped-def]
        return batch.view(np.int8)


def test_stage_1_waits_for_the_copies_it_reads(tmp_path: Path) -> None:
    """An operation that reads nothing, run per range after an array decoder: its
    rows are the decoder's, which the copy threads must not still be writing
    (236 of 384 rows were wrong when the copies were deferred)."""
    path = tmp_path / "arrays.beton"
    rows = [np.full(WIDE, 1 + i % 100, np.uint8) for i in range(128)]
    DatasetWriter(path, {"a": NDArrayField(np.dtype("u1"), WIDE)}, num_workers=1,
                  progress=False).from_indexed_dataset([(r,) for r in rows])
    with Loader(path, 64, num_workers=2, worker_type="thread", pipelines={
            "a": [NDArrayDecoder(), AsSigned()]}) as loader:
        assert loader.pipelines[0].split == 1
        for _ in range(3):
            for k, (a,) in enumerate(loader):
                want = np.stack(rows[64 * k : 64 * k + 64]).view(np.int8)
                np.testing.assert_array_equal(np.asarray(a), want)


# -- branches ----------------------------------------------------------------------


def _copied(batch: tuple) -> tuple[np.ndarray, ...]:
    """A batch's outputs as NumPy copies (tensors and arrays alike)."""
    return tuple(o.numpy().copy() if hasattr(o, "numpy") else np.array(o) for o in batch)


def test_a_branch_leaves_python_operations_in_the_worker_processes(photos_file: Path
                                                                   ) -> None:
    """A branch (``PipelineSpec(source=op)``) anywhere turned stage 1 off for every
    pipeline: a per-sample operation drawing from ``np.random`` before the branch's
    source then ran in the loader's process, where the global generators are the
    training loop's, and two runs with one seed differed. It runs per range in the
    worker processes again, seeded there per sample: the same batches run after run
    and whatever the number of workers."""
    torch = pytest.importorskip("torch")
    from fastforward.pipeline import PipelineSpec
    from fastforward.transforms import Convert, ToTensor

    def run(workers: int) -> list[tuple[np.ndarray, ...]]:
        to_tensor = ToTensor()
        with Loader(photos_file, 8, num_workers=workers, worker_type="process", seed=5,
                    order=OrderOption.RANDOM, pipelines={
                        "image": [RandomResizedCropRGBImageDecoder((32, 32)),
                                  RandomHorizontalFlip(), NumpyNoise(), to_tensor],
                        "label": [IntDecoder()],
                        "floats": PipelineSpec(to_tensor, transforms=[
                            Convert(torch.float32)])}) as loader:
            assert [p.split for p in loader.pipelines] == [1, 0, 0]  # NumpyNoise per range
            return [_copied(batch) for batch in loader]

    reference = run(1)
    for workers in (1, 2):
        got = run(workers)
        for batch, want in zip(got, reference, strict=True):
            for output, expected in zip(batch, want, strict=True):
                np.testing.assert_array_equal(output, expected)
    for images, _, floats in reference:
        np.testing.assert_array_equal(floats, images.astype(np.float32))


class GlobalLabelNoise(LabelNoise):
    """LabelNoise drawing from ``np.random`` instead of its context."""

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        destination[0] = int(sample[0]) * 1000 + np.random.randint(0, 1000)
        destination[1] = os.getpid()
        return destination


def test_a_pipeline_no_branch_reads_keeps_its_stage_1(photos_file: Path) -> None:
    """Beside an output branched from another's decoder, the pipelines no branch
    reads split as without the branch, and give the same batches: their Python
    operations run in the worker processes ('auto' chooses them), seeded per
    sample. The branched pipeline keeps its own stage 1 too: the branch reads its
    decoder's rows, which stay in the slot."""
    from fastforward.fields.decoders import CenterCropRGBImageDecoder
    from fastforward.pipeline import PipelineSpec

    def run(workers: int, branch: bool) -> tuple[list[tuple[np.ndarray, ...]], list[int]]:
        pipelines: dict[str, object] = {
            "image": [RandomResizedCropRGBImageDecoder((32, 32)), RandomHorizontalFlip(),
                      NumpyNoise()],
            "label": [IntDecoder(), GlobalLabelNoise()]}
        if branch:
            centre = CenterCropRGBImageDecoder((16, 16), 1.0)
            pipelines["centre"] = PipelineSpec("image", centre, [Returns()])
            pipelines["plain"] = PipelineSpec(centre)
        with Loader(photos_file, 8, num_workers=workers, seed=5, order=OrderOption.RANDOM,
                    pipelines=pipelines) as loader:
            assert loader.workers.kind == "process"
            assert [p.split for p in loader.pipelines] == [1, 1, 1, 0][: len(pipelines)]
            return [_copied(batch) for batch in loader], loader.workers.pids

    reference, _ = run(2, False)
    for workers in (1, 2, 2):
        got, pids = run(workers, True)
        for (images, labels, centre, plain), (want_images, want_labels) in zip(
                got, reference, strict=True):
            np.testing.assert_array_equal(images, want_images)
            np.testing.assert_array_equal(labels[:, 0], want_labels[:, 0])
            assert set(labels[:, 1]) <= set(pids)  # GlobalLabelNoise ran in the workers
            np.testing.assert_array_equal(centre, 255 - plain)


@pytest.mark.parametrize("read", ["Jitter", "Returns"])
def test_a_branch_reads_the_operation_that_ends_stage_1(photos_file: Path, read: str
                                                        ) -> None:
    """Stage 1 ends at the operation a branch reads, included: its result is stage
    1's (its own buffer, or one stage 1 copies it into), read from the slot; the
    operations after it run in stage 2. The same batches on threads and on any
    number of processes."""
    from fastforward.pipeline import PipelineSpec

    jitter, returns = Jitter(), Returns()
    source = {"Jitter": jitter, "Returns": returns}[read]
    ops = [jitter, returns] if read == "Jitter" else [returns, jitter]
    reference = None
    for workers, kind in [(3, "thread"), (1, "process"), (2, "process")]:
        with Loader(photos_file, 8, num_workers=workers, worker_type=kind, seed=5,
                    order=OrderOption.RANDOM, pipelines={
                        "image": [RandomResizedCropRGBImageDecoder((32, 32)),
                                  RandomHorizontalFlip(), *ops],
                        "label": [IntDecoder()],
                        "read": PipelineSpec(source)}) as loader:
            assert [p.split for p in loader.pipelines] == [1, 0, 0]
            got = [_copied(batch) for batch in loader]
        if reference is None:
            reference = got
        for batch, want in zip(got, reference, strict=True):
            for output, expected in zip(batch, want, strict=True):
                np.testing.assert_array_equal(output, expected)
    assert reference is not None
    plain = epochs(train_loader(photos_file, 1, "thread", extra=[]), 1)[0][0]
    branched = np.concatenate([b for _, _, b in reference])
    images = np.concatenate([i for i, _, _ in reference])
    if read == "Jitter":
        np.testing.assert_array_equal(images, 255 - branched)
    else:
        np.testing.assert_array_equal(branched, 255 - plain)


def test_a_branch_never_reads_rows_the_copy_threads_still_write(tmp_path: Path) -> None:
    """The copies of a decoder whose pipeline a branch reads are not deferred to the
    copy threads (the branch's operations read the rows before the hand-over); those
    of a pipeline no branch reads still are."""
    torch = pytest.importorskip("torch")
    from fastforward.pipeline import PipelineSpec
    from fastforward.transforms import Convert, ToTensor

    path = tmp_path / "arrays.beton"
    rows = [np.full(WIDE, 1 + i % 100, np.uint8) for i in range(128)]
    DatasetWriter(path, {"a": NDArrayField(np.dtype("u1"), WIDE)}, num_workers=1,
                  progress=False).from_indexed_dataset([(r,) for r in rows])
    to_tensor = ToTensor()
    with Loader(path, 64, num_workers=2, worker_type="thread", pipelines={
            "a": [NDArrayDecoder(), to_tensor],
            "wide": PipelineSpec(to_tensor, transforms=[Convert(torch.int16)]),
            "again": PipelineSpec("a", NDArrayDecoder(), [ToTensor()])}) as loader:
        assert [(p.name, p.defer_copies) for p in loader.pipelines if p.decoder] == [
            ("a", False), ("again", True)]
        for _ in range(3):
            for k, (a, wide, again) in enumerate(loader):
                want = np.stack(rows[64 * k : 64 * k + 64])
                np.testing.assert_array_equal(wide.numpy(), want.astype(np.int16))
                np.testing.assert_array_equal(a.numpy(), want)
                np.testing.assert_array_equal(again.numpy(), want)



class _Conn:
    """A worker's socket, as the dispatcher sees it: what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def send(self, message: tuple) -> None:
        self.sent.append(message)

    def send_bytes(self, blob: bytes) -> None:
        self.sent.append(pickle.loads(blob))


class _Slot:
    def describe(self) -> tuple[int, int, dict]:
        return 7, 0, {}


def test_the_dispatcher_waits_for_a_faster_worker_only_while_it_keeps_pace(
        labels_file: Path) -> None:
    """A range waits for the faster worker (both its ranges in hand) rather than go to
    a slower one with room; once the faster one's range runs late, the slower one
    takes it, without a reply to wake the dispatcher (it looks again by itself)."""
    from fastforward.loader import workers

    pool = workers.ProcessWorkers(2, Reader(labels_file), True)
    try:
        fast, slow = (workers._Worker(k, None, _Conn()) for k in range(2))  # type: ignore[arg-type]
        now = time.perf_counter()
        for worker, took in ((fast, 0.01), (slow, 0.2)):
            worker.segments.add(7)
            worker.range_seconds, worker.answered_at = took, now
        fast.pending, fast.running, fast.started_at = {101, 102}, 101, now
        pool._workers = [fast, slow]
        future = pool.submit(_Slot(), 1, b"job", 0, 8, "a range")
        assert pool._dispatch() == workers.RECHECK
        assert not slow.conn.sent
        fast.started_at = now - 1.0  # its range has run a second: late
        assert pool._dispatch() is None
        assert slow.conn.sent[-1][0] == "range"
        assert not future.done()
        assert not fast.conn.sent
    finally:
        os.close(pool._wake_r)
        os.close(pool._wake_w)


class _BrokenSlot:
    def describe(self) -> tuple[int, int, dict]:
        raise ValueError("this slot cannot be described")


def test_a_range_that_cannot_be_sent_fails_alone(labels_file: Path) -> None:
    """Sending a range that raises (not the socket: an OSError would mean the worker
    died) fails that range with the error, and leaves the worker room."""
    from fastforward.loader import workers

    pool = workers.ProcessWorkers(1, Reader(labels_file), True)
    try:
        worker = workers._Worker(0, None, _Conn())  # type: ignore[arg-type]
        pool._workers = [worker]
        future = pool.submit(_BrokenSlot(), 1, b"job", 0, 8, "a range")
        assert pool._dispatch() is None
        with pytest.raises(ValueError, match="cannot be described"):
            future.result(timeout=0)
        assert not worker.pending
        assert not worker.unreachable
    finally:
        os.close(pool._wake_r)
        os.close(pool._wake_w)


class _FailingConn(_Conn):
    def send(self, message: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")


class _StandInProcess:
    def __init__(self) -> None:
        self.pid: int | None = None
        self.sentinel, self._write = os.pipe()  # never readable: alive
        self.killed = False

    def kill(self) -> None:
        self.killed = True


def test_a_message_that_fails_in_the_loaders_process_says_so(labels_file: Path) -> None:
    """Out of descriptors in the loader's own process (sending a slot's takes one),
    the worker it was for is killed (a message half-sent) with that cause: it was
    blamed, 'a message to it failed', as if it had died."""
    from fastforward.loader import workers

    pool = workers.ProcessWorkers(1, Reader(labels_file), True)
    process = _StandInProcess()
    try:
        worker = workers._Worker(0, process, _FailingConn())  # type: ignore[arg-type]
        process.pid = os.getpid()  # alive, and no pidfd (opened above) to kill it through
        pool._workers = [worker]
        pool.submit(_Slot(), 1, b"job", 0, 8, "a range")
        pool._dispatch()
        assert worker.unreachable
        assert process.killed
        assert worker.why == ("killed by the loader: a message to it failed (in the loader's "
                              "process: Too many open files)")
    finally:
        for fd in (pool._wake_r, pool._wake_w, process.sentinel, process._write):
            os.close(fd)


class BareStop(Operation):
    """Raises a bare ``StopIteration`` (no message) in its third batch."""

    def declare_state_and_memory(self, previous_state):  # type: ignore[no-untyped-def]
        return previous_state, None

    def apply(self, batch, destination, context):  # type: ignore[no-untyped-def]
        if context.batch_index == 2:
            raise StopIteration
        return batch


def test_a_bare_stop_iteration_says_where_in_its_message(labels_file: Path) -> None:
    """Its location was a note only: ``str()`` of the error said nothing but
    'an operation raised StopIteration'."""
    with Loader(labels_file, 10, pipelines={"label": [IntDecoder(), BareStop()]}) as loader, \
            pytest.raises(RuntimeError) as info:
        list(loader)
    message = str(info.value)
    assert message.startswith(f"{labels_file}: batch 2 (samples ")
    assert message.endswith("pipeline 'label', BareStop: an operation raised StopIteration")
    assert isinstance(info.value.__cause__, StopIteration)


class Composed(Exception):
    """Its ``__init__`` composes the message: pickling would call it again with the
    (located) message as the code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"failure code {code}")
        self.code = code


class KeywordOnly(Exception):
    def __init__(self, *, what: str) -> None:
        super().__init__(f"bad {what}")
        self.what = what


def _json_error() -> BaseException:
    try:
        json.loads("{bad")
    except json.JSONDecodeError as exc:
        return exc
    raise AssertionError


MADE = {"composed": lambda: Composed(7), "keyword-only": lambda: KeywordOnly(what="thing"),
        "json": _json_error}


class RaiseMade(Operation):
    """Makes and raises ``MADE[kind]()`` when it meets sample *index* (the exception
    is made in the worker, never pickled with the plan)."""

    per_sample = True

    def __init__(self, index: int, kind: str) -> None:
        super().__init__()
        self.index, self.kind = index, kind

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        if int(context.indices[position]) == self.index:
            raise MADE[self.kind]()
        return sample


@pytest.mark.parametrize("kind", list(MADE))
def test_an_exception_that_pickling_would_change_arrives_as_on_threads(
        photos_file: Path, kind: str) -> None:
    """Before, a process worker's ``Composed`` said 'failure code <file>: batch …:
    failure code 7', and a ``JSONDecodeError`` lost its location and notes (its own
    ``__reduce__``); ``KeywordOnly`` became a ``FastForwardError``."""
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    raised = {}
    for worker_type in ("thread", "process"):
        with train_loader(photos_file, 2, worker_type,
                          extra=[RaiseMade(int(order[20]), kind)]) as loader, \
                pytest.raises(Exception, match="sample") as info:
            list(loader)
        raised[worker_type] = info.value
    thread, process = raised["thread"], raised["process"]
    assert type(process) is type(thread)
    assert str(process) == str(thread)
    assert f"sample {int(order[20])}" in str(process)
    assert vars(process).get("code", 7) == 7
    assert any(n.startswith("in fastforward worker process") for n in process.__notes__)


class UnpicklesOnlyHere(Operation):
    """Pickles, but does not unpickle in any process but the one whose pid is in
    $FASTFORWARD_TEST_PARENT (the loader's): the workers cannot rebuild the plan."""

    per_sample = True

    def __setstate__(self, state):  # type: ignore[no-untyped-def]
        if os.environ.get("FASTFORWARD_TEST_PARENT") != str(os.getpid()):
            raise RuntimeError("not in this process")
        self.__dict__.update(state)

    def apply_sample(self, sample, destination, context, position):  # type: ignore[no-untyped-def]
        return sample


def test_a_plan_the_workers_cannot_rebuild_fails_each_batch_once_told(
        photos_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTFORWARD_TEST_PARENT", str(os.getpid()))
    with train_loader(photos_file, 2, "process", extra=[UnpicklesOnlyHere()]) as loader:
        for _ in range(2):  # and again at the next epoch, not a hang
            with pytest.raises(RuntimeError, match="not in this process") as info:
                list(loader)
            notes = info.value.__notes__
            told = [n for n in notes if n.startswith("in fastforward worker process")]
            assert len(told) == 1, notes  # it was told twice (the plan's, then the range's)
            assert "__setstate__" in told[0]  # the traceback of the unpickling
            assert any("pipelines could not be rebuilt" in n for n in notes)


class Opaque:
    """An object whose text shows its address: it differs after pickling."""


class SelfReferring(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}")
        self.me = self


def _round_trip(exc: BaseException) -> BaseException:
    from fastforward.errors import annotate, portable

    annotate(exc, "f.beton: sample 5, field 'x'")
    return pickle.loads(pickle.dumps(portable(exc, "a test")))


def test_portable_keeps_the_type_of_an_exception_whose_text_pickling_changes() -> None:
    """A ``KeyError(Opaque())`` shows another address after pickling: it became a
    ``FastForwardError``, which ``except KeyError`` no longer caught."""
    back = _round_trip(KeyError(Opaque()))
    assert type(back) is KeyError
    assert isinstance(back.args[0], Opaque)
    assert "f.beton: sample 5, field 'x'" in "\n".join(back.__notes__)


def test_portable_rebuilds_an_exception_that_refers_to_itself() -> None:
    back = _round_trip(SelfReferring(3))
    assert type(back) is SelfReferring
    assert str(back) == "f.beton: sample 5, field 'x': code 3"
    assert back.me is back


def test_portable_rebuilds_the_exceptions_of_a_group_whole() -> None:
    back = _round_trip(ExceptionGroup("two failures", [Composed(7), ValueError("plain")]))
    assert type(back) is ExceptionGroup
    composed, plain = back.exceptions
    assert type(composed) is Composed
    assert str(composed) == "failure code 7"  # it said 'failure code failure code 7'
    assert composed.code == 7
    assert str(plain) == "plain"


def test_portable_falls_back_only_for_what_does_not_pickle() -> None:
    from fastforward.errors import FastForwardError

    error = ValueError("holds a lock")
    error.lock = threading.Lock()  # type: ignore[attr-defined]
    back = _round_trip(error)
    assert type(back) is FastForwardError
    assert "f.beton: sample 5, field 'x': holds a lock" in str(back)
    assert "ValueError" in str(back)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["fastforward-workers", "fastforward-dispatch"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_ctrl_c_as_the_pool_starts_its_threads_leaves_no_hang(
        photos_file: Path, monkeypatch: pytest.MonkeyPatch, name: str, when: str) -> None:
    """Ctrl-C inside ``Thread.start()`` of the pool's reader or dispatcher thread (before
    its thread runs, or after): the pool never started the other, or never again,
    and every later epoch waited for ranges that no thread sent."""
    import threading

    original = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name == name and when == "before":
            raise KeyboardInterrupt
        original(self)
        if self.name == name:
            raise KeyboardInterrupt

    expected = epochs(train_loader(photos_file, 1, "thread"), 1)[0]
    with train_loader(photos_file, 2, "process") as loader:
        monkeypatch.setattr(threading.Thread, "start", start)
        with pytest.raises(KeyboardInterrupt):
            next(iter(loader))
        monkeypatch.setattr(threading.Thread, "start", original)
        got = [(i.copy(), b.copy()) for i, b in loader]
    np.testing.assert_array_equal(np.concatenate([i for i, _ in got]), expected[0])
    np.testing.assert_array_equal(np.concatenate([b for _, b in got]), expected[1])


class WholeLabels(IntDecoder):
    """Hands out its destination itself, not a view of it (the API allows it)."""

    def output(self, destination, count):  # type: ignore[no-untyped-def]
        return destination


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_held_batches_that_are_a_slot_buffer_itself_are_not_overwritten(
        photos_file: Path, kind: str) -> None:
    """A shared slot's buffers are views of its segment, and the fence watched the
    segment only: a batch that is the buffer object itself was refilled under its
    holder with process workers (10 of 12 held batches)."""
    with Loader(photos_file, 8, num_workers=2, worker_type=kind, order=OrderOption.RANDOM,
                seed=3, pipelines={"image": None, "label": [WholeLabels()]}) as loader:
        held = [(labels, labels.copy()) for (labels,) in loader]
        for _ in range(2):
            for _ in loader:
                pass
    assert len(held) == 6
    for labels, copy_ in held:
        np.testing.assert_array_equal(labels, copy_)


FORK_SERVER_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
from multiprocessing import forkserver
from pathlib import Path
import numpy as np
from fastforward.errors import WorkerError
from test_workers import train_loader, Jitter, StuckAt, _alive, wait_for

if __name__ == "__main__":
    marker = Path({marker!r})
    loader = train_loader(Path({path!r}), 2, "process", batches_ahead=1,
                          extra=[Jitter(), StuckAt({index}, str(marker), seconds=4)])
    iterator = iter(loader)
    wait_for(marker)
    stuck = int(marker.read_text())
    os.kill(forkserver._forkserver._forkserver_pid, signal.SIGKILL)
    try:
        for _ in iterator:
            pass
        print("no error")
    except WorkerError as exc:
        print("error:", exc)
    print("stuck worker alive:", _alive(stuck), flush=True)
    held = [(images, images.copy()) for images, _ in loader]  # a new fork server's workers
    time.sleep(5)  # past the stuck operation's end, had it lived
    print("held batches changed:", sum(not np.array_equal(a, b) for a, b in held))
    loader.close()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the fork server's workers")
def test_workers_of_a_fork_server_that_died_are_killed_before_their_slots_move_on(
        tmp_path: Path, photos_file: Path) -> None:
    """When multiprocessing's fork server dies, every worker's sentinel reaches end
    of file and multiprocessing gives it exit code 255 while it runs on: the loader
    failed the worker's ranges and handed their slot to a later batch, into which the
    worker, still alive, could then write (a held batch changed under its holder,
    in a helper's run). What is checked: the worker is dead when the error
    arrives, and the error says why; whether the slot it held comes back to the
    next epoch in time to be overwritten is a matter of timing, so the held
    batches' check passes on the old code too."""
    order = np.concatenate(train_loader(photos_file, 1, "thread")._batches(0, []))
    script = tmp_path / "forkserver.py"
    script.write_text(FORK_SERVER_SCRIPT.format(
        tests=str(Path(__file__).parent), path=str(photos_file),
        marker=str(tmp_path / "stuck"), index=int(order[8 + 7])))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("error: "), lines
    assert "its fork server died" in lines[0], lines
    assert lines[1:] == ["stuck worker alive: False", "held batches changed: 0"], lines


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
@pytest.mark.parametrize("kind", ["thread", "process"])
def test_next_in_a_forked_child_says_to_make_a_loader_there(photos_file: Path,
                                                           kind: str) -> None:
    """next() on the parent's epoch in a forked child waited for ever: no thread of
    the child hands a batch over."""
    with train_loader(photos_file, 2, kind) as loader:
        iterator = iter(loader)
        next(iterator)
        child = os.fork()
        if child == 0:  # pragma: no cover - the child's result is its exit status
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's: it ends
            signal.alarm(30)
            try:
                next(iterator)
            except RuntimeError as exc:
                os._exit(0 if "forked child" in str(exc) and "new Loader" in str(exc) else 1)
            except BaseException:
                os._exit(2)
            os._exit(3)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert sum(1 for _ in iterator) == 5  # the parent's epoch goes on


def _wait_until_gone(pids: list[int]) -> None:
    """Until the worker processes *pids* and every fastforward thread have ended (30 s)."""
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) or [
            t for t in _threads() if t.startswith("fastforward")]:
        assert time.monotonic() < deadline, (pids, _threads())
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["thread", "process"])
@pytest.mark.parametrize("where", ["per sample", "per batch", "os_cache=False"])
def test_a_loader_dropped_after_a_failed_epoch_is_freed_at_once(
        photos_file: Path, kind: str, where: str) -> None:
    """The exception a failed epoch raised was held by frames of its own traceback
    (settle()'s, the engine's next_batch, the delivering coroutine's, the ranges'
    futures), one of which holds the loader: a loader dropped after it kept its
    workers and descriptors until a garbage collection (never, with gc disabled)."""
    import weakref

    gc.collect()
    gc.disable()
    try:
        # the class, not an instance: each raise makes a new one (an instance kept by
        # the operation, which the loader holds, would itself hold the traceback)
        extra = [RaiseInBatch(2, KeyError)] if where == "per batch" else [RaiseAt(20, KeyError)]
        loader = train_loader(photos_file, 2, kind, extra=extra,
                              os_cache=where != "os_cache=False")
        with pytest.raises(KeyError):
            for _ in loader:
                pass
        pids = list(loader.workers.pids) if kind == "process" else []
        alive = weakref.ref(loader)
        del loader
        assert alive() is None
        _wait_until_gone(pids)
    finally:
        gc.enable()


@pytest.mark.parametrize("kind", ["thread", "process"])
@pytest.mark.parametrize("how", ["break", "iterator.close()", "close() mid-epoch", "whole epoch"])
def test_nothing_of_a_dropped_loader_waits_for_the_garbage_collector(
        photos_file: Path, kind: str, how: str) -> None:
    """An epoch ended early (``break``, ``close()``) cancels its tasks; the task
    group's exit kept the cancellation's traceback in a cycle (Python 3.11-3.13), and
    with it the engine, the plan, the reader and the slot pool, until the next
    garbage collection (never, with gc disabled). The pipelines' ordering kept the
    loader's decoders in a cycle of its own."""
    import weakref

    gc.collect()
    gc.disable()
    try:
        loader = train_loader(photos_file, 2, kind)
        iterator = iter(loader)
        next(iterator)
        if how == "iterator.close()":
            iterator.close()
        elif how == "close() mid-epoch":
            loader.close()
        elif how == "whole epoch":
            for _ in iterator:
                pass
        pids = list(loader.workers.pids) if kind == "process" else []
        left = [weakref.ref(obj) for obj in (loader, loader.reader, loader._slots,
                                             loader.pipelines[0].decoder)]
        del loader, iterator  # ("break": the loop's iterator goes with its frame)
        assert [ref() for ref in left] == [None] * len(left)
        _wait_until_gone(pids)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found = {type(obj).__name__ for obj in gc.garbage}
        assert not found & {"Engine", "Task", "Reader", "SlotPool", "Plan", "PipelineSpec",
                            "RandomResizedCropRGBImageDecoder"}, found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@pytest.mark.parametrize("kind", ["thread", "process"])
@pytest.mark.parametrize("how", ["unused", "whole epoch", "break"])
def test_a_dropped_loader_ends_its_workers_without_the_garbage_collector(
        photos_file: Path, kind: str, how: str) -> None:
    """The loader and its order, and an epoch's threads and the loader, referred to
    each other: a loader dropped without close() kept its worker processes, threads
    and shared memory until the next full garbage collection."""
    gc.collect()
    gc.disable()
    try:
        loader = train_loader(photos_file, 2, kind)
        assert loader.traversal_order.loader is loader
        order = loader.traversal_order
        held = None  # the last batch the loop saw, dropped with the loader
        if how == "whole epoch":
            for held in loader:  # noqa: B007
                pass
        elif how == "break":
            for held in loader:  # noqa: B007
                break
        pids = list(loader.workers.pids) if kind == "process" else []
        del loader, held
        assert order.loader is None
        _wait_until_gone(pids)
    finally:
        gc.enable()


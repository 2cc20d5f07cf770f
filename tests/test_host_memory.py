"""Host memory the loader frees goes back to the system: read buffers for
``os_cache=False`` are reused from private maps, slots live in maps of their own.

From the C heap (``np.empty``), glibc kept what the loader's threads freed: 30
epochs of ``os_cache=False`` over 1,000 raw images left the process 200 MB
larger, and ``close()`` gave none of it back (``python bench/freed_memory.py``).
"""

from __future__ import annotations

import gc
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from fastforward.fields import BytesField, IntField
from fastforward.fields.decoders import BytesDecoder, IntDecoder
from fastforward.loader import Loader, OrderOption
from fastforward.memory_managers.process_cache import ReadBuffers
from fastforward.pipeline.allocation_query import AllocationQuery
from fastforward.ring import Slot, SlotPool
from fastforward.utils import private_empty
from fastforward.writer import DatasetWriter


def _map_of(array: np.ndarray) -> object:
    while isinstance(array.base, np.ndarray):
        array = array.base
    base = array.base
    return base.obj if isinstance(base, memoryview) else base


def test_a_read_buffer_is_reused_once_its_views_are_gone() -> None:
    buffers = ReadBuffers()
    first = buffers.take(1000)
    assert first.shape == (1000,)
    assert first.dtype == np.uint8
    assert first.flags.writeable
    memory = _map_of(first)
    assert isinstance(memory, mmap.mmap)
    assert len(memory) >= 1250
    first[:] = 7
    view = first[10:20]
    del first
    second = buffers.take(900)  # a view is left: the first map is still in use
    assert buffers.made == 2
    assert _map_of(second) is not memory
    del view, second
    gc.collect()
    third = buffers.take(1200)  # fits the first (or the second) map: no new one
    assert buffers.made == 2
    del third


def test_a_read_buffer_too_small_is_replaced() -> None:
    buffers = ReadBuffers()
    small = buffers.take(100)
    small_map = _map_of(small)
    del small
    large = buffers.take(100_000)
    assert buffers.made == 2
    assert len(_map_of(large)) >= 100_000
    assert small_map.closed is False  # still ours here, but no longer the pool's
    del large
    assert len(buffers._free) == 1  # the large one only: the small one was dropped


def test_read_buffers_close_and_empty_takes() -> None:
    buffers = ReadBuffers()
    assert buffers.take(0).shape == (0,)
    assert buffers.made == 0
    held = buffers.take(5000)
    spare = buffers.take(5000)
    del spare
    assert len(buffers._free) == 1
    buffers.close()
    assert len(buffers._free) == 0
    del held  # returned after close(): not kept
    assert len(buffers._free) == 0


def test_private_empty_is_a_map_of_its_own() -> None:
    array = private_empty((3, 5, 7), np.float32)
    assert array.shape == (3, 5, 7)
    assert array.dtype == np.float32
    assert array.flags.writeable
    assert isinstance(_map_of(array), mmap.mmap)
    array[...] = np.arange(105, dtype=np.float32).reshape(3, 5, 7)
    assert array.sum() == sum(range(105))
    structured = np.dtype([("a", "<i4"), ("b", "<f8")])
    assert private_empty((4,), structured).dtype == structured
    assert private_empty((0, 3), np.uint8).shape == (0, 3)  # no map of no bytes
    assert private_empty((2,), object).dtype == object  # objects stay on the heap


def test_a_heap_slot_lives_in_a_map_and_its_fence_still_holds() -> None:
    slot = Slot(4)
    slot.fit({"image/0": AllocationQuery((8, 8, 3), np.dtype(np.uint8))})
    assert isinstance(_map_of(slot.get("image/0")), mmap.mmap)
    assert not slot.is_held()
    batch = slot.get("image/0")[:2]  # a batch handed out: a view
    assert slot.is_held()
    del batch
    assert not slot.is_held()
    pool = SlotPool(2, 4)
    layout = {"image/0": AllocationQuery((8, 8, 3), np.dtype(np.uint8))}
    a = pool.acquire(layout)
    kept = a.get("image/0")[:]
    pool.release(a)
    b = pool.acquire(layout)  # a is held: another slot
    assert b is not a
    assert not np.shares_memory(kept, b.get("image/0"))


class Blobs:
    def __len__(self) -> int:
        return 300

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        size = 2_000 + (i * 7_919) % 30_000
        return i, ((np.arange(size) + i) % 256).astype(np.uint8)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("host-memory") / "blobs.beton"
    DatasetWriter(path, {"index": IntField(), "blob": BytesField()}, num_workers=1,
                  progress=False).from_indexed_dataset(Blobs())
    return path


def test_os_cache_false_reuses_its_read_buffers_from_epoch_to_epoch(blobs: Path) -> None:
    loader = Loader(blobs, 32, num_workers=2, os_cache=False, order=OrderOption.RANDOM,
                    seed=1, batches_ahead=2, drop_last=False,
                    pipelines={"index": [IntDecoder()], "blob": [BytesDecoder()]})
    with loader:
        made = []
        for _ in range(6):
            for indices, data in loader:
                for i, row, length in zip(indices.ravel(), data, data.lengths, strict=True):
                    np.testing.assert_array_equal(row[:length], Blobs()[int(i)][1])
            made.append(loader.memory_manager.buffers.made)
        # at most batches_ahead + 1 reads in flight, and a few replaced as sizes grow
        assert 0 < made[0] <= 2 * (2 + 2)
        assert made[-1] - made[0] <= 3
    assert len(loader.memory_manager.buffers._free) == 0  # unmapped by close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
# Python 3.12+ warns about a fork in a process with threads (pytest's faulthandler
# watchdog is one); the child runs no other code
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_does_not_write_into_the_parents_buffers() -> None:
    """mmap.mmap(-1, n) is MAP_SHARED: a child forked while a batch was alive wrote
    into the parent's batch, and the parent's loader into the child's."""
    slot_buffer = private_empty((4, 4), np.uint8)
    read_buffer = ReadBuffers().take(100)
    slot_buffer[:] = 1
    read_buffer[:] = 1
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        slot_buffer[:] = 7
        read_buffer[:] = 7
        os._exit(0 if slot_buffer[0, 0] == 7 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert slot_buffer.max() == 1
    assert read_buffer.max() == 1


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="/proc")
def test_kept_buffers_do_not_use_a_map_each() -> None:
    """Shared anonymous maps never merge: a program keeping every batch of a file of
    70,000 samples ran out of maps (vm.max_map_count, 65,530)."""
    def maps() -> int:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    before = maps()
    kept = [private_empty((4096,), np.uint8) for _ in range(3000)]
    for array in kept:
        array[0] = 1  # touched, as a batch is
    assert maps() - before < 300


def _images_file(tmp_path: Path) -> Path:
    from fastforward.fields import RGBImageField

    path = tmp_path / "images.beton"
    rng = np.random.default_rng(0)
    DatasetWriter(path, {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(rng.integers(0, 256, (46, 50, 3), dtype=np.uint8), i) for i in range(30)])
    return path


def test_a_ring_over_half_the_usable_memory_is_warned_about(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slots sized by the largest image a field can give (or a large batch) could
    need more memory than the machine has: filled, they ended in the OOM killer's
    SIGKILL without a word. Said at Loader(), with the buffer that sized them."""
    import warnings

    import fastforward.loader.loader as loader_module
    from fastforward.fields.decoders import SimpleRGBImageDecoder

    path = _images_file(tmp_path)

    def make() -> Loader:
        return Loader(path, 8, num_workers=1, pipelines={
            "image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})

    with make() as loader:
        ring = loader.slot_bytes * loader.ring_slots
    assert loader.slot_bytes == 8 * (46 * 50 * 3 + 8)  # images and labels
    monkeypatch.setattr(loader_module, "usable_memory", lambda: (2 * ring, "this machine's"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make().close()  # exactly half: no word
    monkeypatch.setattr(loader_module, "usable_memory",
                        lambda: (2 * ring - 1, "this process's control group's limit of"))
    with pytest.warns(RuntimeWarning, match=(
            r"images.beton: the loader's 6 batch slots .* over half of this process's "
            r"control group's limit of .* the largest buffer is 'image/decoder': "
            r"\(8, 46, 50, 3\) uint8, 53.9 KiB per batch")) as caught:
        make().close()
    assert caught[0].filename == __file__  # said at the user's line
    monkeypatch.setattr(loader_module, "usable_memory", lambda: None)  # not known: no word
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make().close()


def test_usable_memory_is_the_machines_or_a_lower_cgroup_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import fastforward.utils as utils

    machine = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    found = utils.usable_memory()
    assert found is not None
    assert 0 < found[0] <= machine
    monkeypatch.setattr(utils, "_cgroup_limits", lambda: iter([machine + 1, 1 << 30]))
    assert utils.usable_memory() == (min(machine, 1 << 30),
                                     "this process's control group's limit of"
                                     if machine > 1 << 30 else "this machine's")

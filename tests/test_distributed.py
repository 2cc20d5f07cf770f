"""Sharding over ranks and mid-epoch resume.

The ranks here are simulated in one process (the loader asks
``_distributed_context`` for its rank); ``test_distributed_gloo.py`` runs the
same checks in real torch.distributed processes.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fastforward.loader.loader as loader_module
from fastforward.fields import BytesField, IntField, RGBImageField
from fastforward.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
from fastforward.loader import Loader, OrderOption
from fastforward.pipeline import AllocationQuery, Operation, State
from fastforward.pipeline.operation import BatchContext
from fastforward.reader import Reader
from fastforward.traversal_order.quasi_random import sample_pages
from fastforward.writer import DatasetWriter

ORDERS = [OrderOption.SEQUENTIAL, OrderOption.RANDOM, OrderOption.QUASI_RANDOM]


@pytest.fixture(scope="module")
def paged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,003 samples of 20 kB: about 100 per 2 MiB page, 11 pages."""
    path = tmp_path_factory.mktemp("dist") / "paged.beton"
    DatasetWriter(path, {"index": IntField(), "blob": BytesField()}, page_size=1 << 21,
                  num_workers=2, progress=False).from_indexed_dataset(
        [(i, np.full(20_000, i % 256, np.uint8)) for i in range(1003)])
    return path


INDEX_ONLY = {"index": [IntDecoder()], "blob": None}  # (no torch: no default pipelines)


def rank_loader(path: Path, rank: int, world: int, monkeypatch: pytest.MonkeyPatch,
                **kw) -> Loader:
    monkeypatch.setattr(loader_module, "_distributed_context", lambda: (rank, world))
    kw.setdefault("pipelines", INDEX_ONLY)
    kw.setdefault("seed", 7)
    return Loader(path, distributed=True, **kw)


def epoch_ids(loader: Loader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch.ravel()]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("order", ORDERS, ids=lambda o: o.name)
def test_coverage_and_equal_lengths(paged: Path, monkeypatch: pytest.MonkeyPatch, world: int,
                                    order: OrderOption) -> None:
    loaders = [rank_loader(paged, r, world, monkeypatch, batch_size=10, order=order,
                           drop_last=False) for r in range(world)]
    per_rank = [epoch_ids(loader) for loader in loaders]
    assert len({len(ids) for ids in per_rank}) == 1  # same length, so same batch count
    assert len({len(loader) for loader in loaders}) == 1
    seen = np.concatenate(per_rank)
    assert set(seen.tolist()) == set(range(1003))  # every sample
    # padding repeats a few samples to even the ranks out: at most one page's worth
    assert len(seen) - 1003 < 200


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("order", ORDERS, ids=lambda o: o.name)
def test_evaluation_mode_sees_each_sample_once(paged: Path, monkeypatch: pytest.MonkeyPatch,
                                               world: int, order: OrderOption) -> None:
    per_rank = [epoch_ids(rank_loader(paged, r, world, monkeypatch, batch_size=10, order=order,
                                      drop_last=False, even_batches=False))
                for r in range(world)]
    assert sorted(np.concatenate(per_rank).tolist()) == list(range(1003))


def assert_pages_shared_only_at_cuts(page_sets: list[set[int]]) -> None:
    """Ranks' page sets overlap only where a cut falls inside a page: at most
    one page per cut (world - 1 in all), each read by two ranks (each rank's
    share here is larger than a page)."""
    seen: dict[int, int] = {}
    for pages in page_sets:
        for page in pages:
            seen[page] = seen.get(page, 0) + 1
    shared = [page for page, ranks in seen.items() if ranks > 1]
    assert len(shared) <= len(page_sets) - 1, shared
    assert all(seen[page] == 2 for page in shared)


@pytest.mark.parametrize("world", [2, 3])
def test_quasi_random_ranks_read_nearly_disjoint_pages(paged: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       world: int) -> None:
    pages = sample_pages(Reader(paged))
    page_sets, counts = [], []
    for r in range(world):
        loader = rank_loader(paged, r, world, monkeypatch, batch_size=10,
                             order=OrderOption.QUASI_RANDOM, drop_last=False,
                             even_batches=False)
        ids = epoch_ids(loader)
        page_sets.append(set(pages[ids].tolist()))
        counts.append(len(ids))
    assert_pages_shared_only_at_cuts(page_sets)
    assert max(counts) - min(counts) <= 1, counts  # nothing to pad but a sample


def test_orders_are_deterministic_and_epochs_differ(paged: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def ids(epoch: int) -> list[int]:
        loader = rank_loader(paged, 1, 2, monkeypatch, batch_size=10,
                             order=OrderOption.QUASI_RANDOM)
        loader.next_epoch = epoch
        return epoch_ids(loader)

    assert ids(0) == ids(0)
    assert ids(0) != ids(1)


def test_fewer_pages_than_ranks_share_pages(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "one-page.beton"
    DatasetWriter(path, {"index": IntField(), "blob": BytesField()}, num_workers=1,
                  progress=False).from_indexed_dataset(
        [(i, np.zeros(10, np.uint8)) for i in range(30)])
    per_rank = [epoch_ids(rank_loader(path, r, 3, monkeypatch, batch_size=5,
                                      order=OrderOption.QUASI_RANDOM)) for r in range(3)]
    assert sorted(np.concatenate(per_rank).tolist()) == list(range(30))


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: o.name)
def test_no_seed_takes_rank_0s(paged: Path, monkeypatch: pytest.MonkeyPatch,
                               order: OrderOption) -> None:
    sent: list[int] = []

    def broadcast(value: int) -> int:  # what rank 0 sent, as every rank receives it
        sent.append(value)
        return 12345

    monkeypatch.setattr(loader_module, "_broadcast_from_rank_0", broadcast)
    loaders = [rank_loader(paged, r, 2, monkeypatch, batch_size=10, seed=None, order=order)
               for r in range(2)]
    if order is OrderOption.SEQUENTIAL:  # its order needs no seed: no collective at all
        assert sent == []
        assert epoch_ids(loaders[0]) == list(range(0, 1000, 2))
    else:
        assert len(sent) == 2
        assert [loader.seed for loader in loaders] == [12345, 12345]
        assert epoch_ids(loaders[0]) == epoch_ids(rank_loader(
            paged, 0, 2, monkeypatch, batch_size=10, seed=12345, order=order))


def test_distributed_needs_a_process_group(paged: Path) -> None:
    pytest.importorskip("torch", reason="torch is an optional extra")
    with pytest.raises(ValueError, match="init_process_group"):
        Loader(paged, 10, distributed=True, seed=0)


# -- resume --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray]) -> Path:
    path = tmp_path_factory.mktemp("resume") / "photos.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", max_resolution=96),
                         "index": IntField()}, num_workers=2, progress=False) \
        .from_indexed_dataset([(images[i % 20], i) for i in range(70)])
    return path


def augmented(path: Path, workers: int, **kw) -> Loader:
    kw.setdefault("seed", 11)
    return Loader(path, 8, num_workers=workers, order=OrderOption.QUASI_RANDOM,
                  drop_last=False, pipelines={
                      "image": [RandomResizedCropRGBImageDecoder((24, 24))],
                      "index": [IntDecoder()]}, **kw)


def batches(iterator) -> list[tuple[np.ndarray, np.ndarray]]:  # type: ignore[no-untyped-def]
    return [(images.copy(), index.copy()) for images, index in iterator]


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("stop_after", [1, 4, 8])
def test_resume_mid_epoch_exactly(photo_file: Path, stop_after: int, workers: int) -> None:
    reference = augmented(photo_file, 2)
    reference.next_epoch = 1
    full = batches(iter(reference))

    first = augmented(photo_file, workers)
    first.next_epoch = 1
    iterator = iter(first)
    for _ in range(stop_after):
        next(iterator)
    state = first.state_dict()
    iterator.close()
    assert json.loads(json.dumps(state)) == state  # small and plain

    resumed = augmented(photo_file, workers, batches_ahead=2)
    fetched: list[int] = []
    fetch = resumed.memory_manager.fetch

    def counting(indices: np.ndarray, **options):  # type: ignore[no-untyped-def]
        fetched.extend(int(i) for i in indices)
        return fetch(indices, **options)

    resumed.memory_manager.fetch = counting  # type: ignore[method-assign]
    resumed.load_state_dict(state)
    rest = batches(iter(resumed))
    # no replay: only the samples of the batches still to come are read (counted,
    # not timed: a slow machine can take seconds for the whole epoch)
    assert sorted(fetched) == sorted(int(i) for _, index in rest for i in index.ravel())
    assert len(rest) == len(full) - stop_after
    for (images, index), (want_images, want_index) in zip(rest, full[stop_after:], strict=True):
        np.testing.assert_array_equal(index, want_index)
        np.testing.assert_array_equal(images, want_images)
    assert resumed.next_epoch == 2


def test_the_last_batch_handed_out_ends_the_epoch(photo_file: Path) -> None:
    loader = augmented(photo_file, 2)
    iterator = iter(loader)
    for _ in range(len(iterator)):
        next(iterator)
    assert (loader.state_dict()["epoch"], loader.state_dict()["segments"]) == (1, [])
    loader.close()


def test_state_between_epochs(photo_file: Path) -> None:
    loader = augmented(photo_file, 2)
    for _ in loader:
        pass
    state = loader.state_dict()
    assert state["epoch"] == 1
    assert state["segments"] == []
    fresh = augmented(photo_file, 2, seed=99)
    fresh.load_state_dict(state)
    assert fresh.seed == 11  # the seed comes with the state
    assert fresh.next_epoch == 1


def test_state_after_a_resume_is_the_resumed_position(photo_file: Path) -> None:
    """An unfinished iterator still referenced (a peek at the first batch) was
    reported by state_dict() after load_state_dict() or a new next_epoch: a
    checkpoint then resumed another epoch."""
    loader = augmented(photo_file, 2)
    reference = augmented(photo_file, 2)
    for _ in range(2):
        for _ in reference:
            pass
    expected = batches(reference)[3:]  # epoch 2, after its third batch
    source = augmented(photo_file, 2)
    for _ in range(2):
        for _ in source:
            pass
    running = iter(source)
    for _ in range(3):
        next(running)
    state = source.state_dict()
    assert (state["epoch"], state["segments"]) == (2, [[1, 3]])
    peek = iter(loader)
    next(peek)
    loader.load_state_dict(state)
    assert loader.state_dict() == state
    again = augmented(photo_file, 2)
    again.load_state_dict(loader.state_dict())
    assert all(np.array_equal(a, b) for got, want in zip(batches(again), expected, strict=True)
               for a, b in zip(got, want, strict=True))
    loader.next_epoch = 5
    assert loader.state_dict()["epoch"] == 5
    del peek, running
    for made in (loader, reference, source, again):
        made.close()


def test_a_checkpoint_saved_after_a_break_resumes_where_the_loop_stopped(
        photo_file: Path) -> None:
    """state_dict() read its epoch through a weak reference: after a `break` had
    dropped the iterator it said the next epoch's start (the rest of the epoch
    was skipped on resume), while an iterator kept and closed said mid-epoch:
    one situation, two answers, decided by the garbage collector."""
    full = batches(augmented(photo_file, 2))
    for leave in ("break", "close", "kept", "close, then next()"):
        loader = augmented(photo_file, 2)
        iterator = iter(loader)
        for _ in range(3):
            next(iterator)
        if leave == "break":
            del iterator
            gc.collect()
        elif leave == "close":
            iterator.close()
        elif leave == "close, then next()":  # a signal handler closes, the loop asks again
            iterator.close()
            with pytest.raises(StopIteration):
                next(iterator)
        state = loader.state_dict()
        assert (state["epoch"], state["segments"]) == (0, [[1, 3]]), leave
        resumed = augmented(photo_file, 2)
        resumed.load_state_dict(state)
        rest = batches(resumed)
        assert len(rest) == len(full) - 3
        for got, want in zip(rest, full[3:], strict=True):
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])
        # an epoch cut short on purpose is checkpointed as done by setting next_epoch
        loader.next_epoch = loader.next_epoch
        assert (loader.state_dict()["epoch"], loader.state_dict()["segments"]) == (1, [])
        # the loader's own next iter() starts the next epoch, as FFCV's
        assert iter(loader).position.epoch == 1
        assert loader.state_dict()["epoch"] == 1
        loader.close()
        resumed.close()


class BatchIndex(Operation):
    """Writes each batch's BatchContext.batch_index into its labels."""

    releases_gil = True  # on the loader's threads

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        destination[: len(batch)] = context.batch_index
        return destination[: len(batch)]


def test_a_resumed_batch_keeps_its_place_in_the_epoch(photo_file: Path) -> None:
    """BatchContext.batch_index counted from 0 again after a resume (an operation
    keyed on it drew otherwise, and messages named the wrong batch)."""
    def loader() -> Loader:
        return Loader(photo_file, 8, order=OrderOption.RANDOM, seed=3, pipelines={
            "image": None, "index": [IntDecoder(), BatchIndex()]})

    whole = [int(index.ravel()[0]) for (index,) in loader()]
    assert whole == list(range(len(whole)))
    first = loader()
    iterator = iter(first)
    next(iterator), next(iterator)
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert [int(index.ravel()[0]) for (index,) in resumed] == whole[2:]


def test_drop_last_is_part_of_a_state(photo_file: Path) -> None:
    """A drop_last=True state resumed with drop_last=False gave an extra partial batch."""
    def loader(drop_last: bool) -> Loader:
        return Loader(photo_file, 8, order=OrderOption.RANDOM, seed=3, drop_last=drop_last,
                      pipelines={"image": None, "index": [IntDecoder()]})

    for saved in (True, False):
        source = loader(saved)
        iterator = iter(source)
        next(iterator)
        state = source.state_dict()
        with pytest.raises(ValueError, match="saved with another drop_last"):
            loader(not saved).load_state_dict(state)
        loader(saved).load_state_dict(state)
        legacy = {k: v for k, v in state.items() if k != "drop_last"}
        loader(not saved).load_state_dict(legacy)  # a state from before it was kept


@pytest.mark.parametrize(("state", "error", "match"), [
    ([1, 2], TypeError, "a loader state is the dict state_dict\\(\\) returns, got a list"),
    ({"version": 2, "epoch": 0}, ValueError, "lacks seed, batch_size, num_samples, segments"),
])
def test_a_state_that_is_no_state(photo_file: Path, state: Any, error: type,
                                  match: str) -> None:
    with pytest.raises(error, match=match):
        augmented(photo_file, 1).load_state_dict(state)


def test_resume_checks_what_it_resumes(photo_file: Path) -> None:
    """Mid-epoch, the rest of the epoch needs the batch size it was saved with."""
    loader = augmented(photo_file, 1)
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    iterator.close()
    with pytest.raises(ValueError, match=r"saved with batch_size=8, this loader has 16 \(a "
                                         r"batch-size schedule: set loader\.batch_size = 8"):
        Loader(photo_file, 16, order=OrderOption.QUASI_RANDOM, drop_last=False,
               pipelines={"image": None, "index": [IntDecoder()]}).load_state_dict(state)


@pytest.mark.parametrize("change", ["batch_size", "drop_last", "even_batches"])
@pytest.mark.parametrize("when", ["between epochs", "before any batch"])
def test_a_state_of_an_epochs_start_takes_another_batch_size(
        paged: Path, monkeypatch: pytest.MonkeyPatch, change: str, when: str) -> None:
    """A state saved between epochs (or at an epoch's start) was refused for another
    batch size, drop_last or even_batches, which had shaped nothing yet: a script
    relaunched with another --batch-size after an end-of-epoch checkpoint failed
    (its hint, to set the old batch size, ran the next epoch at it). Now it starts
    that epoch with the new loader's, as a fresh loader at that epoch would."""
    same = {"batch_size": 10, "order": OrderOption.QUASI_RANDOM, "drop_last": False,
            "even_batches": True}
    saver = rank_loader(paged, 0, 2, monkeypatch, **same)
    if when == "between epochs":
        epoch_ids(saver)
    else:
        iter(saver).close()
    state = saver.state_dict()
    assert state["epoch"] == (1 if when == "between epochs" else 0)
    other = {**same, change: {"batch_size": 16, "drop_last": True,
                              "even_batches": False}[change]}
    resumed = rank_loader(paged, 0, 2, monkeypatch, **other)
    resumed.load_state_dict(state)
    fresh = rank_loader(paged, 0, 2, monkeypatch, **other)
    fresh.next_epoch = state["epoch"]
    assert len(resumed) == len(fresh)
    assert epoch_ids(resumed) == epoch_ids(fresh)
    assert resumed.state_dict() == fresh.state_dict()


def test_a_state_saved_after_the_seed_changed_resumes_the_epoch_with_its_own(
        photo_file: Path) -> None:
    """The state of an epoch started with seed 1, saved after ``loader.seed = 2``
    (reseeding for the next epoch before a checkpoint), held seed 2: the resumed
    epoch's order and crops were another epoch's, 6 samples came twice and 7 never.
    It holds the epoch's seed, and the next seed for the epochs after it."""
    reference = augmented(photo_file, 1, seed=1)
    want = batches(reference)
    reference.seed = 2
    want_next = batches(reference)
    loader = augmented(photo_file, 1, seed=1)
    iterator = iter(loader)
    got = [(images.copy(), index.copy()) for images, index in (next(iterator), next(iterator))]
    loader.seed = 2
    state = loader.state_dict()
    iterator.close()
    assert (state["seed"], state["next_seed"]) == (1, 2)
    resumed = augmented(photo_file, 1, seed=5)
    resumed.load_state_dict(state)
    assert resumed.seed == 2
    got += batches(resumed)
    for (images, index), (want_images, want_index) in zip(got, want, strict=True):
        np.testing.assert_array_equal(index, want_index)
        np.testing.assert_array_equal(images, want_images)
    for (images, index), (want_images, want_index) in zip(batches(resumed), want_next,
                                                          strict=True):
        np.testing.assert_array_equal(index, want_index)
        np.testing.assert_array_equal(images, want_images)


def test_a_seed_set_after_load_state_dict_leaves_the_resumed_epoch_alone(
        photo_file: Path) -> None:
    """As the batch size: the epoch load_state_dict() resumes was started with its
    seed; a seed set before iter() (a script applying --seed after restoring) is
    the next epochs' (it reordered the resumed epoch: 7 samples twice, 8 never)."""
    want = batches(augmented(photo_file, 1, seed=1))
    loader = augmented(photo_file, 1, seed=1)
    iterator = iter(loader)
    got = [(images.copy(), index.copy()) for images, index in (next(iterator),)]
    state = loader.state_dict()
    iterator.close()
    resumed = augmented(photo_file, 1)
    resumed.load_state_dict(state)
    resumed.seed = 3
    assert resumed.state_dict()["seed"] == 1
    assert resumed.state_dict()["next_seed"] == 3
    assert len(resumed) == len(want) - 1
    got += batches(resumed)
    for (images, index), (want_images, want_index) in zip(got, want, strict=True):
        np.testing.assert_array_equal(index, want_index)
        np.testing.assert_array_equal(images, want_images)
    third = augmented(photo_file, 1, seed=3)
    third.next_epoch = 1
    assert [i.tolist() for _, i in batches(resumed)] == [i.tolist() for _, i in batches(third)]


def test_len_is_counted_once_while_nothing_changes(paged: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """len() made the whole epoch's order at every call (0.3 s for a million samples
    with QUASI_RANDOM), and training loops call it at every step. It is kept now,
    and counted again when the batch size, the seed, the epoch or a resume changes
    what it counts."""
    loader = rank_loader(paged, 1, 3, monkeypatch, batch_size=10,
                         order=OrderOption.QUASI_RANDOM, drop_last=False)
    made = []
    counting = loader._batches

    def count(*args: Any, **kw: Any) -> Any:
        made.append(args)
        return counting(*args, **kw)

    monkeypatch.setattr(loader, "_batches", count)
    assert [len(loader) for _ in range(5)] == [34] * 5
    assert len(made) == 1
    loader.batch_size = 7
    assert len(loader) == 48 == len(list(loader))
    loader.next_epoch = 2
    made.clear()
    assert len(loader) == len(loader) == 48
    assert len(made) == 1
    loader.seed = 8
    assert len(loader) == 48
    assert len(made) == 2
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    iterator.close()
    resumed = rank_loader(paged, 1, 3, monkeypatch, batch_size=10,
                          order=OrderOption.QUASI_RANDOM, drop_last=False)
    assert len(resumed) == 34
    resumed.batch_size = 7
    resumed.load_state_dict(state)
    assert len(resumed) == 47 == len(list(resumed))
    assert len(resumed) == 48


def saved_mid_epoch(loader: Loader, batches: int = 2) -> dict:
    iterator = iter(loader)
    for _ in range(batches):
        next(iterator)
    state = loader.state_dict()
    iterator.close()
    return state


@pytest.fixture(scope="module")
def paged_copy(paged: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As many samples as ``paged``, other ones (other values)."""
    path = tmp_path_factory.mktemp("dist") / "other.beton"
    DatasetWriter(path, {"index": IntField(), "blob": BytesField()}, page_size=1 << 21,
                  num_workers=2, progress=False).from_indexed_dataset(
        [(i + 5000, np.full(20_000, i % 7, np.uint8)) for i in range(1003)])
    return path


@pytest.mark.parametrize("change", ["order", "order_kwargs", "indices", "file", "even_batches"])
def test_resume_refuses_a_state_of_another_loader(paged: Path, paged_copy: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  change: str) -> None:
    """Only batch_size and num_samples were compared: a RANDOM state resumed by a
    SEQUENTIAL loader, or over permuted indices or another file of as many
    samples, repeated some samples and skipped others without a word."""
    same = {"batch_size": 10, "order": OrderOption.QUASI_RANDOM, "drop_last": False}
    state = saved_mid_epoch(rank_loader(paged, 0, 2, monkeypatch, **same))
    assert json.loads(json.dumps(state)) == state
    path, other = paged, dict(same)
    if change == "order":
        other["order"] = OrderOption.RANDOM
    elif change == "order_kwargs":
        other["order_kwargs"] = {"window": 2}
    elif change == "indices":
        other["indices"] = np.random.default_rng(0).permutation(1003)
    elif change == "file":
        path = paged_copy
    else:
        other["even_batches"] = False
    fresh = rank_loader(path, 0, 2, monkeypatch, **other)
    key = "order" if change == "order_kwargs" else change  # the options are the order's
    with pytest.raises(ValueError, match=f"To resume anyway, delete the state's '{key}' entry"):
        fresh.load_state_dict(state)
    assert fresh.next_epoch == 0
    assert fresh._resume is None
    # the same loader resumes it, and with another world size
    rank_loader(paged, 0, 2, monkeypatch, **same).load_state_dict(state)
    rank_loader(paged, 1, 3, monkeypatch, **same).load_state_dict(state)


def test_order_options_compare_by_value(paged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """window=np.int64(8) is window=8; an option shown by its address (a
    function) cannot be compared across processes and is left out; two long
    arrays NumPy's repr abbreviates alike still differ."""
    def state_of(**options: object) -> dict:
        return saved_mid_epoch(rank_loader(paged, 0, 2, monkeypatch, batch_size=10,
                                           order=OrderOption.QUASI_RANDOM, order_kwargs=options))

    rank_loader(paged, 0, 2, monkeypatch, batch_size=10, order=OrderOption.QUASI_RANDOM,
                order_kwargs={"window": 8}).load_state_dict(state_of(window=np.int64(8)))
    from fastforward.loader.loader import _plain_options

    assert _plain_options(object, {"weights": np.zeros(2000), "f": lambda: 0}) != _plain_options(
        object, {"weights": np.r_[np.zeros(1000), 1.0, np.zeros(999)]})
    assert [k for k, _ in _plain_options(object, {"weights": np.zeros(3),
                                                  "f": lambda: 0})] == ["weights"]


def test_an_order_option_at_its_default_is_no_option(paged: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """order_kwargs={'window': 64} orders exactly as QUASI_RANDOM's default does, but
    a state saved with it was refused by a loader without it, and the other way round."""
    from fastforward.traversal_order.quasi_random import DEFAULT_WINDOW

    def loader(**options: object):  # type: ignore[no-untyped-def]
        return rank_loader(paged, 0, 2, monkeypatch, batch_size=10,
                           order=OrderOption.QUASI_RANDOM, order_kwargs=options or None)

    explicit = {"window": np.int64(DEFAULT_WINDOW)}
    loader().load_state_dict(saved_mid_epoch(loader(**explicit)))
    loader(**explicit).load_state_dict(saved_mid_epoch(loader()))
    with pytest.raises(ValueError, match="delete the state's 'order' entry"):
        loader().load_state_dict(saved_mid_epoch(loader(window=DEFAULT_WINDOW + 1)))
    # an option beside a default with no plain form is kept (it was left out with it)
    from fastforward.loader.loader import _plain_options

    class Order:
        def __init__(self, loader: object, hook: object = print, step: int = 1) -> None:
            pass

    assert _plain_options(Order, {"hook": print, "step": 3}) == [("step", 3)]
    assert _plain_options(Order, {"hook": print, "step": 1}) == []
    assert _plain_options(Order, {"step": 1}, defaults=True) == [("step", 1)]
    # a state saved before defaults were left out still resumes with its options
    before = saved_mid_epoch(loader(**explicit))
    before["order"] = loader(**explicit)._order_name(defaults=True)
    assert before["order"] != saved_mid_epoch(loader())["order"]
    loader(**explicit).load_state_dict(before)


@pytest.mark.parametrize(("values", "match"), [
    ({"epoch": -1}, "epoch must be an integer"),
    ({"seed": -5}, "seed must be an integer"),
    ({"seed": 2**64}, "seed must be an integer"),
    ({"epoch": 1.5}, "epoch must be an integer"),
    ({"segments": [[2, 999]]}, "999 batches of epoch 0 were done on 2 rank"),
    ({"segments": [[2, 1], [3, 60]]}, "60 batches"),
    ({"segments": [[0, 1]]}, "invalid loader state segments"),
    ({"segments": [[2]]}, "invalid loader state segments"),
    ({"segments": [[2, 2.7]]}, r"invalid loader state segments \[\[2, 2.7\]\]: expected"),
    ({"segments": [[True, True]]}, "pairs of integers"),
    ({"segments": [["2", "1"]]}, "pairs of integers"),
    ({"segments": "[[2, 1]]"}, "pairs of integers"),
    ({"segments": [[3_000_000, 0]]}, "world sizes are 1 to 1048576"),
    ({"batch_size": "10"}, "saved with batch_size='10', this loader has 10"),
    ({"version": True}, "unknown loader state version True"),
    ({"drop_last": 1}, r"state's drop_last is 1, not True or False"),
    ({"version": 2.0}, "unknown loader state version 2.0"),
    ({"batch_size": 10.0}, "saved with batch_size=10.0, this loader has 10"),
], ids=["epoch<0", "seed<0", "seed 2**64", "epoch 1.5", "past the end", "past the end later",
        "no ranks", "not pairs", "a float", "booleans", "strings", "a string",
        "a world too large", "batch size a string", "version True", "drop_last 1",
        "version 2.0", "batch size 10.0"])
def test_resume_checks_the_state_values(paged: Path, monkeypatch: pytest.MonkeyPatch,
                                        values: dict, match: str) -> None:
    """Values a loader never saves were taken and failed later in NumPy with a
    message naming neither the state nor the value, or gave an empty epoch."""
    kw = {"batch_size": 10, "order": OrderOption.RANDOM}
    state = saved_mid_epoch(rank_loader(paged, 0, 2, monkeypatch, **kw))
    fresh = rank_loader(paged, 0, 2, monkeypatch, **kw)
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict({**state, **values})
    assert fresh.next_epoch == 0
    assert fresh.seed == 7
    assert fresh.traversal_order.seed == 7


def test_a_state_of_numpy_integers_resumes(paged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state whose integers and booleans went through NumPy (a checkpoint tool's
    round trip): its version was refused as 'unknown', its other integers taken,
    and its booleans (``even_batches``, ``drop_last``) refused as no state's."""
    kw = {"batch_size": 10, "order": OrderOption.RANDOM}
    state = saved_mid_epoch(rank_loader(paged, 0, 2, monkeypatch, **kw))
    numpy_state = {key: np.int64(value) if type(value) is int
                   else np.bool_(value) if type(value) is bool else value
                   for key, value in state.items()}
    assert type(numpy_state["version"]) is np.int64
    assert type(numpy_state["drop_last"]) is np.bool_
    expected, resumed = (rank_loader(paged, 0, 2, monkeypatch, **kw) for _ in range(2))
    expected.load_state_dict(state)
    resumed.load_state_dict(numpy_state)
    assert epoch_ids(resumed) == epoch_ids(expected)


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: o.name)
@pytest.mark.parametrize("world", [61, 100])
def test_more_ranks_than_samples_spread_the_padding(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    order: OrderOption, world: int) -> None:
    """Every rank gets a batch; the ranks left without a sample of their own
    repeat the samples in turn (QUASI_RANDOM gave every one of them the same
    sample: 51 copies of it in an epoch of 50 samples on 100 ranks)."""
    path = tmp_path / "fifty.beton"
    DatasetWriter(path, {"index": IntField(), "blob": BytesField()}, num_workers=1,
                  progress=False).from_indexed_dataset(
        [(i, np.full(100, i, np.uint8)) for i in range(50)])
    seen = np.concatenate([epoch_ids(rank_loader(path, r, world, monkeypatch, batch_size=1,
                                                 order=order, drop_last=False))
                           for r in range(world)])
    assert len(seen) == world
    assert set(seen.tolist()) == set(range(50))
    assert np.bincount(seen).max() <= -(-world // 50)


@pytest.mark.parametrize("order", [OrderOption.QUASI_RANDOM, OrderOption.RANDOM],
                         ids=lambda o: o.name)
def test_a_state_from_before_the_rank_cuts_changed(paged: Path, monkeypatch: pytest.MonkeyPatch,
                                                   order: OrderOption) -> None:
    """Version 1 states were saved when distributed QUASI_RANDOM cut ranks between
    pages: resuming one of its epochs mid-way would skip and repeat samples (439
    of 2,253 each on 4 ranks), so it is refused; other orders and states saved
    between epochs resume as before."""
    loader = rank_loader(paged, 0, 2, monkeypatch, batch_size=10, order=order)
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    iterator.close()
    assert state["version"] == 2
    old = {**state, "version": 1}
    fresh = rank_loader(paged, 0, 2, monkeypatch, batch_size=10, order=order)
    if order is OrderOption.QUASI_RANDOM:
        with pytest.raises(ValueError, match="cut the ranks differently"):
            fresh.load_state_dict(old)
        fresh.load_state_dict({**old, "segments": []})  # that epoch again, from its start
        assert fresh.next_epoch == state["epoch"]
    else:
        fresh.load_state_dict(old)
        assert len(epoch_ids(fresh)) == len(epoch_ids(rank_loader(
            paged, 0, 2, monkeypatch, batch_size=10, order=order))) - 10


@pytest.mark.parametrize(("old_world", "new_world"), [(2, 3), (3, 2), (2, 1)])
def test_resume_on_another_world_size(paged: Path, monkeypatch: pytest.MonkeyPatch,
                                      old_world: int, new_world: int) -> None:
    """The epoch's remaining samples are split again: none lost, none repeated."""
    consumed: list[int] = []
    states = []
    for r in range(old_world):
        loader = rank_loader(paged, r, old_world, monkeypatch, batch_size=10,
                             order=OrderOption.QUASI_RANDOM, drop_last=False,
                             even_batches=False)
        iterator = iter(loader)
        for _ in range(5):
            consumed.extend(int(i) for i in next(iterator)[0].ravel())
        states.append(loader.state_dict())
        iterator.close()
    assert all(s == states[0] for s in states)  # every rank saves the same state
    rest: list[int] = []
    for r in range(new_world):
        if new_world == 1:
            monkeypatch.setattr(loader_module, "_distributed_context", lambda: (0, 1))
        loader = rank_loader(paged, r, new_world, monkeypatch, batch_size=10,
                             order=OrderOption.QUASI_RANDOM, drop_last=False,
                             even_batches=False)
        loader.load_state_dict(states[0])
        rest.extend(epoch_ids(loader))
    assert sorted(consumed + rest) == list(range(1003))


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: o.name)
@pytest.mark.parametrize("drop_last", [True, False])
def test_resume_exact_on_the_same_world_size(paged: Path, monkeypatch: pytest.MonkeyPatch,
                                              order: OrderOption, drop_last: bool) -> None:
    """Each of 3 ranks resumed after 2 batches yields exactly what it would have."""
    for r in range(3):
        full = epoch_ids(rank_loader(paged, r, 3, monkeypatch, batch_size=10, order=order,
                                     drop_last=drop_last))
        first = rank_loader(paged, r, 3, monkeypatch, batch_size=10, order=order,
                            drop_last=drop_last)
        iterator = iter(first)
        head = [int(i) for _ in range(2) for i in next(iterator)[0].ravel()]
        state = first.state_dict()
        iterator.close()
        resumed = rank_loader(paged, r, 3, monkeypatch, batch_size=10, order=order,
                              drop_last=drop_last)
        resumed.load_state_dict(state)
        assert head + epoch_ids(resumed) == full


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: o.name)
def test_no_rank_is_left_without_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         order: OrderOption) -> None:
    path = tmp_path / "three.beton"
    DatasetWriter(path, {"index": IntField(), "blob": BytesField()}, num_workers=1,
                  progress=False).from_indexed_dataset(
        [(i, np.zeros(5, np.uint8)) for i in range(3)])
    lengths = [len(rank_loader(path, r, 4, monkeypatch, batch_size=1, order=order,
                               drop_last=False)) for r in range(4)]
    assert lengths == [1, 1, 1, 1]


def test_quasi_random_ranks_are_balanced(paged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = [len(epoch_ids(rank_loader(paged, r, 2, monkeypatch, batch_size=10,
                                       order=OrderOption.QUASI_RANDOM, drop_last=False,
                                       even_batches=False))) for r in range(2)]
    assert abs(sizes[0] - sizes[1]) <= 100  # within a page (about 100 samples here)


# -- found by mutating the code (each of these failed against one mutation that the
# -- suite let pass)


def test_distributed_padding_repeats_the_epochs_head() -> None:
    """As DistributedSampler pads: the first samples of the epoch, in order."""
    from fastforward.traversal_order.sharding import strided

    shards = strided(np.arange(10, 20), 4, True)
    padded = np.concatenate([shard.order[shard.padding] for shard in shards])
    assert sorted(padded.tolist()) == [10, 11]


def stop_each_rank(path: Path, world: int, batches: int, monkeypatch: pytest.MonkeyPatch,
                   state: dict | None = None, **kw: Any) -> tuple[list[int], list[dict]]:
    """Every rank of *world* (resumed from *state*) takes *batches* batches and saves
    its state: the sample ids seen, and the states."""
    seen, states = [], []
    for rank in range(world):
        loader = rank_loader(path, rank, world, monkeypatch, **kw)
        if state is not None:
            loader.load_state_dict(state)
        iterator = iter(loader)
        for _ in range(batches):
            seen += [int(i) for i in next(iterator)[0].ravel()]
        states.append(loader.state_dict())
        iterator.close()
    return seen, states


@pytest.mark.parametrize("order", [OrderOption.RANDOM, OrderOption.QUASI_RANDOM],
                         ids=lambda o: o.name)
def test_a_resume_on_another_world_size_leaves_the_old_padding_out(
        paged: Path, monkeypatch: pytest.MonkeyPatch, order: OrderOption) -> None:
    """1,003 samples on 2 ranks: one padding sample. The 903 left after 5 batches
    a rank split evenly over 3 ranks, with no padding: the old split's padding
    sample is not carried into the new one (it was, making 906)."""
    kw: dict[str, Any] = {"batch_size": 10, "order": order, "drop_last": False}
    seen, states = stop_each_rank(paged, 2, 5, monkeypatch, **kw)
    rest: list[int] = []
    for rank in range(3):
        loader = rank_loader(paged, rank, 3, monkeypatch, **kw)
        loader.load_state_dict(states[0])
        rest += epoch_ids(loader)
    assert len(rest) == 1003 - len(seen)
    assert sorted(set(seen + rest)) == list(range(1003))


def test_two_resumes_keep_the_first_splits_padding_marked(
        paged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resumed on the same world size, then on another: the first split's padding
    stays padding, so the last split repeats none of the samples seen before."""
    kw: dict[str, Any] = {"batch_size": 10, "order": OrderOption.RANDOM, "drop_last": False}
    seen, states = stop_each_rank(paged, 2, 3, monkeypatch, **kw)
    more, states = stop_each_rank(paged, 2, 3, monkeypatch, states[0], **kw)
    seen += more
    rest: list[int] = []
    for rank in range(3):
        loader = rank_loader(paged, rank, 3, monkeypatch, **kw)
        loader.load_state_dict(states[0])
        rest += epoch_ids(loader)
    assert set(rest).isdisjoint(seen)
    assert sorted(set(seen + rest)) == list(range(1003))


def test_seeds_that_differ_above_32_bits_give_other_orders_and_draws(paged: Path) -> None:
    """Seeds are 63-bit: the orders' generators and the per-sample draws take
    every bit (a mutation keeping only the low 32 passed the suite)."""
    from fastforward.pipeline.random import uniform

    high = 5 + (1 << 32)
    for order in (OrderOption.RANDOM, OrderOption.QUASI_RANDOM):
        a, b = (Loader(paged, 10, order=order, seed=seed, pipelines=INDEX_ONLY)
                .traversal_order.sample_order(0) for seed in (5, high))
        assert not np.array_equal(a, b)
    samples = np.arange(8)
    assert not np.array_equal(uniform(5, 0, samples, 1, 2), uniform(high, 0, samples, 1, 2))


def test_quasi_random_ranks_draw_from_streams_of_their_own(paged: Path) -> None:
    """Each rank's QUASI_RANDOM order of its share is drawn from a stream of its
    own (salt 1 + rank; the page cycle from salt 0); every rank drawing from
    salt 1 passed the suite."""
    order = Loader(paged, 10, order=OrderOption.QUASI_RANDOM, seed=3,
                   pipelines=INDEX_ONLY).traversal_order
    salts: list[int] = []
    draw = order.rng

    def recorded(epoch: int, salt: int = 0) -> np.random.Generator:
        salts.append(salt)
        return draw(epoch, salt)

    order.rng = recorded  # type: ignore[method-assign]
    order.rank_orders(0, 3, False)
    assert sorted(salts) == [0, 1, 2, 3]


def test_a_state_past_the_full_batches_is_refused_under_drop_last(paged: Path) -> None:
    """1,003 samples make 100 full batches of 10: with drop_last, a state at batch
    101 (the dropped partial one) is no position of the epoch."""
    def make() -> Loader:
        return Loader(paged, 10, order=OrderOption.RANDOM, seed=1, drop_last=True,
                      pipelines=INDEX_ONLY)

    loader = make()
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    iterator.close()
    state["segments"] = [[1, 101]]
    with pytest.raises(ValueError, match="at most 100"):
        make().load_state_dict(state)


def test_filter_keeps_the_loaders_current_seed(paged: Path) -> None:
    """A seed set after the loader was made carries into the filtered one."""
    loader = Loader(paged, 10, order=OrderOption.RANDOM, pipelines=INDEX_ONLY)
    loader.seed = 1234
    assert loader.filter("index", lambda x: x % 2 == 0).seed == 1234

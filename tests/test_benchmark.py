"""The benchmark's steady-state rule, on a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from fastforward import benchmark


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("skip", [0, 1, 3])
def test_steady_state_leaves_out_the_epochs_start(monkeypatch: pytest.MonkeyPatch,
                                                  skip: int) -> None:
    clock = Clock()
    monkeypatch.setattr(benchmark.time, "perf_counter", clock)
    # batch k arrives after `gaps[k]` seconds: a slow start, then a steady pace
    gaps = [5.0, 2.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    sizes = [8, 8, 8, 8, 8, 8, 3]

    def epoch():  # type: ignore[no-untyped-def]
        for gap, size in zip(gaps, sizes, strict=True):
            clock.now += gap
            yield (np.zeros(size), None)

    (images, seconds), (start_images, start_seconds) = benchmark.steady_state(epoch(), skip)
    first = max(1, skip)
    assert images == sum(sizes[first:])
    assert seconds == pytest.approx(sum(gaps[first:]))
    assert start_images == sum(sizes[:first])
    assert start_seconds == pytest.approx(sum(gaps[:first]))


def test_steady_state_of_an_epoch_of_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(benchmark.time, "perf_counter", Clock())
    assert benchmark.steady_state(iter([(np.zeros(4),)]))[0] == (0, 0.0)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray]):  # type: ignore[no-untyped-def]
    from fastforward.fields import IntField, RGBImageField
    from fastforward.writer import DatasetWriter

    path = tmp_path_factory.mktemp("benchmark") / "small.beton"
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg"), "label": IntField()},
                  num_workers=1, progress=False).from_indexed_dataset(
        [(images[k % len(images)], k) for k in range(40)])
    return path


def test_loader_throughput_counts_the_steady_batches(small_file) -> None:  # type: ignore[no-untyped-def]
    # 10 batches of 4 per epoch: the first epoch leaves out its ring warm-up, the
    # second only its first batch
    m = benchmark.loader_throughput(small_file, "center_crop", batch_size=4, epochs=2,
                                    num_workers=1)
    warmup = benchmark.warmup_batches(10, 6)
    assert warmup > 1
    assert m.images == 4 * ((10 - warmup) + 9)
    assert "start-up" not in m.name


@pytest.mark.parametrize("batch_size", [8, 16])
def test_loader_throughput_of_too_few_batches_times_whole_epochs(  # type: ignore[no-untyped-def]
        small_file, batch_size: int) -> None:
    # 5 and 2 batches per epoch: the batches after the first would be mostly
    # the ones prepared ahead, so the whole epochs are timed, and named so
    batches = 40 // batch_size
    assert batches - 1 < benchmark.STEADY_MIN_BATCHES
    m = benchmark.loader_throughput(small_file, "center_crop", batch_size=batch_size, epochs=2,
                                    num_workers=1)
    assert m.images == 2 * batches * batch_size
    assert m.name.endswith("with start-up")


def test_loader_throughput_of_a_file_smaller_than_a_batch(small_file) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"small\.beton: 40 samples make no batch of 64"):
        benchmark.loader_throughput(small_file, "center_crop", batch_size=64, num_workers=1)


def test_loader_throughput_after_warmup_epochs_counts_each_epoch_but_its_first_batch(
        small_file) -> None:  # type: ignore[no-untyped-def]
    # 10 batches of 4 per epoch; one whole epoch of warm-up, then 2 epochs of 9
    # counted batches each, where without it the first epoch leaves out its ring
    # warm-up (more than one batch)
    m = benchmark.loader_throughput(small_file, "center_crop", batch_size=4, epochs=2,
                                    num_workers=1, warmup_epochs=1)
    assert m.images == 4 * (9 + 9)
    assert "start-up" not in m.name
    cold = benchmark.loader_throughput(small_file, "center_crop", batch_size=4, epochs=2,
                                       num_workers=1)
    assert cold.images < m.images


def test_loader_throughput_of_one_batch_epochs_includes_the_start(small_file) -> None:  # type: ignore[no-untyped-def]
    m = benchmark.loader_throughput(small_file, "center_crop", batch_size=32, epochs=2,
                                    num_workers=1)
    assert m.images == 64
    assert m.name.endswith("with start-up")


def test_side_by_side_keeps_each_round_in_turn() -> None:
    """The medians lost the pairing of figures taken in the same round: per-round
    ratios (what alternation is for) could not be computed."""
    rates = {"a": iter([10.0, 30.0, 20.0]), "b": iter([5.0, 10.0, 20.0])}
    measures = {name: (lambda name=name: benchmark.Measurement(name, int(next(rates[name])), 1.0))
                for name in rates}
    figures = benchmark.side_by_side(measures, rounds=3)
    assert figures["a"].rate == 20.0
    assert figures["b"].rate == 10.0
    assert figures["a"].rounds == (10.0, 30.0, 20.0)
    assert benchmark.paired_ratios(figures["a"], figures["b"]) == [2.0, 3.0, 1.0]
    single = benchmark.side_by_side({"a": lambda: benchmark.Measurement("a", 1, 1.0)})
    assert benchmark.paired_ratios(single["a"], single["a"]) == []


def test_side_by_side_starts_each_round_one_measurement_further_on() -> None:
    """The order never changed: the decode limit always went first, FFCV last."""
    calls: list[str] = []

    def measure(name: str) -> benchmark.Measurement:
        calls.append(name)
        return benchmark.Measurement(name, 1, 1.0)

    benchmark.side_by_side({name: (lambda name=name: measure(name)) for name in "abc"},
                           rounds=4)
    assert "".join(calls) == "abc" + "bca" + "cab" + "abc"
    assert benchmark.side_by_side({}, rounds=2) == {}


@pytest.mark.parametrize("fastdct", [False, True])
def test_the_decode_limit_with_reused_buffers_decodes_every_image(
        small_file, monkeypatch: pytest.MonkeyPatch, fastdct: bool) -> None:  # type: ignore[no-untyped-def]
    """Each thread decodes every one of its JPEGs into its own buffer, as simplejpeg
    would into a new array."""
    import simplejpeg

    from fastforward.reader import Reader

    blobs = benchmark.stored_jpegs(Reader(small_file), "image")
    real, seen = simplejpeg.decode_jpeg, []

    def decode(blob, **options):  # type: ignore[no-untyped-def]
        out = real(blob, **options)
        assert options["buffer"] is not None
        assert options["fastdct"] is fastdct
        np.testing.assert_array_equal(out, real(blob, fastdct=fastdct))
        seen.append((options["buffer"], blob))  # the buffers kept alive
        return out

    monkeypatch.setattr(simplejpeg, "decode_jpeg", decode)
    m = benchmark.decode_limit(blobs, threads=2, fastdct=fastdct, repeat=2, reuse_buffers=True)
    assert m.images == 2 * len(blobs)
    assert sorted(b for _, b in seen) == sorted(blobs * 2)
    # one buffer per thread's share, for all its decodes and repeats (the buffers are
    # held in `seen`, so their ids are theirs alone)
    by_buffer: dict[int, list[bytes]] = {}
    for buffer, blob in seen:
        by_buffer.setdefault(id(buffer), []).append(blob)
    assert sorted(sorted(b) for b in by_buffer.values()) == sorted(
        sorted(blobs[k::2] * 2) for k in range(2))
    assert "reused buffers" in m.name

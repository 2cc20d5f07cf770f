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

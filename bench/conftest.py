"""Benchmark fixtures: a realistic corpus made offline, and the throughput helper.

``--bench-scale N`` multiplies the corpus size (default: smoke size, 1).
"""

from __future__ import annotations

from pathlib import Path

import pytest

BASE_IMAGES = 300


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-scale", type=float, default=1.0,
                     help=f"corpus size as a multiple of {BASE_IMAGES} images")


@pytest.fixture(scope="session")
def corpus_size(request: pytest.FixtureRequest) -> int:
    return max(8, int(BASE_IMAGES * request.config.getoption("--bench-scale")))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, corpus_size: int) -> Path:
    """An ImageFolder of real photographs, about 500×375, ~100 KB at quality 89-97."""
    from fastforward.demo import make_corpus

    return make_corpus(tmp_path_factory.mktemp("bench") / "images", corpus_size, seed=0)


RESULTS: dict[str, float] = {}  # benchmark name -> items/s, for the closing table


def record_throughput(benchmark: object, items: int, unit: str = "images_per_s") -> None:
    """Put items/s beside the timings (stats are None under --benchmark-disable)."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        rate = items / stats.stats.median
        benchmark.extra_info[unit] = rate  # type: ignore[attr-defined]
        RESULTS[benchmark.name] = rate  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: object) -> None:
    """Print images/s of every benchmark that ran, and each as a ratio of the first."""
    if not RESULTS:
        return
    write = terminalreporter.write_line  # type: ignore[attr-defined]
    write("")
    write(f"{'benchmark':<40} {'images/s':>10}")
    for name, rate in RESULTS.items():
        write(f"{name:<40} {rate:>10.0f}")

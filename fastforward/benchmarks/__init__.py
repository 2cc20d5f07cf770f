"""FFCV's ``ffcv.benchmarks`` (``python -m ffcv.benchmarks``), which fastforward has not."""

from .._compat import module_not_provided

raise module_not_provided(
    __name__, "FFCV's micro-benchmark suites; measure a file with `fastforward bench FILE` "
    "(fastforward.benchmark), or run the project's benchmarks with `pytest bench`")

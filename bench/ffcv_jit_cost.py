"""What an FFCV numba operation costs at Loader(): numba's compilation, paid once.

Builds a loader with two FFCV-style operations (``examples/ffcv_operations.py``)
and prints: importing numba; the first ``Loader()`` in the process and each
operation's share of it; the first batch after it; a second ``Loader()`` of
the same pipeline (compiled already). Needs the numba extra.

    python bench/ffcv_jit_cost.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from ffcv_operations import MirrorSome, ShiftLabelsOfEvenSamples

from fastforward.demo import load_photos
from fastforward.fields import IntField, RGBImageField
from fastforward.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
from fastforward.loader import Loader
from fastforward.writer import DatasetWriter


def build(path: Path) -> tuple[float, float, list[float]]:
    started = time.perf_counter()
    loader = Loader(path, 32, pipelines={
        "image": [CenterCropRGBImageDecoder((64, 64), 1.0), MirrorSome()],
        "label": [IntDecoder(), ShiftLabelsOfEvenSamples()]})
    built = time.perf_counter() - started
    started = time.perf_counter()
    next(iter(loader))
    first = time.perf_counter() - started
    return built, first, [step.op.compile_seconds for p in loader.pipelines for step in p.steps]


def main() -> None:
    photos = load_photos()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "jit.beton"
        DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", max_resolution=128),
                             "label": IntField()}, progress=False, num_workers=1) \
            .from_indexed_dataset([(photos[i % len(photos)], i) for i in range(64)])
        started = time.perf_counter()
        try:
            import numba  # noqa: F401 - its import is part of the cost
        except ImportError:
            sys.exit("this measures numba's compilation: pip install '.[numba]' first")

        imported = time.perf_counter() - started
        built, first, ops = build(path)
        again, _, _ = build(path)
    print(f"import numba {imported:.2f} s | first Loader() {built:.2f} s (operations "
          f"{' + '.join(f'{s:.2f}' for s in ops)} s) | first batch {first * 1000:.0f} ms | "
          f"the same pipeline again: Loader() {again:.3f} s")


if __name__ == "__main__":
    main()

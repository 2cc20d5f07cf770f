"""FFCV-style custom operations (numba) beside their plain-Python ports.

An FFCV operation is a code generator: ``generate_code()`` returns a function
that numba compiles, looping over the batch with ``Compiler.get_iterator()``.
fastforward runs such operations unchanged when numba is installed (``pip
install numba``). This script loads real photographs (shipped
with scikit-image) through two such operations, one random (a mirror, per
image) and one keyed by the sample index (``with_indices``), then through
their ports to ``Operation.apply``, which need no compiler, and checks that
the ported index-keyed operation gives the same labels.

    python examples/ffcv_operations.py [--images 256] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from fastforward.fields import IntField, RGBImageField
from fastforward.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
from fastforward.loader import Loader, OrderOption
from fastforward.pipeline.allocation_query import AllocationQuery
from fastforward.pipeline.compiler import Compiler
from fastforward.pipeline.operation import Operation
from fastforward.writer import DatasetWriter


class MirrorSome(Operation):
    """FFCV style: mirror each image with probability one half (np.random in numba)."""

    def generate_code(self):
        loop = Compiler.get_iterator()  # prange when Compiler.set_num_threads(n > 1)

        def mirror(images, out):
            coins = np.random.rand(images.shape[0])
            for i in loop(images.shape[0]):
                if coins[i] < 0.5:
                    out[i] = images[i, :, ::-1]
                else:
                    out[i] = images[i]
            return out

        mirror.is_parallel = True
        return mirror

    def declare_state_and_memory(self, previous_state):
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)


class ShiftLabelsOfEvenSamples(Operation):
    """FFCV style, with the batch's sample indices: in place, no buffer."""

    def generate_code(self):
        loop = Compiler.get_iterator()

        def shift(labels, _, indices):
            for i in loop(labels.shape[0]):
                if indices[i] % 2 == 0:
                    labels[i] += 1000
            return labels

        shift.is_parallel = True
        shift.with_indices = True
        return shift

    def declare_state_and_memory(self, previous_state):
        return previous_state, None


class MirrorSomePorted(Operation):
    """The same as MirrorSome, ported: randomness from the context, NumPy, no compiler."""

    def declare_state_and_memory(self, previous_state):
        return previous_state, AllocationQuery(previous_state.shape, previous_state.dtype)

    def apply(self, images, out, context):
        mirrored = context.uniform(1)[:, 0] < 0.5
        out[:] = images
        out[mirrored] = images[mirrored, :, ::-1]
        return out


class ShiftLabelsOfEvenSamplesPorted(Operation):
    """ShiftLabelsOfEvenSamples ported: the indices come with the context."""

    def apply(self, labels, out, context):
        labels[context.indices % 2 == 0] += 1000
        return labels


def run(path: Path, image_op: Operation, label_op: Operation, epochs: int) -> list[int]:
    started = time.perf_counter()
    loader = Loader(path, 64, order=OrderOption.RANDOM, seed=0, pipelines={
        "image": [CenterCropRGBImageDecoder((96, 96), 1.0), image_op],
        "label": [IntDecoder(), label_op]})
    built = time.perf_counter() - started
    labels = []
    for epoch in range(epochs):
        started = time.perf_counter()
        for _, batch in loader:
            labels += batch[:, 0].tolist()
        print(f"  epoch {epoch}: {time.perf_counter() - started:.2f} s")
    print(f"  Loader() took {built:.2f} s (numba's compilation, when there is one)")
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    from fastforward.demo import load_photos

    photos = load_photos()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "photos.beton"
        samples = [(photos[i % len(photos)], i) for i in range(args.images)]
        DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", max_resolution=128),
                             "label": IntField()}, progress=False).from_indexed_dataset(samples)
        print("FFCV operations (numba):")
        ffcv = run(path, MirrorSome(), ShiftLabelsOfEvenSamples(), args.epochs)
        print("ported operations (plain Python):")
        ported = run(path, MirrorSomePorted(), ShiftLabelsOfEvenSamplesPorted(), args.epochs)
    assert ffcv == ported, "the two label pipelines disagree"
    print(f"the same {len(ffcv)} labels from both")


if __name__ == "__main__":
    main()

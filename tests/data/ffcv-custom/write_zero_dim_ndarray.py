"""Writes zero_dim_ndarray.beton with FFCV 1.0.2 (run where ``import ffcv`` works):
an NDArrayField of shape (0, 3), whose samples hold no values, beside an IntField.
FFCV writes and reads it; fastforward refused to open it ("invalid NDArray shape")."""

import sys

import numpy as np
from ffcv.fields import IntField, NDArrayField
from ffcv.writer import DatasetWriter

SAMPLES = 5


class Samples:
    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return np.zeros((0, 3), np.float32), 10 * i


if __name__ == "__main__":
    DatasetWriter(sys.argv[1] if len(sys.argv) > 1 else "zero_dim_ndarray.beton",
                  {"empty": NDArrayField(np.dtype("float32"), (0, 3)), "label": IntField()},
                  num_workers=1, page_size=1 << 21).from_indexed_dataset(Samples())

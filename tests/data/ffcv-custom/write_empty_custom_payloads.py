"""Writes empty_custom_payloads.beton with FFCV 1.0.2 (``python
write_empty_custom_payloads.py``, where ``import ffcv`` works).

FFCV stores an empty payload at the next payload's offset. Here a custom field
(``Blob``: a pointer and a length, as users' own fields do) comes before a
BytesField and another custom field, so that a sample's empty custom payload and
the next field's payload share an offset (a detection sample without boxes)."""

import numpy as np
from ffcv.fields import BytesField, Field
from ffcv.fields.base import ARG_TYPE
from ffcv.writer import DatasetWriter


class Blob(Field):
    TYPE_ID = 255

    @property
    def metadata_type(self):
        return np.dtype([("ptr", "<u8"), ("len", "<u8")])

    @staticmethod
    def from_binary(binary):
        return Blob()

    def to_binary(self):
        return np.zeros(1, dtype=ARG_TYPE)[0]

    def encode(self, destination, field, malloc):
        ptr, buffer = malloc(field.size)
        buffer[:] = field
        destination["ptr"] = ptr
        destination["len"] = field.size

    def get_decoder_class(self):
        raise NotImplementedError


def blob(values):
    return np.asarray(values, np.uint8)


SAMPLES = [  # (blob, b, tail)
    (blob([]), blob([0, 1, 2]), blob([7, 8])),
    (blob([1, 2, 3, 4, 5]), blob([]), blob([9])),
    (blob([]), blob([]), blob([])),
    (blob([]), blob([10, 11, 12, 13]), blob([])),
    (blob([20]), blob([21, 22]), blob([23, 24, 25])),
]

if __name__ == "__main__":
    DatasetWriter("empty_custom_payloads.beton",
                  {"blob": Blob(), "b": BytesField(), "tail": Blob()},
                  page_size=1 << 21, num_workers=1).from_indexed_dataset(SAMPLES)

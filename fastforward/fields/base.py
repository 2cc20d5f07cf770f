"""The ``Field`` base class: what a column of a .beton file is and how it is
written and read back.

A field contributes one column to the metadata table (``metadata_type``),
1024 bytes of arguments to its descriptor (``to_binary``/``from_binary``) and,
through ``malloc``, payload bytes in the data pages (``encode``). Subclass it
for a custom field: the writer stores any class that is not exactly one of the
built-ins with type id 255, and the reader needs the class again, by field
name, through ``custom_handlers`` (``Reader``) or ``custom_fields``
(``Loader``).
"""

from __future__ import annotations

import contextvars
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ..errors import EncodeError

ARG_TYPE = np.dtype([("f0", "u1", 1024)])  # (FFCV names it "", which NumPy calls f0)
"""The descriptor's 1024 argument bytes."""

Malloc = Callable[[int], tuple[int, np.ndarray]]
"""``malloc(nbytes) -> (file_offset, writable uint8 buffer of nbytes)``."""

PayloadReader = Callable[[int], memoryview]
"""``read(file_offset) -> the payload's bytes`` (its length comes from the
allocation table)."""


class Field(ABC):
    """One column of a dataset: its metadata, its arguments and its encoder."""

    TYPE_ID: ClassVar[int] = 255
    """The descriptor's type id; built-in classes override it, custom ones keep 255."""
    RECORDS_SIZE: ClassVar[bool] = False
    """Whether its ``encode`` records each image's size (``record_size``), so
    that other fields can follow it (``RaggedField(follows=...)``)."""
    follows: str | None = None
    """The field (a name) whose image sizes this one's coordinates follow when
    written (``RaggedField(follows=...)``): the writer encodes that one first."""

    @property
    @abstractmethod
    def metadata_type(self) -> np.dtype:
        """The dtype of this field's column in the metadata table."""

    @staticmethod
    @abstractmethod
    def from_binary(binary: np.ndarray) -> Field:
        """Rebuild the field from its descriptor's 1024 argument bytes."""

    @abstractmethod
    def to_binary(self) -> np.ndarray:
        """Return the 1024 argument bytes stored in the field's descriptor."""

    @abstractmethod
    def encode(self, destination: np.ndarray, field: Any, malloc: Malloc) -> None:
        """Write one sample: fill ``destination[0]`` (its metadata row) and
        copy payload bytes into buffers obtained from *malloc*.

        The pointer *malloc* returns must be stored in the metadata as it is:
        the writer relocates it once the sample's page is known.
        """

    def get_decoder_class(self) -> type:
        """The decoder used when a loader pipeline names none for this field."""
        raise NotImplementedError(f"{type(self).__name__} declares no default decoder")

    def read(self, row: np.void, read_payload: PayloadReader) -> Any:
        """Decode one sample for random access (``Reader.read``); ``row`` is
        this field's metadata value. Custom fields may override it."""
        raise NotImplementedError(f"{type(self).__name__} does not support Reader.read")

    def payload_pointers(self, column: np.ndarray) -> np.ndarray | None:
        """The file offsets this column points at (for verification), or None."""
        return None


def empty_arguments() -> np.ndarray:
    """1024 zero bytes: the arguments of every field that has none."""
    return np.zeros(1, dtype=ARG_TYPE)[0]


CURRENT_SAMPLE: contextvars.ContextVar[tuple[int, int, int] | None] = contextvars.ContextVar(
    "fastforward_current_sample", default=None
)
"""``(seed, sample_index, field_index)`` of the sample being encoded; the
writer sets it so that fields with randomness are reproducible per sample."""


def sample_rng() -> np.random.Generator:
    """A generator seeded by the sample being written, or a fresh one outside a writer."""
    key = CURRENT_SAMPLE.get()
    return np.random.default_rng(None if key is None else list(key))


class SampleSizes:
    """The sizes of the images of the sample being written, by field name:
    ``(source_height, source_width, stored_height, stored_width)``.

    A field that stores an image (``RGBImageField``, ``MaskField``,
    ``MultiChannelImageField``) records its image's size as given and as
    stored (``record_size``); a field that follows it
    (``RaggedField(follows=...)``) scales its coordinates by the same factors
    (``size_of``). The writer encodes the images of a sample before the fields
    that follow them.
    """

    __slots__ = ("names", "sizes")

    def __init__(self, names: list[str]) -> None:
        self.names = names  # the writer's fields, in their order
        self.sizes: dict[str, tuple[int, int, int, int]] = {}


SAMPLE_SIZES: contextvars.ContextVar[SampleSizes | None] = contextvars.ContextVar(
    "fastforward_sample_sizes", default=None
)


def record_size(source: tuple[int, int], stored: tuple[int, int]) -> None:
    """Record the (height, width) of the image being encoded, as given and as
    stored, for the fields that follow it (nothing outside a writer)."""
    sizes, key = SAMPLE_SIZES.get(), CURRENT_SAMPLE.get()
    if sizes is not None and key is not None:
        sizes.sizes[sizes.names[key[2]]] = (int(source[0]), int(source[1]),
                                            int(stored[0]), int(stored[1]))


def followed_size(leader: str | None, who: str, cls: str) -> tuple[int, int, int, int]:
    """What field *leader* recorded for the sample being written, for a field (a
    *cls*, described as *who* in the error) that follows it; EncodeError if none."""
    size = size_of(leader) if leader is not None else None
    if size is None:
        raise EncodeError(f"{who} follows field {leader!r}, which recorded no image size for "
                          f"this sample ({cls}(follows=...) is for the writer, which encodes "
                          "that field first)")
    return size


def size_of(name: str) -> tuple[int, int, int, int] | None:
    """What field *name* recorded for the sample being written (``record_size``),
    or None (outside a writer, or it recorded nothing)."""
    sizes = SAMPLE_SIZES.get()
    return None if sizes is None else sizes.sizes.get(name)

"""fastforward's own field types, stored so that FFCV can still open the file.

A tagged field is written with FFCV's custom type id (255), like any custom
field, but fastforward's reader recognises it without ``custom_fields``: its
descriptor's 1024 argument bytes are::

    0     MARKER (b"fastforward-field\\0", 18 bytes)
    18    n, little-endian u2: the length of the JSON text
    20    n bytes of UTF-8 JSON: {"type": <class name>, "version": 1, ...its arguments}
    ...   zeros

and its metadata row is exactly ``BytesField``'s, ``(ptr <u8, size <u8)``:
one payload per sample. So FFCV 1.0.2 reads such a file when told
``custom_handlers={name: BytesField}`` for each tagged field, and gets every
sample's stored bytes (the layout of those bytes is each field's own; see
``RaggedField``, ``MaskField`` and ``MultiChannelImageField``).

The types recognised are listed in ``TAGGED_TYPES``, by class name: a file
can name only these, never an arbitrary class.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np

from ..errors import FormatError
from .base import ARG_TYPE, Field, Malloc, PayloadReader
from .bytes import BYTES_METADATA

MARKER = b"fastforward-field\0"
_HEAD = len(MARKER) + 2  # the marker, then the JSON text's length (u2)
VERSION = 1


def tagged_types() -> dict[str, type[TaggedField]]:
    """The tagged field classes this version knows, by the names files give them."""
    from .mask import MaskField
    from .multichannel import MultiChannelImageField
    from .ragged import RaggedField

    return {"RaggedField": RaggedField, "MaskField": MaskField,
            "MultiChannelImageField": MultiChannelImageField}


TAGGED_TYPES = ("RaggedField", "MaskField", "MultiChannelImageField")
"""The tagged field types this version of fastforward recognises."""


def parse_arguments(binary: Any) -> dict[str, Any] | None:
    """The JSON arguments of a tagged field's descriptor, or None when the
    1024 bytes do not start with ``MARKER`` (any other field).

    Raises:
        FormatError: the marker is there but what follows is not valid.
    """
    raw = np.asarray(binary).tobytes()
    if not raw.startswith(MARKER):
        return None
    length = int.from_bytes(raw[len(MARKER) : _HEAD], "little")
    if _HEAD + length > len(raw):
        raise FormatError(f"tagged field arguments of {length} bytes overrun the descriptor")
    try:
        arguments = json.loads(raw[_HEAD : _HEAD + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"unreadable tagged field arguments: {exc}") from None
    if not isinstance(arguments, dict) or not isinstance(arguments.get("type"), str):
        raise FormatError(f"tagged field arguments without a type: {arguments!r}")
    return arguments


def tagged_class(binary: Any) -> type[Field] | None:
    """The field class a descriptor's argument bytes name, if it is a tagged field
    of a type this version knows (None otherwise)."""
    arguments = parse_arguments(binary)
    if arguments is None:
        return None
    return tagged_types().get(arguments["type"])


def describe_unknown(binary: Any) -> str | None:
    """A sentence for a tagged field whose type this version does not know (None:
    not a tagged field, or a known one)."""
    try:
        arguments = parse_arguments(binary)
    except FormatError as exc:
        return str(exc)
    if arguments is None or arguments["type"] in tagged_types():
        return None
    return (f"a fastforward field of type {arguments['type']!r}, which this version does not "
            f"know (it knows {', '.join(TAGGED_TYPES)}): upgrade fastforward")


class TaggedField(Field):
    """Base of fastforward's own field types (see the module docstring).

    Subclasses give their arguments (``arguments`` / ``from_arguments``), turn
    one sample into payload bytes (``payload``) and back (``decode``).
    """

    VERSION: ClassVar[int] = VERSION

    @property
    def metadata_type(self) -> np.dtype:
        return BYTES_METADATA

    def arguments(self) -> dict[str, Any]:
        """What ``from_arguments`` needs to rebuild this field (JSON values)."""
        raise NotImplementedError

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> TaggedField:
        """Rebuild the field from its stored arguments."""
        raise NotImplementedError

    def to_binary(self) -> np.ndarray:
        text = json.dumps({"type": type(self).__name__, "version": self.VERSION,
                           **self.arguments()}, separators=(",", ":")).encode("utf-8")
        if _HEAD + len(text) > ARG_TYPE.itemsize:
            raise ValueError(f"{type(self).__name__}'s arguments take {len(text)} bytes of "
                             f"JSON, more than the descriptor's {ARG_TYPE.itemsize - _HEAD}")
        raw = bytearray(ARG_TYPE.itemsize)
        raw[: len(MARKER)] = MARKER
        raw[len(MARKER) : _HEAD] = len(text).to_bytes(2, "little")
        raw[_HEAD : _HEAD + len(text)] = text
        return np.frombuffer(bytes(raw), ARG_TYPE)[0]

    @classmethod
    def from_binary(cls, binary: np.ndarray) -> Field:
        arguments = parse_arguments(binary)
        if arguments is None:
            raise FormatError(f"the field's arguments are not a {cls.__name__}'s (no "
                              "fastforward marker)")
        if arguments["type"] != cls.__name__:
            raise FormatError(f"the field is a {arguments['type']}, not a {cls.__name__}")
        version = arguments.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise FormatError(f"invalid {cls.__name__} arguments {arguments!r}: its version "
                              f"is {version!r}, not an integer")
        if version > cls.VERSION:
            raise FormatError(f"{cls.__name__} version {version} is newer than "
                              f"this fastforward reads ({cls.VERSION}): upgrade fastforward")
        try:
            return cls.from_arguments(arguments)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"invalid {cls.__name__} arguments {arguments!r}: {exc}") from None

    def payload(self, value: Any) -> np.ndarray:
        """One sample's payload bytes (a 1-D uint8 array)."""
        raise NotImplementedError

    def decode(self, data: memoryview) -> Any:
        """One sample's value from its payload bytes."""
        raise NotImplementedError

    def encode(self, destination: np.ndarray, field: Any, malloc: Malloc) -> None:
        data = self.payload(field)
        destination["ptr"], buffer = malloc(data.size)
        destination["size"] = data.size
        buffer[:] = data

    def read(self, row: np.void, read_payload: PayloadReader) -> Any:
        return self.decode(read_payload(int(row["ptr"]))[: int(row["size"])])

    def payload_pointers(self, column: np.ndarray) -> np.ndarray:
        return column["ptr"]

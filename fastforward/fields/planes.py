"""What masks and many-channel images share: one payload layout (a size, then the
values, raw or as a zstd frame) and the scratch their decoders keep.

Payload::

    0    height, little-endian u4
    4    width, little-endian u4
    8    the H·W·C values (uint8, or little-endian uint16), C order: a zstd
         frame (``compression='zstd'``) or as they are (``compression=None``)

Writing compresses with Python's zstd (``compression.zstd`` from Python 3.14,
``backports.zstd`` before); the loaders' decoders decompress with the zstd
compiled into ``fastforward._ext.planes``, without the GIL, into scratch they
keep (``ScratchPool``).
"""

from __future__ import annotations

import io
import math
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from .._ext.planes import ZstdDecoder
from .._ext.resize import Workspace
from ..errors import DecodeError, EncodeError, FastForwardError
from ..utils import install_hint

MAX_SIDE = 65535  # width and height are stored as u16

PLANES_HEADER = np.dtype([("height", "<u4"), ("width", "<u4")])
COMPRESSIONS = ("zstd", None)
PLANES_DTYPES = (np.dtype("u1"), np.dtype("<u2"))


def require_zstd() -> Any:
    """The zstd module (``compression.zstd`` on Python 3.14+, ``backports.zstd`` before)."""
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        try:
            from backports import zstd
        except ImportError as exc:
            raise ImportError("masks and many-channel images are stored with zstd: pip "
                              "install backports.zstd (a dependency of fastforward before "
                              "Python 3.14)") from exc
    return zstd


def stored_dtype(dtype: Any, what: str) -> np.dtype:
    """*dtype* as the payload stores it (little-endian); TypeError unless uint8 or
    uint16. *what* names the values in the error ("masks", "images")."""
    given = np.dtype(dtype)
    stored = given.newbyteorder("<") if given.itemsize > 1 else given
    if stored not in PLANES_DTYPES:
        raise TypeError(f"{what} are uint8 or uint16, got {given}")
    return stored


def check_resolution(value: Any, name: str) -> None:
    """``max_resolution`` or ``min_resolution``: None, or a number of pixels in [1,
    MAX_SIDE] (a fraction too, as FFCV's resizer takes it: ``1.14 * 224``; a bool or a
    string is refused)."""
    if value is None:
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"{name} must be a number of pixels, got {value!r}")
    if not 1 <= value <= MAX_SIDE:
        raise ValueError(f"{name} must be in [1, {MAX_SIDE}], got {value}")


def check_storage(compression: str | None, compression_level: int,
                  max_resolution: int | None, min_resolution: int | None) -> None:
    """ValueError unless the storage arguments masks and many-channel images share
    are valid: a known compression, zstd's level range, resolution bounds in pixels
    (``check_resolution``; a TypeError for a bool or a string), at most one of them."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    if not 1 <= int(compression_level) <= 22:
        raise ValueError(f"compression_level must be in [1, 22], got {compression_level}")
    check_resolutions(max_resolution, min_resolution)


def check_resolutions(max_resolution: int | None, min_resolution: int | None) -> None:
    """An image field's resolution bounds: each in pixels (``check_resolution``),
    at most one of them."""
    check_resolution(max_resolution, "max_resolution")
    check_resolution(min_resolution, "min_resolution")
    if max_resolution is not None and min_resolution is not None:
        raise ValueError("give max_resolution or min_resolution, not both")


BYTES_IO = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")
"""How Pillow's messages name the in-memory file they were given."""


KEEP_16_BITS = ("store its values as an array (read with a library that keeps 16 bits: "
                "imageio, tifffile, OpenCV's IMREAD_UNCHANGED)")
"""What to do with an image of more bits than Pillow keeps."""


def pil_pixels(image: Any, load: Callable[[Any], np.ndarray]) -> np.ndarray:
    """``load(image)`` of a PIL image; one whose file was closed before its pixels
    were read (Pillow then fails an assertion, or another error by version) is
    refused saying so, and one whose file cannot be decoded (truncated, damaged:
    Pillow's OSError) is a DecodeError, as the file's bytes would be."""
    try:
        return load(image)
    except OSError as exc:
        raise DecodeError(f"cannot decode the PIL image's file: {exc}") from exc
    except (AssertionError, AttributeError, ValueError) as exc:
        if getattr(image, "fp", True) is not None:
            raise
        raise EncodeError(
            "a PIL image whose file was closed before its pixels were read (returned "
            "from inside `with Image.open(...)`?): call image.load() before the file "
            "closes, or return image.copy()") from exc


def as_array(value: Any, what: str, expected: str,
             load: Callable[[Any], np.ndarray] = np.asarray) -> np.ndarray:
    """*value* as a NumPy array: an array as it is; a PIL image, or the bytes of an
    image file (PNG, TIFF and the like, through Pillow), as *load* reads its values
    (``np.asarray``: a palette image's indices, a 1-bit image's 0 and 1). *what*
    names the files in errors ("mask image", "image"), *expected* the arrays taken."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = read_with_pillow(bytes(value), what, load, EncodeError, KEEP_16_BITS)
    elif hasattr(value, "mode") and hasattr(value, "getdata"):  # a PIL image
        reduced = reduced_bit_depth(value)
        if reduced is not None:  # (what the same file's bytes are refused for)
            raise EncodeError(f"a PIL {what} of {reduced}: {KEEP_16_BITS}")
        value = pil_pixels(value, load)
    if not isinstance(value, np.ndarray):
        raise EncodeError(f"expected {expected}, a PIL image or image file bytes, got "
                          f"{type(value).__name__}")
    return value


def read_with_pillow(data: bytes, what: str, load: Callable[[Any], np.ndarray],
                     error: type[FastForwardError], lost_bits: str) -> np.ndarray:
    """The values of the image file *data* (PNG, TIFF and the like), as *load* reads
    them from the opened PIL image. *what* names the file in errors ("image",
    "mask image"). A file that Pillow cannot identify, damaged data, a decompression
    bomb, or values of more bits than Pillow keeps raise *error* (*lost_bits* says
    what to do instead); Pillow's messages lose the name of its in-memory file."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:
        raise EncodeError(f"reading {what} files needs Pillow: {install_hint('pillow')}") from exc
    try:
        # the limit is Pillow's error (MAX_DECODED_PIXELS, as for JPEGs): its warning,
        # at half of it, would be two lines of Python on the program's stderr
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                reduced = reduced_bit_depth(image)
                if reduced is None:
                    image.load()  # (damaged data fails here, as the except clauses say it)
                    return load(image)
    except Image.DecompressionBombError as exc:  # (an Exception, not an OSError)
        raise error(f"{what} file too large to decode: {exc}") from None
    except FastForwardError as exc:  # *load* refusing the image (a ValueError): as it says
        raise error(str(exc)) from None
    except UnidentifiedImageError:
        raise error(f"cannot identify {what} file ({len(data)} bytes: not an image, or in a "
                    "format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # damaged, as plugins say it
        message = BYTES_IO.sub("", str(exc)) or type(exc).__name__
        raise error(f"cannot decode {what} file ({len(data)} bytes): {message}") from exc
    raise error(f"{what} file of {reduced}: {lost_bits}")


def reduced_bit_depth(image: Any) -> str | None:
    """What a PIL image opened from a file and not yet loaded would lose: Pillow
    reads a 16-bit RGB, RGBA or gray + alpha PNG (or TIFF) into an 8-bit mode,
    keeping each value's high byte, silently. None where nothing is lost (a
    16-bit gray image is read as ``I;16``)."""
    if image.mode.startswith(("I", "F")):
        return None
    for tile in getattr(image, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        # ';16B', ';16L', ';16N': 16 bits a value, of a byte order (BMP's 'BGR;16' is
        # 16 bits a pixel, 5-6-5: nothing lost)
        if isinstance(raw, str) and re.search(r";(16|32)[BLN]", raw):
            return (f"{raw.split(';')[1][:2]}-bit values ({raw}), which Pillow reads as "
                    f"8-bit {image.mode}, keeping the high byte")
    return None


def fit_integers(value: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """*value*'s integers as a C-contiguous array of *dtype*; refused when they are not
    integers or do not fit it. *what* names them in errors ("ids", "values")."""
    if value.dtype.kind not in "biu":
        raise EncodeError(f"expected integer {what} ({dtype}), got {value.dtype}")
    if value.dtype != dtype:
        info = np.iinfo(dtype)
        if value.size and (int(value.min()) < info.min or int(value.max()) > info.max):
            raise EncodeError(f"{what} {int(value.min())}..{int(value.max())} do not fit the "
                              f"field's {dtype}")
        value = value.astype(dtype)
    return np.ascontiguousarray(value)


def pack(values: np.ndarray, compression: str | None, level: int) -> np.ndarray:
    """The payload of an ``H × W`` or ``H × W × C`` array of values (C-contiguous,
    little-endian): the header, then the values raw or as one zstd frame."""
    body = values.tobytes()
    if compression == "zstd":
        body = require_zstd().compress(body, level=level)
    header = np.array([values.shape[:2]], PLANES_HEADER).tobytes()
    return np.frombuffer(header + body, np.uint8)


def unpack(data: Any, dtype: np.dtype, channels: int | None, compression: str | None,
           what: str) -> np.ndarray:
    """The ``H × W`` (*channels* None) or ``H × W × channels`` values of one payload: a
    read-only array of its own, or a view of *data*. *what* names the thing in
    messages (``"mask"``, ``"image"``)."""
    data = memoryview(data).cast("B")
    if len(data) < PLANES_HEADER.itemsize:
        raise DecodeError(f"{what} payload of {len(data)} bytes is shorter than its header")
    header = np.frombuffer(data, PLANES_HEADER, 1)[0]
    height, width = int(header["height"]), int(header["width"])
    body = data[PLANES_HEADER.itemsize :]
    shape = (height, width) if channels is None else (height, width, channels)
    need = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if compression == "zstd" and height >= 1 and width >= 1:
        # never more than the header's size out: a small frame can say gigabytes
        try:
            decompressor = require_zstd().ZstdDecompressor()
            body = decompressor.decompress(body, max_length=need + 1)
        except Exception as exc:  # zstd.ZstdError and the like
            raise DecodeError(f"corrupt {what} payload: {exc}") from None
        if len(body) > need or not decompressor.eof or decompressor.unused_data:
            raise DecodeError(f"{what} of {'×'.join(map(str, shape))} needs {need} bytes of "
                              "values, the payload holds more (or bytes after its zstd frame)")
    if len(body) != need or height < 1 or width < 1:
        raise DecodeError(f"{what} of {'×'.join(map(str, shape))} needs {need} bytes of values, "
                          f"the payload holds {len(body)}")
    return np.frombuffer(body, dtype).reshape(shape)


def ranges(context: Any, field_index: int, lo: int, hi: int
           ) -> tuple[Any, np.ndarray, np.ndarray]:
    """The batch's payload source, and the starts and sizes of samples ``lo:hi``
    (uint64, as the kernels take them)."""
    source, offsets, sizes = context.data.field(field_index)
    return (source, np.ascontiguousarray(offsets[lo:hi], np.uint64),
            np.ascontiguousarray(sizes[lo:hi], np.uint64))


class Scratch:
    """A zstd context, the decompressed values' buffer and a resize workspace."""

    def __init__(self) -> None:
        self.zstd = ZstdDecoder()
        self.values = Workspace()
        self.workspace = Workspace()


class ScratchPool:
    """Scratch lent to one range at a time, and kept for the next.

    Owned by the decoder, not by a thread: the loader's threads change every
    epoch, and scratch made anew would be faulted in anew. A copy (pickled
    to a worker process, or another loader's) starts empty.
    """

    def __init__(self) -> None:
        self._free: list[Scratch] = []
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def __deepcopy__(self, memo: dict[int, Any]) -> ScratchPool:
        return ScratchPool()

    @contextmanager
    def lend(self) -> Iterator[Scratch]:
        with self._lock:
            scratch = self._free.pop() if self._free else Scratch()
        try:
            yield scratch
        finally:
            with self._lock:
                self._free.append(scratch)

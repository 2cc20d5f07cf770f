"""Variable-length arrays per sample: boxes, class ids, keypoints, polygons, token ids.

``RaggedField`` stores, per sample, ``N`` rows (``N`` varies) of one or more
named columns that share ``N``: ``RaggedField(np.int32)`` holds token ids
(``(N,)`` per sample), ``RaggedField(columns={"boxes": (np.float32, (4,)),
"labels": np.int64})`` holds objects, one row per object, so that a box's
class id can never come apart from it. The payload is each column's ``N``
rows in turn, C order, little-endian; ``N`` is the payload size divided by
the bytes of one row of every column. It is a tagged field
(``fastforward.fields.tagged``): FFCV 1.0.2 opens it as a ``BytesField``.

``RaggedDecoder`` batches them padded (default) or as a list, and, told to
follow an image (``follows=``), moves boxes, keypoints and points with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._ext.collate import gather_into
from ..errors import DecodeError, EncodeError
from ..pipeline import geometry
from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.decoder import Decoder
from ..pipeline.operation import BatchContext
from ..pipeline.state import State
from .base import followed_size
from .tagged import TaggedField

VALUES = "values"
"""The name of a single-array ``RaggedField``'s one column."""
LENGTHS = "lengths"
MAX_DIMS = 8


MAX_ROW_BYTES = 1 << 32  # one row (object) of a sample: more is a damaged descriptor


def check_portable(columns: list[tuple[str, np.dtype, tuple[int, ...]]]) -> None:
    """Refuse to store a column whose bytes mean other values on another platform.

    Checked where a field's arguments are written, not where a file's are read:
    a file stored before this check still opens where it was written."""
    for name, dtype, _ in columns:
        if dtype.kind == "f" and dtype.itemsize > 8:
            raise TypeError(f"column {name!r}: {dtype} (np.longdouble) is laid out differently "
                            "on each platform (x86-64's 80-bit extended precision in 16 bytes, "
                            "aarch64's 128-bit IEEE), so the file would read as other values "
                            "elsewhere; store float64")


def _column(name: str, spec: Any) -> tuple[str, np.dtype, tuple[int, ...]]:
    if isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[1], (str, type)):
        dtype, shape = spec
    else:
        dtype, shape = spec, ()
    if isinstance(shape, int):
        shape = (shape,)
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"column {name!r}: {dtype!r} is not a dtype") from None
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise TypeError(f"column {name!r}: only bool, integer and float dtypes are stored, "
                        f"got {dtype}")
    shape = tuple(int(s) for s in shape)
    if len(shape) > MAX_DIMS or any(s < 1 for s in shape):
        raise ValueError(f"column {name!r}: a row's shape must have at most {MAX_DIMS} "
                         f"positive dimensions, got {shape}")
    return name, dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype, shape


class RaggedField(TaggedField):
    """``N`` rows per sample, ``N`` varying, of one array or of named columns.

    Args:
        dtype: the dtype of a single array per sample (``RaggedField(np.int32)``
            for token ids), whose rows have shape *shape*: each sample is an
            array of shape ``(N, *shape)``.
        shape: the shape of one row (``(4,)`` for boxes, ``(17, 3)`` for 17
            keypoints).
        columns: instead of *dtype*: ``{name: dtype}`` or ``{name: (dtype,
            shape)}``, columns that share ``N`` (one row per object). Each
            sample is then a mapping from those names to arrays (or a
            sequence of arrays, in the columns' order).
        follows: the name of the image field (``RGBImageField``,
            ``MaskField``, ``MultiChannelImageField``) whose pixels the
            coordinates are in, as given to the writer: where that field
            shrinks its image (``max_resolution``, ``min_resolution``), the
            columns below are scaled by the same factors (x by the width's,
            y by the height's), so that they stay in pixels of the image as
            stored. Needs at least one of:
        boxes: the column of boxes (rows of shape ``(4,)``; ``xyxy``, ``xywh``
            and ``cxcywh`` alike scale as ``x, y, x, y``).
        keypoints: the column of keypoints (``(K, 2)``, or ``(K, 3)`` with a
            visibility, which is kept).
        points: columns of other ``x, y`` points (``(..., 2)``).
        box_format: the layout of the *boxes* column (``"xyxy"``, ``"xywh"``
            or ``"cxcywh"``), if you want the writer to refuse a box whose
            far edge is before its near one. Whatever it is, a box with a
            NaN or infinite coordinate is refused, naming the sample.

    Coordinates scaled with their image must be floats; coordinates stored as
    fractions of the image (``RaggedDecoder(normalized=True)``) need no
    *follows*. *follows* and the columns it scales are the writer's: they are
    not stored in the file.

    Values are cast to the column's dtype when that is exact (integers that
    fit, in an integer or a float column) or rounds a real number to a float
    column's precision; anything else (a value past the column's range, an
    integer a float column cannot hold whole) is refused, naming the sample
    and the column.
    """

    def __init__(self, dtype: Any = None, shape: int | Sequence[int] = (), *,
                 columns: Mapping[str, Any] | None = None, follows: str | None = None,
                 boxes: str | None = None, keypoints: str | None = None,
                 points: str | Sequence[str] = (), box_format: str | None = None) -> None:
        if (dtype is None) == (columns is None):
            raise TypeError("RaggedField takes a dtype (one array per sample) or columns "
                            "(named arrays sharing their length), not both or neither")
        if columns is None:
            self.named = False
            specs = [_column(VALUES, (dtype, shape))]
        else:
            if shape != ():
                raise TypeError("give each column's shape in columns=, not shape=")
            self.named = True
            specs = []
            for name, spec in dict(columns).items():
                if not isinstance(name, str) or not name or name == LENGTHS:
                    raise ValueError(f"column names are non-empty strings other than "
                                     f"{LENGTHS!r}, got {name!r}")
                specs.append(_column(name, spec))
            if not specs:
                raise ValueError("RaggedField needs at least one column")
        self.columns: list[tuple[str, np.dtype, tuple[int, ...]]] = specs
        # Python ints: a damaged descriptor's shape must not wrap round to 0
        self.row_nbytes = sum(d.itemsize * math.prod(s) for _, d, s in specs)
        if not 0 < self.row_nbytes <= MAX_ROW_BYTES:
            raise ValueError(f"a row of {self.row_nbytes} bytes (columns {specs}): rows take "
                             f"1 to {MAX_ROW_BYTES} bytes")
        self.follows = follows
        self.box_column, self.box_format = boxes, box_format
        if box_format is not None:
            if boxes is None:
                raise ValueError("box_format= is the layout of the boxes= column: name it")
            if box_format not in geometry.BOX_FORMATS:
                raise ValueError(f"box_format must be one of {geometry.BOX_FORMATS}, got "
                                 f"{box_format!r}")
        # the columns scaled with the image it follows: name -> factor per coordinate
        # (0: x, 1: y, None: kept)
        self.scaled: dict[str, tuple[int | None, ...]] = {}
        roles = coordinate_columns(boxes, keypoints, points)
        if follows is None:
            if roles:
                raise ValueError("boxes=, keypoints= and points= are scaled with an image: "
                                 "name its field with follows=")
            return
        if not isinstance(follows, str) or not follows:
            raise TypeError(f"follows names a field, got {follows!r}")
        if not roles:
            raise ValueError("RaggedField(follows=...) needs the columns to scale: boxes=, "
                             "keypoints= or points=")
        check_coordinate_columns(self, roles)
        for role, name in roles:
            shape = self.columns[self.names.index(name)][2]
            self.scaled[name] = ((0, 1, 0, 1) if role == "boxes"
                                 else (0, 1, None)[: shape[-1]])

    @property
    def names(self) -> list[str]:
        """The columns' names (``['values']`` for a single array)."""
        return [name for name, _, _ in self.columns]

    def arguments(self) -> dict[str, Any]:
        check_portable(self.columns)
        return {"named": self.named,
                "columns": [[name, dtype.str, list(shape)] for name, dtype, shape in self.columns]}

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> RaggedField:
        columns = {str(name): (np.dtype(dtype), tuple(shape))
                   for name, dtype, shape in arguments["columns"]}
        if arguments["named"]:
            return cls(columns=columns)
        ((dtype, shape),) = columns.values()
        return cls(dtype, shape)

    def __repr__(self) -> str:
        if not self.named:
            _, dtype, shape = self.columns[0]
            described = f"{dtype}, {shape}"
        else:
            described = "columns={" + ", ".join(f"{name!r}: ({dtype}, {shape})"
                                                for name, dtype, shape in self.columns) + "}"
        if self.follows is not None:
            described += f", follows={self.follows!r}"
        return f"RaggedField({described})"

    def _arrays(self, value: Any) -> list[np.ndarray]:
        if not self.named:
            return [value]
        if isinstance(value, Mapping):
            missing = [n for n in self.names if n not in value]
            extra = [n for n in value if n not in self.names]
            if missing or extra:
                raise EncodeError(f"expected columns {self.names}, got {list(value)}")
            return [value[n] for n in self.names]
        if isinstance(value, (tuple, list)) and len(value) == len(self.columns):
            return list(value)
        raise EncodeError(f"expected a mapping of columns {self.names} (or a sequence of "
                          f"{len(self.columns)} arrays), got {type(value).__name__}")

    def payload(self, value: Any) -> np.ndarray:
        parts = []
        count = None
        for (name, dtype, shape), raw in zip(self.columns, self._arrays(value), strict=True):
            array = _cast(name, raw, dtype)
            if array.size == 0:  # [] and the like: no rows
                array = array.reshape((0, *shape))
            if array.ndim != 1 + len(shape) or array.shape[1:] != shape:
                raise EncodeError(f"column {name!r}: expected rows of shape {shape} (an array "
                                  f"of shape (N, {', '.join(map(str, shape))})), got "
                                  f"{array.shape}".replace(", )", ")"))
            if count is not None and len(array) != count:
                raise EncodeError(f"column {name!r} has {len(array)} rows, {self.names[0]!r} "
                                  f"has {count}")
            count = len(array)
            if name == self.box_column:
                bad = geometry.not_boxes(array, self.box_format)
                if bad.any():
                    row = int(np.flatnonzero(bad)[0])
                    layout = f" ({self.box_format})" if self.box_format else ""
                    shown = "[" + ", ".join(str(v) for v in array[row]) + "]"  # (float32's)
                    raise EncodeError(f"column {name!r}: box {row} is {shown}"
                                      f"{layout}: not a box (a coordinate is not finite"
                                      + (", or a far edge is before its near one)"
                                         if self.box_format else ")"))
            if name in self.scaled:
                array = self._scale(name, array, dtype)
            parts.append(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _scale(self, name: str, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Column *name*'s coordinates scaled as the image they follow was."""
        source_h, source_w, stored_h, stored_w = followed_size(
            self.follows, f"column {name!r}", "RaggedField")
        if (source_h, source_w) == (stored_h, stored_w):
            return array
        by = (stored_w / source_w, stored_h / source_h, 1.0)
        factors = np.array([by[2 if axis is None else axis] for axis in self.scaled[name]])
        return (array * factors).astype(dtype)

    def split(self, data: np.ndarray) -> list[np.ndarray]:
        """One payload's bytes as the columns' arrays (views of *data*)."""
        if data.size % self.row_nbytes:
            raise DecodeError(f"payload of {data.size} bytes is not a whole number of "
                              f"{self.row_nbytes}-byte rows")
        count = data.size // self.row_nbytes
        arrays, start = [], 0
        for _, dtype, shape in self.columns:
            nbytes = count * dtype.itemsize * int(np.prod(shape, dtype=np.int64))
            arrays.append(data[start : start + nbytes].view(dtype).reshape((count, *shape)))
            start += nbytes
        return arrays

    def decode(self, data: memoryview) -> Any:
        arrays = [a.copy() for a in self.split(np.frombuffer(data, np.uint8))]
        return dict(zip(self.names, arrays, strict=True)) if self.named else arrays[0]

    def get_decoder_class(self) -> type:
        return RaggedDecoder


def coordinate_columns(boxes: str | None, keypoints: str | None,
                       points: str | Sequence[str]) -> list[tuple[str, str]]:
    """``(role, column)`` for each column of coordinates named."""
    points = (points,) if isinstance(points, str) else tuple(points)
    return [(role, name) for role, name in (("boxes", boxes), ("keypoints", keypoints),
                                            *(("points", p) for p in points))
            if name is not None]


def check_coordinate_columns(field: RaggedField, roles: list[tuple[str, str]]) -> None:
    """That each column of *roles* is in *field*, holds floats and has rows
    of its role's shape."""
    names = field.names
    for role, name in roles:
        if name not in names:
            raise ValueError(f"{role}={name!r} is not a column of the field (columns: "
                             f"{names})")
        _, dtype, shape = field.columns[names.index(name)]
        if dtype.kind != "f":
            raise TypeError(f"{role} column {name!r} holds {dtype}: coordinates must be "
                            "floats")
        need = {"boxes": shape == (4,),
                "keypoints": len(shape) == 2 and shape[1] in (2, 3),
                "points": len(shape) >= 1 and shape[-1] == 2}[role]
        if not need:
            raise ValueError(f"{role} column {name!r} has rows of shape {shape}; "
                             + {"boxes": "boxes need (4,)",
                                "keypoints": "keypoints need (K, 2) or (K, 3)",
                                "points": "points need (..., 2)"}[role])


def _cast(name: str, value: Any, dtype: np.dtype) -> np.ndarray:
    """*value* as an array of *dtype*, when the cast loses nothing."""
    array = np.asarray(value)
    if array.dtype == dtype:
        return array
    if array.size == 0:
        return array.astype(dtype)
    if array.dtype.kind not in "biuf":
        raise EncodeError(f"column {name!r}: expected numbers, got an array of {array.dtype}")
    with np.errstate(invalid="ignore", over="ignore"):
        cast = array.astype(dtype)
    if dtype.kind == "f" and array.dtype.kind == "f":
        # a real number is rounded to the column's precision; one past its range is refused
        out = np.isinf(cast) & np.isfinite(array)
        if out.any():
            raise EncodeError(f"column {name!r}: {array[out].flat[0].item()!r} is out of {dtype}'s "
                              "range")
        return cast
    # integers must come back whole (an int64 past 2**24 is not a float32), reals
    # must be whole and in range: what does not come back from the cast as it was
    # was not stored (compared in the source's dtype, not in np.longdouble, which is
    # float64 on some platforms and would let 2**53 + 1 pass as float64)
    with np.errstate(invalid="ignore", over="ignore"):
        exact = cast.astype(array.dtype) == array
    if not exact.all():
        wrong = int(np.argmin(exact.ravel()))
        raise EncodeError(f"column {name!r}: {array.dtype} values cannot be stored as {dtype} "
                          f"without loss ({array.flat[wrong].item()!r} would be "
                          f"{cast.flat[wrong].item()!r})")
    if not np.array_equal(cast, array):
        raise EncodeError(f"column {name!r}: {array.dtype} values cannot be stored as {dtype} "
                          "without loss")
    return cast


class RaggedDecoder(Decoder):
    """Decode a ``RaggedField``: padded with lengths (default) or as a list.

    Args:
        as_list: False: a batch is padded. For a single-array field it is
            ``(values, lengths)``: ``values`` of shape ``(B, L, *shape)``, ``L``
            the longest sample of the whole field, at least 1 (so every batch
            has the same shape), rows past a sample's length zero; ``lengths`` ``(B,)``
            int64. For named columns it is a dict of each column's
            ``(B, L, ...)`` array plus ``"lengths"``. True: a list of ``B``
            samples, each an array (or a dict of arrays), cut to its length.
            Both are views of the loader's buffers; ``ToTensor`` turns them
            into tensors the same shape (a list into a list, a dict into a
            dict).
        follows: the output (pipeline name) of an image whose crop, resize and
            flip the coordinates follow; its decoder must decide geometry (the
            crop decoders, ``ShorterSideRGBImageDecoder``). Needs at least one of:
        boxes: the column of boxes (``(N, 4)``) to move with the image,
            clipped to the output; a box of which less than *min_visibility*
            of the area is left (or none) is dropped, and its whole row, class
            id and all, with it.
        keypoints: the column of keypoints (``(N, K, 2)`` or ``(N, K, 3)``
            with a visibility) to move: one outside the output gets
            visibility 0 (its coordinates are kept).
        points: columns of other ``x, y`` points (polygons: ``(N, P, 2)``),
            moved and mirrored, never clipped.
        box_format: the stored boxes' layout (``geometry.BOX_FORMATS``); the
            output keeps it.
        normalized: coordinates are stored as fractions of the image's width
            and height (then they survive any ``max_resolution`` the image was
            stored at); the output is always in output pixels.
        min_visibility: see *boxes* (0: a box survives while any of it is left).
        keypoint_flip: for mirrored samples, the order of the keypoints
            afterwards (COCO's left/right swap), ``K`` indices.

    Coordinates are in pixels of the stored image: edges at integers for
    boxes (a box covering pixel columns 3 and 4 spans ``x0=3, x1=5``), pixel
    centres at ``+0.5`` for points. A single-array field's column is called
    ``"values"``.
    """

    @classmethod
    def field_types(cls) -> tuple[type, ...]:
        return (RaggedField,)

    def __init__(self, as_list: bool = False, follows: str | None = None,
                 boxes: str | None = None, keypoints: str | None = None,
                 points: Sequence[str] = (), box_format: str = "xyxy",
                 normalized: bool = False, min_visibility: float = 0.0,
                 keypoint_flip: Sequence[int] | None = None) -> None:
        super().__init__()
        if box_format not in geometry.BOX_FORMATS:
            raise ValueError(f"box_format must be one of {geometry.BOX_FORMATS}, "
                             f"got {box_format!r}")
        if not 0.0 <= min_visibility <= 1.0:
            raise ValueError(f"min_visibility must be in [0, 1], got {min_visibility}")
        moved = coordinate_columns(boxes, keypoints, points)
        if follows is not None and not moved:
            raise ValueError("RaggedDecoder(follows=...) needs the columns to move: boxes=, "
                             "keypoints= or points=")
        if follows is None and moved:
            raise ValueError("boxes=, keypoints= and points= move with an image: name it "
                             "with follows=")
        self.as_list = bool(as_list)
        self.follows = follows
        self.boxes, self.keypoints = boxes, keypoints
        self.points = tuple(name for role, name in moved if role == "points")
        self.box_format = box_format
        self.normalized = bool(normalized)
        self.min_visibility = float(min_visibility)
        self.keypoint_flip = None if keypoint_flip is None else [int(k) for k in keypoint_flip]

    def __repr__(self) -> str:
        extra = f", follows={self.follows!r}" if self.follows else ""
        return f"RaggedDecoder(as_list={self.as_list}{extra})"

    def _field(self) -> RaggedField:
        field = self.field
        if not isinstance(field, RaggedField):
            raise TypeError(f"RaggedDecoder decodes a RaggedField, not a "
                            f"{type(field).__name__}")
        return field

    def _check_columns(self, field: RaggedField) -> None:
        check_coordinate_columns(field, coordinate_columns(self.boxes, self.keypoints,
                                                           self.points))
        if self.keypoints is not None and self.keypoint_flip is not None:
            shape = field.columns[field.names.index(self.keypoints)][2]
            if sorted(self.keypoint_flip) != list(range(shape[0])):
                raise ValueError(f"keypoint_flip must order the {shape[0]} keypoints, got "
                                 f"{self.keypoint_flip}")

    def declare_state_and_memory(self, previous_state: State
                                 ) -> tuple[State, tuple[AllocationQuery, ...]]:
        field = self._field()
        self._check_columns(field)
        sizes = self.metadata["size"].astype(np.int64)
        longest = max(int(sizes.max()) // field.row_nbytes if sizes.size else 0, 1)
        queries = tuple(AllocationQuery((longest, *shape), dtype)
                        for _, dtype, shape in field.columns)
        _, dtype, shape = field.columns[0]
        return (State(jit_mode=True, shape=(longest, *shape), dtype=dtype),
                (*queries, AllocationQuery((), np.dtype("<i8"))))

    def decode_range(self, lo: int, hi: int, destination: tuple[np.ndarray, ...],
                     context: BatchContext) -> None:
        field = self._field()
        *columns, lengths = destination
        source, offsets, sizes = context.data.field(self.field_index)
        offsets = np.asarray(offsets[lo:hi], np.uint64)
        sizes = np.asarray(sizes[lo:hi], np.uint64)
        stored = self.metadata["size"][context.indices[lo:hi]].astype(np.uint64)
        # the metadata's size, not the allocation's (a zero-length payload takes one byte)
        sizes = np.minimum(sizes, stored)
        counts, rest = np.divmod(sizes, np.uint64(field.row_nbytes))
        bad = np.flatnonzero((rest != 0) | (counts > columns[0].shape[1]))
        if bad.size:
            k = int(bad[0])
            exc = DecodeError(f"payload of {int(sizes[k])} bytes is not a whole number of "
                              f"{field.row_nbytes}-byte rows of at most "
                              f"{columns[0].shape[1]}")
            raise self.fail(exc, context, lo + k)
        gather = gather_into if self.follows else context.gather_into  # read again below
        start = np.zeros_like(offsets)
        for (_, dtype, shape), column in zip(field.columns, columns, strict=True):
            nbytes = counts * np.uint64(dtype.itemsize * int(np.prod(shape, dtype=np.int64)))
            rows = column[lo:hi].reshape(hi - lo, -1).view(np.uint8)
            gather(source, offsets + start, nbytes, rows)
            start += nbytes
        lengths[lo:hi] = counts
        if self.follows is not None:
            self._follow(field, columns, lengths, lo, hi, context)

    def _follow(self, field: RaggedField, columns: list[np.ndarray], lengths: np.ndarray,
                lo: int, hi: int, context: BatchContext) -> None:
        """Move the coordinates of samples ``lo:hi`` with the image; drop boxes.

        The objects present are gathered into one packed array per column, each
        with its sample's geometry row, moved, and put back (the kept ones to the
        front of their sample's rows, the rest zeroed): the cost is the objects'.
        (Every padded row was moved and reordered: one sample of 5,000 boxes in a
        file made every epoch 58 times slower, ``bench/ragged_follow.py``.) Rows
        past a sample's length are zeros from the gather and stay so."""
        assert self.follows is not None
        count = lengths[lo:hi].astype(np.int64)
        total = int(count.sum())
        if total == 0:
            return
        first = np.cumsum(count) - count
        owner = np.repeat(np.arange(hi - lo), count)  # each object's sample, in order
        slot = np.arange(total) - np.repeat(first, count)  # and its row there
        rows = context.geometry[self.follows][lo:hi][owner]
        parts = [column[lo:hi] for column in columns]
        packed = [part[owner, slot] for part in parts]  # copies, (objects, ...)
        names = field.names
        keep = None
        if self.boxes is not None:
            boxes = packed[names.index(self.boxes)]
            self._check_boxes(boxes, owner, slot, lo, context)
            mapped, visible = geometry.map_boxes(rows, boxes[:, None], self.box_format,
                                                 self.normalized)
            boxes[...] = mapped[:, 0]
            visible = visible[:, 0]
            keep = (visible > 0) & (visible >= self.min_visibility)
        if self.keypoints is not None:
            points = packed[names.index(self.keypoints)]
            points[...] = geometry.map_keypoints(
                rows, points[:, None], self.normalized,
                None if self.keypoint_flip is None else np.asarray(self.keypoint_flip))[:, 0]
        for name in self.points:
            points = packed[names.index(name)]
            points[...] = geometry.map_xy(rows, points[:, None], self.normalized)[:, 0]
        if keep is None or keep.all():
            for part, values in zip(parts, packed, strict=True):
                part[owner, slot] = values
            return
        # the rows kept, in order, to the front of their sample's; the rest zeroed
        new = np.bincount(owner[keep], minlength=hi - lo)
        kept = int(new.sum())
        new_slot = np.arange(kept) - np.repeat(np.cumsum(new) - new, new)
        for part, values in zip(parts, packed, strict=True):
            part[owner, slot] = 0
            part[owner[keep], new_slot] = values[keep]
        lengths[lo:hi] = new

    def _check_boxes(self, boxes: np.ndarray, owner: np.ndarray, slot: np.ndarray, lo: int,
                     context: BatchContext) -> None:
        """Refuse a stored box that is not a box (a NaN or infinite coordinate, or a
        far edge before its near one): dropped as out of view, it would vanish
        from training without a word. *boxes* are the range's, packed: object
        ``i`` is row ``slot[i]`` of sample ``lo + owner[i]``."""
        bad = np.flatnonzero(geometry.not_boxes(boxes, self.box_format))
        if bad.size:
            i = int(bad[0])
            exc = DecodeError(f"box {int(slot[i])} of column {self.boxes!r} is "
                              f"{boxes[i].tolist()} ({self.box_format}): not a box "
                              "(a coordinate is not finite, or a far edge is before its near "
                              "one); fix or drop it in the dataset")
            raise self.fail(exc, context, lo + int(owner[i]))

    def output(self, destination: tuple[np.ndarray, ...], count: int) -> Any:
        """The batch: padded (a tuple, or a dict for named columns) or a list."""
        field = self._field()
        *columns, lengths = (d[:count] for d in destination)
        if self.as_list:
            sizes = lengths.tolist()
            if not field.named:
                return [columns[0][k, :n] for k, n in enumerate(sizes)]
            return [{name: column[k, :n] for name, column in zip(field.names, columns,
                                                                  strict=True)}
                    for k, n in enumerate(sizes)]
        if not field.named:
            return columns[0], lengths
        return {**dict(zip(field.names, columns, strict=True)), LENGTHS: lengths}

"""The ``fastforward`` command line: ``convert``, ``info``, ``verify``, ``demo``, ``bench``
and ``preview``.

Every subcommand returns an exit status: 0 on success, 1 on failure (or when
``verify`` finds problems), 2 for a bad command line, 130 on Ctrl-C, 143 on
SIGTERM during a conversion. Errors are reported as one line on stderr,
``fastforward: error: <message>``, never as a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ._version import __version__
from .datasets import ImageFolder
from .errors import DecodeError, FastForwardError, Terminated
from .fields import Field, IntField, NDArrayField, RGBImageField, TorchTensorField
from .fields.rgb_image import IMAGE_MODES, WRITE_MODES
from .preview import png_target, save_png
from .reader import Problem, Reader
from .types import validate_page_size
from .utils import format_bytes, holds_only, install_hint
from .writer import (
    DatasetWriter,
    SkippedSample,
    fitted_stem,
    refuse_to_replace,
    written_through_links,
)

PROG = "fastforward"
MAX_BENCH_WORKERS_PER_CPU = 8  # bench --workers: more only measure the machine's scheduler
DEFAULT_PAGE_SIZE = 8 << 20
DEFAULT_DEMO_DIR = Path("fastforward-demo")

_SIZE = re.compile(r"(?P<number>\d+)\s*(?:(?P<unit>[kmgt])(?:i?b|i)?|b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


# -- errors and argument parsing ----------------------------------------------------------------


class UsageError(Exception):
    """A bad command line: reported like argparse's errors, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises ``UsageError`` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        """Raise *message* as a ``UsageError`` (``main`` prints it as one line),
        naming the help of the command that refused it."""
        raise UsageError(f"{message} (see {self.prog} --help)")


def parse_size(text: str) -> int:
    """Parse a byte count: plain bytes or with a binary suffix (``8M``, ``2MiB``, ``16MB``).

    Every suffix means a power of 1024: K, M, G and T, optionally followed by
    ``B``, ``i`` or ``iB``, in any case.

    Args:
        text: the count as typed.

    Returns:
        The number of bytes.

    Raises:
        argparse.ArgumentTypeError: *text* is not a byte count.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r} (give bytes, or a suffix: 8M, 8MiB, 16MB)"
        )
    return int(match["number"]) * _UNITS[(match["unit"] or "").lower()]


def page_size_arg(text: str) -> int:
    """Parse and validate a ``--page-size`` (a power of two in [2 MiB, 4 GiB)).

    Args:
        text: the size as typed, see ``parse_size``.

    Returns:
        The page size in bytes.

    Raises:
        argparse.ArgumentTypeError: not a size, or not a valid page size.
    """
    size = parse_size(text)
    try:
        validate_page_size(size)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return size


def _integer(text: str) -> int:
    """*text* as an integer, or the usage error of the int parsers below."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None


def positive_int(text: str) -> int:
    """Parse an integer of at least 1.

    Args:
        text: the number as typed.

    Returns:
        The number.

    Raises:
        argparse.ArgumentTypeError: not an integer, or below 1.
    """
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def int_from_1_to(most: int) -> Callable[[str], int]:
    """A parser of integers in ``[1, most]``, as ``positive_int`` with a ceiling."""
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most}, got {value}")
        return value

    return parse


def non_negative_int(text: str) -> int:
    """Parse an integer of at least 0 (a seed, an epoch), as ``positive_int``."""
    value = _integer(text)
    if not 0 <= value < 1 << 63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {value}")
    return value


def custom_field_arg(text: str) -> tuple[str, type[Field]]:
    """Parse a ``--custom-field NAME=MODULE:CLASS``: the field's name and its class, imported.

    Args:
        text: the option as typed, e.g. ``caption=myproject.fields:CaptionField``.

    Returns:
        ``(name, class)``.

    Raises:
        argparse.ArgumentTypeError: not of that form, the module or class cannot be
            imported, or the class is not a ``Field``.
    """
    name, _, target = text.partition("=")
    module_name, _, class_name = target.partition(":")
    if not (name and module_name and class_name):
        raise argparse.ArgumentTypeError(
            f"expected NAME=MODULE:CLASS (a field's name and where its class is), got {text!r}")
    try:
        found: Any = _import_from_here_too(module_name)
        for part in class_name.split("."):
            found = getattr(found, part)
    except AttributeError:
        raise argparse.ArgumentTypeError(f"{text!r}: {module_name} has no {class_name}") from None
    except Exception as exc:  # ImportError, or whatever importing the module raised
        raise argparse.ArgumentTypeError(f"{text!r}: cannot import {module_name}: "
                                         f"{describe_error(exc)}") from None
    except SystemExit as exc:  # (main() takes a SystemExit from parsing for --help's)
        raise argparse.ArgumentTypeError(f"{text!r}: cannot import {module_name}: importing "
                                         f"it called sys.exit({exc.code!r})") from None
    if not (isinstance(found, type) and issubclass(found, Field)):
        raise argparse.ArgumentTypeError(f"{text!r}: {target} is not a Field class")
    return name, found


def _import_from_here_too(module_name: str) -> Any:
    """Import *module_name*, from the current directory too, as ``python -m`` would
    (the console script's path holds its own folder instead)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        top = module_name.partition(".")[0]
        if exc.name != top or here in sys.path or "" in sys.path:
            raise
        # after the installed ones (never shadowing them), and kept: worker processes
        # get this path, and import the class again to unpickle it
        sys.path.append(here)
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as again:
            sys.path.remove(here)
            if again.name != top:
                raise
            raise exc from None  # not here either: the first error, as Python gives it


def _custom_fields(args: argparse.Namespace) -> dict[str, type[Field]]:
    """The ``--custom-field`` classes by field name (a name given twice: a usage error)."""
    fields: dict[str, type[Field]] = {}
    for name, cls in args.custom_field or ():
        if name in fields:
            raise UsageError(f"--custom-field: field {name!r} given twice")
        fields[name] = cls
    return fields


def _check_custom_names(reader: Reader, custom_fields: dict[str, type[Field]]) -> None:
    """A ``--custom-field`` naming no field of the file (a typo, silently unused)."""
    unknown = [name for name in custom_fields if name not in reader.field_names]
    if unknown:
        raise UsageError(f"--custom-field: {reader.fname} has no field "
                         f"{', '.join(map(repr, unknown))} (its fields: "
                         f"{', '.join(map(repr, reader.field_names))})")


def describe_error(exc: BaseException) -> str:
    """One line describing *exc* for the user.

    Args:
        exc: the exception.

    Returns:
        Its message on one line (``path: reason`` for OS errors that name a file),
        after the locations that ``annotate`` added as notes (one-line notes;
        longer ones are tracebacks, left out).
    """
    if isinstance(exc, OSError) and exc.filename == "" and exc.errno == errno.ENOENT:
        text = "an empty name is no file"
    elif isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    where = [note for note in getattr(exc, "__notes__", ()) if "\n" not in note.strip()]
    if where:
        text = f"{'; '.join(where)}: {text}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _print(text: str, **kwargs: Any) -> None:
    """``print`` for text that may hold file names: a name that is not in the
    encoding of stdout (bytes that are not UTF-8, ``PYTHONIOENCODING=ascii``)
    is printed with backslash escapes, not a ``UnicodeEncodeError`` after the
    work is done."""
    try:
        print(text, **kwargs)
    except UnicodeEncodeError:
        encoding = getattr(kwargs.get("file") or sys.stdout, "encoding", None) or "utf-8"
        print(text.encode(encoding, "backslashreplace").decode(encoding), **kwargs)


def _fail(message: str, status: int) -> int:
    """Print *message* as the one ``fastforward: error:`` line on stderr; return *status*."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


# -- formatting ----------------------------------------------------------------------------------


def _mean_max(values: np.ndarray) -> dict[str, float | int | None]:
    """``{'mean': ..., 'max': ...}`` of *values*, ``None`` for an empty array."""
    if values.size == 0:
        return {"mean": None, "max": None}
    return {"mean": float(values.mean()), "max": int(values.max())}


def _num(value: float | None, spec: str = ",.0f") -> str:
    """*value* formatted with *spec*, ``-`` for ``None``."""
    return "-" if value is None else format(value, spec)


# -- convert -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertOptions:
    """How ``convert`` (and ``demo``) write an ImageFolder; see ``fastforward convert -h``."""

    max_resolution: int | None = 256
    jpeg_quality: int = 90
    restart_markers: bool = True
    write_mode: str = "jpg"
    smart_threshold: int | None = None
    compress_probability: float = 0.5
    num_workers: int = -1
    page_size: int = DEFAULT_PAGE_SIZE
    chunksize: int = 100
    shuffle: bool = False
    seed: int = 0
    progress: bool = True
    skip_bad: bool = False


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion wrote, and how fast."""

    path: Path
    num_samples: int
    seconds: float
    file_size: int
    skipped: tuple[tuple[Path, str], ...] = ()  # (image, why) of each image left out
    skipped_list: Path | None = None  # where their list was written
    empty_classes: tuple[tuple[int, str], ...] = ()  # (label, folder) of classes of no image
    emptied_classes: tuple[tuple[int, str], ...] = ()  # ... whose every image was skipped

    @property
    def rate(self) -> float:
        """Samples written per second."""
        return self.num_samples / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """The report printed after a conversion: one line, then the skipped images."""
        lines = [
            f"wrote {self.num_samples} sample{'' if self.num_samples == 1 else 's'} to "
            f"{self.path} in {self.seconds:.2f} s "
            f"({self.rate:,.1f} images/s), {format_bytes(self.file_size)}"
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} image(s) that cannot be read or "
                         f"decoded (listed in {self.skipped_list}):")
            lines.extend(f"  {path}: {why}" for path, why in self.skipped)
        if self.empty_classes:
            lines.append(f"note: {len(self.empty_classes)} class folder(s) hold no image, so "
                         f"their labels appear in no sample: {_classes(self.empty_classes)} "
                         "(torchvision's ImageFolder numbers classes the same way, and "
                         "refuses such folders unless allow_empty=True)")
        if self.emptied_classes:
            lines.append(f"note: every image of {len(self.emptied_classes)} class folder(s) "
                         "was skipped, so their labels appear in no sample: "
                         f"{_classes(self.emptied_classes)}")
        return "\n".join(lines)


def _classes(classes: Sequence[tuple[int, str]]) -> str:
    """``label ('folder')`` of the first five of *classes*, and how many more."""
    shown = ", ".join(f"{label} ({name!r})" for label, name in classes[:5])
    return shown + (f" and {len(classes) - 5} more" if len(classes) > 5 else "")


def listed_path(path: str | os.PathLike[str]) -> str:
    """*path* for a line of ``<out>.skipped.txt``: a backslash, tab, newline or
    carriage return in it written as ``\\\\``, ``\\t``, ``\\n``, ``\\r``, so that each
    line stays one ``path<TAB>reason`` pair."""
    text = os.fspath(path)
    if not any(c in text for c in "\\\t\n\r"):
        return text
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def skipped_list_path(out: Path) -> Path:
    """Where ``convert --skip-bad`` lists the images it left out of *out*:
    ``<out>.skipped.txt``, or, where that name would be longer than the
    directory allows, as much of *out*'s name as fits, ``~`` and 16 hex digits
    of its SHA-256, then ``.skipped.txt``."""
    suffix = ".skipped.txt"
    try:
        limit = int(os.pathconf(out.parent if str(out.parent) else ".", "PC_NAME_MAX"))
    except (OSError, ValueError):  # unknown (or no such directory, refused elsewhere)
        limit = 255
    return out.with_name(fitted_stem(out.name, len(suffix), limit) + suffix)


def image_folder_fields(options: ConvertOptions) -> dict[str, Field]:
    """The fields of a converted ImageFolder: ``image`` and ``label``.

    Args:
        options: the image options.

    Returns:
        ``{'image': RGBImageField(...), 'label': IntField()}``.

    Raises:
        UsageError: the image options are invalid.
    """
    if options.write_mode == "smart" and options.smart_threshold is None:
        raise UsageError("--write-mode smart needs --smart-threshold (raw bytes above which "
                         "an image is stored as JPEG)")
    try:
        image = RGBImageField(
            write_mode=options.write_mode,
            max_resolution=options.max_resolution,
            smart_threshold=options.smart_threshold,
            jpeg_quality=options.jpeg_quality,
            compress_probability=options.compress_probability,
            restart_markers=options.restart_markers,
        )
    except ValueError as exc:
        raise UsageError(f"invalid image options: {exc}") from None
    return {"image": image, "label": IntField()}


def _check_output(out: str | os.PathLike[str]) -> None:
    """Fail before any work where the writer could only fail at its end (*out* as
    given: ``Path()`` would drop a trailing slash, and "out/" is no file)."""
    refuse_to_replace(out)
    out = Path(out)
    parent = Path(written_through_links(out)).parent
    if not parent.is_dir():
        if parent.exists():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(parent))
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(parent))
    listed = skipped_list_path(out)
    if listed.is_dir():  # a list is written or removed beside the file
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(listed))
    if os.path.lexists(listed) and not os.path.lexists(out):
        # an earlier conversion's list is replaced or removed with its file; beside
        # no file, it may be anyone's (it was removed without a word)
        raise FileExistsError(errno.EEXIST, f"exists beside no {out.name}: the conversion "
                              "writes its list of skipped images there, or removes an "
                              "earlier one; remove it, or give another OUT", str(listed))


def _check_replaced(out: Path) -> None:
    """Refuse to replace a file that is not a .beton (a mistyped OUT naming a
    script or a document): an earlier dataset, or an empty file, may be replaced."""
    if not holds_only(out, b"\x02\x00"):  # a .beton v2 starts with its version
        raise FileExistsError(errno.EEXIST, "exists and is not a .beton file; writing the "
                              "dataset there would destroy it: give another path, or "
                              "remove it first", str(out))


def _same_file(target: Path, paths: Iterable[Path]) -> Path | None:
    """The first of *paths* that is the file *target* is (through links), if any:
    one ``stat`` each (about 2 s for ImageNet's 1.3 million images)."""
    wanted = os.stat(target)
    for path in paths:
        try:
            found = os.stat(path)
        except OSError:  # (a dangling link: reported, or skipped, by the conversion)
            continue
        if (found.st_ino, found.st_dev) == (wanted.st_ino, wanted.st_dev):
            return path
    return None


def convert_folder(src: str | os.PathLike[str], out: str | os.PathLike[str],
                   options: ConvertOptions) -> ConvertResult:
    """Write the ImageFolder *src* to the .beton file *out*.

    Args:
        src: ``src/<class>/<image>``; classes become ``label`` values in sorted order.
        out: the file to write (replaced atomically if it exists).
        options: image and writer options.

    Returns:
        What was written and how long it took.

    With ``options.skip_bad``, images that cannot be read (``OSError``: a
    dangling link, no permission, not a regular file) or decoded (or are
    empty) are left out instead of stopping the conversion; they are listed, one
    ``path<TAB>reason`` line each, in ``<out>.skipped.txt``, written before
    the file is named and named right after it (a list that cannot be written
    leaves the old file in place); an earlier list of that name is removed
    when the new file has none.
    """
    fields = image_folder_fields(options)
    _check_output(out)
    out = Path(out)
    dataset = ImageFolder(src)
    if out.exists():  # one of the images it converts: replacing it would destroy it
        source = _same_file(out, (path for path, _ in dataset.samples))
        if source is not None:
            raise FileExistsError(errno.EEXIST, f"is one of the images being converted "
                                  f"({source}); writing there would destroy it: give "
                                  "another path", str(out))
        _check_replaced(out)
    writer = DatasetWriter(out, fields, page_size=options.page_size,
                           num_workers=options.num_workers, seed=options.seed,
                           progress=options.progress,
                           skip_errors=(DecodeError, OSError) if options.skip_bad else ())
    listed = skipped_list_path(out)

    def images(samples: list[SkippedSample]) -> tuple[tuple[Path, str], ...]:
        return tuple((dataset.samples[s.source][0], s.error.partition(": ")[2] or s.error)
                     for s in samples)

    def skipped_list(samples: list[SkippedSample]) -> tuple[str, bytes | None]:
        if samples and len(samples) == len(dataset):  # a file of nothing is no conversion
            path, why = images(samples[:1])[0]
            raise ValueError(f"{src}: none of its {len(dataset)} images could be read "
                             f"(the first, {path}: {why}); nothing was written")
        text = "".join(f"{listed_path(path)}\t{' '.join(why.split())}\n"
                       for path, why in images(samples))
        # a file name's bytes as they are, UTF-8 or not (text.encode() failed on
        # b"bad\xff.jpg" at the very end, and the whole conversion was lost)
        return str(listed), text.encode("utf-8", "surrogateescape") if text else None

    writer._companion = skipped_list  # written with the file, or a stale one removed
    start = time.perf_counter()
    writer.from_indexed_dataset(dataset, chunksize=options.chunksize,
                                shuffle_indices=options.shuffle)
    seconds = time.perf_counter() - start
    skipped = images(writer.skipped)
    empty = tuple((dataset.classes.index(name), name) for name in dataset.empty_classes)
    left_out = {s.source for s in writer.skipped}
    kept = {label for k, (_, label) in enumerate(dataset.samples) if k not in left_out}
    emptied = tuple((label, name) for label, name in enumerate(dataset.classes)
                    if label not in kept and name not in dataset.empty_classes)
    return ConvertResult(out, len(dataset) - len(skipped), seconds, out.stat().st_size,
                         skipped, listed if skipped else None, empty, emptied)


def cmd_convert(args: argparse.Namespace) -> int:
    """``fastforward convert SRC OUT``.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    for option, value, mode in (("--smart-threshold", args.smart_threshold, "smart"),
                                ("--compress-probability", args.compress_probability,
                                 "proportion")):
        if value is not None and args.write_mode != mode:
            raise UsageError(f"{option} applies to --write-mode {mode} only (this is "
                             f"--write-mode {args.write_mode})")
    # options that would change nothing are refused, as those above: a user who gives
    # one expects it to
    for option, value in (("--jpeg-quality", args.jpeg_quality),
                          ("--no-restart-markers", args.restart_markers)):
        if value is not None and args.write_mode == "raw":
            raise UsageError(f"{option} applies to the JPEGs written, and --write-mode raw "
                             "writes none")
    if args.seed is not None and not args.shuffle and args.write_mode != "proportion":
        raise UsageError("--seed applies to --shuffle and --write-mode proportion, and this "
                         "conversion uses neither")
    options = ConvertOptions(
        max_resolution=args.max_resolution or None,
        jpeg_quality=90 if args.jpeg_quality is None else args.jpeg_quality,
        restart_markers=args.restart_markers is not False,
        write_mode=args.write_mode,
        smart_threshold=args.smart_threshold,
        compress_probability=(0.5 if args.compress_probability is None
                              else args.compress_probability),
        num_workers=args.num_workers,
        page_size=args.page_size,
        chunksize=args.chunksize,
        shuffle=args.shuffle,
        seed=0 if args.seed is None else args.seed,
        progress=not args.no_progress,
        skip_bad=args.skip_bad,
    )
    result = convert_folder(args.src, args.out, options)
    try:
        _print(result.summary())
        sys.stdout.flush()  # (a full disk under a buffered stdout says so here, not later)
    except BrokenPipeError:  # ``| head``: what reads the summary left; the file is written
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        return _fail(f"{os.fsdecode(result.path)}: interrupted (Ctrl-C) while printing the "
                     "summary; the file was written", 130)
    except OSError as exc:  # stdout on a full disk, say: the file was written all the same
        raise OSError(exc.errno, f"{exc.strerror or exc} (printing the summary: "
                      f"{os.fsdecode(result.path)} was written)", _STDOUT) from exc
    return 0


# -- info ----------------------------------------------------------------------------------------


def image_stats(reader: Reader, index: int) -> dict[str, Any]:
    """Statistics of one RGBImageField.

    Args:
        reader: the open file.
        index: the field's position.

    Returns:
        Counts per mode, width/height/pixel statistics, the largest side and
        the mean stored JPEG size in bytes.
    """
    column = reader.metadata[f"f{index}"]
    modes = column["mode"]
    widths = column["width"].astype(np.int64)
    heights = column["height"].astype(np.int64)
    counts = {name: int(np.count_nonzero(modes == code)) for name, code in IMAGE_MODES.items()}
    if sum(counts.values()) != len(column):
        counts["unknown"] = len(column) - sum(counts.values())
    # each payload's size as located when the file was opened (0: none found, where
    # the file is read without validate; a JPEG has a byte at least)
    sizes = reader.payload_nbytes[index][modes == IMAGE_MODES["jpg"]]
    sizes = sizes[sizes > 0]
    return {
        "modes": counts,
        "width": _mean_max(widths),
        "height": _mean_max(heights),
        "pixels": _mean_max(widths * heights),
        "max_side": int(np.maximum(widths, heights).max()) if len(column) else None,
        "mean_jpeg_bytes": float(sizes.mean()) if sizes.size else None,
    }


def field_info(reader: Reader, index: int) -> dict[str, Any]:
    """A description of field *index* of *reader*.

    Args:
        reader: the open file.
        index: the field's position.

    Returns:
        Its name, class and type id; dtype and shape for arrays; statistics for images.
    """
    name = reader.field_names[index]
    handler = reader.handlers[name]
    type_id = int(reader.field_descriptors[index]["type_id"])
    # a custom field by the class it was given (its from_binary may build a base class)
    given = reader.custom_handlers.get(name)
    info: dict[str, Any] = {"name": name, "type_id": type_id,
                            "class": (given or type(handler)).__name__}
    if type_id == TorchTensorField.TYPE_ID and type(handler) is NDArrayField:
        info.update({"class": TorchTensorField.__name__, "read_as": NDArrayField.__name__})
    if isinstance(handler, NDArrayField):
        info.update(dtype=str(handler.dtype), shape=list(handler.shape))
    if isinstance(handler, RGBImageField):
        info.update(image_stats(reader, index))
    return info


def file_info(reader: Reader) -> dict[str, Any]:
    """A description of an open .beton file (what ``info --json`` prints).

    Args:
        reader: the open file.

    Returns:
        Path, sizes, sample and page counts, and one entry per field.
    """
    pages = reader.alloc_table["ptr"] // np.uint64(reader.page_size)
    return {
        "path": reader.fname,
        "file_size": os.path.getsize(reader.fname),
        "page_size": reader.page_size,
        "num_samples": reader.num_samples,
        "num_pages": int(np.unique(pages).size),
        "fields": [field_info(reader, i) for i in range(reader.num_fields)],
    }


def _image_lines(info: dict[str, Any]) -> list[str]:
    """The text lines of an image field's statistics (see ``image_stats``)."""
    width, height, pixels = info["width"], info["height"], info["pixels"]
    modes = ", ".join(f"{mode} {count}" for mode, count in info["modes"].items())
    jpeg = info["mean_jpeg_bytes"]
    return [
        f"    modes:       {modes}",
        f"    width:       mean {_num(width['mean'], ',.1f')}, max {_num(width['max'])}",
        f"    height:      mean {_num(height['mean'], ',.1f')}, max {_num(height['max'])}",
        # (no "max W×H": the widest and the tallest images are seldom one image)
        f"    resolution:  mean {_num(width['mean'], '.0f')}×{_num(height['mean'], '.0f')} (W×H)",
        f"    pixels:      mean {_num(pixels['mean'])}, max {_num(pixels['max'])}",
        f"    JPEG size:   mean {_num(jpeg)} bytes" if jpeg is not None else "    JPEG size:   -",
    ]


def format_info(info: dict[str, Any]) -> list[str]:
    """Render ``file_info``'s result as text lines.

    Args:
        info: as returned by ``file_info``.

    Returns:
        The lines ``info`` prints.
    """
    lines = [
        f"path:          {info['path']}",
        f"file size:     {format_bytes(info['file_size'])} ({info['file_size']:,} bytes)",
        f"page size:     {format_bytes(info['page_size'])}",
        f"samples:       {info['num_samples']:,}",
        f"pages used:    {info['num_pages']:,}",
        "fields:",
    ]
    for field in info["fields"]:
        line = f"  {field['name']}: {field['class']}"
        if "read_as" in field:
            line += f" (read as {field['read_as']})"
        if "dtype" in field:
            line += f" (dtype {field['dtype']}, shape {tuple(field['shape'])})"
        lines.append(line)
        if "modes" in field:
            lines.extend(_image_lines(field))
    return lines


def print_info(path: str | os.PathLike[str], as_json: bool = False,
               custom_fields: dict[str, type[Field]] | None = None) -> None:
    """Print the description of the .beton file *path*.

    Args:
        path: the file.
        as_json: print a JSON object instead of text.
        custom_fields: the classes of its custom fields (type id 255), by name.
    """
    with Reader(path, custom_handlers=custom_fields) as reader:
        _check_custom_names(reader, custom_fields or {})
        info = file_info(reader)
    if as_json:
        _print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        _print("\n".join(format_info(info)))


def cmd_info(args: argparse.Namespace) -> int:
    """``fastforward info FILE``.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    print_info(args.file, as_json=args.json, custom_fields=_custom_fields(args))
    return 0


# -- verify --------------------------------------------------------------------------------------

def verify_summary(path: str, num_samples: int, problems: Sequence[Problem],
                   decoded: bool) -> str:
    """The last line ``verify`` prints.

    Args:
        path: the file.
        num_samples: how many samples it holds.
        problems: what was found.
        decoded: whether every sample was decoded too.

    Returns:
        The summary line.
    """
    checked = (f"{num_samples} sample{'' if num_samples == 1 else 's'} checked"
               + (" and decoded" if decoded else ""))
    if not problems:
        return f"{path}: OK, {checked}, no problems found"
    samples = {p.sample for p in problems if p.sample is not None}
    samples.update(s for p in problems for s in p.samples)  # those of damaged pages
    where = f"in {len(samples)} sample(s)" if samples else "in no sample's data"
    return f"{path}: FAILED, {checked}: {len(problems)} problem(s) {where}"


def cmd_verify(args: argparse.Namespace) -> int:
    """``fastforward verify FILE``: exit status 1 when any problem is found.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    # validate=False: every problem is listed, not only the first
    custom_fields = _custom_fields(args)
    with Reader(args.file, validate=False, custom_handlers=custom_fields) as reader:
        _check_custom_names(reader, custom_fields)
        problems = reader.verify(decode=args.decode, progress=not args.no_progress)
        num_samples = reader.num_samples
        sums, damaged = reader.checksums, reader.checksums_damaged
        header_damaged = reader.header_damaged
    for problem in sorted(problems, key=lambda p: -1 if p.sample is None else p.sample):
        _print(str(problem))
    if header_damaged:
        _print(f"{args.file}: FAILED: the header is damaged (it says {num_samples} "
               "samples, which may be wrong)")
        return 1
    if sums is not None:
        print(f"checksums: {sums.algorithm}, header, metadata, allocation table and "
              f"{sums.num_pages} page(s) checked")
    elif damaged:
        print("checksums: the file's checksum block cannot be used (above), so nothing "
              "was checked by it: damaged payload bytes are found only by --decode")
    else:
        print("checksums: none in this file (written by FFCV, or with checksums=False): "
              "damaged payload bytes are found only by --decode, and not all of them")
    _print(verify_summary(args.file, num_samples, problems, args.decode))
    return 1 if problems else 0


# -- demo ----------------------------------------------------------------------------------------


@dataclass
class DemoRun:
    """The state the demo's steps share."""

    directory: Path
    count: int
    num_workers: int
    progress: bool
    conversion: ConvertResult | None = None

    @property
    def images(self) -> Path:
        """The demo's ImageFolder."""
        return self.directory / "images"

    @property
    def beton(self) -> Path:
        """The demo's .beton file."""
        return self.directory / "demo.beton"


def demo_make_corpus(run: DemoRun) -> None:
    """Make the demo's images, or reuse them when a previous run made as many
    (the folder appears once all are made).

    Args:
        run: the demo's state.

    Raises:
        ValueError: the images folder holds something else.
    """
    from .demo import make_corpus

    if run.images.is_dir() and any(run.images.iterdir()):
        found = len(ImageFolder(run.images))
        if found != run.count:
            raise ValueError(f"{run.images} holds {found} images, not {run.count}: "
                             "remove it or choose another --dir")
        _print(f"reusing the {found} demo images in {run.images}")
        return
    start = time.perf_counter()
    # made beside, then named: an interrupted run leaves no folder of part of the
    # images, which the next run would refuse (it leaves this one, which it removes)
    partial = run.directory / ".images.part"
    shutil.rmtree(partial, ignore_errors=True)
    make_corpus(partial, run.count, seed=0)
    if run.images.is_dir():
        run.images.rmdir()  # (empty)
    partial.rename(run.images)
    _print(f"made {run.count} demo image{'' if run.count == 1 else 's'} in {run.images} "
           f"({time.perf_counter() - start:.1f} s)")


def demo_convert(run: DemoRun) -> None:
    """Convert the demo's images as ``convert`` does by default.

    Args:
        run: the demo's state; its ``conversion`` is set.
    """
    options = ConvertOptions(max_resolution=256, jpeg_quality=90, write_mode="jpg",
                             num_workers=run.num_workers, progress=run.progress)
    run.conversion = convert_folder(run.images, run.beton, options)
    _print(run.conversion.summary())


def demo_info(run: DemoRun) -> None:
    """Describe the demo's .beton file as ``info`` does.

    Args:
        run: the demo's state.
    """
    print_info(run.beton)


def demo_load(run: DemoRun) -> None:
    """Load the demo file for four epochs and compare with the decode limit.

    The pipeline is the training one up to the flip, in NumPy, so the demo
    needs no torch: RandomResizedCrop(192) and RandomHorizontalFlip. Batches of
    128, or smaller for a small ``--count``, so that each epoch has enough
    batches to time at steady state (``benchmark.STEADY_MIN_BATCHES``).

    Args:
        run: the demo's state.
    """
    from .benchmark import (
        STEADY_MIN_BATCHES,
        decode_limit,
        loader_throughput,
        stored_jpegs,
        table,
    )

    with Reader(run.beton) as reader:
        blobs = stored_jpegs(reader, "image")
    limit = decode_limit(blobs, threads=run.num_workers if run.num_workers > 0 else None)
    batch_size = max(1, min(128, len(blobs) // (STEADY_MIN_BATCHES + 1)))
    loaded = loader_throughput(run.beton, "train_numpy", num_workers=run.num_workers,
                               batch_size=batch_size, epochs=4)
    table([limit, loaded], reference=limit)


DemoStep = Callable[[DemoRun], None]
DEMO_STEPS: tuple[tuple[str, DemoStep], ...] = (
    ("make the image corpus", demo_make_corpus),
    ("convert it to .beton", demo_convert),
    ("describe the .beton file", demo_info),
    ("load it: RandomResizedCrop(192) + flip, against the decode limit", demo_load),
)
"""The demo, step by step: each step reads and updates the shared ``DemoRun``."""


def cmd_demo(args: argparse.Namespace) -> int:
    """``fastforward demo``: run every step of ``DEMO_STEPS``.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    if not args.dir:  # Path("") is the current directory: not what was meant
        raise UsageError("--dir: an empty name; give a directory (. for this one)")
    run = DemoRun(Path(args.dir), args.count, args.num_workers, not args.no_progress)
    if run.directory.exists() and not run.directory.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory (--dir names where the "
                                 "demo puts its images and file)", str(run.directory))
    run.directory.mkdir(parents=True, exist_ok=True)
    for number, (title, step) in enumerate(DEMO_STEPS, 1):
        print(f"[{number}/{len(DEMO_STEPS)}] {title}", flush=True)
        step(run)
    return 0


# -- the parser ----------------------------------------------------------------------------------


def _add_convert(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "convert", help="write an ImageFolder directory to a .beton file",
        description="Write SRC/<class>/<image> to a .beton file with fields "
                    "'image' (RGBImageField) and 'label' (IntField, classes in sorted order).")
    p.add_argument("src", metavar="SRC", help="ImageFolder directory: SRC/<class>/<image>")
    p.add_argument("out", metavar="OUT", help="the .beton file to write")
    p.add_argument("--max-resolution", type=int, default=256, metavar="PX",
                   help="shrink images so the longer side is at most PX; 0: keep the size "
                        "(default: %(default)s)")
    p.add_argument("--jpeg-quality", type=int, metavar="Q",
                   help="JPEG quality, 0-100 (default: 90)")
    p.add_argument("--no-restart-markers", dest="restart_markers", action="store_false",
                   default=None,
                   help="JPEGs without a restart marker at each row of 16 pixels: whole-image "
                        "decoding (SimpleRGBImageDecoder, FFCV) is then about 5-10%% faster, "
                        "crop decoding (RandomResizedCrop) 7-34%% slower")
    p.add_argument("--write-mode", choices=WRITE_MODES, default="jpg",
                   help="how images are stored (default: %(default)s; note that "
                        "RGBImageField's own default is raw)")
    p.add_argument("--smart-threshold", type=parse_size, metavar="BYTES",
                   help="for --write-mode smart: store as JPEG the images whose raw pixels "
                        "take more than BYTES")
    p.add_argument("--compress-probability", type=float, metavar="P",
                   help="for --write-mode proportion: the probability of storing an image "
                        "as JPEG (default: 0.5)")
    _add_workers(p)
    p.add_argument("--page-size", type=page_size_arg, default=DEFAULT_PAGE_SIZE, metavar="SIZE",
                   help="bytes per page, a power of two of at least 2 MiB: plain bytes or "
                        "with a suffix meaning powers of 1024 (8M, 8MiB, 8MB) (default: 8M)")
    p.add_argument("--chunksize", type=positive_int, default=100, metavar="N",
                   help="samples per unit of work of a worker (default: %(default)s)")
    p.add_argument("--shuffle", action="store_true", help="write the samples in a random order")
    p.add_argument("--seed", type=non_negative_int,
                   help="seed of --shuffle and of --write-mode proportion (default: 0)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out images that cannot be read (a dangling link, no "
                        "permission, not a regular file) or decoded (or are empty) instead of "
                        "stopping at the first; they are reported at the end and listed in "
                        "OUT.skipped.txt")
    _add_no_progress(p)
    p.set_defaults(handler=cmd_convert)


def workers_arg(text: str) -> int:
    """Parse ``--num-workers``: -1 or 0 (one per CPU), or 1 to
    ``MAX_BENCH_WORKERS_PER_CPU`` per CPU (more only load the scheduler)."""
    from .utils import default_workers

    value = _integer(text)
    most = MAX_BENCH_WORKERS_PER_CPU * default_workers()
    if not -1 <= value <= most:
        raise argparse.ArgumentTypeError(f"must be -1 or 0 (one per CPU), or 1 to {most} "
                                         f"({MAX_BENCH_WORKERS_PER_CPU} per CPU), got {value}")
    return value


def _add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-workers", type=workers_arg, default=-1, metavar="N",
                        help="worker processes; -1 or 0: one per CPU; at most "
                             f"{MAX_BENCH_WORKERS_PER_CPU} per CPU (default: %(default)s)")


def _add_no_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def _add_custom_fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--custom-field", type=custom_field_arg, action="append",
                        metavar="NAME=MODULE:CLASS",
                        help="the class of a custom field (type id 255, written with a Field "
                             "class of your own), importable from MODULE; once per such field")


def _add_info(subparsers: Any) -> None:
    p = subparsers.add_parser("info", help="describe a .beton file",
                              description="Describe a .beton file: layout, fields and "
                                          "image statistics.")
    p.add_argument("file", metavar="FILE", help="the .beton file")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    _add_custom_fields(p)
    p.set_defaults(handler=cmd_info)


def _add_verify(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify", help="check a .beton file for damage",
        description="Check every payload pointer, size and stored image of a .beton file, "
                    "and every checksum where it has them. Exit status 1 when a problem is "
                    "found.")
    p.add_argument("file", metavar="FILE", help="the .beton file")
    p.add_argument("--decode", action="store_true",
                   help="also decode every sample fully (slower)")
    _add_custom_fields(p)
    _add_no_progress(p)
    p.set_defaults(handler=cmd_verify)


def _add_demo(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="make a sample image corpus, convert it, describe it and load it",
        description="Make an ImageFolder of photo crops (from scikit-image's sample "
                    "images), convert it as 'convert' does by default (max resolution 256, "
                    "JPEG quality 90), describe the .beton file, then load it "
                    "(RandomResizedCrop(192) + flip) and print images/s beside the decode "
                    "limit.")
    p.add_argument("--dir", default=str(DEFAULT_DEMO_DIR), metavar="DIR",
                   help="where to put DIR/images and DIR/demo.beton (default: %(default)s)")
    p.add_argument("--count", type=positive_int, default=1000, metavar="N",
                   help="number of images (default: %(default)s)")
    _add_workers(p)
    _add_no_progress(p)
    p.set_defaults(handler=cmd_demo)


def cmd_bench(args: argparse.Namespace) -> int:
    """``fastforward bench FILE``: images/s against the decode limit, per thread count.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from .benchmark import (
        STEADY_MIN_BATCHES,
        decode_limit,
        image_field,
        loader_pipelines,
        loader_throughput,
        stored_image_count,
        stored_jpegs,
    )
    from .utils import default_workers

    cpus = default_workers()
    counts = sorted(set(args.workers or {1, max(1, cpus // 2), cpus}))  # once each, in order
    if max(counts) > MAX_BENCH_WORKERS_PER_CPU * cpus:
        raise UsageError(f"--workers: at most {MAX_BENCH_WORKERS_PER_CPU} per CPU "
                         f"({MAX_BENCH_WORKERS_PER_CPU * cpus} here), got {max(counts)}")
    plot = None if args.plot is None else png_target(args.plot, args.file)
    if plot is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError(f"--plot needs matplotlib: {install_hint('plot')}") from exc
    custom_fields = _custom_fields(args)
    with Reader(args.file, custom_handlers=custom_fields) as reader:
        _check_custom_names(reader, custom_fields)
        field = image_field(reader)
        # a pipeline that needs what is not installed (torch, torchvision) fails here,
        # before any output
        loader_pipelines(reader, field, args.pipeline)
        if args.pipeline == "simple":  # one size of image in a batch: checked before any output
            column = reader.metadata[f"f{reader.field_names.index(field)}"]
            sizes = len(set(zip(column["height"].tolist(), column["width"].tolist(),
                                strict=True)))
            if sizes > 1:
                raise ValueError(f"{args.file}: field {field!r} holds images of {sizes} sizes; "
                                 "--pipeline simple (SimpleRGBImageDecoder) batches one size "
                                 "only: choose another --pipeline")
        if reader.num_samples < args.batch_size:  # before the JPEGs are read and decoded
            raise ValueError(f"{args.file} holds no samples" if reader.num_samples == 0 else
                             f"{args.file}: its {reader.num_samples} samples make no batch of "
                             f"{args.batch_size}: give a --batch-size of at most "
                             f"{reader.num_samples}")
        blobs = stored_jpegs(reader, field, limit=2000)
        batches = reader.num_samples // args.batch_size  # the loader drops the last part
        raw = reader.num_samples - stored_image_count(reader, field, "jpg")
    timed = ("each without its first batch (the first epoch without one per ring slot, at "
             "most a third: they fault the slots in)"
             if batches - 1 >= STEADY_MIN_BATCHES else "whole, start-up included")
    _print(f"{args.file}: pipeline {args.pipeline}, batch {args.batch_size}, "
           f"{args.epochs} epoch(s), {timed}")
    if raw:  # (a raw image costs a copy: the loader's figure is not one of JPEGs alone)
        _print(f"note: {raw:,} of the {reader.num_samples:,} images of field {field!r} are "
               "stored raw, not as JPEG: " + (
                   "the decode limit is of its JPEGs alone, and the ratio is not of like "
                   "with like" if blobs else "there is no decode limit to compare with"))
    print(f"  {'workers':>7}  {'decode limit':>13}  {'fastforward':>12}  {'ratio':>6}")
    rows, whole_epochs = [], False
    for workers in counts:
        limit = decode_limit(blobs, workers) if blobs else None
        loaded = loader_throughput(args.file, args.pipeline, num_workers=workers,
                                   batch_size=args.batch_size, epochs=args.epochs,
                                   os_cache=not args.no_os_cache,
                                   worker_type=args.worker_type, custom_fields=custom_fields)
        ratio = f"{loaded.rate / limit.rate:6.2f}" if limit and limit.rate else "     -"
        limit_text = f"{limit.rate:13,.0f}" if limit else f"{'-':>13}"
        print(f"  {workers:>7}  {limit_text}  {loaded.rate:12,.0f}  {ratio}", flush=True)
        rows.append((workers, limit.rate if limit else None, loaded.rate))
        whole_epochs = whole_epochs or loaded.name.endswith("with start-up")
    if blobs:
        print(f"decode limit: simplejpeg decoding whole images (accurate IDCT; the crop "
              f"decoders use the fast one) of the file's first {len(blobs):,} JPEGs, once, "
              "on as many threads as workers")
    if whole_epochs:
        _print(f"note: {args.file} makes too few batches of {args.batch_size} per epoch to "
               f"time at steady state (at least {STEADY_MIN_BATCHES + 1} are needed): "
               "these figures are whole epochs, start-up included; a smaller --batch-size "
               "gives more batches")
    if plot is not None:
        figure, axes = plt.subplots(figsize=(6, 4))
        axes.plot([r[0] for r in rows], [r[2] for r in rows], "o-", label="fastforward")
        if blobs:
            limits = [np.nan if r[1] is None else r[1] for r in rows]  # blobs: each has one
            axes.plot([r[0] for r in rows], limits, "s--", label="decode limit")
        axes.set_xlabel("num_workers")
        axes.set_ylabel("images/s")
        axes.set_title(f"{Path(args.file).name}: {args.pipeline}")
        axes.legend()
        axes.grid(alpha=0.3)
        figure.tight_layout()
        save_png(figure, plot, dpi=120)
        plt.close(figure)
        _print(f"plot saved to {plot}")
    return 0


def _add_bench(subparsers: Any) -> None:
    from .benchmark import PIPELINES

    p = subparsers.add_parser(
        "bench", help="measure loading images/s against the decode limit",
        description="Load FILE's first image field with a benchmark pipeline for each "
                    "worker count, beside simplejpeg decoding its stored JPEGs (at most "
                    "2,000) on as many threads. Each epoch's first batch is left out, and "
                    "the first epoch's first one per ring slot (at most a third).")
    p.add_argument("file", metavar="FILE", help="the .beton file")
    p.add_argument("--pipeline", default="center_crop", choices=list(PIPELINES),
                   help="; ".join(f"{k}: {v}" for k, v in PIPELINES.items())
                        + " (default: %(default)s)")
    p.add_argument("--workers", type=positive_int, nargs="+", metavar="N",
                   help="worker counts to measure (default: 1, half and all the CPUs)")
    p.add_argument("--worker-type", default="auto", choices=["auto", "thread", "process"],
                   help="threads, or processes for Python operations; auto: processes "
                        "exactly for the pipelines with one (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=256, metavar="N",
                   help="samples per batch; the last, partial batch is dropped "
                        "(default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=1, metavar="N",
                   help="epochs timed per worker count (default: %(default)s)")
    p.add_argument("--no-os-cache", action="store_true",
                   help="read with os_cache=False (the loader's own page cache, not the "
                        "operating system's)")
    p.add_argument("--plot", metavar="PNG",
                   help="save images/s against the worker count as a PNG image here "
                        "(needs matplotlib: the plot extra)")
    _add_custom_fields(p)
    p.set_defaults(handler=cmd_bench)


def cmd_preview(args: argparse.Namespace) -> int:
    """``fastforward preview FILE``: a PNG grid of decoded samples, masks and boxes drawn.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from .preview import render, what_is_drawn

    if (args.seed is not None or args.epoch is not None) and not (
            args.shuffle or args.flip or args.decoder == "random_resized_crop"):
        raise UsageError("--seed and --epoch apply to --shuffle, --flip and --decoder "
                         "random_resized_crop, and this preview uses none")
    custom_fields = _custom_fields(args)
    with Reader(args.file, custom_handlers=custom_fields) as reader:
        _check_custom_names(reader, custom_fields)
        # a file holding fewer than asked: all of them
        drawn = min(args.samples, reader.num_samples)
    out = render(args.file, args.out, samples=args.samples, image=args.image,
                 decoder=args.decoder, size=args.size, flip=args.flip,
                 seed=args.seed or 0, epoch=args.epoch or 0, columns=args.columns,
                 shuffle=args.shuffle,
                 custom_fields=custom_fields)
    _print(f"{drawn} samples of {args.file} ({what_is_drawn(args.decoder, args.size, args.flip)})"
           f" drawn in {out}")
    return 0


def _add_preview(subparsers: Any) -> None:
    from .preview import DECODERS, MAX_PREVIEW_SAMPLES, MAX_PREVIEW_SIZE

    p = subparsers.add_parser(
        "preview", help="draw decoded samples, masks and boxes over them, into a PNG",
        description="Decode samples of FILE through a chosen image decoder, every mask and box "
                    "field following it, and draw them in a grid (needs matplotlib: the plot "
                    "extra).")
    p.add_argument("file", metavar="FILE", help="the .beton file to draw from")
    p.add_argument("-o", "--out", default="preview.png", help="the PNG (default: %(default)s)")
    p.add_argument("--samples", type=positive_int, default=16,
                   help=f"how many to draw, at most {MAX_PREVIEW_SAMPLES} (a file holding "
                        "fewer: all of them) (default: %(default)s)")
    p.add_argument("--columns", type=positive_int, default=4,
                   help="samples per row of the grid (default: %(default)s)")
    p.add_argument("--image", help="the image field (default: the first)")
    p.add_argument("--decoder", default="center_crop", choices=DECODERS,
                   help="center_crop: the centred square at --size; random_resized_crop: "
                        "--size²; shorter_side: shorter side --size, longer at most twice it; "
                        "simple: as stored, with its masks and boxes (one size only; not with "
                        "--flip where there are masks or boxes) (default: %(default)s)")
    p.add_argument("--size", type=int_from_1_to(MAX_PREVIEW_SIZE), default=256,
                   help=f"pixels, at most {MAX_PREVIEW_SIZE}: each sample is drawn about 300 "
                        "pixels wide; at most 16 images of 2048² are decoded in all "
                        "(default: %(default)s)")
    p.add_argument("--flip", action="store_true", help="mirror half of the samples")
    p.add_argument("--shuffle", action="store_true", help="RANDOM order instead of the first")
    p.add_argument("--seed", type=non_negative_int,
                   help="the loader's seed, for --shuffle, --flip and random_resized_crop "
                        "(default: 0)")
    p.add_argument("--epoch", type=non_negative_int,
                   help="the epoch whose random draws to show (default: 0)")
    _add_custom_fields(p)
    p.set_defaults(handler=cmd_preview)


def build_parser() -> argparse.ArgumentParser:
    """The ``fastforward`` argument parser, with one subparser per command.

    Returns:
        The parser; each subcommand sets ``handler`` to its ``cmd_*`` function.
    """
    parser = _Parser(prog=PROG, description="Write, inspect and check FFCV .beton files.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_convert, _add_info, _add_verify, _add_demo, _add_bench, _add_preview):
        add(subparsers)
    return parser


_STDOUT = "standard output"


class _NamedStdout:
    """sys.stdout while a command runs: an error writing it (a full disk under
    ``> file``) names it, not only its errno (a closed pipe stays BrokenPipeError)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        with _naming_stdout():
            written = self._stream.write(text)
        return len(text) if written is None else int(written)  # (some streams say None)

    def flush(self) -> None:
        with _naming_stdout():
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _naming_stdout() -> Iterator[None]:
    """An OSError inside, but a closed pipe's, raised again naming stdout."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), _STDOUT) from exc


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that a closed pipe raises nothing more at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments, without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 failure or problems found, 2 bad usage,
        130 interrupted, 143 terminated (SIGTERM during a conversion; 129 for SIGHUP).
    """
    args = None
    stdout = sys.stdout
    sys.stdout = _NamedStdout(stdout)
    try:
        try:
            args, unknown = build_parser().parse_known_args(argv)
        except SystemExit as exc:  # --help and --version
            return exc.code if isinstance(exc.code, int) else 0
        if unknown:  # the command's help, not the program's (argparse names the latter)
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)}")
        status = args.handler(args)
        sys.stdout.flush()  # a full disk under stdout is reported here, not at exit
        return status
    except UsageError as exc:
        message = str(exc)
        if not message.endswith("--help)"):  # the command's own refusals too
            command = f" {args.command}" if args is not None else ""
            message += f" (see {PROG}{command} --help)"
        return _fail(message, 2)
    except KeyboardInterrupt:
        if args is not None and args.handler is cmd_convert:  # as SIGTERM's message says
            return _fail(f"{os.fsdecode(args.out)}: interrupted (Ctrl-C); no file was "
                         "written", 130)
        return _fail("interrupted", 130)
    except Terminated as exc:  # 143 for SIGTERM, 129 for SIGHUP
        return _fail(str(exc), exc.code if isinstance(exc.code, int) else 143)
    except BrokenPipeError:  # ``fastforward info x | head``
        _silence_stdout()
        return 1
    except (FastForwardError, OSError, ValueError, ImportError, MemoryError) as exc:
        if isinstance(exc, OSError) and exc.filename == _STDOUT:
            _silence_stdout()  # (what it holds would fail again at exit)
        return _fail(describe_error(exc), 1)
    except Exception as exc:  # a bug: still one line, but name the exception
        return _fail(f"unexpected {type(exc).__name__}: {describe_error(exc)}", 1)
    finally:
        if isinstance(sys.stdout, _NamedStdout):  # (a command may have replaced it)
            sys.stdout = stdout


if __name__ == "__main__":
    raise SystemExit(main())

"""``fastforward preview``: a PNG grid of samples as the loader decodes them.

Each sample's image goes through a chosen decoder (crop, resize, flip), and
every mask and box field of the file follows it (``MaskDecoder``,
``RaggedDecoder(follows=...)``), so the grid shows what a model would see:
masks drawn over the images (ids coloured, 0 left clear), boxes outlined and
labelled with their class ids. Needs matplotlib (the ``plot`` extra).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .fields import Field, IntField, MaskField, RaggedField, RGBImageField
from .fields.mask import MASK_HEADER
from .fields.resized_image import padded_shorter_side_size
from .pipeline.operation import Operation
from .reader import Reader
from .utils import holds_only, install_hint

DECODERS = ("center_crop", "random_resized_crop", "shorter_side", "simple")
MAX_PREVIEW_SIZE = 2048
"""The largest ``size`` drawn: each sample's cell is about 300 pixels wide, and
16 samples at 20,000 pixels took 24 GB before the OOM killer stopped them."""
MAX_PREVIEW_SAMPLES = 256
"""The most samples drawn in one grid (64 rows of 4: a PNG of about 1,200 by
19,000 pixels)."""


def max_preview_pixels() -> int:
    """The most pixels decoded for one grid: 16 images of ``MAX_PREVIEW_SIZE``²
    (256 samples at 2048 by 4096, which the limits above allow one by one, took
    about 18 GB)."""
    return 16 * MAX_PREVIEW_SIZE ** 2


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_OTHER_FORMATS = frozenset({".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".pdf",
                            ".svg", ".eps", ".ps", ".avif", ".heic", ".jxl"})


def png_target(path: str | os.PathLike[str], source: str | os.PathLike[str]) -> Path:
    """*path* as the PNG to write, checked before any work: not a directory, in
    one, not the *source* file it draws from. A symbolic link is written
    through, as ``open`` would (the link stays).

    Raises:
        IsADirectoryError: *path* is a directory, or ends with a slash (as
            ``open`` takes it).
        OSError: *path* is no regular file (a named pipe, a device: the rename
            would replace it), as the writer's target (``refuse_to_replace``).
        FileNotFoundError: its directory does not exist.
        FileExistsError: *path* is the source file (it would be overwritten), or
            an existing file that is not a PNG (a mistyped ``-o`` naming a dataset
            or a script would replace it).
        ValueError: its suffix is another image format's (``.jpg``).
    """
    from .writer import refuse_to_replace, written_through_links

    refuse_to_replace(path)
    name = os.fspath(path)
    out = Path(path)
    target = Path(written_through_links(out))
    if not target.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(target.parent))
    same = False
    with contextlib.suppress(OSError):  # (a source it cannot stat is reported later)
        same = target.exists() and os.path.samefile(target, source)
    if same:
        raise FileExistsError(errno.EEXIST, "is the file being read; writing the PNG "
                              "there would destroy it: give another path", name)
    if not holds_only(target, PNG_SIGNATURE):
        raise FileExistsError(errno.EEXIST, "exists and is not a PNG; writing the PNG "
                              "there would destroy it: give another path, or remove it "
                              "first", name)
    if out.suffix.lower() in _OTHER_FORMATS:  # PNG bytes in a .jpg would mislead
        raise ValueError(f"{name}: the image written is a PNG: name it .png (or give no "
                         "suffix)")
    return out


def what_is_drawn(decoder: str, size: int, flip: bool) -> str:
    """The decoder, the size it gives (the simple decoder's images are drawn as
    stored: no size) and the flip, for titles."""
    shown = "simple, as stored" if decoder == "simple" else f"{decoder} {size}"
    return shown + (" + flip" if flip else "")


def save_png(figure: Any, out: Path, dpi: int) -> None:
    """Save *figure* as a PNG at exactly *out* (no suffix added), atomically, as
    the writer writes (``writer.replace_file``; a link is written through, and
    stays); an error names *out*."""
    import io

    from .writer import replace_file, written_through_links

    png = io.BytesIO()
    figure.savefig(png, dpi=dpi, format="png")
    try:
        replace_file(written_through_links(out), png.getvalue())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc


def _box_column(field: RaggedField) -> str | None:
    """The column of a ragged field that holds boxes: ``boxes``, or a single
    float column of rows of 4."""
    for name, dtype, shape in field.columns:
        if shape == (4,) and dtype.kind == "f" and (name == "boxes" or len(field.columns) == 1):
            return name
    return None


def _image_sizes(reader: Reader, field: str, samples: Iterable[int]) -> set[tuple[int, int]]:
    """The ``(height, width)`` sizes of an image field's *samples*, as stored."""
    rows = reader.metadata[f"f{reader.field_names.index(field)}"][np.asarray(samples, np.int64)]
    return set(zip(rows["height"].tolist(), rows["width"].tolist(), strict=True))


def _mask_sizes(reader: Reader, field: str, samples: Iterable[int]) -> set[tuple[int, int]]:
    """The ``(height, width)`` sizes of a mask field's *samples*, from their
    payloads' headers (a payload too short for one: 0×0, which no image is)."""
    column = reader.metadata[f"f{reader.field_names.index(field)}"]
    sizes = set()
    for sample in samples:
        header = bytes(reader.payload(int(column[int(sample)]["ptr"]), int(sample))
                       [: MASK_HEADER.itemsize]).ljust(MASK_HEADER.itemsize, b"\0")
        row = np.frombuffer(header, MASK_HEADER)[0]
        sizes.add((int(row["height"]), int(row["width"])))
    return sizes


def _label_column(field: RaggedField) -> str | None:
    for name, dtype, shape in field.columns:
        if shape == () and dtype.kind in "iu" and name in ("labels", "label", "classes",
                                                          "category_id"):
            return name
    return None


def preview_pipelines(reader: Reader, image: str | None = None, decoder: str = "center_crop",
                      size: int = 256, flip: bool = False,
                      samples: Iterable[int] | None = None) -> tuple[str, dict[str, Any]]:
    """The image output's name and the loader pipelines a preview uses.

    Args:
        reader: the file.
        image: the image field (default: the first ``RGBImageField``).
        decoder: ``center_crop`` (the centred square, *size*²),
            ``random_resized_crop`` (*size*²), ``shorter_side`` (shorter side
            *size*, longer at most twice it) or ``simple`` (as stored; the
            samples drawn must be of one size, and their masks and boxes are
            drawn as stored; a mask field of another size than the image is left
            out).
        flip: mirror each image with probability 1/2 (what follows it too; not
            with ``simple`` on a file with masks or boxes, which cannot follow it).
        samples: the samples to be drawn, whose images and masks ``simple``
            checks, and whose pixels are bounded (default: all of them, which
            reads every mask's header).

    Raises:
        ValueError: no such image field or decoder; ``simple`` on images of
            several sizes, or with *flip* on a file with masks or boxes; more
            pixels to decode than ``max_preview_pixels()``.
    """
    from .fields.decoders import (
        CenterCropRGBImageDecoder,
        IntDecoder,
        MaskDecoder,
        RaggedDecoder,
        RandomResizedCropRGBImageDecoder,
        ShorterSideRGBImageDecoder,
        SimpleRGBImageDecoder,
    )
    from .transforms import RandomHorizontalFlip

    images = [n for n, h in reader.handlers.items() if isinstance(h, RGBImageField)]
    if image is None:
        if not images:
            raise ValueError(f"{reader.fname} has no RGBImageField to preview")
        image = images[0]
    elif image not in images:
        raise ValueError(f"{image!r} is not an image field of {reader.fname} (image fields: "
                         f"{images})")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    makers: dict[str, Callable[[], Operation]] = {
        "center_crop": lambda: CenterCropRGBImageDecoder((size, size), ratio=1.0),
        "random_resized_crop": lambda: RandomResizedCropRGBImageDecoder((size, size)),
        "shorter_side": lambda: ShorterSideRGBImageDecoder(size, max_size=2 * size),
        "simple": SimpleRGBImageDecoder}
    chosen = makers[decoder]()
    as_stored = decoder == "simple"
    drawn = [n for n, h in reader.handlers.items()
             if isinstance(h, MaskField) or (isinstance(h, RaggedField) and _box_column(h))]
    chosen_samples = range(reader.num_samples) if samples is None else list(samples)
    count = len(chosen_samples)
    if as_stored:  # images, masks and boxes as stored
        sizes = _image_sizes(reader, image, chosen_samples)
        # a mask of another size than the image belongs to another image, or was
        # stored at another resolution: left out
        drawn = [n for n in drawn if not isinstance(reader.handlers[n], MaskField)
                 or _mask_sizes(reader, n, chosen_samples) <= sizes]
        if len(sizes) > 1:
            raise ValueError(f"{reader.fname}: the {count} samples drawn of field {image!r} "
                             f"hold images of {len(sizes)} sizes; the simple decoder shows one "
                             "size only: choose another --decoder")
        if flip and drawn:
            raise ValueError(f"{reader.fname}: the masks and boxes of {drawn} cannot follow "
                             "a flip after the simple decoder: leave out --flip, or choose "
                             "another --decoder")
        height, width = sizes.pop() if sizes else (1, 1)
        if count * height * width > max_preview_pixels():
            raise ValueError(f"{reader.fname}: {count} images of {height}x{width} as stored "
                             "are too many pixels to draw: choose fewer --samples, or "
                             "another --decoder with a --size")
    elif samples is not None:  # the pixels of the batch drawn
        height = width = size
        if decoder == "shorter_side":  # padded to the largest any image of the field takes
            column = reader.metadata[f"f{reader.field_names.index(image)}"]
            height, width = padded_shorter_side_size(column["height"], column["width"],
                                                     [size], 2 * size)
        if count * height * width > max_preview_pixels():
            raise ValueError(f"{reader.fname}: {count} images of {height}x{width} "
                             f"({decoder} {size}) are too many pixels to draw (at most "
                             f"{max_preview_pixels():,}): choose fewer --samples or a "
                             "smaller --size")
    pipelines: dict[str, Any] = {image: [chosen, RandomHorizontalFlip()] if flip else [chosen]}
    for name, handler in reader.handlers.items():
        if name == image:
            continue
        if isinstance(handler, MaskField) and name in drawn:
            pipelines[name] = [MaskDecoder(size=(height, width)) if as_stored
                               else MaskDecoder(follows=image)]
        elif isinstance(handler, RaggedField) and name in drawn:
            pipelines[name] = [RaggedDecoder(as_list=True) if as_stored else
                               RaggedDecoder(as_list=True, follows=image,
                                             boxes=_box_column(handler))]
        elif isinstance(handler, IntField):
            pipelines[name] = [IntDecoder()]
        else:
            pipelines[name] = None
    return image, pipelines


def render(path: str | os.PathLike[str], out: str | os.PathLike[str], samples: int = 16,
           image: str | None = None, decoder: str = "center_crop", size: int = 256,
           flip: bool = False, seed: int = 0, epoch: int = 0, columns: int = 4,
           shuffle: bool = False,
           custom_fields: dict[str, type[Field]] | None = None) -> Path:
    """Decode *samples* samples of *path* and save them as a PNG grid at *out*.

    *out* is checked before anything is decoded; *custom_fields* are the
    classes of the file's custom fields (type id 255), which are not drawn.

    Returns:
        *out*, written atomically.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError as exc:
        raise ImportError(f"preview needs matplotlib: {install_hint('plot')}") from exc
    from .loader import Loader, OrderOption

    if not 1 <= size <= MAX_PREVIEW_SIZE:
        raise ValueError(f"preview size must be in [1, {MAX_PREVIEW_SIZE}], got {size}")
    out = png_target(out, path)
    with Reader(path, custom_handlers=custom_fields) as reader:
        count = min(samples, reader.num_samples)
        if count < 1:
            raise ValueError(f"{path} holds no samples")
        if count > MAX_PREVIEW_SAMPLES:
            raise ValueError(f"{path}: {samples} samples asked, a preview draws at most "
                             f"{MAX_PREVIEW_SAMPLES}: choose fewer --samples")
        options: dict[str, Any] = {
            "batch_size": count, "num_workers": 1, "seed": seed, "drop_last": False,
            "order": OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL,
            "worker_type": "thread", "custom_fields": custom_fields}
        with Loader(path, **options, pipelines=dict.fromkeys(reader.field_names)) as probe:
            chosen = probe._batches(epoch, [], count)[0]  # the samples drawn: their masks checked
        image_name, pipelines = preview_pipelines(reader, image, decoder, size, flip, chosen)
        handlers = reader.handlers
    with Loader(path, **options, pipelines=pipelines) as loader:
        loader.next_epoch = epoch
        batch = next(iter(loader))
        names = [n for n in handlers if pipelines.get(n) is not None]
        outputs = dict(zip(names, batch, strict=True))
        indices = np.asarray(loader._batches(epoch, [], count)[0])
    columns = max(1, min(columns, count))  # no blank columns past the samples
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for k in range(rows * columns):
        ax = axes[k // columns][k % columns]
        ax.axis("off")
        if k >= count:
            continue
        ax.imshow(outputs[image_name][k])
        title = [f"#{int(indices[k])}"]
        for name, handler in handlers.items():
            if name not in outputs or name == image_name:
                continue
            value = outputs[name]
            if isinstance(handler, MaskField):
                ids = value[k]
                ax.imshow(np.ma.masked_equal(ids, 0), cmap="tab20", alpha=0.45,
                          vmin=0, vmax=max(int(ids.max()), 19), interpolation="nearest")
            elif isinstance(handler, RaggedField):
                sample = value[k]
                boxes = sample[_box_column(handler)] if isinstance(sample, dict) else sample
                label_column = _label_column(handler)
                labels = sample[label_column] if label_column else None
                for j, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
                    c = colours(int(labels[j]) % 10 if labels is not None else 0)
                    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                           edgecolor=c, linewidth=1.5))
                    if labels is not None:
                        ax.text(x0, y0, str(int(labels[j])), color="white", fontsize=7,
                                va="bottom", bbox={"facecolor": c, "pad": 1, "linewidth": 0})
            elif isinstance(handler, IntField):
                title.append(f"{name}={int(np.asarray(value[k]).ravel()[0])}")
        ax.set_title(" ".join(title), fontsize=8)
    figure.suptitle(f"{Path(path).name}: {what_is_drawn(decoder, size, flip)}", fontsize=10)
    figure.tight_layout()
    try:
        save_png(figure, out, dpi=100)
    finally:
        plt.close(figure)
    return out

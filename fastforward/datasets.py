"""Datasets the command line converts: an ImageFolder of image files."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .utils import kind_of_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


class ImageFolder:
    """``root/<class>/<image>`` as ``(encoded image bytes, class index)`` samples.

    Classes are the sub-folders in sorted order (as torchvision numbers them);
    images are sorted by path. The bytes are decoded by ``RGBImageField``,
    which shrinks JPEGs in the DCT domain when it can.

    Every name with an image extension is a sample. One that is not a regular
    file once links are followed (a named pipe, a device, a socket) is refused
    when it is read, without being opened (``OSError``: not a regular file):
    reading a named pipe would wait for a writer for ever.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        if not os.fspath(root):  # Path("") would be the current directory
            raise ValueError("the ImageFolder's root is an empty path")
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory (an ImageFolder is "
                                     "root/<class>/<image>)", str(root))
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such directory")
        entries = list(self.root.iterdir())
        # a link to nothing named as a folder would be (no suffix) may be a class
        # folder gone: its images would be left out without a word; a file's is ignored
        dangling = sorted(str(p) for p in entries
                          if not p.suffix and p.is_symlink() and not p.exists())
        if dangling:
            raise FileNotFoundError(
                f"{dangling[0]}: a symbolic link to nothing in the ImageFolder's root "
                f"({len(dangling)} such); remove it, or point it at its class folder")
        self.classes = sorted(p.name for p in entries if p.is_dir())
        if not self.classes:
            raise ValueError(f"{self.root}: no class sub-folders (expected root/<class>/<image>)")
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            for dirpath, files in _walk(self.root / name):
                self.samples.extend(
                    (Path(dirpath) / f, label)
                    for f in sorted(files)
                    if f.lower().endswith(IMAGE_EXTENSIONS)
                )
        if not self.samples:
            raise ValueError(f"{self.root}: no image files in its class folders")
        found = {label for _, label in self.samples}
        self.empty_classes = [name for label, name in enumerate(self.classes)
                              if label not in found]
        """Class folders holding no image: their labels appear in no sample
        (torchvision's ImageFolder refuses them unless ``allow_empty=True``)."""

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self, index: int) -> str:
        """Where sample *index* comes from (the writer puts it in error messages)."""
        return f"dataset index {index}: {self.samples[index][0]}"

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        path, label = self.samples[index]
        return read_regular_file(path), label


def read_regular_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of *path*, which must be a regular file once links are followed.

    Anything else is refused before it is opened (opening a device may act on
    it) with ``OSError('not a regular file (a named pipe)')``; the file is
    opened non-blocking and checked again, so that one swapped for a named pipe
    meanwhile cannot block the read either.
    """
    def refuse(mode: int) -> None:
        if not stat.S_ISREG(mode):
            raise OSError(f"not a regular file ({kind_of_file(mode)}): only files are read")

    refuse(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as file:
        refuse(os.fstat(fd).st_mode)
        return file.read()


def _walk(top: Path) -> list[tuple[str, list[str]]]:
    """Each folder under *top* and its files, sorted by path: folders reached
    through symbolic links included, as torchvision's ``ImageFolder`` takes them,
    but never a link to a folder the walk is already inside (it would never end)."""
    above: dict[str, frozenset[str]] = {}
    found = []

    def unreadable(exc: OSError) -> None:  # its images would be left out without a word
        raise OSError(exc.errno, f"cannot list this folder ({exc.strerror}), so its images "
                      "would be left out; make it readable, or move it out of the "
                      "ImageFolder", exc.filename) from None

    for dirpath, dirnames, files in os.walk(top, onerror=unreadable, followlinks=True):
        inside = above.pop(dirpath, frozenset()) | {os.path.realpath(dirpath)}
        kept = []
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if os.path.realpath(path) not in inside:
                kept.append(name)
                above[path] = inside
        dirnames[:] = kept
        found.append((dirpath, files))
    return sorted(found)

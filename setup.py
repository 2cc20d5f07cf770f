"""Build the Cython extensions; all metadata lives in pyproject.toml.

Only in-tree sources are compiled: no system libraries, no pkg-config. JPEG
coding comes at run time from simplejpeg's wheels; the crop decoders' region
decoding (``fastforward._ext.jpeg``) links libjpeg-turbo statically from a
build-time dependency, PyPI's ``comma-deps-libjpeg`` (libjpeg-turbo 3.1.0,
static, with SIMD and headers; Linux x86_64 only), so nothing is needed at run
time. That wheel declares Python >= 3.12 although its contents do not depend on
Python, so the build fetches it with ``pip download --ignore-requires-python``,
pinned by version and hash, into ``build/``.

Masks and many-channel images (``fastforward._ext.planes``) are decoded by
the zstd decompressor, compiled from the sources vendored in
``fastforward/_ext/vendor/zstd`` (zstd 1.5.7, BSD; decompression only): no
library is needed at build or run time.

``FASTFORWARD_LIBJPEG`` chooses: unset (or ``auto``) fetches it on Linux x86_64
and builds without it elsewhere; ``0`` builds without it (the crop decoders then
decode whole images with simplejpeg); a directory uses the libjpeg-turbo 3.x
there (``include/jpeglib.h``, ``lib/libjpeg.a``, built with ``-fPIC``).
"""

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = bool(os.environ.get("FASTFORWARD_DEBUG"))  # bounds checks, -O0
BUILD = "build/debug" if DEBUG else "build/release"  # keep the two builds apart
ANNOTATE = bool(os.environ.get("FASTFORWARD_ANNOTATE"))  # HTML under build/*/cython/
LIBJPEG = os.environ.get("FASTFORWARD_LIBJPEG", "auto").strip()

LIBJPEG_WHEEL = "comma-deps-libjpeg==3.1.0.post92"
LIBJPEG_SHA256 = "b47ff662cabd8a0c564fd12f64de451a8806990d80712193b6cd7c23fba2ce6f"
LIBJPEG_VERSION = "3.1.0"
LIBJPEG_CACHE = Path(BUILD) / f"libjpeg-turbo-{LIBJPEG_VERSION}"

directives = {
    "language_level": 3,
    "embedsignature": True,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
}
compile_args = (["-O0", "-g"] if DEBUG else ["-O3"]) + ["-ffp-contract=off"]
ZSTD = "fastforward/_ext/vendor/zstd/lib"
ZSTD_SOURCES = [f"{ZSTD}/common/{name}.c" for name in (
    "debug", "entropy_common", "error_private", "fse_decompress", "xxhash", "zstd_common")] + [
    f"{ZSTD}/decompress/{name}.c" for name in (
        "huf_decompress", "zstd_ddict", "zstd_decompress", "zstd_decompress_block")]
# zstd's symbols stay private to the module (no clash with another zstd in the
# process); the x86-64 assembly Huffman loop and the tracing hooks are left out
ZSTD_MACROS = [("ZSTD_DISABLE_ASM", "1"), ("ZSTD_TRACE", "0"), ("ZSTDLIB_VISIBLE", ""),
               ("ZSTDERRORLIB_VISIBLE", "")]
extensions = [
    Extension(
        f"fastforward._ext.{name}",
        [f"fastforward/_ext/{name}.pyx"] + (ZSTD_SOURCES if name == "planes" else []),
        include_dirs=["fastforward/_ext"] + ([ZSTD] if name == "planes" else []),
        define_macros=ZSTD_MACROS if name == "planes" else [],
        depends=[f"fastforward/_ext/{h}" for h in ("copier.h", "resize_kernels.h",
                                                  "resize.pxd", "jpeg_region.h", "jpeg_huffman.h",
                                                  "augment_kernels.h", "planes_kernels.h")],
        extra_compile_args=compile_args + (["-fvisibility=hidden"] if name == "planes" else []),
    )
    for name in ["augment", "collate", "layout", "pixels", "resize", "planes", "jpeg"]
]


def _is_prefix(path: Path) -> bool:
    return (path / "include" / "jpeglib.h").is_file() and (path / "lib" / "libjpeg.a").is_file()


def _fetch_libjpeg() -> Path:
    """Download the pinned wheel with pip and unpack its libjpeg-turbo into build/."""
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{LIBJPEG_WHEEL} --hash=sha256:{LIBJPEG_SHA256}\n")
        # its Requires-Python (>= 3.12) is not about its contents: a static C library
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--ignore-requires-python", "--require-hashes", "--disable-pip-version-check",
                   "-r", str(requirements), "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise SystemExit(
                f"fastforward: could not fetch libjpeg-turbo ({LIBJPEG_WHEEL}) for the crop "
                f"decoders' region decoding:\n{done.stdout[-2000:]}{done.stderr[-2000:]}\n"
                "Set FASTFORWARD_LIBJPEG=0 to build without it (whole-image decoding with "
                "simplejpeg), or FASTFORWARD_LIBJPEG=/prefix to use a libjpeg-turbo 3.x of "
                "your own (include/jpeglib.h, lib/libjpeg.a).")
        staging = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member in wheel.namelist():
                if "/libjpeg/install/" in member and not member.endswith("/"):
                    target = staging / member.split("/libjpeg/install/", 1)[1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(wheel.read(member))
        if not _is_prefix(staging):
            raise SystemExit(f"fastforward: {wheels[0].name} holds no libjpeg.a and jpeglib.h")
        LIBJPEG_CACHE.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(LIBJPEG_CACHE, ignore_errors=True)
        shutil.move(str(staging), LIBJPEG_CACHE)
    return LIBJPEG_CACHE


def find_libjpeg() -> Path | None:
    """The libjpeg-turbo prefix to link, or None to build without region decoding."""
    if LIBJPEG == "0":
        return None
    if LIBJPEG not in ("", "auto", "1"):
        prefix = Path(LIBJPEG)
        if not _is_prefix(prefix):
            raise SystemExit(f"fastforward: FASTFORWARD_LIBJPEG={LIBJPEG} has no "
                             "include/jpeglib.h and lib/libjpeg.a")
        return prefix
    if not (sys.platform == "linux" and platform.machine().lower() in ("x86_64", "amd64")):
        if LIBJPEG == "1":
            raise SystemExit("fastforward: no libjpeg-turbo build-time wheel for "
                             f"{sys.platform} {platform.machine()}; give a prefix instead")
        sys.stderr.write("fastforward: no libjpeg-turbo for this platform; the crop decoders "
                         "will decode whole images with simplejpeg\n")
        return None
    if _is_prefix(LIBJPEG_CACHE):
        return LIBJPEG_CACHE
    return _fetch_libjpeg()


class BuildExt(build_ext):
    """Links libjpeg-turbo into ``fastforward._ext.jpeg``, or leaves that module out;
    compiles the modules in parallel, one per core, unless ``-j`` says otherwise
    (pip gives none: about 45 s on 2 cores, against 72 s one at a time)."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
            self.parallel = len(cores) if cores else os.cpu_count() or 1

    def run(self) -> None:
        prefix = find_libjpeg()
        jpeg = [e for e in self.extensions if e.name == "fastforward._ext.jpeg"]
        if prefix is None:
            self.extensions = [e for e in self.extensions if e not in jpeg]
            # nor may a region decoder from an earlier build stay: in the package
            # (in place), or in the build folder, from which a wheel takes every module
            folder = Path("fastforward/_ext") if self.inplace else Path(
                self.build_lib, "fastforward", "_ext")
            for stale in folder.glob("jpeg.*"):
                if stale.suffix in (".so", ".pyd"):
                    stale.unlink()
        else:
            for extension in jpeg:
                extension.include_dirs.append(str(prefix / "include"))
                extension.extra_objects.append(str(prefix / "lib" / "libjpeg.a"))
                # libjpeg's symbols stay private to the module: no clash with another
                # libjpeg in the process (Pillow's, OpenCV's), no interposition
                extension.extra_link_args.append("-Wl,--exclude-libs,ALL")
        super().run()


setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=ANNOTATE,
        force=ANNOTATE,  # an up-to-date .c would otherwise skip the HTML
        build_dir=f"{BUILD}/cython",
    ),
    cmdclass={"build_ext": BuildExt},
    options={"build": {"build_base": BUILD}},
)

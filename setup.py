"""Build the Cython extensions; all metadata lives in pyproject.toml.

Only in-tree sources are compiled: no system libraries, no pkg-config, no
downloads. JPEG coding comes at run time from simplejpeg's wheels.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = bool(os.environ.get("FASTFORWARD_DEBUG"))  # bounds checks, -O0
BUILD = "build/debug" if DEBUG else "build/release"  # keep the two builds apart
ANNOTATE = bool(os.environ.get("FASTFORWARD_ANNOTATE"))  # HTML under build/*/cython/

directives = {
    "language_level": 3,
    "embedsignature": True,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
}
extensions = [
    Extension(
        f"fastforward._ext.{name}",
        [f"fastforward/_ext/{name}.pyx"],
        include_dirs=["fastforward/_ext"],
        depends=["fastforward/_ext/copier.h", "fastforward/_ext/resize_kernels.h",
                 "fastforward/_ext/augment_kernels.h"],
        extra_compile_args=(["-O0", "-g"] if DEBUG else ["-O3"]) + ["-ffp-contract=off"],
    )
    for name in ["augment", "collate", "resize"]
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=ANNOTATE,
        force=ANNOTATE,  # an up-to-date .c would otherwise skip the HTML
        build_dir=f"{BUILD}/cython",
    ),
    options={"build": {"build_base": BUILD}},
)

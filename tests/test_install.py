"""The install path: a source tree whose kernels were never built, and the
README's test command on a machine with only some of the interpreters."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastforward

ROOT = Path(__file__).resolve().parent.parent


def copy_package(destination: Path, with_kernels: bool) -> Path:
    """A copy of the imported fastforward package (sources, stubs, .pyx), with or
    without its compiled kernels; returns the folder that holds it."""
    package = Path(fastforward.__file__).parent
    ignore = ["__pycache__", "*.c", "*.html"] + ([] if with_kernels else ["*.so", "*.pyd"])
    shutil.copytree(package, destination / "fastforward", ignore=shutil.ignore_patterns(*ignore))
    return destination


def run_python(cwd: Path, code: str) -> subprocess.CompletedProcess[str]:
    # -c puts the working directory first on sys.path, as `python` in a checkout's root does
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          check=False)


@pytest.mark.parametrize("module", ["fastforward", "fastforward.writer",
                                    "fastforward.loader"])
def test_import_without_the_compiled_kernels_says_what_to_do(tmp_path: Path,
                                                              module: str) -> None:
    root = copy_package(tmp_path, with_kernels=False)
    done = run_python(root, f"import {module}")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    # jpeg is optional: built only with libjpeg-turbo (see setup.py)
    kernels = ", ".join(sorted(p.stem for p in (root / "fastforward" / "_ext").glob("*.pyx")
                               if p.stem != "jpeg"))
    assert "collate" in kernels
    assert last.startswith(f"ImportError: fastforward's compiled kernels ({kernels}) are "
                           f"missing from {root / 'fastforward' / '_ext'}")
    assert "`pip install -e . --no-build-isolation`" in last
    assert f"run Python from another directory than {root}" in last
    assert "No module named" not in done.stderr


def test_kernels_built_for_another_python_are_named(tmp_path: Path) -> None:
    root = copy_package(tmp_path, with_kernels=False)
    (root / "fastforward" / "_ext" / "collate.cpython-399-x86_64-linux-gnu.so").write_bytes(b"")
    done = run_python(root, "import fastforward")
    assert "found collate.cpython-399-x86_64-linux-gnu.so: built for another Python" in \
        done.stderr


def test_a_copy_built_without_libjpeg_turbo_imports(tmp_path: Path) -> None:
    """The region decoder is the one optional kernel: without it the crop decoders
    decode whole images (builds with FASTFORWARD_LIBJPEG=0, or other platforms)."""
    root = copy_package(tmp_path, with_kernels=True)
    for module in (root / "fastforward" / "_ext").glob("jpeg.*"):
        if module.suffix in (".so", ".pyd"):
            module.unlink()
    done = run_python(root, "import fastforward.fields.rgb_image as r; print(r.CROP_DECODING)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "whole image (simplejpeg)"


def test_a_built_copy_imports(tmp_path: Path) -> None:
    root = copy_package(tmp_path, with_kernels=True)
    done = run_python(root, "import fastforward, fastforward.writer as w; print(w.__file__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(root / "fastforward" / "writer.py")


def test_a_plain_tox_skips_missing_interpreters_and_ci_does_not() -> None:
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    assert tox.getboolean("tox", "skip_missing_interpreters") is True
    ci = ROOT / ".ci" / "run"
    if not ci.exists():
        pytest.skip("no .ci/run here (an sdist)")
    commands = [line.split("#")[0].strip() for line in ci.read_text().splitlines()]
    toxes = [c for c in commands if c.split()[:1] == ["tox"]]
    assert toxes == ["tox --skip-missing-interpreters false"]


def test_install_hints_name_each_extras_packages() -> None:
    """Errors name the packages an extra brings, never ``fastforward[extra]``: on PyPI
    that name is another project's. ``utils.EXTRAS`` is pyproject.toml's extras."""
    import tomllib

    from fastforward.utils import EXTRAS, install_hint

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    declared.pop("test")
    assert set(EXTRAS) == set(declared)
    for extra, requirements in declared.items():
        (requirement,) = requirements
        assert requirement.startswith(EXTRAS[extra])
        hint = install_hint(extra)
        assert hint.startswith(f"pip install {EXTRAS[extra]}")
        assert f"'.[{extra}]'" in hint
        assert "fastforward[" not in hint

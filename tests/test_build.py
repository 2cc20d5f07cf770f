"""How this build decodes JPEGs for the crop decoders (see setup.py)."""

from __future__ import annotations

import os
import platform
import sys

import pytest

from fastforward.fields import rgb_image


def test_default_build_has_region_decoding() -> None:
    """On Linux x86_64 the default build links libjpeg-turbo; FASTFORWARD_LIBJPEG=0
    builds (tox's nolibjpeg) fall back to whole images through simplejpeg."""
    if os.environ.get("FASTFORWARD_LIBJPEG") == "0":
        assert rgb_image._region is None
        assert rgb_image.CROP_DECODING == "whole image (simplejpeg)"
    elif sys.platform == "linux" and platform.machine() == "x86_64":
        assert rgb_image._region is not None
        assert rgb_image.CROP_DECODING == "region (libjpeg-turbo 3.1.0)"
    else:
        pytest.skip("no libjpeg-turbo build-time wheel for this platform")

"""FFCV's import paths exist, public names are documented, and importing
fastforward neither needs torch nor changes global state."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

FFCV_PATHS = {
    "fastforward": ["DatasetWriter", "Loader"],
    "fastforward.loader": ["Loader", "OrderOption"],
    "fastforward.fields.decoders": ["IntDecoder", "FloatDecoder", "NDArrayDecoder",
                                    "BytesDecoder", "SimpleRGBImageDecoder",
                                    "RandomResizedCropRGBImageDecoder",
                                    "CenterCropRGBImageDecoder"],
    "fastforward.transforms": ["ToTensor", "ToDevice", "ToTorchImage", "Convert", "View",
                               "Squeeze", "NormalizeImage", "RandomHorizontalFlip",
                               "RandomVerticalFlip", "RandomTranslate", "Cutout",
                               "RandomResizedCrop", "RandomBrightness", "RandomContrast",
                               "RandomSaturation", "Solarization", "ImageMixup", "LabelMixup",
                               "MixupToOneHot", "Poison", "ReplaceLabel", "ModuleWrapper"],
    "fastforward.pipeline": ["PipelineSpec", "Operation", "State", "AllocationQuery"],
    "fastforward.pipeline.operation": ["Operation"],
    "fastforward.pipeline.state": ["State"],
    "fastforward.pipeline.allocation_query": ["AllocationQuery"],
    "fastforward.traversal_order": ["Sequential", "Random", "QuasiRandom"],
    "fastforward.traversal_order.base": ["TraversalOrder"],
    "fastforward.memory_managers": ["OSCacheManager", "ProcessCacheManager", "MemoryManager"],
    "fastforward.writer": ["DatasetWriter", "MIN_PAGE_SIZE", "MAX_PAGE_SIZE"],
    "fastforward.reader": ["Reader"],
    "fastforward.fields": ["Field", "IntField", "FloatField", "BytesField", "NDArrayField",
                           "TorchTensorField", "JSONField", "RGBImageField"],
    "fastforward.fields.basics": ["IntField", "FloatField", "IntDecoder", "FloatDecoder"],
    "fastforward.fields.bytes": ["BytesField", "BytesDecoder"],
    "fastforward.fields.ndarray": ["NDArrayField", "TorchTensorField", "NDArrayDecoder"],
    "fastforward.fields.rgb_image": ["RGBImageField", "SimpleRGBImageDecoder",
                                     "RandomResizedCropRGBImageDecoder",
                                     "CenterCropRGBImageDecoder", "ResizedCropRGBImageDecoder"],
    "fastforward.fields.json": ["JSONField"],
    "fastforward.types": ["HeaderType", "FieldDescType", "ALLOC_TABLE_TYPE", "TYPE_ID_HANDLER",
                          "CURRENT_VERSION", "get_metadata_type", "get_handlers"],
    "fastforward.utils": ["is_power_of_2", "align_to_page", "decode_null_terminated_string",
                          "chunks"],
    "fastforward.errors": ["FastForwardError", "FormatError", "DecodeError", "EncodeError"],
}


@pytest.mark.parametrize("module", FFCV_PATHS)
def test_ffcv_paths(module: str) -> None:
    mod = importlib.import_module(module)
    for name in FFCV_PATHS[module]:
        assert hasattr(mod, name), f"{module}.{name}"


@pytest.mark.parametrize("module", ["fastforward", "fastforward.fields",
                                    "fastforward.fields.decoders", "fastforward.transforms",
                                    "fastforward.loader", "fastforward.pipeline",
                                    "fastforward.traversal_order",
                                    "fastforward.memory_managers"])
def test_all_is_documented(module: str) -> None:
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert isinstance(name, str)
        obj = getattr(mod, name)
        if callable(obj):
            assert obj.__doc__, f"{module}.{name} has no docstring"


def test_import_needs_no_torch_and_sets_nothing(tmp_path: Path) -> None:
    code = (
        "import sys, threading\n"
        "import fastforward, fastforward.writer, fastforward.reader, fastforward.types\n"
        "import fastforward.loader, fastforward.transforms, fastforward.fields.decoders\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "print(fastforward.__version__)\n"
    )
    # run outside the source tree, so that the installed package is imported
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert out.stdout.strip() == importlib.import_module("fastforward").__version__


def test_torch_tensor_field_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    from fastforward.fields import TorchTensorField

    with pytest.raises(ImportError, match=r"TorchTensorField needs torch: pip install torch "):
        TorchTensorField("int32", (2,))

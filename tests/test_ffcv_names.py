"""Every public name of FFCV 1.0.2 exists at the same path, or says what replaces it.

The list below was derived from FFCV 1.0.2's modules: for each module, the
names it defines at top level, and for a package the names its
``__init__`` re-exports. ``ffcv.x.y`` is ``fastforward.x.y`` here.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest

from fastforward.errors import NotProvidedError

PROVIDED: dict[str, list[str]] = {
    "": ["DatasetWriter", "Loader"],
    "fields": ["BytesField", "Field", "FloatField", "IntField", "JSONField", "NDArrayField",
               "RGBImageField", "TorchTensorField"],
    "fields.base": ["ARG_TYPE", "Field"],
    "fields.basics": ["BasicDecoder", "FloatDecoder", "FloatField", "IntDecoder", "IntField"],
    "fields.bytes": ["BytesDecoder", "BytesField"],
    "fields.decoders": ["BytesDecoder", "CenterCropRGBImageDecoder", "FloatDecoder",
                        "IntDecoder", "NDArrayDecoder", "RandomResizedCropRGBImageDecoder",
                        "SimpleRGBImageDecoder"],
    "fields.json": ["ENCODING", "JSONField", "SEPARATOR"],
    "fields.ndarray": ["NDArrayArgsType", "NDArrayDecoder", "NDArrayField",
                       "TorchTensorField"],
    "fields.rgb_image": ["CenterCropRGBImageDecoder", "IMAGE_MODES", "RGBImageField",
                         "RandomResizedCropRGBImageDecoder", "ResizedCropRGBImageDecoder",
                         "SimpleRGBImageDecoder", "encode_jpeg", "get_center_crop",
                         "get_random_crop", "resizer"],
    "libffcv": ["imdecode", "memcpy", "read", "resize_crop"],
    "loader": ["Loader", "OrderOption"],
    "loader.epoch_iterator": ["EpochIterator"],
    "loader.loader": ["DEFAULT_OS_CACHE", "DEFAULT_PROCESS_CACHE", "Loader", "ORDER_MAP",
                      "ORDER_TYPE", "OrderOption"],
    "memory_managers": ["MemoryContext", "MemoryManager", "OSCacheManager",
                        "ProcessCacheManager"],
    "memory_managers.base": ["MemoryContext", "MemoryManager"],
    "memory_managers.common": ["BATCHES_TYPE"],
    "memory_managers.os_cache": ["OSCacheContext", "OSCacheManager"],
    "memory_managers.process_cache": ["ProcessCacheContext", "ProcessCacheManager"],
    "memory_managers.process_cache.context": ["ProcessCacheContext"],
    "memory_managers.process_cache.manager": ["ProcessCacheManager"],
    "pipeline": ["Compiler", "PipelineSpec"],
    "pipeline.allocation_query": ["Allocation", "AllocationQuery", "allocate_query"],
    "pipeline.compiler": ["Compiler"],
    "pipeline.operation": ["Operation"],
    "pipeline.pipeline_spec": ["PipelineSpec"],
    "pipeline.state": ["State"],
    "reader": ["Reader"],
    "transforms": ["Convert", "Cutout", "ImageMixup", "LabelMixup", "MixupToOneHot",
                   "ModuleWrapper", "NormalizeImage", "Poison", "RandomBrightness",
                   "RandomContrast", "RandomHorizontalFlip", "RandomResizedCrop",
                   "RandomSaturation", "RandomTranslate", "ReplaceLabel", "Squeeze", "ToDevice",
                   "ToTensor", "ToTorchImage", "View"],
    "transforms.color_jitter": ["RandomBrightness", "RandomContrast", "RandomSaturation"],
    "transforms.common": ["Squeeze"],
    "transforms.cutout": ["Cutout"],
    "transforms.flip": ["RandomHorizontalFlip"],
    "transforms.mixup": ["ImageMixup", "LabelMixup", "MixupToOneHot"],
    "transforms.module": ["ModuleWrapper"],
    "transforms.normalize": ["NormalizeImage", "ch_dtype_from_numpy"],
    "transforms.ops": ["Convert", "ToDevice", "ToTensor", "ToTorchImage", "View"],
    "transforms.poisoning": ["Poison"],
    "transforms.random_resized_crop": ["RandomResizedCrop"],
    "transforms.replace_label": ["ReplaceLabel"],
    "transforms.translate": ["RandomTranslate"],
    "transforms.utils": ["fast_crop"],
    "transforms.utils.fast_crop": ["get_center_crop", "get_random_crop", "resize_crop"],
    "traversal_order": ["QuasiRandom", "Random", "Sequential"],
    "traversal_order.base": ["TraversalOrder"],
    "traversal_order.quasi_random": ["QuasiRandom"],
    "traversal_order.random": ["Random"],
    "traversal_order.sequential": ["Sequential"],
    "types": ["ALLOC_TABLE_TYPE", "CURRENT_VERSION", "FieldDescType", "HeaderType",
              "TYPE_ID_HANDLER", "get_handlers", "get_metadata_type"],
    "utils": ["align_to_page", "chunks", "decode_null_terminated_string", "is_power_of_2",
              "s_print", "s_print_lock"],
    "writer": ["DatasetWriter", "MAX_PAGE_SIZE", "MIN_PAGE_SIZE"],
}

# (module, name) -> a word of the replacement the error must name
NOT_PROVIDED: dict[tuple[str, str], str] = {
    ("libffcv", "lib"): "imdecode",
    ("libffcv", "ctypes_imdecode"): "imdecode",
    ("libffcv", "ctypes_memcopy"): "memcpy",
    ("libffcv", "ctypes_resize"): "resize_crop",
    ("loader.epoch_iterator", "select_buffer"): "SlotPool",
    ("loader.epoch_iterator", "IS_CUDA"): "torch.cuda.is_available",
    ("loader.epoch_iterator", "QUASIRANDOM_ERROR_MSG"): "distributed=True",
    ("pipeline", "Pipeline"): "PipelineSpec",
    ("traversal_order.quasi_random", "generate_order_inner"): "sample_order",
    ("utils", "cast_int_to_byte_ptr"): "memory_read",
    ("writer", "count_samples_in_shard"): "from_webdataset",
    ("writer", "from_shard"): "from_webdataset",
    ("writer", "handle_sample"): "from_indexed_dataset",
    ("writer", "worker_job_indexed_dataset"): "from_indexed_dataset",
    ("writer", "worker_job_webdataset"): "from_webdataset",
}

# whole modules of FFCV's internals: importing one says what replaces it
MODULES_NOT_PROVIDED: dict[str, str] = {
    "benchmarks": "fastforward bench",
    "benchmarks.benchmark": "fastforward bench",
    "benchmarks.decorator": "fastforward bench",
    "benchmarks.suites": "fastforward bench",
    "benchmarks.suites.image_read": "fastforward bench",
    "memory_allocator": "malloc",
    "memory_managers.process_cache.page_reader": "pread",
    "memory_managers.process_cache.schedule": "batches_ahead",
    "pipeline.graph": "NumbaOperation",
    "pipeline.pipeline": "PipelineSpec",
}


def path(module: str) -> str:
    return f"fastforward.{module}" if module else "fastforward"


@pytest.mark.parametrize(("module", "name"),
                         [(m, n) for m, names in PROVIDED.items() for n in names],
                         ids=lambda v: v or "fastforward")
def test_provided(module: str, name: str) -> None:
    assert getattr(importlib.import_module(path(module)), name) is not None


@pytest.mark.parametrize(("module", "name"), list(NOT_PROVIDED))
def test_not_provided_names_the_replacement(module: str, name: str) -> None:
    with pytest.raises(NotProvidedError, match=rf"{path(module)}\.{name} is not provided by "
                                               rf"fastforward: .*{NOT_PROVIDED[module, name]}"):
        exec(f"from {path(module)} import {name}")  # as FFCV code imports it
    assert isinstance(NotProvidedError("x"), ImportError)


@pytest.mark.parametrize("module", list(MODULES_NOT_PROVIDED))
def test_module_not_provided_names_the_replacement(module: str) -> None:
    with pytest.raises(ImportError, match=rf"not provided by fastforward: .*"
                                          rf"{MODULES_NOT_PROVIDED[module]}"):
        importlib.import_module(path(module))


def test_other_missing_attributes_are_attribute_errors() -> None:
    import fastforward.writer

    assert not hasattr(fastforward.writer, "no_such_name")  # hasattr still works


# the attributes FFCV 1.0.2's constructors set on its transforms, decoders and
# fields (``vars()`` of an instance, less Operation's ``metadata``/``memory_read``),
# each built here as FFCV code builds it; NormalizeImage's ``previous_shape``,
# which FFCV sets and never reads, is left out
MEAN, STD = np.array([125.3, 123.0, 113.9]), np.array([63.0, 62.1, 66.7])
FFCV_ATTRIBUTES: dict[str, tuple[Any, list[str]]] = {
    "transforms.Convert": (lambda m: m.Convert(np.float16), ["target_dtype"]),
    "transforms.Cutout": (lambda m: m.Cutout(8, (125, 122, 113)), ["crop_size", "fill"]),
    "transforms.ImageMixup": (lambda m: m.ImageMixup(0.2, True), ["alpha", "same_lambda"]),
    "transforms.LabelMixup": (lambda m: m.LabelMixup(0.2, True), ["alpha", "same_lambda"]),
    "transforms.MixupToOneHot": (lambda m: m.MixupToOneHot(10), ["num_classes"]),
    "transforms.NormalizeImage": (lambda m: m.NormalizeImage(MEAN, STD, np.float16),
                                  ["dtype", "lookup_table", "mode", "original_dtype"]),
    "transforms.Poison": (lambda m: m.Poison(np.zeros((4, 4, 3), np.uint8),
                                             np.full((4, 4), 0.5), [1]),
                          ["alpha", "clamp", "indices", "mask"]),
    "transforms.RandomBrightness": (lambda m: m.RandomBrightness(0.2, 0.5), ["magnitude", "p"]),
    "transforms.RandomContrast": (lambda m: m.RandomContrast(0.2, 0.5), ["magnitude", "p"]),
    "transforms.RandomSaturation": (lambda m: m.RandomSaturation(0.2, 0.5), ["magnitude", "p"]),
    "transforms.RandomHorizontalFlip": (lambda m: m.RandomHorizontalFlip(), ["flip_prob"]),
    "transforms.RandomResizedCrop": (lambda m: m.RandomResizedCrop((0.08, 1), (0.75, 4 / 3), 32),
                                     ["ratio", "scale", "size"]),
    "transforms.RandomTranslate": (lambda m: m.RandomTranslate(2, (1, 2, 3)), ["fill", "padding"]),
    "transforms.ReplaceLabel": (lambda m: m.ReplaceLabel([1], 2), ["indices", "new_label"]),
    "transforms.Squeeze": (lambda m: m.Squeeze(), ["dims"]),
    "transforms.ToDevice": (lambda m: m.ToDevice("cpu"), ["device", "non_blocking"]),
    "transforms.ToTorchImage": (lambda m: m.ToTorchImage(),
                                ["channels_last", "convert_int16", "enable_int16conv"]),
    "transforms.View": (lambda m: m.View(np.float16), ["target_dtype"]),
    "fields.decoders.CenterCropRGBImageDecoder": (
        lambda m: m.CenterCropRGBImageDecoder((32, 32), 224 / 256),
        ["output_size", "ratio", "scale"]),
    "fields.decoders.RandomResizedCropRGBImageDecoder": (
        lambda m: m.RandomResizedCropRGBImageDecoder((32, 32)), ["output_size", "ratio", "scale"]),
    "fields.RGBImageField": (lambda m: m.RGBImageField("jpg", 64, jpeg_quality=80),
                             ["jpeg_quality", "max_resolution", "proportion", "smart_threshold",
                              "write_mode"]),
    "fields.NDArrayField": (lambda m: m.NDArrayField(np.dtype("float32"), (3,)),
                            ["dtype", "element_size", "shape"]),
}


@pytest.mark.parametrize("where", list(FFCV_ATTRIBUTES))
def test_ffcv_attributes(where: str) -> None:
    module, _, cls = where.rpartition(".")
    build, names = FFCV_ATTRIBUTES[where]
    instance = build(importlib.import_module(path(module)))
    assert type(instance).__name__ == cls
    assert [n for n in names if not hasattr(instance, n)] == []


def test_ffcv_attribute_values() -> None:
    """The values FFCV code would read from the attributes fastforward names
    differently (or, for ``fill``, keeps as an array)."""
    from fastforward.fields import RGBImageField
    from fastforward.fields.decoders import CenterCropRGBImageDecoder
    from fastforward.transforms import Cutout, NormalizeImage, RandomTranslate, ToTorchImage

    for op in (Cutout(8, (125, 122, 113)), RandomTranslate(2, (125, 122, 113))):
        assert isinstance(op.fill, np.ndarray)
        assert op.fill.tolist() == [125, 122, 113]
    field = RGBImageField("proportion", compress_probability=0.25)
    assert field.proportion == 0.25
    field.proportion = 0.75  # FFCV's name sets it too
    assert field.compress_probability == 0.75
    assert CenterCropRGBImageDecoder((32, 32), 0.875).scale is None
    norm = NormalizeImage(MEAN, STD, np.float16)
    assert (norm.original_dtype, norm.dtype, norm.mode) == (np.float16, np.float16, "cpu")
    assert ToTorchImage(convert_back_int16=False).convert_int16 is False
    to_image = ToTorchImage()
    assert (to_image.convert_int16, to_image.enable_int16conv) == (True, False)
    to_image.convert_int16 = False  # what the constructor's name reads
    assert to_image.convert_back_int16 is False


def test_ffcv_attributes_follow_the_pipeline() -> None:
    """``NormalizeImage.mode`` and ``ToTorchImage.enable_int16conv`` say, as in
    FFCV, what the pipeline declared them on."""
    torch = pytest.importorskip("torch")
    from fastforward.pipeline.state import State
    from fastforward.transforms import NormalizeImage, ToTorchImage

    norm = NormalizeImage(MEAN, STD, np.float32)
    norm.declare_state_and_memory(State(jit_mode=False, device=torch.device("cpu"),
                                        shape=(8, 8, 3), dtype=torch.uint8))
    assert norm.mode == "cpu"
    norm.declare_state_and_memory(State(jit_mode=False, device="cuda:0", shape=(8, 8, 3),
                                        dtype=torch.uint8))
    assert norm.mode == "gpu"
    to_image = ToTorchImage()
    to_image.declare_state_and_memory(State(jit_mode=False, shape=(8, 8, 3), dtype=torch.uint8))
    assert to_image.enable_int16conv is False
    state, _ = to_image.declare_state_and_memory(State(jit_mode=False, shape=(8, 8, 3),
                                                       dtype=torch.int16))
    assert to_image.enable_int16conv is True
    assert state.dtype == torch.float16

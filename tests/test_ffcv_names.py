"""Every public name of FFCV 1.0.2 exists at the same path, or says what replaces it.

The list below was derived from FFCV 1.0.2's modules: for each module, the
names it defines at top level, and for a package the names its
``__init__`` re-exports. ``ffcv.x.y`` is ``fastforward.x.y`` here.
"""

from __future__ import annotations

import importlib

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

"""FFCV's ``ffcv.memory_allocator``: its writer's page allocator, which fastforward has not."""

from ._compat import module_not_provided

raise module_not_provided(
    __name__, "FFCV's writer workers allocated pages with MemoryAllocator; fastforward's "
    "DatasetWriter places pages itself (a field's encode() receives malloc)")

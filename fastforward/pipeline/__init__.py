"""Pipelines: the operations that turn a field's stored bytes into a batch."""

from .allocation_query import AllocationQuery
from .operation import BatchContext, Operation
from .pipeline_spec import PipelineSpec
from .state import State

__all__ = ["AllocationQuery", "BatchContext", "Operation", "PipelineSpec", "State"]

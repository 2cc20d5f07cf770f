"""Pipelines: the operations that turn a field's stored bytes into a batch."""

from .._compat import not_provided
from .allocation_query import AllocationQuery
from .compiler import Compiler
from .operation import BatchContext, Operation
from .pipeline_spec import PipelineSpec
from .state import State

__all__ = ["AllocationQuery", "BatchContext", "Compiler", "Operation", "PipelineSpec", "State"]

__getattr__ = not_provided(__name__, {
    "Pipeline": "FFCV's Pipeline held one field's operations; give the Loader a list of "
                "operations or a PipelineSpec instead"})

"""FFCV's ``ffcv.pipeline.graph``: its code generator, which fastforward has not."""

from .._compat import module_not_provided

raise module_not_provided(
    __name__, "FFCV built a graph of operations and generated code for it; fastforward's "
    "Loader runs each pipeline's operations in order (Operation.apply), and FFCV operations "
    "through fastforward.pipeline.compiler.NumbaOperation")

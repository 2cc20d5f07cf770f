"""FFCV's ``ffcv.pipeline.pipeline``: its per-field pipeline object, which fastforward has not."""

from .._compat import module_not_provided

raise module_not_provided(
    __name__, "FFCV's Pipeline held one field's operations; give the Loader a list of "
    "operations or a fastforward.pipeline.PipelineSpec instead")

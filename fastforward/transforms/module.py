"""Run a torch module inside a pipeline."""

from __future__ import annotations

from typing import Any

from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ._utils import require_torch


class ModuleWrapper(Operation):
    """Call a ``torch.nn.Module`` (torchvision transforms…) on each torch batch.

    Args:
        module: the module; it receives the whole batch tensor.

    Runs after ``ToTensor`` (on the batch's device), under ``torch.no_grad``.
    No buffer: the module's output is passed on as it is; the declared state
    is unchanged, so a module that changes the shape or dtype should come last
    or be followed by operations that do not rely on the state. Randomness
    inside the module comes from torch's generator, not from the loader's
    seed, so it is not reproducible per sample.
    """

    def __init__(self, module: Any) -> None:
        super().__init__()
        if not callable(module):  # (it failed at the first batch: "'int' object is not callable")
            raise TypeError(f"ModuleWrapper takes a torch.nn.Module (or a callable), got "
                            f"{module!r}")
        self.module = module

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, None]:
        require_torch(self, previous_state)
        return previous_state, None

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        """Return ``module(batch)``."""
        import torch

        with torch.no_grad():
            return self.module(batch)

    def __repr__(self) -> str:
        return f"ModuleWrapper({self.module!r})"

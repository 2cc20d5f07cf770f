"""``PipelineSpec``: where an output comes from and what is done to it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .operation import Operation


class PipelineSpec:
    """One output of a loader.

    Args:
        source: a field name, or an operation of another pipeline whose output
            this one starts from (branching: several views of one decode).
        decoder: the decoder (for a field source); None takes the first
            operation of *transforms* if it is one of the field's decoders, or
            the field's default decoder.
        transforms: operations applied in order.
    """

    def __init__(self, source: str | Operation, decoder: Operation | None = None,
                 transforms: Sequence[Operation] | None = None) -> None:
        if not isinstance(source, (str, Operation)):
            raise TypeError(f"source must be a field name or an Operation, got {source!r}")
        self.source = source
        self.decoder = decoder
        # a copy: the user's list is never modified (FFCV's #271)
        self.transforms: list[Operation] = list(transforms or [])
        for op in self.transforms:
            if not isinstance(op, Operation) and not _is_module(op):
                raise not_an_operation(op)

    def __repr__(self) -> str:
        return f"PipelineSpec({self.source!r}, {self.decoder!r}, {self.transforms!r})"


def not_an_operation(op: Any) -> TypeError:
    """The error for *op* given where an operation goes: a class given for its
    instance (``ToTensor`` for ``ToTensor()``) is said to be one."""
    if isinstance(op, type) and (issubclass(op, Operation) or _is_module_class(op)):
        return TypeError(f"{op.__name__} is a class, not an operation: give one, "
                         f"{op.__name__}(...)")
    return TypeError(f"{op!r} is not an Operation (nor a torch.nn.Module)")


def _is_module(obj: Any) -> bool:
    return _is_module_class(type(obj))


def _is_module_class(cls: type) -> bool:
    """Whether *cls* is a ``torch.nn.Module`` (checked without importing torch)."""
    return any(c.__name__ == "Module" and c.__module__.startswith("torch.nn")
               for c in cls.__mro__)

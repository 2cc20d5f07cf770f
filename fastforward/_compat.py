"""Names FFCV code imports that fastforward cannot provide: a clear error instead.

A module lists such names with what to use instead; importing one (``from
fastforward.x import Name``) or reading it raises ``NotProvidedError``, an
``ImportError`` that says why and names the replacement.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .errors import NotProvidedError


def not_provided(module: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that raises ``NotProvidedError`` for *names*
    (``{name: why, and what to use instead}``) and AttributeError otherwise."""

    def __getattr__(name: str) -> Any:
        if name in names:
            raise NotProvidedError(f"{module}.{name} is not provided by fastforward: "
                                   f"{names[name]}", name=name, path=module)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


def module_not_provided(module: str, why: str) -> NotProvidedError:
    """The error a module that has no fastforward counterpart raises when imported."""
    return NotProvidedError(f"{module} is not provided by fastforward: {why}", name=module)

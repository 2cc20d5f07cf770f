from typing import Self

from typing_extensions import disjoint_base

from ._typing import BufferLike

def gather_into(src: BufferLike, offsets: BufferLike, sizes: BufferLike,
                out: BufferLike) -> int:
    """Copy record ``i`` (``sizes[i]`` bytes at ``offsets[i]``) into row ``i`` of *out*,
    zero-padded."""

@disjoint_base
class Copier:
    """``gather_into`` on background threads (POSIX threads that never take the GIL)."""

    def __new__(cls, threads: int = 1) -> Self: ...
    @property
    def threads(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def submit(self, src: BufferLike, offsets: BufferLike, sizes: BufferLike,
               out: BufferLike) -> int:
        """Queue ``gather_into(src, offsets, sizes, out)``; returns its ticket."""
    def wait(self, ticket: int, timeout: float | None = None) -> None:
        """Return once the copy with *ticket*, and every one before it, has finished;
        ``TimeoutError`` if that takes more than *timeout* seconds (None: no limit)."""
    def drain(self) -> None:
        """Return once every copy submitted so far has finished (and let go of its arrays)."""
    @property
    def pending(self) -> int:
        """Copies queued or running."""
    def close(self) -> None:
        """Finish every queued copy and end the threads (idempotent; nothing in a forked child)."""

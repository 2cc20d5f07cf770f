from typing_extensions import Buffer

def gather_into(src: Buffer, offsets: Buffer, sizes: Buffer, out: Buffer) -> int:
    """Copy record ``i`` (``sizes[i]`` bytes at ``offsets[i]``) into row ``i`` of *out*,
    zero-padded."""

class Copier:
    """``gather_into`` on background threads (POSIX threads that never take the GIL)."""

    threads: int
    pid: int
    closed: bool

    def __init__(self, threads: int = 1) -> None: ...
    def submit(self, src: Buffer, offsets: Buffer, sizes: Buffer, out: Buffer) -> int:
        """Queue ``gather_into(src, offsets, sizes, out)``; returns its ticket."""
    def wait(self, ticket: int) -> None:
        """Return once the copy with *ticket*, and every one before it, has finished."""
    def drain(self) -> None:
        """Return once every copy submitted so far has finished (and let go of its arrays)."""
    @property
    def pending(self) -> int:
        """Copies queued or running."""
    def close(self) -> None:
        """Finish every queued copy and end the threads (idempotent; nothing in a forked child)."""

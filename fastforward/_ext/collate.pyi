from typing_extensions import Buffer

def gather_into(src: Buffer, offsets: Buffer, sizes: Buffer, out: Buffer) -> int:
    """Copy record ``i`` (``sizes[i]`` bytes at ``offsets[i]``) into row ``i`` of *out*,
    zero-padded."""

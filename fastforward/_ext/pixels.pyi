from ._typing import BufferLike

def crop_nearest_into(src: BufferLike, y0: int, x0: int, h: int, w: int, out: BufferLike,
                      flip: bool = False) -> int:
    """Resize the ``h x w`` window of *src* at ``(y0, x0)`` into *out* by nearest
    neighbour; mirror it left-right if *flip*."""

def spread_rows(memory: BufferLike, rows: int, row_nbytes: int, stride: int,
                total_rows: int) -> int:
    """Spread packed rows to one every *stride* bytes, in place; zero the rest."""

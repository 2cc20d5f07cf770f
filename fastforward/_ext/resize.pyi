from typing_extensions import Buffer

def crop_resize_into(
    src: Buffer, y0: int, x0: int, h: int, w: int, out: Buffer, flip: bool = False
) -> int:
    """Resize the ``h x w`` window of *src* at ``(y0, x0)`` into *out*; mirror it if *flip*."""

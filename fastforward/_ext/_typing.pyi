"""Types shared by the kernels' stubs (a stub only: nothing of it exists at run time)."""

from typing import TypeAlias

import numpy as np
from typing_extensions import Buffer

# What a typed-memoryview argument takes: any object that exports a buffer of
# the right item type and dimensions (NumPy arrays, bytes, bytearray,
# memoryview, mmap). An ndarray is a Buffer, but NumPy's stubs give it
# ``__buffer__`` only from Python 3.12, so on 3.11 it has to be named too.
BufferLike: TypeAlias = Buffer | np.ndarray

"""SEQUENTIAL: the indices as given, every epoch."""

from __future__ import annotations

import numpy as np

from .base import TraversalOrder


class Sequential(TraversalOrder):
    """The loader's indices in the order given."""

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.indices.copy()

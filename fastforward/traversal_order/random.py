"""RANDOM: a uniform permutation of the indices, a function of (seed, epoch)."""

from __future__ import annotations

import numpy as np

from .base import TraversalOrder


class Random(TraversalOrder):
    """A fresh permutation every epoch."""

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.rng(epoch).permutation(self.indices)

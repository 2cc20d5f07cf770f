"""Traversal orders: SEQUENTIAL, RANDOM, QUASI_RANDOM and the base class."""

from .base import TraversalOrder
from .quasi_random import QuasiRandom
from .random import Random
from .sequential import Sequential

__all__ = ["QuasiRandom", "Random", "Sequential", "TraversalOrder"]

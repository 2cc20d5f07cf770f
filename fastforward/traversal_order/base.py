"""``TraversalOrder``: which samples an epoch visits, in which order.

An order is a pure function of ``(seed, epoch)``: never of how many epochs
came before (FFCV's QUASI_RANDOM depends on history), so an epoch can be
recomputed, resumed or checked on its own.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..utils import sample_numbers


class TraversalOrder(ABC):
    """Base class of orders; subclass it and pass the class as ``Loader(order=...)``.

    Attributes ``loader``, ``indices`` (the samples to visit) and ``seed`` are
    set from the loader, as in FFCV. ``loader`` is held weakly (None once the
    loader is gone): the loader holds its order, and a cycle between them kept
    a dropped loader, its worker processes and its shared memory, until the
    next full garbage collection.

    ``sample_order`` gives the whole epoch, on every rank: the loader splits it
    between ranks itself (``rank_orders``), so that a resume may change the
    world size. ``distributed`` (and FFCV's ``sampler``) are therefore False
    (None) here even when the loader is distributed (``loader.distributed``
    says whether it is): an order written for FFCV, which takes its own rank's
    share with a ``DistributedSampler`` when ``distributed`` is true, returns
    the whole epoch, and the loader splits it as that sampler would. (Given
    the loader's ``distributed``, such an order's share was split again: each
    rank saw about 1/world² of the samples.)
    """

    def __init__(self, loader: Any, **kwargs: Any) -> None:
        self.loader = loader
        self.indices: np.ndarray = loader.indices
        self.seed: int = loader.seed
        self.distributed: bool = False  # the loader splits the epoch (see above)
        self.sampler: Any = None
        if kwargs:
            raise TypeError(f"{type(self).__name__} takes no options {sorted(kwargs)}")

    @property
    def loader(self) -> Any:
        """The loader this order serves (None once it is gone)."""
        return self._loader()

    @loader.setter
    def loader(self, loader: Any) -> None:
        try:
            self._loader: Callable[[], Any] = weakref.ref(loader)
        except TypeError:  # an object without weak references (a stand-in): held
            self._loader = lambda: loader

    @abstractmethod
    def sample_order(self, epoch: int) -> Sequence[int] | np.ndarray:
        """The dataset indices of epoch *epoch*, in order."""

    def rank_orders(self, epoch: int, world: int, even: bool = True) -> list[Any]:
        """Every rank's share of epoch *epoch* (``Shard`` objects), the same on every rank.

        By default, DistributedSampler's split of ``sample_order(epoch)``.
        """
        from .sharding import Shard, strided

        order = sample_numbers(self.sample_order(epoch), self._where(epoch))
        return [Shard.of(order)] if world == 1 else strided(order, world, even)

    def _where(self, epoch: int) -> str:
        """``"FILE: Order.sample_order(EPOCH)"``: what an error of the order names."""
        fname = getattr(self.loader, "fname", None)
        call = f"{type(self).__name__}.sample_order({epoch})"
        return f"{fname}: {call}" if fname is not None else call

    def rng(self, epoch: int, salt: int = 0) -> np.random.Generator:
        """A generator that depends only on ``(seed, epoch, salt)``."""
        return np.random.default_rng([self.seed & 0xFFFFFFFF, self.seed >> 32, epoch, salt])

"""``Loader``: FFCV's loader, on an asyncio scheduler, workers and Cython kernels.

The one module that knows all the others. Reading it in order: the
arguments are resolved (``Reader``, ``traversal_order``, ``memory_managers``),
the pipelines compiled into a plan (``pipeline.plan``), the workers chosen
(``loader.workers``: threads, or processes for Python operations), and each
epoch runs on an ``Engine`` (``scheduler``) that fills slots (``ring``) by
running the plan (``loader.runner``) and hands batches over in order.
"""

from __future__ import annotations

import copy
import enum
import functools
import inspect
import math
import numbers
import os
import pickle
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .._ext.collate import Copier
from ..checksums import digest
from ..device import DeviceBatch, DeviceStage, is_cuda
from ..errors import BatchTimeout, annotate
from ..fields import Field, RaggedField
from ..memory_managers import MemoryManager, OSCacheManager, ProcessCacheManager
from ..pipeline import random
from ..pipeline.decoder import Decoder
from ..pipeline.operation import Operation
from ..pipeline.pipeline_spec import PipelineSpec, _is_module, not_an_operation
from ..pipeline.plan import PipelinePlan, Plan, compile_plan
from ..reader import Reader, check_field_classes
from ..ring import PINNED, SHARED, Slot, SlotPool, largest_buffer, layout_nbytes
from ..scheduler import ChannelStats, Engine, EpochPlan
from ..traversal_order import QuasiRandom, Random, Sequential, TraversalOrder
from ..traversal_order.sharding import Shard, resume
from ..types import is_own_field
from ..utils import (
    default_workers,
    format_bytes,
    install_hint,
    refuse_in_a_worker,
    sample_numbers,
    usable_memory,
    whole_number,
)
from .runner import BatchJob, ranged_pipelines, run_stage2
from .workers import PROCESS, ProcessWorkers, ThreadWorkers


def _plain(value: Any) -> Any:
    """*value* as plain Python that reprs the same in any process (NumPy scalars
    as numbers, arrays as their dtype, shape and a digest of their bytes), or
    ValueError for what has no such form (an object shown by its address)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind != "O":
        return ("array", value.dtype.str, value.shape,
                digest(np.ascontiguousarray(value).view(np.uint8)))
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return sorted((str(k), _plain(v)) for k, v in value.items())
    raise ValueError(f"no plain form for {type(value).__name__}")


def _plain_options(order: type, options: Mapping[str, Any],
                   defaults: bool = False) -> list[tuple[str, Any]]:
    """An order's options as a state compares them: each in its plain form; those
    without one (they cannot be compared from process to process) left out, and
    unless *defaults*, those equal to the order's own default (``window=64``
    orders as no option does; states saved before 2026-12-05 kept them)."""
    try:
        parameters = {} if defaults else dict(inspect.signature(order).parameters)
    except (TypeError, ValueError):  # a class whose signature cannot be read
        parameters = {}
    plain = []
    for key, value in sorted(options.items()):
        try:
            value = _plain(value)
        except ValueError:
            continue
        if _plain_default(parameters.get(key)) == (type(value), value):
            continue
        plain.append((key, value))
    return plain


def _plain_default(parameter: inspect.Parameter | None) -> tuple[type, Any] | None:
    """A parameter's default as ``(type, plain form)``, or None where it has none."""
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    try:
        default = _plain(parameter.default)
    except ValueError:
        return None
    return type(default), default


class OrderOption(enum.Enum):
    """The built-in orders."""

    SEQUENTIAL = Sequential
    RANDOM = Random
    QUASI_RANDOM = QuasiRandom


ORDER_TYPE = OrderOption | type[TraversalOrder]
"""What ``Loader(order=...)`` takes (FFCV's name)."""
ORDER_MAP = {option: option.value for option in OrderOption}
"""Each ``OrderOption``'s ``TraversalOrder`` class (FFCV's name)."""
STATE_VERSION = 2
"""``state_dict()``'s version: 2 since distributed QUASI_RANDOM cuts ranks at equal
sample counts (version 1's mid-epoch states of it cannot be resumed exactly)."""
_SAVED_WITH = {"file": "over another file (or one rewritten since)",
               "indices": "with other indices (as many, but other samples or another order)",
               "order": "with another order", "even_batches": "with another even_batches",
               "drop_last": "with another drop_last"}
DEFAULT_PROCESS_CACHE = int(os.environ.get("FASTFORWARD_DEFAULT_CACHE_PROCESS", "0"))
"""1 when ``FASTFORWARD_DEFAULT_CACHE_PROCESS=1`` was set at import (FFCV's name; the
loader reads the variable again at each construction)."""
DEFAULT_OS_CACHE = not DEFAULT_PROCESS_CACHE
"""The default of ``os_cache`` at import (FFCV's name)."""


def _count(value: Any, name: str, error: type[Exception] | None = None) -> int:
    """A seed or an epoch: an integer in [0, 2**63) (a bool, a float or a
    string is refused here, not deep in NumPy's seeding). Refused with *error*,
    or a TypeError for what is no integer and a ValueError for what is out of range."""
    integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not integer or not 0 <= value < 1 << 63:
        raise (error or (ValueError if integer else TypeError))(
            f"{name} must be an integer in [0, 2**63), got {value!r}")
    return int(value)


def _unpicklable(plan: Plan, error: Exception) -> str:
    """What of *plan* does not pickle (pickling it as a whole raised *error*): the first
    decoder or operation that does not on its own, named with its pipeline."""
    for pipeline in plan.pipelines:
        ops = [pipeline.decoder, pipeline.source_op, *(step.op for step in pipeline.steps)]
        for op in ops:
            if op is None:
                continue
            try:
                pickle.dumps(op)
            except Exception as exc:
                return (f"the {pipeline.name!r} pipeline's {type(op).__name__} does not "
                        f"({type(exc).__name__}: {exc})")
    return f"the plan does not ({type(error).__name__}: {error})"


def _batch_size(value: Any, fname: str) -> int:
    """A batch size: a whole number of at least 1 (``256.0`` is 256; ``2.5``, a bool
    or a string is refused)."""
    try:
        size = whole_number(value, "batch_size")
    except TypeError:
        raise TypeError(f"{fname}: batch_size is a whole number of samples, got {value!r}"
                        ) from None
    if size < 1:
        raise ValueError(f"{fname}: batch_size must be at least 1, got {value!r}")
    return size


class _Fixed:
    """A loader attribute set once, when the loader is made: its slots, its
    order and the identity its states carry were built from it, so a later
    assignment would be seen by some of them and not others. Refused."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, f"_fixed_{name}"

    def __get__(self, loader: Any, owner: type | None = None) -> Any:
        return self if loader is None else getattr(loader, self.slot)

    def __set__(self, loader: Any, value: Any) -> None:
        if hasattr(loader, self.slot):
            raise AttributeError(
                f"{loader.fname}: a Loader's {self.name} is fixed when it is made (its "
                "order, batch buffers and saved states were built from it): make another "
                "Loader; load_state_dict() resumes an epoch on it")
        setattr(loader, self.slot, value)


class Loader:
    """Load batches from a .beton file, as FFCV's ``Loader`` does.

    Args:
        fname: the .beton file.
        batch_size: samples per batch (a whole number; ``loader.batch_size = n``
            between epochs changes it from the next epoch, as in FFCV).
        num_workers: decoding threads; ``-1`` uses every CPU this process may run on.
        os_cache: True reads through a memory map (the OS page cache holds the
            data, shared across processes); False reads each batch's bytes ahead
            of use into memory of its own, at most ``batches_ahead + 1``
            batches' worth (each at most twice its payload plus 4 KiB per
            payload read: a field's of a sample). The default is True unless
            the environment variable ``FASTFORWARD_DEFAULT_CACHE_PROCESS=1``
            is set.
        order: an ``OrderOption`` or a ``TraversalOrder`` subclass.
        distributed: shard the epoch over ``torch.distributed``'s ranks.
        seed: seeds the order and every random augmentation; None draws one
            from NumPy's global generator, as FFCV does (with
            ``distributed=True``, rank 0 draws it and broadcasts it over the
            process group, a collective every rank runs here; with SEQUENTIAL
            order each rank draws its own and nothing is sent).
        indices: the samples to use (default: all), in this order for SEQUENTIAL.
        pipelines: ``{output name: list of operations | PipelineSpec | None}``;
            a field without an entry gets its default decoder and ``ToTensor()``,
            ``None`` leaves a field out.
        custom_fields: ``{field name: Field class}`` for custom fields.
        drop_last: drop the last, incomplete batch (FFCV's default: True).
        batches_ahead: batches prepared ahead of the one being consumed.
        recompile: accepted for FFCV compatibility: every epoch re-reads the
            pipelines (``output_size`` may change); FFCV operations
            (``generate_code``) are compiled once, here in ``Loader()``.
        order_kwargs: keyword arguments for the order's constructor.
        even_batches: with ``distributed=True``, pad every rank to the same
            number of batches (False: evaluation, every sample exactly once).
        worker_type: who decodes and runs the per-range operations (stage 1):
            ``'thread'`` (threads of this process: every built-in decoder and
            operation releases the GIL), ``'process'`` (``num_workers``
            worker processes writing into shared memory: for Python
            operations that keep the GIL) or ``'auto'`` (processes exactly
            when stage 1 holds an operation that keeps the GIL:
            ``Operation.releases_gil``). See ``fastforward.loader.workers``.
        start_method: for process workers: ``'fork'``, ``'forkserver'`` or
            ``'spawn'``; None uses a fork server where the platform has one,
            else spawn (docs/workers.md says why not fork).
        verify_checksums: check each page of a file written with checksums
            against its sum the first time a batch touches it (in this
            process), before decoding; a mismatch raises ``FormatError`` naming
            the file, the page and its samples. Files without checksums (FFCV's)
            load as without it. See ``docs/integrity.md`` for the cost.

    Batches are tuples with one entry per output, in the file's field order
    (then any extra outputs). A batch you hold is never overwritten: see
    ``fastforward.ring``. The loader copies the decoders and operations you
    give it, each epoch: change a decoder's ``output_size`` (or any
    operation's settings) on the object you passed, between epochs.
    """

    num_workers = _Fixed()
    os_cache = _Fixed()
    distributed = _Fixed()
    rank = _Fixed()
    world_size = _Fixed()
    even_batches = _Fixed()
    drop_last = _Fixed()
    batches_ahead = _Fixed()
    verify_checksums = _Fixed()
    indices = _Fixed()

    def __init__(self, fname: str | os.PathLike[str], batch_size: int, num_workers: int = -1,
                 os_cache: bool | None = None, order: Any = OrderOption.SEQUENTIAL,
                 distributed: bool = False, seed: int | None = None,
                 indices: Sequence[int] | None = None,
                 pipelines: Mapping[str, Any] | None = None,
                 custom_fields: Mapping[str, type[Field]] | None = None,
                 drop_last: bool = True, batches_ahead: int = 3, recompile: bool = False,
                 order_kwargs: Mapping[str, Any] | None = None, *,
                 even_batches: bool = True, worker_type: str = "auto",
                 start_method: str | None = None, verify_checksums: bool = False,
                 timeout: float | None = None) -> None:
        refuse_in_a_worker("Loader()")
        batch_size = _batch_size(batch_size, os.fspath(fname))
        if timeout is not None and (isinstance(timeout, (bool, np.bool_))
                                    or not isinstance(timeout, numbers.Real)
                                    or not timeout > 0):
            raise ValueError(f"timeout must be a number of seconds above 0, or None, got "
                             f"{timeout!r}")
        if timeout is not None and math.isinf(timeout):
            timeout = None  # no limit
        batches_ahead = whole_number(batches_ahead, "batches_ahead")
        if batches_ahead < 1:
            raise ValueError(f"batches_ahead must be at least 1, got {batches_ahead}")
        num_workers = whole_number(num_workers, "num_workers (-1: one per core)")
        # what filter() builds its loaders from
        self._args: dict[str, Any] = {
            "fname": fname, "batch_size": batch_size, "num_workers": num_workers,
            "os_cache": os_cache, "order": order, "distributed": distributed, "seed": seed,
            "indices": indices, "pipelines": pipelines, "custom_fields": custom_fields,
            "drop_last": drop_last, "batches_ahead": batches_ahead, "recompile": recompile,
            "order_kwargs": order_kwargs, "even_batches": even_batches,
            "worker_type": worker_type, "start_method": start_method,
            "verify_checksums": verify_checksums, "timeout": timeout}
        self.fname = os.fspath(fname)
        self._batch_size = batch_size
        self.num_workers = default_workers() if num_workers < 1 else int(num_workers)
        if os_cache is None:
            os_cache = os.environ.get("FASTFORWARD_DEFAULT_CACHE_PROCESS", "0") != "1"
        self.os_cache = bool(os_cache)
        self.distributed = bool(distributed)
        self.rank, self.world_size = _distributed_context() if self.distributed else (0, 1)
        self.even_batches = bool(even_batches)
        self.drop_last = bool(drop_last)
        self.batches_ahead = int(batches_ahead)
        self.recompile = recompile
        self.custom_fields = dict(custom_fields or {})
        check_field_classes(self.fname, self.custom_fields, "custom_fields")
        self._start_method = start_method
        self.verify_checksums = bool(verify_checksums)
        self.timeout = None if timeout is None else float(timeout)
        # __iter__: one epoch claimed at a time (reentrant: an order or a hook it
        # runs may set batch_size on the same thread)
        self._opening = threading.RLock()
        self._opening_pid = os.getpid()
        # what close() and garbage collection release (it must not refer to the loader)
        self._owned = _Owned()
        self._finalizer = weakref.finalize(self, self._owned.close)
        self._owned.reader = self.reader = Reader(self.fname, self.custom_fields)
        try:
            self._construct(seed, indices, order, order_kwargs, pipelines, worker_type)
        except BaseException:
            self._finalizer()
            raise

    def _construct(self, seed: int | None, indices: Sequence[int] | None, order: Any,
                   order_kwargs: Mapping[str, Any] | None, pipelines: Mapping[str, Any] | None,
                   worker_type: str) -> None:
        self.seed = self._resolve_seed(seed, order)
        self.indices = self._resolve_indices(indices)
        self.next_epoch = 0
        self.traversal_order: TraversalOrder = self._resolve_order(order)(
            self, **dict(order_kwargs or {}))
        manager = OSCacheManager if self.os_cache else ProcessCacheManager
        self._owned.memory_manager = self.memory_manager = manager(self.reader,
                                                                   self.verify_checksums)
        self._wrappers: dict[int, tuple[Any, Operation]] = {}  # id(user's object) -> its wrapper
        if pipelines is not None and not isinstance(pipelines, Mapping):
            raise TypeError("pipelines maps each output's name to its operations "
                            "({'image': [...], 'label': [...]}), got a "
                            f"{type(pipelines).__name__}")
        self._specs = self._normalise(dict(pipelines or {}))
        self._compile()  # checks every pipeline now, not at the first batch
        cuda = self._cuda_pipelines()
        self._stage = self._device_stage(cuda)
        self._owned.workers = self.workers = self._choose_workers(worker_type)
        if self.workers.kind == PROCESS:  # the reader's tables are shared now: the plan
            self._compile()               # binds them, and lets go of the private ones
        # batches_ahead in flight, one in the channel, the one the consumer
        # holds, and the previous one, still alive while next() runs in a loop
        self._owned.slots = self._slots = SlotPool(self.batches_ahead + 3,
                                                      self._slot_rows(self.batch_size))
        if self.workers.kind == PROCESS:
            self._slots.kind = SHARED
            self._slots.pin_shared = self._stage is not None
        elif self._stage is not None:
            self._slots.kind = PINNED
        self._slots.pin_pipelines = self._pinned_pipelines(cuda)
        # (epoch, segments, batch size, seed): the epoch load_state_dict() resumes
        self._resume: tuple[int, list[list[int]], int, int] | None = None
        self._length: tuple[Any, int] | None = None  # len()'s last answer (see __len__)
        self._state_identity: dict[str, Any] | None = None  # see _identity
        # where the last epoch started is (kept after a `break` drops its iterator)
        self._position: EpochPosition | None = None
        self._stats = ChannelStats()  # of the epochs that ended
        self._warn_of_a_large_ring()

    # -- arguments ------------------------------------------------------------------

    def _resolve_seed(self, seed: int | None, order: Any = None) -> int:
        if seed is not None:
            return _count(seed, "seed")
        # from NumPy's global generator, as FFCV draws it: a script that calls
        # np.random.seed() (or a seed_everything) gets the same order each run
        drawn = int(np.random.randint(0, (1 << 31) - 1))
        if self.distributed and order is not OrderOption.SEQUENTIAL:
            # every rank must visit the same order: rank 0's seed, for all of them
            # (SEQUENTIAL's order needs none, so no collective is run for it)
            return _broadcast_from_rank_0(drawn)
        return drawn

    def _resolve_indices(self, indices: Sequence[int] | None) -> np.ndarray:
        n = self.reader.num_samples
        if indices is None:
            return np.arange(n, dtype=np.int64)
        result = sample_numbers(indices, f"{self.fname}: indices")
        self._check_range(result, f"{self.fname}: indices")
        return result

    def _check_range(self, samples: np.ndarray, where: str) -> None:
        n = self.reader.num_samples
        bad = np.flatnonzero((samples < 0) | (samples >= n))
        if bad.size:
            raise IndexError(f"{where}: sample {int(samples[bad[0]])} out of range [0, {n})")

    @property
    def _builtin_order(self) -> bool:
        """Whether the order is one of ``OrderOption``'s (whose epochs visit each of
        ``indices`` once, from the checked numbers), not a user's subclass."""
        return type(self.traversal_order) in ORDER_MAP.values()

    @staticmethod
    def _resolve_order(order: Any) -> type[TraversalOrder]:
        if isinstance(order, OrderOption):
            return order.value
        if isinstance(order, type) and issubclass(order, TraversalOrder):
            return order
        # a ValueError, as FFCV's for an order it does not know
        raise ValueError(f"order must be an OrderOption or a TraversalOrder subclass, "
                         f"got {order!r}")

    # -- pipelines ------------------------------------------------------------------

    def _normalise(self, pipelines: dict[str, Any]) -> dict[str, PipelineSpec]:
        """FFCV's rules: fields in file order, defaults for the unnamed, None drops."""
        for name, value in pipelines.items():
            if name not in self.reader.handlers and not isinstance(value, (PipelineSpec,
                                                                          type(None))):
                raise ValueError(f"{name!r} is not a field of {self.fname} "
                                 f"(fields: {self.reader.field_names}); another output needs "
                                 "a PipelineSpec(source=...)")
        specs: dict[str, PipelineSpec] = {}
        for name, handler in self.reader.handlers.items():
            value = pipelines.get(name, _DEFAULT)
            if value is None:
                continue
            if value is _DEFAULT:
                value = [handler.get_decoder_class()(), _to_tensor()]
            specs[name] = self._spec(name, value)
        for name, value in pipelines.items():
            if name not in self.reader.handlers and value is not None:
                specs[name] = self._spec(name, value)
        return specs

    def _spec(self, name: str, value: Any) -> PipelineSpec:
        # one wrapper per object the user gave (a branch names its source by identity)
        def wrap(op: Any) -> Any:
            return self._wrappers.setdefault(id(op), (op, _wrap_module(op)))[1]

        try:
            if isinstance(value, PipelineSpec):
                spec = PipelineSpec(value.source, value.decoder, value.transforms)
            elif isinstance(value, (list, tuple)):
                spec = PipelineSpec(name, None, list(value))
            else:
                raise TypeError(f"expected a list of operations, a PipelineSpec or None, got "
                                f"{type(value).__name__}")
            spec.transforms = [wrap(op) for op in spec.transforms]
            if spec.decoder is not None:
                spec.decoder = wrap(spec.decoder)
        except TypeError as exc:  # (a class for its instance, a value that is no operation)
            raise annotate(exc, f"{self.fname}: pipeline {name!r}") from None
        if isinstance(spec.source, Operation) or _is_module(spec.source):
            spec.source = wrap(spec.source)
        skipped = 0  # the user's list holds the decoder before the transforms
        if isinstance(spec.source, str):
            if spec.source not in self.reader.handlers:
                raise ValueError(f"pipeline {name!r}: {spec.source!r} is not a field of "
                                 f"{self.fname} (fields: {self.reader.field_names})")
            if spec.decoder is None and spec.transforms and isinstance(spec.transforms[0],
                                                                       Decoder):
                spec.decoder, spec.transforms = spec.transforms[0], spec.transforms[1:]
                skipped = 1
            if spec.decoder is None and not spec.transforms:
                spec.transforms = [_to_tensor()]  # FFCV's default pipeline, as for no entry
            if spec.decoder is None:
                spec.decoder = self.reader.handlers[spec.source].get_decoder_class()()
            self._check_decoder(name, spec.source, spec.decoder)
        for position, op in enumerate(spec.transforms, 1 + skipped):
            if isinstance(op, Decoder) and not op.transform_elsewhere:
                one = ("one decoder, first" if isinstance(spec.source, str)
                       else "no decoder when it branches from an operation")
                raise ValueError(
                    f"{self.fname}: pipeline {name!r}: {type(op).__name__} is a decoder at "
                    f"position {position} of its list: a pipeline has {one} (another output "
                    "of the same field: PipelineSpec(field, decoder))")
        return spec

    def _check_decoder(self, name: str, field_name: str, decoder: Operation) -> None:
        """Refuse a decoder of other fields than *field_name*'s (one of fastforward's
        or FFCV's): it would read another field's metadata (an ``IntDecoder`` on a
        ``FloatField`` cut each value to an integer without a word)."""
        field = self.reader.handlers[field_name]
        accepted = decoder.field_types() if isinstance(decoder, Decoder) else ()
        if accepted and is_own_field(field) and not isinstance(field, accepted):
            kind = type(field).__name__
            raise TypeError(
                f"{self.fname}: pipeline {name!r}: {type(decoder).__name__} decodes "
                f"{' or '.join(reads.__name__ for reads in accepted)}, and field "
                f"{field_name!r} is {'an' if kind[0] in 'AEIOU' else 'a'} {kind} (its "
                f"decoder: {field.get_decoder_class().__name__}; to read it as another "
                f"type, say so: custom_fields={{{field_name!r}: ThatField}})")

    def _compile(self) -> Plan:
        """This epoch's plan (decoders' ``output_size`` may have changed since the last)."""
        if self.recompile and hasattr(self, "_plan"):  # FFCV's operations generated anew
            from ..pipeline.compiler import NumbaOperation

            for _, wrapper in self._wrappers.values():
                if isinstance(wrapper, NumbaOperation):
                    wrapper.forget_compiled()
        stage = getattr(self, "_stage", None)
        if stage is None:
            plan = compile_plan(self.reader, self._specs, getattr(self, "_plan", None))
        else:  # 'cuda' means the GPU current when the loader was made, not at iter()
            import torch

            with torch.cuda.device(stage.device):
                plan = compile_plan(self.reader, self._specs, getattr(self, "_plan", None))
        self._plan = plan
        return plan

    @property
    def pipelines(self) -> list[PipelinePlan]:
        """The compiled pipelines of the latest epoch (or of construction): each one's
        decoder copy, steps and stages (see ``fastforward.pipeline.plan``)."""
        return self._plan.pipelines

    @property
    def pipeline_specs(self) -> dict[str, PipelineSpec]:
        """FFCV's attribute: each output's ``PipelineSpec`` as resolved (the
        defaults filled in, the outputs given None left out), in output order."""
        return dict(self._specs)

    @property
    def field_name_to_f_ix(self) -> dict[str, int]:
        """FFCV's attribute: each field's position in the file."""
        return {name: k for k, name in enumerate(self.reader.field_names)}

    @property
    def first_traversal_order(self) -> np.ndarray:
        """FFCV's attribute: this rank's samples of epoch 0, in order, for the
        loader's seed now (made when asked for, where FFCV makes it in ``Loader()``),
        or the array assigned to it. FFCV's loader subclasses that replace
        ``traversal_order`` assign it the new order, which FFCV's ``len()`` reads;
        this loader's ``len()`` counts the next epoch's order itself."""
        given = self.__dict__.get("_first_order_given")
        return given if given is not None else self._shards(0, [])[self.rank].order

    @first_traversal_order.setter
    def first_traversal_order(self, order: Any) -> None:
        self._first_order_given = np.asarray(order)

    def generate_code(self) -> None:
        """FFCV's method, which generates the pipelines' code again (FFCV's code
        calls it after it replaces ``traversal_order`` or an operation): compiles
        the loader's plan again from its pipelines as they are now, as each epoch
        does at its start."""
        self._compile()

    def _choose_workers(self, worker_type: str) -> ThreadWorkers | ProcessWorkers:
        """Threads, unless stage 1 holds an operation that keeps the GIL ('auto')."""
        if worker_type not in ("auto", "thread", "process"):
            raise ValueError(f"worker_type must be 'auto', 'thread' or 'process', got "
                             f"{worker_type!r}")
        kind = worker_type
        if kind == "auto":
            kind = "process" if self._plan.gil_bound() else "thread"
        if kind == "thread":
            return ThreadWorkers(self.num_workers)
        sent = self._plan.for_workers()
        try:  # fail now, not in a worker: stage 1 must cross a process boundary
            pickle.dumps(sent)
        except Exception as exc:
            why = (f"worker_type='auto' chose them for {', '.join(self._plan.gil_bound())}, "
                   "which keeps the GIL" if worker_type == "auto" else "")
            raise TypeError(
                f"{self.fname}: process workers need the decoders and operations they run "
                f"(each pipeline's per-range stage) to pickle{f' ({why})' if why else ''}, "
                f"and {_unpicklable(sent, exc)}. Define operations and the functions they "
                "hold at a module's top level, keep what cannot cross a process boundary (a "
                "lock, an open file, a generator) out of their attributes, or pass "
                "worker_type='thread'") from exc
        return ProcessWorkers(self.num_workers, self.reader, self.os_cache, self._start_method)

    def _cuda_pipelines(self) -> dict[str, set[str]]:
        """The pipelines that copy to (or decode on) a CUDA device, and their devices."""
        from ..transforms import ToDevice

        found: dict[str, set[str]] = {}
        for name, spec in self._specs.items():
            devices = {_device_name(getattr(op, "device", "cpu"))
                       for op in [spec.decoder, *spec.transforms]
                       if isinstance(op, (ToDevice, Decoder))
                       and is_cuda(getattr(op, "device", "cpu"))}
            if devices:
                found[name] = devices
        return found

    def _pinned_pipelines(self, cuda: dict[str, set[str]]) -> frozenset[str]:
        """The pipelines whose host buffers are page-locked: those that copy to the
        GPU, less any that a branch left on the CPU reads from, however far up (its
        outputs may be views of their buffers, and a user's own non_blocking copy of
        them must not read page-locked memory that a refill can reach; copies out
        of ordinary memory are synchronous, still right). *cuda*: ``_cuda_pipelines()``."""
        owner = {id(op): name for name, spec in self._specs.items()
                 for op in [spec.decoder, *spec.transforms] if op is not None}
        unpinned: set[str] = set()
        for name, spec in self._specs.items():
            if name in cuda:
                continue
            source = spec.source
            while not isinstance(source, str) and id(source) in owner:
                above = owner[id(source)]
                if above in unpinned:
                    break
                unpinned.add(above)
                source = self._specs[above].source
        return frozenset(cuda) - unpinned

    def _device_stage(self, cuda: dict[str, set[str]]) -> DeviceStage | None:
        """The CUDA stage, when a pipeline copies to a CUDA device (one device per loader);
        *cuda*: ``_cuda_pipelines()``."""
        devices = set().union(*cuda.values())
        if not devices:
            return None
        if len(devices) > 1:
            raise ValueError(f"{self.fname}: pipelines copy to several devices {sorted(devices)}; "
                             "a loader feeds one GPU (use one loader per device)")
        return DeviceStage(devices.pop())

    def _shards(self, epoch: int, segments: list[list[int]], batch_size: int | None = None
                ) -> list[Shard]:
        """Every rank's samples of *epoch*, after the resumed *segments*
        (``[world_size, batches done]`` each); see ``traversal_order.sharding``."""
        if batch_size is None:  # the size of *epoch*'s batches
            batch_size = self._epoch_batch_size(epoch)
        world = segments[0][0] if segments else self.world_size
        order = self._order_of(epoch)
        try:
            shards = order.rank_orders(epoch, world, self.even_batches)
        except Exception as exc:  # a custom order's own error: where it came from
            if not self._builtin_order:
                annotate(exc, order._where(epoch))
            raise
        if not self._builtin_order:
            # a custom order's numbers are checked as indices= is (the built-in
            # orders' come from the checked indices)
            where = f"{self.fname}: {type(self.traversal_order).__name__} of epoch {epoch}"
            for shard in shards:
                self._check_range(sample_numbers(shard.order, where), where)
        for position, (ranks, done) in enumerate(segments):
            longest = max((len(s.order) for s in shards), default=0)
            available = longest // batch_size if self.drop_last else -(-longest // batch_size)
            if done > available:
                raise ValueError(
                    f"{self.fname}: the loader state says {done} batches of epoch {epoch} "
                    f"were done on {ranks} rank(s), but each had at most {available} "
                    f"(batch_size={batch_size}): it was not saved by this loader")
            world = segments[position + 1][0] if position + 1 < len(segments) else self.world_size
            shards = resume(shards, done * batch_size, world, self.even_batches)
        return shards

    def _order_of(self, epoch: int) -> TraversalOrder:
        """The order of *epoch*: the loader's, or, for an epoch that ``load_state_dict``
        resumes and that was started with another seed than the loader's now, a
        copy of it with that seed."""
        seed = self._epoch_seed(epoch)
        order = self.traversal_order
        if order.seed != seed:
            order = copy.copy(order)
            order.seed = seed
        return order

    def _batches(self, epoch: int, segments: list[list[int]], batch_size: int | None = None
                 ) -> list[np.ndarray]:
        """This rank's batches of *epoch* (of *batch_size*, by default the epoch's)."""
        if batch_size is None:
            batch_size = self._epoch_batch_size(epoch)
        order = self._shards(epoch, segments, batch_size)[self.rank].order
        count = len(order) // batch_size if self.drop_last else -(-len(order) // batch_size)
        return [order[i * batch_size : (i + 1) * batch_size] for i in range(count)]

    def next_traversal_order(self) -> np.ndarray:
        """This rank's samples for the next epoch, in order (FFCV's method)."""
        epoch = self.next_epoch
        return self._shards(epoch, self._segments(epoch))[self.rank].order

    def filter(self, field_name: str, condition: Callable[[Any], bool]) -> Loader:
        """A loader like this one over only the samples whose *field_name* satisfies *condition*.

        As FFCV's ``Loader.filter``: one sequential pass decodes *field_name*
        alone (with this loader's pipeline for it, or the default one) and calls
        ``condition(sample)`` on each sample; the new loader keeps every other
        argument. Unlike FFCV's, it keeps the sample numbers of ``indices`` (not
        positions in it) and ``custom_fields``, and the pass reads every sample
        of ``indices`` even when this loader is distributed.

        A sample is a row of the batch; a padded ``RaggedDecoder``'s sample is
        its rows cut to its length (a dict of columns for named columns). For a
        pipeline that follows another output's geometry (masks, boxes after a
        random crop), the condition sees the samples as stored, read one by one
        (``Reader.read_field``: a mask's H×W ids at the size of its stored
        image, a ragged field's rows as a dict of columns), not one epoch's crop
        of them.
        """
        if field_name not in self.reader.handlers:
            raise ValueError(f"{field_name!r} is not a field of {self.fname} "
                             f"(fields: {self.reader.field_names})")
        given = dict(self._args["pipelines"] or {})
        if given.get(field_name) is not None and _follows_another(given[field_name]):
            # the samples as stored, one by one: a mask's decoder cannot batch masks of
            # several sizes without the image it follows
            if self.verify_checksums:  # as the loader's own pass would
                self.reader.check_pages(self.reader.sample_pages[self.indices])
            chosen = [position for position, index in enumerate(self.indices)
                      if condition(self.reader.read_field(int(index), field_name))]
            return Loader(**{**self._args, "indices": self.indices[np.asarray(chosen, np.int64)],
                             "seed": self.seed})
        pipelines: dict[str, Any] = dict.fromkeys(self.reader.field_names)
        if given.get(field_name) is None:
            del pipelines[field_name]  # its default pipeline
        else:
            pipelines[field_name] = given[field_name]
        probe = Loader(**{**self._args, "order": OrderOption.SEQUENTIAL, "order_kwargs": None,
                          "drop_last": False, "distributed": False, "indices": self.indices,
                          "pipelines": pipelines, "seed": self.seed})
        ragged = isinstance(self.reader.handlers[field_name], RaggedField)
        keep: list[int] = []
        with probe:
            position = 0
            for outputs in probe:
                if len(outputs) != 1:
                    raise ValueError(f"{self.fname}: filter needs one output from field "
                                     f"{field_name!r}, its pipeline gives {len(outputs)}")
                for sample in _samples_of(outputs[0], ragged):
                    if condition(sample):
                        keep.append(position)
                    position += 1
        return Loader(**{**self._args, "indices": self.indices[np.asarray(keep, np.int64)],
                         "seed": self.seed})

    @property
    def seed(self) -> int:
        """Seeds the order and every random augmentation. Setting it takes
        effect from the next ``iter()``, for both; an epoch already started keeps
        the seed it started with (its ``state_dict()`` too), and so does an epoch
        that ``load_state_dict()`` resumes (``load_state_dict`` sets the seed to
        the state's)."""
        return self._seed

    @seed.setter
    def seed(self, seed: int) -> None:
        self._seed = _count(seed, "seed")
        order = getattr(self, "traversal_order", None)  # (not yet, in _construct)
        if order is not None:
            order.seed = self._seed

    @property
    def next_epoch(self) -> int:
        """The epoch the next ``iter()`` starts (FFCV's attribute: set it to go to
        another epoch; ``state_dict()`` then names its start)."""
        return self._next_epoch

    @next_epoch.setter
    def next_epoch(self, epoch: int) -> None:
        self._next_epoch = _count(epoch, "next_epoch")
        # an older epoch, left unfinished, is no longer where this loader is:
        # state_dict() must not report its position
        self._position = None

    @property
    def batch_size(self) -> int:
        """Samples per batch. It may be set between epochs (a batch-size schedule,
        as FFCV's loader takes it): the next ``iter()`` makes batches of the new
        size (and ``len()`` counts them at once); an epoch already started keeps
        its own, as does its ``state_dict()``, and so does an epoch that
        ``load_state_dict()`` resumes (it was started where it was saved)."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: Any) -> None:
        value = _batch_size(value, self.fname)
        with self._opening_lock():  # not while iter() starts an epoch from it
            self._batch_size = value
            self._args["batch_size"] = value  # filter()'s loaders

    def _epoch_batch_size(self, epoch: int) -> int:
        """The batch size of *epoch*: a resumed epoch's is the one its state was
        saved with (it was started, elsewhere), any other's the loader's."""
        if self._resume and self._resume[0] == epoch and self._resume[1]:
            return self._resume[2]
        return self._batch_size

    def _epoch_seed(self, epoch: int) -> int:
        """The seed of *epoch*: a resumed epoch's is the one it was started with, any
        other's the loader's."""
        if self._resume and self._resume[0] == epoch:
            return self._resume[3]
        return self._seed

    def _slot_rows(self, batch_size: int) -> int:
        """Rows of a slot for batches of *batch_size*. With a built-in order no batch
        is longer than the samples (a rank's share, padded, is at most all of them),
        so a batch_size past them sizes no slot (a custom order may visit a sample
        twice)."""
        if self._builtin_order:
            return max(1, min(batch_size, len(self.indices)))
        return batch_size

    def _warn_of_a_large_ring(self) -> None:
        """A RuntimeWarning when the ring's slots would take over half the memory this
        process may use: filled, they would end in the kernel's OOM killer (a
        SIGKILL, without a word) or in swap. Said once, at ``Loader()``, with the
        largest buffer and what sized it."""
        usable = usable_memory()
        rows = self._slot_rows(self._epoch_batch_size(self.next_epoch))
        layout = self._plan.layout  # (as just compiled: compiling again runs trials again)
        slot = layout_nbytes(layout, rows)
        ring = slot * self.ring_slots
        if usable is None or not slot or ring <= usable[0] // 2:
            return
        key, shape, dtype, nbytes = largest_buffer(layout, rows)
        warnings.warn(
            f"{self.fname}: the loader's {self.ring_slots} batch slots (ring_slots: "
            f"batches_ahead + 3) need {format_bytes(ring)} ({format_bytes(slot)} each, "
            "plus one per batch you keep), over half of "
            f"{usable[1]} {format_bytes(usable[0])} of memory; the largest buffer is "
            f"{key!r}: {shape} {dtype}, {format_bytes(nbytes)} per batch (a decoder's or "
            "an operation's output shape, as declared: for images of varied sizes, that of "
            "the largest one the field can give). Use a smaller batch_size or "
            "batches_ahead, or bound the output size (a crop decoder, max_size=)",
            RuntimeWarning, stacklevel=4)

    @property
    def ring_slots(self) -> int:
        """Batch buffers the loader keeps (``batches_ahead + 3``): its memory is
        about this many batches, plus one more per batch you hold on to."""
        return self._slots.num_slots

    @property
    def slot_bytes(self) -> int:
        """Bytes of host memory one of the ring's slots takes for the next epoch:
        a batch of every buffer the pipelines declare, each output's and each
        operation's own (a decoder and three operations that each write a new
        array: four batches of images). ``ring_slots`` of them, plus one per
        batch you keep."""
        return layout_nbytes(self._compile().layout,
                             self._slot_rows(self._epoch_batch_size(self.next_epoch)))

    def __len__(self) -> int:
        """Batches in the next epoch (for this rank).

        A built-in order's count is kept for as long as what it depends on stays
        the same: making the epoch's order takes 0.3 s for a million samples
        (QUASI_RANDOM), and training loops call ``len()`` at every step. A custom
        order's is counted each time."""
        epoch = self.next_epoch
        segments = self._segments(epoch)
        key = (epoch, self._epoch_seed(epoch), self._epoch_batch_size(epoch),
               tuple(map(tuple, segments)), self.traversal_order)
        known = self._length
        if self._builtin_order and known is not None and known[0] == key:
            return known[1]
        count = len(self._batches(epoch, segments))
        self._length = (key, count)
        return count

    def _segments(self, epoch: int) -> list[list[int]]:
        """How *epoch* was resumed (``load_state_dict``), or [] to start it afresh."""
        return self._resume[1] if self._resume and self._resume[0] == epoch else []

    # -- resuming -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: plain ints and lists, for ``torch.save`` beside the model.

        Mid-epoch, it counts the batches the last epoch started has handed out,
        in the loop or after it was left early (a ``break``, ``close()``): a
        checkpoint saved after leaving the loop resumes where it stopped. Once
        an epoch's last batch is handed out, or ``next_epoch`` is set, it is the
        next epoch's start. ``load_state_dict`` on a fresh loader (same file, batch
        size and indices; any ``num_workers``) continues with exactly the batches
        that would have come next; on another world size, with the rest of the
        epoch's samples split over the new ranks (with ``drop_last=True`` each
        drops its own last partial batch). (This loader's own next ``iter()``
        starts the next epoch, as FFCV's does.)
        """
        position = self._position
        if position is not None and not position.finished:
            epoch, segments = position.epoch, [*position.segments,
                                               [self.world_size, position.delivered]]
            # batch_size and seed may be set for the next epoch
            batch_size, seed = position.batch_size, position.seed
        else:
            epoch = self.next_epoch
            segments, batch_size = self._segments(epoch), self._epoch_batch_size(epoch)
            seed = self._epoch_seed(epoch)
        state = {"version": STATE_VERSION, "epoch": int(epoch), "seed": int(seed),
                 "batch_size": batch_size, "num_samples": len(self.indices),
                 "segments": [[int(w), int(k)] for w, k in segments], **self._identity()}
        if seed != self.seed:  # the seed set for the epochs after this one
            state["next_seed"] = int(self.seed)
        return state

    def _identity(self) -> dict[str, Any]:
        """What a state must match to be resumed here, beyond its counts: the
        file's samples, the indices, the order (with its options) and how ranks
        are evened out. Another value of any would resume with other samples."""
        if self._state_identity is None:
            self._state_identity = {
                "file": self.reader.samples_digest,
                "indices": f"{digest(np.ascontiguousarray(self.indices).view(np.uint8)):016x}",
                "order": self._order_name(),
                "even_batches": self.even_batches,
                "drop_last": self.drop_last,
            }
        return self._state_identity

    def _order_name(self, defaults: bool = False) -> str:
        """The order in a state: its class, and a digest of its options if any."""
        order = type(self.traversal_order)
        options = _plain_options(order, dict(self._args["order_kwargs"] or {}), defaults)
        return f"{order.__module__}.{order.__qualname__}" + (
            f" options {digest(repr(options).encode()):016x}" if options else "")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``state_dict()``: the next ``iter()`` continues that epoch.

        The state must come from a loader over the same samples (file and
        indices) and order, and, when it was saved mid-epoch, with the same
        batch size, ``even_batches`` and ``drop_last``; anything else is refused
        with what differs (a state saved before these were kept is checked on
        its counts only). A state of an epoch's start (between epochs, or before
        any batch of one was handed out) starts that epoch with this loader's
        batch size, ``even_batches`` and ``drop_last``. The resumed epoch keeps
        the seed it was started with; the epochs after it take the seed the
        loader had when the state was saved (``next_seed``, where it differs).
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"{self.fname}: a loader state is the dict state_dict() returns, "
                            f"got a {type(state).__name__}")
        missing = [key for key in ("version", "epoch", "seed", "batch_size", "num_samples",
                                   "segments") if key not in state]
        if missing:
            raise ValueError(f"{self.fname}: the loader state lacks {', '.join(missing)}: it "
                             "is not one state_dict() returned")
        version = state["version"]
        if not isinstance(version, (int, np.integer)) or isinstance(version, (bool, np.bool_)) \
                or version not in (1, STATE_VERSION):
            raise ValueError(f"{self.fname}: unknown loader state version {version!r} (this "
                             f"fastforward writes version {STATE_VERSION} and reads 1 and "
                             f"{STATE_VERSION})")
        segments = _segments_of(state["segments"], self.fname)
        if version == 1 and isinstance(self.traversal_order, QuasiRandom) and any(
                w > 1 and k > 0 for w, k in segments):
            raise ValueError(
                f"{self.fname}: this state was saved mid-epoch by a fastforward before "
                "2026-12-03, whose distributed QUASI_RANDOM cut the ranks differently: "
                "resuming that epoch here would skip some samples and repeat others. "
                "Resume it with the version that saved it, or restart that epoch from its "
                "beginning (set the state's 'segments' to [])")
        # the file and the samples first: a state of another file is said to be so, not
        # a state with another batch size. A state of an epoch's start (no batch done
        # on any rank) starts that epoch afresh, with this loader's batch size,
        # drop_last and even_batches, which shaped nothing yet
        started = any(done for _, done in segments)
        identity = self._identity()
        self._check_saved(state, "file", identity["file"])
        self._check_count(state, "num_samples", len(self.indices))
        for key in ("indices", "order", *(("even_batches", "drop_last") if started else ())):
            self._check_saved(state, key, identity[key])
        if started:
            self._check_count(state, "batch_size", self.batch_size)
        else:
            segments = []
        epoch, seed = (_count(state[key], f"{self.fname}: the loader state's {key}", ValueError)
                       for key in ("epoch", "seed"))
        later = seed if "next_seed" not in state else _count(
            state["next_seed"], f"{self.fname}: the loader state's next_seed", ValueError)
        previous = self.seed, self._resume
        self.seed = later  # the order's too; the epoch resumed keeps its own
        self._resume = (epoch, segments, self.batch_size, seed)
        try:
            self._shards(epoch, segments, self.batch_size)  # a count past the epoch's
            # end is refused now
        except BaseException:
            self.seed, self._resume = previous
            raise
        self.next_epoch = epoch
        if not segments and seed == later:
            self._resume = None

    def _check_saved(self, state: Mapping[str, Any], key: str, mine: Any) -> None:
        """Refuse *state* if it was saved with another *key* (of ``_identity``) than
        this loader's *mine*; a state without it (saved before it was kept) passes."""
        if key not in state:
            return
        if isinstance(mine, bool) and not isinstance(state[key], (bool, np.bool_)):
            raise ValueError(f"{self.fname}: the loader state's {key} is {state[key]!r}, "
                             "not True or False: it is not one state_dict() returned")
        if state[key] != mine and not (
                key == "order" and state[key] == self._order_name(defaults=True)):
            raise ValueError(f"{self.fname}: the state was saved {_SAVED_WITH[key]} "
                             f"({key}={state[key]!r}; this loader: {mine!r}), so resuming "
                             "here would give other samples than the rest of its epoch. "
                             f"To resume anyway, delete the state's {key!r} entry")

    def _check_count(self, state: Mapping[str, Any], key: str, mine: int) -> None:
        """Refuse *state* if its *key* (batch_size, num_samples) is not this loader's."""
        if state[key] != mine or isinstance(state[key], (bool, float)):
            hint = (f" (a batch-size schedule: set loader.batch_size = {state[key]!r} "
                    "before load_state_dict())" if key == "batch_size" and isinstance(
                        state[key], int) and not isinstance(state[key], bool)
                    and state[key] >= 1 else "")
            raise ValueError(f"{self.fname}: the state was saved with {key}={state[key]!r}, "
                             f"this loader has {mine}{hint}")

    def __iter__(self) -> EpochIterator:
        if self._closed:
            raise RuntimeError(f"{self.fname}: the loader is closed")
        self.reader.check_unchanged()  # a file truncated under the memory map would SIGBUS
        with self._opening_lock():  # two threads starting epochs at once each get their own
            epoch = self.next_epoch
            segments, batch_size = self._segments(epoch), self._epoch_batch_size(epoch)
            seed = self._epoch_seed(epoch)
            rows = self._slot_rows(batch_size)
            plan = self._compile()  # may fail (a bad output_size): the epoch is not used up
            layout = dict(plan.layout)
            batches = self._batches(epoch, segments, batch_size)
            # may fail too (a worker that cannot start): the epoch is not used up either
            try:
                workers = self.workers.open_epoch(plan, self._slots)
            except Exception:
                if self._closed:  # by another thread, while the workers were starting:
                    raise RuntimeError(  # not the reader's or the pool's own complaint
                        f"{self.fname}: the loader is closed (it was closed while this "
                        "epoch was starting)") from None
                raise
            # published with the epoch's number, in this order: a state_dict() from
            # another thread meanwhile says this epoch's start, not the next one
            position = EpochPosition(epoch, list(segments), len(batches), batch_size, seed)
            self._position = position
            self._next_epoch = epoch + 1  # (the setter would forget that position)
            self._resume = None
        # copies on the copy threads: from the map (os_cache=False keeps its memory
        # bound by dropping each batch's bytes as soon as the batch is written)
        deferred = any(p.defer_copies and p.decoder is not None for p in plan.pipelines)
        copier = self._start_copier() if deferred and self._stage is None and self.os_cache \
            else None
        # nothing the epoch's threads hold refers to the loader: a loader dropped
        # without close() (after a `break`) is freed at once, its finalizer ending
        # the epoch, its workers and its shared memory (it waited for a full
        # garbage collection, behind the cycles of the epoch's threads)
        # the fields this process's decoders read (process workers fetch their own
        # ranges' payloads)
        fetch: Callable[[np.ndarray], Any] = functools.partial(self.memory_manager.fetch,
                                                               fields=workers.fields)
        slots = self._slots
        epoch_plan = EpochPlan(
            batches=batches,
            fetch=fetch,
            acquire_slot=(functools.partial(slots.acquire, layout, rows) if self._stage is None
                          else functools.partial(_on_device, self._stage.device, slots.acquire,
                                                 layout, rows)),
            release_slot=slots.release,
            # a resumed epoch's batches keep their places in it (BatchContext.batch_index)
            run_batch=functools.partial(_run_batch, plan, epoch, seed, self._stage,
                                        workers, copier, sum(k for _, k in segments)),
            batches_ahead=self.batches_ahead,
            workers=workers,
            fetch_is_cheap=isinstance(self.memory_manager, OSCacheManager),
        )
        iterator = EpochIterator(Engine(epoch_plan), len(batches), epoch, segments, self._owned,
                                 loader=self, position=position)
        self._owned.iterators.add(iterator)
        if self._closed:  # by another thread since the check above: its close() may have
            iterator.close()  # missed this epoch, and released the file under its threads
        return iterator

    def _opening_lock(self) -> threading.RLock:
        """What makes starting an epoch, and setting the batch size, one at a time."""
        if self._opening_pid != os.getpid():  # a forked child: the lock may have been
            self._opening, self._opening_pid = threading.RLock(), os.getpid()  # held at fork
        return self._opening

    def _start_copier(self) -> Copier:
        """The copy threads of this process (a forked child starts its own)."""
        copier = self._owned.copier
        if copier is None or copier.pid != os.getpid():
            # copies are bound by memory: a few threads saturate it
            copier = self._owned.copier = Copier(max(1, min(4, self.num_workers // 2)))
        else:  # an epoch broken off may have left copies: let go of their slots
            copier.drain()
        return copier

    def stats(self) -> ChannelStats:
        """How the hand-over went, over every epoch of this loader so far: batches
        delivered, how long your loop waited for data (``consumer_wait_seconds``:
        near zero means loading is not your bottleneck), how long finished
        batches waited for you."""
        total = self._owned.ended
        for iterator in list(self._owned.iterators):
            if iterator.is_open:  # a closed one is counted in `ended` already
                total = total + iterator.stats()
        return total

    # -- lifetime -----------------------------------------------------------------

    @property
    def _closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Stop every epoch in progress, end the worker processes and copy threads,
        and release the file (idempotent). Also done when the loader is garbage
        collected, and at interpreter exit."""
        self._finalizer()
        self._owned.wait_closed()  # where another thread closes it now

    def __enter__(self) -> Loader:
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            f"{self.fname}: a Loader cannot be pickled or copied (it holds the open file, "
            "its threads and worker processes): make one in each process that iterates "
            "(inside the function torch.multiprocessing.spawn runs, or in a "
            "LightningDataModule's train_dataloader())")

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Owned:
    """What a loader releases: kept apart from it, so that ``weakref.finalize`` can
    release it when the loader is collected (and at exit)."""

    def __init__(self) -> None:
        self.reader: Reader | None = None
        self.memory_manager: MemoryManager | None = None
        self.workers: ThreadWorkers | ProcessWorkers | None = None
        self.slots: SlotPool | None = None
        self.copier: Copier | None = None
        self.iterators: weakref.WeakSet[EpochIterator] = weakref.WeakSet()
        self.ended = ChannelStats()  # statistics of the epochs whose iterators are gone
        self._closed = threading.Event()
        self._closing: tuple[int, int] | None = None  # (pid, thread) of the close running
        self._pid = os.getpid()

    def close(self) -> None:
        self._closing = (os.getpid(), threading.get_ident())
        try:
            for iterator in list(self.iterators):
                iterator.close()
            if self.copier is not None:
                self.copier.close()  # its last copies finish: nothing reads the file after
            if self.workers is not None:
                self.workers.close()
            if self.slots is not None:
                self.slots.clear()
            if self.memory_manager is not None:
                self.memory_manager.close()
            if self.reader is not None:
                self.reader.close()
        finally:
            self._closed.set()

    def wait_closed(self) -> None:
        """Return once ``close()`` has ended, where another thread of this process
        runs it (a second ``Loader.close()`` returned at once, workers still running)."""
        closing = self._closing
        if closing is None:  # another thread has begun close() (called only after the
            if self._pid == os.getpid():  # finalizer), and not yet said so
                self._closed.wait()
        elif closing[0] == os.getpid() and closing[1] != threading.get_ident():
            self._closed.wait()


class EpochPosition:
    """Where an epoch is (``Loader.state_dict``): kept by its loader after the
    epoch's iterator is dropped, which refers to its epochs weakly otherwise."""

    __slots__ = ("batch_size", "delivered", "epoch", "finished", "seed", "segments")

    def __init__(self, epoch: int, segments: list[list[int]], length: int,
                 batch_size: int = 0, seed: int = 0) -> None:
        self.epoch = epoch
        self.batch_size = batch_size  # the epoch's, whatever the loader's is now
        self.seed = seed  # the same
        self.segments = segments  # how this epoch was resumed, if it was
        self.delivered = 0  # batches handed out
        self.finished = length == 0  # its last batch was handed out


class EpochIterator(Iterator[tuple[Any, ...]]):
    """One epoch's batches. Dropping it, ``close()`` or Ctrl-C stops its threads."""

    def __init__(self, engine: Engine, length: int, epoch: int,
                 segments: list[list[int]] | None = None, owner: _Owned | None = None,
                 loader: Loader | None = None, position: EpochPosition | None = None) -> None:
        # the epoch keeps its loader (`for batch in Loader(...)`, `next(iter(Loader(...)))`);
        # the loader refers to its epochs weakly, and the engine to neither
        self._loader = loader
        self._engine = engine
        self._length = length
        self.position = position or EpochPosition(epoch, list(segments or []), length)
        self._unfinished: Any = None  # a batch taken from the engine, not yet handed out
        self._handing = threading.Lock()
        self._pid = os.getpid()  # whose threads run the epoch
        self._finalizer = weakref.finalize(self, _end_epoch, engine, owner)

    def stats(self) -> ChannelStats:
        """This epoch's hand-over so far (see ``ChannelStats``)."""
        return self._engine.channel.stats()

    @property
    def is_open(self) -> bool:
        """Whether the epoch may still hand out batches (not closed or ended)."""
        return self._finalizer.alive

    def __next__(self) -> tuple[Any, ...]:
        if os.getpid() != self._pid:  # no thread here would ever hand over a batch
            raise RuntimeError(
                f"this epoch runs in process {self._pid}, and this is its forked child "
                f"{os.getpid()}: its batches are the parent's; create a new Loader here")
        timeout = None if self._loader is None else self._loader.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        # (threads sharing the iterator take a batch each)
        left = _left(deadline)
        if not self._handing.acquire(timeout=-1 if left is None else left):
            raise self._late(timeout, "another thread's next() held the epoch")
        try:
            batch = self._unfinished
            if batch is not None and not self._finalizer.alive:  # closed since: not handed
                self._unfinished = batch = None                    # out, as the rest
                raise StopIteration
            if batch is None:
                # StopIteration at the end, or once closed
                try:
                    batch = self._unfinished = self._engine.next_batch(_left(deadline))
                except BatchTimeout:
                    raise self._late(timeout, "no batch came") from None
            # an exception while it is handed over (Ctrl-C while waiting for its
            # copies, the timeout) leaves it for the next call, uncounted: a state
            # saved then resumes at it
            if isinstance(batch, PendingBatch):
                try:
                    batch = self._unfinished = batch.hand_over(_left(deadline))
                except BatchTimeout:
                    raise self._late(timeout, "the batch's copies did not finish") from None
            if isinstance(batch, DeviceBatch):
                batch = batch.hand_over()  # the consumer's stream waits for its GPU work
            self._unfinished = None
            # counted once handed over; only the last batch handed out ends the epoch
            # (a close() leaves it where it was)
            position = self.position
            position.delivered += 1
            position.finished = position.delivered >= self._length
            return batch
        finally:
            self._handing.release()

    def _late(self, timeout: float | None, what: str) -> BatchTimeout:
        """What a ``Loader(timeout=...)`` that ran out says."""
        assert self._loader is not None
        assert timeout is not None
        position = self.position
        done = sum(k for _, k in position.segments)  # batches of a resumed epoch done before
        workers = self._loader.workers
        pids = getattr(workers, "pids", None) or []
        where = f" (worker processes {', '.join(map(str, pids))})" if pids else ""
        busy = workers.running() if isinstance(workers, ProcessWorkers) else []
        if busy:  # which ranges run now, and for how long: maybe another batch's
            where = f"{where[:-1]}: {'; '.join(busy)})"
        holder = random.globals_holder()
        if holder is not None and time.monotonic() - holder[1] >= timeout:
            # per-sample operations that keep the GIL take turns in this process: one
            # stuck (maybe another loader's) holds up every other
            where += (f"; thread {holder[0]} has held the global generators' lock for "
                      f"{time.monotonic() - holder[1]:.1f} s (per-sample Python operations "
                      "run one at a time in this process: one stuck, of any loader here, "
                      "holds up the others)")
        return BatchTimeout(
            f"{self._loader.fname}: epoch {position.epoch}, batch {done + position.delivered}: "
            f"{what} in {timeout:g} s (Loader(timeout={timeout:g})): a decoder, an operation "
            f"or a read is stuck or slow{where}. The epoch stays open: next() waits again; "
            "leaving the loop or close() ends it (after 2 s, process workers stuck in it are "
            "killed, and threads, which cannot be, are left running)")

    def __len__(self) -> int:
        return self._length

    def close(self) -> None:
        """Stop the epoch now (idempotent)."""
        self._finalizer()

    def __enter__(self) -> EpochIterator:
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a loader's epoch cannot be pickled or copied: iterate the loader in "
                        "the process that made it")

    def __exit__(self, *exc: object) -> None:
        self.close()


def _end_epoch(engine: Engine, owner: _Owned | None) -> None:
    """Stop an epoch's engine; its loader keeps the epoch's statistics."""
    engine.close()
    if owner is not None:
        owner.ended = owner.ended + engine.channel.stats()


class PendingCopies:
    """One batch's copies on the loader's copy thread (``BatchContext.copies``)."""

    __slots__ = ("_copier", "_lock", "ticket")

    def __init__(self, copier: Copier) -> None:
        self._copier = copier
        self._lock = threading.Lock()  # decode threads may submit at once
        self.ticket = 0  # the last copy's: waiting for it waits for them all

    def gather_into(self, source: np.ndarray, offsets: np.ndarray, sizes: np.ndarray,
                    rows: np.ndarray) -> None:
        """Queue ``collate.gather_into(source, offsets, sizes, rows)``."""
        ticket = self._copier.submit(source, offsets, sizes, rows)
        with self._lock:
            self.ticket = max(self.ticket, ticket)

    def wait(self, timeout: float | None = None) -> None:
        """Return once every copy of the batch has finished (``BatchTimeout`` after
        *timeout* seconds; None: no limit)."""
        if self.ticket:
            try:
                self._copier.wait(self.ticket, timeout)
            except TimeoutError:
                raise BatchTimeout("the batch's copies did not finish in time") from None


class PendingBatch:
    """A batch whose rows the copy thread may still be writing."""

    __slots__ = ("copies", "outputs")

    def __init__(self, outputs: tuple[Any, ...], copies: PendingCopies) -> None:
        self.outputs = outputs
        self.copies = copies

    def hand_over(self, timeout: float | None = None) -> tuple[Any, ...]:
        """Wait for the copies (without the GIL, at most *timeout* seconds: then
        ``BatchTimeout``); return the outputs."""
        self.copies.wait(timeout)
        return self.outputs


def _left(deadline: float | None) -> float | None:
    """Seconds left until *deadline* (``time.monotonic``), for a wait that takes at
    most ``threading.TIMEOUT_MAX``; None for no deadline."""
    if deadline is None:
        return None
    return max(0.0, min(deadline - time.monotonic(), threading.TIMEOUT_MAX))


_DEFAULT = object()


def _run_batch(plan: Plan, epoch: int, seed: int, stage: DeviceStage | None, workers: Any,
               copier: Copier | None, first: int, index: int, indices: np.ndarray, data: Any,
               slot: Slot) -> Any:
    """One batch: stage 1 on the workers, then stage 2 here (see ``loader.runner``).
    *index* counts from the epoch's first batch left (*first*: those handed out before
    it was resumed)."""
    job = BatchJob(epoch, seed, first + index, indices, ())
    job.ranged = ranged_pipelines(plan, job, always=workers.kind == PROCESS)
    copies = None if copier is None else PendingCopies(copier)
    workers.run(job, slot, data, copies)
    if stage is None:
        outputs = run_stage2(plan, job, data, slot, copies)
        if copies is not None and copies.ticket:
            return PendingBatch(outputs, copies)  # the consumer waits for the copies
        return outputs
    with stage.context():  # copies and GPU transforms on the side stream
        try:
            outputs = run_stage2(plan, job, data, slot)
        finally:  # (a batch that fails may have queued copies out of the slot too)
            event = stage.record()
            slot.fence = event  # the slot's pinned buffers are refilled only after this
    return DeviceBatch(outputs, event)


def _on_device(device: Any, call: Callable[..., Any], *args: Any) -> Any:
    """*call* with the loader's GPU current in this thread: a batch thread's CUDA
    calls (a slot's fence, page-locking a shared slot) would otherwise make a context
    on GPU 0, on every rank of a job run with torchrun."""
    import torch

    with torch.cuda.device(device):
        return call(*args)


MAX_WORLD_SIZE = 1 << 20
"""Ranks a resumed state may name (more is a damaged state: each costs memory)."""


def _segments_of(value: Any, fname: str) -> list[list[int]]:
    """A state's ``segments``: ``[world_size, batches]`` pairs of plain integers."""
    def integer(x: Any) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))

    if not isinstance(value, (list, tuple)) or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(map(integer, pair))
            for pair in value):
        raise ValueError(f"{fname}: invalid loader state segments {value!r}: expected "
                         "[world_size, batches] pairs of integers")
    segments = [[int(w), int(k)] for w, k in value]
    if any(not 1 <= w <= MAX_WORLD_SIZE or k < 0 for w, k in segments):
        raise ValueError(f"{fname}: invalid loader state segments {segments}: world sizes "
                         f"are 1 to {MAX_WORLD_SIZE}, batch counts at least 0")
    return segments


def _follows_another(pipeline: Any) -> bool:
    """Whether a pipeline's decoder or an operation follows another output's geometry."""
    if isinstance(pipeline, PipelineSpec):
        ops = [pipeline.decoder, *pipeline.transforms]
    else:
        ops = list(pipeline) if isinstance(pipeline, (list, tuple)) else []
    return any(getattr(op, "follows", None) is not None for op in ops)


def _samples_of(output: Any, ragged: bool) -> Iterator[Any]:
    """The samples of one output of a batch (``Loader.filter``): its rows; for a
    dict of columns, a dict per sample; for a padded ``RaggedDecoder``'s output
    (``(values, lengths)``, or columns with ``"lengths"``), each sample's rows
    cut to its length."""
    if isinstance(output, dict):
        lengths = output.get("lengths")
        columns = {k: v for k, v in output.items() if not (ragged and k == "lengths")}
        count = len(next(iter(output.values()))) if output else 0
        for i in range(count):
            if ragged and lengths is not None:
                yield {k: v[i][: int(lengths[i])] for k, v in columns.items()}
            else:
                yield {k: v[i] for k, v in columns.items()}
    elif ragged and isinstance(output, tuple) and len(output) == 2:
        values, lengths = output
        for i in range(len(lengths)):
            yield values[i][: int(lengths[i])]
    else:
        yield from output


def _device_name(device: Any) -> str:
    """``'cuda'``, ``'cuda:0'`` and ``torch.device('cuda')`` all name the current GPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def _distributed_context() -> tuple[int, int]:
    """``(rank, world size)`` from ``torch.distributed``, whatever the backend."""
    try:
        import torch.distributed as dist
    except ImportError as exc:
        raise ImportError(f"distributed=True needs torch: {install_hint('torch')}") \
            from exc
    if not (dist.is_available() and dist.is_initialized()):
        # a ValueError, as torch's own (which FFCV let through) for no default group
        raise ValueError("distributed=True needs an initialised torch.distributed process "
                         "group (torch.distributed.init_process_group, or torchrun)")
    return dist.get_rank(), dist.get_world_size()


def _broadcast_from_rank_0(value: int) -> int:
    """Rank 0's *value* on every rank of the default process group (a collective:
    every rank must call it), whatever the backend."""
    import torch.distributed as dist

    # broadcast_object_list picks the device the backend needs (the current
    # CUDA device for NCCL, set it first as torchrun scripts do; the CPU for gloo)
    values = [value]
    dist.broadcast_object_list(values, src=0)
    return int(values[0])


def _to_tensor() -> Operation:
    from ..transforms import ToTensor

    try:
        import torch  # noqa: F401 - only to say what is missing
    except ImportError as exc:
        raise ImportError("a field without a pipeline gets its default decoder and ToTensor(), "
                          f"which needs torch: {install_hint('torch')}; or give the field a "
                          "pipeline (a list of NumPy operations) or None") from exc
    return ToTensor()


def _wrap_module(op: Any) -> Operation:
    from ..pipeline.compiler import NumbaOperation, is_numba_operation

    if is_numba_operation(op):  # FFCV's generate_code(), compiled with numba
        return NumbaOperation(op)
    if isinstance(op, Operation):
        return op
    if _is_module(op):
        from ..transforms import ModuleWrapper

        return ModuleWrapper(op)
    raise not_an_operation(op)

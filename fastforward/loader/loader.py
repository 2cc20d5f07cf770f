"""``Loader``: FFCV's loader, on an asyncio scheduler, thread pools and Cython kernels.

The one module that knows all the others: it reads the file (``Reader``),
picks the order (``traversal_order``), the storage (``memory_managers``),
builds the pipelines (``pipeline``, decoders, ``transforms``), and runs each
epoch on an ``Engine`` (``scheduler``) that fills ring slots (``ring``).
"""

from __future__ import annotations

import enum
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._ext.collate import Copier
from ..device import DeviceBatch, DeviceStage, is_cuda
from ..errors import annotate
from ..fields import Field
from ..memory_managers import MemoryManager, OSCacheManager, ProcessCacheManager
from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.decoder import Decoder
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.pipeline_spec import PipelineSpec, _is_module
from ..pipeline.random import stream_id
from ..pipeline.state import State
from ..reader import Reader
from ..ring import SlotRing
from ..scheduler import Engine, EpochPlan
from ..traversal_order import QuasiRandom, Random, Sequential, TraversalOrder
from ..utils import default_workers
from .sharding import Shard, resume


class OrderOption(enum.Enum):
    """The built-in orders."""

    SEQUENTIAL = Sequential
    RANDOM = Random
    QUASI_RANDOM = QuasiRandom


@dataclass
class _Step:
    op: Operation
    key: str | None  # the slot buffer it writes, if it asked for one
    stream: int
    torch_buffer: bool  # hand the op its buffer as a torch tensor (it runs after ToTensor)
    query: Any = None


@dataclass
class _Pipeline:
    name: str
    decoder: Decoder | None
    decoder_key: str
    decoder_stream: int
    decoder_query: Any
    source_op: Operation | None  # for a branch: the operation whose output it starts from
    steps: list[_Step] = field(default_factory=list)
    fused_flip: _Step | None = None  # a RandomHorizontalFlip done inside the decoder
    defer_copies: bool = False  # its decoder's copies may run on the copy threads


class Loader:
    """Load batches from a .beton file, as FFCV's ``Loader`` does.

    Args:
        fname: the .beton file.
        batch_size: samples per batch.
        num_workers: decoding threads; ``-1`` uses every CPU this process may run on.
        os_cache: True reads through a memory map (the OS page cache holds the
            data, shared across processes); False reads each batch's bytes ahead
            of use into memory of its own, at most ``batches_ahead + 1``
            batches' worth. The default is True unless the environment variable
            ``FASTFORWARD_DEFAULT_CACHE_PROCESS=1`` is set.
        order: an ``OrderOption`` or a ``TraversalOrder`` subclass.
        distributed: shard the epoch over ``torch.distributed``'s ranks.
        seed: seeds the order and every random augmentation; None picks one.
        indices: the samples to use (default: all), in this order for SEQUENTIAL.
        pipelines: ``{output name: list of operations | PipelineSpec | None}``;
            a field without an entry gets its default decoder and ``ToTensor()``,
            ``None`` leaves a field out.
        custom_fields: ``{field name: Field class}`` for custom fields.
        drop_last: drop the last, incomplete batch (FFCV's default: True).
        batches_ahead: batches prepared ahead of the one being consumed.
        recompile: accepted for FFCV compatibility; nothing is compiled, and
            every epoch re-reads the pipelines (``output_size`` may change).
        order_kwargs: keyword arguments for the order's constructor.

    Batches are tuples with one entry per output, in the file's field order
    (then any extra outputs). A batch you hold is never overwritten: see
    ``fastforward.ring``.
    """

    def __init__(self, fname: str | os.PathLike[str], batch_size: int, num_workers: int = -1,
                 os_cache: bool | None = None, order: Any = OrderOption.SEQUENTIAL,
                 distributed: bool = False, seed: int | None = None,
                 indices: Sequence[int] | None = None,
                 pipelines: Mapping[str, Any] | None = None,
                 custom_fields: Mapping[str, type[Field]] | None = None,
                 drop_last: bool = True, batches_ahead: int = 3, recompile: bool = False,
                 order_kwargs: Mapping[str, Any] | None = None, *,
                 even_batches: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if batches_ahead < 1:
            raise ValueError(f"batches_ahead must be at least 1, got {batches_ahead}")
        # what filter() builds its loaders from
        self._args: dict[str, Any] = {
            "fname": fname, "batch_size": batch_size, "num_workers": num_workers,
            "os_cache": os_cache, "order": order, "distributed": distributed, "seed": seed,
            "indices": indices, "pipelines": pipelines, "custom_fields": custom_fields,
            "drop_last": drop_last, "batches_ahead": batches_ahead, "recompile": recompile,
            "order_kwargs": order_kwargs, "even_batches": even_batches}
        self.fname = os.fspath(fname)
        self.batch_size = int(batch_size)
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
        self._closed = True  # until construction succeeds: __del__ then has nothing to do
        self.reader = Reader(self.fname, self.custom_fields)
        try:
            self._construct(seed, indices, order, order_kwargs, pipelines)
        except BaseException:
            self.reader.close()
            if hasattr(self, "memory_manager"):
                self.memory_manager.close()
            raise
        self._closed = False

    def _construct(self, seed: int | None, indices: Sequence[int] | None, order: Any,
                   order_kwargs: Mapping[str, Any] | None, pipelines: Mapping[str, Any] | None
                   ) -> None:
        self.seed = self._resolve_seed(seed)
        self.indices = self._resolve_indices(indices)
        self.next_epoch = 0
        self.traversal_order: TraversalOrder = self._resolve_order(order)(
            self, **dict(order_kwargs or {}))
        self.memory_manager: MemoryManager = (
            OSCacheManager(self.reader) if self.os_cache else ProcessCacheManager(self.reader))
        self._specs = self._normalise(dict(pipelines or {}))
        self.pipelines = self._build()  # checks every pipeline now, not at the first batch
        # batches_ahead in flight, one in the out queue, the one the consumer
        # holds, and the previous one, still alive while next() runs in a loop
        self._ring = SlotRing(self.batches_ahead + 3, self.batch_size)
        self._stage = self._device_stage()
        self._ring.pinned = self._stage is not None
        self._iterators: weakref.WeakSet[EpochIterator] = weakref.WeakSet()
        self._current: weakref.ref[EpochIterator] | None = None
        self._resume: tuple[int, list[list[int]]] | None = None  # (epoch, segments)
        self._copier: Copier | None = None  # started by the first epoch that can use it

    # -- arguments ------------------------------------------------------------------

    def _resolve_seed(self, seed: int | None) -> int:
        if seed is not None:
            if not 0 <= int(seed) < 1 << 63:
                raise ValueError(f"seed must be a non-negative integer below 2**63, got {seed}")
            return int(seed)
        if self.distributed:
            raise ValueError("distributed=True needs an explicit seed, so that every rank "
                             "visits the same order")
        return int(np.random.SeedSequence().entropy % (1 << 31))

    def _resolve_indices(self, indices: Sequence[int] | None) -> np.ndarray:
        n = self.reader.num_samples
        if indices is None:
            return np.arange(n, dtype=np.int64)
        if np.asarray(indices).dtype == bool:
            raise TypeError("indices must be sample numbers, not a boolean mask (use "
                            "np.flatnonzero(mask))")
        result = np.asarray(indices, dtype=np.int64).reshape(-1).copy()
        bad = np.flatnonzero((result < 0) | (result >= n))
        if bad.size:
            raise IndexError(f"{self.fname}: index {int(result[bad[0]])} out of range "
                             f"[0, {n})")
        return result

    @staticmethod
    def _resolve_order(order: Any) -> type[TraversalOrder]:
        if isinstance(order, OrderOption):
            return order.value
        if isinstance(order, type) and issubclass(order, TraversalOrder):
            return order
        raise TypeError(f"order must be an OrderOption or a TraversalOrder subclass, "
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
        if isinstance(value, PipelineSpec):
            spec = PipelineSpec(value.source, value.decoder, value.transforms)
        elif isinstance(value, (list, tuple)):
            spec = PipelineSpec(name, None, list(value))
        else:
            raise TypeError(f"pipeline {name!r}: expected a list of operations, a "
                            f"PipelineSpec or None, got {type(value).__name__}")
        spec.transforms = [_wrap_module(op) for op in spec.transforms]
        if isinstance(spec.source, str):
            if spec.source not in self.reader.handlers:
                raise ValueError(f"pipeline {name!r}: {spec.source!r} is not a field of "
                                 f"{self.fname} (fields: {self.reader.field_names})")
            if spec.decoder is None and spec.transforms and isinstance(spec.transforms[0],
                                                                       Decoder):
                spec.decoder, spec.transforms = spec.transforms[0], spec.transforms[1:]
            if spec.decoder is None:
                spec.decoder = self.reader.handlers[spec.source].get_decoder_class()()
        return spec

    def _build(self) -> list[_Pipeline]:
        """Bind decoders, walk every pipeline's states, collect buffer requests.

        Runs at construction (to fail early) and at every epoch (decoders'
        ``output_size`` may have changed).
        """
        built: dict[str, _Pipeline] = {}
        states: dict[int, State] = {}  # id(op) -> its output state, for branches
        self._layout: dict[str, Any] = {}
        for name in self._order_for_sources():
            spec = self._specs[name]
            where = f"{self.fname}: pipeline {name!r}"
            flip_at, convert_at = self._fusions(spec)
            if isinstance(spec.source, str):
                decoder = spec.decoder
                assert isinstance(decoder, Decoder)
                index = self.reader.field_names.index(spec.source)
                decoder.bind(self.reader.handlers[spec.source], spec.source, index,
                             self.reader.metadata[f"f{index}"], self.fname)
                if hasattr(decoder, "fused_output"):
                    decoder.fused_output = (None if convert_at is None
                                            else _fused_output(spec.transforms[convert_at - 1]))
                state, query = self._declare(decoder, State(), where)
                states[id(decoder)] = state
                pipeline = _Pipeline(name, decoder, f"{name}/decoder", stream_id(f"{name}/0"),
                                     query, None)
                self._layout[pipeline.decoder_key] = query
            else:
                state = states[id(spec.source)]
                pipeline = _Pipeline(name, None, "", 0, None, spec.source)
            for position, op in enumerate(spec.transforms, 1):
                stream = stream_id(op.random_stream or f"{name}/{position}")
                if position == flip_at:
                    pipeline.fused_flip = _Step(op, None, stream, False)
                    states[id(op)] = state
                    continue
                if position == convert_at:
                    states[id(op)] = state
                    continue
                state, query = self._declare(op, state, where)
                states[id(op)] = state
                key = None
                if query is not None:
                    key = f"{name}/{position}"
                    self._layout[key] = query
                pipeline.steps.append(_Step(op, key, stream, not state.jit_mode, query))
            built[name] = pipeline
        # A copy on the copy threads pays off only when nothing reads the rows before
        # the hand-over; a step that reads them at once would just wait for it.
        branched = any(p.source_op is not None for p in built.values())
        for pipeline in built.values():
            pipeline.defer_copies = not branched and not any(
                step.op.reads_input for step in pipeline.steps)
        return [built[name] for name in self._order_for_sources()]

    def _fusions(self, spec: PipelineSpec) -> tuple[int | None, int | None]:
        """Which transforms a crop decoder does itself: (flip position, conversion position).

        A crop decoder mirrors while it resizes (``RandomHorizontalFlip`` right
        after it), and writes float16/float32, normalised or not, when the
        pipeline goes on with ``ToTensor``, ``ToTorchImage()``, ``ToDevice``
        to the CPU, then ``Convert`` or ``NormalizeImage``: one pass instead
        of three. Only where no branch reads an intermediate result; the
        fused flip keeps its random stream, so results do not change (a fused
        normalisation may differ from the separate one in the last bit).
        """
        from ..fields.rgb_image import ResizedCropRGBImageDecoder
        from ..transforms import (
            Convert,
            NormalizeImage,
            RandomHorizontalFlip,
            ToDevice,
            ToTensor,
            ToTorchImage,
        )

        if not isinstance(spec.decoder, ResizedCropRGBImageDecoder):
            return None, None
        sources = {id(s.source) for s in self._specs.values() if isinstance(s.source, Operation)}
        if id(spec.decoder) in sources:
            return None, None
        ops = spec.transforms
        flip_at = convert_at = None
        position = 0
        if ops and type(ops[0]) is RandomHorizontalFlip and id(ops[0]) not in sources:
            flip_at = position = 1
        for op in ops[position:]:
            position += 1
            if id(op) in sources:
                break
            if type(op) is ToTensor or (type(op) is ToTorchImage and op.channels_last) or (
                    type(op) is ToDevice and str(op.device) == "cpu"):
                continue
            if (type(op) in (Convert, NormalizeImage) and _fused_output(op) is not None
                    and spec.decoder.fuses_conversion):
                convert_at = position
            break
        return flip_at, convert_at

    @staticmethod
    def _declare(op: Operation, state: State, where: str) -> tuple[State, Any]:
        try:
            new_state, query = op.declare_state_and_memory(state)
        except Exception as exc:
            raise annotate(exc, f"{where}, {type(op).__name__}") from None
        if not isinstance(new_state, State):
            raise TypeError(f"{where}: {type(op).__name__}.declare_state_and_memory must "
                            f"return (State, AllocationQuery or None)")
        if query is not None and not isinstance(query, (AllocationQuery, tuple, list)):
            raise TypeError(f"{where}: {type(op).__name__} asked for {query!r}, not an "
                            "AllocationQuery")
        return new_state, (tuple(query) if isinstance(query, list) else query)

    def _order_for_sources(self) -> list[str]:
        """Output names, each branch after the pipeline holding its source operation."""
        owner = {}
        for name, spec in self._specs.items():
            for op in ([spec.decoder] if spec.decoder else []) + spec.transforms:
                owner.setdefault(id(op), name)
        done: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in done:
                return
            if name in visiting:
                raise ValueError(f"{self.fname}: pipeline {name!r} is part of a cycle of "
                                 "PipelineSpec sources")
            visiting.add(name)
            source = self._specs[name].source
            if isinstance(source, Operation):
                if id(source) not in owner or owner[id(source)] == name:
                    raise ValueError(f"{self.fname}: pipeline {name!r} starts from {source!r}, "
                                     "which no other pipeline contains")
                visit(owner[id(source)])
            visiting.discard(name)
            done.append(name)

        for name in self._specs:
            visit(name)
        return done

    # -- running ------------------------------------------------------------------

    def _device_stage(self) -> DeviceStage | None:
        """The CUDA stage, when a pipeline copies to a CUDA device (one device per loader)."""
        from ..transforms import ToDevice

        devices = {_device_name(op.device) for spec in self._specs.values()
                   for op in [spec.decoder, *spec.transforms]
                   if isinstance(op, (ToDevice, Decoder)) and is_cuda(getattr(op, "device", "cpu"))}
        if not devices:
            return None
        if len(devices) > 1:
            raise ValueError(f"{self.fname}: pipelines copy to several devices {sorted(devices)}; "
                             "a loader feeds one GPU (use one loader per device)")
        return DeviceStage(devices.pop())

    def _run_batch(self, pipelines: list[_Pipeline], epoch: int, copier: Copier | None,
                   index: int, indices: np.ndarray, data: Any, slot: Any,
                   map_ranges: Callable[[Callable[[int, int], None], int], None]) -> Any:
        if self._stage is None:
            return self._run_pipelines(pipelines, epoch, index, indices, data, slot, map_ranges,
                                       copier)
        with self._stage.context():  # copies and GPU transforms on the side stream
            outputs = self._run_pipelines(pipelines, epoch, index, indices, data, slot,
                                          map_ranges)
            event = self._stage.record()
        slot.fence = event  # the slot's pinned buffers are refilled only after this
        return DeviceBatch(outputs, event)

    def _run_pipelines(self, pipelines: list[_Pipeline], epoch: int, index: int,
                       indices: np.ndarray, data: Any, slot: Any,
                       map_ranges: Callable[[Callable[[int, int], None], int], None],
                       copier: Copier | None = None) -> Any:
        n = len(indices)
        copies = None if copier is None else PendingCopies(copier)
        context = BatchContext(indices, epoch, self.seed, 0, index, data, copies=copies)
        results: dict[int, Any] = {}
        outputs: dict[str, Any] = {}
        for pipeline in pipelines:
            if pipeline.decoder is not None:
                decoder, destination = pipeline.decoder, slot.get(pipeline.decoder_key)
                if destination is None:  # a GPU decoder: new device memory for every batch
                    destination = _batch_view(None, n, True, pipeline.decoder_query)
                ctx = context.with_stream(pipeline.decoder_stream)
                if not pipeline.defer_copies:
                    ctx.copies = None  # copied in place: a step reads the rows right away
                if pipeline.fused_flip is not None:
                    flip = pipeline.fused_flip
                    ctx.flip = (context.with_stream(flip.stream).uniform(1)[:, 0]
                                < flip.op.flip_prob)  # type: ignore[attr-defined]
                if decoder.split_batch(ctx):
                    map_ranges(lambda lo, hi, d=decoder, dst=destination, c=ctx:
                               d.decode_range(lo, hi, dst, c), n)
                else:
                    decoder.decode_range(0, n, destination, ctx)
                value = decoder.output(destination, n)
                results[id(decoder)] = value
                if pipeline.fused_flip is not None:
                    results[id(pipeline.fused_flip.op)] = value
            else:
                value = results[id(pipeline.source_op)]
            # no step here reads rows still being copied (see defer_copies)
            for step in pipeline.steps:
                buffer = None if step.key is None else _batch_view(
                    slot.get(step.key), n, step.torch_buffer, step.query)
                try:
                    value = step.op.apply(value, buffer, context.with_stream(step.stream))
                except Exception as exc:
                    first, last = int(indices[0]), int(indices[-1])
                    raise annotate(exc, f"{self.fname}: batch {index} (samples {first}…{last}), "
                                        f"pipeline {pipeline.name!r}, "
                                        f"{type(step.op).__name__}") from None
                results[id(step.op)] = value
                del buffer
            outputs[pipeline.name] = value
        batch = tuple(outputs[name] for name in self._specs)
        if copies is not None and copies.ticket:
            return PendingBatch(batch, copies)  # the consumer waits for the copies
        return batch

    def _shards(self, epoch: int, segments: list[list[int]]) -> list[Shard]:
        """Every rank's samples of *epoch*, after the resumed *segments*
        (``[world_size, batches done]`` each); see ``loader.sharding``."""
        world = segments[0][0] if segments else self.world_size
        shards = self.traversal_order.rank_orders(epoch, world, self.even_batches)
        for position, (_, done) in enumerate(segments):
            world = segments[position + 1][0] if position + 1 < len(segments) else self.world_size
            shards = resume(shards, done * self.batch_size, world, self.even_batches)
        return shards

    def _batches(self, epoch: int, segments: list[list[int]]) -> list[np.ndarray]:
        order = self._shards(epoch, segments)[self.rank].order
        count = len(order) // self.batch_size if self.drop_last else -(-len(order)
                                                                         // self.batch_size)
        return [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(count)]

    def filter(self, field_name: str, condition: Callable[[Any], bool]) -> Loader:
        """A loader like this one over only the samples whose *field_name* satisfies *condition*.

        As FFCV's ``Loader.filter``: one sequential pass decodes *field_name*
        alone (with this loader's pipeline for it, or the default one) and calls
        ``condition(sample)`` on each sample; the new loader keeps every other
        argument. Unlike FFCV's, it keeps the sample numbers of ``indices`` (not
        positions in it) and ``custom_fields``, and the pass reads every sample
        of ``indices`` even when this loader is distributed.
        """
        if field_name not in self.reader.handlers:
            raise ValueError(f"{field_name!r} is not a field of {self.fname} "
                             f"(fields: {self.reader.field_names})")
        given = dict(self._args["pipelines"] or {})
        pipelines: dict[str, Any] = dict.fromkeys(self.reader.field_names)
        if given.get(field_name) is not None:
            pipelines[field_name] = given[field_name]
        else:
            del pipelines[field_name]  # its default decoder
        probe = Loader(**{**self._args, "order": OrderOption.SEQUENTIAL, "drop_last": False,
                          "distributed": False, "indices": self.indices,
                          "pipelines": pipelines, "seed": self.seed})
        keep: list[int] = []
        with probe:
            position = 0
            for outputs in probe:
                if len(outputs) != 1:
                    raise ValueError(f"{self.fname}: filter needs one output from field "
                                     f"{field_name!r}, its pipeline gives {len(outputs)}")
                for sample in outputs[0]:
                    if condition(sample):
                        keep.append(position)
                    position += 1
        return Loader(**{**self._args, "indices": self.indices[np.asarray(keep, np.int64)],
                         "seed": self.seed})

    @property
    def ring_slots(self) -> int:
        """Batch buffers the loader keeps (``batches_ahead + 3``): its memory is
        about this many batches, plus one more per batch you hold on to."""
        return self._ring.num_slots

    def __len__(self) -> int:
        """Batches in the next epoch (for this rank)."""
        return len(self._batches(self.next_epoch, self._segments(self.next_epoch)))

    def _segments(self, epoch: int) -> list[list[int]]:
        """How *epoch* was resumed (``load_state_dict``), or [] to start it afresh."""
        return self._resume[1] if self._resume and self._resume[0] == epoch else []

    # -- resuming -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: plain ints and lists, for ``torch.save`` beside the model.

        Mid-epoch, it counts the batches the current epoch has handed out;
        ``load_state_dict`` on a fresh loader (same file, batch size and
        indices; any ``num_workers``, any world size) continues with exactly
        the batches that would have come next.
        """
        iterator = self._current() if self._current is not None else None
        if iterator is not None and not iterator.finished:
            epoch, segments = iterator.epoch, [*iterator.segments,
                                               [self.world_size, iterator.delivered]]
        else:
            epoch = self.next_epoch
            segments = self._segments(epoch)
        return {"version": 1, "epoch": int(epoch), "seed": int(self.seed),
                "batch_size": self.batch_size, "num_samples": len(self.indices),
                "segments": [[int(w), int(k)] for w, k in segments]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``state_dict()``: the next ``iter()`` continues that epoch."""
        if state.get("version") != 1:
            raise ValueError(f"unknown loader state version {state.get('version')!r}")
        for key, mine in (("batch_size", self.batch_size), ("num_samples", len(self.indices))):
            if state[key] != mine:
                raise ValueError(f"{self.fname}: the state was saved with {key}={state[key]}, "
                                 f"this loader has {mine}")
        self.seed = int(state["seed"])
        self.traversal_order.seed = self.seed
        self.next_epoch = int(state["epoch"])
        segments = [[int(w), int(k)] for w, k in state["segments"]]
        if any(w < 1 or k < 0 for w, k in segments):
            raise ValueError(f"invalid loader state segments {segments}")
        self._resume = (self.next_epoch, segments) if segments else None

    def __iter__(self) -> EpochIterator:
        if self._closed:
            raise RuntimeError(f"{self.fname}: the loader is closed")
        epoch = self.next_epoch
        segments = self._segments(epoch)
        pipelines = self._build()  # may fail (a bad output_size): the epoch is not used up
        layout = dict(self._layout)
        batches = self._batches(epoch, segments)
        self.next_epoch += 1
        self._resume = None
        # copies on the copy threads: from the map (os_cache=False keeps its memory
        # bound by dropping each batch's bytes as soon as the batch is written)
        deferred = any(p.defer_copies and p.decoder is not None for p in pipelines)
        copier = self._start_copier() if deferred and self._stage is None and self.os_cache \
            else None
        plan = EpochPlan(
            batches=batches,
            fetch=self.memory_manager.fetch,
            acquire_slot=lambda: self._ring.acquire(layout),
            release_slot=self._ring.release,
            run_batch=lambda *args: self._run_batch(pipelines, epoch, copier, *args),
            num_workers=self.num_workers,
            batches_ahead=self.batches_ahead,
            fetch_is_cheap=isinstance(self.memory_manager, OSCacheManager),
        )
        iterator = EpochIterator(Engine(plan), len(batches), epoch, segments)
        self._iterators.add(iterator)
        self._current = weakref.ref(iterator)
        return iterator

    def _start_copier(self) -> Copier:
        """The copy threads of this process (a forked child starts its own)."""
        if self._copier is None or self._copier.pid != os.getpid():
            # copies are bound by memory: a few threads saturate it
            self._copier = Copier(max(1, min(4, self.num_workers // 2)))
        else:  # an epoch broken off may have left copies: let go of their slots
            self._copier.drain()
        return self._copier

    # -- lifetime -----------------------------------------------------------------

    def close(self) -> None:
        """Stop every epoch in progress and release the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for iterator in list(self._iterators):
            iterator.close()
        if self._copier is not None:
            self._copier.close()  # its last copies finish: nothing reads the file afterwards
        self._ring.clear()
        self.memory_manager.close()
        self.reader.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()


class EpochIterator(Iterator[tuple]):
    """One epoch's batches. Dropping it, ``close()`` or Ctrl-C stops its threads."""

    def __init__(self, engine: Engine, length: int, epoch: int,
                 segments: list[list[int]] | None = None) -> None:
        self._engine = engine
        self._length = length
        self.epoch = epoch
        self.segments = list(segments or [])  # how this epoch was resumed, if it was
        self.delivered = 0  # batches handed out
        self.finished = False
        self._finalizer = weakref.finalize(self, engine.close)

    def __next__(self) -> tuple:
        try:
            batch = self._engine.next_batch()
        except StopIteration:
            self.finished = True
            raise
        self.delivered += 1
        if isinstance(batch, PendingBatch):
            batch = batch.hand_over()
        if isinstance(batch, DeviceBatch):
            return batch.hand_over()  # the consumer's stream waits for the batch's GPU work
        return batch

    def __len__(self) -> int:
        return self._length

    def close(self) -> None:
        """Stop the epoch now (idempotent)."""
        self._finalizer()

    def __enter__(self) -> EpochIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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

    def wait(self) -> None:
        """Return once every copy of the batch has finished."""
        if self.ticket:
            self._copier.wait(self.ticket)


class PendingBatch:
    """A batch whose rows the copy thread may still be writing."""

    __slots__ = ("copies", "outputs")

    def __init__(self, outputs: tuple, copies: PendingCopies) -> None:
        self.outputs = outputs
        self.copies = copies

    def hand_over(self) -> tuple:
        """Wait for the copies (without the GIL); return the outputs."""
        self.copies.wait()
        return self.outputs


_DEFAULT = object()


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
        raise ImportError("distributed=True needs torch: pip install 'fastforward[torch]'") \
            from exc
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed=True needs an initialised torch.distributed process "
                           "group (torch.distributed.init_process_group, or torchrun)")
    return dist.get_rank(), dist.get_world_size()


def _fused_output(op: Any) -> tuple[np.dtype, np.ndarray | None, np.ndarray | None] | None:
    """``(dtype, scale, bias)`` that a crop decoder can produce instead of *op*, or None."""
    from ..transforms import NormalizeImage

    if isinstance(op, NormalizeImage):
        if op.type not in (np.dtype("float16"), np.dtype("float32")) or op.mean.size != 3:
            return None
        return op.type, 1.0 / op.std, -op.mean / op.std
    target = getattr(op, "target_dtype", None)
    name = str(target).replace("torch.", "")
    if name in ("float16", "float32"):
        return np.dtype(name), None, None
    return None


def _to_tensor() -> Operation:
    from ..transforms import ToTensor

    try:
        import torch  # noqa: F401 - only to say what is missing
    except ImportError as exc:
        raise ImportError("a field without a pipeline gets its default decoder and ToTensor(), "
                          "which needs torch: pip install 'fastforward[torch]', or give the "
                          "field a pipeline (a list of NumPy operations) or None") from exc
    return ToTensor()


def _wrap_module(op: Any) -> Operation:
    if isinstance(op, Operation):
        return op
    if _is_module(op):
        from ..transforms import ModuleWrapper

        return ModuleWrapper(op)
    raise TypeError(f"{op!r} is not an Operation")


def _batch_view(buffer: Any, n: int, as_torch: bool, query: Any) -> Any:
    if isinstance(buffer, tuple):
        return tuple(_batch_view(b, n, as_torch, q) for b, q in zip(buffer, query, strict=True))
    if buffer is None:  # a device buffer: new for every batch, from torch's caching allocator
        import torch

        return torch.empty((n, *query.shape), dtype=query.dtype, device=query.device)
    view = buffer[:n]
    if as_torch and isinstance(view, np.ndarray):
        import torch

        # a fresh tensor per batch: it holds the buffer, so the ring sees it as held
        tensor = torch.from_numpy(view)
        if isinstance(query.dtype, torch.dtype) and tensor.dtype != query.dtype:
            tensor = tensor.view(query.dtype)  # bfloat16 lives in a uint16 buffer
        return tensor
    return view

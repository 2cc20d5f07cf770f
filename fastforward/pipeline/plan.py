"""Compile a loader's pipelines into a ``Plan``: what runs where, in which buffer.

The loader hands ``compile_plan`` its ``PipelineSpec`` objects once per epoch
(a decoder's ``output_size`` may change between epochs). The planner:

1. orders the outputs so that a branch (``PipelineSpec(source=op)``) comes
   after the pipeline holding its source operation;
2. copies every decoder and operation (``Decoder.runtime_copy``,
   ``copy.copy``): a loader never shares state with another loader through
   the objects the user handed it, and binds its decoder copies to the file.
   An object in two pipelines (one list for two fields) gets a copy in each,
   but for a branch's source, which has one;
3. lets each decoder, then each operation, take over operations that follow
   it (``Operation.fuse``: a crop decoder mirrors and converts while it
   resizes, an augmentation policy converts while it writes), up to the
   first operation another pipeline branches from;
4. walks the states (``declare_state_and_memory``) and collects the slot
   buffers they ask for (the *layout*);
5. splits each pipeline into two stages. **Stage 1** runs per range of
   samples, on the workers (threads or processes): the decoder, when it
   decodes in ranges (``Decoder.parallel``), then the longest run of
   operations after it that are ``sample_independent`` and work on NumPy
   batches (before ``ToTensor``), less the trailing ones that only pass
   values through. A decoder that does not decode in ranges (a label's, an
   array's: one vectorised copy per batch) joins stage 1 only when such a run
   holds an operation that keeps the GIL (Python code: it then runs in
   ranges, on worker processes, instead of on the loader's). Stage 1 leaves its
   result in one slot buffer (``range_out``). **Stage 2** runs once per
   batch, in the loader's process: every other decoder and operation.

   A branch changes only the pipeline that holds its source. A branch from
   an operation ends that pipeline's stage 1 at the operation at the latest,
   the operation included: the branch then reads stage 1's result
   (``range_out``, in the slot), which is the operation's. A branch from a
   decoder reads the decoder's own slot buffer, which stage 1 fills as it
   would without the branch: that pipeline splits as without it, as does
   every pipeline no branch reads. A branch's own operations, and those after
   a source operation in its pipeline, run in stage 2, in the loader's
   process, where a per-sample operation's draws from the global generators
   are the user's, not reproducible (``random.globals_are_ours``).

A ``Plan`` holds plain data and the operations themselves, so it pickles:
process workers receive its stage 1 (``Plan.for_workers``) at each epoch's
start and bind their own copy of each decoder to their own reader
(``bind_plan``); stage 2's operations never leave the loader's process.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import annotate
from .allocation_query import AllocationQuery
from .decoder import Decoder
from .geometry import GEOMETRY
from .operation import Operation
from .pipeline_spec import PipelineSpec
from .random import stream_id
from .state import State


@dataclass
class Step:
    """One operation of a pipeline, as the plan runs it."""

    op: Operation
    key: str | None  # the slot buffer it writes, if it asked for one
    rng_stream: int  # its random stream (``BatchContext.stream``)
    as_torch: bool  # its buffer is handed over as a torch tensor (it runs after ToTensor)
    query: Any = None


@dataclass
class PipelinePlan:
    """One output: its decoder (or branch source), its steps, and their stages."""

    name: str
    decoder: Decoder | None
    field_name: str | None  # the field it decodes (None for a branch)
    field_index: int
    decoder_key: str
    decoder_stream: int
    decoder_query: Any
    source_op: Operation | None  # for a branch: the operation whose output it starts from
    steps: list[Step] = field(default_factory=list)
    split: int = 0  # leading steps that run per range, in stage 1, after the decoder
    range_out: str | None = None  # the slot buffer holding stage 1's result (split > 0)
    range_out_query: Any = None
    defer_copies: bool = False  # its decoder's copies may run on the loader's copy threads
    decoder_read: bool = False  # a branch starts from its decoder's output
    geometry_key: str | None = None  # where its decoder writes each sample's geometry
    follows: dict[str, str] = field(default_factory=dict)  # leader -> its geometry's key
    # a padding decoder's pipeline with steps: the per-sample dimensions of its output's
    # height and width, whose padding is set back to zero after the last step
    padding_dims: tuple[int, int] | None = None

    @property
    def ranged(self) -> bool:
        """Whether the decoder decodes in ranges (stage 1): one that splits batches
        (``Decoder.parallel``), or any decoder followed by range steps."""
        return self.decoder is not None and (self.decoder.parallel or self.split > 0)

    def stage1_ops(self) -> list[Operation]:
        """The decoder and the operations that run per range."""
        if not self.ranged:
            return []
        assert self.decoder is not None
        return [self.decoder, *(step.op for step in self.steps[: self.split])]


@dataclass
class Plan:
    """A loader's pipelines for one epoch (see the module docstring)."""

    fname: str
    pipelines: list[PipelinePlan]
    outputs: list[str]  # the batch's entries, in order
    layout: dict[str, Any]  # slot buffer key -> AllocationQuery (or a tuple of them)

    def for_workers(self) -> Plan:
        """The plan as worker processes receive it: stage 1 only.

        Each ranged pipeline keeps its decoder and its range steps; every other
        decoder and operation (stage 2, a branch's source) stays in the loader's
        process: it need not pickle, and is never rebuilt in a worker, where an
        operation holding a CUDA tensor would start CUDA (the workers must never
        touch it). A worker imports what stage 1's operations import as they
        unpickle, and what the fork server preloads (torch, when this process has
        it), no more."""
        pipelines = [replace(p, steps=p.steps[: p.split], source_op=None) if p.ranged
                     else replace(p, decoder=None, field_name=None, source_op=None, steps=[],
                                  split=0, decoder_query=None, range_out=None,
                                  range_out_query=None, decoder_read=False)
                     for p in self.pipelines]
        return replace(self, pipelines=pipelines, layout={})

    def gil_bound(self) -> list[str]:
        """Stage 1's operations that keep the GIL after a decoder that splits batches
        (an image's), as ``pipeline: Operation`` strings: what makes
        ``worker_type='auto'`` choose processes.

        Threads run these one at a time; processes run them in parallel. Those
        after a label's or an array's decoder do not count: they are usually
        light, and a pipeline of them ran on threads before they could run in
        ranges (processes would ask them to pickle); they run on whichever
        workers the loader has."""
        return [f"{p.name}: {type(op).__name__}" for p in self.pipelines
                if p.decoder is not None and p.decoder.parallel
                for op in p.stage1_ops() if not op.releases_gil]


def compile_plan(reader: Any, specs: Mapping[str, PipelineSpec],
                 previous: Plan | None = None) -> Plan:
    """Compile *specs* (the user's pipelines, by output name) against *reader*'s file.

    *previous* is last epoch's plan: its decoder copies hand their caches
    (scratch memory) to this epoch's. Raises the first error any
    ``declare_state_and_memory`` raises, annotated with the pipeline and the
    operation.
    """
    fname = reader.fname
    leaders = _leaders(specs, fname)
    order = order_for_sources(specs, fname, leaders)
    sources = {id(s.source) for s in specs.values() if isinstance(s.source, Operation)}
    holders: dict[int, list[str]] = {}  # id(a source operation) -> the pipelines holding it
    for name, spec in specs.items():
        for op in spec.transforms:
            if id(op) in sources and name not in holders.setdefault(id(op), [name]):
                raise ValueError(
                    f"{fname}: one {type(op).__name__} instance is in pipelines "
                    f"{holders[id(op)][0]!r} and {name!r}, and another pipeline branches "
                    "from it (PipelineSpec(source=...)): give each pipeline its own, so "
                    "that the branch says which one it reads")
    earlier = {p.name: p.decoder for p in previous.pipelines} if previous else {}
    copies: dict[int, Operation] = {}  # id(user's operation) -> this plan's copy
    states: dict[int, State] = {}  # id(user's operation) -> its output state
    decoder_owner: dict[int, str] = {}  # id(user's decoder) -> the first output it decodes
    decoded: dict[str, State] = {}  # output -> its decoder's output state
    layout: dict[str, Any] = {}
    built: dict[str, PipelinePlan] = {}
    for name in order:
        spec = specs[name]
        where = f"{fname}: pipeline {name!r}"
        user_ops = list(spec.transforms)
        streams = [stream_id(op.random_stream or f"{name}/{position}")
                   for position, op in enumerate(user_ops, 1)]
        # an operation in two pipelines (one list for two fields) gets a copy in each,
        # declared and fused for its own input; one a branch reads has one copy, the
        # one whose result the branch takes
        ops = [copies.setdefault(id(op), copy.copy(op)) if id(op) in sources
               else copy.copy(op) for op in user_ops]
        fused: set[int] = set()
        if isinstance(spec.source, str):
            user_decoder = spec.decoder
            assert isinstance(user_decoder, Decoder)
            if id(user_decoder) in decoder_owner and id(user_decoder) in sources:
                # a field each (FFCV's {'fine': lp, 'coarse': lp}) gets a copy each,
                # but a branch from the decoder could not say which field it reads
                raise ValueError(
                    f"{fname}: one {type(user_decoder).__name__} instance decodes outputs "
                    f"{decoder_owner[id(user_decoder)]!r} and {name!r}, and another "
                    "pipeline branches from it (PipelineSpec(source=...)): give each "
                    "field its own decoder")
            decoder_owner.setdefault(id(user_decoder), name)
            decoder = user_decoder.runtime_copy(earlier.get(name))
            copies[id(user_decoder)] = decoder
            index = reader.field_names.index(spec.source)
            decoder.bind_to(reader.handlers[spec.source], spec.source, index,
                            reader.metadata[f"f{index}"], fname, reader)
            # fusions see the operations up to the first one a branch reads
            limit = 0 if id(user_decoder) in sources else next(
                (k for k, op in enumerate(user_ops) if id(op) in sources), len(user_ops))
            try:
                fused = set(decoder.fuse(ops[:limit], streams[:limit]))
            except Exception as exc:
                raise annotate(exc, f"{where}, {type(decoder).__name__}") from exc.__cause__
            leader = getattr(decoder, "follows", None)
            if leader is not None:  # a follower sizes its output from its leader's (masks)
                decoder.leader_state = decoded[leader]
            state, query = _declare(decoder, State(), where)
            states[id(user_decoder)] = decoded[name] = state
            pipeline = PipelinePlan(name, decoder, spec.source, index, f"{name}/decoder",
                                    stream_id(f"{name}/0"), query, None,
                                    decoder_read=id(user_decoder) in sources)
            layout[pipeline.decoder_key] = query
        else:
            state = states[id(spec.source)]
            pipeline = PipelinePlan(name, None, None, -1, "", 0, None,
                                    copies[id(spec.source)])
        followed = any(name in names for names in leaders.values())
        if followed:
            _check_leader(name, ops, fused, where)
        pads = decoder is not None and getattr(decoder, "pads", False)
        if pads:
            _check_padded(decoder, ops, fused, where)
        if name in leaders:
            _check_follower(name, leaders[name], ops, where)
        decided = state  # the decoder's output: the size the followers take
        step_states: list[tuple[State, State]] = []  # each step's input and output
        read: int | None = None  # the steps up to the first one a branch reads, if any
        for position, (user_op, op) in enumerate(zip(user_ops, ops, strict=True), 1):
            if position - 1 in fused:  # an earlier step does it: the values pass through
                states[id(user_op)] = state
                continue
            if id(user_op) not in sources:
                fused |= _fuse(op, user_ops, ops, streams, position, sources, state, where)
            before = state
            state, query = _declare(op, state, where)
            if followed:
                _check_leader_size(name, decided, state, op, where)
            step_states.append((before, state))
            states[id(user_op)] = state
            key = None
            if query is not None:
                key = f"{name}/{position}"
                layout[key] = query
            pipeline.steps.append(Step(op, key, streams[position - 1], not state.jit_mode,
                                       query))
            if read is None and id(user_op) in sources:
                read = len(pipeline.steps)
        if pads and not all(getattr(step.op, "keeps_zero", False) for step in pipeline.steps):
            pipeline.padding_dims = _image_dims(state)  # (one may turn the zeros to others)
        _split(pipeline, step_states, layout, len(pipeline.steps) if read is None else read)
        # A copy on the copy threads pays off only when nothing reads the rows before
        # the hand-over; a step that reads them at once would just wait for it. A
        # branch's steps may read them too, without waiting: a pipeline a branch
        # reads copies its rows at once.
        pipeline.defer_copies = (pipeline.split == 0 and not pipeline.decoder_read
                                 and read is None and not any(
                                     step.op.reads_input for step in pipeline.steps))
        for leader in leaders.get(name, ()):
            pipeline.follows[leader] = f"{leader}/geometry"
        built[name] = pipeline
    for leader in {leader for names in leaders.values() for leader in names}:
        built[leader].geometry_key = key = f"{leader}/geometry"
        layout[key] = AllocationQuery((), GEOMETRY)
    outputs = list(specs)
    return Plan(fname, [built[name] for name in order], outputs, layout)


def _fuse(op: Operation, user_ops: list[Operation], ops: list[Operation], streams: list[int],
          position: int, sources: set[int], state: State, where: str) -> set[int]:
    """The positions (in the pipeline, from 0) of the operations after *op* (at
    *position*, from 1) that it takes over (``Operation.fuse``), among those up to
    the first one another pipeline branches from."""
    end = next((k for k in range(position, len(user_ops)) if id(user_ops[k]) in sources),
               len(user_ops))
    if end == position:
        return set()
    try:
        taken = op.fuse(ops[position:end], streams[position:end], state)
    except Exception as exc:
        raise annotate(exc, f"{where}, {type(op).__name__}") from exc.__cause__
    return {position + k for k in taken}


def _check_leader(name: str, ops: list[Operation], fused: set[int], where: str) -> None:
    """Refuse an operation that moves the pixels of an image whose geometry others
    follow, after its decoder decided that geometry (masks and boxes would miss it)."""
    for position, op in enumerate(ops):
        if position not in fused and getattr(op, "moves_pixels", False):
            raise ValueError(
                f"{where}: {type(op).__name__} moves the image's pixels after its decoder "
                f"decided the geometry that masks and boxes follow ({name!r} is followed), so "
                "they would not move with it; a RandomHorizontalFlip must come right after "
                "the decoder (which then mirrors while it resizes, and tells its followers)")


def _check_padded(decoder: Operation, ops: list[Operation], fused: set[int], where: str) -> None:
    """Refuse an operation that is not ``pixelwise`` after a decoder that pads its
    samples: it would take the padding for the image (a contrast's mean over it,
    a cutout or a policy's histogram in it), without a word."""
    for position, op in enumerate(ops):
        if position not in fused and not getattr(op, "pixelwise", False):
            unfused = (" (this flip was not taken over by the decoder: another pipeline "
                       "branches from the decoder, or the flip is another class)"
                       if position == 0 and getattr(op, "moves_pixels", False) else "")
            raise ValueError(
                f"{where}: {type(op).__name__} after {type(decoder).__name__}, whose images "
                "fill only part of the padded batch: it would take the padding for the "
                "image (statistics over it, or positions in it); only operations of each "
                "pixel alone may follow (ToTensor, ToTorchImage, ToDevice, Convert, "
                "NormalizeImage, RandomBrightness, RandomSaturation, Solarization, or one "
                "of yours that sets pixelwise = True), and a RandomHorizontalFlip right "
                f"after the decoder{unfused}; use a crop decoder for the others")


def _image_dims(state: State) -> tuple[int, int]:
    """The per-sample dimensions of an image output's height and width: (1, 2) for
    C×H×W tensors (after ``ToTorchImage``), else (0, 1)."""
    return (1, 2) if state.channels_first and state.shape is not None \
        and len(state.shape) == 3 else (0, 1)


def _check_follower(name: str, leaders: list[str], ops: list[Operation], where: str) -> None:
    """Refuse an operation that moves the pixels of a mask (or the points) that
    follow another output's geometry: a flip there draws its own coin, and the
    mask comes out mirrored where its image is not."""
    for op in ops:
        if getattr(op, "moves_pixels", False) and getattr(op, "follows", None) is None:
            raise ValueError(
                f"{where}: {type(op).__name__} would move {name!r} on its own draw, but "
                f"{name!r} follows {' and '.join(map(repr, leaders))}, whose decoder's crop "
                "and flip it already takes: flip or crop the image only (a "
                "RandomHorizontalFlip right after the image's decoder is followed too)")


def _check_leader_size(name: str, decided: State, state: State, op: Operation,
                       where: str) -> None:
    """Refuse an operation that resizes or crops an image whose geometry others
    follow (``Augment`` of another library's crop: its masks and boxes would keep
    the decoder's size). Its height and width must stay the decoder's, in either
    layout."""
    if decided.shape is None or len(decided.shape) != 3 or state.shape is None:
        return
    size = tuple(decided.shape[:2])
    shape = tuple(state.shape)
    if shape == size or (len(shape) == 3 and size in (shape[:2], shape[1:])):
        return
    raise ValueError(
        f"{where}: {type(op).__name__} turns the image's {size[0]}x{size[1]} into "
        f"{shape}, after its decoder decided the geometry that masks and boxes follow "
        f"({name!r} is followed): they would keep the decoder's size; crop and resize "
        "with the decoder")


def _split(pipeline: PipelinePlan, step_states: list[tuple[State, State]],
           layout: dict[str, Any], most: int) -> None:
    """Choose stage 1's steps (see the module docstring), at most the first *most*
    (those up to the first one a branch reads), and where its result goes."""
    if pipeline.decoder is None or isinstance(pipeline.decoder_query, tuple):
        return
    split = 0
    for step, (before, after) in zip(pipeline.steps[:most], step_states[:most], strict=True):
        op = step.op
        # NumPy batches only: a torch result may be any view of its buffer
        # (channels-last strides), which the batch stage could not rebuild from the
        # slot; torch operations run in stage 2, on the whole batch
        if not (op.sample_independent or op.per_sample) or not (
                before.jit_mode and after.jit_mode):
            break
        split += 1
    while split and pipeline.steps[split - 1].op.passes_through:
        split -= 1  # relabelling is free: the batch stage does it on the whole batch
    if not pipeline.decoder.parallel and (not pipeline.decoder.range_safe or all(
            step.op.releases_gil for step in pipeline.steps[:split])):
        # a decoder that is one vectorised copy per batch (labels, arrays) splits only
        # for operations that keep the GIL, and only where its rows do not depend on
        # the range (Decoder.range_safe): they then run in ranges, on processes
        split = 0
    if not split:
        return
    last = pipeline.steps[split - 1]
    final = step_states[split - 1][1]
    pipeline.split = split
    query = last.query
    if (isinstance(query, AllocationQuery) and tuple(query.shape) == tuple(final.shape or ())
            and str(query.dtype) == str(final.dtype) and _on_cpu(query)):
        pipeline.range_out, pipeline.range_out_query = last.key, query
        return
    # the last step writes no buffer of its own (or another shape): stage 1 copies its
    # result into one, so that the loader's process sees it
    if final.shape is None:
        raise ValueError(f"pipeline {pipeline.name!r}: {type(last.op).__name__} runs per "
                         "range but declares no output shape")
    key = f"{pipeline.name}/stage1"
    query = AllocationQuery(tuple(final.shape), final.dtype)
    layout[key] = query
    pipeline.range_out, pipeline.range_out_query = key, query


def _on_cpu(query: AllocationQuery) -> bool:
    return query.device is None or str(query.device) == "cpu"


def _declare(op: Operation, state: State, where: str) -> tuple[State, Any]:
    try:
        new_state, query = op.declare_state_and_memory(state)
    except Exception as exc:
        raise annotate(exc, f"{where}, {type(op).__name__}") from exc.__cause__
    if not isinstance(new_state, State):
        raise TypeError(f"{where}: {type(op).__name__}.declare_state_and_memory must "
                        f"return (State, AllocationQuery or None)")
    if query is not None and not isinstance(query, (AllocationQuery, tuple, list)):
        raise TypeError(f"{where}: {type(op).__name__} asked for {query!r}, not an "
                        "AllocationQuery")
    for one in (query,) if isinstance(query, AllocationQuery) else query or ():
        _check_query(one, f"{where}: {type(op).__name__} asked for")
    if (state.channels_first is not None and new_state.shape != state.shape
            and new_state.channels_first == state.channels_first):
        # a new shape, and the operation did not say where its channels are
        new_state = replace(new_state, channels_first=None)
    return new_state, (tuple(query) if isinstance(query, list) else query)


def _check_query(query: Any, asked: str) -> None:
    """A buffer the loader can allocate: a shape of whole numbers of at least 0, a
    NumPy or torch dtype (refused here, naming the operation, rather than at the
    first batch, naming nothing)."""
    if not isinstance(query, AllocationQuery):
        raise TypeError(f"{asked} {query!r}, not an AllocationQuery")
    try:
        dims = [operator.index(n) for n in query.shape]
    except TypeError:
        raise TypeError(f"{asked} a buffer of shape {query.shape!r}: not a tuple of "
                        "integers") from None
    if any(n < 0 for n in dims):
        raise ValueError(f"{asked} a buffer of shape {tuple(dims)}: a negative side")
    if not type(query.dtype).__module__.startswith("torch"):
        try:
            np.dtype(query.dtype)
        except TypeError:
            raise TypeError(f"{asked} a buffer of dtype {query.dtype!r}: no NumPy or torch "
                            "dtype") from None


def _leaders(specs: Mapping[str, PipelineSpec], fname: str) -> dict[str, list[str]]:
    """For each output, the outputs whose geometry its decoder or operations follow."""
    leaders: dict[str, list[str]] = {}
    for name, spec in specs.items():
        for op in ([spec.decoder] if spec.decoder else []) + list(spec.transforms):
            leader = getattr(op, "follows", None)
            if leader is None:
                continue
            where = f"{fname}: pipeline {name!r}, {type(op).__name__}"
            decoder = specs[leader].decoder if leader in specs else None
            if decoder is None or leader == name:
                raise ValueError(f"{where} follows {leader!r}, which is not another output "
                                 f"with a decoder (outputs: {list(specs)})")
            if not getattr(decoder, "publishes_geometry", False):
                raise ValueError(f"{where} follows {leader!r}, whose "
                                 f"{type(decoder).__name__} decides no geometry to follow")
            if leader not in leaders.setdefault(name, []):
                leaders[name].append(leader)
    return leaders


def order_for_sources(specs: Mapping[str, PipelineSpec], fname: str,
                      leaders: Mapping[str, list[str]] | None = None) -> list[str]:
    """Output names, each branch after the pipeline holding its source operation and
    each follower after the pipelines whose geometry it follows."""
    leaders = leaders or {}
    owner: dict[int, str] = {}
    for name, spec in specs.items():
        for op in ([spec.decoder] if spec.decoder else []) + list(spec.transforms):
            owner.setdefault(id(op), name)
    done: list[str] = []
    visiting: set[str] = set()
    for name in specs:
        _visit(name, specs, fname, leaders, owner, done, visiting)
    return done


def _visit(name: str, specs: Mapping[str, PipelineSpec], fname: str,
           leaders: Mapping[str, list[str]], owner: dict[int, str],
           done: list[str], visiting: set[str]) -> None:
    """``order_for_sources``'s depth-first step: *name* after what it depends on.
    (A module function: a nested one calling itself is a cycle, which kept the
    loader's decoder copies until a garbage collection.)"""
    if name in done:
        return
    if name in visiting:
        raise ValueError(f"{fname}: pipeline {name!r} is part of a cycle of "
                         "PipelineSpec sources")
    visiting.add(name)
    source = specs[name].source
    if isinstance(source, Operation):
        if id(source) not in owner or owner[id(source)] == name:
            raise ValueError(f"{fname}: pipeline {name!r} starts from {source!r}, "
                             "which no other pipeline contains")
        _visit(owner[id(source)], specs, fname, leaders, owner, done, visiting)
    for leader in leaders.get(name, ()):
        _visit(leader, specs, fname, leaders, owner, done, visiting)
    visiting.discard(name)
    done.append(name)


def bind_plan(plan: Plan, reader: Any) -> None:
    """Bind the plan's decoders to *reader* (a worker process's own, after unpickling)."""
    for pipeline in plan.pipelines:
        if pipeline.decoder is not None and pipeline.field_name is not None:
            index = pipeline.field_index
            pipeline.decoder.bind_to(reader.handlers[pipeline.field_name], pipeline.field_name,
                                     index, reader.metadata[f"f{index}"], reader.fname, reader)

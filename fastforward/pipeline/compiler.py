"""FFCV's numba operations: ``Compiler`` and the adaptor the loader runs them through.

FFCV's own operations are code generators: ``generate_code()`` returns a
function that numba compiles (``nopython``, ``nogil``, ``fastmath``,
``error_model='numpy'``, ``parallel`` when the function sets ``is_parallel``
and loops with ``Compiler.get_iterator()``). fastforward's operations are
plain Python (``Operation.apply``), but FFCV users' own operations run
unchanged, with numba installed (``pip install numba``, or the ``numba`` extra:
``pip install '.[numba]'`` in the source folder):

- the loader wraps every operation that defines ``generate_code`` (and no
  ``apply``) in ``NumbaOperation``, which implements ``apply`` by calling the
  compiled function as FFCV calls it: ``fn(batch, destination)``, plus the
  batch's sample indices (uint64) when ``fn.with_indices`` is set, plus the
  shared buffer of ``declare_shared_memory``; the first operation of a field's
  pipeline is a decoder, called ``fn(indices, destination, metadata,
  storage_state)``, reading payloads with ``self.memory_read(ptr,
  storage_state)``;
- the function is compiled when the loader builds its pipelines (at
  ``Loader()``), for the argument types the pipeline declares: the JIT cost is
  paid before the first batch (about a second per operation, and several
  seconds more for numba's first compilation in a process; an argument of
  another layout at run time compiles once more). ``generate_code()`` runs
  once per loader (the loader's per-epoch copies share the result), and a
  function with the same code and the same captured values (another loader of
  the same pipeline) is compiled once per process;
- an operation whose output is not in ``jit_mode`` (after ``ToTensor``) is
  called as plain Python, as in FFCV; so is every operation after
  ``Compiler.set_enabled(False)``;
- it runs in the loader's process (a batch operation: stage 2, whatever
  ``worker_type``) on the loader's batch threads, without the GIL. ``Compiler.num_threads``
  is 1 unless you call ``Compiler.set_num_threads`` (the loader does not, unlike
  FFCV's): ``get_iterator()`` is then ``range`` and the loader's parallelism
  comes from batches in flight at once. With more threads, ``get_iterator()``
  is numba's ``prange`` and an ``is_parallel`` function is compiled with
  ``parallel=True``; such functions run one at a time, each on numba's threads;
- randomness: ``np.random`` inside numba code draws from numba's generator of
  the calling thread. Before each call the loader seeds it from ``(seed, epoch,
  the batch's first sample, pipeline position)``, so a serial function's draws
  are reproducible for a seed (FFCV's are not); draws inside a ``prange`` loop
  compiled in parallel come from numba's worker threads and are not.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from ..errors import annotate, listed
from ..utils import default_workers, install_hint
from . import random
from .decoder import Decoder
from .operation import BatchContext
from .state import State

NUMBA_MISSING = (
    "{name} is an FFCV operation compiled with numba (it defines generate_code()), and numba "
    f"is not installed: {install_hint('numba')}. Or port it to plain Python, which "
    "needs no compiler: move the body of the function generate_code() returns into "
    "apply(self, batch, destination, context), loop with range (or use NumPy) instead of "
    "Compiler.get_iterator(), and draw random numbers from context.uniform / "
    "context.sample_rng (README, 'Custom operations'; docs/migrating-from-ffcv.md)"
)


_PLAIN: dict[Any, Any] = {}  # Compiler.compile's dispatchers of module-level functions


def _numba(name: str = "this operation") -> Any:
    try:
        import numba
    except ImportError as exc:
        raise ImportError(NUMBA_MISSING.format(name=name)) from exc
    _register_helpers(numba)
    return numba


_REGISTERED: list[Any] = []


def _register_helpers(numba: Any) -> None:
    """Make FFCV's helpers (``libffcv.memcpy``, ``fast_crop``) callable from compiled code."""
    if _REGISTERED:
        return
    from ..libffcv import memcpy
    from ..transforms.utils import fast_crop

    for function in (memcpy, fast_crop.crop_from_uniforms, fast_crop.get_random_crop,
                     fast_crop.get_center_crop):
        def typer(*args: Any, _function: Any = function) -> Any:
            return _function  # numba compiles the Python function itself

        typer.__wrapped__ = function  # type: ignore[attr-defined] # its signature, for numba
        numba.extending.overload(function, jit_options={"nogil": True})(typer)
        _REGISTERED.append(function)


@dataclass(frozen=True)
class PythonState(State):
    """The state after an FFCV operation that declared ``jit_mode=False`` on NumPy
    batches (Python code: PIL, cv2): NumPy batches to fastforward (``jit_mode`` True,
    so that ``ToTensor`` takes them), ``jit_mode=False`` again to the FFCV operations
    after it, which inherit it with ``replace(previous_state)`` and run as Python,
    as FFCV runs them. ``dataclasses.replace`` keeps the class."""


def _retyped(cls: type[State], state: State, jit_mode: bool) -> State:
    """*state*'s fields as a *cls*, in *jit_mode*."""
    return cls(**{f.name: getattr(state, f.name) for f in fields(State)
                  if f.name != "jit_mode"}, jit_mode=jit_mode)


def _as_ffcv_sees_it(state: State) -> State:
    """*state* as an FFCV operation expects it: after a ``PythonState``, a plain
    ``State`` in ``jit_mode=False``."""
    if isinstance(state, PythonState) and state.jit_mode:
        return _retyped(State, state, False)
    return state


def _numpy_result(result: Any) -> bool:
    """An array, or a tuple or list of them (a decoder of several buffers)."""
    if isinstance(result, (tuple, list)):
        return all(isinstance(r, np.ndarray) for r in result)
    return isinstance(result, np.ndarray)


def _numpy_dtype(dtype: Any) -> bool:
    """True if *dtype* names a NumPy dtype (``np.uint8``, ``'<f4'``), not a torch one."""
    from ..transforms._utils import is_torch_dtype  # (the transforms import this module)

    if dtype is None or is_torch_dtype(dtype):
        return False
    try:
        np.dtype(dtype)
    except TypeError:
        return False
    return True


def _numba_or_none() -> Any:
    try:
        import numba
    except ImportError:
        return None
    return numba


class Compiler:
    """FFCV's ``Compiler``: how operations' generated functions are compiled.

    Class-wide settings, as in FFCV: ``is_enabled`` (False runs every
    generated function as plain Python) and ``num_threads``. Unlike FFCV, the
    loader never changes them, and ``set_num_threads`` leaves torch's thread
    count alone.
    """

    is_enabled: ClassVar[bool] = True
    num_threads: ClassVar[int] = 1

    @classmethod
    def set_enabled(cls, enabled: bool) -> None:
        """Compile generated functions (True, the default) or run them as Python."""
        cls.is_enabled = bool(enabled)

    @classmethod
    def set_num_threads(cls, n: int) -> None:
        """Threads for ``prange`` loops (``n < 1``: every CPU); numba's too, when installed."""
        if n < 1:
            n = default_workers()
        cls.num_threads = int(n)
        numba = _numba_or_none()
        if numba is not None:  # numba refuses more than it started with
            numba.set_num_threads(min(cls.num_threads, numba.config.NUMBA_NUM_THREADS))

    @classmethod
    def compile(cls, code: Any, signature: Any = None) -> Any:
        """*code* compiled as FFCV compiles it, or *code* itself when disabled."""
        if not cls.is_enabled:
            return code
        parallel = bool(getattr(code, "is_parallel", False)) and cls.num_threads > 1
        numba = _numba(getattr(code, "__qualname__", repr(code)))
        # a module-level function (FFCV's decoders compile memcpy in generate_code) is
        # compiled once per process, so that their closures stay the same across loaders
        key = (code, parallel, signature) if not getattr(code, "__closure__", True) else None
        if key is not None and key in _PLAIN:
            return _PLAIN[key]
        compiled = numba.njit(signature, fastmath=True, nogil=True, error_model="numpy",
                              parallel=parallel)(code)
        if key is not None:
            _PLAIN[key] = compiled
        return compiled

    @classmethod
    def get_iterator(cls) -> Any:
        """The loop to use over a batch: numba's ``prange`` with several threads, else ``range``."""
        if cls.num_threads > 1:
            numba = _numba_or_none()
            if numba is not None:
                return numba.prange
        return range


def is_numba_operation(op: Any) -> bool:
    """Whether *op* is an FFCV-style operation: it defines ``generate_code`` and
    none of fastforward's ways to run (``apply``, ``apply_sample``, ``decode_range``)."""
    if not callable(getattr(op, "generate_code", None)) or isinstance(op, NumbaOperation):
        return False
    for cls in type(op).__mro__:
        if cls.__module__.split(".", 1)[0] == "fastforward":
            continue  # fastforward's own classes (their apply is not the user's)
        if any(name in vars(cls) for name in ("apply", "apply_sample", "decode_range")):
            return False
    return True


_PARALLEL = threading.Lock()  # parallel functions run one at a time (numba's own threads)


def read_payload(ptr: Any, state: Any) -> Any:
    """FFCV's ``memory_read(ptr, storage_state)``: the bytes of the payload at *ptr*
    (a view), for decoders' generated functions (compiled when numba is used)."""
    source, pointers, offsets, sizes = state
    j = np.searchsorted(pointers, ptr)
    if j == pointers.shape[0] or pointers[j] != ptr:
        raise IndexError("memory_read: no payload of this batch starts at this pointer")
    start = offsets[j]
    return source[start : start + sizes[j]]


def _seed_numba(value: Any) -> None:
    np.random.seed(value)  # compiled: numba's generator of the calling thread


_COMPILED: dict[Any, Any] = {}


def _compiled(function: Any) -> Any:
    """*function* compiled once per process (``nogil``)."""
    if function not in _COMPILED:
        _COMPILED[function] = _numba().njit(nogil=True)(function)
    return _COMPILED[function]


def hook_function(function: Any) -> tuple[Any, bool]:
    """A function that an FFCV subclass hands over through a hook (a decoder's
    ``get_crop_generator``), ready to call as FFCV calls it: compiled
    (``Compiler.compile``, once per process) where enabled and numba is
    installed, with True; else its Python function (numba's ``py_func``), with
    False. Seed a compiled one's ``np.random`` draws with ``seed_numba``."""
    python = getattr(function, "py_func", function)
    if not Compiler.is_enabled or _numba_or_none() is None:
        return python, False
    return _compile_cached(python, None), True


def seed_numba(value: Any) -> None:
    """Seed numba's ``np.random`` on this thread (its generator is per thread)."""
    _compiled(_seed_numba)(np.uint32(int(value) & 0xFFFFFFFF))


_CACHE: dict[Any, tuple[Any, Any]] = {}  # key -> (dispatcher, what the key refers to)
_CACHE_LOCK = threading.Lock()


def _frozen(value: Any) -> Any:
    """A key for a value numba freezes into compiled code: scalars by value,
    anything else by identity (the cache keeps the object, so its id stays its own)."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return type(value), value
    if isinstance(value, tuple):
        return tuple(_frozen(v) for v in value)
    return "id", id(value)


def _compile_cached(code: Any, signature: Any) -> Any:
    """``Compiler.compile(code)``, compiled for *signature* now; reused for a function
    with the same code and the same captured values (another loader, another epoch)."""
    cells = tuple(c.cell_contents for c in code.__closure__ or ())
    parallel = bool(getattr(code, "is_parallel", False)) and Compiler.num_threads > 1
    key = (code.__code__, id(code.__globals__), _frozen(cells), _frozen(code.__defaults__),
           parallel, signature)
    with _CACHE_LOCK:
        if key not in _CACHE:
            dispatcher = Compiler.compile(code)
            if signature is not None:
                dispatcher.compile(signature)
            _CACHE[key] = (dispatcher, (cells, code.__defaults__))
        return _CACHE[key][0]


class NumbaOperation(Decoder):
    """Run an FFCV operation (``generate_code``) as a fastforward operation.

    The loader makes one for every such operation in a pipeline; it is a
    decoder when the loader binds it to a field (the first operation of a
    field's pipeline), a transform otherwise.

    Args:
        op: the FFCV operation.
    """

    transform_elsewhere = True

    def __init__(self, op: Any) -> None:
        super().__init__()
        self.op = op
        self.name = type(op).__name__
        self.role = "transform"
        self.jit = False  # compiled (else called as Python)
        self.numba_parallel = False  # compiled with parallel=True (prange on numba's threads)
        self.with_indices = False
        # the NumPy dtype a jit_mode=False operation declares (Python code on NumPy
        # batches: it returns NumPy), else None
        self.numpy_python: np.dtype | None = None
        self.compile_seconds = 0.0  # the JIT time paid at construction
        self._code: Any = None  # the function generate_code() returned
        self._fn: Any = None  # what is called: the compiled function, or _code
        self._shared: Any = None  # (query, init function) of declare_shared_memory
        self._local = threading.local()
        # what was generated and compiled, by the states it was for: shared by the
        # copies the loader makes of this object for each epoch (copy.copy), so that
        # generate_code() runs once per pipeline, as in FFCV (without recompile)
        self._prepared: dict[Any, tuple[Any, ...]] = {}

    def __repr__(self) -> str:
        return f"NumbaOperation({self.op!r})"

    def forget_compiled(self) -> None:
        """Generate and compile again at the next epoch (``Loader(recompile=True)``)."""
        self._prepared.clear()

    @property
    def releases_gil(self) -> bool:  # type: ignore[override]  # a class attribute in Operation
        """Compiled code runs without the GIL; the Python fallback keeps it."""
        return self.jit

    def __copy__(self) -> NumbaOperation:
        """The loader's per-epoch copy: it shares what was compiled (pickling does not)."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __getstate__(self) -> dict[str, Any]:
        """Configuration only (a process worker's plan holds it, and never calls it):
        compiled functions and closures stay in this process."""
        state = super().__getstate__()
        for name in ("_code", "_fn", "_shared", "_local", "_prepared", "_whole_file"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._code = self._fn = self._shared = None
        self._local = threading.local()
        self._prepared = {}

    # -- binding (decoders) -------------------------------------------------------

    def bind(self, field: Any, name: str, index: int, metadata: np.ndarray, fname: str,
             reader: Any = None) -> None:
        super().bind(field, name, index, metadata, fname, reader)
        self.role = "decoder"

    def accept_field(self, field: Any) -> None:
        super().accept_field(field)
        self.op.accept_field(field)

    def accept_globals(self, metadata: Any, memory_read: Any) -> None:
        super().accept_globals(metadata, memory_read)
        # compiled code can only call compiled functions
        usable = Compiler.is_enabled and _numba_or_none() is not None
        self.op.accept_globals(metadata, _compiled(read_payload) if usable else read_payload)

    # -- building -----------------------------------------------------------------

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, Any]:
        previous_state = _as_ffcv_sees_it(previous_state)
        state, allocation = self.op.declare_state_and_memory(previous_state)
        key = (self.role, repr(previous_state), repr(state), repr(allocation),
               Compiler.is_enabled, Compiler.num_threads)
        if key not in self._prepared:  # generated and compiled once, at Loader()
            self._prepare(previous_state, state, allocation)
            self._prepared[key] = (self._code, self._fn, self._shared, self.jit,
                                   self.numba_parallel, self.with_indices,
                                   self.compile_seconds)
        (self._code, self._fn, self._shared, self.jit, self.numba_parallel,
         self.with_indices, self.compile_seconds) = self._prepared[key]
        self.numpy_python = None
        if not state.jit_mode and _numpy_dtype(state.dtype) and str(state.device) == "cpu":
            self.numpy_python = np.dtype(state.dtype)
            # FFCV's jit_mode=False with a NumPy dtype: Python code on NumPy batches
            # (PIL, scipy, cv2), which ToTensor may follow. Its function is not
            # compiled (above); to the steps after it, batches are still NumPy.
            state = _retyped(PythonState, state, True)
        return state, allocation

    def _prepare(self, previous: State, state: State, allocation: Any) -> None:
        shared = getattr(self.op, "declare_shared_memory", None)
        shared_query = shared(previous) if shared is not None else None
        init = getattr(self.op, "generate_code_for_shared_state", None)
        init_code = init() if init is not None and shared_query is not None else None
        code = self.op.generate_code()
        if not callable(code):
            raise TypeError(f"{self.name}.generate_code() returned {code!r}, not a function")
        self.with_indices = bool(getattr(code, "with_indices", False))
        # FFCV compiles what runs in jit_mode (NumPy on the CPU); the rest is Python
        self.jit = bool(state.jit_mode) and Compiler.is_enabled and getattr(
            code, "nopython", True)
        if self.jit:
            self.numba_parallel = (bool(getattr(code, "is_parallel", False))
                                   and Compiler.num_threads > 1)
            started = time.perf_counter()
            numba = _numba(self.name)
            _compiled(_seed_numba).compile((numba.uint32,))  # called before each batch
            try:
                signature = self._types(previous, allocation, shared_query)
                fn = _compile_cached(code, signature)
                init_fn = None if init_code is None else _compile_cached(init_code, None)
            except Exception as exc:
                raise annotate(exc, f"{self.name}: numba could not compile the function "
                                    "generate_code() returned") from exc.__cause__
            self.compile_seconds = time.perf_counter() - started
        else:
            fn, init_fn = code, init_code
        self._shared = None if init_fn is None else (shared_query, init_fn)
        self._code, self._fn = code, fn

    def _types(self, previous: State, allocation: Any, shared: Any) -> Any:
        """numba's argument types for the call the loader will make, or None if unknown."""
        numba = _numba(self.name)

        def batch_of(query: Any) -> Any:
            if query is None:
                return None
            if isinstance(query, (tuple, list)):
                return tuple(batch_of(q) for q in query)
            return np.empty((0, *query.shape), np.dtype(query.dtype))

        indices = np.empty(0, np.uint64)
        if self.role == "decoder":
            args = [indices, batch_of(allocation), self.metadata, _storage_sample()]
        else:
            if previous.shape is None or not isinstance(previous.dtype, np.dtype):
                return None
            args = [np.empty((0, *previous.shape), previous.dtype), batch_of(allocation)]
        if self.with_indices:
            args.append(indices)
        if shared is not None:
            args.append(batch_of(shared))
        return tuple(numba.typeof(a) for a in args)

    # -- running ------------------------------------------------------------------

    def split_batch(self, context: BatchContext) -> bool:
        return False  # the function loops over the batch itself

    def decode_range(self, lo: int, hi: int, destination: Any, context: BatchContext) -> None:
        indices = np.ascontiguousarray(context.indices[lo:hi], dtype=np.uint64)
        state = self._storage(context, indices)
        dst = _rows(destination, lo, hi)
        try:
            result = self._call(context, [indices, dst, self.metadata, state], indices,
                                hi - lo)
            self._check_numpy(result)
        except Exception as exc:
            raise annotate(exc, f"{self.fname}: samples {listed(indices)}, "
                                f"field {self.field_name!r}, {self.name}") from exc.__cause__
        self._local.result = result

    def output(self, destination: Any, count: int) -> Any:
        result = self._local.result
        self._local.result = None
        return result

    def apply(self, batch: Any, destination: Any, context: BatchContext) -> Any:
        indices = np.ascontiguousarray(context.indices, dtype=np.uint64)
        try:
            result = self._call(context, [batch, destination], indices, len(indices))
        except Exception as exc:
            raise annotate(exc, self.name) from exc.__cause__
        self._check_numpy(result)
        return result

    def _check_numpy(self, result: Any) -> None:
        """A jit_mode=False function that declared NumPy batches returned them."""
        if self.numpy_python is not None and not _numpy_result(result):
            raise TypeError(
                f"{self.name} declares jit_mode=False with the NumPy dtype "
                f"{self.numpy_python} (NumPy batches, as FFCV reads it), but "
                f"its function returned a {type(result).__module__}."
                f"{type(result).__qualname__}: return a NumPy array, or declare the "
                "dtype of what it returns (a torch dtype for tensors, as FFCV's ToTensor)")

    def _call(self, context: BatchContext, args: list[Any], indices: np.ndarray, count: int) -> Any:
        if self.with_indices:
            args.append(indices)
        if self._shared is not None:
            query, init = self._shared
            shared = np.empty((count, *query.shape), np.dtype(query.dtype))
            init(shared)
            args.append(shared)
        if not self.jit:
            return self._fn(*args)
        # numba's np.random on this thread: a function of (seed, epoch, first sample, stream)
        first = indices[:1] if len(indices) else np.zeros(1, np.uint64)
        bits = random.random_bits(context.seed, context.epoch, first.astype(np.int64),
                                  context.stream, 1)
        _compiled(_seed_numba)(np.uint32(int(bits[0, 0]) & 0xFFFFFFFF))
        if self.numba_parallel:
            numba = _numba(self.name)
            with _PARALLEL:  # numba's thread count is per calling thread
                numba.set_num_threads(min(Compiler.num_threads, numba.config.NUMBA_NUM_THREADS))
                return self._fn(*args)
        return self._fn(*args)

    def _file_storage(self) -> tuple[Any, ...]:
        """The whole file's storage state, made once per reader: a field that
        declares no ``payload_pointers`` (FFCV's ``Field`` has no such method)
        gets no payloads with its batches, and its decoder reads its samples'
        own allocations through ``memory_read``, as FFCV's do."""
        if self.reader is None:
            raise RuntimeError(
                f"{self.name}: field {self.field_name!r} ({type(self.field).__name__}) "
                "declares no payload_pointers(), and this decoder was bound without the "
                "file's reader: memory_read cannot find its payloads")
        cached = self.__dict__.get("_whole_file")
        if cached is None or cached[0] is not self.reader:
            cached = (self.reader, file_storage_state(self.reader))
            self._whole_file = cached
        return cached[1]

    def _storage(self, context: BatchContext, indices: np.ndarray) -> tuple[Any, ...]:
        """FFCV's ``storage_state`` for this batch: what ``memory_read`` finds payloads in."""
        pointers = self.field.payload_pointers(self.metadata)
        if pointers is None:  # a custom field of FFCV's kind: any payload of the file
            return self._file_storage()
        source, offsets, sizes = context.data.field(self.field_index)
        pointers = np.asarray(pointers, np.uint64)[indices.astype(np.int64)]
        order = np.argsort(pointers, kind="stable")
        view = source.view()
        view.flags.writeable = False  # one type for every memory manager
        return (view, np.ascontiguousarray(pointers[order]),
                np.ascontiguousarray(np.asarray(offsets, np.uint64)[order]),
                np.ascontiguousarray(np.asarray(sizes, np.uint64)[order]))


def file_storage_state(reader: Any) -> tuple[Any, ...]:
    """FFCV's ``storage_state`` over the whole of *reader*'s file: every
    allocation's offset and size, sorted, and the file mapped read-only."""
    table = np.sort(reader.alloc_table, order="ptr")
    source = np.frombuffer(reader.buffer, np.uint8)
    source.flags.writeable = False
    pointers = np.ascontiguousarray(table["ptr"], dtype=np.uint64)
    return source, pointers, pointers, np.ascontiguousarray(table["size"], dtype=np.uint64)


def _storage_sample() -> tuple[Any, ...]:
    source = np.zeros(0, np.uint8)
    source.flags.writeable = False
    empty = np.zeros(0, np.uint64)
    return source, empty, empty, empty


def _rows(destination: Any, lo: int, hi: int) -> Any:
    if destination is None:
        return None
    if isinstance(destination, tuple):
        return tuple(d[lo:hi] for d in destination)
    return destination[lo:hi]

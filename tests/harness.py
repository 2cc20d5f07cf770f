"""Running an operation as the loader does, outside a loader (for the transform tests)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastforward.pipeline import AllocationQuery, BatchContext, Operation, State


def state_of(batch: Any) -> State:
    """The state a batch (NumPy array or torch tensor) arrives in."""
    if isinstance(batch, np.ndarray):
        return State(jit_mode=True, shape=batch.shape[1:], dtype=batch.dtype)
    return State(jit_mode=False, device=batch.device, shape=tuple(batch.shape[1:]),
                 dtype=batch.dtype)


def allocate(query: AllocationQuery | None, count: int) -> Any:
    """The buffer the loader would hand the operation, filled with a marker value."""
    if query is None:
        return None
    if query.device is None:
        return np.full((count, *query.shape), 77, dtype=query.dtype)
    import torch

    return torch.full((count, *query.shape), 77, dtype=query.dtype, device=query.device)


def apply_checked(op: Operation, batch: Any, ctx: BatchContext,
                  slots: int | None = None) -> tuple[Any, State]:
    """Declare, allocate as the loader does, apply; check the input is untouched and the
    output matches the declared state."""
    new_state, query = op.declare_state_and_memory(state_of(batch))
    destination = allocate(query, slots or len(batch))
    before = batch.copy() if isinstance(batch, np.ndarray) else batch.clone()
    out = op.apply(batch, destination, ctx)
    if isinstance(batch, np.ndarray):
        np.testing.assert_array_equal(batch, before, err_msg="the input was modified")
    else:
        import torch

        assert torch.equal(batch, before), "the input was modified"
        assert out.device == batch.device
        if query is not None:
            assert query.device == new_state.device
    assert isinstance(out, np.ndarray) == new_state.jit_mode
    assert out.dtype == new_state.dtype
    assert tuple(out.shape) == (len(batch), *new_state.shape)
    return out, new_state

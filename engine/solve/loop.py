"""The device loop: many steps in one ``lax.while_loop``, records in preallocated buffers.

:func:`advance` runs :func:`~.cell_step.cell_step` until ``chunk`` steps have been
accepted, a protocol step ends (the host then writes a snapshot) or the run stops.
The records of the accepted steps go to (chunk,) device buffers; the host reads them,
and the state's scalars, once per call. Quantities derived from the parameters (the
per-grain diffusion tensors, the stability limit) are computed once per call, not
per step.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ssbx.engine.solve.cell_step import RECORD_FLOAT, RECORD_INT, RECORD_INTERFACE, RUNNING, CellState, cell_step, derive
from ssbx.engine.model.protocol_table import ProtocolTable
from ssbx.engine.model.resolve import CellGeometry, CellNumerics, CellParams


@eqx.filter_jit
def advance(geometry: CellGeometry, params: CellParams, numerics: CellNumerics, protocol: ProtocolTable,
            state: CellState, x_initial, chunk: int, step=cell_step):
    """Run up to ``chunk`` accepted steps. Returns ``(state, n_recorded, records)``.

    ``step`` (static) is the step function; tests pass a wrapped one to inject faults.
    """
    dtype = state.x.dtype
    derived = derive(geometry, params, numerics)
    x_initial = jnp.asarray(x_initial, dtype)
    buffers = {name: jnp.zeros((chunk,), dtype) for name in RECORD_FLOAT + RECORD_INTERFACE}
    buffers.update({name: jnp.zeros((chunk,), jnp.int32) for name in RECORD_INT})

    def cond(carry):
        st, n, _, boundary = carry
        return (n < chunk) & (st.status == RUNNING) & ~boundary

    def body(carry):
        st, n, buf, _ = carry
        st, record, taken, boundary = step(geometry, params, numerics, protocol, derived, st, x_initial)
        # a step that is not taken stops the loop; its record at n is beyond the count
        buf = {name: buf[name].at[n].set(record[name]) for name in buf}
        return st, n + taken.astype(jnp.int32), buf, boundary

    init = (state, jnp.asarray(0, jnp.int32), buffers, jnp.asarray(False))
    state, n, buffers, _ = jax.lax.while_loop(cond, body, init)
    return state, n, buffers

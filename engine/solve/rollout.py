"""A differentiable cell cycle: a fixed number of steps in a checkpointed scan.

The device loop of :mod:`.loop` stops when an event says so (``lax.while_loop``), which
reverse mode cannot go through. :func:`rollout` runs the same :func:`~.cell_step.cell_step`
for a fixed budget of ``n_steps`` steps instead: once the protocol has finished (or the
run stopped) the remaining steps leave the state unchanged and their records are
marked invalid. The steps are grouped in blocks of ``checkpoint_every`` under
``jax.checkpoint``, so reverse mode stores one state per block and recomputes a block's
steps on the way back: memory O((n/k + k) · state) instead of O(n · state), which is
O(√n) states for k ≈ √n. The potential solves inside a step are differentiated
implicitly (``lax.custom_linear_solve`` in kernels.electrode), the Butler–Volmer
overpotential by the implicit function theorem (kernels.butler_volmer), and the
diffusion sub-steps run as a masked scan of static length.

Events and gradients: a cut-off ends a protocol step at the time interpolated between
two solves (regula falsi, see cell_step), an explicit function of the voltages, so the
end time — and the capacity delivered up to it — depends smoothly on the parameters
within one sequence of steps; its derivative is the secant form of the implicit-function
rule dt*/dp = −(∂V/∂p)/(dV/dt) at the event. Branch changes (one step more or less,
another Δt limit becoming active) are where the discrete map is not differentiable;
finite differences must stay within one branch, as the tests do.

Use::

    resolved = resolve_cell(scenario, jnp.float64)
    state = initial_state(resolved.geometry, resolved.params, resolved.x_initial)
    budget = step_budget(resolved)
    def loss(params):
        _, rec, valid = rollout(resolved.geometry, params, resolved.numerics, resolved.protocol,
                                state, resolved.x_initial, n_steps=200, max_substeps=budget)
        return ...  # any scalar of the records (V, I, Δt, Σx) where valid
    jax.grad(loss)(resolved.params)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ssbx.engine.solve.cell_step import RUNNING, CellState, cell_step, derive
from ssbx.engine.model.protocol_table import ProtocolTable
from ssbx.engine.model.resolve import CellGeometry, CellNumerics, CellParams, ResolvedCell


def step_budget(resolved: ResolvedCell, diffusivity_headroom: float = 4.0) -> int:
    """Static bound on the diffusion sub-steps of one step: ⌈Δt_user / Δt_stable⌉ for
    diffusivities up to ``diffusivity_headroom`` × the resolved maximum (a fit that
    raises D beyond it would take sub-steps above the stability limit; keep its bounds
    inside). Δt_stable includes the stress coupling's (1 + θ) (cell_step.derive)."""
    dt_stable = float(derive(resolved.geometry, resolved.params, resolved.numerics).dt_stable)
    return max(1, math.ceil(diffusivity_headroom * float(resolved.numerics.time_step_s) / dt_stable))


def rollout(geometry: CellGeometry, params: CellParams, numerics: CellNumerics, protocol: ProtocolTable,
            state: CellState, x_initial, n_steps: int, max_substeps: int, checkpoint_every: int = 0,
            observe=None):
    """Run ``n_steps`` steps (a static budget). Returns ``(state, records, valid)``:
    ``records`` are (n_steps,) arrays with the names of cell_step's records (each row
    a potential solve at its time; ``dt_s`` is the time since the previous valid row),
    ``valid`` marks the rows that were recorded. ``checkpoint_every`` (0: ⌈√n⌉) must
    divide ``n_steps`` after rounding it up; the budget is rounded up to whole blocks.
    ``observe`` (optional): a function of the state a row's solve sees (the state at the
    row's time) returning a dict of arrays, added to that row's records (e.g. SOC maps,
    engine.inverse.cell_maps).
    """
    numerics = dataclasses.replace(numerics, differentiable=True)  # the Newton loop's derivative
    k = checkpoint_every or max(1, math.isqrt(max(n_steps - 1, 0)) + 1)
    n_blocks = -(-n_steps // k)
    derived = derive(geometry, params, numerics)
    x_initial = jnp.asarray(x_initial, state.x.dtype)

    def one(st, _):
        new, record, recorded, _ = cell_step(geometry, params, numerics, protocol, derived, st, x_initial,
                                             max_substeps=max_substeps)
        if observe is not None:
            record = {**record, **observe(st)}
        running = st.status == RUNNING
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(running, a, b), new, st)
        return new, (record, recorded & running)

    @jax.checkpoint
    def block(st, _):
        return jax.lax.scan(one, st, None, length=k)

    state, (records, valid) = jax.lax.scan(block, state, None, length=n_blocks)
    flat = lambda a: a.reshape((n_blocks * k,) + a.shape[2:])  # noqa: E731
    return state, jax.tree_util.tree_map(flat, records), flat(valid)


def record_times(records, valid):
    """t_s of every row (s): the running sum of the valid rows' ``dt_s``."""
    return jnp.cumsum(jnp.where(valid, records["dt_s"], 0.0))


def delivered_charge_C(records, valid):
    """∫ I dt over the rollout (C): each valid row's ``dt_s`` times the current of the
    valid row before it (a row's current holds until the next row)."""
    n = valid.shape[0]
    last = jax.lax.cummax(jnp.where(valid, jnp.arange(n), -1), axis=0)
    before = jnp.concatenate([jnp.full((1,), -1, last.dtype), last[:-1]])
    current_before = jnp.where(before >= 0, records["current_A"][jnp.maximum(before, 0)], 0.0)
    return jnp.sum(jnp.where(valid, records["dt_s"] * current_before, 0.0))

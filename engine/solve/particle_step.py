"""The particle run's State and its chunk step on the device.

A particle run (prescribed galvanostatic surface flux, no potentials) advances with a
fixed explicit time step Δt chosen once so that snapshots fall on whole steps
(engine.runs.particle_run.time_grid). Its State is therefore small: the Li fraction
``x``, the number of accepted steps (t = n Δt, the snapshot interval is
n // steps_per_interval) and a status code. :func:`advance_particle` runs one chunk
of ``chunk`` steps in one compiled call — engine.model.particle.rollout, which the
particle fits differentiate, on the fused pair stencil (``stencil="fused"``; the
reference operator when stress-assisted transport is on) — with the guard on: a step
that would take x out of [0, 1] or make it NaN/Inf is not taken, the State freezes
at the last good step and its status says why. The host reads the State and the
chunk's records once per call; between calls the State is all there is, so writing it
to the run file (engine.io.restart) is enough to resume a run.

Cell runs have their own step (engine.solve.cell_step: Butler–Volmer, potential
solves, an adaptive Δt and a protocol table); both follow the same contract:
State in, (State, records) out, one host transfer per chunk, status codes on the
device.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ssbx.engine.model.particle import STATUS_RUNNING, ParticleGeometry, TransportParams, rollout


class ParticleState(eqx.Module):
    """Everything that changes during a particle run.

    Attributes:
        x: Li fraction c/c_max on the grid (0 outside the active phase).
        n_steps: int32, accepted explicit steps since t = 0 (t = n_steps · Δt).
        status: int32, engine.model.particle status code (STATUS_RUNNING while running).
    """

    x: jax.Array
    n_steps: jax.Array
    status: jax.Array


def particle_state_at_start(x0: jax.Array) -> ParticleState:
    """The State at t = 0 for the initial Li fraction ``x0`` (grid, 0 outside the active phase)."""
    return ParticleState(x=x0, n_steps=jnp.asarray(0, jnp.int32), status=jnp.asarray(STATUS_RUNNING, jnp.int32))


@eqx.filter_jit
def advance_particle(geometry: ParticleGeometry, params: TransportParams, state: ParticleState, chunk: int,
                     dt_s: float, block: int, coupling=None):
    """Run ``chunk`` explicit steps of Δt = ``dt_s`` from ``state``. Returns
    ``(state, n_taken, records)``: ``records`` are (chunk,) arrays ``mean_x`` and
    ``status`` per step (engine.model.particle.rollout with ``guard=True``), ``n_taken``
    the steps accepted before a stop. With stress-assisted transport (``coupling``) the
    stress is re-solved every ``block`` steps (``block`` must divide ``chunk``)."""
    # Without coupling: the fused pair stencil (kernels.diffusion_fused; one elementwise pass
    # per step, d² pair weights per voxel built once per chunk), same values as the reference
    # operator to float32 round-off and the same guard. With coupling: the reference operator
    # (the stress drift exists only there), adjoint="autodiff" reading one grain id per voxel.
    x, records = rollout(geometry, params, state.x, chunk, dt_s, checkpoint_every=block, guard=True,
                         coupling=coupling, adjoint="autodiff",
                         stencil="reference" if coupling is not None else "fused")
    n_taken = jnp.sum(records["status"] == STATUS_RUNNING).astype(jnp.int32)
    status = jnp.where(n_taken < chunk, records["status"][jnp.minimum(n_taken, chunk - 1)], STATUS_RUNNING)
    return ParticleState(x=x, n_steps=state.n_steps + n_taken, status=status.astype(jnp.int32)), n_taken, records

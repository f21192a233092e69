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


def particle_stencil(coupling=None) -> str:
    """The diffusion operator of a particle run's steps (engine.model.particle.rollout's
    ``stencil``): the fused pair stencil (kernels.diffusion_fused; one elementwise pass per
    step, d² pair weights per voxel built once per chunk; same values and guard as the
    reference operator to float32 round-off) on CPUs, where a guarded chunk runs 2.6–3.4×
    faster at 128³–64³ (benchmarks/particle_run_speed.py). On a GPU the reference
    operator: there the fused XLA step measured 0.74× the reference's speed at 256³
    (benchmarks/roofline.py on an H200, docs/performance.md), since it moves 49 B per voxel
    against 16 and arithmetic is cheap. With stress coupling always the reference operator
    (the stress drift exists only there)."""
    if coupling is not None or jax.default_backend() != "cpu":
        return "reference"
    return "fused"


@eqx.filter_jit
def advance_particle(geometry: ParticleGeometry, params: TransportParams, state: ParticleState, chunk: int,
                     dt_s: float, block: int, coupling=None, coefficients=None):
    """Run ``chunk`` explicit steps of Δt = ``dt_s`` from ``state``. Returns
    ``(state, n_taken, records)``: ``records`` are (chunk,) arrays ``mean_x`` and
    ``status`` per step (engine.model.particle.rollout with ``guard=True``), ``n_taken``
    the steps accepted before a stop. With stress-assisted transport (``coupling``) the
    stress is re-solved every ``block`` steps (``block`` must divide ``chunk``), each
    solve starting from the previous one's solution (``warm_stress``; the chunk's first
    from zero, so a resumed run repeats an uninterrupted one bit for bit).
    ``coefficients``: the fused stencil's pair weights built once per run
    (engine.model.particle.fused_stencil_coefficients), when :func:`particle_stencil` is
    ``"fused"``; without them every chunk rebuilds them (8 % of a chunk at 128³)."""
    x, records = rollout(geometry, params, state.x, chunk, dt_s, checkpoint_every=block, guard=True,
                         coupling=coupling, adjoint="autodiff", stencil=particle_stencil(coupling),
                         fused_coefficients=coefficients, warm_stress=True)
    n_taken = jnp.sum(records["status"] == STATUS_RUNNING).astype(jnp.int32)
    status = jnp.where(n_taken < chunk, records["status"][jnp.minimum(n_taken, chunk - 1)], STATUS_RUNNING)
    return ParticleState(x=x, n_steps=state.n_steps + n_taken, status=status.astype(jnp.int32)), n_taken, records

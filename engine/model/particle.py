"""The differentiable particle model: geometry + parameters -> time stepper.

:class:`ParticleGeometry` holds the fixed voxel data (grain ids, reactive face counts),
:class:`TransportParams` the quantities one may differentiate with respect to
(principal diffusivities, grain orientations, the surface flux, c_max). Both are
equinox Modules (pytrees), so ``jax.grad`` with respect to ``TransportParams`` works
directly and ``eqx.filter_jit`` compiles once per grid shape.

:func:`rollout` advances the state with one ``lax.scan`` over blocks of
``checkpoint_every`` explicit steps; each block is wrapped in ``jax.checkpoint``, so
reverse mode stores one state per block (n_steps / k of them) and recomputes the k
steps of a block during the backward pass: memory O((n/k + k) · grid) instead of
O(n · grid), for about one extra forward pass of compute.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ssbx.kernels import diffusion as kdiff
from ssbx.kernels import diffusion_fused as kfused
from ssbx.kernels.rotations import quaternion_to_matrix

from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.microstructure import Microstructure

STATUS_RUNNING = 0
STATUS_BELOW_ZERO = 1
STATUS_ABOVE_ONE = 2
STATUS_NOT_FINITE = 3
STATUS_TEXT = {
    STATUS_RUNNING: "running",
    STATUS_BELOW_ZERO: "Li content x fell below 0 in an active voxel",
    STATUS_ABOVE_ONE: "Li content x rose above 1 in an active voxel",
    STATUS_NOT_FINITE: "the Li content became NaN/Inf",
}


class ParticleGeometry(eqx.Module):
    """Fixed voxel data of a particle.

    Attributes:
        grain_id: int32 grid, −1 outside the active phase.
        face_count: per-voxel reactive surface area in units of h² (float grid; the
            number of reactive faces, corrected for the staircase by
            :meth:`Microstructure.reactive_area_faces`).
        voxel_size_m: voxel edge, m (static).
    """

    grain_id: jax.Array
    face_count: jax.Array
    voxel_size_m: float = eqx.field(static=True)

    @property
    def ndim(self) -> int:
        return self.grain_id.ndim

    @property
    def voxel_volume_m3(self) -> float:
        return self.voxel_size_m**self.ndim

    @property
    def reactive_area_m2(self) -> jax.Array:
        """Total reactive face area (in 2D: per metre of depth, m)."""
        return jnp.sum(self.face_count) * self.voxel_size_m ** (self.ndim - 1)

    @classmethod
    def from_microstructure(cls, micro: Microstructure, dtype=jnp.float32) -> "ParticleGeometry":
        return cls(
            grain_id=jnp.asarray(micro.grain_id, dtype=jnp.int32),
            face_count=jnp.asarray(micro.reactive_area_faces(), dtype=dtype),
            voxel_size_m=float(micro.voxel_size_m),
        )


class TransportParams(eqx.Module):
    """Differentiable transport parameters (SI units).

    Attributes:
        diffusivity_m2_s: (3,) principal diffusivities along [100], [010], [001].
        orientations: (n_grains, 4) unit quaternions.
        flux_mol_m2_s: Li flux density into the particle through reactive faces
            (negative on charge/delithiation).
        c_max_mol_m3: maximum Li concentration.
    """

    diffusivity_m2_s: jax.Array
    orientations: jax.Array
    flux_mol_m2_s: jax.Array
    c_max_mol_m3: jax.Array


def component_table(params: TransportParams, ndim: int) -> jax.Array:
    """Per-grain packed diffusion tensor components, m²/s."""
    rotations = quaternion_to_matrix(params.orientations)
    tensors = kdiff.grain_diffusion_tensors(rotations, params.diffusivity_m2_s, ndim)
    return kdiff.tensor_components(tensors)


def li_rate(geometry: ParticleGeometry, params: TransportParams, x: jax.Array) -> jax.Array:
    """∂x/∂t of the particle (diffusion + prescribed surface flux), 1/s."""
    table = component_table(params, geometry.ndim)
    source = kdiff.surface_flux_rate(
        params.flux_mol_m2_s, geometry.face_count, params.c_max_mol_m3, geometry.voxel_size_m
    )
    return kdiff.diffusion_rate(x, geometry.grain_id, table, geometry.voxel_size_m, source)


def _status_of(x, active):
    below = jnp.any(active & (x < 0))
    above = jnp.any(active & (x > 1))
    finite = jnp.all(jnp.isfinite(x))
    return jnp.where(
        ~finite,
        STATUS_NOT_FINITE,
        jnp.where(below, STATUS_BELOW_ZERO, jnp.where(above, STATUS_ABOVE_ONE, STATUS_RUNNING)),
    ).astype(jnp.int32)


def rollout(
    geometry: ParticleGeometry,
    params: TransportParams,
    x0: jax.Array,
    n_steps: int,
    dt_s: float,
    checkpoint_every: int = 16,
    guard: bool = False,
    adjoint: str = "symmetric",
    coupling=None,
    stencil: str = "auto",
    fused_coefficients=None,
    warm_stress: bool = False,
):
    """Advance ``n_steps`` explicit steps; returns ``(x_final, per_step)``.

    ``adjoint`` chooses how reverse mode goes through a step: ``"symmetric"`` (default)
    runs the fused pair stencil of kernels.diffusion_fused in blocks of
    ``checkpoint_every`` steps (kernels.diffusion_fused.symmetric_block, a hand-written
    block adjoint by the operator's symmetry; docs/gradients.md) when there is no stress
    coupling and no guard, and otherwise kernels.diffusion.symmetric_operator, whose
    hand-written VJP also exploits the symmetry; both gather the per-grain tensor once
    per rollout;
    ``"autodiff"`` lets JAX transpose the step, which also supports forward mode
    (jvp/jacfwd, as the Laplace uncertainty needs). Values are identical. The
    symmetric path keeps the six tensor components per voxel (nine pair weights in
    the fused case) for the whole rollout;
    ``"autodiff"`` on the reference operator reads only the grain id and gathers from
    the per-grain table every step (one int per voxel of parameters; XLA's estimate of a
    whole guarded chunk is nevertheless about the same as the fused one's, ~100 B per
    voxel, docs/particle_runs.md).

    ``coupling`` (an engine.physics.mechanics.StressCoupling) turns on stress-assisted
    transport. The stress potential χ is solved at the start of every block of
    ``checkpoint_every`` steps, χ_s = χ(x_s), and carried through the block with the
    voxel's own response, χ ≈ χ_s − θ (x − x_s) (θ: StressCoupling.local_theta).
    Holding χ fixed instead would apply the stress feedback k steps late, which is
    unstable for high-frequency modes once k Δt θ D 4d/h² > 2. With the local update
    the lag only affects the non-local rest, and the result is exact for homogeneous
    isotropic bodies. The caller keeps Δt below the limit for D (1 + θ).

    ``per_step`` is a dict of (n_steps,) arrays: ``mean_x`` (mean over active voxels
    after each step) and ``status``. With ``guard=True`` a step that would leave
    x ∉ [0, 1] on an active voxel, or produce NaN/Inf, is not taken: the state freezes
    at the last valid step and ``status`` records why (see ``STATUS_TEXT``); the stop
    costs nothing extra in the differentiable path because ``guard=False`` by default.

    ``stencil`` chooses the forward operator: ``"auto"`` (default) as described above
    (the fused pair stencil for ``adjoint="symmetric"`` without coupling or guard, the
    reference operator otherwise); ``"fused"`` forces the fused pair stencil of
    kernels.diffusion_fused whenever there is no stress coupling, also with the guard or
    ``adjoint="autodiff"`` (:func:`_rollout_fused_stepwise`: one fused elementwise pass
    per step; a guarded chunk 2.6–3.4× faster than the reference operator's at
    128³–64³ on a 2-core CPU, benchmarks/particle_run_speed.py; same values to float32
    round-off; d² pair weights per voxel instead of one grain id; reverse and forward
    mode by JAX's own transpose of the step); ``"reference"`` forces
    kernels.diffusion. Production particle runs (engine.solve.particle_step) ask for
    ``"fused"``. With ``coupling`` only the reference operator exists: ``"fused"`` is
    refused.

    ``fused_coefficients`` (with ``stencil="fused"`` only): the fused stencil's pair
    weights from :func:`fused_stencil_coefficients` of the same ``geometry`` and ``params``, built
    once by a caller that runs many rollouts with fixed parameters (a particle run's
    chunks), instead of once per rollout. Derivatives w.r.t. ``params`` then do not reach
    the weights (they are the caller's constant).

    ``warm_stress`` (with ``coupling``): each block's stress solve starts CG from the
    previous block's solution (the first from zero) instead of from zero. CG stops by the
    same relative-residual rule, so χ agrees with a cold solve to the solver tolerance,
    not bit for bit. Between nearby blocks the change is small: on the default particle
    with stress-assisted transport, mid-run, 9 CG iterations instead of 24
    (benchmarks/coupled_particle_speed.py). The displacement (3 fields) then rides in
    the block carry, so a differentiated rollout would store 4 fields per block
    instead of one; forward runs (engine.solve.particle_step) switch it on, the default
    is off.

    ``n_steps`` must be a multiple of ``checkpoint_every`` (the block length of the
    checkpointed scan; see the module docstring for the memory trade-off).
    """
    if n_steps % checkpoint_every:
        raise ValueError(
            f"n_steps = {n_steps} must be a multiple of checkpoint_every = {checkpoint_every}"
        )
    if adjoint not in ("symmetric", "autodiff"):
        raise ValueError(f"adjoint = {adjoint!r}; valid: 'symmetric' or 'autodiff'")
    if stencil not in ("auto", "fused", "reference"):
        raise ConfigError(f"stencil = {stencil!r}; valid: 'auto', 'fused' or 'reference'")
    if stencil == "fused" and coupling is not None:
        raise ConfigError("stencil = 'fused' with stress coupling: the fused pair stencil has no stress "
                          "drift; valid with coupling: stencil = 'auto' or 'reference'")
    if fused_coefficients is not None and (stencil != "fused" or (adjoint == "symmetric" and not guard)):
        raise ValueError("fused_coefficients are used by stencil = 'fused' with guard = True or "
                         "adjoint = 'autodiff' only (the step-by-step fused path)")
    table = component_table(params, geometry.ndim)
    source = kdiff.surface_flux_rate(
        params.flux_mol_m2_s, geometry.face_count, params.c_max_mol_m3, geometry.voxel_size_m
    )
    active = geometry.grain_id >= 0
    n_active = jnp.maximum(jnp.sum(active), 1)
    symmetric = adjoint == "symmetric"
    inv_h = 1.0 / geometry.voxel_size_m
    if coupling is None and stencil != "reference":
        if symmetric and not guard:
            return _rollout_fused(geometry, table, source, active, n_active, x0, n_steps, dt_s,
                                  checkpoint_every)
        if stencil == "fused":
            return _rollout_fused_stepwise(geometry, table, source, active, n_active, x0, n_steps, dt_s,
                                           checkpoint_every, guard, fused_coefficients)
    comps = kdiff.voxel_components(table, geometry.grain_id) if (symmetric or coupling is not None) else None
    if symmetric:
        source = jnp.where(active, source, 0.0)

        def advance(x):
            return x + dt_s * (kdiff.symmetric_operator(x, comps, active, inv_h) + source)
    else:
        def advance(x):
            return kdiff.explicit_step(x, dt_s, geometry.grain_id, table, geometry.voxel_size_m, source)

    def step(carry, frozen):
        x, status = carry
        x_new = advance(x)
        if coupling is not None:
            chi_s, x_s, theta = frozen
            chi = jnp.where(active, chi_s - theta * (x - x_s), 0.0)
            x_new = x_new + dt_s * kdiff.stress_drift_rate(x, chi, comps, active, inv_h, symmetric)
        if guard:
            new_status = jnp.where(status == STATUS_RUNNING, _status_by_rank(x_new, active), status)
            x_new = jnp.where(new_status == STATUS_RUNNING, x_new, x)
        else:
            new_status = status
        mean_x = jnp.sum(jnp.where(active, x_new, 0)) / n_active
        return (x_new, new_status), {"mean_x": mean_x, "status": new_status}

    warm = warm_stress and coupling is not None

    @jax.checkpoint
    def block(carry, _):
        guess = None
        if warm:
            carry, guess = carry[:2], carry[2]
        if coupling is None:
            frozen = None
        else:
            x_s = carry[0]
            if warm:
                chi_s, guess = coupling.potential_warm(params.orientations, params.c_max_mol_m3, x_s, active, guess)
            else:
                chi_s = coupling.potential(params.orientations, params.c_max_mol_m3, x_s, active)
            frozen = (chi_s, x_s, coupling.local_theta(params.c_max_mol_m3))
        carry, per_step = jax.lax.scan(lambda c, _: step(c, frozen), carry, None, length=checkpoint_every)
        return (carry + (guess,) if warm else carry), per_step

    init = (x0, jnp.asarray(STATUS_RUNNING, jnp.int32))
    if warm:
        init = init + (coupling.zero_guess(x0.dtype),)
    final, per_block = jax.lax.scan(block, init, None, length=n_steps // checkpoint_every)
    x_final = final[0]
    per_step = jax.tree_util.tree_map(lambda a: a.reshape((n_steps,) + a.shape[2:]), per_block)
    return x_final, per_step


def _rollout_fused(geometry, table, source, active, n_active, x0, n_steps, dt_s, checkpoint_every):
    """The symmetric adjoint without stress coupling or guard: the fused pair stencil.

    Blocks of ``checkpoint_every`` steps are kernels.diffusion_fused.symmetric_block,
    whose reverse pass recomputes the block from its first state and applies the same
    stencil to the cotangent (the operator is symmetric), summing one product of
    neighbour differences per pair weight (d² fields). Memory: one padded state per
    block plus the states of one block during the reverse pass. The pair weights are
    built once per rollout from the per-grain table (kernels.diffusion_fused.prepare),
    so the per-grain cotangent is one transpose of that map. Values equal the reference
    operator's to float32 round-off (tests/test_gradient_cost.py). Non-active voxels keep
    their x0 (every weight touching them is zero), as in the reference path.
    """
    weights = kfused.prepare(geometry.grain_id, table, geometry.voxel_size_m).weights
    source = jnp.where(active, source, 0.0)
    mask = active.astype(weights.dtype)

    def block(xp, _):
        xp_new, sums = kfused.symmetric_block(xp, weights, source, mask, dt_s, checkpoint_every)
        return xp_new, sums / n_active

    xp_final, mean_x = jax.lax.scan(block, kfused.pad_state(x0), None,
                                    length=n_steps // checkpoint_every)
    status = jnp.full((n_steps,), STATUS_RUNNING, jnp.int32)
    return kfused.interior(xp_final), {"mean_x": mean_x.reshape(n_steps), "status": status}


# _status_of as one max-reduction: each voxel's worst finding, ranked by the priority
# _status_of gives them (NaN/Inf anywhere > below 0 > above 1 on an active voxel)
_RANK_ABOVE, _RANK_BELOW, _RANK_NOT_FINITE = 1, 2, 3
_RANK_TO_STATUS = (STATUS_RUNNING, STATUS_ABOVE_ONE, STATUS_BELOW_ZERO, STATUS_NOT_FINITE)


def _status_by_rank(x, active):
    """Same value as :func:`_status_of` (the definition) from a single reduction over the grid.

    The guard of both rollout paths uses it: _status_of's three reductions (any below,
    any above, all finite) over the output of a fused stencil step make XLA recompute
    the step in each of them (the guarded fused step cost 3.5× the unguarded one on a
    CPU); one max of a per-voxel rank keeps the guard at ~10 % of the step.
    """
    rank = jnp.where(~jnp.isfinite(x), _RANK_NOT_FINITE,
                     jnp.where(active & (x < 0), _RANK_BELOW, jnp.where(active & (x > 1), _RANK_ABOVE, 0)))
    return jnp.asarray(_RANK_TO_STATUS, jnp.int32)[jnp.max(rank)]


def _rollout_fused_stepwise(geometry, table, source, active, n_active, x0, n_steps, dt_s, checkpoint_every,
                            guard, coeffs=None):
    """The fused pair stencil one step at a time, with the guard (``stencil="fused"``).

    Each step is kernels.diffusion_fused.step_padded on the padded state (one elementwise
    pass), then, with ``guard``, the same test as the reference path: the step is taken
    only while the status of its result is STATUS_RUNNING (x ∈ [0, 1] on every active
    voxel, no NaN/Inf anywhere, no tolerance; :func:`_status_by_rank`, equal to
    :func:`_status_of`), else the state stays at the last good step and the status keeps
    the first reason. Non-active voxels keep x0 (the fused rate is masked to the active
    phase). ``mean_x`` is the mean over active voxels of the state after each step, as in
    the reference path (the sum of a refused step is replaced by the last good one's).

    Blocks of ``checkpoint_every`` steps are ``jax.checkpoint``-ed like the reference
    path's, and reverse/forward mode go through JAX's transpose of the step (plain jnp,
    static slices), so ``adjoint="autodiff"`` semantics hold. Memory: the d² pair
    weights (9 in 3D, 4 in 2D) padded by one voxel, the padded state, the mask and the
    source, i.e. about d² + 5 words per voxel against one grain id and about five words
    for the reference operator. ``coeffs``: the pair weights if the caller built them
    (:func:`fused_stencil_coefficients`), else built here.
    """
    if coeffs is None:
        coeffs = kfused.prepare(geometry.grain_id, table, geometry.voxel_size_m)
    source = jnp.where(active, source, 0.0)
    mask = active.astype(coeffs.weights.dtype)

    def step(carry, _):
        xp, status, total = carry
        xp_new = kfused.step_padded(xp, coeffs, dt_s, source)
        x_new = kfused.interior(xp_new)
        total_new = jnp.sum(mask * x_new)
        if guard:
            new_status = jnp.where(status == STATUS_RUNNING, _status_by_rank(x_new, active), status)
            taken = new_status == STATUS_RUNNING
            xp_new = jnp.where(taken, xp_new, xp)
            total_new = jnp.where(taken, total_new, total)
        else:
            new_status = status
        return (xp_new, new_status, total_new), {"mean_x": total_new / n_active, "status": new_status}

    @jax.checkpoint
    def block(carry, _):
        return jax.lax.scan(step, carry, None, length=checkpoint_every)

    init = (kfused.pad_state(x0), jnp.asarray(STATUS_RUNNING, jnp.int32), jnp.sum(mask * x0))
    (xp_final, _, _), per_block = jax.lax.scan(block, init, None, length=n_steps // checkpoint_every)
    per_step = jax.tree_util.tree_map(lambda a: a.reshape((n_steps,) + a.shape[2:]), per_block)
    return kfused.interior(xp_final), per_step


def fused_stencil_coefficients(geometry: ParticleGeometry, params: TransportParams):
    """The fused pair stencil's weights for ``geometry`` and ``params``
    (kernels.diffusion_fused.prepare of :func:`component_table`), for
    ``rollout(..., stencil="fused", fused_coefficients=...)``."""
    return kfused.prepare(geometry.grain_id, component_table(params, geometry.ndim), geometry.voxel_size_m)


def initial_state(geometry: ParticleGeometry, x_initial: float, dtype=jnp.float32) -> jax.Array:
    """Uniform Li content ``x_initial`` on active voxels, 0 elsewhere."""
    return jnp.where(geometry.grain_id >= 0, jnp.asarray(x_initial, dtype), jnp.asarray(0, dtype))


def galvanostatic_flux(c_rate: float, sign: float, c_max_mol_m3: float, active_volume: float,
                       reactive_area: float) -> float:
    """Uniform surface flux density for a C-rate, mol/(m² s).

    1C moves the theoretical capacity c_max·V_active in one hour, so the flux through
    the reactive area A is j = sign · C · c_max V / (3600 s · A). ``sign`` = +1 for
    lithiation, −1 for delithiation (charge).
    """
    if reactive_area <= 0:
        raise ValueError(
            "the particle has no reactive surface faces (reactive_fraction = 0 or no ion "
            "conductor around it): a prescribed-flux run needs at least one"
        )
    return float(sign * c_rate * c_max_mol_m3 * active_volume / (3600.0 * reactive_area))


def li_amount_mol(geometry: ParticleGeometry, x, c_max_mol_m3) -> np.ndarray:
    """M_Li = c_max h^d Σ x over active voxels, mol (in 2D: mol per metre of depth)."""
    active = np.asarray(geometry.grain_id) >= 0
    return float(c_max_mol_m3) * geometry.voxel_volume_m3 * float(np.sum(np.asarray(x, np.float64)[active]))

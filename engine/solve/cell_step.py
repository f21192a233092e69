"""One electrochemical step of a cell, as a pure function of (geometry, params, state).

:func:`cell_step` does on the device what the host-side loop of engine/runs/host_cell.run_cell
did in NumPy between kernel calls (engine/runs/host_cell.py documents the physics in full):

1. Control from the protocol table at ``state.pointer``: a CC step applies
   sign · C-rate · I_1C, a rest 0 A (both current control), a CV step holds its voltage
   (voltage control). Newton iterations on the Butler–Volmer current of every reactive
   active | ion-conductor face, each a linearised coupled potential solve
   (kernels.electrode.solve_coupled), warm-started from the previous step. This solve,
   at the state's time t_n, is the step's record: V, I and M_Li belong to the same time.
2. Cut-offs on that solve: a CC step ends when V is within ``cutoff_tolerance_V`` of its
   limit (or past it), a CV step when |I| ≤ (1 + ``cutoff_tolerance``) I_cut, any step
   at its time cap; then the pointer moves on and x is not advanced.
3. Otherwise the adaptive step Δt = min(Δt_user, Δt_x, τ_min, t_cut, time left):
   Δt_x lets no surface voxel cover more than half its distance to x = 0 or 1 under its
   current; τ_min = min F c_max h^d / (Σ_f G_f |U'(x)|) is the kinetic relaxation time
   beyond which frozen currents overshoot; t_cut is the cut-off's predicted time
   (linear extrapolation of V, or |I|, from the previous record; at least 10⁻³ Δt_user),
   so a step ends on its cut-off instead of up to a whole step past it.
   Δt_x or τ_min below 10⁻³ Δt_user stops the run (a voxel is about to empty or fill).
4. Li diffusion over Δt in ⌈Δt/Δt_stable⌉ explicit sub-steps on the particle's
   bounding box, the face currents entering as the surface source. With
   stress-assisted transport (``params.coupling``) the stress of the whole cell is
   re-solved on the device every ``numerics.stress_every_steps`` accepted steps and the
   Li flux gains the drift −D x ∇χ, χ = σ : B / (c_max R T) (engine.physics.mechanics.
   StressCoupling), χ carried between solves by each voxel's own Eshelby response.
5. Events: NaN/Inf in V, I or x, or a step that would take x out of [0, 1], stop the
   run at the last good state (that step is not taken); the end of the protocol
   finishes it. Nothing returns to the host.

Every physical parameter comes from :class:`~.resolve.CellParams` (array leaves).
Units: SI; x = c/c_max; φ_s is carried shifted by the reference voltage ``v_ref``
(φ_s − v_ref, re-centred on each new cell voltage) so that float32 resolves
overpotentials of a 4 V cell.
"""

from __future__ import annotations

from typing import NamedTuple

import functools

import equinox as eqx
import jax
import jax.numpy as jnp

from ssbx.kernels import butler_volmer as kbv
from ssbx.kernels import diffusion as kdiff
from ssbx.kernels.constants import FARADAY, GAS_CONSTANT
from ssbx.kernels.conduction import log_interpolated_conductivity
from ssbx.kernels.electrode import face_potential_drop, neighbour, solve_coupled, unit_rtol
from ssbx.kernels.ocv import get_ocv
from ssbx.kernels.rotations import quaternion_to_matrix

from ssbx.engine.physics.interface import layer_statistics, positive_gap, solve_debonding
from ssbx.engine.model.protocol_table import CC, CV, ProtocolTable
from ssbx.engine.model.resolve import CellGeometry, CellNumerics, CellParams

INEXACT_RTOL = 1e-3  # CG tolerance of the settled Newton iterations before the last (potentials)
MAX_CORRECTIONS = 6  # corrective steps per cut-off (regula falsi from the last record)

RUNNING = 0
FINISHED = 1
STOP_TIME_STEP = 2  # Δt fell below 1e-3 of the user step (not taken)
STOP_X_BOUNDS = 3  # the step would take x out of [0, 1] in an active voxel (not taken)
DIVERGED_SOLVE = 4  # the potential solve gave NaN/Inf (not taken)
DIVERGED_X = 5  # x became NaN/Inf (not taken)
STOP_MECHANICS = 6  # the interface solve (CG or its active set) did not converge (not taken)

STRESS_DUE = 2**30  # ``since_stress`` that makes the next advancing step solve the stress

# record names, one record per solve at its time t_n: dt_s is the time since the previous
# record, dx_sum is Σ (x − x_initial) over active voxels at t_n
RECORD_FLOAT = ("dt_s", "voltage_V", "current_A", "dx_sum", "bv_residual")
# with [interface]: the layers' state at t_n (from the last interface solve) and the mean
# interfacial voltage drop R_int(g) |i| over the reactive area (0 without debonding)
RECORD_INTERFACE = ("gap_mean_m", "gap_max_m", "damaged_area_fraction", "debonded_area_fraction",
                    "interface_drop_V")
RECORD_INT = ("step_index", "cycle_index", "cg_iterations", "newton_iterations")


class CellState(eqx.Module):
    """Everything that changes during a cell run.

    Grids: ``x`` (Li fraction, 0 outside the active phase), ``phi_s`` (φ_s − v_ref, V),
    ``phi_e`` (V), ``voxel_current`` (A per active voxel, > 0 = delithiation) and
    ``warm`` ((2, 2, *grid) superposition fields that warm-start the next solve).
    Scalars: ``v_ref`` (V), ``voltage`` and ``current`` of the last solve (V, A),
    ``pending_dt_s`` the time advanced since the last record (s), ``prev_voltage``,
    ``prev_current``, ``prev_dt_s`` the last record's V and I and the step taken after
    it (0 at the start of a protocol step; for the cut-off prediction), ``x_prev`` and
    ``current_prev`` the last record's Li fraction and face currents and ``corrections``
    the number of corrective steps taken from them (for a cut-off overshot), ``t_step_s``
    time spent in the current protocol step (s), ``pointer`` (cycle · n_steps + step),
    ``status`` (RUNNING, ...) and ``n_taken`` (records so far).
    With stress-assisted transport: ``chi`` (χ of the last stress solve, on active
    voxels), ``x_stress`` (the Li fraction it was solved for) and ``since_stress``
    (accepted steps since); all three are None without it.
    With debonding (``params.debonding``): ``kappa`` the cohesive history κ (m, grid;
    irreversible maximum effective opening of each layer), ``gap`` and ``damage`` per
    layer from the last interface solve (⟨g_n⟩₊ in m; d ∈ [0, 1]), ``since_mech`` the
    accepted steps and ``mech_elapsed_s`` the time since that solve, ``damage_rate`` the
    largest damage change per second seen by the last solve (1/s, step control).
    """

    x: jax.Array
    phi_s: jax.Array
    phi_e: jax.Array
    voxel_current: jax.Array
    warm: jax.Array
    v_ref: jax.Array
    voltage: jax.Array
    current: jax.Array
    pending_dt_s: jax.Array
    prev_voltage: jax.Array
    prev_current: jax.Array
    prev_dt_s: jax.Array
    x_prev: jax.Array
    current_prev: jax.Array
    corrections: jax.Array
    t_step_s: jax.Array
    pointer: jax.Array
    status: jax.Array
    n_taken: jax.Array
    chi: jax.Array | None = None
    x_stress: jax.Array | None = None
    since_stress: jax.Array | None = None
    kappa: jax.Array | None = None
    gap: jax.Array | None = None
    damage: jax.Array | None = None
    since_mech: jax.Array | None = None
    mech_elapsed_s: jax.Array | None = None
    damage_rate: jax.Array | None = None


def initial_state(geometry: CellGeometry, params: CellParams, x_initial: float, dtype=jnp.float32) -> CellState:
    """Uniform Li fraction, zero potentials and currents, at the start of the protocol
    (with stress-assisted transport, the first step that advances x solves the stress)."""
    x = jnp.where(geometry.active, jnp.asarray(x_initial, dtype), jnp.asarray(0.0, dtype))
    zero = jnp.zeros_like(x)
    scalar = lambda v: jnp.asarray(v, dtype)  # noqa: E731
    stress = {}
    if params.coupling is not None:
        stress = dict(chi=zero, x_stress=x, since_stress=jnp.asarray(STRESS_DUE, jnp.int32))
    if params.debonding is not None:
        m = geometry.cohesive.layers.normals.shape[0]
        stress.update(kappa=zero, gap=jnp.zeros(m, dtype), damage=jnp.zeros(m, dtype),
                      since_mech=jnp.asarray(STRESS_DUE, jnp.int32), mech_elapsed_s=scalar(0.0),
                      damage_rate=scalar(0.0))
    return CellState(
        x=x, phi_s=zero, phi_e=zero, voxel_current=zero, warm=jnp.zeros((2, 2) + x.shape, dtype),
        v_ref=scalar(get_ocv(params.ocv_name)(jnp.asarray(x_initial, dtype))),
        voltage=scalar(0.0), current=scalar(0.0), pending_dt_s=scalar(0.0), prev_voltage=scalar(0.0),
        prev_current=scalar(0.0), prev_dt_s=scalar(0.0), x_prev=x, current_prev=zero,
        corrections=jnp.asarray(0, jnp.int32), t_step_s=scalar(0.0),
        pointer=jnp.asarray(0, jnp.int32), status=jnp.asarray(RUNNING, jnp.int32),
        n_taken=jnp.asarray(0, jnp.int32), **stress,
    )


class Derived(NamedTuple):
    """Per-chunk quantities derived from the parameters (not per step)."""

    component_table: jax.Array  # per-grain packed diffusion tensor, m²/s
    face_diffusivity: tuple  # per face group: D_kk of the face voxel's grain (m²/s)
    dt_stable: jax.Array  # explicit diffusion limit (s)
    theta: jax.Array | None  # stress coupling: −∂χ/∂x of a voxel's own Li (StressCoupling.local_theta)


def derive(geometry: CellGeometry, params: CellParams, numerics: CellNumerics) -> Derived:
    """The per-grain diffusion tensors and the explicit stability limit
    Δt_stable = safety · h² / (2 d D_max (1 + θ)) (θ = 0 without stress coupling: the
    drift adds θ D to the effective diffusivity, see engine.physics.mechanics.StressCoupling)."""
    ndim = geometry.ndim
    rotations = quaternion_to_matrix(params.orientations)
    table = kdiff.tensor_components(kdiff.grain_diffusion_tensors(rotations, params.diffusivity_m2_s, ndim))
    gid = geometry.grain_id.reshape(-1)
    face_d = tuple(table[gid[idx], ax] for idx, ax in zip(geometry.face_index, geometry.axes))
    h = geometry.voxel_size_m
    theta = None if params.coupling is None else params.coupling.local_theta(params.c_max_mol_m3)
    d_eff = jnp.max(params.diffusivity_m2_s) * (1.0 if theta is None else 1.0 + jnp.maximum(theta, 0.0))
    dt_stable = numerics.time_step_safety * h**2 / (2.0 * ndim * d_eff)
    return Derived(table, face_d, dt_stable, theta)


def electronic_conductivity(geometry: CellGeometry, params: CellParams, x) -> jax.Array:
    """σ_s per voxel (S/m): the phase value, or the x-dependent law in active voxels."""
    sigma = params.phase_sigma_s[geometry.labels]
    if params.active_sigma_x is None:
        return sigma
    law = log_interpolated_conductivity(x, params.active_sigma_x, params.active_sigma_S_m)
    return jnp.where(geometry.active, law.astype(sigma.dtype), sigma)


def ionic_conductivity(geometry: CellGeometry, params: CellParams) -> jax.Array:
    return params.phase_sigma_e[geometry.labels]


def exchange_current(params: CellParams, x):
    """i0(x) = i0_ref (1 − x)^α_a x^α_c / 0.5^(α_a+α_c) (A/m²), i0(½) = i0_ref."""
    x = jnp.clip(x, 1e-6, 1 - 1e-6)
    norm = 0.5 ** (params.alpha_a + params.alpha_c)
    return params.exchange_current_A_m2 * (1 - x) ** params.alpha_a * x**params.alpha_c / norm


def anode_potential(geometry: CellGeometry, params: CellParams, current_A):
    """φ_e on the Li | SE face for a total cell current (A, > 0 = charge = plating):
    symmetric Li kinetics, η_Li = (2RT/F) asinh(i_Li / 2 i0_Li)."""
    i_li = -current_A / geometry.cell_area_m2
    f = FARADAY / (GAS_CONSTANT * params.temperature_K)
    return -(2.0 / f) * jnp.arcsinh(i_li / (2.0 * params.anode_exchange_current_A_m2))


@jax.custom_jvp
def _ratio(a, b):
    """a / b, with a derivative that float32 can hold when b is tiny: d(a/b) =
    (da − (a/b) db) / b, formed as da/b − ((a/b)/b) db. JAX's own rule forms 1/b²,
    which overflows float32 for b ≈ 1e-20 (D3 of layered oxides in m²/s)."""
    return a / b


@_ratio.defjvp
def _ratio_jvp(primals, tangents):
    a, b = primals
    da, db = tangents
    q = a / b
    return q, da / b - (q / b) * db


def _linearised_kinetics(geometry, params, derived, x, inv_s, inv_e, drop, v_ref, r_int=None):
    """Per face group: (G_f in S, C_f in A, BV current in A) linearised at ``drop``
    (φ_s − v_ref − φ_e on each face), as grids that are zero off the faces. ``r_int``:
    per face group, the interfacial resistance of each face (Ω m²; debonding), else
    ``params.interface_resistance_ohm_m2`` on every face.

    The kinetics of all face groups are evaluated on one concatenated vector of faces
    (one OCV, one overpotential solve), then scattered back per group: the same values
    as group by group, with one copy of the kinetics in the compiled step instead of one
    per group (six for a 3D particle; it was most of the Newton iteration's code)."""
    ocv = get_ocv(params.ocv_name)
    temp, aa, ac = params.temperature_K, params.alpha_a, params.alpha_c
    f = FARADAY / (GAS_CONSTANT * temp)
    h = geometry.voxel_size_m
    groups = geometry.face_index
    if r_int is None:
        r_int = (params.interface_resistance_ohm_m2,) * len(groups)
    cat = lambda parts: jnp.concatenate([jnp.broadcast_to(p, i.shape) for p, i in zip(parts, groups)])  # noqa: E731
    take = lambda a, idx: a.reshape(-1)[idx]  # noqa: E731
    xf = cat([take(x, idx) for idx in groups])
    df = cat([take(d, idx) for d, idx in zip(drop, groups)])
    inv_e_b = cat([take(neighbour(inv_e, ax, dr), idx) for ax, dr, idx in zip(geometry.axes, geometry.directions,
                                                                               groups)])
    d_n = cat(derived.face_diffusivity)
    area = cat(geometry.face_area_m2)
    r_f = cat(r_int)
    u = ocv(xf) - v_ref
    slope = jax.vmap(jax.grad(ocv))(jnp.clip(xf, 1e-4, 1 - 1e-4))
    i0 = exchange_current(params, xf)
    # the half voxels on both sides of the face in series with the kinetics, and the
    # surface-concentration extrapolation R_diff = −U'(x)(h/2)/(F c_max D_n)
    r_face = r_f + 0.5 * h * (cat([take(inv_s, idx) for idx in groups]) + inv_e_b)
    r_face = r_face + _ratio(jnp.maximum(-slope, 0.0) * 0.5 * h / (FARADAY * params.c_max_mol_m3),
                             jnp.maximum(d_n, 1e-30))
    eta = kbv.solve_overpotential(df - u, i0, r_face, temp, aa, ac)
    i = kbv.butler_volmer(eta, i0, temp, aa, ac)
    g_bv = i0 * f * (aa * jnp.exp(aa * f * eta) + ac * jnp.exp(-ac * f * eta))
    g = g_bv / (1.0 + r_face * g_bv)
    out_g, out_c, out_i = [], [], []
    start = 0
    for idx in groups:
        part = slice(start, start + idx.shape[0])
        start += idx.shape[0]
        scatter = lambda v: jnp.zeros(x.size, x.dtype).at[idx].set(v[part].astype(x.dtype)).reshape(x.shape)  # noqa: E731,B023
        out_g.append(scatter(g * area))
        out_c.append(scatter((i - g * df) * area))
        out_i.append(scatter(i * area))
    return tuple(out_g), tuple(out_c), tuple(out_i)


class Potentials(NamedTuple):
    phi_s: jax.Array
    phi_e: jax.Array
    voltage: jax.Array  # absolute cell voltage, V
    current: jax.Array  # total interface current, A
    voxel_current: jax.Array
    iterations: jax.Array
    bv_residual: jax.Array
    tau_min: jax.Array
    warm: jax.Array
    newton_iterations: jax.Array
    interface_drop: jax.Array | float = 0.0  # mean R_int |i| over the reactive area (V)


def face_resistances(geometry, params, gap):
    """Per reactive face group, R_int of each face (Ω m²) from the layers' gaps ``gap``
    (M,): R0 exp(g/g0) of the layer that owns the face, R0 for a face without one."""
    deb = params.debonding
    padded = jnp.concatenate([gap, jnp.zeros((1,), gap.dtype)])
    return tuple(deb.face_resistance(params.interface_resistance_ohm_m2, padded[owner])
                 for owner in geometry.cohesive.face_host)


def potentials(geometry, params, numerics, derived, x, phi_s, phi_e, warm, v_ref, voltage_control,
               target, current_guess, r_int=None) -> Potentials:
    """Newton iterations for the coupled potentials under current control (``target``
    in A) or voltage control (``target`` = absolute collector voltage), chosen by the
    traced flag ``voltage_control``. ``phi_s`` in and out is φ_s − v_ref. ``r_int``: per face
    group, each face's interfacial resistance (debonding; :func:`face_resistances`).

    Inexact Newton (Dembo, Eisenstat & Steihaug, SIAM J. Numer. Anal. 19, 400 (1982)):
    the last iteration (the one after the drops have converged, or the last allowed)
    solves its linear system to ``numerics.rtol``; an earlier one to ``INEXACT_RTOL``
    once Newton has settled (the previous iteration moved the drops by ≤ 10
    ``newton_tolerance_V``) and, in a forward run, in the first iteration of a step.
    Measured on the S2 example (benchmarks/cell_voltage_accuracy.py, 60 steps): the
    loose first iteration cut the CG iterations per step from 15.3 to 8.8 at 400 nm and
    from 11.2 to 7.4 at 1 µm, with V within 7e-7 V / 1.4e-5 V of float64 at rtol 1e-11 as
    before; a forward run's Newton stop on the update size (below) and the unit system at
    0.2 (kernels.electrode.unit_rtol) then 7.15 CG and 2 Newton iterations per step on
    both grids, V within 6.8e-6 V / 1.5e-5 V. (Before the unit system was lifted, the same cut moved V by 1e-4 V:
    that was the unlifted solve's own error.) The differentiable path keeps its first
    iteration exact, so that its loop ends as close to the converged fields as before."""
    faces = geometry.interface()
    sigma_s = electronic_conductivity(geometry, params, x)
    sigma_e = ionic_conductivity(geometry, params)
    inv = lambda s: jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0)  # noqa: E731
    inv_s, inv_e = inv(sigma_s), inv(sigma_e)
    solver = dict(stack_axis=geometry.stack_axis, maxiter=numerics.maxiter,
                  preconditioner=numerics.preconditioner, fused=True)

    def newton(inputs, carry, final=True):
        params, x, sigma_s, sigma_e, inv_s, inv_e, derived, v_ref, target, r_int = inputs
        phi_s, phi_e, _v, current, iters, _g, _c, warm, k, _change = carry
        drop = face_potential_drop(phi_s, phi_e, faces)
        # loose where Newton has settled (the previous iteration moved the drops by ≤ 10
        # tolerances) and, in a forward run, in the first iteration of a step
        settled = _change <= 10.0 * numerics.newton_tolerance_V
        near = settled if numerics.differentiable else (k == 0) | settled  # k = 0: _change = inf
        solver["rtol"] = jnp.where(final | ~near, numerics.rtol, max(INEXACT_RTOL, numerics.rtol))
        # forward only: I¹ = ∂I/∂V is needed accurately in the last iteration only; before
        # it, the unit system keeps its warm start (tolerance 1; kernels.electrode.
        # solve_coupled). The differentiable path solves it in every iteration: its last
        # iteration is differentiated as if it started from the converged fields, and a
        # stale I¹ would move the loop's fixed point off them (measured: the map
        # Jacobian of tests/test_fit_voltage.py then misses central differences)
        solver["rtol_unit"] = (unit_rtol(numerics.rtol) if numerics.differentiable
                               else jnp.where(final, unit_rtol(numerics.rtol), 1.0))
        g, c, _ = _linearised_kinetics(geometry, params, derived, x, inv_s, inv_e, drop, v_ref, r_int)
        phi_anode = anode_potential(geometry, params, current)
        args = (sigma_s, sigma_e, geometry.voxel_size_m, faces, g, c, phi_anode)
        # one compiled solve serves both controls (the traced flag picks)
        sol = solve_coupled(*args, current=target, voltage=target - v_ref, voltage_control=voltage_control,
                            warm_start=warm, **solver)
        new_drop = face_potential_drop(sol.phi_s, sol.phi_e, faces)
        change = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(a - b), initial=0.0) for a, b in zip(new_drop, drop)])
        return (sol.phi_s, sol.phi_e, sol.voltage.astype(x.dtype), sol.current.astype(x.dtype),
                iters + sol.iterations, g, c, sol.warm, k + 1, change.astype(x.dtype))

    zeros = tuple(jnp.zeros_like(x) for _ in geometry.face_masks)
    init = (phi_s, phi_e, jnp.asarray(0.0, x.dtype), jnp.asarray(current_guess, x.dtype),
            jnp.asarray(0, jnp.int32), zeros, zeros, warm, jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, x.dtype))
    inputs = (params, x, sigma_s, sigma_e, inv_s, inv_e, derived, v_ref, target, r_int)
    # Newton to convergence (the face potential drops change by ≤ newton_tolerance_V) in a
    # loop that is not differentiated, then one more iteration that is. At the solution
    # the Newton map's derivative w.r.t. its iterate vanishes, so reverse mode through
    # that last iteration alone is the implicit-function derivative of the converged
    # potentials ("one-step differentiation": Bolte, Pauwels & Vaiter, NeurIPS 2023), at
    # one transposed linear solve per step. The extra iteration starts from the
    # converged fields, so its PCG needs few iterations.
    if numerics.differentiable:
        frozen = jax.lax.stop_gradient(inputs)

        def unconverged(carry):
            k, change = carry[-2], carry[-1]
            return (k < numerics.newton_iterations - 1) & (change > numerics.newton_tolerance_V)

        carry = jax.lax.while_loop(unconverged, lambda cr: newton(frozen, cr, False), jax.lax.stop_gradient(init))
        phi_s, phi_e, voltage, _, iters, g, c, warm, newton_steps, _ = newton(inputs, jax.lax.stop_gradient(carry))
    else:
        # forward only (the run driver), in one loop so that the linear solve is compiled
        # once: the first iteration loose; every later one with its input settled (drops
        # moved by ≤ 10 tolerances) is a candidate for the last, solved tight, and ends
        # Newton when its own update moves no drop by more than the tolerance. Newton's
        # usual stopping test on the step size (Deuflhard, Newton Methods for Nonlinear
        # Problems, Springer 2004, §2.1); the one-step differentiation above needs an
        # iteration that starts from the converged fields, a forward run does not, and
        # this saves that extra iteration (3 → 2 iterations per step on the S2 example)
        def going(state):
            carry, done = state
            return (carry[-2] < numerics.newton_iterations) & ~done

        def iterate(state):
            carry, _ = state
            k, change = carry[-2], carry[-1]
            last = ((k > 0) & (change <= 10.0 * numerics.newton_tolerance_V)) | (k >= numerics.newton_iterations - 1)
            new = newton(inputs, carry, last)
            return new, last & (new[-1] <= numerics.newton_tolerance_V)

        carry, _ = jax.lax.while_loop(going, iterate, (init, jnp.asarray(False)))
        phi_s, phi_e, voltage, _, iters, g, c, warm, newton_steps, _ = carry
    # currents of the last linear solve: they meet the applied current exactly
    drop = face_potential_drop(phi_s, phi_e, faces)
    face_currents = tuple(gi * d + ci for gi, ci, d in zip(g, c, drop))
    g_out, _, i_bv = _linearised_kinetics(geometry, params, derived, x, inv_s, inv_e, drop, v_ref, r_int)
    scale = jnp.maximum(sum(jnp.sum(jnp.abs(i)) for i in face_currents), 1e-30)
    bv_residual = sum(jnp.sum(jnp.abs(a - b)) for a, b in zip(face_currents, i_bv)) / scale
    voxel_current = sum(face_currents)
    # kinetic relaxation time of each surface voxel (explicit steps of x with frozen
    # currents are stable for Δt ≲ τ); only surface voxels carry a conductance. The
    # conductance is taken at the converged drops (g_out), not at the last iteration's
    # input, so that its derivative includes the potentials' response (see above)
    surf = geometry.surface_index
    xs = jnp.clip(x.reshape(-1)[surf], 1e-4, 1 - 1e-4)
    slope = jnp.abs(jax.vmap(jax.grad(get_ocv(params.ocv_name)))(xs))
    conductance = sum(g_out).reshape(-1)[surf]
    tau = FARADAY * params.c_max_mol_m3 * geometry.voxel_size_m**x.ndim / jnp.maximum(conductance * slope, 1e-30)
    tau_min = jnp.min(jnp.where(conductance > 0, tau, jnp.inf))
    interface_drop = jnp.asarray(0.0, x.dtype)
    if r_int is not None:  # Σ_f R_f |I_f| / Σ_f A_f: the area mean of R_int |i|
        area = sum(jnp.sum(a) for a in geometry.face_area_m2)
        interface_drop = sum(jnp.sum(r * jnp.abs(i.reshape(-1)[idx])) for r, i, idx in
                             zip(r_int, face_currents, geometry.face_index)) / area
    return Potentials(phi_s, phi_e, voltage + v_ref, sum(jnp.sum(i) for i in face_currents), voxel_current,
                      iters, bv_residual, tau_min, warm, newton_steps, interface_drop)


def diffuse(geometry: CellGeometry, params: CellParams, derived: Derived, x, voxel_current, dt_s, n_sub,
            max_substeps: int | None = None, stress=None):
    """Advance x over ``dt_s`` in ``n_sub`` explicit sub-steps (traced) on the particle's
    bounding box, the face currents as the source −I/(F c_max h^d). The stencil has no
    flux out of active voxels, so the box gives the whole grid's result.

    ``stress`` = (χ_s, x_s) of the last stress solve adds the stress-driven flux
    (kernels.diffusion.stress_drift_rate) with χ = χ_s − θ (x − x_s) at each sub-step,
    as the particle rollout does (engine.model.particle.rollout).

    With ``max_substeps`` (static) the sub-steps run as a scan of that length, the ones
    past ``n_sub`` masked: reverse mode can go through it (not through a loop of traced
    length)."""
    h = geometry.voxel_size_m
    box = geometry.box
    source = -voxel_current[box] / (FARADAY * params.c_max_mol_m3 * h**x.ndim)
    grain_id = geometry.grain_id[box]
    dt = dt_s / jnp.maximum(n_sub, 1).astype(x.dtype)
    if stress is None:
        def body(_, xb):
            return kdiff.explicit_step(xb, dt, grain_id, derived.component_table, h, source)
    else:
        active = grain_id >= 0
        comps = kdiff.voxel_components(derived.component_table, grain_id)
        chi_s, x_s = stress[0][box], stress[1][box]

        def body(_, xb):
            chi = jnp.where(active, chi_s - derived.theta * (xb - x_s), 0.0)
            drift = kdiff.stress_drift_rate(xb, chi, comps, active, 1.0 / h, symmetric=False)
            return kdiff.explicit_step(xb, dt, grain_id, derived.component_table, h, source) + dt * drift

    if max_substeps is None:
        return x.at[box].set(jax.lax.fori_loop(0, n_sub, body, x[box]))

    def masked(xb, i):
        return jnp.where(i < n_sub, body(i, xb), xb), None

    xb, _ = jax.lax.scan(masked, x[box], jnp.arange(max_substeps))
    return x.at[box].set(xb)


def cell_step(geometry: CellGeometry, params: CellParams, numerics: CellNumerics, protocol: ProtocolTable,
              derived: Derived, state: CellState, x_initial, solve=None, max_substeps: int | None = None):
    """One electrochemical step. Returns ``(state, record, recorded, boundary)``.

    The potentials are solved at the state's time t_n; that solve is the step's record
    (V, I, M_Li at t_n, with the time since the previous record). If it meets the
    protocol step's cut-off (CC: V within ``cutoff_tolerance_V`` of its limit or
    beyond; CV: |I| ≤ (1 + ``cutoff_tolerance``) × the cut-off rate; any step: its
    time cap), the protocol moves on and x is not advanced. Otherwise x advances by Δt,
    where Δt is also shortened to the cut-off's predicted time, a linear extrapolation
    of V (or |I|) from this and the previous record, so that the step ends on the
    cut-off, not a whole step past it (the error left is second order,
    ½ V''Δt²; the next solve checks it). ``recorded`` says whether the record is valid
    (the solve was finite); ``boundary`` whether a protocol step or the run ended.
    ``solve`` replaces :func:`potentials` (tests inject faults with it);
    ``max_substeps`` (static) bounds the diffusion sub-steps for reverse mode
    (:func:`diffuse`; engine.solve.rollout).
    """
    solve = potentials if solve is None else solve
    dtype = state.x.dtype
    k, cycle = protocol.position(state.pointer)
    mode = protocol.mode[k]
    voltage_control = mode == CV
    applied = jnp.where(mode == CC, protocol.sign[k] * protocol.c_rate[k] * params.one_c_A, 0.0).astype(dtype)
    target = jnp.where(voltage_control, protocol.voltage_V[k].astype(dtype), applied)
    guess = jnp.where(voltage_control, state.current, applied)
    deb = params.debonding
    extra = {} if deb is None else {"r_int": face_resistances(geometry, params, state.gap)}
    sol = solve(geometry, params, numerics, derived, state.x, state.phi_s, state.phi_e, state.warm,
                state.v_ref, voltage_control, target, guess, **extra)
    solve_ok = jnp.isfinite(sol.voltage) & jnp.isfinite(sol.current)
    conducting = params.phase_sigma_s[geometry.labels] > 0
    # re-centre φ_s on the new voltage
    phi_s = jnp.where(conducting, sol.phi_s - (sol.voltage - state.v_ref), 0.0)
    volt, cur = sol.voltage.astype(dtype), sol.current.astype(dtype)

    # cut-offs, checked on this solve (the state at t_n)
    sign, v_cut = protocol.sign[k], protocol.voltage_V[k]
    i_cut = protocol.c_rate[k] * params.one_c_A
    is_cc = mode == CC
    to_go_v = sign * (v_cut - volt)  # > 0 while the CC limit is ahead
    to_go_i = jnp.abs(cur) - i_cut  # > 0 while the CV current is above its cut-off
    left = protocol.max_duration_s[k] - state.t_step_s
    tolerance = jnp.where(is_cc, numerics.cutoff_tolerance_V, numerics.cutoff_tolerance * i_cut)
    distance = jnp.where(is_cc, to_go_v, to_go_i)  # to the cut-off, > 0 before it
    has_cut = is_cc | voltage_control
    cap = protocol.max_duration_s[k]
    have_prev = state.prev_dt_s > 0
    # a cut-off passed by more than the tolerance since the last record: go back to that
    # record's state and step to the time interpolated between the two (regula falsi;
    # at most MAX_CORRECTIONS times, then the overshoot is accepted)
    prev_distance = jnp.where(is_cc, sign * (v_cut - state.prev_voltage), jnp.abs(state.prev_current) - i_cut)
    overshot = has_cut & have_prev & (distance < -tolerance) & (state.corrections < MAX_CORRECTIONS) & solve_ok
    ended = (has_cut & (distance <= tolerance)) | (jnp.isfinite(cap) & (left <= cap * 1e-6))
    ended = ended & solve_ok & ~overshot

    # adaptive step: no surface voxel covers more than half its distance to 0 or 1, and
    # no longer than the kinetic relaxation time
    h = geometry.voxel_size_m
    surf = geometry.surface_index
    rate = -sol.voxel_current.reshape(-1)[surf] / (FARADAY * params.c_max_mol_m3 * h**state.x.ndim)
    xs = state.x.reshape(-1)[surf]
    room = jnp.where(rate < 0, xs, 1.0 - xs)
    limit = jnp.min(jnp.where(rate != 0, 0.5 * room / jnp.where(rate != 0, jnp.abs(rate), 1.0), jnp.inf))
    dt = jnp.minimum(jnp.minimum(numerics.time_step_s, limit), sol.tau_min).astype(dtype)
    too_small = ~(dt >= 1e-3 * numerics.time_step_s)  # also catches NaN
    # the cut-off's predicted time from the change since the previous record
    safe_prev = jnp.where(have_prev, state.prev_dt_s, 1.0)
    approach = (prev_distance - distance) / safe_prev  # > 0: nearing the cut-off
    predicting = has_cut & have_prev & (approach > 0)
    predicted = jnp.where(predicting, distance / jnp.where(predicting, approach, 1.0), jnp.inf)
    dt = jnp.minimum(dt, jnp.maximum(predicted, 1e-3 * numerics.time_step_s))
    if deb is not None:  # damage step control: at most max_damage_increment per step at the last rate
        rate_d = state.damage_rate
        dt_d = jnp.where(rate_d > 0, deb.max_damage_increment / jnp.where(rate_d > 0, rate_d, 1.0), jnp.inf)
        dt = jnp.minimum(dt, jnp.maximum(dt_d, 1e-3 * numerics.time_step_s))
    dt = jnp.minimum(dt, left).astype(dtype)
    too_small = too_small & ~overshot
    # the corrective step: from the last record, to the interpolated crossing
    frac = jnp.clip(prev_distance / jnp.where(overshot, prev_distance - distance, 1.0), 0.01, 0.99)
    dt = jnp.where(overshot, frac * state.prev_dt_s, dt).astype(dtype)
    x_from = jnp.where(overshot, state.x_prev, state.x)
    current_from = jnp.where(overshot, state.current_prev, sol.voxel_current)

    go = solve_ok & ~ended & ~too_small
    max_sub = jnp.ceil(numerics.time_step_s / derived.dt_stable)
    if max_substeps is not None:
        max_sub = jnp.minimum(max_sub, max_substeps)
    n_sub = jnp.where(go, jnp.clip(jnp.ceil(dt / derived.dt_stable), 1, max_sub), 0).astype(jnp.int32)
    stress, stress_state, mech_state = None, {}, {}
    mech_failed = jnp.asarray(False)
    if deb is not None:  # the interface solve (stress + cohesive layers) when due and the step goes ahead
        due = go & ((state.since_mech >= deb.update_every_steps) | (state.damage_rate > 0))
        hosts = geometry.cohesive.layers.host_index

        def solve_interface():
            m = solve_debonding(geometry.cohesive, deb, params.orientations, x_from, state.kappa, h)
            chi = state.chi
            if params.coupling is not None:
                chi = params.coupling.potential_of(m, params.orientations, params.c_max_mol_m3,
                                                   geometry.active).astype(dtype)
            return (m.trial_history.astype(dtype), positive_gap(deb, m.normal_opening[hosts]).astype(dtype),
                    m.damage[hosts].astype(dtype), m.converged, chi)

        def keep_interface():
            return state.kappa, state.gap, state.damage, jnp.asarray(True), state.chi

        kappa, gap, damage, mech_ok, chi = jax.lax.cond(due, solve_interface, keep_interface)
        mech_failed = due & ~mech_ok
        increment = jnp.max(damage - state.damage, initial=0.0)
        elapsed = state.mech_elapsed_s
        new_rate = jnp.where(elapsed > 0, increment / jnp.where(elapsed > 0, elapsed, 1.0),
                             increment / numerics.time_step_s)
        mech_state = dict(kappa=kappa, gap=gap, damage=damage, rate=new_rate)
        if params.coupling is not None:
            stress = (chi, jnp.where(due, x_from, state.x_stress))
            stress_state = dict(chi=stress[0], x_stress=stress[1], since_stress=None)
    elif params.coupling is not None:  # re-solve the stress when due and the step goes ahead
        due = go & (state.since_stress >= numerics.stress_every_steps)

        def solve_stress():
            chi = params.coupling.potential(params.orientations, params.c_max_mol_m3, x_from, geometry.active)
            return chi.astype(dtype), x_from

        stress = jax.lax.cond(due, solve_stress, lambda: (state.chi, state.x_stress))
        stress_state = dict(chi=stress[0], x_stress=stress[1], since_stress=None)
    x_new = diffuse(geometry, params, derived, x_from, current_from, dt, n_sub, max_substeps, stress)
    box, active_box = geometry.box, geometry.active[geometry.box]
    xb = jnp.where(active_box, x_new[box], 0.5)
    x_ok = jnp.all(jnp.isfinite(xb))
    in_bounds = jnp.all((xb >= 0) & (xb <= 1))

    status = jnp.where(~solve_ok, DIVERGED_SOLVE,
                       jnp.where(ended, RUNNING,
                                 jnp.where(too_small, STOP_TIME_STEP,
                                           jnp.where(mech_failed, STOP_MECHANICS,
                                                     jnp.where(~x_ok, DIVERGED_X,
                                                               jnp.where(in_bounds, RUNNING, STOP_X_BOUNDS))))))
    advanced = go & x_ok & in_bounds & ~mech_failed  # a step that would leave [0, 1] is not taken
    if stress is not None:
        since = jnp.where(due, 0, state.since_stress) + advanced.astype(jnp.int32)
        stress_state["since_stress"] = since.astype(jnp.int32)
    if deb is not None:  # the interface solve counts only if its step was taken
        solved = due & advanced
        pick = lambda new, old: jnp.where(solved, new, old)  # noqa: E731
        step_taken_dt = jnp.where(advanced, dt, 0.0).astype(dtype)
        mech_state = dict(
            kappa=pick(mech_state["kappa"], state.kappa), gap=pick(mech_state["gap"], state.gap),
            damage=pick(mech_state["damage"], state.damage),
            since_mech=(jnp.where(solved, 0, state.since_mech) + advanced.astype(jnp.int32)).astype(jnp.int32),
            mech_elapsed_s=(jnp.where(solved, 0.0, state.mech_elapsed_s) + step_taken_dt).astype(dtype),
            damage_rate=pick(mech_state["rate"], state.damage_rate).astype(dtype))
    pointer = state.pointer + ended.astype(jnp.int32)
    status = jnp.where(ended & (pointer >= protocol.n_total), FINISHED, status).astype(jnp.int32)

    recorded = solve_ok & ~overshot  # an overshooting solve is replaced, not recorded
    keep = lambda new, old: jnp.where(recorded, new, old)  # noqa: E731
    step_dt = jnp.where(advanced, dt, 0.0).astype(dtype)
    # a corrective step replaces the step taken after the last record
    t_step = jnp.where(overshot, state.t_step_s - state.prev_dt_s, state.t_step_s) + step_dt
    new_state = CellState(
        x=jnp.where(advanced, x_new, jnp.where(overshot, state.x_prev, state.x)),
        phi_s=jnp.where(solve_ok, phi_s, state.phi_s), phi_e=jnp.where(solve_ok, sol.phi_e, state.phi_e),
        voxel_current=keep(sol.voxel_current, state.voxel_current), warm=jnp.where(solve_ok, sol.warm, state.warm),
        v_ref=jnp.where(solve_ok, sol.voltage, state.v_ref), voltage=volt, current=cur,
        pending_dt_s=jnp.where(solve_ok, step_dt, state.pending_dt_s).astype(dtype),
        prev_voltage=keep(volt, state.prev_voltage), prev_current=keep(cur, state.prev_current),
        prev_dt_s=jnp.where(ended, 0.0, jnp.where(solve_ok, step_dt, state.prev_dt_s)).astype(dtype),
        x_prev=keep(state.x, state.x_prev), current_prev=keep(sol.voxel_current, state.current_prev),
        corrections=jnp.where(overshot, state.corrections + 1, jnp.where(recorded, 0, state.corrections)
                              ).astype(jnp.int32),
        t_step_s=jnp.where(ended, 0.0, t_step).astype(dtype), pointer=pointer,
        status=status, n_taken=state.n_taken + recorded.astype(jnp.int32), **stress_state, **mech_state,
    )
    active = geometry.active[box]
    record = {
        "dt_s": state.pending_dt_s, "voltage_V": volt, "current_A": cur,
        "dx_sum": jnp.sum(jnp.where(active, state.x[box] - x_initial, 0.0)).astype(dtype),
        "bv_residual": sol.bv_residual.astype(dtype),
        "step_index": k.astype(jnp.int32), "cycle_index": cycle.astype(jnp.int32),
        "cg_iterations": sol.iterations.astype(jnp.int32),
        "newton_iterations": sol.newton_iterations.astype(jnp.int32),
    }
    if deb is None:
        record.update({name: jnp.asarray(0.0, dtype) for name in RECORD_INTERFACE})
    else:  # the layers as the kinetics of this solve saw them
        stats = layer_statistics(geometry.cohesive, state.gap, state.damage)
        record.update({name: jnp.asarray(v).astype(dtype) for name, v in zip(RECORD_INTERFACE[:4], stats)})
        record["interface_drop_V"] = jnp.asarray(sol.interface_drop).astype(dtype)
    return new_state, record, recorded, ended | (status != RUNNING)

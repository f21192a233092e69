"""Cohesive particle | ion-conductor interfaces in the FFT-Galerkin elasticity solve.

Engine-facing layer over :mod:`ssbx.kernels.cohesive` (law, laminate voxels) and
:func:`ssbx.kernels.elasticity.solve_elasticity` (unchanged). See docs/interfaces.md.

Realisation: every *host* voxel — by default an active voxel that shares a face with
an ion-conductor voxel — is a laminate voxel carrying one cohesive layer. Its
stiffness enters the existing solver as an extra stiffness-table entry per host
voxel (the phase index of the host points at it), so the CG operator, its
preconditioner and its implicit-function derivatives are reused as they are.

Usage per accepted step (history frozen inside the step)::

    geom = interface_geometry(active, conductor)
    sol = solve_with_interfaces(geom, t0, t1, phase, x, params, history, h, ...)
    # accept the step (or cut it if sol.damage − old damage is too large), then
    history = sol.trial_history            # == update_history(history, opening)
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ssbx.engine.errors import ConfigError
from ssbx.kernels import cohesive as coh
from ssbx.kernels.elasticity import solve_elasticity
from ssbx.kernels.stiffness import voigt_to_mandel_stiffness

__all__ = [
    "CellInterface",
    "CohesiveParams",
    "DebondingParams",
    "InterfaceGeometry",
    "InterfaceSolution",
    "area_averaged_gap",
    "interface_geometry",
    "layer_gap_statistics",
    "cell_interface",
    "layer_statistics",
    "positive_gap",
    "solve_debonding",
    "solve_with_interfaces",
]

#: Default penalty stiffness K0 (Pa/m). The layer adds a compliance 1/K0 in series with
#: the particle; Turon et al., Eng. Fract. Mech. 74, 1665 (2007) keep the loss of
#: stiffness negligible with K0 ≥ α E / ℓ, α ≈ 50 (ℓ: size of the adjacent body). With
#: E ≈ 150 GPa and particle radii ℓ ≥ 1 µm this asks for ≥ 7.5e18; measured here (sphere
#: test): K0 = 1e18 at a = 0.7 µm lowers the interface traction by ~15 %. The default 1e19
#: gives δ0 = σc/K0 = 10 pm at σc = 100 MPa (δf = 20 nm at Gc = 1 J/m²).
DEFAULT_PENALTY_STIFFNESS = 1.0e19
#: Default relative softplus width (× δ0) of the positive part of g_n.
DEFAULT_SMOOTHING = 1.0e-2


class CohesiveParams(eqx.Module):
    """Bilinear cohesive-law parameters; all array leaves (differentiable).

    Attributes:
        strength: σc (Pa), normal and shear; physics.md baseline 100 MPa.
        fracture_energy: Gc (J/m²), modes I and II; baseline 1 J/m².
        penalty_stiffness: K0 (Pa/m), numerical; default 1e19 (see DEFAULT_PENALTY_STIFFNESS).
        smoothing: softplus width of ⟨g_n⟩₊ relative to δ0 (dimensionless); 1e-2.
    """

    strength: jax.Array
    fracture_energy: jax.Array
    penalty_stiffness: jax.Array
    smoothing: jax.Array

    def __init__(self, strength=100e6, fracture_energy=1.0,
                 penalty_stiffness=DEFAULT_PENALTY_STIFFNESS, smoothing=DEFAULT_SMOOTHING):
        self.strength = jnp.asarray(strength)
        self.fracture_energy = jnp.asarray(fracture_energy)
        self.penalty_stiffness = jnp.asarray(penalty_stiffness)
        self.smoothing = jnp.asarray(smoothing)

    def check(self):
        """Raise ConfigError for bad concrete values (no-op under tracing)."""
        try:
            s = float(np.asarray(self.strength))
            g = float(np.asarray(self.fracture_energy))
            k = float(np.asarray(self.penalty_stiffness))
            w = float(np.asarray(self.smoothing))
        except Exception:  # noqa: BLE001 - traced values are not checked
            return
        for name, v in (("interface.strength", s), ("interface.fracture_energy", g),
                        ("interface.penalty_stiffness", k)):
            if not (np.isfinite(v) and v > 0):
                raise ConfigError(f"{name} = {v!r}: must be finite and > 0")
        if not (0 < w < 1):
            raise ConfigError(f"interface.smoothing = {w!r}: valid range is (0, 1) (× δ0)")
        if not 2.0 * g * k > s * s:
            raise ConfigError(
                f"interface.fracture_energy = {g!r}: must exceed σc²/(2 K0) = "
                f"{s * s / (2 * k):.3g} J/m² (final opening 2Gc/σc > onset σc/K0)"
            )

    # law shortcuts -----------------------------------------------------------
    def damage(self, history):
        return coh.damage(history, self.strength, self.fracture_energy, self.penalty_stiffness)

    def secant(self, compression, history):
        return coh.secant_stiffness(compression, history, self.strength,
                                    self.fracture_energy, self.penalty_stiffness)

    def update_history(self, history, g, n):
        return coh.update_history(history, g, n, self.strength, self.penalty_stiffness,
                                  self.smoothing)


class InterfaceGeometry(NamedTuple):
    """Static (numpy) description of the laminate host voxels.

    Attributes:
        host: bool grid, voxels carrying a cohesive layer.
        host_index: tuple of int arrays (np.nonzero(host)), M hosts.
        normals: (M, 3) unit layer normals, particle → conductor.
        area_factor: (M,) layer area / h²: |Σ_f e_f| over the host's faces (1 for
            a flat face, √2 for an edge, √3 for a corner of the staircase), the
            area of the smooth surface the staircase stands for (a voxel sphere:
            within 2–5 % of 4πa²). The layer enters the laminate with the
            thickness h / area_factor, so Gc is dissipated per unit of that area.
        face_masks: tuple of bool grids, one per (axis, direction) in the order
            (0,+1), (0,−1), (1,+1), (1,−1)[, (2,+1), (2,−1)]; True at the ACTIVE
            voxel a whose neighbour a + direction·e_axis is an ion conductor.
        face_axes, face_directions: the (axis, direction) of each face group.
        side: "active" or "conductor" (which voxel of a face hosts the layer).
    """

    host: np.ndarray
    host_index: tuple
    normals: np.ndarray
    area_factor: np.ndarray
    face_masks: tuple
    face_axes: tuple
    face_directions: tuple
    side: str


def interface_geometry(active, conductor, side="active"):
    """Host voxels and layer normals from the active and ion-conductor masks.

    The normal of a host voxel is the normalised sum of the outward face normals
    (particle → conductor) of its active | conductor faces; for a voxel with several
    such faces this is the mean facet orientation of the staircase. If the sum
    vanishes (faces on opposite sides, e.g. a one-voxel-thin feature) the normal of
    its first face group (axis order x, y, z; + before −) is used.

    Args:
        active: bool grid, active-material voxels.
        conductor: bool grid, ion-conductor voxels (SE, ECBD); disjoint from active.
        side: "active" (default; the layer sits in the particle's surface voxels)
            or "conductor" (in the conductor voxels next to the particle).
    Periodic wrap is used in all directions (as in the elasticity solver).
    """
    a = np.asarray(active, bool)
    c = np.asarray(conductor, bool)
    if a.shape != c.shape or a.ndim not in (2, 3):
        raise ConfigError(
            f"interface masks: shapes {a.shape} and {c.shape} must be equal 2D/3D grids"
        )
    if np.any(a & c):
        raise ConfigError(
            f"interface masks: {int(np.sum(a & c))} voxels are both active and ion "
            "conductor; valid: disjoint masks"
        )
    if side not in ("active", "conductor"):
        raise ConfigError(f"interface.side = {side!r}: valid values 'active', 'conductor'")
    ndim = a.ndim
    masks, axes, dirs = [], [], []
    nsum = np.zeros((3,) + a.shape)
    first = np.zeros((3,) + a.shape)
    has = np.zeros(a.shape, bool)
    for axis in range(ndim):
        for d in (1, -1):
            nb_c = np.roll(c, -d, axis=axis)  # conductor at a + d e_axis
            m = a & nb_c
            masks.append(m)
            axes.append(axis)
            dirs.append(d)
            if side == "active":
                hm = m
            else:  # conductor voxel b with an active voxel at b − d e_axis
                hm = np.roll(m, d, axis=axis)
            nsum[axis] += d * hm
            new = hm & ~has
            first[axis] += d * new
            has |= hm
    norm = np.sqrt(np.sum(nsum**2, axis=0))
    nvec = np.where(norm > 1e-12, nsum / np.where(norm > 0, norm, 1.0), first)
    idx = np.nonzero(has)
    normals = np.stack([nvec[k][idx] for k in range(3)], axis=-1)
    area = np.where(norm > 1e-12, norm, 1.0)[idx]
    return InterfaceGeometry(has, idx, normals, area, tuple(masks), tuple(axes), tuple(dirs),
                             side)


class InterfaceSolution(eqx.Module):
    """Result of :func:`solve_with_interfaces` (fields on the full grid).

    Attributes:
        stress, strain: (6, *grid) as in ElasticityResult (Pa / dimensionless).
        opening: (3, *grid) layer opening vector g (m), zero off the hosts.
        normal_opening: (*grid) g_n = g·n (m), zero off the hosts.
        normal_traction: (*grid) n·σ·n on the hosts (Pa) (= K_n g_n).
        trial_history: (*grid) max(κ, λ(g)) (m) — the history to store if the
            step is accepted (== update_history(history, opening)).
        damage: (*grid) d(trial_history) ∈ [0, 1].
        face_gaps: tuple of (*grid) per face group of InterfaceGeometry.face_masks:
            ⟨g_n⟩₊ (smooth positive part, m) of the layer that owns the face, stored
            at the active voxel of each active | conductor face, 0 elsewhere. All
            faces of one host voxel share its layer's normal opening.
        converged: CG converged and the compression active set is stable.
        active_set_iterations: number of active-set passes (elastic solves; under jit a
            search that ran adds one re-solve for the derivative, not counted).
        cg_iterations: CG iterations of the last solve.
        cg_residual: relative CG residual of the last solve.
    """

    stress: jax.Array
    strain: jax.Array
    opening: jax.Array
    normal_opening: jax.Array
    normal_traction: jax.Array
    trial_history: jax.Array
    damage: jax.Array
    face_gaps: tuple
    converged: jax.Array
    active_set_iterations: jax.Array
    cg_iterations: jax.Array
    cg_residual: jax.Array | float = float("nan")

    # the names of kernels.elasticity.ElasticityResult, so stress outputs take either
    @property
    def iterations(self):
        return self.cg_iterations

    @property
    def residual(self):
        return self.cg_residual


def _scatter(shape, idx, values, dtype):
    """Values (M, ...) at the host voxels → (..., *grid) field (zero elsewhere)."""
    values = jnp.asarray(values, dtype)
    if values.ndim == 1:
        return jnp.zeros(shape, dtype).at[idx].set(values)
    out = jnp.zeros((values.shape[1],) + shape, dtype)
    return out.at[(slice(None),) + tuple(idx)].set(values.T)


def solve_with_interfaces(
    geometry,
    stiffness_table0,
    stiffness_table1,
    phase_index,
    x,
    params,
    history,
    voxel_size,
    *,
    expansion_table=None,
    eigenstrain_field=None,
    x_ref=0.0,
    macro_strain=None,
    macro_stress=None,
    stress_mask=None,
    tol=1e-6,
    maxiter=2000,
    max_active_set_iterations=8,
    initial_compression=None,
    residual_stiffness=None,
    secant_history=None,
):
    """Elastic solve with cohesive laminate voxels at frozen history.

    Active set: start with every layer "open" (K_n = (1 − d)K0) unless
    ``initial_compression`` (bool, (*grid)) is given; solve; layers with g_n < 0 get
    K_n = K0 (a closed layer reopens only when g_n exceeds the softplus width
    smoothing·δ0: hysteresis, so that a damaged layer in contact settles); re-solve until no layer changes state, at most
    ``max_active_set_iterations`` solves. ``converged`` is False if the set did
    not settle or CG did not converge — callers must not accept such a step.

    Args (beyond those of :func:`solve_elasticity`):
        geometry: :class:`InterfaceGeometry` from :func:`interface_geometry`.
        params: :class:`CohesiveParams`.
        history: (*grid) κ field (m), irreversible max effective opening; only the
            host entries are used.
        voxel_size: h (m).
        secant_history: optional (*grid) history used ONLY for the secant
            stiffness of this solve (default: ``history``). Passing the linear
            extrapolation κ_n + (κ_n − κ_{n−1})·Δload_{n+1}/Δload_n is the IMPL-EX
            scheme (Oliver, Huespe & Cante, CMAME 197, 1865 (2008)): still one
            SPD solve per active set, but the lag of the frozen-history damage
            drops from O(Δ) to O(Δ²). Irreversibility always uses ``history``.
        residual_stiffness: every laminate entry gets this fraction of its bulk
            stiffness's largest Mandel eigenvalue added (isotropic), so a fully
            separated layer (d = 1, singular C_lam) stays positive definite for
            solve_elasticity's table check (which needs eigenvalue ratios > 1e-6).
            Default 2e-6 in float64 and 2e-5 in float32, whose round-off in the
            laminate's cancelling normal term reached 1.6e-6 λ_max (S2 cell, fully
            open layers). Residual traction of an open layer ≈ that · λ_max(C) · g/h.

    Differentiable (jax.grad) with respect to params, history, x, tables,
    eigenstrain and loads; the gradient is that of the converged active set.
    Works eagerly (Python loop, stops when stable) and under jax.jit /
    eqx.filter_jit (the same iteration unrolled with lax.cond, so settled passes
    do not solve; the geometry's arrays may then be traced, only the number of
    host voxels is static).
    """
    params.check()
    try:
        hval = float(np.asarray(voxel_size))
        if not (np.isfinite(hval) and hval > 0):
            raise ConfigError(f"voxel_size = {hval!r} m: must be finite and > 0")
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        pass
    idx = geometry.host_index
    shape = geometry.host.shape
    xarr = jnp.asarray(x)
    dtype = xarr.dtype
    hist = jnp.asarray(history, dtype)
    if hist.shape != shape:
        raise ConfigError(f"history: shape {hist.shape} must equal the grid {shape}")
    t0 = jnp.asarray(stiffness_table0, dtype)
    t1 = jnp.asarray(stiffness_table1, dtype)
    pidx = jnp.asarray(phase_index).astype(jnp.int32)
    nph = t0.shape[0]
    m = len(idx[0])
    p_host = pidx[idx]
    x_host = xarr[idx]
    c_host = t0[p_host] + x_host[:, None, None] * (t1[p_host] - t0[p_host])
    n_host = jnp.asarray(geometry.normals, dtype)
    hist_host = hist[idx]
    sec_host = hist_host if secant_history is None else jnp.asarray(secant_history, dtype)[idx]
    h = jnp.asarray(voxel_size, dtype)
    h_eff = h / jnp.asarray(geometry.area_factor, dtype)  # (M,) laminate spacing

    # eigenstrain of the hosts (tensor components), as the solver builds it
    eig_host = jnp.zeros((m, 6), dtype)
    exp_ext = None
    if expansion_table is not None:
        exp_t = jnp.asarray(expansion_table, dtype)
        eig_host = eig_host + exp_t[p_host] * (x_host - x_ref)[:, None]
        exp_ext = jnp.concatenate([exp_t, exp_t[p_host]])
    if eigenstrain_field is not None:
        eig_host = eig_host + jnp.asarray(eigenstrain_field, dtype)[(slice(None),) + idx].T
    new_p = pidx.at[idx].set(nph + jnp.arange(m, dtype=jnp.int32))

    # residual stiffness of a fully separated layer (keeps every table entry positive
    # definite for solve_elasticity's check): residual_stiffness × λ_max(C_host) × I
    if residual_stiffness is None:
        residual_stiffness = 2e-6 if dtype == jnp.float64 else 2e-5
    lam_max = jnp.max(jnp.linalg.eigvalsh(voigt_to_mandel_stiffness(c_host)), axis=-1)
    c_floor = (residual_stiffness * jax.lax.stop_gradient(lam_max))[:, None, None] * jnp.diag(
        jnp.asarray([1.0, 1.0, 1.0, 0.5, 0.5, 0.5], dtype))
    def one_pass(comp):
        kn, kt = params.secant(comp, sec_host)
        c_lam = coh.laminate_stiffness(c_host, n_host, kn, kt, h_eff) + c_floor
        res = solve_elasticity(
            jnp.concatenate([t0, c_lam]), jnp.concatenate([t1, c_lam]), new_p, xarr,
            expansion_table=exp_ext, eigenstrain_field=eigenstrain_field, x_ref=x_ref,
            macro_strain=macro_strain, macro_stress=macro_stress, stress_mask=stress_mask,
            tol=tol, maxiter=maxiter,
        )
        eps_host = res.strain[(slice(None),) + idx].T
        g = coh.laminate_opening(c_host, n_host, kn, kt, h_eff, eps_host - eig_host)
        return res, g, jnp.sum(g * n_host, axis=1)

    # only damaged layers switch the operator when they close (K_n = K0 either way at d = 0)
    relevant = jax.lax.stop_gradient(params.damage(sec_host)) > 0
    comp = (jnp.zeros(m, bool) if initial_compression is None
            else jnp.asarray(initial_compression, bool)[idx])
    n_iter = int(max_active_set_iterations)
    # hysteresis: a closed layer reopens only beyond the softplus width w = smoothing·δ0.
    # A damaged layer in contact has no consistent state at g_n = 0 (open: it sinks in,
    # closed: it lifts off by a little), and a plain sign test alternates forever; kept
    # closed, it carries at most K0 w = smoothing·σc of spurious tension.
    reopen = jax.lax.stop_gradient(params.smoothing * coh.onset_opening(params.strength, params.penalty_stiffness))

    def closed(gn_, comp_):
        gn_ = jax.lax.stop_gradient(gn_)
        return jnp.where(comp_, gn_ < reopen, gn_ < 0)

    res, g, gn = one_pass(comp)
    try:  # eager (also under jax.grad): Python loop, stops as soon as the set is stable
        rel = np.asarray(relevant)
        cmp = np.asarray(comp)
        new = np.asarray(closed(gn, cmp))
        settled = bool(np.all((new == cmp) | ~rel))
        nsolve = 1
        while not settled and nsolve < n_iter:
            cmp = np.where(rel, new, cmp)
            res, g, gn = one_pass(jnp.asarray(cmp))
            nsolve += 1
            new = np.asarray(closed(gn, cmp))
            settled = bool(np.all((new == cmp) | ~rel))
        settled = jnp.asarray(settled)
        nsolve = jnp.asarray(nsolve, jnp.int32)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        # under jit: the first pass above proposes a set; further passes search it in a
        # while loop that carries only the boolean set (no derivative flows through it);
        # if the loop ran, one more, differentiated solve with the settled set gives the
        # gradient of the converged active set. Compiled: one solve in the loop and two
        # outside; before any layer is damaged (the usual case) only the first pass runs.
        def search(carry):
            comp_, _, n_ = carry
            _, _, gn_ = one_pass(comp_)
            new_ = jnp.where(relevant, closed(gn_, comp_), comp_)
            return new_, jnp.all(new_ == comp_), n_ + 1

        def searching(carry):
            return ~carry[1] & (carry[2] < n_iter - 1)

        proposed = jnp.where(relevant, closed(gn, comp), comp)
        comp, settled, n_searched = jax.lax.while_loop(
            searching, search, (proposed, jnp.all(proposed == comp), jnp.asarray(0, jnp.int32)))
        res, g, gn = jax.lax.cond(n_searched > 0, one_pass, lambda c, r=res, gg=g, q=gn: (r, gg, q), comp)
        nsolve = (1 + n_searched).astype(jnp.int32)  # the re-solve for the derivative is not counted

    trial = params.update_history(hist_host, g.T, n_host.T)
    sig_host = res.stress[(slice(None),) + idx].T
    sig_t = jnp.stack([jnp.stack([sig_host[:, int(coh._VI[i, j])] for j in range(3)], -1)
                       for i in range(3)], -2)
    tn = jnp.einsum("mi,mij,mj->m", n_host, sig_t, n_host)

    g_field = _scatter(shape, idx, g, dtype)
    trial_field = hist.at[idx].set(trial)
    # per-face gaps at the active voxel of each face
    w = params.smoothing * coh.onset_opening(params.strength, params.penalty_stiffness)
    gaps = []
    gn_field = _scatter(shape, idx, gn, dtype)
    for fm, ax, d in zip(geometry.face_masks, geometry.face_axes, geometry.face_directions):
        gface = gn_field
        if geometry.side == "conductor":
            gface = jnp.roll(gface, -d, axis=ax)  # layer of the neighbour b = a + d e
        gaps.append(jnp.where(jnp.asarray(fm), coh.positive_part(gface, w), 0.0))
    return InterfaceSolution(
        stress=res.stress,
        strain=res.strain,
        opening=g_field,
        normal_opening=gn_field,
        normal_traction=_scatter(shape, idx, tn, dtype),
        trial_history=trial_field,
        damage=params.damage(trial_field) * jnp.asarray(geometry.host, dtype),
        face_gaps=tuple(gaps),
        converged=jnp.logical_and(res.converged, settled),
        active_set_iterations=nsolve,
        cg_iterations=res.iterations,
        cg_residual=res.residual,
    )


def layer_gap_statistics(solution, geometry, params):
    """(D_G_ave, D_G_max) from the layers: ⟨g_n⟩₊ averaged with the layer areas
    (area_factor, see InterfaceGeometry), max over the layers (m). Preferred for
    D_G_ave: the face average (:func:`area_averaged_gap`) counts an edge voxel's
    opening twice and a corner's three times."""
    idx = geometry.host_index
    w = params.smoothing * coh.onset_opening(params.strength, params.penalty_stiffness)
    gp = coh.positive_part(solution.normal_opening[idx], w)
    a = jnp.asarray(geometry.area_factor, gp.dtype)
    return jnp.sum(gp * a) / jnp.maximum(jnp.sum(a), 1.0), jnp.max(gp, initial=0.0)


def area_averaged_gap(face_gaps, face_masks):
    """(D_G_ave, D_G_max): mean and max face gap over all active | conductor faces (m).

    All faces have the same area h², so the area average is the face mean.
    """
    total = sum(jnp.sum(g) for g in face_gaps)
    count = sum(int(np.sum(np.asarray(m))) for m in face_masks)
    gmax = jnp.max(jnp.stack([jnp.max(g) for g in face_gaps]))
    return total / max(count, 1), gmax


# --- cells: the interface of a cell run (engine.model.resolve, engine.solve.cell_step) ---------------


class CellInterface(NamedTuple):
    """The cohesive layers of a cell, on the device (part of CellGeometry).

    Attributes:
        layers: :class:`InterfaceGeometry` with jnp arrays (hosts on the active side).
        face_host: per reactive face group of the cell (CellGeometry.face_index order),
            int32 index of the layer that owns each face, or M (one past the last layer:
            no layer, e.g. a face to a conductor the particle is not bonded to).
    """

    layers: InterfaceGeometry
    face_host: tuple


def cell_interface(active, bonded, face_index, shape) -> CellInterface:
    """Layers on every active voxel with a face to a ``bonded`` conductor voxel, and the
    owner of each reactive face (``face_index``: per face group, flat indices of the
    active voxels, as CellGeometry stores them)."""
    layers = interface_geometry(active, bonded, side="active")
    m = len(layers.host_index[0])
    owner = np.full(int(np.prod(shape)), m, np.int64)
    owner[np.ravel_multi_index(layers.host_index, shape)] = np.arange(m)
    face_host = tuple(jnp.asarray(owner[np.asarray(idx)], jnp.int32) for idx in face_index)
    device = InterfaceGeometry(
        jnp.asarray(layers.host), tuple(jnp.asarray(i, jnp.int32) for i in layers.host_index),
        jnp.asarray(layers.normals), jnp.asarray(layers.area_factor),
        tuple(jnp.asarray(f) for f in layers.face_masks), layers.face_axes, layers.face_directions, layers.side)
    return CellInterface(device, face_host)


class DebondingParams(eqx.Module):
    """Everything debonding adds to a cell's parameters (array leaves, differentiable).

    Attributes:
        cohesive: :class:`CohesiveParams` (σc, Gc, K0, smoothing).
        gap_decay_length_m: g0 of R_int = R0 exp(g/g0) (m); a modelling choice.
        elastic: the cell's :class:`~ssbx.engine.physics.mechanics.StressCoupling`
            (stiffness tables, β, x_ref, mean stress; tol and maxiter static).
        update_every_steps, max_damage_increment, max_active_set_iterations: step
            control (static ints; the increment an array leaf).
    """

    cohesive: CohesiveParams
    gap_decay_length_m: jax.Array
    elastic: eqx.Module
    max_damage_increment: jax.Array
    update_every_steps: int = eqx.field(static=True, default=5)
    max_active_set_iterations: int = eqx.field(static=True, default=8)

    def face_resistance(self, r0, gap_m):
        """R_int = R0 exp(min(g/g0, 30)) (Ω m²): the exponent is capped at 30 (×1e13,
        an insulating face) so float32 cannot overflow; beyond the cap dR/dg = 0."""
        return r0 * jnp.exp(jnp.minimum(gap_m / self.gap_decay_length_m, 30.0))


def solve_debonding(interface: CellInterface, params: DebondingParams, orientations, x, history, voxel_size,
                    secant_history=None) -> InterfaceSolution:
    """The cell's stress with its cohesive layers at frozen ``history`` (κ grid, m), for
    the Li field ``x`` (0 off the active phase): :func:`solve_with_interfaces` with the
    cell's tables and mean-stress control (every component: zero laterally, the stack
    pressure along the stack axis)."""
    el = params.elastic
    return solve_with_interfaces(
        interface.layers, el.table0, el.table1, el.phase_index, x, params.cohesive, history, voxel_size,
        expansion_table=el.expansion_table(orientations), x_ref=el.x_ref, macro_stress=el.macro_stress,
        stress_mask=jnp.ones(el.macro_stress.shape, bool), tol=el.tol, maxiter=el.maxiter,
        max_active_set_iterations=params.max_active_set_iterations, secant_history=secant_history)


def layer_statistics(interface: CellInterface, gap, damage):
    """(D_G_ave, D_G_max, damaged area fraction, debonded area fraction) of the layers:
    ``gap`` and ``damage`` per layer (M,); areas from InterfaceGeometry.area_factor;
    damaged: d > 0, debonded: d ≥ 0.99."""
    a = interface.layers.area_factor.astype(gap.dtype)
    total = jnp.maximum(jnp.sum(a), 1e-30)
    return (jnp.sum(gap * a) / total, jnp.max(gap, initial=0.0),
            jnp.sum(jnp.where(damage > 0, a, 0.0)) / total, jnp.sum(jnp.where(damage >= 0.99, a, 0.0)) / total)


def positive_gap(params: DebondingParams, normal_opening):
    """⟨g_n⟩₊ as the R_int law and D_G use it (softplus of width smoothing·δ0)."""
    c = params.cohesive
    return coh.positive_part(normal_opening, c.smoothing * coh.onset_opening(c.strength, c.penalty_stiffness))

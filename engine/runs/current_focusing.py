"""Scenario S3: cell-scale current focusing with Li plating in a 2D cell.

Geometry (docs/current_focusing.md): a 2D grid ``(nx, nz)``; axis 0 = x is lateral
(insulating or periodic edges, width W = 420 µm by default), axis 1 = z is the stack (height 250 µm):
Li metal for z < ``li_thickness``, then the Li6PS5Cl separator (``separator``, 100 µm),
then the composite cathode: ``n_rows`` rows of circular particles (diameter
``particle_diameter``) on a ``col_pitch`` × ``row_pitch`` lattice embedded in SE, up to
the ion-blocking cathode collector at z = H. Optional elliptical Li protrusions grow
from the Li face into the separator.

Physics: quasi-static, galvanostatic (charging: Li⁺ leaves the cathode, Li plates on
the anode). φ_e solves ∇·(σ∇φ_e) = 0 in the SE with Butler–Volmer at active particle|SE
faces (every active particle at one potential φ_s = ψ + U, i.e. a perfect electronic
network and a fixed SOC during a short pulse) and at Li|SE faces (φ_Li = 0); ψ is the
unknown fixed by ∫ i_c dA = I_app W. Newton's method on (φ_e, ψ); each step solves the
bordered linear system with two conjugate-gradient solves of the SPD operator
G + diag(∂i/∂η) built from ``kernels.conduction`` face conductances.

Mechanics: the plated thickness δ(x) = −i_Li t V_m / F is inserted as a uniaxial
eigenstrain δ/h (normal to each Li|SE face) into the SE voxels touching Li;
``kernels.elasticity.solve_elasticity`` (2D plane strain, periodic cell — mirrored in x
for insulating edges —, zero mean lateral strain, stack stress = −stack_pressure) gives the stress; von Mises in the SE.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ssbx.engine.errors import ConfigError
from ssbx.kernels import conduction, elasticity, plating, stiffness
from ssbx.kernels.constants import FARADAY, GAS_CONSTANT

SE, ACTIVE, INACTIVE, LI = 0, 1, 2, 3

_GEOMETRY_DEFAULTS = dict(
    width_um=420.0, height_um=250.0, voxel_um=2.0, li_thickness_um=10.0, separator_um=100.0,
    n_rows=5, particle_diameter_um=10.0, col_pitch_um=14.0, row_pitch_um=28.0,
    inactive="none", inactive_fraction=1.0 / 3.0, inactive_particles=[], protrusions=[],
    lateral="noflux",
)
_LATERAL = ("noflux", "periodic")
_INACTIVE_MODES = ("none", "center", "sides")


class FocusingParams(eqx.Module):
    """Physical parameters (array leaves, SI units).

    sigma_se: Li6PS5Cl ionic conductivity (S/m); default 0.2 S/m = 2 mS/cm, inside the
        1–3 mS/cm range of docs/physics.md §6.
    i0_cathode: NCM|SE exchange current density (A/m²), modelling parameter.
    i0_li: Li|SE exchange current density (A/m²), modelling parameter.
    current_density: applied charging current per projected area (A/m²), S3: 100.
    time_s: duration of the galvanostatic pulse (s) for the plated thickness.
    ocv: cathode open-circuit potential at the fixed SOC (V vs Li), only shifts φ_s.
    E_se, nu_se: Li6PS5Cl, S3 values 28 GPa, 0.27 (docs/physics.md §7, range in §6).
    E_li, nu_li: Li metal 7.82 GPa, 0.381 (Masias et al., J. Mater. Sci. 54, 2585 (2019)).
    stack_pressure: mean stack-axis stress −p (Pa).
    """

    sigma_se: jax.Array = 0.2
    i0_cathode: jax.Array = 1.0
    i0_li: jax.Array = 10.0
    temperature_K: jax.Array = 298.15
    alpha_a: jax.Array = 0.5
    alpha_c: jax.Array = 0.5
    current_density: jax.Array = 100.0
    time_s: jax.Array = 60.0
    ocv: jax.Array = 3.8
    E_se: jax.Array = 28e9
    nu_se: jax.Array = 0.27
    E_li: jax.Array = 7.82e9
    nu_li: jax.Array = 0.381
    stack_pressure: jax.Array = 0.0
    molar_volume: jax.Array = plating.LI_MOLAR_VOLUME


_PARAM_RANGES = dict(
    sigma_se=(0.0, None), i0_cathode=(0.0, None), i0_li=(0.0, None), temperature_K=(0.0, None),
    alpha_a=(0.0, 1.0), alpha_c=(0.0, 1.0), current_density=(0.0, None), time_s=(0.0, None),
    ocv=(None, None), E_se=(0.0, None), nu_se=(-1.0, 0.5), E_li=(0.0, None), nu_li=(-1.0, 0.5),
    stack_pressure=(None, None), molar_volume=(0.0, None),
)


def _check_range(name, value, lo, hi):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} = {value!r}: must be a number") from None
    ok = math.isfinite(v) and (lo is None or v > lo) and (hi is None or v < hi)
    if name in ("current_density", "time_s", "stack_pressure"):
        ok = math.isfinite(v) and (lo is None or v >= lo)
    if not ok:
        rng = f"({'-inf' if lo is None else lo}, {'inf' if hi is None else hi})"
        raise ConfigError(f"{name} = {value!r}: must be finite and in {rng}")
    return v


def make_params(**kw) -> FocusingParams:
    """FocusingParams from keyword values (checked; unknown names → ConfigError)."""
    unknown = set(kw) - set(_PARAM_RANGES)
    if unknown:
        raise ConfigError(f"physics: unknown field(s) {sorted(unknown)}; valid: {sorted(_PARAM_RANGES)}")
    full = {f: getattr(FocusingParams, f) for f in _PARAM_RANGES}
    full.update(kw)
    vals = {k: jnp.asarray(_check_range(k, v, *_PARAM_RANGES[k])) for k, v in full.items()}
    return FocusingParams(**vals)


# ----------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------


def _check_geometry(cfg):
    unknown = set(cfg) - set(_GEOMETRY_DEFAULTS)
    if unknown:
        raise ConfigError(f"geometry: unknown field(s) {sorted(unknown)}; valid: {sorted(_GEOMETRY_DEFAULTS)}")
    g = {**_GEOMETRY_DEFAULTS, **cfg}
    for k in ("width_um", "height_um", "voxel_um", "particle_diameter_um", "col_pitch_um", "row_pitch_um",
              "separator_um", "li_thickness_um"):
        _check_range(k, g[k], 0.0, None)
    if g["inactive"] not in _INACTIVE_MODES:
        raise ConfigError(f"inactive = {g['inactive']!r}; valid: {list(_INACTIVE_MODES)}")
    if g["lateral"] not in _LATERAL:
        raise ConfigError(f"lateral = {g['lateral']!r}; valid: {list(_LATERAL)}")
    f = float(g["inactive_fraction"])
    if not 0.0 <= f < 1.0:
        raise ConfigError(f"inactive_fraction = {f!r}: must be in [0, 1)")
    if int(g["n_rows"]) < 1:
        raise ConfigError(f"n_rows = {g['n_rows']!r}: must be an integer ≥ 1")
    top = g["li_thickness_um"] + g["separator_um"] + g["n_rows"] * g["row_pitch_um"]
    if top > g["height_um"] + 1e-9:
        raise ConfigError(
            f"height_um = {g['height_um']}: Li + separator + n_rows·row_pitch = {top} µm does not fit; "
            "valid: height_um ≥ that sum")
    if g["particle_diameter_um"] > min(g["col_pitch_um"], g["row_pitch_um"]):
        raise ConfigError(f"particle_diameter_um = {g['particle_diameter_um']}: must be ≤ col and row pitch "
                          "(particles may not overlap)")
    ncols = g["width_um"] / g["col_pitch_um"]
    if abs(ncols - round(ncols)) > 1e-6:
        raise ConfigError(f"col_pitch_um = {g['col_pitch_um']}: width_um / col_pitch_um = {ncols} must be an "
                          "integer (lateral periodicity)")
    for p in g["protrusions"]:
        if not (isinstance(p, (list, tuple)) and len(p) == 3 and all(float(v) > 0 for v in p[1:])):
            raise ConfigError(f"protrusions entry {p!r}: must be [x_center_um, length_um > 0, half_width_um > 0]")
    return g


def _dx(X, xc, W, lateral):
    return (X - xc + W / 2) % W - W / 2 if lateral == "periodic" else X - xc


def build_geometry(cfg: dict):
    """Label grid (nx, nz): 0 SE, 1 active particle, 2 inactive particle, 3 Li metal.

    Returns (labels, info) with info = dict(h, particle table, column centres).
    """
    g = _check_geometry(dict(cfg))
    h = g["voxel_um"]
    nx, nz = round(g["width_um"] / h), round(g["height_um"] / h)
    if nx < 4 or nz < 4:
        raise ConfigError(f"voxel_um = {h}: grid {nx}×{nz} too small; valid: ≥ 4 voxels per axis")
    x = (np.arange(nx) + 0.5) * h
    z = (np.arange(nz) + 0.5) * h
    X, Z = np.meshgrid(x, z, indexing="ij")
    W = g["width_um"]
    labels = np.zeros((nx, nz), np.int32)
    z_li = g["li_thickness_um"]
    labels[Z < z_li] = LI
    for xc, length, half in g["protrusions"]:
        dx = _dx(X, float(xc), W, g["lateral"])
        inside = (dx / float(half)) ** 2 + ((Z - z_li) / float(length)) ** 2 <= 1.0
        labels[inside & (Z >= z_li)] = LI
    ncols = round(W / g["col_pitch_um"])
    col_x = (np.arange(ncols) + 0.5) * g["col_pitch_um"]
    z0 = z_li + g["separator_um"]
    explicit = {(int(r), int(c)) for r, c in g["inactive_particles"]}
    f = float(g["inactive_fraction"])
    particles = []
    R = g["particle_diameter_um"] / 2
    for r in range(int(g["n_rows"])):
        zc = z0 + (r + 0.5) * g["row_pitch_um"]
        for c, xc in enumerate(col_x):
            off = abs(xc - W / 2)
            inactive = (r, c) in explicit
            inactive |= g["inactive"] == "center" and off < f * W / 2
            inactive |= g["inactive"] == "sides" and off > (1 - f) * W / 2
            dx = _dx(X, xc, W, g["lateral"])
            mask = dx**2 + (Z - zc) ** 2 <= R**2
            labels[mask] = INACTIVE if inactive else ACTIVE
            particles.append(dict(row=r, col=c, x_um=float(xc), z_um=float(zc), active=not inactive))
    return labels, dict(h_m=h * 1e-6, particles=particles, col_x_um=col_x.tolist(), nx=nx, nz=nz,
                        lateral=g["lateral"])


def face_counts(labels, lateral="noflux"):
    """Per SE voxel: faces shared with active particles / Li, total and per axis.

    Lateral axis 0 periodic or bounded (``lateral``), stack axis 1 bounded. Returns (n_c, n_a, n_a_axis) with
    n_a_axis of shape (2, nx, nz).
    """
    lab = np.asarray(labels)
    se = lab == SE
    n_c = np.zeros(lab.shape)
    n_a_axis = np.zeros((2,) + lab.shape)
    padded = np.pad(lab, ((0, 0), (1, 1)), constant_values=-1)
    if lateral == "periodic":
        left, right = np.roll(lab, 1, 0), np.roll(lab, -1, 0)
    else:
        px = np.pad(lab, ((1, 1), (0, 0)), constant_values=-1)
        left, right = px[:-2], px[2:]
    neighbours = [(0, left), (0, right), (1, padded[:, :-2]), (1, padded[:, 2:])]
    for a, nb in neighbours:
        n_c += se & (nb == ACTIVE)
        n_a_axis[a] += se & (nb == LI)
    return n_c, n_a_axis.sum(0), n_a_axis


# ----------------------------------------------------------------------------------
# electrochemistry
# ----------------------------------------------------------------------------------


def _cg(matvec, b, diag, tol, maxiter):
    x, _ = jax.scipy.sparse.linalg.cg(matvec, b, tol=tol, atol=0.0, maxiter=maxiter, M=lambda r: r / diag)
    return x


@eqx.filter_jit
def _newton_step(phi, psi, g, se, n_c, n_a, h, p, width_m, tol):
    args = (n_c, n_a, h, p.i0_cathode, p.i0_li, p.temperature_K, p.alpha_a, p.alpha_c)
    res, i_c, _ = plating.focusing_residual(phi, psi, g, *args)
    res = jnp.where(se, res, 0.0)
    con = h * jnp.sum(n_c * i_c) - p.current_density * width_m
    d_tot, d_c = plating.focusing_jacobian_diagonal(phi, psi, *args)
    s = p.sigma_se  # scale: face conductances become O(1)
    gs = tuple(ga / s for ga in g)
    gb = jnp.where(se, d_tot / s, 1.0)
    diag = gb + sum(ga + jnp.roll(ga, 1, axis=a) for a, ga in enumerate(gs))  # operator diagonal

    def matvec(x):
        return conduction.apply_operator(x, gs, gb)

    n = phi.size
    x1 = _cg(matvec, -res / s, diag, tol, 20 * n)
    x2 = _cg(matvec, d_c / s, diag, tol, 20 * n)
    dpsi = (-con + jnp.sum(d_c * x1)) / (jnp.sum(d_c) - jnp.sum(d_c * x2))
    dphi = jnp.where(se, x1 + x2 * dpsi, 0.0)
    rel = jnp.abs(con) / (p.current_density * width_m)
    return dphi, dpsi, jnp.max(jnp.abs(res)) / (p.current_density * width_m), rel


def solve_focusing(labels, h_m, params: FocusingParams, *, lateral="noflux", tol=1e-10, max_newton=40,
                   max_step_V=0.05):
    """Newton solve of the S3 potential problem. Returns a dict of fields and scalars."""
    labels = np.asarray(labels)
    n_c, n_a, n_a_axis = face_counts(labels, lateral)
    if n_a.sum() == 0:
        raise ConfigError("geometry: no Li|SE face (Li layer missing); valid: li_thickness_um ≥ voxel_um")
    if n_c.sum() == 0:
        raise ConfigError("geometry: no active particle|SE face (all particles inactive); "
                          "valid: at least one active particle")
    p = params
    dtype = jnp.result_type(float)
    se = jnp.asarray(labels == SE)
    sigma = jnp.where(se, p.sigma_se, 0.0).astype(dtype)
    g = conduction.face_conductances(sigma, axis=1, lateral=lateral)
    width_m = labels.shape[0] * h_m
    n_c_j, n_a_j = jnp.asarray(n_c, dtype), jnp.asarray(n_a, dtype)
    # initial guess: uniform current on each interface
    f2 = 2.0 * GAS_CONSTANT * float(p.temperature_K) / FARADAY  # 2RT/F (α = ½ estimate)
    i_mean_c = float(p.current_density) * width_m / (h_m * n_c.sum())
    i_mean_a = float(p.current_density) * width_m / (h_m * n_a.sum())
    phi0 = f2 * math.asinh(i_mean_a / (2 * float(p.i0_li)))
    psi = jnp.asarray(phi0 + f2 * math.asinh(i_mean_c / (2 * float(p.i0_cathode))), dtype)
    phi = jnp.where(se, phi0, 0.0).astype(dtype)
    history = []
    converged = False
    for it in range(max_newton):
        dphi, dpsi, rres, rcon = _newton_step(phi, psi, g, se, n_c_j, n_a_j, h_m, p, width_m, tol * 1e-2)
        step = max(float(jnp.max(jnp.abs(dphi))), abs(float(dpsi)))
        lam = min(1.0, max_step_V / step) if step > 0 else 1.0
        phi, psi = phi + lam * dphi, psi + lam * dpsi
        history.append(dict(iteration=it, residual=float(rres), current_mismatch=float(rcon), step_V=step))
        if step < 1e-9 and float(rres) < tol and float(rcon) < tol:
            converged = True
            break
    res, i_c, i_a = plating.focusing_residual(phi, psi, g, n_c_j, n_a_j, h_m, p.i0_cathode, p.i0_li,
                                              p.temperature_K, p.alpha_a, p.alpha_c)
    return dict(phi=phi, psi=psi, i_c=i_c, i_a=i_a, g=g, se=se, n_c=n_c, n_a=n_a, n_a_axis=n_a_axis,
                converged=converged, history=history, width_m=width_m)


@eqx.filter_jit
def _newton_fixed(p, se, n_c, n_a, h_m, width_m, lateral, n_newton, cg_tol, max_step_V):
    sigma = jnp.where(se, p.sigma_se, 0.0)
    g = conduction.face_conductances(sigma, axis=1, lateral=lateral)
    f2 = 2.0 * GAS_CONSTANT * p.temperature_K / FARADAY
    total = p.current_density * width_m
    phi0 = f2 * jnp.arcsinh(total / (h_m * jnp.sum(n_a)) / (2 * p.i0_li))
    psi0 = phi0 + f2 * jnp.arcsinh(total / (h_m * jnp.sum(n_c)) / (2 * p.i0_cathode))
    phi0 = jnp.where(se, phi0, 0.0)

    def body(_, state):
        phi, psi = state
        dphi, dpsi, _, _ = _newton_step(phi, psi, g, se, n_c, n_a, h_m, p, width_m, cg_tol)
        step = jnp.maximum(jnp.max(jnp.abs(dphi)), jnp.abs(dpsi))
        lam = jnp.minimum(1.0, max_step_V / jnp.maximum(step, 1e-300))
        return phi + lam * dphi, psi + lam * dpsi

    phi, psi = jax.lax.fori_loop(0, n_newton, body, (phi0, psi0))
    _, _, i_a = plating.focusing_residual(phi, psi, g, n_c, n_a, h_m, p.i0_cathode, p.i0_li,
                                          p.temperature_K, p.alpha_a, p.alpha_c)
    return phi, psi, -jnp.sum(n_a * i_a, axis=1)


def plating_profile_differentiable(labels, h_m, params: FocusingParams, *, lateral="noflux", n_newton=12,
                                   cg_tol=1e-12, max_step_V=0.05):
    """(φ_e, ψ, plating current density along x) as a differentiable function of params.

    Same discrete problem as :func:`solve_focusing`, but a fixed number of Newton steps
    in ``lax.fori_loop`` (no Python-side convergence test), so ``jax.grad`` /
    ``jax.jacfwd`` go through: the linear solves are ``jax.scipy.sparse.linalg.cg``
    (implicitly differentiated by ``custom_linear_solve``), and at convergence the
    derivative of the Newton iterate is the implicit-function derivative. Use enough
    steps for convergence (:func:`solve_focusing` reports how many it needed, 5–7 here).
    """
    labels = np.asarray(labels)
    n_c, n_a, _ = face_counts(labels, lateral)
    dtype = jnp.result_type(float)
    se = jnp.asarray(labels == SE)
    return _newton_fixed(params, se, jnp.asarray(n_c, dtype), jnp.asarray(n_a, dtype), h_m,
                         labels.shape[0] * h_m, lateral, n_newton, cg_tol, max_step_V)


def current_density_field(phi, g, h_m):
    """Ionic current density at voxel centres (A/m²), components (j_x, j_z).

    Face current density g (φ_k − φ_{k+1}) / h averaged over the two faces of a voxel
    along each axis (g = 0 on non-SE faces).
    """
    comps = []
    for a, ga in enumerate(g):
        face = ga * (phi - jnp.roll(phi, -1, axis=a)) / h_m
        comps.append(0.5 * (face + jnp.roll(face, 1, axis=a)))
    return jnp.stack(comps)


def plating_profile(sol, h_m):
    """Plating current density along x (A/m² of projected anode; positive = plating)."""
    return -jnp.sum(sol["n_a"] * sol["i_a"], axis=1)


def plating_stress(labels, sol, params: FocusingParams, h_m, *, lateral="noflux", tol=1e-6, maxiter=3000):
    """Von Mises stress from the plated Li volume as eigenstrain at Li|SE faces.

    The elasticity solver is periodic; with ``lateral="noflux"`` the cell and its
    eigenstrain are mirrored along x (width 2W), which makes the periodic solution the
    one with symmetric lateral walls (zero normal displacement, zero shear traction).

    Returns (stress (6, nx, nz) Pa, solver result, von Mises (nx, nz) Pa, NaN outside SE).
    """
    p = params
    labels = np.asarray(labels)
    delta = plating.plated_thickness(sol["i_a"], p.time_s, p.molar_volume)  # per SE voxel (m)
    eps = plating.plating_eigenstrain(delta, h_m)
    n_ax = jnp.asarray(sol["n_a_axis"])
    eig = jnp.zeros((6,) + labels.shape, eps.dtype)
    eig = eig.at[0].set(n_ax[0] * eps).at[1].set(n_ax[1] * eps)
    nx = labels.shape[0]
    if lateral == "noflux":  # mirror image along x: periodic cell ≡ symmetric lateral walls
        labels = np.concatenate([labels, labels[::-1]], axis=0)
        eig = jnp.concatenate([eig, eig[:, ::-1]], axis=1)
    phase = np.where(labels == LI, 2, np.where(labels == SE, 0, 1)).astype(np.int32)
    c_se = stiffness.isotropic_stiffness(p.E_se, p.nu_se)
    c_li = stiffness.isotropic_stiffness(p.E_li, p.nu_li)
    table = jnp.stack([c_se, c_se, c_li])  # particles: SE stiffness (see docs)
    res = elasticity.solve_elasticity(
        table, table, jnp.asarray(phase), jnp.zeros(labels.shape, eps.dtype), eigenstrain_field=eig,
        macro_strain=jnp.zeros(3), macro_stress=jnp.asarray([0.0, -p.stack_pressure, 0.0]),
        stress_mask=jnp.asarray([False, True, True]), tol=tol, maxiter=maxiter)
    stress = res.stress[:, :nx]
    vm = elasticity.von_mises(stress)
    return stress, res, jnp.where(jnp.asarray(labels[:nx] == SE), vm, jnp.nan)


def run_focusing(geometry: dict, params: FocusingParams, *, stress=True, tol=1e-10):
    """Full S3 pipeline. Returns (fields: dict of arrays, summary: dict)."""
    labels, info = build_geometry(geometry)
    h = info["h_m"]
    sol = solve_focusing(labels, h, params, lateral=info["lateral"], tol=tol)
    j = current_density_field(sol["phi"], sol["g"], h)
    i_plate = plating_profile(sol, h)
    delta = plating.plated_thickness(-i_plate, params.time_s, params.molar_volume)
    I_app = float(params.current_density) * sol["width_m"]
    I_anode = float(jnp.sum(i_plate) * h)
    I_cath = float(h * jnp.sum(sol["n_c"] * sol["i_c"]))
    V_li = float(jnp.sum(delta) * h)
    V_expected = I_app * float(params.time_s) * float(params.molar_volume) / FARADAY
    se = np.asarray(sol["se"])
    fields = dict(
        labels=labels, phi_e=np.where(se, np.asarray(sol["phi"]), np.nan),
        current_density=np.where(se, np.asarray(j), np.nan),
        li_flux_density=np.where(se, np.asarray(j) / FARADAY, np.nan),
        x_um=(np.arange(labels.shape[0]) + 0.5) * info["h_m"] * 1e6,
        plating_current_density=np.asarray(i_plate), plated_thickness_m=np.asarray(delta),
    )
    mean = float(jnp.mean(i_plate))
    summary = dict(
        grid=list(labels.shape), voxel_um=info["h_m"] * 1e6, converged=sol["converged"],
        newton_iterations=len(sol["history"]), applied_current_A_per_m=I_app,
        cathode_current_A_per_m=I_cath, anode_current_A_per_m=I_anode,
        charge_conservation_rel=abs(I_anode - I_app) / I_app,
        plating_peak_to_mean=float(jnp.max(i_plate)) / mean,
        plating_min_to_mean=float(jnp.min(i_plate)) / mean,
        plating_peak_x_um=float(fields["x_um"][int(jnp.argmax(i_plate))]),
        cathode_potential_V=float(sol["psi"]) + float(params.ocv),
        plated_volume_m2=V_li, plated_volume_expected_m2=V_expected,
        max_plated_thickness_um=float(jnp.max(delta)) * 1e6,
        n_active=sum(p["active"] for p in info["particles"]), n_particles=len(info["particles"]),
    )
    if stress:
        stress, res, vm = plating_stress(labels, sol, params, h, lateral=info["lateral"])
        fields["von_mises_Pa"] = np.asarray(vm)
        fields["stress_Pa"] = np.asarray(stress)
        summary.update(von_mises_max_SE_Pa=float(np.nanmax(vm)), elasticity_converged=bool(res.converged))
    return fields, summary, info


# ----------------------------------------------------------------------------------
# CLI: ssbx focus FILE.toml
# ----------------------------------------------------------------------------------


def load_config(path):
    try:
        cfg = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"focus config {path}: {e}") from None
    unknown = set(cfg) - {"geometry", "physics", "output"}
    if unknown:
        raise ConfigError(f"focus config: unknown table(s) {sorted(unknown)}; valid: geometry, physics, output")
    return cfg.get("geometry", {}), cfg.get("physics", {}), cfg.get("output", {})


def write_outputs(fields, summary, stem):
    """``STEM.npz`` (all fields) + ``STEM.json`` (summary)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(stem.with_suffix(".npz"), **fields)
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return [stem.with_suffix(".npz"), stem.with_suffix(".json")]


def add_parser(sub):
    p = sub.add_parser("focus", help="S3: 2D cell-scale current focusing with Li plating (TOML config)")
    p.add_argument("config", help="TOML with [geometry], [physics], [output] tables")
    p.add_argument("--out", help="output stem (default: output.stem or the config's stem)")
    p.add_argument("--no-stress", action="store_true", help="skip the elasticity solve")
    return p


def run(args) -> int:
    """``ssbx focus``: exit 0 (converged), 1 (Newton did not converge), 2 (invalid input)."""
    import sys

    try:
        geo, phys, out = load_config(args.config)
        with jax.enable_x64(True):
            fields, summary, _ = run_focusing(geo, make_params(**phys), stress=not args.no_stress)
    except ConfigError as err:
        print(f"ssbx focus: invalid input: {err}", file=sys.stderr)
        return 2
    stem = args.out or out.get("stem") or str(Path(args.config).with_suffix(""))
    for f in write_outputs(fields, summary, stem):
        print(f)
    print(json.dumps(summary, indent=2))
    return 0 if summary["converged"] else 1

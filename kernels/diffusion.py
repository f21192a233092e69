"""Anisotropic Li diffusion in the active phase of a voxel grid.

Equation (docs/physics.md §2, stress coupling off):

    ∂x/∂t = ∇·(D ∇x) + s,        D = R_g diag(D1, D2, D3) R_gᵀ in grain g,

with x = c/c_max the normalised Li content, no flux across faces to non-active
voxels and a prescribed boundary source s on reactive surface faces.

Discretisation
--------------
Conservative finite volumes on a cubic voxel grid of spacing h. The operator is the
negative gradient of the discrete energy

    E(x) = h^d Σ_cells [ ¼ Σ_k D_kk (d_k+² + d_k−²) + Σ_{k<l} D_kl g_k g_l ],

where d_k± are the one-sided differences (x_{i±e_k} − x_i)/(±h) across the two
k-faces of a cell (zero on faces that touch a non-active voxel) and
g_k = (d_k+ + d_k−)/2 is the cell-centred gradient built from them. This gives the
familiar face fluxes

    J_k(i+½) = −[ D̄_kk (x_{i+1} − x_i)/h + ½ (q_k(i) + q_k(i+1)) ],
    q_k = Σ_{l≠k} D_kl g_l ,       D̄_kk = ½ (D_kk(i) + D_kk(i+1)),

i.e. the cross terms of Günter et al. (J. Comput. Phys. 209, 354, 2005) built from
masked transverse gradients. Because the operator is (minus) the Hessian of an energy
that splits into non-negative per-cell parts, it is symmetric negative semi-definite
for any field of symmetric positive semi-definite tensors, conserves Σx exactly
(E is shift invariant), carries flux across grain boundaries (continuity of x and of
the normal flux), and is stable for explicit Euler steps

    Δt ≤ h² / (2 d λ_max(D))          (see :func:`stable_time_step`).

In a homogeneous medium the scheme is exact for quadratic fields, so the second moment
of a point source grows exactly as 2 D t.

Per-voxel data are a grain id (int32, −1 outside the active phase) and a per-grain
table of the d(d+1)/2 independent tensor components; the tensor is gathered inside the
kernel instead of being stored per voxel. All kernels work on 2D (nx, ny) and 3D
(nx, ny, nz) grids; in 2D the in-plane block of the 3D tensor is used (a section
through a 3D polycrystal with no gradient normal to it).

Scaling: the kernel takes the voxel size in metres and diffusivities in m²/s and forms
D/h² (1/s) once, which keeps float32 well conditioned.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .rotations import rotate_principal_tensor


def _shift(a, axis, offset):
    """Value of the neighbour at ``i + offset`` along ``axis`` (offset ±1), zero past the edge."""
    n = a.shape[axis]
    pad = [(0, 0)] * a.ndim
    if offset == 1:
        pad[axis] = (0, 1)
        start = 1
    else:
        pad[axis] = (1, 0)
        start = 0
    padded = jnp.pad(a, pad)
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, start + n)
    return padded[tuple(index)]


def grain_diffusion_tensors(rotations, principal_diffusivity, ndim=3):
    """Per-grain diffusion tensors in the sample frame, m²/s.

    D_g = R_g diag(D1, D2, D3) R_gᵀ (docs/physics.md §2). For ``ndim == 2`` the in-plane
    (x, y) block is returned.

    Args:
        rotations: (n_grains, 3, 3) rotation matrices (crystal -> sample).
        principal_diffusivity: (3,) or (n_grains, 3) diffusivities along the crystal
            axes [100], [010], [001], m²/s.
        ndim: 2 or 3.

    Returns:
        (n_grains, ndim, ndim) symmetric tensors.
    """
    d = rotate_principal_tensor(rotations, principal_diffusivity)
    return d[:, :ndim, :ndim]


def tensor_components(tensors):
    """Pack (n, d, d) symmetric tensors into (n, d(d+1)/2) columns.

    Order: the d diagonal components first (xx, yy[, zz]), then the upper triangle
    row by row (xy[, xz, yz]). :func:`diffusion_rate` reads this layout.
    """
    d = tensors.shape[-1]
    diag = [tensors[:, k, k] for k in range(d)]
    off = [tensors[:, k, l] for k in range(d) for l in range(k + 1, d)]
    return jnp.stack(diag + off, axis=-1)


def voxel_components(component_table, grain_id):
    """Per-voxel tensor components (d(d+1)/2, *grid) from a per-grain table, m²/s.

    Grain id −1 (non-active) reads grain 0; those voxels have no open faces, so the
    value never enters the rate.
    """
    safe_id = jnp.maximum(grain_id, 0)
    return jnp.stack([component_table[:, m][safe_id] for m in range(component_table.shape[1])])


def _unpack(comps, ndim):
    diag = [comps[k] for k in range(ndim)]
    off = {}
    m = ndim
    for k in range(ndim):
        for l in range(k + 1, ndim):
            off[(k, l)] = off[(l, k)] = comps[m]
            m += 1
    return diag, off


def _differences(x, active, inv_h):
    """Masked forward differences d_k+ (one per axis, on face i+½) and centred g_k."""
    ndim = x.ndim
    open_face, face_diff = [], []
    for k in range(ndim):
        is_open = active & _shift(active, k, 1)
        open_face.append(is_open)
        face_diff.append(jnp.where(is_open, _shift(x, k, 1) - x, 0.0) * inv_h)
    centred = [0.5 * (face_diff[k] + _shift(face_diff[k], k, -1)) for k in range(ndim)]
    return open_face, face_diff, centred


def _operator(x, comps, active, inv_h):
    """∇·(D∇x) on the active voxels for per-voxel components (see module docstring)."""
    return _divergence(_differences(x, active, inv_h), comps, active, inv_h)


def _divergence(differences, comps, active, inv_h):
    """The operator from precomputed :func:`_differences` of its argument."""
    open_face, face_diff, centred = differences
    ndim = len(face_diff)
    diag, off = _unpack(comps, ndim)
    rate = jnp.zeros_like(face_diff[0])
    for k in range(ndim):
        cross = sum(off[(k, l)] * centred[l] for l in range(ndim) if l != k)
        face_dkk = 0.5 * (diag[k] + _shift(diag[k], k, 1))
        flux = face_dkk * face_diff[k]
        if ndim > 1:
            flux = flux + 0.5 * (cross + _shift(cross, k, 1))
        flux = jnp.where(open_face[k], flux, 0.0)  # = −J_k on face i+½
        rate = rate + (flux - _shift(flux, k, -1)) * inv_h
    return jnp.where(active, rate, 0.0)


def _component_cotangent(g_differences, x, active, inv_h):
    """∂(gᵀ A(D) x)/∂D per voxel component, from the energy form of the operator.

    A(D) = −Hess Ẽ with Ẽ(x) = ½ B(x, x) and, per cell,

        B(u, v) = ½ Σ_k D_kk (du_k+ dv_k+ + du_k− dv_k−) + Σ_{k<l} D_kl (gu_k gv_l + gu_l gv_k),

    so gᵀ A x = −B(g, x) is linear in each cell's components and the cotangent of a
    component is minus its coefficient: products of the same masked differences the
    forward pass forms. ``g_differences`` are :func:`_differences` of g (the backward
    pass shares them with x̄ = A g). Layout as :func:`tensor_components`.
    """
    ndim = x.ndim
    _, dg, cg = g_differences
    _, dx, cx = _differences(x, active, inv_h)
    out = []
    for k in range(ndim):
        plus = dg[k] * dx[k]
        out.append(-0.5 * (plus + _shift(plus, k, -1)))  # faces i+½ and i−½ of cell i
    for k in range(ndim):
        for l in range(k + 1, ndim):
            out.append(-(cg[k] * cx[l] + cg[l] * cx[k]))
    return jnp.stack(out)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def symmetric_operator(x, comps, active, inv_h):
    """∇·(D∇x) from per-voxel components with a hand-written reverse mode.

    Same values as the operator inside :func:`diffusion_rate`. Reverse mode uses the
    symmetry of the operator, x̄ = A ḡ (one more operator application), and the energy
    form for the components (:func:`_component_cotangent`), instead of transposing every
    shift, mask and product; the fitting gradients use it. Forward mode (jvp/jacfwd) is
    not defined for it: use :func:`diffusion_rate` there.

    Args:
        x: (*grid) state; comps: (d(d+1)/2, *grid) components in m²/s as
            :func:`voxel_components` gives them; active: bool grid; inv_h: 1/h in 1/m
            (a static python float).
    """
    return _operator(x, comps, active, inv_h)


def _symmetric_operator_fwd(x, comps, active, inv_h):
    return _operator(x, comps, active, inv_h), (x, comps, active)


def _symmetric_operator_bwd(inv_h, residuals, g):
    x, comps, active = residuals
    g_differences = _differences(jnp.where(active, g, 0.0), active, inv_h)
    return (_divergence(g_differences, comps, active, inv_h),
            _component_cotangent(g_differences, x, active, inv_h), None)


symmetric_operator.defvjp(_symmetric_operator_fwd, _symmetric_operator_bwd)


def stress_drift_rate(x, potential, comps, active, inv_h, symmetric=True):
    """Stress-driven part of ∂x/∂t, −∇·(D x ∇χ), 1/s (docs/physics.md §2).

    With the flux J / c_max = −D (∇x − x ∇χ) and the dimensionless stress potential
    χ = σ : B / (c_max R T) (B: chemical expansion per unit x; for an isotropic
    B = (Ω c_max / 3) I this is Ω σ_h / (R T)), the rate is ∇·(D∇x) − ∇·(D x ∇χ).
    The second term is the operator of :func:`diffusion_rate` applied to χ with the
    cell tensors scaled by the cell's x, so it is conservative and, for x ≥ 0, uses a
    positive semi-definite weight.

    Args:
        x: (*grid) Li content; potential: (*grid) χ (dimensionless, only active voxels
            matter); comps: per-voxel components (m²/s) as :func:`voxel_components`;
            active: bool grid; inv_h: 1/h in 1/m (static float).
        symmetric: use :func:`symmetric_operator` (hand-written VJP, no forward mode)
            or the plain operator (all JAX transformations).
    """
    op = symmetric_operator if symmetric else _operator
    return -op(potential, comps * x[None], active, inv_h)


def diffusion_rate(x, grain_id, component_table, voxel_size_m, source_rate=None):
    """Right-hand side ∂x/∂t = ∇·(D∇x) + s on the active voxels, 1/s.

    Args:
        x: (nx, ny[, nz]) normalised Li content (values outside the active phase are
            ignored).
        grain_id: int array of the same shape; −1 marks non-active voxels.
        component_table: (n_grains, d(d+1)/2) tensor components in m²/s, as packed by
            :func:`tensor_components`.
        voxel_size_m: voxel edge h in metres (python float or scalar array).
        source_rate: optional per-voxel source s in 1/s (e.g. the prescribed surface
            flux of :func:`surface_flux_rate`); zero outside reactive voxels.

    Returns:
        ∂x/∂t with the shape of ``x``; zero on non-active voxels (plus ``source_rate``
        there, which the caller keeps zero).
    """
    active = grain_id >= 0
    rate = _operator(x, voxel_components(component_table, grain_id), active, 1.0 / voxel_size_m)
    if source_rate is not None:
        rate = jnp.where(active, rate + source_rate, 0.0)
    return rate


def surface_flux_rate(flux_mol_m2_s, face_count, c_max_mol_m3, voxel_size_m):
    """Source ∂x/∂t from a prescribed Li flux through reactive surface faces, 1/s.

    s = j · n_faces · h² / (c_max · h³) = j · n_faces / (c_max · h), where j > 0 is
    Li *into* the particle (lithiation) and n_faces is the reactive surface area of a
    voxel in units of h² (its number of reactive faces, or a staircase-corrected
    fractional value).

    Args:
        flux_mol_m2_s: Li flux density into the particle, mol/(m² s); scalar or
            per-voxel array.
        face_count: per-voxel reactive area in units of h² (0 elsewhere).
        c_max_mol_m3: maximum Li concentration, mol/m³.
        voxel_size_m: voxel edge h, m.
    """
    return flux_mol_m2_s * face_count / (c_max_mol_m3 * voxel_size_m)


def explicit_step(x, dt_s, grain_id, component_table, voxel_size_m, source_rate=None):
    """One forward-Euler step x + Δt ∂x/∂t (stable for Δt ≤ :func:`stable_time_step`)."""
    return x + dt_s * diffusion_rate(x, grain_id, component_table, voxel_size_m, source_rate)


def stable_time_step(max_diffusivity_m2_s, voxel_size_m, ndim, safety=0.9):
    """Largest stable forward-Euler step for :func:`diffusion_rate`, in seconds.

    The operator's spectral radius is bounded by 4 d λ_max(D) / h² (the per-cell
    energy is at most ½ λ_max Σ_faces d_f², and the graph Laplacian of the voxel grid
    has eigenvalues ≤ 4d), so Δt = safety · h² / (2 d λ_max) with safety < 1 is
    stable for any orientation field.

    Args:
        max_diffusivity_m2_s: largest principal diffusivity over all grains, m²/s.
        voxel_size_m: voxel edge h, m.
        ndim: 2 or 3.
        safety: factor in (0, 1].
    """
    if max_diffusivity_m2_s <= 0:
        raise ValueError(
            f"max_diffusivity_m2_s = {max_diffusivity_m2_s!r}: must be > 0 to set a time step"
        )
    if not 0 < safety <= 1:
        raise ValueError(f"safety = {safety!r}: valid range is (0, 1]")
    return safety * voxel_size_m**2 / (2 * ndim * max_diffusivity_m2_s)

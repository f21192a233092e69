"""Anisotropic Li diffusion in the active phase of a voxel grid.

Equation (physics.md §1, stress coupling off):

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

    D_g = R_g diag(D1, D2, D3) R_gᵀ (physics.md §1). For ``ndim == 2`` the in-plane
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


def _gather_components(table, grain_id):
    """Per-voxel tensor components from a per-grain table (grain id −1 -> grain 0, masked later)."""
    safe_id = jnp.maximum(grain_id, 0)
    return [table[:, m][safe_id] for m in range(table.shape[1])]


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
    ndim = x.ndim
    active = grain_id >= 0
    inv_h = 1.0 / voxel_size_m
    comps = _gather_components(component_table, grain_id)
    diag = comps[:ndim]
    off = {}
    m = ndim
    for k in range(ndim):
        for l in range(k + 1, ndim):
            off[(k, l)] = off[(l, k)] = comps[m]
            m += 1

    open_face = []
    face_diff = []
    for k in range(ndim):
        is_open = active & _shift(active, k, 1)
        open_face.append(is_open)
        face_diff.append(jnp.where(is_open, _shift(x, k, 1) - x, 0.0) * inv_h)
    centred = [0.5 * (face_diff[k] + _shift(face_diff[k], k, -1)) for k in range(ndim)]

    rate = jnp.zeros_like(x)
    for k in range(ndim):
        cross = sum(off[(k, l)] * centred[l] for l in range(ndim) if l != k)
        face_dkk = 0.5 * (diag[k] + _shift(diag[k], k, 1))
        flux = face_dkk * face_diff[k]
        if ndim > 1:
            flux = flux + 0.5 * (cross + _shift(cross, k, 1))
        flux = jnp.where(open_face[k], flux, 0.0)  # = −J_k on face i+½
        rate = rate + (flux - _shift(flux, k, -1)) * inv_h
    if source_rate is not None:
        rate = rate + source_rate
    return jnp.where(active, rate, 0.0)


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

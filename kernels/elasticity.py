r"""Quasi-static small-strain elasticity on a periodic voxel grid (FFT-preconditioned CG).

Problem
-------
Find the periodic displacement fluctuation ũ and the free mean strain components
such that (docs/physics.md §5)

    ∇·σ = 0,   σ = C(x) : (ε − ε*),   ε = Ē + sym ∇ũ,
    C(x) = C0_p + x (C1_p − C0_p),      ε*(x) = β_p (x − x_ref) + ε*_field,

where p = ``phase_index`` (an int per voxel indexing small per-phase / per-grain
tables), x = normalized Li content (per voxel), C0_p / C1_p are the delithiated /
lithiated stiffnesses of phase p (sample frame) and β_p its sample-frame chemical
expansion tensor per unit x. The mean strain Ē is *mixed-controlled* per component:
components with ``stress_mask[k] = False`` have Ē_k = ``macro_strain[k]``
prescribed; components with ``stress_mask[k] = True`` are unknowns fixed by
⟨σ⟩_k = ``macro_stress[k]`` (e.g. an applied stack pressure −p along z).

Discretisation: the Willot (2015) "rotated" scheme
--------------------------------------------------
The displacement lives on the voxel corners, strain and stress at voxel centres, and
the discrete gradient is the forward difference along axis j averaged over the four
(3D) / two (2D) voxel edges parallel to j:

    (D_j u)(i) = δ_j Π_{m≠j} A_m u,   δ_j u(i) = u(i+e_j) − u(i),
    A_m u(i) = ½ (u(i) + u(i+e_m)).

In Fourier space D_j = i e^{iΣk/2} ξ_j(k) with the *real* modified wave vector
ξ_j = 2 sin(k_j/2) Π_{m≠j} cos(k_m/2) (h = 1, k_m = 2π n_m / N_m), which is the
"rotated" Green operator of Willot, C. R. Mécanique 343, 232 (2015). It is exactly
the trilinear (3D) / bilinear (2D) hexahedral finite element with one-point
(centroid) integration (Willot 2015; Schneider, Merkert & Kabel, IJNME 109, 1461
(2017)). Why this scheme:

* it is a consistent, *local* finite-difference gradient, so the Gibbs ringing and
  checkerboard oscillations of the spectral (Moulinec–Suquet) Green operator at
  sharp phase boundaries and pores disappear (Willot 2015, figs. 3–6);
* strain and stress are collocated at the voxel centres, so a fully anisotropic,
  per-grain rotated stiffness is applied voxel-locally (the staggered grid of
  Schneider, Ospald & Kabel (IJNME 2016) would need C interpolated between normal-
  and shear-strain locations, awkward for rotated hexagonal grains);
* piecewise-uniform fields with interfaces on voxel faces (laminates) are exact;
* it costs one strain point per voxel (the fully integrated hexahedron of
  de Geus et al. 2017 needs eight).

Nyquist / even grids: at k_m = π, cos(k_m/2) = 0 is set *exactly* (integer test),
so modes with two or more Nyquist components have ξ = 0: they are the
zero-strain ("hourglass") displacement modes of the one-point element, which carry
no strain and are removed from the problem by the pseudo-inverse below. Odd and even
sizes are treated alike.

Solver: Galerkin FFT with conjugate gradients
---------------------------------------------
We solve the Galerkin (energy-consistent) system for the nodal displacement
fluctuation and the stress-controlled mean strains,

    [ Dᵀ C D     Dᵀ C P ] [ũ]   [ −Dᵀ C (Ē_s − ε*)            ]
    [ Pᵀ ΣC D    Pᵀ ΣC P] [Ē_σ] = [ N P Σ̄ − Pᵀ Σ_vox C (Ē_s − ε*) ]

(D = symmetric discrete gradient, P = stress-control mask, N = voxel count), which
is symmetric positive definite on the complement of the hourglass modes. It is
solved by preconditioned CG, the preconditioner being the exact inverse of the same
operator for a homogeneous isotropic reference medium C_ref (λ_ref, μ_ref),
diagonal in Fourier space:

    K_ref(k)⁻¹ = 1/(μ_ref |ξ|²) [ I − (λ_ref+μ_ref)/(λ_ref+2μ_ref) ξ ξᵀ/|ξ|² ]   (0 where ξ = 0),

and (N P C_ref P)⁺ for the mean-strain block. This is the displacement form of the
reference-preconditioned Fourier–Galerkin method of Zeman et al., IJNME 111, 903
(2017) and de Geus et al., CMAME 318, 412 (2017); Ladecký et al., CMAME 404, 115827
(2023) show the equivalence with the strain-based projected CG (the strain iterates
are D applied to the displacement iterates) and that the iteration count is then
bounded by the phase contrast relative to C_ref, independent of the grid size. The
operator product D, C, Dᵀ is done with periodic shifts in real space; only the
preconditioner needs FFTs (3 forward + 3 inverse real FFTs per iteration). The
reference medium is the isotropic (Voigt) projection with the largest bulk and
shear moduli found in the tables (only its Poisson-type ratio matters for CG).

Stopping rule: ‖r‖_{M} / ‖b‖_{M} ≤ tol, with ‖r‖_M² = rᵀ K_ref⁻¹ r, i.e. the
residual force measured in the reference medium's energy norm (scale-free).

Pores
-----
All table entries get ``stiffness_floor · C_ref`` added (default 1e-6), so pore
entries (all-zero stiffness) become a very compliant isotropic medium and the
operator stays positive definite; stiff phases change by a relative 1e-6. The
stress reported in pores is therefore ~1e-6·C_ref·ε, i.e. practically zero; the
test suite shows that changing the floor by two orders of magnitude leaves the
stress in the solid unchanged to well below 1e-3 of its magnitude.

Units and precision
-------------------
Public boundary: stiffness and stress in Pa, strain dimensionless. Internally
stress and stiffness are in GPa (O(1..100) numbers for float32). The dtype follows
``x`` (float32 default, float64 works).

Differentiation
---------------
The CG solve is wrapped in :func:`jax.lax.custom_linear_solve` (symmetric), so
forward- and reverse-mode derivatives with respect to tables, expansion
coefficients, Li field, eigenstrain field and macroscopic loads are obtained by the
implicit function theorem with one extra CG solve, and reverse mode never stores the
CG iterates. Everything is jit-able with static shapes.

Public API
----------
``solve_elasticity(stiffness_table0, stiffness_table1, phase_index, x, *,
expansion_table=None, eigenstrain_field=None, x_ref=0.0, macro_strain=None,
macro_stress=None, stress_mask=None, tol=1e-5, maxiter=2000,
stiffness_floor=1e-6) -> ElasticityResult`` and the field helpers
:func:`von_mises`, :func:`hydrostatic`, :func:`principal_stresses`,
:func:`volumetric_strain`, :func:`deviatoric_norm` (all on (6, *grid) component
arrays, order (xx, yy, zz, yz, xz, xy), see :mod:`ssbx.kernels.stiffness`).

Axis convention: array axis 0 = x, 1 = y, 2 = z; component axis first.
2D grids are plane strain in the x–y plane (∂/∂z = 0, mean ε_zz = ε_yz = ε_xz = 0);
the out-of-plane displacement u_z(x, y) is kept as an unknown so that rotated
anisotropic grains (whose stiffness couples in-plane and anti-plane shear) are in
exact equilibrium (generalized plane strain with zero out-of-plane mean strain;
identical to classical plane strain when z is a material symmetry direction).
Stress and strain are returned with all six components also in 2D (σ_zz ≠ 0).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .rotations import HIGHEST
from .stiffness import (
    SQRT2,
    ElasticParameterError,
    _is_concrete,
    check_stiffness_table,
    isotropic_moduli,
    lame_stiffness,
    mandel_weights,
    voigt_to_mandel_stiffness,
)

__all__ = [
    "ElasticityResult",
    "solve_elasticity",
    "von_mises",
    "hydrostatic",
    "principal_stresses",
    "max_principal_stress",
    "volumetric_strain",
    "deviatoric_norm",
    "MACRO_COMPONENTS_2D",
    "MACRO_COMPONENTS_3D",
]

GPA = 1.0e9
#: Mean-field components controlled in 3D (indices into the 6 tensor components).
MACRO_COMPONENTS_3D = (0, 1, 2, 3, 4, 5)
#: Mean-field components controlled in 2D plane strain: (xx, yy, xy).
MACRO_COMPONENTS_2D = (0, 1, 5)


class ElasticityResult(eqx.Module):
    """Solution of :func:`solve_elasticity`.

    Attributes:
        strain: (6, *grid) total strain ε, tensor components (xx, yy, zz, yz, xz, xy),
            dimensionless (shear components are ε_ij, not engineering γ).
        stress: (6, *grid) Cauchy stress σ = C : (ε − ε*) in Pa, same order.
        mean_strain: (6,) volume average of ε.
        mean_stress: (6,) volume average of σ in Pa.
        iterations: CG iterations used (int32 scalar).
        residual: final relative residual ‖r‖_M / ‖b‖_M (scalar).
        converged: residual ≤ tol (bool scalar).
        cg_solution: the CG unknowns (u, e): nodal displacement fluctuation (3, *grid)
            in voxel lengths and the stress-controlled mean strains (6,) (Mandel),
            for ``initial_guess`` of a later solve on the same grid (None where a
            result was not produced by :func:`solve_elasticity`).
    """

    strain: jax.Array
    stress: jax.Array
    mean_strain: jax.Array
    mean_stress: jax.Array
    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    cg_solution: tuple | None = None


# ----------------------------------------------------------------------------------
# discrete operators (rotated scheme); u has shape (3, *grid), spatial axis j = j+1
# ----------------------------------------------------------------------------------


def _fwd(a, axis):
    return jnp.roll(a, -1, axis) - a


def _fwd_t(a, axis):
    return jnp.roll(a, 1, axis) - a


def _avg(a, axis):
    return 0.5 * (a + jnp.roll(a, -1, axis))


def _avg_t(a, axis):
    return 0.5 * (a + jnp.roll(a, 1, axis))


def _gradient(u, ndim):
    """[D_j u for j < ndim], each (3, *grid): entry [c] is D_j u_c."""
    out = []
    for j in range(ndim):
        a = u
        for m in range(ndim):
            if m != j:
                a = _avg(a, m + 1)
        out.append(_fwd(a, j + 1))
    return out


def _gradient_t(f, j, ndim):
    """Adjoint of D_j applied to an array with leading component axis."""
    a = _fwd_t(f, j + 1)
    for m in range(ndim):
        if m != j:
            a = _avg_t(a, m + 1)
    return a


def _strain_mandel(u, ndim):
    """Mandel strain (6, *grid) of the nodal displacement u (3, *grid)."""
    g = _gradient(u, ndim)
    zero = jnp.zeros_like(u[0])

    def d(c, j):  # D_j u_c
        return g[j][c] if j < ndim else zero

    s = 1.0 / SQRT2
    return jnp.stack(
        [
            d(0, 0),
            d(1, 1),
            d(2, 2),
            s * (d(1, 2) + d(2, 1)),
            s * (d(0, 2) + d(2, 0)),
            s * (d(0, 1) + d(1, 0)),
        ]
    )


def _divergence_t(sig, ndim):
    """Dᵀ σ: nodal force (3, *grid) from Mandel stress (6, *grid) (adjoint of strain)."""
    s = 1.0 / SQRT2
    full = [
        [sig[0], s * sig[5], s * sig[4]],
        [s * sig[5], sig[1], s * sig[3]],
        [s * sig[4], s * sig[3], sig[2]],
    ]
    f = None
    for j in range(ndim):
        col = jnp.stack([full[c][j] for c in range(3)])
        term = _gradient_t(col, j, ndim)
        f = term if f is None else f + term
    return f


def _wavevector_factors(shape):
    """Per-axis factors sin(k/2), cos(k/2) of the modified wave vector (numpy float64).

    Each is a 1D array shaped to broadcast along its own axis of the half spectrum of
    ``rfftn`` (the last axis holds n//2 + 1 frequencies). cos is exactly 0 at the
    Nyquist frequency of even sizes and sin exactly 0 at k = 0.
    """
    ndim = len(shape)
    sins, coss = [], []
    for a, n in enumerate(shape):
        if a == ndim - 1:
            idx = np.arange(n // 2 + 1)
        else:
            idx = np.fft.fftfreq(n, d=1.0 / n).round().astype(np.int64)
        half = np.pi * idx / n  # k/2
        sn = np.sin(half)
        cs = np.cos(half)
        cs[2 * np.abs(idx) == n] = 0.0
        sn[idx == 0] = 0.0
        view = [1] * ndim
        view[a] = -1
        sins.append(sn.reshape(view))
        coss.append(cs.reshape(view))
    return sins, coss


def _wavevector_from_factors(sins, coss):
    """ξ_j = 2 sin(k_j/2) Π_{m≠j} cos(k_m/2) (list of broadcast arrays, numpy or jnp)."""
    xi = []
    for j in range(len(sins)):
        v = 2.0 * sins[j]
        for m in range(len(sins)):
            if m != j:
                v = v * coss[m]
        xi.append(v)
    return xi


def _reference_preconditioner(shape, lam0, mu0, dtype, transforms=None):
    """Returns apply(r) = K_ref⁺ r for nodal fields r (3, *grid).

    ``transforms``: optional (forward, inverse) pair replacing ``jnp.fft.rfftn`` /
    ``irfftn`` over the grid axes of a (3, *grid) field (same layout and values), e.g.
    the slab-decomposed FFT of :mod:`.sharded`.
    """
    ndim = len(shape)
    # ξ is formed from per-axis factors where it is used, not stored: as whole-spectrum
    # tables it entered the compiled program as constants (40 MB at 153×153×207 voxels)
    # that XLA spent seconds folding at every compilation
    sins, coss = _wavevector_factors(shape)
    sins = [jnp.asarray(v, dtype) for v in sins]
    coss = [jnp.asarray(v, dtype) for v in coss]
    axes = tuple(range(1, ndim + 1))
    coef = (lam0 + mu0) / (lam0 + 2.0 * mu0)

    if transforms is None:
        forward = lambda r: jnp.fft.rfftn(r, axes=axes)  # noqa: E731
        inverse = lambda zh: jnp.fft.irfftn(zh, s=shape, axes=axes)  # noqa: E731
    else:
        forward, inverse = transforms

    def apply(r):
        rh = forward(r)
        xi = _wavevector_from_factors(sins, coss)
        xi2 = sum(v * v for v in xi)
        live = xi2 > 0  # ξ is either exactly 0 or ≥ O(1/N²)
        inv_xi2 = jnp.where(live, 1.0 / jnp.where(live, xi2, 1.0), 0.0)
        # in-plane components couple through ξ ξᵀ; u_z in 2D only through μ|ξ|²
        xr = sum(xi[j] * rh[j] for j in range(ndim))
        proj = coef * xr * inv_xi2
        comps = []
        for c in range(3):
            v = rh[c]
            if c < ndim:
                v = v - proj * xi[c]
            comps.append(v * inv_xi2 / mu0)
        zh = jnp.stack(comps)
        return inverse(zh).astype(r.dtype)

    return apply


def _apply_stiffness(eps, cols0, colsd, idx, x):
    """σ_I = Σ_J (C0[p]_IJ + x ΔC[p]_IJ) ε_J with per-voxel gathers (Mandel).

    Only the 21 independent coefficients of the symmetric C are gathered; XLA fuses
    the gathers, the interpolation in x and the 6×6 product into one elementwise
    kernel, so no per-voxel stiffness tensor is ever stored.
    """
    coef = {}
    for i in range(6):
        for j in range(i, 6):
            coef[i, j] = cols0[i][j][idx] + x * colsd[i][j][idx]
    out = []
    for i in range(6):
        acc = None
        for j in range(6):
            term = coef[min(i, j), max(i, j)] * eps[j]
            acc = term if acc is None else acc + term
        out.append(acc)
    return jnp.stack(out)


# ----------------------------------------------------------------------------------
# CG
# ----------------------------------------------------------------------------------


def _tree_dot(a, b):
    return sum(jnp.sum(x * y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _pcg(matvec, b, precond, tol, maxiter, x0=None):
    """Preconditioned CG from ``x0`` (default 0); returns (x, (iterations, relative
    residual)). The stopping rule is ‖r‖_M ≤ tol ‖b‖_M whatever the start, so a warm
    start ends at the accuracy of a cold one."""
    tmap = jax.tree_util.tree_map
    if x0 is None:
        x = tmap(jnp.zeros_like, b)
        r = b
    else:
        x = x0
        r = tmap(lambda bb, aa: bb - aa, b, matvec(x0))
    z = precond(r)
    p = z
    rz = _tree_dot(r, z)
    bnorm2 = rz if x0 is None else _tree_dot(b, precond(b))
    tiny = jnp.finfo(rz.dtype).tiny
    thresh = (tol**2) * bnorm2

    def cond(state):
        i, _, _, _, rz = state
        return (i < maxiter) & (rz > thresh)

    def body(state):
        i, x, r, p, rz = state
        ap = matvec(p)
        pap = _tree_dot(p, ap)
        alpha = rz / jnp.where(pap > 0, pap, 1.0)
        x = tmap(lambda xx, pp: xx + alpha * pp, x, p)
        r = tmap(lambda rr, aa: rr - alpha * aa, r, ap)
        z = precond(r)
        rz_new = _tree_dot(r, z)
        beta = rz_new / jnp.where(rz > tiny, rz, 1.0)
        p = tmap(lambda zz, pp: zz + beta * pp, z, p)
        return i + 1, x, r, p, rz_new

    i, x, r, p, rz = jax.lax.while_loop(cond, body, (jnp.array(0, jnp.int32), x, r, p, rz))
    res = jnp.sqrt(jnp.maximum(rz, 0.0) / jnp.maximum(bnorm2, tiny))
    res = jnp.where(bnorm2 > 0, res, jnp.zeros_like(res))
    return x, (i, res)


# ----------------------------------------------------------------------------------
# solver
# ----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("maxiter", "transforms"))
def _solve(t0, t1, idx, x, expansion, eig_field, x_ref, e_strain, s_stress, mask,
           tol, floor, maxiter, transforms=None, guess=None):
    """Core solve; all stiffness/stress arguments already in GPa and Mandel form."""
    ndim = idx.ndim
    shape = idx.shape
    dtype = x.dtype
    nvox = float(np.prod(shape))
    w = mandel_weights(dtype)

    # reference medium: isotropic projection, largest bulk and shear moduli
    k_all, g_all = isotropic_moduli(jnp.concatenate([t0, t1]))
    k_ref = jax.lax.stop_gradient(jnp.max(k_all))
    g_ref = jax.lax.stop_gradient(jnp.max(g_all))
    lam0 = k_ref - 2.0 * g_ref / 3.0
    mu0 = g_ref
    c_ref_m = voigt_to_mandel_stiffness(lame_stiffness(lam0, mu0)).astype(dtype)

    # stiffness floor (pores) and Mandel tables
    floor_m = floor * c_ref_m
    c0m = voigt_to_mandel_stiffness(t0) + floor_m
    c1m = voigt_to_mandel_stiffness(t1) + floor_m
    cdm = c1m - c0m
    cols0 = [[c0m[:, i, j] for j in range(6)] for i in range(6)]
    colsd = [[cdm[:, i, j] for j in range(6)] for i in range(6)]

    def stiff(eps):
        return _apply_stiffness(eps, cols0, colsd, idx, x)

    # eigenstrain (Mandel) = β_p (x − x_ref) + field
    bcast = (slice(None),) + (None,) * ndim
    eig = jnp.zeros((6,) + shape, dtype)
    if expansion is not None:
        exp_m = expansion * w  # (n, 6)
        eig = eig + jnp.stack([exp_m[:, k][idx] for k in range(6)]) * (x - x_ref)
    if eig_field is not None:
        eig = eig + eig_field * w[bcast]

    maskf = mask.astype(dtype)
    e_s = e_strain * w * (1.0 - maskf)  # prescribed mean strain (Mandel)
    s_bar = s_stress * w * maskf  # prescribed mean stress (Mandel, GPa)

    sig_pre = stiff(e_s[bcast] - eig)
    b_u = -_divergence_t(sig_pre, ndim)
    b_e = maskf * (nvox * s_bar - jnp.sum(sig_pre, axis=tuple(range(1, ndim + 1))))

    def matvec(v):
        u, e = v
        eps = _strain_mandel(u, ndim) + (maskf * e)[bcast]
        sig = stiff(eps)
        return (_divergence_t(sig, ndim), maskf * jnp.sum(sig, axis=tuple(range(1, ndim + 1))))

    precond_u = _reference_preconditioner(shape, lam0, mu0, dtype, transforms)
    m_e = maskf[:, None] * c_ref_m * maskf[None, :] * nvox + jnp.diag(1.0 - maskf)
    m_e_inv = maskf[:, None] * jnp.linalg.inv(m_e) * maskf[None, :]
    m_e_inv = jax.lax.stop_gradient(m_e_inv)

    def precond(v):
        u, e = v
        return (precond_u(u), jnp.matmul(m_e_inv, e, precision=HIGHEST))

    def solve(mv, rhs):
        return _pcg(mv, rhs, precond, tol, maxiter)

    if guess is None:
        (u, e), (iters, res) = jax.lax.custom_linear_solve(
            matvec, (b_u, b_e), solve, symmetric=True, has_aux=True
        )
    else:
        # the primal CG starts from the guess (tangent solves too, each stopping relative
        # to its own right-hand side); adjoint solves start from 0
        x0 = jax.lax.stop_gradient((guess[0], maskf * guess[1]))

        def warm_solve(mv, rhs):
            return _pcg(mv, rhs, precond, tol, maxiter, x0)

        (u, e), (iters, res) = jax.lax.custom_linear_solve(
            matvec, (b_u, b_e), warm_solve, solve, symmetric=True, has_aux=True
        )
    eps = _strain_mandel(u, ndim) + (e_s + maskf * e)[bcast]
    sig = stiff(eps - eig)
    strain = eps / w[bcast]
    stress = sig / w[bcast]
    axes = tuple(range(1, ndim + 1))
    return ElasticityResult(
        strain=strain,
        stress=stress * GPA,
        mean_strain=jnp.mean(strain, axis=axes),
        mean_stress=jnp.mean(stress, axis=axes) * GPA,
        iterations=iters,
        residual=res,
        converged=res <= tol,
        cg_solution=(u, e),
    )


def _macro_vector(value, ndim, name, dtype, scale=1.0):
    """Embed the user's (6,) / (3,) macro vector into 6 tensor components."""
    comps = MACRO_COMPONENTS_3D if ndim == 3 else MACRO_COMPONENTS_2D
    if value is None:
        return jnp.zeros((6,), dtype)
    v = jnp.asarray(value)
    if v.shape != (len(comps),):
        raise ElasticParameterError(
            f"{name}: shape {v.shape} invalid for a {ndim}D grid; expected "
            f"({len(comps)},) components "
            + ("(xx, yy, zz, yz, xz, xy)" if ndim == 3 else "(xx, yy, xy)")
        )
    v = v.astype(dtype)
    if scale != 1.0:
        v = v / scale
    return jnp.zeros((6,), dtype).at[jnp.asarray(comps)].set(v)


def solve_elasticity(
    stiffness_table0,
    stiffness_table1,
    phase_index,
    x,
    *,
    expansion_table=None,
    eigenstrain_field=None,
    x_ref=0.0,
    macro_strain=None,
    macro_stress=None,
    stress_mask=None,
    tol=1e-5,
    maxiter=2000,
    stiffness_floor=1e-6,
    transforms=None,
    initial_guess=None,
) -> ElasticityResult:
    """Solve ∇·σ = 0, σ = C(x):(ε − ε*) on a periodic 2D/3D voxel grid.

    C(x) = C0[p] + x (C1[p] − C0[p]),  ε* = β[p] (x − x_ref) + ε*_field,
    with p = ``phase_index`` per voxel (see the module docstring for the scheme).

    Args:
        stiffness_table0: (n_phases, 6, 6) Voigt stiffness at x = 0 (delithiated),
            sample frame, Pa. All-zero entries are pores (see ``stiffness_floor``).
        stiffness_table1: (n_phases, 6, 6) Voigt stiffness at x = 1 (lithiated), Pa.
            Use the same table as ``stiffness_table0`` for x-independent phases.
        phase_index: int (nx, ny[, nz]) phase / grain index into the tables,
            0 ≤ p < n_phases (axis 0 = x, 1 = y, 2 = z).
        x: float field of the same shape, normalized Li content (sets the dtype;
            isotropic / x-independent phases ignore it).
        expansion_table: optional (n_phases, 6) sample-frame chemical expansion per
            unit x, tensor components (xx, yy, zz, yz, xz, xy) — see
            :func:`ssbx.kernels.stiffness.grain_expansion_table`. Zero rows for
            phases without chemical strain.
        eigenstrain_field: optional (6, *grid) additional eigenstrain (tensor
            components, dimensionless), e.g. thermal or plating strain.
        x_ref: stress-free reference Li content (scalar).
        macro_strain: mean strain components, (6,) in 3D (xx, yy, zz, yz, xz, xy),
            (3,) in 2D (xx, yy, xy); used where ``stress_mask`` is False. Default 0.
        macro_stress: mean stress in Pa, same layout; used where ``stress_mask`` is
            True. Default 0. Compression is negative (stack pressure p along z:
            macro_stress[2] = −p).
        stress_mask: bool, same layout: True = that mean component is stress
            controlled. Default: all False if ``macro_stress`` is None, all True if
            only ``macro_stress`` is given; required if both are given.
        tol: relative residual tolerance of CG (reference energy norm).
        maxiter: maximum CG iterations (static).
        stiffness_floor: every phase gets ``stiffness_floor × C_ref`` added (C_ref:
            isotropic reference stiffness); keeps pores (zero stiffness) solvable.
        transforms: optional static (forward, inverse) real-FFT pair for the
            preconditioner (default ``jnp.fft.rfftn`` / ``irfftn`` over the grid
            axes); :func:`ssbx.kernels.sharded.sharded_solve_elasticity` passes a
            slab-decomposed one. Must be hashable (functions are).
        initial_guess: optional ``cg_solution`` of an earlier result on the same grid
            (e.g. the previous snapshot's): CG starts there instead of at zero and
            stops by the same rule ‖r‖_M ≤ tol ‖b‖_M, so the answer agrees with a cold
            solve to the tolerance (not bit for bit). Derivatives are unchanged in
            value (implicit function theorem); forward-mode tangent solves also start
            from it, reverse-mode adjoint solves from zero.

    Returns:
        :class:`ElasticityResult` with strain, stress (Pa), means, iterations,
        residual and converged flag.

    Raises:
        ElasticParameterError (a ValueError) for inconsistent shapes, non-integer
        phase indices, indices out of range, non-positive-definite stiffness
        entries, or bad tolerances (value checks only for concrete inputs).
    """
    idx = jnp.asarray(phase_index)
    if idx.ndim not in (2, 3):
        raise ElasticParameterError(
            f"phase_index: ndim = {idx.ndim}; must be a 2D or 3D voxel grid"
        )
    if not jnp.issubdtype(idx.dtype, jnp.integer):
        raise ElasticParameterError(
            f"phase_index: dtype {idx.dtype} must be an integer type (e.g. int32)"
        )
    ndim = idx.ndim
    xarr = jnp.asarray(x)
    if not jnp.issubdtype(xarr.dtype, jnp.floating):
        xarr = xarr.astype(jnp.result_type(float))
    dtype = xarr.dtype
    if xarr.shape != idx.shape:
        raise ElasticParameterError(
            f"x: shape {xarr.shape} must equal phase_index shape {idx.shape}"
        )
    t0 = jnp.asarray(stiffness_table0)
    t1 = jnp.asarray(stiffness_table1)
    for name, t in (("stiffness_table0", t0), ("stiffness_table1", t1)):
        if t.ndim != 3 or t.shape[1:] != (6, 6):
            raise ElasticParameterError(
                f"{name}: shape {t.shape} must be (n_phases, 6, 6) Voigt stiffness in Pa"
            )
    if t0.shape != t1.shape:
        raise ElasticParameterError(
            f"stiffness_table1: shape {t1.shape} must equal stiffness_table0 shape {t0.shape}"
        )
    n_phases = t0.shape[0]
    check_stiffness_table(stiffness_table0, "stiffness_table0")
    check_stiffness_table(stiffness_table1, "stiffness_table1")
    if _is_concrete(idx) and idx.size:
        idx_np = np.asarray(idx)  # numpy: jnp.min would be traced inside checkpoint/scan
        lo, hi = int(idx_np.min()), int(idx_np.max())
        if lo < 0 or hi >= n_phases:
            raise ElasticParameterError(
                f"phase_index: values span [{lo}, {hi}]; valid range is "
                f"[0, {n_phases - 1}] (n_phases = {n_phases})"
            )
    expansion = None
    if expansion_table is not None:
        expansion = jnp.asarray(expansion_table, dtype)
        if expansion.shape != (n_phases, 6):
            raise ElasticParameterError(
                f"expansion_table: shape {expansion.shape} must be ({n_phases}, 6)"
            )
    eig_field = None
    if eigenstrain_field is not None:
        eig_field = jnp.asarray(eigenstrain_field, dtype)
        if eig_field.shape != (6,) + idx.shape:
            raise ElasticParameterError(
                f"eigenstrain_field: shape {eig_field.shape} must be {(6,) + idx.shape}"
            )
    if stress_mask is None:
        if macro_stress is not None and macro_strain is not None:
            raise ElasticParameterError(
                "stress_mask: None, but both macro_strain and macro_stress are given; "
                "pass a bool mask saying which mean components are stress controlled"
            )
        fill = macro_stress is not None
        ncomp = 6 if ndim == 3 else 3
        stress_mask = np.full((ncomp,), fill)
    mask = _macro_vector(stress_mask, ndim, "stress_mask", jnp.bool_)
    e_strain = _macro_vector(macro_strain, ndim, "macro_strain", dtype)
    s_stress = _macro_vector(macro_stress, ndim, "macro_stress", dtype, scale=GPA)
    if _is_concrete(tol) and not (0.0 < float(tol) < 1.0):
        raise ElasticParameterError(f"tol = {tol!r}: must lie in (0, 1)")
    if int(maxiter) < 1:
        raise ElasticParameterError(f"maxiter = {maxiter!r}: must be ≥ 1")
    if _is_concrete(stiffness_floor) and not (0.0 < float(stiffness_floor) < 1.0):
        raise ElasticParameterError(
            f"stiffness_floor = {stiffness_floor!r}: must lie in (0, 1) (fraction of C_ref)"
        )
    guess = None
    if initial_guess is not None:
        u0, e0 = initial_guess
        u0, e0 = jnp.asarray(u0, dtype), jnp.asarray(e0, dtype)
        if u0.shape != (3,) + idx.shape or e0.shape != (6,):
            raise ElasticParameterError(
                f"initial_guess: shapes {u0.shape}, {e0.shape} must be {(3,) + idx.shape}, (6,) "
                "(the cg_solution of an earlier result on this grid)"
            )
        guess = (u0, e0)
    return _solve(
        (t0 / GPA).astype(dtype),
        (t1 / GPA).astype(dtype),
        idx.astype(jnp.int32),
        xarr,
        expansion,
        eig_field,
        jnp.asarray(x_ref, dtype),
        e_strain,
        s_stress,
        mask,
        jnp.asarray(tol, dtype),
        jnp.asarray(stiffness_floor, dtype),
        maxiter=int(maxiter),
        transforms=transforms,
        guess=guess,
    )


# ----------------------------------------------------------------------------------
# post-processing helpers (component axis 0, order xx, yy, zz, yz, xz, xy)
# ----------------------------------------------------------------------------------


def _on_host_or_device(a):
    """``(a, numpy)`` for a NumPy array (evaluated on the host in its own dtype, e.g.
    float64 for run output), ``(jnp.asarray(a), jax.numpy)`` otherwise."""
    return (a, np) if isinstance(a, np.ndarray) else (jnp.asarray(a), jnp)


def hydrostatic(stress):
    """Hydrostatic (mean) stress σ_h = (σ_xx + σ_yy + σ_zz)/3, shape (*grid), unit of input.
    A NumPy input is evaluated with NumPy."""
    stress, _ = _on_host_or_device(stress)
    return (stress[0] + stress[1] + stress[2]) / 3.0


def volumetric_strain(strain):
    """Volumetric strain ε_V = tr ε = ε_xx + ε_yy + ε_zz (small strain), shape (*grid).
    A NumPy input is evaluated with NumPy."""
    strain, _ = _on_host_or_device(strain)
    return strain[0] + strain[1] + strain[2]


def deviatoric_norm(stress):
    """J2 = ½ s:s of the deviator s = σ − σ_h I, shape (*grid). A NumPy input is
    evaluated with NumPy."""
    s, _ = _on_host_or_device(stress)
    h = hydrostatic(s)
    d = [s[0] - h, s[1] - h, s[2] - h]
    return 0.5 * (d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + s[3] ** 2 + s[4] ** 2 + s[5] ** 2


def von_mises(stress):
    """Von Mises equivalent stress √(3 J2), shape (*grid), unit of input.

    σ_vM = √(½[(σxx−σyy)² + (σyy−σzz)² + (σzz−σxx)²] + 3(σyz² + σxz² + σxy²)).
    The square root is made differentiable at J2 = 0 (gradient 0 there). A NumPy input
    is evaluated with NumPy.
    """
    _, xp = _on_host_or_device(stress)
    j2 = 3.0 * deviatoric_norm(stress)
    pos = j2 > 0
    return xp.where(pos, xp.sqrt(xp.where(pos, j2, 1.0)), 0.0)


def principal_stresses(stress):
    """Principal stresses, ascending, shape (3, *grid), unit of input (eigvalsh of σ)."""
    s = jnp.asarray(stress)
    xx, yy, zz, yz, xz, xy = (s[k] for k in range(6))
    t = jnp.stack(
        [
            jnp.stack([xx, xy, xz], axis=-1),
            jnp.stack([xy, yy, yz], axis=-1),
            jnp.stack([xz, yz, zz], axis=-1),
        ],
        axis=-2,
    )
    return jnp.moveaxis(jnp.linalg.eigvalsh(t), -1, 0)


def max_principal_stress(stress):
    """Largest principal stress, shape (*grid), unit and dtype of input, in closed form.

    For the deviator s = σ − m I (m = tr σ / 3) with p = √(s:s / 6) the eigenvalues of
    σ are m + 2 p cos(φ − 2πk/3), φ = ⅓ arccos(det(s/p) / 2), and k = 0 gives the
    largest (Smith, Commun. ACM 4, 168 (1961): the trigonometric solution of the
    characteristic cubic of a symmetric 3 × 3 matrix). ``det(s/p)/2`` is clipped to
    [−1, 1] against rounding; p = 0 (hydrostatic σ) gives m.

    Precision: where the two largest eigenvalues (nearly) coincide, the arccos loses
    half the digits (error ~ √eps · p: ~1e-8 p in float64, ~1e-4 p in float32), so
    the snapshot output (engine.physics.mechanics.stress_outputs) evaluates it in
    float64. A NumPy array is evaluated with NumPy (on the host, its own dtype), any
    other input with jax.numpy. Elementwise, no batched eigen-solver: at 157 464 voxels
    this is ~10x cheaper than ``principal_stresses`` (LAPACK/XLA eigvalsh, ~0.1 s on a
    2-core CPU).
    """
    s, xp = _on_host_or_device(stress)
    xx, yy, zz, yz, xz, xy = (s[k] for k in range(6))
    m = (xx + yy + zz) / 3.0
    dx, dy, dz = xx - m, yy - m, zz - m
    p2 = (dx * dx + dy * dy + dz * dz + 2.0 * (yz * yz + xz * xz + xy * xy)) / 6.0
    live = p2 > 0
    p = xp.sqrt(xp.where(live, p2, 1.0))
    bx, by, bz, byz, bxz, bxy = dx / p, dy / p, dz / p, yz / p, xz / p, xy / p
    det = bx * (by * bz - byz * byz) - bxy * (bxy * bz - byz * bxz) + bxz * (bxy * byz - by * bxz)
    phi = xp.arccos(xp.clip(det / 2.0, -1.0, 1.0)) / 3.0
    return xp.where(live, m + 2.0 * p * xp.cos(phi), m)

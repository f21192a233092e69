"""Quasi-static potential (conduction) solver on a voxel grid.

Equation (docs/physics.md §3), per voxel of a 2D or 3D grid with spacing ``h``::

    ∇·(σ ∇φ) = f

with a per-voxel conductivity σ (S/m, zero in non-conducting voxels), the potential
φ (V) and a volumetric term f (A/m³; ``f = −q`` where ``q`` is the current injected
per unit volume, e.g. an interfacial reaction current times area density).

Discretisation (conservative cell-centred finite volumes)
-----------------------------------------------------------
Unknowns live at voxel centres. The face between voxels i and j carries the current
``I_ij = σ_ij (φ_i − φ_j) / h · h^(d−1)`` with the harmonic-mean face conductivity
``σ_ij = 2 σ_i σ_j / (σ_i + σ_j)`` (series resistance of two half-voxels; zero as soon
as one side does not conduct). Summing over the faces of voxel i and dividing by its
volume gives the 7-point (3D) / 5-point (2D) stencil.

Boundary conditions
-------------------
* Stack axis (``axis``): each of the two faces normal to it is either
  ``"dirichlet"`` (φ = value on the outer face of the boundary voxel layer, i.e. half
  a voxel from the first voxel centre, as in TauFactor) or ``"flux"`` (``value`` is the
  current density entering the domain through that face, A/m²; it is injected only
  into conducting voxels of the boundary layer). At least one face must be Dirichlet.
* Lateral axes: ``"periodic"`` (wrap-around faces with harmonic-mean conductivity) or
  ``"noflux"`` (homogeneous Neumann).

With these conventions a uniform slab of N voxels has resistance exactly
``R = N h / (σ A)``.

Isolated clusters
-----------------
Conducting voxels that are not connected (through faces of non-zero conductance) to
a Dirichlet face make the matrix singular. They are found by a flood fill from the
Dirichlet faces (``connected_to_dirichlet``) and *masked out*: their rows are replaced
by the identity, their right-hand side (sources, injected flux) is dropped and their
potential is returned as 0 V. The mask is part of the result (``connected``), so the
caller can tell dead voxels from real 0 V. Non-conducting voxels are masked the same
way. The mask depends only on the sign pattern of σ and carries no gradient.

Scaling (float32)
-----------------
The system is assembled in dimensionless form ``A' = (h² / s) A`` with
``s = max σ`` (held constant for differentiation, which is exact because the solution
does not depend on s), so all face conductances lie in [0, 1] and the right-hand side
is O(|Δφ|). The default dtype is float32 (float64 when the input is float64 and
``jax_enable_x64`` is on).

Solver
------
Preconditioned conjugate gradients (``lax.while_loop``), tolerance
``‖b − A'φ‖₂ ≤ max(rtol ‖b‖₂, atol)``, warm start from ``x0``. Preconditioners:

* ``"jacobi"``: diagonal scaling.
* ``"fft"`` (default): the exact inverse of the constant-coefficient operator with the
  mean conductivity of the connected voxels and the same boundary conditions,
  diagonalised by FFT (periodic), DCT-II (no-flux) and DST-II (Dirichlet at the
  half-voxel face; a flux face is handled by mirror extension to a Dirichlet problem
  of twice the length).
* ``"multigrid"``: one symmetric V-cycle of an aggregation multigrid: 2×2(×2)
  piecewise-constant aggregation, Galerkin coarse operators (on this stencil they are
  again face-conductance stencils whose coarse face conductance is the sum of the fine
  face conductances crossing the coarse face, so coefficient jumps are inherited
  exactly), two damped-Jacobi sweeps (ω = 0.6) before and after, dense solve on the
  coarsest level (≤ 64 cells).

Measured (``benchmarks/potentials.py``, float32, rtol 1e-6, smooth two-phase structures
with volume fraction 1/2, contrast 1–1e6; JSON in benchmarks/results, 2-core CPU):

=========  ===============  ===============  ================
n³         Jacobi its       FFT its          multigrid its
=========  ===============  ===============  ================
32³        110–476          1–70             15–40
64³        202–733          1–129            21–67
128³       368–1222         1–148            (not run)
=========  ===============  ===============  ================

Iterations grow with contrast for all three but saturate between 1e4 and 1e6. On
voxel-scale white noise (the hardest case; 32³, contrast 1e6, float64, rtol 1e-10)
the counts were ≈180 (multigrid), 387 (FFT), 1472 (Jacobi). Wall time on the CPU:
Jacobi is fastest at 32³ (0.04–0.14 s per solve), Jacobi and FFT are even at 64³
(≈1 s), FFT wins at 128³ (10–22 s vs 15–34 s) and its advantage grows with n. A
multigrid V-cycle, although it needs the fewest iterations, costs 100–300
matrix-vector products of wall time on XLA-CPU (not resolved: restriction,
prolongation and smoothing are each fast in isolation), so it is the slowest on CPU.
FFT is the default; re-measure on a GPU before changing it.

Differentiability
-----------------
The linear solve is wrapped in ``jax.lax.custom_linear_solve`` (symmetric operator),
so forward- and reverse-mode derivatives with respect to σ, sources and boundary
values are computed implicitly with one extra solve; CG iterates are never stored.
The preconditioner and the initial guess are treated as constants (they do not change
the exact solution).

References: Patankar, *Numerical Heat Transfer and Fluid Flow* (1980), ch. 4 (harmonic
face conductivities); Cooper et al., SoftwareX 5, 203 (2016) (TauFactor, half-voxel
Dirichlet faces); Braess, Computing 37, 61 (1986) and Notay, ETNA 37, 123 (2010)
(aggregation multigrid).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy import fft as jfft

from .rotations import HIGHEST
from .transport_mg import restrict

__all__ = [
    "PotentialSolution",
    "solve_potential",
    "connected_to_dirichlet",
    "face_conductances",
    "boundary_currents",
    "plane_currents",
    "apply_operator",
]

_BC_STACK = ("dirichlet", "flux")
_BC_LATERAL = ("periodic", "noflux")
_PRECONDITIONERS = ("none", "jacobi", "fft", "multigrid")
_COARSEST_CELLS = 64


class PotentialSolution(NamedTuple):
    """Result of :func:`solve_potential`.

    Attributes:
        phi: potential (V), same shape as σ; 0 V in masked (non-connected) voxels.
        iterations: number of PCG iterations (int32 scalar).
        residual: final true relative residual ‖b − A'φ‖₂ / ‖b‖₂ of the scaled system
            (0 when b = 0).
        converged: whether the tolerance was met within ``maxiter``.
        connected: bool mask of voxels connected to a Dirichlet face (the solved set).
    """

    phi: jax.Array
    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    connected: jax.Array


# ----------------------------------------------------------------------------------
# Validation of static options
# ----------------------------------------------------------------------------------


def _check_options(ndim, axis, lo, hi, lateral, preconditioner):
    if ndim not in (2, 3):
        raise ValueError(f"sigma.ndim = {ndim}; valid: 2 or 3")
    if not (0 <= axis < ndim):
        raise ValueError(f"axis = {axis}; valid range 0..{ndim - 1}")
    for name, v in (("lo", lo), ("hi", hi)):
        if v not in _BC_STACK:
            raise ValueError(f"{name} = {v!r}; valid: {_BC_STACK}")
    if lo == "flux" and hi == "flux":
        raise ValueError(
            "lo = hi = 'flux': the problem has no Dirichlet face and is singular; "
            "valid: at least one of lo, hi = 'dirichlet'"
        )
    if lateral not in _BC_LATERAL:
        raise ValueError(f"lateral = {lateral!r}; valid: {_BC_LATERAL}")
    if preconditioner not in _PRECONDITIONERS:
        raise ValueError(f"preconditioner = {preconditioner!r}; valid: {_PRECONDITIONERS}")


# ----------------------------------------------------------------------------------
# Composition-dependent conductivity
# ----------------------------------------------------------------------------------


def log_interpolated_conductivity(x, x_points, sigma_points):
    """σ(x) interpolated linearly in log σ between tabulated points (S/m).

    ``log σ(x) = log σ_k + (x − x_k)/(x_{k+1} − x_k) · (log σ_{k+1} − log σ_k)`` for
    x_k ≤ x ≤ x_{k+1}, held at the end values outside the table. Layered-oxide
    electronic conductivities change by orders of magnitude with the Li fraction x
    (e.g. ~10⁻⁵ to ~1 S/m for NMC333 between x = 1 and 0.25, Amin & Chiang, JES 163,
    A1512 (2016)), so the interpolation is geometric, not linear.

    Args:
        x: Li fraction per voxel (any shape).
        x_points: increasing table abscissae (static sequence).
        sigma_points: conductivities at x_points (S/m, > 0, static sequence).

    Returns:
        σ with the shape and dtype of ``x``; differentiable in x (piecewise).
    """
    x = jnp.asarray(x)
    xp = jnp.asarray(x_points, x.dtype)
    log_sp = jnp.log(jnp.asarray(sigma_points, x.dtype))
    return jnp.exp(jnp.interp(x, xp, log_sp))


# ----------------------------------------------------------------------------------
# Stencil pieces
# ----------------------------------------------------------------------------------


def _harmonic(a, b):
    """2ab/(a+b), 0 where a+b = 0, with NaN-free gradients."""
    s = a + b
    pos = s > 0
    safe = jnp.where(pos, s, 1.0)
    return jnp.where(pos, 2.0 * a * b / safe, 0.0)


def _last_face_keep(n, ndim, a, dtype):
    """1 for interior faces along axis a, 0 for the wrap face (index n-1)."""
    keep = jnp.ones((n,), dtype).at[n - 1].set(0.0)
    shape = [1] * ndim
    shape[a] = n
    return keep.reshape(shape)


def face_conductances(sigma, axis=0, lateral="noflux"):
    """Harmonic-mean face conductivities for every axis.

    Args:
        sigma: (n0, n1[, n2]) conductivity per voxel (any units; S/m at the boundary).
        axis: stack axis (its wrap faces are always absent).
        lateral: "periodic" keeps the wrap faces on the other axes, "noflux" drops them.

    Returns:
        tuple of arrays ``g[a]`` with ``g[a][..., i, ...] = 2σ_iσ_{i+1}/(σ_i+σ_{i+1})``
        for the face between voxel i and i+1 along axis a (index n−1 is the periodic
        wrap face, or 0).
    """
    sigma = jnp.asarray(sigma)
    ndim = sigma.ndim
    out = []
    for a in range(ndim):
        g = _harmonic(sigma, jnp.roll(sigma, -1, axis=a))
        if a == axis or lateral == "noflux":
            g = g * _last_face_keep(sigma.shape[a], ndim, a, g.dtype)
        out.append(g)
    return tuple(out)


def _boundary_layer(shape, axis, which, dtype):
    """Indicator (1.0) of the first (which=0) or last (which=1) layer along axis."""
    n = shape[axis]
    v = jnp.zeros((n,), dtype).at[0 if which == 0 else n - 1].set(1.0)
    s = [1] * len(shape)
    s[axis] = n
    return jnp.broadcast_to(v.reshape(s), shape)


def _expand_face_value(value, shape, axis, dtype):
    """Broadcast a scalar or slab-shaped face value to the full grid."""
    value = jnp.asarray(value, dtype)
    if value.ndim == 0:
        return jnp.broadcast_to(value, shape)
    slab = shape[:axis] + shape[axis + 1 :]
    if value.shape != tuple(slab):
        raise ValueError(
            f"face value shape = {value.shape}; valid: scalar or {tuple(slab)} "
            f"(grid shape without axis {axis})"
        )
    return jnp.broadcast_to(jnp.expand_dims(value, axis), shape)


def apply_operator(x, g, gb):
    """Face-conductance operator ``y_i = Σ_faces g (x_i − x_j) + gb_i x_i``.

    Args:
        x: field on the grid.
        g: per-axis face conductances (see :func:`face_conductances`).
        gb: boundary (Dirichlet) conductance per voxel, same shape as x.
    """
    y = gb * x
    for a, ga in enumerate(g):
        flux = ga * (x - jnp.roll(x, -1, axis=a))
        y = y + flux - jnp.roll(flux, 1, axis=a)
    return y


def _diagonal(g, gb):
    d = gb
    for a, ga in enumerate(g):
        d = d + ga + jnp.roll(ga, 1, axis=a)
    return d


# ----------------------------------------------------------------------------------
# Connectivity (isolated clusters)
# ----------------------------------------------------------------------------------


def connected_to_dirichlet(sigma, axis=0, lo="dirichlet", hi="dirichlet", lateral="noflux"):
    """Voxels connected to a Dirichlet face through faces of non-zero conductance.

    Flood fill (``lax.while_loop``, a few neighbour sweeps per iteration) seeded with
    the conducting voxels of the Dirichlet boundary layers. Returns a bool array.
    Not differentiable (it depends only on where σ > 0).
    """
    sigma = jax.lax.stop_gradient(jnp.asarray(sigma))
    ndim = sigma.ndim
    cond = sigma > 0
    open_faces = [ga > 0 for ga in face_conductances(cond.astype(jnp.float32), axis, lateral)]
    seed = jnp.zeros(sigma.shape, bool)
    if lo == "dirichlet":
        seed = seed | (_boundary_layer(sigma.shape, axis, 0, jnp.float32) > 0)
    if hi == "dirichlet":
        seed = seed | (_boundary_layer(sigma.shape, axis, 1, jnp.float32) > 0)
    seed = seed & cond

    def sweep(m):
        for a in range(ndim):
            fa = open_faces[a]
            m = m | (fa & jnp.roll(m, -1, axis=a)) | jnp.roll(fa & m, 1, axis=a)
        return m

    def body(state):
        m, _ = state
        new = sweep(sweep(m))
        return new, jnp.any(new != m)

    m, _ = jax.lax.while_loop(lambda s: s[1], body, (seed, jnp.array(True)))
    return m


# ----------------------------------------------------------------------------------
# Preconditioners
# ----------------------------------------------------------------------------------


def _dst2(x, axis):
    """Orthonormal DST-II via DCT-II: DST(x)[k] = DCT((−1)^n x)[N−1−k]."""
    n = x.shape[axis]
    sgn = jnp.where(jnp.arange(n) % 2 == 0, 1.0, -1.0).astype(x.dtype)
    shape = [1] * x.ndim
    shape[axis] = n
    y = jfft.dct(x * sgn.reshape(shape), type=2, axis=axis, norm="ortho")
    return jnp.flip(y, axis=axis)


def _idst2(y, axis):
    n = y.shape[axis]
    sgn = jnp.where(jnp.arange(n) % 2 == 0, 1.0, -1.0).astype(y.dtype)
    shape = [1] * y.ndim
    shape[axis] = n
    x = jfft.idct(jnp.flip(y, axis=axis), type=2, axis=axis, norm="ortho")
    return x * sgn.reshape(shape)


def _make_fft_preconditioner(shape, dtype, axis, lo, hi, lateral, sigma_mean):
    """Inverse of σ̄ × (constant-coefficient operator with the solver's BCs)."""
    ndim = len(shape)
    mirror = None
    if lo == "flux":
        mirror = "lo"
    elif hi == "flux":
        mirror = "hi"
    ext_shape = list(shape)
    if mirror is not None:
        ext_shape[axis] = 2 * shape[axis]
    lam = jnp.zeros(ext_shape, dtype)
    for a in range(ndim):
        n = ext_shape[a]
        k = jnp.arange(n, dtype=dtype)
        if a == axis:
            lam1 = 2.0 - 2.0 * jnp.cos(jnp.pi * (k + 1.0) / n)  # DST-II (Dirichlet)
        elif lateral == "periodic":
            lam1 = 2.0 - 2.0 * jnp.cos(2.0 * jnp.pi * k / n)  # FFT
        else:
            lam1 = 2.0 - 2.0 * jnp.cos(jnp.pi * k / n)  # DCT-II (Neumann)
        s = [1] * ndim
        s[a] = n
        lam = lam + lam1.reshape(s)
    inv_lam = 1.0 / (lam * sigma_mean)  # all eigenvalues > 0 (Dirichlet axis)
    lat = [a for a in range(ndim) if a != axis]

    def apply(r):
        if mirror == "lo":  # flux at lo: mirror about the lo face
            r = jnp.concatenate([jnp.flip(r, axis=axis), r], axis=axis)
        elif mirror == "hi":
            r = jnp.concatenate([r, jnp.flip(r, axis=axis)], axis=axis)
        y = _dst2(r, axis)
        if lateral == "periodic":
            y = jnp.fft.fftn(y, axes=lat)
            y = jnp.real(jnp.fft.ifftn(y * inv_lam, axes=lat)).astype(dtype)
        else:
            y = jfft.dctn(y, type=2, axes=lat, norm="ortho")
            y = jfft.idctn(y * inv_lam, type=2, axes=lat, norm="ortho")
        z = _idst2(y, axis)
        n = shape[axis]
        if mirror == "lo":
            z = 0.5 * (jnp.flip(jax.lax.slice_in_dim(z, 0, n, axis=axis), axis=axis)
                       + jax.lax.slice_in_dim(z, n, 2 * n, axis=axis))
        elif mirror == "hi":
            z = 0.5 * (jax.lax.slice_in_dim(z, 0, n, axis=axis)
                       + jnp.flip(jax.lax.slice_in_dim(z, n, 2 * n, axis=axis), axis=axis))
        return z

    return apply


def _coarsen_face(ga, a):
    """Coarse face conductance along a: the fine face leaving each aggregate."""
    n = ga.shape[a]
    out = jax.lax.slice_in_dim(ga, 1, n, stride=2, axis=a)
    if n % 2:
        out = jnp.concatenate([out, jax.lax.slice_in_dim(ga, n - 1, n, axis=a)], axis=a)
    return out


def _prolong(xc, fine_shape, coarsen_axes):
    """Piecewise-constant prolongation (transpose of :func:`ssbx.kernels.transport_mg.restrict`)."""
    for a in coarsen_axes:
        shape = xc.shape
        xc = jnp.expand_dims(xc, a + 1)
        xc = jnp.broadcast_to(xc, shape[: a + 1] + (2,) + shape[a + 1 :])
        xc = xc.reshape(shape[:a] + (2 * shape[a],) + shape[a + 1 :])
        if xc.shape[a] != fine_shape[a]:
            xc = jax.lax.slice_in_dim(xc, 0, fine_shape[a], axis=a)
    return xc


def _build_hierarchy(g, gb):
    """Galerkin aggregation hierarchy: list of (g, gb, diag, coarsen_axes)."""
    levels = []
    while True:
        shape = gb.shape
        diag = _diagonal(g, gb)
        size = 1
        for n in shape:
            size *= n
        coarsen_axes = tuple(a for a, n in enumerate(shape) if n > 1)
        if size <= _COARSEST_CELLS or not coarsen_axes:
            levels.append((g, gb, diag, ()))
            return levels
        levels.append((g, gb, diag, coarsen_axes))
        new_g = []
        for a, ga in enumerate(g):
            gc = _coarsen_face(ga, a) if a in coarsen_axes else ga
            for b in coarsen_axes:
                if b != a:
                    gc = restrict(gc, (b,))
            new_g.append(gc)
        g = tuple(new_g)
        gb = restrict(gb, coarsen_axes)


def _dense_inverse(g, gb, diag):
    shape = gb.shape
    n = gb.size
    eye = jnp.eye(n, dtype=gb.dtype)
    cols = jax.vmap(lambda e: apply_operator(e.reshape(shape), g, gb).reshape(-1))(eye)
    dead = (diag.reshape(-1) <= 0).astype(gb.dtype)
    mat = cols.T + jnp.diag(dead)  # identity on empty (masked) cells
    mat = 0.5 * (mat + mat.T)
    w, v = jnp.linalg.eigh(mat)
    cutoff = jnp.max(jnp.abs(w)) * n * jnp.finfo(gb.dtype).eps
    winv = jnp.where(w > cutoff, 1.0 / jnp.where(w > cutoff, w, 1.0), 0.0)
    return jnp.matmul(v * winv, v.T, precision=HIGHEST)


def _make_multigrid(g, gb, omega=0.6, nu=2):
    """The preconditioner r ↦ one symmetric V-cycle (:func:`multigrid_vcycle`) on the
    hierarchy of (g, gb) (:func:`multigrid_setup`), built once."""
    setup = multigrid_setup(g, gb)
    return lambda r: multigrid_vcycle(setup, r, omega, nu)


def multigrid_setup(g, gb):
    """The arrays of the aggregation hierarchy (:func:`_build_hierarchy`) as a pytree: per
    level (g, gb, diag), and the coarsest level's dense inverse. With :func:`multigrid_vcycle`
    it splits the preconditioner into a set-up and an application that ``jax.vmap``
    can batch: several fields of the same grid shape (e.g. φ_s and φ_e of
    kernels.electrode) then share one compiled V-cycle. The coarsening axes depend on
    the shape only and are recomputed from it."""
    levels = _build_hierarchy(g, gb)
    return [lv[:3] for lv in levels], _dense_inverse(*levels[-1][:3])


def multigrid_vcycle(setup, r, omega=0.6, nu=2):
    """One symmetric V-cycle applied to ``r`` with the hierarchy ``setup`` of
    :func:`multigrid_setup`: ``nu`` damped-Jacobi sweeps (ω = ``omega``) before and after
    the coarse correction, the dense inverse on the coarsest level."""
    levels, coarse_inv = setup

    def vcycle(level, r):
        lg, lgb, diag = levels[level]
        if level == len(levels) - 1:
            return jnp.matmul(coarse_inv, r.reshape(-1), precision=HIGHEST).reshape(r.shape)
        caxes = tuple(a for a, n in enumerate(lgb.shape) if n > 1)
        dinv = jnp.where(diag > 0, 1.0 / jnp.where(diag > 0, diag, 1.0), 0.0)

        def sweep(_, x):
            return x + omega * dinv * (r - apply_operator(x, lg, lgb))

        # the sweeps run in a loop, not unrolled: XLA's CPU backend fuses an unrolled chain
        # of stencils into one kernel that recomputes every neighbour of every earlier
        # sweep (measured 10x slower at 77x77x107)
        x = jax.lax.fori_loop(0, nu - 1, sweep, omega * dinv * r)
        rc = restrict(r - apply_operator(x, lg, lgb), caxes)
        x = x + _prolong(vcycle(level + 1, rc), r.shape, caxes)
        return jax.lax.fori_loop(0, nu, sweep, x)

    return vcycle(0, r)


# ----------------------------------------------------------------------------------
# PCG
# ----------------------------------------------------------------------------------


def _pcg(matvec, b, x0, precond, rtol, atol, maxiter):
    bnorm = jnp.sqrt(jnp.sum(b * b))
    tol = jnp.maximum(rtol * bnorm, atol)
    r0 = b - matvec(x0)
    z0 = precond(r0)
    rz0 = jnp.sum(r0 * z0)
    rn0 = jnp.sqrt(jnp.sum(r0 * r0))

    def cond(s):
        _, _, _, _, _, rn, k = s
        return (rn > tol) & (k < maxiter) & (bnorm > 0)

    def body(s):
        x, r, z, p, rz, _, k = s
        ap = matvec(p)
        pap = jnp.sum(p * ap)
        alpha = jnp.where(pap > 0, rz / jnp.where(pap > 0, pap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        z = precond(r)
        rz_new = jnp.sum(r * z)
        beta = jnp.where(rz != 0, rz_new / jnp.where(rz != 0, rz, 1.0), 0.0)
        p = z + beta * p
        return x, r, z, p, rz_new, jnp.sqrt(jnp.sum(r * r)), k + 1

    init = (x0, r0, z0, z0, rz0, rn0, jnp.array(0, jnp.int32))
    x, _, _, _, _, rn, k = jax.lax.while_loop(cond, body, init)
    x = jnp.where(bnorm > 0, x, jnp.zeros_like(x))
    rtrue = b - matvec(x)
    safe_b = jnp.where(bnorm > 0, bnorm, 1.0)
    rel = jnp.where(bnorm > 0, jnp.sqrt(jnp.sum(rtrue * rtrue)) / safe_b, 0.0)
    converged = (rn <= tol) | (bnorm == 0)
    return x, (k, rel, converged)


# ----------------------------------------------------------------------------------
# Public solver
# ----------------------------------------------------------------------------------


class ScaledSystem(NamedTuple):
    """The scaled linear system of :func:`solve_potential` (A' = (h²/max σ) A)."""

    mask: jax.Array  # voxels connected to a Dirichlet face
    mf: jax.Array  # the mask as 0/1 in the field dtype
    sig: jax.Array  # σ / max σ on the connected voxels
    g: tuple  # face conductances per axis (scaled, masked)
    gb: jax.Array  # Dirichlet boundary conductance per voxel
    b: jax.Array  # right-hand side (boundary values, flux faces, source)
    identity: jax.Array  # 1 on unconnected voxels (their equation is φ = 0)


def scaled_system(sigma, h, axis, lo, hi, lateral, value_lo, value_hi, source) -> ScaledSystem:
    """Connectivity mask, scaled face and boundary conductances and right-hand side of
    ∇·(σ∇φ) = f with the ``lo``/``hi`` conditions of ``axis`` (see :func:`solve_potential`);
    shared by the single-device and the slab-sharded solvers (kernels.sharded)."""
    dtype = sigma.dtype
    shape = sigma.shape
    mask = connected_to_dirichlet(sigma, axis, lo, hi, lateral)
    mf = mask.astype(dtype)
    scale = jax.lax.stop_gradient(jnp.max(sigma))
    scale = jnp.where(scale > 0, scale, 1.0)
    sig = sigma / scale * mf  # masked, normalised to [0, 1]
    g = tuple(ga * mf for ga in face_conductances(sig, axis, lateral))
    layer_lo = _boundary_layer(shape, axis, 0, dtype)
    layer_hi = _boundary_layer(shape, axis, 1, dtype)
    v_lo = _expand_face_value(value_lo, shape, axis, dtype)
    v_hi = _expand_face_value(value_hi, shape, axis, dtype)
    gb = jnp.zeros(shape, dtype)
    b = jnp.zeros(shape, dtype)
    if lo == "dirichlet":
        gb = gb + 2.0 * sig * layer_lo
        b = b + 2.0 * sig * layer_lo * v_lo
    else:
        b = b + layer_lo * v_lo * h / scale * mf
    if hi == "dirichlet":
        gb = gb + 2.0 * sig * layer_hi
        b = b + 2.0 * sig * layer_hi * v_hi
    else:
        b = b + layer_hi * v_hi * h / scale * mf
    if source is not None:
        b = b - jnp.asarray(source, dtype) * (h * h / scale) * mf
    return ScaledSystem(mask, mf, sig, g, gb, b, 1.0 - mf)


@functools.partial(
    jax.jit,
    static_argnames=("axis", "lo", "hi", "lateral", "maxiter", "preconditioner"),
)
def solve_potential(
    sigma,
    voxel_size_m,
    *,
    axis=0,
    lo="dirichlet",
    hi="dirichlet",
    value_lo=0.0,
    value_hi=0.0,
    lateral="noflux",
    source=None,
    x0=None,
    rtol=1e-6,
    atol=0.0,
    maxiter=2000,
    preconditioner="fft",
):
    """Solve ∇·(σ∇φ) = f on a voxel grid with PCG (see module docstring).

    Args:
        sigma: (n0, n1) or (n0, n1, n2) conductivity per voxel, S/m, ≥ 0.
        voxel_size_m: voxel edge length h (m), scalar.
        axis: stack axis whose two faces carry the ``lo``/``hi`` conditions (static).
        lo, hi: "dirichlet" or "flux" on the faces at index 0 / n−1 of ``axis``
            (static; at least one Dirichlet).
        value_lo, value_hi: Dirichlet potential (V) or inward current density (A/m²)
            on that face; scalar or an array of the face's shape (grid without
            ``axis``).
        lateral: "noflux" (default) or "periodic" on the other axes (static).
        source: f in ∇·(σ∇φ) = f (A/m³), same shape as σ, or None for 0.
        x0: initial guess φ (V) for a warm start, or None (0 V).
        rtol, atol: PCG stops when ‖b − A'φ‖₂ ≤ max(rtol ‖b‖₂, atol) for the scaled
            system A' = (h²/max σ) A (b is O(volts)).
        maxiter: iteration cap (static).
        preconditioner: "fft" (default), "multigrid", "jacobi" or "none" (static).

    Returns:
        :class:`PotentialSolution` (phi in V, iterations, relative residual,
        converged flag, connected mask).
    """
    sigma = jnp.asarray(sigma)
    dtype = jnp.promote_types(sigma.dtype, jnp.float32)
    sigma = sigma.astype(dtype)
    ndim = sigma.ndim
    _check_options(ndim, axis, lo, hi, lateral, preconditioner)
    shape = sigma.shape
    h = jnp.asarray(voxel_size_m, dtype)

    mask, mf, sig, g, gb, b, identity = scaled_system(sigma, h, axis, lo, hi, lateral, value_lo, value_hi,
                                                      source)

    def matvec(x):
        return apply_operator(x, g, gb) + identity * x

    gs = jax.lax.stop_gradient(g)
    gbs = jax.lax.stop_gradient(gb)
    if preconditioner == "none":
        precond = lambda r: r  # noqa: E731
    elif preconditioner == "jacobi":
        d = _diagonal(gs, gbs) + identity
        dinv = 1.0 / jnp.where(d > 0, d, 1.0)
        precond = lambda r: dinv * r  # noqa: E731
    elif preconditioner == "fft":
        sig_s = jax.lax.stop_gradient(sig)
        nconn = jnp.maximum(jnp.sum(mf), 1.0)
        smean = jnp.maximum(jnp.sum(sig_s) / nconn, jnp.finfo(dtype).tiny)
        fft_apply = _make_fft_preconditioner(shape, dtype, axis, lo, hi, lateral, smean)
        mfs = jax.lax.stop_gradient(mf)
        precond = lambda r: mfs * fft_apply(mfs * r) + (1.0 - mfs) * r  # noqa: E731
    else:
        mg = _make_multigrid(gs, gbs)
        mfs = jax.lax.stop_gradient(mf)
        precond = lambda r: mfs * mg(mfs * r) + (1.0 - mfs) * r  # noqa: E731

    if x0 is None:
        xinit = jnp.zeros(shape, dtype)
    else:
        xinit = jax.lax.stop_gradient(jnp.asarray(x0, dtype)) * mf
    xinit = jax.lax.stop_gradient(xinit)

    def solve(mv, rhs):
        return _pcg(mv, rhs, xinit, precond, rtol, atol, maxiter)

    def transpose_solve(mv, rhs):
        return _pcg(mv, rhs, jnp.zeros_like(rhs), precond, rtol, atol, maxiter)

    phi, (iters, rel, conv) = jax.lax.custom_linear_solve(
        matvec, b, solve, transpose_solve, symmetric=True, has_aux=True
    )
    return PotentialSolution(phi * mf, iters, rel, conv, mask)


# ----------------------------------------------------------------------------------
# Post-processing: currents
# ----------------------------------------------------------------------------------


def _current_inputs(phi, sigma, voxel_size_m, axis, connected):
    """(phi, sigma masked by ``connected``, h, n along axis) in phi's dtype."""
    phi = jnp.asarray(phi)
    sigma = jnp.asarray(sigma, phi.dtype)
    if connected is not None:
        sigma = sigma * connected
    return phi, sigma, jnp.asarray(voxel_size_m, phi.dtype), phi.shape[axis]


def boundary_currents(phi, sigma, voxel_size_m, *, axis=0, value_lo=0.0, value_hi=0.0,
                      connected=None):
    """Currents entering the domain through the two Dirichlet faces of ``axis``.

    ``I_lo = Σ_face 2σ_i (φ_lo − φ_i)/h · h^(d−1)`` (A in 3D, A/m per unit depth in
    2D), likewise ``I_hi``; positive = current flowing into the domain. For a
    source-free solved problem ``I_lo = −I_hi``.

    Args:
        phi: solved potential (V). sigma: conductivity (S/m).
        voxel_size_m: h (m). axis: stack axis.
        value_lo, value_hi: the Dirichlet values used in the solve (V).
        connected: optional mask from the solve (dead voxels carry no current).
    """
    phi, sigma, h, n = _current_inputs(phi, sigma, voxel_size_m, axis, connected)
    area = h ** (phi.ndim - 1)
    first = jax.lax.index_in_dim(phi, 0, axis, keepdims=False)
    last = jax.lax.index_in_dim(phi, n - 1, axis, keepdims=False)
    s_first = jax.lax.index_in_dim(sigma, 0, axis, keepdims=False)
    s_last = jax.lax.index_in_dim(sigma, n - 1, axis, keepdims=False)
    i_lo = jnp.sum(2.0 * s_first * (value_lo - first)) / h * area
    i_hi = jnp.sum(2.0 * s_last * (value_hi - last)) / h * area
    return i_lo, i_hi


def plane_currents(phi, sigma, voxel_size_m, *, axis=0, connected=None):
    """Current through each interior plane of faces normal to ``axis``, in the +axis
    direction: ``I_k = Σ σ_{k,k+1} (φ_k − φ_{k+1}) / h · h^(d−1)``, k = 0..n−2
    (A in 3D, A/m in 2D)."""
    phi, sigma, h, n = _current_inputs(phi, sigma, voxel_size_m, axis, connected)
    a = jax.lax.slice_in_dim(phi, 0, n - 1, axis=axis)
    b = jax.lax.slice_in_dim(phi, 1, n, axis=axis)
    sa = jax.lax.slice_in_dim(sigma, 0, n - 1, axis=axis)
    sb = jax.lax.slice_in_dim(sigma, 1, n, axis=axis)
    flux = _harmonic(sa, sb) * (a - b)
    other = tuple(i for i in range(phi.ndim) if i != axis)
    return jnp.sum(flux, axis=other) / h * h ** (phi.ndim - 1)

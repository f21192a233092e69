"""Geometric multigrid V-cycle for the tortuosity conduction system (a CG preconditioner).

System (dimensionless, the one of :mod:`ssbx.kernels.transport_lean`): cell-centred finite
volumes for ∇·(σ∇φ) = 0 on a voxel grid, ``(A x)_i = Σ_faces g_f (x_i − x_j) + g_b,i x_i``
with harmonic-mean face conductances g_f (Patankar, *Numerical Heat Transfer and Fluid
Flow* (1980), ch. 4) and the Dirichlet boundary conductance g_b = 2 s on the first and last
layer of axis 0 (half a voxel to the Dirichlet face; Cooper et al., SoftwareX 5, 203 (2016)).
Voxels with no conducting path to a Dirichlet face have s = 0 and their rows vanish.

Hierarchy (all levels are again 7-point face-conductance operators, stored as three face
arrays ``g[a][i]`` = conductance between i and i+1 along a, plus g_b and the diagonal):

* aggregates of 2×2×2 cells (2×2 in 2D; an odd length leaves a last aggregate of one
  layer; a periodic axis of odd length is not coarsened), piecewise-constant prolongation
  P and restriction R = Pᵀ (sum over the aggregate);
* coarse operators (``coarsening="galerkin"``, used by the solver): the Galerkin product
  PᵀAP, which on this stencil is again a face-conductance stencil whose coarse face
  conductance is the sum of the fine faces crossing the coarse face and whose g_b is the
  sum over the aggregate, so every conducting path and coefficient jump is inherited
  exactly (Braess, Computing 37, 61 (1986); Notay, ETNA 37, 123 (2010)). On smooth
  errors this operator is twice too stiff (a staircase carries twice the energy of the
  smooth field), which Braess counters by over-weighting the coarse correction; the
  solver uses a factor ``alpha`` = 1.5;
* ``coarsening="series"``: series/parallel averaging of the fine faces (per 2×2 column
  the three resistors from the centre of I to the centre of I+1 in series, the columns
  in parallel; the coarse-grid discretisation on a uniform grid). Kept for comparison
  only: with piecewise-constant P it over-corrects (measured spectrum of M A up to 4.5–9
  on 8³ volumes against ≤ 1 for Galerkin), so PCG needs more iterations than Jacobi;
* smoother: damped Jacobi (weight ω), ``nu`` sweeps before and after the coarse
  correction, the coarsest level (≤ ``coarsest`` cells) solved by a dense
  pseudo-inverse (eigendecomposition; a singular floating cluster gets 0); a grid with
  no coarse level is solved by the dense pseudo-inverse of the whole operator;
* the finest level's operator and diagonal come from the caller (the lean solver applies
  it on the fly from a 1-byte mask), the coarse levels are stored (Σ ≈ 1/7 of the fine
  grid, 16 B per coarse cell).

XLA-CPU notes (measured at 64³, docs/tortuosity.md): the smoothing sweeps run in a while
loop with a trip count XLA cannot see, which materialises each level's result (otherwise
the coarse levels are fused into, and recomputed at, every neighbour read of the finer
stencil: a V-cycle cost ~100 operator applications); the restriction is a sum of strided
slices, not a reshape-sum (XLA-CPU hands reductions to its YNNPACK fusion, 3× slower).

The V-cycle is symmetric (same smoother before and after, R = Pᵀ), so it is a valid PCG
preconditioner. With a zero first guess the first pre-smoothing sweep needs no operator
application; per V-cycle the finest level costs 2·nu operator applications plus one
restriction and one prolongation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .rotations import HIGHEST

__all__ = ["Level", "Hierarchy", "coarsen", "restrict", "build_levels", "build_hierarchy", "make_vcycle",
           "level_operator", "first_level_axes", "hierarchy_below"]

_COARSEST = 512


class Level(NamedTuple):
    """One stored multigrid level: face conductances per axis, Dirichlet conductance, diagonal."""

    g: tuple
    gb: jax.Array
    diag: jax.Array


# ----------------------------------------------------------------------------------
# shifts and the stored-face operator
# ----------------------------------------------------------------------------------


def _up(x, a, periodic):
    """x[i+1] along a (0 beyond the end unless periodic)."""
    if periodic:
        return jnp.roll(x, -1, axis=a)
    cfg = [(0, 0, 0)] * x.ndim
    cfg[a] = (-1, 1, 0)
    return jax.lax.pad(x, jnp.zeros((), x.dtype), cfg)


def _down(x, a, periodic):
    """x[i−1] along a (0 before the start unless periodic)."""
    if periodic:
        return jnp.roll(x, 1, axis=a)
    cfg = [(0, 0, 0)] * x.ndim
    cfg[a] = (1, -1, 0)
    return jax.lax.pad(x, jnp.zeros((), x.dtype), cfg)


def level_operator(x, level, periodic):
    """y = A x on a stored level: ``y = d x − Σ_a (g_a x[i+1] + g_a[i−1] x[i−1])``.

    ``periodic[a]``: axis a wraps (then g_a[n−1] is the face between n−1 and 0).
    """
    y = level.diag * x
    for a, ga in enumerate(level.g):
        gx = ga * _up(x, a, periodic[a])
        y = y - gx - _down(ga * x, a, periodic[a])
    return y


def _diagonal(g, gb, periodic):
    d = gb
    for a, ga in enumerate(g):
        d = d + ga + _down(ga, a, periodic[a])
    return d


# ----------------------------------------------------------------------------------
# coarsening
# ----------------------------------------------------------------------------------


def _pad_even(x, axes, value=0.0):
    cfg = [(0, 0)] * x.ndim
    for a in axes:
        if x.shape[a] % 2:
            cfg[a] = (0, 1)
    if all(c == (0, 0) for c in cfg):
        return x
    return jnp.pad(x, cfg, constant_values=value)


def restrict(r, axes):
    """Sum over the aggregates (R = Pᵀ): pad odd axes, add the even and odd members.

    Strided slices, not a reshape-sum: XLA-CPU hands reductions to its YNNPACK fusion,
    measured 3× slower here."""
    r = _pad_even(r, axes)
    for a in axes:
        even, odd = _pairs(r, a)
        r = even + odd
    return r


def _prolong(xc, fine_shape, axes):
    """Piecewise-constant prolongation: copy each coarse value to its aggregate."""
    shape, bshape = [], []
    for a, n in enumerate(xc.shape):
        if a in axes:
            shape += [n, 1]
            bshape += [n, 2]
        else:
            shape.append(n)
            bshape.append(n)
    x = jnp.broadcast_to(xc.reshape(shape), bshape)
    full = tuple(2 * n if a in axes else n for a, n in enumerate(xc.shape))
    x = x.reshape(full)
    if full != tuple(fine_shape):
        x = x[tuple(slice(0, n) for n in fine_shape)]
    return x


def _series(*conductances):
    """Conductance of resistors in series, 0 if any is 0 (inf allowed: no resistance)."""
    ok = None
    rsum = 0.0
    for c in conductances:
        pos = c > 0
        ok = pos if ok is None else ok & pos
        rsum = rsum + 1.0 / jnp.where(pos, c, 1.0)
    return jnp.where(ok, 1.0 / rsum, 0.0)


def _pairs(x, a):
    """(even, odd) members of each pair along a (length even)."""
    n = x.shape[a]
    return (jax.lax.slice_in_dim(x, 0, n, 2, axis=a), jax.lax.slice_in_dim(x, 1, n, 2, axis=a))


def coarsen_galerkin(level, axes, periodic):
    """The Galerkin product PᵀAP of piecewise-constant aggregation: the coarse face
    conductance is the sum of the fine faces crossing the coarse face, g_b summed."""
    new_g = []
    for a, ga in enumerate(level.g):
        gc = _pairs(_pad_even(ga, (a,)), a)[1] if a in axes else ga
        for b in axes:
            if b != a:
                gc = restrict(gc, (b,))
        new_g.append(gc)
    g = tuple(new_g)
    gb = restrict(level.gb, axes)
    return Level(g, gb, _diagonal(g, gb, periodic))


def coarsen(level, axes, periodic):
    """The next coarser :class:`Level` by series/parallel averaging (module docstring).

    Args:
        level: fine level (its shape may have odd lengths along ``axes``).
        axes: the axes to coarsen (each non-periodic, or periodic with an even length).
        periodic: per-axis wrap flags.
    """
    dtype = level.gb.dtype
    inf = jnp.asarray(jnp.inf, dtype)
    shape = level.gb.shape
    # the face inside an aggregate of one layer (odd length, padded) has no resistance
    new_g = []
    for a, ga in enumerate(level.g):
        if a in axes:
            n = shape[a]
            gp = _pad_even(ga, (a,))
            if n % 2:  # the last aggregate is the single layer n−1: its inner face is "inf"
                idx = jnp.arange(n + 1).reshape((-1,) + (1,) * (ga.ndim - 1 - a))
                gp = jnp.where(idx == n - 1, inf, gp)
            inner, cross = _pairs(gp, a)  # face 2I (inside I) and 2I+1 (between I and I+1)
            nxt = _up(inner, a, periodic[a])  # face inside I+1 (0 past the end: no face)
            gc = _series(2.0 * inner, cross, 2.0 * nxt)
            gc = jnp.where(jnp.isinf(gc), 0.0, gc)
        else:
            gc = ga
        for b in axes:
            if b != a:
                gc = restrict(gc, (b,))
        new_g.append(gc)
    gb = level.gb
    if 0 in axes:
        n0 = shape[0]
        g0 = _pad_even(level.g[0], (0,))
        if n0 % 2:
            idx = jnp.arange(n0 + 1).reshape((-1,) + (1,) * (gb.ndim - 1))
            g0 = jnp.where(idx == n0 - 1, inf, g0)
        inner = _pairs(g0, 0)[0]
        lo, hi = _pairs(_pad_even(gb, (0,)), 0)
        # g_b sits on layer 0 (the even member of the first aggregate) and on layer n0 − 1
        # (odd member of the last aggregate; for odd n0 the even member of the one-layer
        # last aggregate, whose inner face is "inf", so the series leaves g_b itself)
        gbc = _series(lo, 2.0 * inner) + _series(hi, 2.0 * inner)
        gb = gbc
        rest = tuple(b for b in axes if b != 0)
    else:
        rest = axes
    for b in rest:
        gb = restrict(gb, (b,))
    g = tuple(new_g)
    return Level(g, gb, _diagonal(g, gb, periodic))


def _coarsen_axes(shape, periodic):
    return tuple(a for a, n in enumerate(shape) if n > 1 and not (periodic[a] and n % 2))


def build_levels(g, gb, periodic, coarsest=_COARSEST, coarsening="galerkin"):
    """Coarse levels below a fine level given by its faces ``g`` and Dirichlet ``gb``.

    Returns (levels, axes): ``levels[0]`` is the first coarse level, ``axes[k]`` the axes
    coarsened from level k−1 (the fine level for k = 0) to level k.
    """
    fine = Level(tuple(g), gb, _diagonal(tuple(g), gb, periodic))
    levels, axes = [], []
    cur = fine
    while cur.gb.size > coarsest:
        ax = _coarsen_axes(cur.gb.shape, periodic)
        if not ax:
            break
        cur = (coarsen if coarsening == "series" else coarsen_galerkin)(cur, ax, periodic)
        levels.append(cur)
        axes.append(ax)
    return levels, axes


def _dense_pinv(level, periodic):
    shape = level.gb.shape
    n = level.gb.size
    eye = jnp.eye(n, dtype=level.gb.dtype)
    cols = jax.vmap(lambda e: level_operator(e.reshape(shape), level, periodic).reshape(-1))(eye)
    mat = 0.5 * (cols + cols.T)
    w, v = jnp.linalg.eigh(mat)
    cutoff = jnp.max(jnp.abs(w)) * n * jnp.finfo(mat.dtype).eps
    winv = jnp.where(w > cutoff, 1.0 / jnp.where(w > cutoff, w, 1.0), 0.0)
    return jnp.matmul(v * winv, v.T, precision=HIGHEST)


def _inv_diag(d):
    return jnp.where(d > 0, 1.0 / jnp.where(d > 0, d, 1.0), 0.0)


class Hierarchy(NamedTuple):
    """Coarse levels, the axes coarsened into each, and the coarsest level's pseudo-inverse
    (None when the coarsest level is still too large for a dense solve)."""

    levels: tuple
    axes: tuple
    pinv: object


def build_hierarchy(g, gb, periodic, coarsest=_COARSEST, coarsening="galerkin"):
    """:class:`Hierarchy` below the fine level (faces ``g``, Dirichlet ``gb``)."""
    periodic = tuple(bool(p) for p in periodic)
    levels, axes = build_levels(g, gb, periodic, coarsest, coarsening)
    if not levels:  # a grid this small is solved exactly by the dense pseudo-inverse
        g = tuple(g)
        return Hierarchy((), (), _dense_pinv(Level(g, gb, _diagonal(g, gb, periodic)),
                                             periodic))
    return _with_pinv(levels, axes, periodic, coarsest)


def first_level_axes(shape, periodic):
    """Axes coarsened from a fine grid of ``shape`` to the first coarse level (empty: the
    grid is small enough for the dense solve, or has no axis to coarsen)."""
    size = 1
    for n in shape:
        size *= n
    if size <= _COARSEST:
        return ()
    return _coarsen_axes(tuple(shape), tuple(bool(p) for p in periodic))


def hierarchy_below(first, first_axes, periodic, coarsest=_COARSEST, coarsening="galerkin"):
    """:class:`Hierarchy` whose first coarse level ``first`` (coarsened along
    ``first_axes`` from the fine grid) the caller built; the rest as :func:`build_hierarchy`.
    Lets the caller form the first level without full-size float face arrays (the lean
    solver sums 1-byte faces of its mask)."""
    periodic = tuple(bool(p) for p in periodic)
    levels, axes = build_levels(first.g, first.gb, periodic, coarsest, coarsening)
    return _with_pinv([first] + list(levels), [tuple(first_axes)] + list(axes), periodic,
                      coarsest)


def _with_pinv(levels, axes, periodic, coarsest):
    last = levels[-1]
    pinv = _dense_pinv(last, periodic) if last.gb.size <= 4 * coarsest else None
    return Hierarchy(tuple(levels), tuple(axes), pinv)


def make_vcycle(fine_apply, fine_diag, hierarchy, periodic, live=None, *, omega=0.7, nu=1,
                coarse_sweeps=8, alpha=1.0, fine_direct=False, fine_dinv=None):
    """Symmetric V-cycle z = M r (M ≈ A⁻¹) for PCG.

    Args:
        fine_apply: x ↦ A x on the finest grid (may assume x = 0 where ``live`` is 0).
        fine_diag: the finest diagonal.
        hierarchy: :func:`build_hierarchy` of the finest faces.
        periodic: per-axis wrap flags (tuple of bool).
        live: optional finest mask (float); the prolonged correction is multiplied by it.
        omega, nu: damped-Jacobi weight and sweeps per side.
        coarse_sweeps: Jacobi sweeps per side on the last level when it has no dense
            pseudo-inverse (no axis left to coarsen).
        fine_direct: with ``nu = 1``, write the finest level's post-smoothing sweep as a
            plain expression instead of a one-sweep loop (same arithmetic). The coarse
            levels keep their loops, so their results are materialised once; the finest
            iterate before the sweep (pre-smoothed + prolonged correction, elementwise in
            r and the coarse correction) is then fused into the sweep's stencil instead of
            being stored: one full-size float32 field less (measured in docs/tortuosity.md).
            The returned function then takes an optional second argument, a dead field of
            r's shape whose buffer the fine residual may take over.
        fine_dinv: the finest 1/diagonal (0 where the diagonal is 0), if the caller has a
            cheaper form than the division of ``fine_diag``.
    """
    periodic = tuple(bool(p) for p in periodic)
    levels, axes, pinv = hierarchy
    if fine_dinv is None:
        fine_dinv = _inv_diag(fine_diag)
    if not levels:
        def exact(r, scratch=None):
            z = jnp.matmul(pinv, r.reshape(-1), precision=HIGHEST).reshape(r.shape)
            return z if live is None else live * z
        return exact

    # The sweeps run in a while loop whose trip count XLA cannot see (``sweeps`` plus a
    # runtime 0): its input and output are then materialised. With a static count XLA-CPU
    # unrolls the loop and fuses each level's smoothing into every neighbour read of the
    # next finer level's stencil, recomputing the coarse levels 7× per level (measured:
    # a V-cycle at 64³ cost ~100 fine operator applications; optimization_barrier is
    # removed before fusion and does not help).
    zero = (fine_diag.reshape(-1)[0] * 0.0).astype(jnp.int32)

    def smooth_solve(apply, dinv, r, x, sweeps):
        def sweep(_, x):
            return x + omega * dinv * (r - apply(x))
        return jax.lax.fori_loop(0, zero + sweeps, sweep, x)

    def cycle(k, r, apply, dinv, mask, scratch=None):
        # k: index of the level r lives on, −1 = finest
        ax = axes[k + 1]
        x = omega * dinv * r
        if nu > 1:
            x = smooth_solve(apply, dinv, r, x, nu - 1)
        if fine_direct and k == -1:
            # the residual is formed in a loop of one (opaque) trip, so it is materialised
            # once (4 B/voxel) and restricted from there: fused into the strided-slice
            # restriction, XLA-CPU materialises each of the stencil's six shifted copies
            res = jax.lax.fori_loop(0, zero + 1, lambda _, v: r - apply(x),
                                    jnp.zeros_like(r) if scratch is None else scratch)
        else:
            res = r - apply(x)
        rc = restrict(res, ax)
        lev = levels[k + 1]
        capply = lambda v: level_operator(v, lev, periodic)  # noqa: E731
        if k + 1 == len(levels) - 1:
            if pinv is not None:
                ec = jnp.matmul(pinv, rc.reshape(-1), precision=HIGHEST).reshape(rc.shape)
            else:
                cd = _inv_diag(lev.diag)
                ec = smooth_solve(capply, cd, rc, omega * cd * rc, 2 * coarse_sweeps - 1)
        else:
            ec = cycle(k + 1, rc, capply, _inv_diag(lev.diag), None)
        e = _prolong(ec if alpha == 1.0 else alpha * ec, r.shape, ax)
        if mask is not None:
            e = mask * e
        x = x + e
        if fine_direct and nu == 1 and k == -1:
            return x + omega * dinv * (r - apply(x))
        return smooth_solve(apply, dinv, r, x, nu)

    return lambda r, scratch=None: cycle(-1, r, fine_apply, fine_dinv, live, scratch)

"""Fused explicit step of the anisotropic diffusion operator (XLA path).

Same operator as :mod:`ssbx.kernels.diffusion` (which stays the reference), written
so that one forward-Euler step is a single elementwise pass over the grid.

Equation (docs/physics.md §2)::

    ∂x/∂t = ∇·(D ∇x) + s,     D = R_g diag(D1, D2, D3) R_gᵀ in grain g,

x = c/c_max (dimensionless), D in m²/s, s in 1/s, no flux into non-active voxels.

The operator as a symmetric pair stencil
----------------------------------------
The reference operator is minus the gradient of the discrete energy (see
:mod:`ssbx.kernels.diffusion`)

    E(x) = Σ_cells [ ¼ Σ_k D_kk (d_k+² + d_k−²) + Σ_{k<l} D_kl g_k g_l ] / h²

(per unit cell volume), with the masked one-sided differences d_k± of x (not divided
by h here) and g_k = ½ (d_k+ + d_k−) (cross terms of
Günter et al., J. Comput. Phys. 209, 354 (2005)). Each product d_k^s d_l^t
(s, t = ±1, pointing from cell i to a = i + s e_k and b = i + t e_l) is split with
(x_a − x_i)(x_b − x_i) = ½ [(x_a − x_i)² + (x_b − x_i)² − (x_a − x_b)²], so E is a sum
of pair energies ½ W_pq (x_q − x_p)² over the 19-point (3D) / 9-point (2D)
neighbourhood, and

    ∂x_p/∂t = Σ_q W_pq (x_q − x_p) + s_p,      W_pq = W_qp.

With o_k(p) = 1 when the face between p and p + e_k joins two active voxels (else 0)
and D at voxel centres, the weights of the forward pairs of voxel p are (1/h² times)

    axis pair  (p, p+e_k):       o_k(p) ½ (D_kk(p) + D_kk(p+e_k))
                  + ¼ o_k(p) Σ_{l≠k} [ D_kl(p)     (o_l(p)     − o_l(p−e_l))
                                        − D_kl(p+e_k) (o_l(p+e_k) − o_l(p+e_k−e_l)) ],
    diagonal   (p, p+e_k+e_l):   ¼ [ D_kl(p+e_l) o_k(p+e_l) o_l(p) + D_kl(p+e_k) o_k(p) o_l(p+e_k) ],
    diagonal   (p, p+e_k−e_l):  −¼ [ D_kl(p−e_l) o_k(p−e_l) o_l(p−e_l)
                                        + D_kl(p+e_k) o_k(p) o_l(p+e_k−e_l) ]     (k < l).

In a homogeneous medium they reduce to the textbook 9-point cross-derivative stencil
(axis D_kk, diagonals ±D_kl/2). Every weight vanishes unless both ends of its pair are
active, so no Li leaves the active phase, and because each pair exchange appears with
opposite signs at its two ends, Σ x changes only by Δt Σ s.

Cost model
----------
:func:`prepare` gathers the per-grain tensor and forms the d + d(d−1) = d² pair
weights (9 in 3D, 4 in 2D) once per rollout, stored zero-padded by one voxel on every
side. The state is kept padded too (:func:`pad_state`): :func:`step_padded` reads the
padded x, the d² weight arrays (each at two static offsets), the active mask and the
source, and writes the new padded x, all in one XLA loop fusion (see
docs/performance.md), with no jnp.roll / pad chains between kernels. Compulsory traffic
in float32: 4 (x) + 4 d² (weights) + 1 (mask) + 4 (source) + 4 (write) bytes per voxel
and step (49 B in 3D, 29 B in 2D), against 16 B for the reference formulation, which
re-gathers the tensor from the grain id every step and pays for it in arithmetic and
intermediate passes instead.

Units: weights in 1/s (D/h²), Δt in s, s in 1/s.
"""

from __future__ import annotations

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp

from .diffusion import voxel_components


def _pair_offsets(ndim):
    """Forward pair offsets, in the order of :attr:`FaceCoefficients.weights`.

    Axis pairs +e_k first, then for each k < l the diagonals +e_k+e_l and +e_k−e_l.
    """
    offsets = []
    for k in range(ndim):
        o = [0] * ndim
        o[k] = 1
        offsets.append(tuple(o))
    for k in range(ndim):
        for l in range(k + 1, ndim):
            plus = [0] * ndim
            plus[k], plus[l] = 1, 1
            minus = [0] * ndim
            minus[k], minus[l] = 1, -1
            offsets += [tuple(plus), tuple(minus)]
    return offsets


def _at(padded, offset):
    """Static slice of a one-voxel zero-padded array: its value at p + offset."""
    index = tuple(slice(1 + o, 1 + o + n - 2) for o, n in zip(offset, padded.shape))
    return padded[index]


def _pad(a):
    return jnp.pad(a, 1)


class FaceCoefficients(eqx.Module):
    """Pair weights of the fused diffusion step (see module docstring).

    Attributes:
        weights: (d², n0+2, n1+2[, n2+2]) forward pair weights W in 1/s, zero-padded
            by one voxel on every side; order of the pairs: +e_k (k = 0..d−1), then
            +e_k+e_l, +e_k−e_l for each k < l.
        active: bool (n0, n1[, n2]) active-phase mask (grain id ≥ 0).
    """

    weights: jax.Array
    active: jax.Array

    @property
    def ndim(self):
        return self.active.ndim


def prepare(grain_id, component_table, voxel_size_m):
    """Pair weights W (1/s) for :func:`step`, computed once per rollout (jitted).

    Differentiable in ``component_table`` and ``voxel_size_m``.

    Args:
        grain_id: int (n0, n1[, n2]); −1 marks non-active voxels.
        component_table: (n_grains, d(d+1)/2) tensor components in m²/s, packed as
            :func:`ssbx.kernels.diffusion.tensor_components` (diagonal first, then
            the upper triangle row by row).
        voxel_size_m: voxel edge h in metres.

    Returns:
        :class:`FaceCoefficients`.
    """
    grain_id = jnp.asarray(grain_id)
    component_table = jnp.asarray(component_table)
    ndim = grain_id.ndim
    if ndim not in (2, 3):
        raise ValueError(f"grain_id: ndim = {ndim}; valid: 2 or 3")
    n_comp = ndim * (ndim + 1) // 2
    if component_table.ndim != 2 or component_table.shape[1] != n_comp:
        raise ValueError(
            f"component_table: shape = {component_table.shape}; valid: (n_grains, {n_comp}) for a {ndim}D grid"
        )
    return _prepare(grain_id, component_table, voxel_size_m)


@jax.jit
def _prepare(grain_id, component_table, voxel_size_m):
    ndim = grain_id.ndim
    active = grain_id >= 0
    inv_h2 = 1.0 / jnp.asarray(voxel_size_m, component_table.dtype) ** 2
    comps = voxel_components(component_table, grain_id) * active.astype(component_table.dtype)
    # per-voxel D/h² (1/s), zero outside the active phase, padded by 2 so that offsets up
    # to ±2 can be read as static slices
    dpad = jnp.pad(comps * inv_h2, [(0, 0)] + [(2, 2)] * ndim)
    apad = jnp.pad(active.astype(component_table.dtype), 2)
    shape = grain_id.shape

    def at(a, offset):  # value of a (padded by 2) at p + offset, for p on the padded-by-1 grid
        return a[tuple(slice(1 + o, 1 + o + n + 2) for o, n in zip(offset, shape))]

    def e(k, sign=1):
        o = [0] * ndim
        o[k] = sign
        return tuple(o)

    def add(*offs):
        return tuple(sum(c) for c in zip(*offs))

    zero = (0,) * ndim
    comp_index = {}
    m = ndim
    for k in range(ndim):
        comp_index[(k, k)] = k
    for k in range(ndim):
        for l in range(k + 1, ndim):
            comp_index[(k, l)] = comp_index[(l, k)] = m
            m += 1

    def D(k, l, offset):
        return at(dpad[comp_index[(k, l)]], offset)

    def o(k, offset):  # open face between p+offset and p+offset+e_k
        return at(apad, offset) * at(apad, add(offset, e(k)))

    weights = []
    for k in range(ndim):
        w = 0.5 * (D(k, k, zero) + D(k, k, e(k)))
        for l in range(ndim):
            if l == k:
                continue
            w = w + 0.25 * (D(k, l, zero) * (o(l, zero) - o(l, e(l, -1)))
                            - D(k, l, e(k)) * (o(l, e(k)) - o(l, add(e(k), e(l, -1)))))
        weights.append(o(k, zero) * w)
    for k in range(ndim):
        for l in range(k + 1, ndim):
            weights.append(0.25 * (D(k, l, e(l)) * o(k, e(l)) * o(l, zero)
                                   + D(k, l, e(k)) * o(k, zero) * o(l, e(k))))
            weights.append(-0.25 * (D(k, l, e(l, -1)) * o(k, e(l, -1)) * o(l, e(l, -1))
                                    + D(k, l, e(k)) * o(k, zero) * o(l, add(e(k), e(l, -1)))))
    # the padded-by-1 grid's outer layer holds pairs with a voxel outside the grid:
    # their masks are zero already (apad is zero there)
    return FaceCoefficients(weights=jnp.stack(weights), active=active)


def pad_state(x):
    """x (n0, n1[, n2]) → the padded state (n0+2, n1+2[, n2+2]) :func:`step_padded` advances.

    The outer layer is zero and stays zero; it only lets every neighbour be read as a
    static slice.
    """
    return _pad(x)


def interior(xp):
    """The grid values (n0, n1[, n2]) of a padded state."""
    return xp[tuple(slice(1, n - 1) for n in xp.shape)]


def _rate_padded(xp, coeffs, source):
    out = _pair_rate(xp, coeffs.weights)
    if source is not None:
        out = jnp.where(coeffs.active, out + source, 0.0)
    return out


def rate(x, coeffs, source=None):
    """∂x/∂t = Σ_q W_pq (x_q − x_p) + s on the active voxels, 1/s.

    Same values as :func:`ssbx.kernels.diffusion.diffusion_rate` (to round-off).

    Args:
        x: (n0, n1[, n2]) normalised Li content.
        coeffs: :class:`FaceCoefficients` from :func:`prepare`.
        source: optional per-voxel source s in 1/s (kept only on active voxels).
    """
    return _rate_padded(_pad(x), coeffs, source)


def step_padded(xp, coeffs, dt_s, source=None):
    """One forward-Euler step on the padded state (:func:`pad_state`), one XLA fusion.

    Reads xp, the weights, the mask and the source once and writes the new padded
    state (zero outer layer) once.

    Args:
        xp: (n0+2, n1+2[, n2+2]) padded normalised Li content.
        coeffs: :class:`FaceCoefficients` from :func:`prepare`.
        dt_s: time step, s (stability: :func:`ssbx.kernels.diffusion.stable_time_step`).
        source: optional (n0, n1[, n2]) source s in 1/s (unpadded).
    """
    return _pad(interior(xp) + dt_s * _rate_padded(xp, coeffs, source))


def step(x, coeffs, dt_s, source=None):
    """One forward-Euler step x + Δt ∂x/∂t on the unpadded state (pads inside).

    Same values as :func:`ssbx.kernels.diffusion.explicit_step` (to round-off). For
    long rollouts keep the state padded (:func:`step_padded`, :func:`rollout`), which
    saves the pad pass.
    """
    return x + dt_s * rate(x, coeffs, source)


# The whole padded step in one jit; the state's buffer is donated.
step_jit = jax.jit(step_padded, donate_argnums=0)


@partial(jax.jit, static_argnames=("n_steps",))
def rollout(x, coeffs, dt_s, n_steps, source=None):
    """``n_steps`` fused steps with a constant source in one compiled ``lax.scan``.

    Pads x once, advances the padded state, returns the unpadded final state.
    Differentiable (reverse mode stores every state; wrap the body in
    ``jax.checkpoint`` blocks for long rollouts, as engine/model/particle.py does).
    """

    def body(state, _):
        return step_padded(state, coeffs, dt_s, source), None

    return interior(jax.lax.scan(body, pad_state(x), None, length=n_steps)[0])


class FusedDiffusion:
    """Namespace kept for discoverability: ``FusedDiffusion.prepare`` / ``.step``."""

    prepare = staticmethod(prepare)
    rate = staticmethod(rate)
    step = staticmethod(step)
    pad_state = staticmethod(pad_state)
    interior = staticmethod(interior)
    step_padded = staticmethod(step_padded)
    step_jit = staticmethod(step_jit)
    rollout = staticmethod(rollout)


# ---------------------------------------------------------------------------
# Reverse mode of a block of fused steps by the symmetry of the pair stencil
# ---------------------------------------------------------------------------


def _pair_rate(xp, weights):
    """Σ_q W_pq (x_q − x_p) on the grid (no source, no mask: W vanishes off the active phase)."""
    ndim = xp.ndim
    x = interior(xp)
    out = jnp.zeros_like(x)
    for m, off in enumerate(_pair_offsets(ndim)):
        back = tuple(-c for c in off)
        out = out + _at(weights[m], (0,) * ndim) * (_at(xp, off) - x) + _at(weights[m], back) * (_at(xp, back) - x)
    return out


def _block_forward(xp, weights, source, mask, dt_s, n_steps):
    def body(state, _):
        new = _pad(interior(state) + dt_s * (_pair_rate(state, weights) + source))
        return new, (state, jnp.sum(mask * interior(new)))

    return jax.lax.scan(body, xp, None, length=n_steps)


def symmetric_block(xp, weights, source, mask, dt_s, n_steps):
    """``n_steps`` fused forward-Euler steps x ← x + Δt (A x + s), reverse mode by symmetry.

    A x = Σ_q W_pq (x_q − x_p) (module docstring) with W_pq = W_qp, so A is symmetric and
    the adjoint recurrence of the explicit scheme is ḡ ← ḡ + Δt A ḡ: the same stencil
    applied to the cotangent. With

        ḡᵀ A x = −Σ_pairs W_pq (ḡ_q − ḡ_p)(x_q − x_p),

    the cotangent of the weight of the forward pair (p, p + o) is
    −Δt Σ_steps (ḡ_{p+o} − ḡ_p)(x_{p+o} − x_p), and that of the source is Δt Σ_steps ḡ
    (discrete adjoint of an explicit time-stepping scheme, e.g. Plessix,
    Geophys. J. Int. 167, 495 (2006)). The reverse pass recomputes the block's states
    from its first one (memory: n_steps states) and sums the d² pair products in
    unpadded per-voxel accumulators, padded and stacked once per block, instead of
    letting JAX transpose every shifted slice.

    Args:
        xp: (n0+2, n1+2[, n2+2]) padded state (zero outer layer).
        weights: (d², n0+2, n1+2[, n2+2]) pair weights W in 1/s (:attr:`FaceCoefficients.weights`).
        source: (n0, n1[, n2]) source in 1/s, zero off the active phase.
        mask: (n0, n1[, n2]) float, 1 on active voxels (for the per-step sums).
        dt_s: time step, s (scalar; may be traced; its cotangent is Σ_steps ḡ·(A x + s)).
        n_steps: number of steps (static int).

    Returns:
        ``(xp_final, sums)``: the padded state after the block and the (n_steps,) sums of
        x over the active voxels after each step.
    """
    return _symmetric_block(xp, weights, source, mask, jnp.asarray(dt_s, xp.dtype), n_steps)


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _symmetric_block(xp, weights, source, mask, dt_s, n_steps):
    xp_final, (_, sums) = _block_forward(xp, weights, source, mask, dt_s, n_steps)
    return xp_final, sums


def _symmetric_block_fwd(xp, weights, source, mask, dt_s, n_steps):
    return _symmetric_block(xp, weights, source, mask, dt_s, n_steps), (xp, weights, source, mask, dt_s)


def _symmetric_block_bwd(n_steps, residuals, cotangents):
    xp0, weights, source, mask, dt_s = residuals
    gp_final, sums_bar = cotangents
    ndim = xp0.ndim
    offsets = _pair_offsets(ndim)
    _, (states, _) = _block_forward(xp0, weights, source, mask, dt_s, n_steps)

    def body(carry, inputs):
        g, acc, src, dt_bar = carry  # g: cotangent of the step's output (unpadded grid values)
        xp, sum_bar = inputs
        g = g + sum_bar * mask
        gp = _pad(g)
        x = interior(xp)
        acc = tuple(a + (_at(gp, off) - g) * (_at(xp, off) - x) for a, off in zip(acc, offsets))
        # unused unless Δt itself is differentiated (then XLA keeps this extra stencil)
        dt_bar = dt_bar + jnp.sum(g * (_pair_rate(xp, weights) + source))
        return (g + dt_s * _pair_rate(gp, weights), acc, src + g, dt_bar), None

    zeros = jnp.zeros_like(source)
    init = (interior(gp_final), tuple(zeros for _ in offsets), zeros, jnp.zeros((), source.dtype))
    (g, acc, src, dt_bar), _ = jax.lax.scan(body, init, (states, sums_bar), reverse=True)
    weights_bar = jnp.stack([_pad(-dt_s * a) for a in acc])
    return _pad(g), weights_bar, dt_s * src, jnp.zeros_like(mask), dt_bar


_symmetric_block.defvjp(_symmetric_block_fwd, _symmetric_block_bwd)

"""Explicit anisotropic diffusion step as one Pallas kernel (GPU path; interpreted on CPU).

Same operator and same pair-weight layout as :mod:`ssbx.kernels.diffusion_fused` (which
derives it; see its docstring)::

    x_p ← x_p + Δt · act_p · ( Σ_q W_pq (x_q − x_p) + s_p ),        W_pq = W_qp,

over the 19-point (3D) neighbourhood, W in 1/s, Δt in s, s in 1/s, x = c/c_max. Every
weight vanishes unless both ends of its pair are active, so Σx changes only by Δt Σ s.

Why a Pallas kernel
-------------------
On an NVIDIA H200 (benchmarks/results/roofline_gpu_nvidia_h200.json, 2026-12-04) the XLA
formulations of this step reach 14 % (reference) and 31 % (fused layout) of the measured
copy bandwidth at 256³: XLA splits the stencil into several fusions and re-reads the
state for each. Here one program reads, for a (bx, by, bz) block of voxels, the state at
the 19 offsets, the 9 forward weights at the block and at the 9 backward offsets, the
active mask and the source, and writes the new state once: 49 B/voxel of compulsory
traffic (the neighbours' re-reads hit the cache).

Layout
------
Every array is zero-padded to ``P = N + 2`` per axis, with ``N`` the grid edge rounded up
to a multiple of the block edge: the kernel reads neighbours as static offsets of the
block, never out of bounds, and needs no masks (Triton wants power-of-two blocks, the
grid need not be one). The state stays padded through a rollout; the kernel writes the
interior of a second zero-halo buffer (``input_output_aliases``), and the two buffers swap
every step, so no pad or copy pass runs between steps.

Differentiation: ``pallas_call`` has no transpose rule, so :func:`step` carries a
``custom_vjp``. The operator is symmetric, so the state cotangent is one more operator
application, x̄ = ḡ + Δt A(act ⊙ ḡ); the weight cotangent of pair (p, p + o) is
Δt (act_p ḡ_p − act_(p+o) ḡ_(p+o)) (x_(p+o) − x_p); the source's is Δt act ⊙ ḡ. The
backward pass runs in XLA (it is not the hot path of a forward run).

3D grids only (2D grids use :mod:`ssbx.kernels.diffusion_fused`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from .diffusion_fused import FaceCoefficients, _at, _pair_offsets, _rate_padded

#: block edge (voxels) per axis; the last axis is the contiguous one on the device
DEFAULT_BLOCK = (4, 8, 32)


def on_gpu():
    """Whether JAX's default backend is a GPU (where the kernel is compiled, not interpreted)."""
    return jax.default_backend() == "gpu"


def _check_block(block):
    block = tuple(int(b) for b in block)
    if len(block) != 3 or any(b < 1 or b & (b - 1) for b in block):
        raise ValueError(f"block = {block}; valid: three powers of two")
    return block


def padded_shape(shape, block):
    """(P0, P1, P2): each edge rounded up to a multiple of the block edge, plus 2."""
    return tuple(-(-n // b) * b + 2 for n, b in zip(shape, block))


def _pad_to(a, shape, lead=0):
    """Zero-pad ``a`` (interior at offset 1 per spatial axis) to ``shape``."""
    spatial = a.shape[lead:]
    pads = [(0, 0)] * lead + [(1, p - 1 - n) for n, p in zip(spatial, shape)]
    return jnp.pad(a, pads)


def pad_state(x, block=DEFAULT_BLOCK):
    """x (n0, n1, n2) → the padded state (P0, P1, P2) the kernel advances (zero halo)."""
    return _pad_to(x, padded_shape(x.shape, _check_block(block)))


def interior(xp, shape):
    """The grid values (n0, n1, n2) of a padded state."""
    return xp[tuple(slice(1, 1 + n) for n in shape)]


def padded_inputs(coeffs, source, block=DEFAULT_BLOCK):
    """Weights (9, P…), active mask (uint8, P…) and source (P…) in the kernel's layout.

    Args:
        coeffs: :class:`ssbx.kernels.diffusion_fused.FaceCoefficients` (3D).
        source: (n0, n1, n2) source in 1/s, or None.
        block: block edges (powers of two).
    """
    block = _check_block(block)
    if coeffs.ndim != 3:
        raise ValueError(f"grid ndim = {coeffs.ndim}; the Pallas step is 3D only (use diffusion_fused)")
    shape = coeffs.active.shape
    pshape = padded_shape(shape, block)
    # the fused layout is already padded by one voxel (its outer layer is zero): pad the
    # high ends on to P, so that every entry the kernel reads keeps its cotangent
    w = coeffs.weights
    wp = jnp.pad(w, [(0, 0)] + [(0, p - (n + 2)) for n, p in zip(shape, pshape)])
    ap = _pad_to(coeffs.active.astype(jnp.uint8), pshape)
    src = jnp.zeros(shape, w.dtype) if source is None else jnp.asarray(source, w.dtype)
    sp = _pad_to(src, pshape)
    return wp, ap, sp


def _kernel(xp_ref, w_ref, a_ref, s_ref, dt_ref, buf_ref, o_ref, *, block, offsets):
    del buf_ref  # aliased to o_ref: its zero halo is the output's
    bx, by, bz = block
    i, j, k = pl.program_id(0), pl.program_id(1), pl.program_id(2)

    def at(off):
        return (pl.ds(i * bx + 1 + off[0], bx), pl.ds(j * by + 1 + off[1], by),
                pl.ds(k * bz + 1 + off[2], bz))

    here = at((0, 0, 0))
    x = xp_ref[here]
    acc = jnp.zeros_like(x)
    for m, off in enumerate(offsets):
        back = tuple(-c for c in off)
        acc = acc + w_ref[(m,) + here] * (xp_ref[at(off)] - x)
        acc = acc + w_ref[(m,) + at(back)] * (xp_ref[at(back)] - x)
    acc = jnp.where(a_ref[here] != 0, acc + s_ref[here], jnp.zeros_like(acc))
    o_ref[here] = x + dt_ref[0] * acc


def _call(xp, wp, ap, sp, dt, buf, block, interpret):
    grid = tuple((p - 2) // b for p, b in zip(xp.shape, block))
    kernel = partial(_kernel, block=block, offsets=tuple(_pair_offsets(3)))
    dt_arr = jnp.reshape(jnp.asarray(dt, xp.dtype), (1,))
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(xp.shape, xp.dtype),
        grid=grid,
        input_output_aliases={5: 0},
        interpret=interpret,
        # the Triton backend: JAX's default GPU backend (Mosaic GPU) stages whole refs in
        # shared memory, which a grid-sized ref does not fit
        compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=1),
    )(xp, wp, ap, sp, dt_arr, buf)


def step_padded(xp, wp, ap, sp, dt, buf=None, *, block=DEFAULT_BLOCK, interpret=None):
    """One step on the padded state; writes into ``buf`` (a zero-halo array like ``xp``).

    Forward only (no derivative rule; :func:`step` is the differentiable form).

    Args:
        xp: (P0, P1, P2) padded state (:func:`pad_state`).
        wp, ap, sp: from :func:`padded_inputs` (same block).
        dt: time step, s.
        buf: output buffer with a zero halo (its interior is overwritten); a fresh zero
            array if None.
        block: block edges, the same as the padding's.
        interpret: run the kernel in the Pallas interpreter (default: when not on a GPU).
    """
    block = _check_block(block)
    interpret = (not on_gpu()) if interpret is None else bool(interpret)
    buf = jnp.zeros_like(xp) if buf is None else buf
    return _call(xp, wp, ap, sp, dt, buf, block, interpret)


@partial(jax.jit, static_argnames=("n_steps", "block", "interpret"))
def rollout(x, coeffs, dt, n_steps, source=None, block=DEFAULT_BLOCK, interpret=None):
    """``n_steps`` Pallas steps with a constant source in one compiled ``lax.scan``.

    The state and a second zero-halo buffer swap roles every step (no pad or copy pass
    between steps). Forward only; same values as
    :func:`ssbx.kernels.diffusion_fused.rollout` to round-off.
    """
    block = _check_block(block)
    interpret = (not on_gpu()) if interpret is None else bool(interpret)
    wp, ap, sp = padded_inputs(coeffs, source, block)
    xp = pad_state(x, block)

    def body(carry, _):
        cur, other = carry
        new = _call(cur, wp, ap, sp, dt, other, block, interpret)
        return (new, cur), None

    (xp, _), _ = jax.lax.scan(body, (xp, jnp.zeros_like(xp)), None, length=n_steps)
    return interior(xp, x.shape)


def _apply_operator(u, wp):
    """Σ_q W_pq (u_q − u_p) on the whole padded grid (XLA), for the backward pass: the
    fused kernel's rate with one more zero layer around u and the weights."""
    coeffs = FaceCoefficients(weights=jnp.pad(wp, [(0, 0)] + [(1, 1)] * 3), active=None)
    return _rate_padded(jnp.pad(u, 1), coeffs, None)


@partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _core(xp, wp, ap, sp, dt, block, interpret):
    return _call(xp, wp, ap, sp, dt, jnp.zeros_like(xp), block, interpret)


def _core_fwd(xp, wp, ap, sp, dt, block, interpret):
    return _core(xp, wp, ap, sp, dt, block, interpret), (xp, wp, ap, sp, dt)


def _core_bwd(block, interpret, res, g):
    xp, wp, ap, sp, dt = res
    inner = jnp.zeros(xp.shape, bool).at[tuple(slice(1, p - 1) for p in xp.shape)].set(True)
    g = jnp.where(inner, g, 0.0)  # the halo of the output is the buffer's, not x's
    act = ap != 0
    ga = jnp.where(act, g, 0.0)
    x_bar = g + dt * _apply_operator(ga, wp)
    gpad, xpad = jnp.pad(ga, 1), jnp.pad(xp, 1)
    w_bar = jnp.stack([dt * (ga - _at(gpad, off)) * (_at(xpad, off) - xp) for off in _pair_offsets(3)])
    s_bar = dt * ga
    rate = jnp.where(act, _apply_operator(xp, wp) + sp, 0.0)
    dt_bar = jnp.sum(g * rate).astype(jnp.result_type(dt))
    return x_bar, w_bar, None, s_bar, dt_bar


_core.defvjp(_core_fwd, _core_bwd)


def step(x, coeffs, dt, source=None, *, block=DEFAULT_BLOCK, interpret=None):
    """One differentiable step x + Δt ∂x/∂t on the unpadded state (pads inside).

    Same values as :func:`ssbx.kernels.diffusion_fused.step` (to round-off); reverse mode
    through the ``custom_vjp`` of the module docstring (x, the weights, the source, Δt).

    Args:
        x: (n0, n1, n2) normalised Li content.
        coeffs: :class:`ssbx.kernels.diffusion_fused.FaceCoefficients` (3D).
        dt: time step, s.
        source: optional (n0, n1, n2) source in 1/s (kept only on active voxels).
    """
    block = _check_block(block)
    interpret = (not on_gpu()) if interpret is None else bool(interpret)
    wp, ap, sp = padded_inputs(coeffs, source, block)
    xp = pad_state(x, block)
    dt = jnp.asarray(dt, x.dtype)
    return interior(_core(xp, wp, ap, sp, dt, block, interpret), x.shape)

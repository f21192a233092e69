"""The fast rollout gradient (adjoint="symmetric": fused pair stencil, block adjoint by
symmetry, kernels.diffusion_fused.symmetric_block) against JAX's own transpose of the
reference operator (adjoint="autodiff") and against float64 central differences.

Cheap: grids of 10³ / 20², 16 steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.geometry.microstructure import polycrystalline_particle
from ssbx.engine.model.particle import ParticleGeometry, TransportParams, rollout
from ssbx.kernels import diffusion as kd
from ssbx.kernels import diffusion_fused as kf

H = 1e-7  # voxel size, m


def _setup(ndim, dtype, principal=(5e-15, 2e-15, 4e-16), flux=-2e-3):
    # 2D: a 20² section; 3D: a 10³ box; both polycrystals with reactive and inert surface
    size = 2.0e-6 if ndim == 2 else 1.0e-6
    micro = polycrystalline_particle(size, H, n_grains=8, reactive_fraction=0.667, seed=7, ndim=ndim)
    geometry = ParticleGeometry.from_microstructure(micro, dtype)
    params = TransportParams(
        diffusivity_m2_s=jnp.asarray(principal, dtype),
        orientations=jnp.asarray(micro.orientations, dtype),
        flux_mol_m2_s=jnp.asarray(flux, dtype),
        c_max_mol_m3=jnp.asarray(5e4, dtype),
    )
    rng = np.random.default_rng(3)
    active = jnp.asarray(micro.active)
    x0 = jnp.where(active, jnp.asarray(0.6 + 0.3 * rng.random(active.shape), dtype), 0.0)
    weights = jnp.asarray(rng.random(active.shape), dtype)
    per_step = jnp.asarray(rng.standard_normal(16), dtype)
    dt = kd.stable_time_step(5e-15, H, ndim)
    return geometry, params, x0, weights, per_step, dt


def _loss(geometry, x0, weights, per_step, dt, adjoint):
    """Depends on the final state and on every step's mean_x (both cotangent paths)."""

    def loss(params):
        x, steps = rollout(geometry, params, x0, 16, dt, checkpoint_every=8, adjoint=adjoint)
        return jnp.sum(weights * x**2) + jnp.sum(per_step * steps["mean_x"])

    return loss


def _grads(ndim, dtype):
    geometry, params, x0, weights, per_step, dt = _setup(ndim, dtype)
    out = {}
    for adjoint in ("symmetric", "autodiff"):
        loss = _loss(geometry, x0, weights, per_step, dt, adjoint)
        value, grad = jax.jit(jax.value_and_grad(loss))(params)
        out[adjoint] = (value, grad)
    return out


@pytest.mark.parametrize("ndim", [2, 3])
def test_fused_block_adjoint_is_the_exact_transpose(x64, ndim):
    """float64: the block adjoint (x̄ = ḡ + Δt A ḡ, pair products for the weights) equals
    JAX's reverse mode of the reference operator to 1e-10 (exact up to round-off)."""
    out = _grads(ndim, jnp.float64)
    (v_s, g_s), (v_a, g_a) = out["symmetric"], out["autodiff"]
    np.testing.assert_allclose(float(v_s), float(v_a), rtol=1e-12)
    for name in ("diffusivity_m2_s", "orientations", "flux_mol_m2_s"):
        a, b = np.asarray(getattr(g_s, name)), np.asarray(getattr(g_a, name))
        assert np.max(np.abs(b)) > 0, name
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.max(np.abs(b)), err_msg=name)


def test_fused_block_gradient_float32_matches_reference_to_round_off():
    """float32 (what fits run in): same gradient as the reference path to round-off."""
    out = _grads(3, jnp.float32)
    (_, g_s), (_, g_a) = out["symmetric"], out["autodiff"]
    for name in ("diffusivity_m2_s", "orientations", "flux_mol_m2_s"):
        a, b = np.asarray(getattr(g_s, name)), np.asarray(getattr(g_a, name))
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * np.max(np.abs(b)), err_msg=name)


def test_fused_block_gradient_matches_central_differences(x64):
    """dL/dD3 and dL/dflux of the symmetric (fused) path against float64 central differences."""
    geometry, params, x0, weights, per_step, dt = _setup(3, jnp.float64)
    loss = jax.jit(_loss(geometry, x0, weights, per_step, dt, "symmetric"))
    grad = jax.grad(loss)(params)
    d = params.diffusivity_m2_s
    for label, make, analytic in (
        ("D3", lambda e: TransportParams(d.at[2].add(e), params.orientations, params.flux_mol_m2_s,
                                         params.c_max_mol_m3), grad.diffusivity_m2_s[2]),
        ("flux", lambda e: TransportParams(d, params.orientations, params.flux_mol_m2_s + e,
                                           params.c_max_mol_m3), grad.flux_mol_m2_s),
    ):
        eps = 1e-4 * (float(d[2]) if label == "D3" else abs(float(params.flux_mol_m2_s)))
        fd = (float(loss(make(eps))) - float(loss(make(-eps)))) / (2 * eps)
        assert abs(fd) > 0
        assert abs(float(analytic) - fd) < 1e-6 * abs(fd), (label, float(analytic), fd)


def test_block_adjoint_conserves_and_matches_the_fused_step(x64):
    """symmetric_block's forward equals repeated fused steps, and a uniform cotangent is a
    fixed point of the adjoint recurrence (A 1 = 0: the adjoint of mass conservation)."""
    geometry, params, x0, _, _, dt = _setup(3, jnp.float64)
    from ssbx.engine.model.particle import component_table

    coeffs = kf.prepare(geometry.grain_id, component_table(params, 3), H)
    active = geometry.grain_id >= 0
    mask = active.astype(jnp.float64)
    source = jnp.zeros_like(x0)
    xp = kf.pad_state(x0)
    block_final, _ = kf.symmetric_block(xp, coeffs.weights, source, mask, dt, 6)
    ref = xp
    for _ in range(6):
        ref = kf.step_padded(ref, coeffs, dt)
    np.testing.assert_allclose(np.asarray(block_final), np.asarray(ref), rtol=0, atol=1e-14)
    _, pullback = jax.vjp(lambda a: kf.symmetric_block(a, coeffs.weights, source, mask, dt, 6)[0], xp)
    (x_bar,) = pullback(kf.pad_state(mask))
    np.testing.assert_allclose(np.asarray(kf.interior(x_bar)), np.asarray(mask), rtol=0, atol=1e-13)
    # Δt enters as a (possibly traced) array in fits: its cotangent Σ ḡ·(A x + s) against
    # central differences of a block with a source
    source = jnp.where(active, 1e-3, 0.0)
    probe = jnp.asarray(np.random.default_rng(4).standard_normal(xp.shape))

    def of_dt(step):
        return jnp.sum(probe * kf.symmetric_block(xp, coeffs.weights, source, mask, step, 6)[0])

    eps = 1e-4 * dt
    fd = (float(of_dt(dt + eps)) - float(of_dt(dt - eps))) / (2 * eps)
    assert abs(float(jax.grad(of_dt)(jnp.asarray(dt))) - fd) < 1e-7 * abs(fd)

"""The fused diffusion step (kernels/diffusion_fused.py) against the reference kernel
(kernels/diffusion.py): same values, same gradients, Li conservation, textbook stencil."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.kernels import diffusion as kd
from ssbx.kernels import diffusion_fused as kf
from ssbx.kernels.rotations import quaternion_to_matrix

H = 1e-7  # voxel size, m
PRINCIPAL = (5e-15, 2e-15, 1e-16)  # m²/s, three distinct values: all tensor components live


@partial(jax.jit, static_argnums=1)
def _table(quaternions, ndim):
    """Packed per-grain tensors R diag(PRINCIPAL) Rᵀ (one compile instead of many eager ops)."""
    rot = quaternion_to_matrix(quaternions)
    return kd.tensor_components(kd.grain_diffusion_tensors(rot, jnp.asarray(PRINCIPAL, quaternions.dtype), ndim))


def _random_polycrystal(shape, n_grains, pores, seed, dtype):
    """Random grain per voxel (every face a grain boundary), random orientations,
    optionally ~25 % pore voxels (grain id −1)."""
    rng = np.random.default_rng(seed)
    gid = rng.integers(0, n_grains, size=shape)
    if pores:
        gid = np.where(rng.random(shape) < 0.25, -1, gid)
    q = rng.standard_normal((n_grains, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    table = _table(jnp.asarray(q, dtype), len(shape))
    x = jnp.asarray(rng.random(shape), dtype)
    source = jnp.asarray(np.where(gid >= 0, rng.standard_normal(shape), 0.0), dtype) * 0.1
    return jnp.asarray(gid, jnp.int32), table, x, source


CASES = [((24, 20), False), ((24, 20), True), ((12, 11, 10), False), ((12, 11, 10), True)]


@pytest.mark.parametrize("shape,pores", CASES)
def test_fused_steps_match_reference_to_float32_roundoff(shape, pores):
    """Rate and 10 steps, without and with a source, through every entry point."""
    gid, table, x, source = _random_polycrystal(shape, 7, pores, seed=len(shape) + 2 * pores, dtype=jnp.float32)
    dt = kd.stable_time_step(max(PRINCIPAL), H, len(shape))
    coeffs = kf.prepare(gid, table, H)
    n_steps = 10

    ref_step = jax.jit(lambda x, src: kd.explicit_step(x, dt, gid, table, H, src))
    new_step = jax.jit(lambda x, src: kf.step(x, coeffs, dt, src))

    for src in (None, source):
        rate_ref = jax.jit(lambda v, s: kd.diffusion_rate(v, gid, table, H, s))(x, src)
        rate_new = jax.jit(kf.rate)(x, coeffs, src)
        scale = float(jnp.max(jnp.abs(rate_ref)))
        assert scale > 0.1  # D/h² ~ 0.5 /s on a random field: the comparison is not vacuous
        np.testing.assert_allclose(np.asarray(rate_new), np.asarray(rate_ref), rtol=0, atol=2e-6 * scale)

        x_ref = x_unpadded = x
        for _ in range(n_steps):
            x_ref = ref_step(x_ref, src)
            x_unpadded = new_step(x_unpadded, src)
        x_rollout = kf.rollout(x, coeffs, dt, n_steps, src)
        xp = kf.pad_state(x)
        for _ in range(n_steps):
            xp = kf.step_jit(xp, coeffs, dt, src)
        assert float(jnp.max(jnp.abs(x_ref - x))) > 0.05  # the states moved
        for got in (x_unpadded, x_rollout, kf.interior(xp)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(x_ref), rtol=0, atol=4e-6)
        # the padding layer stays zero
        halo = np.array(xp)
        halo[(slice(1, -1),) * len(shape)] = 0.0
        assert not halo.any()


@pytest.mark.parametrize("shape", [(24, 20), (12, 11, 10)])
def test_fused_rollout_conserves_li(x64, shape):
    """Σx changes by exactly Δt Σ s per step; pore voxels never change."""
    gid, table, x, source = _random_polycrystal(shape, 5, True, seed=11, dtype=jnp.float64)
    dt = kd.stable_time_step(max(PRINCIPAL), H, len(shape))
    coeffs = kf.prepare(gid, table, H)
    n_steps = 20
    for src, expected in ((None, 0.0), (source, n_steps * dt * float(jnp.sum(source)))):
        out = kf.rollout(x, coeffs, dt, n_steps, src)
        assert float(jnp.sum(out) - jnp.sum(x)) == pytest.approx(expected, abs=1e-12 * float(jnp.sum(x)))
        pores = np.asarray(gid) < 0
        assert np.array_equal(np.asarray(out)[pores], np.asarray(x)[pores])
        assert float(jnp.max(jnp.abs(out - x))) > 1e-3


@pytest.mark.parametrize("ndim", [2, 3])
def test_homogeneous_weights_are_the_textbook_stencil(x64, ndim):
    """Uniform rotated tensor, all voxels active: interior weights are D_kk/h² on the
    axis pairs and ±D_kl/(2h²) on the diagonal pairs (the 9-/19-point cross-derivative
    stencil); pairs that leave the grid have weight 0."""
    q = np.asarray([[0.9, 0.3, -0.2, 0.25]])
    table = _table(jnp.asarray(q / np.linalg.norm(q)), ndim)
    # the tensor unpacked from the table's layout (diagonal, then upper triangle row by row)
    d = np.diag(np.asarray(table[0, :ndim]))
    off = iter(np.asarray(table[0, ndim:]))
    for k in range(ndim):
        for l in range(k + 1, ndim):
            d[k, l] = d[l, k] = next(off)
    assert np.all(np.abs(d[np.triu_indices(ndim, 1)]) > 1e-17)  # the rotation mixes all components
    d = d / H**2
    n = 6
    w = np.asarray(kf.prepare(jnp.zeros((n,) * ndim, jnp.int32), table, H).weights)
    interior = (slice(2, n - 1),) * ndim  # padded index 2..n-2 = voxels 1..n-3: all pairs inside
    expected = [d[k, k] for k in range(ndim)]
    for k in range(ndim):
        for l in range(k + 1, ndim):
            expected += [0.5 * d[k, l], -0.5 * d[k, l]]
    for m, value in enumerate(expected):
        np.testing.assert_allclose(w[m][interior], value, rtol=1e-12)
    # the last voxel along axis 0 has no +e_0 partner
    last = (n,) + (slice(1, n + 1),) * (ndim - 1)
    assert np.all(w[0][last] == 0.0)
    assert np.all(w[:, 0] == 0.0)  # padding layer


def test_gradient_through_fused_steps_equals_reference(x64):
    """jax.grad of a loss after 3 steps w.r.t. the tensor table, x0 and the source (2D, to
    keep compile time small: the 2D and 3D paths are the same code, and 3D forward values
    are compared above)."""
    gid, table, x, source = _random_polycrystal((10, 9), 4, True, seed=5, dtype=jnp.float64)
    dt = kd.stable_time_step(max(PRINCIPAL), H, 2)
    weight = jnp.asarray(np.random.default_rng(2).standard_normal(x.shape))

    def loss_ref(table, x, source):
        body = lambda v, _: (kd.explicit_step(v, dt, gid, table, H, source), None)  # noqa: E731
        return jnp.sum(weight * jax.lax.scan(body, x, None, length=3)[0] ** 2)

    def loss_fused(table, x, source):
        return jnp.sum(weight * kf.rollout(x, kf.prepare(gid, table, H), dt, 3, source) ** 2)

    g_ref = jax.jit(jax.grad(loss_ref, argnums=(0, 1, 2)))(table, x, source)
    g_new = jax.jit(jax.grad(loss_fused, argnums=(0, 1, 2)))(table, x, source)
    for a, b in zip(g_new, g_ref):
        assert float(jnp.max(jnp.abs(b))) > 0
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12 * float(jnp.max(jnp.abs(b))))


def test_prepare_rejects_a_table_of_the_wrong_width():
    with pytest.raises(ValueError, match="component_table"):
        kf.prepare(jnp.zeros((4, 4, 4), jnp.int32), jnp.ones((2, 3)), H)

"""The Pallas diffusion step (kernels/diffusion_pallas.py), run by the Pallas interpreter on CPU.

It must give the reference kernel's step (kernels/diffusion.explicit_step, an independent
formulation of the same operator), conserve Li up to the source, and its custom VJP must
equal JAX's own reverse mode of the XLA fused step and central finite differences.
The grid is not a multiple of the block, so the padding to whole blocks is exercised.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.kernels import diffusion as kd
from ssbx.kernels import diffusion_fused as kf
from ssbx.kernels import diffusion_pallas as kp
from ssbx.kernels.rotations import quaternion_to_matrix

H = 1e-7
BLOCK = (2, 4, 4)
SHAPE = (5, 6, 5)


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    gid = rng.integers(0, 3, size=SHAPE)
    gid[rng.random(SHAPE) < 0.2] = -1
    q = rng.standard_normal((3, 4))
    rot = quaternion_to_matrix(jnp.asarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype))
    gid = jnp.asarray(gid, jnp.int32)
    x = jnp.asarray(rng.random(SHAPE), dtype) * (gid >= 0)
    src = jnp.asarray(rng.standard_normal(SHAPE) * 1e-3, dtype)
    dt = kd.stable_time_step(5e-15, H, 3)

    def table(principal):
        return kd.tensor_components(kd.grain_diffusion_tensors(rot, principal, 3))

    return gid, table, x, src, dt


def test_step_equals_reference_kernel_and_conserves_li():
    with jax.enable_x64(True):
        gid, table, x, src, dt = _problem(jnp.float64)
        tab = table(jnp.asarray([5e-15, 3e-15, 1e-15]))
        coeffs = kf.prepare(gid, tab, H)
        new = kp.step(x, coeffs, dt, src, block=BLOCK, interpret=True)
        ref = kd.explicit_step(x, dt, gid, tab, H, src)
        np.testing.assert_allclose(np.asarray(new), np.asarray(ref), rtol=0, atol=1e-14)
        # five steps through the padded ping-pong rollout = five reference steps
        rolled = kp.rollout(x, coeffs, dt, 5, src, block=BLOCK, interpret=True)
        r = x
        for _ in range(5):
            r = kd.explicit_step(r, dt, gid, tab, H, src)
        np.testing.assert_allclose(np.asarray(rolled), np.asarray(r), rtol=0, atol=1e-14)
        # Li: Σx changes only by n Δt Σ s over the active voxels
        active = np.asarray(gid) >= 0
        gain = 5 * dt * float(np.sum(np.asarray(src)[active]))
        assert abs(float(jnp.sum(rolled) - jnp.sum(x)) - gain) <= 1e-12 * float(jnp.sum(x))
        assert float(jnp.max(jnp.abs(jnp.where(active, 0.0, rolled)))) == 0.0


def test_custom_vjp_equals_autodiff_and_finite_differences():
    with jax.enable_x64(True):
        gid, table, x, src, dt = _problem(jnp.float64, seed=1)
        coeffs = kf.prepare(gid, table(jnp.asarray([5e-15, 3e-15, 1e-15])), H)
        act = coeffs.active

        def pallas(x, w, s, dt):
            return kp.step(x, kf.FaceCoefficients(weights=w, active=act), dt, s, block=BLOCK,
                           interpret=True)

        def fused(x, w, s, dt):
            return kf.step(x, kf.FaceCoefficients(weights=w, active=act), dt, s)

        dt = jnp.float64(dt)
        g = jnp.asarray(np.random.default_rng(2).standard_normal(SHAPE))
        args = (x, coeffs.weights, src, dt)
        bar_p = jax.jit(lambda *a: jax.vjp(pallas, *a)[1](g))(*args)
        bar_f = jax.vjp(fused, *args)[1](g)
        for name, a, b in zip(("x", "weights", "source", "dt"), bar_p, bar_f):
            scale = float(jnp.max(jnp.abs(b)))
            assert scale > 0, name
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-13 * scale,
                                       err_msg=name)

        # a scalar of three steps vs central differences in the principal diffusivities
        def loss(principal):
            c = kf.prepare(gid, table(principal), H)
            y = x
            for _ in range(3):
                y = kp.step(y, c, dt, src, block=BLOCK, interpret=True)
            return jnp.sum((y - 0.5) ** 2)

        d0 = jnp.asarray([5e-15, 3e-15, 1e-15])
        grad = np.asarray(jax.jit(jax.grad(loss))(d0))
        loss = jax.jit(loss)
        for k in range(3):
            e = np.zeros(3)
            e[k] = 1e-3 * float(d0[k])
            fd = (float(loss(d0 + e)) - float(loss(d0 - e))) / (2 * e[k])
            assert grad[k] == pytest.approx(fd, rel=1e-6), k


def test_lowers_to_one_triton_kernel_for_cuda():
    """Without a GPU, the CUDA lowering of a rollout and of its gradient still runs here:
    each step must become one Triton kernel (JAX's default GPU backend, Mosaic GPU, would
    try to stage the grid-sized refs in shared memory and fail)."""
    from jax import export

    gid, table, x, src, dt = _problem(jnp.float32)
    coeffs = kf.prepare(gid, table(jnp.asarray([5e-15, 3e-15, 1e-15], jnp.float32)), H)
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]

    def lowered(fn):
        return export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=checks)(
            x, coeffs, src).mlir_module()

    forward = lowered(lambda x, c, s: kp.rollout(x, c, dt, 3, s, interpret=False))
    assert forward.count("xla.gpu.triton") == 1  # one kernel, inside the scan
    backward = lowered(lambda x, c, s: jax.grad(
        lambda y: jnp.sum(kp.step(y, c, dt, s, interpret=False) ** 2))(x))
    assert backward.count("xla.gpu.triton") == 1  # the forward kernel; the VJP is XLA

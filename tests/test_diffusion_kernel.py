"""Physics of the anisotropic diffusion kernel (kernels/diffusion.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.geometry.microstructure import polycrystalline_particle
from ssbx.engine.model.particle import ParticleGeometry, TransportParams, li_rate, rollout
from ssbx.kernels import diffusion as kd
from ssbx.kernels.rotations import axis_angle_quaternion, quaternion_multiply, quaternion_to_matrix

H = 1e-7  # voxel size, m
ORIENTATIONS = [
    (1.0, 0.0, 0.0, 0.0),
    (0.9, 0.3, -0.2, 0.25),
    (0.2, -0.7, 0.5, 0.4),
    (0.5, 0.5, 0.5, 0.5),
]


def _homogeneous_table(q, principal, ndim):
    rot = quaternion_to_matrix(jnp.asarray([q], dtype=jnp.float64))
    tensors = kd.grain_diffusion_tensors(rot, jnp.asarray(principal, jnp.float64), ndim)
    return kd.tensor_components(tensors), np.asarray(tensors[0])


def _second_moment(x, h):
    x = np.asarray(x)
    axes = [(np.arange(n) - n // 2) * h for n in x.shape]
    coords = np.meshgrid(*axes, indexing="ij")
    mass = x.sum()
    mean = [np.sum(c * x) / mass for c in coords]
    return np.array([[np.sum((ci - mi) * (cj - mj) * x) / mass for cj, mj in zip(coords, mean)]
                     for ci, mi in zip(coords, mean)])


@pytest.mark.parametrize("q", ORIENTATIONS)
@pytest.mark.parametrize("ndim", [2, 3])
def test_point_source_second_moment_grows_as_2Dt(x64, q, ndim):
    """Homogeneous medium, rotated anisotropic D: d/dt of the second-moment tensor is 2D."""
    n = 31 if ndim == 3 else 41
    principal = (5e-15, 2e-15, 1e-16)
    table, d_exact = _homogeneous_table(q, principal, ndim)
    grain_id = jnp.zeros((n,) * ndim, jnp.int32)
    x = jnp.zeros((n,) * ndim, jnp.float64).at[(n // 2,) * ndim].set(1.0)
    dt = kd.stable_time_step(max(principal), H, ndim)
    n_steps = 25
    step = jax.jit(lambda x: kd.explicit_step(x, dt, grain_id, table, H))
    for _ in range(n_steps):
        x = step(x)
    assert abs(float(jnp.sum(x)) - 1.0) < 1e-12
    growth = _second_moment(x, H) / (2 * n_steps * dt)
    scale = np.abs(d_exact).max()
    np.testing.assert_allclose(growth, d_exact, atol=1e-3 * scale, rtol=0)


@pytest.fixture(scope="module")
def porous_polycrystal():
    """A small 3D particle of 12 grains, surrounded by pore."""
    micro = polycrystalline_particle(1.2e-6, H, n_grains=12, surrounding_label=0, seed=3)
    return micro


def _random_table(micro, principal, dtype):
    rot = quaternion_to_matrix(jnp.asarray(micro.orientations, dtype))
    return kd.tensor_components(kd.grain_diffusion_tensors(rot, jnp.asarray(principal, dtype), micro.ndim))


def test_operator_is_symmetric_negative_semidefinite_and_conservative(x64, porous_polycrystal):
    """<y, A x> = <x, A y>, <x, A x> ≤ 0 and Σ A x = 0 on a polycrystal with pores."""
    micro = porous_polycrystal
    table = _random_table(micro, (5e-15, 5e-15, 1e-20), jnp.float64)
    gid = jnp.asarray(micro.grain_id)
    active = micro.active
    rng = np.random.default_rng(0)
    apply = jax.jit(lambda v: kd.diffusion_rate(v, gid, table, H))
    for _ in range(3):
        a = jnp.asarray(np.where(active, rng.standard_normal(active.shape), 0.0))
        b = jnp.asarray(np.where(active, rng.standard_normal(active.shape), 0.0))
        aa, ab, ba = float(jnp.vdot(a, apply(a))), float(jnp.vdot(a, apply(b))), float(jnp.vdot(b, apply(a)))
        norm = abs(aa)
        assert abs(ab - ba) < 1e-12 * norm
        assert aa < 0
        assert abs(float(jnp.sum(apply(a)))) < 1e-12 * float(jnp.sum(jnp.abs(apply(a))))
    # no flux out of the active phase
    assert float(jnp.max(jnp.abs(jnp.where(gid < 0, apply(a), 0.0)))) == 0.0


def test_stable_time_step_bounds_spectral_radius(x64, porous_polycrystal):
    """Power iteration: the operator's spectral radius ≤ 4 d λmax / h², so Δt of
    stable_time_step(safety=1) keeps forward Euler non-expansive."""
    micro = porous_polycrystal
    principal = (5e-15, 3e-15, 1e-16)
    table = _random_table(micro, principal, jnp.float64)
    gid = jnp.asarray(micro.grain_id)
    apply = jax.jit(lambda v: kd.diffusion_rate(v, gid, table, H))
    v = jnp.asarray(np.where(micro.active, np.random.default_rng(1).standard_normal(micro.active.shape), 0.0))
    for _ in range(200):
        w = apply(v)
        lam = float(jnp.linalg.norm(w) / jnp.linalg.norm(v))
        v = w / jnp.linalg.norm(w)
    bound = 4 * 3 * max(principal) / H**2
    assert lam <= bound
    assert 2 / lam >= kd.stable_time_step(max(principal), H, 3, safety=1.0)


def _geometry_and_params(micro, principal, flux, dtype, orientations=None):
    geometry = ParticleGeometry.from_microstructure(micro, dtype)
    params = TransportParams(
        diffusivity_m2_s=jnp.asarray(principal, dtype),
        orientations=jnp.asarray(micro.orientations if orientations is None else orientations, dtype),
        flux_mol_m2_s=jnp.asarray(flux, dtype),
        c_max_mol_m3=jnp.asarray(5e4, dtype),
    )
    return geometry, params


@pytest.fixture(scope="module")
def reactive_particle():
    return polycrystalline_particle(1.2e-6, H, n_grains=10, reactive_fraction=0.667, seed=5)


def test_tensor_symmetry_of_grain_orientation_leaves_result_unchanged(x64, reactive_particle):
    """Rotating each grain by a symmetry of its diffusion tensor changes nothing:
    any rotation about the crystal c axis when D1 = D2, a 180° turn about a crystal
    axis for an orthotropic D."""
    micro = reactive_particle
    q0 = jnp.asarray(micro.orientations)
    cases = [
        ((5e-15, 5e-15, 1e-20), axis_angle_quaternion(jnp.array([0.0, 0.0, 1.0]), 0.7)),
        ((5e-15, 2e-15, 4e-16), axis_angle_quaternion(jnp.array([1.0, 0.0, 0.0]), jnp.pi)),
        ((5e-15, 2e-15, 4e-16), axis_angle_quaternion(jnp.array([0.0, 1.0, 0.0]), jnp.pi)),
    ]
    dt = kd.stable_time_step(5e-15, H, 3)
    x0 = jnp.where(jnp.asarray(micro.active), 0.5, 0.0)
    for principal, sym in cases:
        rotated = quaternion_multiply(q0, sym[None, :])  # R' = R S: S acts in the crystal frame
        g, p = _geometry_and_params(micro, principal, -1e-3, jnp.float64)
        _, p_rot = _geometry_and_params(micro, principal, -1e-3, jnp.float64, orientations=rotated)
        x_a, _ = rollout(g, p, x0, 32, dt)
        x_b, _ = rollout(g, p_rot, x0, 32, dt)
        assert float(jnp.max(jnp.abs(x_a - x0))) > 1e-3  # something happened
        np.testing.assert_allclose(np.asarray(x_b), np.asarray(x_a), rtol=0, atol=1e-13)
    # and a rotation that is *not* a symmetry does change the result
    g, p = _geometry_and_params(micro, (5e-15, 5e-15, 1e-20), -1e-3, jnp.float64)
    not_sym = quaternion_multiply(q0, axis_angle_quaternion(jnp.array([1.0, 0.0, 0.0]), 0.7)[None, :])
    _, p_bad = _geometry_and_params(micro, (5e-15, 5e-15, 1e-20), -1e-3, jnp.float64, orientations=not_sym)
    x_a, _ = rollout(g, p, x0, 32, dt)
    x_c, _ = rollout(g, p_bad, x0, 32, dt)
    assert float(jnp.max(jnp.abs(x_c - x_a))) > 1e-4


def test_surface_flux_changes_li_by_the_applied_amount(x64, reactive_particle):
    """Σ x changes exactly by the prescribed flux times area and time."""
    micro = reactive_particle
    g, p = _geometry_and_params(micro, (5e-15, 5e-15, 1e-20), -2e-3, jnp.float64)
    x0 = jnp.where(jnp.asarray(micro.active), 0.9, 0.0)
    dt = kd.stable_time_step(5e-15, H, 3)
    x, _ = rollout(g, p, x0, 64, dt)
    li = lambda v: float(jnp.sum(v)) * H**3 * 5e4  # noqa: E731
    applied = -2e-3 * float(g.reactive_area_m2) * 64 * dt
    assert abs((li(x) - li(x0)) - applied) < 1e-9 * abs(applied)


def test_gradient_wrt_D1_and_flux_matches_finite_differences(x64, reactive_particle):
    micro = reactive_particle
    x0 = jnp.where(jnp.asarray(micro.active), 0.8, 0.0)
    dt = kd.stable_time_step(6e-15, H, 3)
    geometry, params = _geometry_and_params(micro, (5e-15, 5e-15, 1e-17), -2e-3, jnp.float64)
    weights = jnp.asarray(np.random.default_rng(2).random(micro.active.shape))

    def loss(d1, flux):
        p = TransportParams(
            diffusivity_m2_s=jnp.stack([d1, d1, params.diffusivity_m2_s[2]]),
            orientations=params.orientations,
            flux_mol_m2_s=flux,
            c_max_mol_m3=params.c_max_mol_m3,
        )
        x, _ = rollout(geometry, p, x0, 48, dt, checkpoint_every=8)
        return jnp.sum(weights * x**2)

    d1, flux = jnp.asarray(5e-15), jnp.asarray(-2e-3)
    g_d1, g_flux = jax.grad(loss, argnums=(0, 1))(d1, flux)
    for value, grad, arg in ((d1, g_d1, 0), (flux, g_flux, 1)):
        eps = 1e-4 * abs(float(value))
        plus = [d1, flux]
        minus = [d1, flux]
        plus[arg] = value + eps
        minus[arg] = value - eps
        fd = (loss(*plus) - loss(*minus)) / (2 * eps)
        assert abs(float(grad) - float(fd)) < 1e-6 * abs(float(fd)), (arg, float(grad), float(fd))


@pytest.mark.parametrize("ndim", [2, 3])
def test_symmetric_vjp_equals_autodiff_transpose(x64, ndim):
    """The hand-written VJP (x̄ = A ḡ, components from the energy form) is the exact
    transpose of the operator: compared with JAX's own reverse mode of the same values."""
    rng = np.random.default_rng(11)
    micro = polycrystalline_particle(0.7e-6, H, n_grains=6, seed=3, ndim=ndim, surrounding_label=0)
    shape = micro.grain_id.shape
    active = jnp.asarray(micro.active)
    table = _random_table(micro, (5e-15, 2e-15, 1e-15), jnp.float64)
    comps = kd.voxel_components(table, jnp.asarray(micro.grain_id))
    x = jnp.asarray(rng.random(shape))
    g = jnp.asarray(rng.standard_normal(shape))
    inv_h = 1.0 / H
    _, pullback_sym = jax.vjp(lambda a, c: kd.symmetric_operator(a, c, active, inv_h), x, comps)
    _, pullback_ad = jax.vjp(lambda a, c: kd._operator(a, c, active, inv_h), x, comps)
    for got, want in zip(pullback_sym(g), pullback_ad(g)):
        scale = float(jnp.max(jnp.abs(want)))
        assert scale > 0
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-12 * scale)


def test_rollout_gradients_agree_between_adjoints(x64, reactive_particle):
    """Symmetric and autodiff adjoints give the same gradient w.r.t. D, flux and orientations."""
    micro = reactive_particle
    x0 = jnp.where(jnp.asarray(micro.active), 0.8, 0.0)
    dt = kd.stable_time_step(6e-15, H, 3)
    geometry, params = _geometry_and_params(micro, (5e-15, 3e-15, 1e-17), -2e-3, jnp.float64)
    weights = jnp.asarray(np.random.default_rng(5).random(micro.active.shape))

    def loss(p, adjoint):
        x, _ = rollout(geometry, p, x0, 24, dt, checkpoint_every=8, adjoint=adjoint)
        return jnp.sum(weights * x**2)

    sym = jax.grad(loss)(params, "symmetric")
    ad = jax.grad(loss)(params, "autodiff")
    for name in ("diffusivity_m2_s", "orientations", "flux_mol_m2_s"):
        a, b = np.asarray(getattr(sym, name)), np.asarray(getattr(ad, name))
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * np.max(np.abs(b)), err_msg=name)
    with pytest.raises(ValueError, match="adjoint = 'adjoint'"):
        rollout(geometry, params, x0, 8, dt, checkpoint_every=8, adjoint="adjoint")


def test_li_rate_float32_matches_float64(reactive_particle):
    micro = reactive_particle
    x64_rate = None
    with jax.enable_x64(True):
        g, p = _geometry_and_params(micro, (5e-15, 5e-15, 1e-20), -2e-3, jnp.float64)
        x = jnp.asarray(np.where(micro.active, np.random.default_rng(4).random(micro.active.shape), 0.0))
        x64_rate = np.asarray(li_rate(g, p, x))
    g, p = _geometry_and_params(micro, (5e-15, 5e-15, 1e-20), -2e-3, jnp.float32)
    r32 = np.asarray(li_rate(g, p, jnp.asarray(x, jnp.float32)))
    assert r32.dtype == np.float32
    np.testing.assert_allclose(r32, x64_rate, atol=1e-5 * np.abs(x64_rate).max())


def test_stable_time_step_rejects_bad_input():
    with pytest.raises(ValueError, match="max_diffusivity_m2_s"):
        kd.stable_time_step(0.0, H, 3)
    with pytest.raises(ValueError, match="safety"):
        kd.stable_time_step(1e-15, H, 3, safety=1.5)

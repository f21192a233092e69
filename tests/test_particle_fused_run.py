"""Particle runs on the fused pair stencil (rollout(..., guard=True, stencil="fused"),
what engine.solve.particle_step.advance_particle runs without stress coupling) against
the reference operator's guarded rollout (kernels.diffusion), Li conservation, and the
guard's one-reduction status against engine.model.particle._status_of.

Cheap: a 16³ polycrystal (radius 0.6 µm, 0.1 µm voxels) and a 24² section, ≤ 64 steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.microstructure import polycrystalline_particle
from ssbx.engine.model.particle import (
    STATUS_ABOVE_ONE,
    STATUS_BELOW_ZERO,
    STATUS_NOT_FINITE,
    STATUS_RUNNING,
    ParticleGeometry,
    TransportParams,
    _status_by_rank,
    _status_of,
    fused_stencil_coefficients,
    rollout,
)
from ssbx.engine.solve.particle_step import advance_particle, particle_state_at_start
from ssbx.kernels import diffusion as kd

H = 1e-7  # voxel size, m
C_MAX = 5e4  # mol/m³
BLOCK = 16


def _setup(ndim, flux, x_start, dtype=jnp.float32):
    radius = 0.6e-6 if ndim == 3 else 1.0e-6  # 16³ box / 24² section
    micro = polycrystalline_particle(radius, H, n_grains=8, reactive_fraction=0.667, seed=7, ndim=ndim)
    geometry = ParticleGeometry.from_microstructure(micro, dtype)
    params = TransportParams(
        diffusivity_m2_s=jnp.asarray((5e-15, 2e-15, 4e-16), dtype),  # strongly anisotropic: cross terms matter
        orientations=jnp.asarray(micro.orientations, dtype),
        flux_mol_m2_s=jnp.asarray(flux, dtype),
        c_max_mol_m3=jnp.asarray(C_MAX, dtype),
    )
    active = np.asarray(micro.active)
    rng = np.random.default_rng(5)
    x0 = jnp.asarray(np.where(active, x_start + 0.1 * rng.random(active.shape), 0.0), dtype)
    dt = kd.stable_time_step(5e-15, H, ndim)
    return geometry, params, x0, dt, active


def _both(geometry, params, x0, n_steps, dt):
    """(reference guarded rollout, fused guarded rollout), each jitted."""
    out = []
    for stencil in ("reference", "fused"):
        f = jax.jit(lambda x, s=stencil: rollout(geometry, params, x, n_steps, dt, checkpoint_every=BLOCK,
                                                  guard=True, adjoint="autodiff", stencil=s))
        out.append(jax.tree_util.tree_map(np.asarray, f(x0)))
    return out


@pytest.mark.parametrize("ndim", [2, 3])
def test_fused_guarded_rollout_equals_reference(ndim):
    """Guard never fires: final x, every step's mean_x and status equal the reference
    operator's to float32 round-off (x is O(1), so 1e-6 is a few ulps after 64 steps)."""
    geometry, params, x0, dt, active = _setup(ndim, flux=-5e-5, x_start=0.5)
    (x_ref, rec_ref), (x_fus, rec_fus) = _both(geometry, params, x0, 64, dt)
    assert np.all(rec_ref["status"] == STATUS_RUNNING) and np.all(rec_fus["status"] == STATUS_RUNNING)
    assert np.max(np.abs(x_ref - np.asarray(x0))) > 1e-3  # the state moved (diffusion + flux)
    np.testing.assert_allclose(x_fus, x_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(rec_fus["mean_x"], rec_ref["mean_x"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(x_fus[~active], np.asarray(x0)[~active])  # nothing enters the inert phase


# the refused step leaves [0, 1] by 9e-4 (3D) / 2e-5 (2D) and the last good one is inside
# by 1e-2 / 7e-3: far beyond the paths' float32 round-off difference (≤ 6e-8)
@pytest.mark.parametrize("ndim,flux,x_start,code", [
    (3, -2e-4, 0.3, STATUS_BELOW_ZERO),   # delithiation empties surface voxels (step 21)
    (2, 1e-4, 0.8, STATUS_ABOVE_ONE),     # lithiation overfills them (step 19)
])
def test_guard_fires_on_the_same_step_with_the_same_status(ndim, flux, x_start, code):
    """A surface voxel leaves [0, 1] mid-run: the production chunk step (advance_particle,
    fused) stops on the same step with the same status as the reference guarded rollout,
    its state is the last good one (also the unguarded fused state after that many
    steps) and mean_x stays frozen afterwards."""
    geometry, params, x0, dt, active = _setup(ndim, flux, x_start)
    n = 64
    x_ref, rec_ref = _both(geometry, params, x0, n, dt)[0]
    stop = int(np.sum(rec_ref["status"] == STATUS_RUNNING))
    assert 4 < stop < n - 4  # the guard fires mid-chunk
    assert rec_ref["status"][stop] == code

    state, n_taken, rec = jax.jit(lambda s: advance_particle(geometry, params, s, n, dt, BLOCK))(
        particle_state_at_start(x0))
    assert int(n_taken) == stop and int(state.n_steps) == stop and int(state.status) == code
    np.testing.assert_array_equal(np.asarray(rec["status"]), rec_ref["status"])
    np.testing.assert_allclose(np.asarray(state.x), x_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rec["mean_x"]), rec_ref["mean_x"], rtol=0, atol=1e-6)
    assert np.all(np.asarray(rec["mean_x"])[stop:] == np.asarray(rec["mean_x"])[stop - 1])
    # a particle run passes the pair weights built once per run: the same chunk to round-off
    # (the weights built outside the jitted chunk, XLA fuses their arithmetic differently)
    weights = fused_stencil_coefficients(geometry, params)
    state_w, n_w, rec_w = jax.jit(lambda s: advance_particle(geometry, params, s, n, dt, BLOCK,
                                                             coefficients=weights))(particle_state_at_start(x0))
    assert int(n_w) == stop and int(state_w.status) == code
    np.testing.assert_array_equal(np.asarray(rec_w["status"]), np.asarray(rec["status"]))
    np.testing.assert_allclose(np.asarray(state_w.x), np.asarray(state.x), rtol=0, atol=2e-7)
    np.testing.assert_allclose(np.asarray(rec_w["mean_x"]), np.asarray(rec["mean_x"]), rtol=0, atol=2e-7)
    with pytest.raises(ValueError, match="fused_coefficients"):  # only the step-by-step fused path takes them
        rollout(geometry, params, x0, n, dt, checkpoint_every=BLOCK, stencil="reference", guard=True,
                fused_coefficients=weights)
    x_good = np.asarray(state.x)[active]
    assert x_good.min() >= 0 and x_good.max() <= 1
    # the frozen state is the unguarded fused state after `stop` steps (to round-off; one
    # more step moves x by ≥ 1e-3 somewhere), not the refused one
    x_stop, _ = jax.jit(lambda x: rollout(geometry, params, x, stop, dt, checkpoint_every=stop,
                                          adjoint="autodiff", stencil="fused"))(x0)
    np.testing.assert_allclose(np.asarray(state.x), np.asarray(x_stop), rtol=0, atol=2e-7)


def test_nan_state_is_refused_on_the_first_step():
    """A NaN in one active voxel: neither path takes a step, status NOT_FINITE, x stays x0."""
    geometry, params, x0, dt, active = _setup(3, flux=-2e-4, x_start=0.5)
    idx = tuple(np.argwhere(active)[len(np.argwhere(active)) // 2])
    x0 = x0.at[idx].set(jnp.nan)
    for x, rec in _both(geometry, params, x0, BLOCK, dt):
        assert np.all(rec["status"] == STATUS_NOT_FINITE)
        np.testing.assert_array_equal(x, np.asarray(x0))


def test_status_by_rank_equals_status_of():
    """The guard's single max-reduction gives _status_of's code for every combination of
    findings (NaN, ±Inf, below 0, above 1), each absent, in an active or in an inert voxel."""
    import itertools

    findings = [np.nan, np.inf, -np.inf, -1e-7, 1 + 1e-6]
    k = len(findings)
    active = jnp.asarray([True] * k + [False] * k)  # voxel i active, voxel k + i inert
    ours, theirs = jax.jit(_status_by_rank), jax.jit(_status_of)
    seen = set()
    for places in itertools.product((None, "active", "inert"), repeat=k):
        x = np.full(2 * k, 0.5, np.float32)
        for i, (value, place) in enumerate(zip(findings, places)):
            if place is not None:
                x[i if place == "active" else k + i] = value
        expected = int(theirs(jnp.asarray(x), active))
        assert int(ours(jnp.asarray(x), active)) == expected, (x, expected)
        seen.add(expected)
    assert seen == {STATUS_RUNNING, STATUS_BELOW_ZERO, STATUS_ABOVE_ONE, STATUS_NOT_FINITE}


def test_fused_run_conserves_li(x64):
    """Li balance of the guarded fused rollout: c_max h³ Δ(Σ x) equals the prescribed
    flux × reactive area × time (float64 to 1e-10; the operator exchanges Li only
    between active voxels), and in float32, the run dtype, to 1e-5 relative."""
    flux, n = -5e-5, 64
    for dtype, rtol in ((jnp.float64, 1e-10), (jnp.float32, 1e-5)):
        geometry, params, x0, dt, active = _setup(3, flux, 0.5, dtype)
        x, rec = jax.jit(lambda x, g=geometry, p=params, dt=dt: rollout(
            g, p, x, n, dt, checkpoint_every=BLOCK, guard=True, adjoint="autodiff", stencil="fused"))(x0)
        assert np.all(np.asarray(rec["status"]) == STATUS_RUNNING)
        removed = C_MAX * H**3 * (np.sum(np.asarray(x0, np.float64)) - np.sum(np.asarray(x, np.float64)))
        area = float(np.sum(np.asarray(geometry.face_count, np.float64))) * H**2
        expected = -flux * area * n * float(dt)
        assert expected > 0 and removed == pytest.approx(expected, rel=rtol), dtype
        n_active = active.sum()
        mean_drop = float(rec["mean_x"][0]) - float(rec["mean_x"][-1])  # n − 1 steps
        assert mean_drop == pytest.approx(expected * (n - 1) / n / (C_MAX * H**3 * n_active), rel=max(rtol, 1e-9) * 10)


def test_guarded_fused_rollout_keeps_autodiff_gradients(x64):
    """adjoint="autodiff" through the guarded fused path: reverse-mode gradient w.r.t.
    the diffusivities, orientations and flux equals the reference guarded path's (float64,
    to 1e-9), and forward mode (jvp) runs and agrees."""
    geometry, params, x0, dt, _ = _setup(2, flux=-2e-4, x_start=0.5, dtype=jnp.float64)
    weights = jnp.asarray(np.random.default_rng(1).random(x0.shape))

    def loss(p, stencil):
        x, rec = rollout(geometry, p, x0, 32, dt, checkpoint_every=BLOCK, guard=True, adjoint="autodiff",
                         stencil=stencil)
        return jnp.sum(weights * x**2) + jnp.sum(rec["mean_x"])

    g_ref = jax.jit(jax.grad(lambda p: loss(p, "reference")))(params)
    g_fus = jax.jit(jax.grad(lambda p: loss(p, "fused")))(params)
    for name in ("diffusivity_m2_s", "orientations", "flux_mol_m2_s"):
        a, b = np.asarray(getattr(g_fus, name)), np.asarray(getattr(g_ref, name))
        assert np.max(np.abs(b)) > 0, name
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * np.max(np.abs(b)), err_msg=name)
    tangent = jax.tree_util.tree_map(jnp.zeros_like, params)
    tangent = TransportParams(jnp.ones(3) * 1e-15, tangent.orientations, tangent.flux_mol_m2_s, tangent.c_max_mol_m3)
    _, t_fus = jax.jit(lambda p, t: jax.jvp(lambda q: loss(q, "fused"), (p,), (t,)))(params, tangent)
    expected = float(jnp.sum(g_ref.diffusivity_m2_s * tangent.diffusivity_m2_s))
    assert float(t_fus) == pytest.approx(expected, rel=1e-9)


def test_fused_stencil_refuses_stress_coupling_and_unknown_names():
    geometry, params, x0, dt, _ = _setup(2, flux=-2e-4, x_start=0.5)
    with pytest.raises(ConfigError, match="stencil = 'fused' with stress coupling"):
        rollout(geometry, params, x0, BLOCK, dt, checkpoint_every=BLOCK, guard=True, coupling=object(),
                stencil="fused")
    with pytest.raises(ConfigError, match="stencil = 'pallas'; valid: 'auto', 'fused' or 'reference'"):
        rollout(geometry, params, x0, BLOCK, dt, checkpoint_every=BLOCK, stencil="pallas")

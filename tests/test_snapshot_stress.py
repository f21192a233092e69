"""Snapshot stress of particle runs made cheap (engine/physics/mechanics.py): the closed-form
largest principal stress against a reference eigen-solver, the exact stress-free shortcut
of StressSolver.solve against the CG solve it skips, and the background warm-up."""

import contextlib
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.config.scenario import MechanicsConfig
from ssbx.engine.geometry.microstructure import polycrystalline_particle
from ssbx.engine.physics.mechanics import StressSolver, stress_outputs
from ssbx.kernels.elasticity import max_principal_stress


def _tensors(dtype):
    """Random stresses (Pa) plus the degenerate cases of the closed form: zero,
    hydrostatic (p = 0), uniaxial (double root, det(s/p)/2 = −1) and its negative (+1),
    and a tiny deviator on a large mean."""
    rng = np.random.default_rng(4)
    s = rng.standard_normal((6, 4000)) * 1e8
    s[:, :10] = 0.0
    s[:, 10:20] = 0.0
    s[:3, 10:20] = 5e7
    s[:, 20:30] = 0.0
    s[0, 20:30] = 1e8
    s[:, 30:40] = 0.0
    s[2, 30:40] = -1e8
    s[:3, 40:50] = 1e9
    s[3:, 40:50] = 1e3
    s[:, 50:60] = 0.0
    s[2, 50:60] = -1e8  # uniaxial compression: the two largest roots coincide at 0
    s[0, 50:60] = rng.standard_normal(10) * 1e2  # ... nearly
    return s.astype(dtype)


def _eig_max(s):
    """Largest eigenvalue of each symmetric tensor by LAPACK (NumPy, float64)."""
    xx, yy, zz, yz, xz, xy = s.astype(np.float64)
    t = np.stack([np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1), np.stack([xz, yz, zz], -1)], -2)
    return np.linalg.eigvalsh(t)[..., -1]


def test_closed_form_max_principal_equals_eigen_solver(x64):
    """Smith (1961)'s trigonometric root equals LAPACK's eigvalsh to 1e-7 of the tensor's
    scale in float64, NumPy (what the snapshot output uses) and jax.numpy alike, also
    where the two largest roots (nearly) coincide, where the arccos loses half the
    digits (1e-7 is still far below the float32 the fields are written in and the CG
    tolerance 1e-4 of the stress itself)."""
    s = _tensors(np.float64)
    scale = np.maximum(np.abs(s).max(axis=0), 1.0)
    for got in (max_principal_stress(s), np.asarray(max_principal_stress(jnp.asarray(s)))):
        assert got.dtype == np.float64
        err = np.abs(got - _eig_max(s)) / scale
        assert err.max() < 1e-7, err.max()
        assert np.median(err) < 1e-14  # well-separated roots: to rounding
    # exact where the answer is trivial: zero and hydrostatic tensors
    np.testing.assert_array_equal(max_principal_stress(s[:, :20]), np.r_[np.zeros(10), np.full(10, 5e7)])


@pytest.fixture(scope="module")
def particle():
    # 14³ voxels, 4 grains: the checks do not depend on the resolution
    return polycrystalline_particle(0.45e-6, 1e-7, n_grains=4, margin_voxels=2, seed=3)


def _field(micro, x_active, x_other=0.0):
    return jnp.where(jnp.asarray(micro.active), jnp.float32(x_active), jnp.float32(x_other))


def test_stress_free_shortcut_equals_the_solve(particle):
    """x = x_ref on the particle (anything in the pores, whose expansion rows are zero)
    has no eigenstrain: the shortcut's zero fields and statistics equal the CG solve's."""
    solver = StressSolver.build(particle, MechanicsConfig(), x_ref=0.9, dtype=jnp.float32)
    x = _field(particle, 0.9, x_other=0.3)
    assert solver._is_stress_free(x)
    fast, slow = solver.solve(x), solver._cg(x)  # _cg: the solve that solve() skips
    assert int(slow.iterations) == 0 and float(np.abs(np.asarray(slow.stress)).max()) == 0.0
    f_fast, s_fast = stress_outputs(fast, particle.active)
    f_slow, s_slow = stress_outputs(slow, particle.active)
    assert s_fast == s_slow
    for name in f_slow:
        np.testing.assert_array_equal(f_fast[name], f_slow[name])


def test_shortcut_refuses_eigenstrain_and_applied_pressure(particle):
    """One active voxel off x_ref, or a stack pressure at x = x_ref, must be solved:
    the first gives misfit stress, the second a mean σ_zz = −p (as a CG solve does)."""
    solver = StressSolver.build(particle, MechanicsConfig(), x_ref=0.9, dtype=jnp.float32)
    i = tuple(np.argwhere(particle.active)[len(np.argwhere(particle.active)) // 2])
    x = _field(particle, 0.9).at[i].set(0.5)
    assert not solver._is_stress_free(x)
    result = solver.solve(x)
    assert int(result.iterations) > 0
    assert float(np.abs(np.asarray(result.stress)[(slice(None),) + i]).max()) > 1e6
    pressed = StressSolver.build(particle, MechanicsConfig(surrounding_material="LLZO", stack_pressure_Pa=5e6),
                                 x_ref=0.9, dtype=jnp.float32)
    x0 = _field(particle, 0.9)
    assert not pressed._is_stress_free(x0)
    np.testing.assert_allclose(np.asarray(pressed.solve(x0).mean_stress), [0, 0, -5e6, 0, 0, 0], atol=5e6 * 1e-3)


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_warm_up_compiles_what_the_snapshots_use(caplog, dtype_name):
    """The background warm-up compiles the solve for its grid; a snapshot after it
    compiles nothing (its fields are NumPy), and gives what a solver without warm-up
    gives (bit for bit). Its own grid (16³), so that no other test compiled it before.
    float64: the run's jax.enable_x64 is thread-local, so the warm-up thread must turn it
    on itself (without, it compiled the float32 program and the snapshot compiled again)."""
    with (jax.enable_x64(True) if dtype_name == "float64" else contextlib.nullcontext()):
        _warm_up_then_snapshot(caplog, jnp.dtype(dtype_name))


def _warm_up_then_snapshot(caplog, dtype):
    micro = polycrystalline_particle(0.45e-6, 1e-7, n_grains=4, margin_voxels=3, seed=3)
    solver = StressSolver.build(micro, MechanicsConfig(), x_ref=0.7, dtype=dtype)
    x = _field(micro, 0.6).astype(dtype)  # a run's field has the run's dtype

    def compiled_during(fn):
        caplog.clear()
        before = jax.config.jax_log_compiles
        jax.config.update("jax_log_compiles", True)  # global: the warm-up runs in its own thread
        try:
            with caplog.at_level(logging.WARNING):
                out = fn()
        finally:
            jax.config.update("jax_log_compiles", before)
        return out, [m for m in (r.getMessage() for r in caplog.records)
                     if "Finished XLA compilation" in m]

    _, warm = compiled_during(lambda: solver.warm_up(dtype).join())
    assert any("_solve_jit" in m for m in warm), warm
    (fields, stats), later = compiled_during(lambda: stress_outputs(solver.solve(x), micro.active))
    assert later == []
    assert stats["cg_iterations"] > 0
    cold = StressSolver.build(micro, MechanicsConfig(), x_ref=0.7, dtype=dtype)
    fields_cold, stats_cold = stress_outputs(cold.solve(x), micro.active)
    assert stats == stats_cold
    for name in fields:
        np.testing.assert_array_equal(fields[name], fields_cold[name])


def test_warm_started_solve_equals_the_cold_one_to_tolerance(x64):
    """``initial_guess`` (kernels.elasticity): started from the previous state's solution,
    CG stops by the cold solve's rule and lands as close to a tight (tol 1e-10) reference
    as the cold solve does, in fewer iterations; started from the reference itself it
    takes none. 2D polycrystal, float64."""
    from ssbx.kernels.elasticity import solve_elasticity

    micro = polycrystalline_particle(1.0e-6, 1e-7, n_grains=5, margin_voxels=2, ndim=2, seed=1)
    solver = StressSolver.build(micro, MechanicsConfig(), x_ref=0.9, dtype=jnp.float64)
    active = jnp.asarray(micro.active)
    ramp = jnp.asarray(np.linspace(0.0, 1.0, micro.labels.shape[0]))[:, None]

    def solve(x, tol, guess=None):
        return solve_elasticity(solver.table0, solver.table1, solver.phase_index, x,
                                expansion_table=solver.expansion, x_ref=0.9, macro_stress=jnp.zeros(3),
                                stress_mask=jnp.ones(3, bool), tol=tol, maxiter=2000, initial_guess=guess)

    x_prev = jnp.where(active, 0.85 - 0.05 * ramp, 0.0)
    x_now = jnp.where(active, 0.80 - 0.06 * ramp, 0.0)
    tol = 1e-4
    ref = solve(x_now, 1e-10)
    cold = solve(x_now, tol)
    warm = solve(x_now, tol, solve(x_prev, tol).cg_solution)
    scale = float(jnp.abs(ref.stress).max())
    err_cold = float(jnp.abs(cold.stress - ref.stress).max()) / scale
    err_warm = float(jnp.abs(warm.stress - ref.stress).max()) / scale
    assert float(warm.residual) <= tol and bool(warm.converged)
    assert int(warm.iterations) < int(cold.iterations)
    assert err_warm < 3 * max(err_cold, tol) and err_warm < 1e-2, (err_warm, err_cold)
    exact = solve(x_now, tol, ref.cg_solution)
    assert int(exact.iterations) == 0
    np.testing.assert_allclose(np.asarray(exact.stress), np.asarray(ref.stress), atol=1e-9 * scale)

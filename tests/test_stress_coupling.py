"""Stress-assisted Li transport (docs/physics.md §2): kernels.diffusion.stress_drift_rate
with engine.physics.mechanics.StressCoupling inside model.rollout.

Analytic check: in a homogeneous isotropic body with isotropic chemical expansion
ε* = b (x − x_ref) I, any Li field that varies along one axis of a laterally periodic,
mean-stress-free slab gives σ_h = −2 E b (x − x̄) / (3 (1 − ν)) exactly, so the coupled
equation collapses to the nonlinear diffusion ∂x/∂t = ∂z (D (1 + θ x) ∂z x) with
θ = 2 E b² / ((1 − ν) c_max R T) (Zhang, Shyy & Sastry, J. Electrochem. Soc. 154, A910
(2007)). The voxel solution is compared with a fine 1D finite-volume solution of that
equation by scipy's BDF integrator.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from ssbx.engine.physics.mechanics import GAS_CONSTANT, StressCoupling
from ssbx.engine.materials.elastic import isotropic_material
from ssbx.engine.geometry.microstructure import polycrystalline_particle
from ssbx.engine.model.particle import ParticleGeometry, TransportParams, rollout
from ssbx.kernels import diffusion as kd

H = 1e-7
D = 1e-14
E, NU, B, C_MAX, T = 100e9, 0.25, 0.02, 5.0e4, 298.15
THETA = 2 * E * B**2 / ((1 - NU) * C_MAX * GAS_CONSTANT * T)


def _reference(x0, t_end, n_fine=384):
    """Cell averages of the 1D nonlinear-diffusion solution on the voxel grid."""
    n = x0.size
    length = n * H
    zf = (np.arange(n_fine) + 0.5) * length / n_fine
    xf0 = 0.5 + 0.3 * np.cos(np.pi * zf / length)
    hf = length / n_fine

    def rhs(_, x):
        face_d = D * (1 + THETA * 0.5 * (x[1:] + x[:-1]))
        flux = np.concatenate([[0.0], face_d * np.diff(x) / hf, [0.0]])
        return np.diff(flux) / hf

    sol = solve_ivp(rhs, (0, t_end), xf0, method="BDF", rtol=1e-10, atol=1e-12)
    return sol.y[:, -1].reshape(n, n_fine // n).mean(axis=1)


def _slab(n):
    grain_id = jnp.zeros((2, 2, n), jnp.int32)  # 2 × 2 periodic columns
    geometry = ParticleGeometry(grain_id, jnp.zeros((2, 2, n)), H)
    c = jnp.asarray(isotropic_material("test", E, NU).stiffness_lithiated)[None]
    coupling = StressCoupling(
        phase_index=grain_id, table0=c, table1=c, beta=jnp.full(3, B),
        label_expansion=jnp.zeros((0, 6)), x_ref=jnp.asarray(0.5), macro_stress=jnp.zeros(6),
        bulk_Pa=jnp.asarray(E / (3 * (1 - 2 * NU))), shear_Pa=jnp.asarray(E / (2 * (1 + NU))),
        temperature_K=T, tol=1e-11, maxiter=200,
    )
    params = TransportParams(jnp.full(3, D), jnp.asarray([[1.0, 0, 0, 0]]), jnp.asarray(0.0),
                             jnp.asarray(C_MAX))
    return geometry, params, coupling


def test_slab_reduces_to_zhang_shyy_sastry_nonlinear_diffusion(x64):
    n = 32
    geometry, params, coupling = _slab(n)
    z = (np.arange(n) + 0.5) / n
    x0_1d = 0.5 + 0.3 * np.cos(np.pi * z)
    x0 = jnp.broadcast_to(jnp.asarray(x0_1d), (2, 2, n))
    dt = kd.stable_time_step(D * (1 + THETA), H, 3)
    np.testing.assert_allclose(float(coupling.local_theta(C_MAX)), THETA, rtol=1e-12)
    steps, k = 1200, 16  # the local update makes the result independent of k here
    x_c, _ = rollout(geometry, params, x0, steps, dt, checkpoint_every=k, coupling=coupling)
    x_u, _ = rollout(geometry, params, x0, steps, dt, checkpoint_every=k)
    ref = _reference(x0_1d, steps * dt)
    coupled = np.asarray(x_c)[1, 1]
    uncoupled = np.asarray(x_u)[1, 1]
    assert np.ptp(np.asarray(x_c), axis=(0, 1)).max() < 1e-12  # stays one-dimensional
    assert abs(coupled.sum() - x0_1d.sum()) < 1e-10 * n  # conservative
    err = np.max(np.abs(coupled - ref))
    effect = np.max(np.abs(uncoupled - ref))
    assert THETA > 0.5 and effect > 0.02  # the coupling matters at these parameters
    assert err < 2e-3, (err, effect)


@pytest.fixture(scope="module")
def coupled_particle():
    # 12³ voxels (280 active): the adjoint-vs-difference check is grid-independent
    micro = polycrystalline_particle(0.4e-6, H, n_grains=5, seed=2)  # ECBD around: reactive faces
    from ssbx.engine.config.scenario import MechanicsConfig

    with jax.enable_x64(True):
        coupling = StressCoupling.build(micro, MechanicsConfig(tol=1e-10), 0.6, T, jnp.float64)
    return micro, coupling


def test_gradient_wrt_expansion_matches_finite_differences(x64, coupled_particle):
    micro, coupling = coupled_particle
    geometry = ParticleGeometry.from_microstructure(micro, jnp.float64)
    params = TransportParams(jnp.asarray([5e-15, 5e-15, 1e-16]), jnp.asarray(micro.orientations),
                             jnp.asarray(-3e-4), jnp.asarray(C_MAX))
    x0 = jnp.where(jnp.asarray(micro.active), 0.6, 0.0)
    theta = float(coupling.local_theta(C_MAX))
    assert 1.0 < theta < 4.0  # NCM622 β with the default NCM stiffness: a stiff coupling
    dt = kd.stable_time_step(5e-15 * (1 + theta), H, 3)  # the coupled limit, D (1 + θ)
    weights = jnp.asarray(np.random.default_rng(1).random(micro.active.shape))

    @jax.jit  # one compilation serves both difference quotients
    def loss(beta):
        c = eqx_replace(coupling, beta)
        x, _ = rollout(geometry, params, x0, 32, dt, checkpoint_every=8, coupling=c)
        return jnp.sum(weights * x**2)

    beta = jnp.asarray([0.028, 0.028, -0.040])
    direction = jnp.asarray([0.3, -0.5, 0.8])
    grad = jax.grad(loss)(beta)
    eps = 1e-4
    fd = (loss(beta + eps * direction) - loss(beta - eps * direction)) / (2 * eps)
    assert abs(float(grad @ direction) - float(fd)) < 1e-4 * abs(float(fd)), (float(grad @ direction), float(fd))
    # the same gradient through JAX's own transpose of the stepper
    def loss_ad(beta):
        x, _ = rollout(geometry, params, x0, 32, dt, checkpoint_every=8,
                       coupling=eqx_replace(coupling, beta), adjoint="autodiff")
        return jnp.sum(weights * x**2)

    np.testing.assert_allclose(np.asarray(jax.grad(loss_ad)(beta)), np.asarray(grad), rtol=1e-8)


def test_warm_started_stress_solves_keep_the_solver_tolerance(x64, coupled_particle):
    """rollout(warm_stress=True), what particle runs use: each block's stress CG starts
    from the previous block's solution. It takes fewer iterations than a cold solve, and
    the Li field stays within the solver tolerance of an over-converged (tol 1e-12) run, as
    the cold-started one does (measured at tol 1e-4 and 1e-6: 0.3–0.4 tol, either way)."""
    micro, _ = coupled_particle
    from ssbx.engine.config.scenario import MechanicsConfig

    geometry = ParticleGeometry.from_microstructure(micro, jnp.float64)
    params = TransportParams(jnp.asarray([5e-15, 5e-15, 1e-16]), jnp.asarray(micro.orientations),
                             jnp.asarray(-1e-4), jnp.asarray(C_MAX))
    x0 = jnp.where(jnp.asarray(micro.active), 0.6, 0.0)
    build = lambda tol: StressCoupling.build(micro, MechanicsConfig(tol=tol), 0.6, T, jnp.float64)  # noqa: E731
    tight = build(1e-12)
    dt = kd.stable_time_step(5e-15 * (1 + float(tight.local_theta(C_MAX))), H, 3)
    run = lambda c, warm: np.asarray(rollout(geometry, params, x0, 48, dt, checkpoint_every=8, coupling=c,  # noqa: E731
                                             adjoint="autodiff", warm_stress=warm)[0])
    reference = run(tight, False)
    assert np.abs(reference - np.asarray(x0)).max() > 0.05  # the run moves x
    tol = 1e-5
    c = build(tol)
    for warm in (False, True):
        assert np.abs(run(c, warm) - reference).max() < tol, warm
    # iterations of consecutive block solves: warm ones fall below the cold count
    block = jax.jit(lambda x: rollout(geometry, params, x, 8, dt, checkpoint_every=8, coupling=c)[0])
    solve = jax.jit(lambda x, guess: (lambda r: (r.iterations, r.cg_solution))(
        c.solve(params.orientations, x, initial_guess=guess)))
    zero = c.zero_guess(jnp.float64)
    x, guess, warm_its, cold_its = x0, zero, [], []
    for _ in range(3):
        x = block(x)
        its, guess = solve(x, guess)
        warm_its.append(int(its))
        cold_its.append(int(solve(x, zero)[0]))
    assert warm_its[0] == cold_its[0]  # from the zero guess: a cold start
    assert all(w < c_ for w, c_ in zip(warm_its[1:], cold_its[1:])), (warm_its, cold_its)


@pytest.mark.parametrize("ndim", [2, 3])
def test_zero_guess_has_the_shape_of_a_cg_solution(ndim):
    """The warm start's first guess has the structure the solver returns (nodal displacement
    with 3 components also on 2D grids), so the block carry of rollout(warm_stress=True)
    keeps one shape."""
    from ssbx.engine.config.scenario import MechanicsConfig

    micro = polycrystalline_particle(0.6e-6, H, n_grains=4, seed=3, ndim=ndim)
    c = StressCoupling.build(micro, MechanicsConfig(), 0.6, T, jnp.float32)
    x = jnp.where(jnp.asarray(micro.active), 0.5, 0.0).astype(jnp.float32)
    solved = jax.eval_shape(lambda x: c.solve(jnp.asarray(micro.orientations), x).cg_solution, x)
    guess = c.zero_guess(jnp.float32)
    assert [(a.shape, a.dtype) for a in guess] == [(a.shape, a.dtype) for a in solved]


def eqx_replace(coupling, beta):
    import equinox as eqx

    return eqx.tree_at(lambda c: c.beta, coupling, beta)


def test_fit_loss_gradient_wrt_expansion_and_laplace(x64):
    """β is a fittable parameter once stress is coupled: ∂L/∂u vs central differences
    through the whole fitting pipeline (projection maps), and the forward-mode Laplace
    step runs on the same coupled model. Without coupling β is refused."""
    from ssbx.engine.config.scenario import Scenario
    from ssbx.engine.errors import ConfigError
    from ssbx.engine.inverse.fitting import FitProblem, forward_setup, laplace_uncertainty
    from ssbx.engine.inverse.fitting import synthetic_projection_maps
    from ssbx.engine.observables.observation import ObservationOperator
    from ssbx.engine.inverse.parameters import FreeParameter

    base = Scenario().replace(
        run={"dtype": "float64"},
        particle={"radius_m": 0.4e-6, "voxel_size_m": 1e-7, "n_grains": 4, "seed": 5},
        protocol={"c_rate": 10.0},
        mechanics={"tol": 1e-10},
    )
    coupled = base.replace(mechanics={"couple_diffusion": True, "tol": 1e-10})
    free = [FreeParameter("beta_c", -0.03, -0.08, 0.02), FreeParameter("D1", 6e-15, 1e-15, 2e-14)]
    op = ObservationOperator("projection", beam_axis=2, min_thickness_voxels=1)
    setup = forward_setup(coupled, [2.0, 4.0], op, free)
    truth = synthetic_projection_maps(setup, {"beta_c": -0.05, "D1": 5e-15}, 0.002, seed=3)
    problem = FitProblem(setup, truth, free)
    u = problem.u0 + jnp.asarray([0.2, -0.1])
    _, grad = problem.value_and_grad(u)
    h = 1e-4
    for i, name in enumerate(problem.names):
        e = jnp.zeros(2).at[i].set(h)
        fd = (float(problem.loss(u + e)) - float(problem.loss(u - e))) / (2 * h)
        assert abs(float(grad[i]) - fd) < 1e-4 * abs(fd), (name, float(grad[i]), fd)
    report = laplace_uncertainty(problem, u)
    assert np.isfinite(report["parameters"]["beta_c"]["std"])
    with pytest.raises(ConfigError, match="couple_diffusion"):
        plain = forward_setup(base, [2.0, 4.0], op, free)
        FitProblem(plain, truth, free).loss(problem.u0)


def test_coupled_run_conserves_li_and_differs_from_uncoupled(tmp_path):
    """`ssbx run` path with mechanics.couple_diffusion: Li bookkeeping still exact."""
    from ssbx.engine.config.scenario import Scenario
    from ssbx.engine.io.run_file import load_run
    from ssbx.engine.runs.particle_run import run_scenario

    base = Scenario().replace(
        particle={"radius_m": 0.5e-6, "voxel_size_m": 1e-7, "n_grains": 6, "seed": 4},
        protocol={"c_rate": 5.0, "duration_s": 20.0},
        output={"n_snapshots": 2},
    )
    runs = {}
    for coupled in (False, True):
        scenario = base.replace(mechanics={"couple_diffusion": coupled, "coupling_every_steps": 4})
        result = run_scenario(scenario, tmp_path / f"c{coupled}.h5", progress=False)
        assert result.status == "completed", result.message
        runs[coupled] = load_run(tmp_path / f"c{coupled}.h5")
    for run in runs.values():
        ts = run.timeseries
        expected = ts["li_mol"][0] - np.cumsum(np.r_[0, np.diff(ts["t_s"])]) * abs(ts["current_A"][0]) / 96485.33212
        np.testing.assert_allclose(ts["li_mol"], expected, rtol=1e-5)
    soc_c, soc_u = (np.nan_to_num(runs[c].fields["soc"][-1]) for c in (True, False))
    assert np.max(np.abs(soc_c - soc_u)) > 1e-3  # the stress moved Li

"""Fitting cell parameters to a measured V(t) and SOC maps through the differentiable
cycle (engine.inverse.voltage_fit, engine.inverse.cell_maps).

Two compiled forward-mode passes of a tiny cell (a 2 µm particle, 19 × 19 × 16 voxels,
maps projected along x): in float64 with tightly solved potentials (a 2 min 2C charge
and a 1 min rest) for the maps' Li against the charge passed and their Jacobian against
central differences; in float32 (a 4 min 2C charge and a 1 min rest) for the recovery
of i0 and D from a noisy V(t) plus maps, with the maps narrowing D's Laplace
uncertainty. The observation operator and the time interpolation are checked on
hand-made inputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.errors import ConfigError
from ssbx.engine.inverse.cell_maps import at_times, cell_map_operator, observe_map, thickness_image
from ssbx.engine.inverse.voltage_fit import VoltageCurveModel, fit_voltage_curve
from ssbx.engine.io.measurements import MeasuredMaps
from ssbx.engine.model.resolve import resolve_cell
from ssbx.engine.observables.observation import ObservationOperator
from ssbx.kernels.constants import FARADAY
from ssbx.engine.solve.rollout import step_budget

from test_cell import SMALL

CURVE = dict(SMALL, electrochemistry={"time_step_s": 40.0},
             protocol={"kind": "cycling", "steps": ["charge at 2C until 4.3 V or 4 min", "rest 1 min"]})
TRUTH = {"exchange_current": 2.0, "diffusivity_in_plane": 2e-14}
T = np.linspace(0.0, 300.0, 31)
T_MAPS = np.array([0.0, 100.0, 200.0, 300.0])  # s: the start, two in the charge, the end of the rest
N_STEPS = 16
# V; Li fraction (a 0.5 µm map pixel bins ~250 TXM pixels of ~30 nm: a few 0.1 % in x)
SIGMA_V, SIGMA_MAP = 5e-4, 2e-3
# the derivative checks: a shorter protocol, potentials solved to 1e-9 (CG) and 1e-5 V
# (Newton), so that the solves' tolerances do not show in the derivatives (at the
# default 1e-6 and 1e-3 V forward mode and differences part at ~1e-3)
EXACT = dict(SMALL, electrochemistry={"time_step_s": 40.0, "solver_rtol": 1e-9, "newton_tolerance_V": 1e-5},
             protocol={"kind": "cycling", "steps": ["charge at 2C until 4.3 V or 2 min", "rest 1 min"]})
EXACT_MAPS = np.array([0.0, 60.0, 180.0])


@pytest.fixture(scope="module")
def cell():
    """(resolved cell, model with maps along x, outputs at the truth) in float32, for the fit."""
    resolved = resolve_cell(scenario_from_dict(CURVE), jnp.float32)
    operator = ObservationOperator(kind="projection", beam_axis=0, factor=1)
    model = VoltageCurveModel(resolved, list(TRUTH), T, N_STEPS, step_budget(resolved, 4.04),
                              map_t_s=T_MAPS, operator=operator)
    return resolved, model, model.at(TRUTH)


@pytest.fixture(scope="module")
def exact():
    """float64: (resolved cell, model, its call at the truth, central differences of the
    maps (step 1e-4 in ln θ, per parameter))."""
    with jax.enable_x64(True):
        resolved = resolve_cell(scenario_from_dict(EXACT), jnp.float64)
        operator = ObservationOperator(kind="projection", beam_axis=0, factor=1)
        model = VoltageCurveModel(resolved, list(TRUTH), EXACT_MAPS, 9, step_budget(resolved, 1.01),
                                  map_t_s=EXACT_MAPS, operator=operator)
        at_truth = model.at(TRUTH)
        theta, h, zero = np.log([TRUTH[n] for n in model.names]), 1e-4, jnp.zeros(2, jnp.float64)
        maps = lambda th: np.asarray(model._jvp(jnp.asarray(th), zero)[0]["maps"]).reshape(-1)  # noqa: E731
        fd = np.stack([(maps(theta + h * e) - maps(theta - h * e)) / (2 * h) for e in np.eye(2)], axis=1)
    return resolved, model, at_truth, fd


def test_projection_of_known_fields_by_hand():
    """The map of a uniform x is that x on every pixel with material behind it (0 where
    none); a random field binned 2 × 2 is Σ a x / Σ a over each pixel's rays; and the
    thickness-weighted map gives back the Li of the particle: Σ_p P T = Σ_i a_i x_i."""
    rng = np.random.default_rng(3)
    active = np.zeros((8, 6, 4), bool)
    active[1:7, 1:5, 0:3] = rng.random((6, 4, 3)) < 0.7
    x = np.where(active, rng.random(active.shape), 0.0)
    operator = ObservationOperator(kind="projection", beam_axis=2, factor=2)
    see = observe_map(operator, active)
    state = type("S", (), {})()
    state.x = jnp.asarray(np.where(active, 0.37, 0.0), jnp.float32)
    uniform = np.asarray(see(state)["soc_map"])
    thickness = thickness_image(operator, active)
    assert uniform.shape == (4, 3)
    np.testing.assert_allclose(uniform[thickness > 0], 0.37, rtol=1e-6)
    assert np.all(uniform[thickness == 0] == 0)
    state.x = jnp.asarray(x, jnp.float32)
    image = np.asarray(see(state)["soc_map"])
    for i in range(4):
        for j in range(3):
            a, f = active[2 * i:2 * i + 2, 2 * j:2 * j + 2], x[2 * i:2 * i + 2, 2 * j:2 * j + 2]
            expected = f[a].sum() / a.sum() if a.any() else 0.0
            assert image[i, j] == pytest.approx(expected, rel=1e-5, abs=1e-7)
            assert thickness[i, j] == a.sum()
    assert np.sum(image * thickness) == pytest.approx(x[active].sum(), rel=1e-5)


def test_interpolation_in_time_skips_rows_not_recorded():
    """at_times is numpy's interp over the valid rows (an invalid row in the middle, a
    replaced overshooting solve, and the rows after the end are skipped; held after)."""
    t_rows = jnp.asarray([0.0, 40.0, 999.0, 80.0, 100.0, 100.0, 5.0])
    valid = jnp.asarray([True, True, False, True, True, False, False])
    values = jnp.asarray(np.arange(7 * 2, dtype=np.float32).reshape(7, 2) ** 1.5)
    query = np.asarray([0.0, 10.0, 40.0, 65.0, 90.0, 100.0, 150.0])
    got = np.asarray(at_times(query, t_rows, valid, values))
    keep = np.asarray(valid)
    for column in range(2):
        expected = np.interp(query, np.asarray(t_rows)[keep], np.asarray(values)[keep, column])
        np.testing.assert_allclose(got[:, column], expected, rtol=1e-6)


def test_maps_conserve_li_against_the_charge_passed(exact):
    """The maps (float64): uniform x0 = 0.95 at t = 0 on every pixel in front of the
    particle, and the Li the thickness-weighted maps lose up to each map time equals the
    charge passed, c_max h³ Σ_p (P(0) − P(t)) T(p) = I t / F (2C charge for 2 min, then
    the rest), to 1e-6 relative."""
    resolved, model, (_, _, maps, _), _ = exact
    maps = maps.reshape((EXACT_MAPS.size,) + model.image_shape)
    active = np.asarray(resolved.geometry.active)
    thickness = thickness_image(model.operator, active)
    np.testing.assert_allclose(maps[0][thickness > 0], 0.95, rtol=1e-12)
    p = resolved.params
    volume = resolved.geometry.voxel_size_m ** 3
    for k, t in enumerate(EXACT_MAPS):
        li_lost = float(p.c_max_mol_m3) * volume * np.sum((maps[0] - maps[k]) * thickness)
        charge = 2.0 * float(p.one_c_A) * min(t, 120.0) / FARADAY
        assert li_lost == pytest.approx(charge, rel=1e-6, abs=1e-30), (t, li_lost, charge)


def test_map_jacobian_matches_central_differences(exact):
    """∂P/∂ln i0 and ∂P/∂ln D of every map pixel (forward mode, float64) equal central
    differences (step 1e-4 in ln θ, within one branch of the step sequence) to 1e-4
    relative of the column's largest entry."""
    _, _, (_, _, _, jac), fd = exact
    for k in range(2):
        scale = np.max(np.abs(jac[:, k]))
        assert scale > 1e-4  # both parameters move the maps
        np.testing.assert_allclose(jac[:, k], fd[:, k], rtol=0, atol=1e-4 * scale)


def test_fit_recovers_exchange_current_and_diffusivity_from_voltage_and_maps(cell):
    """V(t) (31 samples, 0.5 mV noise) and four projections along x (0.002 noise in x)
    of a 2C charge and rest with i0 = 2 A/m², D1 = D2 = 2e-14 m²/s; from i0 = 1,
    D = 1e-14 the joint fit (forward-mode Gauss–Newton in ln θ) recovers both within
    3 Laplace standard deviations + 1 %, calls both determined, leaves residuals at the
    noise, and the maps narrow D's relative std by more than 1.5× against V(t) alone."""
    resolved, model, (v, _, maps, _) = cell
    rng = np.random.default_rng(0)
    noisy_v = v + rng.normal(0.0, SIGMA_V, v.shape)
    measured = MeasuredMaps(maps=maps.reshape((T_MAPS.size,) + model.image_shape)
                            + rng.normal(0.0, SIGMA_MAP, (T_MAPS.size,) + model.image_shape),
                            t_s=T_MAPS, pixel_size_m=resolved.geometry.voxel_size_m, kind="projection",
                            beam_axis=0, noise_std=SIGMA_MAP)
    fit = fit_voltage_curve(resolved, T, noisy_v, {"exchange_current": (1.0, 0.05, 20.0),
                                                   "diffusivity_in_plane": (1e-14, 1e-15, 4e-14)},
                            n_steps=N_STEPS, sigma_V=SIGMA_V, max_iterations=30, curve_model=model,
                            maps=measured)
    assert fit.success, fit.message
    for name, truth in TRUTH.items():
        error = abs(fit.values[name] / truth - 1)
        assert error < 3 * fit.relative_std[name] + 0.01, (name, fit.values[name], fit.relative_std[name])
        assert fit.determined[name] and fit.relative_std[name] < 0.1
    assert fit.rms_V < 1e-3 and fit.rms_map < 1.5 * SIGMA_MAP  # the noise levels, not a misfit
    assert fit.n_map_pixels == T_MAPS.size * int(model.visible.sum())
    d = "diffusivity_in_plane"
    assert fit.relative_std_voltage_only[d] > 1.5 * fit.relative_std[d], (fit.relative_std_voltage_only,
                                                                          fit.relative_std)


def test_bad_fit_inputs(cell):
    resolved, model, _ = cell
    t = np.linspace(0, 100, 5)
    with pytest.raises(ConfigError, match="free parameter 'k' is unknown"):
        fit_voltage_curve(resolved, t, t, {"k": (1.0, 0.1, 10.0)}, n_steps=4)
    with pytest.raises(ConfigError, match="need 0 < low ≤ start ≤ high"):
        fit_voltage_curve(resolved, t, t, {"exchange_current": (20.0, 0.1, 10.0)}, n_steps=4)
    with pytest.raises(ConfigError, match="cannot reach the last measured time"):
        fit_voltage_curve(resolved, np.linspace(0, 1000, 5), t, {"exchange_current": (1.0, 0.1, 10.0)}, n_steps=4)
    with pytest.raises(ConfigError, match="must be equal 1D arrays"):
        fit_voltage_curve(resolved, t, t[:3], {"exchange_current": (1.0, 0.1, 10.0)}, n_steps=4)
    h = resolved.geometry.voxel_size_m
    free = {"exchange_current": (1.0, 0.1, 10.0)}

    def maps(shape=(19, 16), t_s=(0.0, 60.0), axis=0, pixel=h, noise=0.01):
        return MeasuredMaps(maps=np.full((len(t_s),) + shape, 0.9), t_s=np.asarray(t_s), pixel_size_m=pixel,
                            kind="projection", beam_axis=axis, noise_std=noise)

    with pytest.raises(ConfigError, match=r"maps shape \(19, 19\).*grid \(19, 19, 16\).*beam axis 0.*\(19, 16\)"):
        fit_voltage_curve(resolved, t, t, free, n_steps=4, maps=maps(shape=(19, 19)))
    with pytest.raises(ConfigError, match=r"maps.t_s = \[0.0, 400.0\] s: the last map is beyond"):
        fit_voltage_curve(resolved, t, t, free, n_steps=4, maps=maps(t_s=(0.0, 400.0)))
    with pytest.raises(ConfigError, match="sigma_map = None"):
        fit_voltage_curve(resolved, t, t, free, n_steps=4, maps=maps(noise=None))
    with pytest.raises(ConfigError, match="pixel_size_m"):
        fit_voltage_curve(resolved, t, t, free, n_steps=4, maps=maps(pixel=1.5 * h))
    with pytest.raises(ConfigError, match="do not match the maps of this fit"):
        fit_voltage_curve(resolved, T, T, {"exchange_current": (1.0, 0.1, 10.0),
                                           "diffusivity_in_plane": (1e-14, 1e-15, 4e-14)},
                          n_steps=N_STEPS, curve_model=model, maps=maps())
    # a cell whose active material no pixel sees thickly enough
    with pytest.raises(ConfigError, match="no pixel .* sees active material"):
        cell_map_operator(resolved, maps(), min_thickness_voxels=100.0)

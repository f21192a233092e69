"""Fitting the debonding interface (σc, Gc, g0) to V(t) through the coupled cycle
(engine.inverse.voltage_fit with the FreeParameter names of engine.inverse.parameters;
docs/interfaces.md, "Fitting the interface")."""

import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.errors import ConfigError
from ssbx.engine.inverse.parameters import PARAMETERS, FreeParameter
from ssbx.engine.inverse.voltage_fit import VoltageCurveModel, fit_voltage_curve
from ssbx.engine.model.resolve import resolve_cell
from ssbx.engine.solve.rollout import step_budget

from test_cell import SMALL

B = 0.05  # isotropic chemical expansion per unit x: the interface opens part-way through the charge
SIGMA_C = 150e6  # the true interface strength, Pa
CELL = dict(
    SMALL,
    mechanics={"enabled": True, "electrolyte_material": "LLZO", "expansion": [B, B, B], "tol": 1e-6},
    electrochemistry={"time_step_s": 60.0, "interface_resistance_ohm_m2": 1e-3},
    protocol={"kind": "cycling", "steps": ["charge at 2C until 4.3 V or 7 min"]},
    interface={"enabled": True, "strength_Pa": SIGMA_C, "fracture_energy_J_m2": 0.1, "gap_decay_length_m": 2e-9,
               "update_every_steps": 1, "max_damage_increment": 1.0},
)
N_STEPS = 8
T = np.linspace(0.0, 420.0, 15)


def test_interface_parameters_are_free_parameters_of_the_cell_fit():
    """The names exist with log-type transforms and default bounds start/10 … start·10; the
    particle SOC-map fit (no interface) refuses them."""
    p = FreeParameter("interface_strength", 80e6)
    assert (p.lower, p.upper, p.transform) == (8e6, 8e8, "log-sigmoid")
    assert p.to_physical(p.to_unconstrained(150e6)) == pytest.approx(150e6, rel=1e-6)
    for name, unit in (("fracture_energy", "J/m²"), ("gap_decay_length", "m")):
        assert PARAMETERS[name].unit == unit and FreeParameter(name, 1.0).transform == "log-sigmoid"
    with pytest.raises(ConfigError, match="parameters.interface_strength.start = -1.0: must be > 0"):
        FreeParameter("interface_strength", -1.0)
    with pytest.raises(ConfigError, match="'gap_decay_length' is a parameter of the cell's debonding interface"):
        PARAMETERS["gap_decay_length"].apply(None, 1e-9)


def test_interface_parameters_need_an_interface_and_a_valid_law():
    t = np.linspace(0.0, 120.0, 5)
    bonded = resolve_cell(scenario_from_dict(dict(CELL, interface={"enabled": False})), jnp.float32)
    with pytest.raises(ConfigError, match=r"'interface_strength': the scenario has no debonding interface "
                                          r"\(interface.enabled = false\)"):
        fit_voltage_curve(bonded, t, t, [FreeParameter("interface_strength", 80e6)], n_steps=4)
    resolved = resolve_cell(scenario_from_dict(CELL), jnp.float32)
    # σc up to 2 GPa with Gc = 0.1 J/m²: σc² > 2 Gc K0 = 2e18 Pa²
    with pytest.raises(ConfigError, match=r"breaks the cohesive law's σc² < 2 Gc K0 .* valid: σc < 1.41e\+09 Pa"):
        fit_voltage_curve(resolved, t, t, [FreeParameter("interface_strength", 80e6, 1e7, 2e9)], n_steps=4)
    with pytest.raises(ConfigError, match="'fracture_energy' is given twice"):
        fit_voltage_curve(resolved, t, t, [FreeParameter("fracture_energy", 0.1)] * 2, n_steps=4)
    with pytest.raises(ConfigError, match="derivatives = 'sideways'"):
        fit_voltage_curve(resolved, t, t, [FreeParameter("fracture_energy", 0.1)], n_steps=4, derivatives="sideways")


def test_fit_recovers_the_interface_strength_from_a_voltage_curve(x64):
    """Synthetic V(t) (15 samples over a 7 min 2C charge, 0.5 mV noise) of the small
    coupled cell with σc = 150 MPa: the interface starts to open after about 3.5 min and
    is part-damaged at the end, where V(t) climbs with the gap-dependent resistance.
    Its forward-mode Jacobian matches central differences; from σc = 80 MPa the
    Gauss–Newton fit (float64) recovers σc within 10 % and within 3 Laplace standard
    deviations + 1 %, and calls it determined."""
    resolved = resolve_cell(scenario_from_dict(CELL), jnp.float64)
    model = VoltageCurveModel(resolved, ["interface_strength"], T, N_STEPS, step_budget(resolved, 1.01))
    v_true, dv = model.at({"interface_strength": SIGMA_C})
    # the run covers the whole window (a constant-current charge: V rises at every sample;
    # a run that stopped early would hold its last voltage) ...
    assert np.all(np.diff(v_true) > 1e-3)
    # ... and σc is identifiable: the curve moves by many noise levels per unit log σc
    # late in the charge, and not at all before the interface opens
    assert np.max(np.abs(dv)) > 2e-2 and np.all(np.abs(dv[:6]) < 1e-6)
    # the forward-mode Jacobian the fit uses vs a central difference in ln σc (the primal
    # of the same compiled pass; no step is cut, max_damage_increment = 1). The implicit
    # derivatives assume converged solves; at the elastic CG tolerance 1e-6 and the
    # default potential-solver tolerances used here they differ by 0.15 % (measured; benchmarks/debonding_gradient.py, at
    # 1e-10, agrees to 4e-6)
    h = 1e-4
    v_plus, _ = model.at({"interface_strength": SIGMA_C * np.exp(h)})
    v_minus, _ = model.at({"interface_strength": SIGMA_C * np.exp(-h)})
    central = (v_plus - v_minus) / (2 * h)
    assert np.max(np.abs(central - dv[:, 0])) < 1e-2 * np.max(np.abs(dv))
    noisy = v_true + np.random.default_rng(1).normal(0.0, 5e-4, v_true.shape)
    fit = fit_voltage_curve(resolved, T, noisy, [FreeParameter("interface_strength", 80e6)], n_steps=N_STEPS,
                            sigma_V=5e-4, max_iterations=20, curve_model=model)
    sigma, std = fit.values["interface_strength"], fit.relative_std["interface_strength"]
    print(f"σc = {sigma / 1e6:.2f} MPa ± {100 * std:.2f} % (truth 150 MPa), {fit.evaluations} evaluations, "
          f"first {model.timings[0]:.1f} s (compile), then {fit.evaluation_s:.2f} s each; rms {fit.rms_V:.2e} V")
    assert fit.derivatives == "forward" and fit.success, fit.message
    assert abs(sigma / SIGMA_C - 1) < 0.1
    assert abs(sigma / SIGMA_C - 1) < 3 * std + 0.01
    assert fit.determined["interface_strength"] and std < 0.1
    assert fit.rms_V < 1e-3  # the noise level, not a misfit

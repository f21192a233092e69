"""Differentiating a whole cell protocol (engine.solve.rollout): jax.grad through the
adaptive steps, the Newton/BV potential solves, the diffusion and a located voltage
cut-off, against central finite differences in float64."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.solve.cell_step import initial_state
from ssbx.engine.model.resolve import resolve_cell
from ssbx.engine.solve.rollout import delivered_charge_C, rollout, step_budget

from test_cell import SMALL

# Δt = 50 s keeps Δt/Δt_stable off an integer, so that ±1e-5 in D does not change the
# number of diffusion sub-steps (a different branch of the discrete map). Newton runs to
# 1e-8 V, so that its iteration count, which may change with a perturbed parameter,
# changes V by far less than the finite differences resolve (~1e-22 V, not ~1e-10 V)
CUT = dict(SMALL, electrochemistry={"time_step_s": 50.0, "solver_rtol": 1e-12, "newton_tolerance_V": 1e-8,
                                    "interface_resistance_ohm_m2": 1e-3},
           protocol={"kind": "cycling", "steps": ["charge at 2C until 3.76 V"]})
# exchange current, R_int, D1 (D2 = D1 moves with it in the layered material), σ_e of the separator
NAMES = ("i0", "R_int", "D1", "sigma_e_separator")


def _with(params, values):
    p = eqx.tree_at(lambda q: q.exchange_current_A_m2, params, values[0])
    p = eqx.tree_at(lambda q: q.interface_resistance_ohm_m2, p, values[1])
    p = eqx.tree_at(lambda q: q.diffusivity_m2_s, p, p.diffusivity_m2_s.at[0].set(values[2]).at[1].set(values[2]))
    return eqx.tree_at(lambda q: q.phase_sigma_e, p, p.phase_sigma_e.at[2].set(values[3]))  # label 2: SE


def test_gradient_of_capacity_at_cut_off_and_voltage_misfit(x64):
    """Two scalars of a 2C charge to a 3.76 V cut-off: the charge delivered up to the
    located cut-off, and Σ (V − 3.8 V)² over the records. Their gradients w.r.t. i0,
    R_int, D1 and σ_e equal central differences (relative step 1e-5) to 1e-5."""
    r = resolve_cell(scenario_from_dict(CUT), jnp.float64)
    state = initial_state(r.geometry, r.params, r.x_initial, jnp.float64)
    budget = step_budget(r)

    def objectives(values):
        _, rec, valid = rollout(r.geometry, _with(r.params, values), r.numerics, r.protocol, state,
                                r.x_initial, n_steps=12, max_substeps=budget)
        misfit = jnp.sum(jnp.where(valid, (rec["voltage_V"] - 3.8) ** 2, 0.0))
        return jnp.stack([delivered_charge_C(rec, valid) * 1e9, misfit]), (rec, valid)

    v0 = jnp.asarray([float(r.params.exchange_current_A_m2), 1e-3, float(r.params.diffusivity_m2_s[0]),
                      float(r.params.phase_sigma_e[2])])
    f = jax.jit(objectives)
    value, (rec, valid) = f(v0)
    valid = np.asarray(valid)
    v = np.asarray(rec["voltage_V"])[valid]
    assert v[-1] == pytest.approx(3.76, abs=1e-4) and v[-2] < 3.76 - 1e-4  # the cut-off ends it
    assert int(valid.sum()) < 12  # the budget was not what stopped it
    jac = np.asarray(jax.jit(jax.jacrev(lambda x: objectives(x)[0]))(v0))
    for i, name in enumerate(NAMES):
        step = 1e-5 * float(v0[i])
        fd = (np.asarray(f(v0.at[i].add(step))[0]) - np.asarray(f(v0.at[i].add(-step))[0])) / (2 * step)
        for j in range(2):
            assert jac[j, i] == pytest.approx(fd[j], rel=1e-5), (name, j, jac[j, i], fd[j])
    assert np.all(np.abs(jac * np.asarray(v0)) > 1e-6 * np.abs(np.asarray(value))[:, None])  # none trivially zero

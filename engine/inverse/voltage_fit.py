"""Fit cell parameters to a measured voltage curve V(t), by gradients through the cycle.

The model voltage comes from :func:`~.rollout.rollout` (the protocol of the scenario,
a fixed step budget, differentiable end to end) and is interpolated linearly in time
at the measured times. The misfit is

    L(θ) = ½ Σ_m ((V(t_m; θ) − V_m) / σ_V)²,

minimised over the logarithms of the free parameters (positive by construction, and
of comparable scale) with L-BFGS-B inside the given bounds; ∇L is one reverse pass.
The uncertainty is Laplace's: the Gauss–Newton Hessian H = JᵀJ/σ_V² of the residuals
in log-parameters at the optimum, whose inverse is the covariance of log θ; a
parameter whose relative standard deviation exceeds 1 is reported as undetermined.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ssbx.engine.errors import ConfigError
from ssbx.engine.solve.cell_step import initial_state
from ssbx.engine.model.resolve import CellParams, ResolvedCell
from ssbx.engine.solve.rollout import record_times, rollout, step_budget


def _set_diffusivity(axes):
    def setter(p: CellParams, value):
        d = p.diffusivity_m2_s
        for a in axes:
            d = d.at[a].set(value)
        return eqx.tree_at(lambda q: q.diffusivity_m2_s, p, d)
    return setter


def _set_field(name):
    return lambda p, value: eqx.tree_at(lambda q: getattr(q, name), p, value)


def _set_phase_sigma_e(label):
    return lambda p, value: eqx.tree_at(lambda q: q.phase_sigma_e, p, p.phase_sigma_e.at[label].set(value))


# name -> (read from CellParams, write into CellParams); SI units
CELL_PARAMETERS = {
    "exchange_current": (lambda p: p.exchange_current_A_m2, _set_field("exchange_current_A_m2")),
    "diffusivity_in_plane": (lambda p: p.diffusivity_m2_s[0], _set_diffusivity((0, 1))),
    "diffusivity_c": (lambda p: p.diffusivity_m2_s[2], _set_diffusivity((2,))),
    "interface_resistance": (lambda p: p.interface_resistance_ohm_m2, _set_field("interface_resistance_ohm_m2")),
    "anode_exchange_current": (lambda p: p.anode_exchange_current_A_m2, _set_field("anode_exchange_current_A_m2")),
    "separator_ionic_conductivity": (lambda p: p.phase_sigma_e[2], _set_phase_sigma_e(2)),
}


@dataclasses.dataclass
class VoltageFit:
    """Result of :func:`fit_voltage_curve`: fitted values (SI), relative standard
    deviations (Laplace), whether each is determined, the final misfit L, the RMS
    residual (V), iterations and the optimiser's message."""

    values: dict
    relative_std: dict
    determined: dict
    loss: float
    rms_V: float
    iterations: int
    success: bool
    message: str


def model_voltage(resolved: ResolvedCell, params: CellParams, t_s, n_steps: int, max_substeps: int):
    """V(t) of the scenario's protocol at the times ``t_s`` (linear interpolation between
    the records; held at the ends)."""
    state = initial_state(resolved.geometry, params, resolved.x_initial, params.c_max_mol_m3.dtype)
    _, rec, valid = rollout(resolved.geometry, params, resolved.numerics, resolved.protocol, state,
                            resolved.x_initial, n_steps, max_substeps)
    t = record_times(rec, valid)
    last_t = jnp.max(jnp.where(valid, t, -jnp.inf))
    last_v = rec["voltage_V"][jnp.argmax(jnp.where(valid, t, -jnp.inf))]
    # rows that were not recorded go past the end, holding the last voltage
    order = jnp.arange(t.shape[0], dtype=t.dtype)
    t = jnp.where(valid, t, last_t + 1.0 + order)
    v = jnp.where(valid, rec["voltage_V"], last_v)
    return jnp.interp(jnp.asarray(t_s, t.dtype), t, v)


def fit_voltage_curve(resolved: ResolvedCell, t_s, voltage_V, free: dict, n_steps: int, sigma_V: float = 1e-3,
                      max_iterations: int = 60) -> VoltageFit:
    """Fit the parameters ``free`` = {name: (start, low, high)} (names of
    CELL_PARAMETERS, SI units) to the measured ``voltage_V`` at ``t_s``.

    ``n_steps`` is the step budget of the rollout (it must cover the measured time);
    ``sigma_V`` the voltage noise (V) that scales the misfit and the uncertainty.
    """
    from scipy.optimize import minimize

    for name, spec in free.items():
        if name not in CELL_PARAMETERS:
            raise ConfigError(f"free parameter {name!r} is unknown; valid: {sorted(CELL_PARAMETERS)}")
        start, low, high = spec
        if not 0 < low <= start <= high:
            raise ConfigError(f"free parameter {name}: need 0 < low ≤ start ≤ high, got {spec}")
    t_s = np.asarray(t_s, np.float64)
    voltage_V = np.asarray(voltage_V, np.float64)
    if t_s.shape != voltage_V.shape or t_s.ndim != 1 or t_s.size < len(free) + 1:
        raise ConfigError(f"measured curve: t_s {t_s.shape} and voltage_V {voltage_V.shape} must be equal 1D "
                          f"arrays with more points than free parameters ({len(free)})")
    names = list(free)
    dtype = resolved.params.c_max_mol_m3.dtype
    budget = step_budget(resolved, diffusivity_headroom=max(
        [free[n][2] / float(CELL_PARAMETERS[n][0](resolved.params)) for n in names if n.startswith("diffusivity")]
        + [1.0]) * 1.01)
    if float(np.max(t_s)) > n_steps * float(resolved.numerics.time_step_s):
        raise ConfigError(f"n_steps = {n_steps} steps of at most {float(resolved.numerics.time_step_s)} s cannot "
                          f"reach the last measured time {float(np.max(t_s))} s")

    def params_of(theta):
        p = resolved.params
        for name, value in zip(names, jnp.exp(theta)):
            p = CELL_PARAMETERS[name][1](p, value.astype(dtype))
        return p

    def residuals(theta):
        return (model_voltage(resolved, params_of(theta), t_s, n_steps, budget) - voltage_V) / sigma_V

    def loss(theta):
        r = residuals(theta)
        return 0.5 * jnp.sum(r * r)

    value_and_grad = jax.jit(jax.value_and_grad(loss))

    def fun(theta):
        value, grad = value_and_grad(jnp.asarray(theta, dtype))
        return float(value), np.asarray(grad, np.float64)

    theta0 = np.log([free[n][0] for n in names])
    bounds = [(np.log(free[n][1]), np.log(free[n][2])) for n in names]
    res = minimize(fun, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": max_iterations, "ftol": 1e-12, "gtol": 1e-8})
    theta = jnp.asarray(res.x, dtype)
    def residuals_and_value(theta):
        r = residuals(theta)
        return r, r

    # the Jacobian and the residuals from one compiled forward-mode pass
    jac, r = jax.jit(jax.jacfwd(residuals_and_value, has_aux=True))(theta)
    jac = np.asarray(jac, np.float64)
    hessian = jac.T @ jac
    cov = np.linalg.pinv(hessian)
    std = np.sqrt(np.maximum(np.diag(cov), 0.0))
    r = np.asarray(r) * sigma_V
    return VoltageFit(
        values={n: float(np.exp(v)) for n, v in zip(names, res.x)},
        relative_std={n: float(s) for n, s in zip(names, std)},
        determined={n: bool(s < 1.0) for n, s in zip(names, std)},
        loss=float(res.fun), rms_V=float(np.sqrt(np.mean(r * r))), iterations=int(res.nit),
        success=bool(res.success), message=str(res.message),
    )

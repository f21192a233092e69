"""Fit cell parameters to a measured voltage curve V(t), by gradients through the cycle.

The model voltage comes from :func:`~.rollout.rollout` (the protocol of the scenario,
a fixed step budget, differentiable end to end) and is interpolated linearly in time
at the measured times. The misfit is

    L(θ) = ½ Σ_m ((V(t_m; θ) − V_m) / σ_V)²,

minimised over the logarithms of the free parameters (positive by construction, and
of comparable scale) inside the given bounds. Two ways to the derivatives:

* ``derivatives="reverse"``: L-BFGS-B on L with ∇L from one reverse pass
  (jax.value_and_grad through the checkpointed rollout);
* ``derivatives="forward"``: a trust-region Gauss–Newton least-squares solve
  (scipy.optimize.least_squares, "trf", box bounds in log θ) with the Jacobian of the
  residuals from forward mode: one compiled Jacobian-vector product, called once per
  free parameter (its primal output is the residual vector). No transposes and no
  checkpointing are compiled, which makes the compile several times cheaper for a
  rollout with the interface solve (three CG solves per step; measured in
  benchmarks/debonding_gradient.py). The default ("auto") takes it for up to
  ``FORWARD_MAX_PARAMETERS`` = 3 free parameters (each evaluation costs one jvp per
  parameter), else L-BFGS-B. Measured on the 2-core CPU: the i0 + D fit of
  tests/test_fit_voltage.py takes 78 s of CPU in forward mode against 192 s in reverse
  mode, with the same result to 1 %.

The uncertainty is Laplace's: the Gauss–Newton Hessian H = JᵀJ/σ_V² of the residuals
in log-parameters at the optimum (J from the same forward-mode product), whose inverse
is the covariance of log θ; a parameter whose relative standard deviation exceeds 1 is
reported as undetermined.

The debonding parameters σc (``interface_strength``), Gc (``fracture_energy``) and g0
(``gap_decay_length``) need a scenario with ``[interface]`` (ConfigError otherwise); they
may be given as :class:`~ssbx.engine.inverse.parameters.FreeParameter` (default bounds
start/10 … start·10, or explicit ones). docs/interfaces.md ("Fitting the interface").
"""

from __future__ import annotations

import dataclasses
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ssbx.engine.errors import ConfigError
from ssbx.engine.inverse.parameters import FreeParameter
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


def _debonding(p: CellParams, name: str):
    if p.debonding is None:
        raise ConfigError(
            f"free parameter {name!r}: the scenario has no debonding interface (interface.enabled = false); "
            "valid only with [interface] enabled = true (and cell.enabled, mechanics.enabled = true)")
    return p.debonding


def _set_debonding(name, where):
    def setter(p: CellParams, value):
        _debonding(p, name)
        return eqx.tree_at(lambda q: where(q.debonding), p, value)
    return setter


def _strength(d):
    return d.cohesive.strength


def _fracture_energy(d):
    return d.cohesive.fracture_energy


def _gap_decay(d):
    return d.gap_decay_length_m


# name -> (read from CellParams, write into CellParams); SI units
CELL_PARAMETERS = {
    "exchange_current": (lambda p: p.exchange_current_A_m2, _set_field("exchange_current_A_m2")),
    "diffusivity_in_plane": (lambda p: p.diffusivity_m2_s[0], _set_diffusivity((0, 1))),
    "diffusivity_c": (lambda p: p.diffusivity_m2_s[2], _set_diffusivity((2,))),
    "interface_resistance": (lambda p: p.interface_resistance_ohm_m2, _set_field("interface_resistance_ohm_m2")),
    "anode_exchange_current": (lambda p: p.anode_exchange_current_A_m2, _set_field("anode_exchange_current_A_m2")),
    "separator_ionic_conductivity": (lambda p: p.phase_sigma_e[2], _set_phase_sigma_e(2)),
    # the debonding interface ([interface]): σc (Pa), Gc (J/m²), g0 (m)
    "interface_strength": (lambda p: _strength(_debonding(p, "interface_strength")),
                           _set_debonding("interface_strength", _strength)),
    "fracture_energy": (lambda p: _fracture_energy(_debonding(p, "fracture_energy")),
                        _set_debonding("fracture_energy", _fracture_energy)),
    "gap_decay_length": (lambda p: _gap_decay(_debonding(p, "gap_decay_length")),
                         _set_debonding("gap_decay_length", _gap_decay)),
}
DEBONDING_PARAMETERS = ("interface_strength", "fracture_energy", "gap_decay_length")
#: "auto" takes forward mode up to this many free parameters (one jvp per parameter and
#: evaluation; reverse mode pays one gradient per evaluation but a 4× dearer compile)
FORWARD_MAX_PARAMETERS = 3


@dataclasses.dataclass
class VoltageFit:
    """Result of :func:`fit_voltage_curve`: fitted values (SI), relative standard
    deviations (Laplace), whether each is determined, the final misfit L, the RMS
    residual (V), iterations and the optimiser's message; ``derivatives`` the mode used
    ("forward" or "reverse"), ``evaluations`` the forward-mode evaluations (V and its
    Jacobian; in reverse mode only the final one for the uncertainty),
    ``first_evaluation_s`` the wall time of the first (it includes the compile unless a
    compiled ``curve_model`` was passed) and ``evaluation_s`` the mean of the others (s)."""

    values: dict
    relative_std: dict
    determined: dict
    loss: float
    rms_V: float
    iterations: int
    success: bool
    message: str
    derivatives: str = "reverse"
    evaluations: int = 0
    first_evaluation_s: float = float("nan")
    evaluation_s: float = float("nan")


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


class VoltageCurveModel:
    """V(t_m; θ) at fixed times and its Jacobian ∂V/∂ log θ, from one compiled
    forward-mode pass (a Jacobian-vector product; one call per free parameter, whose
    primal output is V).

    Build it once and pass it to :func:`fit_voltage_curve` (``curve_model=``) to reuse
    the compiled pass, e.g. for synthetic data at the true values and then the fit.
    ``timings`` holds the wall time (s) of every evaluation; the first includes the
    compile.
    """

    def __init__(self, resolved: ResolvedCell, names, t_s, n_steps: int, max_substeps: int):
        self.resolved, self.names = resolved, tuple(names)
        self.t_s = np.asarray(t_s, np.float64)
        self.n_steps, self.max_substeps = int(n_steps), int(max_substeps)
        self.dtype = resolved.params.c_max_mol_m3.dtype
        self.timings = []
        self._jvp = jax.jit(lambda theta, tangent: jax.jvp(self.voltage, (theta,), (tangent,)))

    def params_of(self, theta):
        """CellParams with the free parameters at exp(θ) (θ: log values, SI)."""
        p = self.resolved.params
        for name, value in zip(self.names, jnp.exp(theta)):
            p = CELL_PARAMETERS[name][1](p, value.astype(self.dtype))
        return p

    def voltage(self, theta):
        return model_voltage(self.resolved, self.params_of(theta), self.t_s, self.n_steps, self.max_substeps)

    def __call__(self, theta):
        """(V at t_s in V, ∂V/∂θ (M, P) in V per unit log θ), numpy float64."""
        t0 = time.perf_counter()
        th = jnp.asarray(theta, self.dtype)
        cols, v = [], None
        for k in range(len(self.names)):
            v, col = self._jvp(th, jnp.zeros(len(self.names), self.dtype).at[k].set(1.0))
            cols.append(np.asarray(col, np.float64))
        out = np.asarray(v, np.float64), np.stack(cols, axis=1)
        self.timings.append(time.perf_counter() - t0)
        return out

    def at(self, values: dict):
        """(V, ∂V/∂ log θ) at physical values {name: value} of every free parameter."""
        return self(np.log([float(values[n]) for n in self.names]))


def _free_table(free) -> dict:
    """{name: (start, low, high)} from that dict itself or from FreeParameter objects
    (whose default bounds apply; a FreeParameter without bounds gives low = high = None)."""
    if isinstance(free, dict):
        return dict(free)
    table = {}
    for p in free:
        if not isinstance(p, FreeParameter):
            raise ConfigError(f"free parameters: {p!r} must be a FreeParameter or give a dict "
                              "{name: (start, low, high)}")
        if p.name in table:
            raise ConfigError(f"free parameters: {p.name!r} is given twice")
        if not p.spec.positive:
            raise ConfigError(f"free parameter {p.name!r}: the voltage fit takes positive parameters only")
        table[p.name] = (p.start, p.lower, p.upper)
    return table


def _check_debonding_bounds(resolved: ResolvedCell, free: dict):
    """The cohesive law needs δf = 2Gc/σc > δ0 = σc/K0, i.e. σc² < 2 Gc K0, at every
    corner of the bounds (CohesiveParams.check cannot see traced values)."""
    deb = resolved.params.debonding
    k0 = float(deb.cohesive.penalty_stiffness)
    s_hi = free["interface_strength"][2] if "interface_strength" in free else float(deb.cohesive.strength)
    g_lo = free["fracture_energy"][1] if "fracture_energy" in free else float(deb.cohesive.fracture_energy)
    if s_hi is None or g_lo is None:
        return
    if not s_hi * s_hi < 2.0 * g_lo * k0:
        raise ConfigError(
            f"free parameters: interface_strength up to {s_hi!r} Pa with fracture_energy down to {g_lo!r} J/m² "
            f"breaks the cohesive law's σc² < 2 Gc K0 (K0 = {k0:.3g} Pa/m); valid: σc < "
            f"{(2 * g_lo * k0) ** 0.5:.3g} Pa (narrow the bounds)")


def fit_voltage_curve(resolved: ResolvedCell, t_s, voltage_V, free, n_steps: int, sigma_V: float = 1e-3,
                      max_iterations: int = 60, derivatives: str = "auto",
                      curve_model: VoltageCurveModel | None = None) -> VoltageFit:
    """Fit the parameters ``free`` to the measured ``voltage_V`` at ``t_s``: a dict
    {name: (start, low, high)} (names of CELL_PARAMETERS, SI units) or a list of
    :class:`~ssbx.engine.inverse.parameters.FreeParameter` (the debonding parameters
    ``interface_strength``, ``fracture_energy``, ``gap_decay_length``).

    ``n_steps`` is the step budget of the rollout (it must cover the measured time);
    ``sigma_V`` the voltage noise (V) that scales the misfit and the uncertainty;
    ``derivatives`` "forward" (Gauss–Newton least squares, forward-mode Jacobian),
    "reverse" (L-BFGS-B, reverse-mode gradient) or "auto" (forward for at most
    FORWARD_MAX_PARAMETERS free parameters); ``max_iterations`` bounds the optimiser's iterations
    (L-BFGS-B) or model evaluations (least squares); ``curve_model`` a
    :class:`VoltageCurveModel` of the same free parameters, times and step budget whose
    compiled pass is reused (else one is built).
    """
    from scipy.optimize import least_squares, minimize

    free = _free_table(free)
    if not free:
        raise ConfigError(f"free parameters: give at least one; valid: {sorted(CELL_PARAMETERS)}")
    for name, spec in free.items():
        if name not in CELL_PARAMETERS:
            raise ConfigError(f"free parameter {name!r} is unknown; valid: {sorted(CELL_PARAMETERS)}")
        CELL_PARAMETERS[name][0](resolved.params)  # a debonding parameter without [interface] stops here
        start, low, high = spec
        if (low is None) != (high is None) or not (0 < start if low is None else 0 < low <= start <= high):
            raise ConfigError(f"free parameter {name}: need 0 < low ≤ start ≤ high, got {spec}")
    if derivatives not in ("auto", "forward", "reverse"):
        raise ConfigError(f"derivatives = {derivatives!r}: valid values 'auto', 'forward', 'reverse'")
    if derivatives == "auto":
        derivatives = "forward" if len(free) <= FORWARD_MAX_PARAMETERS else "reverse"
    if any(n in DEBONDING_PARAMETERS for n in free):
        _check_debonding_bounds(resolved, free)
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

    if curve_model is None:
        curve_model = VoltageCurveModel(resolved, names, t_s, n_steps, budget)
    elif (curve_model.names != tuple(names) or curve_model.n_steps != n_steps or curve_model.resolved is not resolved
          or curve_model.t_s.shape != t_s.shape or not np.array_equal(curve_model.t_s, t_s)
          or curve_model.max_substeps < budget):
        raise ConfigError(f"curve_model: built for {curve_model.names}, {curve_model.n_steps} steps, "
                          f"{curve_model.t_s.size} times, {curve_model.max_substeps} sub-steps; this fit needs "
                          f"{tuple(names)}, {n_steps} steps, these {t_s.size} times and ≥ {budget} sub-steps "
                          "of the same resolved cell")
    first = len(curve_model.timings)
    cache = {}

    def residuals_and_jacobian(theta):
        key = tuple(np.asarray(theta, np.float64))
        if key not in cache:
            v, dv = curve_model(theta)
            cache.clear()
            cache[key] = ((v - voltage_V) / sigma_V, dv / sigma_V)
        return cache[key]

    theta0 = np.log([free[n][0] for n in names])
    lows = [-np.inf if free[n][1] is None else np.log(free[n][1]) for n in names]
    highs = [np.inf if free[n][2] is None else np.log(free[n][2]) for n in names]
    if derivatives == "forward":
        res = least_squares(lambda th: residuals_and_jacobian(th)[0], theta0,
                            jac=lambda th: residuals_and_jacobian(th)[1], bounds=(lows, highs), method="trf",
                            max_nfev=max_iterations, ftol=1e-10, xtol=1e-8, gtol=1e-10)
        theta_hat, loss_hat, iterations = res.x, float(res.cost), int(res.nfev)
    else:
        def loss(theta):
            r = (curve_model.voltage(theta) - voltage_V) / sigma_V
            return 0.5 * jnp.sum(r * r)

        value_and_grad = jax.jit(jax.value_and_grad(loss))

        def fun(theta):
            value, grad = value_and_grad(jnp.asarray(theta, dtype))
            return float(value), np.asarray(grad, np.float64)

        bounds = [(None if np.isinf(lo) else lo, None if np.isinf(hi) else hi) for lo, hi in zip(lows, highs)]
        res = minimize(fun, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": max_iterations, "ftol": 1e-12, "gtol": 1e-8})
        theta_hat, loss_hat, iterations = res.x, float(res.fun), int(res.nit)
    r, jac = residuals_and_jacobian(theta_hat)
    timings = curve_model.timings[first:]
    hessian = jac.T @ jac
    cov = np.linalg.pinv(hessian)
    std = np.sqrt(np.maximum(np.diag(cov), 0.0))
    r = r * sigma_V
    return VoltageFit(
        values={n: float(np.exp(v)) for n, v in zip(names, theta_hat)},
        relative_std={n: float(s) for n, s in zip(names, std)},
        determined={n: bool(s < 1.0) for n, s in zip(names, std)},
        loss=loss_hat, rms_V=float(np.sqrt(np.mean(r * r))), iterations=iterations,
        success=bool(res.success), message=str(res.message), derivatives=derivatives,
        evaluations=len(timings), first_evaluation_s=timings[0],
        evaluation_s=float(np.mean(timings[1:])) if len(timings) > 1 else float("nan"),
    )

"""Fit cell parameters to a measured voltage curve V(t), and optionally SOC maps, by
gradients through the cycle.

The model voltage comes from :func:`~.rollout.rollout` (the protocol of the scenario,
a fixed step budget, differentiable end to end) and is interpolated linearly in time
at the measured times. With measured maps (``maps=``, engine.inverse.cell_maps) the
rollout also records, per row, the map of the active material's Li fraction x seen
through the measurement's observation operator (projection along the beam axis or
volume, at the measured pixel size), interpolated in time the same way. The misfit is

    L(θ) = ½ Σ_m ((V(t_m; θ) − V_m) / σ_V)²  +  ½ Σ_{k,p} ((P(p, t_k; θ) − P_k(p)) / σ_map)²,

the second sum over the usable pixels (finite, unmasked, in front of active material),
σ_V in V and σ_map in units of x; minimised over the logarithms of the free
parameters (positive by construction, and of comparable scale) inside the given
bounds. Two ways to the derivatives, both on the concatenated residual vector:

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
  parameter), else L-BFGS-B. Measured on the 2-core CPU: the i0 + D fit to V(t) alone
  that tests/test_fit_voltage.py made before the map term took 78 s of CPU in forward
  mode against 192 s in reverse mode, with the same result to 1 %.

The uncertainty is Laplace's: the Gauss–Newton Hessian H = JᵀJ of the scaled residuals
(V rows divided by σ_V, map rows by σ_map) in log-parameters at the optimum (J from the
same forward-mode product), whose inverse is the covariance of log θ; a parameter whose
relative standard deviation exceeds 1 is reported as undetermined. With maps the fit
also reports the standard deviations the V rows alone give at the same point.

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
from ssbx.engine.inverse.cell_maps import MAP_RECORD, at_times, check_maps, cell_map_operator, observe_map
from ssbx.engine.inverse.parameters import FreeParameter
from ssbx.engine.io.measurements import MeasuredMaps
from ssbx.engine.solve.cell_step import initial_state
from ssbx.engine.model.resolve import CellParams, ResolvedCell
from ssbx.engine.observables.observation import ObservationOperator
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
    compiled ``curve_model`` was passed) and ``evaluation_s`` the mean of the others (s).

    With maps: ``rms_map`` the RMS map residual over the usable pixels (units of x),
    ``n_map_pixels`` their number, and ``relative_std_voltage_only`` the Laplace
    relative standard deviations the V(t) rows of the same Jacobian give alone (what
    the fit would report without the maps, at the same point). ``names`` and
    ``covariance`` (of ln θ, Laplace, from all data terms) in either case."""

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
    rms_map: float = float("nan")
    n_map_pixels: int = 0
    relative_std_voltage_only: dict | None = None
    names: tuple = ()
    covariance: np.ndarray | None = None

    def correlation(self, a: str, b: str) -> float:
        """Laplace correlation of ln a and ln b (−1 … 1)."""
        i, j = self.names.index(a), self.names.index(b)
        c = self.covariance
        return float(c[i, j] / np.sqrt(c[i, i] * c[j, j]))


def model_observations(resolved: ResolvedCell, params: CellParams, t_s, n_steps: int, max_substeps: int,
                       map_t_s=None, operator: ObservationOperator | None = None, final=None):
    """The model's observations of the scenario's protocol: {"voltage_V": V at the times
    ``t_s`` (V)} and, with ``map_t_s`` and ``operator``, {"maps": the SOC maps of the
    active material at the times ``map_t_s`` (n_maps, *image), x dimensionless}; both
    linear interpolations in time between the rollout's rows (cell_maps.at_times).
    ``final`` (optional): a function of the final state returning a dict of more
    outputs (e.g. the interface's gap), merged in."""
    state = initial_state(resolved.geometry, params, resolved.x_initial, params.c_max_mol_m3.dtype)
    observe = None if map_t_s is None else observe_map(operator, resolved.geometry.active)
    end, rec, valid = rollout(resolved.geometry, params, resolved.numerics, resolved.protocol, state,
                              resolved.x_initial, n_steps, max_substeps, observe=observe)
    t = record_times(rec, valid)
    out = {"voltage_V": at_times(t_s, t, valid, rec["voltage_V"])}
    if map_t_s is not None:
        out["maps"] = at_times(map_t_s, t, valid, rec[MAP_RECORD])
    if final is not None:
        out.update(final(end))
    return out


def model_voltage(resolved: ResolvedCell, params: CellParams, t_s, n_steps: int, max_substeps: int):
    """V(t) of the scenario's protocol at the times ``t_s`` (linear interpolation between
    the records; held at the ends)."""
    return model_observations(resolved, params, t_s, n_steps, max_substeps)["voltage_V"]


class VoltageCurveModel:
    """V(t_m; θ) at fixed times, optionally the SOC maps at fixed map times, and their
    Jacobians ∂/∂ ln θ, from one compiled forward-mode pass (a Jacobian-vector product;
    one call per free parameter, whose primal output is V and the maps).

    Build it once and pass it to :func:`fit_voltage_curve` (``curve_model=``) to reuse
    the compiled pass, e.g. for synthetic data at the true values and then the fit.
    ``timings`` holds the wall time (s) of every evaluation; the first includes the
    compile.

    Maps: ``map_t_s`` (s) and ``operator`` (an ObservationOperator on the cell's grid,
    e.g. cell_maps.cell_map_operator of the measurement); the call then returns
    ``(V, ∂V/∂θ, maps, ∂maps/∂θ)`` with the maps flattened ((n_maps · n_pixels,) and
    (n_maps · n_pixels, P)). ``hold``: {name: value} of parameters among ``names`` held
    fixed (SI): they drop out of :attr:`names` (the free ones) and of the Jacobian, but
    stay inputs of the compiled pass, so one compile serves fits of any subset.
    ``evaluated`` keeps the primal outputs of every evaluation (see :meth:`outputs_at`).
    Subclasses may override :meth:`final_outputs` to return more outputs of the final
    state from the same pass.
    """

    def __init__(self, resolved: ResolvedCell, names, t_s, n_steps: int, max_substeps: int, map_t_s=None,
                 operator: ObservationOperator | None = None, hold: dict | None = None):
        self.resolved, self.all_names = resolved, tuple(names)
        self.t_s = np.asarray(t_s, np.float64)
        self.n_steps, self.max_substeps = int(n_steps), int(max_substeps)
        self.dtype = resolved.params.c_max_mol_m3.dtype
        for name in self.all_names:
            if name not in CELL_PARAMETERS:
                raise ConfigError(f"free parameter {name!r} is unknown; valid: {sorted(CELL_PARAMETERS)}")
        if (map_t_s is None) != (operator is None):
            raise ConfigError("maps: give both map_t_s and operator (or neither)")
        self.map_t_s = None if map_t_s is None else np.atleast_1d(np.asarray(map_t_s, np.float64))
        self.operator = operator
        if operator is not None:
            active = np.asarray(resolved.geometry.active)
            self.image_shape = operator.image_shape(active.shape)
            self.visible = operator.mask(active)
        self.hold = dict(hold or {})
        self.timings, self.evaluated = [], []
        self._jvp = jax.jit(lambda theta, tangent: jax.jvp(self.outputs, (theta,), (tangent,)))

    @property
    def names(self) -> tuple:
        """The free parameters (``names`` less those held)."""
        return tuple(n for n in self.all_names if n not in self.hold)

    def params_of(self, theta):
        """CellParams with the parameters ``names`` (all of them, held ones included) at
        exp(θ) (θ: log values, SI)."""
        p = self.resolved.params
        for name, value in zip(self.all_names, jnp.exp(theta)):
            p = CELL_PARAMETERS[name][1](p, value.astype(self.dtype))
        return p

    def full_theta(self, theta):
        """θ over all ``names`` from θ over the free ones and the held values."""
        free = iter(range(len(self.names)))
        theta = jnp.asarray(theta, self.dtype)
        return jnp.stack([jnp.asarray(np.log(self.hold[n]), self.dtype) if n in self.hold else theta[next(free)]
                          for n in self.all_names])

    def final_outputs(self, state) -> dict:
        """More outputs of the final state (none here; for subclasses)."""
        return {}

    def outputs(self, theta):
        """{"voltage_V", "maps" (with maps), **final_outputs} at θ over all ``names``."""
        return model_observations(self.resolved, self.params_of(theta), self.t_s, self.n_steps, self.max_substeps,
                                  self.map_t_s, self.operator, self.final_outputs)

    def voltage(self, theta):
        """V at t_s for θ over the free parameters (traceable)."""
        return self.outputs(self.full_theta(theta))["voltage_V"]

    def observed(self, theta):
        """V at t_s and then the flattened maps (with maps), θ over the free parameters
        (traceable; the reverse-mode fit differentiates it)."""
        out = self.outputs(self.full_theta(theta))
        if self.map_t_s is None:
            return out["voltage_V"]
        return jnp.concatenate([out["voltage_V"], out["maps"].reshape(-1)])

    def __call__(self, theta):
        """(V at t_s in V, ∂V/∂θ (M, P) in V per unit log θ) and, with maps, (maps (K,),
        ∂maps/∂θ (K, P)); numpy float64; θ over the free parameters."""
        t0 = time.perf_counter()
        full = self.full_theta(theta)
        free = [k for k, n in enumerate(self.all_names) if n not in self.hold]
        zero = jnp.zeros(len(self.all_names), self.dtype)
        cols = []
        for k in free or [None]:
            out, d_out = self._jvp(full, zero if k is None else zero.at[k].set(1.0))
            if k is not None:
                cols.append(d_out)
        out = {key: np.asarray(v, np.float64) for key, v in out.items()}
        self.evaluated.append((np.exp(np.asarray(full, np.float64)), out))
        jac = lambda key: (np.stack([np.asarray(c[key], np.float64).reshape(-1) for c in cols], axis=1)  # noqa: E731
                           if cols else np.zeros((out[key].size, 0)))
        result = (out["voltage_V"], jac("voltage_V"))
        if self.map_t_s is not None:
            result += (out["maps"].reshape(-1), jac("maps"))
        self.timings.append(time.perf_counter() - t0)
        return result

    def at(self, values: dict):
        """The call at physical values {name: value} of every free parameter."""
        return self(np.log([float(values[n]) for n in self.names]))

    def outputs_at(self, values: dict) -> dict:
        """The primal outputs (numpy: "voltage_V", "maps" as (n_maps, *image), and any of
        final_outputs) at physical ``values`` of the free parameters (held ones at
        their held values): from an earlier evaluation at these values if there was
        one, else from a new evaluation."""
        full = np.array([self.hold[n] if n in self.hold else float(values[n]) for n in self.all_names])
        for at, out in reversed(self.evaluated):
            if np.allclose(at, full, rtol=1e-9, atol=0):
                return out
        self.at(values)
        return self.evaluated[-1][1]


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
                      curve_model: VoltageCurveModel | None = None, maps: MeasuredMaps | None = None,
                      sigma_map: float | None = None, map_operator: ObservationOperator | None = None) -> VoltageFit:
    """Fit the parameters ``free`` to the measured ``voltage_V`` at ``t_s`` and, if given,
    to measured SOC ``maps``: ``free`` a dict {name: (start, low, high)} (names of
    CELL_PARAMETERS, SI units) or a list of
    :class:`~ssbx.engine.inverse.parameters.FreeParameter` (the debonding parameters
    ``interface_strength``, ``fracture_energy``, ``gap_decay_length``).

    ``n_steps`` is the step budget of the rollout (it must cover the measured times);
    ``sigma_V`` the voltage noise (V) that scales the misfit and the uncertainty;
    ``derivatives`` "forward" (Gauss–Newton least squares, forward-mode Jacobian),
    "reverse" (L-BFGS-B, reverse-mode gradient) or "auto" (forward for at most
    FORWARD_MAX_PARAMETERS free parameters); ``max_iterations`` bounds the optimiser's iterations
    (L-BFGS-B) or model evaluations (least squares); ``curve_model`` a
    :class:`VoltageCurveModel` of the same free parameters, times and step budget (and
    map times and operator with maps) whose compiled pass is reused (else one is built).

    ``maps``: :class:`~ssbx.engine.io.measurements.MeasuredMaps` of the active
    material's Li fraction (projections along a beam axis of the cell grid, or volumes)
    at ``maps.t_s``; the misfit gains ½ Σ ((P − P_m)/σ_map)² over the usable pixels
    (engine.inverse.cell_maps). ``sigma_map`` the map noise (units of x; default
    ``maps.noise_std``); ``map_operator`` the observation operator (default
    cell_maps.cell_map_operator of the maps: their kind, beam axis and pixel size, no
    registration shift).
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
    n_data = t_s.size + (0 if maps is None else int(maps.mask.sum()))
    if t_s.shape != voltage_V.shape or t_s.ndim != 1 or t_s.size < 1 or n_data < len(free) + 1:
        raise ConfigError(f"measured curve: t_s {t_s.shape} and voltage_V {voltage_V.shape} must be equal 1D "
                          f"arrays with more points (with the map pixels) than free parameters ({len(free)})")
    if not (np.isfinite(sigma_V) and sigma_V > 0):
        raise ConfigError(f"sigma_V = {sigma_V!r}: must be a finite number > 0 (V)")
    names = list(free)
    dtype = resolved.params.c_max_mol_m3.dtype
    budget = step_budget(resolved, diffusivity_headroom=max(
        [free[n][2] / float(CELL_PARAMETERS[n][0](resolved.params)) for n in names if n.startswith("diffusivity")]
        + [1.0]) * 1.01)
    horizon = n_steps * float(resolved.numerics.time_step_s)
    if float(np.max(t_s)) > horizon:
        raise ConfigError(f"n_steps = {n_steps} steps of at most {float(resolved.numerics.time_step_s)} s cannot "
                          f"reach the last measured time {float(np.max(t_s))} s")

    usable, map_data = None, None
    if maps is not None:
        if not isinstance(maps, MeasuredMaps):
            raise ConfigError(f"maps: {type(maps).__name__} given; valid: a MeasuredMaps "
                              "(engine.io.measurements) or None")
        sigma_map = maps.noise_std if sigma_map is None else sigma_map
        if sigma_map is None or not (np.isfinite(sigma_map) and sigma_map > 0):
            raise ConfigError(f"sigma_map = {sigma_map!r}: the map noise must be a finite number > 0 (units of "
                              "the Li fraction x); give sigma_map or maps.noise_std")
        if float(np.max(maps.t_s)) > horizon:
            raise ConfigError(f"maps.t_s = {maps.t_s.tolist()} s: the last map is beyond the {n_steps} steps of at "
                              f"most {float(resolved.numerics.time_step_s)} s ({horizon} s); valid: times ≤ "
                              f"{horizon} s (or raise n_steps)")
        if map_operator is None:
            map_operator = curve_model.operator if curve_model is not None and curve_model.operator is not None \
                else cell_map_operator(resolved, maps)
        usable = check_maps(resolved, map_operator, maps).reshape(-1)
        map_data = maps.maps.reshape(-1)[usable]

    if curve_model is None:
        curve_model = VoltageCurveModel(resolved, names, t_s, n_steps, budget,
                                        map_t_s=None if maps is None else maps.t_s, operator=map_operator)
    else:
        model_maps = getattr(curve_model, "map_t_s", None)
        if (tuple(curve_model.names) != tuple(names) or curve_model.n_steps != n_steps
                or curve_model.resolved is not resolved or curve_model.t_s.shape != t_s.shape
                or not np.array_equal(curve_model.t_s, t_s) or curve_model.max_substeps < budget):
            raise ConfigError(f"curve_model: built for {tuple(curve_model.names)}, {curve_model.n_steps} steps, "
                              f"{curve_model.t_s.size} times, {curve_model.max_substeps} sub-steps; this fit needs "
                              f"{tuple(names)}, {n_steps} steps, these {t_s.size} times and ≥ {budget} sub-steps "
                              "of the same resolved cell")
        if maps is not None and (model_maps is None or model_maps.shape != maps.t_s.shape
                                 or not np.allclose(model_maps, maps.t_s, rtol=1e-12, atol=0)
                                 or curve_model.operator != map_operator):
            raise ConfigError(
                "curve_model: its map times " + ("(none)" if model_maps is None else f"{model_maps.tolist()} s")
                + f" and operator do not match the maps of this fit ({maps.t_s.tolist()} s); build it with "
                "map_t_s=maps.t_s and the fit's operator (cell_maps.cell_map_operator); a model with maps "
                "also serves a fit without them")
    first = len(curve_model.timings)
    data = voltage_V if maps is None else np.concatenate([voltage_V, map_data])
    scale = np.full(data.shape, float(sigma_V))
    if maps is not None:
        scale[t_s.size:] = float(sigma_map)
    index = None if maps is None else np.concatenate([np.arange(t_s.size), t_s.size + np.flatnonzero(usable)])
    cache = {}

    def observed(theta):
        """(y, ∂y/∂θ): V and the usable map pixels, numpy."""
        out = curve_model(theta)
        if maps is None:
            return out[0], out[1]
        v, dv, m, dm = out
        return np.concatenate([v, m[usable]]), np.concatenate([dv, dm[usable]])

    def residuals_and_jacobian(theta):
        key = tuple(np.asarray(theta, np.float64))
        if key not in cache:
            y, dy = observed(theta)
            cache.clear()
            cache[key] = ((y - data) / scale, dy / scale[:, None])
        return cache[key]

    theta0 = np.log([free[n][0] for n in names])
    lows = [-np.inf if free[n][1] is None else np.log(free[n][1]) for n in names]
    highs = [np.inf if free[n][2] is None else np.log(free[n][2]) for n in names]
    if derivatives == "forward":
        res = least_squares(lambda th: residuals_and_jacobian(th)[0], theta0,
                            jac=lambda th: residuals_and_jacobian(th)[1], bounds=(lows, highs), method="trf",
                            max_nfev=max_iterations, ftol=1e-8, xtol=1e-6, gtol=1e-10)
        theta_hat, loss_hat, iterations = res.x, float(res.cost), int(res.nfev)
    else:
        data_j, scale_j = jnp.asarray(data, dtype), jnp.asarray(scale, dtype)
        index_j = None if index is None else jnp.asarray(index)

        def loss(theta):
            y = curve_model.observed(theta) if maps is not None else curve_model.voltage(theta)
            if index_j is not None:
                y = y[index_j]
            r = (y - data_j) / scale_j
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
    cov = np.linalg.pinv(jac.T @ jac)
    std = np.sqrt(np.maximum(np.diag(cov), 0.0))
    n_v = t_s.size
    r_v = r[:n_v] * sigma_V
    extra = {}
    if maps is not None:
        r_m = r[n_v:] * sigma_map
        std_v = np.sqrt(np.maximum(np.diag(np.linalg.pinv(jac[:n_v].T @ jac[:n_v])), 0.0))
        extra = dict(rms_map=float(np.sqrt(np.mean(r_m * r_m))), n_map_pixels=int(r_m.size),
                     relative_std_voltage_only={n: float(s) for n, s in zip(names, std_v)})
    return VoltageFit(
        values={n: float(np.exp(v)) for n, v in zip(names, theta_hat)},
        relative_std={n: float(s) for n, s in zip(names, std)},
        determined={n: bool(s < 1.0) for n, s in zip(names, std)},
        loss=loss_hat, rms_V=float(np.sqrt(np.mean(r_v * r_v))), iterations=iterations,
        success=bool(res.success), message=str(res.message), derivatives=derivatives,
        evaluations=len(timings), first_evaluation_s=timings[0],
        evaluation_s=float(np.mean(timings[1:])) if len(timings) > 1 else float("nan"),
        names=tuple(names), covariance=cov, **extra,
    )

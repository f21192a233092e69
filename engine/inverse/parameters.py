"""Fittable model parameters: one table entry each, with reparameterisations.

A fit works on *unconstrained* coordinates u ∈ ℝ (what the optimiser moves) and maps
them to *physical* values v by a fixed transform chosen from the bounds:

=====================  ===============================================  ===================
bounds                 v(u)                                              u at the start v0
=====================  ===============================================  ===================
positive, no bounds    v = v0 · exp(u)                        (log)      0
positive, [lo, hi]     v = exp(ln lo + (ln hi − ln lo) · σ(u))  (log-sigmoid)  logit of the fraction
real, [lo, hi]         v = lo + (hi − lo) · σ(u)              (sigmoid)  logit of the fraction
real, no bounds        v = v0 + s · u,  s = |v0| or 1         (affine)   0
=====================  ===============================================  ===================

with σ(u) = 1/(1 + e^−u). Positivity and bounds therefore hold by construction for
every u, and u is O(1) near the start, which suits Adam's per-coordinate step size.
For log-type transforms a step δu is a relative change of v, so an uncertainty in u
is (to first order) a relative uncertainty of v.

Adding a parameter
------------------
Each entry of :data:`PARAMETERS` says how a value enters the model: ``apply(inputs, v)``
returns a new :class:`ModelInputs` (an equinox pytree). The forward model only ever
sees ``ModelInputs``, so a new fittable quantity is one table entry — plus, for a new
physics block, a field in ``ModelInputs``. The chemical expansion β (``beta_in_plane``,
``beta_c``) acts through ``ModelInputs.mechanics``, the StressCoupling of a scenario with
``mechanics.couple_diffusion = true``; without it β does not reach the SOC maps and
selecting it raises ConfigError. The interface parameters (σc ``interface_strength``,
Gc ``fracture_energy``, g0 ``gap_decay_length``; ``cell=True``) belong to a cell with
``[interface]``: :func:`engine.inverse.voltage_fit.fit_voltage_curve` takes them as
FreeParameter and fits them through the coupled cycle; the particle SOC-map fit refuses
them with ConfigError.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ssbx.engine.errors import ConfigError
from ssbx.engine.model.particle import TransportParams


class ModelInputs(eqx.Module):
    """Everything a fittable parameter may change (a pytree).

    Attributes:
        transport: diffusivities, orientations, surface flux, c_max (model.py).
        mechanics: the StressCoupling (β, stiffness tables) when the scenario couples
            stress into diffusion (mechanics.couple_diffusion), else None.
    The interface parameters (σc, Gc, g0) live in a cell's CellParams.debonding and are
    fitted by engine.inverse.voltage_fit, not through ModelInputs.
    """

    transport: TransportParams
    mechanics: object = None  # engine.physics.mechanics.StressCoupling when stress is coupled


def _set_in_plane(inputs: ModelInputs, v):
    d = inputs.transport.diffusivity_m2_s
    return eqx.tree_at(lambda m: m.transport.diffusivity_m2_s, inputs, d.at[0].set(v).at[1].set(v))


def _set_c_axis(inputs: ModelInputs, v):
    d = inputs.transport.diffusivity_m2_s
    return eqx.tree_at(lambda m: m.transport.diffusivity_m2_s, inputs, d.at[2].set(v))


def _mechanics(inputs: ModelInputs, name: str):
    if inputs.mechanics is None:
        raise ConfigError(
            f"parameters: {name!r} changes the stress, which reaches the SOC maps only with "
            "mechanics.enabled = true and mechanics.couple_diffusion = true in the scenario"
        )
    return inputs.mechanics.beta


def _set_beta_in_plane(inputs: ModelInputs, v):
    beta = _mechanics(inputs, "beta_in_plane")
    return eqx.tree_at(lambda m: m.mechanics.beta, inputs, beta.at[0].set(v).at[1].set(v))


def _set_beta_c(inputs: ModelInputs, v):
    beta = _mechanics(inputs, "beta_c")
    return eqx.tree_at(lambda m: m.mechanics.beta, inputs, beta.at[2].set(v))


def _scale_flux(inputs: ModelInputs, v):
    j = inputs.transport.flux_mol_m2_s
    return eqx.tree_at(lambda m: m.transport.flux_mol_m2_s, inputs, j * v)


def _cell_only(name: str):
    def refuse(inputs: ModelInputs, v):
        raise ConfigError(
            f"parameters: {name!r} is a parameter of the cell's debonding interface ([interface] with "
            "cell.enabled = true and mechanics.enabled = true); fit it to V(t) of the cell cycle with "
            "engine.inverse.voltage_fit.fit_voltage_curve — the particle SOC-map fit has no interface"
        )
    return refuse


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    """One fittable parameter.

    Attributes:
        name: key used in fit files and results.
        unit: SI unit (text).
        description: what it is and where it enters (docs/physics.md section).
        positive: physically > 0 (log-type transforms).
        apply: ``apply(inputs, v) -> inputs``; applied to the *base* inputs once, so a
            multiplier multiplies the base value.
        diffusivity: the value is a principal diffusivity, so its upper bound limits the
            explicit time step (see fitting.forward_setup).
        default_bounds_factor: for diffusivities without explicit bounds, the fit uses
            [v0 / f, v0 · f]: an upper bound is needed to fix a stable time step.
        requires: if set, the coupling this parameter needs and that is not in the
            model yet (selecting it raises ConfigError).
        expansion: a chemical expansion coefficient; bounds are required, because
            |β| sets the stress coupling strength θ ∝ β² and so the stable time step.
        cell: a parameter of the cell's debonding interface ([interface]); it is fitted
            through the coupled cell cycle (engine.inverse.voltage_fit.fit_voltage_curve),
            and the particle SOC-map fit, which has no interface, refuses it.
    """

    name: str
    unit: str
    description: str
    positive: bool = True
    apply: Callable | None = None
    diffusivity: bool = False
    default_bounds_factor: float | None = None
    requires: str | None = None
    expansion: bool = False
    cell: bool = False


PARAMETERS: dict[str, ParameterSpec] = {
    spec.name: spec
    for spec in (
        ParameterSpec("D1", "m²/s", "in-plane principal diffusivity, D1 = D2 along [100], [010] (docs/physics.md §2)",
                      apply=_set_in_plane, diffusivity=True, default_bounds_factor=4.0),
        ParameterSpec("D3", "m²/s", "principal diffusivity along the c axis [001] (docs/physics.md §2)",
                      apply=_set_c_axis, diffusivity=True, default_bounds_factor=4.0),
        ParameterSpec("flux_scale", "1", "multiplier on the prescribed surface flux (later: on the "
                      "Butler–Volmer rate constant k), docs/physics.md §4 / S1", apply=_scale_flux),
        # Hooks: fittable once mechanics / debonding are coupled into the stepper.
        ParameterSpec("beta_in_plane", "1/(unit x)", "chemical expansion β1 = β2 per unit normalised Li "
                      "(docs/physics.md §5; enters through stress-assisted transport, §2)", positive=False,
                      apply=_set_beta_in_plane, expansion=True),
        ParameterSpec("beta_c", "1/(unit x)", "chemical expansion β3 along [001] per unit normalised Li "
                      "(docs/physics.md §5; enters through stress-assisted transport, §2)", positive=False,
                      apply=_set_beta_c, expansion=True),
        # Cell parameters of the debonding interface: fitted through the coupled cycle by
        # engine.inverse.voltage_fit.fit_voltage_curve, not by the particle SOC-map fit.
        ParameterSpec("interface_strength", "Pa", "cohesive strength σc of the particle | ion-conductor "
                      "interfaces, normal and shear (docs/interfaces.md)", apply=_cell_only("interface_strength"),
                      default_bounds_factor=10.0, cell=True),
        ParameterSpec("fracture_energy", "J/m²", "fracture energy Gc of the particle | ion-conductor "
                      "interfaces, modes I and II (docs/interfaces.md)", apply=_cell_only("fracture_energy"),
                      default_bounds_factor=10.0, cell=True),
        ParameterSpec("gap_decay_length", "m", "gap decay length g0 of R_int = R0 exp(g/g0) "
                      "(docs/interfaces.md)", apply=_cell_only("gap_decay_length"),
                      default_bounds_factor=10.0, cell=True),
    )
}


def get_spec(name: str, field: str = "parameters") -> ParameterSpec:
    if name not in PARAMETERS:
        raise ConfigError(f"{field}: unknown parameter {name!r}; valid: {sorted(PARAMETERS)}")
    spec = PARAMETERS[name]
    if spec.requires is not None:
        fittable = sorted(k for k, s in PARAMETERS.items() if s.requires is None)
        raise ConfigError(
            f"{field}: parameter {name!r} ({spec.description}) needs {spec.requires}, which the model "
            f"does not include yet; fittable now: {fittable}"
        )
    return spec


@dataclasses.dataclass(frozen=True)
class FreeParameter:
    """A parameter to fit: start value and optional bounds (physical units).

    The transform follows from ``positive`` and the bounds (module docstring). The
    start must lie strictly inside the bounds.
    """

    name: str
    start: float
    lower: float | None = None
    upper: float | None = None

    def __post_init__(self):
        spec = get_spec(self.name)
        field = f"parameters.{self.name}"
        start = _number(f"{field}.start", self.start)
        lower = None if self.lower is None else _number(f"{field}.lower", self.lower)
        upper = None if self.upper is None else _number(f"{field}.upper", self.upper)
        if spec.positive:
            if start <= 0:
                raise ConfigError(f"{field}.start = {start!r}: must be > 0 ({spec.unit})")
            if lower is not None and lower <= 0:
                raise ConfigError(f"{field}.lower = {lower!r}: must be > 0 for a positive quantity ({spec.unit})")
        if spec.default_bounds_factor is not None:
            f = spec.default_bounds_factor
            lower = start / f if lower is None else lower
            upper = start * f if upper is None else upper
        if spec.expansion and (lower is None or upper is None):
            raise ConfigError(f"{field}: give lower and upper bounds (|β| sets the stable time step)")
        if (lower is None) != (upper is None):
            if not spec.positive or upper is not None:
                raise ConfigError(f"{field}: give both lower and upper bounds, or neither")
            lower = None  # a positive quantity with only a lower bound: log transform
        if lower is not None and upper is not None:
            if not lower < upper:
                raise ConfigError(f"{field}: lower = {lower!r} must be < upper = {upper!r}")
            if not lower < start < upper:
                raise ConfigError(
                    f"{field}.start = {start!r}: must lie strictly inside the bounds ({lower!r}, {upper!r})"
                )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)

    @property
    def spec(self) -> ParameterSpec:
        return PARAMETERS[self.name]

    @property
    def transform(self) -> str:
        bounded = self.lower is not None and self.upper is not None
        if self.spec.positive:
            return "log-sigmoid" if bounded else "log"
        return "sigmoid" if bounded else "affine"

    def to_physical(self, u):
        """v(u) (jnp, differentiable)."""
        t = self.transform
        if t == "log":
            return self.start * jnp.exp(u)
        if t == "log-sigmoid":
            lo, hi = math.log(self.lower), math.log(self.upper)
            return jnp.exp(lo + (hi - lo) * jax.nn.sigmoid(u))
        if t == "sigmoid":
            return self.lower + (self.upper - self.lower) * jax.nn.sigmoid(u)
        return self.start + (abs(self.start) or 1.0) * u

    def to_unconstrained(self, v: float) -> float:
        """u(v) (float; v must be inside the bounds)."""
        t = self.transform
        if t == "log":
            return math.log(v / self.start)
        if t == "log-sigmoid":
            lo, hi = math.log(self.lower), math.log(self.upper)
            return _logit((math.log(v) - lo) / (hi - lo))
        if t == "sigmoid":
            return _logit((v - self.lower) / (self.upper - self.lower))
        return (v - self.start) / (abs(self.start) or 1.0)

    def at_bound(self, v: float, rtol: float = 1e-3) -> bool:
        """v within rtol of a bound (in the transform's own scale)."""
        if self.lower is None:
            return False
        if self.spec.positive:
            span = math.log(self.upper / self.lower)
            return min(math.log(v / self.lower), math.log(self.upper / v)) < rtol * span
        span = self.upper - self.lower
        return min(v - self.lower, self.upper - v) < rtol * span


def _logit(p: float) -> float:
    if not 0 < p < 1:
        raise ConfigError(f"value outside its bounds (fraction {p!r} of the bounded range)")
    return math.log(p / (1 - p))


def _number(field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{field} = {value!r}: must be a finite number")
    return float(value)


def apply_values(base: ModelInputs, values: dict) -> ModelInputs:
    """Model inputs with each named parameter set (physical values) on top of ``base``."""
    inputs = base
    for name, v in values.items():
        spec = get_spec(name)
        inputs = spec.apply(inputs, jnp.asarray(v, base.transport.diffusivity_m2_s.dtype))
    return inputs

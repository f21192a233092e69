"""Which surface grains are in ionic contact? A reactive mask fitted to SOC maps.

Problem
-------
The microstructure (grain ids, orientations) is known, e.g. from tomography; which
surface grains touch the ion conductor (exchange Li) is not. Each surface grain g gets
a weight w_g = σ(s_g) ∈ (0, 1) multiplying its reactive surface (kernels/contact.py);
the applied current fixes the particle's Li flow Ṅ = sign · C · c_max V / 3600 s, which
is redistributed over the weighted reactive area, j_v = w_g(v) Ṅ / A(w), so every mask
carries the same total current. With maps m_{b,k} along beam axes b at times t_k,

    L(s; λ) = (1/2N) Σ_{b,k,p} r_bkp(s)² + λ · (1/n_s) Σ_g w_g (1 − w_g),
    r_bkp = (A_b[x(t_k; w(s))]_p − m_bkp) / σ_b,

is minimised over the n_s logits s by L-BFGS (optax, as inverse/fitting.py), in stages
of increasing penalty weight λ (continuation, Bendsøe & Sigmund 2003 §1.5): the first
stage (λ = 0) lets the data place the weights, the later ones push them to 0 or 1.
A grain is classified reactive when w_g > 1/2.

Uncertainty
-----------
At the fitted weights the Gauss–Newton Hessian of ½Σr² in w, F = JᵀJ (J = ∂r/∂w by
forward mode, σ known or estimated as in fitting.laplace_uncertainty), gives the
Laplace standard deviation std(w_g) = √(F⁻¹)_gg (pseudo-inverse, directions with
λ < 1e-12 λ_max are infinitely uncertain). It is taken in w, not s, because σ'(s)
vanishes at a saturated weight. The maps depend on w only through w / A(w) (the flux
is homogeneous of degree 0 in w: the current is fixed), so the scaling direction w is
an exact null direction of F; F is inverted on its orthogonal complement, the scale
being fixed by the binarity of the mask. A grain is *determined* when 2 std(w_g) < 1/2: the
maps then tell contact from no contact at two standard deviations. Grains whose
surface is hidden in every projection, or too small to leave a trace, are reported
undetermined. The penalty is not part of F (it is a prior on binarity, not data).

Several projections (beam axes) can be fitted jointly: each has its own observation
operator and measurement; the rollout runs once and every operator observes it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssbx.kernels import contact as kcontact
from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.microstructure import Microstructure
from ssbx.engine.model.particle import ParticleGeometry, TransportParams, initial_state
from ssbx.engine.observables.observation import ObservationOperator
from ssbx.engine.io.measurements import MeasuredMaps
from ssbx.engine.inverse.fitting import FitDiverged, _fields, finite_json, make_setup

DEFAULT_PENALTY_SCHEDULE = (0.0, 0.1, 1.0)


# --------------------------------------------------------------------------- fit-file options

CONTACT_KINDS = ("per_surface_grain",)


@dataclasses.dataclass(frozen=True)
class ReactiveConfig:
    """``[parameters.reactive]`` of a fit file: the reactive mask as the free field.

    Attributes:
        kind: "per_surface_grain" (one weight per grain touching the ion conductor).
        start: the weight every grain starts from, in (0, 1) (the prior: 0.5 = no preference).
        penalty_schedule: binarity-penalty weights λ of the continuation stages, ≥ 0.
        iterations_per_stage: L-BFGS iteration limit per stage, ≥ 1.
        threshold: w above it is classified reactive, in (0, 1).
    """

    kind: str = "per_surface_grain"
    start: float = 0.5
    penalty_schedule: tuple = DEFAULT_PENALTY_SCHEDULE
    iterations_per_stage: int = 40
    threshold: float = 0.5

    def validate(self):
        f = "parameters.reactive"
        if self.kind not in CONTACT_KINDS:
            raise ConfigError(f"{f}.kind = {self.kind!r}: valid values are {list(CONTACT_KINDS)}")
        for name in ("start", "threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ConfigError(f"{f}.{name} = {v!r}: valid range is (0, 1), exclusive")
        sched = self.penalty_schedule
        if (not isinstance(sched, (list, tuple)) or not sched
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0)
                       for v in sched)):
            raise ConfigError(f"{f}.penalty_schedule = {sched!r}: give a list of ≥ 1 finite numbers ≥ 0")
        n = self.iterations_per_stage
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{f}.iterations_per_stage = {n!r}: must be an integer ≥ 1")


def reactive_config_from(value) -> ReactiveConfig:
    """A validated :class:`ReactiveConfig` from ``reactive = "per_surface_grain"`` or a table."""
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict):
        raise ConfigError(f"parameters.reactive = {value!r}: give \"per_surface_grain\" or a table "
                          "(kind, start, penalty_schedule, iterations_per_stage, threshold)")
    fields = {f.name for f in dataclasses.fields(ReactiveConfig)}
    unknown = sorted(set(value) - fields)
    if unknown:
        raise ConfigError(f"unknown key in [parameters.reactive] {unknown}; valid: {sorted(fields)}")
    cfg = ReactiveConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in value.items()})
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------- setup


@dataclasses.dataclass(frozen=True)
class ContactSetup:
    """The known part of a contact inversion: particle, transport, times, operators.

    Attributes:
        geometry: the particle with *every* surface grain's faces counted as reactive
            (the candidates); the weights decide which of them carry flux.
        transport: diffusivities, orientations and c_max (its flux leaf is replaced by
            the redistributed flux field in every simulation).
        li_flow_mol_s: applied Li flow into the particle Ṅ, mol/s (< 0 on charge).
        x0: initial Li content.
        t_s: observation times, s.
        segments, uniform: time stepping (as fitting.ForwardSetup).
        operators: one observation operator per measured map series.
        active: bool grid of active voxels.
        surface_grains: (n_s,) ids of the grains with a face on the ion conductor.
        surface_area_m2: (n_s,) their reactive surface area (staircase-corrected), m².
        max_diffusivity_m2_s: the diffusivity the time step is stable for.
    """

    geometry: ParticleGeometry
    transport: TransportParams
    li_flow_mol_s: float
    x0: jax.Array
    t_s: np.ndarray
    segments: tuple
    uniform: bool
    operators: tuple
    active: np.ndarray
    surface_grains: np.ndarray
    surface_area_m2: np.ndarray
    max_diffusivity_m2_s: float

    @property
    def n_surface(self) -> int:
        return int(self.surface_grains.size)

    @property
    def n_steps(self) -> int:
        return sum(s[0] for s in self.segments)

    def voxel_weights(self, weights) -> jax.Array:
        """Per-voxel weight: w of the voxel's surface grain, 1 for interior grains (no faces)."""
        n_grains = self.transport.orientations.shape[0]
        full = jnp.ones(n_grains, weights.dtype).at[jnp.asarray(self.surface_grains)].set(weights)
        gid = self.geometry.grain_id
        return jnp.where(gid >= 0, full[jnp.maximum(gid, 0)], 0.0)

    def flux_field(self, weights) -> jax.Array:
        """Redistributed flux density per voxel, mol/(m² s) (kernels.contact.redistributed_flux)."""
        g = self.geometry
        return kcontact.redistributed_flux(self.voxel_weights(weights), g.face_count,
                                           jnp.asarray(self.li_flow_mol_s, weights.dtype),
                                           g.voxel_size_m, g.ndim)

    def li_flow_of(self, weights) -> jax.Array:
        """Σ_v j_v a_v h^(d−1), mol/s: the Li flow the weighted flux field carries."""
        g = self.geometry
        return jnp.sum(self.flux_field(weights) * g.face_count) * g.voxel_size_m ** (g.ndim - 1)

    def fields(self, weights, adjoint: str = "symmetric") -> jax.Array:
        """x at the observation times, (n_times, *grid), for surface weights w."""
        # in the setup's dtype: an optimiser running with 64-bit JAX on may hand float64 weights
        flux = self.flux_field(weights).astype(self.x0.dtype)
        transport = eqx.tree_at(lambda t: t.flux_mol_m2_s, self.transport, flux)
        return _fields(self.geometry, transport, self.x0, self.segments, self.uniform, adjoint)

    def maps(self, weights, adjoint: str = "symmetric") -> list:
        """Observed maps, one (n_times, *image) array per operator."""
        fields = self.fields(weights, adjoint)
        active = jnp.asarray(self.active, fields.dtype)
        return [jax.vmap(lambda f, op=op: op(f, active))(fields) for op in self.operators]

    @functools.cached_property
    def compiled_maps(self):
        """:meth:`maps` compiled once per setup (synthetic data, fits and figures share it)."""
        return jax.jit(lambda w: self.maps(w))

    def surface_weights_of(self, reactive_grains) -> np.ndarray:
        """(n_s,) float weights of a per-grain bool mask (n_grains,) or a per-surface-grain one (n_s,)."""
        r = np.asarray(reactive_grains)
        n_grains = int(self.transport.orientations.shape[0])
        if r.shape == (n_grains,):
            r = r[self.surface_grains]
        elif r.shape != (self.n_surface,):
            raise ConfigError(
                f"reactive mask shape {r.shape}: expected ({n_grains},) per grain or ({self.n_surface},) "
                "per surface grain"
            )
        return r.astype(np.float64)


def make_contact_setup(
    micro: Microstructure,
    diffusivity_m2_s,
    c_max_mol_m3: float,
    x_initial: float,
    c_rate: float,
    sign: float,
    t_s: Sequence[float],
    operators: Sequence[ObservationOperator],
    dtype=jnp.float32,
    time_step_safety: float = 0.9,
    checkpoint_every="auto",
    max_time_step_s: float | None = None,
) -> ContactSetup:
    """A :class:`ContactSetup` for a known microstructure under a prescribed current.

    ``micro.reactive_grains`` is ignored (the mask is what is fitted): every surface
    grain is a candidate. ``c_rate`` (> 0) and ``sign`` (+1 lithiation, −1
    delithiation) give Ṅ = sign · C · c_max V_active / 3600 s, the flow of
    model.particle.galvanostatic_flux.
    """
    if not isinstance(micro, Microstructure):
        raise ConfigError(f"microstructure: expected a Microstructure, got {type(micro).__name__}")
    operators = tuple(operators)
    if not operators or not all(isinstance(op, ObservationOperator) for op in operators):
        raise ConfigError("operators: give at least one ObservationOperator (one per measured map series)")
    for name, value in (("c_rate", c_rate), ("c_max_mol_m3", c_max_mol_m3)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} = {value!r}: must be a finite number > 0")
    if sign not in (1, -1, 1.0, -1.0):
        raise ConfigError(f"sign = {sign!r}: valid values are +1 (lithiation) or -1 (delithiation)")
    if not (isinstance(x_initial, (int, float)) and 0 <= x_initial <= 1):
        raise ConfigError(f"x_initial = {x_initial!r}: valid range is [0, 1]")
    d = np.asarray(diffusivity_m2_s, np.float64)
    if d.shape != (3,) or not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise ConfigError(f"diffusivity_m2_s = {d.tolist()}: needs 3 finite values > 0 (D1, D2, D3) in m²/s")
    surface = np.flatnonzero(micro.surface_grains())
    if surface.size == 0:
        raise ConfigError("microstructure: no grain touches an ion conductor, so there is no contact to fit")
    full = dataclasses.replace(micro, reactive_grains=np.ones(micro.n_grains, dtype=bool))
    geometry = ParticleGeometry.from_microstructure(full, dtype)
    params = TransportParams(
        diffusivity_m2_s=jnp.asarray(d, dtype),
        orientations=jnp.asarray(micro.orientations, dtype),
        flux_mol_m2_s=jnp.asarray(0.0, dtype),
        c_max_mol_m3=jnp.asarray(c_max_mol_m3, dtype),
    )
    x0 = initial_state(geometry, x_initial, dtype)
    base = make_setup(geometry, params, x0, t_s, operators[0], time_step_safety=time_step_safety,
                      checkpoint_every=checkpoint_every, max_time_step_s=max_time_step_s)
    for op in operators[1:]:
        op.image_shape(base.active.shape)  # validates beam axis and pixel factor
    faces = np.asarray(geometry.face_count, np.float64)
    gid = np.asarray(micro.grain_id)
    area = np.array([faces[gid == g].sum() for g in surface]) * micro.voxel_size_m ** (micro.ndim - 1)
    li_flow = sign * c_rate * c_max_mol_m3 * micro.active_volume_m3() / 3600.0
    return ContactSetup(
        geometry=geometry, transport=params, li_flow_mol_s=float(li_flow), x0=x0, t_s=base.t_s,
        segments=base.segments, uniform=base.uniform, operators=operators, active=base.active,
        surface_grains=surface, surface_area_m2=area, max_diffusivity_m2_s=base.max_diffusivity_m2_s,
    )


def contact_setup_from_scenario(scenario, t_s, operators, microstructure: Microstructure | None = None,
                                checkpoint_every="auto") -> ContactSetup:
    """:func:`make_contact_setup` with material, C-rate, direction and numerics of a scenario
    (``particle.reactive_fraction`` is ignored: the mask is the unknown). Refused with
    ConfigError: a cycling (Butler–Volmer) protocol and stress-coupled diffusion."""
    from ssbx.engine.config.scenario import jnp_dtype
    from ssbx.engine.geometry.microstructure import build_microstructure

    if scenario.protocol.kind != "prescribed_flux":
        raise ConfigError(
            f"protocol.kind = {scenario.protocol.kind!r}: the reactive-contact fit needs 'prescribed_flux' "
            "(a per-grain mask under Butler–Volmer kinetics is not in the model yet)"
        )
    if scenario.mechanics.enabled and scenario.mechanics.couple_diffusion:
        raise ConfigError(
            "mechanics.couple_diffusion = true: the reactive-contact fit does not include stress-assisted "
            "transport yet; set it to false (the stress would otherwise be silently left out of the maps)"
        )
    micro = microstructure if microstructure is not None else build_microstructure(scenario)
    mat = scenario.material
    return make_contact_setup(
        micro, mat.resolved_diffusivity(), mat.resolved_c_max(), mat.x_initial, scenario.protocol.c_rate,
        scenario.protocol.sign, t_s, operators, jnp_dtype(scenario.run.dtype),
        time_step_safety=scenario.numerics.time_step_safety, checkpoint_every=checkpoint_every,
        max_time_step_s=scenario.numerics.max_time_step_s,
    )


def synthetic_contact_maps(setup: ContactSetup, reactive_grains, noise_std: float = 0.0,
                           seed: int = 0) -> list[MeasuredMaps]:
    """Synthetic measurements (one :class:`MeasuredMaps` per operator) of the forward model
    with the binary mask ``reactive_grains`` (per grain or per surface grain), plus
    Gaussian noise of ``noise_std`` (SOC units); unreliable pixels are NaN."""
    if not (isinstance(noise_std, (int, float)) and noise_std >= 0 and math.isfinite(noise_std)):
        raise ConfigError(f"noise_std = {noise_std!r}: must be a finite number ≥ 0")
    w = jnp.asarray(setup.surface_weights_of(reactive_grains), setup.x0.dtype)
    clean = setup.compiled_maps(w)
    rng = np.random.default_rng(seed)
    out = []
    for op, m in zip(setup.operators, clean):
        m = np.asarray(m, np.float64)
        noisy = m + noise_std * rng.standard_normal(m.shape)
        mask = np.broadcast_to(op.mask(setup.active), m.shape)
        out.append(MeasuredMaps(
            maps=np.where(mask, noisy, np.nan), t_s=np.asarray(setup.t_s),
            pixel_size_m=setup.geometry.voxel_size_m * op.factor, kind=op.kind,
            beam_axis=op.beam_axis if op.kind == "projection" else None,
            noise_std=noise_std if noise_std > 0 else None, source=f"synthetic (beam axis {op.beam_axis})",
        ))
    return out


# --------------------------------------------------------------------------- problem


class ContactProblem:
    """Measurements + setup -> residuals r(w) and the penalised loss L(s; λ)."""

    def __init__(self, setup: ContactSetup, measured: Sequence[MeasuredMaps]):
        measured = list(measured)
        if len(measured) != len(setup.operators):
            raise ConfigError(
                f"measurements: got {len(measured)} map series for {len(setup.operators)} observation "
                "operators; give one per operator, in the same order"
            )
        dtype = setup.x0.dtype
        index, data, sigma = [], [], []
        for i, (op, m) in enumerate(zip(setup.operators, measured)):
            if not isinstance(m, MeasuredMaps):
                raise ConfigError(f"measurements[{i}]: expected MeasuredMaps, got {type(m).__name__}")
            expected = op.image_shape(setup.active.shape)
            if m.maps.shape[1:] != expected:
                raise ConfigError(
                    f"measurements[{i}] maps shape {m.maps.shape[1:]} (from {m.source}) does not match the "
                    f"simulated {op.kind} shape {expected} (grid {setup.active.shape}, beam axis "
                    f"{op.beam_axis}, pixel factor {op.factor})"
                )
            if m.n_times != len(setup.t_s) or not np.allclose(m.t_s, setup.t_s):
                raise ConfigError(
                    f"measurements[{i}].t_s = {m.t_s.tolist()} differs from the setup times {setup.t_s.tolist()}"
                )
            mask = m.mask & op.mask(setup.active)[None]
            idx = np.flatnonzero(mask.reshape(-1))
            if idx.size == 0:
                raise ConfigError(f"measurements[{i}]: no pixel is both usable and inside the particle")
            index.append(idx)
            data.append(m.maps.reshape(-1)[idx])
            sigma.append(np.full(idx.size, m.noise_std if m.noise_std is not None else 1.0))
        self.setup = setup
        self.measured = measured
        self.noise_known = all(m.noise_std is not None for m in measured)
        self.index = index
        self._data = jnp.asarray(np.concatenate(data), dtype)
        self._sigma = jnp.asarray(np.concatenate(sigma), dtype)

    @property
    def n_pixels(self) -> int:
        return int(self._data.size)

    def residuals_of_weights(self, w, adjoint: str = "symmetric") -> jax.Array:
        """r(w), (N,): simulated − measured over usable pixels, in units of σ."""
        maps = self.setup.maps(w, adjoint)
        sim = jnp.concatenate([m.reshape(-1)[idx] for m, idx in zip(maps, self.index)])
        return (sim - self._data) / self._sigma

    def objective(self, s, penalty_weight) -> jax.Array:
        """L(s; λ) = ½ mean r² + λ · mean w(1 − w), w = σ(s)."""
        w = kcontact.contact_weights(s)
        r = self.residuals_of_weights(w)
        return 0.5 * jnp.mean(r**2) + penalty_weight * kcontact.binarity_penalty(w)

    def simulated_maps(self, w) -> list[np.ndarray]:
        """Simulated maps at weights w, one (n_times, *image) array per operator."""
        return [np.asarray(m, np.float64) for m in self.setup.compiled_maps(jnp.asarray(w, self.setup.x0.dtype))]

    def residuals_from_maps(self, maps) -> np.ndarray:
        """r (numpy, float64) of simulated maps (as :meth:`simulated_maps` returns them)."""
        sim = np.concatenate([np.asarray(m).reshape(-1)[idx] for m, idx in zip(maps, self.index)])
        return (sim - np.asarray(self._data, np.float64)) / np.asarray(self._sigma, np.float64)


# --------------------------------------------------------------------------- result


@dataclasses.dataclass
class ContactFit:
    """Outcome of :func:`fit_reactive_contact`: one row per surface grain.

    Attributes:
        grain_id: (n_s,) surface grain ids.
        weight: (n_s,) fitted w ∈ (0, 1).
        reactive: (n_s,) bool, w > threshold.
        true_reactive: (n_s,) bool truth when given, else None.
        std: (n_s,) Laplace standard deviation of w (inf: not constrained), or None.
        determined: (n_s,) bool, 2 std < 1/2, or None.
        area_m2: (n_s,) candidate reactive surface of each grain, m².
        history: per iteration {"iteration", "stage", "penalty_weight", "loss", "grad_norm"}.
        simulated: simulated maps at the fitted weights, one array per operator.
        data_loss: ½ mean r² at the fitted weights (no penalty).
        li_flow_mol_s: applied flow; li_flow_fitted_mol_s: flow carried by the fitted flux.
    """

    grain_id: np.ndarray
    weight: np.ndarray
    reactive: np.ndarray
    true_reactive: np.ndarray | None
    std: np.ndarray | None
    determined: np.ndarray | None
    area_m2: np.ndarray
    history: list
    simulated: list
    data_loss: float
    li_flow_mol_s: float
    li_flow_fitted_mol_s: float
    threshold: float = 0.5
    noise_std: float | None = None

    @property
    def accuracy(self) -> float | None:
        """Fraction of surface grains classified as the truth (None without truth)."""
        if self.true_reactive is None:
            return None
        return float(np.mean(self.reactive == self.true_reactive))

    @property
    def determined_accuracy(self) -> float | None:
        """Accuracy over the grains marked determined (None without truth or uncertainty)."""
        if self.true_reactive is None or self.determined is None or not self.determined.any():
            return None
        d = self.determined
        return float(np.mean(self.reactive[d] == self.true_reactive[d]))

    def table(self) -> list[dict]:
        rows = []
        for i, g in enumerate(self.grain_id):
            row = {"grain_id": int(g), "weight": float(self.weight[i]), "reactive": bool(self.reactive[i]),
                   "area_m2": float(self.area_m2[i])}
            if self.true_reactive is not None:
                row["true_reactive"] = bool(self.true_reactive[i])
                row["correct"] = bool(self.reactive[i] == self.true_reactive[i])
            if self.std is not None:
                row["std"] = float(self.std[i])
                row["determined"] = bool(self.determined[i])
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        out = {
            "n_surface_grains": int(self.grain_id.size),
            "n_reactive_fitted": int(self.reactive.sum()),
            "threshold": self.threshold,
            "accuracy": self.accuracy,
            "determined_accuracy": self.determined_accuracy,
            "n_determined": None if self.determined is None else int(self.determined.sum()),
            "data_loss": self.data_loss,
            "noise_std": self.noise_std,
            "li_flow_mol_s": self.li_flow_mol_s,
            "li_flow_fitted_mol_s": self.li_flow_fitted_mol_s,
            "n_iterations": len(self.history) - 1,
            "grains": self.table(),
        }
        return out

    def to_json(self) -> str:
        return json.dumps(finite_json(self.to_dict()), indent=2, sort_keys=True)


# --------------------------------------------------------------------------- optimise



def fit_reactive_contact(
    problem: ContactProblem,
    true_reactive=None,
    start_weight: float = 0.5,
    penalty_schedule: Sequence[float] = DEFAULT_PENALTY_SCHEDULE,
    iterations_per_stage: int = 40,
    threshold: float = 0.5,
    gtol: float = 1e-7,
    ftol: float = 1e-9,
    uncertainty: bool = True,
    callback=None,
) -> ContactFit:
    """Fit the relaxed reactive mask (module docstring) and classify each surface grain.

    Args:
        problem: measurements and setup.
        true_reactive: optional truth (per grain or per surface grain bool mask) for the table.
        start_weight: w at the start, the same for every grain (0.5: no preference).
        penalty_schedule: the binarity-penalty weights λ of the continuation stages; each
            stage restarts L-BFGS from the previous stage's logits.
        iterations_per_stage: L-BFGS iteration limit per stage.
        threshold: w above it is classified reactive.
        gtol, ftol: a stage ends when ‖∂L/∂s‖ ≤ gtol or the relative loss change of an
            iteration is ≤ ftol.
        uncertainty: compute the Gauss–Newton/Laplace std of w (n_s forward-mode passes).
        callback: called with each history entry.

    Raises:
        FitDiverged: NaN/Inf loss or gradient (``.history`` keeps the iterations before).
    """
    if not (isinstance(start_weight, (int, float)) and 0 < start_weight < 1):
        raise ConfigError(f"start_weight = {start_weight!r}: valid range is (0, 1), exclusive")
    if not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise ConfigError(f"threshold = {threshold!r}: valid range is (0, 1), exclusive")
    schedule = [float(v) for v in penalty_schedule]
    if not schedule or any(not (math.isfinite(v) and v >= 0) for v in schedule):
        raise ConfigError(f"penalty_schedule = {list(penalty_schedule)!r}: give ≥ 1 finite weights ≥ 0")
    if isinstance(iterations_per_stage, bool) or not isinstance(iterations_per_stage, int) or iterations_per_stage < 1:
        raise ConfigError(f"iterations_per_stage = {iterations_per_stage!r}: must be an integer ≥ 1")
    setup = problem.setup
    dtype = setup.x0.dtype
    truth = None if true_reactive is None else setup.surface_weights_of(true_reactive) > 0.5
    s = jnp.full(setup.n_surface, math.log(start_weight / (1 - start_weight)), dtype)
    history: list[dict] = []

    opt = optax.lbfgs()

    @jax.jit
    def lbfgs_step(s, state, lam):
        value_fn = lambda v: problem.objective(v, lam)  # noqa: E731
        value_and_grad = optax.value_and_grad_from_state(value_fn)
        value, g = value_and_grad(s, state=state)
        updates, state = opt.update(g, state, s, value=value, grad=g, value_fn=value_fn)
        # the zoom line search stores the loss and gradient at the accepted point
        return (optax.apply_updates(s, updates), state, optax.tree.get(state, "value"),
                optax.tree.get(state, "grad"), value, g)

    def record(stage, lam, loss, grad):
        entry = {"iteration": len(history), "stage": stage, "penalty_weight": lam, "loss": float(loss),
                 "grad_norm": float(jnp.linalg.norm(grad))}
        history.append(entry)
        if callback is not None:
            callback(entry)
        if not (math.isfinite(entry["loss"]) and math.isfinite(entry["grad_norm"])):
            raise FitDiverged(f"reactive-contact fit stopped: NaN/Inf at iteration {entry['iteration']} "
                              f"(stage {stage}, λ = {lam:g})", history)

    for stage, lam in enumerate(schedule):
        lam_j = jnp.asarray(lam, dtype)
        state = jax.tree.map(lambda a: jnp.asarray(a, jnp.result_type(a)), opt.init(s))
        previous = None
        for _ in range(iterations_per_stage):
            s, state, loss, grad, start_loss, start_grad = lbfgs_step(s, state, lam_j)
            if previous is None:  # the loss at the stage's start comes with its first step
                if stage == 0:
                    record(0, lam, start_loss, start_grad)
                previous = float(start_loss)
            record(stage, lam, loss, grad)
            if history[-1]["grad_norm"] <= gtol:
                break
            if abs(previous - float(loss)) <= ftol * max(abs(previous), 1e-300):
                break
            previous = float(loss)

    w = kcontact.contact_weights(s)
    w_np = np.asarray(w, np.float64)
    std = determined = None
    noise = None
    if uncertainty:
        std, noise = weight_uncertainty(problem, w)
        determined = 2.0 * std < 0.5
    simulated = problem.simulated_maps(w)
    data_loss = float(0.5 * np.mean(problem.residuals_from_maps(simulated) ** 2))
    return ContactFit(
        grain_id=setup.surface_grains.copy(), weight=w_np, reactive=w_np > threshold, true_reactive=truth,
        std=std, determined=determined, area_m2=setup.surface_area_m2.copy(), history=history,
        simulated=simulated, data_loss=data_loss,
        li_flow_mol_s=setup.li_flow_mol_s, li_flow_fitted_mol_s=float(setup.li_flow_of(w)),
        threshold=float(threshold), noise_std=noise,
    )


def weight_uncertainty(problem: ContactProblem, w) -> tuple[np.ndarray, float]:
    """Laplace std of each surface weight from F = JᵀJ / s², J = ∂r/∂w (module docstring).

    Returns (std (n_s,), noise std used in SOC units). s² = 1 when every measurement
    gives its noise_std (r is already in units of σ), else Σr²/(N − n_s).
    """
    w = jnp.asarray(w, problem.setup.x0.dtype)
    r = problem.residuals_from_maps(problem.simulated_maps(w))
    J = np.asarray(jax.jit(jax.jacfwd(lambda v: problem.residuals_of_weights(v, adjoint="autodiff")))(w),
                   np.float64)
    n, p = J.shape
    s2 = 1.0 if problem.noise_known else float(np.sum(r**2) / max(n - p + 1, 1))
    F = J.T @ J / s2
    # the maps depend on w only through w / A(w): the scaling direction w is an exact null
    # direction of F (J w = 0, Euler's theorem for the degree-0 homogeneous flux); take
    # the covariance on its orthogonal complement (basis Q: the last p − 1 columns of a
    # full QR of w), where the binarity of the mask fixes the scale
    w_np = np.asarray(w, np.float64)
    Q = np.linalg.qr(w_np[:, None], mode="complete")[0][:, 1:]
    lam, vec = np.linalg.eigh(Q.T @ F @ Q)
    cutoff = max(float(lam.max(initial=0.0)), 1e-300) * 1e-12
    inv = np.where(lam > cutoff, 1.0 / np.where(lam > cutoff, lam, 1.0), np.inf)
    basis = Q @ vec  # (p, p − 1): eigen-directions in w
    weights = basis**2
    with np.errstate(invalid="ignore"):
        var = np.array([np.sum(np.where(weights[i] > 1e-12, weights[i] * inv, 0.0)) for i in range(p)])
    sigma = float(problem._sigma[0]) if problem.noise_known else math.sqrt(s2)
    return np.sqrt(var), sigma

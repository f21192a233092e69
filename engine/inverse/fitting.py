"""Differentiable fitting of model parameters to measured SOC maps.

Problem
-------
Given measured maps m_k(p) at times t_k (projections or volumes, see observation.py)
and the forward model x(t; θ) of model.py observed by an operator A, find

    θ* = argmin_θ  L(θ),   L(θ) = (1 / 2N) Σ_{k,p ∈ mask} r_kp(θ)²,
    r_kp(θ) = (A[x(t_k; θ)](p) − m_k(p)) / σ,

over the free parameters θ (parameters.py: D1 = D2, D3, flux_scale, ...), with
σ the measurement noise standard deviation (1 if unknown) and N the number of
usable pixels. The optimiser works on unconstrained coordinates u, θ = v(u)
(log / log-sigmoid / sigmoid transforms, parameters.py), so positivity and bounds
hold by construction. Optimisers: Adam (Kingma & Ba, ICLR 2015) and L-BFGS with a
zoom line search (Nocedal & Wright, *Numerical Optimization*, 2nd ed., alg. 7.4 and
3.5/3.6), both from optax; ``"adam+lbfgs"`` runs Adam first to get into the basin and
then L-BFGS to converge.

Time stepping
-------------
The measurement times split [0, t_last] into segments; segment k runs
n_k explicit steps of Δt_k = (t_k − t_{k−1}) / n_k with Δt_k below the stability
limit of the *largest diffusivity the bounds allow* (upper bounds of free
diffusivities, values of fixed ones), so every θ the optimiser can reach is stable
and n_k is static (one compiled program for the whole fit).

Memory-bounded reverse mode
---------------------------
model.rollout scans over blocks of k steps, each block under ``jax.checkpoint``.
Reverse mode then stores the n/k block-boundary states during the forward sweep and,
while sweeping a block backwards, recomputes its k steps and keeps their residuals:

    memory ≈ (n/k + R·k) · S,    time ≈ (2 forward + 1 backward sweep),

with S the state size and R the residual arrays one step saves (R ≈ 6 for the 3D
diffusion step, measured by benchmarks/gradient.py). The memory is smallest at
k = √(n/R), where it is 2√(nR) · S; :func:`checkpoint_plan` takes k = round(√(n/R))
and rounds n up to a multiple of k, so memory grows as O(√n · S) instead of the
R · n · S of an unchecked scan, for one extra forward sweep (the engine's fixed
k = 16 is close to optimal only near n ≈ 1500). This is the classical two-level
scheme; Griewank & Walther, *Evaluating Derivatives*, 2nd ed., ch. 12: with r levels
memory O(r · n^{1/r}) for r-fold recomputation — binomial "revolve" checkpointing is
optimal for a fixed number of stored states). ``checkpoint_every`` may also be
given as an integer. benchmarks/gradient.py measures both cost and memory: on a
24³ grid (2-core CPU, float32) the gradient's temporary memory at 4108 steps is 341
states with the automatic k (379 with k = 16, 24 598 unchecked). Without stress
coupling the blocks are kernels.diffusion_fused.symmetric_block, a hand-written block
adjoint by the operator's symmetry: at 64³ and 1024 steps a gradient with respect to
diffusivities and flux costs about 2 runs of the reference forward (about 10 of the
fused forward; docs/gradients.md); with coupling, the per-step VJP of
kernels.diffusion.symmetric_operator (≈ 4.5 forward runs at 24³, ≈ 6.7 when JAX
transposes the step itself, ``adjoint="autodiff"``). Forward-mode derivatives (the
Laplace step) use the autodiff variant, since a custom VJP has no JVP.

Identifiability
---------------
At the optimum, :func:`laplace_uncertainty` forms the Gauss–Newton Hessian of ½Σr²
in u, F = JᵀJ (J = ∂r/∂u by forward mode, one JVP per parameter; with σ unknown J
is scaled by the residual estimate s² = Σr²/(N − p)). The Laplace approximation gives
cov(u) ≈ F⁻¹ (MacKay, Neural Comput. 4, 415, 1992; Bates & Watts, *Nonlinear
Regression Analysis*, 1988, ch. 2), and by the delta method std(v) = |dv/du| std(u).
A parameter is flagged *not determined* when its relative standard deviation exceeds
``rel_std_threshold`` (default 100 %) or when it loads on an eigen-direction of F
whose standard deviation 1/√λ exceeds one unit of u (an e-fold change for log
parameters) — e.g. a near-zero D3 that leaves no trace in the maps.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssbx.engine.config.scenario import Scenario
from ssbx.engine.errors import ConfigError
from ssbx.engine.io.measurements import MeasuredMaps
from ssbx.engine.physics.mechanics import scenario_stress_coupling
from ssbx.engine.geometry.microstructure import Microstructure
from ssbx.engine.model.particle import ParticleGeometry, TransportParams, galvanostatic_flux, initial_state, rollout
from ssbx.engine.observables.observation import ObservationOperator
from ssbx.engine.inverse.parameters import PARAMETERS, FreeParameter, ModelInputs, apply_values, get_spec
from ssbx.engine.config.scenario import jnp_dtype

METHODS = ("adam", "lbfgs", "adam+lbfgs")


class FitDiverged(RuntimeError):
    """The loss or its gradient became NaN/Inf; ``history`` keeps every iteration before."""

    def __init__(self, message: str, history: list[dict]):
        super().__init__(message)
        self.history = history


# --------------------------------------------------------------------------- time grid


# Residual arrays (states) one explicit diffusion step keeps for reverse mode, measured
# by benchmarks/gradient.py from XLA's memory analysis of the unchecked scan (≈ 6.0 per
# step for the 3D float32 stencil).
RESIDUAL_STATES_PER_STEP = 6.0


def checkpoint_plan(min_steps: int, checkpoint_every="auto") -> tuple[int, int]:
    """(n_steps, k): at least ``min_steps`` steps in whole blocks of k.

    ``"auto"``: k = round(√(n/R)) with R = RESIDUAL_STATES_PER_STEP, the minimiser of
    the reverse-mode memory n/k + R·k (in states; module docstring), which is then
    2√(nR) — O(√n) instead of the R·n of an unchecked scan.
    """
    if min_steps <= 0:
        return 0, 1
    if checkpoint_every == "auto":
        k = max(1, round(math.sqrt(min_steps / RESIDUAL_STATES_PER_STEP)))
    elif isinstance(checkpoint_every, int) and not isinstance(checkpoint_every, bool) and checkpoint_every >= 1:
        k = checkpoint_every
    else:
        raise ConfigError(f"checkpoint_every = {checkpoint_every!r}: valid values are 'auto' or an integer ≥ 1")
    return k * math.ceil(min_steps / k), k


@dataclasses.dataclass(frozen=True)
class ForwardSetup:
    """Everything fixed in a forward run: geometry, base parameters, times, observation.

    Attributes:
        geometry: the particle (known microstructure).
        base: model inputs before free parameters are applied (flux at flux_scale = 1).
        x0: initial state.
        t_s: observation times, s.
        segments: per observation, (n_steps, dt_s, checkpoint_every) from the previous time.
        uniform: all segments after a possible t = 0 share n_steps (and are run by one
            compiled rollout inside a scan over segments).
        operator: observation operator.
        active: bool numpy grid of active voxels.
        pixel_mask: reliable pixels of one map (operator.mask).
        max_diffusivity_m2_s: the diffusivity the time step is stable for.
    """

    geometry: ParticleGeometry
    base: ModelInputs
    x0: jax.Array
    t_s: np.ndarray
    segments: tuple
    uniform: bool
    operator: ObservationOperator
    active: np.ndarray
    pixel_mask: np.ndarray
    max_diffusivity_m2_s: float

    @property
    def n_steps(self) -> int:
        return sum(s[0] for s in self.segments)

    @property
    def image_shape(self):
        return self.operator.image_shape(self.active.shape)


def make_setup(
    geometry: ParticleGeometry,
    params: TransportParams,
    x0,
    t_s: Sequence[float],
    operator: ObservationOperator,
    free: Sequence[FreeParameter] = (),
    time_step_safety: float = 0.9,
    checkpoint_every="auto",
    max_time_step_s: float | None = None,
    mechanics=None,
) -> ForwardSetup:
    """A :class:`ForwardSetup` from a geometry and transport parameters.

    The time step is stable for D_max = max(fixed principal diffusivities, upper
    bounds of free diffusivity parameters): Δt ≤ safety · h² / (2 d D_max)
    (kernels.diffusion.stable_time_step). With a StressCoupling ``mechanics`` the
    limit uses D_max (1 + θ_max), θ_max = local_theta at the largest |β| the bounds of
    free expansion parameters allow; its stress is re-solved every checkpoint block.
    """
    from ssbx.kernels.diffusion import stable_time_step

    t = np.asarray(t_s, np.float64)
    if t.ndim != 1 or t.size == 0 or np.any(t < 0) or np.any(np.diff(t) <= 0) or not np.all(np.isfinite(t)):
        raise ConfigError(f"measurement.t_s = {t.tolist()}: must be ≥ 0 s and strictly increasing")
    d = [float(v) for v in np.asarray(params.diffusivity_m2_s)]
    for p in free:
        if p.spec.diffusivity:
            idx = (0, 1) if p.name == "D1" else (2,)
            for i in idx:
                d[i] = p.upper
    d_max = max(d)
    if mechanics is not None:
        beta = [abs(float(b)) for b in np.asarray(mechanics.beta)]
        for p in free:
            if p.spec.expansion:
                for i in ((0, 1) if p.name == "beta_in_plane" else (2,)):
                    beta[i] = max(abs(p.lower), abs(p.upper))
        # θ grows with |β|; take the worst sign pattern of the allowed magnitudes
        theta = max(float(eqx.tree_at(lambda m: m.beta, mechanics, jnp.asarray(
            [beta[0] * s0, beta[1] * s0, beta[2] * s2], mechanics.beta.dtype)).local_theta(
                float(params.c_max_mol_m3))) for s0 in (1, -1) for s2 in (1, -1))
        d_max = d_max * (1 + theta)
    dt_max = stable_time_step(d_max, geometry.voxel_size_m, geometry.ndim, time_step_safety)
    if max_time_step_s is not None:
        dt_max = min(dt_max, max_time_step_s)
    spans = np.diff(np.concatenate([[0.0], t]))
    needed = [math.ceil(span / dt_max - 1e-9) if span > 0 else 0 for span in spans]
    moving = [m for m in needed if m > 0]
    # equal step counts let one compiled segment serve all (an outer lax.scan over the
    # segments); accept up to 25 % extra steps for it, else one rollout per segment
    uniform = len(moving) > 1 and len(moving) * max(moving) <= 1.25 * sum(moving)
    segments = []
    for span, m in zip(spans, needed):
        n, k = checkpoint_plan(max(moving) if (uniform and m) else m, checkpoint_every)
        segments.append((n, float(span) / n if n else 0.0, k))
    active = np.asarray(geometry.grain_id) >= 0
    return ForwardSetup(
        geometry=geometry,
        base=ModelInputs(transport=params, mechanics=mechanics),
        x0=jnp.asarray(x0),
        t_s=t,
        segments=tuple(segments),
        uniform=uniform,
        operator=operator,
        active=active,
        pixel_mask=operator.mask(active),
        max_diffusivity_m2_s=d_max,
    )


def forward_setup(
    scenario: Scenario,
    t_s: Sequence[float],
    operator: ObservationOperator,
    free: Sequence[FreeParameter] = (),
    microstructure: Microstructure | None = None,
    checkpoint_every="auto",
) -> ForwardSetup:
    """A :class:`ForwardSetup` from a scenario.

    The microstructure is ``microstructure`` if given (e.g. segmented from tomography
    of the measured particle), else the scenario's generated one. Material, initial
    content, protocol (C-rate and direction give the base flux j0 =
    galvanostatic_flux, so flux_scale = 1 is the nominal current) and time-step safety
    come from the scenario; ``protocol.duration_s`` is ignored (the measurement times
    set the horizon).
    """
    from ssbx.engine.geometry.microstructure import build_microstructure

    dtype = jnp_dtype(scenario.run.dtype)
    micro = microstructure if microstructure is not None else build_microstructure(scenario)
    geometry = ParticleGeometry.from_microstructure(micro, dtype)
    mat = scenario.material
    c_max = mat.resolved_c_max()
    flux = galvanostatic_flux(scenario.protocol.c_rate, scenario.protocol.sign, c_max,
                              micro.active_volume_m3(), float(geometry.reactive_area_m2))
    params = TransportParams(
        diffusivity_m2_s=jnp.asarray(mat.resolved_diffusivity(), dtype),
        orientations=jnp.asarray(micro.orientations, dtype),
        flux_mol_m2_s=jnp.asarray(flux, dtype),
        c_max_mol_m3=jnp.asarray(c_max, dtype),
    )
    return make_setup(
        geometry, params, initial_state(geometry, mat.x_initial, dtype), t_s, operator, free,
        time_step_safety=scenario.numerics.time_step_safety, checkpoint_every=checkpoint_every,
        max_time_step_s=scenario.numerics.max_time_step_s,
        mechanics=scenario_stress_coupling(scenario, micro, dtype),
    )



def _fields(geometry, transport, x0, segments, uniform=False, adjoint="symmetric", coupling=None):
    """x at each observation time, (n_times, *grid); ``adjoint``/``coupling`` as in model.rollout."""
    if uniform:
        lead = segments[0][0] == 0  # an observation at t = 0
        moving = segments[1:] if lead else segments
        n, _, k = moving[0]

        def segment(x, dt):
            x, _ = rollout(geometry, transport, x, n, dt, checkpoint_every=k, adjoint=adjoint,
                           coupling=coupling)
            return x, x

        _, xs = jax.lax.scan(segment, x0, jnp.asarray([s[1] for s in moving], x0.dtype))
        return jnp.concatenate([x0[None], xs]) if lead else xs
    x, out = x0, []
    for n, dt, k in segments:
        if n:
            x, _ = rollout(geometry, transport, x, n, dt, checkpoint_every=k, adjoint=adjoint,
                           coupling=coupling)
        out.append(x)
    return jnp.stack(out)


def _maps(setup: ForwardSetup, geometry, inputs, x0, adjoint="symmetric"):
    fields = _fields(geometry, inputs.transport, x0, setup.segments, setup.uniform, adjoint,
                     inputs.mechanics)
    active = jnp.asarray(setup.active, x0.dtype)
    return jax.vmap(lambda f: setup.operator(f, active))(fields)


def simulate_fields(setup: ForwardSetup, values: dict | None = None):
    """Simulated SOC fields at the observation times for physical ``values`` by name."""
    inputs = _checked_inputs(setup, values or {})
    return eqx.filter_jit(lambda g, i, x0: _fields(g, i.transport, x0, setup.segments, setup.uniform,
                                                   coupling=i.mechanics))(
        setup.geometry, inputs, setup.x0)


def simulate_maps(setup: ForwardSetup, values: dict | None = None):
    """Observed maps (n_times, *image) of the forward model at physical ``values``."""
    inputs = _checked_inputs(setup, values or {})
    return eqx.filter_jit(lambda g, i, x0: _maps(setup, g, i, x0))(setup.geometry, inputs, setup.x0)


def _checked_inputs(setup: ForwardSetup, values: dict) -> ModelInputs:
    for name, v in values.items():
        spec = get_spec(name, "values")
        if spec.diffusivity and float(v) > setup.max_diffusivity_m2_s * (1 + 1e-12):
            raise ConfigError(
                f"values.{name} = {v!r}: above {setup.max_diffusivity_m2_s:.4g} m²/s, the largest "
                "diffusivity this setup's time step is stable for; raise that parameter's upper bound"
            )
    return apply_values(setup.base, values)


# --------------------------------------------------------------------------- problem


class FitProblem:
    """Measured maps + forward setup + free parameters -> residuals and loss in u.

    Build with :meth:`from_scenario` (or the constructor for a prepared setup). The
    masks combine the measurement's own (finite, unmasked pixels) with the
    operator's reliability mask; only those pixels enter the residual vector.
    """

    def __init__(self, setup: ForwardSetup, measured: MeasuredMaps, free: Sequence[FreeParameter]):
        free = list(free)
        if not free:
            raise ConfigError("parameters: give at least one free parameter; valid: "
                              f"{sorted(k for k, s in PARAMETERS.items() if s.requires is None)}")
        names = [p.name for p in free]
        if len(set(names)) != len(names):
            raise ConfigError(f"parameters: each parameter may appear once, got {names}")
        expected = setup.image_shape
        if measured.maps.shape[1:] != expected:
            raise ConfigError(
                f"measurement maps shape {measured.maps.shape[1:]} (from {measured.source}) does not match "
                f"the simulated {setup.operator.kind} shape {expected}: grid {setup.active.shape}, "
                f"pixel factor {setup.operator.factor}"
                + (f", beam axis {setup.operator.beam_axis}" if setup.operator.kind == "projection" else "")
                + "; check pixel_size_m, beam_axis and the particle geometry"
            )
        if measured.n_times != len(setup.t_s) or not np.allclose(measured.t_s, setup.t_s):
            raise ConfigError(
                f"measurement.t_s = {measured.t_s.tolist()} differs from the setup times {setup.t_s.tolist()}"
            )
        self.setup = setup
        self.measured = measured
        self.free = free
        self.names = names
        self.mask = measured.mask & setup.pixel_mask[None]
        if not self.mask.any():
            raise ConfigError("measurement: no pixel is both usable in the file and inside the particle")
        self.index = np.flatnonzero(self.mask.reshape(-1))
        self.sigma = measured.noise_std if measured.noise_std is not None else 1.0
        dtype = setup.x0.dtype
        self._data = jnp.asarray(measured.maps.reshape(-1)[self.index], dtype)
        self._residuals = jax.jit(self._residuals_impl)
        self._loss = jax.jit(self._loss_impl)
        self._value_and_grad = jax.jit(jax.value_and_grad(self._loss_impl))

    @classmethod
    def from_scenario(cls, scenario: Scenario, measured: MeasuredMaps, free: Sequence[FreeParameter],
                      microstructure: Microstructure | None = None, shift_px=(), shift_method="linear",
                      min_thickness_voxels: float = 1.0, min_active_fraction: float = 0.5,
                      checkpoint_every="auto") -> "FitProblem":
        """Problem for a scenario and a measurement; the operator follows the measurement's
        kind, beam axis and pixel size (an integer multiple of the voxel size)."""
        voxel = scenario.particle.voxel_size_m if microstructure is None else microstructure.voxel_size_m
        operator = ObservationOperator(
            kind=measured.kind,
            beam_axis=measured.beam_axis if measured.beam_axis is not None else 2,
            factor=measured.pixel_factor(voxel),
            shift_px=tuple(shift_px),
            shift_method=shift_method,
            min_thickness_voxels=min_thickness_voxels,
            min_active_fraction=min_active_fraction,
        )
        setup = forward_setup(scenario, measured.t_s, operator, free, microstructure, checkpoint_every)
        return cls(setup, measured, free)

    # unconstrained <-> physical
    @property
    def u0(self) -> jax.Array:
        return jnp.asarray([p.to_unconstrained(p.start) for p in self.free], self.setup.x0.dtype)

    def physical(self, u) -> jax.Array:
        return jnp.stack([p.to_physical(u[i]) for i, p in enumerate(self.free)])

    def values(self, u) -> dict[str, float]:
        v = np.asarray(self.physical(jnp.asarray(u)), np.float64)
        return {name: float(v[i]) for i, name in enumerate(self.names)}

    def unconstrained(self, values: dict[str, float]) -> jax.Array:
        return jnp.asarray([p.to_unconstrained(values[p.name]) for p in self.free], self.setup.x0.dtype)

    # model
    def _simulate(self, u, adjoint="symmetric"):
        v = self.physical(u)
        inputs = apply_values(self.setup.base, {name: v[i] for i, name in enumerate(self.names)})
        return _maps(self.setup, self.setup.geometry, inputs, self.setup.x0, adjoint)

    def _residuals_impl(self, u, adjoint="symmetric"):
        """Residuals; ``adjoint="autodiff"`` for forward-mode derivatives (jacfwd)."""
        sim = self._simulate(u, adjoint).reshape(-1)[self.index]
        return (sim - self._data) / self.sigma

    def _loss_impl(self, u):
        r = self._residuals_impl(u)
        return 0.5 * jnp.mean(r**2)

    def residuals(self, u) -> jax.Array:
        """r(u) over usable pixels, (N,)."""
        return self._residuals(jnp.asarray(u, self.setup.x0.dtype))

    def loss(self, u) -> jax.Array:
        return self._loss(jnp.asarray(u, self.setup.x0.dtype))

    def value_and_grad(self, u):
        return self._value_and_grad(jnp.asarray(u, self.setup.x0.dtype))

    def simulated_maps(self, u) -> np.ndarray:
        return np.asarray(jax.jit(self._simulate)(jnp.asarray(u, self.setup.x0.dtype)))


# --------------------------------------------------------------------------- optimise


@dataclasses.dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        values: fitted physical values by name.
        u: fitted unconstrained coordinates.
        history: per iteration {"iteration", "stage", "loss", "grad_norm", "values"}.
        converged: a stopping tolerance was met (not just the iteration limit).
        message: why the fit stopped.
        uncertainty: per-parameter Laplace uncertainty (if computed).
        simulated: simulated maps at the optimum.
    """

    values: dict
    u: np.ndarray
    history: list
    converged: bool
    message: str
    uncertainty: dict | None = None
    simulated: np.ndarray | None = None

    @property
    def loss(self) -> float:
        return self.history[-1]["loss"]

    def to_dict(self) -> dict:
        return {
            "values": self.values,
            "u": [float(v) for v in self.u],
            "converged": self.converged,
            "message": self.message,
            "final_loss": self.loss,
            "n_iterations": len(self.history) - 1,
            "uncertainty": self.uncertainty,
        }

    def to_json(self) -> str:
        return json.dumps(finite_json(self.to_dict()), indent=2, sort_keys=True)


def finite_json(obj):
    """``obj`` with every non-finite float as its text ("nan", "inf"), for strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def _record(history, problem, stage, u, loss, grad):
    loss_f = float(loss)
    gnorm = float(jnp.linalg.norm(grad))
    entry = {"iteration": len(history), "stage": stage, "loss": loss_f, "grad_norm": gnorm,
             "values": problem.values(u) if np.all(np.isfinite(np.asarray(u))) else {}}
    history.append(entry)
    if not (math.isfinite(loss_f) and math.isfinite(gnorm)):
        what = "loss" if not math.isfinite(loss_f) else "gradient"
        last = history[-2]["values"] if len(history) > 1 else {}
        raise FitDiverged(
            f"fit stopped: the {what} became NaN/Inf at iteration {entry['iteration']} ({stage}); "
            f"last finite parameters {last}. Check the measurement for NaN outside the mask, tighten "
            "the bounds or lower the learning rate; the history so far is kept in .history",
            history,
        )
    return loss_f, gnorm


def fit(
    problem: FitProblem,
    method: str = "adam+lbfgs",
    learning_rate: float = 0.05,
    adam_iterations: int = 100,
    lbfgs_iterations: int = 50,
    gtol: float = 1e-8,
    ftol: float = 1e-10,
    u0=None,
    uncertainty: bool = True,
    callback=None,
) -> FitResult:
    """Minimise the loss of ``problem`` (see the module docstring).

    Args:
        method: "adam", "lbfgs" or "adam+lbfgs".
        learning_rate: Adam step size in unconstrained units (≈ relative change per
            step for log parameters).
        adam_iterations, lbfgs_iterations: iteration limits per stage.
        gtol: stop when ‖∂L/∂u‖ ≤ gtol.
        ftol: L-BFGS stops when the relative loss decrease of an iteration is ≤ ftol;
            Adam when it is ≤ ftol over 10 iterations.
        u0: start in unconstrained coordinates (default: the parameters' start values).
        uncertainty: compute :func:`laplace_uncertainty` at the optimum.
        callback: called with each history entry.

    Raises:
        FitDiverged: NaN/Inf loss or gradient (``.history`` holds the iterations so far).
    """
    if method not in METHODS:
        raise ConfigError(f"optimizer.method = {method!r}: valid values are {list(METHODS)}")
    for field, value in (("optimizer.adam_iterations", adam_iterations),
                         ("optimizer.lbfgs_iterations", lbfgs_iterations)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{field} = {value!r}: must be an integer ≥ 0")
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
        raise ConfigError(f"optimizer.learning_rate = {learning_rate!r}: must be a number > 0")
    u = problem.u0 if u0 is None else jnp.asarray(u0, problem.setup.x0.dtype)
    history: list[dict] = []
    converged, message = False, "iteration limit reached"

    def log(entry):
        if callback is not None:
            callback(entry)

    loss, grad = problem.value_and_grad(u)
    _record(history, problem, "start", u, loss, grad)
    log(history[-1])

    if method in ("adam", "adam+lbfgs") and adam_iterations:
        opt = optax.adam(learning_rate)
        state = opt.init(u)

        @jax.jit
        def adam_step(u, state, grad):
            updates, state = opt.update(grad, state, u)
            return optax.apply_updates(u, updates), state

        for _ in range(adam_iterations):
            u, state = adam_step(u, state, grad)
            loss, grad = problem.value_and_grad(u)
            loss_f, gnorm = _record(history, problem, "adam", u, loss, grad)
            log(history[-1])
            if gnorm <= gtol:
                converged, message = True, f"gradient norm {gnorm:.3g} ≤ gtol = {gtol:g} (adam)"
                break
            if len(history) > 11:
                old = history[-11]["loss"]
                if method == "adam" and abs(old - loss_f) <= ftol * max(abs(old), 1e-300):
                    converged, message = True, f"relative loss change over 10 Adam steps ≤ ftol = {ftol:g}"
                    break

    if method in ("lbfgs", "adam+lbfgs") and lbfgs_iterations and not (converged and method == "lbfgs"):
        converged = False
        value_fn = problem._loss_impl
        opt = optax.lbfgs()
        # strong types in the initial state, so the step compiles once (init leaves some
        # scalars weakly typed, the update returns them strongly typed)
        state = jax.tree.map(lambda a: jnp.asarray(a, jnp.result_type(a)), opt.init(u))
        value_and_grad = optax.value_and_grad_from_state(value_fn)

        @jax.jit
        def lbfgs_step(u, state):
            value, g = value_and_grad(u, state=state)
            updates, state = opt.update(g, state, u, value=value, grad=g, value_fn=value_fn)
            # the zoom line search stores the loss and gradient at the accepted point
            return optax.apply_updates(u, updates), state, optax.tree.get(state, "value"), \
                optax.tree.get(state, "grad")

        for _ in range(lbfgs_iterations):
            previous = history[-1]["loss"]
            u, state, loss, grad = lbfgs_step(u, state)
            loss_f, gnorm = _record(history, problem, "lbfgs", u, loss, grad)
            log(history[-1])
            if gnorm <= gtol:
                converged, message = True, f"gradient norm {gnorm:.3g} ≤ gtol = {gtol:g} (lbfgs)"
                break
            if abs(previous - loss_f) <= ftol * max(abs(previous), 1e-300):
                converged, message = True, f"relative loss change {abs(previous - loss_f) / max(abs(previous), 1e-300):.3g} ≤ ftol = {ftol:g} (lbfgs)"
                break

    result = FitResult(values=problem.values(u), u=np.asarray(u, np.float64), history=history,
                       converged=converged, message=message)
    result.simulated = problem.simulated_maps(u)
    if uncertainty:
        result.uncertainty = laplace_uncertainty(problem, u)
    return result


# --------------------------------------------------------------------------- uncertainty


def laplace_uncertainty(problem: FitProblem, u, rel_std_threshold: float = 1.0,
                        direction_std_threshold: float = 1.0) -> dict:
    """Gauss–Newton / Laplace uncertainty of the fitted parameters at ``u``.

    F = JᵀJ / s², J = ∂r/∂u (jax.jacfwd), s = 1 if the noise σ is known (r is already
    divided by it), else s² = Σr²/(N − p). cov(u) = F⁻¹ on the eigen-directions with
    λ > 1e-12 λ_max (directions below that are infinitely uncertain).

    Returns a dict with, per parameter name, {"value", "std", "rel_std", "std_u",
    "interval95" (u ± 1.96 std_u mapped to physical), "determined", "reasons"}, and
    "eigenvalues" (of F, ascending), "eigenvectors" (columns, in the order of
    "names"), "noise_std" (σ used) and "noise_estimated".
    """
    u = jnp.asarray(u, problem.setup.x0.dtype)
    r = np.asarray(problem.residuals(u), np.float64)
    residuals_fm = lambda v: problem._residuals_impl(v, adjoint="autodiff")  # noqa: E731
    J = np.asarray(jax.jit(jax.jacfwd(residuals_fm))(u), np.float64)
    n, p = J.shape
    estimated = problem.measured.noise_std is None
    s2 = float(np.sum(r**2) / max(n - p, 1)) if estimated else 1.0
    F = J.T @ J / s2
    lam, vec = np.linalg.eigh(F)
    cutoff = max(float(lam.max()), 1e-300) * 1e-12
    inv = np.where(lam > cutoff, 1.0 / np.where(lam > cutoff, lam, 1.0), np.inf)
    weights = vec**2
    with np.errstate(invalid="ignore"):
        var_u = np.array([np.sum(np.where(weights[i] > 1e-12, weights[i] * inv, 0.0)) for i in range(p)])
    std_u = np.sqrt(var_u)
    direction_std = np.sqrt(inv)
    weak = direction_std > direction_std_threshold
    out: dict = {
        "names": list(problem.names),
        "eigenvalues": lam.tolist(),
        "eigenvectors": vec.tolist(),
        "direction_std_u": direction_std.tolist(),
        "noise_std": math.sqrt(s2) * (1.0 if estimated else problem.sigma),
        "noise_estimated": estimated,
        "n_pixels": int(n),
        "parameters": {},
    }
    for i, param in enumerate(problem.free):
        ui = float(u[i])
        value = float(param.to_physical(jnp.asarray(ui, u.dtype)))
        dvdu = float(jax.grad(lambda t: param.to_physical(t))(jnp.asarray(ui, u.dtype)))
        std = abs(dvdu) * std_u[i] if math.isfinite(std_u[i]) else math.inf
        rel = std / abs(value) if value != 0 else math.inf
        if math.isfinite(std_u[i]):
            lo = float(param.to_physical(jnp.asarray(ui - 1.96 * std_u[i], u.dtype)))
            hi = float(param.to_physical(jnp.asarray(ui + 1.96 * std_u[i], u.dtype)))
        else:
            lo = param.lower if param.lower is not None else (0.0 if param.spec.positive else -math.inf)
            hi = param.upper if param.upper is not None else math.inf
        reasons = []
        if not rel <= rel_std_threshold:
            reasons.append(f"relative std {rel:.3g} > {rel_std_threshold:g}")
        loading = [k for k in range(p) if weak[k] and weights[i, k] > 0.5]
        if loading:
            reasons.append(
                "loads on a poorly constrained direction (std "
                + ", ".join(f"{direction_std[k]:.3g}" for k in loading)
                + " in unconstrained units)"
            )
        if param.at_bound(value):
            reasons.append("at a bound")
        out["parameters"][param.name] = {
            "value": value,
            "std": std,
            "rel_std": rel,
            "std_u": float(std_u[i]),
            "interval95": [min(lo, hi), max(lo, hi)],
            "determined": not reasons,
            "reasons": reasons,
            "unit": param.spec.unit,
        }
    return out


def synthetic_projection_maps(
    problem_or_setup,
    truth: dict[str, float],
    noise_std: float = 0.0,
    seed: int = 0,
) -> MeasuredMaps:
    """A synthetic measurement: the forward model at ``truth`` plus Gaussian noise.

    Args:
        problem_or_setup: a :class:`ssbx.engine.inverse.fitting.ForwardSetup` (geometry, times,
            observation operator), e.g. from :func:`ssbx.engine.inverse.fitting.forward_setup`.
        truth: physical values of model parameters by name (``D1``, ``D3``,
            ``flux_scale``, ...; see ``fitting.PARAMETERS``); unnamed ones keep the
            setup's base values.
        noise_std: standard deviation of additive white Gaussian noise, SOC units.
        seed: noise seed.

    Returns:
        :class:`MeasuredMaps` with the setup's times, pixel size, kind and beam axis;
        pixels the operator masks as unreliable are NaN.
    """
    setup = problem_or_setup
    clean = np.asarray(simulate_maps(setup, truth), dtype=np.float64)
    rng = np.random.default_rng(seed)
    noisy = clean + noise_std * rng.standard_normal(clean.shape)
    mask = np.broadcast_to(setup.pixel_mask, noisy.shape)
    op = setup.operator
    return MeasuredMaps(
        maps=np.where(mask, noisy, np.nan),
        t_s=np.asarray(setup.t_s),
        pixel_size_m=setup.geometry.voxel_size_m * op.factor,
        kind=op.kind,
        beam_axis=op.beam_axis if op.kind == "projection" else None,
        noise_std=noise_std if noise_std > 0 else None,
        source="synthetic",
    )

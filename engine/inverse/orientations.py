"""Per-grain c-axis orientations (and D1) from SOC maps: the inverse microstructure problem.

Problem
-------
The grain map of the particle is known (tomography or EBSD: grain ids per voxel), the
orientations are not. Given SOC maps m_{a,k}(p) — projections along several beam axes
a and/or volumes — at times t_k, find each grain's c axis c_g and the in-plane
diffusivity D1:

    (c*, D1*) = argmin  L,   L = (1 / 2N) Σ_{a,k,p ∈ mask_a} r_{akp}²,
    r_{akp} = (A_a[x(t_k; c, D1)](p) − m_{a,k}(p)) / σ_a,

with x(t) the differentiable particle rollout (model/particle.py), A_a the observation
operator of measurement a (observables/observation.py), σ_a its noise (1 if unknown) and
N the number of usable pixels of all measurements. D3, the surface flux, c_max and the
initial content are known (the setup's base values).

Parameterisation
----------------
Layered NCM is transversely isotropic: D1 = D2, so D = D1 I + (D3 − D1) c cᵀ
(kernels/c_axis.py, eq. 1) depends on the orientation only through the axis ±c. Each
grain's axis is an unconstrained vector v_g ∈ ℝ³, c_g = v_g/|v_g|. This has no gimbal
lock (Euler angles have a singular Jacobian at the poles, where the optimiser would
stall), is smooth, and carries exactly the information D depends on: no meaningless
rotation about c (a quaternion's third degree of freedom, a null direction of the
Hessian) and no sign constraint, because c and −c give the same D. The rollout takes
quaternions; kernels.c_axis.c_axis_quaternion builds the rotation [001] -> c (through the
upper-hemisphere representative, so the antipodal singularity of the shortest-arc
formula is never approached). D1 uses the log-sigmoid transform of a bounded
FreeParameter (inverse/parameters.py).

Optimisation: multi-start, per-grain candidate sweeps, mirror moves, polish
---------------------------------------------------------------------------
The loss is not convex in the axes: a grain's axis can settle in a wrong basin, most
often about 90° from the truth (with D3 ≈ 0 an axis perpendicular to the true one
blocks a different in-plane direction, and the gradient towards the truth vanishes
on the way). The sign ambiguity c ~ −c is removed by the parameterisation; the other
basins are handled in four stages:

1. *multi-start*: ``n_starts`` random starts (axes uniform on the sphere, D1 at its
   start value) advanced together by Adam (Kingma & Ba, ICLR 2015) as one batched
   (vmapped) program; the best start is kept;
2. *L-BFGS polish* (optax, zoom line search; Nocedal & Wright, *Numerical
   Optimization*, 2nd ed.);
3. *per-grain candidate sweeps*: because grains interact only through their shared
   boundaries, a wrong grain can often be corrected with the others held fixed. For
   each grain in turn, 24 trial axes spread evenly over the hemisphere
   (:func:`candidate_axes`, a Fibonacci lattice) are evaluated in one batched forward
   run (no gradient) and the best replaces the current axis if it lowers the loss — a
   greedy block-coordinate multi-start. With ``relax_iterations`` the two best trial
   axes are each followed by a short L-BFGS of all parameters before the comparison.
4. *mirror moves* (:func:`_mirror_sweep`, ``mirror_relax_iterations`` > 0): for each grain,
   largest first, its axis is replaced by each of its reflections across the coordinate
   planes (:func:`mirror_axes`), all parameters are relaxed by a short L-BFGS, and the best
   relaxed result is kept if it lowers the loss. A projection along e_a sums over x_a, so
   a grain that is roughly symmetric along a contributes nearly the same image along a
   for c and for its reflection across x_a = 0: these are wrong basins that projections
   create (an exact symmetry for a mirror-symmetric particle, tested). The relaxation is
   essential: with the other grains fixed the reflected (true) axis of a stuck grain
   raises the loss, because its neighbours have co-adapted to the wrong one.
   Sweeps (3, 4) alternate with polishes (2) until a round changes nothing or
   ``max_rounds`` is reached.

Optionally (``continuation=True``) the whole procedure first fits the maps of the
first time alone, then of the first two times from that result, and so on — a
continuation in the observation horizon (early maps depend on each grain's own
near-surface response, later maps couple neighbouring grains).

What this achieves is measured, not assumed: benchmarks/orientation_inversion.py
reports, for a 20-grain particle, how many grains end in a wrong basin. Without the
mirror moves, groups of neighbouring grains settled in a *co-adapted* wrong
configuration that the trial-axis sweeps could not leave (one grain 82° from its truth
but 5° from its z-mirror, its neighbours 20–40° off); with them the fit ends below the
loss at the true parameters (docs/inverse_orientations.md).

Identifiability
---------------
At the optimum, the Gauss–Newton Hessian F = JᵀJ of ½Σr² (Bates & Watts, *Nonlinear
Regression Analysis*, 1988, ch. 2) is formed in *tangent coordinates*: for each grain
two orthonormal vectors e1, e2 ⊥ c_g, so c_g(α, β) ≈ c_g + α e1 + β e2 with α, β small
rotation angles in radians, and ln D1. J (N × (2n+1)) comes from forward mode, one JVP
per column. The Laplace approximation (MacKay, Neural Comput. 4, 415, 1992) gives
cov ≈ F⁻¹ (pseudo-inverse: eigen-directions with λ ≤ 1e-12 λ_max have infinite
variance). For grain g the marginal 2×2 block C_g of cov is its angular covariance:
its largest eigenvalue gives the angular standard deviation in the grain's worst
direction, std_g = √λ_max(C_g). The grain is **determined** when std_g ≤
``max_std_deg`` (default 5°, i.e. a 3σ cone of 15°); otherwise it is reported as
undetermined (its fitted axis is still given but should not be read as a measurement).
The conditional counterpart, 1/√λ_min(F_gg) (the grain's own 2×2 block of F, other
grains held fixed), is reported too: it is the noise-relative signal of the grain
alone, ∞ for a grain no usable pixel sees. Grains hidden from every beam (all their
rays masked) or too small to change the maps have tiny F_gg and are flagged
undetermined; a grain whose axis is close to the axis of a neighbour is not penalised
by this rule as long as the data separate them.

The Laplace approximation is local: a grain stuck in a wrong basin can look
determined. The multi-start makes this rare, and the benchmark
(benchmarks/orientation_inversion.py) measures how rare on a synthetic particle.
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

from ssbx.kernels.c_axis import axis_misorientation_deg, c_axis_of_quaternion, c_axis_quaternion
from ssbx.kernels.c_axis import unit_axis, upper_hemisphere

from ssbx.engine.errors import ConfigError
from ssbx.engine.io.measurements import MeasuredMaps
from ssbx.engine.observables.observation import ObservationOperator, parse_axis
from ssbx.engine.inverse.fitting import ForwardSetup, _fields, finite_json, simulate_fields
from ssbx.engine.inverse.parameters import FreeParameter, ModelInputs


# --------------------------------------------------------------------------- fit-file options

ORIENTATION_KINDS = ("per_grain_c_axis",)
ORIENTATION_STARTS = ("random", "scenario")


@dataclasses.dataclass(frozen=True)
class OrientationsConfig:
    """``[parameters.orientations]`` of a fit file: every grain's c axis as the free field.

    Attributes:
        kind: "per_grain_c_axis" (one axis ±c per grain of the grain map).
        start: "random" (the prior: every start uniform on the sphere) or "scenario"
            (the first start is the scenario's orientation table, the others random).
        n_starts, adam_iterations, learning_rate, lbfgs_iterations, max_rounds, seed,
            continuation, mirror_relax_iterations: the stages of :func:`fit_grain_orientations`
            (mirror moves run in rounds 2.. only, so they need max_rounds ≥ 2).
        max_std_deg: a grain is determined when its marginal angular std ≤ this, degrees.
        truth_file: optional orientation table (.npy or .json; (n_grains, 3) axes or
            (n_grains, 4) quaternions) for the misorientation column; "" = none
            (``--make-synthetic`` uses the scenario's own table as truth).
        beam_axes: beam axes of the synthetic projections ``--make-synthetic`` writes,
            one measurement file each.
    """

    kind: str = "per_grain_c_axis"
    start: str = "random"
    n_starts: int = 4
    adam_iterations: int = 60
    learning_rate: float = 0.05
    lbfgs_iterations: int = 40
    max_rounds: int = 3
    seed: int = 0
    continuation: bool = False
    mirror_relax_iterations: int = 10
    max_std_deg: float = 5.0
    truth_file: str = ""
    beam_axes: tuple = ("x", "z")

    def validate(self):
        f = "parameters.orientations"
        if self.kind not in ORIENTATION_KINDS:
            raise ConfigError(f"{f}.kind = {self.kind!r}: valid values are {list(ORIENTATION_KINDS)}")
        if self.start not in ORIENTATION_STARTS:
            raise ConfigError(f"{f}.start = {self.start!r}: valid values are {list(ORIENTATION_STARTS)}")
        for name, low in (("n_starts", 1), ("adam_iterations", 0), ("lbfgs_iterations", 0), ("max_rounds", 1),
                          ("seed", 0), ("mirror_relax_iterations", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{f}.{name} = {v!r}: must be an integer ≥ {low}")
        for name in ("learning_rate", "max_std_deg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{f}.{name} = {v!r}: must be a number > 0")
        if not isinstance(self.continuation, bool):
            raise ConfigError(f"{f}.continuation = {self.continuation!r}: must be true or false")
        if not isinstance(self.truth_file, str):
            raise ConfigError(f"{f}.truth_file = {self.truth_file!r}: must be a file path (string)")
        axes = self.beam_axes
        if not isinstance(axes, (list, tuple)) or not axes or len(set(axes)) != len(axes):
            raise ConfigError(f"{f}.beam_axes = {axes!r}: give a list of distinct beam axes, e.g. [\"x\", \"z\"]")
        for a in axes:
            parse_axis(a, 3, f"{f}.beam_axes")


def orientations_config_from(value) -> OrientationsConfig:
    """A validated :class:`OrientationsConfig` from ``orientations = "per_grain_c_axis"`` or a table."""
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict):
        raise ConfigError(f"parameters.orientations = {value!r}: give \"per_grain_c_axis\" or a table "
                          "(kind, start, n_starts, adam_iterations, lbfgs_iterations, max_std_deg, ...)")
    fields = {f.name for f in dataclasses.fields(OrientationsConfig)}
    unknown = sorted(set(value) - fields)
    if unknown:
        raise ConfigError(f"unknown key in [parameters.orientations] {unknown}; valid: {sorted(fields)}")
    cfg = OrientationsConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in value.items()})
    cfg.validate()
    return cfg


def load_orientation_table(path, n_grains: int, field: str = "parameters.orientations.truth_file") -> np.ndarray:
    """(n_grains, 3) unit axes from a .npy or .json table of axes (n, 3) or quaternions (n, 4).

    ConfigError when the file is missing or unreadable, or when its row count differs
    from the grain map's grain count (naming both)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{field} = {str(path)!r}: file does not exist")
    try:
        if path.suffix.lower() == ".json":
            table = np.asarray(json.loads(path.read_text()), np.float64)
        else:
            table = np.asarray(np.load(path, allow_pickle=False), np.float64)
    except Exception as err:
        raise ConfigError(f"{field} = {str(path)!r}: cannot read an orientation table "
                          f"({type(err).__name__}: {err}); give .npy or .json") from err
    if table.ndim != 2 or table.shape[1] not in (3, 4):
        raise ConfigError(f"{field} = {str(path)!r}: table shape {table.shape}; expected (n_grains, 3) c axes "
                          "or (n_grains, 4) quaternions")
    if table.shape[0] != n_grains:
        raise ConfigError(f"{field} = {str(path)!r}: the orientation table has {table.shape[0]} rows but the grain "
                          f"map has {n_grains} grains; give one orientation per grain id 0..{n_grains - 1}")
    if not np.all(np.isfinite(table)) or np.any(np.linalg.norm(table, axis=1) == 0):
        raise ConfigError(f"{field} = {str(path)!r}: every row must be a finite, non-zero axis or quaternion")
    if table.shape[1] == 4:
        table = np.asarray(c_axis_of_quaternion(jnp.asarray(table / np.linalg.norm(table, axis=1, keepdims=True))))
    return table / np.linalg.norm(table, axis=1, keepdims=True)


# --------------------------------------------------------------------------- result


@dataclasses.dataclass
class OrientationFit:
    """Outcome of :func:`fit_grain_orientations`.

    Attributes:
        directions: (n_grains, 3) fitted unit c axes, sample frame, sign chosen with
            c_z ≥ 0 (c and −c are the same axis).
        d1_m2_s: fitted in-plane diffusivity D1 = D2, m²/s.
        d1_std_m2_s: its Laplace standard deviation (delta method), m²/s.
        angular_std_deg: (n_grains,) marginal angular standard deviation (worst
            direction), degrees; inf where the data do not constrain the axis.
        conditional_std_deg: (n_grains,) 1/√λ_min(F_gg) in degrees: the grain's own
            signal relative to the noise, other grains held fixed.
        determined: (n_grains,) bool, angular_std_deg ≤ max_std_deg.
        grain_voxels: (n_grains,) voxels per grain.
        misorientation_deg: (n_grains,) angle to the true axis (sign ignored) when the
            truth was given, else None.
        true_directions: (n_grains, 3) true axes when given, else None.
        loss: final loss ½ mean r².
        start_losses: loss of every start after the Adam stage.
        swept_grains: grains whose axis a candidate sweep replaced.
        mirrored_grains: grains whose mirror move (:func:`_mirror_sweep`) was accepted.
        history: per iteration {"stage", "loss"}.
        max_std_deg: the threshold used for ``determined``.
        noise_std: per measurement, σ used (given or estimated).
        u: the fitted unconstrained vector (OrientationProblem.simulated_maps(u) gives
            the maps at the optimum).
    """

    directions: np.ndarray
    d1_m2_s: float
    d1_std_m2_s: float
    angular_std_deg: np.ndarray
    conditional_std_deg: np.ndarray
    determined: np.ndarray
    grain_voxels: np.ndarray
    misorientation_deg: np.ndarray | None
    true_directions: np.ndarray | None
    loss: float
    start_losses: list
    swept_grains: list
    history: list
    max_std_deg: float
    noise_std: list
    u: np.ndarray | None = None
    mirrored_grains: list = dataclasses.field(default_factory=list)

    @property
    def n_grains(self) -> int:
        return int(self.directions.shape[0])

    def table(self) -> list[dict]:
        """Per-grain rows: grain, voxels, direction, std, determined (+ misorientation)."""
        rows = []
        for g in range(self.n_grains):
            row = {
                "grain": g,
                "voxels": int(self.grain_voxels[g]),
                "direction": [float(a) for a in self.directions[g]],
                "angular_std_deg": float(self.angular_std_deg[g]),
                "conditional_std_deg": float(self.conditional_std_deg[g]),
                "determined": bool(self.determined[g]),
            }
            if self.misorientation_deg is not None:
                row["misorientation_deg"] = float(self.misorientation_deg[g])
                row["true_direction"] = [float(a) for a in self.true_directions[g]]
            rows.append(row)
        return rows

    def recovery(self, within_deg: float = 15.0) -> dict:
        """Summary of the misorientations of determined / undetermined grains (needs truth)."""
        if self.misorientation_deg is None:
            raise ValueError("recovery() needs the true directions (give truth= to the fit)")
        mis = self.misorientation_deg
        det = self.determined & (self.grain_voxels > 0)
        out = {"n_grains": self.n_grains, "n_determined": int(det.sum()), "within_deg": within_deg}
        for name, sel in (("determined", det), ("undetermined", ~det & (self.grain_voxels > 0))):
            m = mis[sel]
            out[name] = {
                "n": int(sel.sum()),
                "fraction_within": float(np.mean(m <= within_deg)) if m.size else math.nan,
                "median_deg": float(np.median(m)) if m.size else math.nan,
                "p90_deg": float(np.percentile(m, 90)) if m.size else math.nan,
                "max_deg": float(m.max()) if m.size else math.nan,
                "misorientations_deg": sorted(float(a) for a in m),
            }
        return out

    def to_dict(self) -> dict:
        out = {
            "d1_m2_s": self.d1_m2_s,
            "d1_std_m2_s": self.d1_std_m2_s,
            "loss": self.loss,
            "start_losses": self.start_losses,
            "swept_grains": self.swept_grains,
            "mirrored_grains": self.mirrored_grains,
            "max_std_deg": self.max_std_deg,
            "noise_std": self.noise_std,
            "n_iterations": len(self.history),
            "grains": self.table(),
        }
        if self.misorientation_deg is not None:
            out["recovery"] = self.recovery()
        return out

    def to_json(self) -> str:
        return json.dumps(finite_json(self.to_dict()), indent=2, sort_keys=True)


# --------------------------------------------------------------------------- problem


def measurement_operator(setup: ForwardSetup, measured: MeasuredMaps) -> ObservationOperator:
    """The operator of one measurement: its kind, beam axis and pixel factor, with the
    setup operator's reliability thresholds (no registration shift)."""
    return dataclasses.replace(
        setup.operator,
        kind=measured.kind,
        beam_axis=measured.beam_axis if measured.beam_axis is not None else 2,
        factor=measured.pixel_factor(setup.geometry.voxel_size_m),
        shift_px=(),
    )


class OrientationProblem:
    """Residuals and loss of the orientation inverse problem in unconstrained u.

    u = (v_0, …, v_{n−1}, u_D1): 3 components per grain (the axis vectors) and, when
    ``d1`` is given, the unconstrained D1 of that FreeParameter (else D1 is the base
    value). Several measurements (e.g. projections along two beam axes) share one
    rollout; each has its own operator, mask and σ.
    """

    def __init__(self, setup: ForwardSetup, measurements: Sequence[MeasuredMaps],
                 d1: FreeParameter | None = None):
        measurements = list(measurements)
        if not measurements:
            raise ConfigError("measurements: give at least one MeasuredMaps")
        if d1 is not None and d1.name != "D1":
            raise ConfigError(f"d1 = FreeParameter({d1.name!r}, ...): must be the parameter 'D1'")
        orientations = setup.base.transport.orientations
        n_grains = int(orientations.shape[0])
        grain_id = np.asarray(setup.geometry.grain_id)
        if grain_id.max(initial=-1) >= n_grains:
            raise ConfigError(
                f"grain map: largest grain id {int(grain_id.max())} but the orientation table has "
                f"{n_grains} rows; give one orientation per grain id 0..{int(grain_id.max())}"
            )
        self.setup = setup
        self.d1 = d1
        self.n_grains = n_grains
        self.grain_voxels = np.bincount(grain_id[grain_id >= 0].ravel(), minlength=n_grains)
        self.operators, self.index, self.data, self.sigma, self.masks = [], [], [], [], []
        self.measurements = measurements
        dtype = setup.x0.dtype
        for i, m in enumerate(measurements):
            op = measurement_operator(setup, m)
            expected = op.image_shape(setup.active.shape)
            if m.maps.shape[1:] != expected:
                raise ConfigError(
                    f"measurements[{i}] ({m.source}): maps shape {m.maps.shape[1:]} does not match the "
                    f"simulated {op.kind} shape {expected} (grid {setup.active.shape}, pixel factor "
                    f"{op.factor}" + (f", beam axis {op.beam_axis})" if op.kind == "projection" else ")")
                )
            if m.n_times != len(setup.t_s) or not np.allclose(m.t_s, setup.t_s):
                raise ConfigError(
                    f"measurements[{i}].t_s = {m.t_s.tolist()} differs from the setup times {setup.t_s.tolist()}"
                )
            mask = m.mask & op.mask(setup.active)[None]
            if not mask.any():
                raise ConfigError(f"measurements[{i}] ({m.source}): no pixel is both usable and inside the particle")
            idx = np.flatnonzero(mask.reshape(-1))
            self.operators.append(op)
            self.masks.append(mask)
            self.index.append(idx)
            self.data.append(jnp.asarray(m.maps.reshape(-1)[idx], dtype))
            self.sigma.append(m.noise_std if m.noise_std is not None else 1.0)
        self.n_pixels = int(sum(len(i) for i in self.index))
        self._value_and_grad = jax.jit(jax.value_and_grad(self._loss_impl))
        self._batch_value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(self._loss_impl)))
        self._batch_loss = jax.jit(jax.vmap(self._loss_impl))
        self._residuals = jax.jit(self._residuals_impl)

    # parameters
    @property
    def n_params(self) -> int:
        return 3 * self.n_grains + (1 if self.d1 is not None else 0)

    def split(self, u):
        """(axis vectors (n, 3), D1 in m²/s) of u."""
        v = u[: 3 * self.n_grains].reshape(self.n_grains, 3)
        if self.d1 is None:
            d1 = self.setup.base.transport.diffusivity_m2_s[0]
        else:
            d1 = self.d1.to_physical(u[3 * self.n_grains])
        return v, d1

    def pack(self, directions, d1_m2_s=None) -> jax.Array:
        """u from (n, 3) axis vectors and a physical D1 (default: the parameter's start)."""
        v = jnp.asarray(directions, self.setup.x0.dtype).reshape(-1)
        if self.d1 is None:
            return v
        d1 = self.d1.start if d1_m2_s is None else d1_m2_s
        return jnp.concatenate([v, jnp.asarray([self.d1.to_unconstrained(d1)], v.dtype)])

    def inputs(self, u) -> ModelInputs:
        v, d1 = self.split(u)
        base = self.setup.base
        d = base.transport.diffusivity_m2_s
        d1 = jnp.asarray(d1).astype(d.dtype)
        d = d.at[0].set(d1).at[1].set(d1)
        transport = eqx.tree_at(lambda t: (t.diffusivity_m2_s, t.orientations), base.transport,
                                (d, c_axis_quaternion(v).astype(d.dtype)))
        return eqx.tree_at(lambda m: m.transport, base, transport)

    # model
    def _fields_of(self, u, adjoint="symmetric"):
        s = self.setup
        inputs = self.inputs(u)
        return _fields(s.geometry, inputs.transport, s.x0, s.segments, s.uniform, adjoint, inputs.mechanics)

    def _maps_of(self, fields):
        active = jnp.asarray(self.setup.active, fields.dtype)
        return [jax.vmap(lambda f, op=op: op(f, active))(fields) for op in self.operators]

    def _residuals_impl(self, u, adjoint="symmetric"):
        maps = self._maps_of(self._fields_of(u, adjoint))
        return jnp.concatenate([(m.reshape(-1)[i] - d) / s
                                for m, i, d, s in zip(maps, self.index, self.data, self.sigma)])

    def _loss_impl(self, u):
        r = self._residuals_impl(u)
        return 0.5 * jnp.mean(r**2)

    def first_times(self, k: int) -> "OrientationProblem":
        """The same problem restricted to the first ``k`` observation times."""
        s = self.setup
        setup = dataclasses.replace(s, t_s=s.t_s[:k], segments=s.segments[:k],
                                    uniform=s.uniform and sum(1 for seg in s.segments[:k] if seg[0]) > 1)
        meas = [dataclasses.replace(m, maps=m.maps[:k], t_s=m.t_s[:k], mask=m.mask[:k]) for m in self.measurements]
        return OrientationProblem(setup, meas, self.d1)

    # public
    def loss(self, u) -> float:
        # through the batched program the sweeps compile anyway (one compile fewer)
        return float(self._batch_loss(jnp.asarray(u, self.setup.x0.dtype)[None])[0])

    def residuals(self, u) -> jax.Array:
        return self._residuals(jnp.asarray(u, self.setup.x0.dtype))

    def simulated_maps(self, u) -> list[np.ndarray]:
        fields = jax.jit(self._fields_of)(jnp.asarray(u, self.setup.x0.dtype))
        return [np.asarray(m) for m in self._maps_of(fields)]


# --------------------------------------------------------------------------- synthetic data


def with_orientations(setup: ForwardSetup, quaternions) -> ForwardSetup:
    """The setup with another orientation table (same grain map)."""
    q = jnp.asarray(quaternions, setup.base.transport.orientations.dtype)
    base = eqx.tree_at(lambda m: m.transport.orientations, setup.base, q)
    return dataclasses.replace(setup, base=base)


def synthetic_orientation_maps(setup: ForwardSetup, directions, d1_m2_s: float, beam_axes=(0, 2),
                               noise_std: float = 0.0, seed: int = 0, kind: str = "projection",
                               hide: np.ndarray | None = None) -> list[MeasuredMaps]:
    """Synthetic measurements of a particle whose grains have the axes ``directions``.

    Args:
        setup: the forward setup (grain map, times, base parameters; its operator's
            thresholds are used).
        directions: (n_grains, 3) true c axes (any length, sign ignored).
        d1_m2_s: true D1 = D2.
        beam_axes: one projection per beam axis (ignored for ``kind="volume"``: one
            volume).
        noise_std: white Gaussian noise, SOC units (0: none; the maps then carry no σ).
        seed: noise seed (each measurement gets its own stream).
        hide: optional bool grid of voxels none of whose pixels are usable: every pixel
            whose rays (or block) touch them is NaN — a region hidden from the beam.
    """
    q = c_axis_quaternion(jnp.asarray(directions, setup.x0.dtype))
    truth_setup = with_orientations(setup, q)
    fields = np.asarray(simulate_fields(truth_setup, {"D1": d1_m2_s}), np.float64)
    rng = np.random.default_rng(seed)
    out = []
    axes = tuple(beam_axes) if kind == "projection" else (None,)
    for axis in axes:
        op = dataclasses.replace(setup.operator, kind=kind, beam_axis=axis if axis is not None else 2,
                                 shift_px=())
        active = setup.active.astype(np.float64)
        clean = np.stack([np.asarray(op(jnp.asarray(f), jnp.asarray(active)), np.float64) for f in fields])
        noisy = clean + noise_std * rng.standard_normal(clean.shape)
        usable = np.broadcast_to(op.mask(setup.active), noisy.shape).copy()
        if hide is not None:
            usable &= ~(op.ray_sum(hide) > 0)[None]
        out.append(MeasuredMaps(
            maps=np.where(usable, noisy, np.nan),
            t_s=np.asarray(setup.t_s),
            pixel_size_m=setup.geometry.voxel_size_m * op.factor,
            kind=kind,
            beam_axis=op.beam_axis if kind == "projection" else None,
            noise_std=noise_std if noise_std > 0 else None,
            source=f"synthetic {kind}" + (f" along axis {axis}" if kind == "projection" else ""),
        ))
    return out


# --------------------------------------------------------------------------- fitting


def random_axes(n: int, rng: np.random.Generator) -> np.ndarray:
    """n axes uniform on the sphere (normalised Gaussian vectors), (n, 3)."""
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _renormalise(problem: OrientationProblem, u):
    """Scale each axis vector back to unit length (the loss does not depend on |v|)."""
    v = u[..., : 3 * problem.n_grains].reshape(u.shape[:-1] + (problem.n_grains, 3))
    v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    return u.at[..., : 3 * problem.n_grains].set(v.reshape(u.shape[:-1] + (-1,)).astype(u.dtype))


def fit_grain_orientations(
    problem: OrientationProblem,
    n_starts: int = 4,
    adam_iterations: int = 60,
    learning_rate: float = 0.05,
    lbfgs_iterations: int = 40,
    max_rounds: int = 3,
    seed: int = 0,
    max_std_deg: float = 5.0,
    truth=None,
    callback=None,
    start=None,
    continuation: bool = False,
    identify: bool = True,
    relax_iterations: int = 0,
    mirror_relax_iterations: int = 10,
) -> OrientationFit:
    """Fit every grain's c axis (and D1 when free) to the measurements of ``problem``.

    Stages (module docstring): ``n_starts`` random starts advanced together by Adam for
    ``adam_iterations`` steps (axis vectors renormalised to unit length after each
    step); L-BFGS polish of the best; then up to ``max_rounds`` − 1 rounds of a per-grain
    candidate sweep followed by a polish, until a sweep changes nothing; Laplace
    identifiability in tangent coordinates at the end.

    Args:
        problem: the :class:`OrientationProblem`.
        n_starts: number of random starts (≥ 1).
        learning_rate: Adam step, radians per step for the axes (≈ relative change of D1).
        lbfgs_iterations: iteration limit of each polish.
        max_rounds: polish + (sweep + polish) rounds at most (≥ 1).
        seed: seed of the random starts.
        max_std_deg: a grain is determined when its marginal angular std ≤ this.
        truth: optional (n_grains, 3) true axes (or (n_grains, 4) quaternions) for the
            misorientation column.
        callback: called with each history entry {"stage", "loss"}.
        start: optional (n_grains, 3) axes (or a u vector) used as the first start
            instead of a random one (the other n_starts − 1 stay random).
        relax_iterations: L-BFGS iterations after each of the two best trial axes of a
            grain in the sweeps (0: compare the trial axes as they are); costs about
            2 · n_grains · relax_iterations gradients per sweep.
        continuation: fit the maps of the first time alone, then of the first two, …,
            each stage starting from the previous one (module docstring).
        mirror_relax_iterations: L-BFGS iterations after each mirror move of the sweeps
            (:func:`_mirror_sweep`; 0: no mirror moves); costs up to
            3 · n_grains · mirror_relax_iterations gradients per sweep.
    """
    for field, value, low in (("n_starts", n_starts, 1), ("adam_iterations", adam_iterations, 0),
                              ("lbfgs_iterations", lbfgs_iterations, 0), ("max_rounds", max_rounds, 1),
                              ("relax_iterations", relax_iterations, 0),
                              ("mirror_relax_iterations", mirror_relax_iterations, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{field} = {value!r}: must be an integer ≥ {low}")
    if not (isinstance(max_std_deg, (int, float)) and max_std_deg > 0):
        raise ConfigError(f"max_std_deg = {max_std_deg!r}: must be a number > 0 (degrees)")
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
        raise ConfigError(f"learning_rate = {learning_rate!r}: must be a number > 0")
    true_dirs = None
    if truth is not None:
        t = np.asarray(truth, np.float64)
        if t.shape == (problem.n_grains, 4):
            t = np.asarray(c_axis_of_quaternion(jnp.asarray(t)))
        if t.shape != (problem.n_grains, 3):
            raise ConfigError(
                f"truth shape {t.shape}: expected ({problem.n_grains}, 3) axes or ({problem.n_grains}, 4) quaternions"
            )
        true_dirs = np.asarray(upper_hemisphere(unit_axis(jnp.asarray(t))))
    dtype = problem.setup.x0.dtype
    history: list[dict] = []

    def log(stage, loss):
        entry = {"stage": stage, "loss": float(loss)}
        history.append(entry)
        if callback is not None:
            callback(entry)
        if not math.isfinite(entry["loss"]):
            raise FloatingPointError(
                f"orientation fit: the loss became NaN/Inf in stage {stage!r} (iteration {len(history) - 1})"
            )

    if continuation and len(problem.setup.t_s) > 1:
        n_t = len(problem.setup.t_s)
        u_prev = start
        for k in range(1, n_t):
            sub = problem.first_times(k)
            sub_fit = fit_grain_orientations(
                sub, n_starts=n_starts if k == 1 else 1, adam_iterations=adam_iterations if k == 1 else 0,
                learning_rate=learning_rate, lbfgs_iterations=lbfgs_iterations, max_rounds=max_rounds,
                seed=seed, max_std_deg=max_std_deg, callback=callback, start=u_prev, identify=False,
                relax_iterations=relax_iterations, mirror_relax_iterations=mirror_relax_iterations)
            history += [dict(e, stage=f"t≤{problem.setup.t_s[k - 1]:g}s:{e['stage']}") for e in sub_fit.history]
            u_prev = sub_fit.u
        start = u_prev
        n_starts, adam_iterations = 1, 0

    # stage 1: batched multi-start Adam
    rng = np.random.default_rng(seed)
    random_starts = [problem.pack(random_axes(problem.n_grains, rng)) for _ in range(n_starts)]
    if start is not None:
        st = np.asarray(start, np.float64)
        random_starts[0] = jnp.asarray(st) if st.shape == (problem.n_params,) else problem.pack(st)
    starts = jnp.stack(random_starts).astype(dtype)
    opt = optax.adam(learning_rate)
    state = opt.init(starts)

    @jax.jit
    def adam_step(u, state, grad):
        updates, state = opt.update(grad, state, u)
        return _renormalise(problem, optax.apply_updates(u, updates)), state

    u = starts
    if adam_iterations:
        losses, grads = problem._batch_value_and_grad(u)
    else:
        losses = problem._batch_loss(u)
    log("start", jnp.min(losses))
    for _ in range(adam_iterations):
        u, state = adam_step(u, state, grads)
        losses, grads = problem._batch_value_and_grad(u)
        log("adam", jnp.min(losses))
    start_losses = [float(a) for a in np.asarray(losses)]

    # stage 2: per-grain candidate sweeps alternating with L-BFGS polish
    best = int(np.argmin(start_losses))
    u_best = u[best]
    current_loss = start_losses[best]
    moved: list[int] = []
    mirrored: list[int] = []
    for round_ in range(max_rounds):
        if round_ > 0 or lbfgs_iterations == 0:
            u_best, current_loss, accepted = _candidate_sweep(problem, u_best, current_loss,
                                                              relax_iterations=relax_iterations)
            log("sweep", current_loss)
            moved += accepted
            if mirror_relax_iterations:
                u_best, current_loss, flipped = _mirror_sweep(problem, u_best, current_loss,
                                                              mirror_relax_iterations)
                log("mirror", current_loss)
                mirrored += flipped
                accepted = accepted + flipped
            if round_ > 0 and not accepted:
                break
        if lbfgs_iterations:
            u_best, current_loss = _lbfgs(problem, u_best, lbfgs_iterations, log)
    u_best = _renormalise(problem, u_best)
    final_loss = problem.loss(u_best)
    log("final", final_loss)
    if not identify:  # an inner continuation stage: no Laplace analysis
        v, d1 = problem.split(u_best)
        return OrientationFit(np.asarray(unit_axis(v)), float(d1), math.nan, None, None, None,
                              problem.grain_voxels, None, None, final_loss, start_losses, sorted(set(moved)),
                              history, max_std_deg, [], np.asarray(u_best, np.float64), sorted(set(mirrored)))
    fit = _finish(problem, u_best, final_loss, start_losses, sorted(set(moved)), history, max_std_deg, true_dirs)
    fit.mirrored_grains = sorted(set(mirrored))
    return fit


def candidate_axes(n: int = 24) -> np.ndarray:
    """(n, 3) trial axes spread evenly over the upper hemisphere (the axis space ℝP²):
    a Fibonacci (golden-angle) lattice, equal area per point (González, Math. Geosci.
    42, 49 (2010)); with n = 24 every axis lies within 25° of a trial axis (24.1° measured)."""
    k = np.arange(n) + 0.5
    z = 1.0 - k / n  # uniform in z on (0, 1]: equal area on the hemisphere
    phi = np.pi * (3.0 - math.sqrt(5.0)) * np.arange(n)
    r = np.sqrt(1.0 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _candidate_sweep(problem: OrientationProblem, u, loss, n_candidates: int = 24, relax_iterations: int = 0,
                     relax_candidates: int = 2):
    """One greedy pass over the grains: for each grain (others fixed) evaluate the
    ``n_candidates`` :func:`candidate_axes` in one batched forward run and keep the
    best if it lowers the loss. Escapes the wrong basins a gradient method cannot leave
    (e.g. an axis 90° from the truth). With ``relax_iterations`` > 0, the
    ``relax_candidates`` best trial axes of each grain are each followed by that many
    L-BFGS iterations of all parameters before the comparison, so that a grain whose
    neighbours have adapted to its wrong axis can still move (the neighbours re-adapt).
    Returns (u, loss, grains moved)."""
    u = jnp.asarray(u)
    accepted = []
    cand = jnp.asarray(candidate_axes(n_candidates), u.dtype)
    for g in range(problem.n_grains):
        if problem.grain_voxels[g] == 0:
            continue
        batch = jnp.tile(u[None], (cand.shape[0], 1)).at[:, 3 * g: 3 * g + 3].set(cand)
        losses = np.asarray(problem._batch_loss(batch))
        order = np.argsort(losses)
        if losses[order[0]] < loss:
            u, loss = batch[order[0]], float(losses[order[0]])
            accepted.append(g)
            continue
        for k in order[:relax_candidates] if relax_iterations else ():
            u_k, loss_k = _lbfgs(problem, batch[k], relax_iterations, lambda *a: None)
            if loss_k < loss:
                u, loss = u_k, loss_k
                accepted.append(g)
                break
    return u, loss, accepted


def mirror_axes(c: np.ndarray) -> np.ndarray:
    """(3, 3) reflections of the unit axis ``c`` across the planes x = 0, y = 0, z = 0.

    Reflecting across the plane ⟂ e_a negates component a; as axes (c ~ −c) this is also
    the rotation by 180° about e_a. A projection along e_a sums over a, so a grain's own
    contribution to it is unchanged by the reflection when the grain is near-symmetric
    along a: the reflected axis is the wrong basin that projections leave nearly
    indistinguishable (e.g. a grain fitted 82° from the truth, 5° from its z-mirror)."""
    c = np.asarray(c, np.float64)
    return np.stack([c * np.where(np.arange(3) == a, -1.0, 1.0) for a in range(3)])


def _mirror_sweep(problem: OrientationProblem, u, loss, relax_iterations: int, min_angle_deg: float = 15.0):
    """Mirror moves: for each grain, largest first, each of its :func:`mirror_axes` that
    differs from the current axis by ≥ ``min_angle_deg`` (as axes) replaces the axis and
    all parameters are relaxed by ``relax_iterations`` L-BFGS iterations; the best of these
    is kept if its relaxed loss is lower than the current loss. The relaxation is what
    lets a co-adapted group move: with the others fixed, the mirrored axis of such a grain
    raises the loss (its neighbours compensate the wrong axis); after the neighbours
    re-adapt, it lowers it. Returns (u, loss, grains moved)."""
    u = jnp.asarray(u)
    accepted = []
    order = np.argsort(-problem.grain_voxels, kind="stable")
    for g in order:
        g = int(g)
        if problem.grain_voxels[g] == 0:
            continue
        c = np.asarray(unit_axis(u[3 * g: 3 * g + 3]), np.float64)
        best = None
        for m in mirror_axes(c):
            if math.degrees(math.acos(min(abs(float(m @ c)), 1.0))) < min_angle_deg:
                continue
            trial = u.at[3 * g: 3 * g + 3].set(jnp.asarray(m, u.dtype))
            u_k, loss_k = _lbfgs(problem, trial, relax_iterations, lambda *a: None)
            if loss_k < loss and (best is None or loss_k < best[1]):
                best = (u_k, loss_k)
        if best is not None:
            u, loss = best
            accepted.append(g)
    return u, loss, accepted


def _lbfgs(problem: OrientationProblem, u, iterations: int, log, ftol: float = 1e-6):
    """L-BFGS (optax, zoom line search) from ``u``, stopped after ``iterations`` or when an
    iteration lowers the loss by ≤ ftol relative (above float32 round-off); returns
    (u with unit axes, loss)."""
    if not hasattr(problem, "_lbfgs_step"):
        value_fn = problem._loss_impl
        lbfgs = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(value_fn)

        @jax.jit
        def step(u, s):
            value, g = value_and_grad(u, state=s)
            updates, s = lbfgs.update(g, s, u, value=value, grad=g, value_fn=value_fn)
            return optax.apply_updates(u, updates), s, optax.tree.get(s, "value")

        problem._lbfgs_step = step
        problem._lbfgs_init = lambda u: jax.tree.map(lambda a: jnp.asarray(a, jnp.result_type(a)), lbfgs.init(u))
    state = problem._lbfgs_init(u)
    previous = problem.loss(u)
    for _ in range(iterations):
        u, state, value = problem._lbfgs_step(u, state)
        log("lbfgs", value)
        if abs(previous - float(value)) <= ftol * max(abs(previous), 1e-300):
            break
        previous = float(value)
    u = _renormalise(problem, u)
    return u, problem.loss(u)


def tangent_basis(c: np.ndarray) -> np.ndarray:
    """(n, 2, 3) orthonormal e1, e2 ⊥ each unit axis c (n, 3)."""
    c = np.asarray(c, np.float64)
    helper = np.where(np.abs(c[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    e1 = np.cross(c, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(c, e1)
    return np.stack([e1, e2], axis=1)


def tangent_jacobian(problem: OrientationProblem, u) -> np.ndarray:
    """J = ∂r/∂w at ``u`` (unit axis vectors), w = tangent coordinates: 2 per grain
    (rotation angles of c towards e1, e2 of :func:`tangent_basis`, radians), then ln D1
    when D1 is free. Forward mode, one JVP per column (N × (2n [+1]))."""
    dtype = problem.setup.x0.dtype
    u = jnp.asarray(u, dtype)
    v, _ = problem.split(u)
    basis = tangent_basis(np.asarray(unit_axis(v), np.float64))  # (n, 2, 3)
    n = problem.n_grains
    m = 2 * n + (1 if problem.d1 is not None else 0)
    E = np.zeros((problem.n_params, m))
    for g in range(n):
        E[3 * g: 3 * g + 3, 2 * g] = basis[g, 0]
        E[3 * g: 3 * g + 3, 2 * g + 1] = basis[g, 1]
    if problem.d1 is not None:
        # column in ln D1: du/d ln D1 = 1 / (d ln D1 / du)
        dlnd_du = float(jax.grad(lambda t: jnp.log(problem.d1.to_physical(t)))(u[3 * n]))
        E[3 * n, 2 * n] = 1.0 / dlnd_du
    E = jnp.asarray(E, dtype)

    def residuals_fm(w):
        return problem._residuals_impl(u + E @ w, adjoint="autodiff")

    return np.asarray(jax.jit(jax.jacfwd(residuals_fm))(jnp.zeros(m, dtype)), np.float64)


def _finish(problem, u, loss, start_losses, swept, history, max_std_deg, true_dirs) -> OrientationFit:
    n = problem.n_grains
    v, d1 = problem.split(jnp.asarray(u))
    directions = np.asarray(upper_hemisphere(unit_axis(v)), np.float64)
    J = tangent_jacobian(problem, u)
    if any(m.noise_std is None for m in problem.measurements):
        r = np.asarray(problem.residuals(u), np.float64)
    # the residuals are divided by σ of each measurement; where a σ was not given (σ = 1)
    # the rows are scaled by the residual estimate s² = Σr²/(N_a − p) of that measurement
    noise, start = [], 0
    p = J.shape[1]
    for meas, idx, s in zip(problem.measurements, problem.index, problem.sigma):
        seg = slice(start, start + len(idx))
        if meas.noise_std is None:
            s2 = float(np.sum(r[seg] ** 2) / max(len(idx) - p, 1))
            noise.append(math.sqrt(s2))
            J[seg] /= math.sqrt(s2)
        else:
            noise.append(float(s))
        start += len(idx)
    F = J.T @ J
    lam, vec = np.linalg.eigh(F)
    cutoff = max(float(lam.max()), 1e-300) * 1e-12
    inv = np.where(lam > cutoff, 1.0 / np.where(lam > cutoff, lam, 1.0), np.inf)
    ang_std = np.full(n, np.inf)
    cond_std = np.full(n, np.inf)
    for g in range(n):
        sl = slice(2 * g, 2 * g + 2)
        block = F[sl, sl]
        lmin = float(np.linalg.eigvalsh(block)[0])
        cond_std[g] = math.degrees(1.0 / math.sqrt(lmin)) if lmin > cutoff else math.inf
        w = vec[sl, :]  # (2, p)
        loads = np.any(np.abs(w) > 1e-6, axis=0)
        if np.any(loads & ~np.isfinite(inv)):
            continue
        finite_inv = np.where(np.isfinite(inv), inv, 0.0)
        cov = (w * finite_inv) @ w.T
        ang_std[g] = math.degrees(math.sqrt(max(float(np.linalg.eigvalsh(cov)[-1]), 0.0)))
    d1_std = math.nan
    if problem.d1 is not None:
        i = 2 * n
        wi = vec[i]
        if np.any((np.abs(wi) > 1e-6) & ~np.isfinite(inv)):
            d1_std = math.inf
        else:
            var = float(np.sum(wi**2 * np.where(np.isfinite(inv), inv, 0.0)))
            d1_std = float(d1) * math.sqrt(var)  # std of ln D1 -> std of D1 (delta method)
    determined = (ang_std <= max_std_deg) & (problem.grain_voxels > 0)
    mis = None
    if true_dirs is not None:
        mis = np.asarray(axis_misorientation_deg(jnp.asarray(directions), jnp.asarray(true_dirs)), np.float64)
    return OrientationFit(
        directions=directions,
        d1_m2_s=float(d1),
        d1_std_m2_s=d1_std,
        angular_std_deg=ang_std,
        conditional_std_deg=cond_std,
        determined=determined,
        grain_voxels=problem.grain_voxels.copy(),
        misorientation_deg=mis,
        true_directions=true_dirs,
        loss=float(loss),
        start_losses=start_losses,
        swept_grains=swept,
        history=history,
        max_std_deg=float(max_std_deg),
        noise_std=noise,
        u=np.asarray(u, np.float64),
    )

"""Scenario -> resolved cell model: geometry arrays and parameter pytrees, built once.

Everything a cell step needs is here, split by what it is:

* :class:`CellGeometry` — fixed voxel data (labels, grain ids, the reactive
  active | ion-conductor faces gathered by index, the particle's bounding box).
* :class:`CellParams` — every physical parameter as an array leaf (diffusivities,
  orientations, c_max, i0, α, R_int, the anode's i0, T, per-phase conductivities,
  the x-dependent active conductivity table, the current of 1C), so ``jax.grad``
  and ``jax.vmap`` see them and a new value does not recompile.
* :class:`CellNumerics` — the time-step rule (array leaves) and the solver settings
  (static: they choose code, not values).

No other engine module re-derives these from the scenario; the capacity that sets the
cell's cross-section and the one that sets 1C are the same number
(:func:`ssbx.engine.geometry.cell_stack.cell_capacity_Ah`).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ssbx.kernels.electrode import interface_faces

from ssbx.engine.geometry.cell_stack import cell_microstructure, phase_conductivities
from ssbx.engine.config.scenario import Scenario
from ssbx.engine.physics.interface import CellInterface, CohesiveParams, DebondingParams, cell_interface
from ssbx.engine.physics.mechanics import StressCoupling, scenario_stress_coupling, stress_free_x
from ssbx.engine.phases import LABEL_BY_NAME
from ssbx.engine.geometry.microstructure import ACTIVE, ION_CONDUCTORS, LABEL_NAMES, Microstructure
from ssbx.engine.config.protocol import parse_cycle
from ssbx.engine.model.protocol_table import ProtocolTable

N_LABELS = max(LABEL_NAMES) + 1


class CellGeometry(eqx.Module):
    """Fixed voxel data of a cell (stack axis = last array axis).

    Attributes:
        labels: uint8 grid (engine.geometry.microstructure labels).
        grain_id: int32 grid, −1 outside the active phase.
        face_masks: per face group (axis, direction), bool grid of active voxels whose
            neighbour in that direction is an ion conductor (reactive grains only).
        face_index: per face group, int32 flat indices of those voxels.
        face_area_m2: per face group, the area of each of those faces (m²; the
            staircase-corrected area of Microstructure.reactive_area_faces, shared by
            the voxel's faces).
        surface_index: int32 flat indices of every voxel with at least one face.
        cell_area_m2: cross-section of the cell (m²; m in 2D).
        axes, directions: static face-group metadata.
        voxel_size_m: voxel edge h (m, static).
        active_box: static (start, stop) per axis of the active voxels' bounding box.
        cohesive: the cohesive layers on the particle surface
            (engine.physics.interface.CellInterface) when ``[interface]`` is enabled.
    """

    labels: jax.Array
    grain_id: jax.Array
    face_masks: tuple
    face_index: tuple
    face_area_m2: tuple
    surface_index: jax.Array
    cell_area_m2: jax.Array
    axes: tuple = eqx.field(static=True)
    directions: tuple = eqx.field(static=True)
    voxel_size_m: float = eqx.field(static=True)
    active_box: tuple = eqx.field(static=True)
    cohesive: CellInterface | None = None

    @property
    def ndim(self) -> int:
        return self.grain_id.ndim

    @property
    def stack_axis(self) -> int:
        return self.grain_id.ndim - 1

    @property
    def box(self) -> tuple:
        return tuple(slice(a, b) for a, b in self.active_box)

    @property
    def active(self) -> jax.Array:
        return self.grain_id >= 0

    def interface(self):
        from ssbx.kernels.electrode import InterfaceFaces

        return InterfaceFaces(self.face_masks, self.axes, self.directions)


class CellParams(eqx.Module):
    """Physical parameters of a cell, SI units, every one an array leaf.

    Attributes:
        diffusivity_m2_s: (3,) principal Li diffusivities along [100], [010], [001].
        orientations: (n_grains, 4) unit quaternions, crystal -> sample.
        c_max_mol_m3: maximum Li concentration.
        exchange_current_A_m2: i0 at x = ½ (i0 ∝ (1 − x)^α_a x^α_c).
        alpha_a, alpha_c: transfer coefficients.
        interface_resistance_ohm_m2: R_int in series with the kinetics (Ω m²).
        anode_exchange_current_A_m2: i0 of the Li | SE interface.
        temperature_K: T.
        phase_sigma_s, phase_sigma_e: (N_LABELS,) electronic / ionic conductivity of
            each label (S/m).
        active_sigma_x, active_sigma_S_m: table of an x-dependent electronic
            conductivity of the active phase (interpolated in log σ), or None.
        one_c_A: the current of 1C (A).
        coupling: stress-assisted transport (engine.physics.mechanics.StressCoupling: the
            cell's stiffness tables, β, x_ref, the stack pressure as array leaves), or
            None when ``mechanics.couple_diffusion`` is off.
        debonding: cohesive law, g0 and the cell's elastic tables
            (engine.physics.interface.DebondingParams) when ``[interface]`` is enabled.
        ocv_name: the open-circuit potential (static: it chooses a function).
    """

    diffusivity_m2_s: jax.Array
    orientations: jax.Array
    c_max_mol_m3: jax.Array
    exchange_current_A_m2: jax.Array
    alpha_a: jax.Array
    alpha_c: jax.Array
    interface_resistance_ohm_m2: jax.Array
    anode_exchange_current_A_m2: jax.Array
    temperature_K: jax.Array
    phase_sigma_s: jax.Array
    phase_sigma_e: jax.Array
    active_sigma_x: jax.Array | None
    active_sigma_S_m: jax.Array | None
    one_c_A: jax.Array
    coupling: StressCoupling | None
    ocv_name: str = eqx.field(static=True)
    debonding: DebondingParams | None = None


class CellNumerics(eqx.Module):
    """Time-step rule and solver settings.

    Attributes:
        time_step_s: the electrochemical step Δt (s), shortened by the adaptive rules.
        time_step_safety: factor of the explicit diffusion stability limit (0, 1].
        cutoff_tolerance_V: a CC step ends when V is this close to its limit (V).
        cutoff_tolerance: a CV step ends when |I| ≤ (1 + this) × its cut-off current.
        newton_tolerance_V: Newton stops when no face potential drop changes by more (V).
        newton_iterations, rtol, maxiter, preconditioner: potential-solve settings
            (static; newton_iterations is the most Newton iterations of one solve).
        stress_every_steps: with stress-assisted transport, the stress is re-solved
            every this many accepted steps (static; mechanics.coupling_every_steps).
        differentiable: static. False (runs): the Newton loop of the potentials is one
            while loop. True (engine.solve.rollout sets it): the loop runs undifferentiated
            and one more iteration carries the derivative (one-step differentiation),
            at the price of compiling the linear solve twice.
    """

    time_step_s: jax.Array
    time_step_safety: jax.Array
    cutoff_tolerance_V: jax.Array
    cutoff_tolerance: jax.Array
    newton_tolerance_V: jax.Array
    newton_iterations: int = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    maxiter: int = eqx.field(static=True)
    preconditioner: str = eqx.field(static=True)
    stress_every_steps: int = eqx.field(static=True, default=1)
    differentiable: bool = eqx.field(static=True, default=False)


@dataclasses.dataclass(frozen=True)
class ResolvedCell:
    """What :func:`resolve_cell` builds: the microstructure (for the run file), the
    three pytrees, the protocol table, the initial Li fraction, the cell facts and the
    protocol's step texts."""

    micro: Microstructure
    geometry: CellGeometry
    params: CellParams
    numerics: CellNumerics
    protocol: ProtocolTable
    x_initial: float
    info: dict
    step_texts: tuple

    def describe(self, pointer: int) -> str:
        """'step k (text)' of a protocol pointer, as messages write it."""
        k = int(pointer) % len(self.step_texts)
        return f"step {k + 1} ({self.step_texts[k]!r})"


def _phase_table(sigma_map: np.ndarray, labels: np.ndarray) -> np.ndarray:
    table = np.zeros(N_LABELS)
    for label in np.unique(labels):
        table[label] = sigma_map[labels == label][0]
    return table


def _debonding(scenario: Scenario, micro: Microstructure, dtype) -> DebondingParams | None:
    itf = scenario.interface
    if not itf.enabled:
        return None
    a = lambda v: jnp.asarray(v, dtype)  # noqa: E731
    elastic = StressCoupling.build(micro, scenario.mechanics, stress_free_x(scenario),
                                   scenario.electrochemistry.temperature_K, dtype, cell=True)
    return DebondingParams(
        cohesive=CohesiveParams(a(itf.strength_Pa), a(itf.fracture_energy_J_m2), a(itf.penalty_stiffness_Pa_m)),
        gap_decay_length_m=a(itf.gap_decay_length_m), elastic=elastic,
        max_damage_increment=a(itf.max_damage_increment), update_every_steps=int(itf.update_every_steps),
        max_active_set_iterations=int(itf.max_active_set_iterations))


def resolve_cell(scenario: Scenario, dtype=jnp.float32) -> ResolvedCell:
    """Build the cell of ``scenario`` (``[cell] enabled = true``) once."""
    micro, info = cell_microstructure(scenario)
    ec, mat = scenario.electrochemistry, scenario.material
    labels, active = micro.labels, micro.active
    law = ec.active_conductivity_table()
    sigma_s, sigma_e = phase_conductivities(labels, ec)  # also refuses Li/collector voxels
    faces = interface_faces(active, np.isin(labels, ION_CONDUCTORS), micro.ndim - 1)
    reactive = active & micro.reactive_grains[np.maximum(micro.grain_id, 0)]
    masks = [np.asarray(m) & reactive for m in faces.masks]
    counts = micro.reactive_face_count()
    area = np.where(counts > 0, micro.reactive_area_faces() / np.maximum(counts, 1), 0.0)
    area = area * micro.voxel_size_m ** (micro.ndim - 1)
    index = [np.flatnonzero(m) for m in masks]
    surface = np.unique(np.concatenate(index)) if index else np.zeros(0, np.int64)
    cohesive = None
    if scenario.interface.enabled:
        bonded = np.isin(labels, [LABEL_BY_NAME[str(c).lower()] for c in scenario.interface.conductors])
        cohesive = cell_interface(active, bonded, index, labels.shape)
    geometry = CellGeometry(
        labels=jnp.asarray(labels, jnp.uint8),
        grain_id=jnp.asarray(micro.grain_id, jnp.int32),
        face_masks=tuple(jnp.asarray(m) for m in masks),
        face_index=tuple(jnp.asarray(i, jnp.int32) for i in index),
        face_area_m2=tuple(jnp.asarray(area.reshape(-1)[i], dtype) for i in index),
        surface_index=jnp.asarray(surface, jnp.int32),
        cell_area_m2=jnp.asarray(info["cell_area_m2"], dtype),
        axes=faces.axes,
        directions=faces.directions,
        voxel_size_m=float(micro.voxel_size_m),
        active_box=tuple((int(np.min(i)), int(np.max(i)) + 1) for i in np.nonzero(active)),
        cohesive=cohesive,
    )
    a = lambda v: jnp.asarray(v, dtype)  # noqa: E731
    params = CellParams(
        diffusivity_m2_s=a(mat.resolved_diffusivity()),
        orientations=a(micro.orientations),
        c_max_mol_m3=a(mat.resolved_c_max()),
        exchange_current_A_m2=a(ec.exchange_current_A_m2),
        alpha_a=a(ec.alpha_a),
        alpha_c=a(ec.alpha_c),
        interface_resistance_ohm_m2=a(ec.interface_resistance_ohm_m2),
        anode_exchange_current_A_m2=a(ec.anode_exchange_current_A_m2),
        temperature_K=a(ec.temperature_K),
        phase_sigma_s=a(_phase_table(sigma_s, labels)),
        phase_sigma_e=a(_phase_table(sigma_e, labels)),
        active_sigma_x=None if law is None else a(law[0]),
        active_sigma_S_m=None if law is None else a(law[1]),
        one_c_A=a(info["capacity_Ah"]),  # 1C = capacity / 1 h: Ah -> A numerically
        coupling=scenario_stress_coupling(scenario, micro, dtype, cell=True),
        ocv_name=mat.ocv_key(ec.ocv),  # the windowed name when material.x_at_0_soc is set
        debonding=_debonding(scenario, micro, dtype),
    )
    numerics = CellNumerics(
        time_step_s=a(ec.time_step_s),
        time_step_safety=a(scenario.numerics.time_step_safety),
        cutoff_tolerance_V=a(scenario.numerics.cutoff_tolerance_V),
        cutoff_tolerance=a(scenario.numerics.cutoff_tolerance),
        newton_tolerance_V=a(ec.newton_tolerance_V),
        newton_iterations=ec.newton_iterations,
        rtol=ec.solver_rtol,
        maxiter=5000,
        preconditioner=ec.preconditioner,
        stress_every_steps=scenario.mechanics.coupling_every_steps,
    )
    steps = parse_cycle(scenario.protocol.steps)
    protocol = ProtocolTable.from_steps(steps, scenario.protocol.cycles, dtype)
    return ResolvedCell(micro, geometry, params, numerics, protocol, float(mat.x_initial), info,
                        tuple(s.text for s in steps))


__all__ = ["ACTIVE", "CellGeometry", "CellNumerics", "CellParams", "ResolvedCell", "resolve_cell"]

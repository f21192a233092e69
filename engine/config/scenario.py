"""Scenario files: TOML -> validated, immutable configuration.

A scenario has the sections ``[run]``, ``[particle]``, ``[material]``, ``[protocol]``,
``[mechanics]``, ``[cell]``, ``[interface]``, ``[electrochemistry]``, ``[numerics]`` and ``[output]``; every key has a default (the built-in scenario of
``ssbx run``), so a file only lists what it changes. Unknown sections or keys, and
values outside their valid range, raise :class:`ConfigError` naming the field, the
value and what is valid. docs/scenarios.md lists every key (generated from this schema by
engine/cli/scenario_docs.py); examples/default.toml shows them with comments.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import jax
import jax.numpy as jnp

from ssbx.engine.errors import ConfigError
from ssbx.engine.materials.active import get_active_material
from ssbx.engine.materials.elastic import check_material_name
from ssbx.engine.phases import ION_CONDUCTORS, LABEL_BY_NAME, LABEL_NAMES


@dataclasses.dataclass(frozen=True)
class RunConfig:
    name: str = "ncm622_particle_1C"
    dtype: str = "float32"

    def validate(self):
        _choice("run.dtype", self.dtype, ("float32", "float64"))
        _file_stem("run.name", self.name)


@dataclasses.dataclass(frozen=True)
class ParticleConfig:
    radius_m: float = 5e-6
    voxel_size_m: float = 2.0e-7
    n_grains: int | None = 400
    mean_grain_size_m: float | None = None
    grain_size_spread: float = 0.0
    reactive_fraction: float = 1.0
    surrounding: str = "ecbd"
    margin_voxels: int = 2
    ndim: int = 3
    seed: int = 0
    match_sphere_volume: bool = False  # true: active volume = 4/3 π r³ within half a voxel

    def validate(self):
        if not isinstance(self.match_sphere_volume, bool):
            raise ConfigError(
                f"particle.match_sphere_volume = {self.match_sphere_volume!r}: valid values are true or false")
        _positive("particle.radius_m", self.radius_m)
        _positive("particle.voxel_size_m", self.voxel_size_m)
        if self.n_grains is not None:
            if not _is_int(self.n_grains) or self.n_grains < 1:
                raise ConfigError(f"particle.n_grains = {self.n_grains!r}: must be an integer ≥ 1")
        if self.mean_grain_size_m is not None:
            _positive("particle.mean_grain_size_m", self.mean_grain_size_m)
        if (self.n_grains is None) == (self.mean_grain_size_m is None):
            raise ConfigError(
                "particle: give exactly one of n_grains and mean_grain_size_m "
                f"(got n_grains = {self.n_grains!r}, mean_grain_size_m = {self.mean_grain_size_m!r});"
                " set n_grains = false to use mean_grain_size_m"
            )
        _in_range("particle.grain_size_spread", self.grain_size_spread, 0.0, math.inf)
        if not _is_number(self.grain_size_spread):
            raise ConfigError(f"particle.grain_size_spread = {self.grain_size_spread!r}: must be a finite number ≥ 0")
        _grains_fit("particle.n_grains", self.n_grains, self.radius_m, self.voxel_size_m, self.ndim)
        _in_range("particle.reactive_fraction", self.reactive_fraction, 0.0, 1.0)
        surroundings = tuple(v for k, v in LABEL_NAMES.items() if k in (0, 2, 4))
        _choice("particle.surrounding", self.surrounding, surroundings)
        if not _is_int(self.margin_voxels) or self.margin_voxels < 1:
            raise ConfigError(f"particle.margin_voxels = {self.margin_voxels!r}: must be an integer ≥ 1")
        _choice("particle.ndim", self.ndim, (2, 3))
        if not _is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"particle.seed = {self.seed!r}: must be an integer ≥ 0")


@dataclasses.dataclass(frozen=True)
class MaterialConfig:
    name: str = "NCM622"
    diffusivity_m2_s: tuple[float, float, float] | None = None  # None: the material's default
    c_max_mol_m3: float | None = None  # None: the material's default
    x_initial: float = 0.95
    # accessible stoichiometry window (lattice x at 0 % and 100 % SOC) onto which the
    # OCV fit's own window is mapped (kernels/ocv.py: windowed_ocv); None: the OCV is
    # used on the lattice x directly
    x_at_0_soc: float | None = None
    x_at_100_soc: float | None = None

    def validate(self):
        if (self.x_at_0_soc is None) != (self.x_at_100_soc is None):
            raise ConfigError(
                f"material.x_at_0_soc = {self.x_at_0_soc!r}, material.x_at_100_soc = "
                f"{self.x_at_100_soc!r}: give both (the accessible window) or neither"
            )
        if self.x_at_0_soc is not None:
            _in_range("material.x_at_0_soc", self.x_at_0_soc, 0.0, 1.0)
            _in_range("material.x_at_100_soc", self.x_at_100_soc, 0.0, 1.0)
            if not self.x_at_100_soc < self.x_at_0_soc:
                raise ConfigError(
                    f"material.x_at_100_soc = {self.x_at_100_soc!r} must be below material.x_at_0_soc = "
                    f"{self.x_at_0_soc!r} (charging removes Li); valid range: [0, x_at_0_soc)"
                )
        material = get_active_material(self.name)
        if self.diffusivity_m2_s is not None and (isinstance(self.diffusivity_m2_s, (str, bytes))
                                                  or not hasattr(self.diffusivity_m2_s, "__len__")):
            raise ConfigError(f"material.diffusivity_m2_s = {self.diffusivity_m2_s!r}: needs a list of 3 "
                              "values [D1, D2, D3] in m²/s, e.g. [5e-15, 5e-15, 1e-20]")
        d = self.resolved_diffusivity(material)
        if len(d) != 3:
            raise ConfigError(
                f"material.diffusivity_m2_s = {list(d)!r}: needs 3 values (D1, D2, D3) in m²/s"
            )
        for i, value in enumerate(d):
            _positive(f"material.diffusivity_m2_s[{i}]", value)
            if value > MAX_DIFFUSIVITY:
                raise ConfigError(f"material.diffusivity_m2_s[{i}] = {value!r}: valid range is (0, "
                                  f"{MAX_DIFFUSIVITY:g}] m²/s (solid-state diffusion)")
        if self.c_max_mol_m3 is not None:
            _positive("material.c_max_mol_m3", self.c_max_mol_m3)
        _in_range("material.x_initial", self.x_initial, 0.0, 1.0)

    def resolved_diffusivity(self, material=None) -> tuple[float, ...]:
        material = material or get_active_material(self.name)
        given = self.diffusivity_m2_s
        return tuple(material.diffusivity_m2_s if given is None else given)

    def resolved_c_max(self) -> float:
        return float(self.c_max_mol_m3 or get_active_material(self.name).c_max_mol_m3)

    def ocv_key(self, ocv: str) -> str:
        """The OCV name the solver resolves: ``ocv`` itself, or its windowed name when
        the accessible window is set (kernels/ocv.py: windowed_ocv_name)."""
        from ssbx.kernels.ocv import windowed_ocv_name

        return windowed_ocv_name(ocv, self.x_at_0_soc, self.x_at_100_soc)


MAX_DIFFUSIVITY = 1e-6  # m²/s; liquids are ~1e-9, larger values only overflow the time grid
MAX_SNAPSHOTS = 100_000
MAX_CYCLES = 100_000  # the device stepper counts protocol steps in int32


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """``prescribed_flux``: uniform surface flux at ``c_rate`` for ``duration_s``.
    ``cycling`` (needs ``[cell]``): the list ``steps`` of battery-style steps, run
    ``cycles`` times (see :func:`ssbx.engine.config.protocol.parse_step`)."""

    kind: str = "prescribed_flux"
    direction: str = "delithiation"
    c_rate: float = 1.0
    duration_s: float = 1440.0
    steps: tuple[str, ...] = ()
    cycles: int = 1

    def validate(self):
        _choice("protocol.kind", self.kind, ("prescribed_flux", "cycling"))
        _choice("protocol.direction", self.direction, ("delithiation", "lithiation"))
        _positive("protocol.c_rate", self.c_rate)
        _positive("protocol.duration_s", self.duration_s)
        if not _is_int(self.cycles) or not 1 <= self.cycles <= MAX_CYCLES:
            raise ConfigError(f"protocol.cycles = {self.cycles!r}: must be an integer in [1, {MAX_CYCLES}]")
        if self.kind == "cycling":
            if not self.steps:
                raise ConfigError(
                    'protocol.steps = []: a cycling protocol needs steps, e.g. '
                    '["charge at 1C until 4.3 V", "rest 10 min", "discharge at 1C until 3.0 V"]'
                )
            from ssbx.engine.config.protocol import parse_cycle

            parse_cycle(self.steps)

    @property
    def sign(self) -> float:
        """+1 for Li into the particle (lithiation), −1 for delithiation (charge)."""
        return 1.0 if self.direction == "lithiation" else -1.0


@dataclasses.dataclass(frozen=True)
class MechanicsConfig:
    enabled: bool = True
    active_material: str = "NCM"
    expansion: tuple[float, float, float] | None = None  # None: the material's β
    surrounding_material: str = "pore"  # particle runs: every voxel that is not active
    electrolyte_material: str = "Li6PS5Cl"  # cell runs: the solid-electrolyte phase (separator)
    x_ref: float | None = None  # None: material.x_initial (stress-free initial state)
    stack_pressure_Pa: float = 0.0
    tol: float = 1e-4
    maxiter: int = 1000
    # stress-assisted Li transport (docs/physics.md §2): re-solve the stress every N steps
    couple_diffusion: bool = False
    coupling_every_steps: int = 10

    def validate(self):
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"mechanics.enabled = {self.enabled!r}: valid values are true or false")
        if not isinstance(self.couple_diffusion, bool):
            raise ConfigError(
                f"mechanics.couple_diffusion = {self.couple_diffusion!r}: valid values are true or false")
        if self.couple_diffusion and not self.enabled:
            raise ConfigError("mechanics.couple_diffusion = true needs mechanics.enabled = true")
        if not _is_int(self.coupling_every_steps) or self.coupling_every_steps < 1:
            raise ConfigError(
                f"mechanics.coupling_every_steps = {self.coupling_every_steps!r}: must be an integer ≥ 1")

        check_material_name("mechanics.active_material", self.active_material)
        check_material_name("mechanics.surrounding_material", self.surrounding_material)
        check_material_name("mechanics.electrolyte_material", self.electrolyte_material)
        if self.expansion is not None:
            if len(self.expansion) != 3 or not all(_is_number(b) for b in self.expansion):
                raise ConfigError(
                    f"mechanics.expansion = {list(self.expansion)!r}: needs 3 numbers "
                    "(β1, β2, β3) per unit x along [100], [010], [001]"
                )
            for i, b in enumerate(self.expansion):
                _in_range(f"mechanics.expansion[{i}]", b, -0.5, 0.5)
        if self.x_ref is not None:
            _in_range("mechanics.x_ref", self.x_ref, 0.0, 1.0)
        _in_range("mechanics.stack_pressure_Pa", self.stack_pressure_Pa, 0.0, 1e9)
        if not _is_number(self.tol) or not 0 < self.tol < 1:
            raise ConfigError(f"mechanics.tol = {self.tol!r}: valid range is (0, 1)")
        if not _is_int(self.maxiter) or self.maxiter < 1:
            raise ConfigError(f"mechanics.maxiter = {self.maxiter!r}: must be an integer ≥ 1")


@dataclasses.dataclass(frozen=True)
class InterfaceConfig:
    """Cohesive particle | ion-conductor interfaces in cell runs (docs/interfaces.md):
    bilinear traction–separation (σc, Gc), irreversible damage, and the gap g raising
    the interfacial resistance of each reactive face, R_int = R0 exp(g / g0) with
    R0 = electrochemistry.interface_resistance_ohm_m2."""

    enabled: bool = False
    strength_Pa: float = 100e6  # σc, normal and shear (docs/physics.md §5 baseline)
    fracture_energy_J_m2: float = 1.0  # Gc (baseline)
    gap_decay_length_m: float = 10e-9  # g0: a modelling choice, none is published
    penalty_stiffness_Pa_m: float = 1e19  # K0, numerical (≥ 50 E / particle radius)
    conductors: tuple = ("solid_electrolyte", "ecbd")  # phases the particle is bonded to
    update_every_steps: int = 5  # re-solve mechanics + damage every N accepted steps
    max_damage_increment: float = 0.05  # step control: largest damage change per step
    max_active_set_iterations: int = 8

    def validate(self):
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"interface.enabled = {self.enabled!r}: valid values are true or false")
        _in_range("interface.strength_Pa", self.strength_Pa, 1e3, 1e11)
        _in_range("interface.fracture_energy_J_m2", self.fracture_energy_J_m2, 1e-6, 1e4)
        _in_range("interface.gap_decay_length_m", self.gap_decay_length_m, 1e-12, 1e-3)
        _in_range("interface.penalty_stiffness_Pa_m", self.penalty_stiffness_Pa_m, 1e12, 1e24)
        if 2.0 * self.fracture_energy_J_m2 * self.penalty_stiffness_Pa_m <= self.strength_Pa**2:
            raise ConfigError(
                f"interface.fracture_energy_J_m2 = {self.fracture_energy_J_m2!r}: must exceed σc²/(2 K0) = "
                f"{self.strength_Pa**2 / (2 * self.penalty_stiffness_Pa_m):.3g} J/m² (the final opening "
                "2 Gc/σc must exceed the onset σc/K0)")
        valid = sorted(LABEL_NAMES[c] for c in ION_CONDUCTORS)
        if isinstance(self.conductors, str) or not isinstance(self.conductors, (list, tuple)) or not self.conductors:
            raise ConfigError(f"interface.conductors = {self.conductors!r}: needs a list of phases out of {valid}")
        for name in self.conductors:
            if LABEL_BY_NAME.get(str(name).lower()) not in ION_CONDUCTORS:
                raise ConfigError(
                    f"interface.conductors: {name!r} is not an ion conductor the active material can be bonded "
                    f"to; valid phases are {valid} (cohesive interfaces are active | ion-conductor boundaries)")
        if not _is_int(self.update_every_steps) or self.update_every_steps < 1:
            raise ConfigError(
                f"interface.update_every_steps = {self.update_every_steps!r}: must be an integer ≥ 1")
        if not _is_number(self.max_damage_increment) or not 0 < self.max_damage_increment <= 1:
            raise ConfigError(
                f"interface.max_damage_increment = {self.max_damage_increment!r}: valid range is (0, 1]")
        if not _is_int(self.max_active_set_iterations) or not 1 <= self.max_active_set_iterations <= 50:
            raise ConfigError(f"interface.max_active_set_iterations = {self.max_active_set_iterations!r}: "
                              "must be an integer in [1, 50]")


@dataclasses.dataclass(frozen=True)
class CellConfig:
    """A cell around the particle (docs/physics.md S2): collector | composite | separator | Li.

    The stack axis is z (y in 2D). The lateral size follows from the areal capacity
    of the particle's theoretical capacity F c_max V_particle."""

    enabled: bool = False
    areal_capacity_mAh_cm2: float = 0.295
    separator_thickness_m: float = 10e-6
    separator: str = "solid_electrolyte"  # label of the separator phase
    composite_margin_voxels: int = 2  # ECBD voxels between particle and collector/separator
    capacity_Ah: float | None = None  # capacity that defines 1C; None: theoretical F c_max V_active
    # the single-particle cathode (cathode = "particle"): n copies on one column along the
    # stack axis (particle i generated with seed particle.seed + i), centres this far apart
    particles_along_stack: int = 1
    particle_spacing_m: float = 12e-6
    # the cathode between collector and separator (docs/composite_cells.md): the [particle] in
    # ECBD, a generated [composite], or a segmented label volume (.npy / .tif) with its label map
    cathode: str = "particle"
    cathode_volume: str = ""
    cathode_label_map: str = "0=pore,1=active,2=SE,3=carbon"

    def validate(self):
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"cell.enabled = {self.enabled!r}: valid values are true or false")
        _choice("cell.cathode", self.cathode, CATHODES)
        if not isinstance(self.cathode_volume, str):
            raise ConfigError(f"cell.cathode_volume = {self.cathode_volume!r}: must be a file path (string) "
                              "of a .npy or .tif label volume")
        if not isinstance(self.cathode_label_map, str) or "=" not in self.cathode_label_map:
            raise ConfigError(f"cell.cathode_label_map = {self.cathode_label_map!r}: must be a string "
                              "VALUE=PHASE,... e.g. '0=pore,1=active,2=SE,3=carbon'")
        if self.cathode == "volume" and not self.cathode_volume:
            raise ConfigError("cell.cathode = 'volume' needs cell.cathode_volume = a .npy or .tif label volume")
        if self.cathode != "volume" and self.cathode_volume:
            raise ConfigError(f"cell.cathode_volume = {self.cathode_volume!r} with cell.cathode = "
                              f"{self.cathode!r}: a volume is only read with cell.cathode = 'volume'")
        _positive("cell.areal_capacity_mAh_cm2", self.areal_capacity_mAh_cm2)
        _positive("cell.separator_thickness_m", self.separator_thickness_m)
        _choice("cell.separator", self.separator, ("solid_electrolyte",))
        if self.capacity_Ah is not None:
            _positive("cell.capacity_Ah", self.capacity_Ah)
        if not _is_int(self.particles_along_stack) or not 1 <= self.particles_along_stack <= 8:
            raise ConfigError(f"cell.particles_along_stack = {self.particles_along_stack!r}: must be an integer "
                              "in [1, 8]")
        _positive("cell.particle_spacing_m", self.particle_spacing_m)
        if self.particles_along_stack > 1 and self.cathode != "particle":
            raise ConfigError(f"cell.particles_along_stack = {self.particles_along_stack} with cell.cathode = "
                              f"{self.cathode!r}: stacked copies are of the single particle (cathode = 'particle')")
        if not _is_int(self.composite_margin_voxels) or self.composite_margin_voxels < 1:
            raise ConfigError(
                f"cell.composite_margin_voxels = {self.composite_margin_voxels!r}: must be an integer ≥ 1"
            )


CATHODES = ("particle", "composite", "volume")


@dataclasses.dataclass(frozen=True)
class CompositeConfig:
    """A generated composite cathode for ``cell.cathode = "composite"`` (the settings of
    engine.geometry.composite.generate_composite, ``ssbx composite``); ``voxel_size_m`` is
    also the voxel of a loaded ``cell.cathode_volume``."""

    size: tuple = (24, 24, 24)  # voxels along x, y, z (z = stack axis, collector at z = 0)
    voxel_size_m: float = 0.5e-6
    ratios: str = "7:3:1"  # mass ratios NCM : SE : carbon
    porosity: float = 0.0
    radius_mean_m: float = 2.5e-6
    radius_std_m: float = 0.8e-6
    max_overlap: float = 0.1
    mean_grain_size_m: float = 1.0e-6
    carbon: str = "fibre"
    fibre_length_m: float = 8e-6
    fibre_diameter_m: float = 1.0e-6  # two voxels at the default voxel (one-voxel fibres fall apart)
    carbon_particle_radius_m: float = 0.5e-6
    pore_radius_m: float = 0.5e-6
    seed: int = 0

    def validate(self):
        size = self.size
        if (not isinstance(size, (list, tuple)) or len(size) != 3 or not all(_is_int(n) for n in size)
                or min(size) < 8 or max(size) > 512):
            raise ConfigError(f"composite.size = {size!r}: must be three integers in [8, 512] (voxels along "
                              "x, y, z; z is the stack axis)")
        for name in ("voxel_size_m", "radius_mean_m", "mean_grain_size_m", "fibre_length_m", "fibre_diameter_m",
                     "carbon_particle_radius_m", "pore_radius_m"):
            _positive(f"composite.{name}", getattr(self, name))
        if not _is_number(self.radius_std_m) or self.radius_std_m < 0:
            raise ConfigError(f"composite.radius_std_m = {self.radius_std_m!r}: must be a finite number ≥ 0")
        _in_range("composite.porosity", self.porosity, 0.0, 0.9)
        _in_range("composite.max_overlap", self.max_overlap, 0.0, 0.5)
        _choice("composite.carbon", self.carbon, ("fibre", "particle"))
        if not _is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"composite.seed = {self.seed!r}: must be an integer ≥ 0")
        if not isinstance(self.ratios, str):
            raise ConfigError(f"composite.ratios = {self.ratios!r}: must be a string NCM:SE:carbon, e.g. '7:3:1'")
        parts = self.ratios.split(":")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values) or not values[0] > 0:
            raise ConfigError(f"composite.ratios = {self.ratios!r}: must be three non-negative numbers "
                              "NCM:SE:carbon with NCM > 0, e.g. '7:3:1'")


@dataclasses.dataclass(frozen=True)
class ElectrochemistryConfig:
    """Butler–Volmer kinetics and conductivities (docs/physics.md §3–4), SI units."""

    ocv: str = "NCM111"
    exchange_current_A_m2: float = 1.0  # i0 at x = 0.5; i0 ∝ √(x(1 − x)) (α = ½)
    alpha_a: float = 0.5
    alpha_c: float = 0.5
    interface_resistance_ohm_m2: float = 0.0
    anode_exchange_current_A_m2: float = 10.0
    temperature_K: float = 298.15
    # a constant (S/m), the name of a sourced law in ELECTRONIC_CONDUCTIVITY_LAWS, or a
    # table [[x, σ], ...] of Li fraction and S/m, interpolated in log σ
    active_electronic_S_m: float | str | tuple = 0.1
    carbon_electronic_S_m: float = 1000.0  # 10 S/cm, mid-range of carbon additives (docs/physics.md §6: 1–100 S/cm)
    ecbd_electronic_S_m: float = 10.0
    ecbd_ionic_S_m: float = 0.02
    separator_ionic_S_m: float = 0.04
    time_step_s: float = 10.0
    # Newton on the Butler–Volmer coupling: a run stops once an iteration solved tightly
    # changes no face potential drop by more than newton_tolerance_V (Newton converges
    # quadratically: about 6 tol² V left); the differentiable path iterates until an
    # iteration changes none by more, then once more (216 tol⁴ V); 0 runs
    # newton_iterations every time; at most newton_iterations
    newton_iterations: int = 10
    newton_tolerance_V: float = 1e-3
    solver_rtol: float = 1e-6
    preconditioner: str = "jacobi"  # "jacobi" (fastest on CPUs at coarse grids) or "multigrid"

    def validate(self):
        from ssbx.kernels.ocv import available_ocv

        names = [n.upper() for n in available_ocv()]
        if str(self.ocv).upper() not in names:
            raise ConfigError(f"electrochemistry.ocv = {self.ocv!r}: valid names are {sorted(available_ocv())}")
        self.active_conductivity_table()
        for name in ("exchange_current_A_m2", "anode_exchange_current_A_m2", "temperature_K",
                     "carbon_electronic_S_m", "ecbd_electronic_S_m", "ecbd_ionic_S_m",
                     "separator_ionic_S_m", "time_step_s"):
            _positive(f"electrochemistry.{name}", getattr(self, name))
        for name in ("alpha_a", "alpha_c"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < 1:
                raise ConfigError(f"electrochemistry.{name} = {value!r}: valid range is (0, 1)")
        _in_range("electrochemistry.interface_resistance_ohm_m2", self.interface_resistance_ohm_m2, 0.0, 1e3)
        if not _is_int(self.newton_iterations) or self.newton_iterations < 1:
            raise ConfigError(
                f"electrochemistry.newton_iterations = {self.newton_iterations!r}: must be an integer ≥ 1"
            )
        _in_range("electrochemistry.newton_tolerance_V", self.newton_tolerance_V, 0.0, 0.1)
        _choice("electrochemistry.preconditioner", self.preconditioner, ("jacobi", "multigrid"))
        if not _is_number(self.solver_rtol) or not 0 < self.solver_rtol < 1:
            raise ConfigError(f"electrochemistry.solver_rtol = {self.solver_rtol!r}: valid range is (0, 1)")

    def active_conductivity_table(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(x points, σ points in S/m) of an x-dependent active-material conductivity, or
        None for a constant; ConfigError naming the entry if the value is not valid."""
        from ssbx.engine.materials.active import ELECTRONIC_CONDUCTIVITY_LAWS

        field = "electrochemistry.active_electronic_S_m"
        value = self.active_electronic_S_m
        if _is_number(value):
            _positive(field, value)
            return None
        if isinstance(value, str):
            if value.lower() not in ELECTRONIC_CONDUCTIVITY_LAWS:
                raise ConfigError(
                    f"{field} = {value!r}: unknown conductivity law; valid: a number (S/m), "
                    f"a table [[x, S/m], ...] or one of {sorted(ELECTRONIC_CONDUCTIVITY_LAWS)}")
            return ELECTRONIC_CONDUCTIVITY_LAWS[value.lower()]
        if not isinstance(value, (list, tuple)) or len(value) < 2:
            raise ConfigError(
                f"{field} = {value!r}: valid values are a number (S/m), a law name, or a table "
                "[[x, S/m], ...] of at least two points")
        for k, point in enumerate(value):
            if (not isinstance(point, (list, tuple)) or len(point) != 2
                    or not all(_is_number(v) for v in point)):
                shown = list(point) if isinstance(point, tuple) else point
                raise ConfigError(f"{field}[{k}] = {shown!r}: each table entry is a pair [x, S/m]")
            _in_range(f"{field}[{k}][0] (Li fraction)", point[0], 0.0, 1.0)
            _positive(f"{field}[{k}][1] (S/m)", point[1])
        xs = tuple(float(p[0]) for p in value)
        if any(b <= a for a, b in zip(xs, xs[1:])):
            raise ConfigError(f"{field}: the Li fractions {list(xs)} must increase strictly")
        return xs, tuple(float(p[1]) for p in value)


@dataclasses.dataclass(frozen=True)
class NumericsConfig:
    time_step_safety: float = 0.9
    max_time_step_s: float | None = None
    checkpoint_every: int = 16
    # steps per device call (the host writes records once per chunk; particle runs use
    # the largest multiple of checkpoint_every ≤ this that divides a snapshot interval), and
    # which driver runs them ("device": engine.solve; "host": the legacy loop of
    # engine/runs/host_cell.py, kept until the device stepper has replaced it everywhere)
    chunk_steps: int = 256
    cell_driver: str = "device"
    # device stepper: a CC step ends within this of its voltage limit, a CV step when
    # |I| ≤ (1 + cutoff_tolerance) × its cut-off current
    cutoff_tolerance_V: float = 1e-4
    cutoff_tolerance: float = 1e-3

    def validate(self):
        if not _is_number(self.time_step_safety) or not 0 < self.time_step_safety <= 1:
            raise ConfigError(
                f"numerics.time_step_safety = {self.time_step_safety!r}: valid range is (0, 1]"
            )
        if self.max_time_step_s is not None:
            _positive("numerics.max_time_step_s", self.max_time_step_s)
        if not _is_int(self.checkpoint_every) or self.checkpoint_every < 1:
            raise ConfigError(
                f"numerics.checkpoint_every = {self.checkpoint_every!r}: must be an integer ≥ 1"
            )
        if not _is_int(self.chunk_steps) or not 1 <= self.chunk_steps <= 100_000:
            raise ConfigError(f"numerics.chunk_steps = {self.chunk_steps!r}: must be an integer in [1, 100000]")
        _choice("numerics.cell_driver", self.cell_driver, ("device", "host"))
        if not _is_number(self.cutoff_tolerance_V) or not 0 < self.cutoff_tolerance_V <= 0.1:
            raise ConfigError(f"numerics.cutoff_tolerance_V = {self.cutoff_tolerance_V!r}: valid range is (0, 0.1] V")
        if not _is_number(self.cutoff_tolerance) or not 0 < self.cutoff_tolerance <= 0.5:
            raise ConfigError(f"numerics.cutoff_tolerance = {self.cutoff_tolerance!r}: valid range is (0, 0.5]")


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    n_snapshots: int = 7
    timeseries_every: int = 1
    summary_png: bool = True

    def validate(self):
        if not _is_int(self.n_snapshots) or not 2 <= self.n_snapshots <= MAX_SNAPSHOTS:
            raise ConfigError(f"output.n_snapshots = {self.n_snapshots!r}: must be an integer in [2, "
                              f"{MAX_SNAPSHOTS}]")
        if not isinstance(self.summary_png, bool):
            raise ConfigError(f"output.summary_png = {self.summary_png!r}: must be true or false")
        if not _is_int(self.timeseries_every) or self.timeseries_every < 1:
            raise ConfigError(
                f"output.timeseries_every = {self.timeseries_every!r}: must be an integer ≥ 1"
            )


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Several values of one scenario key, run as one batched computation
    (engine.runs.sweep); ``parameter = ""`` means no sweep."""

    parameter: str = ""
    values: tuple = ()
    batch_size: int = 0  # lanes per vmapped batch; 0 = all lanes at once

    def validate(self):
        if not isinstance(self.parameter, str):
            raise ConfigError(f"sweep.parameter = {self.parameter!r}: must be a string SECTION.KEY")
        if not _is_int(self.batch_size) or self.batch_size < 0:
            raise ConfigError(f"sweep.batch_size = {self.batch_size!r}: must be an integer ≥ 0 (0 = all lanes)")
        if not self.parameter:
            if self.values:
                raise ConfigError("sweep.values given without sweep.parameter")
            return
        section, _, key = self.parameter.partition(".")
        valid = self.parameter == "protocol.c_rate" or (
            section in SECTIONS and section not in ("run", "output", "sweep")
            and key in {f.name for f in dataclasses.fields(SECTIONS[section])})
        if not valid:
            raise ConfigError(
                f"sweep.parameter = {self.parameter!r}: unknown key; valid: 'protocol.c_rate' (every "
                "constant-current step) or SECTION.KEY of a physical parameter, e.g. "
                "'electrochemistry.exchange_current_A_m2' or 'material.diffusivity_m2_s'")
        if not isinstance(self.values, (list, tuple)) or len(self.values) < 1:
            raise ConfigError(f"sweep.values = {self.values!r}: needs a list of at least one value")


SECTIONS = {
    "run": RunConfig,
    "particle": ParticleConfig,
    "material": MaterialConfig,
    "protocol": ProtocolConfig,
    "mechanics": MechanicsConfig,
    "cell": CellConfig,
    "composite": CompositeConfig,
    "interface": InterfaceConfig,
    "electrochemistry": ElectrochemistryConfig,
    "numerics": NumericsConfig,
    "output": OutputConfig,
    "sweep": SweepConfig,
}


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A complete, validated scenario."""

    run: RunConfig = RunConfig()
    particle: ParticleConfig = ParticleConfig()
    material: MaterialConfig = MaterialConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    mechanics: MechanicsConfig = MechanicsConfig()
    cell: CellConfig = CellConfig()
    composite: CompositeConfig = CompositeConfig()
    interface: InterfaceConfig = InterfaceConfig()
    electrochemistry: ElectrochemistryConfig = ElectrochemistryConfig()
    numerics: NumericsConfig = NumericsConfig()
    output: OutputConfig = OutputConfig()
    sweep: SweepConfig = SweepConfig()

    def __post_init__(self):
        for name in SECTIONS:
            getattr(self, name).validate()
        _representable(self)
        if self.sweep.parameter:
            for i, value in enumerate(self.sweep.values):
                try:
                    lane_scenario(self, self.sweep.parameter, value)
                except ConfigError as err:
                    raise ConfigError(f"sweep.values[{i}] = {value!r} for {self.sweep.parameter}: {err}") from None
        if self.protocol.kind == "cycling" and not self.cell.enabled:
            raise ConfigError(
                "protocol.kind = 'cycling' needs a cell: set [cell] enabled = true "
                "(a lone particle has no voltage)"
            )
        if self.cell.enabled and self.particle.ndim != 3:
            # measured: a 2D (disc) cell's first potential solve gives ~750 V at a 2C charge, so the
            # charge step ends at once; refused until the 2D cell is fixed and tested
            raise ConfigError(
                f"particle.ndim = {self.particle.ndim} with [cell] enabled = true: cell runs are 3D only so far "
                "(the 2D cell's potential solve is not validated); use ndim = 3, or a particle run for a 2D disc")
        if self.cell.enabled and self.mechanics.enabled:
            self._check_cell_mechanics()
        if not self.cell.enabled and self.mechanics.electrolyte_material != MechanicsConfig.electrolyte_material:
            raise ConfigError(
                f"mechanics.electrolyte_material = {self.mechanics.electrolyte_material!r} in a particle run: "
                "it names the separator of a cell; a particle's surround is mechanics.surrounding_material")
        if self.interface.enabled:
            self._check_interface()
        if self.cell.cathode != "particle":
            self._check_composite_cell()
        if self.cell.enabled and self.protocol.kind != "cycling":
            raise ConfigError(
                f"cell.enabled = true needs protocol.kind = 'cycling' (got {self.protocol.kind!r})"
            )
        if self.cell.enabled and self.cell.particles_along_stack > 1:
            if self.cell.particle_spacing_m < 2 * self.particle.radius_m:
                raise ConfigError(
                    f"cell.particle_spacing_m = {self.cell.particle_spacing_m!r}: the centres of the stacked "
                    f"particles must be at least 2 · particle.radius_m = {2 * self.particle.radius_m:g} m apart "
                    "(they would overlap)")
            if self.numerics.cell_driver != "device":
                raise ConfigError("cell.particles_along_stack > 1 with numerics.cell_driver = 'host': stacked "
                                  "particles run on the device stepper only")
        self._check_first_step()

    def _check_first_step(self):
        """Refuse a protocol whose first step cannot start from material.x_initial: a
        delithiation (charge) of an empty particle, a lithiation (discharge) of a full one,
        or a CC step whose cut-off the open-circuit voltage at x_initial has already
        passed (the step would end at its first solve, doing nothing)."""
        x0 = self.material.x_initial
        if self.protocol.kind != "cycling":
            p = self.protocol
            if (p.sign < 0 and x0 <= 0.0) or (p.sign > 0 and x0 >= 1.0):
                state = "empty (x_initial = 0)" if x0 <= 0.0 else "full (x_initial = 1)"
                raise ConfigError(
                    f"protocol.direction = {p.direction!r} with material.x_initial = {x0!r}: the particle starts "
                    f"{state}, so the first step cannot remove/insert any Li; change the direction or x_initial")
            return
        from ssbx.engine.config.protocol import parse_cycle
        from ssbx.kernels.ocv import get_ocv

        first = parse_cycle(self.protocol.steps)[0]
        if first.mode != "cc":
            return
        charge = first.sign > 0
        if (charge and x0 <= 0.0) or (not charge and x0 >= 1.0):
            raise ConfigError(
                f"protocol.steps[0] = {first.text!r} with material.x_initial = {x0!r}: the particle starts "
                f"{'empty' if charge else 'full'}, so this step cannot start; begin with a "
                f"{'discharge' if charge else 'charge'} or change material.x_initial")
        try:
            ocv = float(get_ocv(self.material.ocv_key(self.electrochemistry.ocv))(x0))
        except (ValueError, TypeError):  # an unknown OCV name is reported by its own check
            return
        if (charge and ocv >= first.voltage_V) or (not charge and ocv <= first.voltage_V):
            raise ConfigError(
                f"protocol.steps[0] = {first.text!r}: the open-circuit voltage at material.x_initial = {x0!r} is "
                f"already {ocv:.4g} V, {'above' if charge else 'below'} the step's {first.voltage_V:g} V cut-off, "
                f"so the step would end before it starts; change x_initial, the cut-off or the first step")

    def _check_composite_cell(self):
        """A composite cathode (cell.cathode = composite / volume) needs a device-driver cell."""
        c = self.cell
        if not c.enabled:
            raise ConfigError(f"cell.cathode = {c.cathode!r} needs [cell] enabled = true")
        if self.numerics.cell_driver != "device":
            raise ConfigError(f"cell.cathode = {c.cathode!r} with numerics.cell_driver = 'host': composite "
                              "cathodes run on the device stepper only; use cell_driver = 'device'")
        if self.interface.enabled:
            raise ConfigError(f"interface.enabled = true with cell.cathode = {c.cathode!r}: debonding is "
                              "implemented and tested for the single-particle cell only")

    def _check_cell_mechanics(self):
        """Refuse the mechanics options a cell run does not honour (never ignore one)."""
        mech = self.mechanics
        if mech.surrounding_material.lower() != "pore":
            raise ConfigError(
                f"mechanics.surrounding_material = {mech.surrounding_material!r} with [cell] enabled = true: "
                "in a cell every phase has its own material (ECBD, carbon, mechanics.electrolyte_material for "
                "the solid electrolyte); surrounding_material is for particle runs, leave it at 'pore'")
        if self.numerics.cell_driver == "host":
            raise ConfigError(
                "mechanics.enabled = true with numerics.cell_driver = 'host': the legacy host loop does not "
                "solve stress; use cell_driver = 'device' or set [mechanics] enabled = false")

    def _check_interface(self):
        """Debonding needs what it couples: mechanics, a cell and a bonded resistance."""
        if not self.mechanics.enabled:
            raise ConfigError("interface.enabled = true needs mechanics.enabled = true (the interface opens in the "
                              "stress solve)")
        if not self.cell.enabled:
            raise ConfigError("interface.enabled = true in a particle run: debonding is coupled to the cell's "
                              "Butler–Volmer kinetics; set [cell] enabled = true (particle runs have no "
                              "interface resistance to raise)")
        if not self.electrochemistry.interface_resistance_ohm_m2 > 0:
            raise ConfigError(
                f"electrochemistry.interface_resistance_ohm_m2 = {self.electrochemistry.interface_resistance_ohm_m2!r}"
                " with interface.enabled = true: the gap raises R_int = R0 exp(g/g0) from this bonded value R0, "
                "which must be > 0 (e.g. 1e-3 Ω m² = 10 Ω cm²)")
        mech = self.mechanics
        if mech.couple_diffusion and mech.coupling_every_steps != self.interface.update_every_steps:
            raise ConfigError(
                f"mechanics.coupling_every_steps = {mech.coupling_every_steps} with interface.update_every_steps = "
                f"{self.interface.update_every_steps}: with debonding, the stress that drives Li is the interface "
                "solve's; set both to the same number")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **sections: dict[str, Any]) -> "Scenario":
        """A copy with some keys changed: ``s.replace(particle={"n_grains": 10})``."""
        merged = self.to_dict()
        for section, values in sections.items():
            if section not in SECTIONS:
                raise ConfigError(_unknown("section", section, SECTIONS))
            merged[section].update(values)
        return scenario_from_dict(merged)


_CC_RATE = re.compile(r"^(charge|discharge)(\s+at\s+)(\S+)(\s+until.*)$", re.I)


def lane_scenario(base: Scenario, parameter: str, value) -> Scenario:
    """The scenario of one lane: ``base`` with ``parameter`` set to ``value``."""
    if parameter == "protocol.c_rate" and base.protocol.kind != "cycling":
        return base.replace(protocol={"c_rate": value}, sweep={"parameter": "", "values": ()})
    if parameter == "protocol.c_rate":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"protocol.c_rate = {value!r}: must be a number > 0")
        rate = f"{float(value):.12f}".rstrip("0").rstrip(".")
        steps = []
        for text in base.protocol.steps:
            m = _CC_RATE.match(" ".join(text.split()))
            steps.append(f"{m.group(1)}{m.group(2)}{rate}C{m.group(4)}" if m else text)
        return base.replace(protocol={"steps": steps}, sweep={"parameter": "", "values": ()})
    section, _, key = parameter.partition(".")
    return base.replace(**{section: {key: value}}, sweep={"parameter": "", "values": ()})


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    """Build a :class:`Scenario` from nested dicts, rejecting unknown sections and keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"scenario must be a table of sections, got {type(data).__name__}")
    sections = {}
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(_unknown("section", section, SECTIONS))
        cls = SECTIONS[section]
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {values!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                raise ConfigError(_unknown(f"key in [{section}]", key, sorted(fields)))
        cleaned = {k: (None if v is False and k in _OPTIONAL_KEYS else v) for k, v in values.items()}
        for key in ("diffusivity_m2_s", "expansion", "steps", "values", "conductors", "size"):
            if isinstance(cleaned.get(key), list):
                cleaned[key] = tuple(cleaned[key])
        if isinstance(cleaned.get("active_electronic_S_m"), list):  # table rows as pairs
            cleaned["active_electronic_S_m"] = tuple(
                tuple(row) if isinstance(row, list) else row for row in cleaned["active_electronic_S_m"])
        try:
            sections[section] = cls(**cleaned)
        except TypeError as err:  # pragma: no cover - guarded by the key check above
            raise ConfigError(f"[{section}]: {err}") from err
    return Scenario(**sections)


# Keys that accept ``false`` in TOML (which has no null) to mean "not set".
_OPTIONAL_KEYS = {
    "n_grains", "mean_grain_size_m", "diffusivity_m2_s", "c_max_mol_m3", "max_time_step_s",
    "expansion", "x_ref", "capacity_Ah", "x_at_0_soc", "x_at_100_soc",
}


def read_toml(path: str | Path, what: str = "scenario file") -> dict[str, Any]:
    """Parse a TOML file; ConfigError if it is missing or not valid TOML."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a folder; give a .toml file")
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a UTF-8 byte-order mark is accepted
        return tomllib.loads(text)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text (byte {err.start}); "
                          "a scenario is a TOML text file") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{what} {str(path)!r} is not valid TOML: {err}") from err
    except OSError as err:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {err.strerror}") from err


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file."""
    return scenario_from_dict(read_toml(path, "scenario file"))


def _file_stem(field: str, value) -> None:
    """Names that become file names (``<run.name>.h5``) stay in the working folder: no separators, no dots-only."""
    if (not isinstance(value, str) or not value.strip() or "/" in value or "\\" in value or "\0" in value
            or value.strip(".") == ""):
        raise ConfigError(f"{field} = {value!r}: must be a non-empty name without '/', '\\' or NUL and not "
                          "only dots (it names the output file)")


def _grains_fit(field: str, n_grains, radius_m: float, voxel_size_m: float, ndim: int) -> None:
    """Refuse more grains than the particle has voxels (the generator would silently cap them)."""
    if n_grains is None:
        return
    r = radius_m / voxel_size_m
    voxels = math.pi * r * r if ndim == 2 else 4.0 / 3.0 * math.pi * r ** 3
    if n_grains > voxels:
        raise ConfigError(f"{field} = {n_grains!r}: the particle has only about {voxels:.0f} voxels "
                          f"(radius_m / voxel_size_m = {r:.3g}, ndim = {ndim}); use at most that many grains")


def _representable(scenario) -> None:
    """Cross-section checks: a particle run needs a reactive surface; diffusivities must survive
    the run's dtype (1e-300 is 0 in float32)."""
    import numpy as np

    if not scenario.cell.enabled and scenario.particle.reactive_fraction == 0:
        raise ConfigError("particle.reactive_fraction = 0: a prescribed-flux run needs reactive surface; valid "
                          "range is (0, 1]")
    dtype = scenario.run.dtype
    tiny = float(np.finfo(dtype).tiny)
    for i, value in enumerate(scenario.material.resolved_diffusivity()):
        if value < tiny:
            raise ConfigError(f"material.diffusivity_m2_s[{i}] = {value!r}: underflows run.dtype = {dtype!r} "
                              f"(smallest normal value {tiny:g}); use a larger value or run.dtype = 'float64'")


def _unknown(what: str, name: str, valid) -> str:
    return f"unknown {what} {name!r}; valid: {sorted(valid)}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(field: str, value) -> None:
    if not _is_number(value) or value <= 0:
        raise ConfigError(f"{field} = {value!r}: must be a finite number > 0")


def _in_range(field: str, value, low: float, high: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not low <= value <= high:
        raise ConfigError(f"{field} = {value!r}: valid range is [{low}, {high}]")


def _choice(field: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{field} = {value!r}: valid values are {list(choices)}")


def jnp_dtype(name: str):
    """jnp dtype of run.dtype; float64 needs 64-bit JAX to be enabled."""
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError(
            "run.dtype = 'float64' needs 64-bit JAX: use `with jax.enable_x64(True):`, set "
            "JAX_ENABLE_X64=1, or pass --float64 on the command line"
        )
    return {"float32": jnp.float32, "float64": jnp.float64}[name]

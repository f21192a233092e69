"""The cell stack around one particle: collector | composite | separator | Li anode.

Stack axis = last array axis (z in 3D). The cathode collector is the face z = 0, the
Li-metal anode the face at the top; both are faces, not voxels. The lateral faces
are periodic and the lateral size follows from the requested areal capacity, with the
capacity given by :func:`cell_capacity_Ah` (the same number sets 1C).
"""

from __future__ import annotations

import math

import numpy as np

from ssbx.kernels.constants import FARADAY

from ssbx.engine.config.scenario import Scenario
from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.composite import Composite, generate_composite, load_volume, parse_label_map
from ssbx.engine.geometry.connectivity import periodic_components
from ssbx.engine.geometry.microstructure import Microstructure, build_microstructure
from ssbx.engine.geometry.volume import load_labels
from ssbx.engine.phases import (ACTIVE, CARBON, COLLECTOR, ECBD, ION_CONDUCTORS, LABEL_NAMES, LI_METAL,
                                SOLID_ELECTROLYTE)

#: smallest composite cathode accepted along each axis (voxels)
MIN_CATHODE_VOXELS = 4


def cell_capacity_Ah(scenario: Scenario, active_volume_m3: float) -> float:
    """The capacity that sets both the cell's cross-section (through the areal capacity)
    and 1C: ``cell.capacity_Ah`` when given, else the theoretical F·c_max·V_active."""
    if scenario.cell.capacity_Ah is not None:
        return float(scenario.cell.capacity_Ah)
    return FARADAY * scenario.material.resolved_c_max() * active_volume_m3 / 3600.0


def cell_microstructure(scenario: Scenario) -> tuple[Microstructure, dict]:
    """Embed the scenario's particle in a collector | composite | separator stack.

    With ``cell.particles_along_stack`` = n > 1 the composite holds n particles on one
    column along the stack axis, their centres ``cell.particle_spacing_m`` apart (the S2
    two-particle variant); particle i is the scenario's particle generated with seed
    ``particle.seed + i`` (its own grains and orientations), the cross-section stays that
    of one particle (the electrode, and its areal capacity, grow n-fold), and
    ``info["particles"]`` carries their ids for the per-particle outputs.

    A whole composite cathode (``cell.cathode = "composite"`` or ``"volume"``) is built
    by :func:`composite_cell_microstructure`."""
    if scenario.cell.cathode != "particle":
        return composite_cell_microstructure(scenario)
    p, c = scenario.particle, scenario.cell
    n = int(c.particles_along_stack)
    particles = [build_microstructure(scenario if i == 0 else scenario.replace(particle={"seed": p.seed + i}),
                                      surrounding="ecbd", margin_voxels=c.composite_margin_voxels)
                 for i in range(n)]
    particle = particles[0]
    h = p.voxel_size_m
    ndim = particle.ndim
    block = particle.labels.shape[0]
    spacing = round(c.particle_spacing_m / h) if n > 1 else 0  # centre-to-centre, voxels
    thickness = block + (n - 1) * spacing
    capacity_Ah = cell_capacity_Ah(scenario, sum(m.active_volume_m3() for m in particles))  # (per m depth in 2D)
    # the cross-section holds one particle's capacity at the areal capacity; stacked copies
    # thicken the electrode (n times the areal capacity), as layers of particles do
    area = capacity_Ah / n * 1e3 / (c.areal_capacity_mAh_cm2 * 1e4)  # m² (m in 2D)
    lateral = round(area ** (1.0 / (ndim - 1)) / h)
    if lateral < block:
        raise ConfigError(
            f"cell.areal_capacity_mAh_cm2 = {c.areal_capacity_mAh_cm2}: the particle would need a "
            f"cross-section of {lateral} voxels but is {block} voxels wide with its margin; "
            f"lower the areal capacity (at most about "
            f"{c.areal_capacity_mAh_cm2 * (lateral / block) ** (ndim - 1):.3g})"
        )
    separator = math.ceil(c.separator_thickness_m / h)
    shape = (lateral,) * (ndim - 1) + (thickness + separator,)
    labels = np.full(shape, ECBD, np.uint8)
    labels[..., thickness:] = SOLID_ELECTROLYTE
    grain_id = np.full(shape, -1, np.int32)
    particle_id = np.full(shape, -1, np.int32)
    start = (lateral - block) // 2
    offset = 0
    for i, m in enumerate(particles):
        window = tuple(slice(start, start + block) for _ in range(ndim - 1)) + (slice(i * spacing,
                                                                                     i * spacing + block),)
        inside = m.grain_id >= 0  # blocks may overlap in their ECBD margins: copy the particle only
        labels[window] = np.where(inside, m.labels, labels[window])
        grain_id[window] = np.where(inside, m.grain_id + offset, grain_id[window])
        particle_id[window] = np.where(inside, i, particle_id[window])
        offset += m.n_grains
    micro = Microstructure(labels, grain_id, np.concatenate([m.orientations for m in particles]),
                           np.concatenate([m.reactive_grains for m in particles]), h)
    info = {
        "cell_area_m2": (lateral * h) ** (ndim - 1),
        "capacity_Ah": capacity_Ah,
        "separator_voxels": separator,
        "composite_voxels": thickness,
    }
    if n > 1:
        centre = np.array([[(start + block / 2) * h] * (ndim - 1) + [(i * spacing + block / 2) * h]
                           for i in range(n)])
        info["particles"] = {
            "particle_id": particle_id,
            "table": {"centre_m": centre, "radius_m": np.full(n, p.radius_m)},
            "composite": {"particles_along_stack": n, "particle_spacing_m": spacing * h,
                          "seeds": [p.seed + i for i in range(n)]},
        }
    return micro, info


def cathode_composite(scenario: Scenario) -> Composite:
    """The composite cathode of a cell: generated from ``[composite]``
    (``cell.cathode = "composite"``) or read from ``cell.cathode_volume`` with
    ``cell.cathode_label_map`` (``"volume"``; voxel edge ``composite.voxel_size_m``).

    Particles are the generator's (``particle_id``: one id per generated secondary
    particle, even where it overlaps a neighbour) or, for a loaded volume, the
    face-connected active clusters (x/y periodic) with one random grain each.
    """
    c, comp = scenario.cell, scenario.composite
    if c.cathode == "composite":
        return generate_composite(
            size=tuple(int(n) for n in comp.size), voxel_size_m=comp.voxel_size_m, ratios=comp.ratios,
            porosity=comp.porosity, radius_mean_m=comp.radius_mean_m, radius_std_m=comp.radius_std_m,
            max_overlap=comp.max_overlap, mean_grain_size_m=comp.mean_grain_size_m, carbon=comp.carbon,
            fibre_length_m=comp.fibre_length_m, fibre_diameter_m=comp.fibre_diameter_m,
            carbon_particle_radius_m=comp.carbon_particle_radius_m, pore_radius_m=comp.pore_radius_m,
            seed=comp.seed)
    try:
        mapping = parse_label_map(c.cathode_label_map)
    except ConfigError as err:
        raise ConfigError(f"cell.cathode_label_map = {c.cathode_label_map!r}: {err}") from None
    try:
        raw = np.asarray(load_labels(c.cathode_volume))
    except ConfigError as err:
        raise ConfigError(f"cell.cathode_volume = {c.cathode_volume!r}: {err}") from None
    if raw.ndim != 3:
        raise ConfigError(f"cell.cathode_volume = {c.cathode_volume!r}: a {raw.ndim}D volume of shape "
                          f"{raw.shape}; composite cells are 3D: give an (x, y, z) volume, z the stack axis")
    missing = sorted(set(np.unique(raw).tolist()) - set(mapping))
    if missing:
        raise ConfigError(f"cell.cathode_label_map = {c.cathode_label_map!r}: the values {missing[:8]} of "
                          f"cell.cathode_volume = {c.cathode_volume!r} have no entry; valid: map every value "
                          "present (names: pore, active/NCM, SE/solid_electrolyte, carbon, ecbd)")
    return load_volume(raw, c.cathode_label_map, comp.voxel_size_m, seed=comp.seed)


def composite_cell_microstructure(scenario: Scenario) -> tuple[Microstructure, dict]:
    """Collector (face z = 0) | composite cathode | SE separator | Li anode (top face).

    The composite keeps its own cross-section (laterally periodic, as generated), so the
    cell area is its lateral size and the areal capacity follows from the capacity
    (:func:`cell_capacity_Ah`, which also sets 1C) instead of setting the area;
    ``cell.areal_capacity_mAh_cm2`` is not used. ``info["particles"]`` carries the
    per-particle data the run file writes (``particle_id`` on the cell grid, −1 outside
    the active phase, and the particle table).

    Raises:
        ConfigError: a volume thinner than :data:`MIN_CATHODE_VOXELS` along an axis, one
            without active voxels, or one in which no active voxel touches an ion
            conductor connected to the separator, or none lies in an electron conductor
            connected to the collector (no current could flow).
    """
    c = scenario.cell
    comp = cathode_composite(scenario)
    labels_c = comp.labels
    what = ("composite.size" if c.cathode == "composite" else f"cell.cathode_volume = {c.cathode_volume!r}")
    if min(labels_c.shape) < MIN_CATHODE_VOXELS:
        raise ConfigError(f"{what}: shape {labels_c.shape} is too small; every axis needs at least "
                          f"{MIN_CATHODE_VOXELS} voxels")
    if not np.any(labels_c == ACTIVE):
        raise ConfigError(f"{what}: the cathode has no active voxels")
    h = comp.micro.voxel_size_m
    nx, ny, nz = labels_c.shape
    separator = math.ceil(c.separator_thickness_m / h)
    shape = (nx, ny, nz + separator)
    labels = np.full(shape, SOLID_ELECTROLYTE, np.uint8)
    labels[..., :nz] = labels_c
    grain_id = np.full(shape, -1, np.int32)
    grain_id[..., :nz] = comp.micro.grain_id
    particle_id = np.full(shape, -1, np.int32)
    particle_id[..., :nz] = comp.particle_id
    _check_current_path(labels, what)
    micro = Microstructure(labels, grain_id, comp.micro.orientations, comp.micro.reactive_grains, h)
    capacity_Ah = cell_capacity_Ah(scenario, micro.active_volume_m3())
    area = nx * ny * h * h
    info = {
        "cell_area_m2": area,
        "capacity_Ah": capacity_Ah,
        "separator_voxels": separator,
        "composite_voxels": nz,
        "areal_capacity_mAh_cm2": capacity_Ah * 1e3 / (area * 1e4),
        "particles": {"particle_id": particle_id, "table": comp.particles, "composite": comp.report()},
    }
    return micro, info


def _check_current_path(labels: np.ndarray, what: str) -> None:
    """Refuse a cell in which no active voxel can carry current: one needs an active
    voxel in an electron-conducting cluster that reaches the collector layer (z = 0) and a
    face to an ion-conducting cluster that reaches the anode layer (top)."""
    ionic = np.isin(labels, ION_CONDUCTORS)
    comps, _ = periodic_components(ionic)
    top = np.unique(comps[..., -1])
    to_anode = np.isin(comps, top[top > 0])
    active = labels == ACTIVE
    touching = np.zeros_like(active)
    for axis in range(3):
        for shift in (1, -1):
            nb = np.roll(to_anode, shift, axis=axis)
            if axis == 2:  # not periodic along the stack
                if shift == 1:
                    nb[..., 0] = False
                else:
                    nb[..., -1] = False
            touching |= active & nb
    if not touching.any():
        raise ConfigError(f"{what}: no active voxel touches a solid electrolyte (or ECBD) connected to the "
                          "separator, so no Li can leave the cathode; the cathode needs an ion-conducting "
                          "path from the separator to at least one particle")
    electronic = np.isin(labels, (ACTIVE, CARBON, ECBD))
    comps, _ = periodic_components(electronic)
    bottom = np.unique(comps[..., 0])
    grounded = np.isin(comps, bottom[bottom > 0])
    if not np.any(grounded & touching):
        raise ConfigError(f"{what}: no reactive active voxel is electronically connected to the collector "
                          "(z = 0) through active material, carbon or ECBD; the cathode needs an electronic "
                          "path from the collector to a particle that touches the electrolyte")


def phase_conductivities(labels: np.ndarray, ec) -> tuple[np.ndarray, np.ndarray]:
    """Electronic and ionic conductivity maps σ_s, σ_e (S/m) of a label volume.

    Electron conductors (docs/physics.md §3): active NCM (``active_electronic_S_m``; under an
    x-dependent law this map holds the law's largest value and the step re-evaluates
    the active voxels), carbon and the ECBD. Ion conductors: solid electrolyte
    (``separator_ionic_S_m``, the separator and any SE voxel of the composite) and the
    ECBD. Pores conduct neither; the collector and the Li metal are the stack's end
    faces, not voxels, so a volume that still holds them is refused.
    """
    labels = np.asarray(labels)
    for label in (LI_METAL, COLLECTOR):
        if np.any(labels == label):
            raise ConfigError(
                f"cell geometry: {int(np.sum(labels == label))} voxels are labelled {LABEL_NAMES[label]!r} "
                f"({label}); the collector and the Li anode are the stack's end faces, not voxels")
    law = ec.active_conductivity_table()
    sigma_active = ec.active_electronic_S_m if law is None else max(law[1])
    electronic = {ACTIVE: sigma_active, CARBON: ec.carbon_electronic_S_m, ECBD: ec.ecbd_electronic_S_m}
    ionic = {SOLID_ELECTROLYTE: ec.separator_ionic_S_m, ECBD: ec.ecbd_ionic_S_m}
    sigma_s = np.zeros(labels.shape)
    sigma_e = np.zeros(labels.shape)
    for label, value in electronic.items():
        sigma_s[labels == label] = value
    for label, value in ionic.items():
        sigma_e[labels == label] = value
    return sigma_s, sigma_e

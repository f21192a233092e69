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
from ssbx.engine.geometry.microstructure import Microstructure, build_microstructure
from ssbx.engine.phases import (ACTIVE, CARBON, COLLECTOR, ECBD, LABEL_NAMES, LI_METAL,
                                SOLID_ELECTROLYTE)


def cell_capacity_Ah(scenario: Scenario, active_volume_m3: float) -> float:
    """The capacity that sets both the cell's cross-section (through the areal capacity)
    and 1C: ``cell.capacity_Ah`` when given, else the theoretical F·c_max·V_active."""
    if scenario.cell.capacity_Ah is not None:
        return float(scenario.cell.capacity_Ah)
    return FARADAY * scenario.material.resolved_c_max() * active_volume_m3 / 3600.0


def cell_microstructure(scenario: Scenario) -> tuple[Microstructure, dict]:
    """Embed the scenario's particle in a collector | composite | separator stack."""
    p, c = scenario.particle, scenario.cell
    particle = build_microstructure(scenario, surrounding="ecbd", margin_voxels=c.composite_margin_voxels)
    h = p.voxel_size_m
    ndim = particle.ndim
    block = particle.labels.shape[0]
    capacity_Ah = cell_capacity_Ah(scenario, particle.active_volume_m3())  # (per m depth in 2D)
    area = capacity_Ah * 1e3 / (c.areal_capacity_mAh_cm2 * 1e4)  # m² (m in 2D)
    lateral = round(area ** (1.0 / (ndim - 1)) / h)
    if lateral < block:
        raise ConfigError(
            f"cell.areal_capacity_mAh_cm2 = {c.areal_capacity_mAh_cm2}: the particle would need a "
            f"cross-section of {lateral} voxels but is {block} voxels wide with its margin; "
            f"lower the areal capacity (at most about "
            f"{c.areal_capacity_mAh_cm2 * (lateral / block) ** (ndim - 1):.3g})"
        )
    separator = math.ceil(c.separator_thickness_m / h)
    shape = (lateral,) * (ndim - 1) + (block + separator,)
    labels = np.full(shape, ECBD, np.uint8)
    labels[..., block:] = SOLID_ELECTROLYTE
    grain_id = np.full(shape, -1, np.int32)
    start = (lateral - block) // 2
    window = tuple(slice(start, start + block) for _ in range(ndim - 1)) + (slice(0, block),)
    labels[window] = particle.labels
    grain_id[window] = particle.grain_id
    micro = Microstructure(labels, grain_id, particle.orientations, particle.reactive_grains, h)
    info = {
        "cell_area_m2": (lateral * h) ** (ndim - 1),
        "capacity_Ah": capacity_Ah,
        "separator_voxels": separator,
        "composite_voxels": block,
    }
    return micro, info


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

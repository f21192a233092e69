"""Stress from chemical expansion at snapshot times (physics.md §4), for ``ssbx run``.

The Li field x of a snapshot sets, per voxel, the stiffness C = C0 + x (C1 − C0) and
the chemical eigenstrain ε* = R_g diag(β) R_gᵀ (x − x_ref) of its grain; the
periodic voxel cell is solved by :func:`ssbx.kernels.elasticity.solve_elasticity`
with every mean stress component controlled: zero, except an optional stack
pressure p along the stack axis (z in 3D, y in 2D; σ̄ = −p). With the default
mechanical surrounding "pore" the particle is free (S1); to embed it, name a solid
(e.g. "ECBD", "LLZO") and give the box enough margin that periodic images are far.

Mechanics is one-way coupled here: stress does not yet feed back into diffusion
(the Ω∇σ_h term of physics.md §1 is off).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ssbx.kernels import elasticity as kel

from .errors import ConfigError
from .mechanics_materials import (
    MECHANICS_MATERIALS,
    ElasticMaterial,
    build_phase_tables,
    get_mechanics_material,
)
from .microstructure import ACTIVE, Microstructure

STACK_COMPONENT = {3: 2, 2: 1}  # σ_zz in 3D, σ_yy in the 2D (xx, yy, xy) layout


def check_material_name(field: str, name: str) -> None:
    try:
        get_mechanics_material(name)
    except ValueError as err:
        raise ConfigError(
            f"{field} = {name!r}: unknown mechanics material; valid names are {sorted(MECHANICS_MATERIALS)}"
        ) from err


def active_material(name: str, expansion) -> ElasticMaterial:
    """The active material, with its chemical expansion replaced if ``expansion`` is given."""
    base = get_mechanics_material(name)
    if expansion is None:
        return base
    return dataclasses.replace(base, expansion=tuple(float(b) for b in expansion))


@dataclasses.dataclass(frozen=True)
class StressSolver:
    """Phase tables of one microstructure plus the jitted solve (reused every snapshot)."""

    phase_index: jnp.ndarray
    table0: jnp.ndarray
    table1: jnp.ndarray
    expansion: jnp.ndarray
    x_ref: float
    stack_pressure_Pa: float
    tol: float
    maxiter: int
    ndim: int

    @classmethod
    def build(cls, micro: Microstructure, cfg, x_ref: float, dtype) -> "StressSolver":
        materials = {ACTIVE: active_material(cfg.active_material, cfg.expansion)}
        for label in np.unique(micro.labels):
            if label != ACTIVE:
                materials[int(label)] = cfg.surrounding_material
        tables = build_phase_tables(micro.labels, micro.grain_id, micro.orientations, materials)
        return cls(
            phase_index=tables.phase_index,
            table0=jnp.asarray(tables.table0, dtype),
            table1=jnp.asarray(tables.table1, dtype),
            expansion=jnp.asarray(tables.expansion, dtype),
            x_ref=float(x_ref),
            stack_pressure_Pa=float(cfg.stack_pressure_Pa),
            tol=float(cfg.tol),
            maxiter=int(cfg.maxiter),
            ndim=micro.ndim,
        )

    def solve(self, x) -> kel.ElasticityResult:
        """Stress for the Li field ``x`` (non-active voxels may hold anything finite)."""
        n = 6 if self.ndim == 3 else 3
        stress = np.zeros(n)
        stress[STACK_COMPONENT[self.ndim]] = -self.stack_pressure_Pa
        return _solve_jit(
            self.table0, self.table1, self.phase_index, jnp.nan_to_num(x),
            self.expansion, jnp.asarray(self.x_ref, x.dtype), jnp.asarray(stress, x.dtype),
            self.tol, self.maxiter,
        )


@eqx.filter_jit
def _solve_jit(t0, t1, idx, x, expansion, x_ref, stress, tol, maxiter):
    return kel.solve_elasticity(
        t0, t1, idx, x,
        expansion_table=expansion, x_ref=x_ref,
        macro_stress=stress, stress_mask=jnp.ones(stress.shape, bool),
        tol=tol, maxiter=maxiter,
    )


def stress_outputs(result: kel.ElasticityResult, active: np.ndarray):
    """Snapshot fields (Pa, NaN outside the active phase) and per-snapshot statistics."""
    vm = np.asarray(kel.von_mises(result.stress), np.float64)
    sh = np.asarray(kel.hydrostatic(result.stress), np.float64)
    ev = np.asarray(kel.volumetric_strain(result.strain), np.float64)
    principal = np.asarray(kel.principal_stresses(result.stress), np.float64)
    fields = {
        "von_mises_Pa": np.where(active, vm, np.nan),
        "hydrostatic_Pa": np.where(active, sh, np.nan),
        "max_principal_Pa": np.where(active, principal[-1], np.nan),
        "volumetric_strain": np.where(active, ev, np.nan),
    }
    stats = {
        "von_mises_max_Pa": float(vm[active].max()),
        "hydrostatic_max_Pa": float(sh[active].max()),
        "hydrostatic_min_Pa": float(sh[active].min()),
        "max_principal_max_Pa": float(principal[-1][active].max()),
        "volumetric_strain_max": float(ev[active].max()),
        "volumetric_strain_min": float(ev[active].min()),
        "cg_iterations": float(result.iterations),
        "cg_residual": float(result.residual),
    }
    return fields, stats


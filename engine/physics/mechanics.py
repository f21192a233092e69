"""Stress from chemical expansion at snapshot times (docs/physics.md §5), for ``ssbx run``.

The Li field x of a snapshot sets, per voxel, the stiffness C = C0 + x (C1 − C0) and
the chemical eigenstrain ε* = R_g diag(β) R_gᵀ (x − x_ref) of its grain; the
periodic voxel cell is solved by :func:`ssbx.kernels.elasticity.solve_elasticity`
with every mean stress component controlled: zero, except an optional stack
pressure p along the stack axis (z in 3D, y in 2D; σ̄ = −p). With the default
mechanical surrounding "pore" the particle is free (S1); to embed it, name a solid
(e.g. "ECBD", "LLZO") and give the box enough margin that periodic images are far.

With ``mechanics.couple_diffusion = true`` the stress also feeds back into Li
transport (:class:`StressCoupling`, the Ω∇σ_h term of docs/physics.md §2 in its tensor
form): the stepper re-solves the stress every ``coupling_every_steps`` steps and
drives Li along the gradient of χ = σ : B / (c_max R T).
"""

from __future__ import annotations

import dataclasses
import threading

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ssbx.kernels import elasticity as kel
from ssbx.kernels.rotations import HIGHEST
from ssbx.kernels.stiffness import grain_expansion_table

from ssbx.engine.materials.elastic import (  # noqa: F401  (check_material_name: engine users)
    check_material_name,
    DEFAULT_LABEL_MATERIALS,
    MECHANICS_MATERIALS,
    ElasticMaterial,
    build_phase_tables,
    get_mechanics_material,
)
from ssbx.engine.geometry.microstructure import ACTIVE, SOLID_ELECTROLYTE, Microstructure

STACK_COMPONENT = {3: 2, 2: 1}  # σ_zz in 3D, σ_yy in the 2D (xx, yy, xy) layout
from ssbx.kernels.constants import GAS_CONSTANT  # noqa: E402




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
    def build(cls, micro: Microstructure, cfg, x_ref: float, dtype, cell: bool = False) -> "StressSolver":
        """``cell``: every label has its own material (:func:`cell_materials`), else the
        particle-run rule (every non-active voxel is ``cfg.surrounding_material``)."""
        materials = cell_materials(micro, cfg) if cell else _materials(micro, cfg)
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
        """Stress for the Li field ``x`` (non-active voxels may hold anything finite).

        A field without eigenstrain (every voxel whose x differs from x_ref has a zero
        expansion row, e.g. the uniform x = x_ref of a run's first snapshot) under zero
        mean stress has the exact solution ε = σ = 0: it is returned without a solve
        (0 iterations, residual 0, which is what CG returns for a zero right-hand side).
        """
        x = jnp.asarray(x)
        if self._is_stress_free(x):
            zero = jnp.zeros((6,) + tuple(x.shape), x.dtype)
            mean = jnp.zeros((6,), x.dtype)
            return kel.ElasticityResult(strain=zero, stress=zero, mean_strain=mean, mean_stress=mean,
                                        iterations=jnp.asarray(0, jnp.int32), residual=jnp.asarray(0.0, x.dtype),
                                        converged=jnp.asarray(True))
        warm = self.__dict__.get("_warm_up")
        if warm is not None:  # the programs compiled in the background are ready after this
            warm.join()
        return self._cg(x)

    def _cg(self, x) -> kel.ElasticityResult:
        """The CG solve of ``x`` (what :meth:`solve` runs unless the field is stress-free)."""
        stress = _macro_stress(self.ndim, self.stack_pressure_Pa)
        return _solve_jit(
            self.table0, self.table1, self.phase_index, jnp.nan_to_num(x),
            self.expansion, jnp.asarray(self.x_ref, x.dtype), jnp.asarray(stress, x.dtype),
            self.tol, self.maxiter,
        )

    def _is_stress_free(self, x) -> bool:
        """True if ``x`` carries no eigenstrain and no mean stress is applied (host check)."""
        if self.stack_pressure_Pa != 0.0:
            return False
        x_np = np.nan_to_num(np.asarray(x))
        moved = x_np != np.asarray(self.x_ref, x_np.dtype)
        if not moved.any():
            return True
        expanding = np.any(np.asarray(self.expansion) != 0, axis=1)
        return not expanding[np.asarray(self.phase_index)[moved]].any()

    def warm_up(self, dtype) -> threading.Thread:
        """Compile the solve for this grid in a background thread (returned, started),
        so that the compilation (~2-3 s at 157 464 voxels on a 2-core CPU) overlaps the
        run's first chunks; :meth:`solve` waits for it before its first solve and reuses
        the compiled program. The warm-up solves a field at x_ref (zero right-hand side
        unless a stack pressure is applied: CG stops at once or soon). Errors are left to
        the real solve to raise."""
        x64 = bool(jax.config.jax_enable_x64)  # a float64 run's jax.enable_x64 is thread-local

        def work():
            try:
                with jax.enable_x64(x64):
                    jax.block_until_ready(self._cg(jnp.full(self.phase_index.shape, self.x_ref, dtype)))
            except Exception:  # noqa: BLE001 - the run's own solve reports it
                pass

        # not a daemon: the interpreter waits for it at exit (at most the compile time) rather
        # than finalising while XLA is still compiling in it (a run stopped before its first
        # stressed snapshot)
        thread = threading.Thread(target=work, name="ssbx-stress-warm-up", daemon=False)
        object.__setattr__(self, "_warm_up", thread)  # frozen dataclass: joined by solve()
        thread.start()
        return thread


def voigt_moduli(stiffness):
    """Voigt-average bulk and shear moduli (Pa) of a (6, 6) Voigt stiffness."""
    c = np.asarray(stiffness, np.float64)
    bulk = (c[0, 0] + c[1, 1] + c[2, 2] + 2 * (c[0, 1] + c[0, 2] + c[1, 2])) / 9
    shear = (c[0, 0] + c[1, 1] + c[2, 2] - (c[0, 1] + c[0, 2] + c[1, 2])
             + 3 * (c[3, 3] + c[4, 4] + c[5, 5])) / 15
    return float(bulk), float(shear)


def _macro_stress(ndim, stack_pressure_Pa):
    stress = np.zeros(6 if ndim == 3 else 3)
    stress[STACK_COMPONENT[ndim]] = -stack_pressure_Pa
    return stress


def _materials(micro: Microstructure, cfg):
    materials = {ACTIVE: active_material(cfg.active_material, cfg.expansion)}
    for label in np.unique(micro.labels):
        if label != ACTIVE:
            materials[int(label)] = cfg.surrounding_material
    return materials


def cell_materials(micro: Microstructure, cfg):
    """Material per label of a cell: the active material, ``cfg.electrolyte_material``
    for the solid electrolyte and the defaults of DEFAULT_LABEL_MATERIALS for the rest
    (ECBD, carbon, pore, Li, Al)."""
    materials = {}
    for label in np.unique(micro.labels):
        label = int(label)
        if label == ACTIVE:
            materials[label] = active_material(cfg.active_material, cfg.expansion)
        elif label == SOLID_ELECTROLYTE:
            materials[label] = cfg.electrolyte_material
        else:
            materials[label] = DEFAULT_LABEL_MATERIALS[label]
    return materials


class StressCoupling(eqx.Module):
    """Stress-assisted Li transport (docs/physics.md §2): the stress potential χ(x).

    The Li chemical potential gains −σ : ∂ε*/∂c = −σ : B / c_max per mole (Larché–Cahn;
    B = R diag(β) Rᵀ is the grain's expansion per unit x), so the flux is
    J / c_max = −D (∇x − x ∇χ) with χ = σ : B / (c_max R T). For an isotropic
    B = (Ω c_max / 3) I this is the Ω σ_h / (R T) of docs/physics.md §2 (Zhang, Shyy &
    Sastry, J. Electrochem. Soc. 154, A910 (2007)); the x-dependence of the stiffness
    adds a term quadratic in the elastic strain that is left out. β is a pytree leaf,
    so it can be fitted (engine.inverse.parameters).

    Attributes:
        phase_index, table0, table1: elasticity phase tables (build_phase_tables).
        beta: (3,) principal chemical expansion of the active material per unit x.
        label_expansion: (7, 6) expansion rows of the non-active label phases.
        x_ref: stress-free Li content.
        macro_stress: mean stress components (Pa; all stress controlled).
        temperature_K, tol, maxiter: static.
    """

    phase_index: jax.Array
    table0: jax.Array
    table1: jax.Array
    beta: jax.Array
    label_expansion: jax.Array
    x_ref: jax.Array
    macro_stress: jax.Array
    bulk_Pa: jax.Array
    shear_Pa: jax.Array
    temperature_K: float = eqx.field(static=True)
    tol: float = eqx.field(static=True)
    maxiter: int = eqx.field(static=True)

    @classmethod
    def build(cls, micro: Microstructure, cfg, x_ref: float, temperature_K: float, dtype,
              cell: bool = False) -> "StressCoupling":
        """``cell``: every label its own material (:func:`cell_materials`), else the
        particle-run rule (every non-active voxel is ``cfg.surrounding_material``)."""
        materials = cell_materials(micro, cfg) if cell else _materials(micro, cfg)
        tables = build_phase_tables(micro.labels, micro.grain_id, micro.orientations, materials)
        n_grains = int(np.asarray(micro.orientations).shape[0])
        act = materials[ACTIVE]
        c_ref = np.asarray(act.stiffness_delithiated) + x_ref * (
            np.asarray(act.stiffness_lithiated) - np.asarray(act.stiffness_delithiated))
        bulk, shear = voigt_moduli(c_ref)
        return cls(
            phase_index=jnp.asarray(tables.phase_index),
            table0=jnp.asarray(tables.table0, dtype),
            table1=jnp.asarray(tables.table1, dtype),
            beta=jnp.asarray(materials[ACTIVE].expansion, dtype),
            label_expansion=jnp.asarray(tables.expansion[n_grains:], dtype),
            x_ref=jnp.asarray(x_ref, dtype),
            macro_stress=jnp.asarray(_macro_stress(micro.ndim, cfg.stack_pressure_Pa), dtype),
            bulk_Pa=jnp.asarray(bulk, dtype),
            shear_Pa=jnp.asarray(shear, dtype),
            temperature_K=float(temperature_K),
            tol=float(cfg.tol),
            maxiter=int(cfg.maxiter),
        )

    def local_theta(self, c_max_mol_m3):
        """θ = −∂χ/∂x of a voxel's own Li content, from a spherical Eshelby inclusion.

        A local change δx of the eigenstrain B δx in an isotropic medium (K, μ: the
        Voigt averages of the active stiffness at x_ref) responds with
        δσ = −[3K(1 − a) (tr B/3) I + 2μ(1 − e) B_dev] δx, a = (1 + ν)/(3(1 − ν)),
        e = 2(4 − 5ν)/(15(1 − ν)) (Eshelby, Proc. R. Soc. A 241, 376 (1957)), so

            θ = [K (1 − a) (tr B)² + 2μ (1 − e) B_dev : B_dev] / (c_max R T),

        the same for every grain (rotation invariants of B). For a homogeneous
        isotropic body and a one-dimensional Li profile this is exact: θ =
        2 E b² / ((1 − ν) c_max R T) for B = b I (Zhang, Shyy & Sastry 2007). The
        stepper uses θ to carry χ between stress solves (see model.rollout) and the
        time step uses D (1 + θ).
        """
        k, mu = self.bulk_Pa, self.shear_Pa
        nu = (3 * k - 2 * mu) / (2 * (3 * k + mu))
        a = (1 + nu) / (3 * (1 - nu))
        e = 2 * (4 - 5 * nu) / (15 * (1 - nu))
        trace = jnp.sum(self.beta)
        dev2 = jnp.sum((self.beta - trace / 3) ** 2)
        return (k * (1 - a) * trace**2 + 2 * mu * (1 - e) * dev2) / (
            c_max_mol_m3 * GAS_CONSTANT * self.temperature_K)

    def expansion_table(self, orientations):
        """(n_grains + 7, 6) sample-frame expansion per unit x (tensor components)."""
        grains = grain_expansion_table(orientations, self.beta)
        return jnp.concatenate([grains.astype(self.table0.dtype), self.label_expansion])

    def solve(self, orientations, x, initial_guess=None) -> kel.ElasticityResult:
        """The stress of the Li field ``x`` (non-active voxels may hold anything finite).
        ``initial_guess``: the ``cg_solution`` of an earlier solve on this grid (CG starts
        there; same stopping rule, kernels.elasticity.solve_elasticity)."""
        return kel.solve_elasticity(
            self.table0, self.table1, self.phase_index, x,
            expansion_table=self.expansion_table(orientations), x_ref=self.x_ref,
            macro_stress=self.macro_stress, stress_mask=jnp.ones(self.macro_stress.shape, bool),
            tol=self.tol, maxiter=self.maxiter, initial_guess=initial_guess,
        )

    def potential(self, orientations, c_max_mol_m3, x, active):
        """χ = σ : B / (c_max R T) on active voxels (0 elsewhere), dimensionless."""
        return self.potential_of(self.solve(orientations, x), orientations, c_max_mol_m3, active)

    def zero_guess(self, dtype):
        """A ``cg_solution``-shaped zero (nodal displacement (3, *grid), also on 2D grids,
        and mean strain (6,); kernels.elasticity): CG from it takes the same iterations as a
        cold start."""
        shape = self.phase_index.shape
        return (jnp.zeros((3,) + shape, dtype), jnp.zeros((6,), dtype))

    def potential_warm(self, orientations, c_max_mol_m3, x, active, guess):
        """(χ, cg_solution): :meth:`potential` with CG started from ``guess`` (the previous
        solve's ``cg_solution``), for the next warm start."""
        result = self.solve(orientations, x, initial_guess=guess)
        return self.potential_of(result, orientations, c_max_mol_m3, active), result.cg_solution

    def potential_of(self, result: kel.ElasticityResult, orientations, c_max_mol_m3, active):
        """χ of an already solved stress ``result``."""
        table = self.expansion_table(orientations)
        b = jnp.moveaxis(table[self.phase_index], -1, 0)  # (6, *grid)
        shear_twice = jnp.asarray([1.0, 1.0, 1.0, 2.0, 2.0, 2.0], result.stress.dtype)  # tensor (not Voigt) shear
        work = jnp.tensordot(shear_twice, result.stress * b, axes=1, precision=HIGHEST)
        return jnp.where(active, work / (c_max_mol_m3 * GAS_CONSTANT * self.temperature_K), 0.0)


def stress_free_x(scenario) -> float:
    """The stress-free Li content: mechanics.x_ref, by default material.x_initial."""
    mech = scenario.mechanics
    return scenario.material.x_initial if mech.x_ref is None else mech.x_ref


def scenario_stress_coupling(scenario, micro: Microstructure, dtype, cell: bool = False):
    """The scenario's StressCoupling, or None unless mechanics.couple_diffusion is on
    (``cell``: the materials of a cell's phases, see StressCoupling.build)."""
    mech = scenario.mechanics
    if not (mech.enabled and mech.couple_diffusion):
        return None
    return StressCoupling.build(micro, mech, stress_free_x(scenario), scenario.electrochemistry.temperature_K, dtype,
                                cell=cell)


@eqx.filter_jit
def _solve_jit(t0, t1, idx, x, expansion, x_ref, stress, tol, maxiter):
    return kel.solve_elasticity(
        t0, t1, idx, x,
        expansion_table=expansion, x_ref=x_ref,
        macro_stress=stress, stress_mask=jnp.ones(stress.shape, bool),
        tol=tol, maxiter=maxiter,
    )


def stress_outputs(result: kel.ElasticityResult, active: np.ndarray, region: np.ndarray | None = None):
    """Snapshot fields (Pa, NaN outside ``region``, by default the active phase) and
    per-snapshot statistics of the active phase."""
    region = active if region is None else region
    # on the host in float64 (NumPy: nothing to compile), the largest principal stress in
    # closed form: as eager JAX operations these compiled one by one at the first snapshot
    # (~0.7 s) and the batched eigvalsh took 0.1-0.15 s per snapshot at 157 464 voxels
    stress = np.asarray(result.stress, np.float64)
    vm = kel.von_mises(stress)
    sh = kel.hydrostatic(stress)
    top = kel.max_principal_stress(stress)
    ev = kel.volumetric_strain(np.asarray(result.strain)[:3].astype(np.float64))
    fields = {
        "von_mises_Pa": np.where(region, vm, np.nan),
        "hydrostatic_Pa": np.where(region, sh, np.nan),
        "max_principal_Pa": np.where(region, top, np.nan),
        "volumetric_strain": np.where(region, ev, np.nan),
    }
    stats = {
        "von_mises_max_Pa": float(vm[active].max()),
        "hydrostatic_max_Pa": float(sh[active].max()),
        "hydrostatic_min_Pa": float(sh[active].min()),
        "max_principal_max_Pa": float(top[active].max()),
        "volumetric_strain_max": float(ev[active].max()),
        "volumetric_strain_min": float(ev[active].min()),
        "cg_iterations": float(result.iterations),
        "cg_residual": float(result.residual),
    }
    return fields, stats


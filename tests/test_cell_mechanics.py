"""Stress in cell runs (engine.physics.mechanics with cell=True): equilibrium of the whole
stack, the materials of its phases, and the combinations that are refused rather than
ignored. The run file's stress fields are tested on the shared cell run of test_cell.py."""

import numpy as np
import jax.numpy as jnp
import pytest

from test_cell import SMALL, SMALL_STRESS

from ssbx.engine.geometry import cell_stack
from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.errors import ConfigError
from ssbx.engine.physics.mechanics import StressSolver
from ssbx.engine.materials.elastic import get_mechanics_material
from ssbx.engine.geometry.microstructure import ACTIVE, ECBD, SOLID_ELECTROLYTE


@pytest.fixture(scope="module")
def cell_solver():
    data = dict(SMALL, mechanics={"enabled": True, "electrolyte_material": "LLZO", "stack_pressure_Pa": 5e6,
                                  "tol": 1e-10, "maxiter": 2000})
    scenario = scenario_from_dict(data)
    micro, _ = cell_stack.cell_microstructure(scenario)
    return micro, scenario


def test_plane_means_of_the_normal_stress_are_the_applied_stress(cell_solver, x64):
    """Equilibrium of a laterally periodic stack: ∂σ_zj/∂x_j = 0 averaged over a plane
    z = const leaves d⟨σ_zz⟩/dz = 0, so every plane carries the stack pressure,
    ⟨σ_zz⟩(z) = −p, however the particle, the ECBD and the separator share it (and
    ⟨σ_xx⟩(x) = ⟨σ_yy⟩(y) = 0 laterally). A random Li field makes the stress
    inhomogeneous (GPa) while the plane means stay exact."""
    micro, scenario = cell_solver
    solver = StressSolver.build(micro, scenario.mechanics, 0.95, jnp.float64, cell=True)
    rng = np.random.default_rng(0)
    x = np.where(micro.active, rng.uniform(0.4, 0.95, micro.labels.shape), 0.0)
    stress = np.asarray(solver.solve(jnp.asarray(x)).stress)
    scale = np.abs(stress[:3]).max()
    assert scale > 1e8  # the field is far from uniform
    for axis, applied in ((0, 0.0), (1, 0.0), (2, -5e6)):
        others = tuple(a for a in range(3) if a != axis)
        plane_means = stress[axis].mean(axis=others)
        np.testing.assert_allclose(plane_means, applied, atol=1e-10 * scale)


def test_every_cell_phase_has_its_own_material(cell_solver):
    """Separator voxels get mechanics.electrolyte_material, the composite's binder the
    ECBD constants and the particle its grains' rotated NCM stiffness — not the
    particle run's single surrounding material."""
    micro, scenario = cell_solver
    solver = StressSolver.build(micro, scenario.mechanics, 0.95, jnp.float32, cell=True)
    stiffness = np.asarray(solver.table0)[np.asarray(solver.phase_index)]
    for label, name in ((SOLID_ELECTROLYTE, "LLZO"), (ECBD, "ECBD")):
        expected = np.asarray(get_mechanics_material(name).stiffness_delithiated, np.float32)
        np.testing.assert_allclose(stiffness[micro.labels == label], np.broadcast_to(
            expected, stiffness[micro.labels == label].shape), rtol=1e-6)
    grains = np.asarray(solver.phase_index)[micro.labels == ACTIVE]
    assert set(np.unique(grains)) == set(np.unique(micro.grain_id[micro.active]))


@pytest.mark.parametrize("mechanics, words", [
    ({"surrounding_material": "LLZO"}, ["mechanics.surrounding_material = 'LLZO'", "electrolyte_material"]),
    ({"electrolyte_material": "granite"}, ["mechanics.electrolyte_material = 'granite'", "valid names"]),
])
def test_unsupported_cell_mechanics_is_refused(mechanics, words):
    with pytest.raises(ConfigError) as err:
        scenario_from_dict(dict(SMALL_STRESS, mechanics=dict(SMALL_STRESS["mechanics"], **mechanics)))
    for word in words:
        assert word in str(err.value)


def test_host_driver_and_particle_runs_refuse_what_they_would_ignore():
    with pytest.raises(ConfigError, match="cell_driver = 'host'"):
        scenario_from_dict(dict(SMALL_STRESS, numerics={"cell_driver": "host"}))
    with pytest.raises(ConfigError, match="electrolyte_material = 'LLZO' in a particle run"):
        scenario_from_dict({"mechanics": {"electrolyte_material": "LLZO"}})

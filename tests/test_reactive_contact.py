"""Reactive contact from SOC maps (issue #16 item 2): current conservation of the relaxed
mask, equivalence with the prescribed-flux model for binary masks, recovery of a
synthetic 2/3-reactive mask from projections at three times, and bad input."""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.microstructure import polycrystalline_particle
from ssbx.engine.inverse.fitting import _fields
from ssbx.engine.inverse.reactive_contact import (
    ContactProblem, contact_setup_from_scenario, fit_reactive_contact, make_contact_setup,
    synthetic_contact_maps,
)
from ssbx.engine.model.particle import ParticleGeometry, TransportParams, galvanostatic_flux
from ssbx.engine.observables.observation import ObservationOperator

D = [5e-15, 5e-15, 1e-20]  # NCM622, docs/physics.md S1
C_MAX = 49214.0


def _setup(radius_vox, n_grains, seed, dtype, t_s=(10.0, 20.0, 30.0), axes=(2,)):
    micro = polycrystalline_particle(radius_vox * 1e-7, 1e-7, n_grains=n_grains, reactive_fraction=2 / 3,
                                     seed=seed)
    ops = [ObservationOperator("projection", beam_axis=a, min_thickness_voxels=2) for a in axes]
    return micro, make_contact_setup(micro, D, C_MAX, 0.95, 10.0, -1, list(t_s), ops, dtype)


def test_relaxed_mask_conserves_current_and_reduces_to_the_prescribed_flux_model(x64):
    """Float64, 12³ particle of 10 grains, 10C delithiation, fields at 5 and 10 s.

    * For any weights (random, near-binary, all equal) the redistributed flux carries the
      applied flow Ṅ = −10 C · c_max V / 3600 s to round-off, and the rollout's Li
      inventory changes by exactly Ṅ t (diffusion conserves Li).
    * Scaling all weights changes nothing (the flux depends on w only through w / A(w)).
    * With the true binary mask the relaxed model is the engine's partial-contact model
      (reactive faces of the reactive grains only, uniform galvanostatic flux), built by
      the independent path ParticleGeometry.from_microstructure + galvanostatic_flux.
    """
    micro, setup = _setup(4, 10, 3, jnp.float64, t_s=(5.0, 10.0))
    applied = -10.0 * C_MAX * micro.active_volume_m3() / 3600.0
    assert setup.li_flow_mol_s == pytest.approx(applied, rel=1e-14)
    rng = np.random.default_rng(0)
    flow = jax.jit(setup.li_flow_of)
    for w in (rng.random(setup.n_surface), np.where(rng.random(setup.n_surface) < 0.5, 1e-6, 1.0),
              np.full(setup.n_surface, 0.3)):
        assert abs(float(flow(jnp.asarray(w))) / applied - 1) < 1e-12, w

    run = eqx.filter_jit(lambda g, t: _fields(g, t, setup.x0, setup.segments, setup.uniform))
    relaxed = lambda w: np.asarray(run(setup.geometry, eqx.tree_at(  # noqa: E731
        lambda t: t.flux_mol_m2_s, setup.transport, setup.flux_field(jnp.asarray(w)))))
    w = rng.random(setup.n_surface)
    fields = relaxed(w)
    h3 = micro.voxel_size_m**3
    inventory = C_MAX * h3 * fields.reshape(2, -1).sum(axis=1)
    start = C_MAX * h3 * 0.95 * micro.active.sum()
    np.testing.assert_allclose(inventory - start, applied * setup.t_s, rtol=1e-10)
    np.testing.assert_allclose(relaxed(0.5 * w), fields, rtol=0, atol=1e-13)

    assert not micro.reactive_grains[setup.surface_grains].all()
    geometry = ParticleGeometry.from_microstructure(micro, jnp.float64)
    flux = galvanostatic_flux(10.0, -1.0, C_MAX, micro.active_volume_m3(), float(geometry.reactive_area_m2))
    t = setup.transport
    uniform = TransportParams(t.diffusivity_m2_s, t.orientations, jnp.full(geometry.grain_id.shape, flux),
                              t.c_max_mol_m3)
    reference = np.asarray(run(geometry, uniform))
    binary = relaxed(setup.surface_weights_of(micro.reactive_grains))
    assert np.ptp(reference[-1][micro.active]) > 0.05  # the contact pattern shows in the field
    np.testing.assert_allclose(binary, reference, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def contact_fit():
    """A 16³ particle (radius 0.6 µm, 0.1 µm voxels, 20 Voronoi grains, seed 0; 19 surface
    grains, 13 of them reactive = round(2/3 · 19)), NCM622 D = (5e-15, 5e-15, 1e-20) m²/s,
    delithiated at 10C from x = 0.95; projections along z at 10, 20, 30 s with noise
    σ = 0.005. The fit starts at w = 1/2 for every grain, float32."""
    micro, setup = _setup(6, 20, 0, jnp.float32)
    measured = synthetic_contact_maps(setup, micro.reactive_grains, noise_std=0.005, seed=1)
    problem = ContactProblem(setup, measured)
    return micro, setup, fit_reactive_contact(problem, true_reactive=micro.reactive_grains,
                                              iterations_per_stage=40)


def test_fit_classifies_the_reactive_surface_grains(contact_fit):
    micro, setup, fit = contact_fit
    truth = micro.reactive_grains[setup.surface_grains]
    assert setup.n_surface >= 15 and truth.sum() == round(2 / 3 * setup.n_surface)
    assert fit.accuracy >= 0.9, fit.table()
    # at the optimum the residuals are the noise: ½ mean(r²) ≈ ½ in units of σ
    assert fit.history[0]["loss"] > 4 * fit.data_loss
    assert 0.35 < fit.data_loss < 0.65, fit.data_loss
    # the penalty made the mask (nearly) binary
    assert np.all(np.minimum(fit.weight, 1 - fit.weight) < 0.1), fit.weight
    # the fitted flux still carries the applied current
    assert abs(fit.li_flow_fitted_mol_s / fit.li_flow_mol_s - 1) < 1e-5
    # the grains the Gauss–Newton analysis marks determined are classified correctly
    assert fit.determined.sum() >= setup.n_surface // 2
    assert fit.determined_accuracy == 1.0, fit.table()


def test_fit_result_table_and_json(contact_fit):
    _, setup, fit = contact_fit
    data = json.loads(fit.to_json())
    assert data["n_surface_grains"] == setup.n_surface == len(data["grains"])
    row = data["grains"][0]
    assert set(row) == {"grain_id", "weight", "reactive", "area_m2", "true_reactive", "correct", "std",
                        "determined"}
    assert data["accuracy"] == pytest.approx(np.mean([r["correct"] for r in data["grains"]]))
    assert sum(r["area_m2"] for r in data["grains"]) == pytest.approx(
        float(setup.geometry.reactive_area_m2), rel=1e-5)


def test_bad_inputs_name_the_problem(contact_fit, examples_dir):
    micro, setup, _ = contact_fit
    measured = synthetic_contact_maps(setup, micro.reactive_grains)
    with pytest.raises(ConfigError, match="1 observation operators"):
        ContactProblem(setup, measured * 2)
    wrong = dataclasses.replace(measured[0], maps=measured[0].maps[:, :-2, :], mask=None)
    with pytest.raises(ConfigError, match="shape"):
        ContactProblem(setup, [wrong])
    late = dataclasses.replace(measured[0], t_s=measured[0].t_s + 1.0, mask=None)
    with pytest.raises(ConfigError, match="t_s"):
        ContactProblem(setup, [late])
    with pytest.raises(ConfigError, match="reactive mask shape"):
        setup.surface_weights_of(np.ones(3, bool))
    problem = ContactProblem(setup, measured)
    with pytest.raises(ConfigError, match="start_weight"):
        fit_reactive_contact(problem, start_weight=1.0)
    with pytest.raises(ConfigError, match="penalty_schedule"):
        fit_reactive_contact(problem, penalty_schedule=[-1.0])
    with pytest.raises(ConfigError, match="diffusivity_m2_s"):
        make_contact_setup(micro, [1e-15, 0.0, 1e-15], C_MAX, 0.95, 1.0, -1, [1.0], setup.operators)
    from ssbx.engine.config.scenario import load_scenario

    cell = load_scenario(examples_dir / "ncm111_llzo_single_particle.toml")
    with pytest.raises(ConfigError, match="Butler–Volmer"):
        contact_setup_from_scenario(cell, [1.0], setup.operators)

"""Reactive contact from SOC maps (issue #16 item 2): current conservation of the relaxed
mask, equivalence with the prescribed-flux model for binary masks, recovery of a
synthetic 2/3-reactive mask from projections at three times, and bad input."""

import argparse
import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.cli import fit as fit_cli
from ssbx.engine.config.scenario import load_scenario
from ssbx.engine.errors import ConfigError
from ssbx.engine.inverse.fit_file import fit_config_from_dict, load_fit_config
from ssbx.engine.io.measurements import MeasuredMaps
from ssbx.engine.geometry.microstructure import polycrystalline_particle
from ssbx.engine.inverse.fitting import _fields
from ssbx.engine.inverse.reactive_contact import (
    ContactProblem, contact_setup_from_scenario, fit_reactive_contact, make_contact_setup,
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


def test_relaxed_mask_conserves_current_reduces_to_the_prescribed_flux_model_and_has_exact_gradients(x64):
    """Float64, 12³ particle of 10 grains, 10C delithiation, fields at 5 and 10 s.

    * For any weights (random, near-binary, all equal) the redistributed flux carries the
      applied flow Ṅ = −10 C · c_max V / 3600 s to round-off, and the rollout's Li
      inventory changes by exactly Ṅ t (diffusion conserves Li).
    * Scaling all weights changes nothing (the flux depends on w only through w / A(w)).
    * With the true binary mask the relaxed model is the engine's partial-contact model
      (reactive faces of the reactive grains only, uniform galvanostatic flux), built by
      the independent path ParticleGeometry.from_microstructure + galvanostatic_flux.
    * ∂L/∂s of the penalised loss (projections of noisy maps) matches central differences.
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

    # the gradient of the penalised loss in the logits vs central differences (rel. 1e-5):
    # redistribution, checkpointed rollout with its symmetric VJP, projection, penalty
    noisy = reference[:, None] + 0.01 * rng.standard_normal(reference.shape)[:, None]
    maps = np.stack([setup.operators[0](jnp.asarray(f[0]), jnp.asarray(micro.active, jnp.float64))
                     for f in noisy])
    measured = MeasuredMaps(maps=maps, t_s=setup.t_s, pixel_size_m=1e-7, beam_axis=2, noise_std=0.01)
    problem = ContactProblem(setup, [measured])
    value_and_grad = jax.jit(jax.value_and_grad(problem.objective))
    s = jnp.asarray(rng.normal(0.0, 1.0, setup.n_surface))
    lam = jnp.asarray(0.3)
    _, grad = value_and_grad(s, lam)
    step = 1e-4
    for i in rng.choice(setup.n_surface, 3, replace=False):
        e = jnp.zeros(setup.n_surface).at[i].set(step)
        fd = (float(value_and_grad(s + e, lam)[0]) - float(value_and_grad(s - e, lam)[0])) / (2 * step)
        assert abs(float(grad[i]) - fd) < 1e-5 * abs(fd) + 1e-12, (i, float(grad[i]), fd)


CONTACT_FIT_TOML = """
[scenario]
file = "EXAMPLES/default.toml"
[scenario.run]
dtype = "float32"
[scenario.particle]
radius_m = 0.6e-6
voxel_size_m = 1e-7
n_grains = 20
seed = 0
reactive_fraction = 0.667
[scenario.protocol]
c_rate = 10.0
[scenario.mechanics]
enabled = false

[measurement]
file = "maps.h5"
kind = "projection"
beam_axis = "z"
pixel_size_m = 1e-7
t_s = [10.0, 20.0, 30.0]
noise_std = 0.005
min_thickness_voxels = 2.0

[parameters.reactive]
kind = "per_surface_grain"
start = 0.5
penalty_schedule = [0.0, 0.1, 1.0]
iterations_per_stage = 40

[output]
folder = "out"

[synthetic]
noise_std = 0.005
seed = 1
"""


def _parse(argv):
    parser = argparse.ArgumentParser(prog="ssbx")
    fit_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def contact_fit(tmp_path_factory, examples_dir):
    """``ssbx fit --make-synthetic`` on a fit file with [parameters.reactive]: a 16³ particle
    (radius 0.6 µm, 0.1 µm voxels, 20 Voronoi grains, seed 0: 19 surface grains, 13 of
    them reactive = round(0.667 · 19)), NCM622 D = (5e-15, 5e-15, 1e-20) m²/s, delithiated
    at 10C from x = 0.95; projections along z at 10, 20, 30 s with noise σ = 0.005. The
    fit starts at w = 1/2 for every grain, float32."""
    folder = tmp_path_factory.mktemp("contact")
    path = folder / "fit.toml"
    path.write_text(CONTACT_FIT_TOML.replace("EXAMPLES", str(examples_dir)))
    code = fit_cli.run(_parse(["fit", str(path), "--make-synthetic", "--quiet"]))
    return code, folder


def test_fit_classifies_the_reactive_surface_grains(contact_fit):
    code, folder = contact_fit
    assert code == 0
    data = json.loads((folder / "out" / "fit_result.json").read_text())
    rows = data["grains"]
    assert data["n_surface_grains"] == len(rows) == 19
    assert sum(r["true_reactive"] for r in rows) == round(0.667 * 19)
    assert data["accuracy"] >= 0.9, rows
    assert data["accuracy"] == pytest.approx(np.mean([r["correct"] for r in rows]))
    # at the optimum the residuals are the noise: ½ mean(r²) ≈ ½ in units of σ
    start_loss = float((folder / "out" / "loss_history.csv").read_text().splitlines()[1].split(",")[3])
    assert start_loss > 4 * data["data_loss"]
    assert 0.35 < data["data_loss"] < 0.65, data["data_loss"]
    # the penalty made the mask (nearly) binary
    assert all(min(r["weight"], 1 - r["weight"]) < 0.1 for r in rows), rows
    # the fitted flux still carries the applied current
    assert abs(data["li_flow_fitted_mol_s"] / data["li_flow_mol_s"] - 1) < 1e-5
    # the grains the Gauss–Newton analysis marks determined are classified correctly
    assert data["n_determined"] >= len(rows) // 2
    assert all(r["correct"] for r in rows if r["determined"]), rows
    assert set(rows[0]) == {"grain_id", "weight", "reactive", "area_m2", "true_reactive", "correct", "std",
                            "determined"}
    for name in ("contact_fit.png", "loss_history.csv"):
        assert (folder / "out" / name).stat().st_size > 0
    assert data["settings"]["reactive"]["kind"] == "per_surface_grain"


def test_bad_inputs_name_the_problem(examples_dir, tmp_path, capsys):
    micro = polycrystalline_particle(0.4e-6, 1e-7, n_grains=6, seed=2)
    op = ObservationOperator("projection", beam_axis=2)
    setup = make_contact_setup(micro, D, C_MAX, 0.95, 10.0, -1, [1.0, 2.0], [op])
    shape = (2,) + op.image_shape(micro.labels.shape)
    good = MeasuredMaps(maps=np.full(shape, 0.9), t_s=[1.0, 2.0], pixel_size_m=1e-7, beam_axis=2)
    ContactProblem(setup, [good])
    with pytest.raises(ConfigError, match="1 observation operators"):
        ContactProblem(setup, [good, good])
    with pytest.raises(ConfigError, match="shape"):
        ContactProblem(setup, [dataclasses.replace(good, maps=good.maps[:, :-2, :], mask=None)])
    with pytest.raises(ConfigError, match="t_s"):
        ContactProblem(setup, [dataclasses.replace(good, t_s=good.t_s + 1.0, mask=None)])
    with pytest.raises(ConfigError, match="reactive mask shape"):
        setup.surface_weights_of(np.ones(3, bool))
    problem = ContactProblem(setup, [good])
    with pytest.raises(ConfigError, match="start_weight"):
        fit_reactive_contact(problem, start_weight=1.0)
    with pytest.raises(ConfigError, match="penalty_schedule"):
        fit_reactive_contact(problem, penalty_schedule=[-1.0])
    with pytest.raises(ConfigError, match="diffusivity_m2_s"):
        make_contact_setup(micro, [1e-15, 0.0, 1e-15], C_MAX, 0.95, 1.0, -1, [1.0], [op])
    cell = load_scenario(examples_dir / "ncm111_llzo_single_particle.toml")
    with pytest.raises(ConfigError, match="Butler–Volmer"):
        contact_setup_from_scenario(cell, [1.0], [op])
    coupled = load_scenario(examples_dir / "default.toml").replace(mechanics={"couple_diffusion": True})
    with pytest.raises(ConfigError, match="couple_diffusion"):
        contact_setup_from_scenario(coupled, [1.0], [op])
    # fit files
    base = {"measurement": {"file": "m.h5"}}
    cfg = fit_config_from_dict({**base, "parameters": {"reactive": "per_surface_grain"}})
    assert cfg.reactive.kind == "per_surface_grain" and cfg.parameters == ()
    with pytest.raises(ConfigError, match="parameters.reactive.kind = 'per_voxel'"):
        fit_config_from_dict({**base, "parameters": {"reactive": "per_voxel"}})
    with pytest.raises(ConfigError, match="unknown key in \\[parameters.reactive\\] \\['bounds'\\]"):
        fit_config_from_dict({**base, "parameters": {"reactive": {"bounds": [0, 1]}}})
    with pytest.raises(ConfigError, match="threshold = 1.5"):
        fit_config_from_dict({**base, "parameters": {"reactive": {"threshold": 1.5}}})
    with pytest.raises(ConfigError, match="fitted alone"):
        fit_config_from_dict({**base, "parameters": {"reactive": "per_surface_grain", "D1": {"start": 5e-15}}})
    example = load_fit_config(examples_dir / "fit_contact.toml")
    assert example.reactive.kind == "per_surface_grain" and example.parameters == ()
    path = tmp_path / "fit.toml"
    path.write_text(CONTACT_FIT_TOML.replace("EXAMPLES", str(examples_dir))
                    .replace("[synthetic]", "[synthetic]\ntruth = { D1 = 6e-15 }"))
    assert fit_cli.run(_parse(["fit", str(path), "--make-synthetic", "--quiet"])) == 2
    assert "synthetic.truth" in capsys.readouterr().err

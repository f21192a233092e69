"""Parameter fitting: exact gradients, recovery of a synthetic truth, identifiability,
divergence handling, checkpoint plan and the `ssbx fit` command."""

import argparse
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.cli import fit as fit_cli
from ssbx.engine.config.scenario import Scenario
from ssbx.engine.errors import ConfigError
from ssbx.engine.inverse.fit_file import fit_config_from_dict, load_fit_config
from ssbx.engine.inverse.fitting import FitDiverged, FitProblem, checkpoint_plan, fit, forward_setup
from ssbx.engine.inverse.fitting import synthetic_projection_maps
from ssbx.engine.observables.observation import ObservationOperator
from ssbx.engine.inverse.parameters import FreeParameter

# ------------------------------------------------------------------ exact gradients


def test_loss_gradient_matches_central_differences(x64):
    """∂L/∂u for D1, D3 and flux_scale (float64) vs central differences, rel. error < 1e-4.

    The whole pipeline is differentiated: checkpointed rollout over three observation
    segments, projection along y, 2× binning, a sub-pixel Fourier shift, masking and the
    log / log-sigmoid reparameterisations. D3 is set large (1e-15) so its derivative is
    well above round-off.
    """
    scenario = Scenario().replace(
        run={"dtype": "float64"},
        particle={"radius_m": 0.4e-6, "voxel_size_m": 1e-7, "n_grains": 5, "seed": 11},
        material={"diffusivity_m2_s": [5e-15, 5e-15, 1e-15]},
        protocol={"c_rate": 10.0},
    )
    free = [FreeParameter("D1", 6e-15, 1e-15, 2e-14), FreeParameter("D3", 1e-15, 1e-17, 4e-15),
            FreeParameter("flux_scale", 1.1)]
    op = ObservationOperator("projection", beam_axis=1, factor=2, shift_px=(0.3, -0.2), shift_method="fourier",
                             min_thickness_voxels=1)
    setup = forward_setup(scenario, [3.0, 6.0, 10.0], op, free)
    truth = synthetic_projection_maps(setup, {"D1": 8e-15, "D3": 2e-15, "flux_scale": 1.3}, 0.01, seed=2)
    problem = FitProblem(setup, truth, free)
    u = problem.u0 + jnp.asarray([0.1, -0.2, 0.05])
    loss, grad = problem.value_and_grad(u)
    assert loss.dtype == jnp.float64
    h = 1e-3
    for i, name in enumerate(problem.names):
        e = jnp.zeros(3).at[i].set(h)
        fd = (float(problem.loss(u + e)) - float(problem.loss(u - e))) / (2 * h)
        assert abs(float(grad[i]) - fd) < 1e-4 * abs(fd), (name, float(grad[i]), fd)


def test_checkpoint_plan():
    """k = round(√(n/6)) minimises the stored states n/k + 6k; n is rounded up to whole blocks."""
    assert checkpoint_plan(0) == (0, 1)
    assert checkpoint_plan(5) == (5, 1)
    assert checkpoint_plan(600) == (600, 10)
    n, k = checkpoint_plan(1000)  # √(1000/6) = 12.9 -> k = 13, n rounded up to 77 blocks
    assert (n, k) == (1001, 13)
    memory = lambda kk: math.ceil(1000 / kk) + 6 * kk  # noqa: E731
    assert memory(k) == min(memory(kk) for kk in range(1, 200))
    assert checkpoint_plan(50, 16) == (64, 16)
    with pytest.raises(ConfigError, match="checkpoint_every"):
        checkpoint_plan(10, 0)


# ------------------------------------------------------------------ synthetic recovery


TRUTH = {"D1": 8e-15, "flux_scale": 1.3, "D3": 1e-20}


@pytest.fixture(scope="module")
def synthetic_fit():
    """Fit of noisy synthetic projections (float32).

    Known (as in an experiment where the particle was imaged by tomography): the
    microstructure — grains and orientations of the measured particle, generated here
    with seed 7 (the default scenario uses seed 0) — c_max, x_initial = 0.95, the
    nominal C-rate (10C delithiation) and the beam axis z.
    Truth, unknown to the fit: D1 = D2 = 8e-15 m²/s (material default 5e-15),
    flux_scale = 1.3 (the real current is 30 % above nominal), D3 = 1e-20 m²/s.
    Observed: projections along z at t = 20, 40, 60 s with Gaussian noise
    σ = 0.005 (noise seed 1); pixels thinner than 2 voxels are masked.
    Fitted from a perturbed start: D1 = 5e-15 (bounds 2e-15..1.6e-14), flux_scale = 1.0
    (log, unbounded) and D3 = 1e-19 (bounds 1e-22..1e-16), by L-BFGS.
    """
    scenario = Scenario().replace(
        particle={"radius_m": 0.6e-6, "voxel_size_m": 1e-7, "n_grains": 12, "seed": 7},
        protocol={"c_rate": 10.0},
    )
    free = [FreeParameter("D1", 5e-15, 2e-15, 1.6e-14), FreeParameter("flux_scale", 1.0),
            FreeParameter("D3", 1e-19, 1e-22, 1e-16)]
    op = ObservationOperator("projection", beam_axis=2, min_thickness_voxels=2)
    setup = forward_setup(scenario, [20.0, 40.0, 60.0], op, free)
    measured = synthetic_projection_maps(setup, TRUTH, noise_std=0.005, seed=1)
    problem = FitProblem(setup, measured, free)
    return problem, fit(problem, method="lbfgs", lbfgs_iterations=40)


def test_fit_recovers_d1_and_flux_scale(synthetic_fit):
    problem, result = synthetic_fit
    assert result.converged, result.message
    assert abs(result.values["D1"] / TRUTH["D1"] - 1) < 0.10, result.values
    assert abs(result.values["flux_scale"] / TRUTH["flux_scale"] - 1) < 0.05, result.values
    start = result.history[0]
    assert result.loss < 0.05 * start["loss"]
    # at the optimum the residuals are the noise: ½ mean(r²) ≈ ½ (r in units of σ)
    assert 0.3 < result.loss < 0.7


def test_identifiability_flags_d3(synthetic_fit):
    """Laplace uncertainty: D1 and flux_scale determined, the near-zero D3 is not."""
    _, result = synthetic_fit
    unc = result.uncertainty["parameters"]
    assert unc["D1"]["determined"] and unc["D1"]["rel_std"] < 0.2
    assert unc["flux_scale"]["determined"] and unc["flux_scale"]["rel_std"] < 0.02
    assert not unc["D3"]["determined"] and unc["D3"]["rel_std"] > 1.0
    # the truth lies in the 95 % interval of the determined parameters
    for name in ("D1", "flux_scale"):
        lo, hi = unc[name]["interval95"]
        assert lo < TRUTH[name] < hi, (name, lo, hi)
    # the weakest eigen-direction of JᵀJ is (almost) pure D3
    names = result.uncertainty["names"]
    weakest = np.asarray(result.uncertainty["eigenvectors"])[:, 0]
    assert abs(weakest[names.index("D3")]) > 0.99


def test_fit_result_json(synthetic_fit):
    _, result = synthetic_fit
    data = json.loads(result.to_json())
    assert set(data["values"]) == {"D1", "flux_scale", "D3"}
    assert data["n_iterations"] == len(result.history) - 1


# ------------------------------------------------------------------ divergence


@pytest.fixture(scope="module")
def small_problem():
    scenario = Scenario().replace(
        particle={"radius_m": 0.5e-6, "voxel_size_m": 1e-7, "n_grains": 4, "seed": 5, "ndim": 2},
        protocol={"c_rate": 10.0},
    )
    free = [FreeParameter("D1", 5e-15), FreeParameter("flux_scale", 1.0)]
    setup = forward_setup(scenario, [5.0, 10.0], ObservationOperator("volume"), free)
    measured = synthetic_projection_maps(setup, {"D1": 7e-15, "flux_scale": 1.2}, 0.01, seed=0)
    return setup, measured, free


def test_fit_stops_on_nan_gradient_keeping_history(small_problem):
    setup, measured, free = small_problem
    problem = FitProblem(setup, measured, free)
    real = problem._value_and_grad
    calls = {"n": 0}

    def poisoned(u):
        calls["n"] += 1
        loss, grad = real(u)
        return (loss, grad * jnp.nan) if calls["n"] == 4 else (loss, grad)

    problem._value_and_grad = poisoned
    with pytest.raises(FitDiverged, match=r"gradient became NaN/Inf at iteration 3 \(adam\)") as err:
        fit(problem, method="adam", adam_iterations=10, uncertainty=False)
    history = err.value.history
    assert len(history) == 4
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["grad_norm"]) for h in history[:3])
    assert history[0]["stage"] == "start" and history[2]["values"]["D1"] > 0


def test_fit_stops_on_nan_loss(small_problem):
    setup, measured, free = small_problem
    problem = FitProblem(setup, measured, free)
    problem._data = problem._data.at[0].set(jnp.nan)  # a NaN that slipped past the mask
    with pytest.raises(FitDiverged, match="loss became NaN/Inf at iteration 0") as err:
        fit(problem, method="lbfgs", lbfgs_iterations=5, uncertainty=False)
    assert len(err.value.history) == 1


def test_adam_reduces_loss_on_volume_data(small_problem):
    """Adam on 2D volume (full-field) maps moves both parameters towards the truth."""
    setup, measured, free = small_problem
    problem = FitProblem(setup, measured, free)
    result = fit(problem, method="adam", learning_rate=0.05, adam_iterations=15, uncertainty=False)
    assert result.loss < result.history[0]["loss"]
    truth = {"D1": 7e-15, "flux_scale": 1.2}
    for name, value in truth.items():
        start_error = abs(result.history[0]["values"][name] / value - 1)
        assert abs(result.values[name] / value - 1) < 0.5 * start_error, (name, result.values)


# ------------------------------------------------------------------ fit files and CLI


FIT_TOML = """
[scenario.particle]
radius_m = 0.5e-6
voxel_size_m = 1e-7
n_grains = 4
seed = 5
ndim = 2
[scenario.protocol]
c_rate = 10.0

[measurement]
file = "maps.h5"
kind = "volume"
pixel_size_m = 1e-7
t_s = [5.0, 10.0]
noise_std = 0.01

[parameters.D1]
start = 5e-15
[parameters.flux_scale]
start = 1.0

[optimizer]
method = "adam+lbfgs"
adam_iterations = 5
lbfgs_iterations = 15

[output]
folder = "out"

[synthetic]
truth = { D1 = 7e-15, flux_scale = 1.2 }
noise_std = 0.01
seed = 3
"""


def _parse(argv):
    parser = argparse.ArgumentParser(prog="ssbx")
    fit_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_fit_with_synthetic_measurement(tmp_path, capsys):
    path = tmp_path / "fit.toml"
    path.write_text(FIT_TOML)
    args = _parse(["fit", str(path), "--make-synthetic", "--quiet"])
    assert args.handler is fit_cli.run
    assert fit_cli.run(args) == 0
    out = tmp_path / "out"
    data = json.loads((out / "fit_result.json").read_text())
    assert abs(data["values"]["flux_scale"] / 1.2 - 1) < 0.05
    assert data["uncertainty"]["parameters"]["D1"]["determined"]
    assert data["settings"]["pixel_factor"] == 1
    for name in ("fit_maps.png", "fit_loss.png", "fit_uncertainty.png", "loss_history.csv"):
        assert (out / name).stat().st_size > 0
    header = (out / "loss_history.csv").read_text().splitlines()[0]
    assert header == "iteration,stage,loss,grad_norm,D1,flux_scale"
    assert (tmp_path / "maps.h5").is_file()
    assert "flux_scale = " in capsys.readouterr().err


def test_cli_rejects_bad_fit_files(tmp_path, capsys):
    path = tmp_path / "fit.toml"
    path.write_text(FIT_TOML.replace("[parameters.D1]", "[parameters.D7]"))
    assert fit_cli.run(_parse(["fit", str(path)])) == 2
    assert "unknown parameter 'D7'" in capsys.readouterr().err
    path.write_text(FIT_TOML)  # no maps.h5 yet
    assert fit_cli.run(_parse(["fit", str(path)])) == 2
    err = capsys.readouterr().err
    assert "maps.h5" in err and "does not exist" in err
    with pytest.raises(ConfigError, match="unknown key in \\[optimizer\\] 'steps'"):
        fit_config_from_dict({"measurement": {"file": "m.h5"}, "parameters": {"D1": {"start": 5e-15}},
                              "optimizer": {"steps": 3}})
    with pytest.raises(ConfigError, match="optimizer.method = 'sgd'"):
        fit_config_from_dict({"measurement": {"file": "m.h5"}, "parameters": {"D1": {"start": 5e-15}},
                              "optimizer": {"method": "sgd"}})


def test_example_fit_file_is_valid(examples_dir):
    cfg = load_fit_config(examples_dir / "fit.toml")
    assert [p.name for p in cfg.parameters] == ["D1", "flux_scale", "D3"]
    assert cfg.scenario.particle.seed != 0 and cfg.synthetic is not None


def test_observation_segments_match_one_rollout(small_problem, x64):
    """Fields at the observation times equal a plain rollout with the same steps; a map
    at t = 0 is the initial state; uneven times fall back to one rollout per segment."""
    from ssbx.engine.inverse.fitting import simulate_fields
    from ssbx.engine.model.particle import rollout

    setup, _, free = small_problem
    geometry = setup.geometry
    op = ObservationOperator("volume")
    scenario = Scenario().replace(
        run={"dtype": "float64"},
        particle={"radius_m": 0.5e-6, "voxel_size_m": 1e-7, "n_grains": 4, "seed": 5, "ndim": 2},
        protocol={"c_rate": 10.0},
    )
    even = forward_setup(scenario, [0.0, 4.0, 8.0], op, free)
    assert even.uniform and even.segments[0][0] == 0
    (_, _, _), (n, dt, k), _ = even.segments
    fields = np.asarray(simulate_fields(even))
    np.testing.assert_array_equal(fields[0], np.asarray(even.x0))
    x4, _ = rollout(even.geometry, even.base.transport, even.x0, n, dt, checkpoint_every=k)
    x8, _ = rollout(even.geometry, even.base.transport, x4, n, dt, checkpoint_every=k)
    np.testing.assert_allclose(fields[1], np.asarray(x4), atol=1e-13)
    np.testing.assert_allclose(fields[2], np.asarray(x8), atol=1e-13)
    uneven = forward_setup(scenario, [1.0, 8.0], op, free)
    assert not uneven.uniform and uneven.segments[0][0] < uneven.segments[1][0]
    assert geometry.grain_id.shape == even.geometry.grain_id.shape

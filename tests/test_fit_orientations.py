"""``ssbx fit`` with ``[parameters.orientations]`` (issue 16 item 3): per-grain c axes and D1
from projections along two beam axes, from a fit file; and the bad inputs it refuses."""

import argparse
import json

import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.cli import fit as fit_cli
from ssbx.engine.errors import ConfigError
from ssbx.engine.inverse.fit_file import fit_config_from_dict, load_fit_config

FIT_TOML = """
[scenario]
file = "EXAMPLES/default.toml"
[scenario.run]
dtype = "float32"
[scenario.particle]
radius_m = 0.35e-6
voxel_size_m = 1e-7
n_grains = 4
seed = 5
[scenario.protocol]
c_rate = 15.0
[scenario.mechanics]
enabled = false

[measurement]
file = ["maps_x.h5", "maps_z.h5"]
kind = "projection"
pixel_size_m = 1e-7
t_s = [4.0, 8.0]
noise_std = 0.001
min_thickness_voxels = 2.0

[parameters.orientations]
kind = "per_grain_c_axis"
start = "random"
n_starts = 1
adam_iterations = 0
lbfgs_iterations = 40
max_rounds = 1
beam_axes = ["x", "z"]

[parameters.D1]
start = 5e-15
lower = 4e-15
upper = 1.2e-14

[output]
folder = "out"

[synthetic]
truth = { D1 = 8e-15 }
noise_std = 0.001
seed = 1
"""


def _save(path, array):
    np.save(path, array)
    return path


def _parse(argv):
    parser = argparse.ArgumentParser(prog="ssbx")
    fit_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def orientation_cli_fit(tmp_path_factory, examples_dir):
    """``ssbx fit --make-synthetic`` on a fit file with [parameters.orientations] and
    [parameters.D1]: a 0.7 µm particle (12³ grid, 0.1 µm voxels) of 4 Voronoi grains
    (seed 5, 30–54 voxels each) with the scenario's random orientations as truth,
    D1 = 8e-15 m²/s (start 5e-15), D3 = 1e-20 m²/s known, 15C delithiation from x = 0.95;
    projections along x and z at 4 and 8 s (128 usable pixels), σ = 0.001. One random
    start, L-BFGS only (float32)."""
    folder = tmp_path_factory.mktemp("orient")
    path = folder / "fit.toml"
    path.write_text(FIT_TOML.replace("EXAMPLES", str(examples_dir)))
    code = fit_cli.run(_parse(["fit", str(path), "--make-synthetic", "--quiet"]))
    return code, folder


def test_fit_file_recovers_axes_and_d1(orientation_cli_fit):
    """From random axes: every grain the Gauss–Newton analysis marks determined lies within
    15° of its true axis (sign ignored), D1 within 5 % and 3 Laplace stds of the truth, and
    the loss reaches the noise level (½ mean (r/σ)² ≈ ½ (N − p)/N with N = 128 pixels,
    p = 9 unknowns: 0.46)."""
    code, folder = orientation_cli_fit
    assert code == 0
    data = json.loads((folder / "out" / "fit_result.json").read_text())
    rows = data["grains"]
    assert len(rows) == 4
    det = [r for r in rows if r["determined"]]
    assert len(det) >= 3, rows
    assert all(r["misorientation_deg"] <= 15.0 for r in det), rows
    assert data["recovery"]["determined"]["fraction_within"] == 1.0
    # the true directions in the table are the scenario's own orientation table
    for r in rows:
        assert np.linalg.norm(r["direction"]) == pytest.approx(1.0, abs=1e-5)
        cos = abs(np.dot(r["direction"], r["true_direction"]))
        assert np.degrees(np.arccos(min(cos, 1.0))) == pytest.approx(r["misorientation_deg"], abs=0.05)
    assert abs(data["d1_m2_s"] / 8e-15 - 1) < 0.05, data["d1_m2_s"]
    assert abs(data["d1_m2_s"] - 8e-15) < 3 * data["d1_std_m2_s"]
    assert 0.3 < data["loss"] < 0.65, data["loss"]
    first = float((folder / "out" / "loss_history.csv").read_text().splitlines()[1].split(",")[2])
    assert first > 10 * data["loss"]
    assert set(rows[0]) >= {"grain", "direction", "angular_std_deg", "determined", "misorientation_deg", "voxels"}
    for name in ("orientation_poles.png", "orientation_residuals.png", "loss_history.csv"):
        assert (folder / "out" / name).stat().st_size > 0
    assert data["settings"]["orientations"]["kind"] == "per_grain_c_axis"
    assert len(data["settings"]["measurement_files"]) == 2


def test_orientation_fit_file_bad_inputs(orientation_cli_fit, examples_dir, tmp_path, capsys):
    """Wrong kind / keys / combinations, an orientation table whose row count differs from the
    grain map, maps of the wrong shape and a [cell] scenario stop with ConfigError (exit 2)
    naming the field and the reason."""
    base = {"measurement": {"file": "m.h5"}}
    cfg = fit_config_from_dict({**base, "parameters": {"orientations": "per_grain_c_axis"}})
    assert cfg.orientations.kind == "per_grain_c_axis" and cfg.parameters == ()
    with pytest.raises(ConfigError, match="parameters.orientations.kind = 'per_voxel'"):
        fit_config_from_dict({**base, "parameters": {"orientations": "per_voxel"}})
    with pytest.raises(ConfigError, match=r"unknown key in \[parameters.orientations\] \['bounds'\]"):
        fit_config_from_dict({**base, "parameters": {"orientations": {"bounds": [0, 1]}}})
    with pytest.raises(ConfigError, match="n_starts = 0"):
        fit_config_from_dict({**base, "parameters": {"orientations": {"n_starts": 0}}})
    with pytest.raises(ConfigError, match=r"mirror_relax_iterations = -1: must be an integer ≥ 0"):
        fit_config_from_dict({**base, "parameters": {"orientations": {"mirror_relax_iterations": -1}}})
    with pytest.raises(ConfigError, match="beam_axes"):
        fit_config_from_dict({**base, "parameters": {"orientations": {"beam_axes": ["x", "w"]}}})
    with pytest.raises(ConfigError, match=r"only D1 can be fitted jointly; remove \['flux_scale'\]"):
        fit_config_from_dict({**base, "parameters": {"orientations": "per_grain_c_axis",
                                                     "flux_scale": {"start": 1.0}}})
    with pytest.raises(ConfigError, match="separate runs"):
        fit_config_from_dict({**base, "parameters": {"orientations": "per_grain_c_axis",
                                                     "reactive": "per_surface_grain"}})
    with pytest.raises(ConfigError, match="several measurement files"):
        fit_config_from_dict({"measurement": {"file": ["a.h5", "b.h5"]}, "parameters": {"D1": {"start": 5e-15}}})
    with pytest.raises(ConfigError, match="one beam axis per file"):
        fit_config_from_dict({"measurement": {"file": ["a.h5", "b.h5"], "beam_axis": ["x"]},
                              "parameters": {"orientations": "per_grain_c_axis"}})
    # an orientation table: quaternions are read as their c axes R e_z (90° about x: e_z -> -e_y),
    # axes are normalised
    from ssbx.engine.inverse.orientations import load_orientation_table

    s = np.sqrt(0.5)
    (tmp_path / "q.json").write_text(json.dumps([[s, s, 0, 0], [1, 0, 0, 0]]))
    np.testing.assert_allclose(load_orientation_table(tmp_path / "q.json", 2), [[0, -1, 0], [0, 0, 1]], atol=1e-6)
    np.save(tmp_path / "axes.npy", np.array([[0.0, 3.0, 4.0]]))
    np.testing.assert_allclose(load_orientation_table(tmp_path / "axes.npy", 1), [[0, 0.6, 0.8]], atol=1e-12)
    with pytest.raises(ConfigError, match="table shape"):
        load_orientation_table(_save(tmp_path / "bad.npy", np.ones((2, 5))), 2)
    example = load_fit_config(examples_dir / "fit_orientations.toml")
    assert example.orientations.kind == "per_grain_c_axis" and [p.name for p in example.parameters] == ["D1"]

    # the measurement files the fixture wrote, fitted again with bad companions
    _, folder = orientation_cli_fit
    text = FIT_TOML.replace("EXAMPLES", str(examples_dir)).replace('"maps_x.h5", "maps_z.h5"',
                                                                   f'"{folder}/maps_x.h5", "{folder}/maps_z.h5"')

    def run(toml, *flags):
        path = tmp_path / "fit.toml"
        path.write_text(toml)
        code = fit_cli.run(_parse(["fit", str(path), "--quiet", *flags]))
        return code, capsys.readouterr().err

    np.save(tmp_path / "five.npy", np.tile([0.0, 0.0, 1.0], (5, 1)))
    code, err = run(text.replace('kind = "per_grain_c_axis"', 'kind = "per_grain_c_axis"\ntruth_file = "five.npy"'))
    assert code == 2 and "the orientation table has 5 rows but the grain map has 4 grains" in err, err
    np.save(tmp_path / "small.npy", np.full((2, 10, 12), 0.9))
    code, err = run(text.replace(f'"{folder}/maps_x.h5"', '"small.npy"').replace(
        '[measurement]', '[measurement]\nbeam_axis = ["x", "z"]'))
    assert code == 2 and "maps shape (10, 12) does not match the simulated projection shape (12, 12)" in err, err
    cell = (text.replace("default.toml", "ncm111_llzo_single_particle.toml")
            .replace("[scenario.protocol]\nc_rate = 15.0\n", ""))
    code, err = run(cell)
    assert code == 2 and "cell.enabled = true: the orientation fit runs on the particle model" in err, err
    code, err = run(text, "--make-synthetic")
    assert code == 2 and "already exists" in err, err


# ------------------------------------------------------------------ mirror moves (issue 16 item 1)


def _one_grain_sphere(dtype="float32"):
    """A 0.8 µm particle (12³ grid, 0.1 µm voxels) that is a single grain, delithiated at
    15C through its whole surface from x = 0.95; projections along x, y and z at 4 and 8 s."""
    from ssbx.engine.config.scenario import Scenario
    from ssbx.engine.inverse.fitting import forward_setup
    from ssbx.engine.inverse.parameters import FreeParameter
    from ssbx.engine.observables.observation import ObservationOperator

    scenario = Scenario().replace(particle={"radius_m": 0.4e-6, "voxel_size_m": 1e-7, "n_grains": 1, "seed": 1},
                                  protocol={"c_rate": 15.0}, run={"dtype": dtype})
    d1 = FreeParameter("D1", 8e-15, 4e-15, 1.2e-14)
    op = ObservationOperator("projection", beam_axis=2, min_thickness_voxels=2)
    return forward_setup(scenario, [4.0, 8.0], op, [d1])


def test_mirrored_axis_gives_the_mirrored_field(x64):
    """The physics behind the mirror moves. The voxel sphere (one grain, uniform surface
    flux) is symmetric under x_a → −x_a, and D(c) = D1 I + (D3 − D1) c cᵀ transforms as a
    tensor, so the field of the mirrored axis c' = mirror_a(c) is the mirror image of the
    field of c: its projection along a is identical (the beam along a cannot tell c from
    c'), its projections along the other axes are the mirror images. A second beam axis
    does tell them apart: those projections differ from the unmirrored ones by more than
    5 σ of the benchmark's noise (σ = 0.001) somewhere."""
    from ssbx.engine.inverse.orientations import mirror_axes, synthetic_orientation_maps

    setup = _one_grain_sphere("float64")
    active = np.asarray(setup.active)
    for a in range(3):
        assert np.array_equal(active, np.flip(active, axis=a))  # the precondition: a symmetric particle
    c = np.array([[0.48, -0.36, 0.8]])
    mirrors = mirror_axes(c[0])
    np.testing.assert_allclose(np.linalg.norm(mirrors, axis=1), 1.0, atol=1e-12)

    def maps(axis):
        return [np.asarray(m.maps) for m in synthetic_orientation_maps(setup, axis, 8e-15, beam_axes=(0, 1, 2))]

    base = maps(c)
    for a in range(3):
        assert mirrors[a][a] == pytest.approx(-c[0][a]) and np.delete(mirrors[a], a) == pytest.approx(np.delete(c[0], a))
        mirrored = maps(mirrors[a][None])
        for b in range(3):
            if b == a:
                np.testing.assert_allclose(mirrored[b], base[b], atol=1e-12, equal_nan=True)
            else:
                flip_axis = 1 + (a if a < b else a - 1)  # image axes of the projection along b, after time
                np.testing.assert_allclose(mirrored[b], np.flip(base[b], axis=flip_axis), atol=1e-12,
                                           equal_nan=True)
                assert np.nanmax(np.abs(mirrored[b] - base[b])) > 0.005  # 5 σ


def test_mirror_sweep_returns_a_mirrored_grain():
    """A mirror move plus a short relaxation puts a grain whose axis is the mirror image of
    its true axis back, where the same relaxation alone does not. 4 Voronoi grains (12³,
    seed 5), truth = the scenario's orientation table, D1 = 8e-15 m²/s, projections along x
    and z at 6 s, σ = 0.001; start: the truth with the largest grain replaced by its
    mirror image across the plane z = 0 (> 40° away as an axis)."""
    from ssbx.engine.config.scenario import Scenario
    from ssbx.engine.inverse.fitting import forward_setup
    from ssbx.engine.inverse.orientations import (OrientationProblem, _lbfgs, _mirror_sweep, mirror_axes,
                                                  synthetic_orientation_maps)
    from ssbx.engine.inverse.parameters import FreeParameter
    from ssbx.engine.observables.observation import ObservationOperator
    from ssbx.kernels.c_axis import axis_misorientation_deg, c_axis_of_quaternion

    scenario = Scenario().replace(particle={"radius_m": 0.35e-6, "voxel_size_m": 1e-7, "n_grains": 4, "seed": 5},
                                  protocol={"c_rate": 15.0})
    d1 = FreeParameter("D1", 5e-15, 4e-15, 1.2e-14)
    setup = forward_setup(scenario, [6.0], ObservationOperator("projection", min_thickness_voxels=2), [d1])
    truth = np.asarray(c_axis_of_quaternion(setup.base.transport.orientations), np.float64)
    problem = OrientationProblem(setup, synthetic_orientation_maps(setup, truth, 8e-15, noise_std=0.001, seed=1), d1)
    g = int(np.argmax(problem.grain_voxels))
    wrong = mirror_axes(truth[g])[2]
    assert np.degrees(np.arccos(abs(wrong @ truth[g]))) > 40
    start = problem.pack(np.where(np.arange(4)[:, None] == g, wrong[None], truth), 8e-15)

    def off(u):
        v = np.asarray(u)[3 * g: 3 * g + 3]
        return float(axis_misorientation_deg(jnp.asarray(v / np.linalg.norm(v)), jnp.asarray(truth[g])))

    u_plain, loss_plain = _lbfgs(problem, start, 3, lambda *a: None)
    assert off(u_plain) > 15, off(u_plain)
    u, loss, moved = _mirror_sweep(problem, start, problem.loss(start), relax_iterations=3)
    assert g in moved
    assert off(u) < 10, off(u)
    assert loss < loss_plain and loss < 0.7, (loss, loss_plain)  # noise level: ½ (N − p)/N < ½

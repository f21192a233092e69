"""End-to-end: `ssbx run` on the default scenario, the file format, stops and errors."""

import json
import subprocess
import sys

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.runs import particle_run as simulation
from ssbx.engine.cli.main import main
from ssbx.engine.config.scenario import Scenario
from ssbx.engine.errors import ConfigError, SimulationDiverged
from ssbx.engine.io.run_file import load_run
from ssbx.kernels.constants import FARADAY
from ssbx.engine.geometry.microstructure import Microstructure


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The built-in default scenario, run once through the CLI entry point."""
    out = tmp_path_factory.mktemp("default") / "default.h5"
    assert main(["run", "--quiet", "--out", str(out)]) == 0
    return load_run(out)


def test_default_run_conserves_li(default_run):
    """ΔM_Li equals the integrated surface flux to 1e-5 relative (float32 run)."""
    run = default_run
    ts = run.timeseries
    charge_mol = np.trapezoid(ts["current_A"], ts["t_s"]) / FARADAY  # Li removed, mol
    # M_Li from the stored fields (summed in float64 here), not from the run's own log
    c_max = Scenario().material.resolved_c_max()
    li = [np.nansum(f.astype(np.float64)) * c_max * run.voxel_size_m**3 for f in run.fields["soc"]]
    assert charge_mol > 0
    assert abs((li[0] - li[-1]) - charge_mol) < 1e-5 * charge_mol
    assert abs((ts["li_mol"][0] - ts["li_mol"][-1]) - charge_mol) < 1e-5 * charge_mol


def test_default_run_file_layout(default_run):
    run = default_run
    s = Scenario()
    assert run.status == "completed"
    assert run.config == json.loads(s.to_json())
    labels, gid = run.geometry["labels"], run.geometry["grain_id"]
    assert labels.dtype == np.uint8 and gid.dtype == np.int32 and labels.shape == gid.shape
    assert run.geometry["orientations"].shape == (gid.max() + 1, 4)
    lengths = {len(v) for v in run.timeseries.values()}
    assert len(lengths) == 1
    assert run.timeseries["t_s"][-1] == pytest.approx(s.protocol.duration_s)
    assert run.fields["soc"].shape == (s.output.n_snapshots,) + labels.shape
    np.testing.assert_allclose(run.fields["t_s"], np.linspace(0, s.protocol.duration_s, s.output.n_snapshots))
    assert np.all(np.isnan(run.fields["soc"][:, gid < 0]))
    soc = run.fields["soc"][:, gid >= 0]
    assert soc.min() >= 0 and soc.max() <= 1
    # mean SOC falls linearly at 1C: Δx = duration / 3600 s
    np.testing.assert_allclose(run.timeseries["mean_soc"][-1], 0.95 - s.protocol.duration_s / 3600, atol=1e-6)
    assert run.grains["mean_soc"].shape == (s.output.n_snapshots, gid.max() + 1)
    assert run.path.with_suffix(".png").stat().st_size > 10_000


def test_partial_contact_localises_delithiation(default_run, tmp_path):
    """Same microstructure, 66.7 % of surface grains reactive (the S1 comparison): the
    unreactive surface grains lag behind the reactive ones, and the total current, hence
    the mean SOC, is unchanged."""
    out = tmp_path / "partial.h5"
    out.write_bytes(b"an older file")  # replaced only because --overwrite says so
    assert main(["run", "-q", "--no-png", "--overwrite", "--out", str(out), "--set",
                 "particle.reactive_fraction=0.667", "--set", "protocol.duration_s=480"]) == 0
    run = load_run(out)
    micro = Microstructure(run.geometry["labels"], run.geometry["grain_id"], run.geometry["orientations"],
                           run.geometry["reactive_grains"], run.voxel_size_m)
    surface, reactive = micro.surface_grains(), micro.reactive_grains
    grain_soc = run.grains["mean_soc"][-1]
    assert grain_soc[surface & ~reactive].mean() > grain_soc[surface & reactive].mean() + 0.04
    assert grain_soc[~surface].mean() > grain_soc[surface].mean()  # delithiation starts at the surface
    i = 2  # the default run's snapshot at 480 s
    assert default_run.fields["t_s"][i] == pytest.approx(480)
    assert np.std(grain_soc) > np.std(default_run.grains["mean_soc"][i])
    np.testing.assert_allclose(run.timeseries["mean_soc"][-1], 0.95 - 480 / 3600, atol=1e-6)


def test_c_rate_that_empties_a_voxel_stops_and_keeps_the_file(tmp_path):
    out = tmp_path / "fast.h5"
    s = Scenario().replace(particle={"radius_m": 2e-6, "n_grains": 20}, protocol={"c_rate": 20.0, "duration_s": 600.0})
    result = simulation.run_scenario(s, out, progress=False)
    assert result.status == "stopped" and "fell below 0" in result.message
    run = load_run(out)
    assert run.status == "stopped" and "stopped at t =" in run.message
    assert run.timeseries["t_s"][-1] == pytest.approx(result.t_end_s)
    assert result.t_end_s < 600
    assert np.nanmin(run.fields["soc"][-1]) >= 0  # the step that would go below 0 is not taken
    assert run.fields["t_s"][-1] == pytest.approx(result.t_end_s)


def test_nan_stops_with_message_and_keeps_file(tmp_path, monkeypatch):
    """A state that turns NaN stops the run, marks the file and raises."""
    original = simulation.initial_state

    def poisoned(geometry, x_initial, dtype):
        x = original(geometry, x_initial, dtype)
        idx = tuple(int(i[0]) for i in jnp.nonzero(geometry.grain_id >= 0))
        return x.at[idx].set(jnp.nan)

    monkeypatch.setattr(simulation, "initial_state", poisoned)
    out = tmp_path / "nan.h5"
    s = Scenario().replace(particle={"radius_m": 1e-6, "n_grains": 5})
    with pytest.raises(SimulationDiverged, match="NaN"):
        simulation.run_scenario(s, out, progress=False)
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "diverged"
        assert f["fields/soc"].shape[0] >= 1


def test_cli_scenario_file_and_errors(tmp_path, examples_dir, capsys):
    scenario = tmp_path / "small.toml"
    scenario.write_text('[run]\nname = "small"\n[particle]\nradius_m = 1e-6\nn_grains = 5\nndim = 2\n'
                        "[protocol]\nduration_s = 60.0\n")
    out = tmp_path / "small.h5"
    assert main(["run", str(scenario), "--out", str(out), "-q"]) == 0
    run = load_run(out)
    assert run.geometry["labels"].ndim == 2 and run.config["run"]["name"] == "small"
    bad = tmp_path / "bad.toml"
    bad.write_text("[particle]\nvoxel_size = 1e-7\n")
    assert main(["run", str(bad), "-q"]) == 2
    assert "unknown key in [particle] 'voxel_size'" in capsys.readouterr().err
    assert main(["run", "-q", "--set", "material.diffusivity_m2_s=[0, 1e-15, 1e-15]"]) == 2
    assert "material.diffusivity_m2_s[0] = 0" in capsys.readouterr().err


def test_load_run_rejects_non_run_files(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(ConfigError, match="not a readable HDF5"):
        load_run(junk)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_group("something")
    with pytest.raises(ConfigError, match="not an ssbx run file"):
        load_run(tmp_path / "other.h5")


def test_help_documents_options():
    out = subprocess.run([sys.executable, "-m", "ssbx.engine.cli", "run", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for word in ("--out", "--set", "--quiet", "scenario", "built-in default"):
        assert word in out


def test_existing_outputs_are_never_overwritten_unasked(tmp_path, capsys):
    """An existing run file or summary PNG stops `ssbx run` before anything is written,
    naming the file and --overwrite; the file keeps its bytes (sweeps: every lane file)."""
    out = tmp_path / "run.h5"
    out.write_bytes(b"precious")
    assert main(["run", "-q", "--out", str(out)]) == 2
    assert out.read_bytes() == b"precious"
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    png = tmp_path / "fresh.png"
    png.write_bytes(b"figure")
    assert main(["run", "-q", "--out", str(tmp_path / "fresh.h5")]) == 2
    assert png.read_bytes() == b"figure" and not (tmp_path / "fresh.h5").exists()
    sweep = tmp_path / "sweep.h5"
    (tmp_path / "sweep_1.h5").write_bytes(b"lane")
    assert main(["run", "-q", "--no-png", "--out", str(sweep), "--set", "sweep.parameter='protocol.duration_s'",
                 "--set", "sweep.values=[60, 120]"]) == 2
    assert "sweep_1.h5" in capsys.readouterr().err and not (tmp_path / "sweep_0.h5").exists()


def test_api_run_refuses_to_overwrite(default_run, tmp_path):
    """api.run (what `ssbx run` calls) names the existing file and leaves its bytes alone;
    a scenario that is neither a Scenario nor a path is refused by name."""
    from ssbx.engine import api

    before = default_run.path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        api.run(Scenario(), default_run.path)
    assert default_run.path.read_bytes() == before
    with pytest.raises(ConfigError, match="scenario = dict"):
        api.run({"particle": {}}, tmp_path / "x.h5")


def test_compile_cache_is_filled_and_released(tmp_path, capsys):
    """--compile-cache writes the run's compiled programs into the folder while the run
    lasts, and gives back the process's own cache setting afterwards (main() may be called
    in-process, as here). Reuse across processes is JAX's persistent cache itself."""
    import jax

    cache = tmp_path / "cache"
    before = jax.config.jax_compilation_cache_dir
    jax.clear_caches()  # nothing compiled by an earlier test may be served from memory
    assert main(["run", "-q", "--no-png", "--set", "particle.radius_m=1.2e-6", "--set", "particle.n_grains=5",
                 "--set", "particle.ndim=2", "--set", "protocol.duration_s=60.0", "--compile-cache", str(cache),
                 "--out", str(tmp_path / "a.h5")]) == 0
    assert any(cache.iterdir()), "no compiled program was cached"
    assert jax.config.jax_compilation_cache_dir == before
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert main(["run", "-q", "--compile-cache", str(not_a_folder)]) == 2
    assert "--compile-cache" in capsys.readouterr().err

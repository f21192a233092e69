"""Particle runs on the device State (engine.solve.particle_step): a run killed with
SIGKILL and continued with ``ssbx run --resume`` ends with the same file as an
uninterrupted run, bit for bit; the run's chunks are the differentiable rollout that
particle fits use, step for step."""

from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_resume import assert_same_contents, kill_after_checkpoints

from ssbx.engine import api
from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.errors import ConfigError
from ssbx.engine.io.run_file import load_run
from ssbx.engine.runs import particle_run

TESTS = Path(__file__).resolve().parent
# a small 2D particle, 240 steps of 0.25 s in chunks of 12, snapshots every 60 steps
SMALL_PARTICLE = {
    "run": {"name": "resume_particle"},
    "particle": {"radius_m": 1e-6, "n_grains": 5, "ndim": 2},
    "protocol": {"duration_s": 60.0, "c_rate": 2.0},
    "numerics": {"max_time_step_s": 0.25, "checkpoint_every": 4, "chunk_steps": 16},
    "output": {"n_snapshots": 5, "timeseries_every": 5},
}

CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_particle_resume import SMALL_PARTICLE
from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.runs import particle_run

save = particle_run._ParticleRun.checkpoint
def checkpoint(self, state):
    save(self, state)
    note_checkpoint()
    print("checkpoint", self.n_steps, flush=True)
particle_run._ParticleRun.checkpoint = checkpoint
particle_run.run_scenario(scenario_from_dict(SMALL_PARTICLE), {out!r}, progress=False, checkpoint_wall_s=0.0)
print("finished", flush=True)
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    path = tmp_path_factory.mktemp("particle_resume") / "whole.h5"
    with jax.enable_x64(False):  # 32-bit JAX as in the child, whatever earlier tests switched on
        result = particle_run.run_scenario(scenario_from_dict(SMALL_PARTICLE), path, progress=False,
                                           checkpoint_wall_s=0.0)
    assert result.status == "completed", result.message
    return path


def test_killed_particle_run_resumes_to_the_same_file(uninterrupted, tmp_path):
    """Killed after its fourth saved State (the initial one and three chunks), once the
    rows of the next chunk are in the file. Resuming cuts them and finishes: every
    timeseries row, field, per-grain value and statistic equals the uninterrupted run's."""
    out = tmp_path / "killed.h5"
    kill_after_checkpoints(CHILD.format(tests=str(TESTS), out=str(out)), out, uninterrupted)
    with jax.enable_x64(False):
        result = api.resume(out, summary_png=False)
    assert result.status == "completed", result.message
    assert_same_contents(out, uninterrupted)
    with pytest.raises(ConfigError, match="status 'completed', nothing to resume"):
        api.resume(out, summary_png=False)


def test_run_chunks_are_the_fitting_rollout(uninterrupted):
    """The run file's last field is the state of one uninterrupted
    engine.model.particle.rollout (the differentiable path of particle fits) over all
    steps, and M_Li falls by exactly the prescribed flux × area × t (Li conservation)."""
    from ssbx.engine.model.particle import rollout

    scenario = scenario_from_dict(SMALL_PARTICLE)
    run = particle_run._ParticleRun(scenario)
    x, per_step = rollout(run.geometry, run.params, run.initial.x, run.total_steps, run.dt,
                          checkpoint_every=run.block, adjoint="autodiff")
    data = load_run(uninterrupted)
    final = data.fields["soc"][-1]
    active = np.isfinite(final)
    np.testing.assert_allclose(final[active], np.asarray(x)[active], rtol=0, atol=2e-7)
    t_end = run.total_steps * run.dt
    assert data.timeseries["t_s"][-1] == pytest.approx(t_end, rel=1e-12)
    removed = run.li0 - data.timeseries["li_mol"][-1]
    expected = run.current_A * t_end / 96485.33212
    assert removed == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(data.timeseries["mean_soc"][-1], float(jnp.mean(per_step["mean_x"][-1])), rtol=1e-6)


def test_cli_resumes_a_particle_run_and_refuses_what_it_cannot(uninterrupted, tmp_path, capsys):
    from ssbx.engine.cli.main import main

    other = tmp_path / "tampered.h5"
    other.write_bytes(uninterrupted.read_bytes())
    with h5py.File(other, "r+") as f:
        f.attrs["status"] = "interrupted"
        f["geometry/grain_id"][0, 0] = 3  # the scenario no longer gives this geometry
    assert main(["run", "--resume", str(other), "--no-png", "-q"]) == 2
    assert "no longer gives the geometry" in capsys.readouterr().err


def test_particle_sweep_lanes_equal_separate_runs(tmp_path):
    """A D sweep of a particle scenario as one vmapped computation: every lane runs on
    the finest lane's Δt and equals a separate run with ``max_time_step_s`` set to that
    Δt (mean SOC, M_Li and the fields to float32 round-off); the faster-diffusing lane
    keeps a flatter profile (smaller spread of x at the end)."""
    from ssbx.engine.runs.sweep import run_sweep

    base = dict(SMALL_PARTICLE, numerics={"checkpoint_every": 4, "chunk_steps": 16},
                protocol={"duration_s": 30.0, "c_rate": 2.0},
                sweep={"parameter": "material.diffusivity_m2_s", "values": [[1e-15, 1e-15, 1e-16],
                                                                             [4e-15, 4e-15, 4e-16]]})
    scenario = scenario_from_dict(base)
    results = run_sweep(scenario, tmp_path / "sweep.h5", progress=False)
    assert [r.status for r in results] == ["completed"] * 2
    assert results[0].dt_s == results[1].dt_s  # the finest lane's grid
    spreads = []
    for i, value in enumerate(scenario.sweep.values):
        single = dict(base, material={"diffusivity_m2_s": value},
                      numerics={"checkpoint_every": 4, "chunk_steps": 16, "max_time_step_s": results[i].dt_s},
                      sweep={})
        result = particle_run.run_scenario(scenario_from_dict(single), tmp_path / f"single_{i}.h5", progress=False)
        assert result.n_steps == results[i].n_steps
        a, b = load_run(results[i].path), load_run(result.path)
        np.testing.assert_allclose(a.timeseries["t_s"], b.timeseries["t_s"], rtol=1e-12)
        np.testing.assert_allclose(a.timeseries["li_mol"], b.timeseries["li_mol"], rtol=1e-6)
        np.testing.assert_allclose(a.fields["soc"], b.fields["soc"], atol=2e-6, equal_nan=True)
        with h5py.File(results[i].path) as f:
            assert f.attrs["sweep_parameter"] == "material.diffusivity_m2_s" and f.attrs["sweep_lane"] == i
        spreads.append(np.nanstd(a.fields["soc"][-1]))
    assert spreads[1] < 0.7 * spreads[0]
    # a C-rate lane of a particle scenario sets its one rate (no steps to rewrite)
    from ssbx.engine.config.scenario import lane_scenario

    assert lane_scenario(scenario_from_dict(SMALL_PARTICLE), "protocol.c_rate", 3.0).protocol.c_rate == 3.0

"""Batched sweeps (engine.runs.sweep): lanes of one vmapped run equal separate runs,
and sweeps that cannot be batched are refused with a message."""

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.config.scenario import lane_scenario, scenario_from_dict
from ssbx.engine.errors import ConfigError
from ssbx.engine.io.run_file import load_run
from ssbx.engine.runs.cell_run import run_cell_device
from ssbx.engine.runs.sweep import run_sweep

from test_cell import SMALL

SWEEP = dict(
    SMALL,
    electrochemistry={"time_step_s": 60.0, "solver_rtol": 1e-10},
    protocol={"kind": "cycling", "steps": ["charge at 2C until 4.3 V or 3 min", "hold 3.95 V until C/2 or 1 min",
                                           "discharge at 2C until 3.0 V or 1 min"]},
    sweep={"parameter": "protocol.c_rate", "values": [1, 2, 4]},
)


def test_c_rate_sweep_equals_separate_runs(tmp_path, x64):
    """Three C-rates as one vmapped run (lanes finish after different numbers of steps)
    give the separate runs' timeseries: V to 1e-6 V, I and M_Li to 1e-9 relative
    (float64, so that the CG stopping rule sees the same residuals in both)."""
    scenario = scenario_from_dict(SWEEP)
    results = run_sweep(scenario, tmp_path / "sweep.h5", progress=False, dtype=jnp.float64)
    assert [r.status for r in results] == ["completed"] * 3
    steps = []
    for i, value in enumerate(scenario.sweep.values):
        single = tmp_path / f"single_{i}.h5"
        run_cell_device(lane_scenario(scenario, "protocol.c_rate", value), single, progress=False,
                        dtype=jnp.float64)
        a, b = load_run(results[i].path), load_run(single)
        assert a.timeseries["t_s"].shape == b.timeseries["t_s"].shape
        np.testing.assert_allclose(a.timeseries["t_s"], b.timeseries["t_s"], rtol=1e-9)
        np.testing.assert_allclose(a.timeseries["voltage_V"], b.timeseries["voltage_V"], atol=1e-6)
        np.testing.assert_allclose(a.timeseries["current_A"], b.timeseries["current_A"], rtol=1e-9)
        np.testing.assert_allclose(a.timeseries["li_mol"], b.timeseries["li_mol"], rtol=1e-9)
        np.testing.assert_allclose(a.fields["soc"], b.fields["soc"], atol=1e-7, equal_nan=True)
        with h5py.File(results[i].path) as f:
            assert f.attrs["sweep_parameter"] == "protocol.c_rate" and f.attrs["sweep_lane"] == i
        # the lane's config is the lane's scenario: its CC steps run at the lane's rate
        assert a.config["protocol"]["steps"][0].startswith(f"charge at {value}C")
        one_c = h5py.File(single)["geometry"].attrs["capacity_1C_A"]
        charge = a.timeseries["step_index"] == 0
        np.testing.assert_allclose(a.timeseries["current_A"][charge], value * one_c, rtol=1e-8)
        steps.append(len(a.timeseries["t_s"]))
    assert len(set(steps)) > 1  # the lanes really ran for different numbers of steps


@pytest.mark.parametrize(
    "sweep, words",
    [
        ({"parameter": "electrochemistry.nonsense", "values": [1]}, ["sweep.parameter", "unknown key"]),
        ({"parameter": "protocol.c_rate", "values": []}, ["sweep.values", "at least one"]),
        ({"parameter": "electrochemistry.exchange_current_A_m2", "values": [1.0, -2.0]},
         ["sweep.values[1] = -2.0", "exchange_current_A_m2 = -2.0", "> 0"]),
        ({"parameter": "protocol.c_rate", "values": [1, 0]}, ["sweep.values[1] = 0", "must be a number > 0"]),
        ({"parameter": "run.name", "values": ["a"]}, ["sweep.parameter = 'run.name'", "unknown key"]),
        ({"values": [1, 2]}, ["without sweep.parameter"]),
    ],
)
def test_bad_sweeps(sweep, words):
    with pytest.raises(ConfigError) as err:
        scenario_from_dict(dict(SWEEP, sweep=sweep))
    for word in words:
        assert word in str(err.value)


def test_sweep_that_changes_the_geometry_is_refused(tmp_path):
    scenario = scenario_from_dict(dict(SWEEP, sweep={"parameter": "particle.voxel_size_m", "values": [5e-7, 4e-7]}))
    with pytest.raises(ConfigError, match="changes the geometry or a static setting"):
        run_sweep(scenario, tmp_path / "bad.h5", progress=False)

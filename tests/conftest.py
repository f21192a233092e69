"""Shared fixtures. JAX stays in float32 by default; tests that need float64 use the
``x64`` fixture, which enables it only for their duration."""

import jax
import pytest


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def examples_dir():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """test_cell.SMALL_STRESS cycled by the device-resident stepper (the default driver),
    run once per session: test_cell checks it, test_cell_coupling compares it with the
    stress-coupled run of the same cell. Returns (RunResult, RunData)."""
    from test_cell import SMALL_STRESS

    from ssbx.engine.config.scenario import scenario_from_dict
    from ssbx.engine.io.run_file import load_run
    from ssbx.engine.runs.cell_run import run_cell_device

    out = tmp_path_factory.mktemp("cell") / "cell.h5"
    result = run_cell_device(scenario_from_dict(SMALL_STRESS), out, progress=False)
    return result, load_run(out)

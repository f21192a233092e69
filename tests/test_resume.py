"""``ssbx run --resume``: a cell run killed with SIGKILL and resumed from the State
saved in its run file ends with the same file as an uninterrupted run, bit for bit;
files that cannot be resumed are refused with the reason."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from test_cell import SMALL

from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.errors import ConfigError
from ssbx.engine.runs.cell_run import resume_cell_device, run_cell_device

TESTS = Path(__file__).resolve().parent
# the coupled cell: the State carries the stress potential too; chunks of 4 steps
RESUMED = dict(SMALL, numerics={"chunk_steps": 4},
               mechanics={"enabled": True, "electrolyte_material": "LLZO", "couple_diffusion": True,
                          "coupling_every_steps": 3})

CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_resume import RESUMED
from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.runs import cell_run

save = cell_run.LaneFile.checkpoint
def checkpoint(self, state):
    save(self, state)
    note_checkpoint()
    print("checkpoint", self.n_steps, flush=True)
cell_run.LaneFile.checkpoint = checkpoint
cell_run.run_cell_device(scenario_from_dict(RESUMED), {out!r}, progress=False)
print("finished", flush=True)
"""


def _contents(path):
    """Every dataset and attribute of a run file except the restart slots."""
    out = {}
    with h5py.File(path, "r") as f:
        out["attrs"] = {k: str(v) for k, v in f.attrs.items()}

        def visit(name, obj):
            if name.startswith("restart"):
                return
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
            out[name + "@attrs"] = {k: str(v) for k, v in obj.attrs.items()}

        f.visititems(visit)
    return out


# prepended to a child's code: after the n-th saved State the next appended timeseries rows
# are written completely, then the child waits to be killed. So the kill never cuts an HDF5
# write in half (HDF5 keeps no journal: a chunk written half-way is not something any resume
# can vouch for), and the file holds rows beyond its last State, which resume must cut.
PAUSE_AFTER_ROWS = """
import time
from ssbx.engine.io import run_file
_saved = [0]
def note_checkpoint():
    _saved[0] += 1
_append = run_file.RunWriter.append_timeseries
def _append_then_wait(self, columns):
    _append(self, columns)
    if _saved[0] >= {n}:
        print("appended", flush=True)
        time.sleep(600)
run_file.RunWriter.append_timeseries = _append_then_wait
"""


def kill_after_checkpoints(child_code: str, out, uninterrupted, n: int = 4):
    """Run ``child_code`` (which calls ``note_checkpoint()`` after each saved State) and
    SIGKILL it once it has written the rows that follow its ``n``-th State; the file must
    say "running" and hold part of the rows."""
    child = subprocess.Popen([sys.executable, "-c", PAUSE_AFTER_ROWS.format(n=n) + child_code],
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in child.stdout:
        if line.startswith("appended"):
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=120)
    assert child.returncode == -signal.SIGKILL
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "running"  # what a killed run leaves
        killed_rows = f["timeseries/t_s"].shape[0]
    assert 0 < killed_rows < len(_contents(uninterrupted)["timeseries/t_s"])


def assert_same_contents(path, reference):
    """Every dataset (same dtype, shape, values, NaN where NaN) and attribute equal."""
    whole, resumed = _contents(reference), _contents(path)
    assert resumed.keys() == whole.keys()
    for name, value in whole.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == resumed[name].dtype and value.shape == resumed[name].shape, name
            assert np.array_equal(value, resumed[name], equal_nan=value.dtype.kind == "f"), name
        else:
            assert value == resumed[name], name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "whole.h5"
    # 32-bit JAX as in the child (an earlier test may have switched 64-bit on for this process)
    with jax.enable_x64(False):
        result = run_cell_device(scenario_from_dict(RESUMED), path, progress=False)
    assert result.status == "completed", result.message
    return path


def test_killed_run_resumes_to_the_same_file(uninterrupted, tmp_path):
    """Kill the run (SIGKILL, from this test) after its third chunk, once it has written
    the rows of the next chunk. --resume cuts the file back to the last saved State
    and finishes: every timeseries, field, snapshot statistic and cycle summary equals the
    uninterrupted run's exactly."""
    out = tmp_path / "killed.h5"
    kill_after_checkpoints(CHILD.format(tests=str(TESTS), out=str(out)), out, uninterrupted)
    with jax.enable_x64(False):
        result = resume_cell_device(out, progress=False)
    assert result.status == "completed", result.message
    assert_same_contents(out, uninterrupted)


def test_files_that_cannot_be_resumed_are_refused(uninterrupted, tmp_path):
    with pytest.raises(ConfigError, match="status 'completed', nothing to resume"):
        resume_cell_device(uninterrupted, progress=False)
    other = tmp_path / "other.h5"
    other.write_bytes(uninterrupted.read_bytes())
    with h5py.File(other, "r+") as f:
        f.attrs["status"] = "running"
        f.attrs["ssbx_version"] = "0.0.1"
    with pytest.raises(ConfigError, match="written by ssbx 0.0.1"):
        resume_cell_device(other, progress=False)
    with pytest.raises(ConfigError, match="no such file"):
        resume_cell_device(tmp_path / "missing.h5", progress=False)


def test_cli_resume_refuses_a_scenario_or_out_beside_it(uninterrupted, capsys):
    from ssbx.engine.cli.main import main

    assert main(["run", "--resume", str(uninterrupted), "--out", "x.h5"]) == 2
    assert "give no scenario, --out" in capsys.readouterr().err
    assert main(["run", "--resume", str(uninterrupted), "--no-png"]) == 2
    assert "nothing to resume" in capsys.readouterr().err

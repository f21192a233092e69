"""Bad inputs, unsafe files and crashes (issue #15): each case fails cleanly, naming what is wrong.

Most cases are refused during validation, before any JAX work; the few that run use a 2-D
particle of 1 µm and a one-minute protocol.
"""

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from test_cell import SMALL

from ssbx.engine.runs import particle_run as simulation
from ssbx.engine.cli.main import main
from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.errors import ConfigError
from ssbx.engine.io.run_file import load_run
from ssbx.engine.io.measurements import load_measurement
from ssbx.engine.safe_files import OutputLock

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = ("--set", "particle.radius_m=1e-6", "--set", "particle.n_grains=5", "--set", "particle.ndim=2",
        "--set", "protocol.duration_s=60.0")


def run_cli(*args):
    return main(["run", "-q", "--no-png", *args])


# --- scenario files and values refused at validation --------------------------------------

def _write(path: Path, data) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


@pytest.mark.parametrize("content, expected", [
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", "not UTF-8 text"),
    ('[run]\nname = "../x"\n', "run.name = '../x'"),
    ('[run]\nname = "a/b"\n', "run.name = 'a/b'"),
    ('[run]\nname = ".."\n', "run.name = '..'"),
], ids=["binary-toml", "name-parent", "name-separator", "name-dots"])
def test_scenario_file_refused(tmp_path, capsys, monkeypatch, content, expected):
    monkeypatch.chdir(tmp_path)
    scenario = _write(tmp_path / "s.toml", content)
    assert run_cli(str(scenario)) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path.parent / "x.h5").exists()


def test_scenario_folder_refused(tmp_path, capsys):
    assert run_cli(str(tmp_path)) == 2
    assert "is a folder" in capsys.readouterr().err


def test_utf8_bom_is_accepted():
    from ssbx.engine.config.scenario import read_toml

    path = Path(__file__).parent / "_bom.toml"
    try:
        _write(path, b'\xef\xbb\xbf[run]\nname = "bom"\n')
        assert read_toml(path)["run"]["name"] == "bom"
    finally:
        path.unlink()


# --- output files ------------------------------------------------------------------------

def test_out_is_a_folder(tmp_path, capsys):
    assert run_cli("--overwrite", "--out", str(tmp_path), *TINY) == 2
    assert "is a folder" in capsys.readouterr().err


def test_out_in_a_folder_that_cannot_be_made_or_written(tmp_path, capsys, monkeypatch):
    """A parent that is a file cannot become a folder; a folder the process may not write
    (simulated: the tests run as root, for whom chmod 555 still writes) is refused too."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_cli("--out", str(blocker / "r.h5"), *TINY) == 2
    assert "cannot create the folder" in capsys.readouterr().err
    folder = tmp_path / "ro"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode))
    assert run_cli("--out", str(folder / "r.h5"), *TINY) == 2
    assert "not writable" in capsys.readouterr().err


def test_second_run_on_a_locked_output_keeps_the_first_file(tmp_path, capsys):
    """Item 1: a run already writing <out> holds <out>.lock; a second run fails without truncating."""
    out = tmp_path / "shared.h5"
    out.write_bytes(b"first run's bytes")
    lock = OutputLock(out)
    try:
        assert run_cli("--overwrite", "--out", str(out), *TINY) == 2
        assert "being written by another run" in capsys.readouterr().err
        assert out.read_bytes() == b"first run's bytes"
    finally:
        lock.release()
    assert not Path(str(out) + ".lock").exists()


# --- crashes during a run ------------------------------------------------------------------

@pytest.mark.parametrize("exc, code, status", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 60 GiB"), 4, "failed"),
    (OSError(28, "No space left on device"), 4, "failed"),
], ids=["ctrl-c", "resource-exhausted", "io-error"])
def test_exception_during_run_marks_the_file(tmp_path, monkeypatch, capsys, exc, code, status):
    """Item 2: the partial file says interrupted/failed with the message, never completed."""
    original = simulation._timeseries_rows
    calls = []

    def crash_on_second(*args):
        calls.append(1)
        if len(calls) > 1:
            raise exc
        return original(*args)

    monkeypatch.setattr(simulation, "_timeseries_rows", crash_on_second)
    out = tmp_path / "crash.h5"
    assert run_cli("--out", str(out), *TINY) == code
    run = load_run(out)
    assert run.status == status
    if status == "failed":
        assert str(exc).split(":")[0].strip("[]0-9 ") in run.message or type(exc).__name__ in run.message
    assert run.fields["soc"].shape[0] >= 1
    assert not Path(str(out) + ".lock").exists()


# --- ssbx fit --make-synthetic -------------------------------------------------------------

def test_make_synthetic_never_overwrites_the_measurement(tmp_path, capsys):
    """Item 3."""
    fit = (EXAMPLES / "fit.toml").read_text().replace('file = "default.toml"',
                                                      f'file = "{EXAMPLES / "default.toml"}"')
    fit_file = _write(tmp_path / "fit.toml", fit)
    measured = _write(tmp_path / "fit_example_maps.h5", b"real measurement")
    assert main(["fit", str(fit_file), "--make-synthetic", "-q", "--no-plots"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert measured.read_bytes() == b"real measurement"


# --- HDF5 inputs that point at other files -------------------------------------------------

def _external_link(path: Path, target: Path):
    with h5py.File(target, "w") as f:
        f["maps"] = np.zeros((1, 4, 4))
    with h5py.File(path, "w") as f:
        f["maps"] = h5py.ExternalLink(str(target), "/maps")
        f["t_s"] = [30.0]


def _external_storage(path: Path, target: Path):
    target.write_bytes(np.zeros(16, "<f8").tobytes())
    with h5py.File(path, "w") as f:
        f.create_dataset("maps", shape=(1, 4, 4), dtype="<f8", external=[(str(target), 0, 128)])
        f["t_s"] = [30.0]


def _virtual(path: Path, target: Path):
    with h5py.File(target, "w") as f:
        f["maps"] = np.zeros((1, 4, 4))
    layout = h5py.VirtualLayout(shape=(1, 4, 4), dtype="f8")
    layout[:] = h5py.VirtualSource(str(target), "maps", shape=(1, 4, 4))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("maps", layout)
        f["t_s"] = [30.0]


@pytest.mark.parametrize("make, expected", [
    (_external_link, "external link"), (_external_storage, "external storage"), (_virtual, "virtual dataset"),
], ids=["external-link", "external-storage", "virtual"])
def test_hdf5_measurement_referring_to_other_files(tmp_path, make, expected):
    """Item 9: measurement files and run files read back."""
    path = tmp_path / "m.h5"
    make(path, tmp_path / "secret.bin")
    with pytest.raises(ConfigError, match=expected):
        load_measurement(path, pixel_size_m=1e-7, kind="projection", beam_axis="z")
    with h5py.File(path, "a") as f:
        for group in ("config", "geometry", "timeseries", "fields"):
            f.create_group(group)
    with pytest.raises(ConfigError, match=expected):
        load_run(path)


# --- values refused at validation (items 4, 5, 7) -------------------------------------------

@pytest.mark.parametrize("override, expected", [
    ("material.diffusivity_m2_s=5e-15", "material.diffusivity_m2_s = 5e-15: needs a list of 3"),
    ("numerics.time_step_safety='abc'", "numerics.time_step_safety = 'abc'"),
    ("particle.reactive_fraction=0", "particle.reactive_fraction = 0"),
    ("particle.grain_size_spread=inf", "particle.grain_size_spread = inf"),
    ("material.diffusivity_m2_s=[1e300, 1e300, 1e300]", "valid range is (0, 1e-06]"),
    ("material.diffusivity_m2_s=[]", "material.diffusivity_m2_s = []"),
    ("material.diffusivity_m2_s=[1e-300, 1e-300, 1e-300]", "underflows run.dtype = 'float32'"),
    ("particle.n_grains=100000", "particle.n_grains = 100000: the particle has only about"),
    ("output.summary_png='no'", "output.summary_png = 'no'"),
    ("output.n_snapshots=100000000", "output.n_snapshots = 100000000"),
    ("protocol.cycles=1000000000", "protocol.cycles = 1000000000"),
], ids=lambda v: v if "=" in v else "")
def test_value_refused(tmp_path, capsys, override, expected):
    out = tmp_path / "v.h5"
    assert run_cli("--out", str(out), *TINY, "--set", override) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("change, expected", [
    ({"material": {"x_initial": 0.0}}, "the particle starts empty (x_initial = 0)"),
    ({"material": {"x_initial": 1.0}, "protocol": {"direction": "lithiation"}}, "starts full (x_initial = 1)"),
    ({"cell": {"enabled": True}, "material": {"x_initial": 1.0},
      "protocol": {"kind": "cycling", "steps": ["discharge at 1C until 3.0 V"]}},
     "protocol.steps[0] = 'discharge at 1C until 3.0 V' with material.x_initial = 1.0: the particle starts full"),
    ({"cell": {"enabled": True}, "protocol": {"kind": "cycling", "steps": ["charge at 1C until 3.5 V"]}},
     "already 3.626 V, above the step's 3.5 V cut-off"),
    ({"cell": {"enabled": True}, "material": {"x_initial": 0.5},
      "protocol": {"kind": "cycling", "steps": ["discharge at 1C until 4.1 V", "charge at 1C until 4.3 V"]}},
     "already 4.039 V, below the step's 4.1 V cut-off"),
], ids=["charge_empty", "lithiate_full", "discharge_full", "charge_past_cutoff", "discharge_past_cutoff"])
def test_first_protocol_step_that_cannot_start_is_refused(change, expected):
    """A first step that cannot start from material.x_initial (x at its bound, or the OCV
    at x_initial already past the step's cut-off; NCM111 OCV: 3.626 V at x = 0.95, about
    4.04 V at 0.5) is refused before any computation."""
    from ssbx.engine.config.scenario import Scenario

    with pytest.raises(ConfigError) as err:
        Scenario().replace(**change)
    assert expected in str(err.value)


def test_c_over_zero_step_refused():
    from ssbx.engine.config.protocol import parse_step

    with pytest.raises(ConfigError, match="C-rate must be a finite number > 0"):
        parse_step("charge at C/0 until 4.3 V")


# --- ssbx tortuosity (items 5, 6, 7) -------------------------------------------------------

def _channel(tmp_path) -> Path:
    labels = np.zeros((6, 4, 4), np.uint8)
    labels[:, 1:3, 1:3] = 2  # a straight electrolyte channel along x
    path = tmp_path / "channel.npy"
    np.save(path, labels)
    return path


@pytest.mark.parametrize("args, expected", [
    (["--rtol", "nan"], "--rtol nan"),
    (["--rtol", "0"], "--rtol 0.0"),
    (["--voxel-size-m", "inf"], "--voxel-size-m inf"),
], ids=["rtol-nan", "rtol-zero", "voxel-inf"])
def test_tortuosity_solver_options_refused(tmp_path, capsys, args, expected):
    assert main(["tortuosity", str(_channel(tmp_path)), "--axis", "x", *args]) == 2
    assert expected in capsys.readouterr().err


def test_tortuosity_json_where_no_file_can_be(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["tortuosity", str(_channel(tmp_path)), "--json", str(blocker / "out.json")]) == 2
    assert "--json" in capsys.readouterr().err


def test_tortuosity_json_into_a_missing_folder_is_created(tmp_path):
    out = tmp_path / "new" / "t.json"
    assert main(["tortuosity", str(_channel(tmp_path)), "--axis", "x", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["converged"] is True


def test_tortuosity_not_converged_exits_non_zero(tmp_path, monkeypatch, capsys):
    from ssbx.engine.observables import tortuosity

    original = tortuosity._solve_axis
    monkeypatch.setattr(tortuosity, "_solve_axis", lambda *a: (*original(*a)[:3], False))
    out = tmp_path / "t.json"
    assert main(["tortuosity", str(_channel(tmp_path)), "--axis", "x", "--solver", "reference",
                 "--json", str(out)]) == 5
    assert "not converged" in capsys.readouterr().err
    assert json.loads(out.read_text())["converged"] is False


def test_rgb_tiff_refused(tmp_path, capsys):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    assert main(["tortuosity", str(path)]) == 2
    assert "3-channel (colour) TIFF" in capsys.readouterr().err


# --- resources, dtypes, measurement contents (items 4, 5, 7) --------------------------------

def test_grid_beyond_memory_refused(tmp_path, capsys):
    assert run_cli("--out", str(tmp_path / "big.h5"), "--set", "particle.radius_m=5e-4",
                   "--set", "particle.voxel_size_m=1e-7", "--set", "particle.mean_grain_size_m=1e-5",
                   "--set", "particle.n_grains=false") == 2
    err = capsys.readouterr().err
    assert "GiB of memory; this machine has" in err


def test_cell_grid_beyond_memory_refused(tmp_path):
    """A cell run is sized before anything is allocated: 10 nm voxels give a grid of about
    5e8 voxels (943² × 605) for SMALL's particle and separator (the lateral size follows from the areal
    capacity), far beyond this machine's memory; nothing is written."""
    from ssbx.engine import api

    big = scenario_from_dict(dict(SMALL, particle=dict(SMALL["particle"], voxel_size_m=1e-8)))
    with pytest.raises(ConfigError, match=r"cell grid of \d+ voxels .* GiB of memory; this machine has"):
        api.run(big, tmp_path / "cell.h5")
    assert not any(tmp_path.iterdir())


def test_output_beyond_free_disk_refused(tmp_path, capsys, monkeypatch):
    from ssbx.engine import safe_files

    monkeypatch.setattr(safe_files.shutil, "disk_usage", lambda p: shutil_usage(free=1000))
    assert run_cli("--out", str(tmp_path / "o.h5"), *TINY) == 2
    assert "output.n_snapshots = 7: the run file would hold up to" in capsys.readouterr().err


def shutil_usage(free):
    import collections

    return collections.namedtuple("usage", "total used free")(free, 0, free)


def test_float64_run_stores_fields_in_float64(tmp_path):
    out = tmp_path / "f64.h5"
    import jax

    assert not jax.config.jax_enable_x64
    assert run_cli("--float64", "--out", str(out), *TINY) == 0
    with h5py.File(out, "r") as f:
        assert f["fields/soc"].dtype == np.float64
    assert not jax.config.jax_enable_x64  # 64-bit for that run only, not for the rest of the process


def test_measurement_times_as_strings_refused(tmp_path):
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f["maps"] = np.zeros((1, 4, 4))
        f["t_s"] = np.array([b"30"])
    with pytest.raises(ConfigError, match="/t_s holds"):
        load_measurement(path, pixel_size_m=1e-7, kind="projection", beam_axis="z")


CELL = dict(SMALL, protocol={"kind": "cycling", "steps": ["charge at 2C until 4.3 V or 10 min"]})


@pytest.mark.parametrize("exc, status", [(KeyboardInterrupt(), "interrupted"), (MemoryError("device"), "failed")],
                         ids=["ctrl-c", "memory"])
def test_exception_in_cell_run_marks_the_file(tmp_path, exc, status):
    """Item 2, cell (device driver) path: the exception propagates, the file says why."""
    from ssbx.engine.config.scenario import scenario_from_dict
    from ssbx.engine.runs.cell_run import run_cell_device

    def broken_step(*args, **kwargs):
        raise exc

    out = tmp_path / "cell.h5"
    with pytest.raises(type(exc)):
        run_cell_device(scenario_from_dict(CELL), out, progress=False, step=broken_step)
    run = load_run(out)
    assert run.status == status and status in run.message
    assert not Path(str(out) + ".lock").exists()


def test_two_dimensional_cell_is_refused():
    """A 2D (disc) cell gave a first potential solve of ~750 V at a 2C charge, ending the
    charge at once: refused, naming the field, until it is fixed and validated."""
    from ssbx.engine.config.scenario import scenario_from_dict
    from ssbx.engine.errors import ConfigError

    with pytest.raises(ConfigError, match=r"particle.ndim = 2 with \[cell\] enabled = true: cell runs are 3D"):
        scenario_from_dict({"particle": {"ndim": 2, "radius_m": 2e-6, "voxel_size_m": 5e-7, "n_grains": 6},
                            "cell": {"enabled": True}, "mechanics": {"enabled": False},
                            "protocol": {"kind": "cycling", "steps": ["charge at 1C until 4.3 V"]}})

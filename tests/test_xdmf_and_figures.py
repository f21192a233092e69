"""What a user opens after a run: the ParaView sidecar ``run.xdmf`` (read back with VTK's
XDMF reader, the one ParaView uses, and compared with the HDF5 datasets exactly) and the
summary figures (titles and labels taken from the protocol stored in the run file)."""

import json
import shutil

import h5py
import numpy as np
import pytest
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as SDDP
from vtkmodules.vtkCommonTransforms import vtkTransform
from vtkmodules.vtkIOXdmf2 import vtkXdmfReader

from test_cell import SMALL

from ssbx.engine.plots import summary as plotting
from ssbx.engine.cli.main import main
from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.io.run_file import RunWriter, load_run
from ssbx.engine.geometry.microstructure import Microstructure
from ssbx.engine.config.protocol import parse_step
from ssbx.engine.runs.cell_run import run_cell_device
from ssbx.engine.io.xdmf import is_ssbx_sidecar

CELL_STEPS = ["charge at 2C until 4.3 V or 4 min", "hold 3.95 V until C/2 or 2 min", "rest 1 min",
              "discharge at 1C until 3.0 V or 3 min"]


def read_xdmf(path):
    """Every time step of an XDMF file as VTK reads it: (time, dims, spacing, origin,
    cell arrays, field arrays, the value at VTK cell index (i, j, k) of each cell array)."""
    reader = vtkXdmfReader()
    reader.SetFileName(str(path))
    reader.UpdateInformation()
    info = reader.GetOutputInformation(0)
    times = [info.Get(SDDP.TIME_STEPS(), k) for k in range(info.Length(SDDP.TIME_STEPS()))]
    steps = []
    for t in times:
        reader.UpdateTimeStep(t)
        img = reader.GetOutputDataObject(0)
        cd, fd = img.GetCellData(), img.GetFieldData()
        cells = {cd.GetArrayName(k): vtk_to_numpy(cd.GetArray(k)).copy() for k in range(cd.GetNumberOfArrays())}
        field = {fd.GetArrayName(k): vtk_to_numpy(fd.GetArray(k)).copy() for k in range(fd.GetNumberOfArrays())}
        steps.append(dict(t=t, dims=img.GetDimensions(), spacing=img.GetSpacing(), origin=img.GetOrigin(),
                          cells=cells, field=field, cell_id=img.ComputeCellId, center=_cell_center(img)))
    return steps


def _cell_center(img):
    def center(ijk):
        bounds = [0.0] * 6
        img.GetCell(img.ComputeCellId(list(ijk))).GetBounds(bounds)
        return np.array([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])
    return center


def assert_sidecar_equals_file(run_path, xdmf_path=None):
    """Every field at every snapshot, labels and grain ids, snapshot statistics and per-grain
    arrays read through the sidecar equal the HDF5 datasets exactly (NaN where NaN)."""
    xdmf_path = xdmf_path or run_path.with_suffix(".xdmf")
    steps = read_xdmf(xdmf_path)
    with h5py.File(run_path, "r") as f:
        t_s = f["fields/t_s"][()]
        assert [s["t"] for s in steps] == pytest.approx(list(t_s), rel=1e-15, abs=0)
        grid = f["geometry/labels"].shape
        names = [n for n in f["fields"] if n != "t_s"]
        assert names
        for i, step in enumerate(steps):
            assert set(step["cells"]) == set(names) | {"labels", "grain_id"}
            for name in names:
                np.testing.assert_array_equal(step["cells"][name], f["fields"][name][i].ravel())
                assert step["cells"][name].dtype == f["fields"][name].dtype
            for name in ("labels", "grain_id"):
                np.testing.assert_array_equal(step["cells"][name], f["geometry"][name][()].ravel())
            for name, ds in f["snapshots"].items():
                np.testing.assert_array_equal(step["field"][name], ds[i:i + 1])
            for name, ds in f["grains"].items():
                np.testing.assert_array_equal(step["field"][f"grain_{name}"], ds[i])
    return steps, grid


def test_sidecar_of_a_run_file_reads_back_exactly_and_keeps_the_axes(tmp_path):
    """A RunWriter file on a 3 × 4 × 5 grid (every axis different, so a transposed or
    mis-ordered read cannot pass) with float64 fields: VTK reads every value back, the
    grid is (nz+1, ny+1, nx+1) points of the voxel size (ParaView X, Y, Z = ssbx z, y, x,
    the documented convention), and the Transform of docs/paraview.md (scale X by −1,
    then rotate 90° about Y) puts each VTK cell centre on the ssbx cell centre
    ((i + ½) h, (j + ½) h, (k + ½) h). The pair moved to another folder still reads."""
    rng = np.random.default_rng(0)
    shape, h = (3, 4, 5), 2.5e-7
    labels = rng.integers(0, 5, shape).astype(np.uint8)
    grain_id = np.where(labels == 1, rng.integers(0, 4, shape), -1).astype(np.int32)
    micro = Microstructure(labels, grain_id, np.tile([1.0, 0, 0, 0], (4, 1)), np.ones(4, bool), h)
    path = tmp_path / "tiny.h5"
    fields = []
    with RunWriter(path, json.dumps({"run": {"name": "tiny", "dtype": "float64"}}), micro) as writer:
        for i, t in enumerate((0.0, 12.5, 30.0)):
            soc = np.where(labels == 1, rng.random(shape), np.nan)
            fields.append(soc)
            writer.append_snapshot(t, {"soc": soc, "phi_e_V": rng.normal(size=shape)},
                                   {"mean_soc": rng.random(4)}, {"mean_soc": float(np.nanmean(soc)), "n": i})
    steps, grid = assert_sidecar_equals_file(path)
    nx, ny, nz = grid
    for step, soc in zip(steps, fields):
        assert step["dims"] == (nz + 1, ny + 1, nx + 1)
        assert step["spacing"] == pytest.approx((h, h, h), rel=1e-15) and step["origin"] == (0.0, 0.0, 0.0)
        for ijk in [(0, 0, 0), (1, 2, 3), (2, 3, 4), (2, 0, 4)]:
            vtk_ijk = ijk[::-1]
            np.testing.assert_array_equal(step["cells"]["soc"][step["cell_id"](list(vtk_ijk))], soc[ijk])
            # as ParaView's Transform filter (vtkPVTransform::UpdateMatrix): scale, then rotate
            transform = vtkTransform()
            transform.RotateY(90)
            transform.Scale(-1, 1, 1)
            moved = np.array(transform.TransformPoint(step["center"](vtk_ijk)))
            np.testing.assert_allclose(moved, (np.array(ijk) + 0.5) * h, rtol=0, atol=1e-6 * h)  # float32 cell points
    # the references are relative: the pair moves together
    moved_dir = tmp_path / "elsewhere"
    moved_dir.mkdir()
    for p in (path, path.with_suffix(".xdmf")):
        shutil.move(p, moved_dir / p.name)
    assert_sidecar_equals_file(moved_dir / "tiny.h5")


def test_a_foreign_file_at_the_sidecar_path_is_left_alone(tmp_path):
    """A finishing run never replaces a .xdmf that ssbx did not write: it warns and keeps it."""
    sidecar = tmp_path / "mine.xdmf"
    sidecar.write_text("<my own notes/>")
    micro = Microstructure(np.ones((2, 2, 2), np.uint8), np.zeros((2, 2, 2), np.int32),
                           np.array([[1.0, 0, 0, 0]]), np.ones(1, bool), 1e-7)
    with pytest.warns(UserWarning, match="not written by ssbx"):
        with RunWriter(tmp_path / "mine.h5", json.dumps({"run": {"name": "mine"}}), micro) as writer:
            writer.append_snapshot(0.0, {"soc": np.ones((2, 2, 2))}, {})
    assert sidecar.read_text() == "<my own notes/>"


@pytest.fixture(scope="module")
def particle_run(tmp_path_factory):
    """A 2D particle run through `ssbx run --overwrite` (summary PNG and sidecar written by
    the CLI; a .xdmf that ssbx did not write is replaced because --overwrite is given)."""
    folder = tmp_path_factory.mktemp("particle")
    scenario = folder / "small.toml"
    scenario.write_text('[run]\nname = "small2d"\n[particle]\nradius_m = 1e-6\nn_grains = 5\nndim = 2\n'
                        "[protocol]\nduration_s = 60.0\n[output]\nn_snapshots = 3\n[mechanics]\nenabled = false\n")
    out = folder / "small2d.h5"
    out.with_suffix(".xdmf").write_text("an old file the user replaces with --overwrite")
    assert main(["run", str(scenario), "--out", str(out), "-q", "--overwrite"]) == 0
    assert is_ssbx_sidecar(out.with_suffix(".xdmf"))
    return out


@pytest.fixture(scope="module")
def cell_run(tmp_path_factory):
    """A small cell (the S2 geometry of test_cell at 0.5 µm) cycled CC, CV, rest, CC."""
    out = tmp_path_factory.mktemp("cell") / "cell.h5"
    scenario = scenario_from_dict(dict(SMALL, protocol={"kind": "cycling", "steps": CELL_STEPS}))
    result = run_cell_device(scenario, out, progress=False)
    assert result.status == "completed", result.message
    return out


def test_particle_and_cell_runs_write_sidecars_that_read_back(particle_run, cell_run):
    """The run drivers write the sidecar when they close the file; every field of every
    snapshot (float32 runs) reads back equal. 2D runs give a one-cell-thick grid."""
    steps, grid = assert_sidecar_equals_file(particle_run)
    assert len(grid) == 2 and steps[0]["dims"] == (1, grid[1] + 1, grid[0] + 1)
    steps, grid = assert_sidecar_equals_file(cell_run)
    assert len(steps) >= 5 and {"soc", "phi_s_V", "phi_e_V", "interface_current_A_m2"} <= set(steps[0]["cells"])
    assert len(np.unique(steps[0]["cells"]["labels"])) >= 3  # particle, composite, separator


def test_sidecar_is_an_output_never_overwritten_unasked(particle_run, tmp_path, capsys):
    """`ssbx run` refuses an existing sidecar before running; `ssbx xdmf` refuses to replace
    one without --overwrite and writes one elsewhere with a reference relative to it."""
    foreign = tmp_path / "fresh.xdmf"
    foreign.write_text("user data")
    assert main(["run", "-q", "--out", str(tmp_path / "fresh.h5")]) == 2
    err = capsys.readouterr().err
    assert str(foreign) in err and "--overwrite" in err
    assert foreign.read_text() == "user data" and not (tmp_path / "fresh.h5").exists()

    sidecar = particle_run.with_suffix(".xdmf")
    before = sidecar.read_bytes()
    assert main(["xdmf", str(particle_run)]) == 2
    assert "already exists" in capsys.readouterr().err and sidecar.read_bytes() == before
    assert main(["xdmf", str(particle_run), "--overwrite"]) == 0 and sidecar.read_bytes() == before
    other = tmp_path / "views" / "deep" / "p.xdmf"
    assert main(["xdmf", str(particle_run), "--out", str(other)]) == 0
    assert_sidecar_equals_file(particle_run, other)
    assert main(["xdmf", str(tmp_path / "missing.h5")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("text, label", [
    ("charge at 1C until 4.3 V", "CC charge 1C"), ("discharge at C/2 until 3.0 V or 3 h", "CC discharge 0.5C"),
    ("charge at C/20 until 4.2 V", "CC charge C/20"), ("hold 4.3 V until C/20", "CV 4.3 V"),
    ("rest 10 min", "rest")])
def test_step_labels_name_kind_and_rate(text, label):
    assert plotting.step_label(parse_step(text)) == label


def _texts(fig):
    out = [fig._suptitle.get_text()] if fig._suptitle else []
    for sub in getattr(fig, "subfigs", []):
        out += _texts(sub)
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        legend = ax.get_legend()
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()]
    return [t for t in out if t]


def test_cell_figure_is_labelled_from_the_protocol(cell_run, tmp_path):
    """Step names, the M_Li(t) panel (its curve is /timeseries/li_mol) and the maps at the
    start, the end of charge (end of the CV step) and the end, each showing the stored
    field of the snapshot at that step's last time."""
    run = load_run(cell_run)
    fig = plotting.cell_figure(run)
    texts = _texts(fig)
    assert "small_cell: CC charge 2C → CV 3.95 V → rest → CC discharge 1C" in texts
    assert not any("step 1" in t or "SOC" in t for t in texts)
    ax_q = next(ax for ax in fig.axes if ax.get_title() == "voltage vs capacity, per step")
    assert [t.get_text() for t in ax_q.get_legend().get_texts()] == ["CC charge 2C", "CV 3.95 V", "CC discharge 1C"]
    ax_m = next(ax for ax in fig.axes if ax.get_title().startswith("M_Li(t)"))
    t_line, m_line = ax_m.lines[0].get_data()
    ts = run.timeseries
    np.testing.assert_allclose(t_line, ts["t_s"] / 3600, rtol=1e-15)
    scale = ts["li_mol"][0] / m_line[0]
    np.testing.assert_allclose(m_line * scale, ts["li_mol"], rtol=1e-12)
    assert "Li fraction x (1 = lithiated)" in " ".join(texts)

    maps = [ax for ax in fig.axes if ax.images and ax.get_title()]
    titles = [ax.get_title().split("\n")[0] for ax in maps]
    assert titles[0] == "start" and titles[-1] == "end of CC discharge 1C" and "end of CV 3.95 V" in titles
    cv_end = ts["t_s"][np.flatnonzero(ts["step_index"] == 1)[-1]]
    i = int(np.flatnonzero(run.fields["t_s"] == cv_end)[0])
    shown = maps[titles.index("end of CV 3.95 V")].images[0].get_array()
    mid = run.fields["soc"].shape[2] // 2
    np.testing.assert_array_equal(np.ma.filled(shown, np.nan), run.fields["soc"][i][:, mid, :].T)
    plotting._finish(fig, tmp_path / "cell.png")
    assert (tmp_path / "cell.png").stat().st_size > 10_000


def test_particle_figure_names_the_protocol_and_x(particle_run):
    """The CLI wrote the PNG; the figure's title names the prescribed current by kind and
    rate, and x is labelled as the Li fraction everywhere it is shown."""
    assert particle_run.with_suffix(".png").stat().st_size > 10_000
    run = load_run(particle_run)
    fig = plotting.particle_figure(run)
    texts = _texts(fig)
    assert "small2d: CC charge 1C (delithiation), 60 s" in texts
    assert "mean Li fraction x (1 = lithiated)" in texts
    assert any(t.startswith("Li fraction x (1 = lithiated)") for t in texts)  # the colour bar
    assert not any("SOC" in t for t in texts)  # no SOC window in this scenario


def test_soc_axis_only_with_the_materials_window(particle_run):
    """With material.x_at_0_soc = x₀ and x_at_100_soc = x₁₀₀ the mean-x panel gets an SOC
    axis, SOC = (x₀ − x)/(x₀ − x₁₀₀): x₀ reads as SOC 0 and x₁₀₀ as SOC 1."""
    run = load_run(particle_run)
    run.config["material"].update(x_at_0_soc=0.95, x_at_100_soc=0.45)
    fig = plotting.particle_figure(run)
    ax = next(a for a in fig.axes if a.get_title() == "mean Li fraction of the particle")
    (sec,) = ax.child_axes
    assert sec.get_ylabel().startswith("SOC = (x₀ − x)/(x₀ − x₁₀₀)")
    ax.set_ylim(0.45, 0.95)
    fig.canvas.draw()
    for soc in (0.0, 0.3, 1.0):  # drawn at the height of x = x₀ − SOC (x₀ − x₁₀₀) on the x axis
        y_sec = sec.transData.transform((0.0, soc))[1]
        y_x = ax.transData.transform((0.0, 0.95 - soc * 0.5))[1]
        assert y_sec == pytest.approx(y_x, abs=1e-6)

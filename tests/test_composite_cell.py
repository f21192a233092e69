"""Multi-particle (composite-cathode) cells: charge conservation per particle and in
total, an ionically isolated particle that cannot react, the generated-composite cell
geometry and its capacity, and the bad inputs (engine/geometry/cell_stack.py,
engine/observables/particles.py, engine/runs/particle_output.py)."""

import json

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.cell_stack import cell_microstructure
from ssbx.engine.model.resolve import resolve_cell
from ssbx.engine.observables.particles import ParticleSet, pearson
from ssbx.engine.phases import ACTIVE, CARBON, ION_CONDUCTORS, SOLID_ELECTROLYTE
from ssbx.engine.runs.cell_run import run_cell_device
from ssbx.kernels.constants import FARADAY

H = 0.5e-6
X0 = 0.9


def column_volume() -> np.ndarray:
    """(8, 12, 10) cathode, file values 0 = SE, 1 = NCM, 2 = carbon, z = 0 the collector.

    Half y < 6: particle A (3³ voxels, deep) and particle C (2³, near the separator) in
    solid electrolyte, each on a carbon column down to the collector. Half y ≥ 6:
    particle B (3³) inside a closed carbon shell that spans the whole x period, y 6..11
    and z 0..7, so every neighbour of B is carbon: B is electronically connected but has
    no ionic path at all."""
    v = np.zeros((8, 12, 10), np.uint8)
    v[1:4, 1:4, 0:1] = 2  # carbon foot of A
    v[1:4, 1:4, 1:4] = 1  # A
    v[5:7, 2:4, 0:6] = 2  # carbon column of C
    v[5:7, 2:4, 6:8] = 1  # C
    v[:, 6:12, 0:8] = 2  # carbon shell of B
    v[2:5, 8:11, 3:6] = 1  # B
    return v


def column_scenario(path, **cell):
    return scenario_from_dict({
        "run": {"name": "column", "dtype": "float64"},
        "cell": {"enabled": True, "cathode": "volume", "cathode_volume": str(path),
                 "cathode_label_map": "0=SE,1=NCM,2=carbon", "separator_thickness_m": 1e-6, **cell},
        "composite": {"voxel_size_m": H},
        "material": {"x_initial": X0},
        "mechanics": {"enabled": False},
        "electrochemistry": {"time_step_s": 30.0},
        "numerics": {"chunk_steps": 1},
        "protocol": {"kind": "cycling", "steps": ["charge at 2C until 4.3 V or 2 min"]},
    })


@pytest.fixture(scope="module")
def column_run(tmp_path_factory):
    import jax

    tmp = tmp_path_factory.mktemp("column")
    np.save(tmp / "column.npy", column_volume())
    scenario = column_scenario(tmp / "column.npy")
    with jax.enable_x64(True):
        resolved = resolve_cell(scenario, jnp.float64)
        result = run_cell_device(scenario, tmp / "column.h5", progress=False, dtype=jnp.float64)
    return scenario, resolved, result, tmp / "column.h5"


def test_column_particles_and_isolation(column_run):
    """The loaded volume gives three particles (face-connected active clusters); B has
    no active | ion-conductor face and no ion-conducting neighbour at all."""
    _, resolved, result, path = column_run
    assert result.status == "completed"
    pid = resolved.info["particles"]["particle_id"]
    labels = resolved.micro.labels
    assert pid.max() == 2 and np.count_nonzero(pid >= 0) == np.count_nonzero(labels == ACTIVE) == 27 + 8 + 27
    b = pid[3, 9, 4]
    in_b = pid == b
    ionic = np.isin(labels, ION_CONDUCTORS)
    for axis in range(3):
        for shift in (1, -1):
            assert not np.any(in_b & np.roll(ionic, shift, axis=axis))
    faces = np.zeros(labels.shape, bool)
    for mask in resolved.geometry.face_masks:
        faces |= np.asarray(mask)
    assert not np.any(faces & in_b) and np.any(faces & (pid >= 0))


def test_isolated_particle_keeps_its_initial_soc_while_the_others_charge(column_run):
    _, resolved, _, path = column_run
    pid = resolved.info["particles"]["particle_id"]
    b = int(pid[3, 9, 4])
    with h5py.File(path) as f:
        soc = f["particles/soc"][...]
        cur = f["particles/current_A"][...]
        x_end = f["fields/soc"][-1]
    assert soc.shape[0] > 4
    np.testing.assert_allclose(soc[:, b], X0, rtol=0, atol=1e-15)  # (mean of 27 voxels' round-off)
    np.testing.assert_array_equal(cur[:, b], 0.0)
    np.testing.assert_array_equal(x_end[pid == b], X0)  # exactly: no source, uniform x
    others = [p for p in range(3) if p != b]
    assert np.all(X0 - soc[-1, others] > 5e-3)  # the particles with SE contact charged


def test_charge_conservation_per_particle_and_in_total(column_run):
    """∫ I dt = F ΔM_Li to 1e-5 relative (total, from the per-particle Li contents); per
    particle, with one row per step (chunk_steps = 1), M_p(t_k) − M_p(t_{k−1}) =
    −I_p Δt / F with the current that drove the step, and Σ_p I_p = the cell current."""
    scenario, _, _, path = column_run
    with h5py.File(path) as f:
        ts = {k: f["timeseries"][k][...] for k in ("t_s", "current_A", "charge_Ah", "li_mol")}
        t = f["particles/t_s"][...]
        li = f["particles/li_mol"][...]
        cur = f["particles/current_A"][...]
        one_c = f["geometry"].attrs["capacity_1C_A"]
    charge_C = ts["charge_Ah"][-1] * 3600.0
    assert charge_C == pytest.approx(np.sum(ts["current_A"][:-1] * np.diff(ts["t_s"])), rel=1e-12)
    delta_mol = li[0].sum() - li[-1].sum()
    assert charge_C > 0
    assert abs(FARADAY * delta_mol - charge_C) <= 1e-5 * charge_C
    assert li[-1].sum() == pytest.approx(ts["li_mol"][-1], rel=1e-12)
    dt = np.diff(t)
    assert np.all(dt >= 0)
    predicted = -cur[1:] * dt[:, None] / FARADAY
    np.testing.assert_allclose(np.diff(li, axis=0), predicted, rtol=0, atol=1e-9 * np.abs(li[0]).max())
    moving = dt > 0
    np.testing.assert_allclose(cur[1:][moving].sum(axis=1), 2.0 * one_c, rtol=1e-9)


def test_outputs_correlations_and_txm(column_run):
    """Correlations are Pearson's r of the stored arrays; the TXM top view is the
    thickness-weighted mean of x along z; B's polarisation stays 0."""
    _, resolved, _, path = column_run
    b = int(resolved.info["particles"]["particle_id"][3, 9, 4])
    with h5py.File(path) as f:
        corr = json.loads(f["particles"].attrs["correlations_json"])
        top = f["txm/top"][-1]
        x_end = f["fields/soc"][-1]
        pol = f["particles/polarisation_m"][...]
        radius = f["particles/table/equivalent_radius_m"][...]
    r = np.corrcoef(corr["soc_change"], radius)[0, 1]
    assert corr["pearson_soc_change_vs_radius"] == pytest.approx(r, abs=1e-12)
    sizes = np.bincount(resolved.info["particles"]["particle_id"][resolved.micro.active])
    assert sorted(sizes) == [8, 27, 27]
    np.testing.assert_allclose(radius, (3 * sizes * H**3 / (4 * np.pi)) ** (1 / 3), rtol=1e-12)
    np.testing.assert_allclose(corr["equivalent_radius_m"], radius, rtol=1e-12)
    active = np.isfinite(x_end)
    col = active[2, 9]  # the ray through B at (x, y) = (2, 9) crosses B only
    assert top[2, 9] == pytest.approx(np.mean(x_end[2, 9][col]), rel=1e-6)
    np.testing.assert_allclose(pol[:, b], 0.0, rtol=0, atol=1e-20)  # m; round-off of the two centroids


def test_polarisation_of_a_linear_profile():
    """A 1D Li gradient along z in a cube: the charge-state centroid moves towards low x
    by the analytic first moment; the geometric centroid is the cube centre, also for a
    cube cut by the periodic x face."""
    pid = -np.ones((10, 10, 8), np.int32)
    xs = (np.arange(7, 13) % 10)  # cube wraps across x = 0
    pid[np.ix_(xs, np.arange(2, 8), np.arange(1, 7))] = 0
    h = 1e-6
    pset = ParticleSet.build(pid, h, np.array([[10.0e-6, 5e-6, 4e-6]]), cathode_voxels=8)
    np.testing.assert_allclose(pset.centroid_m[0], [10e-6, 5e-6, 4e-6], rtol=0, atol=1e-18)
    assert pset.depth_m[0] == pytest.approx(4e-6)
    z = (np.arange(8) + 0.5) * h
    x = np.broadcast_to(0.5 + 0.05 * (z - 4e-6) / h, pid.shape)  # lower x near the collector
    vals = pset.values(x, np.zeros(pid.shape), 1.0)
    zc = z[1:7]
    s = 1.0 - (0.5 + 0.05 * (zc - 4e-6) / h)
    expected = np.sum(s * (zc - 4e-6)) / np.sum(s)
    np.testing.assert_allclose(vals["polarisation_m"][0], [0.0, 0.0, expected], atol=1e-18)
    assert expected < 0 and vals["soc"][0] == pytest.approx(0.5)
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8.5]) == pytest.approx(np.corrcoef([1, 2, 3, 4], [2, 4, 6, 8.5])[0, 1])
    assert np.isnan(pearson([1, 2], [3, 4]))


def test_generated_composite_cell_geometry_and_capacity():
    """cell.cathode = composite: the generator's volume between collector and separator,
    its cross-section as the cell area, 1C from F c_max V_active, particle ids on the
    active voxels only."""
    scenario = scenario_from_dict({
        "cell": {"enabled": True, "cathode": "composite", "separator_thickness_m": 2e-6},
        "composite": {"size": [16, 16, 12], "voxel_size_m": H, "radius_mean_m": 1.5e-6,
                      "radius_std_m": 0.3e-6, "carbon": "particle", "seed": 3},
        "mechanics": {"enabled": False},
        "protocol": {"kind": "cycling", "steps": ["charge at 1C until 4.3 V"]},
    })
    micro, info = cell_microstructure(scenario)
    assert micro.labels.shape == (16, 16, 16)
    assert np.all(micro.labels[..., 12:] == SOLID_ELECTROLYTE)
    assert {ACTIVE, CARBON, SOLID_ELECTROLYTE} <= set(np.unique(micro.labels[..., :12]).tolist())
    assert info["cell_area_m2"] == pytest.approx((16 * H) ** 2)
    c_max = scenario.material.resolved_c_max()
    assert info["capacity_Ah"] == pytest.approx(FARADAY * c_max * np.count_nonzero(micro.active) * H**3 / 3600)
    pid = info["particles"]["particle_id"]
    np.testing.assert_array_equal(pid >= 0, micro.active)
    assert pid.max() + 1 == len(info["particles"]["table"]["radius_m"]) >= 3


def _bad(tmp_path, volume, **cell):
    np.save(tmp_path / "v.npy", volume)
    scenario = column_scenario(tmp_path / "v.npy", **cell)
    cell_microstructure(scenario)


def test_bad_composite_cell_inputs(tmp_path):
    v = column_volume()
    with pytest.raises(ConfigError, match="cathode_label_map.*'graphite'"):
        _bad(tmp_path, v, cathode_label_map="0=SE,1=NCM,2=graphite")
    with pytest.raises(ConfigError, match=r"values \[2\].*no entry"):
        _bad(tmp_path, v, cathode_label_map="0=SE,1=NCM")
    shell = np.full((8, 8, 8), 2, np.uint8)
    shell[2:5, 2:5, 2:5] = 1
    shell[..., 7] = 0
    with pytest.raises(ConfigError, match="no active voxel touches a solid electrolyte"):
        _bad(tmp_path, shell)
    with pytest.raises(ConfigError, match="too small"):
        _bad(tmp_path, v[:, :, :3])
    with pytest.raises(ConfigError, match="2D volume"):
        _bad(tmp_path, v[:, :, 0])
    with pytest.raises(ConfigError, match="no active voxels"):
        _bad(tmp_path, np.zeros((8, 8, 8), np.uint8))
    floating = np.zeros((8, 8, 8), np.uint8)
    floating[2:5, 2:5, 2:5] = 1  # touches SE, but nothing conducts electrons to the collector
    with pytest.raises(ConfigError, match="electronically connected to the collector"):
        _bad(tmp_path, floating)
    with pytest.raises(ConfigError, match="cell.cathode = 'volume' needs cell.cathode_volume"):
        scenario_from_dict({"cell": {"enabled": True, "cathode": "volume"}, "mechanics": {"enabled": False},
                            "protocol": {"kind": "cycling", "steps": ["charge at 1C until 4.3 V"]}})
    with pytest.raises(ConfigError, match="device stepper only"):
        scenario_from_dict({"cell": {"enabled": True, "cathode": "composite"}, "mechanics": {"enabled": False},
                            "numerics": {"cell_driver": "host"},
                            "protocol": {"kind": "cycling", "steps": ["charge at 1C until 4.3 V"]}})
    with pytest.raises(ConfigError, match="composite.ratios"):
        scenario_from_dict({"composite": {"ratios": "7:3"}})
    with pytest.raises(ConfigError, match=r"composite.size"):
        scenario_from_dict({"composite": {"size": [16, 16]}})


def test_resumed_run_rewrites_the_particle_rows_exactly(column_run, tmp_path):
    """A run resumed from its last checkpoint (status set back to 'failed') ends with the
    same per-particle rows and TXM images as the uninterrupted run."""
    import shutil

    import jax

    from ssbx.engine.runs.cell_run import resume_cell_device

    _, _, _, path = column_run
    cut = tmp_path / "cut.h5"
    shutil.copy(path, cut)
    with h5py.File(cut, "a") as f:
        f.attrs["status"] = "failed"
        slot = f["restart"][f"slot_{f['restart'].attrs['valid_slot']}"]
        assert slot.attrs["n_steps"] < f["timeseries/t_s"].shape[0]  # the checkpoint is before the end
    with jax.enable_x64(True):
        assert resume_cell_device(cut, progress=False).status == "completed"
    with h5py.File(path) as a, h5py.File(cut) as b:
        for name in ("t_s", "snapshot_index", "soc", "li_mol", "current_A", "polarisation_m"):
            np.testing.assert_array_equal(a["particles"][name][...], b["particles"][name][...])
        np.testing.assert_array_equal(a["txm/top"][...], b["txm/top"][...])
        assert a["particles"].attrs["correlations_json"] == b["particles"].attrs["correlations_json"]


def test_pearson_rows_match_the_stored_particle_values(column_run):
    """/particles/pearson_* of each row is Pearson's r of that row's stored values."""
    _, _, _, path = column_run
    with h5py.File(path) as f:
        soc = f["particles/soc"][...]
        depth = f["particles/table/depth_m"][...]
        r_rows = f["particles/pearson_soc_change_vs_depth"][...]
    for k in range(1, soc.shape[0]):
        assert r_rows[k] == pytest.approx(np.corrcoef(soc[0] - soc[k], depth)[0, 1], abs=1e-12)
    assert np.isnan(r_rows[0])  # no SOC change yet: r undefined

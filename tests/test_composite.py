"""Composite generator: reproducibility, volume fractions, mass→volume, grains, I/O, errors."""

import json
import math

import numpy as np
import pytest

from ssbx.engine.geometry.composite import (
    DENSITY_G_CM3,
    FRACTION_TOLERANCE,
    generate_composite,
    grain_id_to_particle,
    load_volume,
    mass_to_volume_fractions,
    parse_ratios,
)
from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.microstructure import ACTIVE, CARBON, PORE, SOLID_ELECTROLYTE

KW = dict(size=40, voxel_size_m=0.25e-6, radius_mean_m=1.5e-6, radius_std_m=0.4e-6,
          mean_grain_size_m=1.0e-6, fibre_length_m=4e-6)


@pytest.fixture(scope="module")
def comp():
    return generate_composite(ratios="7:3:1", porosity=0.05, seed=3, **KW)


def test_same_seed_same_volume_other_seed_differs(comp):
    again = generate_composite(ratios="7:3:1", porosity=0.05, seed=3, **KW)
    assert np.array_equal(again.labels, comp.labels)
    assert np.array_equal(again.micro.grain_id, comp.micro.grain_id)
    assert np.array_equal(again.micro.orientations, comp.micro.orientations)
    other = generate_composite(ratios="7:3:1", porosity=0.05, seed=4, **KW)
    assert not np.array_equal(other.labels, comp.labels)


def test_fractions_match_request(comp):
    # Active: the radius-rescaling loop stops within FRACTION_TOLERANCE (0.2 %), far
    # inside the 1 % target, and a 40³ box (64 000 voxels) resolves 0.2 % as 128 voxels.
    # Carbon and pore are filled voxel by voxel to round(φ N), so within 0.5/N.
    req, got = comp.requested, comp.achieved()
    n = comp.labels.size
    assert abs(got["active"] - req["active"]) <= FRACTION_TOLERANCE
    assert abs(got["carbon"] - req["carbon"]) <= 0.5 / n + 1e-12
    assert abs(got["pore"] - req["pore"]) <= 0.5 / n + 1e-12
    assert abs(got["solid_electrolyte"] - req["solid_electrolyte"]) <= FRACTION_TOLERANCE + 1 / n
    assert set(np.unique(comp.labels)) == {PORE, ACTIVE, SOLID_ELECTROLYTE, CARBON}


def test_mass_to_volume_by_hand():
    # 7:3:1 with ρ = 4.78, 1.86, 2.0 g/cm³: volumes 1.46444, 1.61290, 0.5 cm³ per 11 g
    v = (7 / 4.78, 3 / 1.86, 1 / 2.0)
    s = sum(v)
    f = mass_to_volume_fractions("7:3:1")
    assert f["active"] == pytest.approx(v[0] / s, rel=1e-14)
    assert f["solid_electrolyte"] == pytest.approx(v[1] / s, rel=1e-14)
    assert f["carbon"] == pytest.approx(v[2] / s, rel=1e-14)
    assert f["active"] == pytest.approx(0.409364, abs=1e-6)
    fp = mass_to_volume_fractions([7, 3, 0], porosity=0.1)
    s0 = v[0] + v[1]
    assert fp["active"] == pytest.approx(0.9 * v[0] / s0, rel=1e-14)
    assert fp["carbon"] == 0.0 and fp["pore"] == 0.1
    assert sum(fp.values()) == pytest.approx(1.0, abs=1e-14)


def test_densities_follow_from_lattice_parameters():
    na = 6.02214076e23
    # NCM811, R-3m, a = 2.872 Å, c = 14.20 Å, Z = 3, M = 97.3 g/mol
    v_hex = math.sqrt(3) / 2 * 2.872**2 * 14.20 * 1e-24  # cm³
    assert 3 * 97.3 / (na * v_hex) == pytest.approx(DENSITY_G_CM3["active"], abs=0.01)
    # Li6PS5Cl, F-43m, a = 9.85 Å, Z = 4
    m = 6 * 6.94 + 30.974 + 5 * 32.06 + 35.45
    assert 4 * m / (na * (9.85e-8) ** 3) == pytest.approx(DENSITY_G_CM3["solid_electrolyte"],
                                                          abs=0.01)


def test_particle_table_and_grains_are_consistent(comp):
    p = comp.particles
    act = comp.labels == ACTIVE
    assert np.array_equal(act, comp.micro.grain_id >= 0)
    assert np.array_equal(act, comp.particle_id >= 0)
    assert p["volume_vox"].sum() == act.sum()
    assert np.allclose(p["volume_m3"], p["volume_vox"] * comp.micro.voxel_size_m**3)
    assert p["n_grains"].sum() == comp.micro.n_grains
    # grain ids of particle k lie in [offset_k, offset_k + n_k): one global table
    assert np.array_equal(grain_id_to_particle(comp.micro.grain_id, p["grain_offset"],
                                               p["n_grains"]), comp.particle_id)
    for k in range(len(p["radius_m"])):
        ids = np.unique(comp.micro.grain_id[comp.particle_id == k])
        if ids.size:
            assert ids.min() >= p["grain_offset"][k]
            assert ids.max() < p["grain_offset"][k] + p["n_grains"][k]
    # a voxel sphere of radius r (not cut, little overlap) has ≈ 4/3 π r³ voxels
    r_vox = p["radius_m"] / comp.micro.voxel_size_m
    sphere = 4 / 3 * np.pi * r_vox**3
    assert np.median(p["volume_vox"] / sphere) == pytest.approx(1.0, abs=0.15)
    q = comp.micro.orientations
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0)


def test_lateral_periodicity_of_particles():
    # particles that cross an x or y face continue on the opposite face: each particle is
    # one face-connected piece with wrap-around, and a crossing one is split without it
    from ssbx.engine.observables.network import periodic_components

    c = generate_composite(size=32, voxel_size_m=1e-6, ratios=[1, 9, 0], radius_mean_m=6e-6,
                           radius_std_m=0, seed=0)
    crossing = 0
    for k in range(len(c.particles["radius_m"])):
        m = c.particle_id == k
        _, n_wrap = periodic_components(m, (True, True, False))
        _, n_plain = periodic_components(m, (False, False, False))
        assert n_wrap == 1
        if (m[0].any() and m[-1].any()) or (m[:, 0].any() and m[:, -1].any()):
            crossing += 1
            assert n_plain >= 2
    assert crossing >= 1


@pytest.mark.parametrize("bad", ["7:3", "7:-3:1", "a:b:c", [1, 2, 3, 4], "0:3:1", "7:nan:1"])
def test_bad_ratios(bad):
    with pytest.raises(ConfigError, match="ratios"):
        parse_ratios(bad)


def test_unpackable_fraction_says_what_was_achieved():
    with pytest.raises(ConfigError) as err:
        generate_composite(size=24, voxel_size_m=0.25e-6, ratios="100:1:0", radius_mean_m=1e-6,
                           radius_std_m=0.0, max_overlap=0.0, seed=0, max_relax_iter=300)
    msg = str(err.value)
    assert "cannot be packed" in msg and "achieved" in msg and "0.9749" in msg


def test_bad_scalar_inputs():
    with pytest.raises(ConfigError, match="porosity"):
        mass_to_volume_fractions("7:3:1", porosity=1.2)
    with pytest.raises(ConfigError, match="voxel_size_m"):
        generate_composite(size=16, voxel_size_m=-1)
    with pytest.raises(ConfigError, match="carbon"):
        generate_composite(size=16, carbon="graphene")


def test_load_segmented_volume_with_label_map(tmp_path):
    raw = np.full((20, 20, 20), 20, np.uint16)  # 20 = electrolyte in this "scan"
    raw[2:8, 2:8, 2:8] = 10  # one particle
    raw[12:18, 12:18, 2:8] = 10  # another
    raw[:, 0, :] = 30  # carbon sheet
    raw[19, 19, 19] = 0
    path = tmp_path / "scan.npy"
    np.save(path, raw)
    c = load_volume(path, "0=pore,10=active,20=SE,30=carbon", 0.5e-6)
    assert c.labels[3, 3, 3] == ACTIVE and c.labels[5, 0, 5] == CARBON
    assert c.labels[10, 10, 10] == SOLID_ELECTROLYTE and c.labels[19, 19, 19] == PORE
    assert len(c.particles["radius_m"]) == 2
    assert sorted(c.particles["volume_vox"].tolist()) == [216, 216]
    with pytest.raises(ConfigError, match="graphene"):
        load_volume(path, "0=pore,10=active,20=SE,30=graphene", 0.5e-6)
    with pytest.raises(ConfigError, match=r"\[30\]"):
        load_volume(path, "0=pore,10=active,20=SE", 0.5e-6)


def test_cli_writes_npy_tif_h5(tmp_path, capsys):
    import h5py

    from ssbx.engine.cli.main import main
    from ssbx.engine.observables.tortuosity import load_labels

    outs = [tmp_path / "c.npy", tmp_path / "c.tif", tmp_path / "c.h5"]
    argv = ["composite", "--ratios", "7:3:1", "--size", "32", "--voxel-size", "0.25e-6",
            "--seed", "0", "--radius-mean", "1.5e-6", "--json", str(tmp_path / "c.json")]
    for o in outs:
        argv += ["--out", str(o)]
    assert main(argv) == 0
    labels = np.load(outs[0])
    assert labels.shape == (32, 32, 32)
    assert np.array_equal(load_labels(outs[1]), labels)
    with h5py.File(outs[2]) as f:
        assert np.array_equal(f["geometry/labels"][...], labels)
        assert f["geometry/orientations"].shape[1] == 4
        assert f["geometry"].attrs["voxel_size_m"] == 0.25e-6
        assert f["geometry/particles/radius_m"].shape[0] > 0
        assert f["geometry/grain_id"].dtype == np.int32
    rep = json.loads((tmp_path / "c.json").read_text())
    assert len(rep["particles"]) == rep["n_particles"]
    assert "percolation_xyz" in rep
    assert main(["composite", "--ratios", "7:3", "--size", "16"]) == 2
    assert "ratios" in capsys.readouterr().err

"""Network analysis: percolation, Maxwell–Garnett conductivity, diffusion distance, areas."""

import json
import math

import numpy as np
import pytest

from ssbx.engine.geometry.microstructure import ACTIVE, CARBON, PORE, SOLID_ELECTROLYTE
from ssbx.engine.observables.network import (
    analyze,
    contact_voxels,
    diffusion_distances,
    interface_areas,
    percolating_fraction,
    periodic_components,
)


def _ball(n, centre, r):
    g = np.arange(n) + 0.5
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= r * r


def test_straight_channel_percolates_along_its_axis_only():
    m = np.zeros((16, 16, 16), bool)
    m[6:9, 6:9, :] = True  # channel along z
    m[1, 1, 3] = True  # an isolated voxel that never percolates
    fr = [percolating_fraction(m, a) for a in range(3)]
    assert fr[2] == pytest.approx(9 * 16 / (9 * 16 + 1))
    assert fr[0] == 0.0 and fr[1] == 0.0


def test_path_joined_only_through_the_periodic_face():
    n = 16
    m = np.zeros((n, n, n), bool)
    m[5, 0:3, 0:9] = True  # lower half of the path, at the low-y face
    m[5, n - 3:n, 8:n] = True  # upper half, at the high-y face: joined only by the y wrap
    assert percolating_fraction(m, 2, periodic=(True, True, False)) == 1.0
    assert percolating_fraction(m, 2, periodic=(False, False, False)) == 0.0
    # percolation along y itself never uses the y wrap
    assert percolating_fraction(m, 1) == 0.0
    _, k_wrap = periodic_components(m)
    _, k_plain = periodic_components(m, (False, False, False))
    assert (k_wrap, k_plain) == (1, 2)


def test_maxwell_garnett_insulating_spheres(x64):
    # One cell of a simple-cubic array of insulating spheres in a matrix of σ = 1. With
    # Dirichlet faces on the cell boundary and no-flux sides the cell is the symmetry
    # unit of the infinite array, so Rayleigh's result applies:
    #   σ_eff/σ_m = 1 − 3φ / (2 + φ − 0.394 φ^(10/3) + …)  (Rayleigh 1892; the φ^(10/3)
    # term is < 1e-4 here), i.e. Maxwell–Garnett at low φ.
    from ssbx.engine.observables.tortuosity import effective_conductivity

    n = 32
    lab = np.full((n, n, n), SOLID_ELECTROLYTE, np.uint8)
    lab[_ball(n, (n / 2,) * 3, 8.6)] = ACTIVE
    phi = float(np.mean(lab == ACTIVE))
    assert 0.07 < phi < 0.09
    sig = effective_conductivity(lab, {SOLID_ELECTROLYTE: 1.0}, 1e-6, axis=2, float64=True,
                                 rtol=1e-9)
    rayleigh = 1 - 3 * phi / (2 + phi - 0.394 * phi ** (10 / 3))
    # the staircase sphere blocks slightly more than a smooth one of the same volume; a
    # 17-voxel-diameter sphere stays within 10 % of the perturbation 1 − σ_eff (~0.11)
    assert abs((1 - sig) - (1 - rayleigh)) <= 0.10 * (1 - rayleigh)


def test_diffusion_distance_sphere_touching_a_plane():
    n, r = 40, 12.0
    lab = np.zeros((n, n, n), np.uint8)  # pore
    lab[:, :, :4] = SOLID_ELECTROLYTE  # SE slab z < 4
    centre = (20.0, 20.0, 4.0 + r)  # sphere tangent to the slab surface z = 4
    lab[_ball(n, centre, r)] = ACTIVE
    d_ion, d_e = diffusion_distances(lab, 1.0)
    act = lab == ACTIVE
    assert np.all(np.isinf(d_e[act]))  # no carbon anywhere
    contact = contact_voxels(lab, (SOLID_ELECTROLYTE,))
    assert contact.sum() > 0 and np.all(np.nonzero(contact)[2] == 4)
    # analytic: the contact voxels form a disc in the layer of centres z = 4.5, of radius
    # a = √(r² − (r − 0.5)²) (the sphere's cross-section there); the straight-line distance
    # from a point at lateral offset ρ and height z to that disc is √(max(ρ − a, 0)² + (z − 4.5)²)
    idx = np.nonzero(act)
    a = math.sqrt(r * r - (r - 0.5) ** 2)
    rho = np.hypot(idx[0] + 0.5 - 20, idx[1] + 0.5 - 20)
    exact = np.hypot(np.maximum(rho - a, 0), idx[2] + 0.5 - 4.5)
    got = d_ion[act]
    # the voxelised disc edge is ragged by up to one voxel
    assert np.max(np.abs(got - exact)) <= 1.0
    far = exact > r
    assert np.mean(np.abs(got[far] - exact[far]) / exact[far]) < 0.02
    # farthest voxel: the top of the sphere, centre at z = 4 + 2r − 0.5, from z = 4.5
    assert got.max() == pytest.approx(2 * r - 1, abs=0.5)


def test_periodic_distance_wraps_laterally():
    n = 24
    lab = np.full((n, n, n), SOLID_ELECTROLYTE, np.uint8)
    lab[:, :, 8:16] = ACTIVE
    lab[0, 0, 8:16] = CARBON  # carbon column on the x = y = 0 corner
    _, d_e = diffusion_distances(lab, 1.0)
    # contacts are the four face neighbours of the column, two of them through the wrap:
    # (1, 0), (0, 1), (n−1, 0), (0, n−1). From (n−2, n−2) the nearest is (n−1, 0) (via the
    # y wrap) at √5; without the wrap it would be (n−1, … ) far away
    assert contact_voxels(lab, (CARBON,))[n - 1, 0, 12]
    assert d_e[n - 2, n - 2, 12] == pytest.approx(math.hypot(2, 1), abs=1e-9)
    assert d_e[n - 1, n - 1, 12] == pytest.approx(1.0, abs=1e-9)


def test_sphere_interface_area_smoothed_vs_4_pi_r2():
    n, r = 40, 12.0
    lab = np.full((n, n, n), SOLID_ELECTROLYTE, np.uint8)
    lab[_ball(n, (20, 20, 20), r)] = ACTIVE
    areas = interface_areas(lab, 1.0)["active_se"]
    exact = 4 * np.pi * r**2 / n**3
    # co-area of a Gaussian-smoothed (s = 1 voxel) indicator: bias ≈ s²/r² < 1 %, plus
    # the voxelisation of the sphere; 3 % covers both
    assert areas["smoothed_m2_per_m3"] == pytest.approx(exact, rel=0.03)
    # face counting over-estimates by ⟨|n_x|+|n_y|+|n_z|⟩ = 1.5 on a sphere
    assert areas["face_count_m2_per_m3"] / exact == pytest.approx(1.5, rel=0.05)
    assert interface_areas(lab, 1.0)["active_carbon"]["faces"] == 0


def test_no_percolating_path_reports_infinite_tortuosity():
    n = 20
    lab = np.full((n, n, n), SOLID_ELECTROLYTE, np.uint8)
    lab[_ball(n, (10, 10, 10), 5)] = ACTIVE  # isolated particle, no carbon
    lab[:, :, 15] = PORE  # a pore sheet cuts the SE along z
    res = analyze(lab, 0.5e-6, axes=(2,))
    tr = res["transport"]
    assert tr["electronic"]["z"]["tortuosity"] == "inf"
    assert tr["electronic"]["z"]["sigma_eff_S_m"] == 0.0
    assert tr["ionic"]["z"]["tortuosity"] == "inf"
    assert res["not_percolating"] == ["electronic along z", "ionic along z"]
    assert res["percolating_fraction"]["solid_electrolyte"][0] > 0.9
    assert res["impedance_index"]["fraction_particles_without_carbon_contact"] == 1.0
    json.dumps({k: v for k, v in res.items() if k != "_arrays"}, allow_nan=False)


def test_analyze_cli_on_generated_composite(tmp_path):
    from ssbx.engine.cli.main import main

    h5 = tmp_path / "c.h5"
    assert main(["composite", "--size", "32", "--radius-mean", "1.5e-6", "--seed", "1",
                 "--out", str(h5)]) == 0
    out = tmp_path / "a.json"
    assert main(["analyze", str(h5), "--axes", "z", "--json", str(out),
                 "--png", str(tmp_path / "a")]) == 0
    res = json.loads(out.read_text())
    assert res["transport"]["ionic"]["z"]["sigma_eff_S_m"] > 0
    assert res["transport"]["ionic"]["z"]["sigma_eff_S_m"] < 0.2
    assert (tmp_path / "a_distances.png").stat().st_size > 1000
    assert len(res["particles"]["Z_s"]) >= 1


def test_through_plane_transport_uses_the_lateral_wrap():
    # a carbon path along z whose two halves meet only through the periodic y face: the
    # laterally periodic composite conducts along z; sealed side faces would not
    n = 16
    lab = np.full((n, n, n), SOLID_ELECTROLYTE, np.uint8)
    lab[5, 0:3, 0:9] = CARBON
    lab[5, n - 3:n, 8:n] = CARBON
    res = analyze(lab, 1e-6, axes=(2,))
    e = res["transport"]["electronic"]["z"]
    assert e["percolates"] and e["lateral"] == "periodic"
    # a straight 1×3-voxel column of σ = 1e3 S/m would give σ_eff = 3e3 / n²; the jog
    # through the wrap adds a few voxels of path in series
    straight = 3 * 1e3 / n**2
    assert 0.5 * straight < e["sigma_eff_S_m"] < straight

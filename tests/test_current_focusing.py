"""Scenario S3 (2D current focusing with Li plating): conservation, analytic and
symmetry checks on small grids (docs/current_focusing.md)."""

import math

import jax
import numpy as np
import pytest

from ssbx.engine.errors import ConfigError
from ssbx.engine.runs import current_focusing as cf

# small cell: 84 µm wide (6 particle columns), 2 µm voxels, 42 × 40 grid
GEO = dict(width_um=84.0, height_um=80.0, voxel_um=2.0, li_thickness_um=4.0, separator_um=40.0,
           n_rows=2, particle_diameter_um=10.0, col_pitch_um=14.0, row_pitch_um=14.0)
F = 96485.33212  # C/mol (CODATA 2018)
R = 8.314462618  # J/(mol K)
V_LI = 6.941e-3 / 534.0  # m³/mol, CRC Handbook M/ρ


def _run(**geo):
    return cf.run_focusing({**GEO, **geo}, cf.make_params(), stress=True)


def test_uniform_cathode_plates_uniformly_and_conserves_charge(x64):
    fields, s, _ = _run(inactive="none")
    assert s["converged"] and s["elasticity_converged"]
    i = fields["plating_current_density"]
    assert np.max(np.abs(i / i.mean() - 1.0)) < 1e-6
    assert abs(i.mean() - 100.0) < 1e-6  # flat anode: plating density = applied 100 A/m²
    I = 100.0 * 84e-6
    assert abs(s["anode_current_A_per_m"] - I) / I < 1e-9
    assert abs(s["cathode_current_A_per_m"] - I) / I < 1e-9
    # Li|SE Butler–Volmer (α = ½) at uniform plating i = −100 A/m²: φ_e = −η = (2RT/F) asinh(I/(2 i0))
    phi_row = fields["phi_e"][:, 2]  # first SE row above the 2-voxel Li layer
    expected = 2 * R * 298.15 / F * math.asinh(100.0 / (2 * 10.0))
    assert np.max(np.abs(phi_row - expected)) < 1e-9
    # plated thickness δ = i t V_m / F (t = 60 s), uniform
    delta = 100.0 * 60.0 * V_LI / F
    assert np.max(np.abs(fields["plated_thickness_m"] - delta)) < 1e-6 * delta
    # uniform layer, free along the stack: the plating eigenstrain δ/h (here 0.40) is
    # stress-free; compare with the fully constrained scale E δ/h ≈ 11 GPa
    assert s["von_mises_max_SE_Pa"] < 1e-6 * 28e9 * delta / 2e-6


def test_inactive_centre_focuses_plating_under_active_columns(x64):
    fields, s, info = _run(inactive="center")  # the two central columns (x = 35, 49 µm) off
    i = fields["plating_current_density"]
    x = fields["x_um"]
    assert s["n_active"] == 8
    assert s["plating_peak_to_mean"] > 1.002  # measured 1.0032
    assert abs(x[np.argmax(i)] - 42.0) > 14.0  # peak under an active (outer) column
    assert abs(x[np.argmin(i)] - 42.0) < 7.0  # minimum opposite the inactive centre
    I = 100.0 * 84e-6
    assert abs(s["anode_current_A_per_m"] - I) / I < 1e-9
    # plated Li volume = ∫ I dt V_m / F
    assert abs(s["plated_volume_m2"] - I * 60.0 * V_LI / F) < 1e-9 * I * 60.0 * V_LI / F
    # non-uniform plating stresses the SE (uniform plating does not, see above):
    # columns between flat periodic planes must take up Δδ ≈ ±2.6 nm over H = 80 µm,
    # E Δδ / H ≈ 0.9 MPa
    assert 3e5 < s["von_mises_max_SE_Pa"] < 3e6


def test_inactive_sides_focuses_plating_at_the_centre(x64):
    fields, s, _ = _run(inactive="sides", inactive_fraction=0.5)  # outer columns x = 7, 77 µm off
    i = fields["plating_current_density"]
    assert s["n_active"] == 8
    assert s["plating_peak_to_mean"] > 1.002
    assert abs(fields["x_um"][np.argmax(i)] - 42.0) < 21.0
    # mirror symmetry of the cell about x = W/2
    assert np.max(np.abs(i - i[::-1])) < 1e-8 * i.mean()


def test_protrusion_concentrates_plating_at_its_tip(x64):
    fields, s, _ = _run(inactive="none", protrusions=[[43.0, 8.0, 4.0]])
    i = fields["plating_current_density"]
    assert abs(fields["x_um"][np.argmax(i)] - 43.0) <= 4.0  # within the protrusion
    assert s["plating_peak_to_mean"] > 2.0  # measured 3.25
    I = 100.0 * 84e-6
    assert abs(s["anode_current_A_per_m"] - I) / I < 1e-9


@pytest.mark.parametrize("bad, word", [
    (dict(inactive="middle"), "inactive"),
    (dict(inactive_fraction=1.5), "inactive_fraction"),
    (dict(col_pitch_um=13.0), "col_pitch_um"),
    (dict(separator_um=200.0), "height_um"),
    (dict(colour="red"), "colour"),
    (dict(protrusions=[[10.0, -1.0, 2.0]]), "protrusions"),
])
def test_bad_geometry_raises_config_error(bad, word):
    with pytest.raises(ConfigError, match=word):
        cf.build_geometry({**GEO, **bad})


def test_bad_physics_raises_config_error():
    with pytest.raises(ConfigError, match="i0_li"):
        cf.make_params(i0_li=-1.0)
    with pytest.raises(ConfigError, match="nu_se"):
        cf.make_params(nu_se=0.6)


def test_focusing_gradient_matches_finite_differences(x64):
    # d(peak/mean plating)/d i0_Li by reverse mode through the Newton solve vs central FD;
    # faster Li kinetics (smaller R_ct) must sharpen the focusing (positive derivative)
    import equinox as eqx

    labels, info = cf.build_geometry({**GEO, "inactive": "center"})
    p = cf.make_params()

    def peak(i0):
        q = eqx.tree_at(lambda m: m.i0_li, p, i0)
        return cf.plating_profile_differentiable(labels, info["h_m"], q)[2].max() / 100.0

    grad = float(jax.grad(peak)(p.i0_li))
    e = 1e-3
    fd = float((peak(p.i0_li + e) - peak(p.i0_li - e)) / (2 * e))
    assert grad > 0
    assert abs(grad - fd) < 1e-4 * abs(fd)
    # the fixed-step differentiable path solves the same problem as solve_focusing
    fields, _, _ = _run(inactive="center")
    _, _, ip = cf.plating_profile_differentiable(labels, info["h_m"], p)
    assert np.max(np.abs(np.asarray(ip) - fields["plating_current_density"])) < 1e-9


def test_cli_writes_npz_and_json_and_rejects_bad_input(tmp_path, capsys):
    import json

    from ssbx.engine.cli.main import main

    geo = "\n".join(f"{k} = {v!r}" for k, v in GEO.items())
    cfg = tmp_path / "s3.toml"
    cfg.write_text(f'[geometry]\n{geo}\ninactive = "center"\n\n[physics]\ntime_s = 30.0\n')
    assert main(["focus", str(cfg), "--out", str(tmp_path / "out"), "--no-stress"]) == 0
    summary = json.loads((tmp_path / "out.json").read_text())
    data = np.load(tmp_path / "out.npz")
    assert data["phi_e"].shape == (42, 40) and data["current_density"].shape == (2, 42, 40)
    # plated volume per unit depth: I W t V_m / F with t = 30 s from the file
    assert abs(summary["plated_volume_m2"] - 100.0 * 84e-6 * 30.0 * V_LI / F) < 1e-20
    bad = tmp_path / "bad.toml"
    bad.write_text('[geometry]\ninactive = "middle"\n')
    assert main(["focus", str(bad)]) == 2
    assert "inactive = 'middle'" in capsys.readouterr().err

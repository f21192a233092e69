"""The low-memory tortuosity solver (kernels.transport_lean, observables.tortuosity_lean)
against a scipy sparse direct solve, analytic laminates, the reference connectivity
fill, and its flux-uniformity stopping criterion. float32 throughout (its only dtype)."""

import json
import math

import numpy as np
import pytest
from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.microstructure import ACTIVE, CARBON, PORE, SOLID_ELECTROLYTE
from ssbx.engine.observables.tortuosity import tortuosity
from ssbx.engine.observables.tortuosity_lean import connected_mask
from ssbx.kernels.conduction import connected_to_dirichlet
from test_conduction_validation import _fv_reference

SIGMA3 = {ACTIVE: 1.0, SOLID_ELECTROLYTE: 0.04, CARBON: 3e-4}
SHAPE = (10, 9, 8)


def _random_volume(seed, p):
    rng = np.random.default_rng(seed)
    return rng.choice([ACTIVE, SOLID_ELECTROLYTE, CARBON, PORE], size=SHAPE, p=p).astype(np.uint8)


@pytest.mark.parametrize("lateral", ["noflux", "periodic"])
def test_connectivity_equals_flood_fill_of_reference_solver(lateral):
    # random 45 % insulator: dead ends and isolated clusters, some joined only across the wrap
    rng = np.random.default_rng(3)
    cond = rng.random((12, 11, 10)) < 0.4
    for axis in (0, 2):
        ref = np.asarray(connected_to_dirichlet(cond.astype(np.float32), axis=axis,
                                                lateral=lateral))
        moved = np.moveaxis(cond, axis, 0)
        got = np.moveaxis(connected_mask(moved, periodic=lateral == "periodic"), 0, axis)
        assert (cond & ~ref).any() and ref.any()
        assert np.array_equal(got, ref)


@pytest.mark.parametrize("lateral, axis", [("noflux", 0), ("periodic", 2)])
def test_three_phases_with_isolated_clusters_match_spsolve(lateral, axis):
    lab = _random_volume(5, [0.3, 0.25, 0.1, 0.35])
    sigma = np.vectorize(lambda v: SIGMA3.get(v, 0.0))(lab).astype(float)
    _, i_ref = _fv_reference(sigma, axis, lateral)
    area = np.prod([SHAPE[a] for a in range(3) if a != axis])
    sigma_ref = i_ref * SHAPE[axis] / area
    r = tortuosity(lab, SIGMA3, 1.0, axis=axis, lateral=lateral, criterion="residual",
                   rtol=1e-6)
    assert r.solver == "lean" and r.converged
    assert r.effective_conductivity_S_m == pytest.approx(sigma_ref, rel=2e-4)
    assert r.volume_fraction == pytest.approx(float(np.mean(sigma > 0)))


def test_binary_mask_path_matches_spsolve_and_flux_criterion_converges_in_tau():
    # one conducting label -> the 1-byte mask path; default flux criterion (1e-2), then 1e-4
    rng = np.random.default_rng(7)
    lab = np.where(rng.random(SHAPE) < 0.55, SOLID_ELECTROLYTE, PORE).astype(np.uint8)
    sigma = (lab == SOLID_ELECTROLYTE).astype(float)
    _, i_ref = _fv_reference(sigma, 0, "noflux")
    tau_ref = float(np.mean(sigma > 0)) / (i_ref * SHAPE[0] / (SHAPE[1] * SHAPE[2]))
    loose = tortuosity(lab, {SOLID_ELECTROLYTE: 1.0}, 1e-6, axis=0, check_every=2)
    tight = tortuosity(lab, {SOLID_ELECTROLYTE: 1.0}, 1e-6, axis=0, check_every=2,
                       flux_tol=1e-4)
    for r, tol in ((loose, 1e-2), (tight, 1e-4)):
        assert r.converged and r.criterion == "flux"
        assert r.flux_imbalance <= tol  # max |I − Ī|/Ī ≤ (max − min)/max-ish ≤ tol
        assert abs(r.tortuosity / tau_ref - 1) < tol
        # τ's convergence history: from the initial guess (iteration 0) to the result
        assert r.history_iterations[0] == 0
        assert np.all(np.diff(r.history_iterations) == 2)
        assert r.history_tau[-1] == pytest.approx(r.tortuosity, rel=1e-6)
        assert r.history_spread[-1] <= tol
        assert len(r.history_tau) == len(r.history_spread) == len(r.history_residual)
    assert abs(tight.tortuosity / tau_ref - 1) < 1e-4
    assert tight.iterations >= loose.iterations
    assert abs(tight.history_tau[0] / tau_ref - 1) > 1e-2  # the start was not already there


@pytest.mark.parametrize("contrast", [1e-1, 3e-4])
def test_series_laminate_is_exact(contrast):
    # layers normal to x with σ = 1, 0.3, contrast repeating: resistances add; with the
    # half-voxel Dirichlet faces the discrete σ_eff = n / Σ 1/σ_k exactly
    table = {ACTIVE: 1.0, SOLID_ELECTROLYTE: 0.3, CARBON: contrast}
    lab = np.empty((9, 4, 4), np.uint8)
    order = [ACTIVE, SOLID_ELECTROLYTE, CARBON]
    for k in range(9):
        lab[k] = order[k % 3]
    # flux criterion at 1e-5: reachable in float32 at contrast 0.1; at 3e-4 the spread
    # stalls near 2e-3 (round-off) and the residual floor (rtol) ends the solve
    r = tortuosity(lab, table, 1e-6, axis="x", flux_tol=1e-5, rtol=1e-6)
    assert r.converged
    sig = [table[order[k % 3]] for k in range(9)]
    exact = 9 / sum(1 / s for s in sig)
    assert r.effective_conductivity_S_m == pytest.approx(exact, rel=5e-4)
    # parallel to the layers every voxel column is a straight channel: τ = 1
    r_par = tortuosity(lab, table, 1e-6, axis="y", criterion="both", rtol=1e-6,
                       flux_tol=1e-5)
    assert r_par.converged
    assert r_par.effective_conductivity_S_m == pytest.approx(np.mean(sig), rel=1e-5)
    assert r_par.tortuosity == pytest.approx(1.0, rel=1e-5)


def test_multigrid_preconditioner_gives_the_jacobi_answer_in_fewer_iterations():
    lab = _random_volume(9, [0.35, 0.3, 0.05, 0.3])
    kw = dict(axis=0, criterion="residual", rtol=1e-6)
    jac = tortuosity(lab, SIGMA3, 1.0, preconditioner="jacobi", **kw)
    mg = tortuosity(lab, SIGMA3, 1.0, preconditioner="multigrid", **kw)
    assert jac.converged and mg.converged
    assert mg.tortuosity == pytest.approx(jac.tortuosity, rel=2e-4)
    assert mg.iterations < jac.iterations


def test_non_percolating_volume_and_bad_options():
    lab = np.full((6, 4, 4), SOLID_ELECTROLYTE, np.uint8)
    lab[3] = PORE  # a blocking wall
    r = tortuosity(lab, {SOLID_ELECTROLYTE: 1.0}, 1e-6, axis=0)
    assert r.effective_conductivity_S_m == 0.0 and math.isinf(r.tortuosity)
    for kw, field in ((dict(solver="lean", float64=True), "float64"),
                      (dict(criterion="energy"), "criterion"),
                      (dict(flux_tol=0.0), "flux_tol"),
                      (dict(preconditioner="fft"), "preconditioner"),
                      (dict(solver="fast"), "solver")):
        with pytest.raises(ConfigError, match=field):
            tortuosity(lab, {SOLID_ELECTROLYTE: 1.0}, 1e-6, axis=0, **kw)


def test_cli_lean_json_history_and_not_converged_exit(tmp_path, capsys):
    from ssbx.engine.observables.tortuosity import main

    lab = np.zeros((6, 4, 4), np.uint8)
    lab[:, 1:3, 1:3] = SOLID_ELECTROLYTE
    lab[2, 1, 1] = PORE  # a kink so that the solve needs some iterations
    path = tmp_path / "v.npy"
    np.save(path, lab)
    out = tmp_path / "t.json"
    assert main([str(path), "--axis", "x", "--json", str(out), "--flux-tol", "1e-4"]) == 0
    res = json.loads(out.read_text())["results"]["x"]
    assert res["solver"] == "lean" and res["converged"]
    assert res["history_iterations"][0] == 0 and len(res["history_tau"]) >= 2
    out2 = tmp_path / "t2.json"
    assert main([str(path), "--axis", "x", "--json", str(out2), "--flux-tol", "1e-6",
                 "--criterion", "both", "--rtol", "1e-9", "--maxiter", "1"]) == 5
    assert "not converged" in capsys.readouterr().err

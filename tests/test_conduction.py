"""Potential solver (kernels/conduction.py) and tortuosity tool (engine/observables/tortuosity.py).

Physics checks: ohmic drop of a uniform slab, series/parallel laminates (exact
harmonic/arithmetic means), agreement with a direct sparse solve of an independently
assembled discretisation, implicit gradients vs finite differences, isolated clusters,
flux boundary conditions, tortuosity of straight channels and dead ends.
float64 for the accuracy checks (module fixture), one float32 run against float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ssbx.kernels.conduction import boundary_currents, plane_currents, solve_potential

SHAPE = (16, 12, 10)  # even and odd axes (odd coarsening in the multigrid hierarchy)
H = 2e-6  # m


@pytest.fixture(scope="module", autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def two_phase():
    rng = np.random.default_rng(7)
    phase = rng.random(SHAPE) < 0.55
    return np.where(phase, 1.0, 1e-3) * 0.3  # S/m, contrast 1e3


def _reference_spsolve(sigma, h, v_lo, v_hi, axis=0):
    """Independent assembly of the same FV discretisation (scipy.sparse, direct solve)."""
    shape = sigma.shape
    n = sigma.size
    idx = np.arange(n).reshape(shape)
    rows, cols, vals = [], [], []
    diag = np.zeros(n)
    b = np.zeros(n)
    for a in range(sigma.ndim):
        i = np.take(idx, np.arange(shape[a] - 1), axis=a).ravel()
        j = np.take(idx, np.arange(1, shape[a]), axis=a).ravel()
        si, sj = sigma.ravel()[i], sigma.ravel()[j]
        g = np.where(si + sj > 0, 2 * si * sj / np.where(si + sj > 0, si + sj, 1), 0.0)
        np.add.at(diag, i, g)
        np.add.at(diag, j, g)
        rows += [i, j]
        cols += [j, i]
        vals += [-g, -g]
    first = np.take(idx, 0, axis=axis).ravel()
    last = np.take(idx, shape[axis] - 1, axis=axis).ravel()
    s = sigma.ravel()
    np.add.at(diag, first, 2 * s[first])
    np.add.at(diag, last, 2 * s[last])
    np.add.at(b, first, 2 * s[first] * v_lo)
    np.add.at(b, last, 2 * s[last] * v_hi)
    mat = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(n, n)).tocsr() + sp.diags(diag)
    phi = spla.spsolve(mat.tocsc(), b).reshape(shape)
    current = np.sum(2 * s[first] * (v_lo - phi.ravel()[first])) / h * h ** (sigma.ndim - 1)
    return phi, current


def _sigma_eff(sol, sigma, h, axis=0, dv=1.0):
    i_lo, _ = boundary_currents(sol.phi, sigma, h, axis=axis, value_lo=dv, value_hi=0.0)
    shape = sigma.shape
    area = np.prod([shape[a] for a in range(sigma.ndim) if a != axis]) * h ** (sigma.ndim - 1)
    return float(i_lo) * shape[axis] * h / (area * dv)


# ----------------------------------------------------------------------------------
# (c) ohmic drop through a uniform slab
# ----------------------------------------------------------------------------------


def test_uniform_slab_dirichlet_current_equals_sigma_A_dV_over_L():
    sigma = np.full(SHAPE, 2.5)
    dv = 0.7
    sol = solve_potential(jnp.asarray(sigma), H, value_lo=dv, value_hi=0.0, rtol=1e-12)
    assert bool(sol.converged)
    area = SHAPE[1] * SHAPE[2] * H**2
    length = SHAPE[0] * H
    i_lo, i_hi = boundary_currents(sol.phi, sigma, H, value_lo=dv, value_hi=0.0)
    expected = 2.5 * area * dv / length  # I = σ A ΔV / L  <=>  ΔV = I L / (σ A)
    assert abs(float(i_lo) - expected) / expected < 1e-10
    assert abs(float(i_hi) + expected) / expected < 1e-10
    planes = plane_currents(sol.phi, sigma, H)
    np.testing.assert_allclose(np.asarray(planes), expected, rtol=1e-10)
    # linear profile between the half-voxel Dirichlet faces
    x = (np.arange(SHAPE[0]) + 0.5) / SHAPE[0]
    np.testing.assert_allclose(np.asarray(sol.phi)[:, 3, 4], dv * (1 - x), atol=1e-11)


def test_uniform_slab_flux_face_ohmic_drop_is_I_L_over_sigma_A():
    """Galvanostatic face: inject j (A/m²) at x = 0, ground x = L -> drop j L / σ."""
    sigma = np.full((12, 6, 5), 4.0)
    j = 150.0
    for pc in ("fft", "multigrid"):  # fft exercises the mirrored (Dirichlet–flux) transform
        sol = solve_potential(jnp.asarray(sigma), H, lo="flux", hi="dirichlet", value_lo=j,
                              value_hi=0.0, rtol=1e-12, preconditioner=pc)
        phi = np.asarray(sol.phi)
        length = 12 * H
        face_potential = phi[0] + j * (H / 2) / 4.0  # extrapolate half a voxel to x = 0
        np.testing.assert_allclose(face_potential, j * length / 4.0, rtol=1e-10)
        _, i_hi = boundary_currents(sol.phi, sigma, H, value_hi=0.0)
        assert abs(-float(i_hi) - j * 6 * 5 * H**2) / (j * 30 * H**2) < 1e-10


# ----------------------------------------------------------------------------------
# (d) heterogeneous media: direct solve, laminates
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preconditioner", ["multigrid", "jacobi", "fft"])
def test_random_two_phase_matches_scipy_spsolve(two_phase, preconditioner):
    sigma = two_phase
    phi_ref, i_ref = _reference_spsolve(sigma, H, 1.0, 0.0)
    sol = solve_potential(jnp.asarray(sigma), H, value_lo=1.0, value_hi=0.0, rtol=1e-10,
                          maxiter=5000, preconditioner=preconditioner)
    assert bool(sol.converged)
    i_lo, _ = boundary_currents(sol.phi, sigma, H, value_lo=1.0, value_hi=0.0)
    assert abs(float(i_lo) - i_ref) / abs(i_ref) < 1e-4
    assert np.max(np.abs(np.asarray(sol.phi) - phi_ref)) < 1e-6


def test_multigrid_needs_fewer_iterations_than_jacobi(two_phase):
    its = {
        pc: int(solve_potential(jnp.asarray(two_phase), H, value_lo=1.0, rtol=1e-10,
                                maxiter=5000, preconditioner=pc).iterations)
        for pc in ("multigrid", "jacobi")
    }
    assert its["multigrid"] < its["jacobi"]


def test_series_laminate_gives_harmonic_mean():
    s1, s2 = 3.0, 3e-3
    layer = (np.arange(SHAPE[0]) % 4) < 1  # 1 of 4 layers normal to x is phase 1
    sigma = np.broadcast_to(np.where(layer, s1, s2)[:, None, None], SHAPE).copy()
    sol = solve_potential(jnp.asarray(sigma), H, value_lo=1.0, value_hi=0.0, rtol=1e-12)
    f1 = layer.mean()
    harmonic = 1.0 / (f1 / s1 + (1 - f1) / s2)
    assert abs(_sigma_eff(sol, sigma, H) - harmonic) / harmonic < 1e-9


def test_parallel_laminate_gives_arithmetic_mean():
    s1, s2 = 3.0, 3e-3
    layer = (np.arange(SHAPE[1]) % 3) == 0  # layers parallel to x
    sigma = np.broadcast_to(np.where(layer, s1, s2)[None, :, None], SHAPE).copy()
    sol = solve_potential(jnp.asarray(sigma), H, value_lo=1.0, value_hi=0.0, rtol=1e-12)
    f1 = layer.mean()
    arithmetic = f1 * s1 + (1 - f1) * s2
    assert abs(_sigma_eff(sol, sigma, H) - arithmetic) / arithmetic < 1e-9


def test_float32_matches_float64(two_phase):
    ref = solve_potential(jnp.asarray(two_phase), H, value_lo=1.0, rtol=1e-12, maxiter=5000)
    with jax.enable_x64(False):
        sol32 = solve_potential(jnp.asarray(two_phase, jnp.float32), H, value_lo=1.0, rtol=1e-6)
        assert sol32.phi.dtype == jnp.float32
        assert bool(sol32.converged)
        phi32 = np.asarray(sol32.phi, np.float64)
    # rtol 1e-6 on the residual at contrast 1e3 bounds the potential error to ~1e-3 V
    assert np.max(np.abs(phi32 - np.asarray(ref.phi))) < 1e-3
    i32 = float(boundary_currents(jnp.asarray(phi32), two_phase, H, value_lo=1.0)[0])
    i64 = float(boundary_currents(ref.phi, two_phase, H, value_lo=1.0)[0])
    assert abs(i32 - i64) / abs(i64) < 1e-3


def test_warm_start_from_solution_needs_no_iterations(two_phase):
    sigma = jnp.asarray(two_phase)
    sol = solve_potential(sigma, H, value_lo=1.0, rtol=1e-8, preconditioner="jacobi")
    again = solve_potential(sigma, H, value_lo=1.0, rtol=1e-8, preconditioner="jacobi",
                            x0=sol.phi)
    assert int(again.iterations) == 0
    assert int(sol.iterations) > 10


# ----------------------------------------------------------------------------------
# isolated clusters, sources
# ----------------------------------------------------------------------------------


def test_isolated_cluster_does_not_break_the_solve():
    # 2D, stack axis 1, periodic along axis 0. A closed box of conducting voxels
    # surrounded by insulator floats; the rest is a uniform conductor.
    s = np.ones((16, 14))
    s[3:10, 4:11] = 0.0
    s[4:9, 5:10] = 2.0  # island, wrapped by a 1-voxel insulating ring
    s[6, 7] = 0.0
    sol = solve_potential(jnp.asarray(s), 1e-6, axis=1, value_lo=1.0, value_hi=0.0,
                          lateral="periodic", rtol=1e-12, source=jnp.ones_like(jnp.asarray(s)) * 0.0)
    assert bool(sol.converged) and np.isfinite(float(sol.residual))
    conn = np.asarray(sol.connected)
    island = np.zeros_like(conn)
    island[4:9, 5:10] = True
    island[6, 7] = False
    assert not conn[island].any()
    assert conn[(s > 0) & ~island].all()
    np.testing.assert_array_equal(np.asarray(sol.phi)[island], 0.0)
    # outside the box the field is the analytic one only far from it; check conservation
    planes = np.asarray(plane_currents(sol.phi, s, 1e-6, axis=1, connected=sol.connected))
    np.testing.assert_allclose(planes, planes.mean(), rtol=1e-9)


def test_volumetric_source_parabolic_profile():
    """∇·(σ∇φ) = f with φ = 0 on both faces: φ(x) = f x (x − L) / (2σ).

    The interior stencil is exact for quadratics; the half-voxel Dirichlet closure adds
    the known uniform O(h²) offset −f h² / (8σ) (derived from the boundary row)."""
    n, sigma0, f = 20, 0.5, -3e9  # f in A/m³
    sigma = np.full((n, 4, 3), sigma0)
    sol = solve_potential(jnp.asarray(sigma), H, source=jnp.full(sigma.shape, f), rtol=1e-13)
    x = (np.arange(n) + 0.5) * H
    exact = f * x * (x - n * H) / (2 * sigma0)
    np.testing.assert_allclose(np.asarray(sol.phi)[:, 1, 1], exact - f * H**2 / (8 * sigma0),
                               rtol=1e-9)
    offset = f * H**2 / (8 * sigma0)
    assert abs(offset) / np.max(np.abs(exact)) < 5e-3  # second-order small


# ----------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------


def test_gradient_wrt_conductivity_matches_central_differences():
    rng = np.random.default_rng(3)
    sigma0 = jnp.asarray(np.where(rng.random((8, 6, 5)) < 0.6, 1.0, 0.05))
    weights = jnp.asarray(rng.random((8, 6, 5)))

    @jax.jit
    def objective(sig):
        sol = solve_potential(sig, H, value_lo=1.0, value_hi=0.0, rtol=1e-13, maxiter=2000)
        i_lo, _ = boundary_currents(sol.phi, sig, H, value_lo=1.0, value_hi=0.0)
        return jnp.sum(weights * sol.phi) + i_lo / H  # potential and current terms, O(1)

    grad = jax.jit(jax.grad(objective))(sigma0)
    for idx in [(0, 0, 0), (3, 2, 2), (7, 5, 4), (4, 1, 3), (2, 4, 0)]:
        step = 1e-4 * float(sigma0[idx])
        e = jnp.zeros_like(sigma0).at[idx].set(step)
        fd = (float(objective(sigma0 + e)) - float(objective(sigma0 - e))) / (2 * step)
        assert abs(float(grad[idx]) - fd) / abs(fd) < 1e-4, (idx, float(grad[idx]), fd)


# ----------------------------------------------------------------------------------
# tortuosity tool
# ----------------------------------------------------------------------------------

TSHAPE = (12, 10, 8)


def test_tortuosity_of_straight_channels_is_one():
    from ssbx.engine.observables.tortuosity import effective_conductivity, tortuosity

    labels = np.ones(TSHAPE, np.uint8)  # NCM
    labels[:, 2:4, 1:3] = 2  # straight SE channels along x
    labels[:, 6:9, 4:7] = 2
    res = tortuosity(labels, {2: 0.2}, 1e-6, "x", float64=True, rtol=1e-12)
    eps = (labels == 2).mean()
    assert abs(res.volume_fraction - eps) < 1e-15
    assert abs(res.tortuosity - 1.0) < 1e-9
    assert abs(res.effective_conductivity_S_m - eps * 0.2) / (eps * 0.2) < 1e-9
    sig = effective_conductivity(labels, {2: 0.2}, 1e-6, 0, float64=True, rtol=1e-12)
    assert abs(sig - eps * 0.2) / (eps * 0.2) < 1e-9


def test_tortuosity_with_dead_ends_counts_them_in_epsilon():
    """TauFactor dead-end case: side pockets carry no current, so τ = ε_total/ε_channel."""
    from ssbx.engine.observables.tortuosity import tortuosity

    labels = np.ones(TSHAPE, np.uint8)
    labels[:, 4, 3] = 2  # one straight channel
    labels[5, 5:9, 3] = 2  # dead-end branch off the channel (normal to x)
    labels[2, 0:4, 3] = 2  # another dead end
    res = tortuosity(labels, {2: 1.0}, 1e-6, "x", float64=True, rtol=1e-12)
    eps_total = (labels == 2).mean()
    eps_channel = TSHAPE[0] / labels.size
    assert abs(res.tortuosity - eps_total / eps_channel) < 1e-9


def test_tortuosity_rejects_bad_input(tmp_path):
    from ssbx.engine.errors import ConfigError
    from ssbx.engine.observables.tortuosity import load_labels, tortuosity

    good = np.ones((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="labels.ndim = 1"):
        tortuosity(np.ones(5, np.uint8), {1: 1.0}, 1e-6)
    with pytest.raises(ValueError, match=r"unknown label value\(s\) \[9\]"):
        tortuosity(np.full((4, 4, 4), 9), {1: 1.0}, 1e-6)
    with pytest.raises(ValueError, match=r"conductivity_by_label\[2\] = -1.0"):
        tortuosity(good, {2: -1.0}, 1e-6)
    with pytest.raises(ValueError, match="conductivity_by_label key = 7"):
        tortuosity(good, {7: 1.0}, 1e-6)
    with pytest.raises(ValueError, match="voxel_size_m = 0.0"):
        tortuosity(good, {1: 1.0}, 0.0)
    with pytest.raises(ValueError, match="axis = 'w'"):
        tortuosity(good, {1: 1.0}, 1e-6, "w")
    with pytest.raises(ValueError, match="axis = 2"):
        tortuosity(np.ones((4, 4), np.uint8), {1: 1.0}, 1e-6, 2)
    corrupt = tmp_path / "broken.npy"
    corrupt.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ConfigError, match="not a readable .npy"):
        load_labels(corrupt)
    bad_tif = tmp_path / "broken.tif"
    bad_tif.write_bytes(b"II*\x00garbage")
    with pytest.raises(ConfigError, match="not a readable TIFF"):
        load_labels(bad_tif)
    with pytest.raises(ConfigError, match="unsupported extension"):
        load_labels(tmp_path / "x.raw")


def test_tortuosity_cli_reads_tiff_in_zyx_order(tmp_path, capsys):
    import json

    import tifffile

    from ssbx.engine.observables.tortuosity import main

    labels = np.ones(TSHAPE, np.uint8)
    labels[:, 2:4, 1:3] = 2  # channels along x
    path = tmp_path / "vol.tif"
    tifffile.imwrite(path, labels.T)  # TIFF stack: pages = z, rows = y, cols = x
    out = tmp_path / "res.json"
    assert main([str(path), "--phase", "ionic", "--axis", "x", "--float64", "--rtol", "1e-12",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())["results"]["x"]
    assert abs(res["tortuosity"] - 1.0) < 1e-9
    assert main([str(tmp_path / "missing.npy")]) == 2
    assert "invalid input" in capsys.readouterr().err

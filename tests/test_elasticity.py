"""Elasticity kernel against exact solutions.

Each distinct (grid shape, dtype, argument structure) costs one XLA compile (several
seconds on 2 CPU cores), so solutions are computed once in module-scoped fixtures and
several tests read them. float64 is switched on only inside the fixtures/tests that
need it (``jax.enable_x64``), never at import time.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from ssbx.kernels.elasticity import (
    hydrostatic,
    principal_stresses,
    solve_elasticity,
    volumetric_strain,
    von_mises,
)
from ssbx.kernels.rotations import axis_angle_quaternion, quaternion_multiply, quaternion_to_matrix
from ssbx.kernels.stiffness import (
    ElasticParameterError,
    components_to_tensor,
    grain_expansion_table,
    grain_stiffness_table,
    hexagonal_stiffness,
    isotropic_stiffness,
    tensor_to_components,
)

E_NCM1 = (280e9, 100e9, 70e9, 230e9, 70e9)  # (C11, C12, C13, C33, C44), Pa
E_NCM0 = (250e9, 90e9, 40e9, 110e9, 30e9)
BETA = np.array([0.028, 0.028, -0.040])


# ----------------------------------------------------------------------------------
# exact references
# ----------------------------------------------------------------------------------

_ENG = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])  # tensor -> engineering strain


def laminate_exact(tables, fractions, eigen, macro):
    """Exact stresses of a laminate with layer normal x under mean strain ``macro``.

    Strain components tangential to the layers (yy, zz, yz) equal the mean;
    tractions (xx, xz, xy) are continuous. Voigt matrices, tensor strain input.
    Returns per-layer stress (n_layers, 6) in Pa.
    """
    n_idx, t_idx = [0, 4, 5], [1, 2, 3]
    g_macro = macro * _ENG
    lhs = np.zeros((3, 3))
    rhs = g_macro[n_idx].copy()
    parts = []
    for c, f, e in zip(tables, fractions, eigen):
        ge = e * _ENG
        cnn = c[np.ix_(n_idx, n_idx)]
        cnt = c[np.ix_(n_idx, t_idx)]
        inv = np.linalg.inv(cnn)
        # γ_N = γ*_N + inv (t − C_NT (E_T − γ*_T))
        lhs += f * inv
        shift = ge[n_idx] - inv @ cnt @ (g_macro[t_idx] - ge[t_idx])
        rhs -= f * shift
        parts.append((c, ge, inv, shift))
    t = np.linalg.solve(lhs, rhs)
    out = []
    for c, ge, inv, shift in parts:
        g = g_macro.copy()
        g[n_idx] = shift + inv @ t
        out.append(c @ (g - ge))
    return np.array(out)


def mixed_exact(c_voigt, eigen, mask, macro_strain, macro_stress):
    """Uniform (strain, stress) of a homogeneous body under mixed mean control."""
    s_idx = np.where(~mask)[0]
    m_idx = np.where(mask)[0]
    g = np.zeros(6)
    g[s_idx] = macro_strain[s_idx] * _ENG[s_idx]
    ge = eigen * _ENG
    # σ_M = C_M: (γ − γ*) with γ_M unknown
    a = c_voigt[np.ix_(m_idx, m_idx)]
    b = macro_stress[m_idx] - c_voigt[np.ix_(m_idx, s_idx)] @ (g[s_idx] - ge[s_idx]) \
        + a @ ge[m_idx]
    g[m_idx] = np.linalg.solve(a, b)
    return g / _ENG, c_voigt @ (g - ge)


def cell_centres(shape):
    axes = [np.arange(n) + 0.5 - n / 2 for n in shape]
    return np.meshgrid(*axes, indexing="ij")


def ncm_tables(quats, dtype=None):
    t0 = np.asarray(grain_stiffness_table(quats, hexagonal_stiffness(*E_NCM0)), np.float64)
    t1 = np.asarray(grain_stiffness_table(quats, hexagonal_stiffness(*E_NCM1)), np.float64)
    ex = np.asarray(grain_expansion_table(quats, BETA), np.float64)
    return t0, t1, ex


# ----------------------------------------------------------------------------------
# (a) laminate under macroscopic strain (3D, anisotropic rotated grain + isotropic,
#     with chemical eigenstrain), even and odd grids; porous laminate for the floor
# ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[(16, 9, 10), (15, 8, 7)], ids=["even", "odd"])
def laminate(request):
    shape = request.param
    rng = np.random.default_rng(1)
    q = rng.normal(size=(1, 4))
    t0n, t1n, exn = ncm_tables(q)
    iso = np.asarray(isotropic_stiffness(28e9, 0.27), np.float64)[None]
    t0 = np.concatenate([t0n, iso])
    t1 = np.concatenate([t1n, iso])
    ex = np.concatenate([exn, np.zeros((1, 6))])
    idx = np.zeros(shape, np.int32)
    n_active = 6
    idx[n_active:] = 1
    xval, xref = 0.35, 0.9
    x = np.full(shape, xval, np.float32)
    macro = np.array([1e-3, -5e-4, 2e-4, 3e-4, -4e-4, 6e-4])
    res = solve_elasticity(t0, t1, idx, x, expansion_table=ex, x_ref=xref,
                           macro_strain=macro, tol=1e-7)
    c_act = t0n[0] + xval * (t1n[0] - t0n[0])
    fr = n_active / shape[0]
    exact = laminate_exact([c_act, iso[0]], [fr, 1 - fr],
                           [exn[0] * (xval - xref), np.zeros(6)], macro)
    return dict(res=res, idx=idx, exact=exact, macro=macro, tables=(t0, t1, ex), x=x,
                xref=xref)


def test_laminate_stress_is_exact(laminate):
    res, idx, exact = laminate["res"], laminate["idx"], laminate["exact"]
    stress = np.asarray(res.stress)
    scale = np.abs(exact).max()
    for layer in (0, 1):
        got = stress[:, idx == layer]  # (6, n_voxels)
        err = np.abs(got - exact[layer][:, None]).max() / scale
        assert err < 2e-5, (layer, err)
    assert bool(res.converged)
    np.testing.assert_allclose(np.asarray(res.mean_strain), laminate["macro"], atol=1e-9)


def test_laminate_result_is_jit_compatible(laminate):
    t0, t1, ex = laminate["tables"]
    idx, x = laminate["idx"], laminate["x"]

    @jax.jit
    def stress(xf):
        return solve_elasticity(t0, t1, idx, xf, expansion_table=ex, x_ref=laminate["xref"],
                                macro_strain=laminate["macro"], tol=1e-7).stress

    ref = np.asarray(laminate["res"].stress)
    got = np.asarray(stress(jnp.asarray(x)))
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("floor", [1e-4, 1e-6, 1e-8])
def test_porous_laminate_floor_effect_is_negligible(floor):
    """Solid | pore laminate: the exact zero-stiffness answer is a traction-free
    solid layer; the stiffness floor changes the solid stress by ~floor only."""
    shape = (16, 9, 10)
    c = np.asarray(isotropic_stiffness(100e9, 0.3), np.float64)
    t = np.stack([c, np.zeros((6, 6))])
    idx = np.zeros(shape, np.int32)
    idx[10:] = 1  # pore layer, 6 voxels thick
    macro = np.array([1e-3, 2e-3, -1e-3, 5e-4, 3e-4, -2e-4])
    res = solve_elasticity(t, t, idx, np.zeros(shape, np.float32),
                           expansion_table=np.zeros((2, 6)), macro_strain=macro,
                           tol=1e-7, stiffness_floor=floor)
    # exact: σ_xx = σ_xz = σ_xy = 0 in the solid, in-plane strain = macro
    n_idx, t_idx = [0, 4, 5], [1, 2, 3]
    g_t = (macro * _ENG)[t_idx]
    schur = c[np.ix_(t_idx, t_idx)] - c[np.ix_(t_idx, n_idx)] @ np.linalg.solve(
        c[np.ix_(n_idx, n_idx)], c[np.ix_(n_idx, t_idx)])
    exact = np.zeros(6)
    exact[t_idx] = schur @ g_t
    solid = np.asarray(res.stress)[:, idx == 0]
    err = np.abs(solid - exact[:, None]).max() / np.abs(exact).max()
    assert err < max(20 * floor, 2e-5), err
    pore = np.asarray(res.stress)[:, idx == 1]
    assert np.abs(pore).max() < 10 * floor * np.abs(exact).max() + 1.0


# ----------------------------------------------------------------------------------
# (b) Eshelby sphere with dilatational eigenstrain, same stiffness, periodic cell
# ----------------------------------------------------------------------------------


def test_eshelby_sphere_interior_hydrostatic_stress():
    """Interior stress of a spherical inclusion with eigenstrain e δ_ij in an
    isotropic matrix of the same stiffness (Eshelby 1957; Mura 1987 §11):
    σ = −2 E e / (3 (1 − ν)) δ_ij in an infinite body. In a periodic cubic array at
    zero mean stress the images add a uniform dilatation: the inclusion's Fourier
    coefficients give ε = ⟨ε*⟩ + Γ⁰ fluctuation, whose trace inside is s e (1 − f)
    + f e with s = (1+ν)/(3(1−ν)), so σ = −2 E e (1 − f) / (3 (1 − ν)) (cubic
    symmetry keeps the deviatoric image field zero at the centre)."""
    n, a = 32, 6.0
    e_mod, nu, e = 100e9, 0.3, 1e-3
    xs = cell_centres((n, n, n))
    r = np.sqrt(sum(c**2 for c in xs))
    inc = r < a
    c = np.asarray(isotropic_stiffness(e_mod, nu), np.float64)
    t = np.stack([c, c])
    ex = np.zeros((2, 6))
    ex[1, :3] = e
    res = solve_elasticity(t, t, inc.astype(np.int32), np.ones(inc.shape, np.float32),
                           expansion_table=ex, macro_stress=np.zeros(6), tol=1e-6)
    f = inc.mean()
    exact = -2 * e_mod * e * (1 - f) / (3 * (1 - nu))
    sh = np.asarray(hydrostatic(res.stress))
    core = r < 0.5 * a
    rel = np.abs(sh[core] / exact - 1).max()  # every core voxel, not just the mean
    assert rel < 0.03, rel
    # the interior state is nearly hydrostatic; the residual deviator (≈ 4 % of σ
    # on average) comes from the staircase shape of a radius-6-voxel sphere
    vm = np.asarray(von_mises(res.stress))
    assert vm[core].mean() < 0.1 * abs(exact)
    np.testing.assert_allclose(np.asarray(res.mean_stress), 0.0, atol=1e-4 * abs(exact))


# ----------------------------------------------------------------------------------
# (c) diffusion-induced stress in a free isotropic sphere (parabolic Li profile)
# ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dis_sphere():
    n, a = 48, 20.0
    e_mod, nu, beta = 100e9, 0.3, 0.01
    x0, dx = 0.2, 0.5
    xs = cell_centres((n, n, n))
    r = np.sqrt(sum(c**2 for c in xs))
    inside = r < a
    c = np.asarray(isotropic_stiffness(e_mod, nu), np.float64)
    t = np.stack([np.zeros((6, 6)), c])  # 0 = pore around the particle
    ex = np.zeros((2, 6))
    ex[1, :3] = beta
    x = (x0 + dx * (r / a) ** 2).astype(np.float32)
    out = {}
    for floor in (1e-6, 1e-4):
        out[floor] = solve_elasticity(t, t, inside.astype(np.int32), x, expansion_table=ex,
                                      macro_stress=np.zeros(6), tol=1e-6,
                                      stiffness_floor=floor)
    pref = 2 * e_mod * beta * dx / (5 * (1 - nu))
    return dict(res=out, r=r, xs=xs, a=a, pref=pref, inside=inside)


def _radial_hoop(stress, xs, r):
    s = np.asarray(stress)
    nvec = np.stack(xs) / np.maximum(r, 1e-12)
    full = np.array([[s[0], s[5], s[4]], [s[5], s[1], s[3]], [s[4], s[3], s[2]]])
    srr = np.einsum("i...,ij...,j...->...", nvec, full, nvec)
    return srr, 0.5 * (s[0] + s[1] + s[2] - srr)


def test_diffusion_induced_stress_sphere_matches_analytic(dis_sphere):
    """Sphere with x(r) = x0 + Δ (r/a)², ε* = β x δ_ij, traction-free surface.
    Cheng & Verbrugge, J. Power Sources 190, 453 (2009), eqs. for σ_r, σ_θ
    (Timoshenko–Goodier thermal analogue, Ω c/3 → β x):
    σ_r = 2Eβ/(1−ν) [⟨x⟩_a − ⟨x⟩_r],  σ_θ = Eβ/(1−ν) [2⟨x⟩_a + ⟨x⟩_r − x(r)],
    ⟨x⟩_r = 3/r³ ∫₀ʳ x ρ² dρ, which for the parabola gives
    σ_r = P (1 − r²/a²), σ_θ = P (1 − 2 r²/a²), P = 2EβΔ / (5(1−ν)).
    Compared on 1-voxel shells (shell means) for 1 ≤ r ≤ a − 3 voxels, i.e. away
    from the staircase surface layer; tolerance 5 % of P."""
    d = dis_sphere
    res = d["res"][1e-6]
    assert bool(res.converged)
    srr, shoop = _radial_hoop(res.stress, d["xs"], d["r"])
    r, a, p = d["r"], d["a"], d["pref"]
    errs = []
    for lo in np.arange(1.0, a - 3.0, 1.0):
        shell = (r >= lo) & (r < lo + 1)
        rr = r[shell]
        errs.append(abs(np.mean(srr[shell] / p - (1 - rr**2 / a**2))))
        errs.append(abs(np.mean(shoop[shell] / p - (1 - 2 * rr**2 / a**2))))
    assert max(errs) < 0.05, max(errs)
    # the surface is traction-free: the particle's stress integrates to zero
    total = np.asarray(res.stress)[:, d["inside"]].mean(axis=1)
    assert np.abs(total).max() < 1e-4 * p


def test_dis_sphere_stiffness_floor_effect_is_negligible(dis_sphere):
    d = dis_sphere
    s6 = np.asarray(d["res"][1e-6].stress)[:, d["inside"]]
    s4 = np.asarray(d["res"][1e-4].stress)[:, d["inside"]]
    assert np.abs(s6 - s4).max() < 1e-3 * d["pref"]


# ----------------------------------------------------------------------------------
# (d) free homogeneous anisotropic crystal is stress free; mixed control
# ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single_crystal():
    rng = np.random.default_rng(7)
    q = np.repeat(rng.normal(size=(1, 4)), 4, axis=0)  # 4 "grains", same orientation
    t0, t1, ex = ncm_tables(q)
    shape = (16, 16, 16)
    idx = rng.integers(0, 4, size=shape).astype(np.int32)
    return dict(q=q, t0=t0, t1=t1, ex=ex, idx=idx, shape=shape)


def test_free_anisotropic_crystal_with_rotated_eigenstrain_is_stress_free(single_crystal):
    s = single_crystal
    xval, xref = 0.3, 1.0
    res = solve_elasticity(s["t0"], s["t1"], s["idx"], np.full(s["shape"], xval, np.float32),
                           expansion_table=s["ex"], x_ref=xref, macro_stress=np.zeros(6),
                           tol=1e-6)
    eig = s["ex"][0] * (xval - xref)  # R diag(β) Rᵀ (x − x_ref)
    c_scale = 280e9 * np.abs(eig).max()
    assert np.abs(np.asarray(res.stress)).max() < 1e-5 * c_scale
    strain = np.asarray(res.strain)
    np.testing.assert_allclose(strain.reshape(6, -1), np.repeat(eig[:, None], strain[0].size, 1),
                               atol=1e-6 * np.abs(eig).max())


def test_mixed_control_applied_stack_pressure_homogeneous_block(single_crystal):
    """Laterally clamped (ε_xx = ε_yy = ε_xy = 0) rotated NCM block under σ_zz =
    −10 MPa, σ_yz = σ_xz = 0: uniform exact strain and stress."""
    s = single_crystal
    xval = 0.6
    mask = np.array([False, False, True, True, True, False])
    macro_stress = np.array([0, 0, -10e6, 0, 0, 0.0])
    macro_strain = np.zeros(6)
    res = solve_elasticity(s["t0"], s["t1"], s["idx"], np.full(s["shape"], xval, np.float32),
                           expansion_table=np.zeros_like(s["ex"]), macro_strain=macro_strain,
                           macro_stress=macro_stress, stress_mask=mask, tol=1e-6)
    c = s["t0"][0] + xval * (s["t1"][0] - s["t0"][0])
    strain_ex, stress_ex = mixed_exact(c, np.zeros(6), mask, macro_strain, macro_stress)
    stress = np.asarray(res.stress).reshape(6, -1)
    strain = np.asarray(res.strain).reshape(6, -1)
    assert np.abs(stress - stress_ex[:, None]).max() < 1e-4 * 10e6
    assert np.abs(strain - strain_ex[:, None]).max() < 1e-4 * np.abs(strain_ex).max()
    assert abs(stress_ex[2] + 10e6) < 1e-6 and abs(stress_ex[0]) > 1e5  # lateral reaction


# ----------------------------------------------------------------------------------
# (e) rotational consistency (float64)
# ----------------------------------------------------------------------------------


def test_rotating_the_problem_rotates_the_solution():
    """Rotate grid (np.rot90 in x-y), orientations (q' = q_z ⊗ q) and the macro strain
    by +90° about z: the stress field must be the rotated stress field."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        shape = (12, 16, 10)
        n_grains = 5
        q = rng.normal(size=(n_grains, 4))
        idx = rng.integers(0, n_grains + 1, size=shape).astype(np.int32)  # last = SE
        x = rng.uniform(0.2, 0.9, size=shape)
        macro = np.array([4e-4, -2e-4, 1e-4, 3e-4, -1e-4, 2e-4])

        def solve(quats, idx_f, x_f, macro_f):
            t0, t1, ex = ncm_tables(quats)
            iso = np.asarray(isotropic_stiffness(28e9, 0.27), np.float64)[None]
            return solve_elasticity(
                np.concatenate([t0, iso]), np.concatenate([t1, iso]), idx_f, x_f,
                expansion_table=np.concatenate([ex, np.zeros((1, 6))]), x_ref=0.5,
                macro_strain=macro_f, tol=1e-11)

        res = solve(q, idx, x, macro)
        qz = np.asarray(axis_angle_quaternion(np.array([0.0, 0.0, 1.0]), np.pi / 2))
        rz = np.asarray(quaternion_to_matrix(qz))
        q_rot = np.asarray(quaternion_multiply(np.broadcast_to(qz, q.shape), q))
        macro_rot = np.asarray(tensor_to_components(rz @ np.asarray(components_to_tensor(macro)) @ rz.T))
        res_rot = solve(q_rot, np.rot90(idx, 1, axes=(0, 1)).copy(),
                        np.rot90(x, 1, axes=(0, 1)).copy(), macro_rot)
        sig = np.asarray(components_to_tensor(res.stress))  # (*grid, 3, 3)
        expect = np.einsum("ia,...ab,jb->...ij", rz, sig, rz)
        expect = np.rot90(expect, 1, axes=(0, 1))
        got = np.asarray(components_to_tensor(res_rot.stress))
        scale = np.abs(sig).max()
        assert np.abs(got - expect).max() < 1e-8 * scale
        assert int(res.iterations) > 5  # a genuinely heterogeneous problem


# ----------------------------------------------------------------------------------
# 2D plane strain: laminate and a hole (floor comparison)
# ----------------------------------------------------------------------------------


def test_plane_strain_laminate_is_exact():
    shape = (32, 32)
    c1 = np.asarray(isotropic_stiffness(150e9, 0.26), np.float64)
    c2 = np.asarray(isotropic_stiffness(28e9, 0.27), np.float64)
    idx = np.zeros(shape, np.int32)
    idx[20:] = 1
    macro2d = np.array([1e-3, -4e-4, 5e-4])  # (xx, yy, xy)
    res = solve_elasticity(np.stack([c1, c2]), np.stack([c1, c2]), idx,
                           np.zeros(shape, np.float32), macro_strain=macro2d, tol=1e-7)
    macro = np.array([macro2d[0], macro2d[1], 0, 0, 0, macro2d[2]])
    exact = laminate_exact([c1, c2], [20 / 32, 12 / 32], [np.zeros(6)] * 2, macro)
    stress = np.asarray(res.stress)
    scale = np.abs(exact).max()
    for layer in (0, 1):
        err = np.abs(stress[:, idx == layer] - exact[layer][:, None]).max() / scale
        assert err < 2e-5, (layer, err)
    # plane strain: ε_zz = 0 and σ_zz = λ (ε_xx + ε_yy) in each isotropic layer
    assert np.abs(np.asarray(res.strain)[2]).max() == 0.0
    assert abs(exact[0][2]) > 1e6


def test_plane_strain_hole_floor_effect_is_negligible():
    shape = (32, 32)
    xs = cell_centres(shape)
    hole = np.sqrt(xs[0] ** 2 + xs[1] ** 2) < 6.0
    c = np.asarray(isotropic_stiffness(150e9, 0.26), np.float64)
    t = np.stack([c, np.zeros((6, 6))])
    applied = np.array([100e6, 0.0, 0.0])  # mean σ_xx, σ_yy, σ_xy
    out = []
    for floor in (1e-6, 1e-8):  # default floor vs 100× smaller
        res = solve_elasticity(t, t, hole.astype(np.int32), np.zeros(shape, np.float32),
                               macro_stress=applied, tol=1e-7, stiffness_floor=floor)
        assert bool(res.converged)
        np.testing.assert_allclose(np.asarray(res.mean_stress)[[0, 1, 5]], applied,
                                   atol=1e-4 * 100e6)
        out.append(np.asarray(res.stress))
    solid = ~hole
    # O(floor) effect: ≈ 1e-6 of the applied stress (a floor of 1e-4 gives ≈ 1.4e-4)
    assert np.abs(out[0][:, solid] - out[1][:, solid]).max() < 1e-4 * 100e6
    # stress concentration at the hole flanks: Kirsch (infinite plate) gives
    # σ_θθ = σ̄/2 (2 + a²/r² + 3a⁴/r⁴) = 2.5 σ̄ at the first solid voxel centre
    # (r = 6.5 ≈ 1.08 a); the staircase boundary of a 6-voxel hole lowers it a bit
    sxx = out[1][0]
    flank = solid & (np.abs(xs[1]) > 5.0) & (np.abs(xs[1]) < 7.5) & (np.abs(xs[0]) < 1.0)
    assert 2.0 * 100e6 < sxx[flank].max() < 3.5 * 100e6
    assert np.abs(out[1][:, hole]).max() < 1e-3 * 100e6


# ----------------------------------------------------------------------------------
# gradients vs central finite differences (float64)
# ----------------------------------------------------------------------------------


def test_gradients_match_finite_differences():
    with jax.enable_x64(True):
        rng = np.random.default_rng(11)
        shape = (8, 8, 8)
        q = rng.normal(size=(2, 4))
        idx = rng.integers(0, 4, size=shape).astype(np.int32)  # 2 grains, SE, pore
        x = rng.uniform(0.3, 0.9, size=shape)
        field0 = 1e-3 * rng.normal(size=(6,) + shape)
        weights = rng.normal(size=(6,) + shape)
        iso = isotropic_stiffness(28e9, 0.27)[None]
        pore = jnp.zeros((1, 6, 6))
        mask = np.array([False, False, True, True, True, False])

        @jax.jit
        def loss(beta, c33, field):
            t0 = grain_stiffness_table(q, hexagonal_stiffness(250e9, 90e9, 40e9, c33, 30e9))
            t1 = grain_stiffness_table(q, hexagonal_stiffness(*E_NCM1))
            ex = jnp.concatenate([grain_expansion_table(q, beta), jnp.zeros((2, 6))])
            res = solve_elasticity(
                jnp.concatenate([t0, iso, pore]), jnp.concatenate([t1, iso, pore]), idx, x,
                expansion_table=ex, eigenstrain_field=field, x_ref=0.5,
                macro_strain=np.zeros(6), macro_stress=np.array([0, 0, -10e6, 0, 0, 0.0]),
                stress_mask=mask, tol=1e-13, maxiter=5000)
            return jnp.sum(weights * res.stress) / 1e9

        beta = jnp.asarray(BETA)
        c33 = jnp.asarray(110e9)
        field = jnp.asarray(field0)
        g_beta, g_c33, g_field = jax.grad(loss, argnums=(0, 1, 2))(beta, c33, field)

        for k in range(3):
            h = np.zeros(3)
            h[k] = 1e-5
            fd = (loss(beta + h, c33, field) - loss(beta - h, c33, field)) / 2e-5
            assert abs(g_beta[k] - fd) < 1e-4 * abs(fd), (k, g_beta[k], fd)
        hc = 1e6
        fd = (loss(beta, c33 + hc, field) - loss(beta, c33 - hc, field)) / (2 * hc)
        assert abs(g_c33 - fd) < 1e-4 * abs(fd), (g_c33, fd)
        direction = rng.normal(size=field0.shape)
        hf = 1e-4
        fd = (loss(beta, c33, field + hf * direction) - loss(beta, c33, field - hf * direction)) / (2 * hf)
        an = jnp.sum(g_field * direction)
        assert abs(an - fd) < 1e-4 * abs(fd), (an, fd)
        # forward mode agrees with reverse mode
        _, jv = jax.jvp(lambda b: loss(b, c33, field), (beta,), (jnp.ones(3),))
        assert abs(jv - jnp.sum(g_beta)) < 1e-8 * abs(jv)


# ----------------------------------------------------------------------------------
# output helpers and validation
# ----------------------------------------------------------------------------------


def test_stress_measures_on_known_states():
    s = 50e6
    uniaxial = np.array([0, 0, s, 0, 0, 0.0])[:, None]
    shear = np.array([0, 0, 0, 0, 0, s])[:, None]
    np.testing.assert_allclose(np.asarray(von_mises(uniaxial)), [s], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(hydrostatic(uniaxial)), [s / 3], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(principal_stresses(uniaxial))[:, 0], [0, 0, s], atol=1.0)
    np.testing.assert_allclose(np.asarray(von_mises(shear)), [np.sqrt(3) * s], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(principal_stresses(shear))[:, 0], [-s, 0, s], atol=10.0)
    strain = np.array([1e-3, 2e-3, -5e-4, 1e-3, 0, 0])[:, None]
    np.testing.assert_allclose(np.asarray(volumetric_strain(strain)), [2.5e-3], rtol=1e-6)
    # von Mises is differentiable at a stress-free point
    g = jax.grad(lambda t: jnp.sum(von_mises(t)))(jnp.zeros((6, 1)))
    assert np.all(np.isfinite(np.asarray(g)))


def test_invalid_inputs_raise_with_field_names():
    c = np.asarray(isotropic_stiffness(100e9, 0.3), np.float64)[None]
    idx = np.zeros((8, 8, 8), np.int32)
    x = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(ElasticParameterError, match="poisson_ratio"):
        isotropic_stiffness(100e9, 0.5)
    with pytest.raises(ElasticParameterError, match="youngs_modulus"):
        isotropic_stiffness(-1e9, 0.3)
    bad = c.copy()
    bad[0, 3, 3] = -1e9
    with pytest.raises(ElasticParameterError, match="stiffness_table0.*positive definite"):
        solve_elasticity(bad, bad, idx, x)
    with pytest.raises(ElasticParameterError, match="x: shape"):
        solve_elasticity(c, c, idx, np.zeros((8, 8, 7), np.float32))
    with pytest.raises(ElasticParameterError, match="phase_index"):
        solve_elasticity(c, c, idx + 1, x)
    with pytest.raises(ElasticParameterError, match="macro_strain"):
        solve_elasticity(c, c, idx, x, macro_strain=np.zeros(3))
    with pytest.raises(ElasticParameterError, match="expansion_table"):
        solve_elasticity(c, c, idx, x, expansion_table=np.zeros((2, 6)))
    with pytest.raises(ElasticParameterError, match="stress_mask"):
        solve_elasticity(c, c, idx, x, macro_strain=np.zeros(6), macro_stress=np.zeros(6))


def test_engine_phase_tables_and_material_validation():
    from ssbx.engine.materials.elastic import (
        MECHANICS_MATERIALS,
        build_phase_tables,
        get_mechanics_material,
        hexagonal_material,
    )

    labels = np.array([[[0, 1], [2, 1]], [[3, 4], [5, 6]]], np.uint8)
    gid = np.array([[[-1, 0], [-1, 1]], [[-1, -1], [-1, -1]]], np.int32)
    q = np.array([[1.0, 0, 0, 0], [np.cos(0.4), 0, np.sin(0.4), 0]])
    tabs = build_phase_tables(labels, gid, q)
    assert tabs.phase_index[0, 0, 1] == 0 and tabs.phase_index[0, 1, 1] == 1
    assert tabs.phase_index[0, 0, 0] == 2 + 0 and tabs.phase_index[1, 1, 1] == 2 + 6
    assert tabs.table0.shape == (9, 6, 6) and tabs.expansion.shape == (9, 6)
    # grain 0 is unrotated: expansion = diag(β), stiffness = delithiated NCM
    np.testing.assert_allclose(np.asarray(tabs.expansion[0]), [0.028, 0.028, -0.04, 0, 0, 0],
                               atol=1e-7)
    np.testing.assert_allclose(np.asarray(tabs.table1[0]),
                               MECHANICS_MATERIALS["NCM"].stiffness_lithiated, rtol=1e-6)
    # SE and pore entries: isotropic, no chemical strain / zero stiffness
    assert np.all(np.asarray(tabs.expansion[2 + 2]) == 0)
    assert np.all(np.asarray(tabs.table0[2 + 0]) == 0)
    with pytest.raises(ElasticParameterError, match="unknown"):
        get_mechanics_material("unobtainium")
    with pytest.raises(ElasticParameterError, match="grain_id"):
        build_phase_tables(labels, np.full_like(gid, -1), q)
    with pytest.raises(ElasticParameterError, match="labels"):
        build_phase_tables(labels + 7, gid, q)
    with pytest.raises(ElasticParameterError, match="positive definite"):
        hexagonal_material("bad", (100e9, 150e9, 40e9, 110e9, 30e9), E_NCM1, BETA)

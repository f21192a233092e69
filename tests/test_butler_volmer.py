"""Butler–Volmer kinetics (kernels/butler_volmer.py) and open-circuit potentials
(kernels/ocv.py).

Physics checks: small-signal resistance R_ct = RT/(F i0) (numerical linearisation),
implicit BV with interfacial resistance vs a scipy brentq root, implicit-function
derivatives vs finite differences, sign convention and i0 form; OCV monotonicity and
plausible potentials over each fit's valid range.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq

from ssbx.kernels import butler_volmer as bv
from ssbx.kernels.ocv import available_ocv, get_ocv, tabulated_ocv

F = 96485.33212
R = 8.314462618


@pytest.fixture(scope="module", autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("alphas", [(0.5, 0.5), (0.3, 0.7), (0.6, 0.6)])
@pytest.mark.parametrize("temperature", [268.15, 298.15, 333.15])
def test_small_signal_resistance_equals_RT_over_F_i0(alphas, temperature):
    aa, ac = alphas
    i0 = 3.7  # A/m²
    d = 1e-7  # V
    slope = (float(bv.butler_volmer(d, i0, temperature, aa, ac))
             - float(bv.butler_volmer(-d, i0, temperature, aa, ac))) / (2 * d)
    r_numeric = 1.0 / slope
    r_formula = R * temperature / (F * i0 * (aa + ac))
    assert abs(r_numeric - r_formula) / r_formula < 1e-8
    assert abs(float(bv.charge_transfer_resistance(i0, temperature, aa, ac)) - r_formula) < 1e-15
    if aa + ac == 1.0:  # docs/physics.md §10 form
        assert abs(r_numeric - R * temperature / (F * i0)) / r_formula < 1e-8
    # autodiff slope agrees too
    ad = float(jax.grad(lambda e: bv.butler_volmer(e, i0, temperature, aa, ac))(0.0))
    assert abs(1.0 / ad - r_formula) / r_formula < 1e-12


def test_small_signal_of_implicit_current_adds_interface_resistance():
    i0, r_int = 2.0, 0.004
    di = jax.grad(lambda e: bv.cathode_current_density(e, 0.0, 0.0, i0, r_int)[0])(0.0)
    assert abs(1.0 / float(di) - (R * 298.15 / (F * i0) + r_int)) < 1e-12


@pytest.mark.parametrize("alphas", [(0.5, 0.5), (0.3, 0.7)])
@pytest.mark.parametrize("r_int", [1e-4, 1e-2, 1.0])
def test_implicit_bv_matches_brentq(alphas, r_int):
    aa, ac = alphas
    temperature = 310.0
    f = F / (R * temperature)
    i0 = 12.0
    etas0 = np.array([-1.0, -0.3, -0.02, -1e-4, 1e-4, 0.01, 0.25, 0.8, 1.5])
    i_ker, eta_ker = bv.cathode_current_density(
        jnp.asarray(etas0) + 3.9, 0.0, 3.9, i0, r_int, temperature, aa, ac
    )
    for k, e0 in enumerate(etas0):
        def g(i):
            eta = e0 - i * r_int
            return i - i0 * (np.exp(aa * f * eta) - np.exp(-ac * f * eta))

        bound = abs(e0) / r_int * 1.01
        ref = brentq(g, -bound, bound, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
        assert abs(float(i_ker[k]) - ref) <= 1e-10 * abs(ref), (e0, float(i_ker[k]), ref)
        assert abs(float(eta_ker[k]) - (e0 - ref * r_int)) < 1e-12
        assert np.sign(ref) == np.sign(e0)  # positive driving force -> delithiation


def test_zero_interface_resistance_is_explicit_bv():
    eta = jnp.linspace(-0.5, 0.5, 11)
    i, eta_out = bv.cathode_current_density(eta, 0.0, 0.0, 1.5, 0.0)
    np.testing.assert_allclose(np.asarray(eta_out), np.asarray(eta), rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(i), np.asarray(bv.butler_volmer(eta, 1.5)), rtol=1e-15)


def test_implicit_bv_derivatives_match_finite_differences():
    def current(phi_s, i0, r_int, temperature, u):
        return bv.cathode_current_density(phi_s, 0.0, u, i0, r_int, temperature, 0.4, 0.6)[0]

    for args in [(4.2, 5.0, 0.02, 298.15, 3.85), (3.7, 2.0, 1e-3, 280.0, 3.75),
                 (3.6, 1.0, 0.1, 320.0, 3.9)]:
        grads = jax.grad(current, argnums=(0, 1, 2, 3, 4))(*[jnp.float64(a) for a in args])
        for k in range(5):
            step = 1e-6 * max(abs(args[k]), 1e-2)
            up = list(args)
            dn = list(args)
            up[k] += step
            dn[k] -= step
            fd = (float(current(*up)) - float(current(*dn))) / (2 * step)
            assert abs(float(grads[k]) - fd) <= 1e-6 * abs(fd) + 1e-9, (args, k, float(grads[k]), fd)


def test_exchange_current_density_form_and_symmetry():
    c_max, k, c_se = 49000.0, 2e-11, 1000.0
    c = 0.3 * c_max
    i0 = float(bv.exchange_current_density(c, c_max, k, c_se, 0.5, 0.5))
    assert abs(i0 - F * k * (c_max - c) ** 0.5 * c**0.5 * c_se**0.5) < 1e-12 * i0
    xs = jnp.linspace(0.05, 0.95, 181)
    vals = np.asarray(bv.exchange_current_density(xs * c_max, c_max, k, c_se))
    assert abs(float(xs[np.argmax(vals)]) - 0.5) < 1e-9  # maximum at half filling
    np.testing.assert_allclose(vals, vals[::-1], rtol=1e-12)


def test_lithium_metal_stripping_is_positive_and_linear_regime():
    i0 = 10.0
    i_strip, _ = bv.lithium_metal_current_density(0.01, 0.0, i0)
    i_plate, _ = bv.lithium_metal_current_density(-0.01, 0.0, i0)
    assert float(i_strip) > 0 > float(i_plate)
    i_small, _ = bv.lithium_metal_current_density(1e-6, 0.0, i0)
    assert abs(float(i_small) * R * 298.15 / (F * i0) - 1e-6) < 1e-12


def test_float32_implicit_solve_close_to_float64():
    etas = np.linspace(-0.6, 0.6, 25)
    ref, _ = bv.cathode_current_density(jnp.asarray(etas), 0.0, 0.0, 4.0, 0.01)
    with jax.enable_x64(False):
        i32, _ = jax.jit(jax.vmap(
            lambda e: bv.cathode_current_density(e, 0.0, 0.0, 4.0, 0.01)))(
            jnp.asarray(etas, jnp.float32))
        assert i32.dtype == jnp.float32
        i32 = np.asarray(i32, np.float64)
    ref = np.asarray(ref)
    assert np.all(np.abs(i32 - ref) <= 1e-5 * np.abs(ref) + 1e-6)


def test_interface_resistance_grows_exponentially_with_gap():
    r = bv.interface_resistance_from_gap(jnp.asarray([0.0, 1e-9, 2e-9]), 1e-3, 1e-9)
    np.testing.assert_allclose(np.asarray(r), 1e-3 * np.exp([0.0, 1.0, 2.0]), rtol=1e-14)


# ----------------------------------------------------------------------------------
# open-circuit potentials
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", available_ocv())
def test_ocv_monotone_decreasing_and_plausible_over_valid_range(name):
    model = get_ocv(name)
    x = np.linspace(model.x_min, model.x_max, 4001)
    u = np.asarray(model(jnp.asarray(x)))
    assert np.all(np.diff(u) < 0)
    assert 3.2 < u.min() and u.max() < 4.45  # layered-oxide window vs Li/Li+
    du = jax.vmap(jax.grad(model.fn))(jnp.asarray(x))
    assert np.all(np.asarray(du) < 0)


def test_ncm811_chen2020_values():
    model = get_ocv("NMC811")
    assert model.c_max_mol_m3 == 63104.0
    # Charged end of the LG M50 window (4.2 V cell, graphite ~0.08 V) -> ~4.28 V;
    # half-lithiated ~3.97 V; discharged end (2.5 V cell) ~3.56 V vs Li/Li+.
    u = np.asarray(model(jnp.asarray([0.2661, 0.5, 0.9084])))
    np.testing.assert_allclose(u, [4.285, 3.972, 3.561], atol=2e-3)


def test_ncm111_values():
    model = get_ocv("ncm111")
    u = np.asarray(model(jnp.asarray([0.4, 0.6, 0.9])))
    # LiNi1/3Mn1/3Co1/3O2 half cell: ~4.26 V at x = 0.4, ~3.89 V at 0.6, ~3.65 V at 0.9
    np.testing.assert_allclose(u, [4.257, 3.885, 3.654], atol=2e-3)


def test_get_ocv_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="NCM111, NCM622, NCM811"):
        get_ocv("NCM523")
    with pytest.raises(ValueError, match="'LCO'"):
        get_ocv("LCO")


def test_ncm622_msmr_inverse_matches_independent_root_finder(x64):
    """U(x) of the MSMR model vs scipy's brentq on x(U) − x (float64), and dU/dx = 1/x'(U)."""
    from scipy.optimize import brentq

    from ssbx.kernels.ocv import NCM622_MSMR_VERBRUGGE2017 as table

    f = 96485.33212 / (8.314462618 * 298.15)

    def x_of_u(u):  # Verbrugge et al. (2017), Eq. for x(U), written out independently
        return sum(big_x / (1.0 + np.exp(f * (u - u0) / w)) for u0, big_x, w in table)

    model = get_ocv("nmc622")
    xs = np.linspace(model.x_min, model.x_max, 37)
    expected = np.array([brentq(lambda u: x_of_u(u) - x, 2.5, 5.0, xtol=1e-14) for x in xs])
    got = np.asarray(model(jnp.asarray(xs)))
    np.testing.assert_allclose(got, expected, atol=1e-10)
    # the fit spans its galleries: Σ X_j = 1 and the window is 3.3–4.4 V
    assert abs(sum(row[1] for row in table) - 1.0) < 1e-12
    np.testing.assert_allclose(x_of_u(np.array([4.4, 3.3])), [model.x_min, model.x_max], rtol=1e-12)
    # implicit derivative vs central differences of the independent inverse
    for x in (0.2, 0.5, 0.9):
        eps = 1e-6
        fd = (brentq(lambda u: x_of_u(u) - x - eps, 2.5, 5.0, xtol=1e-15)
              - brentq(lambda u: x_of_u(u) - x + eps, 2.5, 5.0, xtol=1e-15)) / (2 * eps)
        assert abs(float(jax.grad(model.fn)(x)) - fd) < 1e-5 * abs(fd)


def test_ncm622_msmr_float32_round_trip():
    from ssbx.kernels.ocv import NCM622_MSMR_VERBRUGGE2017, msmr_fraction

    model = get_ocv("NCM622")
    with jax.enable_x64(False):  # this module runs in float64 otherwise
        x = jnp.linspace(model.x_min, 0.99, 101, dtype=jnp.float32)
        u = model(x)
        assert u.dtype == jnp.float32
        back = msmr_fraction(u, NCM622_MSMR_VERBRUGGE2017)
    np.testing.assert_allclose(np.asarray(back), np.asarray(x), atol=2e-6)


def test_msmr_rejects_malformed_tables():
    from ssbx.kernels.ocv import msmr_ocv

    with pytest.raises(ValueError, match="shape"):
        msmr_ocv([(3.7, 1.0)], 50000.0)
    with pytest.raises(ValueError, match="omega_j"):
        msmr_ocv([(3.7, 1.0, -1.0)], 50000.0)
    with pytest.raises(ValueError, match="window_V"):
        msmr_ocv([(3.7, 1.0, 1.0)], 50000.0, window_V=(4.4, 3.3))


def test_tabulated_ocv_interpolates_and_validates():
    model = tabulated_ocv([0.2, 0.5, 0.9], [4.3, 3.9, 3.6], 50000.0, name="test")
    assert abs(float(model(0.35)) - 4.1) < 1e-12
    with pytest.raises(ValueError, match="strictly decreasing"):
        tabulated_ocv([0.2, 0.5, 0.9], [4.3, 4.4, 3.6], 50000.0)
    with pytest.raises(ValueError, match="c_max_mol_m3 = -1"):
        tabulated_ocv([0.2, 0.5], [4.3, 3.9], -1)

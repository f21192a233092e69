"""Observation operators (projection, block average, shift, masks) and measurement I/O."""

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tifffile

from ssbx.engine.config.scenario import Scenario
from ssbx.engine.errors import ConfigError
from ssbx.engine.inverse.fitting import FitProblem, forward_setup
from ssbx.engine.io.measurements import MeasuredMaps, load_measurement, save_measurement
from ssbx.engine.geometry.microstructure import polycrystalline_particle
from ssbx.engine.observables.observation import (
    ObservationOperator,
    block_average,
    project,
    shift_image,
)
from ssbx.engine.inverse.parameters import PARAMETERS, FreeParameter


@pytest.fixture(scope="module")
def particle():
    """A 3D particle of radius 5 voxels in a 14³ box (radius 0.5 µm, h = 0.1 µm)."""
    return polycrystalline_particle(0.5e-6, 1e-7, n_grains=6, seed=3)


# ----------------------------------------------------------------- projection / binning


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_projection_of_uniform_field_is_uniform_inside(particle, axis):
    active = particle.active
    x = np.where(active, 0.37, 5.0)  # values outside the particle must not leak in
    img = np.asarray(project(jnp.asarray(x), jnp.asarray(active), axis))
    inside = active.any(axis=axis)
    np.testing.assert_allclose(img[inside], 0.37, rtol=1e-6)
    assert np.all(img[~inside] == 0)


def test_projection_is_thickness_weighted_mean(particle):
    """P = Σ a x / Σ a along the ray, against an explicit numpy loop."""
    rng = np.random.default_rng(0)
    x = rng.random(particle.active.shape)
    a = particle.active
    img = np.asarray(project(jnp.asarray(x), jnp.asarray(a), 2))
    i, j = 7, 6
    ray = a[i, j, :]
    assert ray.sum() > 0
    assert img[i, j] == pytest.approx(x[i, j, ray].mean(), rel=1e-6)


def test_block_average_conserves_mean():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((12, 8, 6)))
    for factor in (1, 2):
        avg = block_average(x, factor)
        assert avg.shape == tuple(n // factor for n in x.shape)
        assert float(jnp.mean(avg)) == pytest.approx(float(jnp.mean(x)), rel=1e-6)
    w = jnp.asarray(rng.random((12, 8, 6)) > 0.4, jnp.float32)
    avg = block_average(x, 2, weights=w)
    weight = block_average(w, 2) * 8
    # weighted total is conserved: Σ_B W_B X_B = Σ w x
    assert float(jnp.sum(weight * avg)) == pytest.approx(float(jnp.sum(w * x)), rel=1e-5)
    with pytest.raises(ConfigError, match="not a multiple of 5"):
        block_average(x, 5)


# ----------------------------------------------------------------- shifts


@pytest.mark.parametrize("method", ["linear", "fourier"])
def test_integer_shift_equals_roll(method):
    rng = np.random.default_rng(2)
    img = rng.random((10, 7))
    out = np.asarray(shift_image(jnp.asarray(img), (3, -2), method))
    np.testing.assert_allclose(out, np.roll(img, (3, -2), axis=(0, 1)), atol=1e-6)


def test_fourier_shift_of_band_limited_signal_is_exact():
    n = 16
    i = np.arange(n)
    img = np.cos(2 * np.pi * 3 * i / n)[:, None] * np.sin(2 * np.pi * 2 * i / n)[None, :]
    s = (0.3, -1.7)
    expected = np.cos(2 * np.pi * 3 * (i - s[0]) / n)[:, None] * np.sin(2 * np.pi * 2 * (i - s[1]) / n)[None, :]
    np.testing.assert_allclose(np.asarray(shift_image(jnp.asarray(img), s, "fourier")), expected, atol=1e-5)


def test_linear_shift_of_a_ramp_is_exact_inside():
    img = np.tile(np.arange(12.0)[:, None], (1, 3))
    out = np.asarray(shift_image(jnp.asarray(img), (0.25, 0.0), "linear"))
    np.testing.assert_allclose(out[2:-2], img[2:-2] - 0.25, atol=1e-6)  # away from the wrap


@pytest.mark.parametrize("method", ["linear", "fourier"])
def test_shift_adjoint_is_the_opposite_shift(method):
    """<S_s a, b> = <a, S_−s b>: the VJP of a shift is the opposite shift."""
    rng = np.random.default_rng(3)
    a, b = jnp.asarray(rng.random((9, 8))), jnp.asarray(rng.random((9, 8)))
    s = (0.37, -1.6)
    _, vjp = jax.vjp(lambda z: shift_image(z, s, method), a)
    np.testing.assert_allclose(np.asarray(vjp(b)[0]), np.asarray(shift_image(b, (-s[0], -s[1]), method)), atol=1e-5)
    lhs = float(jnp.sum(shift_image(a, s, method) * b))
    rhs = float(jnp.sum(a * shift_image(b, (-s[0], -s[1]), method)))
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_operator_is_linear_and_adjoint_matches_formula(particle, x64):
    """A(αx + βy) = αA(x) + βA(y); for the plain projection Aᵀ m = a · m / thickness."""
    rng = np.random.default_rng(4)
    a = jnp.asarray(particle.active, jnp.float64)
    x, y = jnp.asarray(rng.random(a.shape)), jnp.asarray(rng.random(a.shape))
    op = ObservationOperator("projection", beam_axis=1, factor=2, shift_px=(0.4, -0.25))
    np.testing.assert_allclose(np.asarray(op(2 * x - 3 * y, a)), np.asarray(2 * op(x, a) - 3 * op(y, a)), atol=1e-12)
    plain = ObservationOperator("projection", beam_axis=1)
    m = jnp.asarray(rng.random(plain.image_shape(a.shape)))
    _, vjp = jax.vjp(lambda z: plain(z, a), x)
    thick = jnp.sum(a, axis=1)
    expected = a * jnp.where(thick > 0, m / jnp.where(thick > 0, thick, 1), 0)[:, None, :]
    np.testing.assert_allclose(np.asarray(vjp(m)[0]), np.asarray(expected), atol=1e-12)
    # the gradient through empty rays stays finite
    g = jax.grad(lambda z: jnp.sum(op(z, a) ** 2))(x)
    assert np.all(np.isfinite(np.asarray(g)))


def test_masks(particle):
    a = particle.active
    op = ObservationOperator("projection", beam_axis=2, min_thickness_voxels=3)
    mask = op.mask(a)
    thickness = a.sum(axis=2)
    np.testing.assert_array_equal(mask, thickness >= 3)
    vol = ObservationOperator("volume", factor=2, min_active_fraction=0.5)
    vmask = vol.mask(a)
    frac = np.asarray(block_average(jnp.asarray(a, jnp.float32), 2))
    np.testing.assert_array_equal(vmask, frac >= 0.5)
    with pytest.raises(ConfigError, match="beam_axis"):
        ObservationOperator("projection", beam_axis=3).image_shape(a.shape)
    with pytest.raises(ConfigError, match="kind"):
        ObservationOperator("slice")


# ----------------------------------------------------------------- loaders


@pytest.fixture(scope="module")
def maps():
    rng = np.random.default_rng(5)
    data = rng.random((3, 6, 5))
    data[0, 0, 0] = np.nan
    return MeasuredMaps(data, [10.0, 20.0, 40.0], 2e-7, "projection", "y", noise_std=0.01)


def test_hdf5_round_trip(maps, tmp_path):
    path = save_measurement(tmp_path / "m.h5", maps)
    back = load_measurement(path)
    np.testing.assert_array_equal(back.mask, maps.mask)
    np.testing.assert_allclose(back.maps[back.mask], maps.maps[maps.mask])
    np.testing.assert_allclose(back.t_s, maps.t_s)
    assert (back.pixel_size_m, back.kind, back.beam_axis, back.noise_std) == (2e-7, "projection", 1, 0.01)
    # metadata given again must agree
    assert load_measurement(path, pixel_size_m=2e-7, beam_axis=1).beam_axis == 1
    with pytest.raises(ConfigError, match=r"pixel_size_m = 3e-07 disagrees"):
        load_measurement(path, pixel_size_m=3e-7)
    with pytest.raises(ConfigError, match="t_s"):
        load_measurement(path, t_s=[10.0, 20.0, 30.0])


def test_npz_npy_tiff_round_trip(maps, tmp_path):
    back = load_measurement(save_measurement(tmp_path / "m.npz", maps))
    np.testing.assert_allclose(back.maps[back.mask], maps.maps[maps.mask])
    assert back.beam_axis == 1 and back.pixel_size_m == 2e-7
    meta = dict(t_s=[10.0, 20.0, 40.0], pixel_size_m=2e-7, beam_axis="y")
    for name in ("m.npy", "m.tif"):
        back = load_measurement(save_measurement(tmp_path / name, maps), **meta)
        np.testing.assert_array_equal(back.mask, maps.mask)
        np.testing.assert_allclose(back.maps[back.mask], maps.maps[maps.mask], rtol=1e-6)
    # a single 2D TIFF page is one map
    tifffile.imwrite(tmp_path / "one.tif", np.ones((6, 5), np.float32))
    assert load_measurement(tmp_path / "one.tif", t_s=[5.0], pixel_size_m=1e-7, beam_axis="z").n_times == 1


def test_loader_errors(maps, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_measurement(tmp_path / "missing.h5")
    np.save(tmp_path / "m.npy", maps.maps)
    with pytest.raises(ConfigError, match="pixel_size_m is required"):
        load_measurement(tmp_path / "m.npy", t_s=[1.0, 2.0, 3.0], beam_axis="z")
    with pytest.raises(ConfigError, match="t_s is required"):
        load_measurement(tmp_path / "m.npy", pixel_size_m=1e-7, beam_axis="z")
    with pytest.raises(ConfigError, match=r"t_s has 2 values .* holds 3 maps"):
        load_measurement(tmp_path / "m.npy", t_s=[1.0, 2.0], pixel_size_m=1e-7, beam_axis="z")
    with pytest.raises(ConfigError, match="strictly increasing"):
        load_measurement(tmp_path / "m.npy", t_s=[1.0, 3.0, 2.0], pixel_size_m=1e-7, beam_axis="z")
    with pytest.raises(ConfigError, match=r"pixel_size_m = -1e-07.*> 0"):
        load_measurement(tmp_path / "m.npy", t_s=[1.0, 2.0, 3.0], pixel_size_m=-1e-7, beam_axis="z")
    with pytest.raises(ConfigError, match="beam_axis = 'w'"):
        load_measurement(tmp_path / "m.npy", t_s=[1.0, 2.0, 3.0], pixel_size_m=1e-7, beam_axis="w")
    for name in ("bad.h5", "bad.tif", "bad.npy"):
        (tmp_path / name).write_bytes(b"this is not a measurement file" * 10)
        with pytest.raises(ConfigError, match="cannot read it as"):
            load_measurement(tmp_path / name, t_s=[1.0], pixel_size_m=1e-7, beam_axis="z")
    with h5py.File(tmp_path / "nomaps.h5", "w") as fh:
        fh["images"] = maps.maps
    with pytest.raises(ConfigError, match="no dataset '/maps'"):
        load_measurement(tmp_path / "nomaps.h5")
    (tmp_path / "m.dat").write_bytes(b"")
    with pytest.raises(ConfigError, match="format"):
        load_measurement(tmp_path / "m.dat")
    np.save(tmp_path / "vol.npy", np.ones((2, 4, 4, 4, 4)))
    with pytest.raises(ConfigError, match="volumes need"):
        load_measurement(tmp_path / "vol.npy", t_s=[1.0, 2.0], pixel_size_m=1e-7, kind="volume")


def test_problem_rejects_mismatched_shape_and_pixel_size():
    """Shape and pixel-size mismatches between measurement and simulation name both."""
    scenario = Scenario().replace(particle={"radius_m": 0.5e-6, "voxel_size_m": 1e-7, "n_grains": 4})
    free = [FreeParameter("flux_scale", 1.0)]
    grid = 14  # 2·5 voxels + 2·2 margin
    good = MeasuredMaps(np.full((1, grid, grid), 0.9), [10.0], 1e-7, "projection", "z")
    FitProblem.from_scenario(scenario, good, free)  # accepted
    wrong_shape = MeasuredMaps(np.full((1, grid, grid + 2), 0.9), [10.0], 1e-7, "projection", "z")
    with pytest.raises(ConfigError, match=r"shape \(14, 16\).*simulated projection shape \(14, 14\)"):
        FitProblem.from_scenario(scenario, wrong_shape, free)
    wrong_pixel = MeasuredMaps(np.full((1, 7, 7), 0.9), [10.0], 1.5e-7, "projection", "z")
    with pytest.raises(ConfigError, match=r"pixel_size_m = 1.5e-07 m: must be an integer multiple .* 1e-07"):
        FitProblem.from_scenario(scenario, wrong_pixel, free)
    binned = MeasuredMaps(np.full((1, 7, 7), 0.9), [10.0], 2e-7, "projection", "z")
    assert FitProblem.from_scenario(scenario, binned, free).setup.operator.factor == 2
    setup = forward_setup(scenario, [10.0], ObservationOperator("projection"), free)
    assert setup.image_shape == (grid, grid)


def test_parameter_names_are_checked():
    with pytest.raises(ConfigError, match=r"unknown parameter 'D4'; valid: \['D1', 'D3', 'beta_c'"):
        FreeParameter("D4", 1e-15)
    with pytest.raises(ConfigError, match="give lower and upper bounds"):
        FreeParameter("beta_c", -0.04)
    with pytest.raises(ConfigError, match="particle SOC-map fit has no interface"):
        PARAMETERS["interface_strength"].apply(None, 1e8)  # σc: a cell parameter (engine.inverse.voltage_fit)
    with pytest.raises(ConfigError, match=r"parameters.D1.start = 5e-15: must lie strictly inside"):
        FreeParameter("D1", 5e-15, 1e-14, 2e-14)
    with pytest.raises(ConfigError, match=r"parameters.flux_scale.start = -1.0: must be > 0"):
        FreeParameter("flux_scale", -1.0)

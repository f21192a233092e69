"""Isotropic sphere under constant influx vs Crank's series solution (Crank 1975, eq. 6.44)."""

import jax.numpy as jnp
import numpy as np
import pytest

from analytic import sphere_constant_influx
from ssbx.engine.config.scenario import Scenario
from ssbx.engine.geometry.microstructure import polycrystalline_particle
from ssbx.engine.model.particle import ParticleGeometry, TransportParams, rollout

D = 1e-14  # m²/s
RADIUS = 5e-6  # m, the default particle
TAU = 0.15  # D t / a²


def _sphere_run(voxels_per_radius):
    """Simulate the voxel sphere; return (x, analytic, masks, profile scale)."""
    h = RADIUS / voxels_per_radius
    micro = polycrystalline_particle(RADIUS, h, n_grains=1, margin_voxels=1)
    geometry = ParticleGeometry.from_microstructure(micro, jnp.float64)
    # The analytic sphere has the voxel sphere's volume, and receives the same total
    # Li: influx F0 on the area 4π a_eff², spread over the reactive faces.
    a_eff = (3 * micro.active_volume_m3() / (4 * np.pi)) ** (1 / 3)
    influx = 1e-3 * D / a_eff  # x·m/s; the profile scale F0 a / D is 1e-3
    flux = influx * 4 * np.pi * a_eff**2 / float(geometry.reactive_area_m2)
    params = TransportParams(
        diffusivity_m2_s=jnp.full(3, D),
        orientations=jnp.asarray(micro.orientations),
        flux_mol_m2_s=jnp.asarray(flux),
        c_max_mol_m3=jnp.asarray(1.0),
    )
    t_end = TAU * a_eff**2 / D
    block = 16
    dt_max = 0.9 * h**2 / (6 * D)
    n_steps = int(np.ceil(t_end / dt_max / block)) * block
    x, _ = rollout(geometry, params, jnp.zeros(micro.labels.shape), n_steps, t_end / n_steps, block)
    n = micro.labels.shape[0]
    centres = (np.arange(n) + 0.5 - n / 2) * h
    r = np.sqrt(sum(c**2 for c in np.meshgrid(centres, centres, centres, indexing="ij")))
    exact = sphere_constant_influx(r, t_end, a_eff, D, influx)
    active = micro.active
    surface = micro.reactive_face_count() > 0
    centre = active & (r == r[active].min())
    return np.asarray(x), exact, active, surface, centre, influx * a_eff / D, influx, t_end, a_eff


@pytest.fixture(scope="module", params=[8, 12, 16])
def coarse(request, x64_module):
    return request.param, _sphere_run(request.param)


@pytest.fixture(scope="module")
def x64_module():
    import jax

    with jax.enable_x64(True):
        yield


def test_mean_rises_as_3F0t_over_a(coarse):
    _, (x, _, active, *_rest) = coarse
    influx, t_end, a_eff = _rest[-3], _rest[-2], _rest[-1]
    assert abs(x[active].mean() / (3 * influx * t_end / a_eff) - 1) < 1e-12


def test_default_resolution_surface_and_centre_within_2_percent(x64_module):
    """At the default voxel size (0.2 µm, 25 voxels per radius) the mean surface-layer
    and centre concentrations match the series within 2 %."""
    n_default = round(RADIUS / Scenario().particle.voxel_size_m)
    x, exact, active, surface, centre, scale, *_ = _sphere_run(n_default)
    for mask in (surface, centre):
        rise_sim, rise_exact = x[mask].mean(), exact[mask].mean()
        assert abs(rise_sim / rise_exact - 1) < 0.02
    # and pointwise, no voxel is off by more than 3 % of the profile scale F0 a / D
    assert np.abs(x - exact)[active].max() < 0.03 * scale


def test_error_decreases_under_refinement(x64_module):
    """Centre error and the error of the shell-averaged radial profile fall with h."""
    centre_errors, profile_errors = [], []
    for n in (8, 12, 16, 24):
        x, exact, active, surface, centre, scale, *_ = _sphere_run(n)
        centre_errors.append(abs(x[centre].mean() - exact[centre].mean()) / scale)
        profile_errors.append(np.sqrt(np.mean((x - exact)[active & ~surface] ** 2)) / scale)
    assert all(b < a for a, b in zip(centre_errors, centre_errors[1:])), centre_errors
    order = np.polyfit(np.log([8, 12, 16, 24]), np.log(centre_errors), 1)[0]
    assert order < -1.0, (order, centre_errors)
    assert profile_errors[-1] < profile_errors[0], profile_errors

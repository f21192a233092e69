"""Polycrystalline particle generator: geometry, reproducibility, orientation statistics."""

import numpy as np
import pytest
from scipy import stats

from ssbx.engine.errors import ConfigError
from ssbx.engine.geometry.microstructure import (
    ACTIVE,
    ECBD,
    Microstructure,
    polycrystalline_particle,
    random_quaternions,
)
from ssbx.kernels.rotations import quaternion_to_matrix


@pytest.fixture(scope="module")
def particle():
    return polycrystalline_particle(2e-6, 1e-7, n_grains=40, reactive_fraction=0.667, seed=7)


def test_sphere_geometry_and_labels(particle):
    m = particle
    assert m.labels.dtype == np.uint8 and m.grain_id.dtype == np.int32
    assert set(np.unique(m.labels)) == {ACTIVE, ECBD}
    assert np.array_equal(m.labels == ACTIVE, m.grain_id >= 0)
    volume = m.active_volume_m3()
    assert abs(volume / (4 / 3 * np.pi * (2e-6) ** 3) - 1) < 0.02
    # the particle never touches the box faces (margin of surrounding phase)
    for axis in range(3):
        assert not m.active.take(0, axis=axis).any() and not m.active.take(-1, axis=axis).any()


def test_grains_are_consecutive_and_connected_enough(particle):
    ids = np.unique(particle.grain_id[particle.active])
    assert np.array_equal(ids, np.arange(particle.n_grains))
    assert 30 <= particle.n_grains <= 40


def test_same_seed_same_microstructure_other_seed_differs():
    a = polycrystalline_particle(1e-6, 1e-7, n_grains=8, seed=11)
    b = polycrystalline_particle(1e-6, 1e-7, n_grains=8, seed=11)
    c = polycrystalline_particle(1e-6, 1e-7, n_grains=8, seed=12)
    assert np.array_equal(a.grain_id, b.grain_id) and np.array_equal(a.orientations, b.orientations)
    assert not np.array_equal(a.grain_id, c.grain_id)


def test_reactive_fraction_picks_exact_share_of_surface_grains(particle):
    surface = particle.surface_grains()
    reactive_surface = particle.reactive_grains & surface
    assert reactive_surface.sum() == round(0.667 * surface.sum())
    assert particle.reactive_grains[~surface].all()
    faces = particle.reactive_face_count()
    unreactive = ~particle.reactive_grains[np.maximum(particle.grain_id, 0)] & particle.active
    assert faces[unreactive].sum() == 0 and faces.sum() > 0


def test_staircase_corrected_area_approximates_sphere_area():
    m = polycrystalline_particle(3e-6, 1.5e-7, n_grains=1, seed=0)
    h2 = m.voxel_size_m**2
    raw = m.reactive_face_count().sum() * h2
    corrected = m.reactive_area_faces().sum() * h2
    a_eff = (3 * m.active_volume_m3() / (4 * np.pi)) ** (1 / 3)
    sphere = 4 * np.pi * a_eff**2
    assert raw / sphere > 1.3  # the staircase overestimates the area by ~3/2
    assert abs(corrected / sphere - 1) < 0.03


def test_orientations_uniform_on_SO3():
    """c axes of uniform rotations have cos(polar angle) uniform on [−1, 1] and the
    rotation angle has density (1 − cos θ)/π on [0, π]."""
    q = random_quaternions(4000, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    c_axis = np.asarray(quaternion_to_matrix(q))[:, :, 2]
    assert stats.kstest(c_axis[:, 2], stats.uniform(-1, 2).cdf).pvalue > 1e-3
    angle = 2 * np.arccos(np.clip(np.abs(q[:, 0]), 0, 1))
    cdf = lambda t: (t - np.sin(t)) / np.pi  # noqa: E731
    assert stats.kstest(angle, cdf).pvalue > 1e-3


def test_mean_grain_size_and_spread_control():
    small = polycrystalline_particle(2e-6, 1e-7, mean_grain_size_m=0.8e-6, seed=1)
    large = polycrystalline_particle(2e-6, 1e-7, mean_grain_size_m=1.6e-6, seed=1)
    assert small.n_grains > 4 * large.n_grains
    uniform = polycrystalline_particle(2e-6, 1e-7, n_grains=60, seed=2)
    spread = polycrystalline_particle(2e-6, 1e-7, n_grains=60, grain_size_spread=1.0, seed=2)
    cv = lambda m: np.std(np.bincount(m.grain_id[m.active])) / np.mean(np.bincount(m.grain_id[m.active]))  # noqa: E731
    assert cv(spread) > 1.3 * cv(uniform)


def test_disc_in_2d():
    m = polycrystalline_particle(2e-6, 1e-7, n_grains=12, ndim=2, seed=4)
    assert m.ndim == 2
    assert abs(m.active_volume_m3() / (np.pi * (2e-6) ** 2) - 1) < 0.03
    assert m.reactive_face_count().sum() > 0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(radius_m=-1e-6), "radius_m"),
        (dict(voxel_size_m=0.0), "voxel_size_m"),
        (dict(n_grains=0), "n_grains"),
        (dict(reactive_fraction=1.5), "reactive_fraction"),
        (dict(reactive_fraction=-0.1), "reactive_fraction"),
        (dict(ndim=4), "ndim"),
        (dict(grain_size_spread=-1.0), "grain_size_spread"),
        (dict(surrounding_label=1), "surrounding_label"),
    ],
)
def test_bad_input_names_the_field(kwargs, field):
    args = dict(radius_m=1e-6, voxel_size_m=1e-7, n_grains=5)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=field):
        polycrystalline_particle(**args)


def test_microstructure_rejects_mismatched_arrays():
    labels = np.ones((4, 4, 4), np.uint8)
    with pytest.raises(ConfigError, match="grain_id shape"):
        Microstructure(labels, np.zeros((4, 4, 3), np.int32), np.ones((1, 4)), np.ones(1, bool), 1e-7)
    with pytest.raises(ConfigError, match="exceeds the orientation table"):
        Microstructure(labels, np.full((4, 4, 4), 2, np.int32), np.ones((1, 4)), np.ones(1, bool), 1e-7)

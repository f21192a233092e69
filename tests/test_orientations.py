"""Per-grain c axes from SOC maps (issue 16 item 1): the axis parameterisation, exact
orientation gradients, recovery of a synthetic truth jointly with D1, and the
identifiability flag of a grain the beams do not see."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssbx.engine.config.scenario import Scenario
from ssbx.engine.errors import ConfigError
from ssbx.engine.inverse.fitting import forward_setup
from ssbx.engine.inverse.orientations import (OrientationProblem, fit_grain_orientations,
                                              synthetic_orientation_maps, tangent_basis)
from ssbx.engine.inverse.parameters import FreeParameter
from ssbx.engine.observables.observation import ObservationOperator
from ssbx.kernels.c_axis import axis_misorientation_deg, c_axis_of_quaternion, c_axis_quaternion
from ssbx.kernels.diffusion import grain_diffusion_tensors
from ssbx.kernels.rotations import quaternion_to_matrix

# ------------------------------------------------------------------ parameterisation


def test_c_axis_quaternion_maps_001_to_the_axis(x64):
    """R(q(v)) e_z = ±v/|v| for random vectors, the poles and the equator (the antipode
    −e_z included); the rotated tensor is D1 I + (D3 − D1) c cᵀ (transverse isotropy)."""
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.standard_normal((50, 3)) * rng.uniform(0.1, 10, (50, 1)),
                        [[0, 0, 1], [0, 0, -1], [0, 0, -1e-3], [1, 0, 0], [0.3, -0.7, 0], [1e-9, 0, -1]]])
    c = v / np.linalg.norm(v, axis=1, keepdims=True)
    q = np.asarray(c_axis_quaternion(jnp.asarray(v)))
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-14)
    R = np.asarray(quaternion_to_matrix(jnp.asarray(q)))
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    mapped = R[:, :, 2]
    assert np.all(np.abs(np.abs(np.sum(mapped * c, axis=1)) - 1) < 1e-12)
    d1, d3 = 7e-15, 2e-16
    D = np.asarray(grain_diffusion_tensors(jnp.asarray(R), jnp.asarray([d1, d1, d3]), 3))
    expected = d1 * np.eye(3)[None] + (d3 - d1) * c[:, :, None] * c[:, None, :]
    np.testing.assert_allclose(D, expected, atol=1e-28)


def test_axis_tensor_is_smooth_through_the_equator_flip(x64):
    """The quaternion flips sign of c at c_z = 0, D(v) must not: its Jacobian at an
    equatorial axis equals the analytic ∂(c cᵀ)/∂v on both sides."""
    def tensor(v):
        R = quaternion_to_matrix(c_axis_quaternion(v))
        return R[:, 2][:, None] * R[:, 2][None, :]  # c cᵀ

    for v in ([0.6, 0.8, 1e-12], [0.6, 0.8, -1e-12], [0.0, 1e-9, -1.0]):
        v = jnp.asarray(v)
        c = np.asarray(v) / np.linalg.norm(np.asarray(v))
        P = (np.eye(3) - np.outer(c, c)) / np.linalg.norm(np.asarray(v))  # ∂c/∂v
        analytic = np.einsum("ik,j->ijk", P, c) + np.einsum("i,jk->ijk", c, P)
        np.testing.assert_allclose(np.asarray(jax.jacfwd(tensor)(v)), analytic, atol=1e-9)


def test_misorientation_ignores_the_sign():
    a = jnp.asarray([[1.0, 0, 0], [0, 0, 1], [1, 1, 0]])
    b = jnp.asarray([[math.cos(0.5), math.sin(0.5), 0], [0, 0, -1], [-1, -1, 0.0]])
    np.testing.assert_allclose(np.asarray(axis_misorientation_deg(a, b)), [math.degrees(0.5), 0, 0], atol=1e-4)
    assert float(axis_misorientation_deg(jnp.asarray([1.0, 0, 0]), jnp.asarray([0, -2.0, 0]))) == pytest.approx(90)
    q = c_axis_quaternion(jnp.asarray([[0.2, -0.4, 0.9]]))
    np.testing.assert_allclose(np.asarray(c_axis_of_quaternion(q))[0],
                               np.asarray([0.2, -0.4, 0.9]) / np.linalg.norm([0.2, -0.4, 0.9]), atol=1e-6)
    e = tangent_basis(np.asarray([[0.0, 0, 1], [1, 0, 0], [0.6, 0, 0.8]]))
    for k in range(3):
        np.testing.assert_allclose(e[k] @ e[k].T, np.eye(2), atol=1e-12)

"""Slab domain decomposition on 4 simulated CPU devices equals the single-device solvers.

The simulated devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
before jax is imported, so the computations run once in a subprocess
(tests/sharding_check.py) that prints its measurements as JSON; the tests below read
them. Equality is to float32 round-off: the sharded runs perform the same floating-point
operations on the same numbers except for the order of global sums (CG dot products,
means). Two conservation laws are checked on the sharded results themselves.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECK = Path(__file__).resolve().parent / "sharding_check.py"


@pytest.fixture(scope="module")
def measured():
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run([sys.executable, str(CHECK)], check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_four_slabs(measured):
    assert measured["devices"] == 4
    assert measured["rollout_sharded_slabs"] == 4


def test_sharded_particle_rollout_equals_single_device(measured):
    # 32 explicit steps, 16x12x12 ellipsoid of three anisotropic grains, lithiating
    assert measured["rollout_x_spread"] > 0.05  # a non-trivial field was compared
    assert measured["rollout_max_abs_dx"] <= 1e-6  # x in [0, 1]; float32 eps = 1.2e-7
    assert measured["rollout_autodiff_max_abs_dx"] <= 1e-6  # the other adjoint path, same values
    assert measured["rollout_max_abs_dmean"] <= 1e-5


def test_sharded_diffusion_rate_equals_kernel_in_3d_and_2d(measured):
    assert measured["rate_rel_diff_3d_2d"] <= 1e-5


def test_sharded_rollout_conserves_li(measured):
    # Σx grows by exactly Δt Σ s per step: the operator is conservative across slab cuts
    assert measured["rollout_li_balance_rel_err"] <= 1e-5


def test_sharded_rollout_gradient_equals_single_device(measured):
    assert measured["grad_rel_diff_diffusivity"] <= 1e-5
    assert measured["grad_rel_diff_flux"] <= 1e-5


def test_sharded_conduction_solve_equals_single_device(measured):
    # Jacobi PCG, rtol 1e-6, 1 V across a periodic-lateral two-phase volume cut along a
    # periodic axis (the ring halo carries the wrap-around faces)
    assert measured["solve_converged"]
    it1, it4 = measured["solve_iterations"]
    assert abs(it1 - it4) <= 1
    assert measured["solve_max_abs_dphi_V"] <= 1e-5
    assert measured["solve_current_balance_rel"] <= 1e-4  # I_lo = −I_hi without sources


def test_sharded_elasticity_equals_single_device(measured):
    assert measured["elasticity_converged"]
    it1, it4 = measured["elasticity_iterations"]
    assert abs(it1 - it4) <= 1
    assert measured["elasticity_stress_rel_diff"] <= 1e-5
    # stress-controlled zero mean stress, against GPa-level local stresses
    assert measured["elasticity_mean_stress_Pa"] <= 1e-5 * measured["elasticity_max_stress_Pa"]


def test_uneven_slabs_are_a_config_error(measured):
    msg = measured["bad_shape_error"]
    assert msg is not None and "shape[0] = 10" in msg and "4 devices" in msg

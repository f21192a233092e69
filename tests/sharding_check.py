"""Sharded (4 simulated CPU devices) vs single-device runs; run as a script.

XLA_FLAGS must be set before jax is imported, so tests/test_sharding.py runs this file
in a subprocess and reads the JSON it prints on its last line. Every quantity is a
difference between the slab-decomposed and the single-device computation of the same
problem, or a conservation law.
"""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ssbx.engine.errors import ConfigError  # noqa: E402
from ssbx.engine.model.particle import ParticleGeometry, TransportParams, rollout  # noqa: E402
from ssbx.engine.solve.sharded_particle import sharded_rollout  # noqa: E402
from ssbx.kernels import conduction as kc  # noqa: E402
from ssbx.kernels import diffusion as kd  # noqa: E402
from ssbx.kernels import elasticity as ke  # noqa: E402
from ssbx.kernels import sharded as ks  # noqa: E402
from ssbx.kernels import stiffness as kst  # noqa: E402
from ssbx.kernels.rotations import quaternion_to_matrix  # noqa: E402

out = {"devices": len(jax.devices())}
mesh = ks.slab_mesh(4)
rng = np.random.default_rng(7)
clock = time.perf_counter()


def lap(name):
    global clock
    now = time.perf_counter()
    out[f"seconds_{name}"] = round(now - clock, 2)
    clock = now


def unit_quaternions(n):
    q = rng.standard_normal((n, 4))
    return jnp.asarray(q / np.linalg.norm(q, axis=1, keepdims=True), jnp.float32)


# --- particle rollout: an ellipsoid of three anisotropic grains, lithiating ---------------
shape = (16, 12, 12)
idx = np.indices(shape).astype(float)
centre = (np.array(shape) - 1) / 2
inside = sum(((idx[a] - centre[a]) / (0.45 * shape[a])) ** 2 for a in range(3)) <= 1.0
gid = np.where(inside, (idx[0] > centre[0]).astype(int) + (idx[1] > centre[1]).astype(int), -1)
# reactive faces: faces of active voxels to non-active neighbours (box edges count too)
pad = np.pad(inside, 1)
faces = sum((~np.roll(pad, s, a))[1:-1, 1:-1, 1:-1] for a in range(3) for s in (1, -1)) * inside
h = 1e-7
geometry = ParticleGeometry(jnp.asarray(gid, jnp.int32), jnp.asarray(faces, jnp.float32), h)
params = TransportParams(jnp.array([4e-15, 1e-14, 2e-15], jnp.float32), unit_quaternions(3),
                         jnp.asarray(2e-4, jnp.float32), jnp.asarray(5e4, jnp.float32))
dt = kd.stable_time_step(1e-14, h, 3)
x0 = jnp.where(geometry.grain_id >= 0, jnp.asarray(0.3, jnp.float32), 0.0)
n_steps = 32
target = jnp.asarray(rng.random(shape), jnp.float32)


def loss_and_run(run):
    """Value and gradient of a misfit of the final state w.r.t. (D1..D3, flux)."""
    def loss(diff, flux):
        x, per_step = run(TransportParams(diff, params.orientations, flux, params.c_max_mol_m3))
        return jnp.sum(jnp.where(inside, (x - target) ** 2, 0.0)), (x, per_step["mean_x"])
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params.diffusivity_m2_s,
                                                                            params.flux_mol_m2_s)


(_, (xa, ma)), ga = loss_and_run(lambda p: rollout(geometry, p, x0, n_steps, dt, checkpoint_every=8))
(_, (xb, mb)), gb = loss_and_run(lambda p: sharded_rollout(geometry, p, x0, n_steps, dt, mesh,
                                                           checkpoint_every=8))
out["rollout_max_abs_dx"] = float(jnp.max(jnp.abs(xa - xb)))
# the sharded "autodiff" path (explicit_step on the padded slab), forward only
xc, _ = jax.jit(lambda p: sharded_rollout(geometry, p, x0, n_steps, dt, mesh, adjoint="autodiff"))(params)
out["rollout_autodiff_max_abs_dx"] = float(jnp.max(jnp.abs(xa - xc)))
out["rollout_max_abs_dmean"] = float(jnp.max(jnp.abs(ma - mb)))
out["rollout_x_spread"] = float(jnp.max(xb) - jnp.min(jnp.where(inside, xb, 1.0)))
out["rollout_sharded_slabs"] = len({s.index[0].start for s in xb.addressable_shards})
# Li balance: Σx grows by Δt Σ s per step exactly (the operator conserves Σx), in float64
src = np.asarray(kd.surface_flux_rate(params.flux_mol_m2_s, geometry.face_count, params.c_max_mol_m3, h),
                 np.float64)
gained = float(np.sum(np.asarray(xb, np.float64)[inside]) - np.sum(np.asarray(x0, np.float64)[inside]))
expected = n_steps * dt * float(np.sum(src[inside]))
out["rollout_li_balance_rel_err"] = abs(gained - expected) / expected
out["grad_rel_diff_diffusivity"] = float(jnp.max(jnp.abs(ga[0] - gb[0])) / jnp.max(jnp.abs(ga[0])))
out["grad_rel_diff_flux"] = float(jnp.abs(ga[1] - gb[1]) / jnp.abs(ga[1]))
lap("rollout_and_gradient")

# --- the rate alone, 3D and 2D (the 2D in-plane tensor block), against the kernel --------
rate_err = 0.0
for grid_id, field, ndim in ((geometry.grain_id, xa, 3), (geometry.grain_id[:, :, 5], xa[:, :, 5], 2)):
    table = kd.tensor_components(kd.grain_diffusion_tensors(quaternion_to_matrix(params.orientations),
                                                            params.diffusivity_m2_s, ndim))
    r1 = jax.jit(lambda f, g, t: kd.diffusion_rate(f, g, t, h))(field, grid_id, table)
    r4 = jax.jit(lambda f, g, t: ks.sharded_diffusion_rate(f, g, t, h, mesh))(field, grid_id, table)
    rate_err = max(rate_err, float(jnp.max(jnp.abs(r1 - r4)) / jnp.max(jnp.abs(r1))))
out["rate_rel_diff_3d_2d"] = rate_err

# --- conduction: operator (ring halo) and Jacobi PCG -----------------------------------
cshape = (16, 10, 8)
sigma = jnp.asarray(np.where(rng.random(cshape) < 0.7, 10 ** rng.uniform(-2, 0, cshape), 0.0), jnp.float32)
opts = {"axis": 1, "lateral": "periodic", "value_lo": 0.0, "value_hi": 1.0, "rtol": 1e-6, "preconditioner": "jacobi"}
s1 = kc.solve_potential(sigma, 1e-6, **opts)
s4 = ks.sharded_solve_potential(sigma, 1e-6, mesh=mesh, **opts)
out["solve_max_abs_dphi_V"] = float(jnp.max(jnp.abs(s1.phi - s4.phi)))
out["solve_iterations"] = [int(s1.iterations), int(s4.iterations)]
out["solve_converged"] = bool(s4.converged)
i_lo, i_hi = kc.boundary_currents(s4.phi, sigma, 1e-6, axis=1, value_lo=0.0, value_hi=1.0,
                                  connected=s4.connected)
out["solve_current_balance_rel"] = float(jnp.abs(i_lo + i_hi) / jnp.abs(i_lo))
lap("conduction")

# --- elasticity: FFT-Galerkin with the slab FFT ------------------------------------------
eshape = (8, 8, 6)
q = unit_quaternions(3)
t0 = kst.grain_stiffness_table(q, kst.hexagonal_stiffness(250e9, 90e9, 40e9, 110e9, 30e9))
t1 = kst.grain_stiffness_table(q, kst.hexagonal_stiffness(280e9, 100e9, 70e9, 230e9, 70e9))
ex = kst.grain_expansion_table(q, jnp.array([0.028, 0.028, -0.04]))
pidx = jnp.asarray(rng.integers(0, 3, eshape), jnp.int32)
xe = jnp.asarray(rng.random(eshape), jnp.float32)
eopts = {"expansion_table": ex, "macro_stress": jnp.zeros(6), "x_ref": 0.5}
e1 = ke.solve_elasticity(t0, t1, pidx, xe, **eopts)
e4 = ks.sharded_solve_elasticity(t0, t1, pidx, xe, mesh=mesh, **eopts)
out["elasticity_stress_rel_diff"] = float(jnp.max(jnp.abs(e1.stress - e4.stress)) / jnp.max(jnp.abs(e1.stress)))
out["elasticity_iterations"] = [int(e1.iterations), int(e4.iterations)]
out["elasticity_converged"] = bool(e4.converged)
out["elasticity_mean_stress_Pa"] = float(jnp.max(jnp.abs(e4.mean_stress)))
out["elasticity_max_stress_Pa"] = float(jnp.max(jnp.abs(e4.stress)))
lap("elasticity")

# --- bad input: a grid that does not split into equal slabs ------------------------------
try:
    sharded_rollout(ParticleGeometry(jnp.zeros((10, 4, 4), jnp.int32), jnp.zeros((10, 4, 4)), h), params,
                    jnp.zeros((10, 4, 4)), 16, dt, mesh)
    out["bad_shape_error"] = None
except ConfigError as err:
    out["bad_shape_error"] = str(err)

print(json.dumps(out))

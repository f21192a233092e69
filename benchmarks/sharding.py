"""Weak scaling of the slab-decomposed solvers on 1, 2, 4, ... devices.

Run:  python benchmarks/sharding.py [--devices 4] [--slab 16] [--size 48] [--steps 16]

Every device holds a slab of ``slab × size × size`` voxels; with p devices the grid is
``(p·slab) × size × size``. For each p the script times (best of 3 after a compile):

* ``diffusion_step``: one explicit step of the particle rollout on slabs
  (kernels.sharded.sharded_explicit_rollout, ``--steps`` steps per call), a
  polycrystalline particle filling the grid (grain ids from a Voronoi tessellation);
* ``conduction_matvec``: the face-conductance operator on slabs (ring halo);
* ``conduction_pcg_iteration``: one Jacobi-PCG iteration on slabs (matvec + 3 psum
  dot products; a fixed 20 iterations per call);
* ``elasticity_cg_iteration``: one FFT-Galerkin CG iteration with the slab FFT
  (difference of maxiter = 22 and 2 solves, divided by 20; best of 5 each).

Weak-scaling efficiency = t(1 device) / t(p devices) at equal work per device (1 is
ideal). It also records XLA's compiled memory estimate per device (arguments +
outputs + temporaries) and divides it by the voxels per device, and the same estimate
for the single-device solvers on a ``--memory-size``³ grid (compiled from abstract
shapes, nothing allocated): particle rollout forward and gradient, conduction solve
(FFT and Jacobi preconditioners), elasticity solve; and of the sharded solvers on the
same grid split over all devices (bytes per device and voxel held). docs/sharding.md turns these into
the largest grids per device.

On a CPU the "devices" are simulated (``--xla_force_host_platform_device_count``):
they share the machine's cores and memory, so p simulated devices on a 2-core CPU
do p times the work with the same 2 cores and the efficiency is expected to fall
like 1/p from compute alone; the numbers show the overhead of the decomposition
(halo copies, collectives, scheduling), not the scaling on real devices. On a node
with several GPUs the same script measures real weak scaling.
Results go to benchmarks/results/sharding_<device>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=4, help="largest device count (simulated on CPU)")
    ap.add_argument("--slab", type=int, default=16, help="planes per device along axis 0")
    ap.add_argument("--size", type=int, default=48, help="grid size along axes 1 and 2")
    ap.add_argument("--steps", type=int, default=16, help="diffusion steps per timed call")
    ap.add_argument("--memory-size", type=int, default=128,
                    help="n of the n³ grid for the single-device memory estimates (0: skip)")
    return ap.parse_args()


args = _parse()
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, time_call, write_result  # noqa: E402
from ssbx.kernels import conduction as kc  # noqa: E402
from ssbx.kernels import diffusion as kd  # noqa: E402
from ssbx.kernels import elasticity as ke  # noqa: E402
from ssbx.kernels import sharded as ks  # noqa: E402
from ssbx.kernels import stiffness as kst  # noqa: E402
from ssbx.kernels.rotations import quaternion_to_matrix  # noqa: E402


def voronoi_grains(shape, n_grains, rng):
    """Grain ids of a Voronoi tessellation (nearest random seed), −1 outside an ellipsoid."""
    seeds = rng.random((n_grains, 3)) * np.array(shape)
    idx = np.stack(np.indices(shape), axis=-1).reshape(-1, 3).astype(np.float32)
    gid = np.empty(len(idx), np.int32)
    for s in range(0, len(idx), 65536):
        d = ((idx[s:s + 65536, None, :] - seeds[None]) ** 2).sum(-1)
        gid[s:s + 65536] = d.argmin(1)
    gid = gid.reshape(shape)
    c = (np.array(shape) - 1) / 2
    r = sum(((np.indices(shape)[a] - c[a]) / (0.5 * shape[a] - 1)) ** 2 for a in range(3))
    return np.where(r <= 1.0, gid, -1)


def memory_bytes(compiled):
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def measure(p, rng):
    mesh = ks.slab_mesh(p)
    shape = (p * args.slab, args.size, args.size)
    voxels_per_device = args.slab * args.size * args.size
    grid = ks.slab_sharding(mesh)
    out = {"devices": p, "shape": list(shape), "voxels_per_device": voxels_per_device}

    # diffusion
    gid = jax.device_put(jnp.asarray(voronoi_grains(shape, 8 * p, rng)), grid)
    q = rng.standard_normal((8 * p, 4))
    q = jnp.asarray(q / np.linalg.norm(q, axis=1, keepdims=True), jnp.float32)
    table = kd.tensor_components(kd.grain_diffusion_tensors(
        quaternion_to_matrix(q), jnp.asarray([5e-15, 5e-15, 1e-16], jnp.float32), 3))
    h = 1e-7
    dt = kd.stable_time_step(5e-15, h, 3)
    x0 = jax.device_put(jnp.where(gid >= 0, 0.5, 0.0).astype(jnp.float32), grid)
    src = jax.device_put(jnp.zeros(shape, jnp.float32), grid)
    roll = _compiled(lambda x: ks.sharded_explicit_rollout(x, gid, table, h, dt, args.steps, mesh, src)[0], x0)
    out["diffusion_step_s"] = time_call(roll, x0) / args.steps
    out["diffusion_bytes_per_voxel"] = _per_voxel(memory_bytes(roll), voxels_per_device)

    # conduction operator and PCG iterations
    sigma = jnp.where(gid >= 0, 1.0, 1e-3).astype(jnp.float32)
    g = tuple(jax.device_put(a, grid) for a in kc.face_conductances(sigma, 0, "noflux"))
    gb = jax.device_put(jnp.zeros(shape, jnp.float32), grid)
    v = jax.device_put(jnp.asarray(rng.standard_normal(shape), jnp.float32), grid)
    mv = _compiled(lambda u: ks.sharded_apply_operator(u, g, gb, mesh), v)
    out["conduction_matvec_s"] = time_call(mv, v)
    b = jax.device_put(jnp.asarray(rng.standard_normal(shape), jnp.float32), grid)
    n_it = 20
    pcg = _compiled(lambda rhs: ks._sharded_pcg(rhs, jnp.zeros_like(rhs), g, gb + 1e-3, jnp.zeros_like(rhs),
                                                True, 0.0, 0.0, n_it, mesh, ks.SLAB)[0], b)
    out["conduction_pcg_iteration_s"] = time_call(pcg, b) / n_it
    out["conduction_pcg_bytes_per_voxel"] = _per_voxel(memory_bytes(pcg), voxels_per_device)

    # elasticity: CG iterations of the FFT-Galerkin solver with the slab FFT
    if args.size % p == 0:
        t0 = kst.grain_stiffness_table(q, kst.hexagonal_stiffness(250e9, 90e9, 40e9, 110e9, 30e9))
        t1 = kst.grain_stiffness_table(q, kst.hexagonal_stiffness(280e9, 100e9, 70e9, 230e9, 70e9))
        ex = kst.grain_expansion_table(q, jnp.array([0.028, 0.028, -0.04]))
        idx = jnp.maximum(gid, 0)
        xe = jax.device_put(jnp.asarray(rng.random(shape), jnp.float32), grid)

        def solve(maxiter):
            f = _compiled(lambda xx: ks.sharded_solve_elasticity(
                t0, t1, idx, xx, mesh=mesh, expansion_table=ex, tol=1e-30, maxiter=maxiter).stress, xe)
            return f, time_call(f, xe, repeats=5)

        _, t_short = solve(2)
        f_long, t_long = solve(22)
        out["elasticity_cg_iteration_s"] = max(t_long - t_short, 0.0) / 20
        out["elasticity_bytes_per_voxel"] = _per_voxel(memory_bytes(f_long), voxels_per_device)
    return out


def single_device_memory(n, rng):
    """XLA's compiled memory estimate (bytes per voxel) of the single-device solvers on n³.

    Compiled from abstract shapes only (``jax.ShapeDtypeStruct``): nothing of size n³ is
    allocated, so n can exceed the machine's memory.
    """
    from ssbx.engine.model.particle import ParticleGeometry, TransportParams, rollout

    shape = (n, n, n)
    f32 = jax.ShapeDtypeStruct(shape, jnp.float32)
    i32 = jax.ShapeDtypeStruct(shape, jnp.int32)
    q = jnp.asarray(np.tile([1.0, 0.0, 0.0, 0.0], (8, 1)), jnp.float32)
    params = TransportParams(jnp.asarray([5e-15, 5e-15, 1e-16], jnp.float32), q, jnp.asarray(1e-4, jnp.float32),
                             jnp.asarray(5e4, jnp.float32))
    dt = kd.stable_time_step(5e-15, 1e-7, 3)
    out = {"n": n}

    def forward(gid, faces, x0):
        geo = ParticleGeometry(gid, faces, 1e-7)
        return rollout(geo, params, x0, 16, dt, adjoint="autodiff")[0]

    def gradient(gid, faces, x0):
        geo = ParticleGeometry(gid, faces, 1e-7)

        def loss(d):
            p = TransportParams(d, params.orientations, params.flux_mol_m2_s, params.c_max_mol_m3)
            return jnp.sum(rollout(geo, p, x0, 256, dt, checkpoint_every=16)[0] ** 2)
        return jax.grad(loss)(params.diffusivity_m2_s)

    out["particle_forward"] = forward, (i32, f32, f32)
    out["particle_gradient_256_steps_k16"] = gradient, (i32, f32, f32)
    for pre in ("fft", "jacobi"):
        out[f"conduction_solve_{pre}"] = (
            lambda sig, pre=pre: kc.solve_potential(sig, 1e-6, value_hi=1.0, preconditioner=pre).phi, (f32,))
    t = kst.grain_stiffness_table(q, kst.hexagonal_stiffness(250e9, 90e9, 40e9, 110e9, 30e9))
    ex = kst.grain_expansion_table(q, jnp.array([0.028, 0.028, -0.04]))
    out["elasticity_solve"] = (lambda idx, x: ke.solve_elasticity(t, t, idx, x, expansion_table=ex).stress,
                               (i32, f32))
    result = {"n": n}
    for name, value in out.items():
        if name == "n":
            continue
        fn, shapes = value
        result[name] = _per_voxel(memory_bytes(jax.jit(fn).lower(*shapes).compile()), n ** 3)
        print(name, result[name], flush=True)
    return result


def sharded_memory(n, p):
    """XLA's memory estimate per device and voxel of the sharded solvers on n³ over p devices
    (abstract shapes, nothing allocated)."""
    from ssbx.engine.model.particle import ParticleGeometry, TransportParams
    from ssbx.engine.solve.sharded_particle import sharded_rollout

    mesh = ks.slab_mesh(p)
    shape = (n, n, n)
    grid = ks.slab_sharding(mesh)
    f32 = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=grid)
    i32 = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=grid)
    q = jnp.asarray(np.tile([1.0, 0.0, 0.0, 0.0], (8, 1)), jnp.float32)
    params = TransportParams(jnp.asarray([5e-15, 5e-15, 1e-16], jnp.float32), q, jnp.asarray(1e-4, jnp.float32),
                             jnp.asarray(5e4, jnp.float32))
    dt = kd.stable_time_step(5e-15, 1e-7, 3)

    def forward(gid, faces, x0):
        return sharded_rollout(ParticleGeometry(gid, faces, 1e-7), params, x0, 16, dt, mesh)[0]

    def gradient(gid, faces, x0):
        def loss(d):
            pp = TransportParams(d, params.orientations, params.flux_mol_m2_s, params.c_max_mol_m3)
            x = sharded_rollout(ParticleGeometry(gid, faces, 1e-7), pp, x0, 256, dt, mesh, checkpoint_every=16)[0]
            return jnp.sum(x ** 2)
        return jax.grad(loss)(params.diffusivity_m2_s)

    t = kst.grain_stiffness_table(q, kst.hexagonal_stiffness(250e9, 90e9, 40e9, 110e9, 30e9))
    ex = kst.grain_expansion_table(q, jnp.array([0.028, 0.028, -0.04]))
    cases = {
        "particle_forward": (forward, (i32, f32, f32)),
        "particle_gradient_256_steps_k16": (gradient, (i32, f32, f32)),
        "conduction_solve_jacobi": (lambda sig: ks.sharded_solve_potential(sig, 1e-6, mesh=mesh, value_hi=1.0).phi,
                                    (f32,)),
        "elasticity_solve": (lambda idx, x: ks.sharded_solve_elasticity(t, t, idx, x, mesh=mesh,
                                                                        expansion_table=ex).stress, (i32, f32)),
    }
    result = {"n": n, "devices": p}
    for name, (fn, shapes) in cases.items():
        result[name] = _per_voxel(memory_bytes(jax.jit(fn).lower(*shapes).compile()), n ** 3 // p)
        print("sharded", p, name, result[name], flush=True)
    return result


def _compiled(fn, *example):
    """Ahead-of-time compiled ``fn`` (timed and asked for its memory estimate)."""
    return jax.jit(fn).lower(*example).compile()


def _per_voxel(n_bytes, voxels):
    return None if n_bytes is None else round(n_bytes / voxels, 1)


def main():
    rng = np.random.default_rng(0)
    counts = [p for p in (1, 2, 4, 8, 16) if p <= min(args.devices, jax.device_count())]
    rows = []
    start = time.perf_counter()
    for p in counts:
        row = measure(p, rng)
        rows.append(row)
        print(row, flush=True)
    for key in ("diffusion_step_s", "conduction_matvec_s", "conduction_pcg_iteration_s",
                "elasticity_cg_iteration_s"):
        base = rows[0].get(key)
        for row in rows:
            if base and row.get(key):
                row[key[:-2] + "_weak_efficiency"] = round(base / row[key], 3)
    info = device_info()
    memory = single_device_memory(args.memory_size, rng) if args.memory_size else None
    sharded = sharded_memory(args.memory_size, counts[-1]) if args.memory_size else None
    payload = {
        "single_device_bytes_per_voxel": memory,
        "sharded_bytes_per_device_voxel": sharded,
        "device": info,
        "simulated_devices": info["platform"] == "cpu",
        "note": ("CPU devices are simulated and share the host's cores: efficiency is expected "
                 "to fall like 1/p from compute alone; only indicative of the decomposition's "
                 "overhead" if info["platform"] == "cpu" else "real devices"),
        "slab": args.slab, "size": args.size, "steps": args.steps,
        "rows": rows,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print("wrote", write_result("sharding", payload))


if __name__ == "__main__":
    main()

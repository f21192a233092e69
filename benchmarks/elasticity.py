"""Elasticity solver: time per solve, CG iterations, achieved GB/s, contrast sweep.

Run:  python benchmarks/elasticity.py [--sizes 64 128] [--contrast-size 64]

1. Polycrystal: an n³ box holding a polycrystalline NCM particle (radius n/2 − 2.5
   voxels, ~100 grains per 64³, random orientations, default NCM constants and
   β = (0.028, 0.028, −0.040)) in an ECBD matrix (label 4), with a parabolic Li
   profile x = 0.4 + 0.5 (r/R)² and zero mean stress in all six components
   (free expansion). One solve at tol = 1e-5, float32.
2. Contrast sweep (``--contrast-size``): two-phase isotropic composite of random
   non-overlapping-ish spheres (volume fraction ≈ 0.2, E_matrix = 100 GPa, ν = 0.3)
   with inclusion modulus E_matrix / contrast for contrast 1, 10, 100, 1000 and
   a pore (zero stiffness, floor 1e-6), under a mean uniaxial strain ε_xx = 1e-3.

Memory traffic model (a lower bound for perfect fusion) per CG iteration and voxel,
float32: matvec reads u (3), phase index (1), x (1) and writes the nodal force (3);
the stress field (6) is written and re-read once between the stiffness and the
divergence (12); the preconditioner's 3 forward + 3 inverse real FFTs read and write
3 real and 3 half-spectrum complex fields each way (≈ 18); the CG updates touch
x, r, p, z, Ap (3 components each, ≈ 10 reads/writes = 30). Total ≈ 68 floats =
272 B per voxel and iteration. Achieved GB/s = 272 B × voxels × iterations / time.
Results: benchmarks/results/elasticity_<device>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, measured_copy_bandwidth_GBs, write_result  # noqa: E402

from ssbx.engine.materials.elastic import build_phase_tables  # noqa: E402
from ssbx.engine.geometry.microstructure import polycrystalline_particle  # noqa: E402
from ssbx.kernels.elasticity import solve_elasticity, von_mises  # noqa: E402
from ssbx.kernels.stiffness import isotropic_stiffness  # noqa: E402

BYTES_PER_VOXEL_ITER = 272


def _timed(fn, repeats=3):
    """(best seconds, result) of fn() after one warm-up (compile) call."""
    out = jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_polycrystal(n: int, grains_per_64: int = 100) -> dict:
    h = 1e-7
    radius_vox = n / 2 - 2.5
    micro = polycrystalline_particle(
        radius_m=radius_vox * h, voxel_size_m=h,
        n_grains=max(1, grains_per_64 * (n // 64) ** 3), seed=0,
    )
    tabs = build_phase_tables(micro.labels, micro.grain_id, micro.orientations)
    c = np.arange(n) + 0.5 - n / 2
    xx, yy, zz = np.meshgrid(c, c, c, indexing="ij")
    r = np.sqrt(xx**2 + yy**2 + zz**2)
    x = jnp.asarray(np.where(micro.active, 0.4 + 0.5 * (r / radius_vox) ** 2, 0.0), jnp.float32)
    idx = jnp.asarray(tabs.phase_index)
    t0, t1, ex = (jnp.asarray(a, jnp.float32) for a in (tabs.table0, tabs.table1, tabs.expansion))

    def solve():
        return solve_elasticity(t0, t1, idx, x, expansion_table=ex, x_ref=0.9,
                                macro_stress=np.zeros(6), tol=1e-5, maxiter=5000)

    t_compile = time.perf_counter()
    jax.block_until_ready(solve())
    t_compile = time.perf_counter() - t_compile
    seconds, res = _timed(solve)
    iters = int(res.iterations)
    vm = np.asarray(von_mises(res.stress))[np.asarray(micro.active)]
    return {
        "n": n,
        "voxels": n**3,
        "n_grains": int(micro.n_grains),
        "active_fraction": float(np.mean(micro.active)),
        "first_call_seconds_incl_compile": t_compile,
        "seconds_per_solve": seconds,
        "cg_iterations": iters,
        "residual": float(res.residual),
        "seconds_per_iteration": seconds / max(iters, 1),
        "achieved_GBs_model": BYTES_PER_VOXEL_ITER * n**3 * iters / seconds / 1e9,
        "max_von_mises_active_MPa": float(vm.max() / 1e6),
    }


def two_phase_spheres(n: int, fraction: float = 0.2, radius: float = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    radius = radius or n / 10
    inc = np.zeros((n, n, n), bool)
    c = np.arange(n)
    while inc.mean() < fraction:
        p = rng.uniform(0, n, 3)
        d2 = 0
        for ax, pc in enumerate(p):
            d = np.abs(c - pc)
            d = np.minimum(d, n - d)  # periodic distance
            shape = [1, 1, 1]
            shape[ax] = n
            d2 = d2 + (d**2).reshape(shape)
        inc |= d2 < radius**2
    return inc


def bench_contrast(n: int) -> list[dict]:
    inc = two_phase_spheres(n)
    idx = jnp.asarray(inc.astype(np.int32))
    x = jnp.zeros((n, n, n), jnp.float32)
    cm = np.asarray(isotropic_stiffness(100e9, 0.3), np.float64)
    out = []
    for contrast in (1, 10, 100, 1000, "pore"):
        ci = np.zeros((6, 6)) if contrast == "pore" else cm / contrast
        t = jnp.asarray(np.stack([cm, ci]), jnp.float32)

        def solve():
            return solve_elasticity(t, t, idx, x, macro_strain=np.array([1e-3, 0, 0, 0, 0, 0]),
                                    tol=1e-5, maxiter=10000)

        seconds, res = _timed(solve, repeats=1)
        out.append({
            "contrast": contrast,
            "inclusion_fraction": float(inc.mean()),
            "cg_iterations": int(res.iterations),
            "residual": float(res.residual),
            "seconds_per_solve": seconds,
            "effective_C11_GPa": float(res.mean_stress[0] / 1e-3 / 1e9),
        })
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    gpu = jax.devices()[0].platform == "gpu"
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256] if gpu else [64, 128])
    ap.add_argument("--contrast-size", type=int, default=64)
    args = ap.parse_args(argv)
    info = device_info()
    payload = {
        "benchmark": "elasticity",
        "device": info,
        "dtype": "float32",
        "tol": 1e-5,
        "bytes_per_voxel_iteration_model": BYTES_PER_VOXEL_ITER,
        "measured_stream_bandwidth_GBs": measured_copy_bandwidth_GBs(),
        "polycrystal": [],
        "contrast_sweep": {"n": args.contrast_size, "results": []},
    }
    for n in args.sizes:
        row = bench_polycrystal(n)
        payload["polycrystal"].append(row)
        print(f"{n}^3 polycrystal: {row['seconds_per_solve']:.3f} s/solve, "
              f"{row['cg_iterations']} it, {row['achieved_GBs_model']:.2f} GB/s (model)", flush=True)
    payload["contrast_sweep"]["results"] = bench_contrast(args.contrast_size)
    for row in payload["contrast_sweep"]["results"]:
        print(f"contrast {row['contrast']}: {row['cg_iterations']} it, "
              f"{row['seconds_per_solve']:.3f} s", flush=True)
    path = write_result("elasticity", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Potential (conduction) solve: wall time and PCG iterations vs contrast and grid size.

Run:  python benchmarks/potentials.py [--sizes 32 64 128] [--contrasts 1 1e2 1e4 1e6]
                                     [--preconditioners jacobi fft multigrid]
                                     [--multigrid-max-n 256]

Problem: a two-phase voxel structure n³ (volume fraction 1/2) made by thresholding a
Gaussian-filtered white noise (correlation length ~2 voxels, periodic filter, seed 0),
phase A σ = 1 S/m, phase B σ = 1/contrast S/m (contrast 1 = homogeneous), unit
potential drop along x (Dirichlet faces), no-flux lateral faces, float32,
rtol = 1e-6 on the scaled residual, zero initial guess. One solve includes the
connectivity flood fill and, for multigrid, the hierarchy set-up. Time = best of
``--repeats`` calls after one compile call; compile time is reported separately.

Achieved bandwidth model: one PCG iteration streams at least ~ (σ-derived face
conductances 3 + boundary 1 + x, r, z, p, Ap 5) × 4 B = 36 B per voxel for the
operator and vector updates; the preconditioner adds to that. Reported as
GB/s = 36 B × voxels × iterations / time (a lower bound on traffic).
Results go to benchmarks/results/potentials_<device>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, write_result  # noqa: E402

from ssbx.kernels.conduction import solve_potential  # noqa: E402

BYTES_PER_VOXEL_ITER = 36


def structure(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((n, n, n)), 2.0, mode="wrap")
    return field > np.median(field)


def bench(n, contrasts, preconditioners, repeats, maxiter):
    phase = structure(n)
    rows = []
    for pc in preconditioners:
        solve = jax.jit(
            lambda s, pc=pc: solve_potential(
                s, 1e-6, value_lo=1.0, value_hi=0.0, rtol=1e-6, maxiter=maxiter, preconditioner=pc
            )
        )
        compiled = None
        for contrast in contrasts:
            sigma = jnp.asarray(np.where(phase, 1.0, 1.0 / contrast), jnp.float32)
            if compiled is None:
                t0 = time.perf_counter()
                compiled = solve.lower(sigma).compile()
                compile_s = time.perf_counter() - t0
            jax.block_until_ready(compiled(sigma))
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                sol = jax.block_until_ready(compiled(sigma))
                best = min(best, time.perf_counter() - t0)
            it = int(sol.iterations)
            row = {
                "n": n,
                "voxels": n**3,
                "contrast": contrast,
                "preconditioner": pc,
                "iterations": it,
                "relative_residual": float(sol.residual),
                "converged": bool(sol.converged),
                "time_per_solve_s": best,
                "time_per_iteration_ms": 1e3 * best / max(it, 1),
                "compile_s": compile_s,
                "achieved_GBs_lower_bound": BYTES_PER_VOXEL_ITER * n**3 * it / best / 1e9,
            }
            rows.append(row)
            print(
                f"n={n:4d} contrast={contrast:8.0e} {pc:9s} iters={it:5d} "
                f"res={row['relative_residual']:.2e} conv={row['converged']} "
                f"t={best:8.3f}s ({row['time_per_iteration_ms']:.2f} ms/it) compile={compile_s:.1f}s",
                flush=True,
            )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--contrasts", type=float, nargs="+", default=[1.0, 1e2, 1e4, 1e6])
    p.add_argument("--preconditioners", nargs="+", default=["jacobi", "fft", "multigrid"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--maxiter", type=int, default=20000)
    p.add_argument("--multigrid-max-n", type=int, default=256,
                   help="skip the multigrid preconditioner above this n")
    args = p.parse_args(argv)
    info = device_info()
    rows = []
    for n in args.sizes:
        pcs = [pc for pc in args.preconditioners if pc != "multigrid" or n <= args.multigrid_max_n]
        rows.extend(bench(n, args.contrasts, pcs, args.repeats, args.maxiter))
    payload = {
        "benchmark": "potentials",
        "device": info,
        "dtype": "float32",
        "rtol": 1e-6,
        "structure": "thresholded Gaussian-filtered noise (sigma 2 voxels), volume fraction 0.5",
        "note": "CPU runs share 2 cores with other jobs; times are indicative" if info["platform"] == "cpu" else "",
        "results": rows,
    }
    path = write_result("potentials", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""How large a tortuosity volume fits one device, and the lean solver's cost per iteration there
(issue 14, item 3: "1000³ fits one H200").

Run:  python benchmarks/tortuosity_large.py --sizes 512 768 1000          # GPU
      python benchmarks/tortuosity_large.py --sizes 64 96 --iters 20 60   # CPU check

For each edge n (ascending, in one process) it builds an n³ two-phase volume by tiling a
256³ (or smaller) anisotropic blob volume of 30 % conducting fraction (the generator of
benchmarks/taufactor_comparison.py), reduced to its voxels connected to the tile's two
faces normal to axis 0 (``connected_mask``, as ``tortuosity()`` does for a whole volume).
Tiling keeps the per-iteration work of a realistic volume without filtering and labelling
n³ voxels on the host (a 1000³ labelling alone takes minutes); clusters that the tiling
leaves floating carry zero residual and change no cost. It runs the lean solver
(``kernels.transport_lean.lean_transport_solve``: binary mask, Jacobi PCG, float32, the
default of ``tortuosity()``) for exactly ``--iters`` iterations twice (residual criterion
at an unreachable tolerance), so that

    seconds per iteration = (t(iters₂) − t(iters₁)) / (iters₂ − iters₁)

excludes compilation, set-up and the final current evaluation. It records the device's
peak memory in use (``memory_stats()["peak_bytes_in_use"]`` on GPU; VmHWM of the process
on CPU) after each size, and divides it by n³: the bytes per voxel the solver needs,
the 1-byte mask and the float32 potential included. Sizes run in ascending order, so the
peak after size n is that of size n. A size that does not fit is recorded as such and
ends the sweep.

It does not solve to convergence (the full solves at 128³–512³ against TauFactor are in
benchmarks/tortuosity_vs_taufactor.py); the time of a full solve at n³ is about this
cost per iteration times the iterations the flux criterion needs (reported there).
Results go to benchmarks/results/tortuosity_large_<device>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, write_result  # noqa: E402
from taufactor_comparison import blobs  # noqa: E402


def peak_bytes():
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0]
    return int(hwm.split()[1]) * 1024, "process VmHWM"


def tiled_volume(tile, n):
    reps = -(-n // tile.shape[0])
    return np.ascontiguousarray(np.tile(tile, (reps, reps, reps))[:n, :n, :n])


def timed_solve(mask, iters):
    from ssbx.kernels.transport_lean import lean_transport_solve

    t0 = time.perf_counter()
    sol = lean_transport_solve(mask, rtol=1e-30, binary=True, preconditioner="jacobi",
                               criterion="residual", check_every=10, maxiter=iters)
    jax.block_until_ready(sol.phi)
    return time.perf_counter() - t0, int(sol.iterations)


def main(argv=None):
    from ssbx.engine.observables.tortuosity_lean import connected_mask

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 768, 1000])
    p.add_argument("--iters", type=int, nargs=2, default=[100, 300])
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args(argv)
    i1, i2 = args.iters
    info = device_info()
    tile = blobs(min(args.tile, max(args.sizes)), 0.30, (1.5, 1.5, 6.0), args.seed)
    tile = connected_mask(tile.astype(bool)).astype(np.uint8)
    rows = []
    payload = {"benchmark": "tortuosity_large", "device": info,
               "settings": {"solver": "lean_transport_solve, binary mask, Jacobi PCG, float32",
                            "volume": f"tiles of a {tile.shape[0]}^3 anisotropic blob volume "
                                      "(30 % conducting, filter 1.5/1.5/6 voxels), each tile "
                                      "reduced to its part connected to its faces normal to axis 0",
                            "iters": [i1, i2], "load_average": os.getloadavg()},
               "results": rows}
    for n in sorted(args.sizes):
        row = {"n": n, "voxels": n ** 3}
        try:
            t0 = time.perf_counter()
            live = tiled_volume(tile, n)
            row["host_setup_s"] = time.perf_counter() - t0
            row["live_fraction"] = float(live.mean())
            mask = jnp.asarray(live)
            del live
            # first call compiles; then the two timed lengths (each compiled once, cached)
            timed_solve(mask, i1)
            t1, k1 = timed_solve(mask, i1)
            timed_solve(mask, i2)
            t2, k2 = timed_solve(mask, i2)
            peak, how = peak_bytes()
            per_it = (t2 - t1) / (k2 - k1)
            row.update(iterations=[k1, k2], seconds=[t1, t2], seconds_per_iteration=per_it,
                       voxel_iterations_per_s=n ** 3 / per_it, peak_bytes=peak,
                       peak_bytes_per_voxel=peak / n ** 3, peak_measured_as=how, fits=True)
            print(f"{n}^3: {per_it * 1e3:.2f} ms/iteration, {n ** 3 / per_it / 1e9:.2f} G voxel-it/s, "
                  f"peak {peak / 2**30:.1f} GiB = {peak / n ** 3:.1f} B/voxel ({how})", flush=True)
            del mask
        except Exception as exc:  # noqa: BLE001  (out of memory ends the sweep, recorded)
            row.update(fits=False, error=f"{type(exc).__name__}: {str(exc)[:500]}")
            print(f"{n}^3: failed: {row['error']}", flush=True)
            rows.append(row)
            path = write_result("tortuosity_large", payload)
            break
        rows.append(row)
        path = write_result("tortuosity_large", payload)  # keep what is done if a larger size fails
    print("wrote", path)


if __name__ == "__main__":
    main()

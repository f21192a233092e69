"""Throughput of the anisotropic diffusion step: voxel updates/s and achieved GB/s.

Run:  python benchmarks/diffusion.py [--sizes 64 128 256] [--steps 32]

For each cubic grid n³ the box is filled by a polycrystalline particle (radius
n/2 − 2.5 voxels, NCM622 diffusivities, 1C delithiation flux) and the same jitted,
checkpointed scan the engine uses advances ``--steps`` explicit steps. A voxel update
is one voxel advanced by one step (all n³ voxels count, as the kernel touches all).

Memory traffic model (a lower bound for a perfectly fused stencil): per voxel and step
read x, grain id and surface source, write x: 4 × 4 B = 16 B in float32. Achieved
GB/s = 16 B × voxel updates/s; it is compared with the device's peak bandwidth (GPU
vendor figure) and with a measured streaming bandwidth (y = 2x + 1 over 256 MiB).
Results go to benchmarks/results/diffusion_<device>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    benchmark_particle,
    device_info,
    measured_copy_bandwidth_GBs,
    time_call,
    write_result,
)

from ssbx.engine.model.particle import rollout  # noqa: E402
from ssbx.kernels.diffusion import stable_time_step  # noqa: E402

BYTES_PER_VOXEL_STEP = 16


def bench_size(n: int, steps: int, grains_per_64: int = 100) -> dict:
    h = 1e-7
    micro, geometry, params = benchmark_particle(n, max(1, grains_per_64 * (n // 64) ** 3), h)
    dt = stable_time_step(5e-15, h, 3)
    block = min(16, steps)
    # the forward-only path of `ssbx run` (gathers the per-grain tensor inside each step)
    advance = eqx.filter_jit(
        lambda g, p, x: rollout(g, p, x, steps, dt, checkpoint_every=block, adjoint="autodiff")[0])
    x0 = jnp.where(geometry.grain_id >= 0, jnp.float32(0.9), jnp.float32(0.0))
    seconds = time_call(advance, geometry, params, x0)
    updates = n**3 * steps / seconds
    return {
        "n": n,
        "voxels": n**3,
        "active_fraction": float(micro.active.mean()),
        "n_grains": micro.n_grains,
        "steps": steps,
        "seconds": seconds,
        "seconds_per_step": seconds / steps,
        "voxel_updates_per_s": updates,
        "achieved_GBs": updates * BYTES_PER_VOXEL_STEP / 1e9,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args(argv)
    info = device_info()
    stream = measured_copy_bandwidth_GBs()
    rows = []
    for n in args.sizes:
        try:
            row = bench_size(n, args.steps)
        except (MemoryError, RuntimeError) as err:  # out of device memory
            print(f"n = {n}: skipped ({type(err).__name__}: {err})")
            continue
        row["fraction_of_measured_stream_bandwidth"] = row["achieved_GBs"] / stream
        if "peak_bandwidth_GBs" in info:
            row["fraction_of_peak_bandwidth"] = row["achieved_GBs"] / info["peak_bandwidth_GBs"]
        rows.append(row)
        print(
            f"{n:4d}³: {row['voxel_updates_per_s']:.3e} voxel updates/s, {row['achieved_GBs']:.1f} GB/s "
            f"({100 * row['fraction_of_measured_stream_bandwidth']:.0f}% of measured stream "
            f"{stream:.1f} GB/s), {1e3 * row['seconds_per_step']:.2f} ms/step"
        )
    payload = {
        "benchmark": "diffusion",
        "device": info,
        "measured_stream_bandwidth_GBs": stream,
        "bytes_per_voxel_step_model": BYTES_PER_VOXEL_STEP,
        "dtype": "float32",
        "results": rows,
    }
    print("wrote", write_result("diffusion", payload))


if __name__ == "__main__":
    main()

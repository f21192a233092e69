"""Shared helpers for the benchmark scripts: device facts, timing, memory bandwidth."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp

RESULTS = Path(__file__).resolve().parent / "results"

# Vendor peak memory bandwidths (GB/s) of accelerators we expect to run on.
PEAK_BANDWIDTH_GBS = {
    "H100 80GB HBM3": 3350.0,  # H100 SXM5
    "H100": 3350.0,
    "H200": 4800.0,
    "A100-SXM4-80GB": 2039.0,
    "A100": 1555.0,
}


def device_info() -> dict:
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", str(dev))
    info = {
        "platform": dev.platform,
        "device_kind": kind,
        "n_devices": jax.device_count(),
        "jax_version": jax.__version__,
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    for name, peak in PEAK_BANDWIDTH_GBS.items():
        if name in kind:
            info["peak_bandwidth_GBs"] = peak
            break
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_slug(info: dict) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{info['platform']}_{info['device_kind']}").strip("_").lower()


def time_call(fn, *args, repeats: int = 3) -> float:
    """Best wall time of ``fn(*args)`` in seconds, after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def measured_copy_bandwidth_GBs(n_bytes: int = 1 << 28) -> float:
    """Achieved bandwidth of a fused read+write streaming op (y = 2x + 1) in GB/s.

    Serves as the practical memory-bandwidth ceiling on a CPU, where no vendor peak is
    known; on a GPU it is reported beside the vendor peak.
    """
    n = n_bytes // 4
    x = jnp.ones((n,), jnp.float32)
    fn = jax.jit(lambda v: 2.0 * v + 1.0)
    seconds = time_call(fn, x, repeats=5)
    return 2 * n * 4 / seconds / 1e9


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}_{device_slug(payload['device'])}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def benchmark_particle(n: int, n_grains: int, voxel_size_m: float = 1e-7):
    """A polycrystalline NCM622 particle filling an n³ box (radius n/2 − 2.5 voxels),
    1C delithiation flux: (micro, geometry, params) in float32, for the benchmarks."""
    import jax.numpy as jnp

    from ssbx.engine.geometry.microstructure import polycrystalline_particle
    from ssbx.engine.model.particle import ParticleGeometry, TransportParams, galvanostatic_flux

    micro = polycrystalline_particle(radius_m=(n / 2 - 2.5) * voxel_size_m, voxel_size_m=voxel_size_m,
                                     n_grains=n_grains, seed=0)
    assert micro.labels.shape == (n, n, n), micro.labels.shape
    geometry = ParticleGeometry.from_microstructure(micro, jnp.float32)
    c_max = 49214.0
    flux = galvanostatic_flux(1.0, -1.0, c_max, micro.active_volume_m3(), float(geometry.reactive_area_m2))
    params = TransportParams(
        diffusivity_m2_s=jnp.asarray([5e-15, 5e-15, 1e-20], jnp.float32),
        orientations=jnp.asarray(micro.orientations, jnp.float32),
        flux_mol_m2_s=jnp.asarray(flux, jnp.float32),
        c_max_mol_m3=jnp.asarray(c_max, jnp.float32),
    )
    return micro, geometry, params

"""Tortuosity: multigrid-preconditioned CG vs Jacobi-PCG of the lean solver (issue 14, item 3).

On the anisotropic 30 % volumes of ``benchmarks/tortuosity_vs_taufactor.py`` (Gaussian-
filtered noise, widths 1.5/1.5/6 voxels, seed 3; the x axis, the hardest), for every size
and preconditioner, in a fresh Python process each (start-up included, as a user runs it):

* ``tortuosity(vol, {1: 1.0}, 1e-6, axis=0, preconditioner=P)`` with the defaults
  otherwise (float32 lean solver, flux criterion 1e-2): wall time of the first call
  (compilation included) and of a second call (compiled), iterations, τ;
* the process's peak RSS (VmHWM) and bytes per voxel above the same process on 16³;
* the peak RSS of the second call above the RSS just before it (VmHWM reset through
  ``/proc/self/clear_refs``): the memory of one compiled ``tortuosity()`` call, host
  arrays included, without the compiler's share;
* XLA's own count for the compiled solver: ``lean_transport_solve.lower(...).compile()
  .memory_analysis()`` (temporaries + arguments + outputs) per voxel;
* τ's relative difference to an over-converged reference (multigrid PCG, criterion
  "residual", rtol 1e-6, in this process; not timed).

Writes benchmarks/results/tortuosity_multigrid_<device>.json. Usage::

    python benchmarks/tortuosity_multigrid.py --sizes 64 128 256 [--mg-only-sizes 500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, device_info, device_slug  # noqa: E402
from taufactor_comparison import blobs  # noqa: E402

RUNNER = r"""
import json, sys, time
t0 = time.perf_counter()
path, pre, measure_mem = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
import numpy as np
import jax, jax.numpy as jnp
from ssbx.engine.observables.tortuosity import tortuosity
vol = np.load(path)


def status(key):
    return int([ln for ln in open("/proc/self/status") if ln.startswith(key)][0].split()[1]) * 1024


calls = []
hwm = 0
second_call = None
for rep in range(2):
    if rep == 1:  # peak of the second (compiled) call above the RSS just before it
        hwm = status("VmHWM")
        try:
            open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to VmRSS
            rss_before = status("VmRSS")
        except OSError:
            rss_before = None
    t = time.perf_counter()
    r = tortuosity(vol, {1: 1.0}, 1e-6, axis=0, preconditioner=pre, maxiter=100000)
    calls.append({"seconds": time.perf_counter() - t, "iterations": r.iterations,
                  "tau": r.tortuosity, "converged": r.converged,
                  "flux_imbalance": r.flux_imbalance})
    if rep == 1 and rss_before is not None:
        second_call = {"rss_before": rss_before, "peak": status("VmHWM")}
wall = time.perf_counter() - t0
hwm = max(hwm, status("VmHWM"))
mem = None
if measure_mem:
    from ssbx.kernels.transport_lean import lean_transport_solve
    s = jax.ShapeDtypeStruct(vol.shape, jnp.uint8)
    ma = lean_transport_solve.lower(s, rtol=1e-6, flux_tol=1e-2, binary=True,
                                    preconditioner=pre, criterion="flux", check_every=10,
                                    maxiter=100000).compile().memory_analysis()
    mem = {"temp": ma.temp_size_in_bytes, "argument": ma.argument_size_in_bytes,
           "output": ma.output_size_in_bytes}
print("RESULT" + json.dumps({"calls": calls, "process_seconds_two_calls": wall,
                             "vm_hwm_bytes": hwm, "second_call_rss": second_call,
                             "xla_memory": mem}))
"""


def run(path, pre, measure_mem):
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", RUNNER, str(path), pre, "1" if measure_mem else "0"],
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")][-1]
    res = json.loads(line[len("RESULT"):])
    res["process_wall_seconds_two_calls"] = wall
    return res


def reference_tau(vol):
    from ssbx.engine.observables.tortuosity import tortuosity

    r = tortuosity(vol, {1: 1.0}, 1e-6, axis=0, criterion="residual", rtol=1e-6,
                   preconditioner="multigrid", maxiter=100000)
    return {"tau": r.tortuosity, "iterations": r.iterations, "converged": r.converged}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[64, 128, 256])
    p.add_argument("--mg-only-sizes", type=int, nargs="*", default=[],
                   help="sizes run with the multigrid preconditioner only")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--no-memory-analysis", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    info = device_info()
    info["load_average_at_start"] = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="tort_mg_"))
    small = np.zeros((16, 16, 16), np.uint8)
    small[:, 4:12, 4:12] = 1
    np.save(work / "small.npy", small)
    base = {pre: run(work / "small.npy", pre, False)["vm_hwm_bytes"]
            for pre in ("jacobi", "multigrid")}
    rows = []
    out = Path(args.out) if args.out else RESULTS / f"tortuosity_multigrid_{device_slug(info)}.json"

    def write():
        info["load_average_at_end"] = os.getloadavg()
        payload = {
            "benchmark": "tortuosity_multigrid",
            "device": info,
            "settings": {
                "volume": "aniso 30 % (blobs(n, 0.30, (1.5, 1.5, 6.0), seed)), x axis",
                "solve": "tortuosity() lean float32, flux criterion 1e-2, fresh process per "
                         "(size, preconditioner), two calls (the first compiles)",
                "reference": "lean multigrid PCG, criterion residual, rtol 1e-6",
                "baseline_rss_bytes_16cubed": base,
                "seed": args.seed,
            },
            "results": rows,
        }
        RESULTS.mkdir(exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n")

    jobs = [(n, pre) for n in args.sizes for pre in ("multigrid", "jacobi")]
    jobs += [(n, "multigrid") for n in args.mg_only_sizes]
    refs = {}
    for n, pre in jobs:
        vol = blobs(n, 0.30, (1.5, 1.5, 6.0), args.seed)
        path = work / f"aniso_{n}.npy"
        np.save(path, vol)
        if n not in refs:
            refs[n] = reference_tau(vol)
        res = run(path, pre, not args.no_memory_analysis)
        nvox = vol.size
        tau_ref = refs[n]["tau"]
        row = {
            "size": n, "preconditioner": pre, "voxels": nvox,
            "reference": refs[n],
            "first_call_seconds": res["calls"][0]["seconds"],
            "second_call_seconds": res["calls"][1]["seconds"],
            "iterations": res["calls"][1]["iterations"],
            "tau": res["calls"][1]["tau"],
            "tau_rel_diff": res["calls"][1]["tau"] / tau_ref - 1,
            "converged": res["calls"][1]["converged"],
            "process_wall_seconds_two_calls": res["process_wall_seconds_two_calls"],
            "peak_rss_bytes": res["vm_hwm_bytes"],
            "peak_rss_bytes_per_voxel_above_16cubed": (res["vm_hwm_bytes"] - base[pre]) / nvox,
        }
        if res.get("second_call_rss"):
            sc = res["second_call_rss"]
            row["second_call_peak_rss_bytes_per_voxel_above_rss_before"] = \
                (sc["peak"] - sc["rss_before"]) / nvox
        if res["xla_memory"]:
            m = res["xla_memory"]
            row["xla_bytes_per_voxel"] = {k: v / nvox for k, v in m.items()}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("size", "preconditioner", "iterations",
                                               "first_call_seconds", "second_call_seconds",
                                               "tau_rel_diff",
                                               "peak_rss_bytes_per_voxel_above_16cubed",
                                               "second_call_peak_rss_bytes_per_voxel_above_rss_before")
                           if k in row}),
              flush=True)
        write()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

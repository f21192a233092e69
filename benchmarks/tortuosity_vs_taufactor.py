"""Tortuosity factor: ssbx (lean solver) vs TauFactor 2, start-up included (issue 14, item 3).

TauFactor (Kench et al., J. Open Source Softw. 8, 5358 (2023); PyPI ``taufactor``,
PyTorch) is NOT a dependency of ssbx: run this script from an environment that has it,
e.g.::

    python -m venv --system-site-packages /tmp/tf && /tmp/tf/bin/pip install torch taufactor
    /tmp/tf/bin/python benchmarks/tortuosity_vs_taufactor.py --sizes 128 256 [FILE.tif ...]

For every volume — generated anisotropic two-phase volumes (Gaussian-filtered noise,
filter widths 1.5/1.5/6 voxels along x/y/z, thresholded at 30 % conducting; the generator
of benchmarks/taufactor_comparison.py) of each ``--sizes`` and any TIFF/.npy given on the
command line (conducting = voxels > 0) — and each axis, the script runs, interleaved on
the same machine:

* ``ssbx``: a fresh Python process that imports ssbx, loads the volume and calls
  ``tortuosity()`` with its defaults (lean float32 solver, Jacobi PCG, flux criterion
  1e-2) axis after axis; cold (empty persistent compilation cache) and, with
  ``--warm-cache``, again with the cache that the cold run filled;
* ``taufactor``: a fresh process that imports taufactor/torch and runs
  ``Solver(img, device="cpu").solve(conv_crit=1e-2)`` (its defaults) per axis;
* ``reference``: ssbx lean solver over-converged in this process (criterion "residual",
  rtol 1e-6, i.e. far below the 1e-2 flux rule; not timed).

Recorded: τ per axis and its relative difference to the reference, per-axis solve
seconds, iterations, process wall time (start-up, imports, compilation, loading included),
peak RSS of each process (VmHWM) and bytes per voxel above the RSS of the same
process on a 16³ volume, and the ratio TauFactor/ssbx of the wall times. Writes
benchmarks/results/tortuosity_vs_taufactor_<device>.json.
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

SSBX_RUNNER = r"""
import json, sys, time
t0 = time.perf_counter()
path, axes, cache = sys.argv[1], [int(a) for a in sys.argv[2].split(",")], sys.argv[3]
import jax
if cache != "-":
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
import numpy as np
from ssbx.engine.observables.tortuosity import tortuosity
vol = np.load(path)
out = []
for ax in axes:
    t = time.perf_counter()
    r = tortuosity(vol, {1: 1.0}, 1e-6, axis=ax, maxiter=100000)
    out.append({"axis": ax, "tau": r.tortuosity, "seconds": time.perf_counter() - t,
                "iterations": r.iterations, "converged": r.converged,
                "flux_imbalance": r.flux_imbalance,
                "history_iterations": list(r.history_iterations),
                "history_tau": list(r.history_tau)})
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0]
stats = jax.devices()[0].memory_stats() or {}
print("RESULT" + json.dumps({"axes": out, "in_process_seconds": time.perf_counter() - t0,
                             "vm_hwm_bytes": int(hwm.split()[1]) * 1024,
                             "device_peak_bytes": stats.get("peak_bytes_in_use")}))
"""

TAUFACTOR_RUNNER = r"""
import json, sys, time
t0 = time.perf_counter()
path, axes, threads = sys.argv[1], [int(a) for a in sys.argv[2].split(",")], int(sys.argv[3])
device = sys.argv[4]
import numpy as np
import torch
try:
    import IPython.display  # noqa: F401  (taufactor imports clear_output from it)
except ImportError:  # a headless machine without IPython: taufactor only calls it when verbose
    import types
    ipy, disp = types.ModuleType("IPython"), types.ModuleType("IPython.display")
    disp.clear_output = lambda *a, **k: None
    ipy.display = disp
    sys.modules.update({"IPython": ipy, "IPython.display": disp})
import taufactor as tf
torch.set_num_threads(threads)
vol = np.load(path)
out = []
for ax in axes:
    t = time.perf_counter()
    img = np.ascontiguousarray(np.moveaxis(vol, ax, 0))
    s = tf.Solver(img, device=device)
    tau = s.solve(verbose=False, conv_crit=1e-2, iter_limit=100000)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    out.append({"axis": ax, "tau": float(np.asarray(tau).ravel()[0]),
                "seconds": time.perf_counter() - t, "iterations": int(s.iter),
                "converged": bool(s.converged)})
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0]
peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
print("RESULT" + json.dumps({"axes": out, "in_process_seconds": time.perf_counter() - t0,
                             "vm_hwm_bytes": int(hwm.split()[1]) * 1024,
                             "device_peak_bytes": peak}))
"""


def run_measured(code, args, env=None):
    """Run ``python -c code args``: (parsed RESULT, wall seconds, the child's own peak RSS
    in bytes: VmHWM of /proc/self/status, which, unlike wait4's ru_maxrss, does not carry
    over the forking parent's RSS across exec)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as fout, tempfile.TemporaryFile("w+") as ferr:
        proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=fout,
                                stderr=ferr, text=True, env=env)
        _, status, _ = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        fout.seek(0)
        ferr.seek(0)
        out, err = fout.read(), ferr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"runner failed ({proc.returncode}):\n{err[-3000:]}")
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT")][-1]
    res = json.loads(line[6:])
    return res, wall, res["vm_hwm_bytes"], res.get("device_peak_bytes")


def reference_taus(vol, axes):
    from ssbx.engine.observables.tortuosity import tortuosity

    out = {}
    for ax in axes:
        # float32 CG cannot always reach rtol 1e-7 (round-off floor): residual 1e-6
        r = tortuosity(vol, {1: 1.0}, 1e-6, axis=ax, criterion="residual", rtol=1e-6,
                       maxiter=100000)
        out[ax] = {"tau": r.tortuosity, "iterations": r.iterations, "converged": r.converged,
                   "flux_imbalance": r.flux_imbalance}
    return out


def load_volume(path):
    from ssbx.engine.geometry.volume import load_labels

    return (np.asarray(load_labels(path)) > 0).astype(np.uint8)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="extra volumes (.tif/.tiff/.npy; conducting = > 0)")
    p.add_argument("--sizes", type=int, nargs="*", default=[128, 256])
    p.add_argument("--axes", default="x,y,z", help="axes per generated volume (default x,y,z)")
    p.add_argument("--axes-large", default="x", help="axes for sizes >= 256 (default x)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--warm-cache", action="store_true",
                   help="also rerun ssbx with the persistent compilation cache filled")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--tf-device", default="cpu",
                   help="TauFactor's torch device: cpu (default) or cuda (on a GPU machine, "
                        "where ssbx's JAX runs on the GPU too)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:  # fail early when the environment lacks it (TauFactor itself runs in TAUFACTOR_RUNNER)
        version("taufactor")
    except PackageNotFoundError:
        raise SystemExit("taufactor is not installed in this environment (see the module docstring)")

    info = device_info()
    info.update(torch_version=torch.__version__, taufactor_version=version("taufactor"),
                torch_threads=args.threads, taufactor_device=args.tf_device,
                load_average_at_start=os.getloadavg())

    work = Path(tempfile.mkdtemp(prefix="tort_vs_tf_"))
    env = dict(os.environ)
    small = np.zeros((16, 16, 16), np.uint8)
    small[:, 4:12, 4:12] = 1
    np.save(work / "small.npy", small)
    cache = work / "jax_cache"
    base_ssbx = run_measured(SSBX_RUNNER, [work / "small.npy", "0", "-"], env)[2]
    base_tf = run_measured(TAUFACTOR_RUNNER, [work / "small.npy", "0", args.threads,
                                               args.tf_device], env)[2]
    print(f"baseline RSS (16^3): ssbx {base_ssbx / 2**20:.0f} MiB, "
          f"TauFactor {base_tf / 2**20:.0f} MiB", flush=True)

    jobs = []
    for n in args.sizes:
        axes = args.axes if n < 256 else args.axes_large
        jobs.append((f"aniso_30pct_{n}", blobs(n, 0.30, (1.5, 1.5, 6.0), args.seed), axes))
    for f in args.files:
        jobs.append((Path(f).name, load_volume(f), args.axes))

    def write():  # after every volume, so that a run cut short keeps what it measured
        info["load_average_at_end"] = os.getloadavg()
        payload = {
            "benchmark": "tortuosity_vs_taufactor",
            "device": info,
            "settings": {
                "ssbx": "tortuosity() defaults: lean float32 solver, Jacobi PCG, flux criterion "
                        "1e-2 (spread of plane currents and change of sigma_eff), fresh process",
                "taufactor": f"Solver(device={args.tf_device!r}).solve(conv_crit=1e-2), fresh process",
                "reference": "ssbx lean, criterion residual, rtol 1e-6",
                "baseline_rss_bytes": {"ssbx": base_ssbx, "taufactor": base_tf},
                "persistent_compilation_cache": "cold (empty) for ssbx_wall_seconds; "
                                                "filled for ssbx_warm_cache_wall_seconds",
            },
            "results": rows,
        }
        RESULTS.mkdir(exist_ok=True)
        out = Path(args.out) if args.out else RESULTS / f"tortuosity_vs_taufactor_{device_slug(info)}.json"
        out.write_text(json.dumps(payload, indent=2) + "\n")
        return out

    rows = []
    for name, vol, axes_str in jobs:
        axes = ["xyz".index(a) for a in axes_str.split(",")]
        path = work / f"{name}.npy"
        np.save(path, vol)
        nvox = vol.size
        ax_arg = ",".join(map(str, axes))
        ref = None if args.no_reference else reference_taus(vol, axes)
        # interleaved: ssbx cold, TauFactor, (ssbx warm)
        s_res, s_wall, s_rss, _ = run_measured(SSBX_RUNNER, [path, ax_arg, cache], env)
        t_res, t_wall, t_rss, _ = run_measured(TAUFACTOR_RUNNER, [path, ax_arg, args.threads,
                                                                 args.tf_device], env)
        warm = None
        if args.warm_cache:
            warm = run_measured(SSBX_RUNNER, [path, ax_arg, cache], env)
        row = {
            "volume": name, "shape": list(vol.shape), "conducting_fraction": float(vol.mean()),
            "axes": ["xyz"[a] for a in axes],
            "ssbx_wall_seconds": s_wall, "taufactor_wall_seconds": t_wall,
            "ratio_taufactor_over_ssbx": t_wall / s_wall,
            "ssbx_peak_rss_bytes": s_rss, "taufactor_peak_rss_bytes": t_rss,
            "ssbx_bytes_per_voxel_above_baseline": (s_rss - base_ssbx) / nvox,
            "taufactor_bytes_per_voxel_above_baseline": (t_rss - base_tf) / nvox,
            "per_axis": [],
        }
        if s_res.get("device_peak_bytes"):
            row["ssbx_device_peak_bytes_per_voxel"] = s_res["device_peak_bytes"] / nvox
        if t_res.get("device_peak_bytes"):
            row["taufactor_device_peak_bytes_per_voxel"] = t_res["device_peak_bytes"] / nvox
        if warm is not None:
            row.update(ssbx_warm_cache_wall_seconds=warm[1],
                       ratio_taufactor_over_ssbx_warm_cache=t_wall / warm[1])
        for sa, ta in zip(s_res["axes"], t_res["axes"]):
            ax = sa["axis"]
            entry = {"axis": "xyz"[ax], "ssbx": sa, "taufactor": ta,
                     "ratio_solve_seconds": ta["seconds"] / sa["seconds"]}
            if ref is not None:
                entry["reference"] = ref[ax]
                entry["ssbx_rel_diff"] = sa["tau"] / ref[ax]["tau"] - 1
                entry["taufactor_rel_diff"] = ta["tau"] / ref[ax]["tau"] - 1
            row["per_axis"].append(entry)
            print(f"{name:24s} {'xyz'[ax]}  tau ref {ref[ax]['tau'] if ref else float('nan'):.5f}  "
                  f"ssbx {sa['tau']:.5f} ({entry.get('ssbx_rel_diff', float('nan')):+.1e}, "
                  f"{sa['seconds']:.1f}s, {sa['iterations']} it)  TauFactor {ta['tau']:.5f} "
                  f"({entry.get('taufactor_rel_diff', float('nan')):+.1e}, {ta['seconds']:.1f}s, "
                  f"{ta['iterations']} it)", flush=True)
        print(f"{name:24s} wall incl. start-up: ssbx {s_wall:.1f}s"
              + (f" (warm cache {warm[1]:.1f}s)" if warm else "")
              + f", TauFactor {t_wall:.1f}s, ratio {t_wall / s_wall:.2f}; peak RSS ssbx "
              f"{s_rss / 2**20:.0f} MiB ({row['ssbx_bytes_per_voxel_above_baseline']:.1f} B/voxel "
              f"above baseline), TauFactor {t_rss / 2**20:.0f} MiB "
              f"({row['taufactor_bytes_per_voxel_above_baseline']:.1f} B/voxel)", flush=True)
        if "ssbx_device_peak_bytes_per_voxel" in row or "taufactor_device_peak_bytes_per_voxel" in row:
            print(f"{name:24s} device peak memory: ssbx "
                  f"{row.get('ssbx_device_peak_bytes_per_voxel', float('nan')):.1f} B/voxel, TauFactor "
                  f"{row.get('taufactor_device_peak_bytes_per_voxel', float('nan')):.1f} B/voxel", flush=True)
        rows.append(row)
        out = write()

    print(f"wrote {out}")


if __name__ == "__main__":
    main()

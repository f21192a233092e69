"""Wall time of the default ``ssbx run`` and of its seven snapshot stress solves.

Run:  python benchmarks/snapshot_stress_speed.py [--repeats 2] [--baseline-pythonpath DIR]
                                                 [--compare-out DIR]

Each repeat runs ``ssbx run`` with no arguments (the built-in 10 µm NCM622 particle,
54³ voxels, seven snapshots; ``--no-png``) in a fresh subprocess, so every repeat pays the
compilation a user's first run pays. Inside the child the chunk calls, the stress solves
(StressSolver.solve, blocked until ready: compilation or waiting for the background
warm-up included), the derived fields (stress_outputs) and the whole snapshots (HDF5
write included) are timed one by one, with the CG iterations and residual of each
solve. With ``--baseline-pythonpath`` the same is done for another tree, e.g. the commit
before the change unpacked with
``mkdir -p /tmp/base/ssbx && git archive <commit> engine kernels | tar -x -C /tmp/base/ssbx``
(then ``--baseline-pythonpath /tmp/base``), and the two runs' files are compared
dataset by dataset (maximum absolute difference, and relative to the dataset's largest
magnitude). The machine's load average is recorded around every run: on a shared 2-core
CPU the numbers move with it. Results: benchmarks/results/snapshot_stress_speed_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _load():
    return [round(v, 2) for v in os.getloadavg()]


def _child(out: str):
    """In the child: the default run with its pieces timed; prints one ``PROFILE`` line."""
    import jax

    import ssbx.engine.physics.mechanics as mech
    import ssbx.engine.runs.particle_run as pr
    from ssbx.engine.cli import main as cli_main

    log = {"chunk_s": [], "solve_s": [], "cg_iterations": [], "cg_residual": [], "outputs_s": [], "snapshot_s": []}
    solve, outputs, snapshot, advance = (mech.StressSolver.solve, pr.stress_outputs, pr._ParticleRun.snapshot,
                                         pr.advance_particle)

    def timed(name, fn, *a, **k):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*a, **k))
        log[name].append(time.perf_counter() - t0)
        return out

    def timed_solve(self, x):
        result = timed("solve_s", solve, self, x)
        log["cg_iterations"].append(int(result.iterations))
        log["cg_residual"].append(float(result.residual))
        return result

    mech.StressSolver.solve = timed_solve
    pr.stress_outputs = lambda *a, **k: timed("outputs_s", outputs, *a, **k)
    pr._ParticleRun.snapshot = lambda self, *a, **k: timed("snapshot_s", snapshot, self, *a, **k)
    pr.advance_particle = lambda *a, **k: timed("chunk_s", advance, *a, **k)
    t0 = time.perf_counter()
    cli_main(["run", "--out", out, "--no-png", "-q", "--overwrite"])
    log["in_process_s"] = time.perf_counter() - t0
    print("PROFILE " + json.dumps(log), flush=True)


def run_tree(pythonpath: str | None, repeats: int, out: Path) -> dict:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    runs = []
    for _ in range(repeats):
        load_before = _load()
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", str(out)], env=env, capture_output=True,
                              text=True, check=True)
        wall = time.perf_counter() - t0
        prof = json.loads(re.search(r"^PROFILE (.*)$", proc.stdout, re.M).group(1))
        prof.update(process_wall_s=wall, snapshots_total_s=sum(prof["snapshot_s"]),
                    chunks_total_s=sum(prof["chunk_s"]), load_before=load_before, load_after=_load())
        runs.append(prof)
        print(f"PYTHONPATH={env.get('PYTHONPATH', '')}: process {wall:.2f} s, in-process {prof['in_process_s']:.2f} s, "
              f"snapshots {prof['snapshots_total_s']:.2f} s (solves {', '.join(f'{t:.2f}' for t in prof['solve_s'])}), "
              f"chunks {prof['chunks_total_s']:.2f} s; load {load_before}", flush=True)
    best = min(runs, key=lambda r: r["process_wall_s"])
    return {"pythonpath": env.get("PYTHONPATH", ""), "runs": runs, "best_process_wall_s": best["process_wall_s"],
            "best_in_process_s": min(r["in_process_s"] for r in runs),
            "best_snapshots_total_s": min(r["snapshots_total_s"] for r in runs)}


def compare_files(a: Path, b: Path) -> dict:
    """Per numeric dataset of two run files: max |a − b| and that over max |b|."""
    import h5py
    import numpy as np

    out = {}
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names = []
        fa.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in sorted(names):
            x, y = fa[name][()], fb[name][()] if name in fb else None
            if y is None or np.asarray(x).dtype.kind not in "fiu" or np.shape(x) != np.shape(y):
                continue
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            both = np.isfinite(x) & np.isfinite(y)
            diff = float(np.abs(x[both] - y[both]).max()) if both.any() else 0.0
            scale = float(np.abs(y[both]).max()) if both.any() else 0.0
            out[name] = {"max_abs_diff": diff, "max_rel_diff": diff / scale if scale > 0 else 0.0,
                         "same_nan_pattern": bool(np.array_equal(np.isfinite(x), np.isfinite(y)))}
    return out


def main(argv=None):
    from common import device_info, write_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline-pythonpath", default=None)
    args = parser.parse_args(argv)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    payload = {"device": device_info(), "uptime_before": uptime, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        payload["this_tree"] = run_tree(None, args.repeats, Path(tmp) / "this.h5")
        if args.baseline_pythonpath:
            payload["baseline"] = run_tree(args.baseline_pythonpath, args.repeats, Path(tmp) / "base.h5")
            payload["difference_to_baseline"] = compare_files(Path(tmp) / "this.h5", Path(tmp) / "base.h5")
            for name, d in payload["difference_to_baseline"].items():
                if d["max_abs_diff"] > 0 or not d["same_nan_pattern"]:
                    print(f"{name}: max |diff| {d['max_abs_diff']:.3g} ({d['max_rel_diff']:.3g} of max |value|)"
                          + ("" if d["same_nan_pattern"] else ", NaN pattern differs"))
    payload["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print("wrote", write_result("snapshot_stress_speed", payload))


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child(sys.argv[sys.argv.index("--child") + 1])
    else:
        main()

"""Scenario S2 at several voxel sizes: cost per electrochemical step and voltage convergence.

Run:  python benchmarks/cell_resolution.py [--voxel-sizes 1e-6 4e-7 2e-7 1e-7]
                                          [--minutes 10] [--preconditioner multigrid]
      python benchmarks/cell_resolution.py --full --voxel-sizes 1e-7 [--wall-limit-s 600]
      python benchmarks/cell_resolution.py --replot benchmarks/results/s2_full_run_<device>.json

Takes ``examples/ncm111_llzo_single_particle.toml`` (docs/physics.md S2: NCM111 particle of
radius 5 µm, 53 grains, in ECBD, LLZO separator, Li anode) and runs the first
``--minutes`` of its 1C charge ("charge at 1C until 4.3 V or N min") at each voxel size,
with everything else unchanged. For each size it reports the grid, the number of
electrochemical steps, the wall time per step after compilation (split into the
potential solve and the diffusion sub-steps), the CG iterations per step, and the cell
voltage at common times, with its difference from the finest grid (the voxelised
sphere, its interface area and the surface-concentration extrapolation all converge
with h). Results go to benchmarks/results/cell_resolution_<device>.json.

Timing: ``engine.runs.host_cell.electrochemical_solve`` and ``engine.runs.host_cell.diffuse`` are wrapped to
block on their results and record wall times; the first call of each (compilation) is
reported separately.

``--full`` runs the example's whole protocol (1C charge to 4.3 V, rest, 1C discharge to
3.0 V) instead, and adds the status, capacities, Coulombic efficiency and the charge
balance ∫ I dt vs F ΔM_Li to each row; results go to
benchmarks/results/s2_full_run_<device>.json with a voltage/current figure beside it. ``--wall-limit-s`` stops a run cleanly
after that much wall time (the rows then say where it stopped).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, write_result  # noqa: E402

from ssbx.engine.geometry import cell_stack  # noqa: E402
from ssbx.engine.runs import host_cell as cellmod  # noqa: E402
from ssbx.engine.config.scenario import load_scenario  # noqa: E402
from ssbx.engine.io.run_file import load_run  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ncm111_llzo_single_particle.toml"


class WallLimit(Exception):
    """Raised from inside the step loop when --wall-limit-s is reached."""


class Timed:
    """Replace ``module.name`` by a wrapper that records blocking wall times."""

    def __init__(self, module, name, deadline=None, report_every=0):
        self.module, self.name = module, name
        self.original = getattr(module, name)
        self.times: list[float] = []
        self.deadline, self.report_every = deadline, report_every
        self.t_start = time.perf_counter()

    def __enter__(self):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = jax.block_until_ready(self.original(*args, **kwargs))
            now = time.perf_counter()
            self.times.append(now - t0)
            n = len(self.times)
            if self.report_every and n % self.report_every == 0:
                print(f"  {self.name}: {n} calls, {now - self.t_start:.1f} s", flush=True)
            if self.deadline is not None and now > self.deadline:
                raise WallLimit(f"wall limit reached after {n} calls of {self.name}")
            return out

        setattr(self.module, self.name, wrapper)
        return self

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.original)


def run_one(h: float, minutes: float | None, preconditioner: str, workdir: Path,
            wall_limit_s: float | None = None) -> dict:
    changes = {"particle": {"voxel_size_m": h}, "electrochemistry": {"preconditioner": preconditioner}}
    if minutes is not None:
        changes["protocol"] = {"steps": (f"charge at 1C until 4.3 V or {minutes:g} min",), "cycles": 1}
    scenario = load_scenario(EXAMPLE).replace(**changes)
    micro, _ = cell_stack.cell_microstructure(scenario)
    out = workdir / f"s2_{h:.0e}.h5"
    t0 = time.perf_counter()
    deadline = None if wall_limit_s is None else t0 + wall_limit_s
    stopped_by_wall = None
    with Timed(cellmod, "electrochemical_solve") as solve, \
            Timed(cellmod, "diffuse", deadline, report_every=50 if minutes is None else 0) as diffuse:
        try:
            result = cellmod.run_cell(scenario, out, progress=False)
            n, status = result.n_steps, result.status
        except WallLimit as err:
            stopped_by_wall = str(err)
            n, status = len(diffuse.times), "wall limit"
        wall = time.perf_counter() - t0
    run = load_run(out)
    ts = run.timeseries
    if "t_s" not in ts:
        raise SystemExit(f"h={h:.1e}: no step finished before the wall limit ({stopped_by_wall})")
    row = {
        "voxel_size_m": h,
        "grid": list(micro.labels.shape),
        "voxels": int(micro.labels.size),
        "active_voxels": int(micro.active.sum()),
        "preconditioner": preconditioner,
        "status": status,
        "steps": n,
        "wall_s": wall,
        "first_solve_s (compile)": solve.times[0],
        "first_diffuse_s (compile)": diffuse.times[0],
        "solve_s_per_step": float(np.mean(solve.times[1:])) if n > 1 else None,
        "diffuse_s_per_step": float(np.mean(diffuse.times[1:])) if n > 1 else None,
        "cg_iterations_per_step": float(np.mean(ts["cg_iterations"])),
        "t_s": ts["t_s"].tolist(),
        "voltage_V": ts["voltage_V"].tolist(),
    }
    if minutes is None:
        row.update(full_run_summary(out, ts, run.status, scenario.material.x_initial))
        row["current_A"] = ts["current_A"].tolist()
        row["step_index"] = ts["step_index"].astype(int).tolist()
        if stopped_by_wall:
            row["message"] = stopped_by_wall
    print(f"h={h:.1e} grid={row['grid']} steps={n} wall={wall:.1f}s solve/step={row['solve_s_per_step']} "
          f"diffuse/step={row['diffuse_s_per_step']} CG/step={row['cg_iterations_per_step']:.0f} "
          f"V_end={ts['voltage_V'][-1]:.4f}", flush=True)
    return row


def full_run_summary(path: Path, ts: dict, status: str, x_initial: float) -> dict:
    """Capacities, Coulombic efficiency and the charge balance of a whole-protocol run."""
    import h5py

    from ssbx.kernels.constants import FARADAY

    with h5py.File(path, "r") as f:
        cycles = {k: f["cycles"][k][()].tolist() for k in f["cycles"]} if "cycles" in f else {}
    t = np.asarray(ts["t_s"], np.float64)
    current = np.asarray(ts["current_A"], np.float64)
    charge_C = float(np.sum(current * np.diff(np.concatenate([[0.0], t]))))
    li = np.asarray(ts["li_mol"], np.float64)
    li_start = x_initial * li[0] / float(ts["mean_soc"][0])  # li = c_max h^3 Σx, mean_soc = Σx / N
    return {
        "run_status": status,
        "t_end_s": float(t[-1]),
        "cycles": cycles,
        "charge_balance_rel": abs(charge_C - FARADAY * (li_start - li[-1])) / abs(FARADAY * li_start),
    }


def plot_full_run(payload: dict, path: Path) -> None:
    """Voltage and current against time for each whole-protocol run in ``payload``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_v, ax_i) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, height_ratios=[3, 1])
    for r in payload["results"]:
        t_min = np.asarray(r["t_s"]) / 60.0
        grid = "x".join(map(str, r["grid"]))
        label = (f"{r['voxel_size_m'] * 1e9:.0f} nm ({grid}), CE {r['cycles']['coulombic_efficiency'][0]:.3f}"
                 if r.get("cycles") else f"{r['voxel_size_m'] * 1e9:.0f} nm ({grid})")
        ax_v.plot(t_min, r["voltage_V"], label=label)
        ax_i.plot(t_min, 1e9 * np.asarray(r["current_A"]))
    ax_v.set_ylabel("cell voltage (V)")
    ax_v.legend(loc="lower center")
    ax_v.set_title(f"{payload['scenario']}: {payload['device']['device_kind']}", fontsize=10)
    ax_i.set_ylabel("current (nA)")
    ax_i.set_xlabel("time (min)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(rows: list[dict], minutes: float) -> list[dict]:
    """Voltage of each grid at common times (after the first minute) vs the finest grid."""
    finest = min(rows, key=lambda r: r["voxel_size_m"])
    times = np.linspace(60.0, 60.0 * minutes, 10)
    v_ref = np.interp(times, finest["t_s"], finest["voltage_V"])
    out = []
    for r in rows:
        v = np.interp(times, r["t_s"], r["voltage_V"])
        out.append({"voxel_size_m": r["voxel_size_m"],
                    "max_abs_dV_vs_finest_mV": float(1e3 * np.max(np.abs(v - v_ref))),
                    "voltage_at_times_V": v.tolist()})
    return [{"times_s": times.tolist(), "finest_voxel_size_m": finest["voxel_size_m"]}] + out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voxel-sizes", type=float, nargs="+", default=[1e-6, 4e-7, 2e-7])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--preconditioner", default="multigrid", choices=["jacobi", "multigrid"])
    p.add_argument("--full", action="store_true", help="run the example's whole protocol")
    p.add_argument("--wall-limit-s", type=float, default=None, help="stop each run cleanly after this wall time")
    p.add_argument("--replot", type=Path, default=None, help="only redraw the figure of a --full results file")
    args = p.parse_args(argv)
    if args.replot is not None:
        plot_full_run(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        return
    info = device_info()
    minutes = None if args.full else args.minutes
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_one(h, minutes, args.preconditioner, Path(tmp), args.wall_limit_s) for h in args.voxel_sizes]
    payload = {
        "benchmark": "s2_full_run" if args.full else "cell_resolution",
        "device": info,
        "scenario": str(EXAMPLE.name),
        "protocol": "the example's protocol" if args.full else f"charge at 1C until 4.3 V or {args.minutes:g} min",
        "dtype": "float32",
        "note": "CPU runs share 2 cores; times are indicative" if info["platform"] == "cpu" else "",
        "results": rows,
    }
    if not args.full:
        payload["voltage_convergence"] = compare(rows, args.minutes)
    path = write_result(payload["benchmark"], payload)
    print(f"wrote {path}")
    if args.full:
        plot_full_run(payload, Path(path).with_suffix(".png"))
    for r in rows if args.full else []:
        print(f"h={r['voxel_size_m']:.1e}: {r['status']} t_end={r['t_end_s']:.0f} s cycles={r['cycles']} "
              f"charge balance {r['charge_balance_rel']:.1e}")
    for c in payload.get("voltage_convergence", [])[1:]:
        print(f"h={c['voxel_size_m']:.1e}: max |V - V_finest| after 1 min = {c['max_abs_dV_vs_finest_mV']:.1f} mV")


if __name__ == "__main__":
    main()

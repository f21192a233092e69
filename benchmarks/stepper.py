"""The device-resident cell stepper (engine.solve) against the legacy host loop
(engine/runs/host_cell.run_cell), side by side on the S2 example, whole protocol.

Run:  python benchmarks/stepper.py [--voxel-sizes 1e-6 4e-7] [--drivers device host] [--repeats N]

For each voxel size and driver it runs ``examples/ncm111_llzo_single_particle.toml``
(1C charge to 4.3 V, rest 5 min, 1C discharge to 3.0 V) from a fresh process state of
the jit caches and reports: end-to-end wall time of the driver call (resolve,
compilation, the run, file writing), the compilation time inside it (XLA backend
compile and tracing, summed from jax.monitoring events), the number of accepted
steps, wall time per step after compilation, and host↔device reads per step. For the
device driver the reads are counted (calls of jax.device_get, one per chunk plus one
per snapshot); for the host loop they are the conversions its code makes each step
(float(V), float(I), int(CG iterations), float(BV residual), float(τ_min), the box of
the face currents and twice the box of x: 8). The drivers alternate within each voxel
size (``--repeats`` pairs), and each row carries the 1-minute load average before and
after it (the CPU machine is shared), so the ratio of a pair is measured under the same
load. Results go to benchmarks/results/stepper_<device>.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.monitoring

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, write_result  # noqa: E402

from ssbx.engine.runs import host_cell as cellmod  # noqa: E402
from ssbx.engine.config.scenario import load_scenario  # noqa: E402
from ssbx.engine.io.run_file import load_run  # noqa: E402
from ssbx.engine.runs import cell_run  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ncm111_llzo_single_particle.toml"
HOST_READS_PER_STEP = 8

_compile_s = {"t": 0.0}
_compiled = []  # (function name, XLA compile seconds) of the current run, from jax's compile log


class _CompileLog(logging.Handler):
    """Collects "Finished XLA compilation of jit(NAME) in T s" (jax_log_compiles)."""

    def emit(self, record):
        m = re.match(r"Finished XLA compilation of (?:jit\()?([^ )]+)\)? in ([0-9.e+-]+) ?s", record.getMessage())
        if m:
            _compiled.append((m.group(1), float(m.group(2))))


def _compile_breakdown(min_s=0.2):
    """XLA compile seconds by function: the large ones by name, the rest (mostly eager
    set-up ops, one compilation each) summed with their count."""
    out, small, n_small = {}, 0.0, 0
    for name, sec in _compiled:
        if sec >= min_s:
            out[name] = out.get(name, 0.0) + sec
        else:
            small += sec
            n_small += 1
    out[f"{n_small} small compilations (eager set-up ops)"] = small
    return out


def _on_duration(event: str, seconds: float, **_):
    if event in ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_trace_duration",
                 "/jax/core/compile/jaxpr_to_mlir_module_duration"):
        _compile_s["t"] += seconds


def _run(driver: str, scenario, out: Path) -> dict:
    reads = {"n": 0}
    original = jax.device_get

    def counting_get(x):
        reads["n"] += 1
        return original(x)

    jax.clear_caches()
    _compile_s["t"] = 0.0
    _compiled.clear()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    if driver == "device":
        cell_run.jax.device_get = counting_get
        try:
            result = cell_run.run_cell_device(scenario, out, progress=False)
        finally:
            cell_run.jax.device_get = original
    else:
        result = cellmod.run_cell(scenario, out, progress=False)
    wall = time.perf_counter() - t0
    compile_s = _compile_s["t"]
    run = load_run(out)
    steps = int(result.n_steps)
    return {
        "driver": driver,
        "status": result.status,
        "steps": steps,
        "wall_s": wall,
        "compile_s": compile_s,
        "compile_breakdown_s": _compile_breakdown(),
        "per_step_s": (wall - compile_s) / max(steps, 1),
        "host_reads_per_step": (reads["n"] / max(steps, 1)) if driver == "device" else HOST_READS_PER_STEP,
        "charge_end_V": float(run.timeseries["voltage_V"][run.timeseries["step_index"] == 0][-1]),
        "t_end_s": float(result.t_end_s),
        "load_1min": [load_before, os.getloadavg()[0]],  # the machine is shared: 1-min load before, after
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxel-sizes", type=float, nargs="+", default=[1e-6, 4e-7])
    parser.add_argument("--drivers", nargs="+", default=["device", "host"], choices=["device", "host"])
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternate the drivers this many times per voxel size (device, host, device, ...)")
    args = parser.parse_args(argv)
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    jax.config.update("jax_log_compiles", True)
    log = logging.getLogger("jax")
    log.addHandler(_CompileLog())
    log.setLevel(logging.DEBUG)
    log.propagate = False  # keep the compile log off the console
    base = load_scenario(EXAMPLE).replace(mechanics={"enabled": False})  # the host loop solves no stress
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for h in args.voxel_sizes:
            scenario = base.replace(particle={"voxel_size_m": h})
            for repeat in range(args.repeats):
                for driver in args.drivers:
                    row = {"voxel_size_m": h, "repeat": repeat,
                           **_run(driver, scenario, Path(tmp) / f"{driver}_{h:g}_{repeat}.h5")}
                    rows.append(row)
                    print(f"h={h:.1e} {driver:6s} steps={row['steps']} wall={row['wall_s']:.1f}s "
                          f"compile={row['compile_s']:.1f}s per_step={row['per_step_s'] * 1e3:.1f}ms "
                          f"reads/step={row['host_reads_per_step']:.2f} load={row['load_1min'][0]:.1f}", flush=True)
                    print("    compile by function: " + ", ".join(
                        f"{k} {v:.1f}s" for k, v in sorted(row["compile_breakdown_s"].items(),
                                                          key=lambda kv: -kv[1])), flush=True)
    ratios = []
    for h in args.voxel_sizes:
        for repeat in range(args.repeats):
            pair = {r["driver"]: r for r in rows if r["voxel_size_m"] == h and r["repeat"] == repeat}
            if len(pair) == 2:
                ratio = pair["host"]["wall_s"] / pair["device"]["wall_s"]
                ratios.append({"voxel_size_m": h, "repeat": repeat, "host_over_device_wall": ratio,
                               "host_over_device_after_compile": (pair["host"]["wall_s"] - pair["host"]["compile_s"])
                               / (pair["device"]["wall_s"] - pair["device"]["compile_s"])})
                print(f"h={h:.1e} repeat {repeat}: host/device end-to-end = {ratio:.2f}x")
    path = write_result("stepper", {"benchmark": "stepper", "device": device_info(), "example": EXAMPLE.name,
                                    "rows": rows, "ratios": ratios})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

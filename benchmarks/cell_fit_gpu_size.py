"""The "at GPU size" cells of the two cell notebooks, timed (issue #16 item 4).

Run:  python benchmarks/cell_fit_gpu_size.py [--cases voltage interface] [--quick]

``voltage`` is notebooks/fit_cell_voltage.ipynb's GPU-size study: the S2 cell of
examples/ncm111_llzo_single_particle.toml at 0.5 µm voxels, a 1C charge to 4.3 V and a
10 min rest, V every 30 s and four SOC projections; exchange current and in-plane D
fitted (float32, forward-mode Gauss–Newton) from i0 0.5 and D 5e-15 (truth: the
scenario's values). ``interface`` is notebooks/fit_interface_strength.ipynb's: the
debonding cell of examples/s2_debonding.toml at 0.5 µm, a 1C charge to 4.3 V, V every
60 s and four projections; σc fitted from 80 MPa (float64; truth: the scenario's). The
synthetic data are the model at the truth plus noise (σ_V 0.5 mV, σ_map 0.002).

It reports the grid, active voxels, the step budget, the first evaluation (compilation
and one pass), the mean of the later evaluations, the whole fit and the recovered values,
into benchmarks/results/cell_fit_gpu_size_<device>.json (written after each case).
``--quick`` is a CPU dry run of the same code: 1 µm voxels and a shorter protocol.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, write_result  # noqa: E402

from ssbx.engine.config.scenario import read_toml, scenario_from_dict  # noqa: E402
from ssbx.engine.inverse.parameters import FreeParameter  # noqa: E402
from ssbx.engine.inverse.voltage_fit import VoltageCurveModel, fit_voltage_curve  # noqa: E402
from ssbx.engine.io.measurements import MeasuredMaps  # noqa: E402
from ssbx.engine.model.resolve import resolve_cell  # noqa: E402
from ssbx.engine.observables.observation import ObservationOperator  # noqa: E402
from ssbx.engine.solve.rollout import step_budget  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SIGMA_V, SIGMA_MAP = 5e-4, 2e-3


def _case(name: str, quick: bool):
    """(resolved cell, free parameters {name: (start, low, high)}, truth, V times, map times,
    step budget, diffusivity headroom)."""
    voxel = 1e-6 if quick else 5e-7
    if name == "voltage":
        data = read_toml(EXAMPLES / "ncm111_llzo_single_particle.toml")
        data["particle"]["voxel_size_m"] = voxel
        data["mechanics"] = {"enabled": False}
        charge = "charge at 1C until 4.3 V or 10 min" if quick else "charge at 1C until 4.3 V"
        data["protocol"]["steps"] = [charge, "rest 2 min" if quick else "rest 10 min"]
        dtype, every = jnp.float32, 30.0
        end = 720.0 if quick else 4200.0
        resolved = resolve_cell(scenario_from_dict(data), dtype)
        truth = {"exchange_current": float(resolved.params.exchange_current_A_m2),
                 "diffusivity_in_plane": float(resolved.params.diffusivity_m2_s[0])}
        free = {"exchange_current": (0.5, 0.05, 10.0),
                "diffusivity_in_plane": (0.5 * truth["diffusivity_in_plane"], 0.2 * truth["diffusivity_in_plane"],
                                         1.5 * truth["diffusivity_in_plane"])}
        headroom = 1.52
    else:
        data = read_toml(EXAMPLES / "s2_debonding.toml")
        data["particle"]["voxel_size_m"] = voxel
        data["interface"]["max_damage_increment"] = 1.0
        data["protocol"]["steps"] = ["charge at 1C until 4.3 V or 10 min" if quick else "charge at 1C until 4.3 V"]
        dtype, every = jnp.float64, 60.0
        end = 600.0 if quick else 3600.0
        resolved = resolve_cell(scenario_from_dict(data), dtype)
        truth = {"interface_strength": float(resolved.params.debonding.cohesive.strength)}
        free = {"interface_strength": (80e6, 8e6, 800e6)}
        headroom = 1.02  # fit_voltage_curve asks for the sub-steps of D × 1.01
    t_v = np.arange(every, end + 0.5 * every, every)
    t_maps = np.linspace(end / 4, end, 4)
    n_steps = int(end / float(resolved.numerics.time_step_s)) + 10
    return resolved, free, truth, t_v, t_maps, n_steps, headroom


def run_case(name: str, quick: bool, max_iterations: int) -> dict:
    ctx = jax.enable_x64(True) if name == "interface" else contextlib.nullcontext()
    with ctx:
        resolved, free, truth, t_v, t_maps, n_steps, headroom = _case(name, quick)
        geometry = resolved.geometry
        operator = ObservationOperator(kind="projection", beam_axis=0, factor=1)
        model = VoltageCurveModel(resolved, list(free), t_v, n_steps, step_budget(resolved, headroom),
                                  map_t_s=t_maps, operator=operator)
        t0 = time.perf_counter()
        v_true, _, maps_true, _ = model.at(truth)
        first_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        measured = v_true + rng.normal(0.0, SIGMA_V, v_true.shape)
        shape = (t_maps.size,) + model.image_shape
        maps = MeasuredMaps(maps=maps_true.reshape(shape) + rng.normal(0.0, SIGMA_MAP, shape), t_s=t_maps,
                            pixel_size_m=float(geometry.voxel_size_m), kind="projection", beam_axis="x",
                            noise_std=SIGMA_MAP)
        spec = free if name == "voltage" else [FreeParameter(n, s, lower=lo, upper=hi) for n, (s, lo, hi) in
                                                free.items()]
        t0 = time.perf_counter()
        fit = fit_voltage_curve(resolved, t_v, measured, spec, n_steps=n_steps, sigma_V=SIGMA_V,
                                max_iterations=max_iterations, curve_model=model, maps=maps)
        fit_s = time.perf_counter() - t0
    return {
        "case": name, "grid": list(geometry.active.shape), "active_voxels": int(np.sum(geometry.active)),
        "voxel_size_m": float(geometry.voxel_size_m), "dtype": str(jnp.dtype(resolved.params.c_max_mol_m3.dtype)),
        "n_steps": n_steps, "voltage_points": int(t_v.size), "maps": int(t_maps.size),
        "first_evaluation_s": first_s, "evaluation_s": fit.evaluation_s, "evaluations": fit.evaluations,
        "fit_s": fit_s, "truth": truth, "fitted": fit.values, "relative_std": fit.relative_std,
        "success": bool(fit.success), "message": fit.message,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["voltage", "interface"], choices=["voltage", "interface"])
    parser.add_argument("--quick", action="store_true", help="CPU dry run: 1 µm voxels, a shorter protocol")
    parser.add_argument("--max-iterations", type=int, default=30)
    args = parser.parse_args(argv)
    result = {"benchmark": "cell_fit_gpu_size", "device": device_info(), "quick": args.quick, "cases": []}
    tag = "cell_fit_gpu_size_quick" if args.quick else "cell_fit_gpu_size"
    for name in args.cases:
        row = run_case(name, args.quick, args.max_iterations)
        result["cases"].append(row)
        print(f"{name}: grid {row['grid']} ({row['active_voxels']} active), {row['n_steps']} steps, "
              f"first evaluation {row['first_evaluation_s']:.1f} s, then {row['evaluation_s']:.2f} s each × "
              f"{row['evaluations']}, fit {row['fit_s']:.1f} s; fitted {row['fitted']} (truth {row['truth']})",
              flush=True)
        print(f"wrote {write_result(tag, result)}")


if __name__ == "__main__":
    main()

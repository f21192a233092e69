"""Reactive contact from SOC maps (issue #16 item 2) at benchmark size: accuracy and cost.

Run:  python benchmarks/reactive_contact_inversion.py [--case medium|s1] [--axes z x [--axes z]]

A synthetic polycrystalline NCM622 particle (D = 5e-15, 5e-15, 1e-20 m²/s) with a random
2/3 of its surface grains reactive is delithiated under a prescribed current from
x = 0.95; projections of x along the beam axes at three times, with Gaussian noise
σ = 0.005, are the measurement. engine/inverse/reactive_contact.py fits the relaxed
mask (all weights start at 1/2; L-BFGS stages with penalty weights 0, 0.1, 1) and
classifies each surface grain. Cases:

* ``medium`` (CPU, about a minute on 2 cores): radius 1.0 µm at 0.1 µm voxels (24³),
  60 Voronoi grains, 10C, times 10, 20, 30 s.
* ``s1``: the S1 particle of docs/physics.md (radius 5 µm, 400 grains, 0.2 µm
  voxels, 54³), 1C, times 240, 480, 720 s — for a GPU; not run on the 2-core CPU.

``--gradient-only`` times one loss + gradient (first call with compile, then warm)
without fitting, for sizes the CPU cannot fit in a minute. Runs of other cases kept in
the JSON of this device are preserved.

Reported: surface grains, accuracy (all / determined), the number the Gauss–Newton
analysis marks determined, iterations, wall time of the fit and of one loss+gradient
evaluation (warm), the applied vs fitted Li flow, and the figure
(engine/plots/contact.py) beside the JSON in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, device_info, device_slug, time_call, write_result  # noqa: E402

from ssbx.engine.geometry.microstructure import polycrystalline_particle  # noqa: E402
from ssbx.engine.inverse.reactive_contact import (  # noqa: E402
    ContactProblem, fit_reactive_contact, make_contact_setup, synthetic_contact_maps,
)
from ssbx.engine.observables.observation import ObservationOperator, parse_axis  # noqa: E402
from ssbx.engine.plots.contact import plot_contact_fit  # noqa: E402

CASES = {
    "medium": {"radius_m": 1.0e-6, "voxel_size_m": 1e-7, "n_grains": 60, "c_rate": 10.0,
               "t_s": [10.0, 20.0, 30.0]},
    "s1": {"radius_m": 5e-6, "voxel_size_m": 2e-7, "n_grains": 400, "c_rate": 1.0,
           "t_s": [240.0, 480.0, 720.0]},
}


def run_case(name: str, axes, seed: int = 0, noise_std: float = 0.005, iterations_per_stage: int = 40,
             gradient_only: bool = False):
    c = CASES[name]
    t0 = time.perf_counter()
    micro = polycrystalline_particle(c["radius_m"], c["voxel_size_m"], n_grains=c["n_grains"],
                                     reactive_fraction=2 / 3, seed=seed)
    ops = [ObservationOperator("projection", beam_axis=parse_axis(a), min_thickness_voxels=2) for a in axes]
    setup = make_contact_setup(micro, [5e-15, 5e-15, 1e-20], 49214.0, 0.95, c["c_rate"], -1, c["t_s"], ops)
    measured = synthetic_contact_maps(setup, micro.reactive_grains, noise_std=noise_std, seed=1)
    problem = ContactProblem(setup, measured)
    t_setup = time.perf_counter() - t0
    vg = jax.jit(jax.value_and_grad(problem.objective))
    s = jnp.zeros(setup.n_surface, setup.x0.dtype)
    t0 = time.perf_counter()
    jax.block_until_ready(vg(s, jnp.asarray(0.1, s.dtype)))
    t_compile = time.perf_counter() - t0
    t_grad = time_call(vg, s, jnp.asarray(0.1, s.dtype), repeats=1 if gradient_only else 3)
    if gradient_only:
        return setup, None, measured, {
            "case": name, "mode": "gradient_only", "grid": list(micro.labels.shape),
            "n_grains": int(micro.n_grains), "n_surface_grains": int(setup.n_surface),
            "beam_axes": [str(a) for a in axes], "t_s": list(c["t_s"]), "c_rate": c["c_rate"],
            "n_steps": int(setup.n_steps), "setup_s": t_setup, "first_loss_and_gradient_s": t_compile,
            "loss_and_gradient_s": t_grad,
        }
    t0 = time.perf_counter()
    fit = fit_reactive_contact(problem, true_reactive=micro.reactive_grains,
                               iterations_per_stage=iterations_per_stage)
    t_fit = time.perf_counter() - t0
    wrong = ~(fit.reactive == fit.true_reactive)
    result = {
        "case": name,
        "mode": "fit",
        "grid": list(micro.labels.shape),
        "n_grains": int(micro.n_grains),
        "n_surface_grains": int(setup.n_surface),
        "n_true_reactive": int(fit.true_reactive.sum()),
        "beam_axes": [str(a) for a in axes],
        "t_s": list(c["t_s"]),
        "c_rate": c["c_rate"],
        "noise_std": noise_std,
        "n_steps": int(setup.n_steps),
        "accuracy": fit.accuracy,
        "n_wrong": int(wrong.sum()),
        "n_determined": int(fit.determined.sum()),
        "determined_accuracy": fit.determined_accuracy,
        "wrong_grains": [{"grain_id": int(g), "weight": float(w), "std": float(sd), "area_m2": float(a),
                          "determined": bool(d)}
                         for g, w, sd, a, d in zip(fit.grain_id[wrong], fit.weight[wrong], fit.std[wrong],
                                                   fit.area_m2[wrong], fit.determined[wrong])],
        "n_iterations": len(fit.history) - 1,
        "start_loss": fit.history[0]["loss"],
        "data_loss": fit.data_loss,
        "li_flow_mol_s": fit.li_flow_mol_s,
        "li_flow_fitted_mol_s": fit.li_flow_fitted_mol_s,
        "setup_s": t_setup,
        "first_loss_and_gradient_s": t_compile,
        "loss_and_gradient_s": t_grad,
        "fit_s": t_fit,
    }
    return setup, fit, measured, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="medium")
    parser.add_argument("--axes", nargs="+", action="append",
                        help="beam axes (x, y, z) of one run; repeat for more runs (default: z x, then z alone)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gradient-only", action="store_true",
                        help="time one loss + gradient (compile and warm) without fitting; for sizes a CPU cannot fit")
    args = parser.parse_args(argv)
    runs = args.axes or [["z", "x"], ["z"]]
    info = device_info()
    name = "reactive_contact_inversion"
    png = RESULTS / f"{name}_{device_slug(info)}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = []
    for i, axes in enumerate(runs):
        setup, fit, measured, result = run_case(args.case, axes, args.seed, gradient_only=args.gradient_only)
        results.append(result)
        if args.gradient_only:
            print(result)
            continue
        if i == 0:  # the figure shows the first run
            plot_contact_fit(setup, fit, measured, png,
                             title=f"reactive contact, {args.case} case, beam axes {' '.join(axes)}: "
                                   f"{result['n_surface_grains']} surface grains, "
                                   f"{100 * result['accuracy']:.0f} % classified correctly")
            result["figure"] = png.name
        print(", ".join(f"{k}: {result[k]}" for k in (
            "beam_axes", "grid", "n_surface_grains", "accuracy", "n_determined", "determined_accuracy",
            "n_iterations", "loss_and_gradient_s", "fit_s")))
    # keep the other cases' entries of an earlier run on this device
    done = {(r["case"], r["mode"], tuple(r["beam_axes"])) for r in results}
    old = RESULTS / f"{name}_{device_slug(info)}.json"
    if old.exists():
        kept = [r for r in json.loads(old.read_text()).get("results", [])
                if (r["case"], r.get("mode", "fit"), tuple(r["beam_axes"])) not in done]
        results = kept + results
    path = write_result(name, {"device": info, "results": results})
    print(f"wrote {path}" + ("" if args.gradient_only else f" and {png}"))


if __name__ == "__main__":
    main()

"""``ssbx fit`` with ``[parameters.reactive]``: which surface grains are in ionic contact.

Called by engine/cli/fit.py when the fit file frees the reactive mask
(docs/inverse_contact.md). Writes into the output folder:

* ``fit_result.json`` — one row per surface grain (fitted weight, reactive or not,
  Laplace std and determined flag, candidate area, the truth when ``--make-synthetic``
  made the maps), accuracy, applied and fitted Li flow, the settings;
* ``loss_history.csv`` — iteration, stage, penalty weight, loss, gradient norm;
* ``contact_fit.png`` — surface map of the fitted mask vs truth and residual maps.

``--make-synthetic`` takes the truth from the scenario itself: the particle it
generates has ``particle.reactive_fraction`` of its surface grains reactive (chosen
with ``particle.seed``); the fit ignores that mask and recovers it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
from pathlib import Path


def _operator(cfg, kind, beam_axis, factor):
    from ssbx.engine.observables.observation import ObservationOperator

    m = cfg.measurement
    return ObservationOperator(kind=kind, beam_axis=beam_axis, factor=factor, shift_px=tuple(m.shift_px),
                               shift_method=m.shift_method, min_thickness_voxels=m.min_thickness_voxels,
                               min_active_fraction=m.min_active_fraction)


def run_contact(cfg, args, out: Path, log) -> int:
    import numpy as np

    from ssbx.engine.errors import ConfigError
    from ssbx.engine.geometry.microstructure import build_microstructure
    from ssbx.engine.inverse.fitting import FitDiverged
    from ssbx.engine.inverse.reactive_contact import (
        ContactProblem, contact_setup_from_scenario, fit_reactive_contact, synthetic_contact_maps,
    )
    from ssbx.engine.io.measurements import pixel_factor, save_measurement
    from ssbx.engine.observables.observation import parse_axis

    micro = build_microstructure(cfg.scenario)
    m = cfg.measurement
    truth = setup = None
    if args.make_synthetic:
        syn = cfg.synthetic
        if syn is not None and syn.truth:
            raise ConfigError(
                f"synthetic.truth = {dict(syn.truth)}: with [parameters.reactive] the synthetic truth is the "
                "scenario's own mask (particle.reactive_fraction, particle.seed); leave synthetic.truth empty"
            )
        if m.t_s is None or m.pixel_size_m is None:
            raise ConfigError("--make-synthetic needs measurement.t_s and measurement.pixel_size_m in the fit file")
        if cfg.measurement_path.exists() and not args.overwrite:
            raise ConfigError(f"measurement.file = {str(cfg.measurement_path)!r} already exists; "
                              "--make-synthetic would replace it: pass --overwrite, or name another file")
        op = _operator(cfg, m.kind or "projection",
                       parse_axis(m.beam_axis if m.beam_axis is not None else "z", 3, "measurement.beam_axis"),
                       pixel_factor(m.pixel_size_m, micro.voxel_size_m))
        setup = contact_setup_from_scenario(cfg.scenario, m.t_s, [op], micro, cfg.optimizer.checkpoint_every)
        noise, seed = (syn.noise_std, syn.seed) if syn is not None else (0.0, 0)
        synthetic = synthetic_contact_maps(setup, micro.reactive_grains, noise, seed)[0]
        save_measurement(cfg.measurement_path, synthetic, m.format)
        truth = micro.reactive_grains
        log(f"ssbx fit: wrote synthetic measurement {cfg.measurement_path} "
            f"({int(truth[setup.surface_grains].sum())} of {setup.n_surface} surface grains reactive)")

    measured = cfg.load_measured()
    op = _operator(cfg, measured.kind, measured.beam_axis if measured.beam_axis is not None else 2,
                   measured.pixel_factor(micro.voxel_size_m))
    if setup is None or setup.operators != (op,) or not np.array_equal(setup.t_s, measured.t_s):
        setup = contact_setup_from_scenario(cfg.scenario, measured.t_s, [op], micro, cfg.optimizer.checkpoint_every)
    problem = ContactProblem(setup, [measured])
    r = cfg.reactive
    log(f"ssbx fit: reactive mask of {setup.n_surface} surface grains from {problem.n_pixels} pixels in "
        f"{measured.n_times} maps, grid {setup.active.shape}, {setup.n_steps} steps, penalty stages "
        f"{list(r.penalty_schedule)}")

    def progress(entry):
        log(f"  {entry['iteration']:4d} stage {entry['stage']} λ {entry['penalty_weight']:.3g} "
            f"loss {entry['loss']:.6g}  |g| {entry['grad_norm']:.3g}")

    t0 = time.perf_counter()
    try:
        fit = fit_reactive_contact(problem, true_reactive=truth, start_weight=r.start,
                                   penalty_schedule=r.penalty_schedule, iterations_per_stage=r.iterations_per_stage,
                                   threshold=r.threshold, gtol=cfg.optimizer.gtol, ftol=cfg.optimizer.ftol,
                                   uncertainty=cfg.output.uncertainty, callback=progress)
    except FitDiverged as err:
        _write_history(err.history, out / "loss_history.csv")
        print(f"ssbx fit: {err}", file=sys.stderr)
        return 3
    elapsed = time.perf_counter() - t0
    payload = json.loads(fit.to_json())
    payload["wall_time_s"] = elapsed
    payload["settings"] = {
        "scenario": cfg.scenario.to_dict(),
        "measurement": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(m).items()},
        "measurement_file": str(cfg.measurement_path),
        "reactive": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(r).items()},
        "n_steps": setup.n_steps,
        "n_pixels": problem.n_pixels,
    }
    (out / "fit_result.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    _write_history(fit.history, out / "loss_history.csv")
    if cfg.output.plots and not args.no_plots:
        from ssbx.engine.plots.contact import plot_contact_fit

        plot_contact_fit(setup, fit, [measured], out / "contact_fit.png")
    n_det = "" if fit.determined is None else f", {int(fit.determined.sum())} determined"
    acc = "" if fit.accuracy is None else f", {100 * fit.accuracy:.1f} % classified as the truth"
    print(f"ssbx fit: {int(fit.reactive.sum())} of {setup.n_surface} surface grains reactive{n_det}{acc}; "
          f"{len(fit.history) - 1} iterations in {elapsed:.1f} s", file=sys.stderr)
    log(f"ssbx fit: wrote {out}")
    return 0


def _write_history(history, path: Path) -> Path:
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["iteration", "stage", "penalty_weight", "loss", "grad_norm"])
        for h in history:
            w.writerow([h["iteration"], h["stage"], repr(h["penalty_weight"]), repr(h["loss"]), repr(h["grad_norm"])])
    return path

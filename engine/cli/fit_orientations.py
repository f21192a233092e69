"""``ssbx fit`` with ``[parameters.orientations]``: every grain's c axis (and D1) from SOC maps.

Called by engine/cli/fit.py when the fit file frees the orientations
(docs/inverse_orientations.md). The grain map is the scenario's particle (known); its
orientation table is the unknown. ``[measurement] file`` may be a list of files, one
per beam axis (the fit uses them jointly). Writes into the output folder:

* ``fit_result.json`` — one row per grain (fitted direction, angular std, determined
  flag, voxels; misorientation to the truth and the recovery summary when a truth is
  known), D1 ± std when ``[parameters.D1]`` is given, losses, the settings;
* ``loss_history.csv`` — iteration, stage, loss;
* ``orientation_poles.png`` (pole figure, fitted vs true) and
  ``orientation_residuals.png`` (simulated − measured per beam axis and time).

``--make-synthetic`` takes the truth from the scenario itself: its generated particle's
orientation table (``particle.seed``) and, for D1, ``[synthetic] truth.D1`` (else the
material's D1); it writes one projection file per ``beam_axes`` entry at the
``[measurement] file`` paths, then fits them from the starts of ``[parameters.orientations]``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
from pathlib import Path


def check_scenario(scenario) -> None:
    """ConfigError for scenarios the orientation fit cannot represent (named, with the reason)."""
    from ssbx.engine.errors import ConfigError

    if scenario.cell.enabled:
        raise ConfigError(
            "cell.enabled = true: the orientation fit runs on the particle model (prescribed surface flux); "
            "a [cell] scenario (Butler–Volmer kinetics, conduction) is not differentiable per grain axis yet — "
            "set cell.enabled = false"
        )
    if scenario.protocol.kind != "prescribed_flux":
        raise ConfigError(f"protocol.kind = {scenario.protocol.kind!r}: the orientation fit needs 'prescribed_flux'")
    if scenario.mechanics.enabled and scenario.mechanics.couple_diffusion:
        raise ConfigError(
            "mechanics.couple_diffusion = true: the orientation fit does not rotate the stress coupling with the "
            "fitted axes; set it to false"
        )
    if scenario.particle.ndim != 3:
        raise ConfigError(f"particle.ndim = {scenario.particle.ndim!r}: the orientation fit needs a 3D particle")


def _settings_dict(obj) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(obj).items()}


def run_orientations(cfg, args, out: Path, log) -> int:
    import numpy as np

    from ssbx.engine.errors import ConfigError
    from ssbx.engine.geometry.microstructure import build_microstructure
    from ssbx.engine.inverse.fitting import forward_setup
    from ssbx.engine.inverse.orientations import (OrientationProblem, fit_grain_orientations,
                                                  load_orientation_table, synthetic_orientation_maps)
    from ssbx.engine.io.measurements import pixel_factor, save_measurement
    from ssbx.engine.observables.observation import ObservationOperator, parse_axis
    from ssbx.kernels.c_axis import c_axis_of_quaternion

    o = cfg.orientations
    m = cfg.measurement
    check_scenario(cfg.scenario)
    micro = build_microstructure(cfg.scenario)
    n_grains = int(micro.orientations.shape[0])
    d1 = next((p for p in cfg.parameters if p.name == "D1"), None)
    operator = ObservationOperator("projection", beam_axis=2, min_thickness_voxels=m.min_thickness_voxels,
                                   min_active_fraction=m.min_active_fraction)
    scenario_axes = np.asarray(c_axis_of_quaternion(np.asarray(micro.orientations)), np.float64)
    truth = None
    if o.truth_file:
        p = Path(o.truth_file)
        truth = load_orientation_table(p if p.is_absolute() else cfg.base_dir / p, n_grains)
    paths = cfg.measurement_paths

    if args.make_synthetic:
        syn = cfg.synthetic
        extra = sorted(set(syn.truth) - {"D1"}) if syn is not None else []
        if extra:
            raise ConfigError(f"synthetic.truth = {dict(syn.truth)}: with [parameters.orientations] the synthetic "
                              f"truth is the scenario's orientation table and D1; remove {extra}")
        if m.t_s is None or m.pixel_size_m is None:
            raise ConfigError("--make-synthetic needs measurement.t_s and measurement.pixel_size_m in the fit file")
        if (m.kind or "projection") != "projection":
            raise ConfigError(f"measurement.kind = {m.kind!r}: --make-synthetic writes projections for the "
                              "orientation fit")
        if len(paths) != len(o.beam_axes):
            raise ConfigError(f"measurement.file = {list(map(str, paths))}: --make-synthetic writes one file per "
                              f"parameters.orientations.beam_axes {list(o.beam_axes)}; give {len(o.beam_axes)} files")
        for path in paths:
            if path.exists() and not args.overwrite:
                raise ConfigError(f"measurement.file = {str(path)!r} already exists; --make-synthetic would "
                                  "replace it: pass --overwrite, or name another file")
        factor = pixel_factor(m.pixel_size_m, micro.voxel_size_m)
        setup = forward_setup(cfg.scenario, m.t_s, dataclasses.replace(operator, factor=factor), [d1] if d1 else [],
                              microstructure=micro, checkpoint_every=cfg.optimizer.checkpoint_every)
        d1_true = (syn.truth.get("D1") if syn is not None else None) or float(setup.base.transport.diffusivity_m2_s[0])
        axes = [parse_axis(a, 3, "parameters.orientations.beam_axes") for a in o.beam_axes]
        noise, seed = (syn.noise_std, syn.seed) if syn is not None else (0.0, 0)
        synthetic = synthetic_orientation_maps(setup, scenario_axes, d1_true, beam_axes=axes, noise_std=noise,
                                               seed=seed)
        for path, meas in zip(paths, synthetic):
            save_measurement(path, meas, m.format)
        truth = scenario_axes
        log(f"ssbx fit: wrote synthetic measurements {', '.join(map(str, paths))} (the scenario's {n_grains} grain "
            f"axes, D1 = {d1_true:g} m²/s)")

    measured = cfg.load_measured_all()
    first = measured[0]
    setup = forward_setup(cfg.scenario, first.t_s,
                          dataclasses.replace(operator, factor=first.pixel_factor(micro.voxel_size_m)),
                          [d1] if d1 else [], microstructure=micro, checkpoint_every=cfg.optimizer.checkpoint_every)
    problem = OrientationProblem(setup, measured, d1)
    start = scenario_axes if o.start == "scenario" else None
    log(f"ssbx fit: c axes of {n_grains} grains" + (" and D1" if d1 else "") + f" from {problem.n_pixels} pixels "
        f"in {len(measured)} measurement(s) × {first.n_times} times, grid {setup.active.shape}, {setup.n_steps} steps; "
        f"{o.n_starts} start(s)")

    def progress(entry):
        log(f"  {entry['stage']:>8s} loss {entry['loss']:.6g}")

    t0 = time.perf_counter()
    try:
        fit = fit_grain_orientations(problem, n_starts=o.n_starts, adam_iterations=o.adam_iterations,
                                     learning_rate=o.learning_rate, lbfgs_iterations=o.lbfgs_iterations,
                                     max_rounds=o.max_rounds, seed=o.seed, max_std_deg=o.max_std_deg, truth=truth,
                                     callback=progress, start=start, continuation=o.continuation,
                                     mirror_relax_iterations=o.mirror_relax_iterations)
    except FloatingPointError as err:
        print(f"ssbx fit: {err}", file=sys.stderr)
        return 3
    elapsed = time.perf_counter() - t0
    payload = json.loads(fit.to_json())
    payload["wall_time_s"] = elapsed
    payload["n_pixels"] = problem.n_pixels
    payload["settings"] = {
        "scenario": cfg.scenario.to_dict(),
        "measurement": _settings_dict(m),
        "measurement_files": [str(p) for p in paths],
        "orientations": _settings_dict(o),
        "parameters": [dataclasses.asdict(p) for p in cfg.parameters],
        "n_steps": setup.n_steps,
    }
    (out / "fit_result.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    with (out / "loss_history.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["iteration", "stage", "loss"])
        for i, h in enumerate(fit.history):
            w.writerow([i, h["stage"], repr(h["loss"])])
    if cfg.output.plots and not args.no_plots:
        from ssbx.engine.plots.orientations import plot_orientation_residuals, plot_pole_figure

        plot_pole_figure(fit.directions, out / "orientation_poles.png", true=fit.true_directions,
                         determined=fit.determined)
        plot_orientation_residuals(problem, fit, out / "orientation_residuals.png")
    n_det = int(fit.determined.sum())
    line = f"ssbx fit: {n_det} of {n_grains} grains determined (angular std ≤ {o.max_std_deg:g}°)"
    if fit.misorientation_deg is not None:
        rec = fit.recovery(15.0)["determined"]
        if rec["n"]:
            line += f", {100 * rec['fraction_within']:.0f} % of them within 15° of the truth"
    if d1 is not None:
        line += f"; D1 = {fit.d1_m2_s:.4g} ± {fit.d1_std_m2_s:.2g} m²/s"
    print(line + f"; {len(fit.history)} iterations in {elapsed:.1f} s", file=sys.stderr)
    log(f"ssbx fit: wrote {out}")
    return 0

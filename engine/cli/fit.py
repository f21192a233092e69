"""``ssbx fit FIT.toml``: fit model parameters to measured SOC maps.

Writes into the output folder (``[output] folder``, or ``--out``):

* ``fit_result.json`` — fitted values, Laplace uncertainties and identifiability
  flags, the optimiser's stopping message, the validated fit settings;
* ``loss_history.csv`` — one row per iteration: iteration, stage, loss, gradient
  norm, parameter values;
* ``fit_maps.png``, ``fit_loss.png``, ``fit_uncertainty.png`` — diagnostic plots
  (unless ``[output] plots = false`` or ``--no-plots``).

``--make-synthetic`` first writes a synthetic measurement file (the forward model at
``[synthetic] truth`` plus Gaussian noise) at ``[measurement] file``, then fits it.
Exit codes: 0 done, 2 invalid input, 3 the fit diverged (the history so far is written).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

HELP = "fit parameters (diffusivities, flux scale) to measured SOC maps"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``fit`` on an argparse sub-parser collection; returns the parser."""
    p = subparsers.add_parser(
        "fit",
        help=HELP,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("fit_file", help="fit TOML file (see examples/fit.toml)")
    p.add_argument("--out", "-o", default=None, help="output folder (default: [output] folder of the fit file)")
    p.add_argument("--make-synthetic", action="store_true",
                   help="write a synthetic measurement from [synthetic] at [measurement] file, then fit it")
    p.add_argument("--overwrite", action="store_true",
                   help="let --make-synthetic replace an existing [measurement] file")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    p.add_argument("--float64", action="store_true", help="fit in float64 (overrides run.dtype)")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-iteration log")
    p.set_defaults(handler=run)
    return p


def run(args) -> int:
    import jax

    from ssbx.engine.errors import ConfigError
    from ssbx.engine.inverse.fit_file import load_fit_config

    try:
        cfg = load_fit_config(args.fit_file)
        if args.float64:
            cfg = _with_dtype(cfg, "float64")
        with jax.enable_x64(cfg.scenario.run.dtype == "float64"):
            return _run(cfg, args)
    except ConfigError as err:
        print(f"ssbx fit: invalid input: {err}", file=sys.stderr)
        return 2


def _with_dtype(cfg, dtype):
    import dataclasses

    return dataclasses.replace(cfg, scenario=cfg.scenario.replace(run={"dtype": dtype}))


def _run(cfg, args) -> int:
    from ssbx.engine.errors import ConfigError
    from ssbx.engine.inverse.fitting import FitDiverged, FitProblem, fit
    from ssbx.engine.io.measurements import save_measurement

    out = Path(args.out) if args.out else cfg.output_folder
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    if cfg.reactive is not None:  # [parameters.reactive]: the reactive-contact fit
        from ssbx.engine.cli.fit_contact import run_contact

        return run_contact(cfg, args, out, log)
    if cfg.orientations is not None:  # [parameters.orientations]: per-grain c axes (+ D1)
        from ssbx.engine.cli.fit_orientations import run_orientations

        return run_orientations(cfg, args, out, log)

    if args.make_synthetic:
        if cfg.synthetic is None:
            raise ConfigError("--make-synthetic needs a [synthetic] section with truth = {D1 = ..., ...}")
        if cfg.measurement_path.exists() and not args.overwrite:
            raise ConfigError(f"measurement.file = {str(cfg.measurement_path)!r} already exists; "
                              "--make-synthetic would replace it: pass --overwrite, or name another file")
        measured = make_synthetic(cfg)
        save_measurement(cfg.measurement_path, measured, cfg.measurement.format)
        log(f"ssbx fit: wrote synthetic measurement {cfg.measurement_path} (truth {cfg.synthetic.truth})")

    measured = cfg.load_measured()
    m = cfg.measurement
    problem = FitProblem.from_scenario(
        cfg.scenario, measured, cfg.parameters, shift_px=m.shift_px, shift_method=m.shift_method,
        min_thickness_voxels=m.min_thickness_voxels, min_active_fraction=m.min_active_fraction,
        checkpoint_every=cfg.optimizer.checkpoint_every,
    )
    setup = problem.setup
    log(f"ssbx fit: {len(problem.index)} usable pixels in {measured.n_times} maps, grid {setup.active.shape}, "
        f"{setup.n_steps} steps, free {problem.names}")
    o = cfg.optimizer

    def progress(entry):
        values = ", ".join(f"{k} = {v:.5g}" for k, v in entry["values"].items())
        log(f"  {entry['iteration']:4d} {entry['stage']:>6s} loss {entry['loss']:.6g}  |g| {entry['grad_norm']:.3g}  {values}")

    t0 = time.perf_counter()
    try:
        result = fit(problem, o.method, o.learning_rate, o.adam_iterations, o.lbfgs_iterations,
                     o.gtol, o.ftol, uncertainty=cfg.output.uncertainty, callback=progress)
    except FitDiverged as err:
        write_history(err.history, out / "loss_history.csv")
        print(f"ssbx fit: {err}", file=sys.stderr)
        return 3
    elapsed = time.perf_counter() - t0
    payload = json.loads(result.to_json())
    payload["wall_time_s"] = elapsed
    payload["settings"] = _settings(cfg, problem)
    (out / "fit_result.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    write_history(result.history, out / "loss_history.csv")
    if cfg.output.plots and not args.no_plots:
        from ssbx.engine.plots.fit import plot_loss, plot_maps, plot_uncertainty

        plot_maps(measured, result.simulated, problem.mask, out / "fit_maps.png",
                  title=", ".join(f"{k} = {v:.4g}" for k, v in result.values.items()))
        truth = cfg.synthetic.truth if (args.make_synthetic and cfg.synthetic) else None
        plot_loss(result.history, out / "fit_loss.png", truth=truth)
        if result.uncertainty is not None:
            plot_uncertainty(result.uncertainty, out / "fit_uncertainty.png")
    log(f"ssbx fit: {result.message}; {len(result.history) - 1} iterations in {elapsed:.1f} s")
    for name, value in result.values.items():
        line = f"ssbx fit:   {name} = {value:.6g}"
        if result.uncertainty is not None:
            u = result.uncertainty["parameters"][name]
            line += f" ± {u['std']:.3g} ({100 * u['rel_std']:.3g} %)" + ("" if u["determined"] else "  NOT DETERMINED: " + "; ".join(u["reasons"]))
        print(line, file=sys.stderr)
    log(f"ssbx fit: wrote {out}")
    return 0


def make_synthetic(cfg):
    """Synthetic :class:`MeasuredMaps` for a fit config with a [synthetic] section."""
    from ssbx.engine.errors import ConfigError
    from ssbx.engine.inverse.fitting import forward_setup
    from ssbx.engine.inverse.fitting import synthetic_projection_maps
    from ssbx.engine.io.measurements import pixel_factor
    from ssbx.engine.observables.observation import ObservationOperator, parse_axis

    m = cfg.measurement
    if m.t_s is None or m.pixel_size_m is None:
        raise ConfigError("--make-synthetic needs measurement.t_s and measurement.pixel_size_m in the fit file")
    voxel = cfg.scenario.particle.voxel_size_m
    factor = pixel_factor(m.pixel_size_m, voxel)
    kind = m.kind or "projection"
    operator = ObservationOperator(
        kind=kind, beam_axis=parse_axis(m.beam_axis if m.beam_axis is not None else "z", 3, "measurement.beam_axis"),
        factor=factor, min_thickness_voxels=m.min_thickness_voxels, min_active_fraction=m.min_active_fraction,
    )
    # the time step must be stable for the truth (and for every value the fit may reach)
    setup = forward_setup(cfg.scenario, m.t_s, operator, cfg.parameters)
    return synthetic_projection_maps(setup, dict(cfg.synthetic.truth), cfg.synthetic.noise_std, cfg.synthetic.seed)


def write_history(history, path: Path) -> Path:
    names = list(history[0]["values"]) if history else []
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["iteration", "stage", "loss", "grad_norm"] + names)
        for h in history:
            w.writerow([h["iteration"], h["stage"], repr(h["loss"]), repr(h["grad_norm"])]
                       + [repr(h["values"].get(n, float("nan"))) for n in names])
    return path


def _settings(cfg, problem) -> dict:
    import dataclasses

    return {
        "scenario": cfg.scenario.to_dict(),
        "measurement": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg.measurement).items()},
        "measurement_file": str(cfg.measurement_path),
        "parameters": [dataclasses.asdict(p) for p in cfg.parameters],
        "optimizer": dataclasses.asdict(cfg.optimizer),
        "n_steps": problem.setup.n_steps,
        "segments": [list(s) for s in problem.setup.segments],
        "pixel_factor": problem.setup.operator.factor,
        "n_pixels": int(len(problem.index)),
    }

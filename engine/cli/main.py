"""Command line: ``ssbx run [SCENARIO.toml] [--out FILE.h5] ...``."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

DESCRIPTION = """\
ssbx: differentiable voxel simulations of solid-state battery cathode particles.

Without a scenario file, `ssbx run` runs the built-in default: a 10 µm NCM622
secondary particle of 400 Voronoi grains (random orientations, D = 5e-15, 5e-15,
1e-20 m²/s along [100], [010], [001]), delithiated at 1C through its whole surface
for 24 minutes (0.2 µm voxels), with the stress from chemical expansion at seven
snapshots. examples/default.toml is the same scenario with every key commented;
examples/ncm111_llzo_single_particle.toml cycles a particle in a cell.
"""


def _run_parser(sub):
    p = sub.add_parser(
        "run",
        help="run a scenario (the built-in default if no file is given)",
        description=DESCRIPTION + "\nWrites an HDF5 run file, a summary PNG and a ParaView sidecar (.xdmf) beside it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", nargs="?", help="scenario TOML file (default: built-in scenario)")
    p.add_argument("--out", "-o", default=None,
                   help="output HDF5 file (default: <run.name>.h5 in the current folder)")
    p.add_argument("--png", default=None,
                   help="summary PNG path (default: the output path with .png)")
    p.add_argument("--no-png", action="store_true", help="do not write the summary PNG")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (without it, ssbx run refuses to touch them)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--float64", action="store_true", help="run in float64 (overrides run.dtype)")
    p.add_argument("--resume", metavar="FILE.h5", default=None,
                   help="continue a killed cell run from the state saved in its run file (appends to that file; "
                        "no scenario, --out or --set)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one scenario key, e.g. --set protocol.c_rate=2 (TOML value syntax); repeatable")
    p.add_argument("--compile-cache", default=None, metavar="DIR",
                   help="keep compiled programs in DIR (JAX's persistent compilation cache): a later run "
                        "on the same grid with the same solver settings skips most of its compilation")
    return p


@contextlib.contextmanager
def _compile_cache(folder):
    """JAX's persistent compilation cache in ``folder`` (created if missing) while the
    command runs; the caller's cache setting is restored afterwards, so ``main()`` called
    in-process (a notebook, a test) leaves no global state behind.

    Compilation is a large part of a short run (at 1 µm the S2 example compiles for about
    9 of its 11 s); with the cache a repeated run loads the compiled programs instead.
    """
    if not folder:
        yield
        return
    from ssbx.engine.errors import ConfigError

    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--compile-cache = {folder!r}: exists and is not a folder; valid: a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--compile-cache = {folder!r}: cannot create the folder ({err.strerror})") from None
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    cc.reset_cache()  # the cache object binds its folder once: start it afresh on ours
    cc.set_cache_dir(str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        yield
    finally:
        cc.reset_cache()
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])


# exit codes (docs/errors_and_files.md): 0 completed or stopped, 2 invalid input or usage,
# 3 diverged, 4 failed on an unexpected error, 130 interrupted (Ctrl-C)
EXIT_FAILED = 4
EXIT_INTERRUPTED = 130


def _parse_overrides(items):
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover
        import tomli as tomllib
    from ssbx.engine.errors import ConfigError

    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. protocol.c_rate=2")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()  # bare strings: --set material.name=NCM811
        out.setdefault(section, {})[name] = parsed
    return out


def _exit_code(err: BaseException, after_interrupt: str) -> int:
    """One line for the user and the documented exit code of an exception that ended
    ``ssbx run``: invalid input 2, interrupted 130, any other failure 4 (the run file
    already says "interrupted" or "failed")."""
    from ssbx.engine.errors import ConfigError

    if isinstance(err, ConfigError):
        print(f"ssbx run: invalid input: {err}", file=sys.stderr)
        return 2
    if isinstance(err, KeyboardInterrupt):
        print(f"ssbx run: interrupted; the run file is marked 'interrupted' and {after_interrupt}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"ssbx run: failed: {type(err).__name__}: {err}", file=sys.stderr)
    return EXIT_FAILED


def cmd_run(args) -> int:
    try:
        with _compile_cache(args.compile_cache):
            return _cmd_run_or_resume(args)
    except (Exception, KeyboardInterrupt) as err:  # a bad --compile-cache: exit code 2, named
        return _exit_code(err, "keeps what was written")


def _cmd_run_or_resume(args) -> int:
    if args.resume:
        return cmd_resume(args)
    from ssbx.engine.config.scenario import Scenario, load_scenario

    try:
        scenario = load_scenario(args.scenario) if args.scenario else Scenario()
        overrides = _parse_overrides(args.set)
        if args.float64:
            overrides.setdefault("run", {})["dtype"] = "float64"
        if overrides:
            scenario = scenario.replace(**overrides)
        from ssbx.engine import api

        with api.x64_scope(scenario.run.dtype):  # 64-bit for this run only, restored after
            return _cmd_run(scenario, args)
    except (Exception, KeyboardInterrupt) as err:
        return _exit_code(err, "keeps what was written")


def _cmd_run(scenario, args) -> int:
    """The body of ``ssbx run`` once the scenario is known, inside its dtype's x64 scope."""
    from ssbx.engine import api
    from ssbx.engine.errors import ConfigError, SimulationDiverged
    from ssbx.engine.plots.summary import summary_figure

    out = Path(args.out) if args.out else Path(f"{scenario.run.name}.h5")
    from ssbx.engine.safe_files import check_resources, check_writable_folder

    check_writable_folder(out, "--out")
    check_resources(scenario, out)
    existing = [p for p in _output_paths(scenario, out, args) if p.exists()]
    if existing and not args.overwrite:
        names = ", ".join(str(p) for p in existing)
        raise ConfigError(f"output {names} already exists; pass --overwrite to replace it, or choose "
                          "another --out")
    _drop_foreign_sidecars(existing)
    print(f"ssbx run: {scenario.run.name} -> {out}", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        result = api.run(scenario, out, progress=not args.quiet, overwrite=args.overwrite, summary_png=False)
    except SimulationDiverged as err:
        print(f"ssbx run: simulation diverged: {err}", file=sys.stderr)
        return 3
    elapsed = time.perf_counter() - t0
    write_png = not args.no_png and scenario.output.summary_png
    if result.lanes:
        print(f"ssbx run: sweep of {scenario.sweep.parameter} over {len(result.lanes)} lanes in "
              f"{elapsed:.1f} s wall time", file=sys.stderr)
        for value, lane in zip(scenario.sweep.values, result.lanes):
            print(f"ssbx run:   {scenario.sweep.parameter} = {value!r}: {lane.status}, {lane.n_steps} steps "
                  f"(t = {lane.t_end_s:.6g} s) -> {lane.path}; {lane.message}", file=sys.stderr)
            if write_png:
                summary_figure(lane.path, lane.path.with_suffix(".png"))
        return 3 if result.status == "diverged" else 0
    if result.status == "stopped":
        print(f"ssbx run: {result.message}", file=sys.stderr)
    print(
        f"ssbx run: {result.status}: {result.n_steps} steps (t = {result.t_end_s:.6g} s) in "
        f"{elapsed:.1f} s wall time; wrote {out}",
        file=sys.stderr,
    )
    if write_png:
        png = Path(args.png) if args.png else out.with_suffix(".png")
        summary_figure(out, png)
        print(f"ssbx run: summary figure {png}", file=sys.stderr)
    return 0


def cmd_resume(args) -> int:
    """``ssbx run --resume FILE.h5``: continue a killed particle or cell run in its own file."""
    from ssbx.engine.errors import ConfigError, SimulationDiverged

    try:
        if args.scenario or args.out or args.set or args.float64:
            raise ConfigError("--resume FILE.h5 continues the run stored in that file: give no scenario, --out, "
                              "--set or --float64 with it (the file holds the scenario and its dtype)")
        from ssbx.engine import api

        path = Path(args.resume)
        print(f"ssbx run: resuming {path}", file=sys.stderr)
        t0 = time.perf_counter()
        try:
            result = api.resume(path, progress=not args.quiet, summary_png=not args.no_png,
                                overwrite_png=args.overwrite, png=args.png)
        except SimulationDiverged as err:
            print(f"ssbx run: simulation diverged: {err}", file=sys.stderr)
            return 3
        print(f"ssbx run: {result.status}: {result.n_steps} steps (t = {result.t_end_s:.6g} s), resumed in "
              f"{time.perf_counter() - t0:.1f} s wall time; wrote {path}", file=sys.stderr)
    except (Exception, KeyboardInterrupt) as err:
        return _exit_code(err, "can be resumed with --resume")
    return 0


def _output_paths(scenario, out: Path, args) -> list[Path]:
    """Every file ``ssbx run`` would write: the run file(s), their summary PNGs and XDMF sidecars."""
    if scenario.sweep.parameter:
        from ssbx.engine.runs.sweep import lane_paths

        runs = [Path(p) for p in lane_paths(out, len(scenario.sweep.values))]
        pngs = [p.with_suffix(".png") for p in runs]
    else:
        runs = [out]
        pngs = [Path(args.png) if args.png else out.with_suffix(".png")]
    if args.no_png or not scenario.output.summary_png:
        pngs = []
    if scenario.cell.enabled and scenario.cell.cathode != "particle":  # composite cells: <run>_particles.png
        pngs += [p.with_name(p.stem + "_particles.png") for p in pngs]
    from ssbx.engine.io.xdmf import sidecar_path

    return runs + pngs + [sidecar_path(p) for p in runs]


def _drop_foreign_sidecars(existing: list[Path]) -> None:
    """With --overwrite: remove an existing ``.xdmf`` that ssbx did not write, which the
    finishing run would otherwise leave in place (engine.io.xdmf.write_sidecar)."""
    from ssbx.engine.io.xdmf import is_ssbx_sidecar

    for p in existing:
        if p.suffix == ".xdmf" and p.is_file() and not is_ssbx_sidecar(p):
            p.unlink()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="ssbx", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    from ssbx.engine.observables.tortuosity import add_parser as tortuosity_parser, run as tortuosity_run

    tortuosity_parser(sub)
    from ssbx.engine.cli import fit as fit_cli

    fit_cli.add_parser(sub)
    from ssbx.engine.geometry import composite
    from ssbx.engine.observables import network

    composite.add_parser(sub)
    network.add_parser(sub)
    from ssbx.engine.runs import current_focusing

    current_focusing.add_parser(sub)
    from ssbx.engine.io import xdmf

    xdmf.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "tortuosity":
        return tortuosity_run(args)
    if args.command == "fit":
        return fit_cli.run(args)
    if args.command == "composite":
        return composite.run(args)
    if args.command == "analyze":
        return network.run(args)
    if args.command == "focus":
        return current_focusing.run(args)
    if args.command == "xdmf":
        return xdmf.run(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

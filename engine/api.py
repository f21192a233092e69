"""One entry point for scripts, notebooks, benchmarks and the CLI.

    from ssbx.engine import api
    result = api.run("examples/default.toml", "run.h5")      # or a Scenario
    data = result.load()                                       # RunData: timeseries, fields

:func:`run` picks the driver the scenario asks for: a particle run, a cell run on the
device stepper (or the legacy host loop with ``numerics.cell_driver = "host"``), or a
batched ``[sweep]`` (one file per lane). It writes the run file(s), the ParaView
sidecar ``.xdmf`` of each and, unless told not to, the summary PNG next to each; it never
replaces an existing file unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import jax

from ssbx.engine.config.scenario import Scenario, jnp_dtype, load_scenario
from ssbx.engine.errors import ConfigError
from ssbx.engine.io.run_file import RunData, load_run
from ssbx.engine.io.xdmf import is_ssbx_sidecar, sidecar_path
from ssbx.engine.safe_files import check_resources, check_writable_folder


@dataclasses.dataclass(frozen=True)
class Result:
    """How a run ended and where it is. ``status``: completed, stopped, diverged (a
    particle or cell run), or one Result per lane in ``lanes`` for a sweep."""

    path: Path
    status: str
    message: str
    t_end_s: float
    n_steps: int
    lanes: tuple = ()

    def load(self) -> RunData:
        """The run file's contents (timeseries, snapshots, attributes)."""
        return load_run(self.path)


def output_paths(scenario: Scenario, out: str | Path, summary_png: bool = True) -> list[Path]:
    """Every file :func:`run` would write: the run file(s) and their summary PNGs."""
    out = Path(out)
    if scenario.sweep.parameter:
        from ssbx.engine.runs.sweep import lane_paths

        runs = [Path(p) for p in lane_paths(out, len(scenario.sweep.values))]
    else:
        runs = [out]
    pngs = [p.with_suffix(".png") for p in runs] if summary_png and scenario.output.summary_png else []
    if scenario.cell.enabled and scenario.cell.cathode != "particle":  # composite cells: <run>_particles.png
        pngs += [p.with_name(p.stem + "_particles.png") for p in pngs]
    return runs + pngs + [sidecar_path(p) for p in runs]


def _scenario(scenario) -> Scenario:
    if isinstance(scenario, Scenario):
        return scenario
    if isinstance(scenario, (str, Path)):
        return load_scenario(scenario)
    raise ConfigError(f"scenario = {type(scenario).__name__}: valid: a Scenario or the path of a TOML file")


def run(scenario: Scenario | str | Path, out: str | Path, *, progress: bool = False,
        overwrite: bool = False, summary_png: bool = True) -> Result:
    """Run ``scenario`` (a :class:`Scenario` or a TOML path) into the HDF5 file ``out``.

    Raises ConfigError for invalid input (nothing written), and
    :class:`~ssbx.engine.errors.SimulationDiverged` after a NaN/Inf, when the file
    already keeps every step before it and says "diverged".
    """
    scenario = _scenario(scenario)
    out = Path(out)
    check_writable_folder(out, "out")
    check_resources(scenario, out)
    existing = [p for p in output_paths(scenario, out, summary_png) if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"output {', '.join(map(str, existing))} already exists; pass overwrite=True "
                          "(--overwrite) to replace it, or choose another output path")
    for path in existing:  # overwrite=True: a sidecar ssbx did not write would otherwise stay
        if path.suffix == ".xdmf" and path.is_file() and not is_ssbx_sidecar(path):
            path.unlink()
    with x64_scope(scenario.run.dtype):
        return _run(scenario, out, progress, summary_png)


def x64_scope(dtype_name: str):
    """The JAX precision a run of ``run.dtype = dtype_name`` executes in: 64-bit switched
    on for "float64" (thread-locally, through ``jax.enable_x64``, and restored on exit,
    also after an exception or a KeyboardInterrupt), the caller's setting left as it is
    for "float32". Nothing flips ``jax_enable_x64`` process-wide, so a float64 run does
    not turn later runs in the same process (a notebook, a test session) into float64."""
    return jax.enable_x64(True) if dtype_name == "float64" else contextlib.nullcontext()


def _run(scenario: Scenario, out: Path, progress: bool, summary_png: bool) -> Result:
    dtype = jnp_dtype(scenario.run.dtype)
    if scenario.sweep.parameter:
        from ssbx.engine.runs.sweep import run_sweep

        lanes = tuple(_as_result(r) for r in run_sweep(scenario, out, progress=progress, dtype=dtype))
        status = "diverged" if any(r.status == "diverged" for r in lanes) else (
            "completed" if all(r.status == "completed" for r in lanes) else "stopped")
        result = Result(out, status, f"{len(lanes)} lanes of {scenario.sweep.parameter}",
                        max(r.t_end_s for r in lanes), max(r.n_steps for r in lanes), lanes)
        pngs = [r.path for r in lanes]
    else:
        if scenario.cell.enabled and scenario.numerics.cell_driver == "host":
            from ssbx.engine.runs.host_cell import run_cell as driver
        elif scenario.cell.enabled:
            from ssbx.engine.runs.cell_run import run_cell_device as driver
        else:
            driver = None
        if driver is None:
            from ssbx.engine.runs.particle_run import run_scenario

            result = _as_result(run_scenario(scenario, out, progress=progress))
        else:
            result = _as_result(driver(scenario, out, progress=progress, dtype=dtype))
        pngs = [out]
    if summary_png and scenario.output.summary_png:
        from ssbx.engine.plots.summary import summary_figure

        for path in pngs:
            summary_figure(path, Path(path).with_suffix(".png"))
    return result


def resume(path: str | Path, *, progress: bool = False, summary_png: bool = True,
           overwrite_png: bool = False, png: str | Path | None = None) -> Result:
    """Continue the killed (or failed) run of the run file ``path`` from the State it
    saved last (engine.io.restart), in the same file: a particle run or a cell run on
    the device stepper. On the same device and dtype the file ends as an uninterrupted
    run's would, bit for bit; the summary PNG goes to ``png`` (default: beside the run
    file). Refused with a ConfigError naming why: no such file, a
    file of another ssbx version, a run that already ended, a sweep lane, a host-loop
    cell run, a geometry the scenario no longer reproduces."""
    from ssbx.engine.io.restart import resume_scenario

    path = Path(path)
    scenario, _ = resume_scenario(path)
    with x64_scope(scenario.run.dtype):
        return _resume(path, scenario, progress, summary_png, overwrite_png, png)


def _resume(path: Path, scenario: Scenario, progress: bool, summary_png: bool, overwrite_png: bool,
            png: str | Path | None) -> Result:
    png = Path(png) if png is not None else path.with_suffix(".png")
    write_png = summary_png and scenario.output.summary_png
    if write_png and png.exists() and not overwrite_png:
        raise ConfigError(f"output {png} already exists; pass --overwrite to replace it, or --no-png")
    if scenario.cell.enabled:
        from ssbx.engine.runs.cell_run import resume_cell_device

        result = _as_result(resume_cell_device(path, progress=progress))
    else:
        from ssbx.engine.runs.particle_run import resume_particle

        result = _as_result(resume_particle(path, scenario, progress=progress))
    if write_png:
        from ssbx.engine.plots.summary import summary_figure

        summary_figure(path, png)
    return result


def _as_result(r) -> Result:
    return Result(Path(r.path), r.status, r.message, float(r.t_end_s), int(r.n_steps))

"""Batched parameter sweeps: several values of one scenario key as one vmapped run.

A ``[sweep]`` section names a scenario key and its values::

    [sweep]
    parameter = "electrochemistry.exchange_current_A_m2"
    values = [0.5, 1.0, 2.0]
    batch_size = 0          # lanes per vmapped batch; 0 = all at once

``parameter = "protocol.c_rate"`` sets the C-rate of every constant-current step of
the protocol (S2 runs its charge and discharge at one rate). Each value gives a lane
scenario, validated like any scenario, and is resolved; the lanes must share their
geometry and every static setting (a key that changes the voxel grid, the protocol's
structure or a solver choice cannot be batched and is refused), so only array leaves
differ. Their parameter, protocol and state pytrees are stacked on a leading lane axis
and the device loop runs vmapped: a lane that reaches the end of its protocol (or
stops) is frozen while the others continue. ``batch_size`` bounds memory by running
the lanes in groups one after another.

Output: one run file per lane, ``<out stem>_<lane>.h5`` beside ``--out`` (root
attributes ``sweep_parameter``, ``sweep_value``, ``sweep_lane``), each with the
layout of a single run.

Particle scenarios (prescribed flux) sweep the same way on their own State
(engine.solve.particle_step): the lanes' parameters and States are stacked and one
vmapped chunk advances them all. Their explicit time step must be shared, so every
lane runs on the finest lane's time grid (the smallest stable Δt — the lane with the
largest D); a lane then equals a separate run with ``numerics.max_time_step_s`` set to
that Δt. A C-rate or β sweep keeps every lane's own Δt.
"""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ssbx.engine.config.scenario import Scenario, lane_scenario
from ssbx.engine.errors import ConfigError
from ssbx.engine.io.run_file import RunWriter
from ssbx.engine.safe_files import exception_status
from ssbx.engine.runs.cell_run import LaneFile, check_resolved, drive, read_fields
from ssbx.engine.runs.particle_run import _ParticleRun
from ssbx.engine.solve.particle_step import advance_particle
from ssbx.engine.solve.cell_step import initial_state
from ssbx.engine.model.resolve import resolve_cell

def _same_statics(a, b) -> bool:
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)


def _stack(trees):
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def lane_paths(out_path, n: int) -> list[Path]:
    out = Path(out_path)
    return [out.with_name(f"{out.stem}_{i}{out.suffix or '.h5'}") for i in range(n)]


def run_sweep(scenario: Scenario, out_path, progress: bool = True, dtype=jnp.float32) -> list:
    """Run every lane of ``scenario.sweep``; returns one result per lane (a CellResult
    for cell scenarios, a particle_run.RunResult for particle scenarios)."""
    from tqdm.auto import tqdm

    sweep = scenario.sweep
    lanes_sc = [lane_scenario(scenario, sweep.parameter, v) for v in sweep.values]
    if not scenario.cell.enabled:
        return _particle_sweep(scenario, lanes_sc, lane_paths(out_path, len(lanes_sc)), progress)
    resolved = [resolve_cell(sc, dtype) for sc in lanes_sc]
    first = resolved[0]
    check_resolved(first)
    for value, r in zip(sweep.values, resolved[1:]):
        same_grid = (r.micro.labels.shape == first.micro.labels.shape
                     and np.array_equal(r.micro.labels, first.micro.labels)
                     and np.array_equal(r.micro.grain_id, first.micro.grain_id))
        if not same_grid or not all(_same_statics(getattr(r, k), getattr(first, k))
                                    for k in ("geometry", "params", "numerics", "protocol")):
            raise ConfigError(
                f"sweep.parameter = {sweep.parameter!r}: the value {value!r} changes the geometry or a static "
                "setting (voxel grid, protocol structure, solver or OCV choice), so its lanes cannot be batched; "
                "sweep a physical parameter of the resolved model (e.g. electrochemistry.exchange_current_A_m2, "
                "material.diffusivity_m2_s, protocol.c_rate) or run the values separately")
    paths = lane_paths(out_path, len(lanes_sc))
    batch = sweep.batch_size or len(lanes_sc)
    chunk = scenario.numerics.chunk_steps
    results = []
    bar = tqdm(disable=not progress, desc=f"{scenario.run.name} sweep", unit="step", dynamic_ncols=True)
    try:
        for start in range(0, len(lanes_sc), batch):
            group = list(range(start, min(start + batch, len(lanes_sc))))
            files = []
            for i in group:
                attrs = {"sweep_parameter": sweep.parameter, "sweep_value": json.dumps(sweep.values[i]),
                         "sweep_lane": i}
                files.append(LaneFile(lanes_sc[i], resolved[i], paths[i], attrs))
            try:
                states = [initial_state(resolved[i].geometry, resolved[i].params, resolved[i].x_initial, dtype)
                          for i in group]
                for f, i, st in zip(files, group, states):
                    f.snapshot(read_fields(resolved[i].geometry, resolved[i].params, st))
                stack = lambda name: _stack([getattr(resolved[i], name) for i in group])  # noqa: E731
                drive(first, stack("params"), stack("numerics"), stack("protocol"), _stack(states),
                      jnp.asarray([resolved[i].x_initial for i in group], dtype), files, chunk, bar=bar,
                      batched=True)
            finally:
                for f in files:
                    if not f.done:
                        f.close("failed", "the sweep stopped on an exception")
            results.extend(f.result() for f in files)
    finally:
        bar.close()
    return results


@eqx.filter_jit
def _advance_lanes(geometry, params, states, chunk: int, dt_s: float, block: int, coupling):
    """One chunk of every lane (leading axis of ``params``, ``states``, ``coupling``)."""
    return jax.vmap(lambda p, st, c: advance_particle(geometry, p, st, chunk, dt_s, block, c))(
        params, states, coupling)


def _particle_sweep(scenario: Scenario, lanes_sc: list, paths: list, progress: bool) -> list:
    """The lanes of a particle scenario as one vmapped computation (module docstring)."""
    from tqdm.auto import tqdm

    sweep = scenario.sweep
    runs = [_ParticleRun(sc) for sc in lanes_sc]
    first = runs[0]
    finest = min(runs, key=lambda r: r.dt)
    for value, r in zip(sweep.values, runs):
        same = (np.array_equal(r.micro.labels, first.micro.labels)
                and np.array_equal(r.micro.grain_id, first.micro.grain_id)
                and _same_statics(r.params, first.params) and _same_statics(r.coupling, first.coupling)
                and r.block == first.block and r.n_intervals == first.n_intervals)
        if not same:
            raise ConfigError(
                f"sweep.parameter = {sweep.parameter!r}: the value {value!r} changes the geometry or a static "
                "setting (voxel grid, snapshots, mechanics or solver choice), so its lanes cannot be batched; "
                "sweep a physical parameter (e.g. protocol.c_rate, material.diffusivity_m2_s, "
                "material.partial_molar_volume...) or run the values separately")
        r.dt, r.steps_per_interval, r.chunk = finest.dt, finest.steps_per_interval, finest.chunk
    batch = sweep.batch_size or len(runs)
    bar = tqdm(disable=not progress, desc=f"{scenario.run.name} sweep", unit="step", dynamic_ncols=True)
    results = []
    try:
        for start in range(0, len(runs), batch):
            group = list(range(start, min(start + batch, len(runs))))
            for i in group:
                r = runs[i]
                r.writer = RunWriter(paths[i], lanes_sc[i].to_json(), r.micro)
                r.writer._file.attrs.update({"sweep_parameter": sweep.parameter,
                                             "sweep_value": json.dumps(sweep.values[i]), "sweep_lane": i})
            try:
                for i in group:
                    runs[i].rows(np.zeros(1), np.array([lanes_sc[i].material.x_initial]), runs[i].li0)
                    runs[i].snapshot(0.0, runs[i].initial.x)
                states = _stack([runs[i].initial for i in group])
                params = _stack([runs[i].params for i in group])
                coupling = None if first.coupling is None else _stack([runs[i].coupling for i in group])
                live = set(group)
                while live:
                    states, n_taken, per_step = _advance_lanes(first.geometry, params, states, finest.chunk,
                                                               finest.dt, first.block, coupling)
                    n_taken, status, mean_x = jax.device_get((n_taken, per_step["status"], per_step["mean_x"]))
                    for lane, i in enumerate(group):
                        if i in live:
                            before = runs[i].n_steps
                            if runs[i].after_chunk(states.x[lane], n_taken[lane], status[lane],
                                                   np.asarray(mean_x[lane], np.float64)):
                                live.discard(i)
                                results.append((i, runs[i].close()))
                            bar.update(runs[i].n_steps - before)
            except BaseException as err:
                for i in group:
                    if runs[i].writer._file.id.valid:
                        runs[i].close(*exception_status(err, runs[i].n_steps * runs[i].dt))
                raise
    finally:
        bar.close()
    return [result for _, result in sorted(results, key=lambda item: item[0])]

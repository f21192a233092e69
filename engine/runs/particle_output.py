"""Run-file output of composite-cathode cells: per-particle rows, correlations, TXM views.

Written by :class:`~ssbx.engine.runs.cell_run.LaneFile` when the resolved cell carries
particles (``cell.cathode = "composite"`` or ``"volume"``); the layout is in
docs/file_format.md ("Composite cathodes") and the definitions in
engine/observables/particles.py:

* ``/geometry/particle_id`` (int32 grid, −1 outside the particles);
* ``/particles/table/*`` the fixed per-particle table (voxels, volume, equivalent
  radius, centroid, depth below the separator, the generator's centre and radius);
* ``/particles/t_s``, ``snapshot_index`` and the (rows, n_particles) series ``soc``,
  ``li_mol``, ``current_A``, ``polarisation_norm`` and (rows, n_particles, 3)
  ``polarisation_m``: one row at every snapshot (``snapshot_index`` ≥ 0) and at every
  chunk end of the device loop (``snapshot_index`` = −1; ``numerics.chunk_steps``
  sets how often);
* ``/particles/pearson_*`` (rows,): Pearson r of each row's SOC change and
  polarisation against size and depth, and the ``/particles`` attribute
  ``correlations_json`` with those of the last row and their arrays (written when the
  run ends);
* ``/txm/t_s``, ``/txm/top`` (snapshots, nx, ny) and ``/txm/side`` (snapshots, ny, nz):
  thickness-weighted projections of x at every snapshot.
"""

from __future__ import annotations

import json

import h5py
import numpy as np

from ssbx.engine.observables.particles import PEARSON, SERIES, ParticleSet, correlations, txm_projections

DEFINITION = ("particle = generator particle id (cell.cathode = 'composite') or face-connected active "
              "cluster, x/y periodic (cell.cathode = 'volume'); soc = mean Li fraction x; current_A = "
              "Butler-Volmer current of its faces (> 0 delithiation); polarisation_m = centroid of (1 - x) "
              "minus geometric centroid; depth_m = distance of the centroid below the cathode|separator plane")


class ParticleOutput:
    """Writes the per-particle groups of one run file (module docstring)."""

    def __init__(self, f: h5py.File, pset: ParticleSet, active: np.ndarray, c_max: float, x_initial: float,
                 cathode_voxels: int):
        self.f, self.pset, self.active, self.c_max = f, pset, active, c_max
        self.x_initial = x_initial
        self.cathode_voxels = cathode_voxels
        self.last = None
        self.soc0 = None  # the first row's particle SOC, the reference of the SOC change

    @classmethod
    def attach(cls, f: h5py.File, resolved, fresh: bool) -> "ParticleOutput | None":
        """The writer for a resolved cell with particles (None without); ``fresh``:
        a new file, so the fixed geometry and table are written now."""
        info = resolved.info.get("particles")
        if info is None:
            return None
        micro = resolved.micro
        pset = ParticleSet.build(info["particle_id"], micro.voxel_size_m, np.asarray(info["table"]["centre_m"]),
                                 int(resolved.info["composite_voxels"]))
        out = cls(f, pset, micro.active, float(resolved.params.c_max_mol_m3), float(resolved.x_initial),
                  int(resolved.info["composite_voxels"]))
        if fresh:
            f["geometry"].create_dataset("particle_id", data=info["particle_id"], compression="gzip")
            g = f.create_group("particles")
            g.attrs["definition"] = DEFINITION
            g.attrs["composite_json"] = json.dumps(info["composite"], default=float)
            g.attrs["cathode_thickness_m"] = pset.cathode_thickness_m
            table = g.create_group("table")
            for name, value in pset.table().items():
                table.create_dataset(name, data=np.asarray(value))
            table.create_dataset("generator_radius_m", data=np.asarray(info["table"]["radius_m"], np.float64))
            f.create_group("txm")
        return out

    def _append(self, group: str, name: str, rows):
        g = self.f[group]
        rows = np.asarray(rows)
        if name not in g:
            g.create_dataset(name, data=rows, maxshape=(None,) + rows.shape[1:],
                             chunks=(max(1, min(len(rows), 256)),) + rows.shape[1:])
        else:
            ds = g[name]
            start = ds.shape[0]
            ds.resize(start + rows.shape[0], axis=0)
            ds[start:] = rows

    def row(self, t_s: float, x, voxel_current, snapshot_index: int):
        """One row of per-particle values of the fields ``x`` and ``voxel_current`` at
        time ``t_s``; at a snapshot (``snapshot_index`` ≥ 0) the TXM projections too."""
        x = np.asarray(x, np.float64)
        values = self.pset.values(x, voxel_current, self.c_max)
        self._append("particles", "t_s", np.asarray([t_s], np.float64))
        self._append("particles", "snapshot_index", np.asarray([snapshot_index], np.int32))
        for name in SERIES:
            self._append("particles", name, np.asarray(values[name], np.float64)[None])
        if self.soc0 is None:
            self.soc0 = values["soc"]
        corr = correlations(self.pset, values, self.soc0)
        for name in PEARSON:
            self._append("particles", name, np.asarray([corr[name]], np.float64))
        if snapshot_index >= 0:
            images = txm_projections(x, self.active)
            self._append("txm", "t_s", np.asarray([t_s], np.float64))
            for name, image in images.items():
                self._append("txm", name.removeprefix("txm_"), image.astype(np.float32)[None])
        self.last = values

    def mark(self, n_steps: int):
        """Before a checkpoint of ``n_steps`` steps: remember how many rows belong to it
        (``/particles`` attribute ``rows_at_checkpoint``, the last few checkpoints)."""
        g = self.f["particles"]
        rows = int(g["t_s"].shape[0]) if "t_s" in g else 0
        marks = json.loads(g.attrs.get("rows_at_checkpoint", "{}"))
        marks[str(int(n_steps))] = rows
        g.attrs["rows_at_checkpoint"] = json.dumps(dict(list(marks.items())[-4:]))

    def truncate(self, n_steps: int, n_snapshots: int):
        """Resume from the checkpoint of ``n_steps`` steps: drop the rows written after it."""
        g = self.f["particles"]
        if "t_s" in g:
            keep = int(json.loads(g.attrs.get("rows_at_checkpoint", "{}")).get(str(int(n_steps)), 0))
            for name in ("t_s", "snapshot_index", *SERIES, *PEARSON):
                if name in g:
                    g[name].resize(keep, axis=0)
            if keep:
                self.last = {name: g[name][keep - 1] for name in SERIES}
                self.soc0 = g["soc"][0]
        t = self.f["txm"]
        for name in ("t_s", "top", "side"):
            if name in t:
                t[name].resize(min(n_snapshots, t[name].shape[0]), axis=0)

    def finish(self):
        """Write the correlations of the last row (``/particles`` attribute ``correlations_json``)."""
        if self.last is None:
            return
        corr = correlations(self.pset, self.last, self.soc0)
        self.f["particles"].attrs["correlations_json"] = json.dumps(corr, allow_nan=True)

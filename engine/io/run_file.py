"""HDF5 output in the format of docs/file_format.md, written so a killed run stays readable.

Layout::

    /                       attrs: ssbx_version, status ("running", "completed",
                            "stopped", "diverged"), message
    /config                 attr "json": the validated scenario
    /geometry/labels        uint8 grid           (attr on /geometry: voxel_size_m)
    /geometry/grain_id      int32 grid, −1 outside the active phase
    /geometry/orientations  (n_grains, 4) quaternions (w, x, y, z)
    /geometry/reactive_grains (n_grains,) bool
    /timeseries/t_s and /timeseries/<name>   one row per recorded step
    /fields/t_s and /fields/<name>           (n_snapshots, *grid), in the run's dtype
    /grains/<name>          (n_snapshots, n_grains) per-grain statistics
    /snapshots/<name>       (n_snapshots,) scalar statistics (e.g. von_mises_max_Pa)

Every append is followed by a flush, so the file on disk always holds every snapshot
written so far. Closing the writer also writes the ParaView sidecar ``<run>.xdmf``
(engine/io/xdmf.py).
"""

from __future__ import annotations

import dataclasses
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ssbx.engine.errors import ConfigError
from ssbx.engine.safe_files import OutputLock, check_hdf5_self_contained
from ssbx.engine.geometry.microstructure import Microstructure


def _ssbx_version() -> str:
    try:
        return version("ssbx")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


class RunWriter:
    """Incremental writer of one run file (use as a context manager)."""

    def __init__(self, path: str | Path, config_json: str, micro: Microstructure):
        self.path = Path(path)
        # grid fields in the run's dtype: a float64 run keeps its precision in the file
        run_dtype = json.loads(config_json).get("run", {}).get("dtype", "float32")
        self.field_dtype = np.float64 if run_dtype == "float64" else np.float32
        self._lock = OutputLock(self.path)  # before "w": never truncate another run's file
        try:
            self._file = h5py.File(self.path, "w")
        except BaseException:
            self._lock.release()
            raise
        f = self._file
        f.attrs["ssbx_version"] = _ssbx_version()
        f.attrs["status"] = "running"
        f.attrs["message"] = ""
        f.create_group("config").attrs["json"] = config_json
        geo = f.create_group("geometry")
        geo.attrs["voxel_size_m"] = micro.voxel_size_m
        geo.attrs["axes"] = "x, y, z = array axes 0, 1, 2"
        geo.create_dataset("labels", data=micro.labels, compression="gzip")
        geo.create_dataset("grain_id", data=micro.grain_id, compression="gzip")
        geo.create_dataset("orientations", data=micro.orientations)
        geo.create_dataset("reactive_grains", data=micro.reactive_grains)
        for name in ("timeseries", "fields", "grains", "snapshots"):
            f.create_group(name)
        f.flush()

    @classmethod
    def reopen(cls, path: str | Path) -> "RunWriter":
        """An existing run file, opened to append to it (``ssbx run --resume``)."""
        writer = cls.__new__(cls)
        writer.path = Path(path)
        writer._lock = OutputLock(writer.path)  # a killed run's lock died with it; a live run still holds it
        try:
            writer._file = h5py.File(writer.path, "r+")
            check_hdf5_self_contained(writer._file, f"run file {str(path)!r}")
            run_dtype = json.loads(writer._file["config"].attrs["json"]).get("run", {}).get("dtype", "float32")
        except BaseException:
            if getattr(writer, "_file", None) is not None and writer._file.id.valid:
                writer._file.close()
            writer._lock.release()
            raise
        writer.field_dtype = np.float64 if run_dtype == "float64" else np.float32
        return writer

    def truncate(self, n_rows: int, n_snapshots: int):
        """Cut the timeseries back to ``n_rows`` rows and the snapshot groups (fields,
        grains, snapshots) back to ``n_snapshots`` entries."""
        groups = {"timeseries": n_rows, "fields": n_snapshots, "grains": n_snapshots, "snapshots": n_snapshots}
        for group, length in groups.items():
            for ds in self._file[group].values():
                if ds.shape[0] > length:
                    ds.resize(length, axis=0)
        self._file.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        if self._file.id.valid:
            self._file.close()
            from ssbx.engine.io.xdmf import write_sidecar  # run.xdmf beside run.h5, written under the lock

            write_sidecar(self.path)
        self._lock.release()

    def _append(self, group: str, name: str, rows: np.ndarray, compression=None):
        g = self._file[group]
        rows = np.asarray(rows)
        if name not in g:
            g.create_dataset(
                name,
                data=rows,
                maxshape=(None,) + rows.shape[1:],
                chunks=(max(1, min(len(rows), 1024)) if rows.ndim == 1 else 1,) + rows.shape[1:],
                compression=compression,
            )
        else:
            ds = g[name]
            start = ds.shape[0]
            ds.resize(start + rows.shape[0], axis=0)
            ds[start:] = rows

    def append_timeseries(self, columns: dict[str, np.ndarray]):
        """Append rows; every column must have the same length (including ``t_s``)."""
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) != 1 or "t_s" not in columns:
            raise ValueError(f"timeseries columns need equal lengths and a t_s column: {lengths}")
        for name, values in columns.items():
            self._append("timeseries", name, np.asarray(values, dtype=np.float64))
        self._file.flush()

    def append_snapshot(self, t_s: float, fields: dict[str, np.ndarray], grains: dict[str, np.ndarray],
                        stats: dict[str, float] | None = None):
        """One snapshot: grid fields, per-grain arrays and scalar statistics."""
        self._append("fields", "t_s", np.asarray([t_s], dtype=np.float64))
        for name, value in (stats or {}).items():
            self._append("snapshots", name, np.asarray([value], dtype=np.float64))
        for name, value in fields.items():
            self._append("fields", name, np.asarray(value, dtype=self.field_dtype)[None], compression="gzip")
        for name, value in grains.items():
            self._append("grains", name, np.asarray(value, dtype=np.float64)[None])
        self._file.flush()

    def set_status(self, status: str, message: str = ""):
        self._file.attrs["status"] = status
        self._file.attrs["message"] = message
        self._file.flush()


@dataclasses.dataclass
class RunData:
    """Everything in a run file, as NumPy arrays (see :func:`load_run`)."""

    path: Path
    config: dict[str, Any]
    status: str
    message: str
    voxel_size_m: float
    geometry: dict[str, np.ndarray]
    timeseries: dict[str, np.ndarray]
    fields: dict[str, np.ndarray]
    grains: dict[str, np.ndarray]
    snapshots: dict[str, np.ndarray]


def open_run_file(path: str | Path) -> h5py.File:
    """The run file opened read-only (use it as a context manager); ConfigError naming
    the file when it is missing, not a readable HDF5 file, or refers to other files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"run file {str(path)!r} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ConfigError(f"run file {str(path)!r} is not a readable HDF5 file: {err}") from err
    try:
        check_hdf5_self_contained(f, f"run file {str(path)!r}")
    except BaseException:
        f.close()
        raise
    return f


def load_run(path: str | Path) -> RunData:
    """Read a run file written by ``ssbx run``.

    Raises:
        ConfigError: if the file is missing, not HDF5, or lacks the ssbx layout.
    """
    path = Path(path)
    with open_run_file(path) as f:
        missing = [g for g in ("config", "geometry", "timeseries", "fields") if g not in f]
        if missing:
            raise ConfigError(f"run file {str(path)!r} lacks the groups {missing}; not an ssbx run file")

        def read_group(name):
            return {k: v[()] for k, v in f[name].items()} if name in f else {}

        return RunData(
            path=path,
            config=json.loads(f["config"].attrs["json"]),
            status=str(f.attrs.get("status", "unknown")),
            message=str(f.attrs.get("message", "")),
            voxel_size_m=float(f["geometry"].attrs["voxel_size_m"]),
            geometry=read_group("geometry"),
            timeseries=read_group("timeseries"),
            fields=read_group("fields"),
            grains=read_group("grains"),
            snapshots=read_group("snapshots"),
        )

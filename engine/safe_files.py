"""Guards for the files ssbx writes and reads: one writer per output, no HDF5 indirection.

* :class:`OutputLock` — an exclusive ``fcntl.flock`` on a ``<out>.lock`` sidecar, taken
  *before* the output is opened for writing, so a second run aimed at the same file fails
  without truncating the first run's file.
* :func:`check_hdf5_self_contained` — refuses external links, external-storage datasets
  and virtual datasets, which would make a reader open other local files.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import shutil
from pathlib import Path

from ssbx.kernels.constants import FARADAY

from ssbx.engine.errors import ConfigError


class OutputLock:
    """Exclusive advisory lock on ``<path>.lock``; released (and the sidecar removed) by :meth:`release`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        check_writable_folder(self.path, "output")
        self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self._fd)
            self._fd = None
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"output {str(self.path)!r} is being written by another run (lock "
                                  f"{str(self.lock_path)!r} is held); choose another --out") from err
            raise

    def release(self):
        """Drop the lock and remove the sidecar (only the holder ever removes it)."""
        if self._fd is None:
            return
        try:
            self.lock_path.unlink()
        except FileNotFoundError:  # pragma: no cover - removed by hand
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def check_writable_folder(path: str | Path, field: str) -> Path:
    """ConfigError unless ``path`` names a file (not a folder) whose folder exists or can be made, writable."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{field} = {str(path)!r} is a folder; give a file name")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{field} = {str(path)!r}: cannot create the folder {str(folder)!r}: "
                          f"{err.strerror}") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{field} = {str(path)!r}: the folder {str(folder)!r} is not writable")
    return path


def check_hdf5_self_contained(fh, what: str) -> None:
    """ConfigError if the open h5py file ``fh`` holds external links, external or virtual datasets."""
    import h5py

    bad: list[str] = []

    def visit(name, link):
        if isinstance(link, h5py.ExternalLink):
            bad.append(f"/{name} (external link to {link.filename}:{link.path})")
            return None
        if isinstance(link, h5py.HardLink):
            obj = fh.get(name)
            if isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    bad.append(f"/{name} (virtual dataset)")
                elif obj.external:
                    bad.append(f"/{name} (external storage)")
        return None

    fh.visititems_links(visit)
    if bad:
        raise ConfigError(f"{what} refers to other files, which ssbx does not read: {', '.join(bad)}; "
                          "store the data inside the file")


def exception_status(err: BaseException, t_s: float | None) -> tuple[str, str]:
    """File status and message for a run ended by ``err``: "interrupted" for Ctrl-C, else "failed"."""
    where = f" at t = {t_s:.6g} s" if t_s is not None else ""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted", f"interrupted (Ctrl-C){where}; the file keeps every step written so far"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return "failed", (f"failed{where} on {type(err).__name__}: {text[:500]}; the file keeps every step "
                      "written so far")


# working arrays per grid voxel (state, geometry, orientations, gradients and the stress
# solver's fields), counted generously; used only to refuse runs that cannot fit. A
# particle run's chunk without mechanics measured 25–27 words per voxel by XLA's count
# (arguments, outputs, temporaries at 64³–512³; docs/particle_runs.md), hence 32.
# Cell runs add the two potentials, the conductivities, the coupled solve's warm-start
# and PCG vectors (two fields each) and the face groups' conductances.
_ARRAYS_PER_VOXEL = {False: 32, True: 96}
_CELL_ARRAYS_PER_VOXEL = {False: 64, True: 136}
# fields written per snapshot: soc, plus the stress components and invariants; cell runs
# add φ_s, φ_e, the interface current and σ_s
_FIELDS_PER_SNAPSHOT = {False: 1, True: 8}
_CELL_FIELDS_PER_SNAPSHOT = {False: 5, True: 12}


def particle_grid_voxels(scenario) -> int:
    """Voxels of the particle grid: the particle's diameter plus the margin on each side."""
    p = scenario.particle
    side = math.ceil(2 * p.radius_m / p.voxel_size_m) + 2 * p.margin_voxels + 1
    return side ** p.ndim


def cell_grid_voxels(scenario) -> int:
    """Voxels of a cell run's grid before it is built: the particle block (diameter plus
    the composite margin on each side) times the lateral size that the areal capacity
    asks for (engine/geometry/cell_stack.py; the active volume taken as the sphere's,
    the capacity F·c_max·V/3600 unless cell.capacity_Ah is given), plus the separator."""
    p, c = scenario.particle, scenario.cell
    h = p.voxel_size_m
    block = math.ceil(2 * p.radius_m / h) + 2 * c.composite_margin_voxels + 1
    if c.capacity_Ah is not None:
        capacity_Ah = float(c.capacity_Ah)
    else:
        volume = (4.0 / 3.0) * math.pi * p.radius_m ** 3 if p.ndim == 3 else math.pi * p.radius_m ** 2
        capacity_Ah = FARADAY * scenario.material.resolved_c_max() * volume / 3600.0
    area = capacity_Ah * 1e3 / (c.areal_capacity_mAh_cm2 * 1e4)
    lateral = max(round(area ** (1.0 / (p.ndim - 1)) / h), block)
    return lateral ** (p.ndim - 1) * (block + math.ceil(c.separator_thickness_m / h))


def total_memory_bytes() -> int | None:
    """Physical memory of this machine (None where ``os.sysconf`` cannot tell)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


def check_resources(scenario, out: Path) -> None:
    """Refuse a run whose working memory or output file exceed this machine, before
    allocating: particle runs from the particle grid, cell runs from the cell grid
    (:func:`cell_grid_voxels`) times the lanes a sweep batches together."""
    cell = bool(scenario.cell.enabled)
    if cell:
        voxels = cell_grid_voxels(scenario)
        what = f"cell grid of {voxels} voxels (particle, composite margin, separator, areal capacity)"
    else:
        voxels = particle_grid_voxels(scenario)
        what = f"particle grid of {voxels} voxels (radius_m / voxel_size_m, ndim = {scenario.particle.ndim})"
    lanes = 1
    if scenario.sweep.parameter:
        lanes = scenario.sweep.batch_size or len(scenario.sweep.values)
        what += f", {lanes} sweep lanes at once"
    itemsize = 8 if scenario.run.dtype == "float64" else 4
    mech = bool(scenario.mechanics.enabled)
    per_voxel = (_CELL_ARRAYS_PER_VOXEL if cell else _ARRAYS_PER_VOXEL)[mech]
    memory = lanes * voxels * itemsize * per_voxel
    limit = total_memory_bytes()
    if limit is not None and memory > limit:
        raise ConfigError(f"{what} needs about {memory / 2**30:.3g} GiB of memory; this machine "
                          f"has {limit / 2**30:.3g} GiB: use a coarser particle.voxel_size_m or a smaller radius_m")
    fields = (_CELL_FIELDS_PER_SNAPSHOT if cell else _FIELDS_PER_SNAPSHOT)[mech]
    snapshots = scenario.output.n_snapshots
    if cell:  # a snapshot at the start and at the end of every protocol step
        snapshots = 1 + len(scenario.protocol.steps) * scenario.protocol.cycles
    n_files = len(scenario.sweep.values) if scenario.sweep.parameter else 1
    output = n_files * snapshots * voxels * itemsize * fields
    free = shutil.disk_usage(Path(out).resolve().parent).free
    if output > free:
        knob = "protocol steps × cycles" if cell else f"output.n_snapshots = {snapshots}"
        files = "run file" if n_files == 1 else f"{n_files} lane files"
        raise ConfigError(f"{knob}: the {files} would hold up to {output / 2**30:.3g} GiB of fields "
                          f"({snapshots} snapshots, before compression) but {Path(out).resolve().parent} "
                          f"has {free / 2**30:.3g} GiB free; write fewer snapshots or choose another --out")

"""Measured SOC maps: loading, saving and synthetic measurements.

File convention
---------------
**HDF5** (self-describing, preferred)::

    /maps          (n_times, *image) float   SOC x = c/c_max per pixel; NaN = no data
    /t_s           (n_times,) float          time of each map since the start of the protocol, s
    /mask          optional, bool, (*image) or (n_times, *image); True = use the pixel
    attrs on "/":  pixel_size_m  (float, m)   edge of a measured pixel
                   kind          "projection" (2D maps along a beam axis) or "volume"
                   beam_axis     "x", "y" or "z" (projections only)
                   noise_std     optional, standard deviation of the map noise (SOC units)

Image axes follow the simulation's array axes with the beam axis removed: a projection
along z is indexed [x, y], along y [x, z], along x [y, z].

**NumPy** ``.npy``: the array of maps only (n_times, *image); ``.npz``: key ``maps``
and optionally ``t_s``, ``mask``, ``pixel_size_m``, ``kind``, ``beam_axis``,
``noise_std``. **TIFF**: a multi-page stack (n_times, *image) (a single 2D page is
one map). For NumPy and TIFF the metadata the file does not carry come from the fit
TOML ([measurement] pixel_size_m, t_s, kind, beam_axis) or keyword arguments.
Metadata given in both places must agree.

Everything that is wrong with a file (missing, corrupt, missing dataset, shapes that
disagree, non-increasing times, non-positive pixel size) raises :class:`ConfigError`
naming the field, the value and what is valid.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from ssbx.engine.errors import ConfigError
from ssbx.engine.observables.observation import AXIS_NAMES, KINDS, parse_axis

FORMATS = ("hdf5", "npy", "npz", "tiff")
_EXTENSIONS = {".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".npy": "npy", ".npz": "npz",
               ".tif": "tiff", ".tiff": "tiff"}


@dataclasses.dataclass(frozen=True)
class MeasuredMaps:
    """Measured SOC maps with their metadata (validated on construction).

    Attributes:
        maps: (n_times, *image) float64, SOC per pixel; NaN marks missing data.
        t_s: (n_times,) strictly increasing times ≥ 0, s.
        pixel_size_m: measured pixel edge, m.
        kind: "projection" or "volume".
        beam_axis: array axis of the beam (0, 1, 2 = x, y, z) for projections, else None.
        mask: (n_times, *image) bool, True where the pixel is usable (finite and not
            masked in the file).
        noise_std: noise standard deviation in SOC units, or None (then estimated).
        source: where the maps came from (for messages).
    """

    maps: np.ndarray
    t_s: np.ndarray
    pixel_size_m: float
    kind: str = "projection"
    beam_axis: int | None = 2
    mask: np.ndarray | None = None
    noise_std: float | None = None
    source: str = "<array>"

    def __post_init__(self):
        maps = np.asarray(self.maps, dtype=np.float64)
        if self.kind not in KINDS:
            raise ConfigError(f"measurement.kind = {self.kind!r}: valid values are {list(KINDS)}")
        image_ndim = maps.ndim - 1
        if self.kind == "projection" and image_ndim not in (1, 2):
            raise ConfigError(
                f"measurement maps in {self.source}: shape {maps.shape} — projections need "
                "(n_times, ny, nx) (or (n_times, n) for a 2D simulation)"
            )
        if self.kind == "volume" and image_ndim not in (2, 3):
            raise ConfigError(
                f"measurement maps in {self.source}: shape {maps.shape} — volumes need "
                "(n_times, nx, ny, nz) (or (n_times, nx, ny) for a 2D simulation)"
            )
        t = np.atleast_1d(np.asarray(self.t_s, dtype=np.float64))
        if t.ndim != 1 or t.size != maps.shape[0]:
            raise ConfigError(
                f"measurement.t_s has {t.size} values {t.tolist()} but {self.source} holds "
                f"{maps.shape[0]} maps (shape {maps.shape}); give one time per map"
            )
        if not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(np.diff(t) <= 0):
            raise ConfigError(
                f"measurement.t_s = {t.tolist()}: must be finite, ≥ 0 s and strictly increasing"
            )
        if not (isinstance(self.pixel_size_m, (int, float, np.floating)) and math.isfinite(self.pixel_size_m)
                and self.pixel_size_m > 0):
            raise ConfigError(f"measurement.pixel_size_m = {self.pixel_size_m!r}: must be a finite number > 0 (m)")
        beam_axis = None
        if self.kind == "projection":
            if self.beam_axis is None:
                raise ConfigError("measurement.beam_axis is required for projections: 'x', 'y' or 'z'")
            beam_axis = parse_axis(self.beam_axis, 3, "measurement.beam_axis")
        usable = np.isfinite(maps)
        if self.mask is not None:
            m = np.asarray(self.mask)
            if m.shape not in (maps.shape, maps.shape[1:]):
                raise ConfigError(
                    f"measurement mask shape {m.shape}: must be {maps.shape[1:]} or {maps.shape}"
                )
            usable &= np.broadcast_to(m.astype(bool), maps.shape)
        if self.noise_std is not None and not (math.isfinite(self.noise_std) and self.noise_std > 0):
            raise ConfigError(f"measurement.noise_std = {self.noise_std!r}: must be a finite number > 0")
        if not usable.any():
            raise ConfigError(f"measurement maps in {self.source}: no finite, unmasked pixel")
        object.__setattr__(self, "maps", maps)
        object.__setattr__(self, "t_s", t)
        object.__setattr__(self, "pixel_size_m", float(self.pixel_size_m))
        object.__setattr__(self, "beam_axis", beam_axis)
        object.__setattr__(self, "mask", usable)
        if self.noise_std is not None:
            object.__setattr__(self, "noise_std", float(self.noise_std))

    @property
    def n_times(self) -> int:
        return self.maps.shape[0]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.maps.shape[1:]

    def pixel_factor(self, voxel_size_m: float) -> int:
        """Integer ratio pixel_size_m / voxel_size_m, or ConfigError if it is not one."""
        return pixel_factor(self.pixel_size_m, voxel_size_m)


def pixel_factor(pixel_size_m: float, voxel_size_m: float, rtol: float = 1e-6) -> int:
    """k = pixel_size_m / voxel_size_m, which must be an integer ≥ 1 (within rtol)."""
    ratio = pixel_size_m / voxel_size_m
    k = round(ratio)
    if k < 1 or abs(ratio - k) > rtol * ratio:
        valid = ", ".join(f"{m * voxel_size_m:.6g}" for m in (1, 2, 3, 4))
        raise ConfigError(
            f"measurement.pixel_size_m = {pixel_size_m:.6g} m: must be an integer multiple of the "
            f"simulation voxel size {voxel_size_m:.6g} m (valid: {valid}, ... m); the ratio is {ratio:.6g}"
        )
    return int(k)


def _detect_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"measurement.format = {fmt!r}: valid values are {list(FORMATS)}")
        return fmt
    suffix = path.suffix.lower()
    if suffix not in _EXTENSIONS:
        raise ConfigError(
            f"measurement.file = {str(path)!r}: cannot tell the format from the extension {suffix!r}; "
            f"valid extensions {sorted(_EXTENSIONS)} or set measurement.format to one of {list(FORMATS)}"
        )
    return _EXTENSIONS[suffix]


def _merge(field: str, from_file, given, same=lambda a, b: a == b):
    """Metadata value from the file or the caller; both given -> must agree."""
    if from_file is None:
        return given
    if given is not None and not same(from_file, given):
        raise ConfigError(
            f"measurement.{field} = {given!r} disagrees with the value {from_file!r} stored in the "
            "measurement file; remove one or make them equal"
        )
    return from_file


def _close(a, b):
    return math.isclose(float(a), float(b), rel_tol=1e-9)


def _same_times(a, b):
    a, b = np.atleast_1d(np.asarray(a, float)), np.atleast_1d(np.asarray(b, float))
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-9, atol=0)


def _same_axis(a, b):
    return parse_axis(a, 3, "measurement.beam_axis") == parse_axis(b, 3, "measurement.beam_axis")


def load_measurement(
    path: str | Path,
    format: str | None = None,
    *,
    t_s=None,
    pixel_size_m: float | None = None,
    kind: str | None = None,
    beam_axis=None,
    noise_std: float | None = None,
    mask=None,
) -> MeasuredMaps:
    """Read measured maps from HDF5, .npy, .npz or TIFF (see the module docstring).

    Keyword metadata fill in what the file does not carry; where the file carries a
    value too, both must agree.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"measurement.file = {str(path)!r}: file does not exist")
    fmt = _detect_format(path, format)
    meta = {"t_s": None, "pixel_size_m": None, "kind": None, "beam_axis": None, "noise_std": None, "mask": None}
    try:
        if fmt == "hdf5":
            maps = _read_hdf5(path, meta)
        elif fmt == "npy":
            maps = np.load(path, allow_pickle=False)
        elif fmt == "npz":
            with np.load(path, allow_pickle=False) as data:
                if "maps" not in data.files:
                    raise ConfigError(
                        f"measurement.file = {str(path)!r}: .npz has no array 'maps' (found {data.files})"
                    )
                maps = data["maps"]
                for key in meta:
                    if key in data.files:
                        value = data[key]
                        meta[key] = value.item() if value.ndim == 0 else value
        else:
            import tifffile

            maps = tifffile.imread(path)
    except ConfigError:
        raise
    except Exception as err:  # corrupt or unreadable file: say which and why
        raise ConfigError(
            f"measurement.file = {str(path)!r}: cannot read it as {fmt} ({type(err).__name__}: {err})"
        ) from err
    maps = np.asarray(maps)
    if maps.dtype.kind not in "fiub":
        raise ConfigError(f"measurement.file = {str(path)!r}: maps dtype {maps.dtype} is not numeric")
    kind = _merge("kind", _str_or_none(meta["kind"]), kind) or "projection"
    if kind == "projection" and maps.ndim == 2 and fmt in ("tiff", "npy"):
        maps = maps[None]  # one 2D map
    t = _merge("t_s", meta["t_s"], t_s, _same_times)
    if t is None:
        raise ConfigError(
            f"measurement.t_s is required: {str(path)!r} ({fmt}) does not store the map times; "
            "give one time in s per map"
        )
    pixel = _merge("pixel_size_m", meta["pixel_size_m"], pixel_size_m, _close)
    if pixel is None:
        raise ConfigError(
            f"measurement.pixel_size_m is required: {str(path)!r} ({fmt}) does not store it; give it in m"
        )
    axis = _merge("beam_axis", _str_or_none(meta["beam_axis"]), beam_axis, _same_axis)
    noise = _merge("noise_std", meta["noise_std"], noise_std, _close)
    file_mask = meta["mask"]
    if mask is not None:
        file_mask = mask if file_mask is None else (np.asarray(file_mask, bool) & np.asarray(mask, bool))
    return MeasuredMaps(
        maps=maps.astype(np.float64),
        t_s=t,
        pixel_size_m=float(pixel),
        kind=kind,
        beam_axis=axis if kind == "projection" else None,
        mask=file_mask,
        noise_std=None if noise is None else float(noise),
        source=str(path),
    )


def _str_or_none(value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (np.integer,)):
        return int(value)
    return value if not isinstance(value, np.str_) else str(value)


def _read_hdf5(path: Path, meta: dict) -> np.ndarray:
    import h5py

    from ssbx.engine.safe_files import check_hdf5_self_contained

    with h5py.File(path, "r") as fh:
        check_hdf5_self_contained(fh, f"measurement.file = {str(path)!r}")
        if "maps" not in fh:
            raise ConfigError(
                f"measurement.file = {str(path)!r}: HDF5 file has no dataset '/maps' "
                f"(found {sorted(fh.keys())}); expected /maps (n_times, *image) and /t_s"
            )
        maps = fh["maps"][()]
        if "t_s" in fh:
            meta["t_s"] = fh["t_s"][()]
            if not np.issubdtype(np.asarray(meta["t_s"]).dtype, np.number):
                raise ConfigError(f"measurement.file = {str(path)!r}: /t_s holds {np.asarray(meta['t_s']).dtype} "
                                  "values; store the map times as numbers (float64 seconds)")
        if "mask" in fh:
            meta["mask"] = fh["mask"][()].astype(bool)
        for key in ("pixel_size_m", "kind", "beam_axis", "noise_std"):
            if key in fh.attrs:
                value = fh.attrs[key]
                meta[key] = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
    if meta["pixel_size_m"] is not None:
        meta["pixel_size_m"] = float(meta["pixel_size_m"])
    if meta["noise_std"] is not None:
        meta["noise_std"] = float(meta["noise_std"])
    return maps


def save_measurement(path: str | Path, measured: MeasuredMaps, format: str | None = None) -> Path:
    """Write ``measured`` in the convention of this module (HDF5, .npy, .npz or TIFF).

    .npy and TIFF keep only the maps (NaN for masked pixels); the metadata must then be
    given again when loading.
    """
    path = Path(path)
    fmt = _detect_format(path, format)
    maps = np.where(measured.mask, measured.maps, np.nan)
    axis_name = None
    if measured.beam_axis is not None:
        axis_name = {v: k for k, v in AXIS_NAMES.items()}[measured.beam_axis]
    if fmt == "hdf5":
        import h5py

        with h5py.File(path, "w") as fh:
            fh.create_dataset("maps", data=maps)
            fh.create_dataset("t_s", data=measured.t_s)
            fh.attrs["pixel_size_m"] = measured.pixel_size_m
            fh.attrs["kind"] = measured.kind
            if axis_name is not None:
                fh.attrs["beam_axis"] = axis_name
            if measured.noise_std is not None:
                fh.attrs["noise_std"] = measured.noise_std
    elif fmt == "npy":
        np.save(path, maps)
    elif fmt == "npz":
        extra = {"beam_axis": np.array(axis_name)} if axis_name is not None else {}
        if measured.noise_std is not None:
            extra["noise_std"] = np.array(measured.noise_std)
        np.savez(path, maps=maps, t_s=measured.t_s, pixel_size_m=np.array(measured.pixel_size_m),
                 kind=np.array(measured.kind), **extra)
    else:
        import tifffile

        tifffile.imwrite(path, maps.astype(np.float32), photometric="minisblack")  # one page per map
    return path



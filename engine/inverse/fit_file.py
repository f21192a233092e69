"""Fit files: TOML -> validated fit configuration (see examples/fit.toml).

Sections: ``[scenario]`` (``file`` = a scenario TOML, relative to the fit file, and/or
inline sections ``[scenario.particle]`` etc. that override it), ``[measurement]``,
``[parameters.<name>]`` (one table per free parameter), ``[optimizer]``,
``[output]`` and the optional ``[synthetic]`` (the truth used by
``ssbx fit --make-synthetic``). Unknown sections, keys and parameter names raise
:class:`ConfigError` with the valid choices. Two free *fields* are tables of their own:
``[parameters.reactive]`` (inverse/reactive_contact.py) and ``[parameters.orientations]``
(inverse/orientations.py; then ``[measurement] file`` may list one file per beam axis and
only ``[parameters.D1]`` may be fitted with it).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from ssbx.engine.config.scenario import SECTIONS, Scenario, load_scenario, read_toml, scenario_from_dict
from ssbx.engine.errors import ConfigError
from ssbx.engine.inverse.fitting import METHODS
from ssbx.engine.io.measurements import FORMATS, MeasuredMaps, load_measurement
from ssbx.engine.observables.observation import KINDS, SHIFT_METHODS
from ssbx.engine.inverse.parameters import FreeParameter
from ssbx.engine.inverse.reactive_contact import reactive_config_from
from ssbx.engine.inverse.orientations import orientations_config_from


@dataclasses.dataclass(frozen=True)
class MeasurementConfig:
    file: str = ""
    format: str | None = None
    kind: str | None = None
    pixel_size_m: float | None = None
    beam_axis: str | int | None = None
    t_s: tuple | None = None
    noise_std: float | None = None
    shift_px: tuple = ()
    shift_method: str = "linear"
    min_thickness_voxels: float = 2.0
    min_active_fraction: float = 0.5

    def validate(self):
        files = self.file if isinstance(self.file, tuple) else (self.file,)
        if not files or any(not isinstance(f, str) or not f for f in files):
            raise ConfigError(f"measurement.file = {self.file!r}: give the path of the measured maps "
                              "(a list of paths, one per beam axis, with [parameters.orientations])")
        if isinstance(self.beam_axis, tuple) and len(self.beam_axis) != len(files):
            raise ConfigError(f"measurement.beam_axis = {list(self.beam_axis)!r}: give one beam axis per file "
                              f"of measurement.file ({len(files)})")
        if self.format is not None and self.format not in FORMATS:
            raise ConfigError(f"measurement.format = {self.format!r}: valid values are {list(FORMATS)}")
        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(f"measurement.kind = {self.kind!r}: valid values are {list(KINDS)}")
        if self.shift_method not in SHIFT_METHODS:
            raise ConfigError(f"measurement.shift_method = {self.shift_method!r}: valid values are {list(SHIFT_METHODS)}")
        for v in self.shift_px:
            if not _is_number(v):
                raise ConfigError(f"measurement.shift_px = {list(self.shift_px)!r}: must be numbers (pixels)")
        _non_negative("measurement.min_thickness_voxels", self.min_thickness_voxels)
        if not _is_number(self.min_active_fraction) or not 0 <= self.min_active_fraction <= 1:
            raise ConfigError(f"measurement.min_active_fraction = {self.min_active_fraction!r}: valid range is [0, 1]")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    method: str = "adam+lbfgs"
    learning_rate: float = 0.05
    adam_iterations: int = 40
    lbfgs_iterations: int = 40
    gtol: float = 1e-8
    ftol: float = 1e-10
    checkpoint_every: str | int = "auto"

    def validate(self):
        if self.method not in METHODS:
            raise ConfigError(f"optimizer.method = {self.method!r}: valid values are {list(METHODS)}")
        if not _is_number(self.learning_rate) or self.learning_rate <= 0:
            raise ConfigError(f"optimizer.learning_rate = {self.learning_rate!r}: must be a number > 0")
        for name in ("adam_iterations", "lbfgs_iterations"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"optimizer.{name} = {v!r}: must be an integer ≥ 0")
        _non_negative("optimizer.gtol", self.gtol)
        _non_negative("optimizer.ftol", self.ftol)
        c = self.checkpoint_every
        if c != "auto" and (not isinstance(c, int) or isinstance(c, bool) or c < 1):
            raise ConfigError(f"optimizer.checkpoint_every = {c!r}: valid values are 'auto' or an integer ≥ 1")


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    folder: str = "fit_output"
    plots: bool = True
    uncertainty: bool = True

    def validate(self):
        if not isinstance(self.folder, str) or not self.folder:
            raise ConfigError(f"output.folder = {self.folder!r}: must be a folder path")
        for name in ("plots", "uncertainty"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"output.{name} = {getattr(self, name)!r}: must be true or false")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    truth: dict = dataclasses.field(default_factory=dict)
    noise_std: float = 0.0
    seed: int = 0

    def validate(self):
        from ssbx.engine.inverse.parameters import get_spec

        for name, v in self.truth.items():
            get_spec(name, "synthetic.truth")
            if not _is_number(v):
                raise ConfigError(f"synthetic.truth.{name} = {v!r}: must be a number")
        _non_negative("synthetic.noise_std", self.noise_std)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"synthetic.seed = {self.seed!r}: must be an integer ≥ 0")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    scenario: Scenario
    measurement: MeasurementConfig
    parameters: tuple[FreeParameter, ...]
    optimizer: OptimizerConfig = OptimizerConfig()
    output: OutputConfig = OutputConfig()
    synthetic: SyntheticConfig | None = None
    base_dir: Path = Path(".")
    reactive: object = None  # reactive_contact.ReactiveConfig when [parameters.reactive] is given
    orientations: object = None  # orientations.OrientationsConfig when [parameters.orientations] is given

    @property
    def measurement_path(self) -> Path:
        p = Path(self.measurement.file)
        return p if p.is_absolute() else self.base_dir / p

    @property
    def output_folder(self) -> Path:
        p = Path(self.output.folder)
        return p if p.is_absolute() else self.base_dir / p

    @property
    def measurement_paths(self) -> list[Path]:
        """Every measurement file (several only with [parameters.orientations])."""
        files = self.measurement.file if isinstance(self.measurement.file, tuple) else (self.measurement.file,)
        return [Path(f) if Path(f).is_absolute() else self.base_dir / f for f in files]

    def load_measured_all(self) -> list[MeasuredMaps]:
        """One MeasuredMaps per file of ``measurement.file``; a list ``beam_axis`` goes file by file."""
        m = self.measurement
        axes = m.beam_axis if isinstance(m.beam_axis, tuple) else (m.beam_axis,) * len(self.measurement_paths)
        return [load_measurement(p, m.format, t_s=m.t_s, pixel_size_m=m.pixel_size_m, kind=m.kind,
                                 beam_axis=a, noise_std=m.noise_std) for p, a in zip(self.measurement_paths, axes)]

    def load_measured(self) -> MeasuredMaps:
        m = self.measurement
        return load_measurement(
            self.measurement_path, m.format, t_s=m.t_s, pixel_size_m=m.pixel_size_m, kind=m.kind,
            beam_axis=m.beam_axis, noise_std=m.noise_std,
        )


_FIT_SECTIONS = ("scenario", "measurement", "parameters", "optimizer", "output", "synthetic")


def _build(cls, section: str, values):
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table of keys, got {values!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ConfigError(f"unknown key in [{section}] {key!r}; valid: {sorted(fields)}")
    cleaned = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
    obj = cls(**cleaned)
    obj.validate()
    return obj


def fit_config_from_dict(data: dict[str, Any], base_dir: Path = Path(".")) -> FitConfig:
    """Validate nested dicts (a parsed fit TOML); paths are relative to ``base_dir``."""
    for section in data:
        if section not in _FIT_SECTIONS:
            raise ConfigError(f"unknown section {section!r} in the fit file; valid: {sorted(_FIT_SECTIONS)}")
    scen = dict(data.get("scenario", {}))
    scenario_file = scen.pop("file", None)
    for key in scen:
        if key not in SECTIONS:
            raise ConfigError(
                f"unknown key in [scenario] {key!r}; valid: 'file' or the scenario sections {sorted(SECTIONS)}"
            )
    if scenario_file is not None:
        path = Path(scenario_file)
        base = load_scenario(path if path.is_absolute() else base_dir / path)
        scenario = base.replace(**scen) if scen else base
    else:
        scenario = scenario_from_dict(scen)
    if "measurement" not in data:
        raise ConfigError("the fit file needs a [measurement] section (file, pixel_size_m, t_s, ...)")
    measurement = _build(MeasurementConfig, "measurement", data["measurement"])
    params_table = data.get("parameters", {})
    if not isinstance(params_table, dict) or not params_table:
        raise ConfigError("the fit file needs at least one [parameters.<name>] table, e.g. [parameters.D1] start = 5e-15")
    free = []
    reactive = None
    orientations = None
    for name, spec in params_table.items():
        if name == "reactive":  # the reactive mask (docs/inverse_contact.md), a field, not a scalar
            reactive = reactive_config_from(spec)
            continue
        if name == "orientations":  # per-grain c axes (docs/inverse_orientations.md), a field
            orientations = orientations_config_from(spec)
            continue
        if not isinstance(spec, dict):
            raise ConfigError(f"[parameters.{name}] must be a table with start (and optional lower, upper)")
        unknown = set(spec) - {"start", "lower", "upper"}
        if unknown:
            raise ConfigError(f"unknown key in [parameters.{name}] {sorted(unknown)}; valid: ['lower', 'start', 'upper']")
        if "start" not in spec:
            raise ConfigError(f"[parameters.{name}] needs a start value")
        free.append(FreeParameter(name, spec["start"], spec.get("lower"), spec.get("upper")))
    if reactive is not None and free:
        raise ConfigError(
            f"parameters: the reactive mask is fitted alone for now (D, flux scale and orientations known); "
            f"remove {[p.name for p in free]} or fit them in a separate run"
        )
    if orientations is not None:
        if reactive is not None:
            raise ConfigError("parameters: orientations and the reactive mask are fitted in separate runs for now; "
                              "remove [parameters.reactive] or [parameters.orientations]")
        others = [p.name for p in free if p.name != "D1"]
        if others:
            raise ConfigError(f"parameters: with [parameters.orientations] only D1 can be fitted jointly; "
                              f"remove {others} (they are known in this fit)")
    elif isinstance(measurement.file, tuple) or isinstance(measurement.beam_axis, tuple):
        raise ConfigError(f"measurement.file = {measurement.file!r}: several measurement files (one per beam axis) "
                          "are read only by the orientation fit ([parameters.orientations]); give one file")
    optimizer = _build(OptimizerConfig, "optimizer", data.get("optimizer", {}))
    output = _build(OutputConfig, "output", data.get("output", {}))
    synthetic = None
    if "synthetic" in data:
        syn = dict(data["synthetic"])
        synthetic = _build(SyntheticConfig, "synthetic", syn)
    return FitConfig(scenario, measurement, tuple(free), optimizer, output, synthetic, Path(base_dir), reactive,
                     orientations)


def load_fit_config(path: str | Path) -> FitConfig:
    """Read and validate a fit TOML file."""
    path = Path(path)
    return fit_config_from_dict(read_toml(path, "fit file"), path.resolve().parent)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _non_negative(field: str, v) -> None:
    if not _is_number(v) or v < 0:
        raise ConfigError(f"{field} = {v!r}: must be a number ≥ 0")

"""Generate docs/scenarios.md, the scenario and fit file (TOML) reference, from the schema.

Run ``python -m ssbx.engine.cli.scenario_docs`` to rewrite ``docs/scenarios.md`` (or
``--check`` to compare without writing). The reference cannot drift from the code:

* sections, keys, types and defaults are read from the dataclasses of
  :mod:`ssbx.engine.config.scenario` (``SECTIONS``) and :mod:`ssbx.engine.inverse.fit_file`, the fit
  parameters from :data:`ssbx.engine.inverse.parameters.PARAMETERS`;
* the "valid" column is the text of the :class:`ConfigError` that the section's own
  ``validate()`` raises for a value of the wrong kind, so it is the check the code
  really makes (keys whose check needs other keys carry a written rule in ``KEY_DOCS``);
* unit and description come from ``KEY_DOCS`` / ``FIT_KEY_DOCS`` below; ``tests/test_docs.py`` fails if a
  schema key has no entry or an entry names a key the schema lacks, and if the committed
  file differs from the generated one.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ssbx.engine.config.scenario import MAX_DIFFUSIVITY, SECTIONS, _OPTIONAL_KEYS
from ssbx.engine.errors import ConfigError

# A value no key accepts: wrong type for numbers and booleans, an invalid name for strings.
_PROBE = "\x00?"

SECTION_DOCS = {
    "run": "Name and floating-point precision of the run.",
    "particle": "The secondary particle: size, voxel grid, Voronoi grains and what surrounds it "
                "(engine/geometry/microstructure.py). Cell runs place this particle in the composite.",
    "material": "The active material: diffusivities, lattice site density and initial Li content "
                "(engine/materials/active.py, docs/materials.md).",
    "protocol": "What is applied: a uniform surface flux (particle runs) or a cycling protocol of "
                "battery-style steps (cell runs, engine/config/protocol.py).",
    "mechanics": "Stress from anisotropic chemical expansion and stress-assisted Li transport "
                 "(docs/physics.md §2, §5).",
    "cell": "A cell around the particle: collector | composite | separator | Li anode along the stack "
            "axis (docs/physics.md §3, §7).",
    "composite": "A generated NCM / solid electrolyte / carbon composite cathode for `cell.cathode = "
                 "\"composite\"` (engine/geometry/composite.py, `ssbx composite`; docs/composite_cells.md).",
    "interface": "Cohesive particle | ion-conductor interfaces that open and raise the interfacial "
                 "resistance, R_int = R0 exp(g/g0) (cell runs; docs/interfaces.md).",
    "electrochemistry": "Butler–Volmer kinetics, OCV, conductivities and the electrochemical time step "
                        "(docs/physics.md §3–4).",
    "numerics": "Time-step rules, device-loop chunking and cut-off tolerances (docs/numerics.md).",
    "output": "What the run file and the summary figure contain (docs/file_format.md).",
    "sweep": "Several values of one key as one batched (vmapped) cell run, one file per lane "
             "(engine/runs/sweep.py, docs/file_format.md).",
}

# (unit, description[, written validity rule for keys whose check involves other keys])
KEY_DOCS: dict[str, dict[str, tuple]] = {
    "run": {
        "name": ("—", "Stem of the default output file `<name>.h5` (when `--out` is not given)."),
        "dtype": ("—", "Floating-point precision of the whole run: `float32` (fast) or `float64` "
                       "(validation); grid fields are stored in this dtype."),
    },
    "particle": {
        "radius_m": ("m", "Secondary-particle radius."),
        "voxel_size_m": ("m", "Voxel edge h (cubic voxels)."),
        "n_grains": ("—", "Number of Voronoi grain seeds; `false` = unset, then give `mean_grain_size_m`. "
                          "Must not exceed the particle's voxel count."),
        "mean_grain_size_m": ("m", "Alternative to `n_grains`: mean equivalent grain diameter "
                                   "(exactly one of the two is set)."),
        "grain_size_spread": ("—", "Coefficient of variation of the grain radii (0 = Poisson–Voronoi)."),
        "reactive_fraction": ("—", "Share of surface grains in contact with the electrolyte (S1 partial "
                                   "contact: 0.667); a particle run needs > 0."),
        "surrounding": ("—", "Phase label around the particle (particle runs)."),
        "margin_voxels": ("voxels", "Surrounding-phase voxels between particle and box faces."),
        "ndim": ("—", "3 = sphere in a 3D grid, 2 = disc (a section through the particle)."),
        "seed": ("—", "Random seed: same seed, same microstructure and orientations."),
        "match_sphere_volume": ("—", "true: the digitised active volume equals 4/3 π r³ within half a voxel "
                                     "(docs/materials.md)."),
    },
    "material": {
        "name": ("—", "Active material; sets the default D, c_max and expansion (engine/materials/active.py)."),
        "diffusivity_m2_s": ("m²/s", "[D1, D2, D3] along the crystal axes [100], [010], [001]; "
                                     "`false`/absent = the material's values.",
                             f"3 numbers, each in (0, {MAX_DIFFUSIVITY:g}] and representable in `run.dtype`"),
        "c_max_mol_m3": ("mol/m³", "Lattice Li site density c_max; `false`/absent = the material's value."),
        "x_initial": ("—", "Initial Li fraction x = c/c_max (the `soc` field), uniform."),
        "x_at_0_soc": ("—", "Accessible window: lattice x at 0 % SOC; the OCV fit's own window is mapped "
                            "onto [x_at_100_soc, x_at_0_soc] (docs/materials.md).",
                       "[0, 1], together with `x_at_100_soc` (both or neither), above it"),
        "x_at_100_soc": ("—", "Accessible window: lattice x at 100 % SOC.",
                         "[0, x_at_0_soc), together with `x_at_0_soc` (both or neither)"),
    },
    "protocol": {
        "kind": ("—", "`prescribed_flux` (uniform Li flux through the reactive surface, particle runs) or "
                      "`cycling` (steps, needs `[cell] enabled = true`)."),
        "direction": ("—", "`prescribed_flux` only: `delithiation` (charge, x falls) or `lithiation`."),
        "c_rate": ("1/h", "`prescribed_flux` only: 1C moves the theoretical capacity F·c_max·V_active in one "
                          "hour."),
        "duration_s": ("s", "`prescribed_flux` only: length of the run."),
        "steps": ("—", "`cycling` only: list of steps such as \"charge at 1C until 4.3 V\", "
                       "\"hold 4.3 V until C/20\", \"rest 10 min\", \"discharge at C/2 until 3.0 V or 3 h\" "
                       "(grammar: engine/config/protocol.py).",
                  "non-empty list of step strings when `kind = \"cycling\"`; each step is parsed at load"),
        "cycles": ("—", "`cycling` only: how often the list of steps is repeated."),
    },
    "mechanics": {
        "enabled": ("—", "Solve the stress at every snapshot (particle runs) or protocol-step end (cell "
                         "runs)."),
        "active_material": ("—", "Elastic material of the active phase: `NCM` (isotropic E(x)) or a rotated "
                                 "anisotropic tensor (engine/materials/elastic.py)."),
        "expansion": ("1 per unit x", "[β1, β2, β3]: chemical strain per unit increase of x along [100], "
                                      "[010], [001]; `false`/absent = the material's values.",
                      "3 numbers, each in [−0.5, 0.5]"),
        "surrounding_material": ("—", "Particle runs: elastic material of every non-active voxel (`pore` = "
                                      "free particle)."),
        "electrolyte_material": ("—", "Cell runs: elastic material of the solid electrolyte (separator)."),
        "x_ref": ("—", "Stress-free Li fraction; `false`/absent = `material.x_initial`."),
        "stack_pressure_Pa": ("Pa", "Applied pressure along the stack axis (mean σ_zz = −p)."),
        "tol": ("—", "CG tolerance of the elastic solve (relative residual)."),
        "maxiter": ("—", "Maximum CG iterations of the elastic solve."),
        "couple_diffusion": ("—", "Stress-assisted Li transport (drift −D x ∇χ); needs `enabled = true`."),
        "coupling_every_steps": ("steps", "Re-solve the stress every this many accepted steps when coupled."),
    },
    "interface": {
        "enabled": ("—", "Debonding: bilinear cohesive layers on the particle surface in the cell's stress "
                         "solve; the gap raises each reactive face's R_int. Needs a cell, mechanics and "
                         "`electrochemistry.interface_resistance_ohm_m2` > 0 (= R0).",
                    "true/false; needs [cell] and [mechanics] enabled and R0 > 0"),
        "strength_Pa": ("Pa", "Interface strength σc, normal and shear (baseline 100 MPa)."),
        "fracture_energy_J_m2": ("J/m²", "Fracture energy Gc, modes I and II (baseline 1 J/m²).",
                                 "in [1e-6, 1e4] and > σc²/(2 K0)"),
        "gap_decay_length_m": ("m", "g0 of R_int = R0 exp(g/g0); a modelling choice (none is published)."),
        "penalty_stiffness_Pa_m": ("Pa/m", "Penalty stiffness K0 of the bonded interface (numerical; keep "
                                           "≥ 50 E / particle radius)."),
        "conductors": ("—", "Phases the particle is bonded to: any of `solid_electrolyte`, `ecbd`.",
                       "a non-empty list of ion-conductor phases"),
        "update_every_steps": ("steps", "Re-solve stress and damage every this many accepted steps (every "
                                        "step while damage grows)."),
        "max_damage_increment": ("—", "Step control: the time step keeps the largest damage change per step "
                                      "at about this, at the last solve's damage rate."),
        "max_active_set_iterations": ("—", "Most open/closed passes of the cohesive layers per solve; a solve "
                                           "that does not settle stops the run."),
    },
    "cell": {
        "enabled": ("—", "Put the particle in a cell: collector | composite | separator | Li anode."),
        "areal_capacity_mAh_cm2": ("mAh/cm²", "Areal capacity; sets the lateral cross-section from the "
                                              "particle's theoretical capacity."),
        "separator_thickness_m": ("m", "Thickness of the solid-electrolyte separator."),
        "separator": ("—", "Phase of the separator."),
        "composite_margin_voxels": ("voxels", "ECBD voxels between particle and collector/separator."),
        "capacity_Ah": ("Ah", "Capacity that defines 1C; `false`/absent = theoretical F·c_max·V_active."),
        "particles_along_stack": ("—", "Copies of the particle on one column along the stack axis (cathode = "
                                       "`particle`; copy i uses seed particle.seed + i): the S2 two-particle "
                                       "variant; per-particle outputs as for composites."),
        "particle_spacing_m": ("m", "Centre-to-centre distance of stacked particles (≥ 2 · radius)."),
        "cathode": ("—", "What lies between collector and separator: `particle` (the [particle] in ECBD), "
                         "`composite` (generated from [composite]) or `volume` (a segmented label volume, "
                         "`cathode_volume`); docs/composite_cells.md."),
        "cathode_volume": ("—", "Path of the .npy / .tif label volume (x, y, z; z = stack axis, z = 0 at the "
                                "collector) for `cathode = \"volume\"`; voxel edge `composite.voxel_size_m`."),
        "cathode_label_map": ("—", "File value → phase of `cathode_volume`, e.g. `0=pore,1=active,2=SE,3=carbon` "
                                   "(names: pore, active/NCM, SE/solid_electrolyte, carbon, ecbd)."),
    },
    "composite": {
        "size": ("voxels", "Voxels along x, y, z of the generated composite (z = stack axis)."),
        "voxel_size_m": ("m", "Voxel edge of the generated composite, and of a loaded `cell.cathode_volume`."),
        "ratios": ("—", "Mass ratios NCM : SE : carbon, e.g. `\"7:3:1\"` (densities in "
                        "engine/geometry/composite.py)."),
        "porosity": ("—", "Pore volume fraction."),
        "radius_mean_m": ("m", "Mean of the log-normal secondary-particle radius."),
        "radius_std_m": ("m", "Standard deviation of the particle radius."),
        "max_overlap": ("—", "Allowed centre-distance deficit of touching particles, fraction of r_i + r_j."),
        "mean_grain_size_m": ("m", "Mean grain diameter of each particle's Voronoi polycrystal."),
        "carbon": ("—", "Carbon as `fibre` (cylinders) or `particle` (spheres)."),
        "fibre_length_m": ("m", "Carbon fibre length."),
        "fibre_diameter_m": ("m", "Carbon fibre diameter."),
        "carbon_particle_radius_m": ("m", "Radius of carbon spheres (`carbon = \"particle\"`)."),
        "pore_radius_m": ("m", "Radius of the pore spheres."),
        "seed": ("—", "Random seed of the generator (same seed, same volume)."),
    },
    "electrochemistry": {
        "ocv": ("—", "Open-circuit potential fit U(x) of the active material (kernels/ocv.py)."),
        "exchange_current_A_m2": ("A/m²", "Cathode exchange current density i0 at x = 0.5; "
                                          "i0 ∝ (1 − x)^α_a x^α_c."),
        "alpha_a": ("—", "Anodic transfer coefficient α_a."),
        "alpha_c": ("—", "Cathodic transfer coefficient α_c."),
        "interface_resistance_ohm_m2": ("Ω·m²", "Interfacial resistance R_int in series with the cathode "
                                                "kinetics."),
        "anode_exchange_current_A_m2": ("A/m²", "Exchange current density of the Li-metal | electrolyte "
                                                "interface."),
        "temperature_K": ("K", "Temperature T (uniform, constant)."),
        "active_electronic_S_m": ("S/m", "Electronic conductivity of the active material: a constant, a "
                                         "table [[x, S/m], ...] (log-interpolated) or a named law."),
        "carbon_electronic_S_m": ("S/m", "Electronic conductivity of carbon voxels."),
        "ecbd_electronic_S_m": ("S/m", "Electronic conductivity of the ECBD (homogenised electrolyte + "
                                       "carbon + binder)."),
        "ecbd_ionic_S_m": ("S/m", "Ionic conductivity of the ECBD."),
        "separator_ionic_S_m": ("S/m", "Ionic conductivity of the solid electrolyte (separator and any "
                                       "electrolyte voxel)."),
        "time_step_s": ("s", "Electrochemical step Δt (upper bound; shortened near x = 0 or 1 and at "
                             "cut-offs)."),
        "newton_iterations": ("—", "Most Newton iterations on the linearised Butler–Volmer coupling of one potential solve."),
        "newton_tolerance_V": ("V", "Newton stops once an iteration solved to `solver_rtol` changes no face potential drop by more than this (runs; error about 6 tol² V from quadratic convergence), or, when differentiating, after one more iteration past that (about 216 tol⁴ V); 0: always `newton_iterations`."),
        "solver_rtol": ("—", "Relative tolerance of the potential (PCG) solves."),
        "preconditioner": ("—", "PCG preconditioner of the potential solves."),
    },
    "numerics": {
        "time_step_safety": ("—", "Fraction of the explicit diffusion limit h²/(2 d D_max)."),
        "max_time_step_s": ("s", "Optional cap on the diffusion time step; `false`/absent = no cap."),
        "checkpoint_every": ("steps", "Steps per `jax.checkpoint` block of a particle rollout (memory/time "
                                      "trade-off of reverse mode)."),
        "chunk_steps": ("steps", "Steps per device call (cell runs: accepted steps; particle runs: the largest multiple of checkpoint_every ≤ this dividing a snapshot interval); the host writes once per chunk."),
        "cell_driver": ("—", "Cell runs: `device` (engine/solve) or `host` (legacy loop, no mechanics)."),
        "cutoff_tolerance_V": ("V", "A constant-current step ends within this of its voltage limit."),
        "cutoff_tolerance": ("—", "A constant-voltage step ends when |I| ≤ (1 + this) × its cut-off current."),
    },
    "output": {
        "n_snapshots": ("—", "Particle runs: field snapshots, evenly spaced from t = 0 to the end (cell runs "
                             "write one at the start and at the end of each protocol step)."),
        "timeseries_every": ("steps", "Particle runs: record the time series every this many steps."),
        "summary_png": ("—", "Write the summary figure `<out>.png` next to the run file."),
    },
    "sweep": {
        "parameter": ("—", "Scenario key swept, `SECTION.KEY`, or `protocol.c_rate` (every constant-current "
                           "step); empty = no sweep."),
        "values": ("—", "The lanes' values, one run file per lane (`<out>_<lane>.h5`).",
                   "non-empty list when `parameter` is set; each lane scenario is validated like a scenario"),
        "batch_size": ("—", "Lanes per vmapped batch (bounds memory); 0 = all lanes at once."),
    },
}


# Fit files (``ssbx fit``, engine/inverse/fit_file.py): sections that are dataclasses, with the
# instance their validate() is probed on (a measurement needs a file before anything else).
def _fit_sections() -> dict:
    from ssbx.engine.inverse import fit_file as fc

    return {"measurement": (fc.MeasurementConfig, fc.MeasurementConfig(file="maps.h5")),
            "optimizer": (fc.OptimizerConfig, fc.OptimizerConfig()),
            "output": (fc.OutputConfig, fc.OutputConfig()),
            "synthetic": (fc.SyntheticConfig, fc.SyntheticConfig())}


FIT_SECTION_DOCS = {
    "measurement": "The measured SOC maps and how the simulation is observed (engine/io/measurements.py, "
                   "engine/observables/observation.py). HDF5 files carry pixel_size_m, kind, beam_axis and t_s "
                   "themselves; values given here must agree.",
    "optimizer": "The optimiser (engine/inverse/fitting.py).",
    "output": "Where the fit writes fit_result.json, loss_history.csv and its plots.",
    "synthetic": "Only for `ssbx fit --make-synthetic`: the truth, noise and seed of synthetic maps.",
}

_LOAD = "checked when the maps are loaded: "
FIT_KEY_DOCS: dict[str, dict[str, tuple]] = {
    "measurement": {
        "file": ("—", "Measured maps: HDF5 (/maps, /t_s and attributes), .npy, .npz or .tif; relative to "
                      "the fit file. `ssbx fit --make-synthetic` writes it. With `[parameters.orientations]` a list, one "
                      "file per beam axis, fitted jointly.", "a non-empty path (a list only with "
                                                             "[parameters.orientations])"),
        "format": ("—", "File format; *unset* = from the extension."),
        "kind": ("—", "`projection` (TXM-XANES: thickness-weighted mean of x along the beam) or `volume`."),
        "pixel_size_m": ("m", "Map pixel size, an integer multiple of `particle.voxel_size_m` (maps are "
                              "block-averaged).", _LOAD + "a finite number > 0, an integer multiple of the "
                                                          "voxel size; required unless the file stores it"),
        "beam_axis": ("—", "Projection axis: \"x\", \"y\", \"z\" or 0, 1, 2; a z projection is indexed "
                           "[x, y]; a list, one per file, when `file` is a list.",
                      _LOAD + "\"x\", \"y\", \"z\" or 0..2; required for projections"),
        "t_s": ("s", "Time of each map since the protocol started.",
                _LOAD + "finite, ≥ 0, strictly increasing, one per map; required unless the file stores it"),
        "noise_std": ("x", "Map noise (SOC units); *unset* = estimated from the residuals.",
                      _LOAD + "a finite number > 0"),
        "shift_px": ("pixels", "Known registration shift of the maps relative to the simulation."),
        "shift_method": ("—", "Sub-pixel shift: `linear` or `fourier` (band-limited)."),
        "min_thickness_voxels": ("voxels", "Projection pixels seen through less active material are masked."),
        "min_active_fraction": ("—", "Volume pixels with a smaller active fraction are masked."),
    },
    "optimizer": {
        "method": ("—", "`adam`, `lbfgs` or `adam+lbfgs` (Adam to get close, L-BFGS to converge)."),
        "learning_rate": ("—", "Adam step in unconstrained units (≈ relative change per step)."),
        "adam_iterations": ("—", "Adam iterations."),
        "lbfgs_iterations": ("—", "L-BFGS iterations."),
        "gtol": ("—", "Stop when the gradient norm (unconstrained units) falls below this."),
        "ftol": ("—", "Stop when an L-BFGS step lowers the loss by less than this fraction."),
        "checkpoint_every": ("steps", "Steps per checkpointed block; `auto` = √(steps) (memory O(√n))."),
    },
    "output": {
        "folder": ("—", "Output folder, relative to the fit file.", "a non-empty path"),
        "plots": ("—", "Write fit_maps.png, fit_loss.png and fit_uncertainty.png."),
        "uncertainty": ("—", "Laplace (Gauss–Newton) standard deviations and identifiability flags."),
    },
    "synthetic": {
        "truth": ("—", "Inline table of true parameter values, e.g. `{ D1 = 8e-15, flux_scale = 1.3 }`.",
                  "names from the parameter table below, numbers as values"),
        "noise_std": ("x", "Gaussian noise added to the synthetic maps (SOC units)."),
        "seed": ("—", "Seed of that noise."),
    },
}


def _type_name(field: dataclasses.Field) -> str:
    t = str(field.type)
    t = (t.replace("tuple[float, float, float]", "list of 3 floats").replace("tuple[str, ...]", "list of strings")
         .replace("tuple", "list").replace(" | None", ""))
    return t.replace(" | ", " or ")


def _toml(value) -> str:
    if value is None:
        return "*unset*"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _default(field: dataclasses.Field) -> str:
    text = _cell(_toml(field.default))
    return text if field.default is None else f"`{text}`"


def valid_text(section: str, field: dataclasses.Field) -> str:
    """The validity rule of one key: the ConfigError its section raises for a value of
    the wrong kind (after ``FIELD = VALUE: ``), or the written rule of ``KEY_DOCS``."""
    entry = KEY_DOCS[section][field.name]
    if len(entry) > 2:
        return entry[2]
    return _probed_rule(section, field, SECTIONS[section]())


def _probed_rule(section: str, field: dataclasses.Field, base) -> str:
    """The text after ``FIELD = VALUE: `` of the ConfigError that ``base.validate()``
    raises with ``field`` set to a value no key accepts (a string, then a list)."""
    name = f"{section}.{field.name}"
    for probe in (_PROBE, [_PROBE]):
        try:
            dataclasses.replace(base, **{field.name: probe}).validate()
        except ConfigError as err:
            text = str(err)
            for shown in (probe, list(probe)):
                prefix = f"{name} = {shown!r}: "
                if text.startswith(prefix):
                    return text[len(prefix):]
    raise RuntimeError(f"{name}: no validity rule found; add one to the docs tables in engine/cli/scenario_docs.py")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """The whole docs/scenarios.md."""
    lines = [
        "# Scenario file reference",
        "",
        "<!-- Generated by `python -m ssbx.engine.cli.scenario_docs` from engine/config/scenario.py and",
        "     engine/cli/scenario_docs.py; do not edit by hand (tests/test_docs.py compares). -->",
        "",
        "A scenario is a TOML file with the sections below; every key is optional and takes the default",
        "shown (the built-in scenario of `ssbx run`, also written out with comments in",
        "[`examples/default.toml`](../examples/default.toml)). Unknown sections or keys and values",
        "outside the valid range stop the run before it starts with a `ConfigError` naming the field,",
        "the value and what is valid (the \"valid\" column is that message). `ssbx run --set",
        "SECTION.KEY=VALUE` overrides single keys. TOML has no null: keys marked *unset* by default",
        f"accept `false` to mean \"not set\" ({', '.join(f'`{k}`' for k in sorted(_OPTIONAL_KEYS))}).",
        "Units are SI except where the key's name says otherwise. Cross-section rules (e.g. `cycling`",
        "needs `[cell] enabled = true`; a cell run refuses `mechanics.surrounding_material`) are",
        "checked in `Scenario.__post_init__` and are listed in [physics.md](physics.md) and",
        "[numerics.md](numerics.md) where they matter.",
        "",
        "Contents: " + ", ".join(f"[`[{s}]`](#{s})" for s in SECTIONS)
        + "; fit files (`ssbx fit`): [below](#fit-file-reference-ssbx-fit).",
        "",
    ]
    for section, cls in SECTIONS.items():
        lines += [f"## [{section}]", "", SECTION_DOCS[section], "",
                  "| key | type | default | unit | valid | description |",
                  "|-----|------|---------|------|-------|-------------|"]
        for field in dataclasses.fields(cls):
            unit, desc = KEY_DOCS[section][field.name][:2]
            lines.append(f"| `{field.name}` | {_cell(_type_name(field))} | {_default(field)} | "
                         f"{_cell(unit)} | {_cell(valid_text(section, field))} | {_cell(desc)} |")
        lines.append("")
    lines += _render_fit()
    return "\n".join(lines)


def _render_fit() -> list[str]:
    from ssbx.engine.inverse.parameters import PARAMETERS

    lines = [
        "# Fit file reference (`ssbx fit`)",
        "",
        "A fit file (see [`examples/fit.toml`](../examples/fit.toml)) has the sections `[scenario]`,",
        "`[measurement]`, `[parameters.<name>]` (one per free parameter), `[optimizer]`, `[output]` and",
        "the optional `[synthetic]`; paths are relative to the fit file and unknown keys are refused.",
        "",
        "## [scenario]",
        "",
        "The forward model: `file` = a scenario TOML (relative to the fit file), and/or inline",
        "sections `[scenario.<section>]` with the keys of the scenario reference above, which override",
        "it. `protocol.duration_s` is ignored (the map times set the horizon).",
        "",
    ]
    for section, (cls, base) in _fit_sections().items():
        lines += [f"## [{section}] (fit file)", "", FIT_SECTION_DOCS[section], "",
                  "| key | type | default | unit | valid | description |",
                  "|-----|------|---------|------|-------|-------------|"]
        for field in dataclasses.fields(cls):
            entry = FIT_KEY_DOCS[section][field.name]
            rule = entry[2] if len(entry) > 2 else _probed_rule(section, field, base)
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            shown = "*unset*" if default is None else f"`{_cell(_toml(default) if default != {} else '{}')}`"
            lines.append(f"| `{field.name}` | {_cell(_type_name(field))} | {shown} | {_cell(entry[0])} | "
                         f"{_cell(rule)} | {_cell(entry[1])} |")
        lines.append("")
    lines += [
        "## [parameters.<name>]",
        "",
        "One table per free parameter, `start` (required) and optional `lower`, `upper` in the",
        "parameter's unit; the start must lie strictly inside the bounds. Positive quantities are",
        "fitted in log space, bounded ones through a scaled sigmoid. Names (engine/inverse/parameters.py):",
        "",
        "| name | unit | meaning | note |",
        "|------|------|---------|------|",
    ]
    for name, spec in PARAMETERS.items():
        notes = []
        if spec.default_bounds_factor is not None:
            notes.append(f"default bounds start/{spec.default_bounds_factor:g} … start·{spec.default_bounds_factor:g}")
        if spec.expansion:
            notes.append("needs lower and upper bounds and `mechanics.couple_diffusion = true`")
        if not spec.positive:
            notes.append("may be negative")
        if spec.requires is not None:
            notes.append(f"not fittable yet: needs {spec.requires}")
        if spec.cell:
            notes.append("cell with `[interface]` only: fitted to V(t) through the coupled cycle by "
                         "`engine.inverse.voltage_fit.fit_voltage_curve` (Python API), not by `ssbx fit`")
        lines.append(f"| `{name}` | {_cell(spec.unit)} | {_cell(spec.description)} | {_cell('; '.join(notes))} |")
    lines.append("")
    return lines


def missing_docs() -> list[str]:
    """Schema keys without a KEY_DOCS entry and entries without a schema key."""
    problems = []
    for section, cls in SECTIONS.items():
        keys = {f.name for f in dataclasses.fields(cls)}
        documented = set(KEY_DOCS.get(section, {}))
        problems += [f"{section}.{k}: no entry in KEY_DOCS" for k in sorted(keys - documented)]
        problems += [f"{section}.{k}: in KEY_DOCS but not in the schema" for k in sorted(documented - keys)]
        if section not in SECTION_DOCS:
            problems.append(f"[{section}]: no entry in SECTION_DOCS")
    problems += [f"[{s}]: in KEY_DOCS but not a section" for s in sorted(set(KEY_DOCS) - set(SECTIONS))]
    for section, (cls, _) in _fit_sections().items():
        keys = {f.name for f in dataclasses.fields(cls)}
        documented = set(FIT_KEY_DOCS.get(section, {}))
        problems += [f"fit [{section}].{k}: no entry in FIT_KEY_DOCS" for k in sorted(keys - documented)]
        problems += [f"fit [{section}].{k}: in FIT_KEY_DOCS but not in the schema" for k in sorted(documented - keys)]
    return problems


DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "scenarios.md"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssbx.engine.cli.scenario_docs", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH, help="file to write (default: docs/scenarios.md)")
    parser.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    args = parser.parse_args(argv)
    problems = missing_docs()
    if problems:
        print("scenario_docs: " + "; ".join(problems), file=sys.stderr)
        return 1
    text = render()
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'out of date'}")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

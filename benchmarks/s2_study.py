"""The S2 debonding study (issue #12 item 5): one cell, the literature's parameter variations.

Every case is ``examples/s2_debonding.toml`` (the S2 cell with cohesive interfaces, 1 µm
voxels) with one change; each is run whole (CC charge to 4.3 V, rest, CC discharge to
3.0 V) by the device stepper. Parameters are array leaves, so the cases after the first
reuse its compilation (a new voxel size or material recompiles).

Per case: M_Li at the end of the charge and of the discharge, charge and discharge
times, Coulombic efficiency, the peaks of D_G_ave (area-mean gap) and D_G_max over the
run, σ_Mises max and ε_V max over the snapshots (active phase), the peak mean
interfacial drop, and the run's status. Writes ``results/s2_study_<device>.json`` and a
figure of the trends.

    python benchmarks/s2_study.py --quick     # CI-sized: 7 cases, ~10–20 min on 2 CPU cores
    python benchmarks/s2_study.py             # every case of docs/physics.md S2 (hours on a CPU)
    python benchmarks/s2_study.py --groups baseline mesh   # some groups of the full study
    python benchmarks/s2_study.py --merge results/s2_study_*_cpu_cpu.json   # one table of group runs

The two-particle case (``--groups two_particles``) stacks a second particle (its own
grains, seed + 1) 12 µm centre to centre along the stack axis in the same cross-section
(``cell.particles_along_stack``); its JSON row adds each particle's SOC at the end of the
charge (per-particle rows of the run file).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, device_info, device_slug, write_result  # noqa: E402

from ssbx.engine.config.scenario import lane_scenario, load_scenario  # noqa: E402
from ssbx.engine.io.run_file import load_run  # noqa: E402
from ssbx.engine.runs.cell_run import run_cell_device  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "s2_debonding.toml"
BETA = 0.028  # isotropic coefficient of θβ (per unit x; NCM622 in-plane value, docs/physics.md §4)


def cases(quick: bool) -> list[tuple[str, str, dict]]:
    """(group, label, change) per case; change: {"c_rate": r} or {section: {key: value}}."""
    out = [("baseline", "σc 100 MPa, Gc 1 J/m², 1C", {})]
    rates = (0.5, 2.0) if quick else (0.1, 0.5, 2.0)
    out += [("c_rate", f"{r:g}C", {"c_rate": r}) for r in rates]
    out += [("isotropic_D", "D = 1e-14 (all)", {"material": {"diffusivity_m2_s": [1e-14, 1e-14, 1e-14]}})]
    thetas = (0.0,) if quick else (-1.0, -0.5, 0.0)
    out += [("theta_beta33", f"θβ33 = {t:g}", {"mechanics": {"expansion": [BETA, BETA, t * BETA]}})
            for t in thetas]
    pairs = ((50e6, 0.5), (500e6, 5.0)) if quick else ((50e6, 0.5), (200e6, 2.0), (500e6, 5.0))
    out += [("strength", f"σc {s / 1e6:g} MPa, Gc {g:g} J/m²",
             {"interface": {"strength_Pa": s, "fracture_energy_J_m2": g}}) for s, g in pairs]
    pressures = (15e6,) if quick else (5e6, 10e6, 15e6)
    out += [("stack_pressure", f"{p / 1e6:g} MPa", {"mechanics": {"stack_pressure_Pa": p}}) for p in pressures]
    if not quick:
        out += [("stiffness", "NCM_hexagonal_placeholder", {"mechanics": {"active_material":
                                                                         "NCM_hexagonal_placeholder"}})]
        out += [("mesh", "h = 0.7 µm", {"particle": {"voxel_size_m": 7e-7}})]
        out += [("two_particles", "two particles, centres 12 µm apart along z",
                 {"cell": {"particles_along_stack": 2, "particle_spacing_m": 12e-6}})]
    return out


def scenario_of(base, change: dict):
    if "c_rate" in change:
        return lane_scenario(base, "protocol.c_rate", change["c_rate"])
    merged = {section: dict(values) for section, values in change.items()}
    if "mechanics" in merged and "expansion" not in merged["mechanics"] and base.mechanics.expansion:
        merged["mechanics"]["expansion"] = list(base.mechanics.expansion)
    return base.replace(**merged)


def metrics(path: Path) -> dict:
    run = load_run(path)
    ts, snaps = run.timeseries, run.snapshots
    step = np.asarray(ts["step_index"])
    t = np.asarray(ts["t_s"])
    charge = np.flatnonzero(step == 0)
    last_step = int(step.max())
    discharge = np.flatnonzero(step == last_step)
    with h5py.File(path, "r") as f:
        status = str(f.attrs.get("status", ""))
        ce = float(f["cycles/coulombic_efficiency"][0]) if "cycles/coulombic_efficiency" in f else float("nan")
        per_particle = {}
        if "particles" in f:  # stacked particles: each one's SOC at the end of the charge
            t_p = f["particles/t_s"][...]
            row = int(np.searchsorted(t_p, t[charge[-1]], side="right")) - 1
            per_particle = {"particle_soc_charge_end": f["particles/soc"][row].tolist(),
                            "particle_depth_m": f["particles/table/depth_m"][...].tolist()}
    return {
        **per_particle,
        "status": status,
        "li_mol_start": float(ts["li_mol"][0]),
        "li_mol_charge_end": float(ts["li_mol"][charge[-1]]),
        "li_mol_discharge_end": float(ts["li_mol"][discharge[-1]]),
        "charge_time_s": float(t[charge[-1]] - t[0]),
        "discharge_time_s": float(t[discharge[-1]] - t[max(discharge[0] - 1, 0)]),
        "coulombic_efficiency": ce,
        "gap_mean_max_m": float(np.max(ts["gap_mean_m"])),
        "gap_max_max_m": float(np.max(ts["gap_max_m"])),
        "damaged_area_fraction_end": float(ts["damaged_area_fraction"][-1]),
        "interface_drop_max_V": float(np.max(ts["interface_drop_V"])),
        "von_mises_max_Pa": float(np.nanmax(snaps["von_mises_max_Pa"])),
        "volumetric_strain_max": float(np.nanmax(snaps["volumetric_strain_max"])),
        "volumetric_strain_min": float(np.nanmin(snaps["volumetric_strain_min"])),
        "steps": int(len(t)),
    }


def figure(rows: list[dict], png: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quantities = (("gap_mean_max_m", 1e9, "peak D_G_ave (nm)"), ("gap_max_max_m", 1e9, "peak D_G_max (nm)"),
                  ("von_mises_max_Pa", 1e-9, "σ_Mises max (GPa)"),
                  ("discharge_capacity_fraction", 100, "Li returned on discharge (% of removed)"))
    fig, axes = plt.subplots(1, len(quantities), figsize=(5 * len(quantities), 6), constrained_layout=True)
    labels = [f"{r['group']}: {r['label']}" for r in rows]
    y = np.arange(len(rows))
    for ax, (key, scale, name) in zip(axes, quantities):
        ax.barh(y, [r[key] * scale for r in rows], color=[f"C{hash(r['group']) % 10}" for r in rows])
        ax.set_yticks(y, labels if ax is axes[0] else [""] * len(rows), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(name)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("S2 with cohesive interfaces (examples/s2_debonding.toml): one change per case")
    fig.savefig(png, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized subset of the cases")
    ap.add_argument("--groups", nargs="+", default=None,
                    help="run only these groups of the full study (e.g. baseline mesh); results go to "
                         "s2_study_<groups>_<device>.json")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="no runs: merge the case rows of these result files (e.g. the per-group runs) into "
                         "s2_study_full_<device>.json and its figure")
    args = ap.parse_args(argv)
    if args.merge:
        import json

        rows, seen = [], set()
        for name in args.merge:
            for row in json.loads(Path(name).read_text())["cases"]:
                if (row["group"], row["label"]) not in seen:
                    seen.add((row["group"], row["label"]))
                    rows.append(row)
        info = device_info()
        print(write_result("s2_study_full", {"device": info, "merged_from": [Path(n).name for n in args.merge],
                                             "example": "examples/s2_debonding.toml", "cases": rows}))
        figure(rows, RESULTS / f"s2_study_full_{device_slug(info)}.png")
        return
    base = load_scenario(EXAMPLE)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        selected = [c for c in cases(args.quick and not args.groups) if not args.groups or c[0] in args.groups]
        for i, (group, label, change) in enumerate(selected):
            scenario = scenario_of(base, change)
            t0 = time.perf_counter()
            path = Path(tmp) / f"case_{i}.h5"
            try:
                run_cell_device(scenario, path, progress=False)
            except Exception as err:  # a diverged case is a result too; its file keeps what it had
                print(f"{label}: {type(err).__name__}: {err}")
            row = {"group": group, "label": label, "change": change, **metrics(path),
                   "wall_s": time.perf_counter() - t0}
            removed = row["li_mol_start"] - row["li_mol_charge_end"]
            row["discharge_capacity_fraction"] = (row["li_mol_discharge_end"] - row["li_mol_charge_end"]) / removed
            rows.append(row)
            print(f"{group:15s} {label:32s} {row['status']:9s} D_G_ave {row['gap_mean_max_m'] * 1e9:6.2f} nm  "
                  f"D_G_max {row['gap_max_max_m'] * 1e9:6.2f} nm  σ_VM {row['von_mises_max_Pa'] / 1e9:5.2f} GPa  "
                  f"CE {row['coulombic_efficiency']:.4f}  {row['wall_s']:.0f} s", flush=True)
    info = device_info()
    payload = {"device": info, "quick": args.quick, "groups": args.groups, "example": "examples/s2_debonding.toml", "cases": rows}
    name = "s2_study_quick" if args.quick else "s2_study"
    if args.groups:
        name = "s2_study_" + "_".join(args.groups)
    print(write_result(name, payload))
    png = RESULTS / f"{name}_{device_slug(info)}.png"
    figure(rows, png)
    print(png)


if __name__ == "__main__":
    main()

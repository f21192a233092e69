"""ssbx cell vs PyBaMM's single particle model (SPM), 1C charge of one NCM811 sphere.

Run:  pip install pybamm && python benchmarks/spm_comparison.py [--voxel-size-m 4e-7]

Both models get the same physics (issue #4, validation (a)):

* one isotropic spherical particle, D = 4e-15 m²/s, c_max = 63104 mol/m³ and the
  NCM811 OCP of Chen et al., JES 167, 080534 (2020) (PyBaMM's "Chen2020" set; ssbx's
  ``kernels/ocv.py``), radius = the equivalent radius of ssbx's voxel sphere;
* Butler–Volmer with α = ½ and PyBaMM's Chen2020 exchange current density
  i0 = m_ref c_e^½ c^½ (c_max − c)^½ at c_e = 1000 mol/m³ — in ssbx the same law
  written as i0 = i0(½) · 2 √(x(1 − x)) with i0(½) evaluated from PyBaMM's function;
* a Li-metal counter electrode with negligible overpotential (i0_Li = 1e6 A/m² in
  both) and negligible ohmic losses (every conductivity 1e3 S/m in ssbx; SPM has
  none);
* the same current per particle surface area: PyBaMM's half-cell SPM
  ({"working electrode": "positive"}) gets I = i_surf · a L A with a = 3ε/R.

The result (RMS and max voltage difference over the charge, and both curves) goes to
benchmarks/results/spm_comparison.json and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, device_info  # noqa: E402

from ssbx.engine.geometry.cell_stack import cell_microstructure  # noqa: E402
from ssbx.engine.runs.host_cell import run_cell  # noqa: E402
from ssbx.engine.config.scenario import scenario_from_dict  # noqa: E402
from ssbx.engine.io.run_file import load_run  # noqa: E402

C_MAX = 63104.0
D = 4e-15
X0 = 0.85
DURATION_S = 2700.0  # 45 min at 1C: x from 0.85 to about 0.10 on average


def ssbx_scenario(voxel_size_m: float, i0_half: float, radius_m: float = 5.22e-6):
    base = {
        "run": {"name": "spm_comparison"},
        "particle": {"radius_m": radius_m, "voxel_size_m": voxel_size_m, "n_grains": 1, "margin_voxels": 1},
        "material": {"name": "NCM811", "diffusivity_m2_s": [D, D, D], "c_max_mol_m3": C_MAX, "x_initial": X0},
        "cell": {"enabled": True, "separator_thickness_m": voxel_size_m, "composite_margin_voxels": 1},
        "electrochemistry": {
            "ocv": "NCM811", "exchange_current_A_m2": i0_half, "anode_exchange_current_A_m2": 1e6,
            "active_electronic_S_m": 1e3, "ecbd_electronic_S_m": 1e3, "ecbd_ionic_S_m": 1e3,
            "separator_ionic_S_m": 1e3, "time_step_s": 10.0, "newton_iterations": 4,
        },
        "mechanics": {"enabled": False},
        "protocol": {"kind": "cycling", "steps": [f"charge at 1C until 4.4 V or {DURATION_S / 60:g} min"]},
    }
    # choose the areal capacity so that the cross-section is just the particle block
    probe = scenario_from_dict(dict(base, cell=dict(base["cell"], areal_capacity_mAh_cm2=1e-3)))
    micro, info = cell_microstructure(probe)
    block = info["composite_voxels"]
    area = (block * voxel_size_m) ** 2
    areal = info["capacity_Ah"] * 1e3 / (area * 1e4)
    return scenario_from_dict(dict(base, cell=dict(base["cell"], areal_capacity_mAh_cm2=areal * 0.999)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxel-size-m", type=float, default=4e-7)
    parser.add_argument("--reuse", action="store_true", help="reuse an existing ssbx run file")
    args = parser.parse_args(argv)
    import pybamm

    params = pybamm.ParameterValues("Chen2020")
    i0_fn = params["Positive electrode exchange-current density [A.m-2]"]
    i0_half = float(i0_fn(pybamm.Scalar(1000.0), pybamm.Scalar(0.5 * C_MAX), pybamm.Scalar(C_MAX),
                          pybamm.Scalar(298.15)).evaluate())

    scenario = ssbx_scenario(args.voxel_size_m, i0_half)
    micro, _ = cell_microstructure(scenario)
    volume = micro.active_volume_m3()
    radius = (3 * volume / (4 * np.pi)) ** (1 / 3)
    out = RESULTS / "spm_comparison_ssbx.h5"
    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not (args.reuse and out.exists()):
        run_cell(scenario, out, progress=True)
    ssbx_seconds = time.perf_counter() - t0
    run = load_run(out)
    t_ssbx, v_ssbx = run.timeseries["t_s"], run.timeseries["voltage_V"]
    current = float(np.median(run.timeseries["current_A"]))
    i_surf = current / (4 * np.pi * radius**2)  # A/m² of particle surface

    eps = float(params["Positive electrode active material volume fraction"])
    thickness = float(params["Positive electrode thickness [m]"])
    area = float(params["Electrode height [m]"]) * float(params["Electrode width [m]"])
    a = 3 * eps / radius
    params.update(
        {
            "Positive particle radius [m]": radius,
            "Positive particle diffusivity [m2.s-1]": D,
            "Maximum concentration in positive electrode [mol.m-3]": C_MAX,
            "Initial concentration in positive electrode [mol.m-3]": X0 * C_MAX,
            "Current function [A]": -i_surf * a * thickness * area,  # PyBaMM: charge < 0
            "Upper voltage cut-off [V]": 4.5,
            "Lower voltage cut-off [V]": 2.5,
            "Ambient temperature [K]": 298.15,
            "Initial temperature [K]": 298.15,
            "Reference temperature [K]": 298.15,
            "Exchange-current density for lithium metal electrode [A.m-2]": 1e6,
            "Lithium metal partial molar volume [m3.mol-1]": 1.3e-5,
        },
        check_already_exists=False,
    )
    model = pybamm.lithium_ion.SPM({"working electrode": "positive"})
    var_pts = dict(model.default_var_pts)
    var_pts["r_p"] = 100
    sim = pybamm.Simulation(model, parameter_values=params, var_pts=var_pts)
    sol = sim.solve(np.linspace(0, t_ssbx[-1], 500))
    v_pb = sol["Voltage [V]"].entries
    t_pb = sol["Time [s]"].entries
    v_pb_at = np.interp(t_ssbx, t_pb, v_pb)
    diff = v_ssbx - v_pb_at
    rms_mV = float(np.sqrt(np.mean(diff**2)) * 1e3)
    max_mV = float(np.max(np.abs(diff)) * 1e3)
    payload = {
        "benchmark": "spm_comparison",
        "device": device_info(),
        "pybamm_version": pybamm.__version__,
        "voxel_size_m": args.voxel_size_m,
        "equivalent_radius_m": radius,
        "exchange_current_at_half_A_m2": i0_half,
        "surface_current_density_A_m2": i_surf,
        "duration_s": float(t_ssbx[-1]),
        "rms_difference_mV": rms_mV,
        "max_difference_mV": max_mV,
        "ssbx_wall_s": ssbx_seconds,
        "t_s": t_ssbx.tolist(),
        "voltage_ssbx_V": v_ssbx.tolist(),
        "voltage_pybamm_V": v_pb_at.tolist(),
    }
    (RESULTS / "spm_comparison.json").write_text(json.dumps(payload, indent=1) + "\n")
    out.unlink(missing_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6, 6), sharex=True, constrained_layout=True)
    ax.plot(t_pb / 60, v_pb, label=f"PyBaMM SPM {pybamm.__version__}")
    ax.plot(t_ssbx / 60, v_ssbx, "--", label=f"ssbx voxel cell (h = {args.voxel_size_m * 1e9:.0f} nm)")
    ax.set_ylabel("voltage (V vs Li)")
    ax.legend()
    ax.set_title("1C charge, NCM811 sphere (Chen 2020 parameters)")
    ax2.plot(t_ssbx / 60, diff * 1e3)
    ax2.set_xlabel("t (min)")
    ax2.set_ylabel("ssbx − PyBaMM (mV)")
    ax2.set_title(f"RMS {rms_mV:.2f} mV, max {max_mV:.2f} mV")
    fig.savefig(RESULTS / "spm_comparison.png", dpi=100)
    print(f"RMS difference {rms_mV:.2f} mV, max {max_mV:.2f} mV over {t_ssbx[-1]:.0f} s")


if __name__ == "__main__":
    main()

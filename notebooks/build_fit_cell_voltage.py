"""Write notebooks/fit_cell_voltage.ipynb (without outputs) with nbformat.

Run:  python notebooks/build_fit_cell_voltage.py
The notebook is executed by tests/test_notebooks.py; edit this script, not the .ipynb.
"""


from nbformat.v4 import new_code_cell, new_markdown_cell

CELLS = [
    new_markdown_cell("""\
# Rate constant and diffusivity of a cathode from a V(t) curve

A single NCM111 particle in a solid-state cell (solid electrolyte, carbon/binder, a
separator and a Li anode: the S2 set-up of docs/physics.md at a small size) is charged at
2C and then rests. During the charge the voltage sits above the open-circuit voltage by
the kinetic overpotential (set by the exchange current density i0) and by the Li
gradient inside the particle (set by the diffusivity D); in the rest the gradient
relaxes at a rate set by D alone. This notebook fits i0 and the in-plane diffusivity
D1 = D2 to a synthetic V(t) with known values through the differentiable cell cycle
(`engine/inverse/voltage_fit.py`: forward-mode Gauss–Newton least squares on ln θ),
reports the Laplace uncertainty and correlation of the two, and shows the fitted curve
and its residuals.

It runs in CI at a small size (a particle of radius 1.5 µm at 0.5 µm voxels, 136 active voxels in a
13 × 13 × 14 cell, 7 steps of 40 s, float32): coarse, but the fit only needs the model to
be the one that made the data.

**Data term: V(t) only.** The cell fit (`fit_voltage_curve`) has no SOC-map term: maps
enter only the particle fits (`fit_diffusivity.ipynb`, `ssbx fit`). A joint
voltage + map fit of the cell is not implemented yet."""),
    new_code_cell("""\
import time

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.inverse.voltage_fit import VoltageCurveModel, fit_voltage_curve
from ssbx.engine.model.resolve import resolve_cell
from ssbx.engine.solve.rollout import step_budget

start_clock = time.perf_counter()"""),
    new_markdown_cell("""\
## The cell and the truth

NCM111 from x = 0.95, i0 = 2 A/m² (at x = 0.5), D1 = D2 = 5e-15 m²/s, D3 = 1e-20 m²/s
(layered: slow across the layers). Protocol: charge at 2C for 3 min, rest 1 min. The
scenario holds the true values: V at the truth is the synthetic measurement."""),
    new_code_cell("""\
TRUTH = {"exchange_current": 2.0, "diffusivity_in_plane": 5e-15}   # A/m², m²/s
scenario = scenario_from_dict({
    "run": {"name": "cell_voltage_fit"},
    "particle": {"radius_m": 1.5e-6, "voxel_size_m": 5e-7, "n_grains": 4},
    "material": {"name": "NCM111", "x_initial": 0.95, "diffusivity_m2_s": [5e-15, 5e-15, 1e-20]},
    "cell": {"enabled": True, "areal_capacity_mAh_cm2": 0.05, "separator_thickness_m": 2e-6},
    "mechanics": {"enabled": False},
    "electrochemistry": {"time_step_s": 40.0, "exchange_current_A_m2": 2.0},
    "protocol": {"kind": "cycling", "steps": ["charge at 2C until 4.3 V or 3 min", "rest 1 min"]},
})
resolved = resolve_cell(scenario, jnp.float32)
print("grid", resolved.geometry.active.shape, "|", int(np.sum(resolved.geometry.active)), "active voxels")"""),
    new_markdown_cell("""\
## The free parameters and one compiled pass

Starts far from the truth (i0 0.8 instead of 2, D 2.5e-15 instead of 5e-15) inside
bounds. The upper bound of D fixes the static number of diffusion sub-steps per step
(`step_budget`: the explicit scheme must stay stable at the largest D the fit may try),
so it is kept at 1.5× the scenario value. The `VoltageCurveModel` holds the compiled
forward-mode pass (V and one Jacobian column per call); building it once serves the
synthetic data, the fit and the final uncertainty."""),
    new_code_cell("""\
FREE = {"exchange_current": (0.8, 0.1, 10.0),            # (start, low, high)
        "diffusivity_in_plane": (2.5e-15, 1e-15, 7.5e-15)}
T = np.linspace(0.0, 240.0, 25)   # measured times (s)
N_STEPS = 7                       # step budget of the rollout: 7 × 40 s covers 240 s
model = VoltageCurveModel(resolved, list(FREE), T, N_STEPS, step_budget(resolved, 1.52))
v_true, _ = model.at(TRUTH)
print(f"compile + first pass {model.timings[0]:.1f} s")
SIGMA_V = 5e-4   # 0.5 mV noise
measured = v_true + np.random.default_rng(0).normal(0.0, SIGMA_V, v_true.shape)"""),
    new_markdown_cell("""\
## Fit

Trust-region Gauss–Newton (`derivatives="forward"`, the default for ≤ 3 parameters) in
ln θ inside the bounds. The Laplace covariance (JᵀJ)⁻¹ σ_V² in ln θ gives the relative
standard deviations; a parameter with relative std > 1 would be reported as not
determined."""),
    new_code_cell("""\
fit = fit_voltage_curve(resolved, T, measured, FREE, n_steps=N_STEPS, sigma_V=SIGMA_V,
                        max_iterations=30, curve_model=model)
print(f"{fit.message} after {fit.evaluations} evaluations of {fit.evaluation_s:.1f} s; "
      f"rms residual {1e3 * fit.rms_V:.3f} mV (noise {1e3 * SIGMA_V:.1f} mV)")
print(f"{'parameter':22s} {'start':>9s} {'fitted':>10s} {'± (rel)':>8s} {'truth':>9s}  determined")
for name, (start, _, _) in FREE.items():
    print(f"{name:22s} {start:9.3g} {fit.values[name]:10.4g} {fit.relative_std[name]:8.2%} {TRUTH[name]:9.3g}  "
          f"{fit.determined[name]}")
for name in FREE:
    error = fit.values[name] / TRUTH[name] - 1
    print(f"recovered {name}: error {100 * error:+.2f} % = {abs(error) / fit.relative_std[name]:.2f} std "
          f"(std {100 * fit.relative_std[name]:.2f} %)")"""),
    new_markdown_cell("""\
## Uncertainty and correlation

`fit_voltage_curve` reports the relative standard deviations; the full covariance comes
from the Jacobian at the fitted values (one more pass, which also gives the fitted
curve). i0 and D are negatively correlated: during the charge both a faster reaction and
faster diffusion lower the overvoltage; the rest, where only D acts, separates them."""),
    new_code_cell("""\
v_fit, jac = model.at(fit.values)
J = jac / SIGMA_V
cov = np.linalg.inv(J.T @ J)
std = np.sqrt(np.diag(cov))
print(f"σ(ln i0) = {std[0]:.2%}, σ(ln D) = {std[1]:.2%}, correlation {cov[0, 1] / (std[0] * std[1]):+.3f}")
charge = T <= 180.0
cov_charge = np.linalg.inv(J[charge].T @ J[charge])
print(f"from the charge alone: σ(ln i0) = {np.sqrt(cov_charge[0, 0]):.2%}, σ(ln D) = {np.sqrt(cov_charge[1, 1]):.2%}, "
      f"correlation {cov_charge[0, 1] / np.sqrt(cov_charge[0, 0] * cov_charge[1, 1]):+.3f}")"""),
    new_markdown_cell("""\
## Fitted vs measured curve, and the residuals"""),
    new_code_cell("""\
fig, (ax, ax_r) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, height_ratios=[2, 1], constrained_layout=True)
ax.plot(T / 60, measured, "ko", ms=4, label="measured (synthetic)")
ax.plot(T / 60, v_fit, "C1-", label=f"fit: i0 = {fit.values['exchange_current']:.3g} A/m², "
                                    f"D = {fit.values['diffusivity_in_plane']:.3g} m²/s")
ax.axvspan(3, 4, color="0.92", label="rest")
ax.set(ylabel="V (V)", title="2C charge and rest of the S2-type cell")
ax.legend(fontsize=8)
ax_r.axhline(0, color="0.6", lw=0.8)
ax_r.plot(T / 60, (measured - v_fit) / SIGMA_V, "C0o-", ms=4)
ax_r.set(xlabel="t (min)", ylabel="residual / σ_V")
plt.show()
print(f"notebook run time {time.perf_counter() - start_clock:.0f} s")"""),
    new_markdown_cell("""\
Residuals within about ±2 σ_V with no trend: the fit explains the curve down to the
noise, and the errors of i0 and D are within their Laplace standard deviations.

## At GPU size (documented, not run in CI)

The S2 cell of `examples/ncm111_llzo_single_particle.toml` (5 µm particle, 53 grains,
0.295 mAh/cm², LLZO separator) at 0.5 µm voxels — a 31 × 31 × 45 grid, 4189 active voxels — with a
1C charge to 4.3 V and a 10 min rest sampled every 30 s:

```python
data = read_toml("examples/ncm111_llzo_single_particle.toml")   # ssbx.engine.config.scenario.read_toml
data["particle"]["voxel_size_m"] = 5e-7
data["protocol"]["steps"] = ["charge at 1C until 4.3 V", "rest 10 min"]
scenario = scenario_from_dict(data)
resolved = resolve_cell(scenario, jnp.float32)
T, measured = ...   # the measured curve: times (s, every 30 s, up to the end of the rest) and V
fit = fit_voltage_curve(resolved, T, measured, {"exchange_current": (0.5, 0.05, 10.0),
                                                "diffusivity_in_plane": (5e-15, 1e-15, 1.5e-14)},
                        n_steps=int(T[-1] / 30.0) + 10, sigma_V=5e-4)
```

Expected cost: the compile does not depend on the grid or the number of steps; each
pass scales with voxels × steps × diffusion sub-steps (18× the CI cell's grid, 30× its active voxels, about
17× its steps, 2× its sub-steps per second for D up to 1.5e-14 m²/s). Its time on a GPU has not been measured yet."""),
]


if __name__ == "__main__":
    from notebook_builder import write

    write(CELLS, "fit_cell_voltage.ipynb")

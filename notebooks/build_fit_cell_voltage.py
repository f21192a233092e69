"""Write notebooks/fit_cell_voltage.ipynb (without outputs) with nbformat.

Run:  python notebooks/build_fit_cell_voltage.py
The notebook is executed by tests/test_notebooks.py; edit this script, not the .ipynb.
"""


from nbformat.v4 import new_code_cell, new_markdown_cell

CELLS = [
    new_markdown_cell("""\
# Rate constant and diffusivity of a cathode from a V(t) curve plus SOC maps

A single NCM111 particle in a solid-state cell (solid electrolyte, carbon/binder, a
separator and a Li anode: the S2 set-up of docs/physics.md at a small size) is charged at
2C and then rests. During the charge the voltage sits above the open-circuit voltage by
the kinetic overpotential (set by the exchange current density i0) and by the Li
gradient inside the particle (set by the diffusivity D); in the rest the gradient
relaxes at a rate set by D alone. V(t) sees the gradient only integrated, through the
surface concentration; SOC maps (TXM-XANES projections of the Li fraction x through the
particle) see it directly. This notebook fits i0 and the in-plane diffusivity D1 = D2 to
a synthetic V(t) plus four projected maps with known values through the differentiable
cell cycle (`engine/inverse/voltage_fit.py` with the map term of
`engine/inverse/cell_maps.py`: forward-mode Gauss–Newton least squares on ln θ), fits
V(t) alone for comparison, reports the Laplace uncertainties and correlation with and
without the maps, and shows the fitted curve, the measured and fitted maps and their
residuals.

It runs in CI at a small size (a particle of radius 1.5 µm at 0.5 µm voxels, 136 active voxels in a
13 × 13 × 14 cell, 7 steps of 40 s, float32): coarse, but the fit only needs the model to
be the one that made the data."""),
    new_code_cell("""\
import time

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.io.measurements import MeasuredMaps
from ssbx.engine.inverse.voltage_fit import VoltageCurveModel, fit_voltage_curve
from ssbx.engine.model.resolve import resolve_cell
from ssbx.engine.observables.observation import ObservationOperator
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
## The free parameters, the observation and one compiled pass

Starts far from the truth (i0 0.8 instead of 2, D 2.5e-15 instead of 5e-15) inside
bounds. The upper bound of D fixes the static number of diffusion sub-steps per step
(`step_budget`: the explicit scheme must stay stable at the largest D the fit may try),
so it is kept at 1.5× the scenario value.

The maps are projections along x (the beam axis; image axes y and z, the stack axis)
at the voxel size: each pixel is the mean x through the active material along its ray,
Σ a x / Σ a (`ObservationOperator`, the same operator as the particle fits). Four maps:
at 1, 2 and 3 min of the charge and at the end of the rest. The `VoltageCurveModel`
holds the compiled forward-mode pass (V, the maps, and one Jacobian column of each per
call); building it once serves the synthetic data, both fits and the uncertainties."""),
    new_code_cell("""\
FREE = {"exchange_current": (0.8, 0.1, 10.0),            # (start, low, high)
        "diffusivity_in_plane": (2.5e-15, 1e-15, 7.5e-15)}
T = np.linspace(0.0, 240.0, 25)   # measured times of V (s)
T_MAPS = np.array([60.0, 120.0, 180.0, 240.0])   # measured times of the maps (s)
N_STEPS = 7                       # step budget of the rollout: 7 × 40 s covers 240 s
operator = ObservationOperator(kind="projection", beam_axis=0, factor=1)
model = VoltageCurveModel(resolved, list(FREE), T, N_STEPS, step_budget(resolved, 1.52),
                          map_t_s=T_MAPS, operator=operator)
v_true, _, maps_true, _ = model.at(TRUTH)
print(f"compile + first pass {model.timings[0]:.1f} s; maps {model.image_shape} (y, z), "
      f"{int(model.visible.sum())} pixels in front of the particle")
SIGMA_V, SIGMA_MAP = 5e-4, 2e-3   # 0.5 mV; 0.2 % in x (a 0.5 µm pixel bins ~250 TXM pixels)
rng = np.random.default_rng(0)
measured = v_true + rng.normal(0.0, SIGMA_V, v_true.shape)
shape = (T_MAPS.size,) + model.image_shape
maps = MeasuredMaps(maps=maps_true.reshape(shape) + rng.normal(0.0, SIGMA_MAP, shape), t_s=T_MAPS,
                    pixel_size_m=5e-7, kind="projection", beam_axis="x", noise_std=SIGMA_MAP)"""),
    new_markdown_cell("""\
## Fit: V(t) plus maps, and V(t) alone

Trust-region Gauss–Newton (`derivatives="forward"`, the default for ≤ 3 parameters) in
ln θ inside the bounds, on the residuals ((V − V_m)/σ_V, (P − P_m)/σ_map) over the
usable pixels. The Laplace covariance (JᵀJ)⁻¹ in ln θ gives the relative standard
deviations; a parameter with relative std > 1 would be reported as not determined. The
same compiled model serves the fit to V(t) alone (`maps=None`)."""),
    new_code_cell("""\
fit = fit_voltage_curve(resolved, T, measured, FREE, n_steps=N_STEPS, sigma_V=SIGMA_V,
                        max_iterations=30, curve_model=model, maps=maps)
print(f"V(t) + maps: {fit.message} after {fit.evaluations} evaluations of {fit.evaluation_s:.1f} s; "
      f"rms residual {1e3 * fit.rms_V:.3f} mV (noise {1e3 * SIGMA_V:.1f} mV), "
      f"{fit.rms_map:.4f} in x over {fit.n_map_pixels} map pixels (noise {SIGMA_MAP})")
fit_v = fit_voltage_curve(resolved, T, measured, FREE, n_steps=N_STEPS, sigma_V=SIGMA_V,
                          max_iterations=30, curve_model=model)
print(f"V(t) alone:  {fit_v.message} after {fit_v.evaluations} evaluations")
print(f"{'parameter':22s} {'start':>9s} {'truth':>9s} {'V + maps':>10s} {'± (rel)':>8s} {'V alone':>10s} "
      f"{'± (rel)':>8s}  determined")
for name, (start, _, _) in FREE.items():
    print(f"{name:22s} {start:9.3g} {TRUTH[name]:9.3g} {fit.values[name]:10.4g} {fit.relative_std[name]:8.2%} "
          f"{fit_v.values[name]:10.4g} {fit_v.relative_std[name]:8.2%}  {fit.determined[name]}")
for name in FREE:
    error = fit.values[name] / TRUTH[name] - 1
    print(f"recovered {name}: error {100 * error:+.2f} % = {abs(error) / fit.relative_std[name]:.2f} std "
          f"(std {100 * fit.relative_std[name]:.2f} %)")"""),
    new_markdown_cell("""\
## Uncertainty and correlation, with and without the maps

`fit.relative_std_voltage_only` is what the V(t) rows of the same Jacobian give alone at
the joint fit's values; `fit_v` is the V(t)-only fit itself. i0 and D are negatively
correlated in V(t): during the charge both a faster reaction and faster diffusion lower
the overvoltage; the rest, where only D acts, separates them. The maps see the Li
gradient inside the particle (its depth is set by D, and i0 barely moves it at a fixed
current), so they pin D and, through it, i0."""),
    new_code_cell("""\
for label, f in (("V(t) + maps", fit), ("V(t) alone", fit_v)):
    print(f"{label:12s} σ(ln i0) = {f.relative_std['exchange_current']:.2%}, "
          f"σ(ln D) = {f.relative_std['diffusivity_in_plane']:.2%}, "
          f"correlation {f.correlation('exchange_current', 'diffusivity_in_plane'):+.3f}")
d = "diffusivity_in_plane"
print(f"σ(ln D) with maps {100 * fit.relative_std[d]:.2f}% vs V(t) alone {100 * fit_v.relative_std[d]:.2f}% "
      f"(V rows of the joint Jacobian: {100 * fit.relative_std_voltage_only[d]:.2f}%)")"""),
    new_markdown_cell("""\
## Fitted vs measured curve, and the residuals"""),
    new_code_cell("""\
fitted = model.outputs_at(fit.values)   # the fit's own evaluation at its values: no extra pass
v_fit, maps_fit = fitted["voltage_V"], fitted["maps"]
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
plt.show()"""),
    new_markdown_cell("""\
## Measured vs fitted maps, and the residual maps

Rows: the measured projection (synthetic, with noise), the fitted model's, and the
residual in units of σ_map (pixels without enough material behind them are blank). The
Li-poor rim grows through the charge and relaxes in the rest; the residual maps are
noise without structure."""),
    new_code_cell("""\
shown = np.where(model.visible, 1.0, np.nan)
fig, axes = plt.subplots(3, T_MAPS.size, figsize=(2.6 * T_MAPS.size, 7), constrained_layout=True)
lo, hi = np.nanmin(maps.maps * shown), np.nanmax(maps.maps * shown)
for k, t in enumerate(T_MAPS):
    a = axes[0, k].imshow((maps.maps[k] * shown).T, origin="lower", vmin=lo, vmax=hi, cmap="viridis")
    axes[1, k].imshow((maps_fit[k] * shown).T, origin="lower", vmin=lo, vmax=hi, cmap="viridis")
    r = axes[2, k].imshow(((maps.maps[k] - maps_fit[k]) / SIGMA_MAP * shown).T, origin="lower", vmin=-3, vmax=3,
                          cmap="RdBu_r")
    axes[0, k].set_title(f"t = {t / 60:.0f} min")
    axes[2, k].set_xlabel("y (voxels)")
for row, label in enumerate(("measured x", "fitted x", "residual / σ_map")):
    axes[row, 0].set_ylabel(f"{label}\\nz (voxels)")
fig.colorbar(a, ax=axes[:2], label="Li fraction x (mean along the beam)")
fig.colorbar(r, ax=axes[2], label="residual / σ_map")
plt.show()
print(f"notebook run time {time.perf_counter() - start_clock:.0f} s")"""),
    new_markdown_cell("""\
Residuals within about ±2 σ (curve and maps) with no trend or pattern: the fit explains
both data sets down to the noise, and the errors of i0 and D are within their Laplace
standard deviations.

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
maps = load_measurement("maps.h5")   # ssbx.engine.io.measurements: projections of x on the cell grid
fit = fit_voltage_curve(resolved, T, measured, {"exchange_current": (0.5, 0.05, 10.0),
                                                "diffusivity_in_plane": (5e-15, 1e-15, 1.5e-14)},
                        n_steps=int(T[-1] / 30.0) + 10, sigma_V=5e-4, maps=maps, sigma_map=2e-3)
```

Expected cost: the compile does not depend on the grid or the number of steps; each
pass scales with voxels × steps × diffusion sub-steps (18× the CI cell's grid, 30× its active voxels, about
17× its steps, 2× its sub-steps per second for D up to 1.5e-14 m²/s); the maps add one
projection per step (a sum over the grid, small against the step). Its time on a GPU has not
been measured yet: `python benchmarks/cell_fit_gpu_size.py` runs this cell's
fit with synthetic data and times it (on the next GPU lease, `benchmarks/gpu_suite.sh --part2`)."""),
]


if __name__ == "__main__":
    from notebook_builder import write

    write(CELLS, "fit_cell_voltage.ipynb")

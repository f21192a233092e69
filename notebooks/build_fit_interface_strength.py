"""Write notebooks/fit_interface_strength.ipynb (without outputs) with nbformat.

Run:  python notebooks/build_fit_interface_strength.py
The notebook is executed by tests/test_notebooks.py; edit this script, not the .ipynb.
"""


from nbformat.v4 import new_code_cell, new_markdown_cell

CELLS = [
    new_markdown_cell("""\
# How strong is the particle | electrolyte interface? σc from SOC maps and a voltage curve

On charge an NCM particle shrinks; the cohesive interface to the solid electrolyte opens
once the normal traction reaches its strength σc, and the gap g raises the interfacial
resistance, R_int = R0 exp(g/g0). The charge voltage then climbs faster than the bulk
kinetics explain, and the current shifts away from the opened patches of the surface,
which shows in the Li distribution inside the particle. This notebook fits σc to such a
V(t) curve plus projected SOC maps through the differentiable coupled cycle (diffusion,
Butler–Volmer kinetics, potentials, elasticity with cohesive layers;
`engine/inverse/voltage_fit.py` with the map term of `engine/inverse/cell_maps.py`),
reports its Laplace uncertainty, shows why σc and the gap decay length g0 cannot both be
fitted from V(t) — nor from V(t) plus maps — and shows the gap and damage on the particle
surface before (start value) and after the fit.

It runs in CI at a small size: a 2 µm particle in a 19 × 19 × 16 voxel cell, 8 steps,
float64 (the forward-mode derivatives of the coupled step are NaN in float32;
docs/interfaces.md, "Fitting the interface").

**Data:** V(t) and three maps of the Li fraction projected along x. The gap and damage
maps at the end are outputs of the fitted model, not data (the fit has no gap-map
term)."""),
    new_code_cell("""\
import time

import jax

jax.config.update("jax_enable_x64", True)  # this notebook only: the interface fit needs float64
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from ssbx.engine.config.scenario import scenario_from_dict
from ssbx.engine.inverse.parameters import FreeParameter
from ssbx.engine.inverse.voltage_fit import VoltageCurveModel, fit_voltage_curve
from ssbx.engine.io.measurements import MeasuredMaps
from ssbx.engine.model.resolve import resolve_cell
from ssbx.engine.observables.observation import ObservationOperator
from ssbx.engine.solve.rollout import step_budget

start_clock = time.perf_counter()"""),
    new_markdown_cell("""\
## The cell and the truth

NCM111 particle (radius 2 µm, 0.5 µm voxels, 6 grains) in an LLZO/ECBD surround with a
2 µm LLZO separator and a Li anode, charged at 2C for 7 min. An isotropic chemical
expansion of 0.05 per unit x shrinks the particle enough for the interface to open
part-way through the charge. The truth: σc = 150 MPa, Gc = 0.1 J/m², g0 = 2 nm,
R0 = 1e-3 Ω m². `max_damage_increment = 1` keeps the sequence of steps the same for
every σc, so V(σc) is smooth (a step cut by the damage control is a branch change)."""),
    new_code_cell("""\
SIGMA_TRUE, G0 = 150e6, 2e-9   # Pa, m
scenario = scenario_from_dict({
    "run": {"name": "interface_strength_fit"},
    "particle": {"radius_m": 2e-6, "voxel_size_m": 5e-7, "n_grains": 6},
    "material": {"name": "NCM111", "x_initial": 0.95},
    "cell": {"enabled": True, "areal_capacity_mAh_cm2": 0.05, "separator_thickness_m": 2e-6},
    "mechanics": {"enabled": True, "electrolyte_material": "LLZO", "expansion": [0.05, 0.05, 0.05], "tol": 1e-6},
    "electrochemistry": {"time_step_s": 60.0, "interface_resistance_ohm_m2": 1e-3},
    "protocol": {"kind": "cycling", "steps": ["charge at 2C until 4.3 V or 7 min"]},
    "interface": {"enabled": True, "strength_Pa": SIGMA_TRUE, "fracture_energy_J_m2": 0.1,
                  "gap_decay_length_m": G0, "update_every_steps": 1, "max_damage_increment": 1.0},
})
resolved = resolve_cell(scenario, jnp.float64)
T = np.linspace(0.0, 420.0, 15)   # the measured times of V (s)
T_MAPS = np.array([180.0, 300.0, 420.0])   # the measured times of the maps (s)
N_STEPS = 8                       # step budget of the rollout (60 s steps cover 420 s)
layers = resolved.geometry.cohesive.layers
print("grid", resolved.geometry.active.shape, "|", int(np.sum(resolved.geometry.active)), "active voxels |",
      len(layers.host_index[0]), "cohesive layers")"""),
    new_markdown_cell("""\
## One compiled pass for the curve, the maps, their Jacobians and the layers

`VoltageCurveModel` computes V at the measured times and the projected maps of x at the
map times (the rollout records a map per step; both are interpolated linearly in time),
and their Jacobian ∂/∂ln θ by forward mode, one call per column. Here θ = (σc, g0), and a
subclass also returns the gap and damage of every cohesive layer at the end of the run
from the same pass (`final_outputs`). With `hold` set, g0 is held at its value and the
model is one of σc alone, the form the fit takes, without a new compile. One compile
serves the synthetic data, the identifiability analysis, the fit and the surface maps."""),
    new_code_cell("""\
class InterfaceModel(VoltageCurveModel):
    \"\"\"V(t_m), the maps and their Jacobians, plus the end-of-run gap (m) and damage of
    every cohesive layer.\"\"\"

    def final_outputs(self, state):
        return {"gap": state.gap, "damage": state.damage}


operator = ObservationOperator(kind="projection", beam_axis=0, factor=1)   # beam along x, voxel-size pixels
model = InterfaceModel(resolved, ("interface_strength", "gap_decay_length"), T, N_STEPS, step_budget(resolved, 1.01),
                       map_t_s=T_MAPS, operator=operator)"""),
    new_markdown_cell("""\
## A synthetic measurement

V(t) at the truth with Gaussian noise of 0.5 mV, the maps with noise of 0.002 in x (a
0.5 µm pixel bins some 250 TXM pixels). The first call compiles the pass (most of this
notebook's run time)."""),
    new_code_cell("""\
TRUE = {"interface_strength": SIGMA_TRUE, "gap_decay_length": G0}
v_true, jac_v, maps_true, jac_m = model.at(TRUE)
print(f"compile + first pass (two Jacobian columns): {model.timings[0]:.1f} s; maps {model.image_shape} (y, z), "
      f"{int(model.visible.sum())} pixels in front of the particle")
SIGMA_V, SIGMA_MAP = 5e-4, 2e-3
rng = np.random.default_rng(1)
measured = v_true + rng.normal(0.0, SIGMA_V, v_true.shape)
shape = (T_MAPS.size,) + model.image_shape
maps = MeasuredMaps(maps=maps_true.reshape(shape) + rng.normal(0.0, SIGMA_MAP, shape), t_s=T_MAPS,
                    pixel_size_m=5e-7, kind="projection", beam_axis="x", noise_std=SIGMA_MAP)"""),
    new_markdown_cell("""\
## Identifiability: σc and g0 move V(t) — and the maps — the same way

σc reaches the data only through the gap: before the interface opens ∂V/∂σc = 0, and
later a stronger interface (smaller gap) and a longer decay length (smaller g/g0) both
lower R_int. The two Jacobian columns of V at the truth are nearly proportional, so their
Laplace covariance (JᵀJ)⁻¹ in (ln σc, ln g0) has a correlation close to −1: V(t) alone
fixes one combination of σc and g0, not both. The maps see where the current goes, but
again only through R_int = R0 exp(g/g0): the two sensitivity maps below share one
pattern (the Li left behind the patch that opened), their own columns are only a little
less collinear than V's, and they are far weaker at this noise, so adding them leaves
the correlation at about −1 (printed below). So the
fit below fixes g0 (a modelling choice; no value is published for this interface) and
fits σc alone, whose uncertainty is then small. A measurement of the gap itself (e.g.
from tomography) would separate them; the cell fit has no gap-map term."""),
    new_code_cell("""\
J_v = jac_v / SIGMA_V
J_m = jac_m[np.tile(model.visible.reshape(-1), T_MAPS.size)] / SIGMA_MAP


def laplace(J):
    cov = np.linalg.inv(J.T @ J)
    std = np.sqrt(np.diag(cov))
    return cov[0, 1] / (std[0] * std[1]), std, 1.0 / np.sqrt(J[:, 0] @ J[:, 0])


corr, std, std_alone = laplace(J_v)
corr_maps, std_maps, std_alone_maps = laplace(np.vstack([J_v, J_m]))
corr_only_maps = laplace(J_m)[0]
print(f"correlation of ln σc and ln g0 (Laplace, at the truth): {corr:+.5f}")
print(f"correlation of ln σc and ln g0 with the maps: {corr_maps:+.5f} (the maps alone: {corr_only_maps:+.3f})")
print(f"σ(ln σc) with g0 known: {std_alone:.2%} (V(t) alone), {std_alone_maps:.2%} (with the maps)")
print(f"with g0 free as well: σ(ln σc) {std[0]:.0%}, σ(ln g0) {std[1]:.0%} (V(t) alone); "
      f"{std_maps[0]:.0%}, {std_maps[1]:.0%} (with the maps)")

shown = np.where(model.visible, 1.0, np.nan)
dmap = jac_m.reshape(shape + (2,))[-1]   # ∂P/∂ln θ at the last map time
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), constrained_layout=True)
axes[0].plot(T / 60, 1e3 * jac_v[:, 0], "o-", label="∂V/∂ln σc")
axes[0].plot(T / 60, 1e3 * jac_v[:, 1], "s--", label="∂V/∂ln g0")
axes[0].set(xlabel="t (min)", ylabel="mV per unit ln θ", title="V sensitivities at the truth")
axes[0].legend()
for ax, k, label in ((axes[1], 0, "∂P/∂ln σc"), (axes[2], 1, "∂P/∂ln g0")):
    lim = np.nanmax(np.abs(dmap[..., k] * shown))
    im = ax.imshow((1e3 * dmap[..., k] * shown).T, origin="lower", cmap="RdBu_r", vmin=-1e3 * lim, vmax=1e3 * lim)
    ax.set(title=f"{label} at {T_MAPS[-1] / 60:.0f} min", xlabel="y (voxels)", ylabel="z (voxels)")
    fig.colorbar(im, ax=ax, label="10⁻³ x per unit ln θ")
plt.show()"""),
    new_markdown_cell("""\
## Fit σc from a start at 80 MPa (g0 held at 2 nm), to V(t) and the maps

Trust-region Gauss–Newton in ln σc (`derivatives="forward"`) on the residuals of V
(/σ_V) and of the maps (/σ_map), default bounds start/10 … start·10 (8–800 MPa); the
cohesive law's validity σc² < 2 Gc K0 is checked at the bounds."""),
    new_code_cell("""\
SIGMA_START = 80e6
model.hold = {"gap_decay_length": G0}
fit = fit_voltage_curve(resolved, T, measured, [FreeParameter("interface_strength", SIGMA_START)],
                        n_steps=N_STEPS, sigma_V=SIGMA_V, max_iterations=20, curve_model=model, maps=maps)
sigma, rel = fit.values["interface_strength"], fit.relative_std["interface_strength"]
error = sigma / SIGMA_TRUE - 1
print(f"{fit.message} after {fit.evaluations} evaluations of {fit.evaluation_s:.1f} s")
print(f"σc: start {SIGMA_START / 1e6:.0f} MPa, fitted {sigma / 1e6:.2f} MPa ± {rel:.2%} (Laplace; "
      f"{fit.relative_std_voltage_only['interface_strength']:.2%} from V(t) alone), truth {SIGMA_TRUE / 1e6:.0f} MPa, "
      f"determined: {fit.determined['interface_strength']}")
print(f"recovered interface_strength: error {100 * error:+.2f} % = {abs(error) / rel:.2f} std (std {100 * rel:.2f} %)")
print(f"rms residual {1e3 * fit.rms_V:.3f} mV (noise {1e3 * SIGMA_V:.1f} mV), {fit.rms_map:.4f} in x over "
      f"{fit.n_map_pixels} map pixels (noise {SIGMA_MAP})")"""),
    new_markdown_cell("""\
## Fitted vs measured curve, and the residuals

The fitted curve and maps come from the fit's evaluation at the fitted σc (kept by the
model; no extra pass). Residuals within about ±2 σ with no trend or pattern: the noise,
nothing left to explain."""),
    new_code_cell("""\
fitted = model.outputs_at({"interface_strength": sigma})
v_fit, maps_fit = fitted["voltage_V"], fitted["maps"]
fig, (ax, ax_r) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, height_ratios=[2, 1], constrained_layout=True)
ax.plot(T / 60, measured, "ko", ms=4, label="measured (synthetic, σc = 150 MPa)")
ax.plot(T / 60, v_fit, "C1-", label=f"fit, σc = {sigma / 1e6:.1f} MPa")
ax.set(ylabel="V (V)", title="2C charge of the coupled cell")
ax.legend()
ax_r.axhline(0, color="0.6", lw=0.8)
ax_r.plot(T / 60, (measured - v_fit) / SIGMA_V, "C0o-", ms=4)
ax_r.set(xlabel="t (min)", ylabel="residual / σ_V")
plt.show()

fig, axes = plt.subplots(3, T_MAPS.size, figsize=(2.8 * T_MAPS.size, 7), constrained_layout=True)
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
plt.show()"""),
    new_markdown_cell("""\
## Gap and damage on the particle surface, before and after the fit

Each cohesive layer sits on a particle voxel facing the electrolyte; here at its
longitude and latitude seen from the particle centre, at the end of the 7 min charge, for
the start value (80 MPa: the interface opens earlier and wider), the fitted σc and the
truth (the same model at 150 MPa: in a real study this panel is unknown). By the end of
the charge every layer is damaged (d > 1/2 here); σc shows in how far the layers have
opened, and in the few that are not yet fully debonded."""),
    new_code_cell("""\
host = np.stack([np.asarray(i) for i in layers.host_index], axis=1).astype(float)
centre = np.argwhere(np.asarray(resolved.geometry.active)).mean(axis=0)
rel_pos = host - centre
lon = np.degrees(np.arctan2(rel_pos[:, 1], rel_pos[:, 0]))
lat = np.degrees(np.arcsin(rel_pos[:, 2] / np.linalg.norm(rel_pos, axis=1)))
layers_at = lambda value: (lambda out: (out["gap"], out["damage"]))(  # noqa: E731
    model.outputs_at({"interface_strength": value}))   # kept from the evaluations: no extra pass
panels = [("start, 80 MPa", layers_at(SIGMA_START)), (f"fitted, {sigma / 1e6:.1f} MPa", layers_at(sigma)),
          ("truth, 150 MPa", layers_at(SIGMA_TRUE))]
gap_max = max(1e9 * p[1][0].max() for p in panels)
damage_min = min(p[1][1].min() for p in panels)   # the colour range where the damage differs
fig, axes = plt.subplots(2, 3, figsize=(11, 5.2), sharex=True, sharey=True, constrained_layout=True)
for col, (title, (gap, damage)) in enumerate(panels):
    a = axes[0, col].scatter(lon, lat, c=1e9 * gap, s=40, vmin=0, vmax=gap_max, cmap="viridis")
    b = axes[1, col].scatter(lon, lat, c=damage, s=40, vmin=damage_min, vmax=1, cmap="magma")
    axes[0, col].set_title(f"{title}\\nmean gap {1e9 * gap.mean():.2f} nm, mean damage {damage.mean():.2f}",
                           fontsize=9)
    axes[1, col].set_xlabel("longitude (°)")
axes[0, 0].set_ylabel("latitude (°)")
axes[1, 0].set_ylabel("latitude (°)")
fig.colorbar(a, ax=axes[0], label="gap (nm)")
fig.colorbar(b, ax=axes[1], label="damage d")
plt.show()
print(f"notebook run time {time.perf_counter() - start_clock:.0f} s")"""),
    new_markdown_cell("""\
## At GPU size (documented, not run in CI)

The S2 debonding cell of `examples/s2_debonding.toml` (5 µm particle, 53
grains, LLZO separator, 1C) with 0.5 µm voxels — a 31 × 31 × 45 grid, 4189 active voxels — and its
1C charge to 4.3 V sampled every 60 s. Before fitting at the S2 settings, check the sensitivity
columns as above: with Gc = 1 J/m² and GPa misfit tractions every layer debonds early and
σc barely reaches V(t) (docs/interfaces.md, "Identifiability").

```python
data = read_toml("examples/s2_debonding.toml")   # ssbx.engine.config.scenario.read_toml
data["particle"]["voxel_size_m"] = 5e-7
data["interface"]["max_damage_increment"] = 1.0   # no step cut by the damage control: V(σc) smooth
data["protocol"]["steps"] = ["charge at 1C until 4.3 V"]
scenario = scenario_from_dict(data)
resolved = resolve_cell(scenario, jnp.float64)
T, measured = ...   # the measured charge curve: times (s, every 60 s) and V
maps = load_measurement("maps.h5")   # ssbx.engine.io.measurements: projections of x on the cell grid
n_steps = int(T[-1] / 30.0) + 10   # 30 s steps
fit = fit_voltage_curve(resolved, T, measured, [FreeParameter("interface_strength", 80e6)],
                        n_steps=n_steps, sigma_V=5e-4, maps=maps, sigma_map=2e-3)   # g0 at the scenario's value
```

Expected cost: the compile does not depend on the grid or the number of steps (the scan
body is compiled once); each pass scales with voxels × steps, 7.5× the CI cell's grid
and about 14× its steps; the maps add one projection per step. Its time on a GPU has not been measured yet: `python benchmarks/cell_fit_gpu_size.py` runs this cell's
fit with synthetic data and times it (on the next GPU lease, `benchmarks/gpu_suite.sh --part2`)."""),
]


if __name__ == "__main__":
    from notebook_builder import write

    write(CELLS, "fit_interface_strength.ipynb")
